"""A Rényi-DP accountant for the (Poisson-)subsampled Gaussian mechanism, shared by the private suite entries.

The mechanism is one DP-SGD step: every example joins the batch independently with probability ``q``, the clipped
per-example gradients (L2 sensitivity ``S``) are summed, and N(0, σ²S²) noise is added; σ is the *noise multiplier*.

* **RDP of one step, integer order α ≥ 2.** Mironov, Talwar & Zhang (2019), "Rényi Differential Privacy of the
  Sampled Gaussian Mechanism", §3.3: with μ₀ = N(0, σ²) and μ₁ = N(1, σ²) the step's RDP is
  D_α((1−q)μ₀ + qμ₁ ‖ μ₀) and, for integer α, it has the closed form

      ε(α) = 1/(α−1) · log Σ_{k=0}^{α} C(α, k) (1−q)^{α−k} q^k exp((k² − k) / (2σ²)).

  This is the standard *exact* expression for integer orders (the one TF-Privacy and Opacus evaluate as
  ``_compute_log_a_int``); fractional orders, which need a series bound, are not offered. At q = 1 it reduces to
  the Gaussian mechanism's α/(2σ²) (Mironov 2017, Prop. 7) and T full-batch steps with multipliers σ_t compose to
  Σ_t α/(2σ_t²).
* **Composition** (Mironov 2017, Prop. 1): RDP at a fixed order adds over steps.
* **Conversion to (ε, δ)** (Mironov 2017, Prop. 3): an (α, ε_α)-RDP mechanism is (ε_α + log(1/δ)/(α−1), δ)-DP;
  the accountant takes the minimum over its orders. (Tighter conversions exist, e.g. Balle et al. 2020; the classic
  one is used because it is the one every reader can check by hand, and it only over-states ε.)
* :func:`noise_multiplier_for_epsilon` finds by bisection the constant σ whose T steps spend a target ε (ε is
  decreasing in σ), and :func:`scale_for_epsilon` the factor that brings any σ-schedule's shape to the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

__all__ = ["DEFAULT_ORDERS", "PrivacySpent", "compose", "epsilon_from_rdp", "gaussian_rdp",
           "noise_multiplier_for_epsilon", "schedule_epsilon", "scale_for_epsilon", "subsampled_gaussian_rdp"]

#: Integer Rényi orders the accountant minimises over (2..32 densely, then sparser up to 256 for small ε).
DEFAULT_ORDERS: tuple[int, ...] = tuple(range(2, 33)) + (40, 48, 56, 64, 80, 96, 128, 192, 256)


def _check_orders(orders: Sequence[int]) -> np.ndarray:
    array = np.asarray(orders)
    if array.ndim != 1 or array.size == 0 or not np.all(array == np.round(array)) or np.any(array < 2):
        raise ValueError(f"orders: expected a non-empty list of integers >= 2, got {list(orders)!r}")
    return array.astype(int)


def _check_sigma(sigma: float) -> None:
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma: expected a finite noise multiplier > 0, got {sigma!r}")


def gaussian_rdp(*, sigma: float, orders: Sequence[int] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP ε(α) = α/(2σ²) of the Gaussian mechanism with noise multiplier σ (Mironov 2017, Prop. 7), per order."""
    _check_sigma(sigma)
    return _check_orders(orders) / (2.0 * sigma**2)


def subsampled_gaussian_rdp(*, q: float, sigma: float | np.ndarray,
                            orders: Sequence[int] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP of one Poisson-subsampled Gaussian step, per integer order (Mironov, Talwar & Zhang 2019, §3.3).

    ε(α) = log(Σ_k C(α,k)(1−q)^{α−k} q^k exp((k²−k)/(2σ²))) / (α−1), evaluated in log space. ``q = 1`` gives
    :func:`gaussian_rdp` exactly and ``q = 0`` gives 0. A 1-D array of σ's gives one row per σ."""
    if not (0.0 <= q <= 1.0):
        raise ValueError(f"q: expected a sampling probability in [0, 1], got {q!r}")
    sigmas = np.atleast_1d(np.asarray(sigma, dtype=float))
    for value in sigmas:
        _check_sigma(float(value))
    alphas = _check_orders(orders)
    if q == 0.0:
        rdp = np.zeros((sigmas.size, alphas.size))
    elif q == 1.0:
        rdp = alphas[None, :] / (2.0 * sigmas[:, None] ** 2)
    else:
        # all orders at once: row α of the k-grid holds k = 0..α and -inf beyond (a zero term in the sum)
        k = np.arange(alphas.max() + 1)[None, :]
        a = alphas[:, None]
        inside = k <= a
        log_binomial_weights = np.where(
            inside, special.gammaln(a + 1) - special.gammaln(k + 1) - special.gammaln(np.maximum(a - k, 0) + 1)
            + (a - k) * math.log1p(-q) + k * math.log(q), -np.inf)
        log_terms = log_binomial_weights[None, :, :] + (k * k - k)[None, :, :] / (2.0 * sigmas[:, None, None] ** 2)
        rdp = special.logsumexp(log_terms, axis=2) / (alphas[None, :] - 1)
    return rdp[0] if np.ndim(sigma) == 0 else rdp


def compose(rdps: Sequence[np.ndarray]) -> np.ndarray:
    """RDP of the adaptive composition of mechanisms: the per-order sum (Mironov 2017, Prop. 1)."""
    if len(rdps) == 0:
        raise ValueError("rdps: expected at least one mechanism's RDP curve, got none")
    return np.sum(np.stack([np.asarray(r, dtype=float) for r in rdps]), axis=0)


@dataclass(frozen=True)
class PrivacySpent:
    """An (ε, δ) guarantee read off an RDP curve: ``epsilon`` at ``delta``, attained at Rényi order ``order``."""

    epsilon: float
    delta: float
    order: int


def epsilon_from_rdp(rdp: np.ndarray, *, delta: float, orders: Sequence[int] = DEFAULT_ORDERS) -> PrivacySpent:
    """(ε, δ)-DP from RDP: ε = min_α ε(α) + log(1/δ)/(α−1) (Mironov 2017, Prop. 3)."""
    if not (0.0 < delta < 1.0):
        raise ValueError(f"delta: expected a probability in (0, 1), got {delta!r}")
    alphas = _check_orders(orders)
    rdp = np.asarray(rdp, dtype=float)
    if rdp.shape != alphas.shape:
        raise ValueError(f"rdp: expected one value per order ({alphas.size}), got shape {rdp.shape}")
    candidates = rdp + math.log(1.0 / delta) / (alphas - 1)
    best = int(np.argmin(candidates))
    return PrivacySpent(float(candidates[best]), delta, int(alphas[best]))


def schedule_epsilon(sigmas: Sequence[float], *, q: float, delta: float,
                     orders: Sequence[int] = DEFAULT_ORDERS) -> PrivacySpent:
    """The (ε, δ) spent by DP-SGD steps with noise multipliers ``sigmas`` (one per step) at sampling rate q."""
    if len(sigmas) == 0:
        raise ValueError("sigmas: expected at least one step's noise multiplier, got none")
    unique, counts = np.unique(np.asarray(sigmas, dtype=float), return_counts=True)
    # steps with one σ share an RDP curve: compose as count · curve (Prop. 1), far cheaper than one per step
    total = np.sum(counts[:, None] * subsampled_gaussian_rdp(q=q, sigma=unique, orders=orders), axis=0)
    return epsilon_from_rdp(total, delta=delta, orders=orders)


def scale_for_epsilon(shape: Sequence[float], *, target_epsilon: float, q: float, delta: float,
                      orders: Sequence[int] = DEFAULT_ORDERS, relative_tolerance: float = 1e-6) -> float:
    """The factor s such that the schedule σ_t = s · shape_t spends ``target_epsilon`` (up to a relative
    tolerance, from above in s so the spend never exceeds the target), by bisection on log s."""
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ValueError(f"target_epsilon: expected a finite ε > 0, got {target_epsilon!r}")
    shape = np.asarray(shape, dtype=float)
    if shape.size == 0 or np.any(shape <= 0) or not np.all(np.isfinite(shape)):
        raise ValueError("shape: expected a non-empty schedule of finite positive numbers")

    def spent(scale: float) -> float:
        return schedule_epsilon(scale * shape, q=q, delta=delta, orders=orders).epsilon

    low, high = 1e-2, 1.0
    while spent(high) > target_epsilon:  # widen until the bracket holds the target
        low, high = high, high * 4.0
        if high > 1e6:
            raise ValueError(f"target_epsilon={target_epsilon} is not reachable with σ ≤ 1e6 (q={q}, "
                             f"steps={shape.size}, δ={delta})")
    while spent(low) < target_epsilon and low > 1e-6:
        low /= 4.0
    while high / low > 1.0 + relative_tolerance:
        middle = math.sqrt(low * high)
        if spent(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return high


def noise_multiplier_for_epsilon(*, target_epsilon: float, steps: int, q: float, delta: float,
                                 orders: Sequence[int] = DEFAULT_ORDERS) -> float:
    """The constant noise multiplier σ for which ``steps`` subsampled-Gaussian steps spend ``target_epsilon``."""
    if steps < 1:
        raise ValueError(f"steps: expected at least 1, got {steps!r}")
    return scale_for_epsilon(np.ones(steps), target_epsilon=target_epsilon, q=q, delta=delta, orders=orders)
