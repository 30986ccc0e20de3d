"""BRPO (Qi et al. 2025): segment advantages on a hand-computed group, the baseline's limits, exact (enumerated)
expected gradients on a three-segment toy, the summary advantages, and the fast demo's direction."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from safetybed.suite.lm_pg.brpo import (
    ENTRY,
    AnytimeChainTask,
    Config,
    brpo_advantages,
    brpo_loss,
    summary_advantages,
)
from safetybed.suite.registry import VERDICTS, DemoResult

UNIFORM3 = torch.full((3,), 1 / 3, dtype=torch.float64)


def _close(actual: torch.Tensor, expected: list) -> bool:
    return torch.allclose(actual.to(torch.float64), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_advantages_of_a_hand_computed_group():
    # G = 2 rollouts, S = 3 budgets, uniform prior 1/3; budget scores r_j(g):
    scores = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]], dtype=torch.float64)
    terms = brpo_advantages(scores, budget_probs=UNIFORM3)
    # return_s: g0 (2/3, 1/3, 1/3), g1 (2/3, 2/3, 1/3); avg_s (2/3, 1/2, 1/3).
    assert _close(terms.segment_return[0], [[2 / 3, 1 / 3, 1 / 3], [2 / 3, 2 / 3, 1 / 3]])
    assert terms.group_average[0, 0].tolist() == pytest.approx([2 / 3, 1 / 2, 1 / 3])
    # last_s with weights 2^j: g0 s1: 1 * 2/3; s2: (1*1 + 2*0)/3 * 1/3 = 1/9.  g1 s1: 0; s2: (2*1)/3 * 1/3 = 2/9.
    assert _close(terms.own_prefix[0], [[0, 2 / 3, 1 / 9], [0, 0, 2 / 9]])
    # baseline_s = (s last + (3 - s) avg) / 3: g0 (2/3, 5/9, 5/27), g1 (2/3, 1/3, 7/27).
    assert _close(terms.baseline[0], [[2 / 3, 5 / 9, 5 / 27], [2 / 3, 1 / 3, 7 / 27]])
    assert _close(terms.advantage[0], [[0, -2 / 9, 4 / 27], [0, 1 / 3, 2 / 27]])


def test_baseline_limits_and_variants():
    scores = torch.rand((5, 4, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    brpo = brpo_advantages(scores, budget_probs=UNIFORM3)
    dense = brpo_advantages(scores, budget_probs=UNIFORM3, variance_reduction="v2only")
    own = brpo_advantages(scores, budget_probs=UNIFORM3, variance_reduction="v1only")
    # First segment (s = 0, no earlier budget): the pure group mean, i.e. GRPO on the dense return.
    assert torch.allclose(brpo.baseline[..., 0], brpo.group_average[..., 0])
    assert torch.allclose(brpo.advantage[..., 0], dense.advantage[..., 0])
    # Last segment (s = S - 1 = 2): ((S - 1) last + avg) / S -- the own-prefix term never gets weight 1.
    assert torch.allclose(brpo.baseline[..., 2], (2 * own.baseline[..., 2] + dense.baseline[..., 2]) / 3)
    # One budget: BRPO is GRPO (unscaled) on the only reward.
    one = brpo_advantages(scores[..., :1], budget_probs=torch.ones(1, dtype=torch.float64))
    assert torch.allclose(one.advantage[..., 0], scores[..., 0] - scores[..., 0].mean(-1, keepdim=True))
    # The own-prefix term of segment s does not read the budgets j >= s.
    changed = scores.clone()
    changed[..., 1:] = 1.0 - changed[..., 1:]
    assert torch.allclose(brpo_advantages(changed, budget_probs=UNIFORM3).own_prefix[..., :2], brpo.own_prefix[..., :2])


def _expected_gradients(variance_reduction: str, *, leave_one_out: bool, theta: torch.Tensor,
                        probs: torch.Tensor, correct: torch.Tensor, group_size: int) -> tuple[torch.Tensor, ...]:
    """Exact E[(1/G) sum_g sum_s A_s(g) d log pi(y_s(g)) / d theta] and the true dJ/dtheta on the toy: segment s is
    one Bernoulli(sigmoid(theta_s)) step; a summary after u useful steps is right with probability correct[u]."""
    segments = theta.shape[0]
    outcomes = torch.tensor(list(itertools.product([0, 1], repeat=2 * segments)), dtype=torch.float64)
    steps, right = outcomes[:, :segments], outcomes[:, segments:]
    p_step = torch.sigmoid(theta)
    p_right = correct[torch.cumsum(steps, 1).long()]
    weight = ((p_step ** steps) * (1 - p_step) ** (1 - steps)).prod(1) * \
        ((p_right ** right) * (1 - p_right) ** (1 - right)).prod(1)
    score = steps - p_step  # d log pi(y_s) / d theta_s of the Bernoulli step
    # Every joint outcome of the G rollouts of one group.
    index = torch.tensor(list(itertools.product(range(outcomes.shape[0]), repeat=group_size)))
    advantages = brpo_advantages(right[index], budget_probs=probs, variance_reduction=variance_reduction,
                                 leave_one_out=leave_one_out).advantage  # [joint, G, S]
    joint_weight = weight[index].prod(1)
    estimate = (joint_weight[:, None] * (advantages * score[index]).mean(1)).sum(0)
    # The true gradient of J = sum_j p_j E[r_j].
    theta_graph = theta.clone().requires_grad_(True)
    p_graph = torch.sigmoid(theta_graph)
    w_graph = ((p_graph ** steps) * (1 - p_graph) ** (1 - steps)).prod(1) * \
        ((p_right ** right) * (1 - p_right) ** (1 - right)).prod(1)
    objective = (w_graph * (right * probs).sum(1)).sum()
    (true_gradient,) = torch.autograd.grad(objective, theta_graph)
    return estimate, true_gradient


@pytest.mark.parametrize("variance_reduction", ["brpo", "v1only", "v2only", "none"])
def test_expected_gradient_by_enumeration(variance_reduction):
    theta = torch.tensor([0.4, -0.7, 1.1], dtype=torch.float64)
    probs = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    correct = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64)
    group_size, segments = 2, 3
    # Leave-one-out group mean: the estimator is exactly unbiased (last_s only reads budgets j < s).
    estimate, true_gradient = _expected_gradients(variance_reduction, leave_one_out=True, theta=theta, probs=probs,
                                                  correct=correct, group_size=group_size)
    assert torch.allclose(estimate, true_gradient, atol=1e-12)
    # The official group mean includes the rollout itself: segment s's gradient shrinks by the group-mean weight
    # w_s / G, w_s = (S - s) / S for "brpo", 1 for "v2only", 0 for "v1only" / "none".
    estimate, _ = _expected_gradients(variance_reduction, leave_one_out=False, theta=theta, probs=probs,
                                      correct=correct, group_size=group_size)
    s = torch.arange(segments, dtype=torch.float64)
    group_weight = {"brpo": (segments - s) / segments, "v2only": torch.ones(segments)}.get(
        variance_reduction, torch.zeros(segments))
    assert torch.allclose(estimate, (1 - group_weight / group_size) * true_gradient, atol=1e-12)
    assert not math.isclose(float(true_gradient.abs().min()), 0.0, abs_tol=1e-3)  # the check has something to see


def test_summary_advantages_follow_the_official_baselines():
    scores = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]).reshape(1, 2, 2, 1)  # [B=1, G=2, S=2, A=1]
    assert summary_advantages(scores)[..., 0].tolist() == [[[0.5, 0.0], [-0.5, 0.0]]]
    several = torch.tensor([[[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]]])  # [1, 1, 2, 3]: own mean per budget
    assert _close(summary_advantages(several)[0, 0], [[2 / 3, -1 / 3, -1 / 3], [0, 0, 0]])
    assert summary_advantages(several, final_only=True)[0, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_loss_gives_each_token_its_segment_advantage():
    log_probs = torch.zeros((1, 4), requires_grad=True)
    terms = brpo_loss(log_probs, torch.tensor([[1.0, -2.0]]), segment_of_token=torch.tensor([0, 0, 1, 1]))
    terms["loss_actor"].backward()
    assert log_probs.grad.tolist() == [[-0.25, -0.25, 0.5, 0.5]]
    task = AnytimeChainTask(Config())
    assert task.segment_of_token.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="budgets"):
        Config(budgets=(4, 8, 12))
    with pytest.raises(ValueError, match="group_size"):
        Config(group_size=1)
    with pytest.raises(ValueError, match="variance_reduction"):
        brpo_advantages(torch.zeros((1, 2, 3)), budget_probs=UNIFORM3, variance_reduction="grpo")
    with pytest.raises(ValueError, match="budget_probs"):
        brpo_advantages(torch.zeros((1, 2, 3)), budget_probs=torch.ones(2))


def test_fast_demo_lowers_late_variance_and_raises_the_anytime_auc():
    result = ENTRY.demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.verdict in VERDICTS and result.fast
    # Direction of both claims, with margin: late-segment variance ratio above 1.5 and AUC higher by > 0.02.
    assert result.measured["variance_ratio_late_vs_grpo"].mean > 1.5
    assert result.measured["anytime_auc"].mean > result.baseline["anytime_auc"].mean + 0.02
    assert result.verdict == "reproduced"
