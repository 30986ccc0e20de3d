"""Automate-CoT (Shum et al. 2023): the VR policy gradient's expectation against the exact gradient by enumeration
on a tiny pool, the simplex projection on hand-built vectors, and the fast demo's direction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from safetybed.suite.prompt_opt.automate_cot import ENTRY, Config, project_to_simplex, vr_policy_gradient
from safetybed.suite.registry import DemoResult, run_demo

#: A tiny pool: 2 slots of 3 exemplars, non-uniform categoricals and a fixed loss per prompt set.
PROBABILITIES = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
LOSS = np.array([[1.0, 2.5, 0.3], [0.7, 1.9, 3.0], [2.2, 0.1, 1.4]])  # LOSS[j0, j1]
SETS = [np.array(s) for s in itertools.product(range(3), range(3))]


def _set_probability(chosen):
    return float(np.prod(PROBABILITIES[np.arange(2), chosen]))


def _exact_gradient():
    """d E[L] / d p_kj of the multilinear E[L] = sum_S prod_k p_{k,S_k} L(S), by enumeration."""
    gradient = np.zeros_like(PROBABILITIES)
    for chosen in SETS:
        for slot in range(2):
            other = 1 - slot
            gradient[slot, chosen[slot]] += PROBABILITIES[other, chosen[other]] * LOSS[tuple(chosen)]
    expected_loss = sum(_set_probability(s) * LOSS[tuple(s)] for s in SETS)
    return gradient, expected_loss


@pytest.mark.parametrize("n_samples", [2, 3])
@pytest.mark.parametrize("derivative, factor", [("official", 2.0), ("score", 1.0)])
def test_vr_gradient_mean_is_the_exact_gradient_by_enumeration(n_samples, derivative, factor):
    expectation = np.zeros_like(PROBABILITIES)
    for draw in itertools.product(SETS, repeat=n_samples):
        weight = np.prod([_set_probability(s) for s in draw])
        losses = np.array([LOSS[tuple(s)] for s in draw])
        expectation += weight * vr_policy_gradient(losses, np.array(draw), PROBABILITIES, derivative=derivative)
    gradient, expected_loss = _exact_gradient()
    # official +-1/p derivative: 2 (G - E[L]); plain score: G - E[L] (per-slot constant dropped by the projection)
    assert expectation == pytest.approx(factor * (gradient - expected_loss), abs=1e-12)
    # projected onto the simplex tangent (mean over each slot removed) it is factor x the exact gradient's
    tangent = gradient - gradient.mean(axis=1, keepdims=True)
    assert expectation - expectation.mean(axis=1, keepdims=True) == pytest.approx(factor * tangent, abs=1e-12)


def test_vanilla_gradient_is_loss_times_derivative():
    g = vr_policy_gradient(np.array([2.0]), np.array([[1, 0]]), PROBABILITIES)
    assert g == pytest.approx(2.0 * np.array([[-2.0, 1 / 0.3, -5.0], [10.0, -1 / 0.6, -1 / 0.3]]))
    with pytest.raises(ValueError, match="derivative"):
        vr_policy_gradient(np.array([2.0]), np.array([[1, 0]]), PROBABILITIES, derivative="nope")


def test_simplex_projection_on_hand_built_vectors():
    def project(values, floor=0.0):
        return project_to_simplex(np.array(values), floor=floor)[0]

    assert project([0.2, 0.3, 0.5]) == pytest.approx([0.2, 0.3, 0.5])  # already on the simplex
    assert project([0.3, 0.3, 0.3]) == pytest.approx([1 / 3] * 3)  # +1/30 each
    assert project([0.6, 0.6, -1.0]) == pytest.approx([0.5, 0.5, 0.0])
    assert project([2.0, 0.0]) == pytest.approx([1.0, 0.0])
    assert project([0.9, 0.5, 0.1]) == pytest.approx([0.7, 0.3, 0.0])  # both shifted by -0.2, the last clipped
    # with the floor 0.1: the lowest entry is held there, the other two drop by 0.25 each to share 0.9
    assert project([0.9, 0.5, 0.1], floor=0.1) == pytest.approx([0.65, 0.25, 0.1])
    rows = project_to_simplex(np.random.default_rng(3).normal(size=(50, 10)), floor=1e-4)
    assert rows.sum(axis=1) == pytest.approx(np.ones(50)) and (rows >= 1e-4 - 1e-15).all()
    with pytest.raises(ValueError, match="floor"):
        project_to_simplex(np.ones(4), floor=0.3)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="pool_size"):
        Config(pool_size=41)
    with pytest.raises(ValueError, match="samples"):
        Config(samples=1)


def test_fast_demo_direction():
    result = run_demo(ENTRY, fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.name == "automate-cot" and result.fast
    # VR-PG's gradient variance is lower than vanilla's, and its set is closer to the oracle (0.05 slack)
    assert result.measured["gradient_variance"].mean < result.baseline["gradient_variance"].mean
    assert result.measured["gap_to_oracle"].mean < result.baseline["gap_to_oracle"].mean + 0.05
    assert result.measured["accuracy"].mean > result.baseline["random_set_accuracy"].mean
