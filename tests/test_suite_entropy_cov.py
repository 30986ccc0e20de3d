"""Clip-Cov / KL-Cov (Cui et al. 2025): the entropy-dynamics theorems on an exact softmax bandit, the two losses on
hand-built tensors, and the fast demo."""

from __future__ import annotations

import math

import pytest
import torch

from safetybed.suite.lm_pg.entropy_cov import (
    Config,
    cov_policy_loss,
    demo,
    predicted_entropy_change,
    token_covariance,
)
from safetybed.suite.registry import VERDICTS, DemoResult
from safetybed.threads import torch_threads


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(logits, -1)
    return -(log_probs.exp() * log_probs).sum(-1)


@pytest.mark.parametrize("natural", [False, True])
def test_first_order_entropy_change_of_an_exact_pg_step_on_a_softmax_bandit(natural):
    # Oracle: a finite difference of the exact entropy across one exact (natural) PG step on the logits.
    torch.set_default_dtype(torch.float64)
    try:
        logits = torch.tensor([1.2, -0.3, 0.5, 2.0, -1.1], requires_grad=True)
        rewards = torch.tensor([0.1, 1.0, -0.4, 0.3, 0.8])
        probs = torch.softmax(logits, -1)
        expected_reward = (probs * rewards).sum()
        (gradient,) = torch.autograd.grad(expected_reward, logits)  # exact PG: pi(a) * A(a)
        advantages = (rewards - expected_reward).detach()
        probs = probs.detach()
        assert torch.allclose(gradient, probs * advantages, atol=1e-12)
        # Natural PG on a softmax: the Fisher-preconditioned step moves the logits by A (Cui et al. 2025, Thm 2).
        direction = advantages if natural else gradient
        for step_size in (1e-3, 1e-4):
            realised = _entropy(logits.detach() + step_size * direction) - _entropy(logits.detach())
            predicted = predicted_entropy_change(probs, advantages, step_size=step_size, natural=natural)
            assert abs(float(predicted)) > 1e-3 * step_size  # not a vacuous zero
            # first order: the gap is O(eta^2), so relative error ~ eta
            assert float(realised) == pytest.approx(float(predicted), rel=20 * step_size)
    finally:
        torch.set_default_dtype(torch.float32)


def _hand_built() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Six tokens with mean A = 0, mean log pi = -1.5, so c_t = A_t * (log pi_t + 1.5) = [[2, -2, 1], [2, -2, 1]]."""
    log_probs = torch.tensor([[-0.5, -2.5, -1.0], [-2.5, -0.5, -2.0]], requires_grad=True)
    advantages = torch.tensor([[2.0, 2.0, 2.0], [-2.0, -2.0, -2.0]])
    # token (1, 0): ratio exp(-0.5) = 0.61 < 0.8 with A < 0, so PPO has already clipped it
    old_log_probs = log_probs.detach() + torch.tensor([[0.05, -0.05, 0.1], [0.5, 0.0, -0.1]])
    return log_probs, old_log_probs, advantages, torch.ones(2, 3)


def test_token_covariance_is_the_centred_product():
    log_probs, _, advantages, mask = _hand_built()
    assert torch.allclose(token_covariance(log_probs, advantages, mask), torch.tensor([[2.0, -2.0, 1.0]] * 2))


def test_clip_cov_detaches_exactly_the_chosen_tokens():
    log_probs, old, advantages, mask = _hand_built()
    ratio = torch.exp(log_probs.detach() - old)
    # Only (0, 0) and (1, 0) have 1 < c < 5; (1, 0) is PPO-clipped, so the one token drawn is (0, 0).
    terms = cov_policy_loss(log_probs, old, advantages, mask, config=Config(method="clip_cov"),
                            generator=torch.Generator().manual_seed(0))
    assert terms["selected"].tolist() == [[True, False, False], [False, False, False]]
    (gradient,) = torch.autograd.grad(terms["loss_actor"], log_probs)
    expected = -advantages * ratio / 6  # d(-A rho)/d log pi, token mean over 6
    expected[0, 0] = 0.0  # Clip-Cov's multiplier 0
    expected[1, 0] = 0.0  # PPO clip: the clipped surrogate is constant in log pi
    assert torch.equal(gradient[0, 0], torch.tensor(0.0))
    assert torch.allclose(gradient, expected, atol=1e-7)
    # vanilla PPO would have moved (0, 0)
    (vanilla,) = torch.autograd.grad(cov_policy_loss(log_probs, old, advantages, mask,
                                                     config=Config(method="vanilla"))["loss_actor"], log_probs)
    assert abs(float(vanilla[0, 0])) > 0.1


def test_clip_cov_with_many_candidates_zeroes_only_the_drawn_subset():
    log_probs, old, advantages, mask = _hand_built()
    old = log_probs.detach().clone()  # ratio 1: nothing PPO-clipped
    config = Config(method="clip_cov", clip_cov_lb=0.5, clip_ratio=0.2)  # candidates c in {2, 1}: 4 tokens
    terms = cov_policy_loss(log_probs, old, advantages, mask, config=config,
                            generator=torch.Generator().manual_seed(3))
    selected = terms["selected"]
    assert int(selected.sum()) == max(int(0.2 * 6), 1) == 1
    assert bool((terms["covariance"][selected] > 0.5).all())
    (gradient,) = torch.autograd.grad(terms["loss_actor"], log_probs)
    expected = torch.where(selected, torch.zeros(2, 3), -advantages / 6)
    assert torch.allclose(gradient, expected, atol=1e-7)


def test_kl_cov_penalises_exactly_the_top_k_percent():
    log_probs, old, advantages, mask = _hand_built()
    ratio = torch.exp(log_probs.detach() - old)
    # k_percent is a percent (official code: int(N * k / 100)): 34 % of 6 tokens -> the two with c = 2
    config = Config(method="kl_cov", k_percent=34.0, kl_coef=1.0)
    terms = cov_policy_loss(log_probs, old, advantages, mask, config=config)
    top = torch.tensor([[True, False, False], [True, False, False]])
    assert terms["selected"].tolist() == top.tolist()
    log_ratio = log_probs.detach() - old
    penalty = torch.where(top, log_ratio.abs(), torch.zeros(2, 3))
    # no PPO clip in KL-Cov: (1, 0) keeps -A rho although its ratio is 0.61
    expected_loss = ((-advantages * ratio + penalty).sum() / 6)
    assert float(terms["loss_actor"].detach()) == pytest.approx(float(expected_loss), abs=1e-6)
    assert float(terms["loss_penalty"].detach()) == pytest.approx(float(penalty.sum() / 6), abs=1e-7)
    (gradient,) = torch.autograd.grad(terms["loss_actor"], log_probs)
    expected = (-advantages * ratio + torch.where(top, torch.sign(log_ratio), torch.zeros(2, 3))) / 6
    assert torch.allclose(gradient, expected, atol=1e-6)
    # the official default 0.2 (%) selects max(1, int(6 * 0.002)) = 1 token
    assert int(cov_policy_loss(log_probs, old, advantages, mask, config=Config(method="kl_cov"))["selected"].sum()) == 1


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="method"):
        Config(method="entropy_bonus")
    with pytest.raises(ValueError, match="k_percent"):
        Config(k_percent=150.0)
    with pytest.raises(ValueError, match="Generator"):
        log_probs, old, advantages, mask = _hand_built()
        cov_policy_loss(log_probs, old, advantages, mask, config=Config(method="clip_cov"))


def test_fast_demo_shows_vanilla_entropy_falling():
    with torch_threads(1):
        result = demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.verdict in VERDICTS and result.seeds == (0,)
    for values in (result.measured, result.baseline):
        assert all(math.isfinite(m.mean) for m in values.values())
    # Direction (tolerance: 5 %): vanilla GRPO's token entropy falls within 12 updates at lr 1e-2.
    assert result.baseline["entropy_final_over_initial"].mean < 0.95
    assert 0 <= result.measured["accuracy"].mean <= 1
