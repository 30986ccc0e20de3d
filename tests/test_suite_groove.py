"""GROOVE's regret-prioritised level sampler: replay weights against hand-computed values, the buffer's reset and
replay rules, the algorithmic regret of a known cut-in, and the fast demo."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safetybed.suite.policy_opt.groove import (
    ENTRY,
    Config,
    CutInLevels,
    RegretLevelSampler,
    algorithmic_regret,
    demo,
    replay_distribution,
)
from safetybed.suite.registry import DemoResult, Measure

ALPHA = 1e-3  # false-alarm rate of the seeded frequency test


def test_rank_weights_equal_hand_computed_ones():
    # scores 0.9, 0.1, 0.5 (evaluated), 0.7 (new): ranks 1, 3, 2; h = 1/rank; beta = 0.5 -> h^2 = 1, 1/9, 1/4
    scores = np.array([0.9, 0.1, 0.5, 0.7])
    replayable = np.array([True, True, True, False])
    weights = np.array([1.0, 1 / 9, 1 / 4])
    expected = np.append(weights / weights.sum(), 0.0)
    got = replay_distribution(scores, replayable=replayable, prioritization="rank", temperature=0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_rank_ties_share_their_average_rank():
    # 0.4, 0.4 tie for ranks 1 and 2 -> both 1.5; 0.0 is rank 3; beta = 1
    got = replay_distribution(np.array([0.4, 0.0, 0.4]), replayable=np.ones(3, bool), prioritization="rank")
    weights = np.array([1 / 1.5, 1 / 3, 1 / 1.5])
    np.testing.assert_allclose(got, weights / weights.sum(), rtol=1e-12)


def test_softmax_weights_equal_hand_computed_ones():
    scores = np.array([1.0, 0.0, 2.0])
    got = replay_distribution(scores, replayable=np.ones(3, bool), prioritization="softmax", temperature=2.0)
    expected = np.exp([0.5, 0.0, 1.0]) / np.exp([0.5, 0.0, 1.0]).sum()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_staleness_mixture_equals_plr_eq_3_4():
    # c = 10, last sampled at 2, 6, 10: staleness 8, 4, 0 -> P_C = 2/3, 1/3, 0; rho = 0.25
    scores = np.array([0.0, 1.0, 3.0])
    p_s = np.exp(scores) / np.exp(scores).sum()
    p_c = np.array([8, 4, 0]) / 12
    got = replay_distribution(scores, replayable=np.ones(3, bool), prioritization="softmax", temperature=1.0,
                              last_sampled=np.array([2, 6, 10]), sample_count=10, staleness_coef=0.25)
    np.testing.assert_allclose(got, 0.75 * p_s + 0.25 * p_c, rtol=1e-12)


def test_lowest_scoring_levels_are_reset_new_ones_first():
    sampler = RegretLevelSampler([0.0], [1.0], generator=np.random.default_rng(0), buffer_size=6)
    sampler.update(np.arange(5), np.array([0.5, 0.1, 0.9, 0.3, 0.7]))  # slot 5 stays new
    before = sampler.params.copy()
    reset = sampler.reset_lowest_scoring(3)
    assert sorted(reset.tolist()) == [1, 3, 5]  # the new level, then the scores 0.1 and 0.3
    assert sampler.new.tolist() == [False, True, False, True, False, True]
    assert sampler.scores[[1, 3, 5]].tolist() == [0.0, 0.0, 0.0]
    kept = [0, 2, 4]
    np.testing.assert_array_equal(sampler.params[kept], before[kept])
    assert not np.array_equal(sampler.params[[1, 3]], before[[1, 3]])


def test_replayed_levels_follow_the_replay_distribution():
    """Single replays (batch 1, p_replay 1) land on buffer slots with the rank weights (chi-square, ALPHA)."""
    from scipy.stats import chisquare

    sampler = RegretLevelSampler([0.0], [1.0], generator=np.random.default_rng(1), buffer_size=8, p_replay=1.0,
                                 temperature=0.5)
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.6])
    draws = 4000
    counts = np.zeros(8)
    for _ in range(draws):
        sampler.scores[:7], sampler.new[:7] = scores, False
        sampler.new[7] = True
        batch = sampler.sample(1)
        assert batch.replayed.tolist() == [True]
        counts[batch.buffer_ids[0]] += 1
    # the reset before each draw redraws the one new slot (7) and only it; slot 7 is never replayed
    expected = replay_distribution(np.append(scores, 0.0), replayable=np.arange(8) < 7, temperature=0.5)
    assert counts[7] == 0
    assert chisquare(counts[:7], draws * expected[:7]).pvalue > ALPHA


def test_no_replay_before_a_batch_of_levels_is_evaluated():
    sampler = RegretLevelSampler([0.0, -1.0], [1.0, 1.0], generator=np.random.default_rng(2), buffer_size=8,
                                 p_replay=1.0)
    first = sampler.sample(4)
    assert not first.replayed.any() and first.params.shape == (4, 2)
    sampler.update(first.buffer_ids, np.array([0.1, 0.2, 0.3, 0.4]))
    second = sampler.sample(4)
    assert second.replayed.all()  # four evaluated levels now: every slot replays
    assert set(second.level_ids.tolist()) == set(first.level_ids.tolist())


def test_algorithmic_regret_is_reference_minus_agent():
    np.testing.assert_allclose(algorithmic_regret(reference_return=np.array([1.0, 0.5, 2.0]),
                                                  agent_return=np.array([0.0, 0.5, 3.0])), [1.0, 0.0, -1.0])


def test_regret_of_known_cut_ins():
    """builtin:idm on three cut-ins (levels and seeds found by a scan on the batched backend): 2 m ahead at -3 m/s
    it crashes and hard braking would not (regret 1 = reference 1 - agent 0); 0 m ahead at -8 m/s (seed 1) it
    crashes and so does every braking strategy (regret 0: unavoidable); 25 m ahead at +2 m/s nothing happens."""
    levels = CutInLevels("builtin:idm")
    params = np.array([[2.0, -3.0], [2.0, -3.0], [0.0, -8.0], [25.0, 2.0], [25.0, 2.0]])
    collided, regret = levels.regret(params, [0, 1, 1, 0, 1])
    np.testing.assert_array_equal(collided, [True, True, True, False, False])
    np.testing.assert_array_equal(regret, [1.0, 1.0, 0.0, 0.0, 0.0])


def test_options_are_checked():
    with pytest.raises(ValueError, match="prioritization"):
        Config(prioritization="greedy")
    with pytest.raises(ValueError, match="buffer_factor"):
        Config(buffer_factor=1)
    with pytest.raises(ValueError, match="batch_size"):
        RegretLevelSampler([0.0], [1.0], generator=np.random.default_rng(0), buffer_size=4).sample(3)


def test_fast_demo_is_well_formed():
    result = demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.name == ENTRY.name == "groove"
    assert result.verdict in ("reproduced", "partly", "not reproduced")
    assert set(result.measured) == set(result.baseline)
    for label, value in result.measured.items():
        assert isinstance(value, Measure) and value.n == 2 and all(math.isfinite(v) for v in value.values), label
    # equal budgets; replay spends part of it on known levels, so the replaying sampler evaluates fewer levels
    assert result.measured["agent episodes"].values == result.baseline["agent episodes"].values
    assert result.measured["distinct levels evaluated"].mean < result.baseline["distinct levels evaluated"].mean
    for label in ("mean regret of sampled levels", "fresh-traffic regret of top-8 levels"):
        assert 0.0 <= result.measured[label].mean <= 1.0 and 0.0 <= result.baseline[label].mean <= 1.0
    # direction, with the fast demo's noise as tolerance (2 seeds x 128 episodes: a per-seed binomial sd of about
    # 0.03 on each side): replay does not lower the regret of the sampled levels by more than 0.1
    assert (result.measured["mean regret of sampled levels"].mean
            >= result.baseline["mean regret of sampled levels"].mean - 0.1)
