"""The known-answer cut-in testbed and every evaluation method on it (NADE, SCV, D2RL, AdaTE, crude MC)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from safetybed.evaluate.adate import StepLog, dense_returns, fit_weights
from safetybed.evaluate.methods import coverage_study, run_testbed_method
from safetybed.evaluate.testbed import (
    ACCEL_GRID_MPS2,
    CutInTestbed,
    exact_moments,
    simulate_crashes,
)
from safetybed.sims.testing.adate_proposal import AdaTEProposal, DenseTarget
from safetybed.sims.testing.d2rl_proposal import D2RLProposal, EpsilonPolicy
from safetybed.sims.testing.nade import NadeProposal


@pytest.fixture(scope="module")
def tables():
    return CutInTestbed().build()


def test_exact_answer_is_in_the_rare_event_range(tables):
    mu = tables.exact_crash_probability
    assert 1e-4 < mu < 1e-3
    assert tables.crash.size == 78 * 31 * 31
    np.testing.assert_allclose(tables.gap_pmf.sum(), 1.0)
    np.testing.assert_allclose(tables.p0.sum(axis=1), 1.0)
    np.testing.assert_allclose(tables.p1.sum(axis=2), 1.0)


def test_a_test_is_a_lookup_of_the_exhaustive_simulation(tables):
    """Sampled tests re-simulated one by one give the tabulated crash flags."""
    batch = tables.run(4000, rng=np.random.default_rng(5), table=tables.tabulate(NadeProposal()))
    crashed = simulate_crashes(tables.bed, tables.bed.ego, tables.gaps_m[batch.gap_index],
                               ACCEL_GRID_MPS2[batch.a0_index], ACCEL_GRID_MPS2[batch.a1_index])
    np.testing.assert_array_equal(crashed, batch.crashed)
    assert batch.crashed.sum() > 50  # NADE makes crashes common


def test_crude_monte_carlo_agrees_with_the_enumeration(tables):
    batch = tables.run(600_000, rng=np.random.default_rng(11))
    mu = tables.exact_crash_probability
    se = np.sqrt(mu * (1 - mu) / batch.n)
    assert abs(batch.crashed.mean() - mu) < 4 * se


def test_dangerous_maneuvers_add_critical_steps(tables):
    """The pitfall of cav_eval.md §2.3 is present: hard braking at t = 0 makes t = 1 critical."""
    table = tables.tabulate(NadeProposal())
    g = int(np.flatnonzero(table.crit0 > 0)[-1])  # the largest gap whose first decision is critical
    assert table.crit1[g, 0] > 0  # after -4 m/s^2
    assert table.crit1[g, 20] == 0  # after 0 m/s^2 the second decision is harmless


@pytest.mark.parametrize("make", [
    lambda m: NadeProposal(),
    lambda m: NadeProposal(surrogate=1, epsilon=0.3),
    lambda m: AdaTEProposal(weights=np.array([0.2, 0.5, 0.3])),
    lambda m: D2RLProposal(policy=EpsilonPolicy(6, initial_epsilon=0.05, generator=torch.Generator().manual_seed(1))),
])
def test_every_proposal_is_exactly_unbiased(tables, make):
    """E_q[1{crash} W] = mu exactly (enumeration), for NADE, AdaTE and D2RL proposals alike."""
    mean, second = exact_moments(tables, tables.tabulate(make(3)))
    assert mean == pytest.approx(tables.exact_crash_probability, rel=1e-12)
    assert second > mean ** 2


def test_exact_moments_detect_lost_support(tables):
    """Without the defensive mixture an optimistic surrogate gives some crashes q = 0: E_q[Y] < mu (the check
    above can fail)."""
    table = tables.tabulate(NadeProposal(surrogate=1))
    table.eps0[:] = 0.0
    table.eps1[:] = 0.0
    mean, _ = exact_moments(tables, table)
    assert mean < 0.99 * tables.exact_crash_probability


def test_nade_with_a_pessimistic_surrogate_beats_crude_mc(tables):
    mu = tables.exact_crash_probability
    _, second = exact_moments(tables, tables.tabulate(NadeProposal()))
    assert second / mu ** 2 - 1 < 0.1 / mu  # at least 10x fewer tests than crude MC


def test_adate_quadratic_program_recovers_known_weights():
    rng = np.random.default_rng(0)
    target = DenseTarget()
    for k in range(50):
        challenge = rng.random(3)
        target.update(("s", k), 0, float(challenge @ np.array([0.0, 0.3, 0.7])), challenge)
    np.testing.assert_allclose(fit_weights(target, m=3), [0.0, 0.3, 0.7], atol=1e-5)


def test_dense_returns_reweight_only_later_steps():
    steps = [StepLog(state_key=0, action=1, p=0.01, q=0.5, challenge=np.zeros(3)),
             StepLog(state_key=1, action=2, p=0.2, q=0.4, challenge=np.zeros(3))]
    assert dense_returns(True, steps) == pytest.approx([0.5, 1.0])
    assert dense_returns(False, steps) == [0.0, 0.0]


def test_each_method_runs_and_reports(tables):
    for method in ("crude", "nade", "scv", "adate"):
        run = run_testbed_method(tables, method, tests=3000 if method != "crude" else 60_000, seed=4)
        for result in run.results:
            assert result.n == run.tests and result.n_crashes >= 1 and result.rhw is not None
    again = run_testbed_method(tables, "nade", tests=3000, seed=4)
    assert again.primary().estimate == run_testbed_method(tables, "nade", tests=3000, seed=4).primary().estimate


def test_coverage_fast_variant(tables):
    """Seeded CI guard of the coverage claim (full study: `safetybed evaluate testbed:cut_in --method all
    --coverage 40`). 20 repetitions each; with true coverage 0.9 P(covered <= 13 of 20) = 0.2 %, so 14/20 is
    the tolerance. The stratified SCV variant is *expected* to fail (see the next test)."""
    rows = coverage_study(tables, methods=["crude", "nade", "scv", "d2rl", "adate"], repetitions=20,
                          tests={"crude": 120_000, "nade": 4000, "scv": 4000, "d2rl": 4000, "adate": 4000},
                          seed=2024, d2rl_iterations=10)
    by_name = {row.method: row for row in rows}
    mu = tables.exact_crash_probability
    for name in ("crude", "nade", "scv-martingale", "scv-learned", "d2rl", "adate"):
        row = by_name[name]
        assert row.covered >= 14, (name, row.to_json(mu))
        assert row.failures == 0


def test_stratified_scv_is_biased_when_critical_steps_depend_on_maneuvers(tables):
    """cav_eval.md §2.3 pitfall 1, measured: K = 1 happens when the first maneuver was mild, so E[r | K = 1] < 1
    and the stratum-wise control variate shifts the estimate. The martingale variant on the same tests is not."""
    from safetybed.evaluate import scv_estimate

    mu = tables.exact_crash_probability
    strat, mart = [], []
    for rep in range(8):
        batch = tables.run(4000, rng=np.random.default_rng(100 + rep), table=tables.tabulate(NadeProposal()))
        records = batch.records()
        stratified = scv_estimate(records, variant="stratified")
        assert stratified.details["stratum_means_nonzero"]  # the estimator's own check sees the pitfall
        strat.append(stratified.estimate)
        mart.append(scv_estimate(records, variant="martingale").estimate)
    assert np.mean(strat) > 1.5 * mu
    assert abs(np.mean(mart) - mu) < 0.25 * mu


@pytest.fixture(scope="module")
def fixed_tables():
    return CutInTestbed(critical_set="fixed").build()


def test_fixed_critical_set_changes_only_the_logs(tables, fixed_tables):
    """Same seed: the same tests, crash flags and weights; the fixed set logs the second decision whenever the
    first was critical, with ratio 1 where the proposal found it non-critical."""
    a = tables.run(3000, rng=np.random.default_rng(3), table=tables.tabulate(NadeProposal()))
    b = fixed_tables.run(3000, rng=np.random.default_rng(3), table=fixed_tables.tabulate(NadeProposal()))
    np.testing.assert_array_equal(a.a1_index, b.a1_index)
    np.testing.assert_array_equal(a.crashed, b.crashed)
    np.testing.assert_allclose(a.log_weight(), b.log_weight())
    np.testing.assert_array_equal(b.critical[:, 1], a.critical[:, 1] | a.critical[:, 0])
    added = b.critical[:, 1] & ~a.critical[:, 1]
    assert added.sum() > 100  # mild first maneuvers: the adaptive set stops after one step there
    np.testing.assert_array_equal(b.q_tilde[added, 1], b.p[added, 1])
    with pytest.raises(ValueError, match="critical_set"):
        CutInTestbed(critical_set="sometimes")


def test_stratified_scv_covers_when_the_critical_set_is_fixed(fixed_tables):
    """With K exogenous (a function of the gap only) E[r_j | K = k] = 1 and the stratum-wise fit is unbiased:
    the stratified variant covers like the others (same tolerance as the fast coverage variant: 14/20)."""
    rows = coverage_study(fixed_tables, methods=["scv"], repetitions=20, tests={"scv": 4000}, seed=77)
    for row in rows:
        assert row.covered >= 14 and row.failures == 0, row.to_json(fixed_tables.exact_crash_probability)
    mean = np.mean(next(r for r in rows if r.method == "scv-stratified").estimates)
    assert abs(mean / fixed_tables.exact_crash_probability - 1.0) < 0.25
    from safetybed.evaluate import scv_estimate

    batch = fixed_tables.run(10_000, rng=np.random.default_rng(5), table=fixed_tables.tabulate(NadeProposal()))
    check = scv_estimate(batch.records(), variant="stratified").details
    assert not check["stratum_means_nonzero"] and check["stratum_mean_max_abs_z"] < 4.0


def test_cli_evaluate_testbed_json_and_bad_input(tmp_path):
    command = [sys.executable, "-m", "safetybed", "evaluate", "testbed:cut_in", "--controller", "builtin:idm",
               "--method", "nade,scv", "--tests", "3000", "--json", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    names = [entry["method"] for entry in document["methods"]]
    assert names == ["nade", "scv-martingale", "scv-stratified", "scv-learned"]
    for entry in document["methods"]:
        for key in ("estimate", "ci", "rhw", "n", "n_crashes", "tests_needed", "bootstrap", "rhw_curve"):
            assert key in entry
    assert (tmp_path / "report.html").read_text().count("<img") == 1
    bad = subprocess.run(command[:7] + ["--method", "magic"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--method" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "safetybed", "evaluate", "testbed:cut_in", "--controller",
                          "builtin:random", "--method", "nade"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--controller" in bad.stderr


def test_until_rhw_adds_tests_until_the_target(tmp_path):
    from safetybed.evaluate.pipeline import evaluate_testbed

    document = evaluate_testbed("testbed:cut_in", controller="builtin:idm", methods=["nade"], tests=300,
                                until_rhw=0.3, bootstrap_resamples=0, seed=1)
    entry = document["methods"][0]
    assert entry["n"] > 300 and entry["rhw"] < 0.3
    capped = evaluate_testbed("testbed:cut_in", controller="builtin:idm", methods=["crude"], tests=1000,
                              until_rhw=0.3, max_tests=4000, bootstrap_resamples=0, seed=1)
    assert capped["methods"][0]["n"] == 4000  # crude MC cannot get there within the cap


def test_max_tests_caps_every_method_without_until_rhw(cli):
    """--max-tests without --until-rhw used to be ignored (crude MC ran its default count); now it caps both modes."""
    code, stdout, stderr = cli("evaluate", "testbed:cut_in", "--controller", "builtin:idm", "--method", "crude,nade",
                               "--max-tests", "300", "--json")
    assert code == 0, stderr
    assert [entry["n"] for entry in json.loads(stdout)["methods"]] == [300, 300]  # defaults 200,000 and 10,000
    code, _, stderr = cli("evaluate", "testbed:cut_in", "--controller", "builtin:idm", "--method", "nade",
                          "--tests", "500", "--max-tests", "300")
    assert code == 2 and "--tests 500 exceeds --max-tests 300" in " ".join(stderr.split())
