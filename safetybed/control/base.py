"""The controller interface: everything the runner knows about a controller.

Rule-based, trained and imported controllers all implement :class:`Controller`. Observations come in
batches (``obs_batch.shape == (B, *observation_space.shape)``) and actions go out in batches; a
single environment is simply ``B = 1``. A controller owns its randomness: ``reset(seed=...)`` at
the start of every episode fixes every draw it makes in that episode.
"""

from __future__ import annotations

import abc

import gymnasium as gym
import numpy as np

from safetybed import seeding_keys


class Controller(abc.ABC):
    """Base class of all controllers.

    Args:
        observation_space: the flat ``Box`` the controller reads.
        action_space: the ``Box`` or ``Discrete`` space it writes.
    """

    #: Human-readable identifier, e.g. ``"builtin:idm"``; stored with every run.
    name: str = "controller"
    #: True when the action for a row depends only on that row (no per-episode state or random draws): the
    #: batched backend then serves a whole batch of episodes with one ``act`` call
    #: (:mod:`safetybed.sims.batched.rollout`); otherwise every episode gets its own controller.
    batch_stateless: bool = False

    def __init__(self, observation_space: gym.Space, action_space: gym.Space):
        if not isinstance(observation_space, gym.spaces.Box):
            raise TypeError(f"observation_space: expected a flat gymnasium Box, got {observation_space}")
        if not isinstance(action_space, gym.spaces.Box | gym.spaces.Discrete):
            raise TypeError(f"action_space: expected a Box or Discrete space, got {action_space}")
        self.observation_space = observation_space
        self.action_space = action_space
        self.rng = np.random.default_rng(0)

    def reset(self, *, seed: int | None = None) -> None:
        """Start a new episode; ``seed`` fixes the controller's own random draws for it."""
        if seed is not None:
            self.rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(seeding_keys.CONTROLLER_RNG,)))

    @abc.abstractmethod
    def act(self, obs_batch: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        """Map a batch of observations to a batch of actions (``(B, *action_shape)`` or ``(B,)``)."""

    def check_batch(self, obs_batch: np.ndarray) -> np.ndarray:
        """Return ``obs_batch`` as a float array, raising a clear error if its shape is wrong."""
        obs_batch = np.asarray(obs_batch, dtype=np.float32)
        expected = self.observation_space.shape
        if obs_batch.ndim != len(expected) + 1 or obs_batch.shape[1:] != expected:
            raise ValueError(f"obs_batch: expected shape (B, {', '.join(map(str, expected))}), "
                             f"got {obs_batch.shape}")
        return obs_batch


class RandomController(Controller):
    """``builtin:random``: uniform random actions from the controller's own generator."""

    name = "builtin:random"

    def act(self, obs_batch: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        batch = self.check_batch(obs_batch).shape[0]
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            return self.rng.integers(space.start, space.start + space.n, size=batch)
        low = np.broadcast_to(space.low, space.shape)
        high = np.broadcast_to(space.high, space.shape)
        return self.rng.uniform(low, high, size=(batch, *space.shape)).astype(space.dtype)
