"""SATORI staged rewards (Shen et al. 2025): union-box IoU, reward sums and GRPO advantages against hand-computed
values, and the fast demo's direction."""

import math

import pytest
import torch

from safetybed.suite.registry import VERDICTS, DemoResult
from safetybed.suite.verifiable_rewards.staged import (
    ENTRY,
    Config,
    demo,
    grpo_staged_loss,
    staged_rewards,
    union_iou,
)


def _boxes(*boxes):
    return torch.tensor(boxes)[None]  # [1, K, 4]


@pytest.mark.parametrize(("pred", "true", "expected"), [
    ([[0, 0, 2, 2]], [[4, 4, 6, 6]], 0.0),  # disjoint
    ([[0, 0, 4, 4]], [[0, 0, 4, 4]], 1.0),  # identical
    ([[1, 1, 3, 3]], [[0, 0, 4, 4]], 4 / 16),  # nested: the inner area over the outer
    ([[0, 0, 4, 4]], [[2, 0, 6, 4]], 8 / 24),  # overlapping: 2x4 shared, 16 + 16 - 8 covered
    ([[0, 0, 2, 2], [2, 0, 4, 2]], [[0, 0, 4, 2]], 1.0),  # two adjacent predictions tile the true box
    ([[0, 0, 3, 3], [1, 1, 4, 4]], [[0, 0, 4, 4]], 14 / 16),  # union 9 + 9 - 4 = 14 inside a 16-pixel box
    ([[3, 3, 1, 1]], [[0, 0, 4, 4]], 0.0),  # a malformed box covers nothing
])
def test_union_iou_on_hand_built_boxes(pred, true, expected):
    # Oracle: the areas by hand (shapely's unary_union would give the same for integer corners).
    assert float(union_iou(_boxes(*pred), _boxes(*true))[0]) == pytest.approx(expected, abs=1e-6)


def test_staged_rewards_sum_the_stages():
    terms = staged_rewards(well_formed=torch.tensor([True, True, False]), iou=torch.tensor([0.5, 1.0, 0.3]),
                           correct=torch.tensor([True, False, False]))
    # format + IoU + answer; a malformed box scores no IoU (plugin.py scores an unparsable box 0)
    assert terms["total"].tolist() == pytest.approx([2.5, 2.0, 0.0])
    answer_only = staged_rewards(well_formed=torch.tensor([True, True, False]), iou=torch.tensor([0.5, 1.0, 0.3]),
                                 correct=torch.tensor([True, False, False]), staged=False)
    assert answer_only["total"].tolist() == [1.0, 0.0, 0.0]


def test_grpo_advantage_of_a_hand_built_group():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    log_probs = torch.zeros(1, 4, requires_grad=True)
    terms = grpo_staged_loss(log_probs, rewards)
    std = math.sqrt(1.25)  # population std of 0..3 around 1.5
    expected = [-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std]
    assert terms["advantages"][0].tolist() == pytest.approx(expected, abs=1e-5)
    terms["loss_actor"].backward()
    assert log_probs.grad[0].tolist() == pytest.approx([-a / 4 for a in expected], abs=1e-5)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="group_size"):
        Config(group_size=1)
    with pytest.raises(ValueError, match="accuracy_target"):
        Config(accuracy_target=1.5)


def test_fast_demo_direction():
    result = demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.name == ENTRY.name and result.verdict in VERDICTS
    # Direction, not size: the staged reward localises better than the answer-only one (IoU ahead by > 0.05) and
    # its answers are at least as accurate (tolerance 0.05) on seed 0 and 1 after 120 updates.
    assert result.measured["final_mean_iou"].mean > result.baseline["final_mean_iou"].mean + 0.05
    assert result.measured["final_accuracy"].mean >= result.baseline["final_accuracy"].mean - 0.05
