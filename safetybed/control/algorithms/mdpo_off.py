"""Off-policy Mirror Descent Policy Optimization (Tomar, Shani, Efroni & Ghavamzadeh, ICLR 2022).

A SAC-v1-style learner (Q1, Q2, V and a Polyak target V-bar) whose policy is pulled towards the *previous*
policy ``pi_k`` by a KL term, with ``pi_k`` hard-copied from ``pi_theta`` every ``m`` env steps. With
``a~ = tanh(mu + sigma eps)`` scaled to the action bounds (reparameterised, ``eps ~ N(0, I)``):

    L_Q_i = 1/2 E[(Q_i(s, a) - r - gamma (1 - d) V-bar(s'))^2]
    L_V   = 1/2 E[(V(s) - [min(Q1, Q2)(s, a~) - lambda log pi_theta(a~|s)])^2]
    L_pi  = E[(1/t_k) (log pi_theta - log pi_k)(a~|s) + lambda log pi_k(a~|s) - Q1(s, a~)]
            + 1e-3 (mean mu^2 + mean log sigma^2)

which is the official ``mdpo_off/mdpo.py`` loss ``kl_coef log pi + (lambda - kl_coef) log pi_old - Q1``
(``research/centaur_dsac.md`` §3.2). As in that code ``1/t_k`` is the constant ``kl_coef``, only Q1 enters
the policy loss, gradients of ``L_pi`` reach the policy only (also through ``a~`` inside ``log pi_k``),
and after the uniform-random warm-up the agent *acts deterministically* (the squashed mean) when collecting
data; ``deterministic_collection = false`` samples instead.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from safetybed.control.algorithms.common import polyak_, require, require_flags, require_integers
from safetybed.control.algorithms.offpolicy import train_off_policy
from safetybed.control.algorithms.replay import Batch, ReplayBuffer
from safetybed.control.networks import Policy, QNetwork, ValueNetwork
from safetybed.control.training import TrainResult, TrainSetup


@dataclass(frozen=True)
class Config:
    """Off-policy MDPO hyper-parameters; defaults are the official code's README / ``run_mujoco.py``."""

    buffer_size: int = 1_000_000
    """Replay capacity in transitions."""
    learning_starts: int = 10_000
    """Env steps of uniform-random actions before the first gradient step."""
    batch_size: int = 256
    """Replay minibatch size."""
    learning_rate: float = 3e-4
    """Adam step size of the policy and of the value networks (Q1, Q2, V share one optimiser, as in the code)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target value network, applied after every gradient step."""
    entropy_coef: float = 0.2
    """lambda, the entropy-regularisation weight (README ``--lam=0.2``)."""
    kl_coef: float = 1.0
    """``1/t_k``, the weight of the KL to the previous policy; constant in the code (``klconst`` = 1.0)."""
    old_policy_interval: int = 1000
    """``m``: env steps between hard copies ``pi_k <- pi_theta`` (README ``--sgd_steps=1000``)."""
    regularization: float = 1e-3
    """Weight of ``mean mu^2 + mean log sigma^2`` (pre-squash mean and clamped log-std) in the policy loss."""
    deterministic_collection: bool = True
    """Act with the squashed mean after warm-up, as the official code does (``deterministic=True``)."""

    def __post_init__(self) -> None:
        require_integers(self, ("buffer_size", "batch_size", "old_policy_interval"))
        require_integers(self, ("learning_starts",), minimum=0)
        require("learning_rate", self.learning_rate, self.learning_rate > 0, "> 0")
        require("gamma", self.gamma, 0 < self.gamma <= 1, "in (0, 1]")
        require("tau", self.tau, 0 < self.tau <= 1, "in (0, 1]")
        for name in ("entropy_coef", "kl_coef", "regularization"):
            require(name, getattr(self, name), getattr(self, name) >= 0, ">= 0")
        require_flags(self, ("deterministic_collection",))


def squashed_log_prob(policy: Policy, obs: torch.Tensor, pre_tanh: torch.Tensor) -> torch.Tensor:
    """``log pi(a|s)`` of ``a = tanh(pre_tanh)`` scaled to the bounds, as in ``Policy.sample`` (eps 1e-6)."""
    mean, log_std = policy.mean_log_std(obs)
    gaussian = (-0.5 * ((pre_tanh - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    jacobian = torch.log(policy.action_scale * (1 - torch.tanh(pre_tanh).pow(2)) + 1e-6).sum(-1)
    return gaussian - jacobian


class MDPOOff:
    """Networks, optimisers and the losses of off-policy MDPO; ``update`` is one gradient step."""

    def __init__(self, policy: Policy, q1: QNetwork, q2: QNetwork, value: ValueNetwork, *, config: Config,
                 generator: torch.Generator):
        self.policy, self.q1, self.q2, self.value, self.config = policy, q1, q2, value, config
        self.generator = generator
        self.target_value = copy.deepcopy(value).requires_grad_(False)
        self.old_policy = copy.deepcopy(policy).requires_grad_(False)
        self.policy_optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
        self.value_parameters = [*q1.parameters(), *q2.parameters(), *value.parameters()]
        self.value_optimizer = torch.optim.Adam(self.value_parameters, lr=config.learning_rate)

    @property
    def actor(self) -> Policy:
        """``policy`` (the name the off-policy loop uses)."""
        return self.policy

    def sync_old_policy(self) -> None:
        """``pi_k <- pi_theta`` (the mirror-descent step boundary)."""
        self.old_policy.load_state_dict(self.policy.state_dict())

    def explore(self, obs: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """The squashed mean, as the official code collects (``deterministic=True``), or a policy sample."""
        if self.config.deterministic_collection:
            return self.policy(obs)
        return self.policy.act_stochastic(obs, generator=generator)

    def schedule(self, env_steps: int, new_steps: int, buffer: ReplayBuffer, learn: Callable[[], None]) -> None:
        """The off-policy loop's schedule: per env step one gradient step (``train_freq`` = 1, once past
        ``learning_starts`` and a batch is stored), then ``pi_k <- pi_theta`` every ``m`` env steps, as in the code."""
        for step in range(env_steps - new_steps, env_steps):
            if step >= self.config.learning_starts and buffer.size >= self.config.batch_size:
                learn()
            if step % self.config.old_policy_interval == 0:
                self.sync_old_policy()

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named loss terms (with graph); each one's gradient reaches only its own network."""
        config = self.config
        mean, log_std = self.policy.mean_log_std(batch.obs)
        noise = torch.randn(mean.shape, generator=self.generator, device=mean.device, dtype=mean.dtype)
        pre_tanh = mean + log_std.exp() * noise
        action = torch.tanh(pre_tanh) * self.policy.action_scale + self.policy.action_bias
        log_pi = squashed_log_prob(self.policy, batch.obs, pre_tanh)
        # pi_k is evaluated at the new policy's sample: its parameters are frozen, a~ still carries the gradient.
        log_pi_old = squashed_log_prob(self.old_policy, batch.obs, pre_tanh)
        # Q1 enters the policy loss as a fixed critic: gradients flow through a~ only, never into Q1.
        frozen_q1 = {name: p.detach() for name, p in self.q1.named_parameters()}
        q1_pi = functional_call(self.q1, frozen_q1, (batch.obs, action)).squeeze(-1)
        loss_policy = (config.kl_coef * (log_pi - log_pi_old) + config.entropy_coef * log_pi_old - q1_pi).mean()
        loss_policy = loss_policy + config.regularization * (mean.pow(2).mean() + log_std.pow(2).mean())
        with torch.no_grad():
            q_backup = batch.reward + config.gamma * (1.0 - batch.done) * self.target_value(batch.next_obs)
            min_q_pi = torch.min(q1_pi, self.q2(batch.obs, action).squeeze(-1))
            v_backup = min_q_pi - config.entropy_coef * log_pi
            kl = (log_pi - log_pi_old).mean()
        loss_q1 = 0.5 * (self.q1(batch.obs, batch.action).squeeze(-1) - q_backup).pow(2).mean()
        loss_q2 = 0.5 * (self.q2(batch.obs, batch.action).squeeze(-1) - q_backup).pow(2).mean()
        loss_v = 0.5 * (self.value(batch.obs) - v_backup).pow(2).mean()
        return {"loss_q1": loss_q1, "loss_q2": loss_q2, "loss_v": loss_v, "loss_policy": loss_policy, "kl": kl,
                "entropy": -log_pi.detach().mean()}

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One Adam step for the policy and one for (Q1, Q2, V), both from the same losses, then Polyak V-bar."""
        terms = self.losses(batch)
        self.policy_optimizer.zero_grad(set_to_none=True)
        terms["loss_policy"].backward()
        self.policy_optimizer.step()
        self.value_optimizer.zero_grad(set_to_none=True)
        (terms["loss_q1"] + terms["loss_q2"] + terms["loss_v"]).backward()
        self.value_optimizer.step()
        polyak_(self.target_value, self.value, self.config.tau)
        return {name: value.detach() for name, value in terms.items()}


def _glorot_init_(module: nn.Module, generator: torch.Generator) -> None:
    """Glorot-uniform weights and zero biases, TensorFlow's ``tf.layers.dense`` default used by the code."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)


def train(setup: TrainSetup, config: Config) -> TrainResult:
    """Train with off-policy MDPO (Box actions only) for ``setup.steps`` env steps (rounded up to ``envs``)."""
    arch = setup.policy_arch("tanh_gaussian")
    options = {"hidden": arch.hidden, "activation": arch.activation}
    policy, value = Policy(arch), ValueNetwork(arch.obs_dim, **options)
    q1, q2 = (QNetwork(arch.obs_dim, arch.act_dim, **options) for _ in range(2))
    for network in (policy, q1, q2, value):
        _glorot_init_(network, setup.cpu_generator)
        network.to(setup.device)
    agent = MDPOOff(policy, q1, q2, value, config=config, generator=setup.generator)
    # Unlike DSAC-T / SAC, and kept so that seeded runs reproduce the weights of this file's former loop:
    # all of buffer_size is allocated, replay indices come from the CPU generator, and the observation
    # statistics take in each observation once it has been acted on.
    return train_off_policy(setup, agent, arch=arch, config=config, loss_terms=(), schedule=agent.schedule,
                            capacity=config.buffer_size, sample_generator=setup.cpu_generator,
                            normalise_on_arrival=False)
