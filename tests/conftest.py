"""Fixtures: a shared real uvicorn upstream and a factory of real gateway processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import GatewayProcess, Upstream, process_factory


def pytest_sessionstart(session: pytest.Session) -> None:
    """With WS_GATEWAY_EXPECT_COMPILED=1 (tests/packaging/test_compiled.py sets it), refuse to run on
    Python sources: every module setup.py compiles must be loaded compiled, or the run would prove nothing."""
    if os.environ.get("WS_GATEWAY_EXPECT_COMPILED") == "1":
        from bench.compiled import compiled_modules_missing

        missing = compiled_modules_missing()
        if missing:
            raise pytest.UsageError(f"expected the compiled build, but these load from source: {missing}")


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """The example FastAPI app under uvicorn, shared by tests that do not stop it."""
    server = Upstream(tmp_path_factory.mktemp("upstream"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateways for one test; every one is stopped by PID at teardown."""

    def start(upstream_url: str, config: dict[str, Any] | None = None, **kwargs: Any) -> GatewayProcess:
        return GatewayProcess(tmp_path, upstream_url, config, **kwargs)

    with process_factory(start) as factory:
        yield factory


@pytest.fixture
def make_upstream(tmp_path: Path) -> Iterator[Callable[..., Upstream]]:
    """Start example-app upstreams for one test (``port=`` restarts one on the same port); all stopped at teardown."""

    def start(port: int | None = None, extra: list[str] | None = None, **kwargs: Any) -> Upstream:
        return Upstream(tmp_path, port=port, extra=extra, **kwargs)

    with process_factory(start) as factory:
        yield factory


@pytest.fixture
def gateway(make_gateway: Callable[..., GatewayProcess], upstream: Upstream) -> GatewayProcess:
    """A gateway with default settings in front of the shared upstream."""
    return make_gateway(upstream.url)


@pytest.fixture
def record_app(make_upstream: Callable[..., Upstream], tmp_path: Path) -> tuple[Upstream, Path]:
    """tests/recording_app.py under uvicorn, and the directory its per-client record files go to."""
    records = tmp_path / "records"
    records.mkdir()
    return make_upstream(app="tests.recording_app:app", env={"RECORD_DIR": str(records)}), records
