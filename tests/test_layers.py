"""The house's layers point down and hold no circles (DESIGN.md): read from every import statement.

Imports inside functions count (a circle hidden in a function is still a circle); imports under
``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("fcn", "pipeline", "flows", "fcnpipe")

# (importer prefix, imported prefixes it must not reach)
FORBIDDEN = [
    ("fcn", ("pipeline", "flows", "fcnpipe", "prefect", "prefect_dask", "typer", "rasterio", "zarr")),
    ("pipeline", ("flows", "fcnpipe", "prefect", "prefect_dask", "typer")),
    ("flows", ("fcnpipe", "typer")),
    # within pipeline: tiling writes through outputs; outputs never reach back into tiling
    ("pipeline.outputs", ("pipeline.tiling", "pipeline.training")),
    ("pipeline.tiling", ("pipeline.training",)),
    *[
        (f"pipeline.{base}", ("pipeline.tiling", "pipeline.outputs", "pipeline.training"))
        for base in ("settings", "plan", "grid", "raster", "storage", "inputs", "cluster", "stopping")
    ],
]

# what the front door reads before it knows what to run
HEAVY = ("torch", "prefect", "rasterio", "zarr", "distributed", "numpy")
LIGHT = ("fcnpipe.main", "fcnpipe.flowfile", "pipeline.settings", "fcn.errors")


def module_of(path: Path) -> str:
    """``pipeline.tiling.grid`` for pipeline/tiling/grid.py."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether ``node`` sits in an ``if TYPE_CHECKING:`` block."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(path: Path) -> dict[str, bool]:
    """The modules a file imports, each with whether the import is at module level."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or under_type_checking(node, parents):
            continue
        top = parents.get(node) is tree
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif node.module and node.level == 0:
            # ``from pipeline import stopping`` imports the module pipeline.stopping
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            found[name] = found.get(name, False) or top
    return found


def graph() -> dict[str, dict[str, bool]]:
    """Every module of the project and the project modules (and others) it imports."""
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {module_of(p): p for p in files}
    edges: dict[str, dict[str, bool]] = {}
    for name, path in modules.items():
        edges[name] = {}
        for target, top in imports(path).items():
            known = target if target in modules else target.rpartition(".")[0]
            key = known if known in modules else target
            edges[name][key] = edges[name].get(key, False) or top
    return edges


def reaches(name: str, prefix: str) -> bool:
    """``pipeline.tiling.grid`` is under ``pipeline.tiling``; ``prefect.flows`` under ``prefect``."""
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize(("importer", "banned"), FORBIDDEN)
def test_layers_only_point_down(importer: str, banned: tuple[str, ...]) -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        if reaches(module, importer)
        for target in targets
        if any(reaches(target, b) for b in banned)
    ]
    assert not wrong, wrong


def test_no_circles_between_modules() -> None:
    edges = graph()
    project = {m: {t for t in targets if t in edges and t != m} for m, targets in edges.items()}
    # a package's __init__ is not part of a circle through its own modules
    for module in project:
        project[module] = {t for t in project[module] if not reaches(module, t)}
    try:
        tuple(TopologicalSorter(project).static_order())
    except CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")


def test_the_front_door_imports_only_light_modules_at_module_level() -> None:
    edges = graph()
    seen, todo = set(), list(LIGHT)
    while todo:
        module = todo.pop()
        seen.add(module)
        todo += [t for t, top in edges.get(module, {}).items() if top and t in edges and t not in seen]
    heavy = sorted(
        f"{m} imports {t}" for m in seen for t, top in edges.get(m, {}).items()
        if top and any(reaches(t, h) for h in HEAVY)
    )  # fmt: skip
    assert not heavy, heavy
