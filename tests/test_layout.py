"""The code's layout as a specification: no import cycle, and every package imports only
the packages below it.

The import graph is read from the source (every ``import`` and ``from … import``, at any
depth, ``TYPE_CHECKING`` blocks included), so a cycle hidden inside a function counts too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "backends")

LAYERS: dict[str, int] = {
    "gateway": 0,  # the package itself: only __version__
    "gateway.errors": 0,
    "gateway.routing": 0,
    "gateway.config": 0,
    "backends": 1,
    "gateway.ops": 2,
    "gateway.resilience": 3,
    "gateway.state": 4,
    "gateway.edge": 5,
    "gateway.cache": 6,
    "gateway.llm": 7,
    "gateway.data": 7,
    "gateway.admin": 7,
    "gateway.app": 8,
    "gateway.serve": 9,
    "gateway.embedded": 9,
    "gateway.cli": 10,
    "gateway.__main__": 11,
}
"""A unit may import units of a lower layer, and itself; units of one layer are siblings
that never import each other. Lower layers know nothing of higher ones."""

BACKENDS_MAY_IMPORT = frozenset({"gateway.errors"})
"""What an adapter may take from the gateway: the shared error types it raises."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imported_names(path: Path, module: str) -> Iterator[str]:
    """Every module `module` imports, with relative imports made absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (``from a import b`` counts as a.b when b
    is a module, else as a)."""
    modules = source_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = {target for target in imported_names(path, name) if target in modules}
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def unit_of(module: str) -> str:
    """The layout unit a module belongs to: its subpackage, or itself at the top."""
    if module.startswith("backends"):
        return "backends"
    parts = module.split(".")
    return ".".join(parts[:2])


def test_the_import_graph_has_no_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" → ".join(c) for c in found)


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(m) for m in source_modules()}
    assert units <= set(LAYERS), f"give these a layer: {sorted(units - set(LAYERS))}"


def test_packages_import_only_packages_below_them() -> None:
    wrong = []
    for module, targets in import_graph().items():
        unit = unit_of(module)
        for target in targets:
            other = unit_of(target)
            if other == unit:
                continue
            if unit == "backends":
                if target not in BACKENDS_MAY_IMPORT:
                    wrong.append(f"{module} → {target} (adapters take only the error types)")
            elif LAYERS[other] >= LAYERS[unit]:
                wrong.append(f"{module} → {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_two_packages_import_each_other() -> None:
    arrows = {
        (unit_of(m), unit_of(t))
        for m, targets in import_graph().items()
        for t in targets
        if unit_of(m) != unit_of(t)
    }
    both_ways = sorted({tuple(sorted(a)) for a in arrows if (a[1], a[0]) in arrows})
    assert not both_ways, f"packages importing each other: {both_ways}"


def test_config_imports_nothing_of_the_rest() -> None:
    outside = [
        f"{m} → {t}"
        for m, targets in import_graph().items()
        if unit_of(m) == "gateway.config"
        for t in targets
        if unit_of(t) != "gateway.config"
    ]
    assert not outside, outside


@pytest.mark.parametrize(
    "package", ["edge", "llm", "data", "resilience", "cache", "state", "ops", "admin", "config"]
)
def test_each_package_says_what_lives_there_and_what_it_may_import(package: str) -> None:
    init = ROOT / "gateway" / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc and len(doc) > 120, f"gateway/{package}/__init__.py needs its docstring"
    assert "import" in doc, "the docstring says what the package may import"


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in source_modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert not long, long
