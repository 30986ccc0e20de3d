"""Dependencies point one way: ``spec`` <- ``sims`` / ``control`` <- ``runner`` <- ``certify`` / ``evaluate`` /
``adapt`` <- ``report`` <- ``cli`` (shared/DESIGN.md). Imports are read with ``ast`` (function-level ones too),
so a lazy upward import inside a function is caught as well.

On the tree before issue 12 this test failed with, among others, ``sims.base -> evaluate.highway`` (the NADE
tester lived in evaluate), ``control.training -> runner.episode`` (rollout lived in the runner),
``spec.controller -> control.algorithms`` (spec validation imported the trainers), ``spec.certify -> catalogue``
with ``catalogue -> spec`` (a cycle), and ``certify.pipeline -> report`` / ``evaluate.pipeline -> report``
(pipelines wrote their HTML).
"""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO_ROOT

#: Layer of each top-level part of the package: a module may import from a lower layer or its own part.
LAYERS = {
    "": 0, "errors": 0,  # the package root (its version) and the user-facing error types
    "jsonsafe": 0, "intervals": 0,  # the one JSON encoding of non-finite numbers, the one interval type
    "seeding_keys": 0,  # every fixed SeedSequence spawn key
    "threads": 0,  # the one switch of torch's intra-op thread count
    "spec": 1,
    "sims": 2, "control": 2,
    "runner": 3,
    "certify": 4, "evaluate": 4, "adapt": 4, "suite": 4,
    "report": 5,
    "pipeline": 6,  # certify -> deploy -> evaluate -> one report, for one controller
    "quickstart": 7,  # the main job, end to end: runs the pipelines and writes their reports
    "cli": 8,
    "__main__": 9,
}
#: Imports inside one layer that are allowed (``sims`` never imports ``control``; ``certify`` and ``evaluate``
#: never import each other; nothing imports ``suite``, a leaf, which may use the evaluation's tools, e.g. GROOVE's
#: regret reference is the avoidable-collision oracle of ``evaluate.avoidable``; the JSON encoding knows the interval
#: type).
SAME_LAYER_ALLOWED = {("control", "sims"), ("jsonsafe", "intervals"), ("suite", "evaluate")}


def part_of(module: str) -> str:
    """``safetybed.sims.testing.tester`` -> ``sims``; ``safetybed`` itself -> ``""`` (importable by all)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return [(name, line) for name, line in found if name == "safetybed" or name.startswith("safetybed.")]


def layer_violations(package: Path) -> list[str]:
    """Every ``file:line importer -> imported`` that points up or sideways, for the package folder ``package``."""
    violations = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package.parent).with_suffix("")
        module = ".".join(part for part in relative.parts if part != "__init__")
        source = part_of(module)
        if source not in LAYERS:
            violations.append(f"{relative}: top-level part {source!r} has no layer in LAYERS")
            continue
        for imported, line in imports_of(path):
            target = part_of(imported)
            if target == "" or target == source:
                continue
            if target not in LAYERS:
                violations.append(f"{relative}:{line}: imports {imported}, whose part has no layer")
            elif not (LAYERS[target] < LAYERS[source] or (source, target) in SAME_LAYER_ALLOWED):
                violations.append(f"{relative}:{line}: {module} -> {imported} ({source} may not import {target})")
    return violations


def test_dependencies_point_one_way():
    violations = layer_violations(REPO_ROOT / "safetybed")
    assert violations == [], "\n".join(violations)


def test_the_check_sees_an_upward_import(tmp_path):
    package = tmp_path / "safetybed"
    (package / "sims").mkdir(parents=True)
    (package / "sims" / "base.py").write_text("def f():\n    from safetybed.evaluate.highway import x\n")
    (package / "control").mkdir()
    (package / "control" / "ok.py").write_text("from safetybed.sims.base import f\nimport safetybed\n")
    assert layer_violations(package) == [
        "safetybed/sims/base:2: safetybed.sims.base -> safetybed.evaluate.highway (sims may not import evaluate)"]
