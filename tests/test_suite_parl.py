"""PARL (Chakraborty et al. 2024): the hypergradient surrogate's gradient equals central finite differences of the
importance-weighted upper objective (so the theta*(nu)-dependence is exact), Bradley-Terry by hand, the soft
policy is the soft-optimal one, and the fast demo's numbers decide its verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safetybed.suite.policy_opt.parl import (
    ENTRY,
    Config,
    _problem,
    _query,
    bradley_terry_loss,
    hypergradient_loss,
    soft_policy,
)


def test_bradley_terry_by_hand():
    loss = bradley_terry_loss(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert loss.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))])


def test_soft_policy_is_two_step_soft_value_iteration_by_hand():
    P = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.0, 1.0]]])
    reward, tau = np.array([0.0, 0.3]), 0.5
    pi = soft_policy(torch.as_tensor(P), torch.as_tensor(reward), horizon=2, temperature=tau,
                     absorbing=torch.zeros(2, dtype=torch.bool)).numpy()
    R = P @ reward  # paid on entering
    v_last = tau * np.log(np.exp(R / tau).sum(axis=1))
    q_first = R + P @ v_last

    def softmax(q):
        return np.exp(q / tau) / np.exp(q / tau).sum(axis=1, keepdims=True)

    assert pi[1] == pytest.approx(softmax(R)) and pi[0] == pytest.approx(softmax(q_first))


def test_hypergradient_equals_finite_differences_of_the_importance_weighted_objective():
    config = Config(horizon=6)
    mdp, true_reward = _problem()
    P, absorbing = torch.as_tensor(mdp.P), torch.as_tensor(mdp.terminal)
    rng = np.random.default_rng(3)
    nu0 = torch.as_tensor(rng.normal(scale=0.3, size=mdp.n_states))
    pi0 = soft_policy(P, nu0, horizon=config.horizon, temperature=0.3, absorbing=absorbing).numpy()
    config = Config(horizon=6, temperature=0.3)
    fresh = _query(pi0, mdp, true_reward, 6, rng, config)

    def objective(nu: torch.Tensor) -> float:
        # F(nu) = mean_i p_nu(pair_i) / p_nu0(pair_i) * l_i(nu): its gradient at nu0 is d_nu G + score term.
        with torch.no_grad():
            pi = soft_policy(P, nu, horizon=6, temperature=0.3, absorbing=absorbing)
            steps = torch.arange(6)

            def log_p(policy, key):
                states, actions = fresh[f"states_{key}"], fresh[f"actions_{key}"]
                return torch.log(policy[steps, states[:, :-1], actions]).sum(1)

            def ret(key):
                s = fresh[f"states_{key}"]
                return (nu[s[:, 1:]] * ~absorbing[s[:, :-1]]).sum(1)

            p0 = torch.as_tensor(pi0)
            ratio = torch.exp(log_p(pi, "a") + log_p(pi, "b") - log_p(p0, "a") - log_p(p0, "b"))
            return float((ratio * bradley_terry_loss(ret("a"), ret("b"), fresh["prefer_a"])).mean())

    nu = nu0.clone().requires_grad_(True)
    hypergradient_loss(nu, P, absorbing, fresh, fresh, config=config)["loss"].backward()
    eps = 1e-5
    for index in (0, 7, 12, 23):
        step = torch.zeros_like(nu0)
        step[index] = eps
        numeric = (objective(nu0 + step) - objective(nu0 - step)) / (2 * eps)
        assert nu.grad[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-8)


def test_fast_demo_numbers_decide_the_verdict():
    result = ENTRY.demo(fast=True, seed=0)
    parl, rlhf = result.measured["queries to 0.9"], result.baseline["queries to 0.9"]
    assert parl.n == rlhf.n == 2
    saving = 1 - parl.mean / rlhf.mean
    assert (result.verdict == "reproduced") == (saving >= 0.3 and max(parl.values) < result.settings["rounds"] * 8 + 8)
    assert 0 <= result.baseline["final normalised return"].mean <= 1
