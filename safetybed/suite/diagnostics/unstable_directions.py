"""Unstable directions of a neural policy: the smallest observation perturbation that changes its action, per state.

Paper: Ezgi Korkmaz (2024), "Understanding and Diagnosing Deep Reinforcement Learning" (ICML 2024, arXiv
2406.16979). No official code was found (research/suite.md §2.8(b)) and only the abstract was read here, so the
estimator below is suite.md's reading of the method (marked there "the exact estimator was not verified"); it is
not checked against the paper's equations and no equation numbers are cited.

The rule, per state ``x_t`` of an episode (:func:`minimal_flip_perturbations`):

* **Discrete actions** (scores ``q(x)``, e.g. logits): the first-order (DeepFool; Moosavi-Dezfooli, Fawzi &
  Frossard 2016, the multiclass linear case) minimal perturbation that makes ``b`` score as high as the chosen
  ``a = argmax q``: ``v_t = -(q_a - q_b) w / ||w||^2`` with ``w = grad_x (q_a - q_b)``. Its norm ``||v_t|| =
  |q_a - q_b| / ||w||`` is the margin distance (exact for a linear score). ``b`` is the action with the smallest
  such distance (DeepFool's choice, ``target = "nearest"``), or suite.md's runner-up score (``"runner_up"``); with
  two actions (CartPole) they are the same.
* **Continuous actions** (the analogue chosen here; the paper has only discrete Atari policies): the action is
  "changed" when the deterministic action, in units of the action half-range (``(a - centre) / half_range``, so
  every component lies in ``[-1, 1]``), moves by ``action_change`` in l2 norm. To first order the smallest such
  perturbation is ``v_t = (action_change / s_1) u_1``, with ``s_1`` and ``u_1`` the top singular value and right
  singular vector of the action Jacobian ``J = d a / d x``: no direction moves the action faster. The default
  ``action_change = 1/3`` is the highway lane-change threshold (``safetybed.sims.highway_obs.
  LANE_CHANGE_THRESHOLD``): the smallest command change that can switch the lane decision from "keep lane",
  and 1/3 of the acceleration range (1.67 m/s^2 at the default 5 m/s^2 scale). The sign of ``u_1`` is fixed so its
  largest-magnitude entry is positive (the analysis below is sign-blind).

Perturbations and distances are in the controller's raw observation units (before its own normaliser), the units
of the policy-smoothing certificates (certify/*.toml: one sigma for every entry, so a distance mixes metres,
metres per second, radians and counts exactly as the certificate's l2 budget does).

The analysis (suite.md §2.8(a)): stack the unit directions ``v_t / ||v_t||`` of many states as rows of ``D``;
* **top-k energy fraction** ``sum_{i<=k} s_i^2 / sum_i s_i^2`` of the singular values of ``D`` (uncentred: a
  direction and its negative are the same instability); 1 when every state shares one direction, ``k / d`` for
  directions spread evenly over ``d`` dimensions. Lower = more disjoint directions;
* **temporal alignment**: the mean of ``|cos(v_t, v_{t+1})|`` over consecutive steps of each episode (suite.md's
  ``<v_t, v_{t+k}>`` at ``k = 1``). Lower = more oscillation over time;
* **subspace rotation**: the largest principal angle (scipy ``subspace_angles``) between the top-k right singular
  subspaces of ``D`` from two sets of episodes. Between an original and a shifted scenario it is the shift's
  rotation; between two independent sets of the same scenario it is the angle that resampling alone gives (the
  demo's control: a rotation counts only when it exceeds the resampling angle).
* **sigma coverage**: a certificate's smoothing noise ``N(0, sigma^2 I)`` has standard deviation ``sigma`` along
  every unit direction, so it *covers* state ``t``'s unstable direction when ``||v_t|| <= sigma``: one standard
  deviation of the noise along ``v_t`` reaches the (first-order) point where the action changes. The coverage is
  the fraction of states covered (a state whose gradient is exactly 0 has an infinite distance and is not covered;
  such states are left out of the direction statistics). High coverage means the smoothing noise flips the base
  policy's action at most states, so the smoothed policy is a vote among different actions there.

Demo (default): the shipped highway pair, ``controllers/highway_sac.toml`` (SAC trained without observation noise,
its certificate ``certify/highway_no_collision.toml``, sigma = 0.1) and ``controllers/highway_sac_robust.toml``
(the same SAC trained with sigma = 0.5 observation noise and a normaliser std floor; ``certify/
highway_robust_cut_in.toml``, sigma = 0.5). The noise-trained one is the testbed's stand-in for the paper's
adversarially trained policy (it is trained against random, not adversarial, perturbations). Both drive
``highway/cut_in`` episodes on the batched backend; the shift is ``highway/cut_in_dense`` (16 vehicles at twice
the density). Per demo seed: ``2n`` cut-in episodes (halves A and B, the same episode seeds for both controllers,
so comparisons are paired) and ``n`` dense ones (F); energy, alignment, distances and coverage come from A, the
shift angle from A vs F and the resampling angle from A vs B. Claims checked (suite.md §2.8(c)): the robust policy
has a lower top-k energy fraction and a lower temporal alignment (paired per-seed differences, 95 % interval on the
claimed side), and the shift rotates each policy's subspace by more than 20 degrees and by more than resampling
does. The same diagnostic for the shipped CartPole controller (``controllers/cartpole_ppo.toml``, categorical PPO
trained with sigma = 0.2 noise; ``certify/cartpole_sigma0.2.toml``; gymnasium CartPole through ``make_env``,
shift ``classic/cartpole_noisy``) is reported as extra ``measured`` labels, outside the verdict (no vanilla CartPole
policy is shipped).

``--controller CTRL`` runs the diagnostic on that controller alone: its certificate's sigma (the smallest sigma of
the certify/*.toml naming it; none: coverage not measured), rolled out in that certificate's scenario (else the
controller's own) and shifted by :data:`SHIFTED_SCENARIOS`. The robust-vs-standard comparison needs two policies,
so with one controller only the shift check is judged (the verdict is computed from it alone, the ``why`` line
says so) and ``baseline`` is empty.

Choices where the paper is silent (besides the continuous analogue above):

* Rollouts use the deterministic action (the policy's mean or argmax: what the smoothing certificates smooth),
  not samples; a controller behind a shield is refused (the shield's action is not differentiable).
* ``top_k = 2`` (suite.md's "top-2 explained variance") for every observation size; angles use the largest
  principal angle (the usual subspace distance); the temporal lag is one control step.
* Measured on the shipped pair, and the reason it comes out as it does: highway_sac's observation normaliser has
  a near-zero std for the map features (lane width 2.4e-4 m, speed limit 2e-3 m/s), so its action changes after a
  perturbation of a few 1e-4 m along the lane-width feature at every state (the failure certify/
  highway_no_collision.toml documents); that one direction carries almost all the energy. The noise-trained
  policy's floor (0.5) removes it, and its directions spread over many features. So the paper's direction is
  reproduced here, but through a normaliser artefact as much as through what the networks learnt.
* No setting was tuned: ``top_k``, ``action_change`` and the 20-degree threshold are the defaults above, fixed
  before the first run.

Measured (full demo: 10 seeds, 20 episodes per set; 28 s on the shared 2-core machine; mean ± 95 % half width):
highway_sac_robust vs highway_sac, top-2 energy 0.64 ± 0.02 vs 0.999, mean |cos| 0.72 ± 0.01 vs 0.99, median flip
distance 0.43 vs 3.0e-4 (observation units), sigma coverage 0.69 (sigma 0.5) vs 1.00 (sigma 0.1); top direction:
robust, vehicle-slot presence flags and lateral speeds; vanilla, lane_width_m (99 % of the unit vector). Shift
rotation: robust 33 ± 7 deg vs 12 ± 2 deg from resampling (held); vanilla 4.7 deg vs 2.6 deg (not: its one
artefact direction does not move with traffic). CartPole PPO: energy 1.00 (the directions lie in the pole angle /
angular velocity plane, 72 % on the angular velocity), |cos| 1.00, median flip 0.106, sigma 0.2 covers 70 % of
the states, shift to sensor noise 6 deg vs 4 deg resampling. Verdict "partly" (3 of 4 checks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy.linalg import subspace_angles

from safetybed.suite.registry import DemoResult, Measure, SuiteEntry, measure

__all__ = ["Config", "FlipPerturbations", "SHIFTED_SCENARIOS", "demo", "diagnose_controller", "energy_fraction",
           "minimal_flip_perturbations", "principal_subspace", "sigma_coverage", "subspace_angle_deg",
           "temporal_alignment"]

#: The shift applied to each original scenario (catalogue names); a scenario not listed gets no shift check.
SHIFTED_SCENARIOS: dict[str, str] = {
    "highway/cut_in": "highway/cut_in_dense",        # twice the traffic (the adaptation suite's shift)
    "highway/cruise": "highway/cruise_nde",          # naturalistic instead of IDM drivers
    "classic/cartpole": "classic/cartpole_noisy",    # sigma = 0.2 sensor noise
    "classic/cartpole_noisy": "classic/cartpole",
    "bullet/reach": "bullet/reach_perturbed",
}
#: The rotation (largest principal angle) a shift must exceed, suite.md §2.8(c) [deg].
SHIFT_ANGLE_MIN_DEG = 20.0


@dataclass(frozen=True)
class Config:
    """Options of the rule and of its analysis."""

    #: Number of singular directions in the energy fraction and in the compared subspaces (suite.md §2.8(c):
    #: "top-2 explained variance").
    top_k: int = 2
    #: Continuous actions: the l2 change of the action, in action half-ranges, that counts as changing it. 1/3 is
    #: the highway lane-change threshold (module docstring); the paper (discrete actions) has no such number.
    action_change: float = 1.0 / 3.0
    #: Discrete actions: which action ``b`` the perturbation moves to: ``"nearest"`` (smallest first-order
    #: distance, DeepFool's multiclass rule) or ``"runner_up"`` (second-highest score, suite.md §2.8(a)).
    target: Literal["nearest", "runner_up"] = "nearest"

    def __post_init__(self) -> None:
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ValueError(f"top_k: expected an integer >= 1, got {self.top_k!r}")
        if not (math.isfinite(self.action_change) and self.action_change > 0):
            raise ValueError(f"action_change: expected a finite number > 0 (action half-ranges), got "
                             f"{self.action_change!r}")
        if self.target not in ("nearest", "runner_up"):
            raise ValueError(f"target: expected 'nearest' or 'runner_up', got {self.target!r}")


@dataclass(frozen=True)
class FlipPerturbations:
    """Per state: the minimal first-order perturbation ``v_t`` that changes the action.

    Attributes:
        perturbations: ``[N, d]`` the vectors ``v_t`` [observation units]; zero where the gradient is zero.
        distances: ``[N]`` ``||v_t||`` [observation units]; ``inf`` where no perturbation changes the action to
            first order (zero gradient).
        targets: ``[N]`` the action ``b`` moved to (discrete), or -1 (continuous).
    """

    perturbations: np.ndarray
    distances: np.ndarray
    targets: np.ndarray

    @property
    def finite(self) -> np.ndarray:
        """States with a finite distance (a direction exists)."""
        return np.isfinite(self.distances)

    @property
    def directions(self) -> np.ndarray:
        """``[M, d]`` unit directions ``v_t / ||v_t||`` of the states with a finite distance."""
        return self.perturbations[self.finite] / self.distances[self.finite, None]


def _jacobians(function: Callable[[torch.Tensor], torch.Tensor], observations: np.ndarray) -> tuple[np.ndarray,
                                                                                                       np.ndarray]:
    """``function`` at each row (``[N, m]``) and its Jacobian per row (``[N, m, d]``), in float64.

    One backward pass per output: the gradient of the batch sum of output ``j`` is each row's own gradient, as a
    policy maps each observation row on its own."""
    x = torch.as_tensor(np.asarray(observations), dtype=torch.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"observations: expected a non-empty [N, d] array, got shape {tuple(x.shape)}")
    with torch.enable_grad():
        x = x.clone().requires_grad_(True)
        values = function(x)
        rows = [torch.autograd.grad(values[:, j].sum(), x, retain_graph=True)[0] for j in range(values.shape[1])]
    return values.detach().double().numpy(), torch.stack(rows, dim=1).double().numpy()


def minimal_flip_perturbations(policy_output: Callable[[torch.Tensor], torch.Tensor], observations: np.ndarray,
                               *, discrete: bool, config: Config = Config()) -> FlipPerturbations:
    """The smallest first-order observation perturbation that changes the policy's action, per row.

    Korkmaz (2024) via suite.md §2.8(a): ``v_t = -(q_a - q_b) grad(q_a - q_b) / ||grad(q_a - q_b)||^2``.

    Args:
        policy_output: a differentiable torch function of a ``[N, d]`` float32 batch of raw observations:
            the action scores ``[N, A]`` (``discrete``) or the deterministic action in action half-ranges
            ``[N, m]``.
        observations: ``[N, d]`` raw observations.
        discrete: whether ``policy_output`` gives scores (argmax decides) or a continuous action.
        config: ``target`` (discrete) and ``action_change`` (continuous).
    """
    values, jacobians = _jacobians(policy_output, observations)
    n, outputs, dim = jacobians.shape
    rows = np.arange(n)
    if not discrete:
        # The action's fastest-moving input direction: the top right singular vector of J (module docstring).
        _, singular_values, right = np.linalg.svd(jacobians)
        top_value, top_vector = singular_values[:, 0], right[:, 0, :]
        signs = np.sign(top_vector[rows, np.abs(top_vector).argmax(axis=1)])
        with np.errstate(divide="ignore"):
            distances = np.where(top_value > 0, config.action_change / top_value, np.inf)
        step = np.where(np.isfinite(distances), distances, 0.0)
        return FlipPerturbations(perturbations=step[:, None] * signs[:, None] * top_vector, distances=distances,
                                 targets=np.full(n, -1))
    if outputs < 2:
        raise ValueError(f"policy_output: a discrete policy needs >= 2 action scores, got {outputs}")
    chosen = values.argmax(axis=1)
    gaps = values[rows, chosen][:, None] - values                          # q_a - q_b >= 0, [N, A]
    normals = jacobians[rows, chosen][:, None, :] - jacobians             # grad(q_a - q_b), [N, A, d]
    normal_norms = np.linalg.norm(normals, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        candidate = np.where(normal_norms > 0, gaps / normal_norms, np.inf)  # the margin distance |dq| / ||dw||
    candidate[rows, chosen] = np.inf
    if config.target == "nearest":
        targets = candidate.argmin(axis=1)
    else:
        scores = values.copy()
        scores[rows, chosen] = -np.inf
        targets = scores.argmax(axis=1)
    distances = candidate[rows, targets]
    normal, norm = normals[rows, targets], normal_norms[rows, targets]
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(norm > 0, -gaps[rows, targets] / norm ** 2, 0.0)  # DeepFool's -(q_a - q_b) / ||w||^2
    return FlipPerturbations(perturbations=scale[:, None] * normal, distances=distances, targets=targets)


def _check_directions(directions: np.ndarray) -> np.ndarray:
    directions = np.asarray(directions, dtype=np.float64)
    if directions.ndim != 2 or directions.shape[0] == 0:
        raise ValueError(f"directions: expected a non-empty [N, d] array, got shape {directions.shape}")
    norms = np.linalg.norm(directions, axis=1)
    if not np.all(norms > 0):
        raise ValueError("directions: expected non-zero rows")
    return directions / norms[:, None]


def energy_fraction(directions: np.ndarray, *, top_k: int) -> float:
    """Fraction of the (uncentred) energy of the unit directions in their top ``top_k`` singular directions."""
    singular_values = np.linalg.svd(_check_directions(directions), compute_uv=False)
    return float((singular_values[:top_k] ** 2).sum() / (singular_values ** 2).sum())


def principal_subspace(directions: np.ndarray, *, top_k: int) -> np.ndarray:
    """``[d, top_k]`` orthonormal basis of the top ``top_k`` right singular vectors of the unit directions."""
    unit = _check_directions(directions)
    if top_k > min(unit.shape):
        raise ValueError(f"top_k: expected <= min(states, dimensions) = {min(unit.shape)}, got {top_k}")
    _, _, right = np.linalg.svd(unit, full_matrices=False)
    return right[:top_k].T


def subspace_angle_deg(first: np.ndarray, second: np.ndarray) -> float:
    """The largest principal angle between the column spans of ``first`` and ``second`` [deg]."""
    return float(np.degrees(subspace_angles(first, second).max()))


def temporal_alignment(episodes: Sequence[np.ndarray]) -> float:
    """Mean ``|cos(v_t, v_{t+1})|`` over consecutive steps within each episode (``[T, d]`` arrays; rows with a
    zero vector are skipped together with their neighbours)."""
    cosines: list[np.ndarray] = []
    for vectors in episodes:
        vectors = np.asarray(vectors, dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1)
        valid = (norms[:-1] > 0) & (norms[1:] > 0)
        dots = np.abs((vectors[:-1] * vectors[1:]).sum(axis=1))
        cosines.append(dots[valid] / (norms[:-1] * norms[1:])[valid])
    joined = np.concatenate(cosines) if cosines else np.zeros(0)
    if joined.size == 0:
        raise ValueError("episodes: expected at least one pair of consecutive steps with non-zero vectors")
    return float(joined.mean())


def sigma_coverage(distances: np.ndarray, *, sigma: float) -> float:
    """Fraction of states whose flip distance is at most ``sigma`` (module docstring: the noise covers it)."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma: expected a finite number > 0 (observation units), got {sigma!r}")
    return float(np.mean(np.asarray(distances) <= sigma))


# -- the testbed: controllers, certificates, rollouts ----------------------------------------------------------


@dataclass(frozen=True)
class _Subject:
    """A controller's policy network and where to diagnose it."""

    name: str
    checkpoint: Any                 # safetybed.control.checkpoint.Checkpoint
    scenario: str                   # catalogue name or path of the original scenario
    shifted: str | None
    sigma: float | None
    certificate: str | None

    @property
    def discrete(self) -> bool:
        return self.checkpoint.policy.arch.kind == "categorical"

    def output(self, observations: torch.Tensor) -> torch.Tensor:
        """Scores (discrete) or the deterministic action in half-ranges, of raw observations."""
        policy = self.checkpoint.policy
        normalised = self.checkpoint.obs_norm(observations)
        if self.discrete:
            return policy.net(normalised)
        return (policy(normalised) - policy.action_bias) / policy.action_scale


def _subject(controller: Path) -> _Subject:
    from safetybed.control.checkpoint import load_checkpoint
    from safetybed.errors import InputError
    from safetybed.spec.catalogue import catalogue_dirs
    from safetybed.spec.certify import load_certify_spec
    from safetybed.spec.controller import load_controller_spec

    loaded = load_controller_spec(controller)
    if loaded.spec.shield != "none":
        raise InputError(f"--controller {controller}: shield = {loaded.spec.shield!r}; the diagnostic needs the "
                         f"policy network's own (differentiable) action, so diagnose the unshielded spec")
    if not loaded.checkpoint_dir.exists():
        raise InputError(f"{controller}: checkpoint folder {loaded.checkpoint_dir} does not exist")
    checkpoint = load_checkpoint(loaded.checkpoint_dir)
    checkpoint.policy.eval()
    checkpoint.obs_norm.eval()
    own_scenario = loaded.scenario_ref()
    certificates = []
    for folder in catalogue_dirs("certify"):
        for path in sorted(folder.glob("*.toml")):
            spec = load_certify_spec(path)
            if spec.controller_path().resolve() == Path(controller).resolve():
                certificates.append((spec.spec.sigma, spec.spec.scenario != own_scenario, path.name, spec))
    sigma = certificate = None
    scenario = own_scenario
    if certificates:
        sigma, _, certificate, chosen = min(certificates, key=lambda c: c[:3])  # smallest sigma, own scenario first
        scenario = chosen.scenario_ref()
    return _Subject(name=loaded.spec.name, checkpoint=checkpoint, scenario=scenario,
                    shifted=SHIFTED_SCENARIOS.get(scenario), sigma=sigma, certificate=certificate)


class _RecordingPolicies:
    """Several deterministic policies as one batch controller, each on its own block of ``rows`` rows, keeping every
    observation batch it is shown (so one batched rollout serves every subject of a scenario)."""

    batch_stateless = True

    def __init__(self, subjects: Sequence[_Subject], *, rows: int):
        from safetybed.control.policy import PolicyController

        self.controllers = [PolicyController.from_checkpoint(s.checkpoint, name=s.name, deterministic=True)
                            for s in subjects]
        self.rows = rows
        self.batches: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None) -> None:
        for controller in self.controllers:
            controller.reset(seed=seed)

    def act(self, obs_batch: np.ndarray, **options: Any) -> np.ndarray:
        self.batches.append(np.array(obs_batch, dtype=np.float32))
        return np.concatenate([c.act(obs_batch[k * self.rows:(k + 1) * self.rows], deterministic=True)
                               for k, c in enumerate(self.controllers)])


def _episode_observations(subjects: Sequence[_Subject], scenario: str, seeds: Sequence[int]
                          ) -> list[list[np.ndarray]]:
    """Per subject, the observations its policy saw in each episode, ``[T, d]`` per seed: one batched-backend
    rollout for all subjects on straight-road highway tasks, gymnasium through ``make_env`` otherwise."""
    from safetybed.control.policy import PolicyController
    from safetybed.sims import make_env
    from safetybed.spec.catalogue import load_scenario_arg
    from safetybed.spec.scenario import BATCHED_HIGHWAY_TASKS

    spec, _ = load_scenario_arg(scenario)
    seeds = [int(s) for s in seeds]
    if spec.simulator == "highway" and spec.task in BATCHED_HIGHWAY_TASKS:
        from safetybed.sims.batched.rollout import batched_rollouts

        recorder = _RecordingPolicies(subjects, rows=len(seeds))
        every = seeds * len(subjects)
        records = batched_rollouts(spec, lambda: recorder, seeds=every, indices=list(range(len(every))),
                                   dtype=torch.float32)  # the speed mode: the states only need to be plausible
        seen = np.stack(recorder.batches, axis=1)  # [episodes, steps, d]; finished episodes' later rows unused
        episodes = [seen[k, :record.length] for k, record in enumerate(records)]
        return [episodes[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(subjects))]
    env = make_env(spec)
    per_subject = []
    for subject in subjects:
        controller = PolicyController.from_checkpoint(subject.checkpoint, name=subject.name, deterministic=True)
        episodes = []
        for seed in seeds:
            observation, _ = env.reset(seed=seed)
            rows = []
            while True:
                rows.append(np.asarray(observation, dtype=np.float32))
                action = controller.act(np.asarray(observation)[None], deterministic=True)[0]
                observation, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    break
            episodes.append(np.stack(rows))
        per_subject.append(episodes)
    env.close()
    return per_subject


def _perturbations(subject: _Subject, episodes: Sequence[np.ndarray], config: Config) -> FlipPerturbations:
    return minimal_flip_perturbations(subject.output, np.concatenate(episodes), discrete=subject.discrete,
                                      config=config)


def diagnose_controller(subject: _Subject, *, original: Sequence[np.ndarray], shifted: Sequence[np.ndarray] | None,
                        config: Config = Config()) -> dict[str, Any]:
    """One seed's diagnostic of ``subject`` from its episodes' observations: ``original`` (``2n`` episodes, halves
    A and B) and ``shifted`` (F, or None); module docstring. Numbers by key, and ``top_direction``, the first
    principal unstable direction of A (a unit ``[d]`` vector)."""
    n = len(original) // 2
    if n < 1 or len(original) != 2 * n:
        raise ValueError(f"original: expected a non-zero even number of episodes, got {len(original)}")
    first = [_perturbations(subject, [episode], config) for episode in original[:n]]
    flips = FlipPerturbations(np.concatenate([p.perturbations for p in first]),
                              np.concatenate([p.distances for p in first]), np.concatenate([p.targets for p in first]))
    basis = principal_subspace(flips.directions, top_k=config.top_k)
    resampled = principal_subspace(_perturbations(subject, original[n:], config).directions, top_k=config.top_k)
    result = {
        "energy": energy_fraction(flips.directions, top_k=config.top_k),
        "alignment": temporal_alignment([p.perturbations for p in first]),
        "distance": float(np.median(flips.distances)),
        "finite": float(flips.finite.mean()),
        "states": float(len(flips.distances)),
        "resample_angle": subspace_angle_deg(basis, resampled),
        "coverage": math.nan if subject.sigma is None else sigma_coverage(flips.distances, sigma=subject.sigma),
        "shift_angle": math.nan,
        "top_direction": basis[:, 0],
    }
    if shifted is not None:
        moved = principal_subspace(_perturbations(subject, shifted, config).directions, top_k=config.top_k)
        result["shift_angle"] = subspace_angle_deg(basis, moved)
    return result


_LABELS = {  # result key -> (measured label, unit)
    "energy": ("top-k energy fraction", "fraction"),
    "alignment": ("mean |cos(v_t, v_t+1)|", "cosine"),
    "distance": ("median flip distance", "observation units (l2)"),
    "coverage": ("sigma coverage", "fraction of states with flip distance <= sigma"),
    "shift_angle": ("shift rotation", "deg"),
    "resample_angle": ("resampling rotation", "deg"),
}


def _measures(per_seed: list[dict[str, Any]], prefix: str = "") -> dict[str, Measure]:
    return {prefix + label: measure([r[key] for r in per_seed], unit=unit) for key, (label, unit) in _LABELS.items()
            if all(math.isfinite(r[key]) for r in per_seed)}


def _interval_above_zero(values: Sequence[float]) -> bool:
    """The 95 % Student-t interval of the per-seed values lies above 0."""
    m = measure(values)
    return m.n >= 2 and m.mean - m.half_width > 0


def _shift_holds(per_seed: list[dict[str, Any]]) -> bool | None:
    """The shift rotates the subspace by > 20 deg on average and by more than resampling (paired); None without a
    shift."""
    if not all(math.isfinite(r["shift_angle"]) for r in per_seed):
        return None
    mean_angle = float(np.mean([r["shift_angle"] for r in per_seed]))
    return mean_angle > SHIFT_ANGLE_MIN_DEG and _interval_above_zero(
        [r["shift_angle"] - r["resample_angle"] for r in per_seed])


def _run(subjects: Sequence[_Subject], *, seeds: Sequence[int], episodes: int, config: Config
         ) -> list[list[dict[str, Any]]]:
    """Per subject, per demo seed, the diagnostic; every subject sees the same episode seeds (paired), drawn from
    ``SeedSequence(seed)``, and subjects sharing a scenario share its rollouts' batch."""
    draws = [np.random.default_rng(np.random.SeedSequence(s)).choice(2 ** 31 - 1, size=3 * episodes, replace=False)
             for s in seeds]
    original_seeds = [int(x) for d in draws for x in d[:2 * episodes]]
    shifted_seeds = [int(x) for d in draws for x in d[2 * episodes:]]
    original: list[list[np.ndarray]] = [[] for _ in subjects]
    shifted: list[list[np.ndarray] | None] = [None for _ in subjects]
    for scenario in dict.fromkeys(s.scenario for s in subjects):
        group = [i for i, s in enumerate(subjects) if s.scenario == scenario]
        for i, observed in zip(group, _episode_observations([subjects[i] for i in group], scenario, original_seeds),
                               strict=True):
            original[i] = observed
    for scenario in dict.fromkeys(s.shifted for s in subjects if s.shifted is not None):
        group = [i for i, s in enumerate(subjects) if s.shifted == scenario]
        for i, observed in zip(group, _episode_observations([subjects[i] for i in group], scenario, shifted_seeds),
                               strict=True):
            shifted[i] = observed
    results: list[list[dict[str, Any]]] = []
    for i, subject in enumerate(subjects):
        per_seed = []
        for k in range(len(seeds)):
            moved = shifted[i]
            per_seed.append(diagnose_controller(
                subject, original=original[i][2 * episodes * k:2 * episodes * (k + 1)],
                shifted=None if moved is None else moved[episodes * k:episodes * (k + 1)], config=config))
        results.append(per_seed)
    return results


CARTPOLE_FEATURES = ("cart_position_m", "cart_velocity_mps", "pole_angle_rad", "pole_angular_velocity_radps")


def _feature_names(scenario: str, dim: int) -> list[str]:
    """Names of the observation entries (highway's observation contract, CartPole's state; ``obs[i]`` else);
    a frame stack repeats them with a ``@frame`` suffix."""
    from safetybed.spec.catalogue import load_scenario_arg
    from safetybed.spec.highway import EGO_FEATURES, VEHICLE_FEATURES

    spec, _ = load_scenario_arg(scenario)
    names: list[str] = []
    if spec.simulator == "highway":
        names = list(EGO_FEATURES) + [f"vehicle{i}.{f}" for i in range(spec.highway.observed_vehicles)
                                      for f in VEHICLE_FEATURES]
    elif spec.simulator == "classic" and spec.task == "cartpole":
        names = list(CARTPOLE_FEATURES)
    if names and dim != len(names) and dim % len(names) == 0:
        names = [f"{n}@{k}" for k in range(dim // len(names)) for n in names]
    return names if len(names) == dim else [f"obs[{i}]" for i in range(dim)]


def _top_features(subject: _Subject, per_seed: list[dict[str, Any]], *, count: int = 3) -> dict[str, float]:
    """The leading features of the seeds' first principal direction (top eigenvector of the mean of the per-seed
    ``u u^T``, so the sign does not matter), with their squared loadings (shares of the unit direction)."""
    directions = np.stack([r["top_direction"] for r in per_seed])
    _, vectors = np.linalg.eigh(directions.T @ directions / len(directions))
    shares = vectors[:, -1] ** 2
    names = _feature_names(subject.scenario, len(shares))
    return {names[i]: round(float(shares[i]), 3) for i in np.argsort(shares)[::-1][:count]}


def _describe(subject: _Subject, per_seed: list[dict[str, Any]]) -> str:
    energy = np.mean([r["energy"] for r in per_seed])
    alignment = np.mean([r["alignment"] for r in per_seed])
    distance = np.median([r["distance"] for r in per_seed])
    leading = ", ".join(f"{name} {share:.0%}" for name, share in _top_features(subject, per_seed).items())
    text = (f"{subject.name}: top direction {leading}; energy {energy:.2f}, |cos| {alignment:.2f}, median flip "
            f"{distance:.2g}")
    if subject.sigma is not None:
        text += f" (sigma {subject.sigma:g} covers {np.mean([r['coverage'] for r in per_seed]):.0%})"
    if math.isfinite(per_seed[0]["shift_angle"]):
        text += (f", shift {np.mean([r['shift_angle'] for r in per_seed]):.0f} deg vs resampling "
                 f"{np.mean([r['resample_angle'] for r in per_seed]):.0f} deg")
    return text


def _subject_settings(subject: _Subject, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    return {"scenario": subject.scenario, "shifted": subject.shifted, "certificate": subject.certificate,
            "sigma": subject.sigma, "action": "discrete (scores)" if subject.discrete else "continuous",
            "states_per_seed": float(np.mean([r["states"] for r in per_seed])),
            "finite_fraction": float(np.mean([r["finite"] for r in per_seed])),
            "top_direction_shares": _top_features(subject, per_seed, count=5)}


def demo(*, fast: bool, seed: int, controller: Path | None = None) -> DemoResult:
    """The shipped vanilla/noise-trained highway SAC pair (and CartPole PPO), or one ``controller``."""
    from safetybed.suite.common.offline_data import shipped_controller

    n_seeds, episodes = (3, 4) if fast else (10, 20)
    seeds = tuple(range(seed, seed + n_seeds))
    config = Config()
    settings: dict[str, Any] = {"episodes_per_set": episodes, "sets": "A, B original; F shifted",
                                "top_k": config.top_k, "action_change": config.action_change,
                                "target": config.target, "shift_angle_min_deg": SHIFT_ANGLE_MIN_DEG}
    claim = (f"Robust training gives a lower top-{config.top_k} energy fraction of the unstable directions and a lower "
             f"mean |cos(v_t, v_t+1)| (paired 95 % intervals), and a scenario shift rotates the top-{config.top_k} "
             f"subspace by > {SHIFT_ANGLE_MIN_DEG:g} deg and by more than resampling does.")
    if controller is not None:
        subject = _subject(Path(controller))
        (per_seed,) = _run([subject], seeds=seeds, episodes=episodes, config=config)
        shift = _shift_holds(per_seed)
        verdict = "not reproduced" if not shift else "reproduced"
        why = (f"{_describe(subject, per_seed)}; one controller: only the shift check is judged "
               f"({'held' if shift else 'no shift for this scenario' if shift is None else 'did not hold'}); "
               f"robust vs standard training needs the shipped pair (the default demo)")
        return DemoResult(name=ENTRY.name, claim=claim, measured=_measures(per_seed), baseline={}, verdict=verdict,
                          why=why, fast=fast, seeds=seeds,
                          settings={**settings, "controller": str(controller),
                                    **_subject_settings(subject, per_seed)})
    vanilla, robust, cartpole = (_subject(Path(shipped_controller(name)))
                                 for name in ("highway_sac", "highway_sac_robust", "cartpole_ppo"))
    vanilla_runs, robust_runs, cartpole_runs = _run([vanilla, robust, cartpole], seeds=seeds, episodes=episodes,
                                                    config=config)
    checks = {
        "robust energy lower": _interval_above_zero([v["energy"] - r["energy"]
                                                     for v, r in zip(vanilla_runs, robust_runs, strict=True)]),
        "robust |cos| lower": _interval_above_zero([v["alignment"] - r["alignment"]
                                                    for v, r in zip(vanilla_runs, robust_runs, strict=True)]),
        "shift rotates robust": bool(_shift_holds(robust_runs)),
        "shift rotates vanilla": bool(_shift_holds(vanilla_runs)),
    }
    held = [name for name, ok in checks.items() if ok]
    verdict = "reproduced" if len(held) == len(checks) else "partly" if held else "not reproduced"
    why = (f"held: {', '.join(held) or 'none'}; not: {', '.join(n for n, ok in checks.items() if not ok) or 'none'}. "
           f"{_describe(robust, robust_runs)}; {_describe(vanilla, vanilla_runs)}; CartPole (outside the verdict) "
           f"{_describe(cartpole, cartpole_runs)}")
    return DemoResult(
        name=ENTRY.name, claim=claim, measured={**_measures(robust_runs), **_measures(cartpole_runs, "CartPole ")},
        baseline=_measures(vanilla_runs), verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings={**settings, "method": _subject_settings(robust, robust_runs) | {"controller": robust.name},
                  "baseline": _subject_settings(vanilla, vanilla_runs) | {"controller": vanilla.name},
                  "cartpole": _subject_settings(cartpole, cartpole_runs) | {"controller": cartpole.name},
                  "checks": checks})


ENTRY = SuiteEntry(
    name="diagnose-unstable-directions",
    title="Understanding and Diagnosing Deep Reinforcement Learning",
    citation="Korkmaz 2024",
    family="diagnostics",
    module=__name__,
    rule=minimal_flip_perturbations,
    demo=demo,
    options=("controller",),
)
