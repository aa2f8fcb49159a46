"""`make demo`: the example FastAPI app under uvicorn with ws-gateway in front.

Ports come from DEMO_APP_PORT (8000), DEMO_GATEWAY_PORT (8080) and
DEMO_ADMIN_PORT (9102). Ctrl-C (or SIGTERM) stops both processes by PID.

The page's "restart the app" control reaches this launcher through the app
(POST /demo/restart, see examples/demo_api.py): the app sends this process
SIGUSR1 and the launcher restarts uvicorn as a rollout would (SIGTERM: uvicorn
closes its WebSockets with 1012; then a new process on the same port). The
gateway keeps the page connected meanwhile. Requests that arrive while a
restart is under way are merged into it, and a new uvicorn that does not
listen within 30 s ends the demo.

The gateway runs with settings that make its work visible from a page: pings
every 2 s on both legs, a 64 KiB limit on client messages (so a button can
cause a 1009), and the opt-in loss/resume notices as JSON text messages.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from examples.demo_api import RESTART_SIGNAL

HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0
"""Seconds a process gets to exit after SIGTERM before it is killed."""
LISTEN_TIMEOUT = 30.0
"""Seconds a process gets to listen on its port."""

NOTIFY_LOSS = '{{"gateway": "upstream_lost", "session": "{session_id}"}}'
NOTIFY_RESUME = '{{"gateway": "resumed", "outage_ms": {outage_ms}, "replayed": {replayed}}}'
"""The gateway's opt-in notices (reconnect.notify_loss / notify_resume); the page reads them."""


def gateway_environment(base: dict[str, str]) -> dict[str, str]:
    """The demo's GATEWAY_* settings on top of ``base`` (values are YAML, as the gateway reads them)."""
    return dict(
        base,
        GATEWAY_DRAIN_LISTENER_DELAY="0s",
        GATEWAY_DRAIN_SPREAD="1s",
        GATEWAY_DRAIN_TIMEOUT="3s",
        # Pings often enough that the page shows round trips within seconds of connecting.
        GATEWAY_CLIENT_PING_INTERVAL="2s",
        GATEWAY_CLIENT_PING_JITTER="500ms",
        GATEWAY_UPSTREAM_PING_INTERVAL="2s",
        GATEWAY_UPSTREAM_PING_JITTER="500ms",
        # Small enough for the page's "send 100 KiB" button to be refused with 1009.
        GATEWAY_UPSTREAM_MAX_MESSAGE_SIZE="64KiB",
        # JSON strings are YAML strings: the braces stay text.
        GATEWAY_RECONNECT_NOTIFY_LOSS=json.dumps(NOTIFY_LOSS),
        GATEWAY_RECONNECT_NOTIFY_RESUME=json.dumps(NOTIFY_RESUME),
    )


def _wait_port(port: int, process: subprocess.Popen[bytes], name: str, timeout: float = LISTEN_TIMEOUT) -> None:
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


def _stop(name: str, process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process by PID, then SIGKILL it if it has not exited within STOP_TIMEOUT."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"demo: {name} did not stop in {STOP_TIMEOUT:g}s; killing it", file=sys.stderr)
        process.kill()
        process.wait()


def main() -> int:
    """Start both processes, print where to look, restart the app on request, and wait for Ctrl-C."""
    app_port = int(os.environ.get("DEMO_APP_PORT", "8000"))
    gateway_port = int(os.environ.get("DEMO_GATEWAY_PORT", "8080"))
    admin_port = int(os.environ.get("DEMO_ADMIN_PORT", "9102"))
    python = sys.executable
    app_command = [python, "-m", "uvicorn", "examples.app:app", "--host", HOST, "--port", str(app_port),
                   "--log-level", "warning"]
    app_env = dict(os.environ, DEMO_LAUNCHER_PID=str(os.getpid()), DEMO_ADMIN_URL=f"http://{HOST}:{admin_port}")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    stop = restart = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    def on_restart(signum: int, frame: object) -> None:
        nonlocal restart
        restart = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(RESTART_SIGNAL, on_restart)
    try:
        processes["uvicorn"] = subprocess.Popen(app_command, env=app_env)
        _wait_port(app_port, processes["uvicorn"], "uvicorn")
        processes["ws-gateway"] = subprocess.Popen(
            [python, "-m", "gateway", "--listen", f"{HOST}:{gateway_port}", "--admin-listen", f"{HOST}:{admin_port}",
             "--upstream", f"ws://{HOST}:{app_port}"],
            env=gateway_environment(dict(os.environ)),
        )
        _wait_port(gateway_port, processes["ws-gateway"], "ws-gateway")
        page = f"http://{HOST}:{app_port}/"
        if gateway_port != 8080:
            page += f"?gateway=ws://{HOST}:{gateway_port}"
        print(
            f"\nws-gateway demo is running:\n"
            f"  page (served by the app, connects through the gateway): {page}\n"
            f"  WebSocket through the gateway:                          ws://{HOST}:{gateway_port}/ws/echo\n"
            f"  gateway metrics:                                        http://{HOST}:{admin_port}/metrics\n"
            f"Press Ctrl-C to stop both.\n",
            flush=True,
        )
        while not stop and all(p.poll() is None for p in processes.values()):
            if restart:
                old = processes["uvicorn"]
                print(f"demo: restarting the app: SIGTERM to uvicorn (pid {old.pid})", flush=True)
                started = time.monotonic()
                _stop("uvicorn", old)
                restart = False  # requests made before the old process stopped are served by this restart
                if stop:
                    break
                processes["uvicorn"] = subprocess.Popen(app_command, env=app_env)
                _wait_port(app_port, processes["uvicorn"], "uvicorn")
                print(f"demo: the app is back (pid {processes['uvicorn'].pid}) after "
                      f"{time.monotonic() - started:.1f}s", flush=True)
            time.sleep(0.1)
    finally:
        for name, process in reversed(processes.items()):
            _stop(name, process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
