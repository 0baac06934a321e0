"""The package's import layers (megatron_sft.LAYERS): no import points up, and no modules import each other in a
circle, counting every import, function-level ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import megatron_sft

PACKAGE = Path(megatron_sft.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every megatron_sft module `path` imports (at any depth, `if TYPE_CHECKING:` blocks included), with the line;
    `from pkg import x` counts as an import of pkg.x when that is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "megatron_sft":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in MODULES else node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "megatron_sft"]
    return found


def graph() -> dict[str, list[tuple[str, int]]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    """The layer unit of a module: its sub-package, or the top-level module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(edges: dict[str, list[tuple[str, int]]], layers=megatron_sft.LAYERS) -> list[str]:
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    bad = []
    for source, targets in edges.items():
        if unit(source) == "__init__":
            continue  # the package's own __init__ re-exports the top (api) lazily
        for target, line in targets:
            if rank[unit(target)] > rank[unit(source)]:
                bad.append(f"{source}:{line} imports {target} ({unit(source)} is below {unit(target)})")
    return bad


def cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan), over module-to-module imports."""
    known = set(edges)
    succ = {m: sorted({t for t, _ in ts if t in known and t != m}) for m, ts in edges.items()}
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return found


def test_every_unit_of_the_package_has_a_layer():
    units = {unit(m) for m in graph()} - {"__init__"}
    placed = {name for layer in megatron_sft.LAYERS for name in layer}
    assert units == placed, (sorted(units - placed), sorted(placed - units))


def test_no_import_points_up():
    assert upward_imports(graph()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert cycles(graph()) == []


def test_the_checks_can_fail():
    """An upward import and a two-module circle, added to the real graph, are both reported."""
    edges = graph()
    edges["megatron_sft.models.builder"] = edges["megatron_sft.models.builder"] + [("megatron_sft.training.loop", 1)]
    assert upward_imports(edges) == [
        "megatron_sft.models.builder:1 imports megatron_sft.training.loop (models is below training)"]
    edges["megatron_sft.training.loop"] = edges["megatron_sft.training.loop"] + [("megatron_sft.models.builder", 1)]
    assert ["megatron_sft.models.builder", "megatron_sft.training.loop"] in [
        [m for m in c if m in ("megatron_sft.models.builder", "megatron_sft.training.loop")] for c in cycles(edges)]


def test_one_module_is_called_config():
    """The run's configuration has one home (megatron_sft/config.py); nothing else is named after it."""
    assert sorted(m for m in MODULES if m.rsplit(".", 1)[-1] in ("config", "configs", "run_config")) == [
        "megatron_sft.config"]


def test_nothing_below_the_arguments_layer_names_it():
    """The flag parser sits above what it configures: no module under it imports it, even for a type."""
    rank = {name: i for i, layer in enumerate(megatron_sft.LAYERS) for name in layer}
    below = {m for m in MODULES if unit(m) != "__init__" and rank[unit(m)] < rank["arguments"]}
    edges = graph()
    assert below and not [(m, t) for m in below for t, _ in edges[m] if unit(t) == "arguments"]
