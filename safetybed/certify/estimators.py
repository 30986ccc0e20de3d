"""Policy-smoothing certificates: lower confidence bounds on the return of a smoothed agent under attack.

Policy smoothing (Kumar, Levine & Feizi, ICLR 2022 [1]) adds fresh Gaussian noise ``N(0, sigma^2 I)`` to
every raw observation. For *any* adaptive adversary whose perturbations over the whole episode have total
l2 norm at most ``budget`` (``sqrt(sum_t ||delta_t||^2) <= B``), the episode return ``F`` satisfies, for
every threshold ``x``, the adaptive Neyman-Pearson bound (eq. (1) of ``shared/research/policy_smoothing.md``
§1(c); the paper's own equation numbers could not be checked, its full text was not available)::

    P[F_adv >= x]  >=  Phi( Phi^-1( P[F_clean >= x] ) - B/sigma )                      (1)

``sigma`` and ``budget`` are in the units of the raw observation the noise is added to. Each function here
turns ``n`` clean (noised, un-attacked) episode returns into a bound that holds with probability at least
``1 - alpha`` over those ``n`` episodes, for every adversary within the budget at once:

* :func:`expectation_bound_dkw`: ``E[F_adv]`` for real-valued returns (DKW band; Kumar et al. 2020 [2]);
* :func:`expectation_bound_integer`: ``E[F_adv]`` for integer returns in ``{0..r_max}`` (Clopper-Pearson per
  threshold with a Bonferroni split, as in the policy-smoothing CartPole scripts);
* :func:`binary_bound`: ``P[success]`` under attack (Clopper-Pearson; the Pong and Mountain Car cases);
* :func:`percentile_bound`: the ``p``-quantile of ``F_adv`` (order statistic at a shifted level).

All are pure functions with a scalar ``budget``; :func:`certified_curve` evaluates one over many budgets.
At ``budget = 0`` each is an ordinary ``1 - alpha`` lower confidence bound on the clean quantity.

References:
    [1] A. Kumar, A. Levine, S. Feizi. "Policy Smoothing for Provably Robust Reinforcement Learning."
        ICLR 2022, arXiv:2106.11420.
    [2] A. Kumar, A. Levine, T. Goldstein, S. Feizi. "Certifying Confidence via Randomized Smoothing."
        NeurIPS 2020, arXiv:2009.08061 (the CDF integral that turns (1) into an expectation bound).
    [3] J. Cohen, E. Rosenfeld, Z. Kolter. "Certified Adversarial Robustness via Randomized Smoothing."
        ICML 2019 (the Gaussian Neyman-Pearson shift ``Phi(Phi^-1(p) - B/sigma)``).
    [4] C. J. Clopper, E. S. Pearson. "The use of confidence or fiducial limits illustrated in the case of
        the binomial." Biometrika 26 (1934).
    [5] A. Dvoretzky, J. Kiefer, J. Wolfowitz (1956); P. Massart. "The tight constant in the
        Dvoretzky-Kiefer-Wolfowitz inequality." Annals of Probability 18 (1990).
    [6] W. Hoeffding. "Probability inequalities for sums of bounded random variables." JASA 58 (1963).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import special, stats

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


# -- result objects ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CertifiedBound:
    """Fields shared by every certificate.

    Attributes:
        bound: the certified lower bound on the attacked quantity; holds with probability >= 1 - alpha over
            the n clean episodes, against every adversary with total l2 budget <= ``budget``.
        estimate: the plain empirical value of the same quantity on the clean returns (no correction).
        n: number of clean episodes.
        alpha: the certificate fails with probability at most alpha (confidence level 1 - alpha).
        sigma: smoothing noise standard deviation, in observation units.
        budget: total l2 perturbation budget over the episode, in the same units as sigma.
        method: which estimator produced the bound.
    """

    bound: float
    estimate: float
    n: int
    alpha: float
    sigma: float
    budget: float
    method: str

    @property
    def confidence_level(self) -> float:
        """``1 - alpha``."""
        return 1.0 - self.alpha

    @property
    def noise_to_budget_shift(self) -> float:
        """``budget / sigma``: how far the Gaussian quantile is moved by the adversary in (1)."""
        return self.budget / self.sigma


@dataclass(frozen=True)
class DKWExpectationBound(CertifiedBound):
    """:func:`expectation_bound_dkw` result.

    Attributes:
        epsilon: DKW half-width ``sqrt(ln(2/alpha) / (2n))`` subtracted from the empirical tail.
        r_min: the known lower bound on any return, where the CDF integral starts.
    """

    epsilon: float
    r_min: float


@dataclass(frozen=True)
class IntegerExpectationBound(CertifiedBound):
    """:func:`expectation_bound_integer` result.

    Attributes:
        r_max: the largest possible return; returns lie in ``{0, 1, ..., r_max}``.
        alpha_per_threshold: ``alpha / r_max``, the Bonferroni share of each Clopper-Pearson bound.
        tail_lower_bounds: for ``i = 0..r_max-1``, the Clopper-Pearson lower bound on ``P[F_clean > i]``.
    """

    r_max: int
    alpha_per_threshold: float
    tail_lower_bounds: tuple[float, ...] = field(repr=False)


@dataclass(frozen=True)
class BinaryBound(CertifiedBound):
    """:func:`binary_bound` result.

    Attributes:
        successes: number of clean episodes that succeeded.
        clean_lower_bound: one-sided Clopper-Pearson lower bound on the clean success probability.
    """

    successes: int
    clean_lower_bound: float


@dataclass(frozen=True)
class PercentileBound(CertifiedBound):
    """:func:`percentile_bound` result.

    Attributes:
        p: the certified quantile level, ``0 < p < 1`` (0.5 is the median).
        shifted_level: ``Phi(Phi^-1(p) - budget/sigma)``, the clean quantile level that (1) maps to ``p``.
        correction: ``"dkw"`` (Hoeffding / one-sided DKW offset) or ``"binomial"`` (exact order statistic).
        epsilon: the offset ``sqrt(ln(1/alpha) / (2n))`` for ``"dkw"``; NaN for ``"binomial"``.
        order_index: 1-based index ``k`` of the order statistic ``X_(k)`` returned, or 0 when ``n`` episodes
            cannot certify anything at this level (then ``bound`` is ``r_min``, or ``-inf`` without one).
        r_min: the known lower bound on any return, or None.
    """

    p: float
    shifted_level: float
    correction: str
    epsilon: float
    order_index: int
    r_min: float | None

    @property
    def certified(self) -> bool:
        """Whether an order statistic was certified (False: the bound is only the trivial r_min / -inf)."""
        return self.order_index > 0


@dataclass(frozen=True)
class CertifiedCurve:
    """One estimator evaluated at many budgets (:func:`certified_curve`).

    Attributes:
        budgets: the budgets, in the order given.
        bounds: ``results[i].bound`` for each budget.
        method: the estimator's method name.
        results: the full result object at each budget.
    """

    budgets: tuple[float, ...]
    bounds: tuple[float, ...]
    method: str
    results: tuple[CertifiedBound, ...] = field(repr=False)


# -- building blocks --------------------------------------------------------------------------------------------
def gaussian_shift(probability: float | np.ndarray, shift: float) -> float | np.ndarray:
    """``Phi(Phi^-1(probability) - shift)``, the certified probability of an event after attack ([3], (1)).

    ``Phi^-1(0) = -inf`` gives 0 and ``Phi^-1(1) = +inf`` gives 1 for any finite shift, never NaN.

    >>> round(float(gaussian_shift(0.8849303297782918, 0.8)), 6)  # Phi(1.2 - 0.8) = Phi(0.4)
    0.655422
    """
    probability = np.clip(np.asarray(probability, dtype=float), 0.0, 1.0)
    if shift == 0:
        # Exact identity; skips the ndtr(ndtri(p)) round trip, which can move p by one ulp.
        return float(probability) if probability.ndim == 0 else probability
    z = special.ndtri(probability)
    # ndtri(0) = -inf and ndtri(1) = +inf; with a finite shift, ndtr maps them to exactly 0 and 1.
    shifted = special.ndtr(z - shift)
    shifted = np.where(probability <= 0.0, 0.0, np.where(probability >= 1.0, 1.0, shifted))
    return float(shifted) if shifted.ndim == 0 else shifted


def clopper_pearson_lower(successes: int | np.ndarray, n: int, alpha: float) -> float | np.ndarray:
    """One-sided ``1 - alpha`` Clopper-Pearson lower bound [4]: ``Beta.ppf(alpha, k, n - k + 1)``, 0 if k = 0.

    Equals ``statsmodels.proportion_confint(k, n, alpha=2*alpha, method="beta")[0]``, the call in the
    policy-smoothing scripts. For ``k = n`` it is ``alpha ** (1/n)``.

    >>> round(float(clopper_pearson_lower(10, 10, 0.05)), 6)  # 0.05 ** (1/10)
    0.741134
    """
    k = np.asarray(successes, dtype=float)
    # Beta.ppf is undefined at shape 0; the bound at k = 0 is 0 by definition.
    lower = np.where(k > 0, stats.beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0), 0.0)
    return float(lower) if lower.ndim == 0 else lower


# -- validation -------------------------------------------------------------------------------------------------
def _check_common(*, sigma: float, budget: float, alpha: float) -> tuple[float, float, float]:
    sigma, budget, alpha = _real("sigma", sigma), _real("budget", budget), _real("alpha", alpha)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma: expected a finite number > 0, got {sigma!r}")
    if not (math.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget: expected a finite number >= 0, got {budget!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected 0 < alpha < 1, got {alpha!r}")
    return sigma, budget, alpha


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected an integer, got bool {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")


def _returns(returns: Any) -> np.ndarray:
    try:
        values = np.asarray(returns, dtype=float)
    except (TypeError, ValueError) as error:
        raise TypeError(f"returns: expected a 1-D array of numbers, got {type(returns).__name__}") from error
    if values.ndim != 1:
        raise ValueError(f"returns: expected a 1-D array, got shape {values.shape}")
    if values.size == 0:
        raise ValueError("returns: expected at least one episode return (n >= 1), got an empty array")
    bad = ~np.isfinite(values)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(f"returns: expected finite numbers, got {float(values[index])!r} at index {index}")
    return values


def _check_r_min(values: np.ndarray, r_min: Any) -> float:
    r_min = _real("r_min", r_min)
    if not math.isfinite(r_min):
        raise ValueError(f"r_min: expected a finite number, got {r_min!r}")
    lowest = int(np.argmin(values))
    if values[lowest] < r_min:
        raise ValueError(f"returns: expected every return >= r_min = {r_min!r}, got {float(values[lowest])!r} at index "
                         f"{lowest}")
    return r_min


# -- estimators -------------------------------------------------------------------------------------------------
def expectation_bound_dkw(returns: Sequence[float] | np.ndarray, *, sigma: float, budget: float, alpha: float,
                          r_min: float) -> DKWExpectationBound:
    """Certified expected return for real-valued returns, with a DKW confidence band (Kumar et al. 2020 [2]).

    Integrating (1) over thresholds gives ``E[F_adv] >= r_min + int_{r_min}^inf Phi(Phi^-1(G(x)) - B/sigma) dx``
    with ``G(x) = P[F_clean >= x]`` ([2]; eq. (2) of the research notes §1(c)). With the distinct sorted
    returns ``r_min = v_0 < v_1 < ... < v_m`` and the empirical tail ``G_n(v) = #{R_j >= v} / n``::

        bound = r_min + sum_{j=1}^{m} (v_j - v_{j-1}) * Phi( Phi^-1( max(G_n(v_j) - eps, 0) ) - B/sigma )
        eps   = sqrt( ln(2/alpha) / (2n) )

    ``G_n(v_j) - eps`` lower-bounds ``G`` on ``(v_{j-1}, v_j]`` for all ``j`` at once with probability
    ``>= 1 - alpha`` (two-sided DKW with Massart's constant [5]); the Phi shift comes after that correction.
    This is the estimator of the policy-smoothing Freeway scripts (``freeway_plot_certs.py``), except that
    the integral starts at ``r_min`` instead of 0, so negative returns are handled.

    Args:
        returns: the ``n >= 1`` clean episode returns.
        sigma: smoothing noise standard deviation (> 0).
        budget: total l2 attack budget over the episode (>= 0), same units as sigma.
        alpha: failure probability of the certificate, 0 < alpha < 1.
        r_min: a known lower bound on every possible return; returns below it are an error.

    Example:
        >>> r = expectation_bound_dkw([1.0, 2.0, 2.0, 3.0], sigma=1.0, budget=0.0, alpha=0.5, r_min=0.0)
        >>> round(r.epsilon, 4), round(r.bound, 4), r.estimate
        (0.4163, 0.9174, 2.0)
    """
    sigma, budget, alpha = _check_common(sigma=sigma, budget=budget, alpha=alpha)
    values = _returns(returns)
    r_min = _check_r_min(values, r_min)
    n = values.size
    epsilon = math.sqrt(math.log(2.0 / alpha) / (2.0 * n))

    levels, counts = np.unique(values, return_counts=True)
    # G_n(v_j) = fraction of returns >= v_j = 1 - (number strictly below v_j)/n.
    below = np.concatenate(([0], np.cumsum(counts)[:-1]))
    tail = (n - below) / n
    widths = np.diff(np.concatenate(([r_min], levels)))
    certified_tail = gaussian_shift(np.maximum(tail - epsilon, 0.0), budget / sigma)
    bound = r_min + float(np.sum(widths * certified_tail))
    return DKWExpectationBound(bound=bound, estimate=float(values.mean()), n=n, alpha=alpha, sigma=sigma,
                               budget=budget, method="expectation-dkw", epsilon=epsilon, r_min=r_min)


def expectation_bound_integer(returns: Sequence[int] | np.ndarray, *, sigma: float, budget: float, r_max: int,
                              alpha: float) -> IntegerExpectationBound:
    """Certified expected return for integer returns in ``{0, ..., r_max}`` (policy smoothing [1], CartPole).

    ``E[F] = sum_{i=0}^{r_max-1} P[F > i]``; each tail probability is bounded below by a one-sided
    Clopper-Pearson bound [4] at level ``alpha / r_max`` (Bonferroni, so all hold together with probability
    ``>= 1 - alpha``), then shifted by (1)::

        bound = sum_{i=0}^{r_max-1} Phi( Phi^-1( CP(#{R_j > i}, n, alpha/r_max) ) - B/sigma )
        CP(k, n, a) = Beta.ppf(a, k, n - k + 1),   CP(0, n, a) = 0

    This is ``cartpole_multiframe_plot_certs.py`` / CAMP ``cert.py::cartpole_certify`` (research notes
    §1(c)(ii)), except that the ``budget = 0`` point is the corrected bound, not the plain mean.

    Args:
        returns: the ``n >= 1`` clean episode returns, integer-valued in ``[0, r_max]``.
        sigma: smoothing noise standard deviation (> 0).
        budget: total l2 attack budget over the episode (>= 0), same units as sigma.
        r_max: the largest possible return (a positive integer; 200 for CartPole-v0).
        alpha: failure probability of the certificate, 0 < alpha < 1.

    Example (a perfect CartPole-v0 agent, research notes §1(d) table 2):
        >>> r = expectation_bound_integer([200] * 10_000, sigma=0.2, budget=0.2, r_max=200, alpha=0.05)
        >>> round(r.bound, 1), r.estimate
        (196.8, 200.0)
    """
    sigma, budget, alpha = _check_common(sigma=sigma, budget=budget, alpha=alpha)
    r_max = _integer("r_max", r_max)
    if r_max < 1:
        raise ValueError(f"r_max: expected a positive integer, got {r_max}")
    values = _returns(returns)
    not_integer = values != np.round(values)
    if not_integer.any():
        index = int(np.argmax(not_integer))
        raise ValueError(f"returns: expected integer values, got {float(values[index])!r} at index {index}")
    outside = (values < 0) | (values > r_max)
    if outside.any():
        index = int(np.argmax(outside))
        raise ValueError(f"returns: expected integers in [0, r_max={r_max}], got {float(values[index])!r} at index {index}")
    n = values.size
    counts = np.bincount(values.astype(np.int64), minlength=r_max + 1)
    # above[i] = #{R_j > i} for i = 0..r_max-1.
    above = n - np.cumsum(counts)[:-1]
    alpha_per_threshold = alpha / r_max
    tail_lower = np.asarray(clopper_pearson_lower(above, n, alpha_per_threshold), dtype=float)
    bound = float(np.sum(gaussian_shift(tail_lower, budget / sigma)))
    return IntegerExpectationBound(bound=bound, estimate=float(values.mean()), n=n, alpha=alpha, sigma=sigma,
                                   budget=budget, method="expectation-integer-clopper-pearson", r_max=r_max,
                                   alpha_per_threshold=alpha_per_threshold,
                                   tail_lower_bounds=tuple(float(t) for t in tail_lower))


def binary_bound(successes: int, n: int, *, sigma: float, budget: float, alpha: float) -> BinaryBound:
    """Certified success probability of a binary outcome (policy smoothing [1]: one-round Pong, Mountain Car).

    ::

        bound = Phi( Phi^-1( CP(k, n, alpha) ) - B/sigma ),   CP(k, n, a) = Beta.ppf(a, k, n - k + 1)

    with ``CP(0, n, a) = 0`` (research notes §1(c)(iii); CAMP ``cert.py::pong_certify``).

    Args:
        successes: number ``k`` of the ``n`` clean episodes that succeeded, ``0 <= k <= n``.
        n: number of clean episodes (>= 1).
        sigma: smoothing noise standard deviation (> 0).
        budget: total l2 attack budget over the episode (>= 0), same units as sigma.
        alpha: failure probability of the certificate, 0 < alpha < 1.

    Example (research notes §1(d): p_hat = 0.9, n = 10^4, sigma = 0.1):
        >>> r = binary_bound(9_000, 10_000, sigma=0.1, budget=0.1, alpha=0.05)
        >>> round(r.clean_lower_bound, 4), round(r.bound, 3)
        (0.8949, 0.6)
    """
    sigma, budget, alpha = _check_common(sigma=sigma, budget=budget, alpha=alpha)
    n = _integer("n", n)
    successes = _integer("successes", successes)
    if n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes: expected an integer in [0, n={n}], got {successes}")
    clean_lower = float(clopper_pearson_lower(successes, n, alpha))
    bound = float(gaussian_shift(clean_lower, budget / sigma))
    return BinaryBound(bound=bound, estimate=successes / n, n=n, alpha=alpha, sigma=sigma, budget=budget,
                       method="binary-clopper-pearson", successes=successes, clean_lower_bound=clean_lower)


def percentile_bound(returns: Sequence[float] | np.ndarray, *, sigma: float, budget: float, alpha: float, p: float,
                     correction: Literal["dkw", "binomial"] = "dkw", r_min: float | None = None) -> PercentileBound:
    """Certified ``p``-quantile of the attacked return: an order statistic of the clean returns.

    With ``q_p(F) = inf{x : P[F <= x] >= p}`` (the lower quantile), applying (1) to ``{F > x}`` gives
    ``P[F_adv <= x] <= Phi(Phi^-1(P[F_clean <= x]) + B/sigma)``; hence every ``x`` below the clean quantile at
    the *shifted level* ``p' = Phi(Phi^-1(p) - B/sigma)`` has ``P[F_adv <= x] < p``, so
    ``q_p(F_adv) >= q_{p'}(F_clean)`` (research notes §1(c), "Percentile bound"; CROP's GRe bound). The
    clean quantile is then bounded below by an order statistic ``X_(k)`` (1-based, sorted ascending):

    * ``correction="dkw"`` (default, the conservative form the notes prescribe)::

          k = ceil( n * (p' - c) ),   c = sqrt( ln(1/alpha) / (2n) )

      ``c`` is subtracted *outside* ``Phi``, i.e. level ``Phi(Phi^-1(p) - B/sigma) - c``, not the optimistic
      ``Phi(Phi^-1(p - c) - B/sigma)`` of the ICML'24 S-DQN code. Valid because ``#{X_j <= q_{p'}} / n >=
      p' - c`` with probability ``>= 1 - alpha`` (Hoeffding [6] at the single point ``q_{p'}``, the one-sided
      DKW inequality [5] restricted to one point), and ``ceil`` is the largest index that event guarantees.
    * ``correction="binomial"`` (exact, never looser)::

          k = max{ k : P[Binomial(n, p') >= k] >= 1 - alpha }

      since ``X_(k) <= q_{p'}`` whenever ``#{X_j <= q_{p'}} >= k`` and that count dominates
      ``Binomial(n, p')``. This is the distribution-free order-statistic confidence bound for a quantile
      (equivalently, the Clopper-Pearson inversion).

    If no ``k >= 1`` qualifies (``n`` too small for the level), nothing is certified: ``order_index = 0`` and
    the bound is ``r_min`` when given, else ``-inf``. No interpolation between order statistics is used.
    ``estimate`` is the empirical lower ``p``-quantile ``X_(ceil(n p))`` of the clean returns.

    Args:
        returns: the ``n >= 1`` clean episode returns.
        sigma: smoothing noise standard deviation (> 0).
        budget: total l2 attack budget over the episode (>= 0), same units as sigma.
        alpha: failure probability of the certificate, 0 < alpha < 1.
        p: quantile level, 0 < p < 1 (0.5 certifies the median, 0.1 the 10th percentile).
        correction: ``"dkw"`` or ``"binomial"``, see above.
        r_min: optional known lower bound on every return; returns below it are an error.

    Example:
        >>> r = percentile_bound(list(range(1, 101)), sigma=1.0, budget=0.5, alpha=0.05, p=0.5)
        >>> round(r.shifted_level, 4), round(r.epsilon, 4), r.order_index, r.bound, r.estimate
        (0.3085, 0.1224, 19, 19.0, 50.0)
    """
    sigma, budget, alpha = _check_common(sigma=sigma, budget=budget, alpha=alpha)
    p = _real("p", p)
    if not 0 < p < 1:
        raise ValueError(f"p: expected 0 < p < 1, got {p!r}")
    if correction not in ("dkw", "binomial"):
        raise ValueError(f"correction: expected 'dkw' or 'binomial', got {correction!r}")
    values = _returns(returns)
    if r_min is not None:
        r_min = _check_r_min(values, r_min)
    n = values.size
    ordered = np.sort(values)
    shifted_level = float(gaussian_shift(p, budget / sigma))

    if correction == "dkw":
        epsilon = math.sqrt(math.log(1.0 / alpha) / (2.0 * n))
        # The tiny downward nudge keeps floating-point error in n*(p' - c) from rounding k up past an integer.
        order_index = max(math.ceil(n * (shifted_level - epsilon) - 1e-9), 0)
    else:
        epsilon = math.nan
        # P[Bin >= k] >= 1 - alpha  <=>  P[Bin <= k - 1] <= alpha; the cdf is non-decreasing in k.
        cdf = stats.binom.cdf(np.arange(n), n, shifted_level)
        order_index = int(np.count_nonzero(cdf <= alpha))
    order_index = min(order_index, n)

    if order_index > 0:
        bound = float(ordered[order_index - 1])
    else:
        bound = r_min if r_min is not None else -math.inf
    estimate = float(ordered[max(math.ceil(n * p - 1e-9), 1) - 1])
    return PercentileBound(bound=bound, estimate=estimate, n=n, alpha=alpha, sigma=sigma, budget=budget,
                           method=f"percentile-{correction}", p=p, shifted_level=shifted_level,
                           correction=correction, epsilon=epsilon, order_index=order_index, r_min=r_min)


def certified_curve(estimator: Callable[..., CertifiedBound], *args: Any, budgets: Sequence[float],
                    **kwargs: Any) -> CertifiedCurve:
    """Evaluate ``estimator(*args, budget=b, **kwargs)`` for each ``b`` in ``budgets``.

    Example:
        >>> curve = certified_curve(binary_bound, 9_000, 10_000, sigma=0.1, alpha=0.05, budgets=[0.0, 0.2])
        >>> [round(b, 3) for b in curve.bounds]
        [0.895, 0.228]
    """
    if not callable(estimator):
        raise TypeError(f"estimator: expected one of the estimator functions, got {type(estimator).__name__}")
    if "budget" in kwargs:
        raise TypeError("budget: give the budgets as budgets=[...], not a single budget=")
    budget_values = tuple(_real("budgets", b) for b in budgets)
    if not budget_values:
        raise ValueError("budgets: expected at least one budget, got an empty sequence")
    results = tuple(estimator(*args, budget=b, **kwargs) for b in budget_values)
    return CertifiedCurve(budgets=budget_values, bounds=tuple(r.bound for r in results), method=results[0].method,
                          results=results)
