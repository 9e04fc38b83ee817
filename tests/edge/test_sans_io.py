"""edge/proto/ and gitproto/ are sans-IO: importing it must not pull in any I/O library.

Checked twice: by importing each module in a fresh interpreter (so transitive
imports count), and statically over the source (so a lazy import inside a
function, which the first check would miss, counts too).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import edge.proto
import gitproto

PROTO_DIR = Path(edge.proto.__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent.parent
IO_LIBRARIES = frozenset({"trio", "asyncssh", "httpx", "asyncio", "trio_asyncio"})
# The source itself should not reach for sockets or processes either.
IO_MODULES_IN_SOURCE = IO_LIBRARIES | {
    "anyio",
    "httpcore",
    "socket",
    "ssl",
    "selectors",
    "subprocess",
    "edge.app",
    "edge.http.front",
    "edge.http.proxy",
    "edge.http.pool",
    "edge.http.stream",
    "routing.etcd",
    "routing.cache",
}

GITPROTO_DIR = Path(gitproto.__file__).resolve().parent
PROTO_FILES = sorted(PROTO_DIR.glob("*.py")) + sorted(GITPROTO_DIR.glob("*.py"))


def _module_name(path: Path) -> str:
    package = "edge.proto" if path.parent == PROTO_DIR else "gitproto"
    return package if path.name == "__init__.py" else f"{package}.{path.stem}"


PROTO_MODULES = [_module_name(path) for path in PROTO_FILES]


def test_the_proto_package_has_the_modules_we_expect() -> None:
    # Guards the checks below against silently checking nothing.
    assert {
        "edge.proto.body",
        "edge.proto.exchange",
        "edge.proto.http_head",
        "edge.proto.http_route",
        "gitproto.protocol",
        "gitproto.routes",
        "gitproto.ssh_command",
    } <= set(PROTO_MODULES)


def _modules_after_import(module: str) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("module", PROTO_MODULES)
def test_importing_proto_module_loads_no_io_library(module: str) -> None:
    loaded = _modules_after_import(module)
    assert module in loaded
    io_loaded = sorted(m for m in loaded if m.split(".")[0] in IO_LIBRARIES)
    assert io_loaded == [], f"{module} pulls in {io_loaded}"


def test_the_subprocess_check_can_see_an_io_library() -> None:
    # The same probe, importing an I/O library, must notice it.
    assert "trio" in _modules_after_import("trio")


def _imported_names(path: Path) -> set[str]:
    """Every module an import statement in `path` names, at any depth, with its parents."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found = [node.args[0].value]
        else:
            continue
        for name in found:
            parts = name.split(".")
            names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return names


@pytest.mark.parametrize("path", PROTO_FILES, ids=_module_name)
def test_proto_source_imports_no_io_module(path: Path) -> None:
    bad = sorted(_imported_names(path) & IO_MODULES_IN_SOURCE)
    assert bad == [], f"{path.name} imports {bad}"


def test_proto_source_uses_no_relative_imports_that_escape_the_package() -> None:
    for path in PROTO_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name}: relative import leaves its package"


def test_the_static_check_can_see_imports() -> None:
    sample = PROTO_DIR / "http_head.py"
    assert "h11" in _imported_names(sample)
