"""The learned SCV variant (E8): unbiased on a model with a known answer, and it removes the state-driven variance.

The model, derived on paper: up to two critical steps. At each, a state ``s ~ U(0, 1)`` (not importance-sampled)
is seen, and the POV draws the adversarial maneuver with naturalistic probability ``C`` (criticality) or a benign
one. The proposal puts all of q~ on the adversarial maneuver (NADE with a 0/1 challenge), so the defensive mixture
draws it with ``q = (1 - eps) + eps C``. After an adversarial draw the test ends, crashing with probability
``f(s) = 0.98`` if ``s < 0.5`` else ``0.02``; after a benign one the next step follows (or the test ends safely).
Hence ``mu = C E[f] (1 + (1 - C)) = C * 0.5 * (2 - C)``. ``K`` (1 or 2) depends on the first draw, and which
adversarial draws crash is decided by the state, not by the ratios: the martingale variant can only remove the
mean, the learned one nearly everything.
"""

from __future__ import annotations

import numpy as np
import pytest

from safetybed.evaluate import EstimatorInputError, TestRecord, nade_estimate, scv_estimate
from safetybed.evaluate.scv_learned import learned_feature

C, EPS = 0.01, 0.9  # epsilon as in scenarios/highway/*_nade.toml (see test_small_epsilon_gets_a_caveat)
MU = C * 0.5 * (2.0 - C)


def crash_probability(s: float) -> float:
    return 0.98 if s < 0.5 else 0.02


def sample(n: int, rng: np.random.Generator, *, eps: float = EPS) -> list[TestRecord]:
    q_adv = (1.0 - eps) + eps * C
    records = []
    for _ in range(n):
        p, qt, eps_log, crit, state, crashed = [], [], [], [], [], False
        for _step in range(2):
            s = float(rng.random())
            adversarial = bool(rng.random() < q_adv)
            p.append(C if adversarial else 1.0 - C)
            qt.append(1.0 if adversarial else 0.0)
            eps_log.append(eps)
            crit.append(C)
            state.append((s,))
            if adversarial:
                crashed = bool(rng.random() < crash_probability(s))
                break
        records.append(TestRecord(crashed, tuple(p), tuple(qt), tuple(eps_log), tuple(crit), tuple(state)))
    return records


def test_learned_variant_covers_and_beats_the_martingale_variant():
    """20 seeded repetitions of 1,000 tests: the 90 % CI covers mu in >= 15 (P(<= 14 | 0.9) = 1.1 %), the mean
    estimate is within 3 standard errors of mu, and the learned variant's variance ratio is far above the
    martingale variant's (which has only the ratios to work with)."""
    root = np.random.SeedSequence(2026)
    covered, estimates, gains, martingale_gains = 0, [], [], []
    for child in root.spawn(20):
        records = sample(1000, np.random.default_rng(child))
        learned = scv_estimate(records, variant="learned")
        covered += int(learned.ci[0] <= MU <= learned.ci[1])
        estimates.append(learned.estimate)
        gains.append(learned.details["variance_ratio"])
        martingale_gains.append(scv_estimate(records, variant="martingale").details["variance_ratio"])
        assert all(fit["skipped"] is None for fit in learned.details["learned_fits"])
    assert covered >= 15, covered
    assert abs(np.mean(estimates) - MU) < 3 * np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert np.median(gains) > 5.0 and np.median(gains) > 3.0 * np.median(martingale_gains), (gains, martingale_gains)


def test_learned_feature_matches_a_hand_computation():
    """(E8) for three tests, by hand. eps = 0.5, q = (q~ + p) / 2:
    test 0: p = 0.2, q~ = 0.6 (q = 0.4: p/q = 0.5, r = 1.5), then p = 0.4, q~ = 0 (q = 0.2: p/q = 2, r = 0);
    test 1: p = 0.1, q~ = 0.7 (q = 0.4: p/q = 0.25, r = 1.75); test 2: no critical step.
    W_<j is 1 at each test's first step and 0.5 at test 0's second."""
    from safetybed.evaluate.estimators import _parse_records

    records = [TestRecord(False, (0.2, 0.4), (0.6, 0.0), (0.5, 0.5)), TestRecord(True, (0.1,), (0.7,), (0.5,)),
               TestRecord(False)]
    batch = _parse_records(records)
    weight_before = np.exp(batch.log_weights_before())
    np.testing.assert_allclose(weight_before, [1.0, 0.5, 1.0], rtol=1e-12)
    crit, g = np.array([0.1, 0.2, 0.3]), np.array([0.9, 0.4, 0.7])
    psi = learned_feature(record_of_step=batch.record_of_step, n=batch.n, weight_before=weight_before,
                          ratios=batch.step_ratios(), criticality=crit, g=g)
    expected = [1.0 * 0.1 * 0.9 * 0.5 + 0.5 * 0.2 * 0.4 * (0.0 - 1.0), 1.0 * 0.3 * 0.7 * 0.75, 0.0]
    np.testing.assert_allclose(psi, expected, rtol=1e-12)


def test_learned_variant_is_deterministic_and_refuses_what_it_cannot_use():
    records = sample(600, np.random.default_rng(1))
    first, again = scv_estimate(records, variant="learned"), scv_estimate(records, variant="learned")
    assert first.estimate == again.estimate
    with pytest.raises(EstimatorInputError, match="cross_fit"):
        scv_estimate(records, variant="learned", cross_fit=False)
    bare = [TestRecord(r.crashed, r.p, r.q_tilde, r.epsilon) for r in records]
    with pytest.raises(EstimatorInputError, match=r"record 0: criticality, state"):
        scv_estimate(bare, variant="learned")
    ragged = list(records)
    ragged[3] = TestRecord(records[3].crashed, records[3].p, records[3].q_tilde, records[3].epsilon,
                           records[3].criticality, tuple((s[0], 1.0) for s in records[3].state))
    with pytest.raises(EstimatorInputError, match=r"record 3: state\[0\]"):
        scv_estimate(ragged, variant="learned")
    # Without crashes among the adversarial draws there is nothing to learn: the learned column stays 0.
    safe = [TestRecord(False, r.p, r.q_tilde, r.epsilon, r.criticality, r.state) for r in records]
    safe[0] = TestRecord(True, (1.0 - C,), (0.0,), (EPS,), (C,), ((0.2,),))
    result = scv_estimate(safe, variant="learned")
    assert all(fit["skipped"] for fit in result.details["learned_fits"])
    assert result.estimate == pytest.approx(nade_estimate(safe).estimate, rel=1e-9)


def test_small_epsilon_gets_a_caveat():
    """At eps = 0.1 surviving a benign draw multiplies the weight by ~10, which the learned feature carries: the
    report says so (oracle g measured 8.6x at eps = 0.9 and 1.04x at eps = 0.1 on this model, 4,000 tests)."""
    from safetybed.evaluate.efficiency import method_entry

    small = scv_estimate(sample(800, np.random.default_rng(4), eps=0.1), variant="learned")
    assert small.details["epsilon_min"] == pytest.approx(0.1)
    assert "eps < 0.5" in small.details["caveat"]  # the estimator's own warning, carried into the report
    assert method_entry(small, tests=800, bootstrap_resamples=0)["caveat"] == small.details["caveat"]
    usual = scv_estimate(sample(800, np.random.default_rng(4)), variant="learned")
    assert "caveat" not in method_entry(usual, tests=800, bootstrap_resamples=0)
