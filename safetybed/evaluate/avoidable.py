"""``safetybed oracle SCENARIO``: how many collisions of a highway scenario could any driver have avoided?

A certificate's goal ("P(no collision) >= 0.99") only means something next to what is physically possible: in
some cut-ins no ego action avoids the crash. This module measures an upper bound on that share. Every seeded
episode is replayed (the batched backend, :mod:`safetybed.sims.batched`, same episodes as the runner's:
episode ``i`` seeded by :func:`safetybed.runner.seeding.episode_seed`) under a set of *oracle strategies*:

* open loop, the whole episode: every longitudinal command of ``ACCELERATIONS`` (``-1`` = braking at the physical
  limit, ``accel_scale_mps2`` = 5 m/s^2 by default) combined with every lane command of ``LANE_REQUESTS`` (keep,
  change left, change right);
* closed loop: ``builtin:idm`` (IDM + MOBIL, :class:`safetybed.control.builtin_idm.IDMController`).

An episode counts as *avoidable* when at least one strategy finishes it without a collision. The share of
episodes that no strategy survives is an **upper bound** on the unavoidable share (a cleverer driver might
survive some of them), reported with a Clopper-Pearson interval. A controller's collision-free rate is then
best compared with ``1 - unavoidable share``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from safetybed.control.base import Controller
from safetybed.errors import InputError
from safetybed.intervals import clopper_pearson
from safetybed.runner.seeding import episode_seed
from safetybed.spec import ScenarioSpec

#: Open-loop longitudinal commands (fractions of ``accel_scale_mps2``; -1: the braking limit).
ACCELERATIONS = (-1.0, -0.5, 0.0, 0.5, 1.0)
#: Open-loop lane commands: keep the lane, request a change left (-1), right (+1) at every step.
LANE_REQUESTS = (0.0, -1.0, 1.0)


class ConstantController(Controller):
    """The same action at every step (an open-loop oracle strategy); the action of a row depends on nothing."""

    batch_stateless = True

    def __init__(self, observation_space, action_space, *, action: tuple[float, float]):
        super().__init__(observation_space, action_space)
        self.action = np.asarray(action, dtype=np.float32)
        self.name = f"constant:{action[0]:+g},{action[1]:+g}"

    def act(self, obs_batch: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        return np.tile(self.action, (self.check_batch(obs_batch).shape[0], 1))


def strategies(scenario: ScenarioSpec) -> dict[str, Callable[[Any, Any], Controller]]:
    """Name -> ``factory(observation_space, action_space)`` of every oracle strategy (module docstring)."""
    from safetybed.control.builtin_idm import IDMController

    table: dict[str, Callable[[Any, Any], Controller]] = {}
    for accel, lane in itertools.product(ACCELERATIONS, LANE_REQUESTS):
        table[f"accel {accel:+g}, lane {lane:+g}"] = (
            lambda obs, act, a=(accel, lane): ConstantController(obs, act, action=a))
    table["builtin:idm"] = lambda obs, act: IDMController(obs, act, scenario=scenario)
    return table


def avoidable_share(scenario: ScenarioSpec, *, episodes: int, seed: int = 0, confidence: float = 0.95,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Replay ``episodes`` seeded episodes under every oracle strategy; returns the JSON-able summary.

    Fields: ``episodes``, ``seed``, ``strategies`` (name -> collision rate), ``unavoidable`` (episodes no strategy
    survives), ``unavoidable_share`` with its ``confidence`` Clopper-Pearson ``unavoidable_ci``,
    ``best_possible_no_collision`` (``1 - unavoidable_share``, a lower bound on what a perfect driver reaches
    within these strategies' reach), and ``best_single_strategy``.
    """
    from safetybed.sims.batched.placement import STRAIGHT_FAMILIES
    from safetybed.sims.batched.rollout import batched_rollouts
    from safetybed.sims.highway import make_highway_env

    if scenario.simulator != "highway" or scenario.task not in STRAIGHT_FAMILIES:
        raise InputError(f"{scenario.name}: the oracle replays straight-road highway scenarios "
                         f"({', '.join(STRAIGHT_FAMILIES)}) on the batched backend, got "
                         f"{scenario.simulator}/{scenario.task}")
    if episodes < 1:
        raise InputError(f"--episodes: expected >= 1, got {episodes}")
    env = make_highway_env(scenario)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    seeds = [episode_seed(seed, index) for index in range(episodes)]
    table = strategies(scenario)
    collided = np.zeros((len(table), episodes), dtype=bool)
    for row, factory in enumerate(table.values()):
        records = batched_rollouts(scenario, lambda f=factory: f(obs_space, act_space), seeds=seeds,
                                   indices=list(range(episodes)))
        collided[row] = [record.collision for record in records]
        if progress:
            progress(row + 1, len(table))
    unavoidable = int(collided.all(axis=0).sum())
    interval = clopper_pearson(unavoidable, episodes, confidence)
    rates = {name: float(collided[row].mean()) for row, name in enumerate(table)}
    best = min(rates, key=rates.get)
    return {"scenario": scenario.name, "episodes": episodes, "seed": seed, "strategies": rates,
            "best_single_strategy": {"name": best, "collision_rate": rates[best]},
            "unavoidable": unavoidable, "unavoidable_share": unavoidable / episodes,
            "unavoidable_ci": list(interval), "confidence": confidence,
            "best_possible_no_collision": 1 - unavoidable / episodes}
