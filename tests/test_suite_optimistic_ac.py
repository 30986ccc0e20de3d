"""Optimistic actor-critic (Tan, Fan & Wei 2025): the critic's backup against exact backward induction and a
hand-computed optimistic value, the NPG step against its closed form on a bandit, the switching rule at exact
doublings, and the fast RiverSwim demo's direction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safetybed.suite.common.tabular import finite_horizon_values, riverswim
from safetybed.suite.policy_opt.optimistic_ac import (
    ENTRY,
    Config,
    OptimisticActorCritic,
    demo,
    doubling_switch,
    npg_step,
    q_star_backup,
)
from safetybed.suite.registry import VERDICTS, DemoResult


def test_backup_with_the_true_model_and_no_bonus_is_the_exact_optimal_q():
    mdp = riverswim(6)
    _, q_star = finite_horizon_values(mdp, 20)
    q_hat = q_star_backup(mdp.R, mdp.P, horizon=20, bonus=0.0)
    assert q_hat == pytest.approx(q_star, abs=1e-12)


def test_backup_with_a_bonus_matches_a_hand_computed_value_and_its_cap():
    # One state, one action, reward 0.2, bonus 0.1: Q_h = min(H - h, 0.3 (H - h)) = 0.3 (H - h) by hand; a bonus
    # of 2 makes every step hit the cap H - h. An unvisited pair gets the cap, or 0 without optimism.
    reward, transition = np.array([[0.2]]), np.ones((1, 1, 1))
    q = q_star_backup(reward, transition, horizon=4, bonus=0.1)
    assert q[:, 0, 0] == pytest.approx([1.2, 0.9, 0.6, 0.3], abs=1e-12)
    assert q_star_backup(reward, transition, horizon=4, bonus=2.0)[:, 0, 0] == pytest.approx([4, 3, 2, 1])
    unvisited = np.array([[False]])
    assert q_star_backup(reward, transition, horizon=3, visited=unvisited)[:, 0, 0].tolist() == [3, 2, 1]
    assert q_star_backup(reward, transition, horizon=3, visited=unvisited, unvisited_value="zero").max() == 0


def test_npg_step_is_the_closed_form_maximiser_of_the_kl_regularised_objective():
    # argmax_p <p, q> - KL(p || pi) / eta has the closed form p ∝ pi exp(eta q) and the optimal value
    # log(sum_a pi(a) exp(eta q(a))) / eta (the Gibbs variational principle).
    pi, q, eta = np.array([0.5, 0.3, 0.2]), np.array([1.0, 0.0, 2.0]), 0.5
    by_hand = np.array([0.5 * math.exp(0.5), 0.3, 0.2 * math.exp(1.0)])
    new = npg_step(pi, q, step_size=eta)
    assert new == pytest.approx(by_hand / by_hand.sum(), abs=1e-12)

    def objective(p: np.ndarray) -> float:
        return float(p @ q - (p * np.log(p / pi)).sum() / eta)

    assert objective(new) == pytest.approx(math.log(pi @ np.exp(eta * q)) / eta, abs=1e-12)
    others = np.random.default_rng(0).dirichlet(np.ones(3), size=2000)
    assert max(objective(p) for p in others) < objective(new)
    # t steps from uniform against a fixed q are softmax(eta t q): the actor between two critic switches.
    p = np.full(3, 1 / 3)
    for _ in range(7):
        p = npg_step(p, q, step_size=eta)
    expected = np.exp(7 * eta * q)
    assert p == pytest.approx(expected / expected.sum(), abs=1e-12)


def test_switch_fires_exactly_when_a_count_doubles():
    fired, last = [], np.zeros(1)
    for n in range(1, 40):
        counts = np.array([float(n)])
        if doubling_switch(counts, last):
            fired.append(n)
            last = counts
    assert fired == [1, 2, 4, 8, 16, 32]
    # Any one pair doubling is enough; no pair doubling is not.
    assert doubling_switch(np.array([3.0, 10.0]), np.array([3.0, 5.0]))
    assert not doubling_switch(np.array([5.0, 9.0]), np.array([3.0, 5.0]))


def test_the_actor_resets_to_uniform_at_a_switch_and_steps_with_the_critic_otherwise():
    learner = OptimisticActorCritic(2, 2, Config(horizon=2, step_size_scale=1.0))
    out = learner.update([(0, 1, 0.5, 1), (1, 0, 0.0, 1)])  # first visits: a switch
    assert out["switched"] == 1.0
    assert learner.logits == pytest.approx(out["step_size"] * learner.critic)
    out = learner.update([(0, 1, 0.5, 1), (1, 0, 0.0, 0)])  # both counts 1 -> 2: doubled, so a switch again
    assert out["switched"] == 1.0 and learner.logits == pytest.approx(out["step_size"] * learner.critic)
    before, critic = learner.logits.copy(), learner.critic.copy()
    out = learner.update([(0, 1, 0.5, 1), (1, 0, 0.0, 1)])  # 2 -> 3: no doubling, mirror descent continues
    assert out["switched"] == 0.0
    assert learner.critic == pytest.approx(critic)  # the critic is frozen between switches
    assert learner.logits == pytest.approx(before + out["step_size"] * critic)
    assert learner.switches == 2


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="step_size_scale"):
        Config(step_size_scale=0.0)
    with pytest.raises(ValueError, match="horizon"):
        Config(horizon=0)


def test_fast_demo_optimism_beats_the_on_policy_baseline_and_offline_data_helps():
    result = demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.name == ENTRY.name and result.verdict in VERDICTS
    assert result.seeds == (0, 1, 2)
    optimistic, on_policy = result.measured["regret_exponent"], result.baseline["regret_exponent"]
    # Direction with a tolerance: the on-policy actor-critic's regret is near linear, the optimistic one's
    # clearly sub-linear (slope below 0.75), with several times less regret; the hybrid has less regret still.
    assert on_policy.mean >= 0.85 and optimistic.mean <= 0.75
    assert result.measured["regret"].mean < 0.5 * result.baseline["regret"].mean
    assert result.measured["hybrid_regret"].mean < result.measured["regret"].mean
