"""``safetybed bench train --out DIR``: our trainers against Stable-Baselines3 at equal budgets.

A *job* is one training run: (task, side, knobs, seed). Every job trains for the task's step budget under
the shared protocol, then its deterministic policy is rolled out on the same seeded evaluation episodes
of the safetybed scenario (:data:`safetybed.control.bench_train.EVAL_SEED_BASE` onwards); a learning
curve is the same measurement on fewer episodes every ``steps / curve_points`` environment steps.
Each finished job is stored as one JSON file under ``DIR/jobs/``, so an interrupted benchmark resumes
where it stopped and the numbers do not depend on how many jobs ran at once (``--jobs``).

**Sides.** ``dsac_t``, ``mdpo_off`` and ``mdpo_on`` are ours; ``sb3_sac`` and ``sb3_ppo`` are SB3's.
**Protocol shared by every side** (:class:`safetybed.control.bench_train.Protocol`): the same hidden sizes
and activation for actor and critics, no observation normalisation, and for the off-policy sides the same
uniform-random warm-up ``learning_starts``, batch size, replay capacity and one gradient update per
environment step. Everything else is each side's own default unless a *knob* changes it.

**Knobs** are the few settings a user would tune, mapped onto each side's own names
(:func:`side_config`): ``learning_rate`` (the networks' optimisers; DSAC-T's temperature keeps its own
3e-4), ``init_alpha`` (the initial entropy temperature of the
sides that learn one: DSAC-T ``init_log_alpha = log(alpha)``, SB3 ``ent_coef = "auto_<alpha>"``) and
``reward_scale`` and ``delay_update`` (DSAC-T only: the actor, temperature and targets move every this
many critic updates; SB3 SAC moves them every update) and ``target_policy`` (DSAC-T only: 1 draws the critic
target's next action from the target policy, as the paper; 0 from the online policy, as SAC) and ``log_std_max``
(DSAC-T only: the policy's log-std ceiling, 0.5 in the DSAC-T code, 2 in SB3). A knob a side does not have is ignored for that side and listed as such.

**Settings.** ``default`` is every side's published defaults. ``tuned`` is, per side, the point of a small
grid (the same grid for every side, :data:`TUNING_GRID`) with the best mean final return over the grid's
seeds (the first ``grid_seeds`` of the reported seeds) on the tuning task, then completed to every reported
seed; both sides get the same optimistic selection bias and nothing else. The DSAC-T ablation (:data:`ABLATION`) changes one of the paper's
defaults at a time to SB3's value.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safetybed.control.bench_train import (
    EVAL_SEED_BASE,
    Protocol,
    deterministic_return,
    mean_t_interval,
)
from safetybed.errors import InputError

#: Seeds of the learning-curve episodes: after the final-evaluation seeds, shared by every side.
CURVE_SEED_BASE = EVAL_SEED_BASE + 5_000
#: Knobs every side understands in its own terms (see :func:`side_config`).
KNOBS = ("learning_rate", "init_alpha", "reward_scale", "delay_update", "target_policy", "log_std_max")


@dataclass(frozen=True)
class Side:
    """One learner in the comparison."""

    name: str
    library: str
    """``safetybed`` or ``sb3``."""
    algorithm: str
    """Our algorithm module name, or SB3's class name."""
    off_policy: bool
    knobs: tuple[str, ...]
    """The knobs this side has."""


SIDES = {side.name: side for side in (
    Side("dsac_t", "safetybed", "dsac_t", True, ("learning_rate", "init_alpha", "reward_scale", "delay_update",
                                                 "target_policy", "log_std_max")),
    Side("mdpo_off", "safetybed", "mdpo_off", True, ("learning_rate",)),
    Side("mdpo_on", "safetybed", "mdpo_on", False, ("learning_rate",)),
    Side("sb3_sac", "sb3", "SAC", True, ("learning_rate", "init_alpha")),
    Side("sb3_ppo", "sb3", "PPO", False, ("learning_rate",)),
)}
#: (ours, theirs) pairs the verdicts compare.
PAIRS = (("dsac_t", "sb3_sac"), ("mdpo_off", "sb3_sac"), ("mdpo_on", "sb3_ppo"), ("mdpo_on", "sb3_sac"))
#: The tuning grid, the same for every side (a knob a side lacks is dropped, duplicates merged): the paper's
#: DSAC-T values (1e-4, e) and SB3's SAC defaults (3e-4, 1) and the two mixed points.
TUNING_GRID = tuple({"learning_rate": lr, "init_alpha": alpha} for lr in (1e-4, 3e-4) for alpha in (1.0, math.e))
#: DSAC-T ablation from the paper's defaults, one change at a time towards SB3's values (label, knobs).
ABLATION = (("paper defaults (lr 1e-4, alpha0 e)", {}),
            ("lr 3e-4 (SB3's)", {"learning_rate": 3e-4}),
            ("alpha0 1 (SB3's)", {"init_alpha": 1.0}),
            ("lr 3e-4 and alpha0 1", {"learning_rate": 3e-4, "init_alpha": 1.0}),
            ("reward scale 0.2", {"reward_scale": 0.2}),
            ("actor every update (delay 1, SB3's)", {"delay_update": 1}),
            ("next action from the online policy (SAC's)", {"target_policy": 0.0}),
            ("log-std ceiling 2 (SB3's)", {"log_std_max": 2.0}))


@dataclass(frozen=True)
class Job:
    """One training run; ``key`` names its result file."""

    task: str
    side: str
    seed: int
    steps: int
    knobs: tuple[tuple[str, float], ...] = ()
    eval_episodes: int = 10
    curve_points: int = 10
    curve_episodes: int = 5

    @property
    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return f"{self.task.replace('/', '_')}-{self.side}-s{self.seed}-{digest}"


def effective_knobs(side: str, knobs: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """The knobs ``side`` has, sorted, with the side's defaults dropped (so equal runs share one job)."""
    unknown = set(knobs) - set(KNOBS)
    if unknown:
        raise ValueError(f"knobs: expected some of {', '.join(KNOBS)}, got {', '.join(sorted(unknown))}")
    defaults = _side_defaults(side)
    return tuple(sorted((name, float(value)) for name, value in knobs.items()
                        if name in SIDES[side].knobs and not math.isclose(float(value), defaults[name])))


def _side_defaults(side: str) -> dict[str, float]:
    """Each knob's value when the side runs with its own defaults."""
    if side == "sb3_sac":
        return {"learning_rate": 3e-4, "init_alpha": 1.0}  # SB3 SAC: learning_rate=3e-4, ent_coef="auto" (1.0)
    if side == "sb3_ppo":
        return {"learning_rate": 3e-4}  # SB3 PPO: learning_rate=3e-4
    from safetybed.control.algorithms import algorithm_config_class

    config = algorithm_config_class(SIDES[side].algorithm)()
    if side == "dsac_t":
        return {"learning_rate": config.critic_learning_rate, "init_alpha": math.exp(config.init_log_alpha),
                "reward_scale": config.reward_scale, "delay_update": config.delay_update,
                "target_policy": float(config.target_policy), "log_std_max": config.log_std_max}
    return {"learning_rate": config.learning_rate}


def side_config(side: str, knobs: dict[str, float], protocol: Protocol, *, steps: int) -> dict[str, Any]:
    """Keyword arguments of ``side``'s config (ours: the algorithm's ``Config``; SB3: the model's constructor)."""
    spec = SIDES[side]
    out: dict[str, Any] = {}
    if spec.off_policy:
        if spec.library == "safetybed":
            out.update(learning_starts=protocol.learning_starts, batch_size=protocol.batch_size,
                       buffer_size=max(steps, 1))
            if side == "dsac_t":  # MDPO's loop is one update per env step already (train_freq 1)
                out.update(env_steps_per_round=1, updates_per_round=1)
        else:
            out.update(learning_starts=protocol.learning_starts, train_freq=1, gradient_steps=1,
                       batch_size=protocol.batch_size, buffer_size=max(steps, 1))
    if "learning_rate" in knobs:
        rate = float(knobs["learning_rate"])
        if side == "dsac_t":
            out.update(critic_learning_rate=rate, actor_learning_rate=rate)
        else:
            out["learning_rate"] = rate
    if "init_alpha" in knobs:
        alpha = float(knobs["init_alpha"])
        if side == "dsac_t":
            out["init_log_alpha"] = math.log(alpha)
        else:
            out["ent_coef"] = f"auto_{alpha:g}"
    if "reward_scale" in knobs:
        out["reward_scale"] = float(knobs["reward_scale"])
    if "delay_update" in knobs:
        out["delay_update"] = int(knobs["delay_update"])
    if "target_policy" in knobs:
        out["target_policy"] = bool(knobs["target_policy"])
    if "log_std_max" in knobs:
        out["log_std_max"] = float(knobs["log_std_max"])
    return out


def protocol_json(protocol: Protocol) -> dict[str, Any]:
    """The protocol fields a stored result must match to be reused."""
    return {"hidden": list(protocol.hidden), "activation": protocol.activation, "batch_size": protocol.batch_size,
            "learning_starts": protocol.learning_starts, "device": str(protocol.device)}


# -- one job ---------------------------------------------------------------------------------------------------
def _curve_steps(job: Job) -> list[int]:
    return sorted({max(1, round(job.steps * (i + 1) / job.curve_points)) for i in range(job.curve_points)})


def run_job(job: Job, protocol: Protocol) -> dict[str, Any]:
    """Train ``job``; return its final deterministic return, its learning curve and its wall time."""
    from safetybed.spec.catalogue import load_scenario_arg

    scenario, _ = load_scenario_arg(job.task)
    knobs = dict(job.knobs)
    config = side_config(job.side, knobs, protocol, steps=job.steps)
    started = time.perf_counter()
    if SIDES[job.side].library == "safetybed":
        act, curve = _train_ours(job, scenario, protocol, config)
    else:
        act, curve = _train_sb3(job, scenario, protocol, config)
    final = deterministic_return(act, scenario, episodes=job.eval_episodes)
    return {"job": asdict(job), "protocol": protocol_json(protocol), "final_return": final, "curve": curve, "config": config,
            "wall_time_s": time.perf_counter() - started, "torch_threads": torch.get_num_threads()}


def _curve_return(act: Callable[[np.ndarray], np.ndarray], scenario: Any, episodes: int) -> float:
    return deterministic_return(act, scenario, episodes=episodes, seed_base=CURVE_SEED_BASE)


def _train_ours(job: Job, scenario: Any, protocol: Protocol, config: dict[str, Any]):
    from safetybed.control.algorithms import algorithm_module
    from safetybed.control.bench_train import _torch_actor
    from safetybed.control.training import TrainSetup
    from safetybed.spec.controller import NetworkSpec

    class CurveSetup(TrainSetup):
        """Evaluates on the bench's shared curve episodes instead of the setup's own seeds."""

        def evaluate(self, policy, obs_norm, *, episodes=None):
            value = _curve_return(_torch_actor(policy, obs_norm, self.device), scenario, job.curve_episodes)
            policy.train()
            return {"eval_return_mean": value}

    setup = CurveSetup(scenario=scenario, network=NetworkSpec(hidden=list(protocol.hidden),
                                                              activation=protocol.activation),
                       steps=job.steps, envs=1, seed=job.seed, device=protocol.device, eval_every_steps=_curve_steps(job)[0],
                       eval_episodes=job.curve_episodes)
    module = algorithm_module(SIDES[job.side].algorithm)
    result = module.train(setup, module.Config(**config))
    curve = [[row["env_steps"], row["eval_return_mean"]] for row in setup.evaluations]
    return _torch_actor(result.policy, result.obs_norm, protocol.device), curve


def _train_sb3(job: Job, scenario: Any, protocol: Protocol, config: dict[str, Any]):
    from stable_baselines3.common.callbacks import BaseCallback

    from safetybed.control.bench_train import sb3_model

    model = sb3_model(SIDES[job.side].algorithm, job.task, scenario, protocol, seed=job.seed, **config)
    marks = _curve_steps(job)
    curve: list[list[float]] = []

    def act(obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    class Curve(BaseCallback):
        def _on_step(self) -> bool:
            while marks and self.num_timesteps >= marks[0]:
                curve.append([float(marks.pop(0)), _curve_return(act, scenario, job.curve_episodes)])
            return True

    model.learn(total_timesteps=job.steps, callback=Curve())
    return act, curve


# -- many jobs -------------------------------------------------------------------------------------------------
def _worker_init() -> None:
    torch.set_num_threads(1)


def _run_and_store(job: Job, protocol: Protocol, path: str) -> dict[str, Any]:
    result = run_job(job, protocol)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a result file is complete or absent
    return result


def run_jobs(jobs: Iterable[Job], protocol: Protocol, *, out_dir: Path, workers: int,
             progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run every job that has no stored result yet (``workers`` processes, one torch thread each)."""
    say = progress or (lambda line: None)
    folder = out_dir / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    unique = list(dict.fromkeys(jobs))
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for job in unique:
        path = folder / f"{job.key}.json"
        if path.exists():
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("job") != json.loads(json.dumps(asdict(job))):
                raise InputError(f"{path}: field job: stored run differs from the planned one; remove the file")
            if stored.get("protocol") != protocol_json(protocol):
                raise InputError(f"{path}: field protocol: stored under {stored.get('protocol')}, planned "
                                 f"{protocol_json(protocol)}; use another --out or remove the file")
            results[job.key] = stored
        else:
            todo.append(job)
    say(f"{len(unique)} runs planned, {len(results)} stored, {len(todo)} to train ({workers} at a time)")
    if not todo:
        return results
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                initializer=_worker_init) as pool:
        futures = {pool.submit(_run_and_store, job, protocol, str(folder / f"{job.key}.json")): job for job in todo}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            job = futures[future]
            result = future.result()
            results[job.key] = result
            say(f"[{done}/{len(todo)}] {job.task} {job.side} {dict(job.knobs) or 'defaults'} seed {job.seed}: "
                f"return {result['final_return']:.1f} ({result['wall_time_s']:.0f} s)")
    return results


# -- the plan and its analysis ---------------------------------------------------------------------------------
@dataclass
class Plan:
    """What ``safetybed bench train --out`` runs."""

    tasks: dict[str, int]
    """Task -> environment steps."""
    sides: tuple[str, ...] = ("dsac_t", "sb3_sac", "mdpo_off", "mdpo_on", "sb3_ppo")
    seeds: int = 5
    grid_seeds: int = 3
    """Seeds (the first of the reported ones) of the tuning grid's and the ablation's off-default points."""
    tune: bool = True
    tuned_sides: tuple[str, ...] = ("dsac_t", "sb3_sac")
    tuning_task: str = "classic/pendulum"
    fixed_tuned: dict[str, dict[str, float]] | None = None
    """Per side, a tuned point chosen elsewhere (an earlier run's grid): the grid is skipped and these are used."""
    ablation: bool = True
    ablation_task: str | None = None
    """The task of the DSAC-T ablation (``None``: the tuning task)."""
    eval_episodes: int = 10
    curve_points: int = 10
    curve_episodes: int = 5

    def job(self, task: str, side: str, seed: int, knobs: dict[str, float]) -> Job:
        return Job(task=task, side=side, seed=seed, steps=self.tasks[task], knobs=effective_knobs(side, knobs),
                   eval_episodes=self.eval_episodes, curve_points=self.curve_points,
                   curve_episodes=self.curve_episodes)

    @property
    def ablation_on(self) -> str:
        return self.ablation_task or self.tuning_task

    def grid_jobs(self) -> list[Job]:
        if not self.tune or self.fixed_tuned is not None:
            return []
        return [self.job(self.tuning_task, side, seed, point) for side in self.tuned_sides if side in self.sides
                for point in TUNING_GRID for seed in range(self.grid_seeds)]

    def ablation_jobs(self) -> list[Job]:
        if not self.ablation or "dsac_t" not in self.sides:
            return []
        return [self.job(self.ablation_on, "dsac_t", seed, knobs) for _, knobs in ABLATION
                for seed in range(self.grid_seeds)]

    def default_jobs(self) -> list[Job]:
        return [self.job(task, side, seed, {}) for task in self.tasks for side in self.sides
                for seed in range(self.seeds)]


def _returns(results: dict[str, dict[str, Any]], jobs: list[Job]) -> list[float]:
    return [results[job.key]["final_return"] for job in jobs if job.key in results]


def choose_tuned(plan: Plan, results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per side, the grid point with the best mean final return on the tuning task."""
    chosen: dict[str, dict[str, float]] = {}
    if not plan.tune:
        return chosen
    if plan.fixed_tuned is not None:
        return {side: dict(effective_knobs(side, knobs)) for side, knobs in plan.fixed_tuned.items()
                if side in plan.sides}
    for side in plan.tuned_sides:
        if side not in plan.sides:
            continue
        best: tuple[float, dict[str, float]] | None = None
        for point in TUNING_GRID:
            values = _returns(results, [plan.job(plan.tuning_task, side, s, point) for s in range(plan.grid_seeds)])
            if values and (best is None or np.mean(values) > best[0]):
                best = (float(np.mean(values)), dict(effective_knobs(side, point)))
        if best is not None:
            chosen[side] = best[1]
    return chosen


def tuned_jobs(plan: Plan, chosen: dict[str, dict[str, float]]) -> list[Job]:
    return [plan.job(task, side, seed, knobs) for task in plan.tasks for side, knobs in chosen.items()
            for seed in range(plan.seeds)]


def _summary(results: dict[str, dict[str, Any]], jobs: list[Job]) -> dict[str, Any] | None:
    values = _returns(results, jobs)
    if not values:
        return None
    interval = mean_t_interval(values)
    curves = [results[job.key]["curve"] for job in jobs if job.key in results]
    steps = [point[0] for point in curves[0]] if curves else []
    mean_curve = [[step, float(np.mean([curve[i][1] for curve in curves if len(curve) > i]))]
                  for i, step in enumerate(steps)]
    return {"returns": values, **interval.to_json_dict(), "ci": [interval.ci.low, interval.ci.high],
            "curve": mean_curve, "missing": len(jobs) - len(values),
            "wall_time_s_median": float(np.median([results[j.key]["wall_time_s"] for j in jobs if j.key in results]))}


def _matches(ours: dict[str, Any] | None, theirs: dict[str, Any] | None) -> str:
    if ours is None or theirs is None:
        return "not run"
    if ours["mean"] >= theirs["mean"] or ours["ci"][1] >= theirs["ci"][0]:
        return "matches" if ours["ci"][0] <= theirs["ci"][1] else "better"
    return "worse"


def analyse(plan: Plan, results: dict[str, dict[str, Any]], chosen: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The benchmark document: rows per (task, setting, side), verdicts per pair, grid and ablation tables."""
    rows = []
    for task in plan.tasks:
        for setting in ("default", "tuned"):
            for side in plan.sides:
                knobs = {} if setting == "default" else chosen.get(side)
                if knobs is None:
                    continue
                summary = _summary(results, [plan.job(task, side, s, knobs) for s in range(plan.seeds)])
                rows.append({"task": task, "steps": plan.tasks[task], "setting": setting, "side": side,
                             "knobs": knobs, "summary": summary})
    verdicts = []
    for task in plan.tasks:
        for setting in ("default", "tuned"):
            by_side = {row["side"]: row["summary"] for row in rows if row["task"] == task and row["setting"] == setting}
            for ours, theirs in PAIRS:
                if ours in plan.sides and theirs in plan.sides:
                    verdicts.append({"task": task, "setting": setting, "ours": ours, "theirs": theirs,
                                     "verdict": _matches(by_side.get(ours), by_side.get(theirs))})
    grid = [{"side": side, "knobs": dict(effective_knobs(side, point)), "point": point,
             "summary": _summary(results, [plan.job(plan.tuning_task, side, s, point) for s in range(plan.grid_seeds)])}
            for side in plan.tuned_sides if side in plan.sides for point in TUNING_GRID] if plan.grid_jobs() else []
    ablation = [{"label": label, "knobs": knobs,
                 "summary": _summary(results, [plan.job(plan.ablation_on, "dsac_t", s, knobs)
                                               for s in range(plan.grid_seeds)])}
                for label, knobs in ABLATION] if plan.ablation and "dsac_t" in plan.sides else []
    return {"tasks": plan.tasks, "sides": list(plan.sides), "seeds": plan.seeds, "grid_seeds": plan.grid_seeds,
            "tuned_sides": [side for side in plan.tuned_sides if side in plan.sides], "tuning_task": plan.tuning_task,
            "tuning_grid": list(TUNING_GRID), "tuned": chosen, "tuned_fixed": plan.fixed_tuned is not None,
            "ablation_task": plan.ablation_on, "rows": rows, "verdicts": verdicts, "grid": grid,
            "ablation": ablation, "eval_episodes": plan.eval_episodes, "eval_seed_base": EVAL_SEED_BASE,
            "curve_seed_base": CURVE_SEED_BASE}


def bench_learning(plan: Plan, protocol: Protocol, *, out_dir: Path, workers: int,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the plan: defaults, the tuning grid and the ablation first, then the tuned rows."""
    first = plan.default_jobs() + plan.grid_jobs() + plan.ablation_jobs()
    results = run_jobs(first, protocol, out_dir=out_dir, workers=workers, progress=progress)
    chosen = choose_tuned(plan, results)
    results.update(run_jobs(tuned_jobs(plan, chosen), protocol, out_dir=out_dir, workers=workers,
                            progress=progress))
    return analyse(plan, results, chosen)
