"""The shape of the helper library: one PostgreSQL layer, no import cycle, one runtime contract,
capabilities typed with it, and one table of exit codes that the README repeats."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

from stackops import errors
from stackops.errors import StackopsError, exit_codes
from stackops.runtime.base import Runtime

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "lib"
PACKAGE = LIB / "stackops"


def module_name(path: Path) -> str:
    rel = path.relative_to(LIB).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth (function bodies included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from stackops import pg`
    return out


def internal_edges(name: str) -> set[str]:
    """The stackops modules ``name`` depends on: each imported module and the packages above it
    (importing ``stackops.runtime.base`` runs ``stackops/runtime/__init__.py`` first)."""
    deps: set[str] = set()
    for target in imported(MODULES[name]):
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in MODULES and candidate != name and not name.startswith(candidate + "."):
                deps.add(candidate)
    return deps


def test_only_the_postgresql_layer_imports_psycopg() -> None:
    users = sorted(n for n, p in MODULES.items() if any(m.split(".")[0] == "psycopg" for m in imported(p)))
    assert users == ["stackops.pg"]


def test_no_import_cycle_among_library_modules() -> None:
    graph = {name: internal_edges(name) for name in MODULES}
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep):], dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_capabilities_never_import_the_cli_and_the_library_never_imports_ci_code() -> None:
    for name, path in MODULES.items():
        if name.startswith("stackops.cli"):
            continue
        bad = [m for m in imported(path) if m.startswith("stackops.cli") or m.split(".")[0] in ("ci", "tests")]
        assert not bad, f"{name} imports {bad}"


def test_every_runtime_declares_the_contract() -> None:
    from stackops.runtime.select import KINDS

    assert set(KINDS) == {"local", "external", "compose"}
    for cls in KINDS.values():
        assert issubclass(cls, Runtime)
        assert not inspect.isabstract(cls), f"{cls.__name__} leaves {cls.__abstractmethods__} unimplemented"
    assert "server_major" in Runtime.__abstractmethods__


@pytest.mark.parametrize("module", ["stackops.backup", "stackops.restore", "stackops.verify", "stackops.retention",
                                    "stackops.migrate.engine", "stackops.integrity", "stackops.seed"])
def test_capabilities_take_the_runtime_contract_not_any(module: str) -> None:
    mod = importlib.import_module(module)
    seen = 0
    for _, fn in inspect.getmembers(mod, inspect.isfunction):
        if fn.__module__ != module:
            continue
        annotation = inspect.signature(fn).parameters.get("runtime")
        if annotation is not None:
            seen += 1
            assert annotation.annotation == "Runtime", f"{module}.{fn.__name__}(runtime: {annotation.annotation})"
    assert seen or module == "stackops.retention"


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def test_every_exit_code_is_bound_by_exactly_one_class() -> None:
    for name in MODULES:
        importlib.import_module(name)  # every error class of the library is defined
    declared: dict[int, list[str]] = {}
    for cls in [StackopsError, *_all_subclasses(StackopsError)]:
        if "exit_code" in vars(cls):
            declared.setdefault(cls.exit_code, []).append(cls.__name__)
    assert {code: names for code, names in declared.items() if len(names) > 1} == {}
    assert sorted(declared) == [code for code, _, _ in exit_codes() if code != errors.INTERRUPTED]
    with pytest.raises(TypeError, match="already"):
        type("Clash", (StackopsError,), {}, code=errors.BackupCorrupt.exit_code)


def test_readme_exit_code_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| (.+?) \|$", section, flags=re.M)
    assert [(int(code), name, meaning) for code, name, meaning in rows] == exit_codes()
