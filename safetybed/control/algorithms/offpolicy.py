"""The off-policy training loop shared by DSAC-T and SAC, so their files hold only the algorithms.

Collects transitions from ``setup.make_vec_env()`` (same-step autoreset), fills a replay buffer with raw
observations (normalised at sampling time with the current running statistics), warms up with uniform
random actions for ``config.learning_starts`` steps (as SB3), then performs ``config.updates_per_round``
updates every ``config.env_steps_per_round`` environment steps, evaluating every ``eval_every_steps``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from safetybed.control.algorithms.replay import Batch, ReplayBuffer
from safetybed.control.networks import ObsNormalizer, PolicyArch
from safetybed.control.training import TrainResult, TrainSetup


def train_off_policy(setup: TrainSetup, agent: Any, *, arch: PolicyArch, config: Any,
                     loss_terms: tuple[str, ...]) -> TrainResult:
    """Run the loop for ``agent`` (an object with ``.actor`` and ``update(batch) -> dict``)."""
    device = setup.device
    obs_norm = setup.obs_normalizer()
    buffer = ReplayBuffer(capacity=min(config.buffer_size, setup.steps), obs_dim=arch.obs_dim,
                          act_dim=arch.act_dim, device=device)
    low = np.asarray(arch.action_low, dtype=np.float32)
    high = np.asarray(arch.action_high, dtype=np.float32)

    def as_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=device, dtype=torch.float32)

    env = setup.make_vec_env()
    obs = setup.reset_vec_env(env)
    obs_norm.update(as_tensor(obs))
    env_steps = updates = owed_steps = 0
    # Every term starts as NaN, so the first logged row (and the CSV header) has all columns.
    latest = {term: torch.tensor(math.nan, device=device) for term in loss_terms}
    while env_steps < setup.steps:
        if env_steps < config.learning_starts:
            action = setup.rng.uniform(low, high, size=(setup.envs, arch.act_dim)).astype(np.float32)
        else:
            with torch.no_grad():
                action = agent.actor.act_stochastic(obs_norm(as_tensor(obs)), generator=setup.generator)
            action = action.cpu().numpy()
        next_obs, reward, terminated, truncated, info = env.step(action)
        # SAME_STEP autoreset: next_obs holds reset observations where an episode ended; the transition
        # needs the real last observation. Bootstrapping stops on termination only, not on truncation.
        final_obs = next_obs.copy()
        if "_final_obs" in info:
            for index in np.flatnonzero(info["_final_obs"]):
                final_obs[index] = info["final_obs"][index]
        buffer.add(obs, action, reward, final_obs, terminated)
        obs_norm.update(as_tensor(next_obs))
        obs = next_obs
        env_steps += setup.envs

        if env_steps > config.learning_starts:  # as SB3: learning_starts steps, then the first update
            owed_steps += setup.envs
            while owed_steps >= config.env_steps_per_round:
                owed_steps -= config.env_steps_per_round
                for _ in range(config.updates_per_round):
                    latest.update(agent.update(_normalised(buffer.sample(config.batch_size,
                                                                         generator=setup.generator), obs_norm)))
                    updates += 1
        setup.maybe_evaluate(env_steps, agent.actor, obs_norm, extra=latest)
    env.close()
    if not setup.evaluations or setup.evaluations[-1]["env_steps"] != env_steps:
        setup.maybe_evaluate(env_steps, agent.actor, obs_norm, extra=latest, force=True)
    return setup.result(agent.actor, obs_norm, env_steps=env_steps, updates=updates)


def _normalised(batch: Batch, obs_norm: ObsNormalizer) -> Batch:
    if not obs_norm.enabled:
        return batch
    return batch._replace(obs=obs_norm(batch.obs), next_obs=obs_norm(batch.next_obs))
