"""The package's shape: the pure core imports nothing above it, no import cycle, no module over 600 lines;
and the core's tests mirror it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every gateway module ``path`` imports, ``if TYPE_CHECKING:`` blocks and function bodies included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gateway"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("gateway"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_core_imports_only_core() -> None:
    """gateway.core is pure: it imports nothing from the asyncio layer above it."""
    for name, deps in graph().items():
        if name.startswith("gateway.core"):
            assert all(dep.startswith("gateway.core") for dep in deps), (name, deps)


CORE_ALLOWED: frozenset[str] = frozenset({
    # Standard library modules with no I/O of their own (os: urandom for masks and keys, environ for config).
    "__future__", "base64", "binascii", "collections", "collections.abc", "dataclasses", "difflib", "enum",
    "functools", "hashlib", "ipaddress", "os", "random", "re", "secrets", "struct", "typing", "urllib.parse",
    "zlib",
    # Pure third-party libraries: YAML parsing of the config file, JSON of the resume messages.
    "yaml", "orjson",
})
"""What gateway.core may import besides itself: no asyncio, socket, time, aiohttp, uvloop or prometheus."""


def external_imports_of(path: Path) -> set[str]:
    """Every module outside the gateway package that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("gateway"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if not alias.name.startswith("gateway"))
    return found


def test_core_imports_only_pure_libraries() -> None:
    """gateway.core's imports are on an allow-list: no event loop, sockets, clock or aiohttp in the core."""
    for path in (PACKAGE / "core").glob("*.py"):
        outside = external_imports_of(path) - CORE_ALLOWED
        assert not outside, (module_name(path), outside)


def test_core_init_names_every_core_module() -> None:
    """gateway/core/__init__.py's docstring lists every module of the core."""
    listed = (PACKAGE / "core" / "__init__.py").read_text(encoding="utf-8")
    for path in (PACKAGE / "core").glob("*.py"):
        if path.stem != "__init__":
            assert f":mod:`~gateway.core.{path.stem}`" in listed, path.stem


def test_metrics_depend_on_the_core_only() -> None:
    """The metrics module takes its label vocabularies from the core, not from the layers that produce them."""
    deps = graph()["gateway.metrics"]
    assert all(dep.startswith("gateway.core") or dep == "gateway" for dep in deps), deps


def test_no_import_cycle() -> None:
    """Following imports (TYPE_CHECKING ones too) from any module never leads back to it."""
    edges = graph()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for dep in edges[start]:
            if dep == target or (dep not in seen and (seen.add(dep) or reaches(dep, target, seen))):
                return True
        return False

    cyclic = [name for name in edges if name != "gateway" and reaches(name, name, set())]
    assert not cyclic, f"modules on an import cycle: {cyclic}"


def test_nothing_imports_the_server_and_only_the_accept_step_imports_the_session() -> None:
    """Data flows one way: config -> server -> accept -> session -> legs; the reconnect loop does not know the
    session (the server holds sessions, so it may name their type)."""
    for name, deps in graph().items():
        assert "gateway.server" not in deps or name == "gateway.cli", name
        if name not in ("gateway.server", "gateway.accept"):
            assert "gateway.session" not in deps, name


def test_modules_stay_small() -> None:
    """No module of the package is over 600 lines (past that it is doing two jobs)."""
    sizes = {module_name(p): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= MAX_LINES, {name: size for name, size in sizes.items() if size > MAX_LINES}


def test_core_tests_mirror_the_core() -> None:
    """Each tests/unit/core/test_<name>.py tests gateway/core/<name>.py (test_properties.py: scanner and handshake)."""
    tests = Path(__file__).parent / "core"
    names = {path.stem.removeprefix("test_") for path in tests.glob("test_*.py")} - {"properties"}
    assert names <= {path.stem for path in (PACKAGE / "core").glob("*.py")}, names
