"""The mypyc-compiled build (setup.py, WS_GATEWAY_COMPILE=1): the wheel the image ships, and the tests run on it.

The rest of the suite runs the pure-Python sources (the editable install). Here the compiled wheel is
built as scripts/build-image.sh builds it, its extension modules are put into a copy of the checkout
(bench/compiled.py), and the unit tests and the data-path integration tests run in that copy with
WS_GATEWAY_EXPECT_COMPILED=1, which makes the run refuse to start if any listed module loads from source.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.compiled import compiled_checkout, compiled_module_names, compiled_wheel
from tests.support import scaled

COMPILED_RUN = [
    "tests/unit",
    "tests/integration/test_relay.py",
    "tests/integration/test_close.py",
    "tests/integration/test_compression.py",
    "tests/integration/test_compression_clients.py",
    "tests/integration/test_hardening.py",
    "tests/integration/test_limits.py",
    "tests/integration/test_sizes.py",
    "tests/integration/test_delivery.py",
]
"""What runs on the compiled build: every unit test, and the integration tests of the compiled modules'
paths (frames, closes, permessage-deflate with every client, the handshake checks, limits, delivery)."""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compiled_wheel(tmp_path_factory.mktemp("wheels"), timeout=scaled(600))


def test_the_compiled_wheel_carries_every_listed_module(wheel: Path) -> None:
    """A platform wheel (not py3-none-any) with an extension module for each module setup.py lists, and
    the Python sources still beside them."""
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    for module in compiled_module_names():
        path = module.replace(".", "/")
        assert any(n.startswith(path + ".cpython-") and n.endswith(".so") for n in names), module
        assert path + ".py" in names, module


@pytest.mark.timeout(1200)
def test_unit_and_data_path_tests_pass_on_the_compiled_build(wheel: Path, tmp_path: Path) -> None:
    checkout = compiled_checkout(tmp_path / "checkout", wheel)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *COMPILED_RUN],
        cwd=checkout, capture_output=True, text=True, timeout=scaled(1100), check=False,
        env={**os.environ, "WS_GATEWAY_EXPECT_COMPILED": "1"},
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 300, summary
    assert "skipped" not in summary and "deselected" not in summary, summary
