"""The suite's digit-addition task and tiny GRU policy: rewards, carries, log-probabilities and the warm start."""

from __future__ import annotations

import math

import pytest
import torch

from safetybed.suite.common.seq_task import (
    DigitTask,
    carries,
    group_advantages,
    make_policy,
    policy_gradient_loss,
    warm_started,
)


def test_prompts_answers_rewards_and_carries():
    task = DigitTask(digits=2)
    batch = task.encode(torch.tensor([7, 99, 50]), torch.tensor([45, 1, 49]))
    assert batch.tokens[0].tolist() == [0, 7, 10, 4, 5, 11]  # "07+45="
    assert task.answers(batch).tolist() == [[0, 5, 2], [1, 0, 0], [0, 9, 9]]
    assert task.reward(batch, torch.tensor([[0, 5, 2], [1, 0, 1], [0, 9, 9]])).tolist() == [1.0, 0.0, 1.0]
    assert carries(batch.a, batch.b, digits=2).tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="0..99"):
        task.encode(torch.tensor([100]), torch.tensor([0]))
    hard = task.sample(64, generator=torch.Generator().manual_seed(0), min_carries=2)
    assert (carries(hard.a, hard.b, digits=2) == 2).all()


def test_log_probs_are_the_sampling_distribution():
    """The sampled per-token log-probabilities equal the teacher-forced ones, and the sequence probabilities of all
    10^3 completions of one prompt sum to 1 (a complete distribution over well-formed answers)."""
    task = DigitTask(digits=2)
    generator = torch.Generator().manual_seed(1)
    policy = make_policy(task, generator=generator)
    batch = task.sample(32, generator=generator)
    completions, sampled = policy.sample(batch.tokens, generator=generator)
    forced, entropy = policy.token_log_probs(batch.tokens, completions)
    assert torch.allclose(sampled, forced, atol=1e-5) and (entropy >= 0).all() and (entropy <= math.log(10) + 1e-5).all()
    every = torch.tensor([[i // 100, (i // 10) % 10, i % 10] for i in range(1000)])
    log_probs, _ = policy.token_log_probs(batch.tokens[:1].expand(1000, -1), every)
    assert float(log_probs.detach().sum(1).exp().sum()) == pytest.approx(1.0, abs=1e-4)


def test_group_advantages_and_the_reinforce_surrogate():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert torch.allclose(group_advantages(rewards), torch.tensor([[1.0, -1.0, -1.0, 1.0], [0.0] * 4]), atol=1e-5)
    assert torch.allclose(group_advantages(rewards, scale=False), torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4]))
    # d/d logp of -sum(A * logp) / (N * T): each token's gradient is -A_i / (N * T)
    log_probs = torch.zeros(2, 3, requires_grad=True)
    policy_gradient_loss(log_probs, torch.tensor([2.0, -1.0])).backward()
    assert torch.allclose(log_probs.grad, torch.tensor([[-2.0] * 3, [1.0] * 3]) / 6)


def test_warm_start_reaches_the_band_and_is_cached_and_seeded():
    task = DigitTask()
    policy, info = warm_started(task, seed=0)
    again, info_again = warm_started(task, seed=0)
    assert 0.2 <= info["pass_rate"] <= 0.5 and info == info_again and policy is not again
    assert all(torch.equal(p, q) for p, q in zip(policy.parameters(), again.parameters(), strict=True))
    assert sum(p.numel() for p in policy.parameters()) <= 100_000
