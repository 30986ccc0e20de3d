"""The efficiency report: estimate, CI and tests needed to reach a target RHW, per method.

Tests needed to reach RHW < ``target`` are given three ways (``research/cav_eval.md`` §1, §6.4):

* ``tests_needed`` — extrapolated from the per-test variance: ``n * (rhw / target)^2`` (valid for every method;
  the only affordable number for crude Monte Carlo at small crash rates, and labelled as an extrapolation);
* ``tests_to_target`` — observed: the first n after which the running RHW stays below the target (NADE notebook
  convention), ``None`` if the run never got there;
* ``bootstrap`` — the same on resampled test orders (median and 10-90 % spread; D2RL notebook).

For SCV, the running curve uses the adjusted values of the final (cross-fitted) regression.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from safetybed.evaluate.estimators import (
    EstimateResult,
    bootstrap_tests_to_rhw,
    rhw_curve,
    tests_needed,
    tests_to_rhw,
)
from safetybed.jsonsafe import finite_or_none


def method_entry(result: EstimateResult, *, tests: int, training_tests: int = 0, target: float = 0.3,
                 bootstrap_resamples: int = 200, seed: int = 0, curve_points: int = 200) -> dict[str, Any]:
    """One method's row of the report (JSON-safe), including a thinned RHW-vs-tests curve."""
    values = np.asarray(result.values, dtype=np.float64)
    entry = result.to_json()
    entry["tests"] = int(tests)
    entry["training_tests"] = int(training_tests)
    entry["target_rhw"] = target
    entry["tests_needed"] = (float(tests_needed(result, target=target)) if result.rhw is not None else None)
    entry["tests_needed_is_extrapolated"] = True
    entry["tests_to_target"] = tests_to_rhw(values, target=target, confidence=result.confidence)
    if result.details.get("caveat"):  # the estimator's own warning (scv_estimate writes them)
        entry["caveat"] = result.details["caveat"]
    if result.n_crashes > 0 and bootstrap_resamples > 0:
        boot = bootstrap_tests_to_rhw(values, target=target, resamples=bootstrap_resamples, seed=seed,
                                      confidence=result.confidence)
        entry["bootstrap"] = {key: value for key, value in boot.items() if key != "samples"}
    curve = rhw_curve(values, confidence=result.confidence)
    index = np.unique(np.geomspace(1, len(curve), num=min(curve_points, len(curve))).astype(int)) - 1
    entry["rhw_curve"] = {"tests": (index + 1).tolist(),
                          "rhw": [finite_or_none(float(curve[i])) for i in index]}
    return entry


def crude_tests_needed(mu: float, *, target: float = 0.3, confidence: float = 0.9) -> float:
    """Crude MC tests to reach RHW ``target`` at crash probability ``mu``: ``(z / target)^2 (1 - mu) / mu``.

    Crude MC's per-test variance is ``mu (1 - mu)`` (``research/cav_eval.md`` §1), so its test count follows from
    ``mu`` alone; used when crude MC itself saw too few crashes to have an RHW.
    """
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return (z / target) ** 2 * (1.0 - mu) / mu


def add_ratios(entries: list[dict[str, Any]]) -> None:
    """Add ``fewer_tests_than`` ratios (baseline tests needed / this method's) against crude and NADE.

    When crude MC has no RHW (no or too few crashes), its tests needed are extrapolated from its per-test
    variance ``mu (1 - mu)`` at the NADE estimate of ``mu`` (labelled in ``tests_needed_source``).
    """
    by_method = {entry["method"]: entry for entry in entries}
    crude, nade = by_method.get("crude"), by_method.get("nade")
    if crude is not None:
        crude["tests_needed_source"] = "crude MC's own RHW: n (rhw / target)^2"
        if not crude.get("tests_needed") and nade is not None and (nade.get("estimate") or 0) > 0:
            crude["tests_needed"] = crude_tests_needed(nade["estimate"], target=crude["target_rhw"],
                                                       confidence=crude["confidence"])
            crude["tests_needed_source"] = ("extrapolated from crude MC's per-test variance mu (1 - mu) at the "
                                            "NADE estimate of mu (crude MC saw no crash)")
    for entry in entries:
        ratios = {}
        for baseline in ("crude", "nade"):
            base = by_method.get(baseline)
            if base is None or base is entry or not base.get("tests_needed") or not entry.get("tests_needed"):
                continue
            ratios[baseline] = base["tests_needed"] / entry["tests_needed"]
        entry["fewer_tests_than"] = ratios
