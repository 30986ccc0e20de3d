"""Batch runs: create or resume a run, execute its missing episodes, store each as it finishes."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from safetybed.errors import IncompleteRunError, InputError
from safetybed.intervals import ConfidenceInterval, clopper_pearson
from safetybed.jsonsafe import json_safe
from safetybed.runner.episode import EpisodeTask
from safetybed.runner.executors import EpisodeFailure, check_executor, execute
from safetybed.runner.seeding import MAX_RUN_SEED
from safetybed.runner.store import Completeness, RunStore
from safetybed.sims.rollout import EpisodeRecord
from safetybed.spec import ScenarioSpec

ProgressCallback = Callable[[int, int], None]


def scenario_digest(scenario: ScenarioSpec) -> str:
    return hashlib.sha256(scenario.model_dump_json().encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunSummary:
    """Headline statistics of a run, with their confidence intervals (``confidence`` two-sided)."""

    run_id: str
    scenario: str
    controller: str
    episodes: int
    planned_episodes: int
    mean_return: float
    return_ci: ConfidenceInterval
    collision_rate: float
    collision_ci: ConfidenceInterval
    success_rate: float
    success_ci: ConfidenceInterval
    min_ttc_s: float
    min_gap_m: float
    mean_progress_m: float
    total_violations: int
    confidence: float
    status: str
    completeness: dict

    def to_json_dict(self) -> dict:
        """A JSON-safe dict (:func:`safetybed.jsonsafe.json_safe`); each interval is ``[low, high]``."""
        return json_safe(self.__dict__)


def summarize(run_id: str, records: list[EpisodeRecord], *, scenario: str, controller: str, planned: int,
              status: str, confidence: float = 0.95, completeness: Completeness | None = None) -> RunSummary:
    """Mean return with a Student-t interval; collision and success rates with Clopper-Pearson intervals."""
    n = len(records)
    completeness_json = completeness.to_json_dict() if completeness is not None else {}
    if n == 0:
        mean_ci = ConfidenceInterval(math.nan, math.nan, confidence, "student-t")
        rate_ci = ConfidenceInterval(math.nan, math.nan, confidence, "clopper-pearson")
        return RunSummary(run_id, scenario, controller, 0, planned, math.nan, mean_ci, math.nan, rate_ci, math.nan,
                          rate_ci, math.inf, math.inf, math.nan, 0, confidence, status, completeness_json)
    returns = np.array([r.episode_return for r in records])
    mean = float(returns.mean())
    if n > 1 and returns.std(ddof=1) > 0:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * returns.std(ddof=1) / math.sqrt(n))
    else:
        half = 0.0 if n > 1 else math.inf
    collisions = sum(r.collision for r in records)
    successes = sum(r.success for r in records)
    return RunSummary(
        run_id=run_id, scenario=scenario, controller=controller, episodes=n, planned_episodes=planned,
        mean_return=mean, return_ci=ConfidenceInterval(mean - half, mean + half, confidence, "student-t"),
        collision_rate=collisions / n,
        collision_ci=clopper_pearson(collisions, n, confidence),
        success_rate=successes / n,
        success_ci=clopper_pearson(successes, n, confidence),
        min_ttc_s=min(r.min_ttc_s for r in records), min_gap_m=min(r.min_gap_m for r in records),
        mean_progress_m=float(np.mean([r.progress_m for r in records])),
        total_violations=int(sum(r.violations for r in records)), confidence=confidence, status=status,
        completeness=completeness_json)


def _execute_missing(store: RunStore, run_id: str, *, scenario_json: str, controller: str, seed: int,
                     episodes: int, executor: str, workers: int, progress: ProgressCallback | None) -> None:
    done = store.done_indices(run_id)
    tasks = [EpisodeTask(scenario_json=scenario_json, controller=controller, run_seed=seed, index=i)
             for i in range(episodes) if i not in done]
    finished = len(done)
    if progress:
        progress(finished, episodes)
    if tasks:
        store.mark_status(run_id, "running")
    for outcome in execute(tasks, executor=executor, workers=workers):
        if isinstance(outcome, EpisodeFailure):
            store.add_failure(run_id, outcome)
        else:
            store.add_episode(run_id, outcome)
        finished += 1
        if progress:
            progress(finished, episodes)
    finalize_run(store, run_id)


def finalize_run(store: RunStore, run_id: str) -> Completeness:
    """The completeness invariant, whatever the executor: ``complete`` only with every planned index stored once.

    Otherwise the run is marked ``partial`` and :class:`IncompleteRunError` names what is missing and how to
    resume.
    """
    completeness = store.completeness(run_id)
    store.mark_status(run_id, "complete" if completeness.complete else "partial")
    if not completeness.complete:
        raise IncompleteRunError(run_id, completeness.describe())
    return completeness


def stored_episodes(store: RunStore, run_id: str, *, with_logs: bool = False,
                    allow_partial: bool = False) -> list[EpisodeRecord]:
    """The episodes of a run for an estimate: refused (:class:`IncompleteRunError`) unless the run is complete.

    ``allow_partial=True`` returns whatever is stored; the caller must then say so in its result.
    """
    completeness = store.completeness(run_id)
    if not completeness.complete and not allow_partial:
        raise IncompleteRunError(run_id, completeness.describe() + " (an estimate from it would use a sample "
                                 "other than the one planned; pass --allow-partial to compute from it anyway)")
    return store.episodes(run_id, with_logs=with_logs)


def check_controller_usable(scenario: ScenarioSpec, controller: str) -> None:
    """Build the controller once in this process, so a bad reference fails fast with exit code 2."""
    from safetybed.control import load_controller
    from safetybed.sims import make_env

    env = make_env(scenario)
    try:
        load_controller(controller, scenario=scenario, observation_space=env.observation_space,
                        action_space=env.action_space)
    finally:
        env.close()


def start_run(scenario: ScenarioSpec, *, scenario_path: str | Path, controller: str, episodes: int, seed: int,
              workers: int, executor: str, store: RunStore,
              progress: ProgressCallback | None = None, on_created: Callable[[str], None] | None = None) -> str:
    """Create a run in ``store`` and execute all its episodes; returns the run id."""
    if episodes < 1:
        raise InputError(f"--episodes: expected >= 1, got {episodes}")
    if not 0 <= seed <= MAX_RUN_SEED:
        raise InputError(f"--seed: expected an integer in [0, 2**63), got {seed}")
    check_executor(executor, workers=workers)
    check_controller_usable(scenario, controller)
    scenario_json = scenario.model_dump_json()
    run_id = store.create_run(scenario_name=scenario.name, scenario_path=str(scenario_path),
                              scenario_json=scenario_json, controller=controller, seed=seed, episodes=episodes,
                              executor=executor, workers=workers)
    if on_created:
        on_created(run_id)
    _execute_missing(store, run_id, scenario_json=scenario_json, controller=controller, seed=seed,
                     episodes=episodes, executor=executor, workers=workers, progress=progress)
    return run_id


def resume_run(run_id: str, *, store: RunStore, workers: int, executor: str,
               scenario: ScenarioSpec | None = None, controller: str | None = None, episodes: int | None = None,
               seed: int | None = None, progress: ProgressCallback | None = None) -> str:
    """Run the missing episodes of ``run_id`` with the scenario, controller and seed it was created with.

    The optional arguments are checked against the stored run: a mismatch is an input error rather than
    a silent mix of two different experiments in one run.
    """
    check_executor(executor, workers=workers)
    info = store.get_run(run_id)
    stored = ScenarioSpec.model_validate_json(info.scenario_json)
    if scenario is not None and scenario_digest(scenario) != scenario_digest(stored):
        raise InputError(f"--resume {run_id}: the scenario differs from the one the run was started with "
                         f"({info.scenario_path}, {info.scenario_name!r}); resume with the same spec")
    if controller is not None and controller != info.controller:
        raise InputError(f"--resume {run_id}: --controller {controller!r} differs from the run's "
                         f"controller {info.controller!r}")
    if episodes is not None and episodes != info.episodes:
        raise InputError(f"--resume {run_id}: --episodes {episodes} differs from the run's {info.episodes}")
    if seed is not None and seed != info.seed:
        raise InputError(f"--resume {run_id}: --seed {seed} differs from the run's seed {info.seed}")
    _execute_missing(store, run_id, scenario_json=info.scenario_json, controller=info.controller, seed=info.seed,
                     episodes=info.episodes, executor=executor, workers=workers, progress=progress)
    return run_id


def find_run(store: RunStore, spec: ScenarioSpec, *, controller: str, seed: int, episodes: int) -> str | None:
    """The newest stored run of exactly this experiment, if any."""
    digest = scenario_digest(spec)
    matches = [info for info, _ in store.list_runs()
               if info.controller == controller and info.seed == seed and info.episodes == episodes
               and scenario_digest(ScenarioSpec.model_validate_json(info.scenario_json)) == digest]
    return max(matches, key=lambda info: info.created_utc).run_id if matches else None


def run_or_resume(store: RunStore, spec: ScenarioSpec, *, scenario_path: str, controller: str, seed: int,
                  episodes: int, workers: int, progress: Callable[[int, int], None] | None) -> str:
    """Reuse a complete run of this experiment, resume a partial one, or start it."""
    run_id = find_run(store, spec, controller=controller, seed=seed, episodes=episodes)
    if run_id is None:
        return start_run(spec, scenario_path=scenario_path, controller=controller, episodes=episodes, seed=seed,
                         workers=workers, executor="local", store=store, progress=progress)
    if not store.completeness(run_id).complete:
        resume_run(run_id, store=store, workers=workers, executor="local", progress=progress)
    return run_id


def run_summary(store: RunStore, run_id: str, *, confidence: float = 0.95) -> RunSummary:
    info = store.get_run(run_id)
    return summarize(run_id, store.episodes(run_id), scenario=info.scenario_name, controller=info.controller,
                     planned=info.episodes, status=info.status, confidence=confidence,
                     completeness=store.completeness(run_id))
