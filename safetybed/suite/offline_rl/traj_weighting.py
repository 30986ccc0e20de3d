"""Trajectory weighting: sample an offline dataset's transitions by their trajectory's return (or advantage).

Paper: Zhang-Wei Hong, Pulkit Agrawal, Rémi Tachet des Combes, Romain Laroche (2023), "Harnessing Mixed Offline
Reinforcement Learning Datasets via Trajectory Weighting" (ICLR). In a dataset of mostly poor and a few good
trajectories, an offline learner that samples transitions uniformly imitates the poor majority. Re-weighting whole
trajectories fixes the sampling distribution, not the learner:

* **RW** (return weighting): ``w_i ∝ exp(G_hat_i / alpha)``, ``G_hat`` the min-max-normalised return of trajectory
  ``i``, ``alpha = 0.1``.
* **AW** (advantage weighting): ``A_i = G_i - V_hat(s0_i)`` with ``V_hat`` a linear regression of the return on the
  first state, min-max-normalised, ``w_i ∝ exp(A_hat_i / alpha)``.

Demo: datasets recorded by the batch runner on ``classic/cartpole`` and read back from the run store: 95 % of the
episodes by ``builtin:random`` and 5 % by the shipped PPO controller (``controllers/cartpole_ppo.toml``), and a
100 %-expert dataset of PPO episodes. Behaviour cloning with uniform, RW and AW sampling at equal gradient steps;
each learned policy's greedy return over seeded evaluation episodes (the scenario's 200-step cap). Claims checked:
RW/AW-BC return ≥ 2x uniform BC on the 5 % mixture, and within 10 % of uniform BC on the expert-only dataset.

Choices where the paper is silent (the official ``weighted.py`` was not read here; these are unverified):

* A transition's sampling probability is its trajectory's weight divided by the trajectory's length, so a
  trajectory is drawn with probability ∝ ``w_i`` whatever its length, then a transition uniformly within it.
  (With CartPole's return equal to the length, weighting per transition without the division would favour long
  episodes twice.)
* The min-max normalisation is applied (the research note says the d3rlpy example overwrote it, fixed 2023-06-15).
* Only BC is run; the learners module also has IQL (``train_iql``), not used in this demo for CPU time.
"""

from __future__ import annotations

import numpy as np

from safetybed.suite.common.offline_data import (
    DatasetPart,
    OfflineDataset,
    record_dataset,
    shipped_controller,
)
from safetybed.suite.common.offline_learners import (
    BCConfig,
    DiscreteTransitions,
    UniformSampler,
    WeightedSampler,
    evaluate_policy,
    train_bc,
)
from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["ENTRY", "advantage_weights", "demo", "return_weights", "transition_probabilities"]

#: Seeds of the evaluation episodes (disjoint from the dataset runs' episode seeds).
EVAL_SEED = 50_000


def _min_max(values: np.ndarray) -> np.ndarray:
    span = float(values.max() - values.min())
    # A spread at rounding level (an exact linear baseline's residuals) is no spread: every weight equal.
    if span <= 1e-9 * max(1.0, float(np.abs(values).max())):
        return np.zeros_like(values, dtype=float)
    return (values - values.min()) / span


def _softmax_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    logits = scores / temperature
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def return_weights(returns: np.ndarray, *, temperature: float = 0.1) -> np.ndarray:
    """RW (Hong et al. 2023): ``w_i ∝ exp(G_hat_i / alpha)`` over min-max-normalised returns; sums to 1."""
    return _softmax_weights(_min_max(np.asarray(returns, dtype=float)), temperature)


def advantage_weights(returns: np.ndarray, first_states: np.ndarray, *, temperature: float = 0.1) -> np.ndarray:
    """AW (Hong et al. 2023): ``w_i ∝ exp(A_hat_i / alpha)``, ``A_i = G_i - V_hat(s0_i)`` with ``V_hat`` the
    least-squares linear fit (with intercept) of the returns on the first states; sums to 1."""
    returns = np.asarray(returns, dtype=float)
    design = np.c_[np.asarray(first_states, dtype=float), np.ones(len(returns))]
    coefficients, *_ = np.linalg.lstsq(design, returns, rcond=None)
    return _softmax_weights(_min_max(returns - design @ coefficients), temperature)


def transition_probabilities(data: OfflineDataset, trajectory_weights: np.ndarray) -> np.ndarray:
    """Per-transition sampling probabilities: the trajectory's weight divided by its length (module docstring)."""
    trajectory_weights = np.asarray(trajectory_weights, dtype=float)
    if trajectory_weights.shape != (data.episodes,):
        raise ValueError(f"trajectory_weights: expected shape ({data.episodes},), got {trajectory_weights.shape}")
    lengths = np.bincount(data.episode, minlength=data.episodes)
    probabilities = trajectory_weights[data.episode] / lengths[data.episode]
    return probabilities / probabilities.sum()


def _bc_returns(data: OfflineDataset, *, steps: int, seed: int, eval_episodes: int) -> dict[str, float]:
    transitions = DiscreteTransitions.from_dataset(data, n_actions=2)
    first = data.observations[data.episode_starts()]
    samplers = {"uniform": UniformSampler(transitions.size),
                "RW": WeightedSampler(transition_probabilities(data, return_weights(data.episode_returns))),
                "AW": WeightedSampler(transition_probabilities(
                    data, advantage_weights(data.episode_returns, first)))}
    config = BCConfig(steps=steps, hidden=(64, 64))
    return {name: float(evaluate_policy(train_bc(transitions, sampler=sampler, config=config, seed=seed).policy,
                                        "classic/cartpole", episodes=eval_episodes, seed=EVAL_SEED).mean())
            for name, sampler in samplers.items()}


def demo(*, fast: bool, seed: int) -> DemoResult:
    """BC with uniform vs RW vs AW sampling on a 5 %-expert CartPole mixture and on expert-only data."""
    seeds = 2 if fast else 5
    random_episodes, expert_episodes = (95, 5) if fast else (190, 10)
    steps, eval_episodes = (300, 5) if fast else (1500, 10)
    expert = shipped_controller("cartpole_ppo")
    mixed = record_dataset("classic/cartpole", parts=[DatasetPart("builtin:random", random_episodes),
                                                      DatasetPart(expert, expert_episodes)], seed=1000 + seed)
    expert_only = record_dataset("classic/cartpole", parts=[DatasetPart(expert, 10)], seed=2000 + seed)
    rows: dict[str, list[float]] = {}
    for k in range(seeds):
        for label, data in (("mixed", mixed), ("expert", expert_only)):
            for name, value in _bc_returns(data, steps=steps, seed=seed + k, eval_episodes=eval_episodes).items():
                rows.setdefault(f"{label} {name}", []).append(value)
    m = {key: measure(values, unit="return") for key, values in rows.items()}
    uniform, best = m["mixed uniform"].mean, max(m["mixed RW"].mean, m["mixed AW"].mean)
    ratio = best / max(uniform, 1e-9)
    expert_drop = min(m["expert RW"].mean, m["expert AW"].mean) / max(m["expert uniform"].mean, 1e-9)
    gain_ok, keep_ok = ratio >= 2, expert_drop >= 0.9
    verdict = ("reproduced" if gain_ok and keep_ok else
               "partly" if (gain_ok or keep_ok) and best > uniform else "not reproduced")
    share = expert_episodes / (random_episodes + expert_episodes)
    why = (f"mixed ({share:.0%} expert episodes, {mixed.size} transitions): best weighted BC {best:.1f} vs uniform "
           f"{uniform:.1f} ({ratio:.2f}x, needs >= 2x); expert-only: weighted/uniform {expert_drop:.2f} (needs >= "
           f"0.9); BC only, {steps} steps")
    return DemoResult(
        name="traj-weighting",
        claim="On a CartPole dataset of 95 % random and 5 % expert episodes, RW/AW-weighted BC returns >= 2x "
              "uniform BC, and weighting costs <= 10 % on an expert-only dataset",
        measured={"mixed return": m["mixed RW"], "mixed return (AW)": m["mixed AW"],
                  "expert-only return": m["expert RW"], "expert-only return (AW)": m["expert AW"]},
        baseline={"mixed return": m["mixed uniform"], "expert-only return": m["expert uniform"]},
        verdict=verdict, why=why, fast=fast, seeds=tuple(range(seed, seed + seeds)),
        settings={"random_episodes": random_episodes, "expert_episodes": expert_episodes, "bc_steps": steps,
                  "eval_episodes": eval_episodes, "temperature": 0.1, "hidden": [64, 64],
                  "mixed_transitions": mixed.size, "expert_controller": "controllers/cartpole_ppo.toml"})


ENTRY = SuiteEntry(name="traj-weighting",
                   title="Harnessing Mixed Offline Reinforcement Learning Datasets via Trajectory Weighting",
                   citation="Hong et al. 2023", family="offline_rl", module=__name__, rule=return_weights,
                   demo=demo)
