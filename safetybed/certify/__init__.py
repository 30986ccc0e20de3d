"""Certificates for smoothed controllers: policy-smoothing bounds on the return under attack.

The estimators (:mod:`safetybed.certify.estimators`) are pure functions from clean episode returns to a
frozen result object whose ``bound`` holds with probability >= 1 - alpha against any adversary with the given
total l2 budget (Kumar, Levine & Feizi, ICLR 2022).
"""

from safetybed.certify.estimators import (
    BinaryBound,
    CertifiedBound,
    CertifiedCurve,
    DKWExpectationBound,
    IntegerExpectationBound,
    PercentileBound,
    binary_bound,
    certified_curve,
    clopper_pearson_lower,
    expectation_bound_dkw,
    expectation_bound_integer,
    gaussian_shift,
    percentile_bound,
)

__all__ = [
    "BinaryBound",
    "CertifiedBound",
    "CertifiedCurve",
    "DKWExpectationBound",
    "IntegerExpectationBound",
    "PercentileBound",
    "binary_bound",
    "certified_curve",
    "clopper_pearson_lower",
    "expectation_bound_dkw",
    "expectation_bound_integer",
    "gaussian_shift",
    "percentile_bound",
]
