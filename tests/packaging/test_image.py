"""The real image built from the real Dockerfile with podman, run read-only as its non-root user."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bench.compiled import compiled_module_names
from bench.proxies import system_binary
from tests.support import ROOT, async_wait_until, free_port, port_open, scaled

IMAGE = "localhost/ws-gateway:test"
APP_IMAGE = "localhost/ws-gateway-example-app:test"
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "containers" / "containers.conf")}


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([system_binary("podman"), *args], capture_output=True, text=True, env=PODMAN_ENV,
                          timeout=scaled(timeout), check=False)


def test_dockerfile_passes_hadolint() -> None:
    """hadolint has nothing to say about the Dockerfile."""
    result = subprocess.run([str(Path(sys.executable).with_name("hadolint")), str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.fixture(scope="module")
def image() -> str:
    """Build the image once for this module (the base image is cached between runs)."""
    result = subprocess.run([str(ROOT / "scripts" / "build-image.sh"), IMAGE, APP_IMAGE],
                            capture_output=True, text=True,
                            env=PODMAN_ENV, timeout=scaled(900), check=False, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return IMAGE


@pytest.fixture
def container_names() -> Iterator[tuple[str, str]]:
    """Names for the gateway and app containers; both are removed at teardown."""
    suffix = uuid.uuid4().hex[:8]
    names = (f"ws-gateway-test-{suffix}", f"ws-app-test-{suffix}")
    try:
        yield names
    finally:
        for name in names:
            podman("rm", "-f", "-t", "3", name)


def test_image_metadata(image: str) -> None:
    """Non-root numeric user, SIGTERM stop signal, the two ports, ws-gateway as entrypoint."""
    result = podman("image", "inspect", image, "--format",
                    "{{.Config.User}}|{{.Config.StopSignal}}|{{.Config.Entrypoint}}|{{.Config.ExposedPorts}}")
    assert result.returncode == 0, result.stderr
    user, stop_signal, entrypoint, ports = result.stdout.strip().split("|")
    assert user == "10001:10001"
    assert stop_signal == "SIGTERM"
    assert "ws-gateway" in entrypoint
    assert "8080/tcp" in ports and "9102/tcp" in ports


def test_image_runs_the_compiled_modules(image: str) -> None:
    """The image's gateway loads every module setup.py compiles as an extension module (mypyc), not as source."""
    check = (
        "import importlib\n"
        f"names = {compiled_module_names()!r}\n"
        "print([n for n in names if not importlib.import_module(n).__file__.endswith('.so')])\n")
    result = podman("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", check)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


async def test_image_relays_reports_and_drains(image: str, container_names: tuple[str, str]) -> None:
    """Read-only and non-root next to the example app's image: relays, serves /metrics, drains with 1012."""
    container_name, app_name = container_names
    app_port = free_port()
    started = podman("run", "-d", "--name", app_name, "--network", "host", "--read-only", APP_IMAGE,
                     "--host", "127.0.0.1", "--port", str(app_port))
    assert started.returncode == 0, started.stderr
    await async_wait_until(lambda: port_open(app_port), 30, "the example app container to listen")
    port, admin = free_port(), free_port()
    run = podman("run", "-d", "--name", container_name, "--network", "host", "--read-only",
                 "-e", "GATEWAY_DRAIN_LISTENER_DELAY=0s", "-e", "GATEWAY_DRAIN_SPREAD=500ms",
                 "-e", "GATEWAY_DRAIN_TIMEOUT=5s", image, "--listen", f"127.0.0.1:{port}",
                 "--admin-listen", f"127.0.0.1:{admin}", "--upstream", f"ws://127.0.0.1:{app_port}")
    assert run.returncode == 0, run.stderr
    await async_wait_until(lambda: port_open(port) and port_open(admin), 30, "the container to listen")
    assert podman("exec", container_name, "id", "-u").stdout.strip() == "10001"
    async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/ws/echo") as ws:
        await ws.send_str("through the image")
        assert (await ws.receive(timeout=scaled(10))).data == "through the image"
        async with http.get(f"http://127.0.0.1:{admin}/metrics") as response:
            assert "ws_gateway_sessions_total 1.0" in await response.text()
        stop_sent = time.monotonic()
        assert podman("kill", "--signal", "TERM", container_name).returncode == 0
        closing = await ws.receive(timeout=scaled(10))
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1012)
    await async_wait_until(lambda: podman("inspect", container_name, "--format", "{{.State.Running}}")
                           .stdout.strip() == "false", 15, "the container to exit")
    assert time.monotonic() - stop_sent < scaled(5) + 2
    exit_code = podman("inspect", container_name, "--format", "{{.State.ExitCode}}").stdout.strip()
    assert exit_code == "0"
    logs = podman("logs", container_name).stdout + podman("logs", container_name).stderr
    assert '"cause":"shutdown"' in logs
