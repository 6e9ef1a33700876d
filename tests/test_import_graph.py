"""No import circle in app/ or models/.

Every import counts: at module level, inside functions, and under `if TYPE_CHECKING:` — a lazy
or type-only import that exists to dodge a circle is still the circle (the two modules are one
concern split in the wrong place). Modules are read with ast, never imported, so the test sees
the code as written.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "models")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported(name: str, path: Path) -> set[str]:
    """The modules of app/ and models/ that `name` imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package upwards
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                targets.add(submodule if submodule in MODULES else module)
    return {target for target in targets if target in MODULES and target != name}


GRAPH = {name: _imported(name, path) for name, path in MODULES.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _cycle_through(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """One concrete cycle inside a component, for the failure message."""
    inside = set(members)
    path = [members[0]]
    seen = {members[0]}
    while True:
        step = sorted(graph[path[-1]] & inside)
        nxt = next((t for t in step if t not in seen), None)
        if nxt is None:
            back = next(t for t in step if t in seen)
            return [*path[path.index(back) :], back]
        path.append(nxt)
        seen.add(nxt)


def test_the_graph_is_read() -> None:
    # The walker must see what is there, or an empty graph would pass: spot-check known edges,
    # including one made by an import inside a function.
    assert "app.queue.store" in GRAPH["app.queue.worker"]
    assert "models" in GRAPH["app.queue.child"]
    assert any(GRAPH[name] for name in GRAPH if name.startswith("models."))
    assert len(MODULES) > 40


def test_the_walker_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    (component,) = _circles(graph)
    assert component == ["a", "b", "c"]
    assert _cycle_through(graph, component) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle(package: str) -> None:
    inside = {
        name: {t for t in targets if t.split(".")[0] == package}
        for name, targets in GRAPH.items()
        if name.split(".")[0] == package
    }
    circles = [
        f"{', '.join(c)}: e.g. {' -> '.join(_cycle_through(inside, c))}" for c in _circles(inside)
    ]
    assert not circles, "import circles:\n" + "\n".join(circles)
