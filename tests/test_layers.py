"""The package's architecture, held against its imports (read with `ast`, nothing imported).

Layers, lowest first: a module imports only modules of its own layer or of lower ones.
Modules of one layer import each other without a cycle, and no import inside a function
hides one (only the command line imports lazily, so a command loads only what it runs).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gateway"

# The top-level modules (clock, errors, secret, ...) are the foundation every layer uses.
LAYERS = (
    "gateway",
    "gateway.xapi",
    "gateway.config",
    "gateway.upstream",
    "gateway.store",
    "gateway.auth",
    "gateway.forwarding",
    "gateway.runtime",
    "gateway.http",
    "gateway.cli",
)
# Packages whose modules may import inside functions: commands load what they run.
LAZY_IMPORTS_ALLOWED = ("gateway.cli",)
# Third-party libraries a layer keeps out: xAPI rules and configuration are plain Python.
FORBIDDEN_LIBRARIES = {
    "gateway.xapi": ("aiohttp",),
    "gateway.store": ("aiohttp",),
    "gateway.config": ("aiohttp",),
    "gateway.upstream.h1": ("aiohttp", "gateway.config"),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (a gateway module, or a library's top name)
    line: int
    in_function: bool
    type_only: bool  # under `if TYPE_CHECKING:`: never executed


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str:
    """`name` as the module it names (`gateway.xapi.scopes.Resource` -> its module)."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, source: str | None = None) -> Iterator[Import]:
    """Every import of `module` (its file, or `source` in its place)."""
    if source is None:
        source = MODULES[module].read_text(encoding="utf-8")
    tree = ast.parse(source)

    def walk(node: ast.AST, in_function: bool, type_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, _target(alias.name), child.lineno, in_function, type_only)
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{module}:{child.lineno}: a relative import"
                base = child.module or ""
                for alias in child.names:
                    # `from gateway.x import y`: y may be a module of its own.
                    full = f"{base}.{alias.name}"
                    yield Import(
                        module,
                        _target(full if resolve(full) == full else base),
                        child.lineno,
                        in_function,
                        type_only,
                    )
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, True, type_only)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for part in child.body:
                    yield from walk(ast.Module(body=[part], type_ignores=[]), in_function, True)
                for part in child.orelse:
                    yield from walk(
                        ast.Module(body=[part], type_ignores=[]), in_function, type_only
                    )
            else:
                yield from walk(child, in_function, type_only)

    yield from walk(tree, False, False)


def _target(name: str) -> str:
    return resolve(name) if name.split(".")[0] == "gateway" else name.split(".")[0]


ALL_IMPORTS = [i for m in MODULES for i in imports_of(m)]
OWN_IMPORTS = [
    i
    for i in ALL_IMPORTS
    if (i.target in MODULES and i.target != "gateway") or i.target.startswith("gateway.")
]


def layer_of(module: str) -> int:
    if module == "gateway.__main__":
        return len(LAYERS)  # `python -m gateway` runs the command line: above everything
    package = module if module in LAYERS else module.rpartition(".")[0]
    while package not in LAYERS:
        package = package.rpartition(".")[0]
    return LAYERS.index(package)


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _parents(module: str) -> list[str]:
    """The packages whose __init__ runs when `module` is imported (gateway.x for gateway.x.y)."""
    parts = module.split(".")
    return [".".join(parts[:n]) for n in range(2, len(parts))]


def test_every_module_is_on_a_layer() -> None:
    for module in MODULES:
        package = module if module == "gateway" else module.rpartition(".")[0]
        assert package == "gateway" or any(
            package == layer or package.startswith(layer + ".") for layer in LAYERS[1:]
        ), f"{module} is in no layer: add its package to LAYERS"


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = [
        f"{i.module}:{i.line} imports {i.target} ({LAYERS[layer_of(i.module)]} is below "
        f"{LAYERS[min(layer_of(i.target), len(LAYERS) - 1)]})"
        for i in OWN_IMPORTS
        if layer_of(i.target) > layer_of(i.module)
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in OWN_IMPORTS:
        if not i.type_only and i.target != i.module:
            # Importing gateway.x.y runs gateway/x/__init__.py first: an edge to it too.
            graph[i.module].update(
                t for t in (i.target, *_parents(i.target)) if t != i.module and t in graph
            )
    cycles = [cycle for cycle in _cycles(graph) if len(cycle) > 1]
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), each a group of modules importing in a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_inside_a_function_outside_the_command_line() -> None:
    lazy = [
        f"{i.module}:{i.line} imports {i.target} inside a function"
        for i in OWN_IMPORTS
        if i.in_function and not _within(i.module, LAZY_IMPORTS_ALLOWED)
    ]
    assert lazy == []


def test_keys_load_nothing_at_run_time() -> None:
    executed = {
        i.target for i in OWN_IMPORTS if i.module == "gateway.http.keys" and not i.type_only
    }
    assert executed == set(), executed


@pytest.mark.parametrize("owner", sorted(FORBIDDEN_LIBRARIES))
def test_layers_keep_their_libraries_out(owner: str) -> None:
    forbidden = FORBIDDEN_LIBRARIES[owner]
    found = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in ALL_IMPORTS
        if _within(i.module, (owner,))
        and any(i.target == f or i.target.startswith(f + ".") for f in forbidden)
    ]
    assert found == []


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    """The graph code above finds what it must: a made-up loop and a made-up upward edge."""
    assert ["gateway.a", "gateway.b"] in _cycles(
        {"gateway.a": {"gateway.b"}, "gateway.b": {"gateway.a"}}
    )
    assert layer_of("gateway.http.app") > layer_of("gateway.xapi.scopes")
    assert layer_of("gateway.cli.main") == len(LAYERS) - 1
    assert layer_of("gateway.http.handlers.statements") == LAYERS.index("gateway.http")


def test_imports_are_read_as_python_runs_them() -> None:
    """What the checks rely on, on made-up source: every form of import, where it stands."""
    source = """
from typing import TYPE_CHECKING
import gateway.http.app as app_module
from gateway import errors
from gateway.http import keys
from gateway.xapi.scopes import Resource
try:
    import aiohttp
except ImportError:
    pass
if TYPE_CHECKING:
    from gateway.cli.main import main
def later():
    from gateway.forwarding import forwarder
class Holder:
    def method(self):
        import gateway.runtime.workers
"""
    found = {(i.target, i.in_function, i.type_only) for i in imports_of("gateway.x", source)}
    assert found == {
        ("typing", False, False),
        ("gateway.http.app", False, False),
        ("gateway.errors", False, False),
        ("gateway.http.keys", False, False),
        ("gateway.xapi.scopes", False, False),
        ("aiohttp", False, False),
        ("gateway.cli.main", False, True),
        ("gateway.forwarding.forwarder", True, False),
        ("gateway.runtime.workers", True, False),
    }
    assert _within("gateway.cli.main", ("gateway.cli",))
    assert not _within("gateway.cli_extra", ("gateway.cli",))
    assert _parents("gateway.http.handlers.statements") == ["gateway.http", "gateway.http.handlers"]


def test_nothing_is_imported_by_name_at_run_time() -> None:
    """importlib and __import__ would hide an import from the checks above."""
    hidden = [
        f"{module}: {what}"
        for module, path in MODULES.items()
        for what in ("import_module(", "__import__(")
        if what in path.read_text(encoding="utf-8")
    ]
    assert hidden == []
