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
  its own controller, reset with its seed, and acts on its own row (exact, slower). A controller with
  ``decision_terms()`` (the planner) has its terms stored in the per-step log under ``"controller"``.

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
from safetybed.sims.batched.placement import LANE_WIDTH_M
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

    def decision_terms(self, batch: int) -> list[dict[str, Any] | None]:
        """Each row's named terms of the last decision, from controllers that report them (``decision_terms()``,
        e.g. the planner's entropy); ``None`` per row otherwise."""
        if self.shared is not None:
            terms = getattr(self.shared, "decision_terms", None)
            return list(terms()) if terms is not None else [None] * batch
        return [c.decision_terms()[0] if hasattr(c, "decision_terms") else None for c in self.each]


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
    metrics = spec.metrics
    steps: list[list[dict[str, Any]] | None] = [None] * batch
    for step in range(spec.episode_steps):
        chosen = np.asarray(controllers.act(observation), dtype=np.float32).reshape(batch, 2)
        action = chosen
        if delayed:
            delayed.append(action)
            action = delayed.popleft()
        if tester is not None:
            tester.before_step(action, running=running)
        candidates = _decision_candidates(sim) if metrics.decision_log else None
        result = sim.step(torch.as_tensor(action.astype(np.float64)))
        next_observation = perceive(result.observation.cpu().numpy().astype(np.float32), step + 1)
        out = {name: getattr(result, name).cpu().numpy() for name in
               ("reward", "terminated", "truncated", "collision", "success", "ttc_s", "gap_m", "progress_m",
                "violations")}
        live = running
        logged = _logged_decisions(sim, candidates, live) if candidates is not None else {}
        entries = tester.after_step() if tester is not None else {}
        for k in set(logged) | set(entries):  # as info["decisions"]: the drivers' log, then the tester's entry
            new = logged.get(k, []) + ([json_safe(entries[k])] if k in entries else [])
            if new and live[k]:
                decisions[k] = (decisions[k] or []) + new
        if metrics.per_step_log:
            terms = controllers.decision_terms(batch)
            for k, entry in _step_logs(sim, result, live).items():
                extra = {"controller": json_safe(terms[k])} if terms[k] is not None else {}
                steps[k] = (steps[k] or []) + [{"t": int(length[k]), "reward": float(out["reward"][k]),
                                                "action": json_safe(chosen[k]), "obs": json_safe(observation[k]),
                                                "next_obs": json_safe(next_observation[k]), **entry, **extra}]
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
        observation = next_observation
    wall_s = (time.perf_counter() - started) / batch
    return [EpisodeRecord(index=int(indices[k]), seed=int(seeds[k]), episode_return=float(episode_return[k]),
                          length=int(length[k]), collision=bool(collision[k]), success=bool(success[k]),
                          terminated=bool(terminated[k]), truncated=bool(truncated[k]),
                          min_ttc_s=float(min_ttc[k]), min_gap_m=float(min_gap[k]), progress_m=float(progress[k]),
                          violations=int(violations[k]), wall_time_s=wall_s, steps=steps[k],
                          decisions=decisions[k])
            for k in range(batch)]


def _decision_candidates(sim: BatchedHighway) -> np.ndarray | None:
    """``[B, N]``: naturalistic vehicles whose decision at the coming step is logged (``HighwayScenarioEnv.step``:
    uncrashed, within ``observation_range_m`` of the ego, deciding at the step's first frame); ``None`` without
    naturalistic traffic."""
    traffic = sim.naturalistic
    if traffic is None:
        return None
    distance = torch.sqrt((sim.x - sim.x[:, :1]) ** 2 + (sim.y - sim.y[:, :1]) ** 2)
    return (traffic.deciders() & (distance <= sim.highway.observation_range_m)).cpu().numpy()


def _logged_decisions(sim: BatchedHighway, candidates: np.ndarray, live: np.ndarray
                      ) -> dict[int, list[dict[str, Any]]]:
    """``info["decisions"]`` of ``metrics.decision_log``: the candidates' decision records, in vehicle order."""
    traffic = sim.naturalistic
    logged = {}
    for k in np.flatnonzero(live & candidates.any(axis=1)):
        records = [r.to_json() for r in traffic.last_decision_records(int(k)) if candidates[k, r.vehicle_id]]
        if records:
            logged[int(k)] = records
    return logged


def _step_logs(sim: BatchedHighway, result, live: np.ndarray) -> dict[int, dict[str, Any]]:
    """``info["step_log"]`` of ``metrics.per_step_log`` (:meth:`HighwayScenarioEnv._make_info`), per live episode."""
    lane = sim.lane[:, 0]
    columns = {
        "x_m": sim.x[:, 0], "y_m": sim.y[:, 0], "speed_mps": sim.speed[:, 0], "heading_rad": sim.heading[:, 0],
        "acceleration_command_mps2": sim.command_mps2, "lane_change_command": sim.last_lane_change,
        "lane_id": lane, "lateral_offset_m": sim.y[:, 0] - LANE_WIDTH_M * lane.to(sim.dtype), "gap_m": result.gap_m,
        "ttc_s": result.ttc_s, "progress_m": result.progress_m, "vehicles": sim.present.sum(dim=1) - 1}
    values = {name: column.double().cpu().numpy() for name, column in columns.items()}
    time_s = float(sim.frames / sim.highway.simulation_frequency_hz)
    return {int(k): json_safe({"time_s": time_s, **{name: float(values[name][k]) for name in columns}})
            for k in np.flatnonzero(live)}


__all__ = ["batch_stateless", "batched_rollouts"]
