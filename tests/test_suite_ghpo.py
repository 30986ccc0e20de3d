"""GHPO (Liu et al. 2025): the staged hint schedule on hand-built groups, the loss on the policy's own tokens only,
and the fast demo's direction."""

from __future__ import annotations

import pytest
import torch

from safetybed.suite.common.seq_task import DigitTask, group_advantages
from safetybed.suite.lm_data.ghpo import ENTRY, Config, ghpo_policy_loss, guided_rollout, hint_length
from safetybed.suite.registry import DemoResult

G = 4


def test_hint_lengths_follow_the_official_stages():
    assert [hint_length(4, r) for r in (0.25, 0.5, 0.75)] == [1, 2, 3]  # 3-digit answers of 3-digit operands
    assert [hint_length(3, r) for r in (0.25, 0.5, 0.75)] == [1, 2, 2]  # = round(3 * ω); ceil's 3 is capped
    with pytest.raises(ValueError, match="hint_ratios"):
        Config(hint_ratios=(0.5, 0.25))


def test_hint_schedule_on_hand_built_groups():
    """A stub policy solves 11+b at once, 22+b only with >= 2 hint digits, 33+b never, and 44+b on every other row.
    Expected (GHPO's "add 25/50/75 hint" blocks): 11 unhinted (all right), 22 redone at ω = 0.25 (1 digit, still
    wrong) then ω = 0.5 (2 digits, right), 33 through every stage and left all wrong at the last one (2 digits),
    44 unhinted (mixed rewards, no hint needed)."""
    task = DigitTask(digits=2)
    needed = {11: 0, 22: 2, 33: 99}
    calls: list[int] = []

    def stub(prefix: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
        hint = task.answer_len - length
        calls.append(hint)
        a = prefix[:, 0] * 10 + prefix[:, 1]
        b = prefix[:, 3] * 10 + prefix[:, 4]
        truth = torch.stack([(a + b) // 100, (a + b) // 10 % 10, (a + b) % 10], 1)[:, hint:]
        right = torch.tensor([hint >= needed.get(int(x), 0) if int(x) != 44 else row % 2 == 0
                              for row, x in enumerate(a)])
        return torch.where(right[:, None], truth, (truth + 1) % 10)

    prompts = task.encode(torch.tensor([11, 22, 33, 44]), torch.tensor([5, 6, 7, 8]))
    groups = guided_rollout(stub, task, prompts, group_size=G, generator=torch.Generator().manual_seed(0))
    assert calls == [0, 1, 2, 2]  # first pass, then the 0.25, 0.5 and 0.75 stages (0.75 -> 2 digits of 3)
    assert groups.hint_lengths.view(-1, G)[:, 0].tolist() == [0, 2, 2, 0]
    assert groups.rewards.view(-1, G).tolist() == [[1.0] * G, [1.0] * G, [0.0] * G, [1.0, 0.0, 1.0, 0.0]]
    assert groups.first_rewards.view(-1, G).sum(1).tolist() == [G, 0.0, 0.0, 2.0]
    answers = task.answers(groups.batch)
    hinted = groups.hint_lengths > 0
    assert torch.equal(groups.completions[hinted, :2], answers[hinted, :2])  # the hint digits are the answer's


def test_only_own_tokens_of_informative_groups_carry_gradient():
    """Oracle: d loss / d log pi(y_it) = -A_i * [t >= hint_i] / (number of own tokens), A from GRPO with eps 1e-4;
    zero at hint positions and in zero-variance groups."""
    generator = torch.Generator().manual_seed(3)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0,   1.0, 1.0, 1.0, 1.0,   0.0, 0.0, 1.0, 0.0])
    hints = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2])
    log_probs = (-torch.rand(12, 3, generator=generator)).requires_grad_()
    terms = ghpo_policy_loss(log_probs, rewards, hints, group_size=G)
    terms["loss_policy"].backward()
    own = (torch.arange(3)[None, :] >= hints[:, None]).float()
    advantages = group_advantages(rewards.view(-1, G), eps=1e-4).reshape(-1)
    expected = -advantages[:, None] * own / own.sum()
    torch.testing.assert_close(log_probs.grad, expected)
    assert (log_probs.grad[8:, :2] == 0).all()  # the teacher-forced hint digits
    assert (log_probs.grad[4:8] == 0).all()  # an all-right group: zero advantage, zero gradient
    assert float(terms["zero_advantage_fraction"]) == pytest.approx(1 / 3)
    assert float(log_probs.grad[8:, 2].abs().sum()) > 0


def test_fast_demo_direction():
    """Seed 0: GHPO trains on fewer zero-advantage groups than GRPO (direction), and its hard-item pass rate without
    hints is not below GRPO's by more than 0.05 (a stated tolerance for one seed of 512 x 4 samples)."""
    result = ENTRY.demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.name == "ghpo"
    zero_ghpo = result.measured["zero_advantage_fraction"].mean
    zero_grpo = result.baseline["zero_advantage_fraction"].mean
    assert zero_ghpo < zero_grpo
    assert result.measured["hard_test_pass_rate"].mean > result.baseline["hard_test_pass_rate"].mean - 0.05
    assert result.verdict in ("reproduced", "partly")
