"""The import direction of docs/architecture.md: each package imports only the layers below it, never a sibling
of its own layer, and no two modules import each other in a circle."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lowest first; a module may import its own package and the layers below. Packages sharing a layer are siblings
# and never import each other.
LAYERS = (
    ("raysearch.errors",),
    ("raysearch.core",),
    ("raysearch.data",),
    ("raysearch.models",),
    ("raysearch.tasks",),
    ("raysearch.training",),
    ("raysearch.search", "raysearch.inference"),
    ("raysearch.study",),
    ("raysearch.cli", "raysearch.dashboard"),
    ("raysearch.__main__",),
)
SOURCES = {"raysearch": "raysearch", "raysearch.dashboard": "dashboard"}


def module_name(path: Path, root: Path) -> str:
    """The dotted module name of a source file (the dashboard ships as raysearch.dashboard)."""
    for package, folder in SOURCES.items():
        if path.is_relative_to(root / folder):
            parts = path.relative_to(root / folder).with_suffix("").parts
            return ".".join((package, *parts)).removesuffix(".__init__")
    raise ValueError(path)


def component(module: str) -> str | None:
    """The package (layer entry) a module belongs to, or None for the package root `raysearch`."""
    matches = [entry for layer in LAYERS for entry in layer if module == entry or module.startswith(entry + ".")]
    return max(matches, key=len) if matches else None


def layer_of(entry: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if entry in layer)


def imports(path: Path, module: str) -> set[str]:
    """Every raysearch module `path` imports, at any depth of the file (lazy and TYPE_CHECKING imports count)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.update(f"{base}.{alias.name}" if _is_module(base, alias.name) else base for alias in node.names)
    return {name for name in found if name.startswith("raysearch.")}


def _is_module(base: str, name: str) -> bool:
    """Whether `from base import name` names a submodule (a file or folder beside the code)."""
    for package, folder in SOURCES.items():
        if base == package or base.startswith(package + "."):
            inner = base.removeprefix(package).strip(".")
            relative = Path(folder, *inner.split(".")) if inner else Path(folder)
            return (ROOT / relative / f"{name}.py").is_file() or (ROOT / relative / name).is_dir()
    return False


def source_files(root: Path) -> list[Path]:
    return sorted(p for folder in SOURCES.values() for p in (root / folder).rglob("*.py"))


def violations(root: Path) -> list[str]:
    """`importer -> imported` for every import that goes up a layer or sideways into a sibling package."""
    found = []
    for path in source_files(root):
        importer = module_name(path, root)
        source = component(importer)
        for imported in sorted(imports(path, importer)):
            target = component(imported)
            if source is None or target is None or source == target:
                continue
            if layer_of(target) >= layer_of(source):
                found.append(f"{importer} -> {imported}")
    return found


def module_graph(root: Path) -> dict[str, set[str]]:
    """Each module's imports of other raysearch modules (packages resolved to their __init__)."""
    graph = {module_name(p, root): set() for p in source_files(root)}
    for path in source_files(root):
        name = module_name(path, root)
        graph[name] = {m for m in imports(path, name) if m in graph and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of a module graph (Tarjan's strongly connected components of two or more modules)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component_nodes = []
            while True:
                top = stack.pop()
                component_nodes.append(top)
                if top == node:
                    break
            if len(component_nodes) > 1:
                found.append(sorted(component_nodes))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_every_import_goes_down_the_layers() -> None:
    assert violations(ROOT) == []


def test_every_package_has_a_layer() -> None:
    packages = {module_name(p, ROOT) for p in source_files(ROOT) if p.name == "__init__.py"}
    top = {p for p in packages if p.count(".") == 1}
    assert all(component(p) == p for p in top), top


def test_no_import_circle() -> None:
    assert cycles(module_graph(ROOT)) == []


@pytest.mark.parametrize(("file", "line", "expected"), [
    ("raysearch/data/samples.py", "from raysearch.study.spec import StudySpec",
     "raysearch.data.samples -> raysearch.study.spec"),
    ("raysearch/search/history.py", "from raysearch.inference import predict",
     "raysearch.search.history -> raysearch.inference.predict"),
    ("raysearch/study/lock.py", "from raysearch.dashboard.logic import safe_path",
     "raysearch.study.lock -> raysearch.dashboard.logic"),
])
def test_a_planted_wrong_way_import_is_found(tmp_path: Path, file: str, line: str, expected: str) -> None:
    for folder in SOURCES.values():
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    planted = tmp_path / file
    planted.write_text(planted.read_text() + f"\n\ndef _planted() -> None:\n    {line}\n")
    assert violations(tmp_path) == [expected]


def test_a_planted_circle_is_found() -> None:
    graph = module_graph(ROOT)
    graph["raysearch.core.layout"].add("raysearch.core.columns")
    graph["raysearch.core.columns"].add("raysearch.core.layout")
    assert ["raysearch.core.columns", "raysearch.core.layout"] in cycles(graph)
