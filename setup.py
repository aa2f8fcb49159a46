"""Build hook: with ``WS_GATEWAY_COMPILE=1`` the hot modules are compiled ahead of time with mypyc.

pyproject.toml holds the project's metadata; this file only decides the extension modules. The
same typed source is compiled (mypy --strict clean, so mypyc accepts it as is): the frame scanner and
codec, the permessage-deflate inflater and deflater, and the handshake checks. Unset, the build is
pure Python: the editable install of development (``make``), and any platform without a C compiler.
The image and the wheel the project ships are built compiled (scripts/build-image.sh), and
tests/packaging/test_compiled.py runs the unit tests and the relay tests against a compiled build;
docs/benchmark.md has what compiling buys.
"""

from __future__ import annotations

import os

from setuptools import setup

COMPILED_MODULES = [
    "gateway/core/codec.py",
    "gateway/core/compression.py",
    "gateway/core/counts.py",
    "gateway/core/deflate.py",
    "gateway/core/forwarding.py",
    "gateway/core/handshake.py",
    "gateway/core/inflate.py",
    "gateway/core/scanner.py",
    "gateway/core/sink.py",
    "gateway/core/upgrade.py",
]
"""Pure-core modules that import only the standard library and each other (so the isolated build
environment needs nothing but mypy), chosen for the per-frame and per-handshake path."""


def extension_modules() -> list[object]:
    if os.environ.get("WS_GATEWAY_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    return list(mypycify(COMPILED_MODULES, opt_level="3"))


setup(ext_modules=extension_modules())
