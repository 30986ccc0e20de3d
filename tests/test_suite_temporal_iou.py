"""Temporal-R1 (Li et al. 2025): temporal IoU, the grounding reward and variance-aware selection against
hand-computed values, and the fast demo's direction."""

import pytest
import torch

from safetybed.suite.registry import VERDICTS, DemoResult
from safetybed.suite.verifiable_rewards.temporal_iou import (
    ENTRY,
    Config,
    demo,
    grounding_reward,
    grpo_loss,
    select_by_reward_variance,
    temporal_iou,
)


@pytest.mark.parametrize(("predicted", "truth", "expected"), [
    ([0.0, 2.0], [3.0, 5.0], 0.0),  # disjoint
    ([0.0, 2.0], [2.0, 4.0], 0.0),  # touching: no overlap
    ([1.0, 4.0], [1.0, 4.0], 1.0),  # identical
    ([1.0, 3.0], [0.0, 4.0], 0.5),  # nested: inner length over outer length
    ([0.0, 3.0], [2.0, 5.0], 0.2),  # overlap 1 over hull 5
    ([3.0, 1.0], [0.0, 4.0], 0.0),  # reversed prediction (tvg.py's formula gives 0 too)
    ([0.25, 0.5], [0.0, 1.0], 0.25),  # normalised timestamps
])
def test_temporal_iou_on_hand_built_intervals(predicted, truth, expected):
    assert float(temporal_iou(torch.tensor(predicted), torch.tensor(truth))) == pytest.approx(expected, abs=1e-12)


def test_grounding_reward_continuous_and_thresholded():
    predicted = torch.tensor([[0, 4], [0, 6], [6, 2]])
    truth = torch.tensor([[0, 8], [0, 8], [0, 8]])  # tIoU 0.5, 0.75, 0 (malformed)
    continuous = grounding_reward(predicted, truth)["total"]
    assert continuous.tolist() == pytest.approx([0.9 * 0.5 + 0.1, 0.9 * 0.75 + 0.1, 0.0])
    thresholded = grounding_reward(predicted, truth, continuous=False)["total"]
    assert thresholded.tolist() == pytest.approx([0.1, 1.0, 0.0])  # IoU > 0.5 is strict: 0.5 is a miss


def test_selection_keeps_exactly_the_high_variance_samples():
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0],   # variance 0 (always right)
                            [0.0, 1.0, 0.0, 1.0],   # 0.25
                            [0.0, 0.0, 0.0, 0.0],   # 0 (always wrong)
                            [0.5, 0.6, 0.5, 0.6],   # 0.0025
                            [0.0, 1.0, 1.0, 1.0]])  # 0.1875
    assert select_by_reward_variance(rewards, fraction=0.4).tolist() == [1, 4]
    assert select_by_reward_variance(rewards, fraction=0.6).tolist() == [1, 3, 4]
    assert select_by_reward_variance(rewards, fraction=0.8).tolist() == [0, 1, 3, 4]  # tie: the lower index
    with pytest.raises(ValueError, match="fraction"):
        select_by_reward_variance(rewards, fraction=0.0)


def test_grpo_advantages_are_group_relative():
    terms = grpo_loss(torch.zeros(2, 2), torch.tensor([[0.0, 1.0], [0.3, 0.3]]))
    assert terms["advantages"].flatten().tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0], abs=1e-5)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="selection_fraction"):
        Config(selection_fraction=1.5)
    with pytest.raises(ValueError, match="selection_rollouts"):
        Config(selection_rollouts=1)


def test_fast_demo_direction():
    result = demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.name == ENTRY.name and result.verdict in VERDICTS
    assert result.measured["data_fraction"].mean <= 0.4
    # the selection keeps the videos whose warm-start rewards vary most (by construction, so strictly above average)
    assert result.measured["selection_reward_variance"].mean > result.baseline["selection_reward_variance"].mean
    # RL on all data with the continuous reward improves on the warm start (by > 0.02 tIoU on seeds 0 and 1)
    assert result.measured["miou_full_data"].mean > result.baseline["miou_warm_start"].mean + 0.02
    # the continuous reward is not worse than the thresholded one (tolerance 0.02 tIoU)
    assert result.measured["continuous_minus_thresholded_miou"].mean > -0.02
