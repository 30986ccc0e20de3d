"""Adaptive ℓ2 observation attack with a total budget over the episode: the empirical side of a certificate.

A policy-smoothing certificate (Kumar, Levine & Feizi 2022) promises that no adaptive adversary whose
perturbations satisfy ``sqrt(sum_t ||delta_t||_2^2) <= B`` pushes the smoothed controller's return below
``cert(B)``. :func:`attack_episodes` runs such an adversary, so a certificate can be checked against it
(``research/policy_smoothing.md`` §3.3: a violation is ``mean + 3 SEM < cert(B)``) and shown to have teeth
(the same attack should hurt the unsmoothed controller).

Threat model (``research/policy_smoothing.md`` §1(a), as in the authors' attack scripts):

* the adversary perturbs the **clean raw observation** ``o_t`` (before observation normalisation) into
  ``o_t + delta_t``; the smoothed controller then adds its own **fresh** ``N(0, sigma^2 I)`` noise, which the
  adversary never sees for the current step, and acts deterministically on ``o_t + delta_t + eps_t``;
* the budget is on the whole episode: ``sum_t ||delta_t||_2^2 <= B^2``; the squared budget left at step
  ``t`` is ``B^2 - sum_{s<t} ||delta_s||^2`` (``carryover`` in the scripts), so unspent budget carries forward;
* ``B`` and ``sigma`` are in the raw observation's own units.

The attack (§3.1, budget-carryover targeted PGD with expectation over transformation): at each step the
adversary averages the policy's output over ``noise_samples`` fixed noise draws (the same draws for every
PGD iteration of the step) and runs PGD within the remaining budget. Two spend rules:

* ``"flip"`` (§3.1; discrete actions): for every action clearly less likely than the noise-averaged clean
  action ``a0`` (log-probability gap >= ``min_log_prob_gap``, the analogue of the scripts' ``q_threshold``
  for a policy without Q-values; or only ``target_action``), targeted PGD on the margin
  ``log p(a) - log p(a0)`` of the noise-averaged action probabilities stops at the first iterate whose
  noise-averaged argmax is that action; the flip is then shrunk by bisection along its ray to a near-minimal
  norm. The least likely flipped action wins. Budget is spent only on successful flips. (The scripts ascend
  a cross-entropy instead of the margin; for two actions the directions agree. Targets whose first-order
  flip distance exceeds ``feasibility_screen`` times the remaining budget are skipped, which saves the
  hopeless PGD runs once the budget is nearly spent.)
* ``"fraction"`` (discrete or continuous): spend ``spend_fraction`` of the remaining squared budget every
  step: PGD minimises the noise-averaged probability of ``a0`` (discrete) or maximises the distance of the
  noise-averaged action from the clean one, in units of the action half-range (continuous).
  ``spend_fraction = 1`` spends everything at once, the optimal adversary of a one-step task
  (:mod:`safetybed.certify.toy`).

The scenario's own ``observation_noise_std`` is removed for the attacked rollouts: the smoothing noise is
the controller's (``sigma``), not the environment's, and it is drawn exactly as
:class:`safetybed.sims.base.ObservationNoise` draws it (same seed derivation, same dtype handling). So with
``budget = 0`` and ``sigma`` equal to the scenario's noise, the episodes are the ones the runner plays on
the noisy scenario with the same run seed. Other perturbations (action delay) stay.

Frame stacking (``frame_stack = k``): the scenario gives raw frames; each is perturbed and noised once,
then stacked (oldest first, the first frame filling every slot, as :mod:`safetybed.sims.framestack`), so the
budget counts each raw frame once (§1(b)). The adversary perturbs only the current frame and conditions on
the past frames as the controller saw them, noise included (§1(b), ``dirty_prev_obs_tens``); it never sees
the current step's noise.

Example::

    from safetybed.control.checkpoint import load_checkpoint
    ckpt = load_checkpoint("controllers/weights/cartpole_ppo")
    result = attack_episodes(policy=ckpt.policy, obs_norm=ckpt.obs_norm, scenario="classic/cartpole_noisy",
                             sigma=0.2, budget=0.2, episodes=25, seed=0)
    result.mean, result.sem, max(result.budget_spent)   # <= 0.2

References:
    1. Kumar, Levine & Feizi, "Policy Smoothing for Provably Robust Reinforcement Learning", ICLR 2022.
    2. Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018 (PGD,
       step 2.5 r / steps).
    3. Athalye, Carlini & Wagner, ICML 2018 (expectation over transformation against randomised defences).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np
import torch

from safetybed import seeding_keys
from safetybed.control.networks import ObsNormalizer, Policy
from safetybed.runner.seeding import episode_seed, episode_sequence
from safetybed.sims.base import add_observation_noise, noise_generator
from safetybed.sims.framestack import push_frame
from safetybed.spec import ScenarioSpec

SpendRule = Literal["flip", "fraction"]

#: Relative slack kept below the remaining budget so float32 observations never overspend it.
_BUDGET_SLACK = 1e-6


@dataclass(frozen=True)
class AttackSettings:
    """How the adversary searches; stored with every :class:`AttackResult`."""

    pgd_steps: int
    """PGD iterations per step and target action (upper bound; flip search stops at the first flip)."""
    noise_samples: int
    """Noise draws ``K`` the noise-averaged output uses (1 draw of zero noise for an unsmoothed controller)."""
    spend_rule: SpendRule
    """``"flip"`` (spend only on flips of the noise-averaged action) or ``"fraction"`` (see module doc)."""
    spend_fraction: float
    """Share of the remaining *squared* budget the ``"fraction"`` rule spends per step, in ``(0, 1]``."""
    min_log_prob_gap: float
    """``"flip"`` targets only actions with ``log p(a0) - log p(a) >=`` this (noise-averaged, clean obs)."""
    target_action: int | None
    """``"flip"``: only ever flip toward this action index (0-based), or ``None`` for every eligible action."""
    feasibility_screen: float
    """``"flip"``: skip a target when the first-order distance to its flip exceeds this many times the
    remaining budget (``math.inf`` never skips)."""
    bisection_steps: int
    """Bisection steps that shrink a found flip along its ray (``"flip"`` rule)."""
    action_target: tuple[float, ...] | None
    """``"fraction"``, continuous actions: push the noise-averaged action along this direction (in units of the
    action half-range; e.g. ``(1, 0)``: more throttle on highway) instead of away from the clean action in
    any direction. ``None``: the distance objective."""
    path_length_multiplier: float
    """``"flip"`` PGD walks ``multiplier * b_t`` in total (step ``multiplier * b_t / pgd_steps``); 2 as in
    the scripts' ``attack_step_count_multiplier``."""


@dataclass(frozen=True)
class AttackResult:
    """Returns of attacked episodes and how much of the budget the adversary used.

    ``sem`` is the standard error of the mean (``ddof = 1``; ``inf`` for a single episode). ``budget_spent``
    is ``sqrt(sum_t ||delta_t||^2)`` per episode, in observation units, so ``budget_spent[i] <= budget``.
    """

    returns: tuple[float, ...]
    mean: float
    sem: float
    n: int
    budget: float
    sigma: float | None
    budget_spent: tuple[float, ...]
    attacked_steps: tuple[int, ...]
    episode_lengths: tuple[int, ...]
    method: str
    settings: AttackSettings
    perturbations: tuple[np.ndarray, ...] | None = field(default=None, repr=False, compare=False)
    """Per episode, the realised ``delta_t`` of every step, shape ``(T, obs_dim)`` (``record_perturbations``)."""

    @property
    def budget_spent_mean(self) -> float:
        return float(np.mean(self.budget_spent))

    @property
    def budget_spent_max(self) -> float:
        return float(np.max(self.budget_spent))


# -- the noise-averaged policy output -------------------------------------------------------------------------
@dataclass(frozen=True)
class _StepContext:
    """What the adversary holds fixed during one step's search, per attacked row.

    ``noise``: the EOT draws ``(A, K, d)`` added to the current raw frame. ``past``: with frame stacking,
    the ``frames - 1`` most recent frames the controller saw (already perturbed and noised), ``(A, frames - 1,
    d)``, or ``None`` at the first step, where the first frame fills every slot (as ``FrameStack`` does).
    """

    noise: torch.Tensor
    past: torch.Tensor | None
    frames: int

    def select(self, rows: torch.Tensor) -> _StepContext:
        return _StepContext(self.noise[rows], None if self.past is None else self.past[rows], self.frames)

    def policy_input(self, obs: torch.Tensor) -> torch.Tensor:
        """The controller's inputs for the perturbed raw frames ``obs`` ``(A, d)``: ``(A * K, frames * d)``."""
        rows, samples, dim = self.noise.shape
        frame = obs[:, None, :] + self.noise  # (A, K, d): one noise draw per raw frame
        if self.frames == 1:
            return frame.reshape(-1, dim)
        # The past frames are shared by the K draws: a history of (A, K, frames, d) with one slot still to shift
        # out, so that push_frame (the rollouts' stacking rule) drops it and appends the current frame.
        history = None if self.past is None else torch.cat(
            [self.past[:, :1, :], self.past], dim=1)[:, None, :, :].expand(rows, samples, self.frames, dim)
        stacked = push_frame(history, frame, frames=self.frames)
        return stacked.reshape(rows * samples, self.frames * dim)


class _SmoothedOutput:
    """The policy's output averaged over fixed noise draws, differentiable in the raw observation."""

    def __init__(self, policy: Policy, obs_norm: ObsNormalizer):
        self.policy = policy
        self.obs_norm = obs_norm
        self.discrete = policy.arch.kind == "categorical"

    def log_probs(self, obs: torch.Tensor, context: _StepContext) -> torch.Tensor:
        """``log mean_k softmax(logits(obs + noise_k))``, shape ``(A, n_actions)``."""
        rows, samples, _ = context.noise.shape
        logits = self.policy.net(self.obs_norm(context.policy_input(obs)))
        log_softmax = torch.log_softmax(logits, dim=-1).reshape(rows, samples, -1)
        return torch.logsumexp(log_softmax, dim=1) - math.log(samples)  # stable log of the mean probability

    def actions(self, obs: torch.Tensor, context: _StepContext) -> torch.Tensor:
        """Mean deterministic action over the noise draws, shape ``(A, act_dim)`` (continuous kinds)."""
        rows, samples, _ = context.noise.shape
        action = self.policy(self.obs_norm(context.policy_input(obs)))
        return action.reshape(rows, samples, -1).mean(dim=1)


def _project(clean: torch.Tensor, x: torch.Tensor, radius: torch.Tensor, low: torch.Tensor,
             high: torch.Tensor) -> torch.Tensor:
    """Project ``x`` onto the ℓ2 ball of ``radius`` (per row) around ``clean``, then into the observation box.

    Clamping into a box that contains ``clean`` never lengthens ``x - clean``, so the ball constraint holds.
    """
    delta = x - clean
    norm = delta.norm(dim=1, keepdim=True)
    delta = delta * torch.clamp(radius[:, None] / norm.clamp_min(1e-12), max=1.0)
    return torch.maximum(torch.minimum(clean + delta, high), low)


def _unit_rows(g: torch.Tensor) -> torch.Tensor:
    return g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)


# -- one step of the adversary ---------------------------------------------------------------------------------
class _Adversary:
    def __init__(self, smoothed: _SmoothedOutput, settings: AttackSettings, low: np.ndarray, high: np.ndarray):
        self.smoothed = smoothed
        self.settings = settings
        self.low = torch.as_tensor(low, dtype=torch.float32)
        self.high = torch.as_tensor(high, dtype=torch.float32)

    def perturb(self, clean: torch.Tensor, context: _StepContext, remaining_sq: np.ndarray,
                generators: list[torch.Generator]) -> torch.Tensor:
        """Perturbed observations (float32, ``(A, d)``) within ``sqrt(remaining_sq)`` of ``clean`` per row."""
        if self.settings.spend_rule == "flip":
            radius = np.sqrt(remaining_sq) * (1 - _BUDGET_SLACK)
            return self._flip(clean, context, torch.as_tensor(radius, dtype=torch.float32))
        radius = np.sqrt(self.settings.spend_fraction * remaining_sq) * (1 - _BUDGET_SLACK)
        return self._spend_fraction(clean, context, torch.as_tensor(radius, dtype=torch.float32), generators)

    def _flip(self, clean: torch.Tensor, context: _StepContext, radius: torch.Tensor) -> torch.Tensor:
        """§3.1: targeted PGD toward each clearly worse action; keep the least likely action that flipped."""
        settings = self.settings
        with torch.no_grad():
            clean_log_probs = self.smoothed.log_probs(clean, context)
        clean_action = clean_log_probs.argmax(dim=1)
        gap = clean_log_probs.gather(1, clean_action[:, None]) - clean_log_probs
        best = clean.clone()
        best_log_prob = torch.full((clean.shape[0],), math.inf)
        step = settings.path_length_multiplier * radius / settings.pgd_steps
        targets = range(clean_log_probs.shape[1]) if settings.target_action is None else (settings.target_action,)
        for target in targets:
            eligible = (clean_action != target) & (gap[:, target] >= settings.min_log_prob_gap) & (radius > 0)
            if not bool(eligible.any()):
                continue
            flipped_at = self._targeted_pgd(clean, context, radius, step, target, clean_action, eligible)
            found = eligible & torch.isfinite(flipped_at[:, 0])
            if not bool(found.any()):
                continue
            shrunk = self._bisect(clean, context, flipped_at, target, found)
            better = found & (clean_log_probs[:, target] < best_log_prob)
            best = torch.where(better[:, None], shrunk, best)
            best_log_prob = torch.where(better, clean_log_probs[:, target], best_log_prob)
        return best

    def _targeted_pgd(self, clean: torch.Tensor, context: _StepContext, radius: torch.Tensor, step: torch.Tensor,
                      target: int, clean_action: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        """First PGD iterate whose noise-averaged argmax is ``target``; rows that never flip are NaN.

        PGD ascends the targeted margin ``log p(target) - log p(a0)``. Rows leave the batch once they flip,
        and at the first iterate rows whose first-order distance to the flip, ``margin / ||grad||``, exceeds
        ``feasibility_screen`` times the radius are dropped (no flip is expected within the budget).
        """
        flipped_at = torch.full_like(clean, math.nan)
        rows = torch.nonzero(eligible).squeeze(1)
        x = clean[rows].clone()
        for iteration in range(self.settings.pgd_steps + 1):
            x.requires_grad_(True)
            log_probs = self.smoothed.log_probs(x, context.select(rows))
            flipped = log_probs.argmax(dim=1) == target
            flipped_at[rows[flipped]] = x.detach()[flipped]
            margin = log_probs[:, target] - log_probs.gather(1, clean_action[rows, None]).squeeze(1)
            (grad,) = torch.autograd.grad(margin.sum(), x)
            keep = ~flipped
            if iteration == 0:
                distance = -margin.detach() / grad.norm(dim=1).clamp_min(1e-12)
                keep &= distance <= self.settings.feasibility_screen * radius[rows]
            if iteration == self.settings.pgd_steps or not bool(keep.any()):
                break
            rows, x, grad = rows[keep], x.detach()[keep], grad[keep]
            with torch.no_grad():
                x = _project(clean[rows], x + step[rows, None] * _unit_rows(grad), radius[rows],
                             self.low, self.high)
        return flipped_at

    @torch.no_grad()
    def _bisect(self, clean: torch.Tensor, context: _StepContext, flipped_at: torch.Tensor, target: int,
                found: torch.Tensor) -> torch.Tensor:
        """Shrink ``flipped_at - clean`` to the smallest scale (on a bisection grid) that still flips."""
        delta = torch.where(found[:, None], flipped_at - clean, torch.zeros_like(clean))
        low = torch.zeros(clean.shape[0])
        high = torch.ones(clean.shape[0])
        for _ in range(self.settings.bisection_steps):
            middle = (low + high) / 2
            flips = self.smoothed.log_probs(clean + middle[:, None] * delta, context).argmax(dim=1) == target
            high = torch.where(flips, middle, high)
            low = torch.where(flips, low, middle)
        # ``high`` always flips (it starts at the PGD iterate and only moves to flipping scales); the box
        # contains ``clean``, so shrinking toward it stays inside.
        return clean + high[:, None] * delta

    def _spend_fraction(self, clean: torch.Tensor, context: _StepContext, radius: torch.Tensor,
                        generators: list[torch.Generator]) -> torch.Tensor:
        """PGD on the ball of ``radius``: away from the clean action; keeps the best iterate per row."""
        smoothed = self.smoothed
        steps = self.settings.pgd_steps
        step = 2.5 * radius / steps
        with torch.no_grad():
            if smoothed.discrete:
                clean_action = smoothed.log_probs(clean, context).argmax(dim=1)
            else:
                clean_mean = smoothed.actions(clean, context)
                scale = smoothed.policy.action_scale.clamp_min(1e-12)

        target = self.settings.action_target
        direction = None if target is None else torch.as_tensor(target, dtype=clean.dtype)

        def objective(x: torch.Tensor) -> torch.Tensor:  # per row; the adversary maximises it
            if smoothed.discrete:
                return -smoothed.log_probs(x, context).gather(1, clean_action[:, None]).squeeze(1)
            shift = (smoothed.actions(x, context) - clean_mean) / scale
            if direction is not None:  # a targeted push, e.g. more throttle towards the car ahead
                return shift @ direction
            return (shift ** 2).sum(dim=1)

        x = clean.clone()
        if not smoothed.discrete:  # the distance objective has zero gradient at the clean point: random start
            start = torch.stack([torch.randn(clean.shape[1], generator=g) for g in generators])
            x = _project(clean, clean + 0.5 * radius[:, None] * _unit_rows(start), radius, self.low, self.high)
        best = x.detach().clone()
        best_value = torch.full((clean.shape[0],), -math.inf)
        for _ in range(steps + 1):
            x.requires_grad_(True)
            value = objective(x)
            with torch.no_grad():
                improved = value > best_value
                best = torch.where(improved[:, None], x.detach(), best)
                best_value = torch.where(improved, value.detach(), best_value)
            (grad,) = torch.autograd.grad(value.sum(), x)
            with torch.no_grad():
                x = _project(clean, x + step[:, None] * _unit_rows(grad), radius, self.low, self.high)
        return best


# -- episodes -----------------------------------------------------------------------------------------------
def _env_factory(scenario: ScenarioSpec | str | Callable[[], gym.Env]) -> Callable[[], gym.Env]:
    if callable(scenario) and not isinstance(scenario, ScenarioSpec):
        return scenario
    if isinstance(scenario, str):
        from safetybed.spec.catalogue import load_scenario_arg

        scenario, _ = load_scenario_arg(scenario)
    if not isinstance(scenario, ScenarioSpec):
        raise TypeError(f"scenario: expected a ScenarioSpec, a scenario path/catalogue name or an env factory, "
                        f"got {type(scenario).__name__}")
    # The smoothing noise is the controller's (``sigma``); the scenario's own observation noise would add a
    # second, unaccounted noise source, so it is removed. Action delay is dynamics and stays.
    without_noise = scenario.model_copy(
        update={"perturbations": scenario.perturbations.model_copy(update={"observation_noise_std": 0.0})})

    def factory() -> gym.Env:
        from safetybed.sims import make_env

        return make_env(without_noise)

    return factory


def _check_inputs(policy: Policy, sigma: float | None, budget: float, episodes: int, seed: int,
                  settings: AttackSettings) -> None:
    if not isinstance(policy, Policy):
        raise TypeError(f"policy: expected a safetybed.control.networks.Policy, got {type(policy).__name__}")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma: expected None (unsmoothed) or a finite value > 0, got {sigma}")
    if not (math.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget: expected a finite value >= 0 (total ℓ2 norm, observation units), got {budget}")
    if episodes < 1:
        raise ValueError(f"episodes: expected >= 1, got {episodes}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed: expected an integer in [0, 2**63), got {seed}")
    if settings.pgd_steps < 1 or settings.noise_samples < 1 or settings.bisection_steps < 0:
        raise ValueError(f"pgd_steps and noise_samples: expected >= 1, bisection_steps >= 0; got "
                         f"{settings.pgd_steps}, {settings.noise_samples}, {settings.bisection_steps}")
    if settings.spend_rule not in ("flip", "fraction"):
        raise ValueError(f"spend_rule: expected 'flip' or 'fraction', got {settings.spend_rule!r}")
    if settings.spend_rule == "flip" and policy.arch.kind != "categorical":
        raise ValueError(f"spend_rule='flip' needs discrete actions; the policy is {policy.arch.kind!r}: use "
                         f"spend_rule='fraction'")
    if not 0 < settings.spend_fraction <= 1:
        raise ValueError(f"spend_fraction: expected a value in (0, 1], got {settings.spend_fraction}")
    if settings.target_action is not None and not 0 <= settings.target_action < (
            policy.arch.act_dim if policy.arch.kind == "categorical" else 0):
        raise ValueError(f"target_action: expected None or an action index in [0, {policy.arch.act_dim}) of a "
                         f"discrete policy, got {settings.target_action!r}")
    if settings.action_target is not None and (
            policy.arch.kind == "categorical" or len(settings.action_target) != policy.arch.act_dim
            or not all(math.isfinite(v) for v in settings.action_target)):
        raise ValueError(f"action_target: expected None or {policy.arch.act_dim} finite numbers for a continuous "
                         f"policy ({policy.arch.kind!r}), got {settings.action_target!r}")
    if not settings.feasibility_screen > 0:
        raise ValueError(f"feasibility_screen: expected > 0 (math.inf to disable), got {settings.feasibility_screen}")
    if not settings.path_length_multiplier > 0:
        raise ValueError(f"path_length_multiplier: expected > 0, got {settings.path_length_multiplier}")


def attack_episodes(*, policy: Policy, obs_norm: ObsNormalizer, scenario: ScenarioSpec | str | Callable[[], gym.Env],
                    sigma: float | None, budget: float, episodes: int, seed: int, pgd_steps: int = 50,
                    noise_samples: int = 128, spend_rule: SpendRule = "flip", spend_fraction: float = 1.0,
                    min_log_prob_gap: float = 0.0, target_action: int | None = None,
                    feasibility_screen: float = 4.0, bisection_steps: int = 10,
                    path_length_multiplier: float = 2.0, action_target: tuple[float, ...] | None = None,
                    frame_stack: int = 1,
                    record_perturbations: bool = False) -> AttackResult:
    """Roll out ``episodes`` episodes of the (smoothed) policy under the total-budget adaptive ℓ2 attack.

    Args:
        policy: the base policy; it acts with its deterministic action (``Policy.forward``).
        obs_norm: its observation normaliser, applied after perturbation and noise.
        scenario: a :class:`ScenarioSpec`, a scenario path / catalogue name (its observation noise is
            removed, see the module doc), or a zero-argument factory of a gymnasium env (e.g. the toy).
        sigma: ``None`` for the unsmoothed controller; ``> 0`` for the smoothed one, which adds fresh
            ``N(0, sigma^2 I)`` to the perturbed raw observation at every step.
        budget: total ℓ2 budget ``B``: ``sqrt(sum_t ||delta_t||^2) <= B`` [observation units].
        episodes: number of episodes; episode ``i`` is seeded like the runner's episode ``i`` of ``seed``.
        seed: run seed; all draws (start states, smoothing noise, the adversary's noise samples) follow it.
        pgd_steps, noise_samples, spend_rule, spend_fraction, min_log_prob_gap, target_action,
        feasibility_screen, bisection_steps, path_length_multiplier, action_target: see
            :class:`AttackSettings`.
        frame_stack: the policy reads its last ``frame_stack`` raw frames, oldest first (``obs_dim =
            frame_stack * d``); the first frame fills every slot. Each raw frame is perturbed and noised once,
            before stacking, so the budget counts it once (§1(b)); ``scenario`` must give the raw frames.
        record_perturbations: keep every realised ``delta_t`` in the result.

    Returns:
        An :class:`AttackResult`. The episodes run in lock-step so PGD is batched across them; episode
        ``i``'s draws come only from its own generators, so results do not depend on ``episodes``.
    """
    settings = AttackSettings(pgd_steps=int(pgd_steps), noise_samples=int(noise_samples) if sigma else 1,
                              spend_rule=spend_rule, spend_fraction=float(spend_fraction),
                              min_log_prob_gap=float(min_log_prob_gap), target_action=target_action,
                              feasibility_screen=float(feasibility_screen), bisection_steps=int(bisection_steps),
                              path_length_multiplier=float(path_length_multiplier),
                              action_target=None if action_target is None else tuple(float(v) for v in action_target))
    _check_inputs(policy, sigma, budget, episodes, seed, settings)
    make = _env_factory(scenario)
    envs = [make() for _ in range(episodes)]
    space = envs[0].observation_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"scenario: expected a flat Box observation space, got {space}")
    dim = space.shape[0]
    if not (isinstance(frame_stack, int) and frame_stack >= 1):
        raise ValueError(f"frame_stack: expected an integer >= 1, got {frame_stack!r}")
    if frame_stack * dim != policy.arch.obs_dim:
        raise ValueError(f"policy: expects {policy.arch.obs_dim}-d observations; the scenario gives {dim}-d raw "
                         f"frames and frame_stack is {frame_stack} ({frame_stack * dim}-d)")
    action_start = int(envs[0].action_space.start) if isinstance(envs[0].action_space, gym.spaces.Discrete) else 0
    policy.eval()
    obs_norm.eval()
    adversary = _Adversary(_SmoothedOutput(policy, obs_norm), settings, space.low, space.high)

    env_seeds = [episode_seed(seed, i) for i in range(episodes)]
    # The smoothing noise is drawn like the scenario's own, so budget = 0 reproduces the runner's noisy episodes.
    smoothing_rngs = [noise_generator(s, seeding_keys.OBSERVATION_NOISE)
                      for s in env_seeds]
    adversary_generators = []
    for i in range(episodes):
        sequence = np.random.SeedSequence(seed, spawn_key=(*episode_sequence(seed, i).spawn_key,
                                                            seeding_keys.ADVERSARY))
        generator = torch.Generator()
        generator.manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0] & (2**63 - 1)))
        adversary_generators.append(generator)

    observations = np.stack([np.asarray(env.reset(seed=s)[0], dtype=space.dtype) for env, s in zip(envs, env_seeds,
                                                                                                        strict=True)])
    remaining_sq = np.full(episodes, float(budget) ** 2)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    attacked = np.zeros(episodes, dtype=np.int64)
    deltas: list[list[np.ndarray]] = [[] for _ in range(episodes)]
    active = np.ones(episodes, dtype=bool)
    histories = np.zeros((episodes, frame_stack, dim), dtype=space.dtype)  # the frames the controller saw
    first_step = True
    while active.any():
        rows = np.flatnonzero(active)
        clean = observations[rows]
        perturbed = clean.copy()
        attackable = rows[remaining_sq[rows] > 0]
        if attackable.size:
            past = None if first_step or frame_stack == 1 else histories[attackable, 1:, :]
            perturbed[np.isin(rows, attackable)] = _attack_rows(
                adversary, observations[attackable], remaining_sq[attackable],
                [adversary_generators[i] for i in attackable], sigma, settings.noise_samples, past, frame_stack)
        realised = perturbed.astype(np.float64) - clean.astype(np.float64)
        spent_sq = np.sum(realised**2, axis=1)
        remaining_sq[rows] = np.maximum(remaining_sq[rows] - spent_sq, 0.0)
        attacked[rows] += spent_sq > 0
        if record_perturbations:
            for row, delta in zip(rows, realised, strict=True):
                deltas[row].append(delta)
        if sigma is not None:  # the controller's own noise, drawn as ObservationNoise draws it
            seen = np.stack([add_observation_noise(perturbed[k], std=sigma, rng=smoothing_rngs[i], dtype=space.dtype)
                             for k, i in enumerate(rows)])
        else:
            seen = perturbed
        histories[rows] = push_frame(None if first_step else histories[rows], seen, frames=frame_stack)
        first_step = False
        with torch.no_grad():
            stacked = torch.as_tensor(histories[rows].reshape(rows.size, -1), dtype=torch.float32)
            actions = policy(obs_norm(stacked)).numpy()
        for k, i in enumerate(rows):
            action = int(actions[k]) + action_start if policy.arch.kind == "categorical" else actions[k]
            observation, reward, terminated, truncated, _ = envs[i].step(action)
            observations[i] = np.asarray(observation, dtype=space.dtype)
            returns[i] += float(reward)
            lengths[i] += 1
            if terminated or truncated:
                active[i] = False
    for env in envs:
        env.close()

    spent = np.sqrt(np.maximum(float(budget) ** 2 - remaining_sq, 0.0))
    sem = float(np.std(returns, ddof=1) / math.sqrt(episodes)) if episodes > 1 else math.inf
    kind = "unsmoothed" if sigma is None else f"smoothed sigma={sigma:g}, EOT K={settings.noise_samples}"
    method = (f"total-budget adaptive ℓ2 PGD, spend rule {settings.spend_rule!r} "
              f"(Kumar, Levine & Feizi 2022 §3.1 carryover attack); {kind}")
    return AttackResult(returns=tuple(float(r) for r in returns), mean=float(np.mean(returns)), sem=sem, n=episodes,
                        budget=float(budget), sigma=sigma, budget_spent=tuple(float(s) for s in spent),
                        attacked_steps=tuple(int(a) for a in attacked),
                        episode_lengths=tuple(int(n) for n in lengths), method=method, settings=settings,
                        perturbations=tuple(np.array(d).reshape(-1, dim) for d in deltas)
                        if record_perturbations else None)


def _attack_rows(adversary: _Adversary, clean: np.ndarray, remaining_sq: np.ndarray,
                 generators: list[torch.Generator], sigma: float | None, noise_samples: int,
                 past: np.ndarray | None, frames: int) -> np.ndarray:
    """Perturbed observations for the rows with budget left, never exceeding it after rounding to float32."""
    clean_t = torch.as_tensor(clean, dtype=torch.float32)
    if sigma is None:
        noise = torch.zeros(clean.shape[0], 1, clean.shape[1])
    else:  # fresh EOT draws every step, shared by all PGD iterations of the step (§3.1)
        noise = sigma * torch.stack([torch.randn(noise_samples, clean.shape[1], generator=g) for g in generators])
    context = _StepContext(noise, None if past is None else torch.as_tensor(past, dtype=torch.float32), frames)
    perturbed = adversary.perturb(clean_t, context, remaining_sq, generators).detach().numpy().astype(clean.dtype)
    # Guard against float32 rounding: the realised perturbation must fit the float64 budget.
    realised_sq = np.sum((perturbed.astype(np.float64) - clean.astype(np.float64)) ** 2, axis=1)
    over = realised_sq > remaining_sq
    perturbed[over] = clean[over]
    return perturbed
