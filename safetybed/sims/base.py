"""The contract every simulator adapter keeps, and the perturbation wrappers they share.

An adapter turns a validated :class:`~safetybed.spec.ScenarioSpec` into a ``gymnasium.Env`` with

* a flat ``Box`` observation space (float32) -- controllers act on batches of flat vectors;
* a ``Box`` (continuous) or ``Discrete`` action space;
* ``reset(seed=...)`` that fully determines the episode (same seed => same trajectory);
* ``truncated`` set after ``spec.episode_steps`` control steps;
* ``info["safety"]``: a :class:`StepSafety` mapping after every ``step`` (and ``reset``), with the keys

  ============== ===================================================================
  ``collision``  the ego / robot collided (driving) or hit a hard safety limit this step
  ``success``    the task goal is met at this step
  ``ttc_s``      time-to-collision to the closest vehicle ahead [s] (``inf`` if none)
  ``gap_m``      bumper-to-bumper gap to the closest vehicle [m] (``inf`` if none / n.a.)
  ``progress_m`` distance travelled along the route / towards the goal since reset [m]
  ``violations`` number of constraint violations during this step (workspace, joint limits, ...)
  ============== ===================================================================

* optionally ``info["step_log"]`` (flat ``dict[str, float]``) when ``metrics.per_step_log`` is set, and
  ``info["decisions"]`` (list of JSON-able dicts) when ``metrics.decision_log`` is set.
"""

from __future__ import annotations

import math
import os
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypedDict

import gymnasium as gym
import numpy as np

from safetybed import seeding_keys
from safetybed.sims.framestack import FrameStack
from safetybed.spec import ScenarioSpec


class StepSafety(TypedDict):
    collision: bool
    success: bool
    ttc_s: float
    gap_m: float
    progress_m: float
    violations: int


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # pragma: no cover - no C runtime reachable (non-POSIX)
        pass


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence C-level writes to stdout (pybullet prints its connection arguments there).

    ``--json`` output must be one JSON document on stdout, so native libraries may not write to it.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (e.g. some embedded interpreters): nothing to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        _flush_c_stdio()  # C-buffered text (pipes are block-buffered) must land in /dev/null, not later on stdout
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def empty_safety() -> StepSafety:
    return StepSafety(collision=False, success=False, ttc_s=math.inf, gap_m=math.inf, progress_m=0.0,
                      violations=0)


def noise_generator(seed: int, key: int) -> np.random.Generator:
    """The generator of a noise stream: ``SeedSequence(seed, spawn_key=(key,))`` (keys: :mod:`safetybed.seeding_keys`)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


def add_observation_noise(observation: np.ndarray, *, std: float, rng: np.random.Generator,
                          dtype: Any = np.float32) -> np.ndarray:
    """``observation + N(0, std^2 I)``, one fresh draw per entry from ``rng``, summed in float64 and cast to ``dtype``.

    The one noise draw of the project: the scenario's observation noise (:class:`ObservationNoise`), the smoothed
    controller and a bundle's smoothing noise, and the attack's replay of what the smoothed controller saw, so
    that equal streams give equal observations (Kumar, Levine & Feizi 2022: a fresh draw per step, no clipping).
    """
    return (observation + rng.normal(0.0, std, size=np.shape(observation))).astype(dtype, copy=False)


class ObservationNoise(gym.ObservationWrapper):
    """Adds fresh N(0, std^2) noise to every observation, in the observation's own units.

    The noise generator is re-seeded from the seed given to ``reset`` (through ``SeedSequence``), so an
    episode stays a pure function of its seed.
    """

    def __init__(self, env: gym.Env, *, std: float):
        super().__init__(env)
        if std < 0:
            raise ValueError(f"std: expected >= 0, got {std}")
        self.std = float(std)
        self._rng = np.random.default_rng(0)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._rng = noise_generator(seed, seeding_keys.OBSERVATION_NOISE)
        return super().reset(seed=seed, options=options)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return add_observation_noise(observation, std=self.std, rng=self._rng, dtype=self.observation_space.dtype)


class ActionDelay(gym.ActionWrapper):
    """Applies each action ``delay_steps`` control steps late; the first steps apply a neutral action."""

    def __init__(self, env: gym.Env, *, delay_steps: int, neutral_action: Any):
        super().__init__(env)
        if delay_steps < 0:
            raise ValueError(f"delay_steps: expected >= 0, got {delay_steps}")
        self.delay_steps = int(delay_steps)
        self.neutral_action = neutral_action
        self._queue: deque[Any] = deque()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._queue = deque([self.neutral_action] * self.delay_steps)
        return super().reset(seed=seed, options=options)

    def action(self, action: Any) -> Any:
        self._queue.append(action)
        return self._queue.popleft()


def neutral_action(space: gym.Space) -> Any:
    """Zero action for a Box (clipped into bounds), action 0 for a Discrete space."""
    if isinstance(space, gym.spaces.Box):
        return np.clip(np.zeros(space.shape, dtype=space.dtype), space.low, space.high)
    if isinstance(space, gym.spaces.Discrete):
        return int(space.start)
    raise TypeError(f"expected a Box or Discrete action space, got {space}")


def apply_perturbations(env: gym.Env, spec: ScenarioSpec) -> gym.Env:
    """Wrap ``env`` with the spec's ``[perturbations]``: action delay, observation noise, frame stacking outermost.

    Stacking wraps the noise so that every raw frame gets one noise draw, as policy smoothing requires
    (Kumar, Levine & Feizi 2022: ``FrameStack(NoisyObsWrapper(env, sigma), k)``).
    """
    perturb = spec.perturbations
    if perturb.action_delay_steps:
        env = ActionDelay(env, delay_steps=perturb.action_delay_steps, neutral_action=neutral_action(env.action_space))
    if perturb.observation_noise_std > 0:
        env = ObservationNoise(env, std=perturb.observation_noise_std)
    if perturb.frame_stack > 1:
        env = FrameStack(env, frames=perturb.frame_stack)
    return env


def make_env(spec: ScenarioSpec) -> gym.Env:
    """Build the perturbed environment for a validated scenario spec.

    With ``[testing] method = "nade"`` the highway adapter is wrapped in
    :class:`safetybed.sims.testing.tester.HighwayTester` (innermost), which logs its critical steps in
    ``info["decisions"]``.
    """
    if spec.simulator == "highway":
        from safetybed.sims.highway import make_highway_env as factory
    elif spec.simulator == "bullet":
        from safetybed.sims.bullet import make_bullet_env as factory
    elif spec.simulator == "classic":
        from safetybed.sims.classic import make_classic_env as factory
    else:  # pragma: no cover - the spec validator allows only the three above
        raise ValueError(f"simulator: expected highway|bullet|classic, got {spec.simulator!r}")
    env = factory(spec)
    if spec.testing is not None and spec.testing.method != "nde":
        # Importance-sampled background traffic (Feng et al. 2021, NADE). The tester wraps the adapter itself, inside
        # the perturbations, so the action it sees is the ego's applied command (after any action delay).
        from safetybed.sims.testing.tester import make_tester

        env = make_tester(env, spec.testing)
    return apply_perturbations(env, spec)
