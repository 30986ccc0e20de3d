"""One seeded episode of a scenario against a controller: the task a worker runs and its per-process cache.

This is the unit of work every executor ships to a worker: :func:`run_episode` takes only plain
data (the scenario as JSON, the controller reference, the run seed, the episode index), so a local
process, a Ray task or the calling process all produce the same :class:`EpisodeRecord`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from safetybed.runner.seeding import episode_seed
from safetybed.sims.rollout import EpisodeRecord, rollout


@dataclass(frozen=True)
class EpisodeTask:
    """Everything needed to reproduce episode ``index`` of a run."""

    scenario_json: str
    controller: str
    run_seed: int
    index: int


# Environments and controllers are costly to build (highway-env roads, pybullet connections), so each
# worker process keeps one per (scenario, controller). They are fully re-seeded at every episode.
_CACHE: dict[tuple[str, str], tuple[Any, Any]] = {}


def _env_and_controller(scenario_json: str, controller_ref: str):
    key = (scenario_json, controller_ref)
    if key not in _CACHE:
        from safetybed.control import load_controller
        from safetybed.sims import make_env
        from safetybed.spec import ScenarioSpec

        scenario = ScenarioSpec.model_validate_json(scenario_json)
        env = make_env(scenario)
        controller = load_controller(controller_ref, scenario=scenario, observation_space=env.observation_space,
                                     action_space=env.action_space)
        _CACHE.clear()  # one live simulator per worker process
        _CACHE[key] = (env, controller)
    return _CACHE[key]


def run_episode(task: EpisodeTask) -> EpisodeRecord:
    """Roll out one episode; a pure function of ``task`` apart from ``wall_time_s``."""
    env, controller = _env_and_controller(task.scenario_json, task.controller)
    return rollout(env, controller, seed=episode_seed(task.run_seed, task.index), index=task.index)


#: Episodes per batch of the batched backend (one :func:`run_episode_batch` call).
BATCH_EPISODES = 1024


def run_episode_batch(tasks: Sequence[EpisodeTask]) -> list[EpisodeRecord]:
    """Roll out tasks of one run together on the batched backend (:mod:`safetybed.sims.batched.rollout`).

    Every record equals what the task would give alone: the batch never changes an episode.
    """
    from safetybed.control import load_controller
    from safetybed.sims.batched.rollout import batched_rollouts

    first = tasks[0]
    if any((t.scenario_json, t.controller, t.run_seed) != (first.scenario_json, first.controller, first.run_seed)
           for t in tasks):
        raise ValueError("tasks: expected episodes of one run (same scenario, controller and run seed)")
    env, _ = _env_and_controller(first.scenario_json, first.controller)  # the spaces, checked once
    scenario = env.unwrapped.scenario

    def make_controller():
        return load_controller(first.controller, scenario=scenario, observation_space=env.observation_space,
                               action_space=env.action_space)

    return batched_rollouts(scenario, make_controller, seeds=[episode_seed(t.run_seed, t.index) for t in tasks],
                            indices=[t.index for t in tasks])
