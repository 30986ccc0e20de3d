"""DIFF2 (Murata & Suzuki 2023): sensitivity of the clipped difference, the zero-noise reduction, the calibration."""

from __future__ import annotations

import numpy as np
import pytest

from safetybed.suite.private import diff2
from safetybed.suite.private.accountant import compose, epsilon_from_rdp, gaussian_rdp
from safetybed.suite.registry import VERDICTS, DemoResult


def _small_problem(seed: int = 0, n: int = 64) -> tuple[diff2.Problem, diff2.Config]:
    config = diff2.Config(n_examples=n, dimension=5, steps=12, restart_period=4)
    return diff2.make_problem(config, rng=np.random.default_rng(seed)), config


def test_clipped_difference_sum_has_sensitivity_at_most_the_clip() -> None:
    # Oracle: removing example j changes Σ_i clip_C(d_i) by clip_C(d_j), whose norm is ≤ C (add/remove adjacency).
    rng = np.random.default_rng(1)
    clip = 0.3
    for _ in range(50):
        now = 5.0 * rng.standard_normal((20, 7))  # large differences, so the clip binds for most rows
        before = rng.standard_normal((20, 7))
        full = diff2.clipped_difference_sum(now, before, clip=clip)
        for j in range(20):
            keep = np.arange(20) != j
            neighbour = diff2.clipped_difference_sum(now[keep], before[keep], clip=clip)
            assert np.linalg.norm(full - neighbour) <= clip * (1 + 1e-12)


def test_difference_clip_from_smoothness_never_binds() -> None:
    # ‖∇ℓ_i(x) − ∇ℓ_i(y)‖ ≤ (‖a_i‖²/4)‖x − y‖ for the logistic loss: C₂ = L̂‖x − y‖ leaves every row unchanged.
    problem, _ = _small_problem()
    rng = np.random.default_rng(2)
    for _ in range(20):
        x, y = rng.standard_normal(5), rng.standard_normal(5)
        differences = problem.example_gradients(x) - problem.example_gradients(y)
        clip = problem.smoothness * np.linalg.norm(x - y)
        assert np.array_equal(diff2.clip_rows(differences, clip), differences)


def _non_private_variance_reduced(problem: diff2.Problem, config: diff2.Config) -> tuple[np.ndarray, list[float]]:
    """The hand-written non-private recursion: checkpoint v = ∇F(x); else v += ∇F(x_t) − ∇F(x_{t−1}) per example."""
    n = problem.features.shape[0]
    x = np.zeros(problem.features.shape[1])
    x_before, g_before, v = x, problem.example_gradients(x), np.zeros_like(x)
    history = []
    for t in range(config.steps):
        g = problem.example_gradients(x)
        if t % config.restart_period == 0:
            v = g.sum(axis=0) / n + problem.regulariser_gradient(x)
        else:
            v = (v + (g - g_before).sum(axis=0) / n
                 + problem.regulariser_gradient(x) - problem.regulariser_gradient(x_before))
        x_before, g_before = x, g
        x = x - config.step_size * v
        history.append(float(np.sum(problem.full_gradient(x) ** 2)))
    return x, history


def test_zero_noise_is_exactly_the_non_private_variance_reduced_method() -> None:
    problem, config = _small_problem()
    run = diff2.diff2_gd(problem, config, checkpoint_multiplier=0.0, difference_multiplier=0.0,
                         rng=np.random.default_rng(3))
    expected_x, expected_history = _non_private_variance_reduced(problem, config)
    assert np.array_equal(run["weights"], expected_x)
    assert np.array_equal(run["gradient_norm_sq"], np.asarray(expected_history))


def test_zero_noise_estimator_telescopes_to_gradient_descent() -> None:
    # Σ of exact differences telescopes: v_t = ∇F(x_t), so the iterates are plain GD's up to rounding.
    problem, config = _small_problem()
    run = diff2.diff2_gd(problem, config, checkpoint_multiplier=0.0, difference_multiplier=0.0,
                         rng=np.random.default_rng(3))
    x = np.zeros(5)
    for _ in range(config.steps):
        x = x - config.step_size * problem.full_gradient(x)
    np.testing.assert_allclose(run["weights"], x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 4.0])
def test_calibrated_multipliers_spend_the_target_epsilon(epsilon: float) -> None:
    config = diff2.Config(epsilon=epsilon)
    calibration = diff2.calibrate(config)
    checkpoints = calibration.checkpoints
    assert checkpoints == config.steps // config.restart_period
    # hand composition of the two Gaussian mechanisms (Mironov 2017, Props. 1 and 3)
    rdp = compose([checkpoints * gaussian_rdp(sigma=calibration.checkpoint_multiplier),
                   (config.steps - checkpoints) * gaussian_rdp(sigma=calibration.difference_multiplier)])
    spent = epsilon_from_rdp(rdp, delta=config.delta).epsilon
    assert spent <= epsilon and spent == pytest.approx(epsilon, rel=1e-4)
    # each mechanism gets half the RDP budget
    assert checkpoints / calibration.checkpoint_multiplier**2 == pytest.approx(
        (config.steps - checkpoints) / calibration.difference_multiplier**2, rel=1e-9)
    dp_gd_rdp = config.steps * gaussian_rdp(sigma=calibration.dp_gd_multiplier)
    assert epsilon_from_rdp(dp_gd_rdp, delta=config.delta).epsilon == pytest.approx(epsilon, rel=1e-4)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="restart_period"):
        diff2.Config(steps=10, restart_period=20)
    with pytest.raises(ValueError, match="epsilon"):
        diff2.Config(epsilon=0.0)


def test_fast_demo_direction() -> None:
    result = diff2.demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.verdict in VERDICTS and result.seeds == (0, 1, 2, 3, 4)
    assert result.measured["epsilon_spent"].mean == pytest.approx(result.baseline["epsilon_spent"].mean, rel=1e-4)
    # direction at equal T = 100 (tolerance: strictly lower mean over 5 seeds)
    assert result.measured["grad_norm_sq_n2000"].mean < result.baseline["grad_norm_sq_T100_n2000"].mean
    ratio = result.measured["dpgd_over_diff2_n2000"].mean
    assert (result.verdict == "not reproduced") == (ratio <= 1.0)
