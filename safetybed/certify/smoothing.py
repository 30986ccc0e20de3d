"""Smoothed controllers (Kumar, Levine & Feizi 2022) and the rollouts a certificate is estimated from.

The smoothed controller of a base policy ``pi`` acts with ``a_t = pi(stack(o_1 + eps_1, ..., o_t + eps_t))``,
``eps_t ~ N(0, sigma^2 I)`` drawn fresh at every step, added to the *raw* observation (before frame stacking and
observation normalisation), never clipped (``research/policy_smoothing.md`` §1(b)). One draw per step, no
voting: the smoothed controller costs what the base controller costs.

Two ways to run it, equal draw for draw:

* **controller side**: :class:`SmoothedController` wraps any :class:`~safetybed.control.base.Controller`;
  this is what a deployment runs (``safetybed.control.runtime.BundleController`` with ``smoothing_sigma``
  draws its noise exactly like it: same seed derivation, same float handling);
* **scenario side**: :func:`smoothed_scenario` sets the scenario's ``perturbations.observation_noise_std`` to
  sigma, so the batch runner plays the smoothed controller with the *base* controller reference. The
  scenario's :class:`~safetybed.sims.base.ObservationNoise` adds fresh N(0, sigma^2) noise to every raw
  observation (frame stacking, when the scenario has it, wraps outside the noise), independent of the
  environment's and the controller's own draws. The episode returns are therefore draws from the same
  distribution as those of :class:`SmoothedController` on the noise-free scenario; with
  ``noise_spawn_key=seeding_keys.OBSERVATION_NOISE`` the two are identical episode for episode
  (``tests/test_certify_pipeline.py`` checks it). The certification pipeline uses this side, so its episodes
  are ordinary runner records: parallel, resumable, stored.

:func:`vector_rollouts` plays many episodes in lock-step in a gymnasium vector env with one batched policy
call per step (``safetybed bench certify`` measures it against the runner's one-env-at-a-time loop).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from safetybed import seeding_keys
from safetybed.control.base import Controller
from safetybed.jsonsafe import json_safe
from safetybed.runner.seeding import episode_seed
from safetybed.sims.base import add_observation_noise, noise_generator
from safetybed.sims.framestack import raw_space, stack_rows
from safetybed.sims.rollout import EpisodeRecord
from safetybed.spec import ScenarioSpec


class SmoothedController(Controller):
    """``base`` acting on noisy raw observations, optionally frame-stacked after the noise.

    Args:
        base: the controller to smooth; with ``frame_stack = k`` it reads ``k`` stacked raw frames.
        sigma: standard deviation of the Gaussian noise, in the raw observation's units (``>= 0``).
        frame_stack: number of raw frames the base controller reads (oldest first, flat); the first frame
            of an episode fills every slot (as :class:`safetybed.sims.framestack.FrameStack`).
        noise_spawn_key: spawn key of the noise generator, seeded from ``SeedSequence(seed, spawn_key=(key,))``
            at every ``reset(seed=...)``. The default (:data:`safetybed.seeding_keys.SMOOTHING_NOISE`) matches
            deployment bundles; pass :data:`safetybed.seeding_keys.OBSERVATION_NOISE` to reproduce the scenario-side noise draw for draw (never use
            that key together with a scenario that adds noise itself: both would draw the same numbers).

    The observation space is the raw (unstacked) one. Rows of a batch are separate episodes that share one
    noise generator (one ``(B, d)`` draw per call), as in ``BundleController``.
    """

    def __init__(self, base: Controller, *, sigma: float, frame_stack: int = 1,
                 noise_spawn_key: int = seeding_keys.SMOOTHING_NOISE):
        if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma: expected a finite number >= 0 (observation units), got {sigma!r}")
        if frame_stack < 1:
            raise ValueError(f"frame_stack: expected >= 1, got {frame_stack}")
        super().__init__(raw_space(base.observation_space, frame_stack), base.action_space)
        self.base = base
        self.sigma = float(sigma)
        self.frame_stack = int(frame_stack)
        self.noise_spawn_key = int(noise_spawn_key)
        self.name = f"smoothed:{self.sigma:g}:{base.name}" + (f" (frame_stack={frame_stack})" if frame_stack > 1
                                                              else "")
        self.noise_rng = noise_generator(0, self.noise_spawn_key)
        self._history: np.ndarray | None = None

    def reset(self, *, seed: int | None = None) -> None:
        super().reset(seed=seed)
        self.base.reset(seed=seed)
        if seed is not None:
            self.noise_rng = noise_generator(seed, self.noise_spawn_key)
        self._history = None

    def act(self, obs_batch: np.ndarray, *, deterministic: bool | None = None) -> np.ndarray:
        obs = self.check_batch(obs_batch)
        # Kumar, Levine & Feizi 2022, §1(b) of research/policy_smoothing.md: a fresh draw per step on the raw
        # observation, no clipping; float handling as ObservationNoise (float64 sum, then float32).
        noisy = add_observation_noise(obs, std=self.sigma, rng=self.noise_rng, dtype=np.float32)
        self._history, noisy = stack_rows(self._history, noisy, frames=self.frame_stack)
        options = {} if deterministic is None else {"deterministic": deterministic}
        return self.base.act(noisy, **options)


def smoothed_scenario(scenario: ScenarioSpec, *, sigma: float) -> ScenarioSpec:
    """``scenario`` with the smoothing noise as its ``perturbations.observation_noise_std``.

    Raises:
        ValueError: the scenario already adds observation noise (a second, unaccounted noise source).
    """
    if scenario.perturbations.observation_noise_std:
        raise ValueError(f"scenario {scenario.name!r}: perturbations.observation_noise_std is "
                         f"{scenario.perturbations.observation_noise_std:g}; the smoothing adds sigma itself, so "
                         f"start from the noise-free scenario")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma: expected a finite number > 0, got {sigma!r}")
    return scenario.model_copy(update={"perturbations": scenario.perturbations.model_copy(
        update={"observation_noise_std": float(sigma)})})


def frame_stack_of(scenario: ScenarioSpec) -> int:
    """How many raw frames the scenario stacks into one observation (``perturbations.frame_stack``)."""
    return int(scenario.perturbations.frame_stack)


# -- vectorised rollouts ----------------------------------------------------------------------------------
class _LastInfo(gym.Wrapper):
    """Keeps the last ``info`` of its env, so the vector env's merged info dicts are never needed."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.last_info: dict[str, Any] = {}

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self.last_info = info
        return obs, info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.last_info = info
        return obs, reward, terminated, truncated, info


class _SyncVectorEnvWithoutInfo(gym.vector.SyncVectorEnv):
    """``SyncVectorEnv`` that skips merging the sub-envs' info dicts (a fifth of its step time on CartPole);
    :func:`vector_rollouts` reads each sub-env's info from its :class:`_LastInfo` wrapper instead."""

    def _add_info(self, vector_infos: dict[str, Any], env_info: dict[str, Any], env_num: int) -> dict[str, Any]:
        return vector_infos


class _EnvFactory:
    def __init__(self, scenario_json: str):
        self.scenario_json = scenario_json

    def __call__(self) -> gym.Env:
        from safetybed.sims import make_env

        return _LastInfo(make_env(ScenarioSpec.model_validate_json(self.scenario_json)))


class _Episode:
    """The bookkeeping of :func:`safetybed.sims.rollout.rollout` for one running episode."""

    def __init__(self, index: int, seed: int):
        self.index, self.seed = index, seed
        self.started = time.perf_counter()
        self.episode_return = 0.0
        self.length = 0
        self.collision = self.success = False
        self.min_ttc_s = self.min_gap_m = math.inf
        self.progress_m = 0.0
        self.violations = 0
        self.steps: list[dict[str, Any]] | None = None
        self.decisions: list[dict[str, Any]] | None = None

    def add(self, action: Any, reward: float, info: dict[str, Any]) -> None:
        self.episode_return += float(reward)
        self.length += 1
        safety = info["safety"]
        self.collision = self.collision or bool(safety["collision"])
        self.success = bool(safety["success"])
        self.min_ttc_s = min(self.min_ttc_s, float(safety["ttc_s"]))
        self.min_gap_m = min(self.min_gap_m, float(safety["gap_m"]))
        self.progress_m = float(safety["progress_m"])
        self.violations += int(safety["violations"])
        if "step_log" in info:
            self.steps = self.steps if self.steps is not None else []
            self.steps.append({"t": self.length - 1, "reward": float(reward), "action": json_safe(action),
                               **json_safe(info["step_log"])})
        if info.get("decisions"):
            self.decisions = self.decisions if self.decisions is not None else []
            self.decisions.extend(json_safe(info["decisions"]))

    def record(self, *, terminated: bool, truncated: bool) -> EpisodeRecord:
        return EpisodeRecord(index=self.index, seed=self.seed, episode_return=self.episode_return,
                             length=self.length, collision=self.collision, success=self.success,
                             terminated=bool(terminated), truncated=bool(truncated), min_ttc_s=self.min_ttc_s,
                             min_gap_m=self.min_gap_m, progress_m=self.progress_m, violations=self.violations,
                             wall_time_s=time.perf_counter() - self.started, steps=self.steps,
                             decisions=self.decisions)


def vector_rollouts(scenario: ScenarioSpec, controller: Controller, *, run_seed: int, indices: Sequence[int],
                    num_envs: int = 64) -> Iterator[EpisodeRecord]:
    """Episodes ``indices`` of a run with ``run_seed``, ``num_envs`` at a time, one policy call per step.

    Each episode is reset with the runner's seed (:func:`~safetybed.runner.seeding.episode_seed`) in a
    gymnasium ``SyncVectorEnv`` without autoreset (finished envs are reset with the next episode's seed
    through ``reset_mask``); every step makes one batched ``controller.act`` call over the running
    episodes. Records come out as episodes finish.

    The controller must act row by row without per-episode state or randomness (a deterministic
    ``PolicyController``; the smoothing noise comes from the scenario). Records then equal the runner's in
    distribution; they are not bit-identical: a batched float32 matrix product rounds differently from the
    runner's batch-of-one product (~1e-7 relative), which can flip a near-tied action and with it the rest of
    that episode (``safetybed bench certify`` reports how many records match).

    ``wall_time_s`` of a record is the wall time from its reset to its end, shared with the episodes that ran
    beside it.
    """
    if getattr(controller, "deterministic", None) is not True:
        raise ValueError(f"controller {controller.name!r}: vectorised rollouts need a deterministic policy "
                         f"controller (the runner re-seeds per-episode randomness that a batch cannot share)")
    if num_envs < 1:
        raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
    queue = deque(int(i) for i in indices)
    if not queue:
        return
    count = min(num_envs, len(queue))
    factory = _EnvFactory(scenario.model_dump_json())
    envs = _SyncVectorEnvWithoutInfo([factory] * count, autoreset_mode=gym.vector.AutoresetMode.DISABLED,
                                     copy=False)
    try:
        from safetybed.sims.base import neutral_action

        idle_action = neutral_action(envs.single_action_space)
        running: list[_Episode | None] = []
        seeds = []
        for _ in range(count):
            index = queue.popleft()
            running.append(_Episode(index, episode_seed(run_seed, index)))
            seeds.append(running[-1].seed)
        obs, _ = envs.reset(seed=seeds)
        while any(episode is not None for episode in running):
            rows = np.array([k for k, episode in enumerate(running) if episode is not None])
            batch_actions = controller.act(np.asarray(obs)[rows])
            actions = np.stack([np.asarray(idle_action)] * count).astype(batch_actions.dtype)
            actions[rows] = batch_actions
            obs, rewards, terminated, truncated, _ = envs.step(actions)
            reset_mask = np.zeros(count, dtype=bool)
            reset_seeds: list[int | None] = [None] * count
            for k in range(count):
                done = bool(terminated[k] or truncated[k])
                episode = running[k]
                if episode is not None:
                    episode.add(actions[k], float(rewards[k]), envs.envs[k].last_info)
                    if done:
                        yield episode.record(terminated=bool(terminated[k]), truncated=bool(truncated[k]))
                        running[k] = None
                        if queue:
                            index = queue.popleft()
                            running[k] = _Episode(index, episode_seed(run_seed, index))
                            reset_mask[k], reset_seeds[k] = True, running[k].seed
                if done and running[k] is None:
                    reset_mask[k], reset_seeds[k] = True, 0  # idle env kept steppable; its results are unused
            if reset_mask.any():
                new_obs, _ = envs.reset(seed=reset_seeds, options={"reset_mask": reset_mask})
                obs = new_obs
                for k in np.flatnonzero(reset_mask):
                    if running[k] is not None:
                        running[k].started = time.perf_counter()
    finally:
        envs.close()
