"""Find specs in the user's catalogue folders (``scenarios/``, ``controllers/``, ``certify/``).

A scenario argument is either a path to a TOML file or a catalogue name such as ``highway/cut_in``,
looked up as ``scenarios/highway/cut_in.toml`` under the current directory, then under the
folder safetybed was installed from (an editable checkout).
"""

from __future__ import annotations

from pathlib import Path

from safetybed.errors import SpecError
from safetybed.spec.scenario import ScenarioSpec, load_scenario

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def catalogue_dirs(kind: str = "scenarios") -> list[Path]:
    candidates = [Path.cwd() / kind, PACKAGE_ROOT / kind]
    seen: list[Path] = []
    for candidate in candidates:
        if candidate.is_dir() and candidate.resolve() not in [s.resolve() for s in seen]:
            seen.append(candidate)
    return seen


def resolve_scenario_path(arg: str) -> Path:
    path = Path(arg)
    if path.exists() or path.suffix == ".toml":
        return path
    for folder in catalogue_dirs("scenarios"):
        candidate = folder / f"{arg}.toml"
        if candidate.exists():
            return candidate
    return path


def load_scenario_arg(arg: str) -> tuple[ScenarioSpec, Path]:
    """Load a scenario given as a path or catalogue name; :class:`SpecError` names the file on failure."""
    path = resolve_scenario_path(arg)
    if not path.exists():
        names = ", ".join(sorted(list_scenarios())[:8])
        raise SpecError(path, "", f"file not found (a scenario is a TOML path or a catalogue name such as {names})")
    return load_scenario(path), path


def list_scenarios() -> dict[str, Path]:
    """Catalogue name -> path for every ``*.toml`` under the scenario folders (first folder wins)."""
    found: dict[str, Path] = {}
    for folder in catalogue_dirs("scenarios"):
        for path in sorted(folder.rglob("*.toml")):
            found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), path)
    return found
