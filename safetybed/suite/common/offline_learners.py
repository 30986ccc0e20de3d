"""Offline learners for discrete-action datasets, with the transition sampling distribution pluggable.

Two learners, each trained from an :class:`~safetybed.suite.common.offline_data.OfflineDataset` by drawing
mini-batches of transition indices from a :class:`TransitionSampler` (so a method such as trajectory
re-weighting changes only *which* transitions are drawn, never the learner):

* **Behaviour cloning** (:func:`bc_loss`, :func:`train_bc`): maximum likelihood of the logged action under a
  categorical policy, ``-log pi(a | s)``.
* **IQL** (:func:`iql_losses`, :func:`train_iql`), Kostrikov, Nair & Levine 2022, "Offline Reinforcement Learning
  with Implicit Q-Learning" (ICLR): expectile regression of ``V(s)`` on the target critics' ``Q(s, a)`` (their
  Eq. 5, expectile ``tau = 0.7``), a TD loss of twin critics towards ``r + gamma V(s')`` (Eq. 6) and a categorical
  policy extracted by advantage-weighted regression, ``exp(beta (Q - V)) * -log pi(a | s)`` (Eq. 7, ``beta = 3``,
  weight clipped at 100 as in their code).

A learned policy is run greedily (or sampled) in a testbed scenario by :func:`evaluate_policy`.

Choices the IQL paper does not fix for discrete actions (its experiments are continuous): the critics output one
value per action (``Q(s, .)``) and the target is the minimum of two target critics; the policy is a softmax over
logits instead of a Gaussian; rewards are used unscaled (CartPole pays 1 per step, so values stay below
``1 / (1 - gamma)``); observations are standardised with the dataset's mean and standard deviation (floored at
1e-3), which the official code does only for some domains; no learning-rate schedule (theirs decays the actor's
by a cosine); updates run value, then actor, then critic, then the Polyak step, as in their ``learner.py``.

Example (about 5 s)::

    data = record_dataset("classic/cartpole", parts=[DatasetPart("builtin:random", 50)], seed=0)
    transitions = DiscreteTransitions.from_dataset(data)
    trained = train_bc(transitions, sampler=UniformSampler(transitions.size), config=BCConfig(steps=500), seed=0)
    returns = evaluate_policy(trained.policy, "classic/cartpole", episodes=5, seed=100)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from safetybed.control.algorithms.common import build_module, polyak_, require, require_integers
from safetybed.suite.common.offline_data import OfflineDataset
from safetybed.threads import torch_threads

__all__ = ["BCConfig", "CategoricalPolicy", "DiscreteTransitions", "IQLAgent", "IQLConfig", "TrainedLearner",
           "TransitionBatch", "TransitionSampler", "UniformSampler", "WeightedSampler", "bc_loss",
           "evaluate_policy", "expectile_loss", "iql_losses", "train_bc", "train_iql"]

_CPU = torch.device("cpu")
#: Standard deviations below this are floored when observations are standardised (a constant feature).
_MIN_OBS_STD = 1e-3


# -- data and samplers ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransitionBatch:
    """A mini-batch of transitions as tensors (``B`` rows)."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor


@dataclass(frozen=True)
class DiscreteTransitions:
    """The transitions of a discrete-action dataset as tensors, with the number of actions.

    ``terminals`` is 1.0 where the episode *terminated* (a learner does not bootstrap there) and 0.0 elsewhere,
    time-outs included."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor
    n_actions: int

    @classmethod
    def from_dataset(cls, data: OfflineDataset, *, n_actions: int | None = None) -> DiscreteTransitions:
        """The dataset's transitions; ``n_actions`` defaults to ``max(action) + 1``."""
        if data.actions.ndim != 1 or not np.issubdtype(data.actions.dtype, np.integer):
            raise ValueError(f"actions: expected a [N] integer array of a Discrete action space, got dtype "
                             f"{data.actions.dtype} and shape {data.actions.shape}")
        if data.size == 0:
            raise ValueError("data: expected at least one transition, got none")
        count = int(data.actions.max()) + 1 if n_actions is None else n_actions
        if data.actions.min() < 0 or data.actions.max() >= count:
            raise ValueError(f"actions: expected values in [0, {count}), got [{data.actions.min()}, "
                             f"{data.actions.max()}]")
        return cls(torch.as_tensor(data.observations, dtype=torch.float32),
                   torch.as_tensor(data.actions, dtype=torch.int64),
                   torch.as_tensor(data.rewards, dtype=torch.float32),
                   torch.as_tensor(data.next_observations, dtype=torch.float32),
                   torch.as_tensor(data.terminals, dtype=torch.float32), count)

    @property
    def size(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    def batch(self, indices: np.ndarray) -> TransitionBatch:
        rows = torch.as_tensor(indices, dtype=torch.int64)
        return TransitionBatch(self.observations[rows], self.actions[rows], self.rewards[rows],
                               self.next_observations[rows], self.terminals[rows])


class TransitionSampler(Protocol):
    """Draws mini-batches of transition indices ``0..size-1``."""

    @property
    def size(self) -> int: ...

    def sample(self, batch_size: int, *, generator: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class UniformSampler:
    """Every transition equally likely (the usual offline-RL mini-batch)."""

    size: int

    def __post_init__(self) -> None:
        require_integers(self, ("size",))

    def sample(self, batch_size: int, *, generator: np.random.Generator) -> np.ndarray:
        return generator.integers(0, self.size, size=batch_size)


@dataclass(frozen=True)
class WeightedSampler:
    """Transition ``k`` drawn with probability ``probabilities[k]`` (with replacement).

    ``probabilities`` must be finite and non-negative with a positive sum; they are normalised here."""

    probabilities: np.ndarray

    def __post_init__(self) -> None:
        p = np.asarray(self.probabilities, dtype=np.float64)
        if p.ndim != 1 or p.size == 0:
            raise ValueError(f"probabilities: expected a non-empty 1-D array, got shape {p.shape}")
        if not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
            raise ValueError("probabilities: expected finite non-negative values with a positive sum, got "
                             f"min {p.min()}, sum {p.sum()}")
        object.__setattr__(self, "probabilities", p / p.sum())
        object.__setattr__(self, "_cdf", np.cumsum(self.probabilities))

    @property
    def size(self) -> int:
        return int(self.probabilities.shape[0])

    def sample(self, batch_size: int, *, generator: np.random.Generator) -> np.ndarray:
        # Inverse-CDF draw; the clip guards the last bin against a cumulative sum a rounding error below 1.
        draws = np.searchsorted(self._cdf, generator.random(batch_size) * self._cdf[-1], side="right")
        return np.minimum(draws, self.size - 1)


# -- networks ---------------------------------------------------------------------------------------------------
def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class _Standardise(nn.Module):
    """``(obs - mean) / std`` with the dataset's statistics as buffers (saved with the module)."""

    def __init__(self, observations: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", observations.mean(dim=0))
        self.register_buffer("std", observations.std(dim=0).clamp_min(_MIN_OBS_STD))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std


class CategoricalPolicy(nn.Module):
    """``pi(a | s) = softmax(logits(standardise(s)))`` over ``n_actions`` actions."""

    def __init__(self, standardise: _Standardise, body: nn.Module) -> None:
        super().__init__()
        self.standardise = standardise
        self.body = body

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        return self.body(self.standardise(obs))

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits(obs), dim=-1).gather(-1, actions[:, None]).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: np.ndarray, *, greedy: bool = True, generator: np.random.Generator | None = None) -> int:
        """The greedy action (``argmax pi``), or one drawn from ``pi`` with ``generator``."""
        logits = self.logits(torch.as_tensor(np.asarray(obs, dtype=np.float32))[None])[0]
        if greedy:
            return int(logits.argmax())
        if generator is None:
            raise ValueError("generator: expected a np.random.Generator to sample an action, got None")
        probs = torch.softmax(logits.double(), dim=-1).numpy()
        return int(generator.choice(probs.shape[0], p=probs / probs.sum()))


def _policy(transitions: DiscreteTransitions, hidden: Sequence[int], generator: torch.Generator) -> CategoricalPolicy:
    body = build_module(lambda: _mlp(transitions.obs_dim, hidden, transitions.n_actions), device=_CPU,
                        generator=generator)
    return CategoricalPolicy(_Standardise(transitions.observations), body)


def _value_net(transitions: DiscreteTransitions, hidden: Sequence[int], out_dim: int,
               generator: torch.Generator) -> nn.Sequential:
    body = build_module(lambda: _mlp(transitions.obs_dim, hidden, out_dim), device=_CPU, generator=generator)
    return nn.Sequential(_Standardise(transitions.observations), body)


def _check_hidden(hidden: tuple[int, ...]) -> None:
    require("hidden", hidden, isinstance(hidden, tuple) and len(hidden) > 0
            and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in hidden),
            "a non-empty tuple of positive integers")


# -- behaviour cloning ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BCConfig:
    """Behaviour-cloning hyper-parameters (the IQL paper's network and optimiser sizes, fewer steps)."""

    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the ReLU policy MLP (Kostrikov et al. 2022 use 2x256)."""
    learning_rate: float = 3e-4
    """Adam learning rate (Kostrikov et al. 2022)."""
    batch_size: int = 256
    """Transitions per gradient step (Kostrikov et al. 2022)."""
    steps: int = 2_000
    """Gradient steps (the papers train 1e6; CartPole's small datasets fit in a few thousand)."""

    def __post_init__(self) -> None:
        _check_hidden(self.hidden)
        require("learning_rate", self.learning_rate, self.learning_rate > 0, "> 0")
        require_integers(self, ("batch_size", "steps"))


def bc_loss(policy: CategoricalPolicy, batch: TransitionBatch) -> dict[str, torch.Tensor]:
    """Behaviour cloning: the mean negative log-likelihood of the logged actions, ``-E log pi(a | s)``.

    Returns ``loss_actor`` (the loss) and ``entropy`` (the policy's mean entropy, detached) [nats]."""
    logits = policy.logits(batch.observations)
    log_probs = torch.log_softmax(logits, dim=-1)
    loss = -log_probs.gather(-1, batch.actions[:, None]).mean()
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean().detach()
    return {"loss_actor": loss, "entropy": entropy}


@dataclass(frozen=True)
class TrainedLearner:
    """A trained learner: its policy, the full agent (the policy itself for BC) and the mean of every loss term
    over the last 10 % of the steps."""

    policy: CategoricalPolicy
    agent: nn.Module
    final_terms: dict[str, float]


def _rngs(seed: int) -> tuple[torch.Generator, np.random.Generator]:
    init_seq, sample_seq = np.random.SeedSequence(seed).spawn(2)
    return torch.Generator().manual_seed(int(init_seq.generate_state(1)[0])), np.random.default_rng(sample_seq)


def _check_sampler(sampler: TransitionSampler, transitions: DiscreteTransitions) -> None:
    if sampler.size != transitions.size:
        raise ValueError(f"sampler.size: expected the {transitions.size} transitions of the data, got {sampler.size}")


class _TermAverage:
    """Means of loss terms over the last ``window`` steps."""

    def __init__(self, steps: int) -> None:
        self.start = steps - max(1, steps // 10)
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        if step < self.start:
            return
        self.count += 1
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach())

    def means(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()}


def train_bc(transitions: DiscreteTransitions, *, sampler: TransitionSampler, config: BCConfig = BCConfig(),
             seed: int) -> TrainedLearner:
    """Behaviour cloning for ``config.steps`` Adam steps on mini-batches drawn by ``sampler``."""
    _check_sampler(sampler, transitions)
    init_generator, sample_rng = _rngs(seed)
    policy = _policy(transitions, config.hidden, init_generator)
    optimiser = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    average = _TermAverage(config.steps)
    with torch_threads(1):  # small networks: extra threads only spin (see safetybed.threads)
        for step in range(config.steps):
            terms = bc_loss(policy, transitions.batch(sampler.sample(config.batch_size, generator=sample_rng)))
            optimiser.zero_grad(set_to_none=True)
            terms["loss_actor"].backward()
            optimiser.step()
            average.add(step, terms)
    return TrainedLearner(policy, policy, average.means())


# -- IQL --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IQLConfig:
    """IQL hyper-parameters; defaults from Kostrikov, Nair & Levine 2022 (their MuJoCo settings), fewer steps."""

    expectile: float = 0.7
    """Expectile ``tau`` of the value regression (their Eq. 5; 0.7 on MuJoCo)."""
    temperature: float = 3.0
    """Inverse temperature ``beta`` of the advantage-weighted policy extraction (their Eq. 7; 3.0 on MuJoCo)."""
    max_weight: float = 100.0
    """Clip of ``exp(beta * advantage)`` (their code's ``exp_a`` clip)."""
    gamma: float = 0.99
    """Discount factor (theirs)."""
    polyak: float = 0.005
    """Polyak rate of the target critics (theirs)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of every ReLU MLP (theirs: 2x256)."""
    learning_rate: float = 3e-4
    """Adam learning rate of the value, critics and policy (theirs)."""
    batch_size: int = 256
    """Transitions per gradient step (theirs)."""
    steps: int = 2_000
    """Gradient steps (they train 1e6; CartPole's small datasets need a few thousand)."""

    def __post_init__(self) -> None:
        require("expectile", self.expectile, 0.0 < self.expectile < 1.0, "in (0, 1)")
        require("temperature", self.temperature, self.temperature >= 0, ">= 0")
        require("max_weight", self.max_weight, self.max_weight > 0, "> 0")
        require("gamma", self.gamma, 0.0 <= self.gamma < 1.0, "in [0, 1)")
        require("polyak", self.polyak, 0.0 < self.polyak <= 1.0, "in (0, 1]")
        require("learning_rate", self.learning_rate, self.learning_rate > 0, "> 0")
        _check_hidden(self.hidden)
        require_integers(self, ("batch_size", "steps"))


class IQLAgent(nn.Module):
    """Policy, state value ``V(s)``, twin critics ``Q_k(s, .)`` (one output per action) and their targets."""

    def __init__(self, transitions: DiscreteTransitions, hidden: Sequence[int], generator: torch.Generator) -> None:
        super().__init__()
        self.policy = _policy(transitions, hidden, generator)
        self.value = _value_net(transitions, hidden, 1, generator)
        self.critics = nn.ModuleList(_value_net(transitions, hidden, transitions.n_actions, generator)
                                     for _ in range(2))
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)

    def target_q(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``min_k Q_target_k(s, a)``, without gradient."""
        with torch.no_grad():
            return torch.minimum(*(c(obs).gather(-1, actions[:, None]).squeeze(-1) for c in self.target_critics))


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """``E |tau - 1(u < 0)| u^2`` with ``u = Q - V`` (Kostrikov et al. 2022, Eq. 5's ``L_2^tau``)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()


def iql_losses(agent: IQLAgent, batch: TransitionBatch, config: IQLConfig) -> dict[str, torch.Tensor]:
    """IQL's three losses on one batch (Kostrikov et al. 2022).

    * ``loss_value`` (Eq. 5): ``L_2^tau(min_k Q_target_k(s, a) - V(s))``; only V gets its gradient.
    * ``loss_actor`` (Eq. 7): ``-E exp(beta (Q_target(s, a) - V(s))) log pi(a | s)`` with the weight clipped at
      ``max_weight``; only the policy gets its gradient.
    * ``loss_critic`` (Eq. 6): ``sum_k E (r + gamma (1 - done) V(s') - Q_k(s, a))^2``; only the critics get it.

    Also ``advantage_mean`` and ``weight_mean`` (detached). The caller steps the three optimisers."""
    target_q = agent.target_q(batch.observations, batch.actions)
    value = agent.value(batch.observations).squeeze(-1)
    loss_value = expectile_loss(target_q - value, config.expectile)  # Eq. 5

    advantage = target_q - value.detach()
    weight = torch.exp(config.temperature * advantage).clamp_max(config.max_weight)
    loss_actor = -(weight * agent.policy.log_prob(batch.observations, batch.actions)).mean()  # Eq. 7 (AWR)

    with torch.no_grad():
        td_target = batch.rewards + config.gamma * (1.0 - batch.terminals) * agent.value(batch.next_observations
                                                                                         ).squeeze(-1)
    loss_critic = sum(F.mse_loss(c(batch.observations).gather(-1, batch.actions[:, None]).squeeze(-1), td_target)
                      for c in agent.critics)  # Eq. 6
    return {"loss_value": loss_value, "loss_actor": loss_actor, "loss_critic": loss_critic,
            "advantage_mean": advantage.mean().detach(), "weight_mean": weight.mean().detach()}


def train_iql(transitions: DiscreteTransitions, *, sampler: TransitionSampler, config: IQLConfig = IQLConfig(),
              seed: int) -> TrainedLearner:
    """IQL for ``config.steps`` steps on mini-batches drawn by ``sampler`` (value, actor, critic, Polyak)."""
    _check_sampler(sampler, transitions)
    init_generator, sample_rng = _rngs(seed)
    agent = IQLAgent(transitions, config.hidden, init_generator)
    optimisers = {name: torch.optim.Adam(module.parameters(), lr=config.learning_rate)
                  for name, module in (("loss_value", agent.value), ("loss_actor", agent.policy),
                                       ("loss_critic", agent.critics))}
    average = _TermAverage(config.steps)
    with torch_threads(1):  # small networks: extra threads only spin (see safetybed.threads)
        for step in range(config.steps):
            batch = transitions.batch(sampler.sample(config.batch_size, generator=sample_rng))
            terms = iql_losses(agent, batch, config)
            for optimiser in optimisers.values():
                optimiser.zero_grad(set_to_none=True)
            # The three losses touch disjoint parameters (see iql_losses), so one backward pass serves all three.
            (terms["loss_value"] + terms["loss_actor"] + terms["loss_critic"]).backward()
            for optimiser in optimisers.values():
                optimiser.step()
            polyak_(agent.target_critics, agent.critics, config.polyak)
            average.add(step, terms)
    return TrainedLearner(agent.policy, agent, average.means())


# -- evaluation -------------------------------------------------------------------------------------------------
def evaluate_policy(policy: CategoricalPolicy, scenario: str, *, episodes: int, seed: int,
                    greedy: bool = True) -> np.ndarray:
    """Undiscounted returns of ``episodes`` episodes of ``scenario`` (episode ``k`` reset with seed ``seed + k``;
    the scenario's own episode cap), acting greedily or by sampling ``pi``."""
    from safetybed.sims.rollout import seeded_returns
    from safetybed.spec.catalogue import load_scenario_arg

    if episodes < 1:
        raise ValueError(f"episodes: expected >= 1, got {episodes}")
    action_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    with torch_threads(1):
        return seeded_returns(lambda obs: policy.act(obs, greedy=greedy, generator=action_rng),
                              load_scenario_arg(scenario)[0], episodes=episodes, seed_base=seed)
