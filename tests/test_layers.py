"""The package's structure (docs/architecture.md, "Layers"): no import runs up a floor, no import circle, no
module over 450 lines, no function over 60 lines unless its docstring says why. Read from the code's own
imports (module level and inside functions), so a lazy import counts like any other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "include" / "tandem"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60

# floor of each top-level part of the package (docs/architecture.md)
FLOORS = {
    "cli": 7, "stack": 7, "demo": 7, "setup_models": 7, "__main__": 7,
    "serve": 6, "adapters": 5, "behavior": 4, "registry": 3, "knowledge": 2,
    "model_store": 1, "tracking": 1, "airflow": 1, "mlflow_auth": 1,
    "config": 0, "pg_urls": 0, "db": 0, "models": 0, "errors": 0, "faults": 0, "secret_files": 0,
    "filelock": 0, "mlflow_rest": 0, "__init__": 0, "data": 0,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports (``from tandem.x import y`` counts ``tandem.x.y`` when that is a module)."""
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("tandem") and name != own and name != "tandem":
                out.add(name)
    return out


def _floor(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    assert part in FLOORS, f"{module}: give its part {part!r} a floor in FLOORS and docs/architecture.md"
    return FLOORS[part]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def test_no_import_runs_up_a_floor():
    upward = [f"{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)})"
              for a, targets in _graph().items() for b in sorted(targets) if _floor(b) > _floor(a)]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    graph = _graph()
    # a package's __init__ re-exporting its modules is how callers reach them: it is not a circle
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and _modules()[t].name == "__init__.py")}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_modules_and_functions_stay_readable():
    too_long = []
    for name, path in _modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and "lines" not in (ast.get_docstring(node) or ""):
                    too_long.append(f"{name}.{node.name}: {length} lines and no reason in its docstring")
    assert not too_long, "\n".join(too_long)


def test_the_checker_sees_an_upward_and_a_circular_import(tmp_path, monkeypatch):
    """The checks above can fail: a knowledge module importing serve, and two modules importing each other."""
    root = tmp_path / "tandem"
    (root / "knowledge").mkdir(parents=True)
    (root / "serve").mkdir()
    for folder in (root, root / "knowledge", root / "serve"):
        (folder / "__init__.py").write_text("")
    (root / "knowledge" / "a.py").write_text("from tandem.serve import b\n")
    (root / "serve" / "b.py").write_text("def f():\n    from tandem.knowledge import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", root)
    graph = _graph()
    assert graph["tandem.knowledge.a"] == {"tandem.serve.b"} and graph["tandem.serve.b"] == {"tandem.knowledge.a"}
    import pytest

    with pytest.raises(AssertionError, match="imports tandem.serve.b"):
        test_no_import_runs_up_a_floor()
    with pytest.raises(AssertionError, match="tandem.knowledge.a"):
        test_no_import_circles()
