"""One episode of an environment under a controller, and the record it leaves.

This is below the controllers and the runner: training (final evaluations), the batch runner's workers and the
certification code all roll episodes out with :func:`rollout`, and every executor stores an
:class:`EpisodeRecord`. The environment must follow the adapter contract of :mod:`safetybed.sims.base`
(``info["safety"]`` after every step); the controller is anything with ``reset(seed=...)`` and
``act(observations, **options)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from safetybed.jsonsafe import json_safe


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
        """A JSON-safe dict (``inf`` becomes ``None``, :func:`safetybed.jsonsafe.json_safe`)."""
        return json_safe(asdict(self))


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
        previous_obs = obs
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
            terms = controller.decision_terms()[0] if hasattr(controller, "decision_terms") else None
            # obs / next_obs make the logged steps a transition dataset (offline RL reads them back).
            steps.append({"t": length - 1, "reward": float(reward), "action": json_safe(action),
                          "obs": json_safe(np.asarray(previous_obs)), "next_obs": json_safe(np.asarray(obs)),
                          **json_safe(info["step_log"]), **({"controller": json_safe(terms)} if terms else {})})
        if info.get("decisions"):
            decisions = decisions if decisions is not None else []
            decisions.extend(json_safe(info["decisions"]))
    return EpisodeRecord(index=index, seed=seed, episode_return=episode_return, length=length,
                         collision=collision, success=success, terminated=bool(terminated),
                         truncated=bool(truncated), min_ttc_s=min_ttc_s, min_gap_m=min_gap_m,
                         progress_m=progress_m, violations=violations,
                         wall_time_s=time.perf_counter() - started, steps=steps, decisions=decisions)


def seeded_returns(act: Callable[[np.ndarray], Any], scenario: Any, *, episodes: int, seed_base: int) -> np.ndarray:
    """Undiscounted returns of ``episodes`` episodes of ``scenario`` (a ScenarioSpec) driven by ``act(observation)``,
    episode ``k`` reset with seed ``seed_base + k`` (so two policies evaluated alike meet the same start states);
    the scenario's own episode cap ends each one."""
    from safetybed.sims import make_env

    env = make_env(scenario)
    returns = np.zeros(episodes)
    try:
        for k in range(episodes):
            obs, _ = env.reset(seed=seed_base + k)
            done = False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(act(obs))
                returns[k] += float(reward)
                done = terminated or truncated
    finally:
        env.close()
    return returns
