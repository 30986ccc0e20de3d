"""GHPO: staged answer hints for all-wrong GRPO groups, trained on the policy's own continuation only.

Paper: Ziru Liu et al. (2025), "GHPO: Adaptive Guidance for Stable and Efficient LLM Reinforcement Learning"
(arXiv 2507.10628); official code hkgc-1/GHPO, ``src/ghpo/ghpo_trainer.py`` (``_generate_and_score_completions``,
the blocks "add 25 hint", "add 50 hint", "add 75 hint").

The rule (the paper's adaptive prompt refinement, §3; checked against the official trainer):

1. Roll out G completions per prompt and score them with the verifiable reward.
2. Every group whose G accuracy rewards are all ``<= 0`` is rolled out again with a hint: the first
   ``ω · |solution|`` characters of the reference solution appended to the prompt, ω = 0.25. Groups still all wrong
   are redone with ω = 0.5, then ω = 0.75 (each stage rebuilds the hint from the original prompt). The regenerated
   group replaces the original one (completions and rewards).
3. GRPO advantages ``A = (r - mean_G) / (std_G + 1e-4)`` on the (possibly hinted) groups; the hint lives in the prompt,
   so the loss covers only the policy's own continuation.

On the suite's digit task (:mod:`safetybed.suite.common.seq_task`) the reference solution is the answer's digit
string; a hint of ``k`` digits is teacher-forced (the policy reads prompt + first ``k`` answer digits and writes the
other ``answer_len - k``), and only those written tokens enter the loss (a token mask).

Demo: the 2-digit task warm-started to a ~20 % sampled pass rate; RL on the hard items (two carries, the hardest
kind in 2-digit addition), GRPO vs GHPO with the same seeds, the same step count and the same prompts. Measured: the
fraction of zero-advantage groups in the trained batches (GRPO: all G equal; GHPO: after hinting) and the sampled
pass rate on held-out two-carry items without hints.

Choices where the paper is silent (all ours):

- Hint length ``ceil(ω · answer_len)`` (the brief), capped at ``answer_len - 1`` so the policy always writes at least
  one digit. The official code uses ``round(len · ω)`` over characters; for a 3-digit answer both give 1, 2, 2
  digits for ω = 0.25, 0.5, 0.75 (``ceil`` would give 3 = the whole answer at ω = 0.75, hence the cap).
- The official code also regenerates group 0 unchanged when no group is all wrong (a distributed-batch artefact);
  not done here. ``start_hint_step`` (hints only after a warm-up) is 0: the warm start plays that role.
- Loss normalisation: the shared token-level REINFORCE surrogate (sum over written tokens / their count), one
  gradient step per batch (no ratio clipping; on-policy), no KL term; Adam.
- Sizes (prompts per step, G = 8, steps, lr) are sized for a CPU; see ``Config``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from safetybed.suite.common.seq_task import (
    DigitTask,
    SequenceBatch,
    TinyGRUPolicy,
    group_advantages,
    pass_rate,
    policy_gradient_loss,
    warm_started,
)
from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["Config", "ENTRY", "GuidedGroups", "demo", "ghpo_policy_loss", "guided_rollout", "hint_length",
           "policy_continuations"]

#: The official trainer's hint ratios, in the order they are tried (hkgc-1/GHPO ``ghpo_trainer.py``).
HINT_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75)

#: ``sample_continuations(prefix_tokens [n, prompt_len + k], length, generator) -> tokens [n, length]``.
ContinuationSampler = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Config:
    """GHPO on the digit task (the demo's settings)."""

    group_size: int = 8
    """G completions per prompt (suite.md §0's G = 8)."""
    prompts_per_step: int = 32
    """Prompts per RL step (ours, CPU-sized; the paper uses far larger batches)."""
    steps: int = 150
    """RL steps (ours; the full demo)."""
    lr: float = 2e-3
    """Adam learning rate (ours; an order below the warm start's 1e-2 SFT rate)."""
    advantage_eps: float = 1e-4
    """The std guard in ``(r - mean) / (std + eps)`` (the official trainer's 1e-4)."""
    hint_ratios: tuple[float, ...] = HINT_RATIOS
    """ω stages (the official trainer's 0.25, 0.5, 0.75)."""

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size: expected >= 2, got {self.group_size!r}")
        for name in ("prompts_per_step", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)!r}")
        if not self.lr > 0 or not self.advantage_eps > 0:
            raise ValueError(f"lr, advantage_eps: expected > 0, got {self.lr!r}, {self.advantage_eps!r}")
        if not all(0 < r < 1 for r in self.hint_ratios) or list(self.hint_ratios) != sorted(self.hint_ratios):
            raise ValueError(f"hint_ratios: expected increasing values in (0, 1), got {self.hint_ratios!r}")


def hint_length(answer_len: int, ratio: float) -> int:
    """Answer digits revealed at hint ratio ω: ``ceil(ω · answer_len)``, capped at ``answer_len - 1`` (so the policy
    still writes a digit; GHPO's ``solution[:round(len · ω)]`` on characters, adapted to digits)."""
    return min(math.ceil(ratio * answer_len), answer_len - 1)


def policy_continuations(policy: TinyGRUPolicy) -> ContinuationSampler:
    """The policy's temperature-1 sampler of ``length`` tokens after a prefix (prompt + teacher-forced hint)."""

    @torch.no_grad()
    def sample(prefix: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
        output, state = policy.gru(policy.embed(prefix))
        last, tokens = output[:, -1], []
        for _ in range(length):
            probs = torch.softmax(policy.logits(last, 1.0), dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            tokens.append(token)
            output, state = policy.gru(policy.embed(token[:, None]), state)
            last = output[:, -1]
        return torch.stack(tokens, 1) if tokens else prefix.new_zeros((prefix.shape[0], 0))

    return sample


@dataclass(frozen=True)
class GuidedGroups:
    """One GHPO batch: ``batch`` holds each prompt G times in a row; ``completions`` ``[N, answer_len]`` (hint digits
    first); ``hint_lengths`` ``[N]`` (0 = unhinted); ``rewards`` ``[N]`` after hinting; ``first_rewards`` ``[N]`` of
    the unhinted first pass (what plain GRPO would have trained on)."""

    batch: SequenceBatch
    completions: torch.Tensor
    hint_lengths: torch.Tensor
    rewards: torch.Tensor
    first_rewards: torch.Tensor


def _roll(sample_continuations: ContinuationSampler, task: DigitTask, batch: SequenceBatch, hint: int,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    answers = task.answers(batch)
    prefix_digits = answers[:, :hint]
    written = sample_continuations(torch.cat([batch.tokens, prefix_digits], dim=1), task.answer_len - hint, generator)
    completions = torch.cat([prefix_digits, written], dim=1)
    return completions, task.reward(batch, completions)


def guided_rollout(sample_continuations: ContinuationSampler, task: DigitTask, prompts: SequenceBatch, *,
                   group_size: int, generator: torch.Generator, hint_ratios: tuple[float, ...] = HINT_RATIOS
                   ) -> GuidedGroups:
    """GHPO's adaptive prompt refinement (Liu et al. 2025, §3; ``ghpo_trainer.py`` "add 25/50/75 hint"): G rollouts
    per prompt; each group with all rewards ``<= 0`` is rolled out again with a hint of the first
    ``hint_length(answer_len, ω)`` answer digits, ω through ``hint_ratios``, until it has a correct rollout or the
    last stage is used. The regenerated group replaces the old one."""
    batch = prompts.repeat(group_size)
    completions, rewards = _roll(sample_continuations, task, batch, 0, generator)
    first_rewards = rewards.clone()
    hint_lengths = torch.zeros(len(batch), dtype=torch.long)
    for ratio in hint_ratios:
        all_wrong = (rewards.view(-1, group_size) <= 0).all(dim=1)  # the official test: every accuracy reward <= 0
        if not bool(all_wrong.any()):
            break
        rows = all_wrong.repeat_interleave(group_size).nonzero().squeeze(1)
        hint = hint_length(task.answer_len, ratio)
        redone, redone_rewards = _roll(sample_continuations, task, batch.select(rows), hint, generator)
        completions[rows], rewards[rows], hint_lengths[rows] = redone, redone_rewards, hint
    return GuidedGroups(batch, completions, hint_lengths, rewards, first_rewards)


def ghpo_policy_loss(token_log_probs: torch.Tensor, rewards: torch.Tensor, hint_lengths: torch.Tensor, *,
                     group_size: int, eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """GRPO's loss on the (possibly hinted) groups, on the policy's own tokens only (Liu et al. 2025, §3).

    ``token_log_probs`` ``[N, T]`` (rows grouped G at a time), ``rewards`` ``[N]``, ``hint_lengths`` ``[N]``.
    Returns ``loss_policy`` (the REINFORCE surrogate), ``advantages`` ``[N]`` and ``zero_advantage_fraction``.
    """
    if token_log_probs.ndim != 2 or rewards.shape != token_log_probs.shape[:1] or \
            hint_lengths.shape != rewards.shape:
        raise ValueError(f"expected token_log_probs [N, T], rewards [N], hint_lengths [N]; got "
                         f"{tuple(token_log_probs.shape)}, {tuple(rewards.shape)}, {tuple(hint_lengths.shape)}")
    if rewards.shape[0] % group_size:
        raise ValueError(f"rows: expected a multiple of group_size={group_size}, got {rewards.shape[0]}")
    grouped = rewards.view(-1, group_size)
    advantages = group_advantages(grouped, eps=eps).reshape(-1)  # A = (r - mean_G) / (std_G + 1e-4)
    # The hint is part of the prompt (teacher-forced), so only positions t >= hint are the policy's own tokens.
    positions = torch.arange(token_log_probs.shape[1], device=token_log_probs.device)
    own_tokens = (positions[None, :] >= hint_lengths[:, None]).to(token_log_probs.dtype)
    zero_fraction = (grouped.std(dim=1, unbiased=False) == 0).float().mean()
    return {"loss_policy": policy_gradient_loss(token_log_probs, advantages, own_tokens),
            "advantages": advantages.detach(), "zero_advantage_fraction": zero_fraction}


def _train(policy: TinyGRUPolicy, task: DigitTask, config: Config, *, guided: bool, seed: int,
           hard: dict[str, int]) -> dict[str, float]:
    """RL on hard prompts (GHPO when ``guided``, else GRPO, the same draws); the mean zero-advantage fraction."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(policy.parameters(), lr=config.lr)
    sampler = policy_continuations(policy)
    ratios = config.hint_ratios if guided else ()
    zero, hinted = [], []
    for _ in range(config.steps):
        prompts = task.sample(config.prompts_per_step, generator=generator, **hard)
        groups = guided_rollout(sampler, task, prompts, group_size=config.group_size, generator=generator,
                                hint_ratios=ratios)
        log_probs, _ = policy.token_log_probs(groups.batch.tokens, groups.completions)
        terms = ghpo_policy_loss(log_probs, groups.rewards, groups.hint_lengths, group_size=config.group_size,
                                 eps=config.advantage_eps)
        optimiser.zero_grad()
        terms["loss_policy"].backward()
        optimiser.step()
        zero.append(float(terms["zero_advantage_fraction"]))
        hinted.append(float((groups.hint_lengths.view(-1, config.group_size)[:, 0] > 0).float().mean()))
    return {"zero_advantage_fraction": float(np.mean(zero)), "hinted_fraction": float(np.mean(hinted))}


def demo(*, fast: bool, seed: int) -> DemoResult:
    """GRPO vs GHPO on two-carry digit items from one warm start; RL draws over seeds ``seed, seed + 1, ...``."""
    config = Config(steps=40 if fast else 150)
    repeats = 1 if fast else 3
    task = DigitTask(digits=2)
    hard = {"min_carries": 2, "max_carries": 2}
    start, info = warm_started(task, seed=seed)
    test = task.sample(512, generator=torch.Generator().manual_seed(10_000 + seed), **hard)
    eval_generator = torch.Generator().manual_seed(20_000 + seed)
    base_rate = pass_rate(start, task, test, generator=eval_generator, samples=4)
    seeds = tuple(seed + r for r in range(repeats))
    results: dict[str, dict[str, list[float]]] = {"ghpo": {}, "grpo": {}}
    for run_seed in seeds:
        for method in ("ghpo", "grpo"):
            policy = copy.deepcopy(start)
            numbers = _train(policy, task, config, guided=method == "ghpo", seed=run_seed, hard=hard)
            numbers["hard_test_pass_rate"] = pass_rate(policy, task, test,
                                                       generator=torch.Generator().manual_seed(30_000 + run_seed),
                                                       samples=4)
            for key, value in numbers.items():
                results[method].setdefault(key, []).append(value)
    units = {"zero_advantage_fraction": "fraction of groups", "hinted_fraction": "fraction of groups",
             "hard_test_pass_rate": "sampled pass rate, no hints"}
    measured = {k: measure(v, unit=units[k]) for k, v in results["ghpo"].items()}
    baseline = {k: measure(v, unit=units[k]) for k, v in results["grpo"].items() if k != "hinted_fraction"}
    zero_ghpo, zero_grpo = measured["zero_advantage_fraction"].mean, baseline["zero_advantage_fraction"].mean
    acc_ghpo, acc_grpo = measured["hard_test_pass_rate"].mean, baseline["hard_test_pass_rate"].mean
    fewer_zero = zero_ghpo <= 0.5 * zero_grpo
    more_accurate = acc_ghpo > acc_grpo
    verdict = "reproduced" if fewer_zero and more_accurate else ("partly" if fewer_zero or more_accurate
                                                                 else "not reproduced")
    why = (f"zero-advantage groups {zero_grpo:.2f} (GRPO) -> {zero_ghpo:.2f} (GHPO) "
           f"({'at most' if fewer_zero else 'more than'} half); hard-item pass rate without hints "
           f"{acc_grpo:.3f} (GRPO) vs {acc_ghpo:.3f} (GHPO) from {base_rate:.3f} at the warm start; "
           f"the warm start's two-carry pass rate is ~0.2, not ~0, so GRPO's zero-advantage share is modest")
    return DemoResult(
        name="ghpo",
        claim="GHPO's hints cut the fraction of zero-advantage groups to at most half of GRPO's, and its sampled "
              "pass rate on hard (two-carry) held-out items without hints ends above GRPO's",
        measured=measured, baseline=baseline, verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings={"task": "2-digit addition, RL and test on two-carry items", "warm_start": info,
                  "warm_start_seed": seed, "warm_start_hard_pass_rate": base_rate, "test_prompts": len(test),
                  **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}},
    )


ENTRY = SuiteEntry(
    name="ghpo",
    title="GHPO: Adaptive Guidance for Stable and Efficient LLM Reinforcement Learning",
    citation="Liu et al. 2025",
    family="lm_data",
    module=__name__,
    rule=guided_rollout,
    demo=demo,
)
