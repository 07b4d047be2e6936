"""The house: imports point one way, stages are leaves, and nothing forms a cycle.

Floors, top to bottom (a module imports its own floor or lower, never higher):
3. ``stages/``: one module per DVC stage;
2. ``train/`` (the one training loop), evaluation and deployment (``evaluate``, ``evaluate_onnx``,
   ``export``, ``inference``, ``cli``, ``variants``, ``ablation``);
1. the method and its materials: ``dacs/``, ``models/``, ``data/``, ``optim``, ``metrics``, ``viz``;
0. the ground floor: ``config``, ``labels``, ``lineage``, ``utils/``.
``flows/`` drives DVC and may import the ground floor only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "src" / "dacs_uda"
FLOORS = {
    0: ("config", "labels", "lineage", "utils"),
    1: ("dacs", "models", "data", "optim", "metrics", "viz"),
    2: (
        "train",
        "evaluate",
        "evaluate_onnx",
        "export",
        "inference",
        "cli",
        "variants",
        "ablation",
        "ablation_summary",
        "plan",
    ),
    3: ("stages",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int | None:
    """The floor of ``dacs_uda.<top>...``; None for the package root."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return next(f for f, tops in FLOORS.items() if parts[1] in tops)


def package_imports(path: Path) -> set[str]:
    """The ``dacs_uda`` modules ``path`` imports (``from a import b`` counts ``a.b`` when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {m for m in found if m.split(".")[0] == "dacs_uda" and _exists(m)}


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: package_imports(path) - {name} for name, path in MODULES.items()}


def test_every_module_has_a_floor() -> None:
    tops = {name.split(".")[1] for name in MODULES if "." in name}
    assert tops == {top for group in FLOORS.values() for top in group}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if floor(m) is not None))
def test_imports_point_down(module: str) -> None:
    up = sorted(dep for dep in GRAPH[module] if (floor(dep) or 0) > floor(module))
    assert not up, f"{module} (floor {floor(module)}) imports a higher floor: {up}"


def test_nothing_imports_a_stage() -> None:
    offenders = {
        module: sorted(dep for dep in deps if dep.startswith("dacs_uda.stages."))
        for module, deps in GRAPH.items()
        if module != "dacs_uda.stages"
    }
    assert not {m: d for m, d in offenders.items() if d}


def test_no_import_cycles() -> None:
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(GRAPH.get(module, ())):
            if state.get(dep) == "open":
                raise AssertionError(" -> ".join([*path, module, dep]))
            if dep not in state:
                visit(dep, [*path, module])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])


def test_flows_import_only_the_ground_floor() -> None:
    for path in sorted((REPO / "flows").glob("*.py")):
        higher = sorted(m for m in package_imports(path) if (floor(m) or 0) > 0)
        assert not higher, f"{path.name} imports {higher}: flows drive DVC, they do not run stages"


def test_a_stage_main_is_thin() -> None:
    for name, path in MODULES.items():
        if not name.startswith("dacs_uda.stages."):
            continue
        mains = [
            n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == "main"
        ]
        assert len(mains) == 1, f"{name} has no main()"
        length = mains[0].end_lineno - mains[0].lineno + 1
        assert length <= 40, f"{name}.main() is {length} lines: move the work into the library"
