"""Scenario specs: one TOML file = one simulator, task, parameters, perturbations, length and metrics.

Example (``scenarios/highway/cut_in.toml``)::

    name = "highway/cut_in"
    simulator = "highway"
    task = "cut_in"
    episode_steps = 20

    [highway]
    lanes = 3
    vehicles = 8

    [perturbations]
    observation_noise_std = 0.0

A spec may start from another with ``extends = "relative/path.toml"``; tables are merged key by key
and the extending file wins. ``scenarios/README.md`` documents every field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from safetybed.errors import SpecError
from safetybed.spec.base import StrictModel, read_toml_file
from safetybed.spec.bullet import BulletSpec, BulletTask
from safetybed.spec.classic import ClassicSpec, ClassicTask
from safetybed.spec.highway import HighwaySpec, HighwayTask

Simulator = Literal["highway", "bullet", "classic"]
Backend = Literal["highway-env", "batched"]
#: Highway tasks the batched backend simulates (one straight road).
BATCHED_HIGHWAY_TASKS = ("cruise", "cut_in", "overtaking")
TASKS: dict[str, tuple[str, ...]] = {
    "highway": HighwayTask.__args__,
    "bullet": BulletTask.__args__,
    "classic": ClassicTask.__args__,
}


class PerturbationSpec(StrictModel):
    """Perturbations applied by the adapter, identical for every simulator.

    ``observation_noise_std`` is in the observation's own units (Gaussian, fresh every step);
    ``action_delay_steps`` holds each action back by that many control steps (zeros at the start);
    ``frame_stack`` shows the controller its last k observations (after the noise: one draw per raw frame),
    oldest first, as one flat vector; the first observation of an episode fills every slot
    (:mod:`safetybed.sims.framestack`).
    """

    observation_noise_std: float = Field(0.0, ge=0, le=100)
    action_delay_steps: int = Field(0, ge=0, le=50)
    frame_stack: int = Field(1, ge=1, le=64)


class MetricsSpec(StrictModel):
    """What the runner records besides the per-episode summary."""

    per_step_log: bool = False
    decision_log: bool = False
    ttc_cap_s: float = Field(100.0, gt=0)


#: Highway families the ``[testing]`` importance-sampling tester supports (one straight road).
TESTABLE_HIGHWAY_TASKS = ("cruise", "cut_in", "overtaking")


class TestingSpec(StrictModel):
    """How the background traffic is sampled: naturally (NDE) or by importance sampling (NADE).

    ``method = "nde"``: every background decision is drawn from the naturalistic pmf (crude Monte Carlo).
    ``method = "nade"``: at every 1 Hz decision the most critical nearby vehicle (the POV) draws its action from
    ``(1 - epsilon) q~ + epsilon p``, where ``q~`` is proportional to ``p`` times the maneuver challenge of surrogate
    ego ``surrogate`` (a kinematic look-ahead of ``lookahead_s``), and the step is skipped (weight 1) when the POV's
    criticality does not exceed ``criticality_threshold`` (Feng et al. 2021, NADE; ``safetybed.evaluate.highway``).
    Highway scenarios only (straight-road families with naturalistic drivers).
    """

    __test__ = False  # not a pytest test class despite the name

    method: Literal["nde", "nade", "d2rl", "adate"] = "nde"
    epsilon: float = Field(0.1, gt=0, le=1)
    lookahead_s: float = Field(2.0, gt=0, le=10)
    criticality_threshold: float = Field(0.0, ge=0, lt=1)
    # Row of safetybed.sims.testing.lookahead.DEFAULT_SURROGATES (3 surrogates; tests check the bound stays in sync).
    surrogate: int = Field(0, ge=0, le=2)
    # d2rl: a policy written by safetybed.sims.testing.d2rl_proposal.save_policy (safetensors); adate: a proposal written by
    # safetybed.sims.testing.adate_proposal.save_proposal (JSON). Relative paths are resolved against the working directory.
    proposal_file: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _check_proposal_file(self) -> TestingSpec:
        if self.method in ("d2rl", "adate") and self.proposal_file is None:
            raise ValueError(f"proposal_file: method {self.method!r} needs the trained proposal file "
                             f"(made by safetybed evaluate), got none")
        if self.method in ("nde", "nade") and self.proposal_file is not None:
            raise ValueError(f"proposal_file: only used by methods 'd2rl' and 'adate', got method {self.method!r}")
        return self


class ScenarioSpec(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    simulator: Simulator
    task: str
    episode_steps: int = Field(ge=1, le=100_000)
    perturbations: PerturbationSpec = PerturbationSpec()
    metrics: MetricsSpec = MetricsSpec()
    highway: HighwaySpec | None = None
    bullet: BulletSpec | None = None
    classic: ClassicSpec | None = None
    testing: TestingSpec | None = None
    #: Simulator implementation: ``highway-env`` (the gymnasium adapters) or ``batched`` (the torch-batched highway
    #: simulator of :mod:`safetybed.sims.batched`, straight-road families only); records and seeds are the same.
    backend: Backend = "highway-env"

    @model_validator(mode="after")
    def _check_task_and_section(self) -> ScenarioSpec:
        allowed = TASKS[self.simulator]
        if self.task not in allowed:
            raise ValueError(f"task: expected one of {list(allowed)} for simulator {self.simulator!r}, "
                             f"got {self.task!r}")
        for other in ("highway", "bullet", "classic"):
            if other != self.simulator and getattr(self, other) is not None:
                raise ValueError(f"{other}: section not allowed for simulator {self.simulator!r}")
        if getattr(self, self.simulator) is None:
            default = {"highway": HighwaySpec, "bullet": BulletSpec, "classic": ClassicSpec}[self.simulator]()
            object.__setattr__(self, self.simulator, default)
        if self.simulator == "highway":
            self.highway.check_task(self.task)
        if self.backend == "batched":
            if self.simulator != "highway" or self.task not in BATCHED_HIGHWAY_TASKS:
                raise ValueError(f"backend: 'batched' simulates the highway tasks {list(BATCHED_HIGHWAY_TASKS)}, "
                                 f"got simulator {self.simulator!r} task {self.task!r}")
        if self.testing is not None:
            if self.simulator != "highway":
                raise ValueError(f"testing: section only allowed for simulator 'highway' (importance-sampled "
                                 f"background traffic), got simulator {self.simulator!r}")
            if self.testing.method != "nde" and self.task not in TESTABLE_HIGHWAY_TASKS:
                raise ValueError(f"testing.method: {self.testing.method!r} needs one of the straight-road tasks "
                                 f"{list(TESTABLE_HIGHWAY_TASKS)}, got task {self.task!r}")
            if self.testing.method != "nde" and self.highway.driver.model != "naturalistic":
                raise ValueError(f"testing.method: {self.testing.method!r} needs naturalistic background drivers "
                                 f"(highway.driver.model = 'naturalistic'), got {self.highway.driver.model!r}")
        return self

    def section(self) -> HighwaySpec | BulletSpec | ClassicSpec:
        """The simulator-specific section (never ``None`` after validation)."""
        return getattr(self, self.simulator)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    data = read_toml_file(path)
    extends = data.pop("extends", None)
    if extends is None:
        return data
    if not isinstance(extends, str):
        raise SpecError(path, "extends", f"expected a relative path string, got {type(extends).__name__}")
    base_path = (path.parent / extends).resolve()
    if base_path in chain or base_path == path.resolve():
        raise SpecError(path, "extends", f"circular extends through {base_path}")
    if not base_path.exists():
        raise SpecError(path, "extends", f"base spec {extends!r} not found (looked at {base_path})")
    return _merge(_read_toml(base_path, chain + (path.resolve(),)), data)


def format_validation_error(file: str | Path, error: ValidationError) -> SpecError:
    """Turn pydantic's report into one :class:`SpecError` naming the first bad field and the reason."""
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
        # Validators raise "field: reason"; lift the field into the path (fields of nested models raise
        # their own name, section validators the full dotted path).
        if ": " in message:
            field, rest = message.split(": ", 1)
            if " " not in field:
                if not loc or field.startswith(loc.split(".")[0] + "."):
                    loc = field
                else:
                    loc = f"{loc}.{field}"
                message = rest
    if first["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see the README of the spec folder)"
    elif first["type"] == "missing":
        message = "required field is missing"
    elif "input" in first and first["type"] not in ("missing",):
        given = first["input"]
        if not isinstance(given, dict):
            message = f"{message} (given: {given!r})"
    more = len(error.errors()) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return SpecError(file, loc, message)


def parse_scenario(data: dict[str, Any], *, source: str | Path = "<string>") -> ScenarioSpec:
    try:
        return ScenarioSpec.model_validate(data)
    except ValidationError as error:
        raise format_validation_error(source, error) from None


def load_scenario(path: str | Path) -> ScenarioSpec:
    """Read and validate a scenario spec; raise :class:`SpecError` (exit code 2) on any problem."""
    path = Path(path)
    return parse_scenario(_read_toml(path), source=path)


def with_backend(spec: ScenarioSpec, backend: str | None) -> ScenarioSpec:
    """``spec`` run on ``backend`` (``None``: unchanged); :class:`~safetybed.errors.InputError` if it cannot be.

    The ``--backend`` flag of ``run``, ``certify`` and ``evaluate``: validated as if the spec's file said so.
    """
    from safetybed.errors import InputError

    if backend is None or backend == spec.backend:
        return spec
    try:
        return ScenarioSpec.model_validate({**spec.model_dump(), "backend": backend})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "backend"
        raise InputError(f"{spec.name}: --backend {backend}: {where}: {first['msg']}") from None
