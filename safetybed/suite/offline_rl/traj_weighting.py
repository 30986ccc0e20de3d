"""Trajectory weighting: re-weighted sampling of a mixed offline dataset (return- and advantage-weighting).

Hong, Agrawal, Tachet des Combes & Laroche, 2023, "Harnessing Mixed Offline Reinforcement Learning Datasets via
Trajectory Weighting" (ICLR 2023; arXiv 2306.13085). In a dataset of mostly low-return trajectories and a few
high-return ones, an offline learner that samples transitions uniformly stays close to the (poor) average
behaviour. The paper re-weights the *sampling* so that the dataset looks as if a better behaviour policy had
collected it, and leaves the learner untouched:

* **RW** (return weighting): ``w_i ∝ exp(Ĝ_i / α)``, with ``Ĝ_i`` trajectory ``i``'s return min-max normalised
  over the dataset and temperature ``α = 0.1``.
* **AW** (advantage weighting): ``A_i = G_i - V̂(s0_i)`` where ``V̂`` is a linear regression of the returns on
  the initial states (it removes the part of a return the start state explains, so lucky starts are not
  favoured in stochastic-start MDPs); ``Â`` min-max normalised; ``w_i ∝ exp(Â_i / α)``.

Formula check against the official code (Improbable-AI/harness-offline-rl, ``weighted.py`` classes ``RW``/``AW``,
``d3rlpy_examples/weighted_datasets.py``, read through the search tool):

* The code repeats each trajectory's weight on each of its transitions and takes a softmax *over transitions*:
  ``p(t) = exp(Ĝ_i/α) / Σ_j T_j exp(Ĝ_j/α)`` for every transition ``t`` of trajectory ``i``. A transition's
  probability is therefore proportional to its trajectory's weight (*not* weight / length), and trajectory ``i``
  receives total mass ``∝ T_i w_i``. The paper's analysis is in terms of a distribution over *trajectories*
  (the re-weighted behaviour policy has return ``Σ_i w_i G_i``), which corresponds to drawing trajectory ``i``
  with probability ``w_i`` and then one of its transitions uniformly: per-transition ``w_i / T_i``. This module
  implements both (:class:`Config` ``mass``); the default and the demo use the trajectory-level form
  (``w_i / T_i``). On CartPole the return *is* the length, so the code's form would favour the expert even more.
* AW: both code versions min-max normalise ``A`` and then take the softmax, as here. RW: in the d3rlpy example
  the min-max line is computed and then overwritten by ``softmax(G / α)`` on the raw returns (the README's
  2023-06-15 note says the normalisation was fixed); in ``d3rlpy_impls/weighted.py`` RW min-max normalises the
  softmax *output* instead. Following suite.md, RW here min-max normalises the returns and then exponentiates,
  the same order as AW.
* The mixing ratios of the paper's datasets (``d3rlpy_impls/datasets.py``, ``mix_mdp_mujoco_datasets``) are
  fractions of *transitions*: episodes of each source are drawn until their transitions reach ``n * ratio``.

Choices where the paper is silent: when all returns (or all advantages) are equal to within ``1e-9`` of their
scale, the min-max normalisation is undefined and every trajectory gets the same weight (a homogeneous dataset
is left as it is; without this a regression's round-off residuals would be stretched to [0, 1]); the value
regression ``V̂`` is ordinary least squares with an intercept on the raw initial observations (the code uses
scikit-learn's ``LinearRegression``, the same model).

The demo (:func:`demo`) records, through the testbed's batch runner (:func:`record_dataset`), CartPole-200
(``classic/cartpole``, ``episode_steps = 200``) datasets from ``builtin:random`` and the shipped
``cartpole_ppo`` controller (return 200 on every seeded episode), reads them back from the run store and trains
behaviour cloning and IQL (:mod:`safetybed.suite.common.offline_learners`) with uniform, RW and AW sampling for
the same number of gradient steps; each policy's return is its greedy policy's mean return on seeded
``classic/cartpole`` episodes. Three datasets per seed:

* ``mix5`` — the paper's mixture: 5 % expert *transitions* (random episodes last ~23 steps and expert ones 200,
  so 5 expert episodes per ~840 random ones).
* ``expert`` — 100 % expert episodes (the "no degradation" check).
* ``mix5ep`` — 5 % expert *episodes* (190 random + 10 expert, ~32 % expert transitions), BC only. Here uniform
  BC already does well when run greedily: the random policy's labels are balanced at every state, so the
  argmax of the cloned mixture is the expert's action wherever the expert has data at all. Its numbers are
  reported so the effect of measuring 5 % by episodes is visible; the verdict uses ``mix5``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from safetybed.suite.common.offline_data import (
    DEFAULT_SUITE_STORE,
    DatasetPart,
    OfflineDataset,
    record_dataset,
    shipped_controller,
)
from safetybed.suite.common.offline_learners import (
    BCConfig,
    DiscreteTransitions,
    IQLConfig,
    TrainedLearner,
    TransitionSampler,
    UniformSampler,
    WeightedSampler,
    evaluate_policy,
    train_bc,
    train_iql,
)
from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["ENTRY", "Config", "demo", "normalised", "trajectory_weighted_sampler", "trajectory_weights",
           "transition_probabilities"]

Scheme = Literal["return", "advantage"]
Mass = Literal["trajectory", "transition"]
#: Spreads below this fraction of a quantity's scale count as "all equal" (min-max normalisation undefined).
_RELATIVE_TIE = 1e-9


@dataclass(frozen=True)
class Config:
    """Trajectory-weighting options."""

    temperature: float = 0.1
    """Softmax temperature ``α`` over normalised returns/advantages (Hong et al. 2023; the official code's
    ``alpha = 0.1``). Larger is closer to uniform sampling."""
    mass: Mass = "trajectory"
    """``"trajectory"``: trajectory ``i`` gets total probability ``w_i``, each of its transitions ``w_i / T_i``
    (the paper's trajectory-level re-weighting). ``"transition"``: each transition gets ``∝ w_i`` (the official
    code's softmax over transitions; trajectory mass ``∝ T_i w_i``)."""

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature!r}")
        if self.mass not in ("trajectory", "transition"):
            raise ValueError(f"mass: expected 'trajectory' or 'transition', got {self.mass!r}")


def normalised(values: np.ndarray) -> np.ndarray:
    """Min-max normalisation to [0, 1]; all zeros when the values are equal (to ``1e-9`` of their scale)."""
    values = np.asarray(values, dtype=np.float64)
    spread = values.max() - values.min()
    scale = max(1.0, float(np.abs(values).max()))
    if spread <= _RELATIVE_TIE * scale:
        return np.zeros_like(values)
    return (values - values.min()) / spread


def trajectory_weights(returns: np.ndarray, *, scheme: Scheme = "return",
                       initial_observations: np.ndarray | None = None, temperature: float = 0.1) -> np.ndarray:
    """Sampling weights of ``E`` trajectories (they sum to 1), Hong et al. 2023 §4 (RW and AW).

    Args:
        returns: ``[E]`` undiscounted trajectory returns ``G_i``.
        scheme: ``"return"`` (RW) or ``"advantage"`` (AW).
        initial_observations: ``[E, d]`` first observations ``s0_i`` (AW only).
        temperature: ``α``.

    Example: returns ``[0, 5, 10]`` give ``Ĝ = [0, 0.5, 1]`` and weights ``∝ [1, e^5, e^10]``.
    """
    returns = np.asarray(returns, dtype=np.float64)
    if returns.ndim != 1 or returns.size == 0 or not np.isfinite(returns).all():
        raise ValueError(f"returns: expected a non-empty 1-D array of finite values, got shape {returns.shape}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature!r}")
    if scheme == "return":
        score = normalised(returns)  # RW: Ĝ_i = (G_i - min G) / (max G - min G)
    elif scheme == "advantage":
        if initial_observations is None:
            raise ValueError("initial_observations: expected an [E, d] array for scheme='advantage', got None")
        s0 = np.asarray(initial_observations, dtype=np.float64).reshape(returns.size, -1)
        design = np.column_stack([s0, np.ones(returns.size)])
        coefficients, *_ = np.linalg.lstsq(design, returns, rcond=None)
        advantages = returns - design @ coefficients  # AW: A_i = G_i - V̂(s0_i), V̂ linear in s0
        score = normalised(advantages)
    else:
        raise ValueError(f"scheme: expected 'return' or 'advantage', got {scheme!r}")
    logits = score / temperature  # w_i ∝ exp(Ĝ_i / α) (or exp(Â_i / α))
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def transition_probabilities(weights: np.ndarray, episode: np.ndarray, *, mass: Mass = "trajectory") -> np.ndarray:
    """Per-transition sampling probabilities from trajectory weights ``weights[E]`` and ``episode[N]`` (the
    trajectory ``0..E-1`` of each transition): ``w_i / T_i`` (``mass="trajectory"``) or ``∝ w_i`` (``"transition"``,
    the official code). They sum to 1."""
    weights = np.asarray(weights, dtype=np.float64)
    episode = np.asarray(episode, dtype=np.int64)
    if episode.ndim != 1 or episode.size == 0 or episode.min() < 0 or episode.max() >= weights.size:
        raise ValueError(f"episode: expected a non-empty [N] array of indices into {weights.size} trajectories")
    lengths = np.bincount(episode, minlength=weights.size)
    if mass == "trajectory":
        per_transition = weights[episode] / lengths[episode]
    elif mass == "transition":
        per_transition = weights[episode]
    else:
        raise ValueError(f"mass: expected 'trajectory' or 'transition', got {mass!r}")
    return per_transition / per_transition.sum()


def trajectory_weighted_sampler(data: OfflineDataset, *, scheme: Scheme, config: Config = Config()) -> WeightedSampler:
    """A :class:`WeightedSampler` over ``data``'s transitions with RW or AW trajectory weights (Hong et al. 2023)."""
    initial = data.observations[data.episode_starts()] if scheme == "advantage" else None
    weights = trajectory_weights(data.episode_returns, scheme=scheme, initial_observations=initial,
                                 temperature=config.temperature)
    return WeightedSampler(transition_probabilities(weights, data.episode, mass=config.mass))


# -- demo -------------------------------------------------------------------------------------------------------
SCENARIO = "classic/cartpole"
SAMPLINGS = ("uniform", "rw", "aw")


@dataclass(frozen=True)
class _Sizes:
    seeds: int
    mix5_episodes: tuple[int, int]
    """(random, expert) episodes of the 5 %-expert-transitions mixture."""
    mix5ep_episodes: tuple[int, int] | None
    """(random, expert) episodes of the 5 %-expert-episodes mixture (None: not run)."""
    expert_episodes: int
    steps: int
    eval_episodes: int
    with_iql: bool


_FULL = _Sizes(seeds=5, mix5_episodes=(840, 5), mix5ep_episodes=(190, 10), expert_episodes=20, steps=2_000,
               eval_episodes=20, with_iql=True)
_FAST = _Sizes(seeds=1, mix5_episodes=(500, 3), mix5ep_episodes=None, expert_episodes=5, steps=800,
               eval_episodes=10, with_iql=False)
#: Network width of every learner in the demo (2x64 instead of IQL's 2x256: CartPole is 4-D, and CPU time counts).
_HIDDEN = (64, 64)
#: The claim's thresholds: RW/AW-BC at least this multiple of uniform BC on ``mix5`` ...
_GAIN = 2.0
#: ... and at least this fraction of uniform BC on the expert-only data.
_NO_DEGRADATION = 0.9
_UNIT = "return (greedy, CartPole-200)"


def _sampler(data: OfflineDataset, transitions: DiscreteTransitions, sampling: str) -> TransitionSampler:
    if sampling == "uniform":
        return UniformSampler(transitions.size)
    return trajectory_weighted_sampler(data, scheme="return" if sampling == "rw" else "advantage")


def _greedy_return(data: OfflineDataset, train: Callable[..., TrainedLearner], config: BCConfig | IQLConfig,
                   sampling: str, *, seed: int, eval_seed: int, eval_episodes: int) -> float:
    transitions = DiscreteTransitions.from_dataset(data, n_actions=2)
    trained = train(transitions, sampler=_sampler(data, transitions, sampling), config=config, seed=seed)
    return float(evaluate_policy(trained.policy, SCENARIO, episodes=eval_episodes, seed=eval_seed).mean())


def _datasets(sizes: _Sizes, seed: int, store_path: str | Path) -> dict[str, OfflineDataset]:
    # Distinct run seeds per dataset and part (record_dataset runs part k with seed + k).
    expert = shipped_controller("cartpole_ppo")

    def mixture(episodes: tuple[int, int], run_seed: int) -> OfflineDataset:
        return record_dataset(SCENARIO, parts=[DatasetPart("builtin:random", episodes[0]),
                                               DatasetPart(expert, episodes[1])], seed=run_seed, store_path=store_path)

    datasets = {"mix5": mixture(sizes.mix5_episodes, 10 * seed),
                "expert": record_dataset(SCENARIO, parts=[DatasetPart(expert, sizes.expert_episodes)],
                                         seed=10 * seed + 2, store_path=store_path)}
    if sizes.mix5ep_episodes is not None:
        datasets["mix5ep"] = mixture(sizes.mix5ep_episodes, 10 * seed + 4)
    return datasets


def demo(*, fast: bool, seed: int, store_path: str | Path = DEFAULT_SUITE_STORE) -> DemoResult:
    """BC (and IQL) on CartPole-200 with uniform vs RW vs AW sampling: the greedy policies' returns.

    ``measured`` holds RW under the labels ``"<learner> <dataset>"`` that ``baseline`` (uniform sampling) shares,
    and AW under ``"<learner> <dataset> AW"``."""
    sizes = _FAST if fast else _FULL
    bc_config = BCConfig(hidden=_HIDDEN, steps=sizes.steps)
    iql_config = IQLConfig(hidden=_HIDDEN, steps=sizes.steps)
    learners: list[tuple[str, Callable[..., TrainedLearner], BCConfig | IQLConfig]] = [("bc", train_bc, bc_config)]
    if sizes.with_iql:
        learners.append(("iql", train_iql, iql_config))
    returns: dict[tuple[str, str], list[float]] = {}
    expert_share: dict[str, list[float]] = {}
    seeds = tuple(seed + k for k in range(sizes.seeds))
    for s in seeds:
        datasets = _datasets(sizes, s, store_path)
        for dataset_name, data in datasets.items():
            from_expert = np.asarray(data.episode_controllers)[data.episode] != "builtin:random"
            expert_share.setdefault(dataset_name, []).append(float(from_expert.mean()))
            for learner_name, train, config in learners:
                if dataset_name == "mix5ep" and learner_name != "bc":
                    continue  # the episode-share mixture only illustrates greedy BC
                for sampling in SAMPLINGS:
                    # Evaluation episodes are reset with seeds no dataset run uses.
                    value = _greedy_return(data, train, config, sampling, seed=s, eval_seed=1_000_000 + 1000 * s,
                                           eval_episodes=sizes.eval_episodes)
                    returns.setdefault((f"{learner_name} {dataset_name}", sampling), []).append(value)

    labels = list(dict.fromkeys(label for label, _ in returns))
    baseline = {label: measure(returns[label, "uniform"], unit=_UNIT) for label in labels}
    measured = {label: measure(returns[label, "rw"], unit=_UNIT) for label in labels}
    measured |= {f"{label} AW": measure(returns[label, "aw"], unit=_UNIT) for label in labels}
    measured |= {f"{name} expert transition share": measure(shares, unit="fraction")
                 for name, shares in expert_share.items() if name != "expert"}

    def ratio(label: str) -> float:
        return measured[label].mean / max(baseline[label.removesuffix(" AW")].mean, 1e-9)

    gains = {"RW": ratio("bc mix5"), "AW": ratio("bc mix5 AW")}
    keeps = {"RW": ratio("bc expert"), "AW": ratio("bc expert AW")}
    gain_checks = [g >= _GAIN for g in gains.values()]
    keep_checks = [k >= _NO_DEGRADATION for k in keeps.values()]
    verdict = ("reproduced" if all(gain_checks + keep_checks) else
               "partly" if any(gain_checks) else "not reproduced")
    notes = [f"BC on 5 % expert transitions: uniform {baseline['bc mix5'].mean:.0f}, RW {measured['bc mix5'].mean:.0f} "
             f"({gains['RW']:.1f}x), AW {measured['bc mix5 AW'].mean:.0f} ({gains['AW']:.1f}x) (needs >= {_GAIN:g}x)",
             f"on 100 % expert RW/AW keep {keeps['RW']:.2f}/{keeps['AW']:.2f} of uniform (needs >= {_NO_DEGRADATION})"]
    if sizes.with_iql:
        notes.append(f"IQL on mix5: uniform {baseline['iql mix5'].mean:.0f}, RW {measured['iql mix5'].mean:.0f}, "
                     f"AW {measured['iql mix5 AW'].mean:.0f}")
    if "bc mix5ep" in baseline:
        share = measured["mix5ep expert transition share"].mean
        notes.append(f"with 5 % expert *episodes* ({share:.0%} of transitions) greedy uniform BC already scores "
                     f"{baseline['bc mix5ep'].mean:.0f} (RW {measured['bc mix5ep'].mean:.0f}): balanced random "
                     f"labels leave the expert's action the argmax")
    return DemoResult(
        name="traj-weighting",
        claim=(f"On CartPole-200 data with 5 % expert transitions (the rest uniform-random), RW- and AW-sampled BC "
               f"reach ≥ {_GAIN:g}x the greedy return of uniformly sampled BC, and on 100 % expert data they keep "
               f"≥ {_NO_DEGRADATION:.0%} of it."),
        measured=measured, baseline=baseline, verdict=verdict, why="; ".join(notes), fast=fast, seeds=seeds,
        settings={"scenario": SCENARIO, "expert": "controllers/cartpole_ppo.toml", "temperature": Config().temperature,
                  "mass": Config().mass, "gradient_steps": sizes.steps, "batch_size": bc_config.batch_size,
                  "hidden": list(_HIDDEN), "learning_rate": bc_config.learning_rate,
                  "iql_expectile": iql_config.expectile, "iql_temperature": iql_config.temperature,
                  "iql_gamma": iql_config.gamma, "learners": [name for name, _, _ in learners],
                  "mix5_episodes": list(sizes.mix5_episodes),
                  "mix5ep_episodes": None if sizes.mix5ep_episodes is None else list(sizes.mix5ep_episodes),
                  "expert_episodes": sizes.expert_episodes, "eval_episodes_per_policy": sizes.eval_episodes},
    )


ENTRY = SuiteEntry(
    name="traj-weighting",
    title="Harnessing Mixed Offline Reinforcement Learning Datasets via Trajectory Weighting",
    citation="Hong, Agrawal, Tachet des Combes & Laroche 2023",
    family="offline_rl",
    module=__name__,
    rule=trajectory_weighted_sampler,
    demo=demo,
)
