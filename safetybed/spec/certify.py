"""Certification specs (``certify/*.toml``): which controller, which scenario, sigma, budgets, samples, alpha.

Example (``certify/cartpole_sigma0.2.toml``)::

    name = "cartpole_sigma0.2"
    controller = "../controllers/cartpole_ppo.toml"   # controller spec: path relative to this file, or a name
    scenario = "classic/cartpole"                     # noise-free scenario: catalogue name or relative path
    sigma = 0.2                                       # smoothing noise std, observation units
    budgets = [0.2, 0.4, 0.6, 1.0]                    # total l2 budgets B, observation units
    episodes = 10000
    alpha = 0.05
    quantity = "expected_return"
    seed = 0

    [attack]
    episodes = 100

``certify/README.md`` documents every field. Unknown keys are errors; a bad value is a :class:`SpecError`
naming the file, the field and the reason (exit code 2).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from safetybed.errors import SpecError
from safetybed.spec.base import StrictModel, read_toml_file
from safetybed.spec.scenario import Backend, format_validation_error

Quantity = Literal["expected_return", "no_collision", "success", "percentile"]
Estimator = Literal["auto", "dkw", "integer"]
SpendRule = Literal["flip", "fraction"]


class AttackSpec(StrictModel):
    """The empirical attacks run beside the certificate as a sanity check (``research/policy_smoothing.md`` §3).

    Every configuration below is run at every budget of the certificate with ``episodes`` episodes; the
    report keeps the worst (lowest) attacked value per budget. ``"flip"`` needs discrete actions and is
    skipped for continuous controllers.
    """

    episodes: int = Field(100, ge=0, le=100_000)
    spend_rules: list[SpendRule] = Field(["flip", "fraction"], min_length=1, max_length=2)
    min_log_prob_gaps: list[float] = Field([0.0], min_length=1, max_length=10)
    spend_fractions: list[float] = Field([0.2], min_length=1, max_length=10)
    #: Continuous actions, ``"fraction"`` rule: also push the action along each of these directions (action
    #: half-range units; highway ``[1, 0]`` = more throttle, ``[0, 1]`` / ``[0, -1]`` = lane-change requests),
    #: each with every spend fraction, besides the untargeted distance objective.
    action_targets: list[list[float]] = Field(default_factory=list, max_length=10)
    pgd_steps: int = Field(20, ge=1, le=10_000)
    noise_samples: int = Field(64, ge=1, le=100_000)
    seed: int = Field(1, ge=0, lt=2**63)

    @model_validator(mode="after")
    def _check_lists(self) -> AttackSpec:
        if len(set(self.spend_rules)) != len(self.spend_rules):
            raise ValueError(f"spend_rules: expected distinct entries, got {self.spend_rules}")
        if any(not (math.isfinite(g) and g >= 0) for g in self.min_log_prob_gaps):
            raise ValueError(f"min_log_prob_gaps: expected finite values >= 0, got {self.min_log_prob_gaps}")
        if any(not (0 < f <= 1) for f in self.spend_fractions):
            raise ValueError(f"spend_fractions: expected values in (0, 1], got {self.spend_fractions}")
        return self


class CertifySpec(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    controller: str = Field(min_length=1)
    scenario: str = Field(min_length=1)
    sigma: float = Field(gt=0, le=1e4)
    budgets: list[float] = Field(min_length=1, max_length=200)
    episodes: int = Field(ge=10, le=10_000_000)
    alpha: float = Field(0.05, gt=0, le=0.5)
    quantity: Quantity = "expected_return"
    estimator: Estimator = "auto"
    p: float | None = Field(None, gt=0, lt=1)
    seed: int = Field(0, ge=0, lt=2**63)
    #: Simulator backend of the clean episodes (``batched``: the torch-batched highway simulator); ``None``: the
    #: scenario's own ``backend``. ``--backend`` overrides it. The attacks always run on the highway-env backend.
    backend: Backend | None = None
    attack: AttackSpec = AttackSpec()

    @model_validator(mode="after")
    def _check(self) -> CertifySpec:
        if any(not (math.isfinite(b) and b >= 0) for b in self.budgets):
            raise ValueError(f"budgets: expected finite values >= 0 (total l2 norm, observation units), got "
                             f"{self.budgets}")
        if len(set(self.budgets)) != len(self.budgets) or sorted(self.budgets) != self.budgets:
            raise ValueError(f"budgets: expected distinct values in increasing order, got {self.budgets}")
        if (self.quantity == "percentile") != (self.p is not None):
            raise ValueError("p: required for quantity = \"percentile\" (the quantile level, e.g. 0.5) and not "
                             "allowed otherwise")
        if self.estimator != "auto" and self.quantity != "expected_return":
            raise ValueError(f"estimator: only quantity = \"expected_return\" has a choice of estimator "
                             f"(dkw | integer); got estimator = {self.estimator!r} for {self.quantity!r}")
        return self


@dataclasses.dataclass(frozen=True)
class LoadedCertifySpec:
    """A validated spec and the file it came from (relative references resolve against its folder)."""

    spec: CertifySpec
    path: Path

    def controller_path(self) -> Path:
        """The controller spec: relative to this file, else ``controllers/NAME.toml`` in the catalogue."""
        return _resolve(self.path, self.spec.controller, "controllers", "controller")

    def scenario_ref(self) -> str:
        """The scenario as a path when it is one relative to this file, else the catalogue name."""
        candidate = self.path.parent / self.spec.scenario
        return str(candidate) if candidate.suffix == ".toml" else self.spec.scenario


def _resolve(spec_path: Path, ref: str, kind: str, field: str) -> Path:
    from safetybed.spec.catalogue import catalogue_dirs

    relative = spec_path.parent / ref
    if relative.suffix == ".toml" and relative.is_file():
        return relative
    if Path(ref).suffix == ".toml" and Path(ref).is_file():
        return Path(ref)
    for folder in catalogue_dirs(kind):
        candidate = folder / (ref if ref.endswith(".toml") else f"{ref}.toml")
        if candidate.is_file():
            return candidate
    raise SpecError(spec_path, field, f"{ref!r} not found (looked at {relative} and in the {kind}/ catalogue)")


def parse_certify_spec(data: dict, *, source: str | Path = "<string>") -> CertifySpec:
    try:
        return CertifySpec.model_validate(data)
    except ValidationError as error:
        raise format_validation_error(source, error) from None


def load_certify_spec(path: str | Path) -> LoadedCertifySpec:
    """Read and validate a certification spec; :class:`SpecError` (exit 2) names file, field and reason."""
    path = Path(path)
    data = read_toml_file(path)
    return LoadedCertifySpec(spec=parse_certify_spec(data, source=path), path=path)
