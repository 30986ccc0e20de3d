"""NADE importance-sampling tests on the batched backend: the same critical-step entries as ``HighwayTester``.

Feng, Yan, Sun, Feng & Liu (2021), *Nat. Commun.* 12:748 (NADE); ``research/cav_eval.md`` §1, §6.3.

:class:`BatchedTester` does for a batch of episodes what :class:`safetybed.sims.testing.tester.HighwayTester`
does for one: at every control step at which the background vehicles decide (1 Hz), before the step, it applies
the ego's command (idempotent: the step applies it again at its first frame), reads every candidate's pending pmf
from the batched naturalistic traffic, builds the candidates' contexts and takes NADE's decision with the
backend-free functions of the highway-env tester (:func:`~safetybed.sims.testing.tester.candidate_contexts`,
:func:`~safetybed.sims.testing.tester.critical_entry`), and overrides the principal vehicle's decision; after the
step it checks that the override was taken and reconciles the logged pmf with the one the vehicle decided on
(:func:`~safetybed.sims.testing.tester.reconcile_entry`).

The simulation stays batched; the decision logic (the look-ahead over at most a few candidates and one
proposal call) runs per episode at decision steps only, and draws from each episode's own tester generator
``SeedSequence(seed, spawn_key=(NADE_TESTER,))``, so an episode's entries depend on its seed alone and equal the
highway-env tester's whenever the two backends' states agree (float64: tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from safetybed import seeding_keys
from safetybed.sims.batched.placement import VEHICLE_LENGTH_M
from safetybed.sims.highway_obs import decode_action
from safetybed.sims.testing.lookahead import DEFAULT_SURROGATES, EgoKinematics, VehicleKinematics
from safetybed.sims.testing.tester import (
    candidate_contexts,
    check_override_taken,
    critical_entry,
    make_proposal,
    reconcile_entry,
)
from safetybed.spec.scenario import TestingSpec


class BatchedTester:
    """The NADE tester of one batch (see the module docstring); ``seeds`` are the episodes' seeds."""

    def __init__(self, sim, testing: TestingSpec, *, seeds: Sequence[int]):
        if sim.naturalistic is None:
            raise ValueError("sim: the tester needs naturalistic background drivers (highway.driver.model = "
                             "'naturalistic')")
        if len(seeds) != sim.batch:
            raise ValueError(f"seeds: expected one per episode of the batch ({sim.batch}), got {len(seeds)}")
        self.sim = sim
        self.proposal = make_proposal(testing)
        self.surrogates = DEFAULT_SURROGATES
        self.lookahead_s = float(testing.lookahead_s)
        self.feature_surrogate = int(testing.surrogate)
        self.rngs = [np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(seeding_keys.NADE_TESTER,)))
                     for seed in seeds]
        self.log_weight = np.zeros(sim.batch)
        self.critical_steps = np.zeros(sim.batch, dtype=np.int64)
        self._pending: dict[int, dict[str, Any]] = {}
        grid = sim.naturalistic.params.grid_mps2
        self.grid = np.asarray(grid, dtype=np.float64)

    def before_step(self, action: np.ndarray, *, running: np.ndarray) -> None:
        """Take NADE's decisions of the coming step for the ``running`` episodes (``action``: ``[B, 2]``)."""
        sim, traffic = self.sim, self.sim.naturalistic
        self._pending = {}
        deciders = traffic.deciders()
        due = deciders.any(dim=1).cpu().numpy() & running
        if not due.any():
            return
        sim.command_ego(torch.as_tensor(np.asarray(action, dtype=np.float64)))
        pmf, mask = traffic.pending_pmfs()
        hold = traffic.decision_accelerations()
        ego_x, ego_y = sim.x[:, :1], sim.y[:, :1]
        distance = torch.sqrt((sim.x - ego_x) ** 2 + (sim.y - ego_y) ** 2)
        candidate = mask & (distance <= sim.highway.observation_range_m) & deciders & ~traffic.script_due()
        arrays = {name: tensor.cpu().numpy() for name, tensor in (
            ("x", sim.x), ("speed", sim.speed), ("target", sim.target_lane), ("lane", sim.lane),
            ("distance", distance), ("candidate", candidate), ("hold", hold), ("pmf", pmf))}
        time_fraction = sim.control_step / sim.spec.episode_steps
        scale = sim.highway.ego.accel_scale_mps2
        for b in np.flatnonzero(due):
            acceleration, lane_change = decode_action(action[b], accel_scale_mps2=scale)
            ego_lane = int(arrays["target"][b, 0])
            current = int(arrays["lane"][b, 0])
            if lane_change and 0 <= current + lane_change < sim.lanes:
                ego_lane = current + lane_change  # as EgoVehicle.command retargets
            ego = EgoKinematics(position_m=float(arrays["x"][b, 0]), speed_mps=float(arrays["speed"][b, 0]),
                                lane=ego_lane, length_m=VEHICLE_LENGTH_M, acceleration_mps2=float(acceleration))
            slots = np.flatnonzero(arrays["candidate"][b])
            slots = slots[np.lexsort((slots, arrays["distance"][b, slots]))]  # nearest first, ties by id
            states = [VehicleKinematics(position_m=float(arrays["x"][b, n]), speed_mps=float(arrays["speed"][b, n]),
                                        lane=int(arrays["target"][b, n]), length_m=VEHICLE_LENGTH_M,
                                        lane_change_acceleration_mps2=float(np.clip(arrays["hold"][b, n],
                                                                                    self.grid[0], self.grid[-1])))
                      for n in slots]
            pmfs = [arrays["pmf"][b, n].astype(np.float64) for n in slots]
            contexts = candidate_contexts(ego, pmfs, states, lanes=sim.lanes, acceleration_grid_mps2=self.grid,
                                          surrogates=self.surrogates, lookahead_s=self.lookahead_s,
                                          feature_surrogate=self.feature_surrogate,
                                          log_weight=float(self.log_weight[b]), time_fraction=time_fraction)
            entry = critical_entry([int(n) for n in slots], contexts, proposal=self.proposal, rng=self.rngs[b],
                                   time_s=traffic.time_s)
            if entry is None:
                continue
            traffic.override_next_decision(int(b), entry["vehicle_id"], entry["action"])
            self.log_weight[b] += entry["log_ratio"]
            self.critical_steps[b] += 1
            self._pending[int(b)] = entry

    def after_step(self) -> dict[int, dict[str, Any]]:
        """The critical-step entries of the step just taken, by episode (checked and reconciled)."""
        traffic = self.sim.naturalistic
        for b, entry in self._pending.items():
            taken = [r for r in traffic.last_decision_records(b) if r.vehicle_id == entry["vehicle_id"]]
            check_override_taken(entry, [(r.source, r.action) for r in taken])
            self.log_weight[b] += reconcile_entry(entry, np.asarray(taken[0].pmf, dtype=np.float64))
        entries, self._pending = self._pending, {}
        return entries


__all__ = ["BatchedTester"]
