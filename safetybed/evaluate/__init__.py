"""Crash-rate evaluation of automated vehicles: naturalistic (NDE) and importance-sampled (NADE) testing.

:mod:`safetybed.evaluate.estimators` turns per-test :class:`TestRecord` logs into crash-rate estimates
(crude Monte Carlo, NADE importance sampling, sparse control variates) with confidence intervals and the
relative-half-width stopping rule (``research/cav_eval.md`` §1, §2.3, §6.4).
"""

from safetybed.evaluate.estimators import (
    EstimateResult,
    EstimatorInputError,
    bootstrap_tests_to_rhw,
    crude_estimate,
    nade_estimate,
    rhw_curve,
    scv_estimate,
    tests_needed,
    tests_to_rhw,
)
from safetybed.evaluate.records import TestRecord

__all__ = [
    "EstimateResult",
    "EstimatorInputError",
    "TestRecord",
    "bootstrap_tests_to_rhw",
    "crude_estimate",
    "nade_estimate",
    "rhw_curve",
    "scv_estimate",
    "tests_needed",
    "tests_to_rhw",
]
