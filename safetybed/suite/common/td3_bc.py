"""TD3+BC for continuous-action offline datasets, written to be reused by the suite's offline-RL methods.

Fujimoto & Gu 2021, "A Minimalist Approach to Offline Reinforcement Learning" (NeurIPS). TD3 (Fujimoto, van Hoof
& Meger 2018) on a fixed dataset with a behaviour-cloning term added to the actor loss:

* **Critic** (TD3): twin critics regressed to ``y = r + gamma (1 - d) min_i Q_bar_i(s', a')`` with the target
  policy smoothed, ``a' = clip(pi_bar(s') + clip(eps, -c, c), -a_max, a_max)``, ``eps ~ N(0, sigma^2)``,
  ``sigma = 0.2 a_max``, ``c = 0.5 a_max`` (:func:`td3_critic_loss`).
* **Actor** (their Eq. 3-4): ``-lambda Q_1(s, pi(s)) + (pi(s) - a)^2`` with ``lambda = alpha / mean|Q_1(s, pi(s))|``
  over the batch, held constant in the gradient, ``alpha = 2.5`` (:func:`td3_bc_actor_terms`), updated once every
  ``policy_delay = 2`` critic updates together with the Polyak step of both targets (``tau = 0.005``).
* **State normalisation** (their Eq. 5): ``s <- (s - mu) / (sigma + 1e-3)`` with the dataset's per-feature mean
  and standard deviation (:class:`ContinuousTransitions`).

Defaults follow the paper's Table (and the official ``sfujim/TD3_BC`` ``main.py``): Adam 3e-4 for both networks,
batch 256, 2x256 ReLU networks, discount 0.99. :class:`TD3BC` is one readable learner whose ``update(batch)``
returns a dict of named terms; a method that keeps TD3's critics but changes the actor objective (A2PR,
:mod:`safetybed.suite.offline_rl.a2pr`) subclasses it and overrides :meth:`TD3BC.extra_update` (more networks
trained each step) and :meth:`TD3BC.actor_terms` (the actor loss).

Choices the paper leaves open here: the dataset's action bounds must be symmetric (``[-a_max, a_max]``, as in
its MuJoCo tasks); rewards are used unscaled; a learned policy is run by :func:`evaluate_actor` deterministically
(``pi(s)``, no exploration noise), as the paper evaluates.

Example (about 20 s on one core)::

    data = record_dataset("classic/pendulum", parts=[DatasetPart(shipped_controller("pendulum_dsac_t"), 20)],
                          seed=0)
    transitions = ContinuousTransitions.from_dataset(data, max_action=2.0)
    learner = train_offline(TD3BC, transitions, config=TD3BCConfig(), steps=3000, seed=0)
    print(evaluate_actor(learner.act, "classic/pendulum", episodes=5, seed=100).mean())
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from safetybed.control.algorithms.common import (
    build_module,
    frozen,
    polyak_,
    require,
    require_integers,
    require_positive,
)
from safetybed.control.networks import QNetwork, mlp
from safetybed.suite.common.offline_data import OfflineDataset

__all__ = ["ContinuousTransitions", "DeterministicActor", "TD3BC", "TD3BCConfig", "TransitionBatch", "TwinCritic",
           "evaluate_actor", "normalized_q_term", "td3_bc_actor_terms", "td3_critic_loss", "train_offline"]

_CPU = torch.device("cpu")


@dataclass(frozen=True)
class TD3BCConfig:
    """TD3+BC hyper-parameters; defaults are Fujimoto & Gu 2021 (their Appendix, and ``sfujim/TD3_BC``)."""

    alpha: float = 2.5
    """Weight of the Q term relative to BC: ``lambda = alpha / mean|Q|`` (their Eq. 4)."""
    discount: float = 0.99
    """Discount factor ``gamma``."""
    tau: float = 0.005
    """Polyak rate of the target actor and critics."""
    policy_noise: float = 0.2
    """Std of the target-policy smoothing noise, as a fraction of ``a_max`` (TD3)."""
    noise_clip: float = 0.5
    """Clip of the smoothing noise, as a fraction of ``a_max`` (TD3)."""
    policy_delay: int = 2
    """The actor and the targets are updated once every this many critic updates (TD3)."""
    actor_learning_rate: float = 3e-4
    """Adam learning rate of the actor."""
    critic_learning_rate: float = 3e-4
    """Adam learning rate of the twin critics."""
    batch_size: int = 256
    """Transitions per gradient step."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the actor and of each critic (ReLU)."""

    def __post_init__(self) -> None:
        require_positive(self, ("alpha", "tau", "actor_learning_rate", "critic_learning_rate"))
        require("discount", self.discount, 0.0 <= self.discount < 1.0, "a value in [0, 1)")
        require("tau", self.tau, self.tau <= 1.0, "a value in (0, 1]")
        require("policy_noise", self.policy_noise, self.policy_noise >= 0, ">= 0")
        require("noise_clip", self.noise_clip, self.noise_clip >= 0, ">= 0")
        require_integers(self, ("policy_delay", "batch_size"))
        require("hidden", self.hidden, isinstance(self.hidden, tuple) and len(self.hidden) >= 1
                and all(isinstance(w, int) and w >= 1 for w in self.hidden), "a non-empty tuple of widths >= 1")


# -- data -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransitionBatch:
    """A mini-batch (``B`` rows): states ``[B, S]``, actions ``[B, A]``, rewards ``[B]``, next states ``[B, S]``,
    ``not_done`` ``[B]`` (0 where the episode terminated, 1 elsewhere, time-outs included)."""

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_states: torch.Tensor
    not_done: torch.Tensor


@dataclass(frozen=True)
class ContinuousTransitions:
    """A continuous-action dataset as tensors: states normalised with the dataset's statistics, actions divided by
    ``max_action`` so the learner works in ``[-1, 1]`` (the range D4RL's actions have, for which TD3+BC's
    ``alpha = 2.5`` was chosen: the BC term is a squared action error, so its weight depends on the action units).

    ``state_mean`` and ``state_std`` (``std + 1e-3``, Fujimoto & Gu 2021 Eq. 5; mean 0 and std 1 when
    normalisation is off) are what :meth:`normalize` applies to a raw observation when the policy acts, and
    ``max_action`` [action units] scales its ``[-1, 1]`` output back."""

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_states: torch.Tensor
    not_done: torch.Tensor
    state_mean: np.ndarray
    state_std: np.ndarray
    max_action: float

    @classmethod
    def from_dataset(cls, data: OfflineDataset, *, max_action: float, normalize_states: bool = True,
                     std_epsilon: float = 1e-3) -> ContinuousTransitions:
        """The transitions of ``data``, whose actions lie in ``[-max_action, max_action]``."""
        if data.actions.ndim != 2 or not np.issubdtype(data.actions.dtype, np.floating):
            raise ValueError(f"actions: expected a [N, A] float array of a Box action space, got dtype "
                             f"{data.actions.dtype} and shape {data.actions.shape}")
        if data.size == 0:
            raise ValueError("data: expected at least one transition, got none")
        require("max_action", max_action, max_action > 0, "> 0")
        if np.abs(data.actions).max() > max_action * (1 + 1e-6):
            raise ValueError(f"actions: expected values in [-{max_action}, {max_action}], got "
                             f"[{data.actions.min()}, {data.actions.max()}]")
        if normalize_states:
            mean = data.observations.mean(axis=0)
            std = data.observations.std(axis=0) + std_epsilon
        else:
            mean = np.zeros(data.observations.shape[1], dtype=np.float32)
            std = np.ones(data.observations.shape[1], dtype=np.float32)
        mean, std = mean.astype(np.float32), std.astype(np.float32)

        def states(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor((x - mean) / std, dtype=torch.float32)

        return cls(states(data.observations), torch.as_tensor(data.actions / max_action, dtype=torch.float32),
                   torch.as_tensor(data.rewards, dtype=torch.float32), states(data.next_observations),
                   torch.as_tensor(1.0 - data.terminals.astype(np.float32)), mean, std, float(max_action))

    @property
    def size(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def state_dim(self) -> int:
        return int(self.states.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    def normalize(self, observation: np.ndarray) -> np.ndarray:
        return (np.asarray(observation, dtype=np.float32) - self.state_mean) / self.state_std

    def sample(self, batch_size: int, *, generator: torch.Generator) -> TransitionBatch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        rows = torch.randint(0, self.size, (batch_size,), generator=generator)
        return TransitionBatch(self.states[rows], self.actions[rows], self.rewards[rows], self.next_states[rows],
                               self.not_done[rows])


# -- networks ---------------------------------------------------------------------------------------------------
class DeterministicActor(nn.Module):
    """``pi(s) = a_max tanh(f(s))`` with ``f`` a ReLU MLP (TD3)."""

    def __init__(self, state_dim: int, action_dim: int, *, max_action: float, hidden: tuple[int, ...]):
        super().__init__()
        self.net = mlp(state_dim, action_dim, hidden=hidden, activation="relu")
        self.max_action = float(max_action)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(self.net(states))


class TwinCritic(nn.Module):
    """Two independent ``Q_i(s, a)`` networks (TD3's clipped double Q); each output is ``[B]``."""

    def __init__(self, state_dim: int, action_dim: int, *, hidden: tuple[int, ...]):
        super().__init__()
        self.q1 = QNetwork(state_dim, action_dim, hidden=hidden, activation="relu")
        self.q2 = QNetwork(state_dim, action_dim, hidden=hidden, activation="relu")

    def forward(self, states: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(states, actions).squeeze(-1), self.q2(states, actions).squeeze(-1)

    def first(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``Q_1(s, a)`` alone, which TD3's actor maximises."""
        return self.q1(states, actions).squeeze(-1)


# -- losses -----------------------------------------------------------------------------------------------------
def td3_critic_loss(batch: TransitionBatch, *, critic: TwinCritic, critic_target: TwinCritic,
                    actor_target: nn.Module, discount: float, policy_noise: float, noise_clip: float,
                    max_action: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """TD3's clipped double-Q loss ``sum_i mean (Q_i(s, a) - y)^2`` (Fujimoto et al. 2018, Eq. 10 with target policy
    smoothing, Eq. 14); ``policy_noise`` and ``noise_clip`` are fractions of ``max_action``.

    Returns ``loss_critic``, ``q1``/``q2`` (``[B]``), the target ``target_q`` and the smoothed next actions
    ``next_actions`` (both without gradient; A2PR's value target reuses them)."""
    with torch.no_grad():
        noise = torch.randn(batch.actions.shape, generator=generator) * (policy_noise * max_action)
        noise = noise.clamp(-noise_clip * max_action, noise_clip * max_action)
        next_actions = (actor_target(batch.next_states) + noise).clamp(-max_action, max_action)
        target_q1, target_q2 = critic_target(batch.next_states, next_actions)
        target_q = batch.rewards + discount * batch.not_done * torch.min(target_q1, target_q2)
    q1, q2 = critic(batch.states, batch.actions)
    loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
    return {"loss_critic": loss, "q1": q1.detach(), "q2": q2.detach(), "target_q": target_q,
            "next_actions": next_actions}


def td3_bc_actor_terms(policy_actions: torch.Tensor, q_policy: torch.Tensor, dataset_actions: torch.Tensor, *,
                       alpha: float) -> dict[str, torch.Tensor]:
    """TD3+BC's actor loss ``-lambda mean Q(s, pi(s)) + mean (pi(s) - a)^2`` (Fujimoto & Gu 2021, Eq. 3) with
    ``lambda = alpha / mean|Q(s, pi(s))|`` (Eq. 4), the normaliser held constant in the gradient.

    Args:
        policy_actions: ``pi(s)``, ``[B, A]``.
        q_policy: ``Q_1(s, pi(s))``, ``[B]``.
        dataset_actions: the logged actions ``a``, ``[B, A]``.

    Returns ``loss_actor`` (the sum), ``loss_q`` (``-lambda mean Q``), ``loss_bc`` and ``lambda``.
    """
    terms = normalized_q_term(q_policy, alpha=alpha)
    terms["loss_bc"] = F.mse_loss(policy_actions, dataset_actions)  # mean over batch and action dims, as their code
    terms["loss_actor"] = terms["loss_q"] + terms["loss_bc"]
    return terms


def normalized_q_term(q_policy: torch.Tensor, *, alpha: float) -> dict[str, torch.Tensor]:
    """The Q part of TD3+BC's actor loss, ``loss_q = -lambda mean Q(s, pi(s))`` with ``lambda = alpha /
    mean|Q(s, pi(s))|`` (Fujimoto & Gu 2021, Eq. 4; the mean over the batch, held constant in the gradient, so
    the Q term's scale does not depend on the reward scale). Returns ``loss_q`` and ``lambda``."""
    lmbda = alpha / q_policy.abs().mean().detach()
    return {"loss_q": -lmbda * q_policy.mean(), "lambda": lmbda}


# -- the learner ------------------------------------------------------------------------------------------------
class TD3BC:
    """Actor, twin critics and their targets; :meth:`update` is one TD3+BC gradient step.

    Args:
        state_dim, action_dim: sizes of the (normalised) state and of the action.
        max_action: the actions lie in ``[-max_action, max_action]``.
        config: hyper-parameters.
        generator: draws the initial weights and the smoothing noise.
    """

    def __init__(self, state_dim: int, action_dim: int, *, max_action: float, config: TD3BCConfig,
                 generator: torch.Generator):
        self.config = config
        self.max_action = float(max_action)
        self.generator = generator
        self.actor = build_module(lambda: DeterministicActor(state_dim, action_dim, max_action=max_action,
                                                             hidden=config.hidden), device=_CPU, generator=generator)
        self.critic = build_module(lambda: TwinCritic(state_dim, action_dim, hidden=config.hidden), device=_CPU,
                                   generator=generator)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # fused: one kernel per step instead of one per tensor (about twice as fast an Adam step on these small
        # CPU networks; the same update rule).
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_learning_rate, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_learning_rate, fused=True)
        self.updates = 0
        #: Observation normaliser and action scale [action units] for :meth:`act` (set by :func:`train_offline`
        #: from the dataset; identity otherwise).
        self.normalize: Callable[[np.ndarray], np.ndarray] = lambda obs: np.asarray(obs, dtype=np.float32)
        self.action_scale = 1.0

    @staticmethod
    def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def extra_update(self, batch: TransitionBatch, critic_terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """More networks trained every step, after the critics (none for TD3+BC)."""
        return {}

    def actor_terms(self, batch: TransitionBatch, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The actor loss (``loss_actor``) and its parts; the critics are frozen while it is built."""
        pi = self.actor(batch.states)
        return td3_bc_actor_terms(pi, self.critic.first(batch.states, pi), batch.actions, alpha=self.config.alpha)

    def update(self, batch: TransitionBatch) -> dict[str, torch.Tensor]:
        """One gradient step: the critics; :meth:`extra_update`; every ``policy_delay``-th step the actor and the
        Polyak step of both targets. Returns every loss term, detached."""
        config = self.config
        self.updates += 1
        terms = td3_critic_loss(batch, critic=self.critic, critic_target=self.critic_target,
                                actor_target=self.actor_target, discount=config.discount,
                                policy_noise=config.policy_noise, noise_clip=config.noise_clip,
                                max_action=self.max_action, generator=self.generator)
        self.step(self.critic_optimizer, terms["loss_critic"])
        terms.update(self.extra_update(batch, terms))
        if self.updates % config.policy_delay == 0:
            with frozen(self.critic):  # the actor's loss must not train (or even reach) the critics
                actor = self.actor_terms(batch, terms)
            self.step(self.actor_optimizer, actor["loss_actor"])
            polyak_(self.critic_target, self.critic, config.tau)
            polyak_(self.actor_target, self.actor, config.tau)
            terms.update(actor)
        return {name: value.detach() for name, value in terms.items()}

    @torch.no_grad()
    def act(self, observation: np.ndarray) -> np.ndarray:
        """The deterministic action ``pi(s)`` for one raw observation, in the dataset's action units."""
        state = torch.as_tensor(self.normalize(observation), dtype=torch.float32)[None]
        return self.action_scale * self.actor(state)[0].numpy()


Learner = TypeVar("Learner", bound=TD3BC)


def train_offline(learner_class: type[Learner], transitions: ContinuousTransitions, *, config: object, steps: int,
                  seed: int) -> Learner:
    """Build ``learner_class(..., config=config, generator=...)`` and take ``steps`` gradient steps on uniform
    mini-batches of ``transitions`` (actions in ``[-1, 1]``, so the learner's ``max_action`` is 1); the learner's
    :meth:`~TD3BC.act` then normalises raw observations and scales its actions back to the dataset's units."""
    require("steps", steps, isinstance(steps, int) and steps >= 0, "an integer >= 0")
    init_seed, noise_seed, batch_seed = np.random.SeedSequence(seed).generate_state(3)
    learner = learner_class(transitions.state_dim, transitions.action_dim, max_action=1.0, config=config,
                            generator=torch.Generator().manual_seed(int(init_seed)))
    learner.generator.manual_seed(int(noise_seed))  # weights drawn; the training noise gets its own stream
    learner.normalize = transitions.normalize
    learner.action_scale = transitions.max_action
    batches = torch.Generator().manual_seed(int(batch_seed))
    batch_size = learner.config.batch_size
    for _ in range(steps):
        learner.update(transitions.sample(batch_size, generator=batches))
    return learner


def evaluate_actor(act: Callable[[np.ndarray], np.ndarray], scenario: str, *, episodes: int,
                   seed: int) -> np.ndarray:
    """Undiscounted returns of ``episodes`` episodes of ``scenario`` driven by ``act(observation)`` (episode
    ``k`` reset with seed ``seed + k``, so two policies evaluated with one ``seed`` see the same start states)."""
    from safetybed.sims.rollout import seeded_returns
    from safetybed.spec.catalogue import load_scenario_arg

    require("episodes", episodes, isinstance(episodes, int) and episodes >= 1, "an integer >= 1")
    return seeded_returns(act, load_scenario_arg(scenario)[0], episodes=episodes, seed_base=seed)

