"""Tests of BSVRB (Hu et al. 2023): exact hypergradient and MSVR mean against closed forms, and the fast demo."""

from __future__ import annotations

import numpy as np

from safetybed.suite.optim import bsvrb
from safetybed.suite.registry import DemoResult


def _problem() -> bsvrb.RidgeBlocks:
    return bsvrb.RidgeBlocks.make(n_blocks=8, rows=10, dim=4, rng=np.random.default_rng(3))


def test_hypergradient_matches_finite_differences_of_closed_form_value() -> None:
    problem = _problem()
    x = np.array([0.3, -0.5, 0.8, -1.2])

    def value(z: np.ndarray) -> float:
        return problem.upper_loss(problem.lower_solution(z))

    eps = 1e-6
    finite = np.array([(value(x + eps * e) - value(x - eps * e)) / (2 * eps) for e in np.eye(4)])
    np.testing.assert_allclose(bsvrb.exact_hypergradient(problem, x), finite, rtol=1e-5, atol=1e-9)


def test_msvr_estimator_mean_converges_to_exact_hessian() -> None:
    """At a fixed point, E[u_{t+1}] - H = (1 - p beta)(E[u_t] - H): the mean of the tracked Hessian is the exact one."""
    problem = _problem()
    m, n = problem.train_targets.shape
    x, y = np.zeros(4), np.zeros((m, 4))
    exact = problem.oracles(x, y, np.arange(m), np.broadcast_to(np.arange(n), (m, n)))["hess_yy_g"]
    rng = np.random.default_rng(0)
    blocks_per_step, beta, replicas = 2, 0.3, 400
    gamma = bsvrb.msvr_gamma(n_blocks=m, blocks_per_step=blocks_per_step, beta=beta)
    estimates = np.zeros((replicas, m, 4, 4))
    for _ in range(80):
        for r in range(replicas):
            blocks = rng.choice(m, size=blocks_per_step, replace=False)
            h = problem.oracles(x, y, blocks, rng.integers(0, n, size=(blocks_per_step, 2)))["hess_yy_g"]
            estimates[r, blocks] = bsvrb.msvr_update(estimates[r, blocks], h, h, beta=beta, gamma=gamma)
    mean = estimates.mean(axis=0)
    stderr = estimates.std(axis=0) / np.sqrt(replicas)
    assert np.all(np.abs(mean - exact) <= 5 * stderr + 1e-3)


def test_fast_demo_is_well_formed() -> None:
    result = bsvrb.demo(fast=True, seed=0)
    assert isinstance(result, DemoResult)
    assert result.verdict in ("reproduced", "partly", "not reproduced")
    ratio = result.measured["bsgd_over_bsvrb_blocks"].mean
    # The verdict follows the measured ratio and speedup (thresholds 2 and 2).
    speedup = result.measured["iteration_speedup_I5_to_I20"].mean
    expected = sum([ratio >= 2.0, speedup >= 2.0])
    assert result.verdict == ("reproduced", "partly", "not reproduced")[2 - expected]
    assert result.measured["blocks_to_target"].n == 3
