"""A copy of this checkout running the mypyc-compiled build: for the tests and the benchmarks.

:func:`compiled_wheel` builds the project's wheel exactly as the image does (``WS_GATEWAY_COMPILE=1``,
setup.py), and :func:`compiled_checkout` copies the checkout and puts that wheel's extension modules
beside their sources. Python imports an extension module before a ``.py`` of the same name, so
``python -m gateway`` (or pytest) started in the copy runs the compiled modules, with the same tests,
configuration and examples as the checkout. :func:`compiled_modules_missing` names any module of
setup.py's list that a process did not load compiled.

Run: ``python -m bench.compiled DEST`` makes such a copy at DEST.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_NOT_COPIED = (".git", ".venv", "node_modules", "__pycache__", "build", "wheels", "*.egg-info", ".bench-out",
               ".fuzz-out", ".mypy_cache", ".ruff_cache", ".pytest_cache", "*.so")


def compiled_module_names() -> list[str]:
    """The modules setup.py compiles, as dotted names (read from setup.py, the one list)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMPILED_MODULES" for t in node.targets):
            paths = ast.literal_eval(node.value)
            return [path.removesuffix(".py").replace("/", ".") for path in paths]
    raise RuntimeError("setup.py has no COMPILED_MODULES list")


def compiled_wheel(out: Path, timeout: float = 600) -> Path:
    """Build the compiled wheel into ``out`` (pip, isolated build: setuptools and mypy from PyPI)."""
    out.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                             "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "WS_GATEWAY_COMPILE": "1"}, check=False)
    wheels = sorted(out.glob("ws_gateway-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"compiled wheel build failed: {result.stderr[-3000:]}")
    return wheels[-1]


def compiled_checkout(dest: Path, wheel: Path | None = None) -> Path:
    """A copy of the checkout at ``dest`` with the compiled wheel's extension modules in place."""
    if wheel is None:
        wheel = compiled_wheel(Path(tempfile.mkdtemp(prefix="ws-gateway-wheel-")))
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*_NOT_COPIED), symlinks=True)
    node_modules = ROOT / "tests" / "node" / "node_modules"
    if node_modules.is_dir():
        (dest / "tests" / "node" / "node_modules").symlink_to(node_modules)
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.endswith(".so"):
                archive.extract(name, dest)
    return dest


def compiled_modules_missing() -> list[str]:
    """The modules of setup.py's list that this process imports as Python source, not compiled."""
    missing = []
    for name in compiled_module_names():
        module = importlib.import_module(name)
        if not str(module.__file__).endswith(".so"):
            missing.append(f"{name} ({module.__file__})")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path, help="where the copy goes (must not exist)")
    args = parser.parse_args(argv)
    compiled_checkout(args.dest)
    print(f"compiled checkout at {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
