"""The package's layers, read from the imports of every module: each import points down or sideways, never up,
and no chain of imports comes back to where it started. docs/architecture.md explains the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmt_lib"

LAYERS = (
    ("runtime", ("mmt_lib", "mmt_lib.runtime")),
    ("data and models", ("mmt_lib.data", "mmt_lib.models")),
    ("settings", ("mmt_lib.config",)),
    ("evaluation", ("mmt_lib.evaluation",)),
    ("method", ("mmt_lib.method",)),
    ("figures", ("mmt_lib.figures",)),
    ("experiments", ("mmt_lib.experiments",)),
    ("commands", ("mmt_lib.train", "mmt_lib.batch", "mmt_lib.calibrate", "mmt_lib.stage0")),
)
"""Lowest first. ``mmt_lib`` itself (``__version__``) sits with the runtime; a module belongs to the layer of
its longest matching prefix."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise LookupError(f"{module} belongs to no layer of LAYERS")
    return max(matches)[1]


def imported_modules(module: str) -> set[str]:
    """Every mmt_lib module that ``module`` imports, at the top or inside a function, typing-only included."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "mmt_lib"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "mmt_lib":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    found.discard(module)
    return {name for name in found if name in MODULES or name == "mmt_lib"}


def test_every_module_belongs_to_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_or_sideways(module):
    upward = sorted(f"{name} ({LAYERS[layer_of(name)][0]})" for name in imported_modules(module)
                    if layer_of(name) > layer_of(module))
    assert not upward, f"{module} ({LAYERS[layer_of(module)][0]}) imports from a higher layer: {upward}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules that starts and ends at the same one, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "closed"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    graph = {module: imported_modules(module) - {"mmt_lib"} for module in MODULES if module != "mmt_lib"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_a_cycle_and_an_upward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("mmt_lib.method.mmt") < layer_of("mmt_lib.figures.analysis")
    assert layer_of("mmt_lib.runtime.paths") < layer_of("mmt_lib.data.synthetic") < layer_of("mmt_lib.config")
