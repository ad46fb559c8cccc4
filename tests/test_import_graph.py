"""The package's import graph has no circle.

Every `import` statement counts, at module level and inside functions alike: a function-level import is how
a circle hides (the one between inference, evaluation/onnx_export and evaluation/efficiency was three lazy
imports), and it still means two modules each need the other. Only imports under `if TYPE_CHECKING:` are
left out: they never run, and they are the way to name a type without depending on its module.

`import a.b.c` (or `from a.b.c import x`) from outside the package `a.b` also runs `a/b/__init__.py`, so the
importer depends on that package's `__init__` too; from inside it, the package is already being imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dbdgan"


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__) for every module of dbdgan."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, wherever it is, except under `if TYPE_CHECKING:`."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _type_checking_only(node):
            children = list(node.orelse)
        todo.extend(children)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, within dbdgan."""
    known = modules()

    def resolve(name: str) -> str | None:  # `from a.b import f`: f is no module, so the import is of a.b
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in known.items():
        base = name if is_package else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                module = node.module or ""
                if node.level:
                    parts = base.split(".")
                    module = ".".join(parts[:len(parts) - node.level + 1] + ([module] if module else []))
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                           for alias in node.names]
            for target in targets:
                resolved = resolve(target) if target.split(".")[0] == PACKAGE.name else None
                if resolved is None:
                    continue
                mine = {name, *_ancestors(name)}
                for one in [*_ancestors(resolved), resolved]:
                    if one not in mine:
                        edges.setdefault(one, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
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


def _describe(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    members = set(component)
    lines = [f"  {name}:{line} imports {target}" for name in component
             for target, line in sorted(graph[name].items()) if target in members]
    return "circle of " + ", ".join(component) + ":\n" + "\n".join(lines)


def test_the_finder_sees_a_circle_through_function_level_imports(tmp_path):
    graph = {"a": {"b": 1}, "b": {"c": 3}, "c": {"a": 7}, "d": {"a": 2}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []
    tree = ast.parse("import x\nif TYPE_CHECKING:\n    import y\nelse:\n    import z\ndef f():\n    import w\n")
    assert sorted(alias.name for node in _imports(tree) for alias in node.names) == ["w", "x", "z"]


def test_the_graph_covers_the_package():
    graph = import_graph()
    assert {"dbdgan.cli", "dbdgan.cli_models", "dbdgan.inference", "dbdgan.inference_onnx",
            "dbdgan.models.info"} <= set(graph)
    assert "dbdgan.inference_onnx" in graph["dbdgan.inference"]  # a function-level import counts
    assert "dbdgan.models" in graph["dbdgan.inference"]  # importing models.fusion runs models/__init__
    assert "dbdgan.models" not in graph["dbdgan.models.registry"]  # its own package is no dependency


def test_the_package_has_no_import_circle():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "\n".join(_describe(component, graph) for component in found)
