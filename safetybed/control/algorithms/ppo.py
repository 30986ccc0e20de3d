"""PPO-clip (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv 1707.06347).

Discrete actions use a categorical policy, Box actions a diagonal Gaussian with a state-independent
log-std; the value function is a separate network. Per iteration: collect ``n_steps`` steps from every
env, compute GAE(gamma, lambda) (:mod:`~safetybed.control.algorithms.rollout`), then ``epochs`` passes of
shuffled minibatches on

    L = -E[min(r A, clip(r, 1 - eps, 1 + eps) A)] - ent_coef H[pi] + vf_coef 0.5 E[(V - R)^2]    (eq. 7, 9)

with ``r = pi(a|s) / pi_old(a|s)``. Defaults follow CleanRL's ``ppo_continuous_action.py`` and SB3's PPO
(which agree on all but ``n_steps``/``batch_size``: 2048 / 32 minibatches = SB3's 64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from safetybed.control.algorithms.rollout import (
    RewardScaler,
    RolloutBatch,
    RolloutBuffer,
    action_distribution,
    build_networks,
    collect,
    minibatch_indices,
)
from safetybed.control.networks import Policy, ValueNetwork
from safetybed.control.training import TrainResult, TrainSetup


def _require(ok: bool, name: str, expected: str, given: Any) -> None:
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {given!r}")


@dataclass(frozen=True)
class Config:
    """PPO hyper-parameters (``[hyper]`` of a controller spec)."""

    n_steps: int = 2048
    """Environment steps collected from *each* env per iteration (SB3 2048; CleanRL's Atari/discrete 128)."""
    minibatches: int = 32
    """Minibatches per epoch; the batch of ``n_steps * envs`` samples is split evenly (CleanRL ``num_minibatches``)."""
    epochs: int = 10
    """Passes over each rollout (``K`` in Schulman et al. 2017, Table 3: 10)."""
    learning_rate: float = 3e-4
    """Adam step size for policy and value together (Schulman et al. 2017, Table 3)."""
    anneal_learning_rate: bool = False
    """Decay the step size linearly to 0 over training (CleanRL ``anneal_lr``; SB3 keeps it constant)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda (Schulman et al. 2016)."""
    clip_range: float = 0.2
    """epsilon of the clipped ratio ``clip(r, 1 - eps, 1 + eps)``."""
    clip_range_value: float | None = None
    """Clip ``V - V_old`` to +-this in the value loss (CleanRL ``clip_vloss``); ``None`` = plain squared error (SB3)."""
    normalize_advantages: bool = True
    """Standardise advantages per minibatch (both CleanRL and SB3)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus (0 for continuous control in CleanRL/SB3; 0.01 for CleanRL's Atari)."""
    vf_coef: float = 0.5
    """Weight of the value loss ``0.5 E[(V - R)^2]`` in the total loss."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip over policy and value parameters."""
    target_kl: float | None = None
    """Stop an iteration's epochs early once the approximate KL exceeds this (``None``: never)."""
    adam_eps: float = 1e-5
    """Adam epsilon (CleanRL and the OpenAI baselines use 1e-5, not torch's 1e-8)."""
    normalize_rewards: bool = False
    """Scale rewards by a running std of the discounted return (SB3 ``VecNormalize(norm_reward=True)``)."""

    def __post_init__(self) -> None:
        for name in ("n_steps", "minibatches", "epochs"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
                     "an integer >= 1", value)
        _require(self.learning_rate > 0, "learning_rate", "> 0", self.learning_rate)
        _require(0 < self.gamma <= 1, "gamma", "in (0, 1]", self.gamma)
        _require(0 <= self.gae_lambda <= 1, "gae_lambda", "in [0, 1]", self.gae_lambda)
        _require(self.clip_range > 0, "clip_range", "> 0", self.clip_range)
        _require(self.clip_range_value is None or self.clip_range_value > 0, "clip_range_value",
                 "> 0 or None", self.clip_range_value)
        _require(self.ent_coef >= 0, "ent_coef", ">= 0", self.ent_coef)
        _require(self.vf_coef >= 0, "vf_coef", ">= 0", self.vf_coef)
        _require(self.max_grad_norm > 0, "max_grad_norm", "> 0", self.max_grad_norm)
        _require(self.target_kl is None or self.target_kl > 0, "target_kl", "> 0 or None", self.target_kl)
        _require(self.adam_eps > 0, "adam_eps", "> 0", self.adam_eps)
        for name in ("anneal_learning_rate", "normalize_advantages", "normalize_rewards"):
            _require(isinstance(getattr(self, name), bool), name, "true or false", getattr(self, name))


class PPO:
    """The PPO-clip losses and one Adam step on a minibatch."""

    def __init__(self, policy: Policy, value: ValueNetwork, *, config: Config):
        self.policy, self.value, self.config = policy, value, config
        self.parameters = [*policy.parameters(), *value.parameters()]
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.learning_rate, eps=config.adam_eps)

    def set_learning_rate(self, learning_rate: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate

    def losses(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """Named loss terms of one minibatch (with graph); ``loss_total`` is what ``update`` minimises."""
        config = self.config
        distribution = action_distribution(self.policy, batch.obs)
        log_ratio = distribution.log_prob(batch.actions) - batch.log_probs
        ratio = log_ratio.exp()
        advantages = batch.advantages
        if config.normalize_advantages and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        # Clipped surrogate, Schulman et al. 2017 eq. 7 (negated: we minimise).
        clipped_ratio = ratio.clamp(1.0 - config.clip_range, 1.0 + config.clip_range)
        loss_policy = -torch.min(ratio * advantages, clipped_ratio * advantages).mean()
        entropy = distribution.entropy().mean()
        predicted = self.value(batch.obs)
        squared_error = (predicted - batch.returns).pow(2)
        if config.clip_range_value is not None:
            clipped = batch.values + (predicted - batch.values).clamp(-config.clip_range_value,
                                                                      config.clip_range_value)
            squared_error = torch.max(squared_error, (clipped - batch.returns).pow(2))
        loss_value = 0.5 * squared_error.mean()
        loss_total = loss_policy - config.ent_coef * entropy + config.vf_coef * loss_value
        with torch.no_grad():
            # Low-variance estimator of KL(old || new) (Schulman, "Approximating KL divergence", 2020).
            approx_kl = ((ratio - 1.0) - log_ratio).mean()
            clip_fraction = ((ratio - 1.0).abs() > config.clip_range).float().mean()
        return {"loss_policy": loss_policy, "loss_value": loss_value, "entropy": entropy,
                "approx_kl": approx_kl, "clip_fraction": clip_fraction, "loss_total": loss_total}

    def update(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """One clipped-gradient Adam step on ``loss_total``; returns the (detached) terms before the step."""
        terms = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss_total"].backward()
        nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()
        return {name: value.detach() for name, value in terms.items()}


def train(setup: TrainSetup, config: Config) -> TrainResult:
    """Train a PPO policy in ``setup``'s scenario for at least ``setup.steps`` env steps."""
    action_space = setup.action_space
    discrete = isinstance(action_space, gym.spaces.Discrete)
    policy, value = build_networks(setup, kind="categorical" if discrete else "gaussian")
    obs_norm = setup.obs_normalizer()
    agent = PPO(policy, value, config=config)
    batch_size = config.n_steps * setup.envs
    if batch_size < config.minibatches:
        raise ValueError(f"minibatches: expected <= n_steps * envs = {batch_size}, got {config.minibatches}")
    buffer = RolloutBuffer(steps=config.n_steps, envs=setup.envs, obs_dim=policy.arch.obs_dim,
                           action_shape=() if discrete else (policy.arch.act_dim,), discrete=discrete,
                           device=setup.device)
    reward_scaler = RewardScaler(setup.envs, gamma=config.gamma) if config.normalize_rewards else None
    iterations = math.ceil(setup.steps / batch_size)
    env = setup.make_vec_env()
    raw_obs = setup.reset_vec_env(env)
    env_steps = updates = 0
    terms: dict[str, torch.Tensor] = {}
    for iteration in range(iterations):
        if config.anneal_learning_rate:
            agent.set_learning_rate(config.learning_rate * (1.0 - iteration / iterations))
        raw_obs, last_values = collect(env, buffer, raw_obs, policy=policy, value=value, obs_norm=obs_norm,
                                       generator=setup.generator, action_space=action_space,
                                       reward_scaler=reward_scaler)
        env_steps += batch_size
        batch = buffer.finish(last_values, gamma=config.gamma, gae_lambda=config.gae_lambda)
        for _ in range(config.epochs):
            for indices in minibatch_indices(batch_size, config.minibatches, setup.rng):
                index = torch.as_tensor(indices, device=setup.device)
                terms = agent.update(RolloutBatch(*(field[index] for field in batch)))
                updates += 1
            if config.target_kl is not None and float(terms["approx_kl"]) > config.target_kl:
                break
        setup.maybe_evaluate(env_steps, policy, obs_norm, extra=terms)
    env.close()
    if not setup.evaluations or setup.evaluations[-1]["env_steps"] != env_steps:
        setup.maybe_evaluate(env_steps, policy, obs_norm, extra=terms, force=True)
    return setup.result(policy, obs_norm, env_steps=env_steps, updates=updates)

