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


def imports_of(module: str) -> Iterator[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))

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


def test_every_module_is_on_a_layer() -> None:
    for module in MODULES:
        package = module if module == "gateway" else module.rpartition(".")[0]
        assert layer_of(module) >= 0, module
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
            graph[i.module].add(i.target)
    # The package itself (gateway/__init__.py) is imported by every submodule's import.
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
        if i.in_function and not i.module.startswith(LAZY_IMPORTS_ALLOWED)
    ]
    assert lazy == []


def test_keys_load_nothing_at_run_time() -> None:
    executed = {
        i.target for i in OWN_IMPORTS if i.module == "gateway.http.keys" and not i.type_only
    }
    assert executed <= {"gateway"}, executed


@pytest.mark.parametrize("owner", sorted(FORBIDDEN_LIBRARIES))
def test_layers_keep_their_libraries_out(owner: str) -> None:
    forbidden = FORBIDDEN_LIBRARIES[owner]
    found = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in ALL_IMPORTS
        if (i.module == owner or i.module.startswith(owner + "."))
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
