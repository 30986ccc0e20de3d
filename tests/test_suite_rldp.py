"""RLDP (Khadangi et al. 2025) and the private-family RDP accountant: closed forms of the Gaussian mechanism,
composition, the RDP -> (ε, δ) conversion by hand, the subsampled Gaussian against numerical integration of the
Rényi divergence, calibration of σ to a target ε, per-group clipping bounds, and the fast demo's direction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from safetybed.suite.private.accountant import (
    DEFAULT_ORDERS,
    compose,
    epsilon_from_rdp,
    gaussian_rdp,
    noise_multiplier_for_epsilon,
    scale_for_epsilon,
    schedule_epsilon,
    subsampled_gaussian_rdp,
)
from safetybed.suite.private.rldp import (
    ENTRY,
    GROUPS,
    Config,
    clip_per_group,
    clipped_gradient_sum,
    dp_sgd_step,
    fast_group_norms,
    group_norms,
    init_params,
    make_task,
    per_example_gradients,
)
from safetybed.suite.registry import VERDICTS, DemoResult, run_demo


def test_full_batch_gaussian_rdp_is_alpha_over_two_sigma_squared():
    orders = (2, 3, 7, 32)
    for sigma in (0.5, 1.0, 3.7):
        expected = np.array(orders) / (2 * sigma**2)
        assert gaussian_rdp(sigma=sigma, orders=orders) == pytest.approx(expected, rel=1e-15)
        # the subsampled formula at q = 1, evaluated through its general branch just below 1, tends to it
        assert subsampled_gaussian_rdp(q=1.0, sigma=sigma, orders=orders) == pytest.approx(expected, rel=1e-15)
        assert subsampled_gaussian_rdp(q=1 - 1e-12, sigma=sigma, orders=orders) == pytest.approx(expected, rel=1e-6)


def test_composition_adds_per_order():
    orders = (2, 4, 8)
    first, second = gaussian_rdp(sigma=1.0, orders=orders), gaussian_rdp(sigma=2.0, orders=orders)
    assert compose([first, second, second]) == pytest.approx(first + 2 * second)
    # full-batch composition: ε(α) = Σ_t α/(2σ_t²)
    sigmas = [1.0, 2.0, 2.0, 0.5]
    total = sum(np.array(orders) / (2 * s**2) for s in sigmas)
    spent = schedule_epsilon(sigmas, q=1.0, delta=1e-5, orders=orders)
    assert spent == epsilon_from_rdp(total, delta=1e-5, orders=orders)


def test_rdp_to_dp_conversion_by_hand():
    # orders (2, 3), RDP (1.0, 1.5), δ = e^-2: candidates 1 + 2/1 = 3 and 1.5 + 2/2 = 2.5 -> ε = 2.5 at α = 3
    spent = epsilon_from_rdp(np.array([1.0, 1.5]), delta=math.exp(-2.0), orders=(2, 3))
    assert spent.epsilon == pytest.approx(2.5, rel=1e-14)
    assert spent.order == 3
    # one Gaussian step σ = 1, δ = 1e-5, order 5 alone: 5/2 + log(1e5)/4
    single = epsilon_from_rdp(gaussian_rdp(sigma=1.0, orders=(5,)), delta=1e-5, orders=(5,))
    assert single.epsilon == pytest.approx(2.5 + math.log(1e5) / 4, rel=1e-14)
    with pytest.raises(ValueError, match="delta"):
        epsilon_from_rdp(np.array([1.0]), delta=0.0, orders=(2,))


def _renyi_divergence_by_quadrature(q: float, sigma: float, alpha: int) -> float:
    """D_α((1−q)N(0,σ²) + qN(1,σ²) ‖ N(0,σ²)) by numerical integration (independent of the binomial sum)."""
    def integrand(x: float) -> float:  # in log space: the likelihood ratio to the power α overflows otherwise
        log_base = -x * x / (2 * sigma**2) - math.log(sigma * math.sqrt(2 * math.pi))
        log_ratio = np.logaddexp(math.log1p(-q), math.log(q) + (2 * x - 1) / (2 * sigma**2))
        return math.exp(log_base + alpha * log_ratio)

    # the integrand is a mixture of Gaussians centred at 0..α (unit spacing): [-40σ, α + 40σ] holds all its mass
    value, _ = integrate.quad(integrand, -40 * sigma, alpha + 40 * sigma, epsabs=0.0, epsrel=1e-12, limit=400,
                              points=list(range(alpha + 1)))
    return math.log(value) / (alpha - 1)


@pytest.mark.parametrize(("q", "sigma"), [(0.01, 1.0), (0.1, 0.8), (0.3, 2.0), (0.05, 0.6)])
def test_subsampled_gaussian_matches_numerical_renyi_divergence(q, sigma):
    orders = (2, 3, 5, 8)
    expected = [_renyi_divergence_by_quadrature(q, sigma, a) for a in orders]
    assert subsampled_gaussian_rdp(q=q, sigma=sigma, orders=orders) == pytest.approx(expected, rel=1e-7)


def test_subsampling_amplifies_and_vanishes_as_q_goes_to_zero():
    sigma = 1.2
    full = gaussian_rdp(sigma=sigma)
    previous = full
    for q in (0.5, 0.1, 0.01, 1e-3, 1e-5):
        current = subsampled_gaussian_rdp(q=q, sigma=sigma)
        assert np.all(current <= previous + 1e-15)
        previous = current
    assert np.all(subsampled_gaussian_rdp(q=1e-5, sigma=sigma, orders=range(2, 9)) < 1e-7)
    assert np.all(subsampled_gaussian_rdp(q=0.0, sigma=sigma) == 0.0)
    # small-q, small-order behaviour: ε(2) = log(1 + q²(e^{1/σ²} − 1)) exactly
    q = 0.02
    assert subsampled_gaussian_rdp(q=q, sigma=sigma, orders=(2,))[0] == pytest.approx(
        math.log1p(q**2 * (math.exp(1 / sigma**2) - 1)), rel=1e-12)


def test_noise_multiplier_calibration_hits_the_target_from_below():
    sigma = noise_multiplier_for_epsilon(target_epsilon=2.0, steps=200, q=0.05, delta=1e-5)
    spent = schedule_epsilon([sigma] * 200, q=0.05, delta=1e-5).epsilon
    assert spent <= 2.0
    assert spent == pytest.approx(2.0, rel=1e-5)
    # more noise is needed for more steps, less for a looser budget
    assert noise_multiplier_for_epsilon(target_epsilon=2.0, steps=400, q=0.05, delta=1e-5) > sigma
    assert noise_multiplier_for_epsilon(target_epsilon=4.0, steps=200, q=0.05, delta=1e-5) < sigma
    # any schedule shape is brought to the target
    shape = np.linspace(0.5, 2.0, 50)
    scale = scale_for_epsilon(shape, target_epsilon=1.0, q=0.1, delta=1e-6)
    assert schedule_epsilon(scale * shape, q=0.1, delta=1e-6).epsilon == pytest.approx(1.0, rel=1e-5)
    assert len(DEFAULT_ORDERS) > 10


def _small_problem():
    config = Config(features=6, hidden=5, classes=3, train_size=40, public_size=10, test_size=10)
    rng = np.random.default_rng(3)
    task = make_task(config, rng=rng)
    return config, init_params(config, rng=rng), task


def test_per_example_gradients_match_finite_differences():
    _, params, task = _small_problem()
    x, y = task.x_train[:1], task.y_train[:1]

    def loss(p):
        hidden = np.maximum(x @ p["w1"].T + p["b1"], 0.0)
        logits = hidden @ p["w2"].T + p["b2"]
        return float(np.log(np.sum(np.exp(logits))) - logits[0, y[0]])

    gradients = per_example_gradients(params, x, y)
    for key in params:
        numeric = np.zeros_like(params[key])
        for index in np.ndindex(params[key].shape):
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[key][index] += 1e-6
            minus[key][index] -= 1e-6
            numeric[index] = (loss(plus) - loss(minus)) / 2e-6
        assert gradients[key][0] == pytest.approx(numeric, abs=1e-6)


def test_each_clipped_per_example_gradient_is_within_its_threshold():
    _, params, task = _small_problem()
    gradients = per_example_gradients(params, task.x_train, task.y_train)
    norms = group_norms(gradients)
    assert fast_group_norms(params, task.x_train, task.y_train)["hidden"] == pytest.approx(norms["hidden"])
    assert fast_group_norms(params, task.x_train, task.y_train)["output"] == pytest.approx(norms["output"])
    thresholds = {g: 0.5 * float(np.median(norms[g])) for g in GROUPS}
    clipped = clip_per_group(gradients, thresholds)
    clipped_norms = group_norms(clipped)
    for group in GROUPS:
        assert np.all(clipped_norms[group] <= thresholds[group] * (1 + 1e-12))
        small = norms[group] <= thresholds[group]
        assert clipped_norms[group][small] == pytest.approx(norms[group][small])  # unclipped examples untouched
    total = np.sqrt(sum(clipped_norms[g] ** 2 for g in GROUPS))
    assert np.all(total <= math.sqrt(sum(c**2 for c in thresholds.values())) * (1 + 1e-12))
    summed, _ = clipped_gradient_sum(params, task.x_train, task.y_train, thresholds=thresholds)
    for key in params:
        assert summed[key] == pytest.approx(clipped[key].sum(axis=0), abs=1e-12)


def test_dp_sgd_step_noise_scales_with_sensitivity():
    config, params, task = _small_problem()
    thresholds = {"hidden": 0.3, "output": 0.4}
    before = {k: v.copy() for k, v in params.items()}
    terms = dp_sgd_step(params, task.x_train[:0], task.y_train[:0], thresholds=thresholds, sigma=2.0,
                        expected_batch=1.0, learning_rate=1.0, rng=np.random.default_rng(0))
    assert terms["sensitivity"] == pytest.approx(0.5)
    assert terms["noise_std"] == pytest.approx(1.0)
    # an empty batch releases noise only: its empirical std is σ·√(ΣC²) = 1
    released = np.concatenate([(before[k] - params[k]).ravel() for k in params])
    assert np.std(released) == pytest.approx(1.0, rel=0.35)
    with pytest.raises(ValueError, match="delta"):
        Config(delta=1.5)
    with pytest.raises(ValueError, match="steps"):
        Config(steps=0)


def test_fast_demo_is_well_formed_and_spends_the_same_epsilon():
    result = run_demo(ENTRY, fast=True, seed=0)
    assert isinstance(result, DemoResult)
    assert result.verdict in VERDICTS
    assert set(result.baseline) <= set(result.measured)
    # both arms spend exactly the budget (accountant-checked, never above)
    for arm in (result.measured, result.baseline):
        assert all(1.999 <= v <= 2.0 for v in arm["epsilon_spent"].values)
    # direction with a stated tolerance: the controller is not worse than fixed-C by more than 1 point
    gain = result.measured["test_accuracy"].mean - result.baseline["test_accuracy"].mean
    assert gain >= -0.01
    # the verdict follows the numbers
    steps_fraction = result.measured["steps_to_baseline_final"].mean
    if gain >= 0.02 or steps_fraction <= 0.8:
        assert result.verdict == "reproduced"
    elif gain > 0 or steps_fraction < 1.0:
        assert result.verdict == "partly"
    else:
        assert result.verdict == "not reproduced"
