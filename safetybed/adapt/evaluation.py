"""``safetybed adapt``: does test-time adaptation lower collisions on shifted scenarios, at what latency, and when
does it hurt?

For every (scenario, method) the planner ``adapt:METHOD:SPEC`` (:mod:`safetybed.control.planner.controller`) runs
through the batch runner on the batched backend with the per-step log on: a stored, seeded run, resumed or reused
when the same command runs again (the run is found by scenario, controller, seed and episode count). Every method
of a scenario meets the same episode seeds, so the comparison is paired. From the stored records:

* ``collision_rate`` with its Clopper-Pearson interval; a method *lowers* the rate when its interval lies wholly
  below ``none``'s (the issue's criterion), and McNemar's exact test on the paired episodes is reported beside it
  (``mcnemar_p``, two-sided; it uses the pairing the intervals ignore);
* ``min_ttc_s`` / ``min_ttc_p10_s``: the median / 10th percentile over episodes of each episode's minimum time to
  collision [s] (episodes with nothing ahead, ``inf``, count as the TTC cap); ``progress_m``: mean distance [m];
* ``composite``: the per-episode driving score ``NC x (5 TTC + 5 EP) / 10`` (NAVSIM's PDM score with the terms an
  episode has: NC = no collision, TTC = 1 if the episode's minimum TTC stays >= 1 s, EP = progress / (speed limit x
  duration) capped at 1), its mean with a Student-t interval;
* ``changed_episodes``: episodes in which the method acted differently from ``none`` at some step (same seed, so
  the same state up to that step), and ``updated_decisions``: the share of decisions that took an update step;
* ``detection``: Cluster Entropy as a failure detector, the AUROC of the entropy of the ``pre_collision_steps``
  decisions before each collision against every decision of the episodes without one (with a bootstrap interval
  over episodes), per run and pooled over the suites for ``none`` (``detection_pooled``: the trained planner's
  own entropy; an adapting method's logged entropy is that of its adapted scores);
* ``latency``: per-decision wall time [ms] (median, p95) of ``act`` (the critical path) and of the adapt hook
  (Centaur's backward pass, after the action is out), measured in the deployment loop
  (:func:`safetybed.control.runtime.run_in_highway`) on the highway-env backend, on this machine.

Adapted runs are not the controller a certificate was computed for; the document says so (``certificate_note``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from safetybed import __version__
from safetybed.errors import InputError
from safetybed.intervals import clopper_pearson
from safetybed.jsonsafe import json_safe
from safetybed.runner import RunStore
from safetybed.runner.batch import run_or_resume, stored_episodes
from safetybed.sims.rollout import EpisodeRecord
from safetybed.spec import ScenarioSpec
from safetybed.spec.planner import ADAPT_METHODS

#: The shifted suites and the unshifted one, by label (``scenarios/highway/``).
SUITES = {"unshifted": "highway/cut_in", "dense": "highway/cut_in_dense", "aggressive": "highway/cut_in_aggressive",
          "noisy": "highway/cut_in_noisy", "mixed": "highway/cut_in_mixed"}
DEFAULT_CONTROLLER = "controllers/highway_planner.toml"
#: Decisions before a collision that count as "pre-collision" frames for the detection AUROC.
PRE_COLLISION_STEPS = 2
TTC_THRESHOLD_S = 1.0

CERTIFICATE_NOTE = ("A controller that updates its weights at test time is not the controller a certificate was "
                    "computed for: no certificate applies to these runs, and safetybed certify refuses an adapting "
                    "planner (why: safetybed.certify.pipeline).")

ProgressFn = Callable[[str, int, int], None]


def prepare_scenario(spec: ScenarioSpec) -> ScenarioSpec:
    """``spec`` on the batched backend with the per-step log on (where the planner's entropy is stored)."""
    return spec.model_copy(update={"backend": "batched",
                                   "metrics": spec.metrics.model_copy(update={"per_step_log": True})})


def _decisions(record: EpisodeRecord) -> list[dict[str, Any]]:
    return [step.get("controller") or {} for step in (record.steps or [])]


def episode_composite(record: EpisodeRecord, spec: ScenarioSpec) -> float:
    """``NC x (5 TTC + 5 EP) / 10`` of one episode (module docstring)."""
    if record.collision:
        return 0.0
    duration_s = spec.episode_steps / spec.highway.policy_frequency_hz
    ep = min(1.0, record.progress_m / (spec.highway.speed_limit_mps * duration_s))
    ttc = 1.0 if record.min_ttc_s >= TTC_THRESHOLD_S else 0.0
    return (5 * ttc + 5 * ep) / 10


def mcnemar_p(first: Sequence[bool], second: Sequence[bool]) -> float:
    """Two-sided exact McNemar test of paired binary outcomes (binomial test on the discordant pairs)."""
    only_first = sum(a and not b for a, b in zip(first, second, strict=True))
    only_second = sum(b and not a for a, b in zip(first, second, strict=True))
    if only_first + only_second == 0:
        return 1.0
    return float(stats.binomtest(only_first, only_first + only_second, 0.5).pvalue)


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(a positive scores above a negative) + P(tie) / 2 (the Mann-Whitney U statistic over n+ n-)."""
    if not positive or not negative:
        return math.nan
    u = stats.mannwhitneyu(positive, negative, alternative="two-sided").statistic
    return float(u) / (len(positive) * len(negative))


def detection(records: Sequence[EpisodeRecord], *, pre_collision_steps: int = PRE_COLLISION_STEPS,
              bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Cluster Entropy as a failure detector (module docstring); the bootstrap resamples episodes."""
    positives: list[list[float]] = []
    negatives: list[list[float]] = []
    for record in records:
        entropy = [d["entropy"] for d in _decisions(record) if "entropy" in d]
        if record.collision:
            positives.append(entropy[-pre_collision_steps:])
        else:
            negatives.append(entropy)
    pos = [h for row in positives for h in row]
    neg = [h for row in negatives for h in row]
    value = auroc(pos, neg)
    low = high = math.nan
    if positives and negatives and bootstrap > 0:
        generator = np.random.default_rng(np.random.SeedSequence(seed))
        draws = []
        for _ in range(bootstrap):
            p = [h for i in generator.integers(0, len(positives), len(positives)) for h in positives[i]]
            n = [h for i in generator.integers(0, len(negatives), len(negatives)) for h in negatives[i]]
            draws.append(auroc(p, n))
        low, high = (float(q) for q in np.nanquantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2]))
    return {"auroc": value, "auroc_ci": [low, high], "pre_collision_frames": len(pos), "normal_frames": len(neg),
            "collided_episodes": len(positives), "pre_collision_steps": pre_collision_steps,
            "mean_entropy_pre_collision": float(np.mean(pos)) if pos else math.nan,
            "mean_entropy_normal": float(np.mean(neg)) if neg else math.nan}


def method_row(records: list[EpisodeRecord], spec: ScenarioSpec, *, confidence: float = 0.95) -> dict[str, Any]:
    """The table row of one (scenario, method) run (module docstring)."""
    n = len(records)
    collisions = sum(r.collision for r in records)
    ci = clopper_pearson(collisions, n, confidence)
    cap = spec.metrics.ttc_cap_s
    composite = np.array([episode_composite(r, spec) for r in records])
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * composite.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    decisions = [d for r in records for d in _decisions(r)]
    return {"episodes": n, "collisions": collisions, "collision_rate": collisions / n,
            "collision_ci": [ci.low, ci.high],
            "min_ttc_s": float(np.median([min(r.min_ttc_s, cap) for r in records])),
            "min_ttc_p10_s": float(np.quantile([min(r.min_ttc_s, cap) for r in records], 0.1)),
            "progress_m": float(np.mean([r.progress_m for r in records])),
            "composite": float(composite.mean()), "composite_ci": [float(composite.mean()) - half,
                                                                   float(composite.mean()) + half],
            "decisions": len(decisions),
            "updated_decisions": float(np.mean([bool(d.get("updated")) for d in decisions])) if decisions else 0.0}


def changed_episodes(reference: list[EpisodeRecord], records: list[EpisodeRecord]) -> int:
    """Episodes (paired by index) in which the choice sequence differs from the reference's."""
    by_index = {r.index: r for r in reference}
    return sum([d.get("choice") for d in _decisions(r)] != [d.get("choice") for d in _decisions(by_index[r.index])]
               for r in records if r.index in by_index)


def measure_latency(spec: ScenarioSpec, controller: str, *, episodes: int, seed: int) -> dict[str, Any]:
    """Per-decision wall time [ms] in the deployment loop (:func:`safetybed.control.runtime.run_in_highway`)."""
    from safetybed.control import load_controller
    from safetybed.control.runtime import run_in_highway
    from safetybed.runner.seeding import episode_seed
    from safetybed.sims import make_env
    from safetybed.threads import torch_threads

    spec = spec.model_copy(update={"backend": "highway-env"})
    env = make_env(spec)
    try:
        agent = load_controller(controller, scenario=spec, observation_space=env.observation_space,
                                action_space=env.action_space)
        decision, hook = [], []
        with torch_threads(1):
            for index in range(episodes):
                run = run_in_highway(agent, env, steps=spec.episode_steps, seed=episode_seed(seed, index),
                                     adapt_hook=agent.adapt_hook)
                decision += run.decision_s[1:]  # the first decision of an episode never updates
                hook += run.hook_s[1:]
    finally:
        env.close()

    def quantiles(values: list[float]) -> dict[str, float]:
        ms = np.array(values) * 1e3
        return {"median_ms": float(np.median(ms)), "p95_ms": float(np.quantile(ms, 0.95)), "n": len(values)}

    return {"decision": quantiles(decision), "hook": quantiles(hook), "episodes": episodes,
            "backend": "highway-env", "threads": 1}


def evaluate_adaptation(scenarios: Sequence[tuple[str, ScenarioSpec, str]], *, controller_spec: str,
                        methods: Sequence[str], episodes: int, seed: int, store: RunStore, workers: int = 1,
                        latency_episodes: int = 10, confidence: float = 0.95,
                        progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run (or resume, or reuse) every (scenario, method) and return the JSON-safe document of the report.

    ``scenarios``: ``(label, spec, path)`` per suite; ``methods`` a subset of ``none``, ``centaur``, ``tent``
    (``none`` is added, every comparison is against it).
    """
    unknown = [m for m in methods if m not in ADAPT_METHODS]
    if unknown:
        raise InputError(f"--method: expected one of {', '.join(ADAPT_METHODS)}, got {unknown[0]!r}")
    if episodes < 2:
        raise InputError(f"--episodes: expected >= 2, got {episodes}")
    methods = ["none", *[m for m in dict.fromkeys(methods) if m != "none"]]
    suites: list[dict[str, Any]] = []
    pooled_none: list[list[EpisodeRecord]] = []
    for label, raw_spec, path in scenarios:
        spec = prepare_scenario(raw_spec)
        rows: dict[str, dict[str, Any]] = {}
        records: dict[str, list[EpisodeRecord]] = {}
        for method in methods:
            ref = f"adapt:{method}:{controller_spec}"
            callback = (lambda done, total, _label=f"{label} / {method}": progress(_label, done, total)) \
                if progress else None
            run_id = run_or_resume(store, spec, scenario_path=path, controller=ref, seed=seed, episodes=episodes,
                                   workers=workers, progress=callback)
            records[method] = stored_episodes(store, run_id, with_logs=True)
            rows[method] = {"method": method, "controller": ref, "run_id": run_id,
                            **method_row(records[method], spec, confidence=confidence),
                            "detection": detection(records[method], seed=seed, confidence=confidence)}
        base = rows["none"]
        pooled_none.append(records["none"])
        for method in methods[1:]:
            row = rows[method]
            row["changed_episodes"] = changed_episodes(records["none"], records[method])
            row["mcnemar_p"] = mcnemar_p([r.collision for r in records[method]],
                                         [r.collision for r in records["none"]])
            row["lowers_collisions"] = row["collision_ci"][1] < base["collision_ci"][0]
            row["raises_collisions"] = row["collision_ci"][0] > base["collision_ci"][1]
        suites.append({"label": label, "scenario": raw_spec.name, "path": path, "description": raw_spec.description,
                       "methods": [rows[m] for m in methods]})
    pooled = detection([r for records_of in pooled_none for r in records_of], seed=seed, confidence=confidence)
    latency = {}
    if latency_episodes > 0:
        first_spec = prepare_scenario(scenarios[0][1])
        for method in methods:
            if progress:
                progress(f"latency / {method}", 0, latency_episodes)
            latency[method] = measure_latency(first_spec, f"adapt:{method}:{controller_spec}",
                                              episodes=latency_episodes, seed=seed)
    document = {"kind": "adaptation", "controller_spec": controller_spec, "methods": methods, "episodes": episodes,
                "seed": seed, "confidence": confidence, "suites": suites, "detection_pooled": pooled, "latency": latency,
                "latency_scenario": scenarios[0][1].name if latency else None,
                "certificate_note": CERTIFICATE_NOTE, "package_version": __version__}
    return json_safe(document)


def resolve_suites(refs: Sequence[str]) -> list[tuple[str, ScenarioSpec, str]]:
    """``(label, spec, path)`` of each scenario argument: a suite label (``SUITES``), ``all``, a catalogue name or
    a path."""
    from safetybed.spec.catalogue import load_scenario_arg

    expanded: list[str] = []
    for ref in refs:
        expanded.extend(SUITES) if ref == "all" else expanded.append(ref)
    out = []
    for ref in dict.fromkeys(expanded):
        spec, path = load_scenario_arg(SUITES.get(ref, ref))
        if spec.simulator != "highway":
            raise InputError(f"{path}: simulator: the planner drives highway scenarios, got {spec.simulator!r}")
        label = ref if ref in SUITES else Path(str(path)).stem
        out.append((label, spec, str(path)))
    return out
