"""PA&DA (safetybed.suite.optim.pada): the importance-sampling rule against enumeration oracles, Kendall tau on
hand-built rankings, and the fast demo."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safetybed.suite.optim import pada
from safetybed.suite.registry import VERDICTS, DemoResult, get_entry, run_demo


def test_importance_weighted_estimate_is_unbiased_by_enumeration():
    rng = np.random.default_rng(0)
    gradients = rng.normal(size=(6, 3))
    probs = pada.pada_probabilities(np.abs(rng.normal(size=6)), tau=0.7)
    # E_{i~p}[w_i g_i] = sum_i p_i w_i g_i, enumerated exactly, must equal the uniform mean.
    expectation = probs @ (pada.importance_weights(probs)[:, None] * gradients)
    np.testing.assert_allclose(expectation, gradients.mean(axis=0), rtol=1e-12, atol=1e-12)


def test_gradient_norm_distribution_minimises_variance():
    rng = np.random.default_rng(1)
    gradients = rng.normal(size=(5, 4)) * np.array([0.1, 0.5, 1.0, 2.0, 4.0])[:, None]
    norms = np.linalg.norm(gradients, axis=1)
    best = pada.optimal_probabilities(norms)
    # Closed form of the minimum: (mean ||g_i||)^2 - ||mean g||^2.
    mean = gradients.mean(axis=0)
    assert pada.estimator_variance(gradients, best) == pytest.approx(norms.mean() ** 2 - mean @ mean, rel=1e-12)
    uniform = np.full(5, 0.2)
    assert pada.estimator_variance(gradients, uniform) == pytest.approx(np.mean(np.sum(gradients**2, 1)) - mean @ mean)
    for _ in range(200):
        other = rng.dirichlet(np.ones(5))
        assert pada.estimator_variance(gradients, other) >= pada.estimator_variance(gradients, best) - 1e-12


def test_pada_probabilities_mix_and_anneal():
    importance = np.array([1.0, 3.0, 0.0, 0.0])
    np.testing.assert_allclose(pada.pada_probabilities(importance, tau=0.0), [0.25] * 4)
    np.testing.assert_allclose(pada.pada_probabilities(importance, tau=1.0), [0.25, 0.75, 0.0, 0.0])
    np.testing.assert_allclose(pada.pada_probabilities(importance, tau=0.5), [0.25, 0.5, 0.125, 0.125])
    np.testing.assert_allclose(pada.pada_probabilities(np.zeros(3), tau=0.9), [1 / 3] * 3)
    with pytest.raises(ValueError, match="tau"):
        pada.pada_probabilities(importance, tau=1.5)


def test_kendall_tau_on_hand_built_rankings():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert pada.kendall_tau(a, a) == pytest.approx(1.0)
    assert pada.kendall_tau(a, -a) == pytest.approx(-1.0)
    # One adjacent swap among 4 items: 5 concordant, 1 discordant of 6 pairs -> 4/6.
    assert pada.kendall_tau(a, np.array([2.0, 1.0, 3.0, 4.0])) == pytest.approx(4 / 6)
    # tau-b with one tie in b: (5 - 0) / sqrt(6 * 5).
    assert pada.kendall_tau(a, np.array([1.0, 1.0, 3.0, 4.0])) == pytest.approx(5 / math.sqrt(30))


def test_data_importance_is_logit_gradient_norm():
    import torch
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    targets = torch.tensor([0, 1])
    p = 1 / (1 + math.exp(-2.0))
    np.testing.assert_allclose(pada.data_importance(logits, targets), [math.sqrt(0.5), math.sqrt(2) * p], rtol=1e-6)


def test_fast_demo_is_well_formed_and_direction():
    result = run_demo(get_entry("pada"), fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.verdict in VERDICTS
    assert set(result.measured) >= {"grad_variance", "kendall_tau"}
    # What the fast demo shows at seed 0 (see the module docstring): the unbiased PA&DA's importance weights on
    # parameter-free ops (importance 0, probability (1 - tau) / K) blow the gradient variance up, so the variance
    # claim fails. The Kendall tau difference on one seed of 27 architectures swings in sign between settings
    # (+0.39 and -0.14 seen while building), so only its range is asserted.
    assert result.measured["grad_variance"].mean > result.baseline["grad_variance"].mean
    for measures in (result.measured, result.baseline):
        assert -1.0 <= measures["kendall_tau"].mean <= 1.0
    assert result.verdict != "reproduced"
