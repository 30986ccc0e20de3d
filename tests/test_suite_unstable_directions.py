"""Unstable directions (Korkmaz 2024): the first-order flip perturbation against linear policies' closed forms,
the direction statistics against hand-built direction sets, and the fast demo's direction of effect."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from safetybed.errors import InputError
from safetybed.suite.diagnostics.unstable_directions import (
    ENTRY,
    Config,
    _subject,
    demo,
    energy_fraction,
    minimal_flip_perturbations,
    principal_subspace,
    sigma_coverage,
    subspace_angle_deg,
    temporal_alignment,
)
from safetybed.suite.registry import VERDICTS, DemoResult

EPSILON = 1e-3  # how far past (or short of) the predicted boundary the perturbed state is placed


def _linear_scores(weights: np.ndarray, bias: np.ndarray):
    w, b = torch.tensor(weights, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)
    return lambda x: x @ w.T + b


def test_deepfool_on_a_linear_score_policy_is_exact():
    rng = np.random.default_rng(0)
    weights, bias = rng.normal(size=(3, 5)), rng.normal(size=3)
    observations = rng.normal(size=(50, 5))
    flips = minimal_flip_perturbations(_linear_scores(weights, bias), observations, discrete=True)
    scores = observations @ weights.T + bias
    chosen = scores.argmax(axis=1)
    for x, q, a, v, distance, b in zip(observations, scores, chosen, flips.perturbations, flips.distances,
                                       flips.targets, strict=True):
        # Analytic margin distance to each other action's boundary: (q_a - q_b) / ||w_a - w_b||; the nearest wins.
        margins = {c: (q[a] - q[c]) / np.linalg.norm(weights[a] - weights[c]) for c in range(3) if c != a}
        nearest = min(margins, key=margins.get)
        assert b == nearest
        assert distance == pytest.approx(margins[nearest], rel=1e-4)
        assert np.linalg.norm(v) == pytest.approx(distance, rel=1e-6)
        past, short = x + (1 + EPSILON) * v, x + (1 - EPSILON) * v
        assert (weights @ past + bias).argmax() == nearest  # epsilon past the boundary: the action is b
        assert (weights @ short + bias).argmax() == a       # epsilon short of it: still a


def test_runner_up_target_picks_the_second_highest_score():
    rng = np.random.default_rng(1)
    weights, bias = rng.normal(size=(4, 3)), rng.normal(size=4)
    observations = rng.normal(size=(30, 3))
    flips = minimal_flip_perturbations(_linear_scores(weights, bias), observations, discrete=True,
                                       config=Config(target="runner_up"))
    scores = observations @ weights.T + bias
    np.testing.assert_array_equal(flips.targets, np.argsort(scores, axis=1)[:, -2])
    rows = np.arange(len(scores))
    a, b = scores.argmax(axis=1), flips.targets
    expected = (scores[rows, a] - scores[rows, b]) / np.linalg.norm(weights[a] - weights[b], axis=1)
    np.testing.assert_allclose(flips.distances, expected, rtol=1e-4)


def test_continuous_analogue_is_the_top_singular_direction_of_a_linear_action():
    rng = np.random.default_rng(2)
    jacobian = rng.normal(size=(2, 6))
    matrix = torch.tensor(jacobian, dtype=torch.float32)
    observations = rng.normal(size=(10, 6))
    change = 0.25
    flips = minimal_flip_perturbations(lambda x: x @ matrix.T, observations, discrete=False,
                                       config=Config(action_change=change))
    top = np.linalg.svd(jacobian, compute_uv=False)[0]
    np.testing.assert_allclose(flips.distances, change / top, rtol=1e-5)
    # Along v the action moves by exactly action_change, and no direction of that length moves it further.
    np.testing.assert_allclose(np.linalg.norm(flips.perturbations @ jacobian.T, axis=1), change, rtol=1e-5)


def test_zero_gradient_has_no_direction():
    flips = minimal_flip_perturbations(lambda x: torch.stack([x.sum(1) * 0, x.sum(1) * 0 + 1], 1),
                                       np.ones((3, 2)), discrete=True)
    assert np.all(np.isinf(flips.distances)) and flips.directions.shape == (0, 2)
    assert sigma_coverage(flips.distances, sigma=1.0) == 0.0


def test_energy_fraction_of_hand_built_direction_sets():
    parallel = np.outer([1.0, -2.0, 0.5, -1.0], [0.6, 0.8, 0.0])  # one direction, either sign, any length
    assert energy_fraction(parallel, top_k=1) == pytest.approx(1.0)
    spread = np.tile(np.eye(4), (3, 1))  # every axis equally often
    assert energy_fraction(spread, top_k=1) == pytest.approx(0.25)
    assert energy_fraction(spread, top_k=2) == pytest.approx(0.5)


def test_principal_angle_between_known_subspaces():
    theta = math.radians(35.0)
    first = principal_subspace(np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]), top_k=1)
    second = principal_subspace(np.array([[math.cos(theta), math.sin(theta), 0.0]]), top_k=1)
    assert subspace_angle_deg(first, second) == pytest.approx(35.0, abs=1e-9)
    plane = np.eye(3)[:, :2]
    tilted = np.array([[1.0, 0.0], [0.0, math.cos(theta)], [0.0, math.sin(theta)]])
    assert subspace_angle_deg(plane, tilted) == pytest.approx(35.0, abs=1e-9)
    assert subspace_angle_deg(plane, plane) == pytest.approx(0.0, abs=1e-6)


def test_temporal_alignment_and_coverage():
    steady = np.array([[1.0, 0.0], [-3.0, 0.0], [2.0, 0.0]])
    switching = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert temporal_alignment([steady]) == pytest.approx(1.0)
    assert temporal_alignment([switching]) == pytest.approx(0.0)
    assert temporal_alignment([steady, switching]) == pytest.approx(0.5)
    assert sigma_coverage(np.array([0.1, 0.2, 0.3, np.inf]), sigma=0.2) == pytest.approx(0.5)


@pytest.mark.parametrize("field, value", [("top_k", 0), ("action_change", -1.0), ("target", "furthest")])
def test_config_refuses_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        Config(**{field: value})


def test_controllers_resolve_to_their_certificates():
    cartpole = _subject(Path("controllers/cartpole_ppo.toml"))
    assert (cartpole.sigma, cartpole.scenario, cartpole.shifted) == (0.2, "classic/cartpole", "classic/cartpole_noisy")
    assert cartpole.discrete
    robust = _subject(Path("controllers/highway_sac_robust.toml"))
    assert (robust.sigma, robust.scenario, robust.shifted) == (0.5, "highway/cut_in", "highway/cut_in_dense")
    with pytest.raises(InputError, match="shield"):
        _subject(Path("controllers/highway_sac_shielded.toml"))


def test_fast_demo_shows_the_direction_of_the_effect():
    result = demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.name == ENTRY.name and result.verdict in VERDICTS
    assert ENTRY.options == ("controller",)
    measured, baseline = result.measured, result.baseline
    # The paper's direction: the (noise-)robust policy's directions are more disjoint and oscillate more.
    assert measured["top-k energy fraction"].mean < baseline["top-k energy fraction"].mean - 0.1
    assert measured["mean |cos(v_t, v_t+1)|"].mean < baseline["mean |cos(v_t, v_t+1)|"].mean - 0.05
    # highway_sac's degenerate normaliser: its action changes within sigma = 0.1 at (nearly) every state.
    assert baseline["sigma coverage"].mean >= 0.9
    assert baseline["median flip distance"].mean < 0.01 < measured["median flip distance"].mean
    for m in list(measured.values()) + list(baseline.values()):
        assert m.n == len(result.seeds) and all(math.isfinite(v) for v in m.values)
