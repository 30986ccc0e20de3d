"""Frame stacking: the controller observes its last ``frames`` observations, oldest first, as one flat vector.

Policy smoothing certifies a frame-stacked agent only when the smoothing noise is added to every *raw*
frame before stacking (Kumar, Levine & Feizi 2022; their CartPole agent is
``FlattenObservation(FrameStack(NoisyObsWrapper(CartPole-v0, sigma), 5))``, ``research/policy_smoothing.md``
§1(b)): each raw frame then carries one noise draw and one adversarial perturbation, and the budget counts
each raw frame once. Stacking first and adding noise afterwards gives every copy of a frame its own noise,
which is a different (uncertified) policy. So :class:`FrameStack` must wrap *outside*
:class:`~safetybed.sims.base.ObservationNoise`; :class:`safetybed.certify.smoothing.SmoothedController` applies
the same rule on the controller side.

At ``reset`` the first observation fills all ``frames`` slots, as gym's ``FrameStack`` (the wrapper of the
paper's scripts) does.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


def push_frame(history: Any, frame: Any, *, frames: int) -> Any:
    """The stack after ``frame`` arrives: ``history`` ``(..., frames, d)`` (or ``None`` before the first frame)
    and ``frame`` ``(..., d)`` give ``(..., frames, d)``, oldest first; the first frame fills every slot.

    The one stacking rule of the project: numpy arrays (the :class:`FrameStack` wrapper, the attack's record of
    what the controller saw) and torch tensors (the attack's differentiable search, leading batch dimensions
    broadcast) go through the same code.
    """
    if _is_torch(frame):
        import torch

        if history is None:
            return frame[..., None, :].expand(*frame.shape[:-1], frames, frame.shape[-1])
        return torch.cat([history[..., 1:, :], frame[..., None, :]], dim=-2)
    if history is None:
        return np.repeat(frame[..., None, :], frames, axis=-2)
    return np.concatenate([history[..., 1:, :], frame[..., None, :]], axis=-2)


def stack_rows(history: np.ndarray | None, rows: np.ndarray, *, frames: int) -> tuple[np.ndarray | None, np.ndarray]:
    """A controller's per-step stacking of a batch of raw frames ``rows`` ``(B, d)``: returns the new history
    ``(B, frames, d)`` and the flat stacked rows ``(B, frames * d)`` (``frames == 1``: ``rows`` unchanged).

    The smoothed controller and a certified bundle both add their noise to ``rows`` first, so the noise is per raw
    frame, before stacking (Kumar, Levine & Feizi 2022; ``research/policy_smoothing.md`` §1(b)).
    """
    if frames <= 1:
        return history, rows
    if history is not None and history.shape[0] != rows.shape[0]:
        raise ValueError(f"obs_batch: {rows.shape[0]} rows, but this episode started with {history.shape[0]}; "
                         f"call reset() before changing the batch")
    history = push_frame(history, rows, frames=frames)
    return history, history.reshape(rows.shape[0], -1)


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch")


def stacked_space(space: gym.spaces.Box, frames: int) -> gym.spaces.Box:
    """The flat ``Box`` of ``frames`` stacked copies of the flat ``space`` (bounds tiled, float32)."""
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise TypeError(f"space: expected a flat (1-d) gymnasium Box, got {space}")
    if frames < 1:
        raise ValueError(f"frames: expected >= 1, got {frames}")
    return gym.spaces.Box(np.tile(space.low, frames).astype(np.float32),
                          np.tile(space.high, frames).astype(np.float32), dtype=np.float32)


def raw_space(space: gym.spaces.Box, frames: int) -> gym.spaces.Box:
    """The flat ``Box`` of one frame of a space built by :func:`stacked_space` (its first block)."""
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise TypeError(f"space: expected a flat (1-d) gymnasium Box, got {space}")
    if frames < 1 or space.shape[0] % frames:
        raise ValueError(f"frames: expected a divisor >= 1 of the observation length {space.shape[0]}, got {frames}")
    dim = space.shape[0] // frames
    return gym.spaces.Box(space.low[:dim].astype(np.float32), space.high[:dim].astype(np.float32), dtype=np.float32)


class FrameStack(gym.ObservationWrapper):
    """Observations become ``concat(o_{t-frames+1}, ..., o_t)`` (flat, float32); reset repeats ``o_0``.

    Args:
        env: an env with a flat ``Box`` observation space.
        frames: how many observations to stack (``>= 1``; 1 leaves observations unchanged).
    """

    def __init__(self, env: gym.Env, *, frames: int):
        super().__init__(env)
        self.frames = int(frames)
        self.observation_space = stacked_space(env.observation_space, self.frames)
        self._history: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._history = None
        return super().reset(seed=seed, options=options)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        self._history = push_frame(self._history, np.asarray(observation, dtype=np.float32), frames=self.frames)
        return self._history.reshape(-1).copy()
