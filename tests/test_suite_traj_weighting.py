"""Trajectory weighting (Hong et al. 2023): RW / AW weights by hand, the transition sampler's trajectory masses, and
the fast demo's direction on a CartPole mixture recorded by the batch runner."""

from __future__ import annotations

import numpy as np
import pytest

from safetybed.suite.common.offline_data import OfflineDataset
from safetybed.suite.offline_rl.traj_weighting import (
    ENTRY,
    advantage_weights,
    return_weights,
    transition_probabilities,
)


def test_return_weights_by_hand():
    weights = return_weights(np.array([10.0, 20.0]), temperature=0.1)
    assert weights[1] / weights[0] == pytest.approx(np.exp(10.0))  # normalised returns 0 and 1, alpha 0.1
    assert return_weights(np.array([3.0, 3.0, 3.0])) == pytest.approx(np.full(3, 1 / 3))


def test_advantage_weights_are_uniform_when_the_baseline_explains_the_return():
    first_states = np.array([[0.0], [1.0], [2.0], [3.0]])
    returns = 5.0 + 2.0 * first_states[:, 0]  # V_hat fits exactly: every advantage is 0
    assert advantage_weights(returns, first_states) == pytest.approx(np.full(4, 0.25))
    lucky = returns + np.array([0.0, 0.0, 1.0, 0.0])
    assert advantage_weights(lucky, first_states).argmax() == 2


def test_transition_probabilities_give_each_trajectory_its_weight():
    episode = np.array([0, 0, 0, 1, 2, 2])
    data = OfflineDataset(np.zeros((6, 1), np.float32), np.zeros(6, np.int64), np.ones(6, np.float32),
                          np.zeros((6, 1), np.float32), np.zeros(6, bool), episode, np.array([3.0, 1.0, 2.0]),
                          ("a",) * 3, ("run",))
    probabilities = transition_probabilities(data, np.array([0.5, 0.2, 0.3]))
    assert np.bincount(episode, weights=probabilities) == pytest.approx([0.5, 0.2, 0.3])
    assert probabilities[:3] == pytest.approx(np.full(3, 0.5 / 3))
    with pytest.raises(ValueError, match=r"expected shape \(3,\)"):
        transition_probabilities(data, np.ones(2))


def test_fast_demo_weighted_bc_beats_uniform_bc_on_the_mixture(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the datasets are recorded in ./runs/suite.sqlite
    result = ENTRY.demo(fast=True, seed=0)
    assert result.measured["mixed return"].mean > 1.5 * result.baseline["mixed return"].mean
    assert result.measured["expert-only return"].mean >= 0.8 * result.baseline["expert-only return"].mean
    assert (tmp_path / "runs" / "suite.sqlite").exists()
