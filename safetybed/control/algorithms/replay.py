"""A uniform replay buffer on the training device (off-policy algorithms: DSAC-T, SAC, MDPO-off)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """A minibatch of transitions; ``done`` is 1 only for true terminations (not time-limit truncations)."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    done: torch.Tensor


class ReplayBuffer:
    """Fixed-capacity ring buffer of (s, a, r, s', done). Sampling uses the caller's ``torch.Generator``."""

    def __init__(self, *, capacity: int, obs_dim: int, act_dim: int, device: torch.device,
                 discrete: bool = False):
        if capacity < 1:
            raise ValueError(f"capacity: expected >= 1, got {capacity}")
        self.capacity = capacity
        self.device = device
        self.obs = torch.zeros((capacity, obs_dim), device=device)
        self.next_obs = torch.zeros((capacity, obs_dim), device=device)
        self.action = torch.zeros((capacity,) if discrete else (capacity, act_dim),
                                  device=device, dtype=torch.long if discrete else torch.float32)
        self.reward = torch.zeros(capacity, device=device)
        self.done = torch.zeros(capacity, device=device)
        self.size = 0
        self.position = 0

    def add(self, obs, action, reward, next_obs, done) -> None:
        """Add a batch of transitions (first dimension = number of parallel envs)."""
        obs = torch.as_tensor(obs, device=self.device, dtype=torch.float32)
        n = obs.shape[0]
        index = (torch.arange(n, device=self.device) + self.position) % self.capacity
        self.obs[index] = obs
        self.next_obs[index] = torch.as_tensor(next_obs, device=self.device, dtype=torch.float32)
        self.action[index] = torch.as_tensor(action, device=self.device, dtype=self.action.dtype)
        self.reward[index] = torch.as_tensor(reward, device=self.device, dtype=torch.float32)
        self.done[index] = torch.as_tensor(done, device=self.device, dtype=torch.float32)
        self.position = int((self.position + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        if self.size == 0:
            raise ValueError("sample: the buffer is empty")
        index = torch.randint(0, self.size, (batch_size,), generator=generator, device=generator.device)
        index = index.to(self.device)
        return Batch(self.obs[index], self.action[index], self.reward[index], self.next_obs[index],
                     self.done[index])
