"""`make demo`: the example FastAPI app under uvicorn with ws-gateway in front.

Ports come from DEMO_APP_PORT (8000), DEMO_GATEWAY_PORT (8080) and
DEMO_ADMIN_PORT (9102). Ctrl-C (or SIGTERM) stops both processes by PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

HOST = "127.0.0.1"


def _wait_port(port: int, process: subprocess.Popen[bytes], name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"demo: {name} exited with status {process.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"demo: {name} did not listen on {HOST}:{port} within {timeout:g}s")


def main() -> int:
    """Start both processes, print where to look, and wait for Ctrl-C."""
    app_port = int(os.environ.get("DEMO_APP_PORT", "8000"))
    gateway_port = int(os.environ.get("DEMO_GATEWAY_PORT", "8080"))
    admin_port = int(os.environ.get("DEMO_ADMIN_PORT", "9102"))
    python = sys.executable
    processes: list[tuple[str, subprocess.Popen[bytes]]] = []
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        app = subprocess.Popen(
            [python, "-m", "uvicorn", "examples.app:app", "--host", HOST, "--port", str(app_port), "--log-level",
             "warning"]
        )
        processes.append(("uvicorn", app))
        _wait_port(app_port, app, "uvicorn")
        env = dict(os.environ, GATEWAY_DRAIN_LISTENER_DELAY="0s", GATEWAY_DRAIN_SPREAD="1s",
                   GATEWAY_DRAIN_TIMEOUT="3s", GATEWAY_CLIENT_PING_INTERVAL="5s", GATEWAY_CLIENT_PING_JITTER="1s")
        gateway = subprocess.Popen(
            [python, "-m", "gateway", "--listen", f"{HOST}:{gateway_port}", "--admin-listen", f"{HOST}:{admin_port}",
             "--upstream", f"ws://{HOST}:{app_port}"],
            env=env,
        )
        processes.append(("ws-gateway", gateway))
        _wait_port(gateway_port, gateway, "ws-gateway")
        print(
            f"\nws-gateway demo is running:\n"
            f"  page (served by the app, connects through the gateway): http://{HOST}:{app_port}/\n"
            f"  WebSocket through the gateway:                          ws://{HOST}:{gateway_port}/ws/echo\n"
            f"  gateway metrics:                                        http://{HOST}:{admin_port}/metrics\n"
            f"Press Ctrl-C to stop both.\n",
            flush=True,
        )
        while not stop and all(p.poll() is None for _, p in processes):
            time.sleep(0.2)
    finally:
        for name, process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    print(f"demo: {name} did not stop in 10s; killing it", file=sys.stderr)
                    process.kill()
                    process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
