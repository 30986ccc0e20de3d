"""One seeded episode of a scenario against a controller, and the record it leaves.

This is the unit of work every executor ships to a worker: :func:`run_episode` takes only plain
data (the scenario as JSON, the controller reference, the run seed, the episode index), so a local
process, a Ray task or the calling process all produce the same :class:`EpisodeRecord`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from safetybed.runner.seeding import episode_seed


@dataclass(frozen=True)
class EpisodeTask:
    """Everything needed to reproduce episode ``index`` of a run."""

    scenario_json: str
    controller: str
    run_seed: int
    index: int


@dataclass
class EpisodeRecord:
    """Per-episode outcome. Physical quantities carry their unit in the name.

    ``min_ttc_s`` / ``min_gap_m`` are ``inf`` when nothing was ever ahead / near.
    """

    index: int
    seed: int
    episode_return: float
    length: int
    collision: bool
    success: bool
    terminated: bool
    truncated: bool
    min_ttc_s: float
    min_gap_m: float
    progress_m: float
    violations: int
    wall_time_s: float
    steps: list[dict[str, Any]] | None = field(default=None, repr=False)
    decisions: list[dict[str, Any]] | None = field(default=None, repr=False)

    #: Fields that are a pure function of (scenario, controller, run seed, index).
    DETERMINISTIC_FIELDS = ("index", "seed", "episode_return", "length", "collision", "success", "terminated",
                            "truncated", "min_ttc_s", "min_gap_m", "progress_m", "violations")

    def outcome(self) -> tuple[Any, ...]:
        """The deterministic part of the record (everything but wall time), for equality checks."""
        return tuple(getattr(self, name) for name in self.DETERMINISTIC_FIELDS) + (self.steps, self.decisions)

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (``inf`` becomes ``None``)."""
        return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                for key, value in asdict(self).items()}


def _to_builtin(value: Any) -> Any:
    """Plain JSON-able Python values; non-finite floats become ``None`` (JSON has no inf/NaN)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return _to_builtin(value.tolist())
    if isinstance(value, dict):
        return {str(key): _to_builtin(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_builtin(item) for item in value]
    return value


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


def rollout(env: Any, controller: Any, *, seed: int, index: int = 0, deterministic: bool | None = None) -> EpisodeRecord:
    """One episode of ``controller`` in ``env`` from ``reset(seed=seed)``; both are re-seeded with ``seed``.

    ``deterministic=None`` uses the controller's own default mode.
    """
    options = {} if deterministic is None else {"deterministic": deterministic}
    started = time.perf_counter()
    obs, info = env.reset(seed=seed)
    controller.reset(seed=seed)
    episode_return = 0.0
    length = 0
    collision = success = terminated = truncated = False
    min_ttc_s = min_gap_m = math.inf
    progress_m = 0.0
    violations = 0
    steps: list[dict[str, Any]] | None = None
    decisions: list[dict[str, Any]] | None = None
    while not (terminated or truncated):
        action = controller.act(np.asarray(obs)[None, ...], **options)[0]
        obs, reward, terminated, truncated, info = env.step(action)
        episode_return += float(reward)
        length += 1
        safety = info["safety"]
        collision = collision or bool(safety["collision"])
        success = bool(safety["success"])
        min_ttc_s = min(min_ttc_s, float(safety["ttc_s"]))
        min_gap_m = min(min_gap_m, float(safety["gap_m"]))
        progress_m = float(safety["progress_m"])
        violations += int(safety["violations"])
        if "step_log" in info:
            steps = steps if steps is not None else []
            steps.append({"t": length - 1, "reward": float(reward), "action": _to_builtin(action),
                          **_to_builtin(info["step_log"])})
        if info.get("decisions"):
            decisions = decisions if decisions is not None else []
            decisions.extend(_to_builtin(info["decisions"]))
    return EpisodeRecord(index=index, seed=seed, episode_return=episode_return, length=length,
                         collision=collision, success=success, terminated=bool(terminated),
                         truncated=bool(truncated), min_ttc_s=min_ttc_s, min_gap_m=min_gap_m,
                         progress_m=progress_m, violations=violations,
                         wall_time_s=time.perf_counter() - started, steps=steps, decisions=decisions)
