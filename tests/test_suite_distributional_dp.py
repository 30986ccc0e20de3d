"""Stock-augmented distributional DP (Pires et al. 2025): CVaR and Rockafellar-Uryasev against hand-computed laws,
the DP's optimal CVaR against brute-force enumeration of history-dependent policies, and the fast demo."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safetybed.suite.registry import VERDICTS, DemoResult
from safetybed.suite.value_learning.distributional_dp import (
    ENTRY,
    Config,
    Distribution,
    FiniteMDP,
    brute_force_best,
    cvar,
    cvar_functional,
    demo,
    distributional_dp,
    evaluate_policy,
    expectation,
    markov_policies,
    optimize_cvar,
    random_mdp,
    rockafellar_uryasev,
    safe_risky_mdp,
    value_at_risk,
)

#: Exact laws: only round-off separates the DP from the oracles.
EXACT = 1e-9
RISKY = Distribution.of([10.0, -20.0], [0.8, 0.2])
UNIFORM = Distribution.of([1.0, 2.0, 3.0, 4.0, 5.0], [0.2] * 5)


@pytest.mark.parametrize(("law", "tau", "expected"), [
    (RISKY, 0.2, -20.0),            # the tail is exactly the -20 atom
    (RISKY, 0.5, -2.0),             # (0.2 * -20 + 0.3 * 10) / 0.5
    (RISKY, 1.0, 4.0),              # CVaR_1 is the mean
    (UNIFORM, 0.4, 1.5),            # (1 + 2) / 2
    (UNIFORM, 0.3, 0.4 / 0.3),      # (0.2 * 1 + 0.1 * 2) / 0.3: a boundary atom counts with the part that fits
])
def test_cvar_and_rockafellar_uryasev_on_hand_computed_laws(law, tau, expected):
    assert cvar(law, tau) == pytest.approx(expected, abs=EXACT)
    value, maximiser = rockafellar_uryasev(law, tau)
    assert value == pytest.approx(expected, abs=EXACT)
    assert maximiser == value_at_risk(law, tau)


def test_value_at_risk_by_hand_and_rockafellar_uryasev_maximiser_on_random_laws():
    assert value_at_risk(RISKY, 0.2) == -20.0 and value_at_risk(RISKY, 0.5) == 10.0
    assert value_at_risk(UNIFORM, 0.3) == 2.0
    rng = np.random.default_rng(np.random.SeedSequence(7))
    for _ in range(20):
        law = Distribution.of(rng.normal(size=6).round(3), rng.dirichlet(np.ones(6)))
        tau = float(rng.uniform(0.05, 0.95))
        value, maximiser = rockafellar_uryasev(law, tau)
        assert value == pytest.approx(cvar(law, tau), abs=EXACT)
        assert maximiser == value_at_risk(law, tau)


def test_toy_values_by_hand():
    """Hand computation (module docstring): the optimum banks the 10 and gambles after the -20 (10 w.p. 0.99,
    -60 w.p. 0.01, CVaR_0.2 = (0.01 * -60 + 0.19 * 10) / 0.2 = 6.5); the risk-neutral policy gambles in both
    branches (40 w.p. 0.76, 10 w.p. 0.19, -30 w.p. 0.04, -60 w.p. 0.01: mean 30.5, CVaR (-0.6 - 1.2 + 1.5) / 0.2
    = -1.5); Markov policies cannot beat the safe path's 5."""
    mdp = safe_risky_mdp()
    optimum = optimize_cvar(mdp, tau=0.2)
    assert optimum.cvar == pytest.approx(6.5, abs=EXACT)
    law = evaluate_policy(mdp, optimum.solution.policy, initial_stock=optimum.solution.initial_stock).return_law
    assert law.atoms.tolist() == [-60.0, 10.0] and law.probs == pytest.approx([0.01, 0.99])
    assert brute_force_best(mdp, cvar_functional(0.2))[0] == pytest.approx(6.5, abs=EXACT)
    neutral = distributional_dp(mdp, expectation)
    assert neutral.value == pytest.approx(30.5) and cvar(neutral.return_law, 0.2) == pytest.approx(-1.5)
    assert max(cvar(evaluate_policy(mdp, p).return_law, 0.2) for p in markov_policies(mdp)) == pytest.approx(5.0)
    # CVaR is not indifferent to mixtures: greedy-by-CVaR gambles in both branches and then prefers the safe path
    assert distributional_dp(mdp, cvar_functional(0.2)).value == pytest.approx(5.0)


@pytest.mark.parametrize("gamma", [1.0, 0.5])
@pytest.mark.parametrize("tau", [0.1, 0.3, 0.7])
def test_dp_cvar_equals_brute_force_on_random_mdps(gamma, tau):
    for index in range(4):
        base = random_mdp(np.random.default_rng(np.random.SeedSequence([11, index])))
        mdp = FiniteMDP(base.outcomes, horizon=base.horizon, gamma=gamma)
        brute, _ = brute_force_best(mdp, cvar_functional(tau))
        optimum = optimize_cvar(mdp, tau=tau)
        assert optimum.cvar == pytest.approx(brute, abs=EXACT)
        evaluated = evaluate_policy(mdp, optimum.solution.policy, initial_stock=optimum.solution.initial_stock)
        assert cvar(evaluated.return_law, tau) == pytest.approx(brute, abs=EXACT)


def test_risk_neutral_dp_equals_scalar_backward_induction():
    mdp = random_mdp(np.random.default_rng(np.random.SeedSequence(3)), n_states=4, horizon=4)
    values = np.zeros(mdp.n_states)
    for _ in range(mdp.horizon):  # V_t(s) = max_a Σ p (r + γ V_{t+1}(s'))
        values = np.array([max(sum(p * (r + mdp.gamma * values[s2]) for p, r, s2 in per_action)
                               for per_action in row) for row in mdp.outcomes])
    assert distributional_dp(mdp, expectation).value == pytest.approx(values[0], abs=EXACT)
    # translation compatibility: a stock shifts the expectation and changes no action
    shifted = distributional_dp(mdp, expectation, initial_stock=7.0)
    assert shifted.value == pytest.approx(values[0] + 7.0, abs=EXACT)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="tau"):
        Config(tau=0.0)
    with pytest.raises(ValueError, match="situation_probabilities"):
        Config(situation_probabilities=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="summing to 1"):
        FiniteMDP(((((0.5, 1.0, 0),),),), horizon=1)
    with pytest.raises(ValueError, match="tau"):
        cvar(RISKY, 1.5)


def test_fast_demo():
    result = demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.name == ENTRY.name and result.verdict in VERDICTS
    measured, baseline = result.measured, result.baseline
    assert measured["toy |DP - brute force|"].mean <= 1e-3
    assert measured["random MDPs |DP - brute force|"].mean <= 1e-3
    assert measured["toy CVaR_0.2"].mean > baseline["toy CVaR_0.2"].mean
    assert measured["toy CVaR_0.2"].mean > baseline["toy best Markov CVaR_0.2"].mean
    # in the estimated model the CVaR optimum can only tie or beat the risk-neutral policy in CVaR
    assert measured["drive CVaR"].mean >= baseline["drive CVaR"].mean - 1e-6
    assert 0.0 <= measured["drive crash probability"].mean <= 1.0
    assert all(math.isfinite(m.mean) for m in measured.values())
