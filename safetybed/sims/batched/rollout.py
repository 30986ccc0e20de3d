"""Many episodes at once on the batched backend, each leaving the :class:`EpisodeRecord` ``rollout`` would.

:func:`batched_rollouts` is the batched counterpart of :func:`safetybed.sims.rollout.rollout`: episode ``k``
starts from ``reset(seed=seeds[k])`` of the highway-env backend (:mod:`.placement`), the scenario's
perturbations act as :func:`safetybed.sims.base.apply_perturbations` wraps them (action delay innermost, then
observation noise, frame stacking outermost), and the record's fields are accumulated exactly as ``rollout``
does. Every random draw comes from the episode's own streams:

* observation noise: ``noise_generator(seed, OBSERVATION_NOISE)``, the stream of
  :class:`~safetybed.sims.base.ObservationNoise`, drawn for the whole episode at reset (the same numbers in the
  same order as one draw per step);
* the NADE tester (``[testing] method`` other than ``nde``): :class:`~safetybed.sims.batched.tester.BatchedTester`,
  whose critical-step entries go into the record's ``decisions`` as the highway-env tester's do;
* the controller: one controller acts on the whole batch in one call when its actions depend on nothing but the
  observation rows (``batch_stateless``: ``builtin:idm``, a deterministic policy); otherwise each episode gets
  its own controller, reset with its seed, and acts on its own row (exact, slower).

So a record depends only on (scenario, controller, seed), never on the batch it ran in. Finished episodes keep
being simulated with the others (their steps are ignored), so a batch ends when its longest episode does.
``wall_time_s`` of each record is the batch's wall time divided by the number of episodes in it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from safetybed import seeding_keys
from safetybed.jsonsafe import json_safe
from safetybed.sims.base import noise_generator
from safetybed.sims.batched.sim import BatchedHighway
from safetybed.sims.framestack import push_frame
from safetybed.sims.rollout import EpisodeRecord
from safetybed.spec import ScenarioSpec


def batch_stateless(controller: Any) -> bool:
    """Whether ``controller``'s action for a row depends only on that row (then one call serves a whole batch)."""
    return bool(getattr(controller, "batch_stateless", False))


class _EpisodeControllers:
    """One call for a batch-stateless controller, else one reset controller per episode."""

    def __init__(self, make_controller: Callable[[], Any], seeds: Sequence[int], *, deterministic: bool | None):
        first = make_controller()
        self.options = {} if deterministic is None else {"deterministic": deterministic}
        if batch_stateless(first):
            self.shared = first
            self.shared.reset(seed=int(seeds[0]))
            self.each: list[Any] = []
        else:
            self.shared = None
            self.each = [first] + [make_controller() for _ in seeds[1:]]
            for controller, seed in zip(self.each, seeds, strict=True):
                controller.reset(seed=int(seed))

    def act(self, observations: np.ndarray) -> np.ndarray:
        if self.shared is not None:
            return np.asarray(self.shared.act(observations, **self.options))
        return np.stack([np.asarray(c.act(row[None], **self.options))[0]
                         for c, row in zip(self.each, observations, strict=True)])


def batched_rollouts(spec: ScenarioSpec, make_controller: Callable[[], Any], *, seeds: Sequence[int],
                     indices: Sequence[int], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
                     deterministic: bool | None = None) -> list[EpisodeRecord]:
    """Roll out one episode per seed of ``spec`` on the batched backend; records in the order of ``seeds``."""
    if len(seeds) != len(indices) or not seeds:
        raise ValueError(f"seeds, indices: expected two non-empty sequences of equal length, got {len(seeds)} "
                         f"and {len(indices)}")
    started = time.perf_counter()
    perturb = spec.perturbations
    sim = BatchedHighway(spec, device=device, dtype=dtype)
    controllers = _EpisodeControllers(make_controller, seeds, deterministic=deterministic)
    batch = len(seeds)
    raw = sim.reset(seeds).cpu().numpy().astype(np.float32)
    tester = None
    if spec.testing is not None and spec.testing.method != "nde":
        from safetybed.sims.batched.tester import BatchedTester

        tester = BatchedTester(sim, spec.testing, seeds=seeds)
    decisions: list[list[dict[str, Any]] | None] = [None] * batch
    noise = None
    if perturb.observation_noise_std > 0:
        noise = np.stack([noise_generator(int(seed), seeding_keys.OBSERVATION_NOISE).normal(
            0.0, perturb.observation_noise_std, size=(spec.episode_steps + 1, raw.shape[1])) for seed in seeds])
    history: np.ndarray | None = None

    def perceive(observation: np.ndarray, step: int) -> np.ndarray:
        nonlocal history
        if noise is not None:  # as add_observation_noise: float64 sum of the float32 frame and the draw
            observation = (observation + noise[:, step]).astype(np.float32, copy=False)
        if perturb.frame_stack > 1:
            history = push_frame(history, observation, frames=perturb.frame_stack)
            observation = history.reshape(batch, -1)
        return observation

    delayed: deque[np.ndarray] = deque([np.zeros((batch, 2), dtype=np.float32)] * perturb.action_delay_steps)
    observation = perceive(raw, 0)
    episode_return = np.zeros(batch)
    length = np.zeros(batch, dtype=np.int64)
    collision = np.zeros(batch, dtype=bool)
    success = np.zeros(batch, dtype=bool)
    terminated = np.zeros(batch, dtype=bool)
    truncated = np.zeros(batch, dtype=bool)
    min_ttc = np.full(batch, math.inf)
    min_gap = np.full(batch, math.inf)
    progress = np.zeros(batch)
    violations = np.zeros(batch, dtype=np.int64)
    running = np.ones(batch, dtype=bool)
    for step in range(spec.episode_steps):
        action = np.asarray(controllers.act(observation), dtype=np.float32).reshape(batch, 2)
        if delayed:
            delayed.append(action)
            action = delayed.popleft()
        if tester is not None:
            tester.before_step(action, running=running)
        result = sim.step(torch.as_tensor(action.astype(np.float64)))
        if tester is not None:
            for k, entry in tester.after_step().items():
                decisions[k] = (decisions[k] or []) + [json_safe(entry)]
        out = {name: getattr(result, name).cpu().numpy() for name in
               ("reward", "terminated", "truncated", "collision", "success", "ttc_s", "gap_m", "progress_m",
                "violations")}
        live = running
        episode_return[live] += out["reward"][live]
        length[live] += 1
        collision[live] |= out["collision"][live]
        success[live] = out["success"][live]
        min_ttc[live] = np.minimum(min_ttc[live], out["ttc_s"][live])
        min_gap[live] = np.minimum(min_gap[live], out["gap_m"][live])
        progress[live] = out["progress_m"][live]
        violations[live] += out["violations"][live]
        terminated[live] = out["terminated"][live]
        truncated[live] = out["truncated"][live]
        running = running & ~(out["terminated"] | out["truncated"])
        if not running.any():
            break
        observation = perceive(result.observation.cpu().numpy().astype(np.float32), step + 1)
    wall_s = (time.perf_counter() - started) / batch
    return [EpisodeRecord(index=int(indices[k]), seed=int(seeds[k]), episode_return=float(episode_return[k]),
                          length=int(length[k]), collision=bool(collision[k]), success=bool(success[k]),
                          terminated=bool(terminated[k]), truncated=bool(truncated[k]),
                          min_ttc_s=float(min_ttc[k]), min_gap_m=float(min_gap[k]), progress_m=float(progress[k]),
                          violations=int(violations[k]), wall_time_s=wall_s, decisions=decisions[k])
            for k in range(batch)]


__all__ = ["batch_stateless", "batched_rollouts"]
