"""Trained (torch) controllers: a :class:`~safetybed.control.base.Controller` around a policy network."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from safetybed import seeding_keys
from safetybed.control.base import Controller
from safetybed.control.checkpoint import Checkpoint
from safetybed.control.networks import ObsNormalizer, Policy


class PolicyController(Controller):
    """Batched inference with a trained policy; observation normalisation is part of the controller.

    Deterministic mode returns the policy's mean (or argmax) action; stochastic mode samples with a
    ``torch.Generator`` seeded at every ``reset(seed=...)``.
    """

    def __init__(self, policy: Policy, obs_norm: ObsNormalizer, *, observation_space: gym.Space,
                 action_space: gym.Space, name: str = "policy", device: str = "cpu", deterministic: bool = True):
        super().__init__(observation_space, action_space)
        self.policy = policy.to(device).eval()
        self.obs_norm = obs_norm.to(device).eval()
        self.device = torch.device(device)
        self.name = name
        self.deterministic = deterministic
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0)

    @property
    def batch_stateless(self) -> bool:
        """A deterministic policy maps each row on its own; sampling draws from the episode's generator."""
        return bool(self.deterministic)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, *, name: str, device: str = "cpu",
                        deterministic: bool = True) -> PolicyController:
        return cls(checkpoint.policy, checkpoint.obs_norm, observation_space=checkpoint.observation_space,
                   action_space=checkpoint.action_space, name=name, device=device, deterministic=deterministic)

    def reset(self, *, seed: int | None = None) -> None:
        super().reset(seed=seed)
        if seed is not None:
            self.generator.manual_seed(int(np.random.SeedSequence(seed, spawn_key=(seeding_keys.POLICY_SAMPLING,)).generate_state(1)[0]))

    @torch.no_grad()
    def act(self, obs_batch: np.ndarray, *, deterministic: bool | None = None) -> np.ndarray:
        deterministic = self.deterministic if deterministic is None else deterministic
        obs = torch.as_tensor(self.check_batch(obs_batch), device=self.device)
        obs = self.obs_norm(obs)
        if deterministic:
            action = self.policy(obs)
        else:
            action = self.policy.act_stochastic(obs, generator=self.generator)
        action = action.cpu().numpy()
        if isinstance(self.action_space, gym.spaces.Discrete):
            return action.astype(np.int64) + int(self.action_space.start)
        return action.astype(self.action_space.dtype)
