"""On-policy IPO vs Best-of-N SFT (Tajwar et al. 2024): IPO's loss and gradient on a hand-computed pair, Best-of-N
SFT's gradient as maximum likelihood on the selected samples, the sampler's distribution, and the fast demo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from safetybed.suite.alignment.onpolicy_neggrad import (
    ENTRY,
    Config,
    best_of_n_sft_loss,
    bump_reward,
    collect_groups,
    ipo_loss,
    reference_policy,
)
from safetybed.suite.registry import DemoResult

#: Significance level of the sampler's chi-square test (fixed seed, so a failure reproduces).
ALPHA = 1e-3


def test_ipo_loss_and_gradient_on_a_hand_computed_pair():
    """Oracle by hand: logits theta = (0, 0, 0), pi_ref = (1/2, 1/4, 1/4), one group (a=0, r=0.1), (a=2, r=0.9), so
    w = 2, l = 0 and h = (theta_2 - theta_0) - (log 1/4 - log 1/2) = log 2 (the softmax normaliser cancels).
    With beta = 1: loss = (log 2 - 1)^2 = 0.094152 and d loss / d theta = 2 (log 2 - 1) (e_2 - e_0)
    = (0.613706, 0, -0.613706)."""
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    ref = torch.log(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))
    actions = torch.tensor([[0, 2]])
    rewards = torch.tensor([[0.1, 0.9]], dtype=torch.float64)
    terms = ipo_loss(torch.log_softmax(logits, -1)[actions], ref[actions], rewards, beta=1.0)
    terms["loss_policy"].backward()
    assert float(terms["margin"]) == pytest.approx(math.log(2), abs=1e-12)
    assert float(terms["loss_policy"].detach()) == pytest.approx((math.log(2) - 1) ** 2, abs=1e-12)
    expected = 2 * (math.log(2) - 1) * torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(logits.grad, expected)
    # the order inside a group does not matter: the winner is picked by reward
    swapped = ipo_loss(torch.log_softmax(logits, -1)[actions.flip(1)], ref[actions.flip(1)], rewards.flip(1),
                       beta=1.0)
    assert float(swapped["loss_policy"].detach()) == pytest.approx(float(terms["loss_policy"].detach()), abs=1e-12)


def test_best_of_n_gradient_is_maximum_likelihood_on_the_selected_samples():
    """Oracle: d(-mean_g log softmax(theta)[a*_g]) / d theta = softmax(theta) - mean_g e_{a*_g} (the ML gradient of
    the groups' highest-reward samples); the other samples carry no gradient."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, generator=generator, dtype=torch.float64).requires_grad_()
    actions = torch.tensor([[0, 3, 5], [1, 1, 4], [2, 5, 0]])
    rewards = torch.tensor(bump_reward(actions.numpy(), peak=4.0, width=1.0))
    selected = torch.tensor([3, 4, 5])  # closest to the peak at 4 in each group (5 before 3 in group 3: |5-4| = 1)
    assert torch.equal(torch.argmax(rewards, 1), torch.tensor([1, 2, 1]))
    terms = best_of_n_sft_loss(torch.log_softmax(logits, -1)[actions], rewards)
    terms["loss_policy"].backward()
    expected = torch.softmax(logits.detach(), -1) - torch.nn.functional.one_hot(selected, 6).double().mean(0)
    torch.testing.assert_close(logits.grad, expected)


def test_on_policy_sampler_draws_from_the_current_policy():
    """Chi-square goodness of fit of 20 000 draws against a known pi far from pi_ref (seeded, ALPHA = 1e-3)."""
    probabilities = np.array([0.05, 0.1, 0.15, 0.2, 0.5])
    actions = collect_groups(torch.log(torch.tensor(probabilities)), n_groups=2000, group_size=10,
                             generator=torch.Generator().manual_seed(0))
    assert actions.shape == (2000, 10)
    counts = np.bincount(actions.reshape(-1).numpy(), minlength=5)
    assert stats.chisquare(counts, probabilities * counts.sum()).pvalue > ALPHA


def test_reference_policy_matches_the_official_shape():
    """The official pi_data (tanh of Cauchy(-0.7, 0.4) in 100 bins): median in bin 19 (tanh is monotone, so the
    median is tanh(-0.7) = -0.604, at bin position 19.8), the Cauchy's tails in the end bins
    (bin 0: F(atanh(-0.98)) = 0.5 + arctan((-2.298 + 0.7) / 0.4) / pi = 0.0779), little mass near the peak 70."""
    pi_ref = reference_policy(100)
    assert pi_ref.sum() == pytest.approx(1.0)
    assert int(np.searchsorted(np.cumsum(pi_ref), 0.5)) == 19
    assert pi_ref[0] == pytest.approx(0.5 + math.atan((math.atanh(-0.98) + 0.7) / 0.4) / math.pi, abs=1e-9)
    assert pi_ref[60:81].sum() < 0.06
    with pytest.raises(ValueError, match="beta"):
        Config(beta=0.0)


def test_fast_demo_direction():
    """Seed 0: on the misaligned reward, on-policy IPO reaches 0.9 x max on every seed and in fewer steps than each
    offline learner (direction); the aligned case is not slower for it than 2x the fastest other (tolerance)."""
    result = ENTRY.demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.name == "onpolicy-neggrad"
    assert result.verdict in ("reproduced", "partly", "not reproduced")
    assert result.measured["misaligned_reached"].mean == 1.0
    ours = result.measured["misaligned_steps"].mean
    for other in ("offline_ipo", "offline_best_of_n"):
        assert ours < result.baseline[f"misaligned_steps_{other}"].mean
    assert result.measured["aligned_speedup_vs_best_other"].mean > 0.5
