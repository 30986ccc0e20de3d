"""RPO (Liu et al. 2024): the DPO loss and gradient on a hand-computed tabular pair, RPO's gradient as DPO's minus
eta * beta * grad log pi(y_w), eta = 0 as DPO, input checks, and the fast demo's direction."""

from __future__ import annotations

import math

import pytest
import torch

from safetybed.suite.alignment.rpo import ENTRY, Config, rpo_loss
from safetybed.suite.registry import VERDICTS, DemoResult

BETA = 0.5
# A 3-action tabular softmax policy; the pair is chosen = action 0, rejected = action 1.
LOGITS = [math.log(2.0), 0.0, 0.0]  # pi = (1/2, 1/4, 1/4)
REFERENCE_LOGITS = [0.0, math.log(2.0), 0.0]  # pi_ref = (1/4, 1/2, 1/4)


def _terms(eta: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    log_probs = torch.log_softmax(logits, 0)
    reference = torch.log_softmax(torch.tensor(REFERENCE_LOGITS, dtype=torch.float64), 0)
    terms = rpo_loss(log_probs[[0]], log_probs[[1]], reference[[0]], reference[[1]], beta=BETA, eta=eta)
    (gradient,) = torch.autograd.grad(terms["loss"], logits)
    return terms, gradient


def test_dpo_loss_and_gradient_on_a_hand_computed_pair():
    terms, gradient = _terms(eta=0.0)
    # margin = (log 1/2 - log 1/4) - (log 1/4 - log 1/2) = 2 log 2; beta * margin = log 2.
    # sigmoid(log 2) = 2/3; loss = -log(2/3) = log 1.5.
    assert terms["margin"].item() == pytest.approx(2 * math.log(2.0), abs=1e-12)
    assert terms["loss_dpo"].item() == pytest.approx(math.log(1.5), abs=1e-12)
    assert terms["loss"].item() == pytest.approx(terms["loss_dpo"].item(), abs=1e-15)
    # d loss / d logits = -beta * sigmoid(-beta * margin) * (e_w - e_l): the softmax normaliser cancels in the
    # log-ratio difference. sigmoid(-log 2) = 1/3, so the scale is 1/6.
    scale = BETA / 3
    assert gradient.tolist() == pytest.approx([-scale, scale, 0.0], abs=1e-12)
    # implicit rewards: beta * (log pi - log pi_ref)
    assert terms["chosen_reward"].item() == pytest.approx(BETA * math.log(2.0), abs=1e-12)
    assert terms["rejected_reward"].item() == pytest.approx(BETA * math.log(0.5), abs=1e-12)


def test_rpo_gradient_is_dpo_minus_eta_beta_grad_log_chosen():
    eta = 0.7
    terms, gradient = _terms(eta=eta)
    _, dpo_gradient = _terms(eta=0.0)
    # grad log pi(y_w = 0) of a softmax = e_0 - pi = (1/2, -1/4, -1/4).
    grad_log_chosen = torch.tensor([0.5, -0.25, -0.25], dtype=torch.float64)
    assert torch.allclose(gradient, dpo_gradient - eta * BETA * grad_log_chosen, atol=1e-12)
    assert terms["loss_sft"].item() == pytest.approx(math.log(2.0), abs=1e-12)
    assert terms["loss"].item() == pytest.approx(math.log(1.5) + eta * BETA * math.log(2.0),
                                                 abs=1e-12)


def test_eta_zero_is_dpo_on_a_random_batch():
    g = torch.Generator().manual_seed(0)
    logps = [-torch.rand(16, generator=g, dtype=torch.float64) * 5 for _ in range(4)]
    rpo0 = rpo_loss(*logps, beta=0.1, eta=0.0)
    dpo = -torch.nn.functional.logsigmoid(0.1 * ((logps[0] - logps[2]) - (logps[1] - logps[3]))).mean()
    assert float(rpo0["loss"]) == pytest.approx(float(dpo), abs=1e-14)


def test_bad_options_are_refused():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        rpo_loss(x, x, x, x, beta=0.0, eta=1.0)
    with pytest.raises(ValueError, match="eta"):
        rpo_loss(x, x, x, x, beta=0.1, eta=-1.0)
    with pytest.raises(ValueError, match="support_size"):
        Config(support_size=100)


def test_fast_demo_direction():
    result = ENTRY.demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.verdict in VERDICTS and result.name == "rpo"
    assert set(result.measured) <= set(result.baseline)
    # DPO drifts off pi_ref's support and loses likelihood on the data; RPO stays (tolerances: 0.2 of mass,
    # 0.1 nats, well inside the seed-to-seed spread seen at this seed).
    assert result.baseline["off_support_mass"].mean > result.measured["off_support_mass"].mean + 0.2
    assert result.baseline["chosen_logp_change"].mean < result.measured["chosen_logp_change"].mean - 0.1
    assert result.measured["true_reward"].mean > result.baseline["true_reward"].mean
