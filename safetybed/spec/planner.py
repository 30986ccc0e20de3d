"""Planner specs: a controller TOML with ``algorithm = "planner"`` (the highway trajectory-scoring planner).

Example (``controllers/highway_planner.toml``)::

    name = "highway_planner"
    algorithm = "planner"
    scenario = "highway/cut_in"
    checkpoint = "weights/highway_planner"

    [network]
    hidden = 64

    [train]
    episodes = 600           # seeded expert episodes labelled by simulating every candidate
    epochs = 30

    [adapt.centaur]          # options of `adapt:centaur:controllers/highway_planner.toml`
    lr = 1e-4

The trained network, its vocabulary and these options are what :mod:`safetybed.control.planner` loads; which test-
time adaptation runs is chosen by the controller reference (``adapt:METHOD:SPEC``), so one spec serves every method.
Unknown keys anywhere are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from safetybed.errors import SpecError
from safetybed.spec.base import StrictModel, read_toml_file
from safetybed.spec.controller import LoadedControllerSpec
from safetybed.spec.scenario import format_validation_error

#: Test-time adaptation methods of the planner (``adapt:METHOD:SPEC``).
ADAPT_METHODS = ("none", "centaur", "tent")


class PlannerNetworkSpec(StrictModel):
    hidden: int = Field(64, ge=4, le=1024)
    #: ``(w_im, w_nc, w_dac, w)`` of the selection score phi (:mod:`safetybed.control.planner.scorer`).
    weights: tuple[float, float, float, float] = (0.0, 1.0, 1.0, 1.0)


class VocabularySpec(StrictModel):
    accelerations_mps2: list[float] = Field([-5.0, -2.0, 0.0, 2.0], min_length=1, max_length=16)
    horizon_s: float = Field(4.0, gt=0, le=20)
    lane_change_s: float = Field(2.0, gt=0, le=10)


class PlannerTrainSpec(StrictModel):
    #: Episodes driven by the search expert (with ``explore``) whose every state is labelled.
    episodes: int = Field(600, ge=1, le=100_000)
    #: Probability that a step executes a uniformly drawn candidate instead of the expert's (off-path states).
    explore: float = Field(0.2, ge=0, le=1)
    #: Extra rounds of DAgger (Ross et al. 2011): drive ``episodes`` more with the planner trained so far (and
    #: ``explore``), label its states with the expert, retrain on everything.
    dagger_rounds: int = Field(1, ge=0, le=10)
    epochs: int = Field(30, ge=1, le=1000)
    batch_size: int = Field(256, ge=1, le=65536)
    lr: float = Field(1e-3, gt=0, le=1)
    seed: int = Field(0, ge=0, lt=2**63)
    #: Extra training scenarios (catalogue names or paths relative to the spec), ``episodes`` each.
    extra_scenarios: list[str] = Field(default_factory=list, max_length=16)


class CentaurSpec(StrictModel):
    """Options of the Centaur update (:class:`safetybed.control.planner.centaur.CentaurAdapter`)."""

    lr: float = Field(1e-4, gt=0, le=10)
    frames: int = Field(4, ge=1, le=64)
    cumulative: bool = False
    entropy_threshold: float | None = Field(None, ge=0)
    #: Cluster Entropy (:func:`safetybed.control.planner.cluster_entropy.cluster_entropy`).
    m: int = Field(100, ge=1, le=100_000)
    subset: Literal["top", "random"] = "top"
    temperature: float = Field(1.0, gt=0, le=1000)
    thresholds_m: tuple[float, float, float, float] = (-2.5, -0.75, 0.75, 2.5)

    @model_validator(mode="after")
    def _increasing(self) -> CentaurSpec:
        edges = self.thresholds_m
        if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError(f"thresholds_m: expected 4 increasing edges [m], got {list(edges)}")
        return self


class TentSpec(StrictModel):
    """Options of TENT (:class:`safetybed.control.planner.tent.TentAdapter`)."""

    lr: float = Field(1e-3, gt=0, le=10)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)


class AdaptSpec(StrictModel):
    centaur: CentaurSpec = CentaurSpec()
    tent: TentSpec = TentSpec()


class PlannerSpec(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    algorithm: Literal["planner"]
    scenario: str = Field(min_length=1)
    checkpoint: str = Field(min_length=1)
    network: PlannerNetworkSpec = PlannerNetworkSpec()
    vocabulary: VocabularySpec = VocabularySpec()
    train: PlannerTrainSpec = PlannerTrainSpec()
    adapt: AdaptSpec = AdaptSpec()


def is_planner_spec(path: str | Path) -> bool:
    """Whether the controller TOML at ``path`` says ``algorithm = "planner"`` (read errors surface later)."""
    try:
        data: dict[str, Any] = read_toml_file(Path(path))
    except SpecError:  # the controller-spec loader reports it, with its file and reason
        return False
    return data.get("algorithm") == "planner"


def load_planner_spec(path: str | Path) -> LoadedControllerSpec:
    """Read and validate a planner spec; :class:`~safetybed.errors.SpecError` (exit 2) names the field."""
    path = Path(path)
    data = read_toml_file(path)
    try:
        spec = PlannerSpec.model_validate(data)
    except ValidationError as error:
        raise format_validation_error(path, error) from None
    return LoadedControllerSpec(spec=spec, path=path)
