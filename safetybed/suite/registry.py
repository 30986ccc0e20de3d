"""Suite entries, their demo results and the catalogue page ``docs/suite.md``.

A suite module ``safetybed/suite/<family>/<method>.py`` defines its core rule (a function or class whose docstring
cites the paper and equation), a demo ``demo(*, fast: bool, seed: int) -> DemoResult`` and a module-level
``ENTRY = SuiteEntry(...)``. :func:`entries` imports every module of every family package and collects the
``ENTRY`` objects, so adding a method never edits a shared list.

A full (non-fast) ``safetybed suite run NAME`` stores its :class:`DemoResult` as ``docs/suite/results/NAME.json``;
``safetybed suite report`` renders ``docs/suite.md`` from those files only, so the page shows measured numbers
and nothing else.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pkgutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetybed.errors import InputError
from safetybed.intervals import MeanInterval, mean_t_interval
from safetybed.jsonsafe import json_safe
from safetybed.threads import torch_threads

__all__ = ["DEMO_OPTIONS", "DemoResult", "Measure", "SuiteEntry", "VERDICTS", "entries", "get_entry", "load_result",
           "measure", "render_markdown", "run_demo", "save_result"]

#: The three verdicts a demo may give (the issue's wording).
VERDICTS = ("reproduced", "partly", "not reproduced")
#: The keyword options a demo may take beyond ``fast`` and ``seed`` (``SuiteEntry.options``), with their help.
DEMO_OPTIONS: dict[str, str] = {
    "controller": "a controller spec (controllers/*.toml) to run the demo on instead of its default one",
}
#: Where full-demo results are stored, relative to the repository root.
RESULTS_DIR = Path("docs") / "suite" / "results"
#: Families are the sub-packages of ``safetybed.suite``; ``common`` holds toys, not entries.
_NOT_FAMILIES = {"common"}


@dataclass(frozen=True)
class Measure:
    """One measured quantity of a demo: the mean over ``n`` seeds with its 95 % Student-t interval.

    ``values`` are the per-seed numbers (one value: ``half_width`` is NaN). ``unit`` says what the number is
    (``"return"``, ``"KL [nats]"``, ``"fraction"``)."""

    mean: float
    half_width: float
    n: int
    values: tuple[float, ...]
    unit: str = ""

    def text(self, digits: int = 3) -> str:
        """``mean ± half_width (n=…)``, or just ``mean`` for one value."""
        if self.n < 2 or not math.isfinite(self.half_width):
            return f"{self.mean:.{digits}g}"
        return f"{self.mean:.{digits}g} ± {self.half_width:.2g} (n={self.n})"

    def to_json_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "half_width": self.half_width, "n": self.n, "values": list(self.values),
                "unit": self.unit}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Measure:
        def number(value: Any) -> float:  # JSON stores NaN / infinities as null (jsonsafe)
            return math.nan if value is None else float(value)

        return cls(number(data["mean"]), number(data["half_width"]), int(data["n"]),
                   tuple(number(v) for v in data["values"]), str(data.get("unit", "")))


def measure(values: Sequence[float], *, unit: str = "") -> Measure:
    """A :class:`Measure` of per-seed ``values`` (mean and 95 % Student-t half width)."""
    values = [float(v) for v in values]
    interval: MeanInterval = mean_t_interval(values)
    return Measure(interval.mean, interval.half_width, interval.n, tuple(values), unit)


@dataclass(frozen=True)
class DemoResult:
    """What a demo measured, against what its paper claims.

    Attributes:
        name: the entry's name.
        claim: the paper's claimed effect, in one sentence, with the threshold the demo checks.
        measured: the method's numbers, by label (``{"return": Measure, ...}``).
        baseline: the paper's own baseline's numbers under the same labels where they compare.
        verdict: one of :data:`VERDICTS`.
        why: one line on the verdict (what held, what did not, what was tried).
        fast: whether this was the ``--fast`` variant.
        seeds: the seeds the numbers are over.
        settings: the demo's settings (problem size, steps, hyper-parameters).
        wall_s: the demo's wall time [s].
    """

    name: str
    claim: str
    measured: dict[str, Measure]
    baseline: dict[str, Measure]
    verdict: str
    why: str
    fast: bool
    seeds: tuple[int, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    wall_s: float = math.nan

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict: expected one of {VERDICTS}, got {self.verdict!r}")

    def to_json_dict(self) -> dict[str, Any]:
        return json_safe({
            "name": self.name, "claim": self.claim, "verdict": self.verdict, "why": self.why, "fast": self.fast,
            "seeds": list(self.seeds), "settings": self.settings, "wall_s": self.wall_s,
            "measured": {k: v.to_json_dict() for k, v in self.measured.items()},
            "baseline": {k: v.to_json_dict() for k, v in self.baseline.items()},
        })

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> DemoResult:
        return cls(name=data["name"], claim=data["claim"], verdict=data["verdict"], why=data["why"],
                   fast=bool(data["fast"]), seeds=tuple(int(s) for s in data["seeds"]),
                   settings=dict(data.get("settings", {})), wall_s=float(data.get("wall_s", math.nan)),
                   measured={k: Measure.from_json_dict(v) for k, v in data["measured"].items()},
                   baseline={k: Measure.from_json_dict(v) for k, v in data["baseline"].items()})


@dataclass(frozen=True)
class SuiteEntry:
    """One method of the suite.

    Attributes:
        name: the CLI name (``traj-weighting``), lower case with hyphens.
        title: the paper's full title.
        citation: authors and year (``"Hong et al. 2023"``).
        family: the family folder (``offline_rl``).
        module: the implementing module's dotted path.
        rule: the core rule, a reusable function or class.
        demo: ``demo(*, fast: bool, seed: int, **options) -> DemoResult``.
        options: the keyword options ``demo`` takes beyond ``fast`` and ``seed`` (each defaulting to the stored
            demo's setting), from :data:`DEMO_OPTIONS`: ``("controller",)`` for a demo that runs on any controller
            spec (``safetybed suite run NAME --controller CTRL``).
    """

    name: str
    title: str
    citation: str
    family: str
    module: str
    rule: Callable[..., Any]
    demo: Callable[..., DemoResult]
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.options) - set(DEMO_OPTIONS))
        if unknown:
            raise ValueError(f"suite entry {self.name!r}: options {unknown} unknown; expected a subset of "
                             f"{sorted(DEMO_OPTIONS)}")


def _family_modules() -> list[str]:
    import safetybed.suite as suite

    names: list[str] = []
    for family in pkgutil.iter_modules(suite.__path__):
        if not family.ispkg or family.name in _NOT_FAMILIES:
            continue
        package = importlib.import_module(f"safetybed.suite.{family.name}")
        names.extend(f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                     if not m.ispkg and not m.name.startswith("_"))
    return sorted(names)


def entries() -> list[SuiteEntry]:
    """Every registered entry, sorted by family then name; two entries with one name are an error."""
    found: dict[str, SuiteEntry] = {}
    for module_name in _family_modules():
        entry = getattr(importlib.import_module(module_name), "ENTRY", None)
        if entry is None:
            continue
        if not isinstance(entry, SuiteEntry):
            raise TypeError(f"{module_name}.ENTRY: expected a SuiteEntry, got {type(entry).__name__}")
        if entry.name in found:
            raise ValueError(f"suite entry name {entry.name!r} is registered by both {found[entry.name].module} "
                             f"and {entry.module}")
        found[entry.name] = entry
    return sorted(found.values(), key=lambda e: (e.family, e.name))


def get_entry(name: str) -> SuiteEntry:
    """The entry called ``name``; an :class:`InputError` listing the names otherwise."""
    known = {e.name: e for e in entries()}
    if name not in known:
        raise InputError(f"suite entry {name!r}: not found; expected one of {', '.join(sorted(known))}")
    return known[name]


def run_demo(entry: SuiteEntry, *, fast: bool, seed: int = 0, **options: Any) -> DemoResult:
    """Run ``entry``'s demo and stamp its wall time; ``options`` (None values dropped) must be among the entry's
    :attr:`SuiteEntry.options`, else an :class:`InputError` names them."""
    given = {key: value for key, value in options.items() if value is not None}
    refused = sorted(set(given) - set(entry.options))
    if refused:
        allowed = ", ".join(f"--{o}" for o in entry.options) or "none"
        raise InputError(f"suite entry {entry.name!r}: option(s) {', '.join('--' + r for r in refused)} not taken "
                         f"by its demo; it takes: {allowed}")
    start = time.perf_counter()
    with torch_threads(1):  # small networks: one thread is faster and the numbers do not depend on the core count
        result = entry.demo(fast=fast, seed=seed, **given)
    if result.name != entry.name:
        raise ValueError(f"{entry.module}.demo returned a result named {result.name!r}, expected {entry.name!r}")
    return dataclasses.replace(result, wall_s=time.perf_counter() - start)


def result_path(name: str, *, root: Path | None = None) -> Path:
    return (root or Path.cwd()) / RESULTS_DIR / f"{name}.json"


def save_result(result: DemoResult, *, root: Path | None = None) -> Path:
    """Store a full demo's result as ``docs/suite/results/NAME.json`` (a fast result is refused: the catalogue
    reports full demos only)."""
    if result.fast:
        raise ValueError(f"{result.name}: a --fast result is not stored; run the full demo")
    path = result_path(result.name, root=root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json_dict(), indent=2, allow_nan=False) + "\n")
    return path


def load_result(name: str, *, root: Path | None = None) -> DemoResult | None:
    """The stored full-demo result of ``name``, or None when there is none."""
    path = result_path(name, root=root)
    if not path.exists():
        return None
    try:
        return DemoResult.from_json_dict(json.loads(path.read_text()))
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a suite result ({exc})") from exc


def _numbers(values: Mapping[str, Measure]) -> str:
    return "; ".join(f"{label} {m.text()}" for label, m in values.items()) or "—"


def render_markdown(rows: Sequence[tuple[SuiteEntry, DemoResult | None]]) -> str:
    """``docs/suite.md``: one row per entry with the claim, measured and baseline numbers, verdict and why."""
    lines = [
        "# The algorithm suite: measured verdicts",
        "",
        "Generated by `safetybed suite report` from the stored full-demo results in `docs/suite/results/`",
        "(`safetybed suite run NAME` writes them). Numbers are means ± 95 % Student-t half widths over the seeds",
        "listed. A claim that did not reproduce on the small problem is reported as such; the *why* column says",
        "what was tried. Do not edit by hand.",
        "",
        "| entry | paper | claim | measured | baseline | verdict | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry, result in rows:
        if result is None:
            lines.append(f"| `{entry.name}` | {entry.title} ({entry.citation}) | — | not run | — | — | "
                         f"run `safetybed suite run {entry.name}` |")
            continue
        verdict = f"**{result.verdict}**"
        seeds = f" seeds {min(result.seeds)}–{max(result.seeds)}" if len(result.seeds) > 1 else ""
        lines.append(f"| `{entry.name}` | {entry.title} ({entry.citation}) | {result.claim} | "
                     f"{_numbers(result.measured)} | {_numbers(result.baseline)} | {verdict} | "
                     f"{result.why} ({result.wall_s:.0f} s{seeds}) |")
    return "\n".join(lines) + "\n"
