"""The on-policy training loop shared by PPO and on-policy MDPO, so their files hold only the algorithms.

Builds the policy (categorical for Discrete actions, diagonal Gaussian for Box) and value networks
(:func:`~safetybed.control.algorithms.rollout.build_networks`), then runs ``ceil(steps / (n_steps * envs))``
iterations of: collect ``n_steps`` steps from every env with the current policy, compute GAE(gamma, lambda)
(Schulman et al. 2016), hand the whole rollout to the agent's ``learn``, evaluate every ``eval_every_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import torch

from safetybed.control.algorithms.common import finish, require
from safetybed.control.algorithms.rollout import (
    RewardScaler,
    RolloutBatch,
    RolloutBuffer,
    build_networks,
    collect,
)
from safetybed.control.networks import Policy, ValueNetwork
from safetybed.control.training import TrainResult, TrainSetup


class OnPolicyAgent(Protocol):
    updates: int
    """Gradient steps taken so far (reported as ``TrainResult.updates``)."""

    def learn(self, rollout: RolloutBatch) -> dict[str, torch.Tensor]:
        """Everything one iteration does with a fresh rollout; returns the named loss terms to log."""
        ...


def train_on_policy(setup: TrainSetup, config: Any, *,
                    make_agent: Callable[[Policy, ValueNetwork, int], OnPolicyAgent],
                    batch_field: str) -> TrainResult:
    """Train ``make_agent(policy, value, iterations)`` for at least ``setup.steps`` env steps.

    ``config`` provides ``n_steps``, ``gamma``, ``gae_lambda`` and ``normalize_rewards``; ``batch_field`` names
    its minibatch field (``minibatches``, ``value_batch_size``), which a rollout of ``n_steps * envs``
    samples must cover.
    """
    action_space = setup.action_space
    discrete = isinstance(action_space, gym.spaces.Discrete)
    policy, value = build_networks(setup, kind="categorical" if discrete else "gaussian")
    obs_norm = setup.obs_normalizer()
    batch_size = config.n_steps * setup.envs
    require(batch_field, getattr(config, batch_field), batch_size >= getattr(config, batch_field),
            f"<= n_steps * envs = {batch_size}")
    iterations = math.ceil(setup.steps / batch_size)
    agent = make_agent(policy, value, iterations)
    buffer = RolloutBuffer(steps=config.n_steps, envs=setup.envs, obs_dim=policy.arch.obs_dim,
                           action_shape=() if discrete else (policy.arch.act_dim,), discrete=discrete,
                           device=setup.device)
    reward_scaler = RewardScaler(setup.envs, gamma=config.gamma) if config.normalize_rewards else None
    env = setup.make_vec_env()
    raw_obs = setup.reset_vec_env(env)
    env_steps = 0
    terms: dict[str, torch.Tensor] = {}
    for _ in range(iterations):
        raw_obs, last_values = collect(env, buffer, raw_obs, policy=policy, value=value, obs_norm=obs_norm,
                                       training_reward=setup.training_reward,
                                       generator=setup.generator, action_space=action_space,
                                       reward_scaler=reward_scaler)
        env_steps += batch_size
        terms = agent.learn(buffer.finish(last_values, gamma=config.gamma, gae_lambda=config.gae_lambda))
        setup.maybe_evaluate(env_steps, policy, obs_norm, extra=terms)
    env.close()
    return finish(setup, policy, obs_norm, env_steps=env_steps, updates=agent.updates, extra=terms)
