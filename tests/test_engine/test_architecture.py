"""The engine's shape: its imports form a DAG, and it knows nothing of the Dagster layer."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import wtb_dagster

ENGINE = Path(wtb_dagster.__file__).parent
FORBIDDEN = {"dagster", "dagster_ray", "dagster_postgres", "assets", "resources", "sensors", "jobs"}


def _modules() -> dict[str, Path]:
    found = {}
    for info in pkgutil.walk_packages([str(ENGINE)], prefix="wtb_dagster."):
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.origin is not None
        found[info.name] = Path(spec.origin)
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Every module a module imports (at any depth of its code, type-checking blocks included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_every_engine_module_imports():
    for name in _modules():
        importlib.import_module(name)


def test_engine_imports_form_a_dag():
    modules = _modules()
    graph = {
        name: {m for m in _imports(name, path) if m in modules and m != name}
        for name, path in modules.items()
    }
    # a package's own __init__ re-exports are not a cycle of the modules below it
    graph["wtb_dagster"] = set()
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " → ".join([*trail, name])
        state[name] = "open"
        for dependency in sorted(graph[name]):
            visit(dependency, [*trail, name])
        state[name] = "done"
        order.append(name)

    for name in sorted(graph):
        visit(name, [])
    assert len(order) == len(graph)


def test_nothing_below_the_facade_imports_it():
    modules = _modules()
    above = {"wtb_dagster.api", "wtb_dagster.cli", "wtb_dagster.parity"}
    for name, path in modules.items():
        if name in above:
            continue
        assert "wtb_dagster.api" not in _imports(name, path), f"{name} imports the Bench facade"


def test_no_engine_module_imports_dagster_or_the_code_location():
    for name, path in _modules().items():
        roots = {m.split(".")[0] for m in _imports(name, path)}
        assert not roots & FORBIDDEN, f"{name} imports {sorted(roots & FORBIDDEN)}"
