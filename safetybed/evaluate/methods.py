"""Run each crash-rate evaluation method on the known-answer cut-in testbed.

``method`` is one of :data:`METHODS`:

* ``crude`` — naturalistic (NDE) testing, crude Monte Carlo;
* ``nade`` — NADE importance sampling (surrogate row 0, epsilon = 0.1);
* ``scv`` — NADE tests post-processed with sparse control variates (the martingale, stratified and learned
  variants, 2-fold cross-fitted);
* ``d2rl`` — NADE behaviour tests train the D2RL epsilon policy (PPO on critical steps of crash tests), then new
  tests run under it (the training tests are reported separately as ``training_tests``);
* ``adate`` — AdaTE batches (surrogate-combination QP + dense target + gap-driven policy), all batches pooled.

All randomness comes from ``numpy.random.SeedSequence(seed)``: one child stream per purpose, so a method's tests
are a pure function of (seed, method, options).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from safetybed.evaluate.estimators import EstimateResult, EstimatorInputError
from safetybed.evaluate.registry import METHODS as REGISTRY
from safetybed.evaluate.registry import SCV_VARIANTS  # noqa: F401 (re-exported: the rows scv reports)
from safetybed.evaluate.testbed import CutInTables, TestBatch

#: Method names in registry (and seeding) order.
METHODS = tuple(REGISTRY)


@dataclass
class MethodRun:
    """The tests one method ran and the estimates computed from them."""

    method: str
    results: list[EstimateResult]
    batch: TestBatch
    training_tests: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def tests(self) -> int:
        return self.batch.n

    def primary(self) -> EstimateResult:
        return self.results[0]


def estimates_for(method: str, batch: TestBatch, *, confidence: float) -> list[EstimateResult]:
    """The estimates a method reports from its tests (SCV: one per variant, martingale first)."""
    return REGISTRY[method].estimates(batch, confidence=confidence)


def run_testbed_method(tables: CutInTables, method: str, *, tests: int, seed: int, confidence: float = 0.9,
                       d2rl_behaviour_tests: int = 20_000, d2rl_iterations: int = 40, adate_batches: int = 5,
                       progress=None) -> MethodRun:
    """Run ``tests`` tests of ``method`` on the testbed and estimate the crash probability."""
    if method not in REGISTRY:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    streams = np.random.SeedSequence(seed).spawn(2)
    batch, training, info = REGISTRY[method].run_testbed(
        tables, tests=tests, test_rng=np.random.default_rng(streams[0]), seed_stream=streams[1],
        confidence=confidence, progress=progress,
        options={"d2rl_behaviour_tests": d2rl_behaviour_tests, "d2rl_iterations": d2rl_iterations,
                 "adate_batches": adate_batches})
    return MethodRun(method=method, results=estimates_for(method, batch, confidence=confidence), batch=batch,
                     training_tests=training, info=info)


@dataclass
class CoverageRow:
    """Coverage of one method over independent repetitions on the testbed."""

    method: str
    repetitions: int
    tests_per_repetition: int
    covered: int
    estimates: list[float]
    rhws: list[float | None]
    failures: int = 0  # repetitions whose estimator refused the data (e.g. no crash)

    @property
    def coverage(self) -> float:
        return self.covered / max(self.repetitions, 1)

    def to_json(self, exact: float) -> dict[str, Any]:
        estimates = np.array(self.estimates)
        sem = float(estimates.std(ddof=1) / np.sqrt(estimates.size)) if estimates.size > 1 else float("nan")
        rhws = [r for r in self.rhws if r is not None]
        return {"method": self.method, "repetitions": self.repetitions, "tests_per_repetition":
                self.tests_per_repetition, "covered": self.covered, "coverage": self.coverage,
                "failures": self.failures, "mean_estimate": float(estimates.mean()) if estimates.size else None,
                "bias_z": float((estimates.mean() - exact) / sem) if estimates.size > 1 and sem > 0 else None,
                "median_rhw": float(np.median(rhws)) if rhws else None}


def coverage_study(tables: CutInTables, *, methods: list[str], repetitions: int, tests: dict[str, int], seed: int,
                   confidence: float = 0.9, d2rl_iterations: int = 40, progress=None) -> list[CoverageRow]:
    """Repeat each method ``repetitions`` times with independent seeds; count CIs covering the exact answer.

    The D2RL policy is trained once (its own seed) and then evaluated in every repetition, as a user would deploy
    it; AdaTE runs its whole adaptive loop in every repetition (its pooled estimate is what is being checked).
    SCV contributes a row per variant (``scv-martingale``, ``scv-stratified``, ``scv-learned``).
    """
    exact = tables.exact_crash_probability
    rows: dict[str, CoverageRow] = {}
    children = np.random.SeedSequence(seed).spawn(len(methods))
    for method, child in zip(methods, children, strict=True):
        rep_seeds = child.spawn(repetitions + 1)
        entry = REGISTRY[method]
        policy = None
        if hasattr(entry, "train_testbed"):  # a trained proposal: trained once, deployed in every repetition
            policy, _, _ = entry.train_testbed(tables, seed_stream=rep_seeds[-1], behaviour_tests=20_000,
                                               iterations=d2rl_iterations)
        for rep in range(repetitions):
            rep_seed = int(rep_seeds[rep].generate_state(1)[0])
            if policy is not None:
                from safetybed.sims.testing.d2rl_proposal import D2RLProposal

                batch = tables.run(tests[method], rng=np.random.default_rng(rep_seed),
                                   table=tables.tabulate(D2RLProposal(policy=policy)))
                run = MethodRun(method=method, results=[], batch=batch)
                try:
                    run.results = estimates_for(method, batch, confidence=confidence)
                except EstimatorInputError:
                    run.results = []
            else:
                try:
                    run = run_testbed_method(tables, method, tests=tests[method], seed=rep_seed,
                                             confidence=confidence)
                except EstimatorInputError:
                    run = None
            for k, name in enumerate(entry.rows):
                row = rows.setdefault(name, CoverageRow(method=name, repetitions=0,
                                                        tests_per_repetition=tests[method], covered=0,
                                                        estimates=[], rhws=[]))
                row.repetitions += 1
                if run is None or len(run.results) <= k:
                    row.failures += 1
                    continue
                result = run.results[k]
                low, high = result.ci if result.ci is not None else (0.0, 0.0)
                row.covered += int(low <= exact <= high)
                row.estimates.append(result.estimate)
                row.rhws.append(result.rhw)
            if progress is not None:
                progress(method, rep + 1, repetitions)
    return list(rows.values())
