"""Statistical faithfulness: episodes of the two backends are indistinguishable (issue 13's statistical check).

:func:`compare_backends` runs ``episodes`` episodes of a scenario on the highway-env backend (run seed
``seed``) and as many on the batched backend (run seed ``seed + 1``: independent samples, so the tests below
are genuine two-sample tests, not a comparison of the same episodes), in float64 (the runner's batched path)
and in float32 (the fast path). For each per-episode metric it reports a two-sample test and its p-value:

=================== =====================================================================================
metric              test
=================== =====================================================================================
collision rate      Fisher's exact test on the 2 x 2 table of collided / not collided episodes
mean return         Welch's t-test (unequal variances)
min TTC             two-sample Kolmogorov-Smirnov on ``min(min_ttc_s, metrics.ttc_cap_s)`` (``inf`` capped)
progress            Welch's t-test on ``progress_m``
=================== =====================================================================================

A row "holds" when every p-value is at least ``alpha / number_of_tests`` (Bonferroni over the whole table), so
the table's family-wise false-alarm rate is at most ``alpha`` when the backends agree.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from scipy import stats

from safetybed.runner.episode import EpisodeTask
from safetybed.runner.executors import EpisodeFailure, run_local
from safetybed.runner.seeding import episode_seed
from safetybed.spec import ScenarioSpec

METRICS = ("collision", "episode_return", "min_ttc_s", "progress_m")


def _sample(records, *, ttc_cap_s: float) -> dict[str, np.ndarray]:
    return {"collision": np.array([r.collision for r in records], dtype=bool),
            "episode_return": np.array([r.episode_return for r in records]),
            "min_ttc_s": np.minimum(np.array([r.min_ttc_s for r in records]), ttc_cap_s),
            "progress_m": np.array([r.progress_m for r in records])}


def _tests(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    table = np.array([[reference["collision"].sum(), (~reference["collision"]).sum()],
                      [candidate["collision"].sum(), (~candidate["collision"]).sum()]])
    rows = {"collision": {"reference": float(reference["collision"].mean()),
                          "batched": float(candidate["collision"].mean()),
                          "test": "fisher_exact", "p_value": float(stats.fisher_exact(table).pvalue)}}
    for name, test in (("episode_return", "welch_t"), ("min_ttc_s", "ks_2samp"), ("progress_m", "welch_t")):
        a, b = reference[name], candidate[name]
        if test == "welch_t":
            p = 1.0 if np.ptp(a) == 0 and np.ptp(b) == 0 and a[0] == b[0] else float(
                stats.ttest_ind(a, b, equal_var=False).pvalue)
        else:
            p = float(stats.ks_2samp(a, b).pvalue)
        rows[name] = {"reference": float(a.mean()), "batched": float(b.mean()), "test": test,
                      "p_value": p if math.isfinite(p) else 1.0}
    return rows


def compare_backends(spec: ScenarioSpec, controller: str, *, episodes: int, seed: int = 0, workers: int = 1,
                     alpha: float = 0.05, batched_spec: ScenarioSpec | None = None, progress=None) -> dict[str, Any]:
    """Two-sample tests of the highway-env backend against the batched one (module docstring); a JSON-able dict.

    ``batched_spec`` (default ``spec``) runs on the batched side instead: a negative control (a changed scenario must
    be told apart) for tests.
    """
    from safetybed.control import load_controller
    from safetybed.runner.episode import _env_and_controller
    from safetybed.sims.batched.rollout import batched_rollouts
    from safetybed.threads import torch_threads

    reference_spec = spec.model_copy(update={"backend": "highway-env"})
    started = time.perf_counter()
    tasks = [EpisodeTask(reference_spec.model_dump_json(), controller, seed, i) for i in range(episodes)]
    reference_records = []
    for outcome in run_local(tasks, workers=workers):
        if isinstance(outcome, EpisodeFailure):
            raise RuntimeError(f"highway-env episode {outcome.index} failed: {outcome.error}")
        reference_records.append(outcome)
        if progress is not None:
            progress(len(reference_records), 2 * episodes)
    reference_s = time.perf_counter() - started
    env, _ = _env_and_controller(reference_spec.model_dump_json(), controller)

    def make_controller():
        return load_controller(controller, scenario=spec, observation_space=env.observation_space,
                               action_space=env.action_space)

    seeds = [episode_seed(seed + 1, i) for i in range(episodes)]
    cap = spec.metrics.ttc_cap_s
    reference = _sample(reference_records, ttc_cap_s=cap)
    rows = []
    for dtype in (torch.float64, torch.float32):
        began = time.perf_counter()
        with torch_threads(workers):
            records = batched_rollouts(batched_spec or spec, make_controller, seeds=seeds, indices=list(range(episodes)),
                                       dtype=dtype)
        rows.append({"dtype": str(dtype).removeprefix("torch."), "wall_time_s": time.perf_counter() - began,
                     "tests": _tests(reference, _sample(records, ttc_cap_s=cap))})
        if progress is not None:
            progress(episodes * (1 + len(rows)) // 1, 2 * episodes)
    count = sum(len(row["tests"]) for row in rows)
    threshold = alpha / count
    for row in rows:
        row["holds"] = all(test["p_value"] >= threshold for test in row["tests"].values())
    return {"scenario": spec.name, "controller": controller, "episodes_per_backend": episodes, "seed": seed,
            "alpha": alpha, "bonferroni_threshold": threshold, "reference_wall_time_s": reference_s,
            "rows": rows, "holds": all(row["holds"] for row in rows)}


__all__ = ["METRICS", "compare_backends"]
