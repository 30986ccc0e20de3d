"""Nash-MP (Tiapkin et al. 2025): each closed-form prox half step against scipy's numerical maximiser of its prox
objective on the simplex, the regularised NE against its fixed-point equation, Nash-MP's convergence to it, and the
fast demo's direction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize

from safetybed.suite.alignment.nash_mp import (
    ENTRY,
    Config,
    approximate_nash_mp_step,
    nash_equilibrium,
    nash_md_step,
    nash_mp_step,
    prox_objective,
    random_preference_game,
)
from safetybed.suite.registry import DemoResult, run_demo

BETA = 0.1


def _numerical_prox(anchor, opponent, reference, preference, *, step_size):
    """argmax of the prox objective over the simplex by SLSQP (an oracle independent of the closed form)."""
    n = anchor.size
    result = optimize.minimize(
        lambda x: -prox_objective(x, anchor=anchor, opponent=opponent, reference=reference, preference=preference,
                                  beta=BETA, step_size=step_size),
        np.full(n, 1 / n), method="SLSQP", bounds=[(1e-12, 1.0)] * n,
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}], options={"ftol": 1e-15, "maxiter": 500})
    assert result.success, result.message
    return result.x


@pytest.mark.parametrize("step_size", [0.5, 2.0, 8.0])
def test_each_half_step_is_the_argmax_of_its_prox_objective(step_size):
    rng = np.random.default_rng(3)
    preference, reference = random_preference_game(6, generator=rng)
    anchor = rng.dirichlet(np.ones(6))
    half, full = nash_mp_step(anchor, preference=preference, reference=reference, beta=BETA, step_size=step_size)
    # pi_{k+1/2}: opponent pi_k; pi_{k+1}: opponent pi_{k+1/2}; both anchored at pi_k
    for closed_form, opponent in ((half, anchor), (full, half)):
        numerical = _numerical_prox(anchor, opponent, reference, preference, step_size=step_size)
        assert closed_form == pytest.approx(numerical, abs=1e-6)
        # KKT on the interior: eta g - eta beta log(pi/pi_ref) - log(pi/pi_k) is constant over y
        stationarity = (step_size * (preference @ opponent) - step_size * BETA * np.log(closed_form / reference)
                        - np.log(closed_form / anchor))
        assert np.ptp(stationarity) < 1e-10


def test_the_equilibrium_satisfies_the_fixed_point_equation_and_nash_mp_reaches_it():
    rng = np.random.default_rng(0)
    preference, reference = random_preference_game(50, generator=rng)
    assert preference + preference.T == pytest.approx(np.ones((50, 50)), abs=1e-15)
    equilibrium = nash_equilibrium(preference, reference, beta=BETA)
    logits = np.log(reference) + preference @ equilibrium / BETA
    fixed_point = np.exp(logits - logits.max())
    assert np.abs(fixed_point / fixed_point.sum() - equilibrium).max() < 1e-8
    policy = reference.copy()
    for _ in range(150):
        policy = nash_mp_step(policy, preference=preference, reference=reference, beta=BETA, step_size=1.0)[1]
    assert np.sum(equilibrium * np.log(equilibrium / policy)) < 1e-6
    # the approximate version, from the NE, stays at the NE (its prox objective is stationary there)
    approximate = approximate_nash_mp_step(equilibrium, preference=preference, reference=reference, beta=BETA,
                                           step_size=1.0, inner_steps=5, learning_rate=1.0)
    assert approximate == pytest.approx(equilibrium, abs=1e-9)
    # constant-step Nash-MD's fixed point is not the NE (the bias the demo reports)
    md = reference.copy()
    for _ in range(2000):
        md = nash_md_step(md, preference=preference, reference=reference, beta=BETA, step_size=1.0)
    assert np.sum(equilibrium * np.log(equilibrium / md)) > 1e-5


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="beta"):
        Config(beta=0.0)
    with pytest.raises(ValueError, match="step_sizes"):
        Config(step_sizes=(20.0,))
    with pytest.raises(ValueError, match="inner_steps"):
        Config(inner_steps=0)


def test_fast_demo_direction():
    result = run_demo(ENTRY, fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.fast and result.seeds == (0, 1)
    assert result.verdict in ("reproduced", "partly", "not reproduced")
    measured, baseline = result.measured, result.baseline
    # Nash-MP reaches KL < 1e-6 on every seed, Nash-MD (constant step) on none; slope at least the paper's rate
    assert measured["reached_kl_1e-6"].mean == 1.0
    assert measured["queries_to_kl_1e-6"].mean < baseline["queries_to_kl_1e-6"].mean
    assert max(measured["log_kl_slope_per_query"].values) <= result.settings["paper_slope_per_query"]
    assert min(measured["log_kl_linear_fit_r2"].values) > 0.98
    assert measured["ne_fixed_point_residual"].mean < 1e-8
