"""Controller specs (``controllers/*.toml``): algorithm, network, hyper-parameters, scenario, budget.

Example (``controllers/cartpole_ppo.toml``)::

    name = "cartpole_ppo"
    algorithm = "ppo"
    scenario = "classic/cartpole_noisy"      # catalogue name, or a path relative to this file
    checkpoint = "weights/cartpole_ppo"      # folder the trained weights live in (relative to this file)

    [network]
    hidden = [64, 64]
    activation = "tanh"

    [train]
    steps = 100000
    envs = 8
    seed = 0

    [hyper]                                  # fields of the algorithm's Config dataclass
    learning_rate = 3e-4

Unknown keys anywhere (including ``[hyper]``, checked against the algorithm's config) are errors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from safetybed.errors import SpecError
from safetybed.spec.base import StrictModel, read_toml_file
from safetybed.spec.scenario import format_validation_error

Algorithm = Literal["dsac_t", "sac", "ppo", "mdpo_on", "mdpo_off"]


class NetworkSpec(StrictModel):
    hidden: list[int] = Field([256, 256], min_length=1, max_length=8)
    activation: Literal["relu", "tanh", "gelu", "elu"] = "relu"
    normalize_observations: bool = False
    #: With ``normalize_observations``: z-scores divide by max(running std, this) [raw observation units], so noise
    #: on a feature that is constant in the training data (lane width, speed limit) is not blown up to the clip
    #: (:class:`safetybed.control.networks.ObsNormalizer`). Set it to about the certification sigma; 0: no floor.
    observation_std_floor: float = Field(0.0, ge=0, le=100)


class TrainSpec(StrictModel):
    steps: int = Field(100_000, ge=1, le=10**9)
    envs: int = Field(1, ge=1, le=1024)
    seed: int = Field(0, ge=0, lt=2**63)
    eval_every_steps: int = Field(10_000, ge=1)
    eval_episodes: int = Field(10, ge=1, le=10_000)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    vector: Literal["sync", "async", "batched"] = "sync"
    observation_noise_std: float = Field(0.0, ge=0, le=100)
    #: Subtracted from the reward of every step that ends in a collision (``info["safety"]["collision"]``), in
    #: training only: the scenario's reward (0 at a collision, and no more steps) is what evaluation, runs and
    #: certificates use. 0: train on the scenario's reward.
    collision_penalty: float = Field(0.0, ge=0, le=1e6)
    #: More scenarios (catalogue names or paths relative to the spec) trained on besides ``scenario``, with the
    #: same observation and action spaces; ``envs`` and the evaluation episodes are split evenly over all.
    extra_scenarios: list[str] = Field(default_factory=list, max_length=16)


class ControllerSpec(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    algorithm: Algorithm
    scenario: str = Field(min_length=1)
    checkpoint: str = Field(min_length=1)
    deterministic: bool = True
    #: ``"idm"``: act through the IDM/MOBIL safety shield of :mod:`safetybed.control.shield` (highway scenarios
    #: only; training trains the raw policy). ``"none"``: the policy's actions as they are.
    shield: Literal["none", "idm"] = "none"
    network: NetworkSpec = NetworkSpec()
    train: TrainSpec = TrainSpec()
    hyper: dict[str, Any] = {}


@dataclasses.dataclass(frozen=True)
class LoadedControllerSpec:
    spec: Any  # ControllerSpec, or safetybed.spec.planner.PlannerSpec for ``algorithm = "planner"``
    path: Path

    @property
    def checkpoint_dir(self) -> Path:
        return (self.path.parent / self.spec.checkpoint).resolve()

    def scenario_ref(self, ref: str | None = None) -> str:
        """The scenario (or ``ref``, e.g. one of ``[train] extra_scenarios``) as a path when it is one relative
        to the spec, else the catalogue name."""
        ref = self.spec.scenario if ref is None else ref
        candidate = self.path.parent / ref
        return str(candidate) if candidate.suffix == ".toml" else ref


def load_controller_spec(path: str | Path) -> LoadedControllerSpec:
    path = Path(path)
    data = read_toml_file(path)
    if data.get("algorithm") == "planner":
        raise SpecError(path, "algorithm", "this is a planner spec (algorithm = \"planner\", safetybed.spec.planner) "
                        "where a policy-network controller spec is expected")
    try:
        spec = ControllerSpec.model_validate(data)
    except ValidationError as error:
        raise format_validation_error(path, error) from None
    return LoadedControllerSpec(spec=spec, path=path)
