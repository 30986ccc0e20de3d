"""HNPG (Zhou et al. 2023): the NPG step against its closed form on a one-state bandit, the offline critic against
the exact finite-horizon values of the combination lock, and the fast demo's direction."""

from __future__ import annotations

import numpy as np
import pytest

from safetybed.suite.common.tabular import combination_lock, finite_horizon_values
from safetybed.suite.offline_rl.hnpg import (
    Config,
    Transitions,
    demo,
    fit_critic,
    hnpg_update,
    npg_step,
)
from safetybed.suite.registry import VERDICTS, DemoResult


def test_npg_step_on_a_one_state_bandit_matches_the_closed_form():
    # pi' ∝ pi exp(eta A): from (1/2, 1/2) with Q = (1, 0) and eta = ln 3 the odds become 3:1 (by hand).
    assert npg_step(np.array([0.5, 0.5]), np.array([1.0, 0.0]), step_size=np.log(3)) == pytest.approx([0.75, 0.25])
    # t steps with a fixed Q compose to pi_t ∝ pi_0 exp(t eta Q) (the baseline V cancels in the normalisation).
    pi0, q, eta = np.array([0.2, 0.3, 0.5]), np.array([0.4, -1.0, 0.1]), 0.7
    pi = pi0
    for _ in range(5):
        pi = npg_step(pi, q, step_size=eta)
    closed_form = pi0 * np.exp(5 * eta * q)
    assert pi == pytest.approx(closed_form / closed_form.sum(), rel=1e-12)


def full_coverage(horizon: int, n_actions: int):
    """Every (h, s, a) of the lock once, with its (deterministic) next state."""
    mdp, code = combination_lock(horizon, n_actions, seed=3)
    rows = [(h, s, a, mdp.R[s, a], int(mdp.P[s, a].argmax())) for h in range(horizon)
            for s in range(mdp.n_states) for a in range(n_actions)]
    step, state, action, reward, next_state = (np.array(c) for c in zip(*rows, strict=True))
    last = mdp.terminal[next_state] | (step == horizon - 1)
    return mdp, Transitions(step, state, action, reward, next_state, last, np.zeros(len(rows)))


def test_fitted_q_with_full_coverage_recovers_the_exact_finite_horizon_values():
    horizon, n_actions = 6, 3
    mdp, data = full_coverage(horizon, n_actions)
    sizes = dict(horizon=horizon, n_states=mdp.n_states, n_actions=n_actions)
    # FQI (max bootstrap) gives Q*, FQE of a fixed stochastic policy gives Q^pi, both by backward induction.
    _, q_star = finite_horizon_values(mdp, horizon)
    assert fit_critic(data, **sizes).q == pytest.approx(q_star, abs=1e-12)
    policy = np.random.default_rng(0).dirichlet(np.ones(n_actions), size=(horizon, mdp.n_states))
    _, q_pi = finite_horizon_values(mdp, horizon, policy)
    fit = fit_critic(data, policy=policy, **sizes)
    assert fit.q == pytest.approx(q_pi, abs=1e-12)
    assert fit.losses["loss_critic_offline"] == pytest.approx(0.0, abs=1e-20)


def test_hybrid_critic_weighs_each_source_by_its_mean_loss():
    # One step, one state: two on-policy returns (0, 1) at action 0 and one offline target (reward 1) at
    # action 0. Mean losses with weight w on the offline term: Q = (1/2 (0 + 1) + w * 1) / (1 + w) (by hand).
    online = Transitions(*(np.array(v) for v in ([0, 0], [0, 0], [0, 0], [0.0, 1.0], [0, 0], [True, True],
                                                [0.0, 1.0])))
    offline = Transitions(*(np.array(v) for v in ([0], [0], [0], [1.0], [0], [True], [1.0])))
    policy = np.full((1, 1, 2), 0.5)
    for w in (0.0, 1.0, 3.0):
        fit = fit_critic(offline, online=online, policy=policy, horizon=1, n_states=1, n_actions=2,
                         offline_weight=w)
        assert fit.q[0, 0] == pytest.approx([(0.5 + w) / (1 + w), 0.0])
    # The update then moves probability toward action 0 by exactly the NPG step on that critic.
    update = hnpg_update(policy, online, offline, step_size=2.0)
    assert update.policy == pytest.approx(npg_step(policy, update.q, step_size=2.0))
    assert update.policy[0, 0, 0] > 0.5


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="step_size"):
        Config(step_size=0.0)
    with pytest.raises(ValueError, match="episodes_per_iteration"):
        Config(episodes_per_iteration=0)


def test_fast_demo_hnpg_solves_the_lock_with_expert_data_where_npg_does_not():
    result = demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.verdict in VERDICTS and result.fast
    assert result.name == "hnpg" and len(result.seeds) >= 3
    expert = "success (eps-greedy pi* data)"
    # Direction, with a 0.5 margin: HNPG's exact success with pi* data is near 1, NPG's near 4^-10.
    assert result.measured[expert].mean > result.baseline[expert].mean + 0.5
    assert result.baseline[expert].mean < 0.05
    # With random offline data HNPG is no worse than NPG (the "best of both worlds" half).
    assert result.measured["success (random data)"].mean >= result.baseline["success (random data)"].mean - 0.05
