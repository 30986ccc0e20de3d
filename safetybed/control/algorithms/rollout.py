"""On-policy rollout storage and GAE(gamma, lambda), shared by PPO and on-policy MDPO.

The vector env resets a finished sub-env in the same step (gymnasium ``AutoresetMode.SAME_STEP``): the
observation returned for it is already the first one of the next episode and the true last observation
is ``info["final_obs"]``. GAE therefore needs, per step, the value of the *true* next state:

* ``terminated``: the next state is absorbing, its value is 0 (no bootstrap);
* ``truncated`` only (time limit): the episode was cut, not ended, so we bootstrap with
  ``V(final_obs)`` (Pardo et al. 2018, "Time Limits in Reinforcement Learning");
* otherwise: ``V`` of the next stored observation.

Also here, because both on-policy methods use them the same way: the action distribution of a
``gaussian``/``categorical`` :class:`~safetybed.control.networks.Policy`, the orthogonal initialisation
of the baselines' policies (drawn from the caller's generator) and return-based reward scaling
(as ``VecNormalize`` in stable-baselines).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from safetybed.control.networks import ObsNormalizer, Policy, ValueNetwork
from safetybed.control.training import TrainSetup


class RolloutBatch(NamedTuple):
    """Flattened on-policy samples (first dimension = steps x envs)."""

    obs: torch.Tensor
    """Observations as the policy saw them (already normalised when normalisation is on)."""
    actions: torch.Tensor
    """Sampled actions: ``long`` indices (Discrete) or unclipped Gaussian samples (Box)."""
    log_probs: torch.Tensor
    """``log pi_old(a|s)`` of the policy that collected the data."""
    values: torch.Tensor
    """``V_old(s)`` at collection time (the centre of a clipped value loss)."""
    advantages: torch.Tensor
    """GAE(gamma, lambda) advantages, not normalised."""
    returns: torch.Tensor
    """lambda-returns ``advantages + values``: the value-function regression target."""


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                terminated: torch.Tensor, done: torch.Tensor, *, gamma: float,
                gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda) over a ``[steps, envs]`` rollout (Schulman et al. 2016, eqs. 11-16).

    Args:
        rewards: ``r_t``.
        values: ``V(s_t)``.
        next_values: ``V(s'_t)`` of the true next state (``V(final_obs)`` where the episode ended).
        terminated: 1 where ``s'_t`` is terminal (its value is not bootstrapped).
        done: 1 where the episode ended at ``t`` (terminated or truncated): the recursion stops there.

    Returns:
        ``(advantages, returns)`` with ``returns = advantages + values``.

    ``delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)`` and
    ``A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}``.
    """
    shapes = {tuple(t.shape) for t in (rewards, values, next_values, terminated, done)}
    if len(shapes) != 1 or rewards.dim() != 2:
        raise ValueError(f"compute_gae: expected five [steps, envs] tensors of one shape, got shapes {shapes}")
    deltas = rewards + gamma * (1.0 - terminated.float()) * next_values - values
    continues = gamma * gae_lambda * (1.0 - done.float())
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + continues[t] * running
        advantages[t] = running
    return advantages, advantages + values


class RolloutBuffer:
    """``steps x envs`` on-policy transitions on the training device."""

    def __init__(self, *, steps: int, envs: int, obs_dim: int, action_shape: tuple[int, ...], discrete: bool,
                 device: torch.device):
        if steps < 1 or envs < 1:
            raise ValueError(f"steps, envs: expected >= 1 each, got {steps}, {envs}")
        self.steps, self.envs, self.device = steps, envs, device

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros((steps, envs, *shape), device=device, dtype=dtype)

        self.obs = zeros(obs_dim)
        self.actions = zeros(dtype=torch.long) if discrete else zeros(*action_shape)
        self.log_probs, self.values, self.rewards = zeros(), zeros(), zeros()
        self.terminated, self.done = zeros(), zeros()
        # V(final_obs) where an episode was truncated (0 elsewhere); it replaces V(next stored obs).
        self.final_values = zeros()
        self.position = 0

    def add(self, *, obs: torch.Tensor, actions: torch.Tensor, log_probs: torch.Tensor, values: torch.Tensor,
            rewards: torch.Tensor, terminated: torch.Tensor, done: torch.Tensor, final_values: torch.Tensor) -> None:
        if self.position >= self.steps:
            raise ValueError(f"add: the buffer already holds {self.steps} steps; call finish() first")
        t = self.position
        self.obs[t], self.actions[t], self.log_probs[t], self.values[t] = obs, actions, log_probs, values
        self.rewards[t], self.terminated[t], self.done[t], self.final_values[t] = (rewards, terminated, done,
                                                                                  final_values)
        self.position += 1

    def finish(self, last_values: torch.Tensor, *, gamma: float, gae_lambda: float) -> RolloutBatch:
        """GAE with ``last_values = V(s_T)`` after the last step; returns the flattened batch and empties."""
        if self.position != self.steps:
            raise ValueError(f"finish: expected {self.steps} stored steps, got {self.position}")
        next_values = torch.cat([self.values[1:], last_values[None]], dim=0)
        next_values = torch.where(self.done.bool(), self.final_values, next_values)
        advantages, returns = compute_gae(self.rewards, self.values, next_values, self.terminated, self.done,
                                          gamma=gamma, gae_lambda=gae_lambda)
        self.position = 0

        def flat(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.reshape(self.steps * self.envs, *tensor.shape[2:])

        return RolloutBatch(flat(self.obs), flat(self.actions), flat(self.log_probs), flat(self.values),
                            flat(advantages), flat(returns))


class RewardScaler:
    """Divides rewards by a running std of the discounted return, clipped to +-``clip``.

    This is stable-baselines' ``VecNormalize(norm_reward=True)``, which the MDPO code wraps its envs in
    (``mdpo_on/run_mujoco.py``); the running return restarts when an episode ends.
    """

    def __init__(self, envs: int, *, gamma: float, clip: float = 10.0, epsilon: float = 1e-8):
        self.gamma, self.clip, self.epsilon = gamma, clip, epsilon
        self.returns = np.zeros(envs)
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def __call__(self, rewards: np.ndarray, done: np.ndarray) -> np.ndarray:
        self.returns = self.returns * self.gamma + rewards
        batch_mean, batch_var, n = float(self.returns.mean()), float(self.returns.var()), self.returns.size
        delta, total = batch_mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total
        scaled = np.clip(rewards / math.sqrt(self.var + self.epsilon), -self.clip, self.clip)
        self.returns[done] = 0.0
        return scaled


def action_distribution(policy: Policy, obs: torch.Tensor) -> Distribution:
    """``pi(.|s)`` of a ``categorical`` or ``gaussian`` policy (the same law ``Policy.sample`` draws from)."""
    if policy.arch.kind == "categorical":
        return Categorical(logits=policy.net(obs))
    if policy.arch.kind == "gaussian":
        mean, log_std = policy.mean_log_std(obs)
        return Independent(Normal(mean, log_std.exp()), 1)
    raise ValueError(f"policy kind: expected categorical or gaussian for on-policy training, got "
                     f"{policy.arch.kind!r}")


def orthogonal_init_(policy: Policy, value: ValueNetwork, *, generator: torch.Generator) -> None:
    """Orthogonal weights, zero biases: gain sqrt(2) inside, 0.01 on the policy head, 1 on the value head.

    This is the initialisation of the PPO/TRPO baselines the on-policy MDPO code builds on (OpenAI
    baselines ``ortho_init``; Andrychowicz et al. 2021, "What matters in on-policy RL", C.2). Drawing
    from ``generator`` makes the initial weights a function of the run's seed alone.
    """
    for network, head_gain in ((policy.net, 0.01), (value.net, 1.0)):
        layers = [m for m in network.modules() if isinstance(m, nn.Linear)]
        for index, layer in enumerate(layers):
            gain = head_gain if index == len(layers) - 1 else math.sqrt(2.0)
            nn.init.orthogonal_(layer.weight, gain=gain, generator=generator)
            nn.init.zeros_(layer.bias)
    if policy.log_std is not None:
        nn.init.zeros_(policy.log_std)


def build_networks(setup: TrainSetup, *, kind: str) -> tuple[Policy, ValueNetwork]:
    """Policy (``kind``) and value networks of the spec's ``[network]`` shape on ``setup.device``.

    Weights come from :func:`orthogonal_init_` with ``setup.cpu_generator``, so they depend on the seed only.
    """
    arch = setup.policy_arch(kind)
    policy = Policy(arch)
    value = ValueNetwork(arch.obs_dim, hidden=arch.hidden, activation=arch.activation)
    orthogonal_init_(policy, value, generator=setup.cpu_generator)
    return policy.to(setup.device), value.to(setup.device)


def minibatch_indices(size: int, minibatches: int, rng: np.random.Generator) -> Iterable[np.ndarray]:
    """A shuffled split of ``range(size)`` into ``minibatches`` near-equal parts."""
    return np.array_split(rng.permutation(size), minibatches)


def to_env_actions(actions: torch.Tensor, action_space: gym.Space) -> np.ndarray:
    """Policy actions -> what the env accepts: Discrete indices shifted by ``start``, Box samples clipped."""
    array = actions.detach().cpu().numpy()
    if isinstance(action_space, gym.spaces.Discrete):
        return array.astype(np.int64) + int(action_space.start)
    return np.clip(array, action_space.low, action_space.high).astype(action_space.dtype)


@torch.no_grad()
def collect(env: gym.vector.VectorEnv, buffer: RolloutBuffer, raw_obs: np.ndarray, *, policy: Policy,
            value: ValueNetwork, obs_norm: ObsNormalizer, generator: torch.Generator, action_space: gym.Space,
            reward_scaler: RewardScaler | None = None,
            training_reward: Callable[[np.ndarray, dict, np.ndarray], np.ndarray] | None = None,
            ) -> tuple[np.ndarray, torch.Tensor]:
    """Fill ``buffer`` with ``buffer.steps`` vector steps from ``raw_obs``.

    ``training_reward(reward, info, ended)``: the reward the learner sees (``TrainSetup.training_reward``:
    the scenario's minus the collision penalty), applied before ``reward_scaler``.

    Observations update the normaliser (when enabled) before the policy sees them. Returns the raw
    observation to continue from and ``V`` of it (the bootstrap value after the last step).
    """
    device = buffer.device

    def as_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float32), device=device)

    def normalised(array: np.ndarray) -> torch.Tensor:
        return obs_norm(as_tensor(array))

    for _ in range(buffer.steps):
        obs_norm.update(as_tensor(raw_obs))
        obs = normalised(raw_obs)
        actions, log_probs = policy.sample(obs, generator=generator)
        values = value(obs)
        raw_obs, rewards, terminated, truncated, info = env.step(to_env_actions(actions, action_space))
        done = np.logical_or(terminated, truncated)
        final_values = torch.zeros(buffer.envs, device=device)
        cut = np.flatnonzero(truncated & ~terminated)
        if cut.size:
            final_obs = np.stack([info["final_obs"][i] for i in cut])
            final_values[torch.as_tensor(cut, device=device)] = value(normalised(final_obs))
        if training_reward is not None:
            rewards = training_reward(rewards, info, done)
        if reward_scaler is not None:
            rewards = reward_scaler(np.asarray(rewards, dtype=np.float64), done)
        buffer.add(obs=obs, actions=actions, log_probs=log_probs, values=values, rewards=as_tensor(rewards),
                   terminated=as_tensor(terminated), done=as_tensor(done), final_values=final_values)
    return raw_obs, value(normalised(raw_obs))
