"""GGTD (Kim et al. 2025): the GGD density against scipy's ``gennorm`` and the Laplace / Gaussian closed forms, the
aleatoric-variance formula against numerical integration, the shape MLE on large Laplace / Gaussian samples, BIEV
weights and their effective-batch constraint, a hand-computed loss, and the fast demo's direction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special, stats

from safetybed.suite.registry import DemoResult, run_demo
from safetybed.suite.value_learning.ggtd import (
    ENTRY,
    Config,
    _excess_kurtosis,
    biev_weights,
    effective_batch_size,
    ggd_log_density,
    ggd_nll,
    ggd_variance,
    ggtd_loss,
)

SHAPES = (0.7, 1.0, 1.5, 2.0, 3.5)


def _density(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """exp(-ggd_nll): the torch loss itself read as a log density."""
    nll = ggd_nll(torch.as_tensor(x, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64), alpha=alpha)
    return np.exp(-nll.numpy())


@pytest.mark.parametrize("beta", SHAPES)
def test_ggd_density_integrates_to_one_and_matches_scipy_gennorm(beta):
    alpha = 1.7
    total, _ = integrate.quad(lambda x: float(_density(np.array(x), alpha, beta)), -np.inf, np.inf)
    assert total == pytest.approx(1.0, abs=1e-6)
    x = np.linspace(-6.0, 6.0, 25)
    # scipy.stats.gennorm is an independent implementation of the same GGD
    expected = stats.gennorm.logpdf(x, beta, scale=alpha)
    assert np.log(_density(x, alpha, beta)) == pytest.approx(expected, abs=1e-6)
    assert ggd_log_density(x, alpha=alpha, beta=beta) == pytest.approx(expected, abs=1e-9)


def test_ggd_is_laplace_at_shape_1_and_gaussian_at_shape_2():
    x = np.linspace(-5.0, 5.0, 41)
    b, sigma = 0.8, 1.3
    assert np.log(_density(x, b, 1.0)) == pytest.approx(stats.laplace.logpdf(x, scale=b), abs=1e-6)
    assert np.log(_density(x, math.sqrt(2) * sigma, 2.0)) == pytest.approx(stats.norm.logpdf(x, scale=sigma),
                                                                            abs=1e-6)


@pytest.mark.parametrize("beta", SHAPES)
def test_aleatoric_variance_matches_numerical_integration(beta):
    alpha = 1.3
    second_moment, _ = integrate.quad(lambda x: x * x * float(_density(np.array(x), alpha, beta)), -np.inf, np.inf)
    assert float(ggd_variance(alpha, beta)) == pytest.approx(second_moment, rel=1e-6)
    # closed forms: Laplace 2 b^2, Gaussian sigma^2 = alpha^2 / 2
    assert float(ggd_variance(0.8, 1.0)) == pytest.approx(2 * 0.8**2)
    assert float(ggd_variance(math.sqrt(2) * 1.3, 2.0)) == pytest.approx(1.3**2)
    # decreasing in beta at a fixed scale (the paper's inverse relation)
    assert np.all(np.diff([float(ggd_variance(1.0, b)) for b in SHAPES]) < 0)


def _shape_mle(samples: np.ndarray) -> float:
    """Joint (alpha, beta) minimiser of the mean ggd_nll over a sample."""
    x = torch.as_tensor(samples, dtype=torch.float64)

    def mean_nll(params: np.ndarray) -> float:
        log_alpha, log_beta = (torch.tensor(p, dtype=torch.float64) for p in params)
        return float(ggd_nll(x, log_beta.exp().expand_as(x), alpha=log_alpha.exp()).mean())

    result = optimize.minimize(mean_nll, x0=np.array([0.0, math.log(1.5)]), method="Nelder-Mead",
                               options={"xatol": 1e-5, "fatol": 1e-9})
    return math.exp(result.x[1])


def test_nll_minimiser_over_the_shape_recovers_laplace_and_gaussian():
    rng = np.random.default_rng(20251203)
    n = 200_000
    # standard errors of the shape MLE at this n are ~0.005 (Laplace) and ~0.01 (Gaussian); tolerance 5x
    assert _shape_mle(rng.laplace(0.0, 0.7, n)) == pytest.approx(1.0, abs=0.03)
    assert _shape_mle(rng.normal(0.0, 2.0, n)) == pytest.approx(2.0, abs=0.06)


def test_official_code_form_does_not_recover_the_laplace_shape():
    """The code's ``|delta| * beta - log beta + lgamma(1/beta)`` on unit-Laplace errors (E|delta| = 1, alpha = 1):
    its minimiser is beta ≈ 0.77, not 1 (the discrepancy documented in the module)."""
    result = optimize.minimize_scalar(lambda b: b * 1.0 - math.log(b) + special.gammaln(1 / b), bounds=(0.1, 5),
                                      method="bounded")
    assert result.x == pytest.approx(0.7726, abs=1e-3)


def test_biev_weights_sum_to_one_and_meet_the_effective_batch_constraint():
    rng = np.random.default_rng(3)
    batch, members = 64, 5
    spread = np.exp(rng.uniform(-4.0, 2.0, batch))  # very unequal ensemble spreads: the raw ESS is small
    td_errors = rng.normal(0.0, 1.0, (batch, members)) * spread[:, None]
    raw = 1.0 / np.var(td_errors, axis=1)
    assert effective_batch_size(raw) < 16
    weights, xi = biev_weights(td_errors, min_effective_batch=16)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert (weights > 0).all() and xi > 0
    assert effective_batch_size(weights) >= 16
    assert effective_batch_size(weights) == pytest.approx(16, rel=1e-6)  # the smallest such xi
    # inverse error variance: the most spread-out transition gets the least weight
    assert np.argmin(weights) == np.argmax(np.var(td_errors, axis=1) / (_excess_kurtosis(td_errors) / members
                                                                           + (members + 1) / (members - 1)))
    # a constraint already met needs no shift; the constraint is capped at B - 1
    _, no_shift = biev_weights(td_errors, min_effective_batch=1)
    assert no_shift == 0.0
    capped, _ = biev_weights(td_errors, min_effective_batch=1000)
    assert effective_batch_size(capped) >= batch - 1
    assert _excess_kurtosis(td_errors) == pytest.approx(stats.kurtosis(td_errors, axis=1, bias=False))
    with pytest.raises(ValueError, match="ensemble >= 4"):
        biev_weights(td_errors[:, :3], min_effective_batch=16)


def test_ggtd_loss_by_hand():
    # B = 2, E = 1, alpha = 1, beta = 1: NLL = |delta| - log 1 + lgamma(1) + log 2 = |delta| + log 2
    values = torch.tensor([[1.0], [-2.0]], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[0.5], [0.0]], dtype=torch.float64)
    beta = torch.ones(2, 1, dtype=torch.float64)
    out = ggtd_loss(values, targets, beta, biev_temperature=0.0)
    assert float(out["loss_ggd_nll"]) == pytest.approx((0.5 + 2.0) / 2 + math.log(2))
    out["loss_value"].backward()
    assert values.grad.flatten().tolist() == pytest.approx([0.5, -0.5])  # sign(delta) / B
    with pytest.raises(ValueError, match="one shape"):
        ggtd_loss(values, targets[:1], beta)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="ensemble_size"):
        Config(ensemble_size=3)
    with pytest.raises(ValueError, match="gamma"):
        Config(gamma=1.0)


def test_fast_demo_direction():
    result = run_demo(ENTRY, fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.name == "ggtd" and result.fast
    assert result.seeds == (0, 1)
    for family in ("laplace", "student_t3", "gaussian"):
        assert result.measured[f"rmse_{family}"].n == 2
        assert 0 < result.measured[f"rmse_{family}"].mean < 2.0
        assert 0 < result.baseline[f"rmse_{family}"].mean < 2.0
    # the learned shape separates the families: Laplace near 1, Gaussian near 2 (tolerance 0.4 on 2 seeds)
    assert result.measured["beta_laplace"].mean == pytest.approx(1.0, abs=0.4)
    assert result.measured["beta_gaussian"].mean == pytest.approx(2.0, abs=0.4)
    assert result.measured["beta_laplace"].mean < result.measured["beta_gaussian"].mean - 0.5
    # 500 steps do not let the sign-like GGD gradients settle: on these seeds GGD + BIEV is *worse* than MSE in
    # the fast variant (the full demo's 1500 steps carry the RMSE claim), so the RMSE threshold is missed here
    assert result.measured["rmse_reduction_laplace"].mean < 0.2
    assert result.verdict == "partly"  # the shapes hold, the RMSE reduction does not
