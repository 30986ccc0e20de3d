"""The suite's verifiable-reward sequence task: digit addition ``a+b=`` answered by a tiny GRU policy.

Shared toy #1 of ``../shared/research/suite.md`` §0, on which the language-model policy-gradient papers of suite III
(ReMax, GRPO variants, Clip-/KL-Cov, GHPO, 1-shot RLVR, GVM-RAFT) are measured on a CPU:

- **Task** (:class:`DigitTask`): a prompt is ``a+b=`` with both operands written with ``digits`` digits (zero
  padded, so ``07+45=``); the answer is the sum with ``digits + 1`` digits (``052``). The reward is verifiable: 1 for
  an exact match of every answer digit, else 0 (:meth:`DigitTask.reward`). Items differ in difficulty by their number
  of carries (:func:`carries`).
- **Policy** (:class:`TinyGRUPolicy`, ~30k parameters at the defaults, under the issue's 100k): token embedding ->
  one GRU layer -> linear head over the vocabulary. It reads the prompt, then emits the answer digits one token at
  a time (a fixed answer length: no end token is needed). :meth:`~TinyGRUPolicy.sample` draws completions (or the
  greedy one) with their per-token log-probabilities; :meth:`~TinyGRUPolicy.token_log_probs` recomputes them with a
  graph, for a loss.
- **Warm start** (:func:`warm_start`): supervised learning on a few hundred examples, stopped as soon as the
  sampled pass rate on held-out prompts reaches a target band (20-50 %, the issue), so that RL has room to improve.

Randomness: every draw takes a ``torch.Generator`` (no global RNG); the GRU's and the embedding's weights are drawn
from it too (``build_module`` redraws only ``nn.Linear``). Choices made here (the papers are about LLMs, so all are
ours): fixed-width operands and answers, temperature-1 sampling by default, SFT with Adam at lr 1e-2, batch 128 on
3,000 examples. :func:`warm_started` caches a warm start per (task, seed) within a process, so the suite's demos
and tests do not repeat it.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DigitTask", "SequenceBatch", "TinyGRUPolicy", "VOCAB", "carries", "group_advantages",
           "make_policy", "pass_rate", "policy_gradient_loss", "warm_start", "warm_started"]

#: Token ids: the ten digits are their own ids; then ``+`` and ``=``.
VOCAB: tuple[str, ...] = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "+", "=")
PLUS, EQUALS = 10, 11


def _digits_of(values: torch.Tensor, width: int) -> torch.Tensor:
    """``[N] -> [N, width]`` decimal digits, most significant first (zero padded)."""
    powers = 10 ** torch.arange(width - 1, -1, -1, device=values.device)
    return (values[:, None] // powers) % 10


def carries(a: torch.Tensor, b: torch.Tensor, *, digits: int) -> torch.Tensor:
    """The number of carries in the column addition of ``a + b`` (the items' difficulty), ``[N]``."""
    da, db = _digits_of(a, digits).flip(1), _digits_of(b, digits).flip(1)  # least significant first
    carry = torch.zeros_like(a)
    count = torch.zeros_like(a)
    for column in range(digits):
        carry = ((da[:, column] + db[:, column] + carry) >= 10).long()
        count = count + carry
    return count


@dataclass(frozen=True)
class SequenceBatch:
    """Prompts and their operands: ``tokens`` is ``[N, prompt_len]``, ``a`` / ``b`` are ``[N]``."""

    tokens: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor

    def __len__(self) -> int:
        return int(self.a.shape[0])

    def repeat(self, times: int) -> SequenceBatch:
        """Each prompt ``times`` times in a row (a group of G completions per prompt: rows ``i*G .. i*G+G-1``)."""
        return SequenceBatch(self.tokens.repeat_interleave(times, 0), self.a.repeat_interleave(times, 0),
                             self.b.repeat_interleave(times, 0))

    def select(self, index: torch.Tensor) -> SequenceBatch:
        return SequenceBatch(self.tokens[index], self.a[index], self.b[index])


@dataclass(frozen=True)
class DigitTask:
    """``a+b=`` with ``digits``-digit operands; the answer has ``digits + 1`` digits; reward 1 on an exact match."""

    digits: int = 2
    """Digits per operand (2: operands 0..99, the research note's setting)."""

    def __post_init__(self) -> None:
        if not 1 <= self.digits <= 6:
            raise ValueError(f"digits: expected 1..6, got {self.digits!r}")

    @property
    def prompt_len(self) -> int:
        return 2 * self.digits + 2

    @property
    def answer_len(self) -> int:
        return self.digits + 1

    def encode(self, a: torch.Tensor, b: torch.Tensor) -> SequenceBatch:
        """The prompts ``a+b=`` of the operand pairs ``a``, ``b`` (``[N]`` integer tensors)."""
        a, b = a.long(), b.long()
        if a.shape != b.shape or a.ndim != 1:
            raise ValueError(f"a, b: expected two 1-D tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        top = 10 ** self.digits
        if a.numel() and (min(int(a.min()), int(b.min())) < 0 or max(int(a.max()), int(b.max())) >= top):
            raise ValueError(f"operands: expected 0..{top - 1} for {self.digits} digits")
        n = a.shape[0]
        tokens = torch.cat([_digits_of(a, self.digits), torch.full((n, 1), PLUS), _digits_of(b, self.digits),
                            torch.full((n, 1), EQUALS)], dim=1)
        return SequenceBatch(tokens, a, b)

    def sample(self, n: int, *, generator: torch.Generator, min_carries: int = 0,
               max_carries: int | None = None) -> SequenceBatch:
        """``n`` prompts with uniform operands, restricted to ``min_carries .. max_carries`` carries (rejection)."""
        max_carries = self.digits if max_carries is None else max_carries
        if not 0 <= min_carries <= max_carries <= self.digits:
            raise ValueError(f"carries: expected 0 <= min_carries <= max_carries <= {self.digits}, got "
                             f"{min_carries}, {max_carries}")
        a_parts, b_parts, have = [], [], 0
        while have < n:
            a = torch.randint(0, 10 ** self.digits, (4 * n + 16,), generator=generator)
            b = torch.randint(0, 10 ** self.digits, (4 * n + 16,), generator=generator)
            c = carries(a, b, digits=self.digits)
            keep = (c >= min_carries) & (c <= max_carries)
            a_parts.append(a[keep])
            b_parts.append(b[keep])
            have += int(keep.sum())
        return self.encode(torch.cat(a_parts)[:n], torch.cat(b_parts)[:n])

    def answers(self, batch: SequenceBatch) -> torch.Tensor:
        """The correct completions, ``[N, answer_len]`` digit tokens."""
        return _digits_of(batch.a + batch.b, self.answer_len)

    def reward(self, batch: SequenceBatch, completions: torch.Tensor) -> torch.Tensor:
        """The verifiable reward: 1.0 where every answer digit matches, else 0.0 (``[N]`` float)."""
        if completions.shape != (len(batch), self.answer_len):
            raise ValueError(f"completions: expected shape {(len(batch), self.answer_len)}, got "
                             f"{tuple(completions.shape)}")
        return (completions == self.answers(batch)).all(dim=1).float()


class TinyGRUPolicy(nn.Module):
    """Embedding -> GRU -> vocabulary logits; reads the prompt, then writes ``answer_len`` digit tokens.

    Only digits are ever emitted (the head's ``+`` / ``=`` logits are masked), so every completion is well formed.
    """

    def __init__(self, *, answer_len: int, embed_dim: int = 32, hidden: int = 64):
        super().__init__()
        self.answer_len = answer_len
        self.embed = nn.Embedding(len(VOCAB), embed_dim)
        self.gru = nn.GRU(embed_dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, len(VOCAB))
        mask = torch.zeros(len(VOCAB))
        mask[PLUS] = mask[EQUALS] = -math.inf
        self.register_buffer("logit_mask", mask)

    def logits(self, output: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Vocabulary logits (``+`` and ``=`` masked to -inf) of GRU outputs ``output`` at ``temperature``."""
        return self.head(output) / temperature + self.logit_mask

    def token_log_probs(self, prompts: torch.Tensor, completions: torch.Tensor, *, temperature: float = 1.0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token ``log pi(y_t | x, y_<t)`` and entropies of the given completions, both ``[N, T]``, with a graph.

        Teacher forcing: the input is the prompt followed by all but the last completion token, and position
        ``prompt_len - 1 + t`` predicts completion token ``t``.
        """
        inputs = torch.cat([prompts, completions[:, :-1]], dim=1)
        output, _ = self.gru(self.embed(inputs))
        logits = self.logits(output[:, prompts.shape[1] - 1:], temperature)
        log_probs = torch.log_softmax(logits, dim=-1)
        chosen = log_probs.gather(-1, completions[..., None]).squeeze(-1)
        probs = log_probs.exp()
        entropy = -(probs * torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))).sum(-1)
        return chosen, entropy

    @torch.no_grad()
    def sample(self, prompts: torch.Tensor, *, generator: torch.Generator | None = None, greedy: bool = False,
               temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Completions ``[N, T]`` (drawn from ``generator``, or the argmax when ``greedy``) and their per-token
        log-probabilities ``[N, T]`` under the sampling temperature."""
        if not greedy and generator is None:
            raise ValueError("sample: a torch.Generator is required unless greedy=True")
        output, state = self.gru(self.embed(prompts))
        last = output[:, -1]
        tokens, log_probs = [], []
        for _ in range(self.answer_len):
            step_log_probs = torch.log_softmax(self.logits(last, temperature), dim=-1)
            if greedy:
                token = step_log_probs.argmax(-1)
            else:
                token = torch.multinomial(step_log_probs.exp(), 1, generator=generator).squeeze(-1)
            tokens.append(token)
            log_probs.append(step_log_probs.gather(-1, token[:, None]).squeeze(-1))
            output, state = self.gru(self.embed(token[:, None]), state)
            last = output[:, -1]
        return torch.stack(tokens, 1), torch.stack(log_probs, 1)


def make_policy(task: DigitTask, *, generator: torch.Generator, embed_dim: int = 32, hidden: int = 64
                ) -> TinyGRUPolicy:
    """A fresh policy whose every weight is drawn from ``generator`` (PyTorch's default schemes: GRU and Linear
    uniform(+-1/sqrt(fan)), embedding standard normal), leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        policy = TinyGRUPolicy(answer_len=task.answer_len, embed_dim=embed_dim, hidden=hidden)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if name.startswith("embed"):
                parameter.normal_(0.0, 1.0, generator=generator)
            else:
                fan = hidden if name.startswith("gru") else policy.head.in_features
                bound = 1.0 / math.sqrt(fan)
                parameter.uniform_(-bound, bound, generator=generator)
    return policy


def pass_rate(policy: TinyGRUPolicy, task: DigitTask, batch: SequenceBatch, *, generator: torch.Generator | None
              = None, greedy: bool = False, samples: int = 1) -> float:
    """The mean reward of ``samples`` completions per prompt (sampled from ``generator``, or greedy)."""
    repeated = batch.repeat(samples) if samples > 1 else batch
    completions, _ = policy.sample(repeated.tokens, generator=generator, greedy=greedy)
    return float(task.reward(repeated, completions).mean())


def warm_start(policy: TinyGRUPolicy, task: DigitTask, *, generator: torch.Generator, examples: int = 3000,
               target: tuple[float, float] = (0.2, 0.5), max_steps: int = 4000, batch_size: int = 128,
               lr: float = 1e-2, check_every: int = 50, held_out: int = 512) -> dict[str, float]:
    """Supervised learning on ``examples`` (prompt, answer) pairs until the sampled pass rate on ``held_out``
    fresh prompts first reaches ``target[0]``; returns the steps taken and the pass rates reached.

    The defaults (3,000 of the 10,000 two-digit pairs, Adam lr 1e-2, batch 128) reach 20 % in ~700 steps, a few
    seconds on one core; with the research note's "few hundred" examples the GRU memorises them (train pass rate
    -> 1) while the held-out pass rate stays near 8 %.

    Raises ``RuntimeError`` when ``max_steps`` pass without reaching the band, or when the first check at or above
    ``target[0]`` is already above ``target[1]`` (then lower ``check_every`` or ``lr``).
    """
    low, high = target
    if not 0 <= low < high <= 1:
        raise ValueError(f"target: expected 0 <= low < high <= 1, got {target!r}")
    train = task.sample(examples, generator=generator)
    test = task.sample(held_out, generator=generator)
    answers = task.answers(train)
    optimiser = torch.optim.Adam(policy.parameters(), lr=lr)
    for step in range(1, max_steps + 1):
        index = torch.randint(0, examples, (batch_size,), generator=generator)
        log_probs, _ = policy.token_log_probs(train.tokens[index], answers[index])
        loss = -log_probs.sum(1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % check_every == 0:
            rate = pass_rate(policy, task, test, generator=generator)
            if rate >= low:
                if rate > high:
                    raise RuntimeError(f"warm_start: the pass rate jumped past the band to {rate:.2f} at step {step}")
                return {"steps": float(step), "pass_rate": rate,
                        "train_pass_rate": pass_rate(policy, task, train, generator=generator)}
    raise RuntimeError(f"warm_start: pass rate below {low} after {max_steps} steps")


@functools.lru_cache(maxsize=32)
def _warm_started(task: DigitTask, seed: int, hidden: int) -> tuple[TinyGRUPolicy, dict[str, float]]:
    generator = torch.Generator().manual_seed(seed)
    policy = make_policy(task, generator=generator, hidden=hidden)
    info = warm_start(policy, task, generator=generator)
    return policy, info


def warm_started(task: DigitTask, *, seed: int, hidden: int = 64) -> tuple[TinyGRUPolicy, dict[str, float]]:
    """A fresh copy of the policy warm-started with :func:`warm_start`'s defaults from ``seed`` (the weights and
    the SFT draws come from ``torch.Generator().manual_seed(seed)``), and the warm start's numbers. Cached per
    (task, seed, hidden) in the process; the copy is the caller's to train."""
    policy, info = _warm_started(task, seed, hidden)
    return copy.deepcopy(policy), dict(info)


def group_advantages(rewards: torch.Tensor, *, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    """GRPO's group-relative advantage (Shao et al. 2024): ``(r - mean_group) / (std_group + eps)`` over the last
    axis of ``rewards`` ``[prompts, G]`` (population std; ``scale=False`` gives ``r - mean``, Dr. GRPO)."""
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    return centred / (rewards.std(dim=-1, unbiased=False, keepdim=True) + eps) if scale else centred


def policy_gradient_loss(token_log_probs: torch.Tensor, advantages: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """The REINFORCE surrogate ``-sum_t A * log pi(y_t) * mask / sum(mask)`` with a sequence-level advantage
    ``advantages`` ``[N]`` broadcast over tokens (``token_log_probs`` ``[N, T]``)."""
    mask = torch.ones_like(token_log_probs) if mask is None else mask
    return -(advantages[:, None] * token_log_probs * mask).sum() / mask.sum().clamp_min(1.0)
