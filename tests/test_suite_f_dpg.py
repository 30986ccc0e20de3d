"""f-DPG (Go et al. 2023): the estimator's expectation is the exact f-divergence gradient; the fast demo's direction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safetybed.suite.alignment import f_dpg
from safetybed.suite.registry import VERDICTS, DemoResult


@pytest.mark.parametrize("proposal", ["policy", "base"])
@pytest.mark.parametrize("name", f_dpg.DIVERGENCES)
def test_expected_estimator_equals_exact_divergence_gradient(name: str, proposal: str) -> None:
    """Oracle: autograd of the enumerated D_f(π‖p) over all 256 outcomes. The f-DPG estimator with q = π, averaged
    exactly (weights q(x) over every outcome), must give the same gradient (Go et al. 2023, Theorem 1), with any
    constant baseline (its expectation E_π[∇ log π] is zero). Proposals: q = π (on-policy) and q = a (off-policy,
    which exercises the importance weights π/q)."""
    rng = np.random.default_rng(0)
    base = f_dpg.TabularAutoregressive(f_dpg.random_base_logits(rng, scale=1.5))
    policy = f_dpg.TabularAutoregressive(f_dpg.random_base_logits(rng, scale=1.0))
    with torch.no_grad():
        # a full-support target (b = 1 or 0.05) so every divergence is finite and the clamp is inactive
        contains = (f_dpg.all_sequences() == f_dpg.CONSTRAINT_TOKEN).any(dim=1)
        log_scores = base.log_probs() + torch.where(contains, 0.0, math.log(0.05))
    log_partition = float(torch.logsumexp(log_scores, dim=0))

    exact = torch.autograd.grad(f_dpg.divergence(policy.log_probs(), log_scores - log_partition, name),
                                policy.logits)[0]
    log_probs = policy.log_probs()
    with torch.no_grad():
        proposal_log_probs = log_probs.detach() if proposal == "policy" else base.log_probs()
    terms = f_dpg.f_dpg_loss(log_probs, proposal_log_probs, log_scores, log_partition, divergence_name=name,
                             baseline=0.3, sample_weights=proposal_log_probs.exp())
    estimated = torch.autograd.grad(terms["loss_actor"], policy.logits)[0]
    assert float(exact.abs().max()) > 1e-3  # not a trivial zero gradient
    torch.testing.assert_close(estimated, exact, rtol=1e-7, atol=1e-10)


def test_reverse_kl_pseudo_reward_is_finite_on_constraint_violations() -> None:
    log_probs = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    scores = torch.tensor([0.0, -math.inf], dtype=torch.float64)
    terms = f_dpg.f_dpg_loss(log_probs, log_probs, scores, 0.0, divergence_name="reverse_kl", max_log_ratio=20.0)
    assert float(terms["pseudo_reward"][1]) == pytest.approx(-21.0)
    js = f_dpg.f_dpg_loss(log_probs, log_probs, scores, 0.0, divergence_name="js")
    assert float(js["pseudo_reward"][1]) == pytest.approx(-math.log(2.0), abs=1e-8)  # f'(∞) = log 2


def test_windowed_baseline_keeps_the_last_window() -> None:
    baseline = f_dpg.WindowedBaseline(3)
    assert baseline.value is None
    baseline.update(torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    baseline.update(torch.tensor([[4.0, 6.0], [3.0, 3.0]]))
    torch.testing.assert_close(baseline.value, torch.tensor([[4.0], [2.0]], dtype=torch.float64))


def test_config_and_loss_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        f_dpg.Config(batch_size=0)
    with pytest.raises(ValueError, match="threshold_fraction"):
        f_dpg.Config(threshold_fraction=1.5)
    with pytest.raises(ValueError, match="divergence_name"):
        f_dpg.f_dpg_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.0, divergence_name="hellinger")


def test_fast_demo_direction() -> None:
    result = f_dpg.demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.verdict in VERDICTS and result.fast
    assert result.measured.keys() >= result.baseline.keys()
    # reverse KL (RLHF-like) ends with less entropy than JS and forward KL (the paper's diversity finding)
    assert result.measured["reverse_kl entropy"].mean < result.measured["entropy"].mean
    assert result.measured["reverse_kl entropy"].mean < result.baseline["entropy"].mean
    # JS's final KL(p||π) within 10 % of forward KL's (DPG optimises that very divergence)
    assert result.measured["forward_kl"].mean <= 1.1 * result.baseline["forward_kl"].mean
    for label in ("constraint", "reverse_kl constraint", "tv constraint"):
        assert result.measured[label].mean > 0.9
    assert result.baseline["constraint"].mean > 0.9
