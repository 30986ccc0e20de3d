"""Dense deep reinforcement learning (D2RL) for the testing policy (Feng et al. 2023).

Feng, Sun, Yan, Zhu, Zou, Shen & Liu, "Dense reinforcement learning for safety validation of autonomous
vehicles", *Nature* 615:620-627 (2023); ``research/cav_eval.md`` §4.2.

What is learnt (as in the D2RL code, ``nadeglobalcontroller.get_underline_drl_action``): at every *critical* step
the agent outputs the defensive weight ``epsilon`` in [0.001, 0.999] of the mixture
``q = (1 - epsilon) q~ + epsilon p``, with ``q~`` NADE's criticality-based importance component. Any
``epsilon`` chosen from information available at the step keeps the estimate unbiased (the weight of the step is
``p / q`` with the ``epsilon`` actually used).

Dense training (the D2RL trick, ``d2rl_training_env.py``): training episodes are the *crash* tests of a behaviour
policy (NADE, ``epsilon_b``), and only their critical steps are kept (non-critical steps carry no decision and
no likelihood ratio, so dropping them loses nothing). Replaying an episode with the agent's ``epsilon`` changes
only its weight: ``W_theta = prod_t p_t / ((1 - eps_t) q~_t + eps_t p_t)``.

Reward (our choice; the paper's ``100 - 500 * 100 * W`` is tuned to its crash rate): the per-test second moment
of the estimator under the agent's policy can be written with behaviour data as (importance sampling of the IS
estimator itself)::

    E_q_theta[Y^2] = sum_x 1_A p^2 / q_theta = E_q_b[1_A W_b W_theta]

so the terminal reward of a replayed crash episode is ``-W_b W_theta / m_b`` with ``m_b`` the behaviour's mean
``W_b^2`` over crash episodes (a scale, so that the reward of the behaviour policy itself is about -1). Maximising
the expected reward minimises the variance of the crash-rate estimate. PPO (Schulman et al. 2017; clipped
surrogate, ``gamma = 1``, the value baseline fitted to the terminal reward) learns a Gaussian policy over
``logit(epsilon)``; the deployed policy uses its mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from safetybed.sims.testing.d2rl_proposal import EpsilonPolicy, epsilon_from_logit


@dataclass(frozen=True)
class CrashEpisode:
    """The critical steps of one crash test of the behaviour policy (the dense training data).

    ``features`` (K, F); ``p``, ``q_tilde`` (K,) at the sampled actions; ``log_weight_b`` = log W under the
    behaviour policy. ``log_weight_feature`` (in :class:`D2RLConfig`) names the feature column holding the
    running log weight, which the replay recomputes with the agent's epsilon.
    """

    features: np.ndarray
    p: np.ndarray
    q_tilde: np.ndarray
    log_weight_b: float


@dataclass(frozen=True)
class D2RLConfig:
    iterations: int = 60
    episodes_per_iteration: int = 512
    epochs: int = 4
    minibatch: int = 256
    learning_rate: float = 3e-3
    clip: float = 0.2  # PPO clip range
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    hidden: int = 64
    initial_epsilon: float = 0.1
    log_weight_feature: int | None = None  # feature column = log W so far / log_weight_scale
    log_weight_scale: float = 5.0 * math.log(10.0)


def train_d2rl(episodes: list[CrashEpisode], *, seed: int, config: D2RLConfig = D2RLConfig(),
               progress=None) -> tuple[EpsilonPolicy, dict]:
    """Train the epsilon policy by PPO on replays of behaviour crash episodes; returns (policy, history)."""
    if not episodes:
        from safetybed.errors import InputError

        raise InputError("episodes: D2RL needs at least one crash episode of the behaviour policy to train on, "
                         "got none (run more behaviour tests)")
    sequence = np.random.SeedSequence(seed)
    rng = np.random.default_rng(sequence.spawn(1)[0])
    torch_gen = torch.Generator().manual_seed(int(sequence.generate_state(1)[0]))
    feature_dim = episodes[0].features.shape[1]
    policy = EpsilonPolicy(feature_dim, hidden=config.hidden, initial_epsilon=config.initial_epsilon,
                           generator=torch_gen)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    w_b = np.exp(np.array([e.log_weight_b for e in episodes]))
    scale = float(np.mean(w_b ** 2))  # behaviour's second moment per crash episode
    history = {"mean_reward": [], "second_moment_ratio": []}
    for _iteration in range(config.iterations):
        picks = rng.integers(0, len(episodes), size=min(config.episodes_per_iteration, len(episodes) * 4))
        obs, logits, logps, returns, starts = [], [], [], [], []
        for idx in picks:
            episode = episodes[idx]
            feats = episode.features.astype(np.float32).copy()
            log_w = 0.0
            with torch.no_grad():
                for k in range(feats.shape[0]):
                    if config.log_weight_feature is not None:
                        feats[k, config.log_weight_feature] = log_w / config.log_weight_scale
                    x = torch.as_tensor(feats[k])
                    mean = policy.mean_logit(x[None])[0]
                    std = policy.log_std.exp()[0]
                    z = mean + std * torch.randn((), generator=torch_gen)
                    logp = torch.distributions.Normal(mean, std).log_prob(z)
                    eps = float(epsilon_from_logit(z))
                    q = (1 - eps) * episode.q_tilde[k] + eps * episode.p[k]
                    log_w += math.log(episode.p[k]) - math.log(q)
                    obs.append(feats[k].copy())
                    logits.append(float(z))
                    logps.append(float(logp))
            reward = -math.exp(episode.log_weight_b + log_w) / scale
            returns.extend([reward] * feats.shape[0])
            starts.append(reward)
        obs_t = torch.as_tensor(np.stack(obs))
        z_t = torch.as_tensor(logits, dtype=torch.float32)
        old_logp = torch.as_tensor(logps, dtype=torch.float32)
        ret = torch.as_tensor(np.clip(returns, -100.0, 0.0), dtype=torch.float32)  # D2RL clips rewards at -100
        with torch.no_grad():
            adv = ret - policy.value(obs_t)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        for _epoch in range(config.epochs):
            order = torch.randperm(len(obs), generator=torch_gen)
            for begin in range(0, len(obs), config.minibatch):
                mb = order[begin:begin + config.minibatch]
                dist = torch.distributions.Normal(policy.mean_logit(obs_t[mb]), policy.log_std.exp())
                ratio = (dist.log_prob(z_t[mb]) - old_logp[mb]).exp()
                surrogate = torch.min(ratio * adv[mb], ratio.clamp(1 - config.clip, 1 + config.clip) * adv[mb])
                value_loss = (policy.value(obs_t[mb]) - ret[mb]).pow(2).mean()
                loss = -surrogate.mean() + config.value_coef * value_loss - config.entropy_coef * dist.entropy().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        history["mean_reward"].append(float(np.mean(starts)))
        history["second_moment_ratio"].append(float(-np.mean(starts)))
        if progress is not None:
            progress(_iteration + 1, config.iterations)
    return policy, history
