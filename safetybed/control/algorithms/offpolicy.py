"""What the off-policy algorithms share, so their files hold only the algorithms.

* :func:`train_off_policy`, the training loop of DSAC-T, SAC and off-policy MDPO. It collects transitions
  from ``setup.make_vec_env()`` (same-step autoreset), fills a replay buffer with raw observations
  (normalised at sampling time with the current running statistics), warms up with uniform random actions
  for ``config.learning_starts`` steps (as SB3), then lets a *schedule* decide when to update (by default
  :class:`Rounds`: ``config.updates_per_round`` updates every ``config.env_steps_per_round`` environment
  steps), evaluating every ``eval_every_steps``.
* :class:`SoftActorCritic`, the parts of SAC and DSAC-T that are the same: actor, twin critics and their
  targets, the learned temperature, and the actor / temperature step (Haarnoja et al. 2018, §4.2, §5).
* :func:`check_soft_actor_critic`, the config checks of the fields SAC and DSAC-T have in common.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from safetybed.control.algorithms.common import (
    build_module,
    finish,
    frozen,
    require,
    require_flags,
    require_integers,
    require_positive,
)
from safetybed.control.algorithms.replay import Batch, ReplayBuffer
from safetybed.control.networks import ObsNormalizer, Policy, PolicyArch, QNetwork
from safetybed.control.training import TrainResult, TrainSetup


# -- the training loop ------------------------------------------------------------------------------------------
class OffPolicyAgent(Protocol):
    @property
    def actor(self) -> Policy:
        """The policy that is evaluated and returned."""
        ...

    def explore(self, obs: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """The action to collect data with after the warm-up (``obs`` normalised)."""
        ...

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient update; returns named, detached loss terms."""
        ...


#: ``schedule(env_steps, new_steps, buffer, learn)`` runs after every vector step (``env_steps`` counts it,
#: ``new_steps`` is its number of transitions) and calls ``learn()`` once per gradient update that is due.
Schedule = Callable[[int, int, ReplayBuffer, Callable[[], None]], None]


class Rounds:
    """``updates_per_round`` updates every ``env_steps_per_round`` env steps once more than ``learning_starts``
    have been taken (SB3's ``train_freq`` / ``gradient_steps``; the DSAC-T code collects 20 steps a round)."""

    def __init__(self, config: Any):
        self.config = config
        self.owed_steps = 0

    def __call__(self, env_steps: int, new_steps: int, buffer: ReplayBuffer, learn: Callable[[], None]) -> None:
        if env_steps <= self.config.learning_starts:  # as SB3: learning_starts steps, then the first update
            return
        self.owed_steps += new_steps
        while self.owed_steps >= self.config.env_steps_per_round:
            self.owed_steps -= self.config.env_steps_per_round
            for _ in range(self.config.updates_per_round):
                learn()


def train_off_policy(setup: TrainSetup, agent: OffPolicyAgent, *, arch: PolicyArch, config: Any,
                     loss_terms: tuple[str, ...], schedule: Schedule | None = None, capacity: int | None = None,
                     sample_generator: torch.Generator | None = None,
                     normalise_on_arrival: bool = True) -> TrainResult:
    """Run the loop for ``agent``; ``config`` provides ``buffer_size``, ``learning_starts`` and ``batch_size``.

    Args:
        loss_terms: names of the terms ``agent.update`` returns; each starts as NaN, so the first logged row
            (and the CSV header) has all columns. Empty: a term is logged once an update has produced it.
        schedule: when to update (default :class:`Rounds` of ``config``).
        capacity: replay capacity (default ``min(config.buffer_size, setup.steps)``).
        sample_generator: draws the replay indices (default ``setup.generator``).
        normalise_on_arrival: update the observation statistics with each observation as it arrives (the
            reset observation, then every next observation), so acting and the updates after a step already
            include it; ``False``: with each observation once it has been acted on.
    """
    device = setup.device
    obs_norm = setup.obs_normalizer()
    buffer = ReplayBuffer(capacity=min(config.buffer_size, setup.steps) if capacity is None else capacity,
                          obs_dim=arch.obs_dim, act_dim=arch.act_dim, device=device)
    schedule = Rounds(config) if schedule is None else schedule
    sample_generator = setup.generator if sample_generator is None else sample_generator
    low = np.asarray(arch.action_low, dtype=np.float32)
    high = np.asarray(arch.action_high, dtype=np.float32)

    def as_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=device, dtype=torch.float32)

    env = setup.make_vec_env()
    obs = setup.reset_vec_env(env)
    if normalise_on_arrival:
        obs_norm.update(as_tensor(obs))
    env_steps = updates = 0
    latest = {term: torch.tensor(math.nan, device=device) for term in loss_terms}

    def learn() -> None:
        nonlocal updates
        latest.update(agent.update(_normalised(buffer.sample(config.batch_size, generator=sample_generator),
                                               obs_norm)))
        updates += 1

    while env_steps < setup.steps:
        if env_steps < config.learning_starts:
            action = setup.rng.uniform(low, high, size=(setup.envs, arch.act_dim)).astype(np.float32)
        else:
            with torch.no_grad():
                action = agent.explore(obs_norm(as_tensor(obs)), generator=setup.generator)
            action = action.cpu().numpy()
        next_obs, reward, terminated, truncated, info = env.step(action)
        # SAME_STEP autoreset: next_obs holds reset observations where an episode ended; the transition
        # needs the real last observation. Bootstrapping stops on termination only, not on truncation.
        final_obs = next_obs.copy()
        if "_final_obs" in info:
            for index in np.flatnonzero(info["_final_obs"]):
                final_obs[index] = info["final_obs"][index]
        reward = setup.training_reward(reward, info, terminated | truncated)
        buffer.add(obs, action, reward, final_obs, terminated)
        obs_norm.update(as_tensor(next_obs if normalise_on_arrival else obs))
        obs = next_obs
        env_steps += setup.envs
        schedule(env_steps, setup.envs, buffer, learn)
        setup.maybe_evaluate(env_steps, agent.actor, obs_norm, extra=latest)
    env.close()
    return finish(setup, agent.actor, obs_norm, env_steps=env_steps, updates=updates, extra=latest)


def _normalised(batch: Batch, obs_norm: ObsNormalizer) -> Batch:
    if not obs_norm.enabled:
        return batch
    return batch._replace(obs=obs_norm(batch.obs), next_obs=obs_norm(batch.next_obs))


# -- SAC and DSAC-T ---------------------------------------------------------------------------------------------
def check_soft_actor_critic(config: Any) -> None:
    """``__post_init__`` checks of the fields SAC's and DSAC-T's configs share."""
    require_positive(config, ("critic_learning_rate", "actor_learning_rate", "alpha_learning_rate", "reward_scale"))
    require("gamma", config.gamma, 0 <= config.gamma <= 1, "in [0, 1]")
    require("tau", config.tau, 0 < config.tau <= 1, "in (0, 1]")
    require_integers(config, ("batch_size", "buffer_size", "env_steps_per_round", "updates_per_round"))
    require_integers(config, ("learning_starts",), minimum=0)
    require("init_log_alpha", config.init_log_alpha, math.isfinite(config.init_log_alpha), "finite")
    require_flags(config, ("auto_alpha",))
    if config.target_entropy is not None:
        require("target_entropy", config.target_entropy, math.isfinite(config.target_entropy), "finite or None")
    require("log_std_max", config.log_std_max, config.log_std_min < config.log_std_max,
            f"> log_std_min ({config.log_std_min})")


class SoftActorCritic:
    """Actor, twin critics and their targets, and the temperature; the actor and temperature losses and step.

    Subclasses (SAC, DSAC-T) set ``critic_outputs``, implement ``critic_means`` and add the critic loss and
    ``update``. Weights are drawn from ``init_generator`` in a fixed order: actor, critic 1, critic 2.

    Args:
        arch: the policy architecture (``tanh_gaussian``); the critics use its ``hidden`` and ``activation``.
        config: hyper-parameters (see :func:`check_soft_actor_critic` for the fields used here).
        device: where the networks live.
        generator: a ``torch.Generator`` on ``device`` for every draw during updates.
        init_generator: a CPU ``torch.Generator`` the initial weights are drawn from.
    """

    #: Outputs of each critic network.
    critic_outputs = 1

    def __init__(self, arch: PolicyArch, config: Any, *, device: torch.device, generator: torch.Generator,
                 init_generator: torch.Generator):
        if arch.kind != "tanh_gaussian":
            raise ValueError(f"arch.kind: expected 'tanh_gaussian', got {arch.kind!r}")
        self.config = config
        self.device = torch.device(device)
        self.generator = generator
        self.actor: Policy = build_module(lambda: Policy(arch), device=self.device, generator=init_generator)

        def critic() -> QNetwork:
            return QNetwork(arch.obs_dim, arch.act_dim, hidden=arch.hidden, activation=arch.activation,
                            outputs=self.critic_outputs)

        self.critic1 = build_module(critic, device=self.device, generator=init_generator)
        self.critic2 = build_module(critic, device=self.device, generator=init_generator)
        self.critic1_target = copy.deepcopy(self.critic1).requires_grad_(False)
        self.critic2_target = copy.deepcopy(self.critic2).requires_grad_(False)
        self.log_alpha = torch.tensor(float(config.init_log_alpha), device=self.device,
                                      requires_grad=config.auto_alpha)
        self.target_entropy = (-float(arch.act_dim) if config.target_entropy is None
                               else float(config.target_entropy))
        # One Adam over both critics equals one Adam each (Adam is per-parameter), as in the DSAC-T code.
        self.critic_optimizer = torch.optim.Adam([*self.critic1.parameters(), *self.critic2.parameters()],
                                                 lr=config.critic_learning_rate)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_learning_rate)
        self.alpha_optimizer = (torch.optim.Adam([self.log_alpha], lr=config.alpha_learning_rate)
                                if config.auto_alpha else None)
        #: Gradient (critic) updates done so far.
        self.iteration = 0

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def explore(self, obs: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Collect data with a sample of the current policy."""
        return self.actor.act_stochastic(obs, generator=generator)

    def critic_means(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q_1(s, a), Q_2(s, a))`` of the online critics (DSAC-T: the means of the return distributions)."""
        raise NotImplementedError

    def online_critics(self) -> tuple[torch.nn.Module, ...]:
        """The modules holding the online critics' parameters (frozen while the actor loss is computed)."""
        return (self.critic1, self.critic2)

    # -- losses ------------------------------------------------------------------------------------------------
    def actor_loss(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``E[alpha log pi(a~|s) - min_i Q_i(s, a~)]`` with ``a~`` reparameterised and the critics frozen
        (Haarnoja et al. 2018, §4.2; the minimum of the twins, as in the target)."""
        action, log_prob = self.actor.sample(obs, generator=self.generator)
        with frozen(*self.online_critics()):
            q_1, q_2 = self.critic_means(obs, action)
        loss = (self.alpha * log_prob - torch.minimum(q_1, q_2)).mean()
        return {"loss_actor": loss, "log_prob": log_prob.detach(), "entropy": -log_prob.detach().mean()}

    def alpha_loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        """``-log alpha * E[log pi(a~|s) + target_entropy]`` (Haarnoja et al. 2018, §5, in the
        log-parameterised form); the gradient reaches ``log alpha`` only."""
        return -(self.log_alpha * (log_prob.detach() + self.target_entropy).mean())

    # -- one step ----------------------------------------------------------------------------------------------
    def update_actor_and_alpha(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One Adam step of the actor, then (with ``auto_alpha``) one of the temperature on the same sample.

        Returns ``loss_actor``, ``entropy`` and, with ``auto_alpha``, ``loss_alpha``.
        """
        actor_terms = self.actor_loss(obs)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_terms["loss_actor"].backward()
        self.actor_optimizer.step()
        terms = {"loss_actor": actor_terms["loss_actor"], "entropy": actor_terms["entropy"]}
        if self.alpha_optimizer is not None:
            loss_alpha = self.alpha_loss(actor_terms["log_prob"])
            self.alpha_optimizer.zero_grad(set_to_none=True)
            loss_alpha.backward()
            self.alpha_optimizer.step()
            terms["loss_alpha"] = loss_alpha
        return terms
