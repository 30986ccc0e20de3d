"""Balanced online difficulty filtering (Bae et al. 2025): the exact expected GRPO gradient of a Bernoulli bandit
(enumerating all 2^G outcomes through the module's loss) against the analytic p(1-p) form, the band test keeping
exactly the groups inside it, the fill loop, and the fast demo."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from safetybed.suite.common.seq_task import DigitTask, warm_started
from safetybed.suite.lm_data.difficulty_filter import (
    ENTRY,
    Config,
    balanced_filter,
    collect_filtered_batch,
    expected_bandit_gradient,
    grpo_loss,
)
from safetybed.suite.registry import VERDICTS, DemoResult, run_demo

GROUP = 6


def _enumerated_gradient(p: float, *, scale: bool) -> float:
    """E[-d loss / d theta] over all 2^G outcomes of a one-token bandit, p = sigmoid(theta), via grpo_loss."""
    theta = torch.tensor(math.log(p / (1 - p)), dtype=torch.float64, requires_grad=True)
    expected = torch.zeros((), dtype=torch.float64)
    for outcome in itertools.product((0.0, 1.0), repeat=GROUP):
        rewards = torch.tensor(outcome, dtype=torch.float64)
        # log pi(correct) = log sigmoid(theta), log pi(wrong) = log sigmoid(-theta): one token per completion
        log_probs = torch.where(rewards > 0, torch.nn.functional.logsigmoid(theta),
                                torch.nn.functional.logsigmoid(-theta))[:, None]
        probability = p ** sum(outcome) * (1 - p) ** (GROUP - sum(outcome))
        expected = expected - probability * grpo_loss(log_probs, rewards[None, :], scale=scale)["loss_policy"]
    (gradient,) = torch.autograd.grad(expected, theta)
    return float(gradient)


@pytest.mark.parametrize("p", [0.05, 0.25, 0.5, 0.8])
def test_expected_centred_gradient_is_p_times_1_minus_p(p):
    # oracle: E[m (1 - m)] for m = k / G, k ~ Binomial(G, p), is (G - 1) / G * p (1 - p), in closed form
    analytic = (GROUP - 1) / GROUP * p * (1 - p)
    assert _enumerated_gradient(p, scale=False) == pytest.approx(analytic, rel=1e-9)
    assert expected_bandit_gradient(p, group_size=GROUP, scale=False) == pytest.approx(analytic, rel=1e-12)


@pytest.mark.parametrize("p", [0.05, 0.25, 0.5, 0.8])
def test_expected_grpo_gradient_matches_the_binomial_sum(p):
    # with the std scale each group gives sqrt(m (1 - m)) (eps aside): the binomial sum, hand-derived
    oracle = sum(math.comb(GROUP, k) * p**k * (1 - p) ** (GROUP - k) * math.sqrt(k / GROUP * (1 - k / GROUP))
                 for k in range(GROUP + 1))
    assert _enumerated_gradient(p, scale=True) == pytest.approx(oracle, rel=1e-4)
    assert expected_bandit_gradient(p, group_size=GROUP) == pytest.approx(oracle, rel=1e-4)


def test_gradient_is_largest_at_one_half_and_zero_at_the_ends():
    values = [expected_bandit_gradient(p, group_size=8, scale=False) for p in (0.0, 0.1, 0.3, 0.5, 0.7, 1.0)]
    assert values[0] == values[-1] == 0.0
    assert max(values) == values[3]


def test_filter_keeps_exactly_the_groups_in_the_band():
    g = 8
    # group k has k successes out of 8: p̂ = 0, 1/8, ..., 1
    rewards = torch.tensor([[1.0] * k + [0.0] * (g - k) for k in range(g + 1)])
    kept = balanced_filter(rewards, low=0.25, high=0.75)
    assert kept.tolist() == [k in (2, 3, 4, 5, 6) for k in range(g + 1)]  # both ends inclusive
    dropped_ends = balanced_filter(rewards, low=1 / g, high=1 - 1 / g)
    assert dropped_ends.tolist() == [0 < k < g for k in range(g + 1)]
    assert balanced_filter(rewards, low=0.0, high=1.0).all()
    with pytest.raises(ValueError, match="band"):
        balanced_filter(rewards, low=0.8, high=0.2)


def test_fill_loop_returns_a_full_batch_of_in_band_groups_and_counts_every_rollout():
    task = DigitTask(digits=2)
    policy, _ = warm_started(task, seed=0)
    batch = collect_filtered_batch(policy, task, generator=torch.Generator().manual_seed(3), batch_prompts=8,
                                   group_size=8, low=0.25, high=0.75)
    assert batch.rewards.shape == (8, 8) and len(batch.prompts) == 8
    accuracy = batch.rewards.mean(1)
    assert bool(((accuracy >= 0.25) & (accuracy <= 0.75)).all())
    assert batch.rollouts % 64 == 0 and batch.rollouts >= 64
    # the kept completions belong to the kept prompts: their rewards recompute
    assert torch.equal(task.reward(batch.prompts.repeat(8), batch.completions).view(8, 8), batch.rewards)
    capped = collect_filtered_batch(policy, task, generator=torch.Generator().manual_seed(3), batch_prompts=8,
                                    group_size=8, low=0.25, high=0.75, max_rollouts=64)
    assert capped.rollouts == 64 and len(capped.prompts) <= 8


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="band"):
        Config(band=(0.9, 0.1))
    with pytest.raises(ValueError, match="group_size"):
        Config(group_size=1)


def test_fast_demo():
    result = run_demo(ENTRY, fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.verdict in VERDICTS and result.fast
    assert set(result.baseline) >= {"final_accuracy", "final_accuracy_drop_0_1"}
    # claim (i)'s direction: per-prompt gradient norms grow with p(1-p) (tolerance: r > 0.5 on 24 prompts)
    assert result.measured["grad_norm_vs_p(1-p)_correlation"].mean > 0.5
    # the verdict follows the numbers
    correlation_ok = result.measured["grad_norm_vs_p(1-p)_correlation"].mean >= 0.8
    speed_ok = result.measured["budget_fraction_to_match_grpo"].mean <= 0.6
    expected = "reproduced" if correlation_ok and speed_ok else "partly" if correlation_ok or speed_ok else \
        "not reproduced"
    assert result.verdict == expected
