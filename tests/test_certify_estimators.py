"""Policy-smoothing certificate estimators: pinned reference values, properties and coverage.

Reference values were computed independently of ``safetybed`` and of scipy, with mpmath 1.3.0 at 40 significant
digits, by the plain implementation in the ``_mp_*`` helpers below:

* ``Phi = mpmath.ncdf``, ``Phi^-1(p) = sqrt(2) * mpmath.erfinv(2p - 1)``;
* the Clopper-Pearson lower limit ``CP(k, n, a)`` as the root ``x`` of ``P[Binomial(n, x) >= k] = a``, the tail
  being the exact finite sum ``sum_{j>=k} C(n,j) x^j (1-x)^(n-j)``, found by 120 bisection steps (so no
  incomplete-beta code is shared with the implementation, which uses ``scipy.stats.beta.ppf``);
* the estimators written out as loops over thresholds, exactly as in the research notes
  (``shared/research/policy_smoothing.md`` §1(c)).

The literals are pinned to 1e-6; ``test_pins_reproduce_with_mpmath`` re-derives them from the helpers (the
n = 10^4 binary case takes ~20 s and is marked slow).
"""

from __future__ import annotations

import dataclasses
import doctest
import math

import mpmath
import numpy as np
import pytest
from scipy import integrate, stats

from safetybed.certify import estimators
from safetybed.certify.estimators import (
    binary_bound,
    certified_curve,
    expectation_bound_dkw,
    expectation_bound_integer,
    gaussian_shift,
    percentile_bound,
)

PIN_TOL = 1e-6
# Statistical tests: a valid (1 - CERT_ALPHA) certificate fails in at most CERT_ALPHA of repetitions, so the
# number of failures is stochastically below Binomial(R, CERT_ALPHA); the test fails only above that
# distribution's (1 - ALPHA) quantile. With a fixed seed every outcome reproduces.
ALPHA = 1e-3
CERT_ALPHA = 0.1
SEED = 20220425


# -- independent mpmath reference (see module docstring) ----------------------------------------------------------
def _mp_phi_inv(p):
    p = mpmath.mpf(p)
    if p <= 0:
        return -mpmath.inf
    if p >= 1:
        return mpmath.inf
    return mpmath.sqrt(2) * mpmath.erfinv(2 * p - 1)


def _mp_shift(p, s):
    if p <= 0:
        return mpmath.mpf(0)
    if p >= 1:
        return mpmath.mpf(1)
    return mpmath.ncdf(_mp_phi_inv(p) - s)


def _mp_binom_sf(k, n, x):
    return mpmath.fsum(mpmath.binomial(n, j) * x**j * (1 - x) ** (n - j) for j in range(k, n + 1))


def _mp_cp_lower(k, n, a):
    if k == 0:
        return mpmath.mpf(0)
    lo, hi = mpmath.mpf(0), mpmath.mpf(1)
    for _ in range(120):
        mid = (lo + hi) / 2
        if _mp_binom_sf(k, n, mid) < a:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _mp_integer(returns, sigma, budget, r_max, alpha):
    n, a, s = len(returns), mpmath.mpf(alpha) / r_max, mpmath.mpf(budget) / mpmath.mpf(sigma)
    counts = {value: list(returns).count(value) for value in set(returns)}
    cache = {}
    total = mpmath.mpf(0)
    for i in range(r_max):
        k = sum(count for value, count in counts.items() if value > i)
        if k not in cache:  # thresholds with the same count share one term
            cache[k] = _mp_shift(_mp_cp_lower(k, n, a), s)
        total += cache[k]
    return total


def _mp_dkw(returns, sigma, budget, alpha, r_min):
    n, s = len(returns), mpmath.mpf(budget) / mpmath.mpf(sigma)
    eps = mpmath.sqrt(mpmath.log(2 / mpmath.mpf(alpha)) / (2 * n))
    total = last = mpmath.mpf(r_min)
    counts = {value: list(returns).count(value) for value in set(returns)}
    for v in sorted(counts):
        tail = mpmath.mpf(sum(count for value, count in counts.items() if value >= v)) / n
        total += (mpmath.mpf(v) - last) * _mp_shift(max(tail - eps, 0), s)
        last = mpmath.mpf(v)
    return total


def _mp_percentile(returns, sigma, budget, alpha, p, correction):
    n = len(returns)
    level = mpmath.ncdf(_mp_phi_inv(mpmath.mpf(p)) - mpmath.mpf(budget) / mpmath.mpf(sigma))
    if correction == "dkw":
        k = max(int(mpmath.ceil(n * (level - mpmath.sqrt(mpmath.log(1 / mpmath.mpf(alpha)) / (2 * n))))), 0)
    else:
        k = max([kk for kk in range(1, n + 1) if _mp_binom_sf(kk, n, level) >= 1 - mpmath.mpf(alpha)], default=0)
    return level, k, (sorted(returns)[k - 1] if k else -math.inf)


# -- pinned inputs and values (mpmath, 40 digits; printed to 17 significant digits) -------------------------------
CARTPOLE_BUDGETS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# Perfect CartPole-v0 agent: 10^4 returns of 200, r_max = 200, alpha = 0.05 (research notes §1(d), table 2).
# Every threshold has k = n, so CP = (0.05/200)^(1/10^4) = 0.99917093889721365 (closed form and bisection agree).
CARTPOLE_INTEGER = {
    0.2: (199.83418777944273, 196.80858368355409, 174.79913124145116, 111.56713135174879, 39.281919080797501,
          6.3665384297691303),
    0.4: (199.83418777944273, 199.18425873922316, 196.80858368355409, 190.0129976385116, 174.79913124145116,
          148.13864664419349),
    0.6: (199.83418777944273, 199.50788565743289, 198.68181233555259, 196.80858368355409, 193.00370925345218,
          186.08108787137777),
    1.0: (199.83418777944273, 199.6775502561956, 199.39578300552934, 198.90873659408771, 198.09976097800751,
          196.80858368355409),
}
# The one-decimal values published in the research notes §1(d) table 2 ([derived] there, by another script).
CARTPOLE_PUBLISHED = {
    0.2: (199.8, 196.8, 174.8, 111.6, 39.3, 6.4),
    0.4: (199.8, 199.2, 196.8, 190.0, 174.8, 148.1),
    0.6: (199.8, 199.5, 198.7, 196.8, 193.0, 186.1),
    1.0: (199.8, 199.7, 199.4, 198.9, 198.1, 196.8),
}
# Same perfect agent, DKW estimator (two-sided eps = sqrt(ln 40 / 20000)), sigma = 0.2, r_min = 0.
CARTPOLE_DKW = (197.28379696851876, 177.34068147150456, 116.56933206203394, 42.904981883175888, 7.332239969882078,
                0.52574918799283574)
CARTPOLE_DKW_PUBLISHED = (197.3, 177.3, 116.6, 42.9, 7.3, 0.5)  # research notes §1(d), below table 2

# Binary: p_hat = 0.9, n = 10^4, sigma = 0.1, alpha = 0.05 (research notes §1(d)).
BINARY_BUDGETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4)
BINARY_9000 = (0.89492888341276975, 0.77432744889457788, 0.59993328786550108, 0.22758442956751671,
               0.040333799929305589, 0.003008756437799963)
BINARY_PUBLISHED = (0.895, 0.774, 0.600, 0.228, 0.040, 0.003)

# Small cases: (successes, n, sigma, budget, alpha) -> bound.
BINARY_SMALL = {
    (7, 10, 0.5, 0.3, 0.05): 0.19200507061793028,
    (0, 10, 0.5, 0.3, 0.05): 0.0,
    (10, 10, 0.5, 0.5, 0.05): 0.36198679445582976,  # Phi(Phi^-1(0.05^(1/10)) - 1)
    (37, 50, 0.25, 0.0, 0.01): 0.57049228151215892,
}

# DKW with negative returns: n = 10, sigma = 0.5, alpha = 0.1, budgets 0 / 0.25 / 0.5.
DKW_RETURNS = (-2.5, -1.0, -1.0, 0.0, 0.5, 2.0, 2.0, 2.0, 3.5, 4.0)
DKW_BUDGETS = (0.0, 0.25, 0.5)
DKW_PINNED = {
    -3.0: (-1.3351137801024747, -2.0362451014016912, -2.5241873828808821),  # r_min below every return
    -2.5: (-1.1416024020922272, -1.7440938563554299, -2.1431623206166338),  # r_min equal to the smallest
}
# All-negative returns, r_min = -10, sigma = 1, alpha = 0.2, budgets 0 / 0.3.
DKW_NEGATIVE_RETURNS = (-7.0, -5.5, -5.5, -4.0, -1.0)
DKW_NEGATIVE_PINNED = (-7.9593366604846365, -8.4633282810498249)

# Integer: r_max = 5, sigma = 1, alpha = 0.05, budgets 0 / 0.5 / 1; and r_max = 6 above every return.
INTEGER_RETURNS = (5, 5, 4, 5, 3, 5, 5, 2, 5, 0, 5, 4)
INTEGER_PINNED = (2.1962696701699558, 1.3235872535579928, 0.67088977789758425)
INTEGER_SPARSE_RETURNS = (0, 1, 1, 2, 3)  # r_max = 6, sigma = 0.5, alpha = 0.1, budgets 0 / 0.25
INTEGER_SPARSE_PINNED = (0.30032069026984113, 0.13668024884186135)

# Percentile: n = 20 returns, sigma = 1, alpha = 0.1. Key (correction, p, budget) -> (shifted level, k, bound).
PERCENTILE_RETURNS = (-3.2, -1.5, 0.4, -0.7, 2.2, 1.1, -2.4, 0.9, 3.3, -0.1, 1.8, 0.0, -1.1, 2.7, 0.6, -4.0, 1.4,
                      0.2, -0.3, 2.9)
PERCENTILE_PINNED = {
    ("dkw", 0.5, 0.0): (0.5, 6, -0.7),
    ("dkw", 0.5, 0.2): (0.42074029056089697, 4, -1.5),
    ("dkw", 0.5, 0.5): (0.3085375387259869, 2, -3.2),
    ("dkw", 0.5, 1.0): (0.15865525393145705, 0, -math.inf),  # level - c < 0: nothing certified
    ("dkw", 0.9, 0.0): (0.9, 14, 1.1),
    ("dkw", 0.9, 0.2): (0.86027408198812563, 13, 0.9),
    ("dkw", 0.9, 0.5): (0.78276091957269484, 11, 0.4),
    ("dkw", 0.9, 1.0): (0.61085630835463908, 8, -0.1),
    ("binomial", 0.5, 0.0): (0.5, 7, -0.3),
    ("binomial", 0.5, 0.2): (0.42074029056089697, 6, -0.7),
    ("binomial", 0.5, 0.5): (0.3085375387259869, 4, -1.5),
    ("binomial", 0.5, 1.0): (0.15865525393145705, 1, -4.0),
    ("binomial", 0.9, 0.0): (0.9, 16, 1.8),
    ("binomial", 0.9, 0.2): (0.86027408198812563, 15, 1.4),
    ("binomial", 0.9, 0.5): (0.78276091957269484, 13, 0.9),
    ("binomial", 0.9, 1.0): (0.61085630835463908, 9, 0.0),
}


# -- pinned values ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", sorted(CARTPOLE_INTEGER))
def test_perfect_cartpole_integer_matches_reference_and_published(sigma):
    returns = np.full(10_000, 200)
    for budget, pinned, published in zip(CARTPOLE_BUDGETS, CARTPOLE_INTEGER[sigma], CARTPOLE_PUBLISHED[sigma],
                                         strict=True):
        result = expectation_bound_integer(returns, sigma=sigma, budget=budget, r_max=200, alpha=0.05)
        assert result.bound == pytest.approx(pinned, abs=PIN_TOL)
        assert round(result.bound, 1) == published
        assert result.estimate == 200.0 and result.n == 10_000 and result.alpha_per_threshold == 0.05 / 200


def test_perfect_cartpole_dkw_matches_reference_and_published():
    returns = np.full(10_000, 200.0)
    for budget, pinned, published in zip(CARTPOLE_BUDGETS, CARTPOLE_DKW, CARTPOLE_DKW_PUBLISHED, strict=True):
        result = expectation_bound_dkw(returns, sigma=0.2, budget=budget, alpha=0.05, r_min=0.0)
        assert result.bound == pytest.approx(pinned, abs=PIN_TOL)
        assert round(result.bound, 1) == published
    assert result.epsilon == pytest.approx(0.01358, abs=5e-6)  # research notes §1(c)(i): 0.01358 for n = 10^4


def test_binary_matches_reference_and_published():
    for budget, pinned, published in zip(BINARY_BUDGETS, BINARY_9000, BINARY_PUBLISHED, strict=True):
        result = binary_bound(9_000, 10_000, sigma=0.1, budget=budget, alpha=0.05)
        assert result.bound == pytest.approx(pinned, abs=PIN_TOL)
        assert round(result.bound, 3) == published
        assert result.clean_lower_bound == pytest.approx(BINARY_9000[0], abs=PIN_TOL)
        assert result.estimate == 0.9


@pytest.mark.parametrize(("case", "pinned"), BINARY_SMALL.items())
def test_binary_small_cases(case, pinned):
    successes, n, sigma, budget, alpha = case
    assert binary_bound(successes, n, sigma=sigma, budget=budget, alpha=alpha).bound == pytest.approx(pinned,
                                                                                                      abs=PIN_TOL)


@pytest.mark.parametrize("r_min", sorted(DKW_PINNED))
def test_dkw_negative_returns(r_min):
    for budget, pinned in zip(DKW_BUDGETS, DKW_PINNED[r_min], strict=True):
        result = expectation_bound_dkw(DKW_RETURNS, sigma=0.5, budget=budget, alpha=0.1, r_min=r_min)
        assert result.bound == pytest.approx(pinned, abs=PIN_TOL)
        assert result.estimate == pytest.approx(0.95) and result.r_min == r_min


def test_dkw_all_negative_returns():
    for budget, pinned in zip((0.0, 0.3), DKW_NEGATIVE_PINNED, strict=True):
        result = expectation_bound_dkw(DKW_NEGATIVE_RETURNS, sigma=1.0, budget=budget, alpha=0.2, r_min=-10.0)
        assert result.bound == pytest.approx(pinned, abs=PIN_TOL)


def test_integer_small_cases():
    for budget, pinned in zip((0.0, 0.5, 1.0), INTEGER_PINNED, strict=True):
        result = expectation_bound_integer(INTEGER_RETURNS, sigma=1.0, budget=budget, r_max=5, alpha=0.05)
        assert result.bound == pytest.approx(pinned, abs=PIN_TOL)
    for budget, pinned in zip((0.0, 0.25), INTEGER_SPARSE_PINNED, strict=True):
        result = expectation_bound_integer(INTEGER_SPARSE_RETURNS, sigma=0.5, budget=budget, r_max=6, alpha=0.1)
        assert result.bound == pytest.approx(pinned, abs=PIN_TOL)
        assert result.tail_lower_bounds[3:] == (0.0, 0.0, 0.0)  # no return exceeds 3


@pytest.mark.parametrize(("key", "pinned"), PERCENTILE_PINNED.items(), ids=str)
def test_percentile_small_cases(key, pinned):
    correction, p, budget = key
    level, order_index, bound = pinned
    result = percentile_bound(PERCENTILE_RETURNS, sigma=1.0, budget=budget, alpha=0.1, p=p, correction=correction)
    assert result.shifted_level == pytest.approx(level, abs=1e-12)
    assert result.order_index == order_index
    assert result.bound == pytest.approx(bound, abs=PIN_TOL) if order_index else result.bound == -math.inf
    assert result.certified == (order_index > 0)
    with_floor = percentile_bound(PERCENTILE_RETURNS, sigma=1.0, budget=budget, alpha=0.1, p=p,
                                  correction=correction, r_min=-5.0)
    assert with_floor.bound == (bound if order_index else -5.0)


def _recompute_pins(include_large_binary: bool):
    mpmath.mp.dps = 40
    try:
        for sigma, pinned in CARTPOLE_INTEGER.items():
            for budget, value in zip(CARTPOLE_BUDGETS, pinned, strict=True):
                assert float(_mp_integer([200] * 10_000, sigma, budget, 200, 0.05)) == pytest.approx(value, abs=1e-9)
        for budget, value in zip(CARTPOLE_BUDGETS, CARTPOLE_DKW, strict=True):
            assert float(_mp_dkw([200] * 10_000, 0.2, budget, 0.05, 0)) == pytest.approx(value, abs=1e-9)
        for (k, n, sigma, budget, alpha), value in BINARY_SMALL.items():
            bound = _mp_shift(_mp_cp_lower(k, n, mpmath.mpf(alpha)), mpmath.mpf(budget) / mpmath.mpf(sigma))
            assert float(bound) == pytest.approx(value, abs=1e-12)
        for r_min, pinned in DKW_PINNED.items():
            for budget, value in zip(DKW_BUDGETS, pinned, strict=True):
                assert float(_mp_dkw(DKW_RETURNS, 0.5, budget, 0.1, r_min)) == pytest.approx(value, abs=1e-12)
        for budget, value in zip((0.0, 0.3), DKW_NEGATIVE_PINNED, strict=True):
            assert float(_mp_dkw(DKW_NEGATIVE_RETURNS, 1.0, budget, 0.2, -10)) == pytest.approx(value, abs=1e-12)
        for budget, value in zip((0.0, 0.5, 1.0), INTEGER_PINNED, strict=True):
            assert float(_mp_integer(INTEGER_RETURNS, 1.0, budget, 5, 0.05)) == pytest.approx(value, abs=1e-12)
        for budget, value in zip((0.0, 0.25), INTEGER_SPARSE_PINNED, strict=True):
            assert float(_mp_integer(INTEGER_SPARSE_RETURNS, 0.5, budget, 6, 0.1)) == pytest.approx(value, abs=1e-12)
        for (correction, p, budget), (level, k, bound) in PERCENTILE_PINNED.items():
            mp_level, mp_k, mp_bound = _mp_percentile(PERCENTILE_RETURNS, 1.0, budget, 0.1, p, correction)
            assert (float(mp_level), mp_k, mp_bound) == (pytest.approx(level, abs=1e-15), k, bound)
        if include_large_binary:
            lower = _mp_cp_lower(9_000, 10_000, mpmath.mpf("0.05"))
            for budget, value in zip(BINARY_BUDGETS, BINARY_9000, strict=True):
                shifted = _mp_shift(lower, mpmath.mpf(budget) / mpmath.mpf("0.1"))
                assert float(shifted) == pytest.approx(value, abs=1e-12)
    finally:
        mpmath.mp.dps = 15


def test_pins_reproduce_with_mpmath():
    _recompute_pins(include_large_binary=False)


@pytest.mark.slow
def test_pins_reproduce_with_mpmath_large_binary():
    _recompute_pins(include_large_binary=True)


def test_docstring_examples():
    failures, attempted = doctest.testmod(estimators, verbose=False)
    assert attempted > 0 and failures == 0


# -- properties ---------------------------------------------------------------------------------------------------
BUDGET_GRID = np.linspace(0.0, 2.0, 21)


def _random_inputs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    real_returns = rng.normal(rng.normal(0, 5), rng.uniform(0.1, 5), size=n)
    r_max = int(rng.integers(1, 30))
    integer_returns = rng.binomial(r_max, rng.uniform(), size=n)
    successes = int(rng.integers(0, n + 1))
    sigma, alpha = float(rng.uniform(0.05, 2.0)), float(rng.uniform(0.001, 0.5))
    return n, real_returns, r_max, integer_returns, successes, sigma, alpha


@pytest.mark.parametrize("seed", range(20))
def test_bounds_are_valid_at_zero_budget_and_monotone_in_budget(seed):
    n, real_returns, r_max, integer_returns, successes, sigma, alpha = _random_inputs(seed)
    r_min = float(real_returns.min()) - 1.0
    curves = {
        "dkw": certified_curve(expectation_bound_dkw, real_returns, sigma=sigma, alpha=alpha, r_min=r_min,
                               budgets=BUDGET_GRID),
        "integer": certified_curve(expectation_bound_integer, integer_returns, sigma=sigma, r_max=r_max, alpha=alpha,
                                   budgets=BUDGET_GRID),
        "binary": certified_curve(binary_bound, successes, n, sigma=sigma, alpha=alpha, budgets=BUDGET_GRID),
        "percentile-dkw": certified_curve(percentile_bound, real_returns, sigma=sigma, alpha=alpha, p=0.3,
                                          r_min=r_min, budgets=BUDGET_GRID),
        "percentile-binomial": certified_curve(percentile_bound, real_returns, sigma=sigma, alpha=alpha, p=0.3,
                                               correction="binomial", r_min=r_min, budgets=BUDGET_GRID),
    }
    for name, curve in curves.items():
        bounds = np.array(curve.bounds)
        assert not np.isnan(bounds).any(), name
        assert curve.results[0].bound <= curve.results[0].estimate + 1e-12, name  # a lower confidence bound
        assert np.all(np.diff(bounds) <= 1e-12), name  # non-increasing in the budget
    assert np.all(np.array(curves["binary"].bounds) >= 0) and np.all(np.array(curves["binary"].bounds) <= 1)
    assert np.all(np.array(curves["dkw"].bounds) >= r_min)
    assert np.all(np.array(curves["integer"].bounds) >= 0) and np.all(np.array(curves["integer"].bounds) <= r_max)
    for name in ("percentile-dkw", "percentile-binomial"):
        assert np.all(np.array(curves[name].bounds) >= r_min)


def test_binomial_percentile_is_never_looser_than_dkw():
    rng = np.random.default_rng(SEED)
    for _ in range(50):
        returns = rng.normal(size=int(rng.integers(5, 500)))
        kwargs = dict(sigma=0.5, budget=float(rng.uniform(0, 1)), alpha=float(rng.uniform(0.01, 0.3)),
                      p=float(rng.uniform(0.05, 0.95)))
        dkw = percentile_bound(returns, correction="dkw", **kwargs)
        binomial = percentile_bound(returns, correction="binomial", **kwargs)
        assert binomial.order_index >= dkw.order_index


def test_extreme_inputs_give_no_nan():
    assert binary_bound(0, 5, sigma=1.0, budget=0.0, alpha=0.05).bound == 0.0
    assert binary_bound(5, 5, sigma=1e-3, budget=1e3, alpha=0.05).bound == 0.0
    assert expectation_bound_dkw([3.0] * 4, sigma=1.0, budget=2.0, alpha=0.05, r_min=3.0).bound == 3.0
    assert expectation_bound_integer([0] * 7, sigma=1.0, budget=0.5, r_max=10, alpha=0.05).bound == 0.0
    assert expectation_bound_integer([1], sigma=1.0, budget=1e6, r_max=1, alpha=0.5).bound == 0.0
    np.testing.assert_array_equal(gaussian_shift(np.array([0.0, 1.0, 0.5]), 3.0)[:2], [0.0, 1.0])
    assert gaussian_shift(0.5, 0.0) == 0.5


def test_result_objects_are_frozen_and_carry_their_settings():
    result = expectation_bound_integer([3, 4], sigma=0.5, budget=0.25, r_max=4, alpha=0.1)
    assert (result.n, result.alpha, result.sigma, result.budget, result.r_max) == (2, 0.1, 0.5, 0.25, 4)
    assert result.method == "expectation-integer-clopper-pearson"
    assert result.confidence_level == pytest.approx(0.9) and result.noise_to_budget_shift == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.bound = 1.0  # type: ignore[misc]


def test_certified_curve_matches_pointwise_calls():
    curve = certified_curve(expectation_bound_dkw, DKW_RETURNS, sigma=0.5, alpha=0.1, r_min=-3.0,
                            budgets=DKW_BUDGETS)
    assert curve.bounds == pytest.approx(DKW_PINNED[-3.0], abs=PIN_TOL)
    assert curve.budgets == DKW_BUDGETS and curve.method == "expectation-dkw"
    with pytest.raises(TypeError, match="budgets"):
        certified_curve(binary_bound, 1, 2, sigma=1.0, alpha=0.1, budget=0.3, budgets=[0.1])


# -- input validation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value", "expected"), [
    ("sigma", 0.0, "sigma: expected a finite number > 0, got 0.0"),
    ("sigma", -1.0, "sigma: expected"),
    ("sigma", math.nan, "sigma: expected"),
    ("budget", -0.1, "budget: expected a finite number >= 0, got -0.1"),
    ("budget", math.inf, "budget: expected"),
    ("alpha", 0.0, "alpha: expected 0 < alpha < 1, got 0.0"),
    ("alpha", 1.0, "alpha: expected"),
])
def test_common_options_are_validated(field, value, expected):
    kwargs = dict(sigma=1.0, budget=0.1, alpha=0.05) | {field: value}
    for call in (lambda: expectation_bound_dkw([1.0, 2.0], r_min=0.0, **kwargs),
                 lambda: expectation_bound_integer([1, 2], r_max=3, **kwargs),
                 lambda: binary_bound(1, 2, **kwargs),
                 lambda: percentile_bound([1.0, 2.0], p=0.5, **kwargs)):
        with pytest.raises(ValueError, match=expected.replace("(", r"\(")):
            call()


def test_bad_inputs_name_field_expected_and_given():
    common = dict(sigma=1.0, budget=0.1, alpha=0.05)
    cases = [
        (lambda: expectation_bound_dkw([1.0, -2.5], r_min=-1.0, **common), "-2.5 at index 1"),
        (lambda: expectation_bound_dkw([], r_min=0.0, **common), "returns: expected at least one"),
        (lambda: expectation_bound_dkw([[1.0]], r_min=0.0, **common), r"returns: expected a 1-D array, got shape"),
        (lambda: expectation_bound_dkw([1.0, math.nan], r_min=0.0, **common), "returns: expected finite"),
        (lambda: expectation_bound_integer([1, 2.5], r_max=3, **common), "expected integer values, got 2.5"),
        (lambda: expectation_bound_integer([1, 4], r_max=3, **common), r"\[0, r_max=3\], got 4.0 at index 1"),
        (lambda: expectation_bound_integer([-1], r_max=3, **common), r"\[0, r_max=3\], got -1.0"),
        (lambda: expectation_bound_integer([1], r_max=0, **common), "r_max: expected a positive integer, got 0"),
        (lambda: binary_bound(3, 2, **common), r"successes: expected an integer in \[0, n=2\], got 3"),
        (lambda: binary_bound(0, 0, **common), "n: expected a positive integer, got 0"),
        (lambda: percentile_bound([1.0], p=1.0, **common), "p: expected 0 < p < 1, got 1.0"),
        (lambda: percentile_bound([1.0], p=0.0, **common), "p: expected 0 < p < 1, got 0.0"),
        (lambda: percentile_bound([1.0], p=0.5, correction="cp", **common), "correction: expected"),
        (lambda: percentile_bound([1.0], p=0.5, r_min=2.0, **common), "returns: expected every return >= r_min"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(TypeError, match="successes: expected an integer, got float 1.5"):
        binary_bound(1.5, 2, **common)
    with pytest.raises(TypeError, match="sigma: expected a real number, got str"):
        binary_bound(1, 2, sigma="1", budget=0.0, alpha=0.05)


# -- coverage on problems with a known answer ---------------------------------------------------------------------
def _max_failures(repetitions: int) -> int:
    """Largest failure count a valid (1 - CERT_ALPHA) bound produces with probability >= 1 - ALPHA."""
    return int(stats.binom.ppf(1 - ALPHA, repetitions, CERT_ALPHA))


def _assert_coverage(bounds, truth, repetitions, label):
    failures = int(np.count_nonzero(np.asarray(bounds) > truth))
    assert failures <= _max_failures(repetitions), (
        f"{label}: bound > truth in {failures}/{repetitions} repetitions, allowed {_max_failures(repetitions)} "
        f"(CERT_ALPHA={CERT_ALPHA}, ALPHA={ALPHA})")
    return failures


# The one-step linear toy of research notes §1(c)/§3.3: observation o in R^4, base policy / score
# u = w.(o + delta + xi)/|w| with xi ~ N(0, sigma^2 I). Every reward below is a non-decreasing function of u, so
# the adversary that spends its whole budget along -w is worst for every threshold at once and the attacked score
# is exactly u_adv = m - B + sigma Z (m = w.o/|w|): the certificate's bound (1) holds with equality.
TOY_W = np.array([1.0, -2.0, 0.5, 2.0])
TOY_SIGMA = 0.5
TOY_MARGIN = 0.5  # m = w.o/|w|
TOY_BUDGET = 0.4
TOY_OBS = TOY_MARGIN * TOY_W / np.linalg.norm(TOY_W)


def _toy_scores(rng, shape, budget=0.0):
    """Scores u of the smoothed linear agent, clean (budget 0) or under the optimal attack delta = -B w/|w|."""
    unit = TOY_W / np.linalg.norm(TOY_W)
    noise = TOY_SIGMA * rng.standard_normal((*shape, TOY_W.size))
    return (TOY_OBS - budget * unit + noise) @ unit


def _toy_real_reward(u):
    return -1.0 + 2.0 * np.tanh(u)  # values in (-3, 1); r_min = -3


def _toy_integer_reward(u):
    return np.clip(np.floor(4.0 * u + 6.0), 0, 10)  # r_max = 10


def _toy_exact_attacked():
    """Exact values under the optimal attack, from the closed form of u_adv = m - B + sigma Z."""
    centre = TOY_MARGIN - TOY_BUDGET
    success = stats.norm.cdf(centre / TOY_SIGMA)
    real_mean = integrate.quad(lambda z: _toy_real_reward(centre + TOY_SIGMA * z) * stats.norm.pdf(z), -12, 12,
                               epsabs=1e-13)[0]
    # P[R > i] = P[4u + 6 >= i + 1] for i = 0..9, and E[R] = sum_i P[R > i].
    integer_mean = sum(stats.norm.cdf((centre - (i - 5) / 4.0) / TOY_SIGMA) for i in range(10))
    return success, real_mean, integer_mean


def test_toy_attack_matches_the_certificate_formula():
    """§3.3 step 1: the simulated optimal attack reproduces Phi(Phi^-1(p) - B/sigma) (checks sigma/B units)."""
    rng = np.random.default_rng(SEED)
    samples = 400_000
    attacked = _toy_scores(rng, (samples,), budget=TOY_BUDGET) > 0
    clean_p = stats.norm.cdf(TOY_MARGIN / TOY_SIGMA)
    expected = gaussian_shift(clean_p, TOY_BUDGET / TOY_SIGMA)
    standard_error = math.sqrt(expected * (1 - expected) / samples)
    assert abs(attacked.mean() - expected) < 4 * standard_error
    assert expected == pytest.approx(_toy_exact_attacked()[0], abs=1e-12)
    real_mean, integer_mean = _toy_exact_attacked()[1:]
    assert _toy_real_reward(_toy_scores(rng, (samples,), TOY_BUDGET)).mean() == pytest.approx(real_mean, abs=0.01)
    assert _toy_integer_reward(_toy_scores(rng, (samples,), TOY_BUDGET)).mean() == pytest.approx(integer_mean,
                                                                                                 abs=0.02)


COVERAGE_SIZES = [200, pytest.param(2000, marks=pytest.mark.slow)]


@pytest.mark.parametrize("repetitions", COVERAGE_SIZES)
def test_coverage_at_zero_budget(repetitions):
    """At B = 0 each bound is a (1 - CERT_ALPHA) lower confidence bound of the true clean quantity."""
    rng = np.random.default_rng([SEED, repetitions, 0])
    n = 60
    kwargs = dict(sigma=1.0, budget=0.0, alpha=CERT_ALPHA)

    # Bernoulli(0.3).
    successes = rng.binomial(n, 0.3, size=repetitions)
    _assert_coverage([binary_bound(int(k), n, **kwargs).bound for k in successes], 0.3, repetitions, "binary")

    # -3 + 5 X with X ~ Beta(2, 5): mean -3 + 10/7, r_min = -3; p-quantile -3 + 5 Beta.ppf(p, 2, 5).
    real = -3.0 + 5.0 * rng.beta(2.0, 5.0, size=(repetitions, n))
    _assert_coverage([expectation_bound_dkw(r, r_min=-3.0, **kwargs).bound for r in real], -3.0 + 10.0 / 7.0,
                     repetitions, "dkw")
    for p in (0.2, 0.5):
        truth = -3.0 + 5.0 * stats.beta.ppf(p, 2.0, 5.0)
        for correction in ("dkw", "binomial"):
            _assert_coverage([percentile_bound(r, p=p, correction=correction, **kwargs).bound for r in real], truth,
                             repetitions, f"percentile-{correction} p={p}")

    # Binomial(10, 0.7) returns: mean 7, r_max = 10.
    integer = rng.binomial(10, 0.7, size=(repetitions, n))
    _assert_coverage([expectation_bound_integer(r, r_max=10, **kwargs).bound for r in integer], 7.0, repetitions,
                     "integer")


@pytest.mark.parametrize("repetitions", COVERAGE_SIZES)
def test_coverage_under_the_optimal_attack(repetitions):
    """At B > 0 the certificate from clean samples of the linear toy stays below the exact attacked value."""
    rng = np.random.default_rng([SEED, repetitions, 1])
    n = 100
    kwargs = dict(sigma=TOY_SIGMA, budget=TOY_BUDGET, alpha=CERT_ALPHA)
    success, real_mean, integer_mean = _toy_exact_attacked()
    scores = _toy_scores(rng, (repetitions, n))

    binary = [binary_bound(int(k), n, **kwargs).bound for k in np.count_nonzero(scores > 0, axis=1)]
    _assert_coverage(binary, success, repetitions, "binary")
    real = _toy_real_reward(scores)
    _assert_coverage([expectation_bound_dkw(r, r_min=-3.0, **kwargs).bound for r in real], real_mean, repetitions,
                     "dkw")
    integer = _toy_integer_reward(scores)
    _assert_coverage([expectation_bound_integer(r, r_max=10, **kwargs).bound for r in integer], integer_mean,
                     repetitions, "integer")
    for p in (0.2, 0.5):
        # q_p of a non-decreasing function of u_adv = m - B + sigma Z is that function of u_adv's p-quantile.
        truth = _toy_real_reward(TOY_MARGIN - TOY_BUDGET + TOY_SIGMA * stats.norm.ppf(p))
        for correction in ("dkw", "binomial"):
            bounds = [percentile_bound(r, p=p, correction=correction, **kwargs).bound for r in real]
            _assert_coverage(bounds, truth, repetitions, f"percentile-{correction} p={p}")

    # Power: the same check rejects the uncorrected plug-in certificate Phi(Phi^-1(p_hat) - B/sigma), which
    # is tight at the population level and so exceeds the truth about half the time.
    plug_in = gaussian_shift(np.count_nonzero(scores > 0, axis=1) / n, TOY_BUDGET / TOY_SIGMA)
    assert np.count_nonzero(plug_in > success) > _max_failures(repetitions)
