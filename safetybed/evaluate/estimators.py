"""Crash-rate estimators for naturalistic (NDE) and importance-sampled (NADE) tests, and their efficiency curves.

Every estimator targets the per-test crash probability under the naturalistic distribution ``p``,
``mu = P_p(crash)`` (``research/cav_eval.md`` §0-§1), and returns an :class:`EstimateResult` carrying the
estimate, a two-sided normal confidence interval, the relative half-width (RHW) used as the stopping rule, and
the per-test values whose mean is the estimate. Equations implemented here (numbered for this module; the SCV
paper's own equation numbers could not be checked, see ``cav_eval.md`` §7)::

    crude MC:   mu_hat = mean(1{crash_i}),  x_i ~ p                                               (E1)
    NADE IS:    Y_i = 1{crash_i} * W_i,  W_i = prod_k p_k / q_k,  q_k = (1 - eps_k) q~_k + eps_k p_k   (E2)
    RHW:        RHW = z * sigma_hat / (sqrt(n) * mu_hat),  z = Phi^-1((1 + confidence) / 2)           (E3)
    SCV:        Y~_i = Y_i - beta^T (Z_i - 1),  mu_hat = mean(Y~)                                     (E4)
    features:   r_k = q~_k / q_k, E_q[r_k | history] = 1;  Z = {r_k} or {prod_{k in S} r_k : S != {}}  (E5)
    martingale: zeta_S = prod_{j in S} (r_j - 1) * 1{K >= max S},  E_q[zeta_S] = 0                    (E6)
    tail:       zeta_tail = sum_{k_max < j <= K} (r_j - 1),  E_q[zeta_tail] = 0                         (E7)
    learned:    psi = sum_j W_{<j} C_j g(s_j) (r_j - 1),  E_q[psi] = 0 for g fitted on other tests      (E8)

(E1)-(E3) follow the NADE repository's ``plot.ipynb`` [2] (running mean, ``ddof = 1`` std, 1.645 for 90 %).
(E4) is the mixture-importance-sampling control variate of Owen & Zhou [3]: each ``h_S / q`` has known mean 1
under ``q``, so any ``beta`` leaves the mean unbiased and the least-squares ``beta`` minimises the variance.
Sparse control variates (SCV, Yang et al. [1]) build the features only from the ``K`` critical steps of a
test and fit ``beta`` by multiple linear regression within the stratum of tests with ``K`` critical steps.

Stratified vs martingale (``cav_eval.md`` §2.3, pitfall 1): ``E_q[Z | K = k] = 1`` fails when the number of
critical steps depends on earlier maneuvers (a hard brake creates further critical steps); then the
stratum-wise fit is biased. The martingale features (E6) are predictable products of ``r_j - 1``, so
``E_q[zeta_S] = 0`` holds unconditionally and one global regression stays unbiased. With ``cross_fit=True``
``beta`` is fitted on the other half of the tests (even/odd index), which removes the ``O(1/n)`` bias of an
in-sample fit (pitfall 2). The learned variant (E8, :mod:`safetybed.evaluate.scv_learned`) adds one feature whose
weight on each critical step is a crash model of the step's state, fitted on the other half of the tests.

References:
    [1] J. Yang, H. Sun, H. He, Y. Zhang, S. Feng, H. X. Liu. "Adaptive Safety Evaluation for Connected and
        Automated Vehicles with Sparse Control Variates." arXiv:2212.00517 (2022); IEEE T-ITS.
    [2] S. Feng, X. Yan, H. Sun, Y. Feng, H. X. Liu. "Intelligent driving intelligence test for autonomous
        vehicles with naturalistic and adversarial environment." Nat. Commun. 12:748 (2021).
    [3] A. Owen, Y. Zhou. "Safe and effective importance sampling." JASA 95 (2000) 135-143.
    [4] C. J. Clopper, E. S. Pearson. "The use of confidence or fiducial limits illustrated in the case of the
        binomial." Biometrika 26 (1934).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from safetybed.errors import InputError
from safetybed.evaluate.records import TestRecord
from safetybed.evaluate.scv_learned import CovariateError, fit_crash_model, learned_feature, parse_covariates
from safetybed.intervals import ConfidenceInterval, clopper_pearson
from safetybed.jsonsafe import finite_or_none, json_safe

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


class EstimatorInputError(InputError, ValueError):
    """Test records or options an estimator cannot use; the message names the record, the field, what was
    expected and what was given. A :class:`ValueError` (and a :class:`safetybed.errors.InputError`, so the CLI
    reports it as bad input)."""


# -- result object -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EstimateResult:
    """One crash-rate estimate.

    Attributes:
        method: ``"crude"``, ``"nade"``, ``"scv-stratified"`` or ``"scv-martingale"``.
        estimate: the estimate of ``mu = P_p(crash)`` per test, the mean of ``values``.
        ci: two-sided normal interval ``estimate +- z * std / sqrt(n)`` at ``confidence`` (lower end clipped at 0
            for crude and NADE, whose values are non-negative; SCV's adjusted values can be negative, its
            interval is not clipped). For crude MC with no crash: ``[0, upper_bound]``. A
            :class:`~safetybed.intervals.ConfidenceInterval` (``[low, high]`` in JSON).
        rhw: relative half-width ``z * std / (sqrt(n) * estimate)`` (E3); None when ``estimate <= 0``.
        n: number of tests.
        n_crashes: number of tests that crashed.
        confidence: two-sided confidence level of ``ci`` (0.9 gives ``z = 1.645``).
        std: per-test standard deviation of ``values`` (``ddof = 1``; ``1 + slopes`` for in-sample SCV).
        upper_bound: only when no crash was observed (crude MC): the exact one-sided binomial upper bound
            ``1 - (1 - confidence)^(1/n)`` at ``confidence``; None otherwise.
        details: method-specific diagnostics (z, per-stratum counts, fitted betas, variance ratio, ...).
        values: the per-test values whose mean is ``estimate``: ``1{crash}`` (crude), ``Y`` (NADE) or the
            adjusted ``Y~`` (SCV). Feed them to :func:`rhw_curve` / :func:`tests_to_rhw`.
    """

    method: str
    estimate: float
    ci: ConfidenceInterval | None
    rhw: float | None
    n: int
    n_crashes: int
    confidence: float
    std: float
    upper_bound: float | None = None
    details: dict[str, Any] = field(default_factory=dict, hash=False)
    values: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    @property
    def standard_error(self) -> float:
        """``std / sqrt(n)``, the standard error of ``estimate`` (for z-score checks across methods)."""
        return self.std / math.sqrt(self.n)

    def to_json(self, *, include_values: bool = False) -> dict[str, Any]:
        """A JSON-safe dict (plain floats/ints/lists; NaN and infinities become None).

        ``values`` is included only with ``include_values=True`` (it has one entry per test).
        """
        out: dict[str, Any] = {
            "method": self.method,
            "estimate": self.estimate,
            "ci": self.ci,
            "rhw": self.rhw,
            "n": self.n,
            "n_crashes": self.n_crashes,
            "confidence": self.confidence,
            "std": self.std,
            "standard_error": self.standard_error,
            "upper_bound": self.upper_bound,
            "details": self.details,
        }
        if include_values:
            out["values"] = self.values
        return json_safe(out)


# -- input parsing -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Batch:
    """Records flattened into arrays: step ``j`` of record ``i`` is at flat position ``offsets[i] + j``."""

    crashed: np.ndarray  # (n,) bool
    n_steps: np.ndarray  # (n,) int, K_i
    record_of_step: np.ndarray  # (total,) int
    step_index: np.ndarray  # (total,) int, position of the step within its record
    p: np.ndarray  # (total,) naturalistic prob of the sampled maneuver
    q_tilde: np.ndarray  # (total,) importance-component prob
    epsilon: np.ndarray  # (total,) defensive weight

    @property
    def n(self) -> int:
        return int(self.crashed.size)

    @property
    def q(self) -> np.ndarray:
        # Defensive mixture (Owen 2013; Feng et al. 2021, cav_eval.md §1 item 4): q = (1 - eps) q~ + eps p.
        return (1.0 - self.epsilon) * self.q_tilde + self.epsilon * self.p

    def step_log_ratios(self) -> np.ndarray:
        """``log(p / q)`` of every step, flat."""
        return np.log(self.p) - np.log(self.q)

    def log_weights(self) -> np.ndarray:
        # (E2) in logs: a product of many small ratios underflows long before its log does.
        return np.bincount(self.record_of_step, weights=self.step_log_ratios(), minlength=self.n)

    def log_weights_before(self) -> np.ndarray:
        """``log W_{<j}`` of every step: the log ratios of the same record's earlier steps (0 at its first step)."""
        log_ratio = self.step_log_ratios()
        before = np.cumsum(log_ratio) - log_ratio  # running sum over all records, up to but excluding the step
        first = self.step_index == 0
        record_start = np.zeros(self.n)
        record_start[self.record_of_step[first]] = before[first]
        return before - record_start[self.record_of_step]

    def outcomes(self) -> np.ndarray:
        """``Y_i = 1{crash_i} * W_i`` (E2)."""
        return np.where(self.crashed, np.exp(self.log_weights()), 0.0)

    def step_ratios(self) -> np.ndarray:
        """``r = q~ / q`` of every step (E5), flat."""
        return self.q_tilde / self.q

    def ratio_matrix(self, k_max: int) -> np.ndarray:
        """``R[i, j] = r_{j+1} = q~ / q`` of record ``i``'s step ``j+1`` (E5), 1 where the record has no such step."""
        ratios = np.ones((self.n, k_max))
        keep = self.step_index < k_max
        ratios[self.record_of_step[keep], self.step_index[keep]] = self.step_ratios()[keep]
        return ratios

    def tail_feature(self, k_max: int) -> np.ndarray:
        """(E7) ``sum_{j > k_max} (r_j - 1)`` per record: steps past ``k_max`` pooled into one martingale feature."""
        tail = np.zeros(self.n)
        beyond = self.step_index >= k_max
        np.add.at(tail, self.record_of_step[beyond], self.step_ratios()[beyond] - 1.0)
        return tail


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, int | float | np.floating) or not (
        0.0 < float(confidence) < 1.0
    ):
        raise EstimatorInputError(f"confidence: expected a two-sided level in (0, 1) such as 0.9, got {confidence!r}")
    return float(confidence)


def _z_value(confidence: float) -> float:
    # (E3): two-sided normal quantile, Phi^-1(0.95) = 1.645 at confidence 0.9 as in the NADE notebook.
    return float(stats.norm.ppf(0.5 * (1.0 + confidence)))


def _as_list(items: Any, what: str) -> list[Any]:
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise EstimatorInputError(f"{what}: expected a sequence of tests, got {type(items).__name__}")
    items = list(items)
    if len(items) < 2:
        raise EstimatorInputError(
            f"{what}: expected at least 2 tests (a standard deviation needs two), got {len(items)}"
        )
    return items


def _crash_flag(value: Any, index: int) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return bool(value)
    raise EstimatorInputError(f"record {index}: crashed: expected a bool or 0/1, got {value!r}")


def _field(record: Any, name: str, index: int) -> Any:
    if isinstance(record, Mapping):
        if name not in record:
            raise EstimatorInputError(f"record {index}: {name}: missing (expected keys crashed, p, q_tilde, epsilon)")
        return record[name]
    try:
        return getattr(record, name)
    except AttributeError:
        raise EstimatorInputError(
            f"record {index}: {name}: missing; expected a TestRecord, a mapping or an object with attributes "
            f"crashed, p, q_tilde, epsilon, got {type(record).__name__}"
        ) from None


def _float_array(values: list[Any], name: str, record_of_step: np.ndarray, step_index: np.ndarray) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
        if array.ndim == 1:
            return array
    except (TypeError, ValueError):
        pass
    for where, value in enumerate(values):  # slow path, only to name the offending entry
        try:
            float(value)
        except (TypeError, ValueError):
            raise EstimatorInputError(
                f"record {int(record_of_step[where])}: {name}[{int(step_index[where])}]: expected a float, "
                f"got {value!r}"
            ) from None
    raise EstimatorInputError(f"{name}: expected one float per critical step, got nested or ragged entries")


def _parse_records(records: Any) -> _Batch:
    records = _as_list(records, "records")
    crashed = np.empty(len(records), dtype=bool)
    n_steps = np.empty(len(records), dtype=np.int64)
    flat: dict[str, list[float]] = {"p": [], "q_tilde": [], "epsilon": []}
    for index, record in enumerate(records):
        crashed[index] = _crash_flag(_field(record, "crashed", index), index)
        lengths = []
        for name, sink in flat.items():
            steps = _field(record, name, index)
            if isinstance(steps, str | bytes) or not isinstance(steps, Sequence | np.ndarray):
                raise EstimatorInputError(
                    f"record {index}: {name}: expected a sequence of floats (one per critical step), "
                    f"got {type(steps).__name__}"
                )
            sink.extend(steps)
            lengths.append(len(steps))
        if len(set(lengths)) != 1:
            raise EstimatorInputError(
                f"record {index}: p, q_tilde, epsilon: expected one entry per critical step in each, got lengths "
                f"{lengths[0]}, {lengths[1]}, {lengths[2]}"
            )
        n_steps[index] = lengths[0]
    record_of_step = np.repeat(np.arange(len(records)), n_steps)
    offsets = np.concatenate(([0], np.cumsum(n_steps)[:-1]))
    step_index = np.arange(record_of_step.size) - offsets[record_of_step]
    arrays = {name: _float_array(values, name, record_of_step, step_index) for name, values in flat.items()}
    valid_ranges = {
        "p": (lambda x: (x > 0) & (x <= 1), "a probability in (0, 1]"),
        "q_tilde": (lambda x: (x >= 0) & (x <= 1), "a probability in [0, 1]"),
        "epsilon": (lambda x: (x > 0) & (x <= 1), "a defensive weight in (0, 1]"),
    }
    for name, (is_valid, expected) in valid_ranges.items():
        values = arrays[name]
        bad = ~(np.isfinite(values) & is_valid(values))
        if bad.any():
            where = int(np.argmax(bad))
            raise EstimatorInputError(
                f"record {int(record_of_step[where])}: {name}[{int(step_index[where])}]: expected {expected}, "
                f"got {float(values[where])!r}"
            )
    return _Batch(crashed, n_steps, record_of_step, step_index, arrays["p"], arrays["q_tilde"], arrays["epsilon"])


# -- summaries ---------------------------------------------------------------------------------------------------
def _summarise(
    method: str, values: np.ndarray, n_crashes: int, confidence: float, *, ddof: int = 1, clip_at_zero: bool,
    details: dict[str, Any],
) -> EstimateResult:
    n = values.size
    z = _z_value(confidence)
    estimate = float(values.mean())
    std = float(values.std(ddof=ddof)) if n > ddof else math.nan
    half_width = z * std / math.sqrt(n)  # (E3) numerator: half of the two-sided normal interval
    lower = estimate - half_width
    ci = ConfidenceInterval(max(lower, 0.0) if clip_at_zero else lower, estimate + half_width, confidence,
                            "normal, clipped at 0" if clip_at_zero else "normal")
    rhw = half_width / estimate if estimate > 0 else None
    return EstimateResult(
        method=method, estimate=estimate, ci=ci, rhw=rhw, n=n, n_crashes=n_crashes, confidence=confidence,
        std=std, upper_bound=None, details={"z": z, **details}, values=values,
    )


def _strata_counts(n_steps: np.ndarray, crashed: np.ndarray) -> list[dict[str, int]]:
    return [
        {"k": int(k), "n": int((n_steps == k).sum()), "crashes": int((crashed & (n_steps == k)).sum())}
        for k in np.unique(n_steps)
    ]


def _no_crash_error(method: str, n: int) -> EstimatorInputError:
    return EstimatorInputError(
        f"{method}: none of the {n} tests crashed, so the importance-sampling variance (and the RHW) cannot be "
        f"estimated; run more tests, or bound the rate with crude_estimate on naturalistic tests"
    )


# -- crude Monte Carlo -------------------------------------------------------------------------------------------
def crude_estimate(crashed: Any, *, confidence: float = 0.9) -> EstimateResult:
    """Crude Monte Carlo estimate (E1) from naturalistic tests.

    Args:
        crashed: one entry per test, a bool or 0/1 (or a record with a ``crashed`` field, as for
            :func:`nade_estimate`; its critical steps are ignored, the tests must come from ``p``).
        confidence: two-sided level of the Wald interval ``mean +- z s / sqrt(n)`` (``s`` with ``ddof = 1``).

    With no crash the estimate is 0, ``rhw`` is None and ``upper_bound`` is the exact one-sided binomial bound
    ``1 - (1 - confidence)^(1/n)`` (the largest rate for which seeing no crash still has probability
    ``1 - confidence``). ``details["clopper_pearson"]`` is always the exact two-sided interval [4].

    >>> result = crude_estimate([True, False, False, False])
    >>> round(result.estimate, 3), round(result.rhw, 4)  # rhw = z * sqrt((1 - mu) / (n mu)) * sqrt(n / (n - 1))
    (0.25, 1.6449)
    """
    confidence = _check_confidence(confidence)
    if isinstance(crashed, np.ndarray) and crashed.ndim == 1 and crashed.dtype.kind in "biuf":
        flags = crashed.astype(float)
        if crashed.size < 2:
            _as_list(crashed, "crashed")  # raises the common "at least 2 tests" message
        bad = ~np.isin(flags, (0.0, 1.0))
        if bad.any():
            where = int(np.argmax(bad))
            raise EstimatorInputError(f"record {where}: crashed: expected a bool or 0/1, got {crashed[where]!r}")
        flags = flags.astype(bool)
    else:
        items = _as_list(crashed, "crashed")
        flags = np.array([
            _crash_flag(_field(item, "crashed", index) if not _is_scalar(item) else item, index)
            for index, item in enumerate(items)
        ])
    n = flags.size
    n_crashes = int(flags.sum())
    values = flags.astype(float)
    alpha = 1.0 - confidence
    details = {"clopper_pearson": clopper_pearson(n_crashes, n, confidence)}  # Clopper & Pearson [4]
    if n_crashes == 0:
        # One-sided exact bound: (1 - u)^n = 1 - confidence.
        upper = -math.expm1(math.log(alpha) / n)
        return EstimateResult(
            method="crude", estimate=0.0, ci=ConfidenceInterval(0.0, upper, confidence, "exact one-sided binomial"),
            rhw=None, n=n, n_crashes=0, confidence=confidence, std=0.0, upper_bound=upper,
            details={"z": _z_value(confidence), **details}, values=values,
        )
    return _summarise("crude", values, n_crashes, confidence, clip_at_zero=True, details=details)


def _is_scalar(item: Any) -> bool:
    return isinstance(item, bool | int | float | np.bool_ | np.integer | np.floating)


# -- NADE importance sampling ------------------------------------------------------------------------------------
def nade_estimate(records: Any, *, confidence: float = 0.9) -> EstimateResult:
    """Importance-sampling estimate of NADE tests (E2): the mean of ``Y_i = 1{crash_i} W_i``.

    Args:
        records: one :class:`TestRecord` per test (or a mapping / object with ``crashed``, ``p``, ``q_tilde``,
            ``epsilon``). A record without critical steps has weight 1.
        confidence: two-sided level of the normal interval; ``std`` uses ``ddof = 1`` as the NADE notebook [2].

    Raises:
        EstimatorInputError: bad records, or no crash at all (IS then has no variance estimate).
    """
    confidence = _check_confidence(confidence)
    batch = _parse_records(records)
    n_crashes = int(batch.crashed.sum())
    if n_crashes == 0:
        raise _no_crash_error("nade_estimate", batch.n)
    log_weights = batch.log_weights()
    details = {
        "strata": _strata_counts(batch.n_steps, batch.crashed),
        "max_log10_weight_crashed": float(log_weights[batch.crashed].max() / math.log(10)),
    }
    return _summarise("nade", batch.outcomes(), n_crashes, confidence, clip_at_zero=True, details=details)


# -- sparse control variates -------------------------------------------------------------------------------------
def _subsets(k: int) -> list[tuple[int, ...]]:
    return [subset for size in range(1, k + 1) for subset in itertools.combinations(range(k), size)]


def _feature_name(subset: tuple[int, ...], variant: str) -> str:
    if variant == "martingale":
        return "*".join(f"(r{j + 1}-1)" for j in subset)
    return "*".join(f"r{j + 1}" for j in subset) + "-1"


def _stratum_features(ratios: np.ndarray, subsets: list[tuple[int, ...]]) -> np.ndarray:
    """``Z_S - 1`` for each subset ``S`` (E5): products of the step ratios, minus their known mean 1."""
    return np.column_stack([ratios[:, list(subset)].prod(axis=1) - 1.0 for subset in subsets])


def _martingale_features(ratios: np.ndarray, subsets: list[tuple[int, ...]]) -> np.ndarray:
    """``zeta_S`` (E6). ``ratios`` holds 1 past a test's last critical step, so ``r_j - 1 = 0`` there and the
    factor ``1{K >= max S}`` comes for free."""
    return np.column_stack([(ratios[:, list(subset)] - 1.0).prod(axis=1) for subset in subsets])


#: |z| above which a stratum-conditional feature mean counts as non-zero in :func:`_stratum_mean_check`.
STRATUM_CHECK_Z = 4.0
#: ``details["caveat"]`` of the stratified variant, completed by what its own check measured.
STRATIFIED_CAVEAT = ("biased when the number of critical steps depends on earlier maneuvers (E[r | K] != 1; "
                     "research/cav_eval.md 2.3); use scv-martingale")
#: Below this defensive weight the learned feature is heavy-tailed (measured 0.58x NADE at eps = 0.1).
LEARNED_MIN_EPSILON = 0.5
LEARNED_CAVEAT = ("less efficient at a defensive weight eps < 0.5: its feature carries the heavy-tailed weights of "
                  "survived benign draws (about 1/eps each) and can need more tests than NADE (docs/evaluation.md "
                  "2.1); still unbiased, but prefer scv-martingale here")
#: Relative spread below which a stratum's feature column counts as constant (rounding noise, not data).
_CONSTANT_RTOL = 1e-9


def _stratum_mean_check(design: np.ndarray, names: list[str], k: int) -> list[dict[str, Any]]:
    """The stratified variant's assumption, measured: ``E_q[Z_S - 1 | K = k] = 0`` for each feature.

    Returns per feature the stratum mean of ``Z_S - 1`` and its z-score (mean / standard error). A z-score far
    from 0 shows that the number of critical steps depends on earlier maneuvers in these tests, the case in which
    the stratum-wise fit is biased (``cav_eval.md`` §2.3, pitfall 1). The features are bounded by
    ``1 / (1 - eps)`` per step, so the normal approximation of the mean is adequate at the sizes we fit.

    A feature with no spread in the stratum (every test drew the same component, e.g. all ``r = 1/(1 - eps)``)
    gets ``z = nan`` and ``constant = True``: centring zeroes its column, so its slope is 0 and it cannot move the
    estimate, and dividing its mean by a rounding-error standard error gave z-scores of 1e16 (highway, k = 1).
    """
    out = []
    m = design.shape[0]
    for column, name in zip(design.T, names, strict=True):
        mean = float(column.mean())
        spread = float(column.std(ddof=1)) if m > 1 else 0.0
        constant = spread <= _CONSTANT_RTOL * max(1.0, abs(mean))
        z = math.nan if constant else mean / (spread / math.sqrt(m))
        out.append({"k": k, "feature": name, "n": m, "mean": mean, "z": z, "constant": constant})
    return out


def _fit_slopes(features: np.ndarray, outcomes: np.ndarray, ridge: float) -> np.ndarray:
    """OLS slopes of ``outcomes ~ 1 + features`` with a ridge penalty ``ridge * m * |beta|^2`` on the slopes only.

    The intercept is profiled out by centring; the penalised problem is solved as an augmented least-squares
    system (SVD), which stays stable when product features are nearly collinear or constant in a stratum.
    """
    m, d = features.shape
    centred = features - features.mean(axis=0)
    target = outcomes - outcomes.mean()
    if ridge > 0:
        centred = np.vstack([centred, math.sqrt(ridge * m) * np.eye(d)])
        target = np.concatenate([target, np.zeros(d)])
    beta, *_ = np.linalg.lstsq(centred, target, rcond=None)
    return beta


def _learned_designs(records: list[Any], batch: _Batch, design: np.ndarray, odd: np.ndarray,
                     min_crashes: int) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Per fitting fold, the martingale design plus (E8) with ``g`` fitted on that fold's adversarial draws.

    The column is scaled by its spread on the fitting fold (the ridge assumes features of order 1; E8 is of the
    order of the crash rate). A fold with fewer than ``min_crashes`` crashes, or no survivor, among its
    adversarial draws gets a zero column (no slope) and says why in ``details["learned_fits"]``.
    """
    try:
        criticality, states = parse_covariates(records, batch.n_steps)
    except CovariateError as error:
        raise EstimatorInputError(str(error)) from None
    ratios = batch.step_ratios()
    weight_before = np.exp(batch.log_weights_before())
    adversarial = batch.q_tilde > batch.p  # the importance component favoured the drawn maneuver (r > 1)
    designs, fits = {}, []
    for seed, (fold, fit_on) in enumerate((("odd", odd), ("even", ~odd))):
        train = adversarial & fit_on[batch.record_of_step]
        labels = batch.crashed[batch.record_of_step[train]]
        fit = {"fit_on": fold, "adversarial_steps": int(train.sum()), "crashed": int(labels.sum()), "skipped": None}
        column = np.zeros(batch.n)
        if labels.sum() < max(min_crashes, 1) or labels.all():
            fit["skipped"] = (f"{int(labels.sum())} crashed and {int((~labels).sum())} survived of the adversarial "
                              f"draws; the crash model needs >= {max(min_crashes, 1)} of the first and >= 1 of the "
                              "second")
        else:
            g = fit_crash_model(states[train], labels, seed=seed)(states)
            psi = learned_feature(record_of_step=batch.record_of_step, n=batch.n, weight_before=weight_before,
                                  ratios=ratios, criticality=criticality, g=g)
            scale = float(psi[fit_on].std())
            fit["scale"] = scale
            if scale > 0:
                column = psi / scale
        designs[fold] = np.column_stack([design, column])
        fits.append(fit)
    return designs, fits


def _check_scv_options(variant: str, features: str, k_max: int, ridge: float, min_stratum_crashes: int) -> None:
    if variant not in ("stratified", "martingale", "learned"):
        raise EstimatorInputError(f"variant: expected 'stratified', 'martingale' or 'learned', got {variant!r}")
    if features not in ("singletons", "products"):
        raise EstimatorInputError(f"features: expected 'singletons' or 'products', got {features!r}")
    if isinstance(k_max, bool) or not isinstance(k_max, int | np.integer) or k_max < 1:
        raise EstimatorInputError(f"k_max: expected an integer >= 1, got {k_max!r}")
    if not (isinstance(ridge, int | float | np.floating) and math.isfinite(ridge) and ridge >= 0):
        raise EstimatorInputError(f"ridge: expected a finite number >= 0, got {ridge!r}")
    if isinstance(min_stratum_crashes, bool) or not isinstance(min_stratum_crashes, int | np.integer) or (
        min_stratum_crashes < 0
    ):
        raise EstimatorInputError(f"min_stratum_crashes: expected an integer >= 0, got {min_stratum_crashes!r}")


def scv_estimate(
    records: Any,
    *,
    variant: Literal["stratified", "martingale", "learned"] = "stratified",
    cross_fit: bool = True,
    confidence: float = 0.9,
    features: Literal["singletons", "products"] = "singletons",
    k_max: int = 3,
    ridge: float = 1e-8,
    min_stratum_crashes: int = 5,
) -> EstimateResult:
    """Sparse-control-variate estimate (Yang et al. 2022 [1]; Owen & Zhou 2000 [3]): ``mean(Y - beta^T (Z - 1))``.

    The tests are unchanged; only their values are adjusted (E4). ``r_k = q~_k / q_k`` is the ratio of the
    importance component to the defensive mixture at the k-th critical step; it has mean 1 under ``q`` given
    the history (E5).

    Args:
        records: as for :func:`nade_estimate`.
        variant: ``"stratified"``: one regression per stratum ``K = k`` (number of critical steps),
            ``1 <= k <= k_max``, on ``Z - 1`` (SCV as in [1], ``cav_eval.md`` §2.3). Biased when the number of
            critical steps depends on earlier maneuvers (``E_q[Z | K = k] != 1``). ``"martingale"``: one global
            regression on the predictable zero-mean features (E6); unbiased in that case too. ``"learned"``: the
            martingale features plus (E8), a feature weighted by a crash model of each critical step's state
            (:mod:`safetybed.evaluate.scv_learned`); needs ``criticality`` and ``state`` in every record and
            ``cross_fit=True`` (the model and ``beta`` are fitted on one half, applied to the other).
        cross_fit: fit ``beta`` on the odd-indexed tests and apply it to the even-indexed ones, and vice versa
            (deterministic, no RNG); ``std`` then uses ``ddof = 1``. False: in-sample fit, ``ddof = 1 + slopes``.
        confidence: two-sided level of the normal interval on the adjusted values.
        features: ``"singletons"``: ``r_1 .. r_k`` (k features; the sparse version of [1]). ``"products"``:
            products over every non-empty subset of the steps (``2^k - 1`` features), whose span contains
            ``W`` itself, so a crash that depends only on which mixture component each step drew from is fitted
            exactly (zero-variance condition).
        k_max: largest stratum (stratified) or step index (martingale) given its own features; tests with more
            critical steps keep ``Y~ = Y`` (stratified), or (martingale) pool their steps past ``k_max`` into
            one shared feature ``sum_{j > k_max} (r_j - 1)``, still of mean 0 (a sum of martingale differences).
            On highway cruise (5,000 NADE tests, K up to 26) that feature took var(Y)/var(Y~) from 1.05 to 1.32.
        ridge: ridge penalty per test on the slopes (the features are dimensionless and of order 1).
        min_stratum_crashes: a fit needs at least this many crashes among the tests it is fitted on (and more
            tests than parameters); otherwise those tests keep ``Y~ = Y``. ``details`` records every skip.

    Returns:
        ``details`` holds ``variance_ratio = var(Y) / var(Y~)`` (the test-count reduction factor over plain
        NADE), ``nade_estimate``, ``feature_names``, per-stratum counts and every fit (fold, n, crashes, beta or
        the reason it was skipped). The stratified variant also measures its own assumption: per stratum and
        feature the mean of ``Z - 1`` and its z-score (``stratum_mean_check``), and ``stratum_means_nonzero``
        (some ``|z| > STRATUM_CHECK_Z`` in a stratum that was adjusted): the data show that ``K`` depends on
        earlier maneuvers, so the estimate is biased and the martingale variant should be used.

    Raises:
        EstimatorInputError: bad records or options, or no crash at all.
    """
    confidence = _check_confidence(confidence)
    _check_scv_options(variant, features, k_max, ridge, min_stratum_crashes)
    if variant == "learned" and not cross_fit:
        raise EstimatorInputError("cross_fit: the learned variant must fit its crash model on other tests than it "
                                  "adjusts (unbiasedness), so it needs cross_fit=True, got False")
    records = _as_list(records, "records")
    batch = _parse_records(records)
    if int(batch.crashed.sum()) == 0:
        raise _no_crash_error("scv_estimate", batch.n)
    fit = _CrossFit(batch, cross_fit=cross_fit, ridge=ridge, min_crashes=min_stratum_crashes)
    options = {"features": features, "k_max": k_max}
    if variant == "stratified":
        slopes, feature_names, extra = _scv_stratified(fit, **options)
    elif variant == "martingale":
        slopes, feature_names, extra = _scv_martingale(fit, **options)
    else:
        slopes, feature_names, extra = _scv_learned(fit, records, **options)
    return fit.summary(variant, slopes=slopes, feature_names=feature_names, confidence=confidence, features=features,
                       k_max=k_max, extra=extra)


class _CrossFit:
    """The regression shared by the SCV variants: fit ``beta`` on some tests, subtract ``beta^T design`` (E4) on
    others (2-fold cross-fitting by test index, ``cav_eval.md`` §2.3 pitfall 2, or in-sample), recording every fit.
    """

    def __init__(self, batch: _Batch, *, cross_fit: bool, ridge: float, min_crashes: int):
        self.batch, self.cross_fit, self.ridge, self.min_crashes = batch, cross_fit, ridge, min_crashes
        self.outcomes = batch.outcomes()
        self.adjusted = self.outcomes.copy()
        self.odd = np.arange(batch.n) % 2 == 1
        self.fits: list[dict[str, Any]] = []

    def adjust(self, members: np.ndarray, designs: np.ndarray | dict[str, np.ndarray], label: dict[str, Any]) -> int:
        """Fit on the members' tests (or per fold) and subtract ``beta^T design`` (E4); returns slopes fitted.

        ``designs`` is one design, or one per fitting fold (the learned variant: its column depends on the fold).
        """
        odd, batch = self.odd, self.batch
        if self.cross_fit:  # (fit on, apply to, name of the fitting fold)
            plans = [(members & odd, members & ~odd, "odd"), (members & ~odd, members & odd, "even")]
        else:
            plans = [(members, members, "all")]
        fitted = 0
        for fit_on, apply_to, fold in plans:
            design = designs[fold] if isinstance(designs, dict) else designs
            fit_n, fit_crashes = int(fit_on.sum()), int(batch.crashed[fit_on].sum())
            record = {**label, "fit_on": fold, "n": fit_n, "crashes": fit_crashes, "beta": None, "skipped": None}
            if fit_crashes < self.min_crashes:
                record["skipped"] = f"{fit_crashes} crashes < min_stratum_crashes={self.min_crashes}"
            elif fit_n < design.shape[1] + 2:
                record["skipped"] = f"{fit_n} tests for {design.shape[1]} slopes + intercept"
            else:
                beta = _fit_slopes(design[fit_on[members]], self.outcomes[fit_on], self.ridge)
                # (E4): Y~ = Y - beta^T (Z - 1); the design columns already have known mean 0.
                self.adjusted[apply_to] = self.outcomes[apply_to] - design[apply_to[members]] @ beta
                record["beta"] = beta.tolist()
                fitted = design.shape[1]
            self.fits.append(record)
        return fitted

    def summary(self, variant: str, *, slopes: int, feature_names: dict[str, list[str]], confidence: float,
                features: str, k_max: int, extra: dict[str, Any]) -> EstimateResult:
        batch, outcomes, adjusted, fits = self.batch, self.outcomes, self.adjusted, self.fits
        ddof = 1 if self.cross_fit else 1 + slopes
        strata = _strata_counts(batch.n_steps, batch.crashed)
        for stratum in strata:
            k = stratum["k"]
            if variant == "stratified":
                stratum["adjusted"] = bool(1 <= k <= k_max and any(f["k"] == k and f["beta"] is not None
                                                                   for f in fits))
            else:
                stratum["adjusted"] = bool(k >= 1 and any(f["beta"] is not None for f in fits))
            if k == 0:
                stratum["reason"] = "no critical step: Y = 1{crash}, no control variate"
            elif variant == "stratified" and k > k_max:
                stratum["reason"] = f"more than k_max={k_max} critical steps: left as plain IS"
        residual_variance = float(adjusted.var(ddof=ddof))
        return _summarise(
            f"scv-{variant}", adjusted, int(batch.crashed.sum()), confidence, ddof=ddof, clip_at_zero=False,
            details={
                "variant": variant, "features": features, "cross_fit": self.cross_fit, "k_max": k_max,
                "ridge": self.ridge, "min_stratum_crashes": self.min_crashes, "ddof": ddof,
                "feature_names": feature_names, "strata": strata, "fits": fits,
                "nade_estimate": float(outcomes.mean()), "nade_std": float(outcomes.std(ddof=1)),
                "variance_ratio": (float(outcomes.var(ddof=1) / residual_variance) if residual_variance > 0
                                   else math.inf),
                **extra,
            },
        )


def _scv_stratified(fit: _CrossFit, *, features: str, k_max: int):
    """One regression per stratum ``K = k`` on ``Z - 1`` (Yang et al. 2022), and its own check of ``E[r | K] = 1``."""
    batch = fit.batch
    ratios = batch.ratio_matrix(k_max)
    feature_names: dict[str, list[str]] = {}
    check: list[dict[str, Any]] = []
    slopes = 0
    for k in range(1, k_max + 1):
        members = batch.n_steps == k
        if not members.any():
            continue
        subsets = _subsets(k) if features == "products" else [(j,) for j in range(k)]
        feature_names[str(k)] = [_feature_name(subset, "stratified") for subset in subsets]
        design = _stratum_features(ratios[members, :k], subsets)
        check += _stratum_mean_check(design, feature_names[str(k)], k)
        slopes += fit.adjust(members, design, {"k": k})
    # Only strata that were adjusted can bias the estimate; the others keep Y~ = Y.
    fitted_strata = {f["k"] for f in fit.fits if f["beta"] is not None}
    for c in check:
        c["adjusted"] = c["k"] in fitted_strata
    relevant = [abs(c["z"]) for c in check if c["adjusted"] and not c["constant"]]
    max_z = max((z for z in relevant if math.isfinite(z)), default=0.0)
    nonzero = any(z > STRATUM_CHECK_Z for z in relevant)
    measured = (f"measured here: E[Z - 1 | K = k] != 0 (max |z| = {max_z:.1f}), so this estimate is biased"
                if nonzero else f"no sign of it in these tests (max |z| = {max_z:.1f})")
    extra = {"stratum_mean_check": check, "stratum_mean_max_abs_z": max_z, "stratum_means_nonzero": nonzero,
             "caveat": f"{STRATIFIED_CAVEAT}; {measured}"}
    return slopes, feature_names, extra


def _martingale_design(batch: _Batch, *, features: str, k_max: int, variant: str) -> tuple[np.ndarray, list[str]]:
    """The predictable zero-mean features (E6), steps past ``k_max`` pooled into one shared column."""
    ratios = batch.ratio_matrix(k_max)
    subsets = _subsets(k_max) if features == "products" else [(j,) for j in range(k_max)]
    names = [_feature_name(subset, variant) for subset in subsets]
    design = _martingale_features(ratios, subsets)
    if (batch.n_steps > k_max).any():  # steps past k_max share one slope instead of being dropped
        design = np.column_stack([design, batch.tail_feature(k_max)])
        names.append(f"sum_(j>{k_max})(r_j-1)")
    return design, names


def _scv_martingale(fit: _CrossFit, *, features: str, k_max: int):
    """One global regression on the martingale features (E6); unbiased even when K depends on earlier draws."""
    design, names = _martingale_design(fit.batch, features=features, k_max=k_max, variant="martingale")
    slopes = fit.adjust(np.ones(fit.batch.n, dtype=bool), design, {"k": "all"})
    return slopes, {"all": names}, {}


def _scv_learned(fit: _CrossFit, records: list[Any], *, features: str, k_max: int):
    """The martingale features plus (E8), a cross-fitted crash model of each critical step's state."""
    batch = fit.batch
    design, names = _martingale_design(batch, features=features, k_max=k_max, variant="learned")
    designs, learned_fits = _learned_designs(records, batch, design, fit.odd, fit.min_crashes)
    names.append("sum_j W_<j C_j g(s_j) (r_j-1)")
    slopes = fit.adjust(np.ones(batch.n, dtype=bool), designs, {"k": "all"})
    epsilon_min = float(batch.epsilon.min()) if batch.epsilon.size else None
    extra: dict[str, Any] = {"learned_fits": learned_fits, "epsilon_min": epsilon_min}
    if epsilon_min is not None and epsilon_min < LEARNED_MIN_EPSILON:
        extra["caveat"] = f"{LEARNED_CAVEAT} (min eps = {epsilon_min:g})"
    return slopes, {"all": names}, extra


# -- efficiency curves -------------------------------------------------------------------------------------------
def _values_array(values: Any) -> np.ndarray:
    array = values.values if isinstance(values, EstimateResult) else values
    try:
        array = np.asarray(array, dtype=float)
    except (TypeError, ValueError):
        raise EstimatorInputError(f"values: expected a 1-D sequence of numbers, got {type(values).__name__}") from None
    if array.ndim != 1:
        raise EstimatorInputError(f"values: expected a 1-D sequence of per-test values, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        where = int(np.argmax(bad))
        raise EstimatorInputError(f"values[{where}]: expected a finite number, got {array[where]!r}")
    return array


def rhw_curve(values: Any, *, confidence: float = 0.9) -> np.ndarray:
    """Running RHW (E3) after each test, as the NADE notebook's rolling mean/std (``ddof = 1``) [2].

    ``curve[i]`` is the RHW of the first ``i + 1`` values; NaN while fewer than 2 tests or the running mean is
    ``<= 0``. O(n) via cumulative sums (on values scaled to max 1; the RHW is scale-free).

    Args:
        values: per-test values (``EstimateResult.values``, or the result itself).
    """
    z = _z_value(_check_confidence(confidence))
    array = _values_array(values)
    scale = float(np.abs(array).max()) if array.size else 0.0
    if scale > 0:
        array = array / scale
    counts = np.arange(1, array.size + 1, dtype=float)
    sums = np.cumsum(array)
    means = sums / counts
    with np.errstate(divide="ignore", invalid="ignore"):
        # Running sample variance: (sum x^2 - (sum x)^2 / n) / (n - 1), clipped at 0 against rounding.
        variances = np.maximum(np.cumsum(array * array) - sums * means, 0.0) / (counts - 1)
        curve = z * np.sqrt(variances) / (np.sqrt(counts) * means)
    curve[(counts < 2) | ~(means > 0)] = np.nan
    return curve


def tests_to_rhw(values: Any, *, target: float = 0.3, confidence: float = 0.9) -> int | None:
    """First test count ``n`` after which the running RHW stays below ``target`` for every remaining test.

    The NADE notebook's convergence rule ([2], ``cav_eval.md`` §1 item 6). None when the RHW is not below
    ``target`` at the last test.
    """
    if not (isinstance(target, int | float | np.floating) and target > 0):
        raise EstimatorInputError(f"target: expected an RHW > 0 such as 0.3, got {target!r}")
    below = rhw_curve(values, confidence=confidence) < target  # NaN compares False
    if below.size == 0 or not below[-1]:
        return None
    not_below = np.flatnonzero(~below)
    # curve[i] covers i + 1 tests, so the count after the last failure at index j is j + 2.
    return int(not_below[-1]) + 2 if not_below.size else 1


def bootstrap_tests_to_rhw(
    values: Any, *, target: float = 0.3, resamples: int = 200, seed: int = 0, confidence: float = 0.9
) -> dict[str, Any]:
    """Bootstrap distribution of :func:`tests_to_rhw`, resampling the tests with replacement (D2RL notebook).

    Each resample draws ``n`` tests from ``values`` with replacement (``np.random.default_rng(SeedSequence(seed))``)
    and records its tests-to-target count. Quantiles count a resample that never reaches the target as
    infinitely many tests, so a quantile that falls among those is None.

    Returns:
        ``{"median", "p10", "p90"}`` (tests, float or None), ``"fraction_reached"``, ``"tests"`` (the count of
        every resample, None where not reached), ``"resamples"``, ``"target"``, ``"n"``, ``"seed"``.
    """
    array = _values_array(values)
    if isinstance(resamples, bool) or not isinstance(resamples, int | np.integer) or resamples < 1:
        raise EstimatorInputError(f"resamples: expected an integer >= 1, got {resamples!r}")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    counts: list[int | None] = []
    for _ in range(resamples):
        resample = array[rng.integers(0, array.size, size=array.size)]
        counts.append(tests_to_rhw(resample, target=target, confidence=confidence))
    as_float = np.array([math.inf if c is None else float(c) for c in counts])

    def quantile(level: float) -> float | None:
        return finite_or_none(float(np.quantile(as_float, level, method="inverted_cdf")))

    return {
        "median": quantile(0.5), "p10": quantile(0.1), "p90": quantile(0.9),
        "fraction_reached": float(np.mean(np.isfinite(as_float))), "tests": counts, "resamples": resamples,
        "target": target, "n": int(array.size), "seed": seed,
    }


def tests_needed(result: EstimateResult, *, target: float = 0.3) -> float:
    """Tests needed to reach RHW ``target``, extrapolated as ``n* = n (rhw / target)^2``.

    An extrapolation from the per-test variance (RHW shrinks as ``1/sqrt(n)`` at a fixed per-test relative
    variance), not an observed count: use it for crude MC, where running until the RHW converges costs
    ``~ 30 / mu`` tests (``cav_eval.md`` §1). For ``1/mu >> 1``, crude MC gives ``n* ~ (z / target)^2 / mu``.
    """
    if not (isinstance(target, int | float | np.floating) and target > 0):
        raise EstimatorInputError(f"target: expected an RHW > 0 such as 0.3, got {target!r}")
    if result.rhw is None:
        raise EstimatorInputError(
            f"tests_needed: {result.method} result has no RHW (estimate {result.estimate!r} with "
            f"{result.n_crashes} crashes in {result.n} tests); run more tests before extrapolating"
        )
    return result.n * (result.rhw / target) ** 2


# Names starting with "test" would be collected by pytest wherever a test module imports them (as TestRecord).
tests_to_rhw.__test__ = False  # type: ignore[attr-defined]
tests_needed.__test__ = False  # type: ignore[attr-defined]
