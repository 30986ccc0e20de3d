"""Crash-rate evaluation of automated vehicles: naturalistic (NDE) and importance-sampled (NADE) testing.

:mod:`safetybed.evaluate.estimators` turns per-test :class:`TestRecord` logs into crash-rate estimates
(crude Monte Carlo, NADE importance sampling, sparse control variates) with confidence intervals and the
relative-half-width stopping rule (``research/cav_eval.md`` §1, §2.3, §6.4).
"""

from safetybed.evaluate.estimators import *  # noqa: F403  (the public estimator API, TestRecord included)
from safetybed.evaluate.estimators import __all__ as __all__
