"""BRPO: Budget Relative Policy Optimization for anytime reasoning.

Paper: Penghui Qi, Zichen Liu, Tianyu Pang, Chao Du, Wee Sun Lee, Min Lin (2025), "Optimizing Anytime Reasoning
via Budget Relative Policy Optimization" (AnytimeReasoner). The thinking trace ``z`` is cut at budgets
``b_0 < ... < b_{S-1}`` drawn from a prior ``p_j``; after each cut ``A`` summaries are sampled and verified, and
``r_j`` is their mean score at budget ``j``. The objective is the prior-weighted anytime score
``J = sum_j p_j E[r_j]`` (dense rewards instead of one final reward). The thinking tokens of segment ``s`` (between
``b_{s-1}`` and ``b_s``) of rollout ``g`` in a group of ``G`` get (0-indexed ``s``, as the official code)

    return_s(g)   = sum_{j >= s} p_j r_j(g)                                  (rewards the segment can affect)
    avg_s         = mean_{g'} return_s(g')                                    (group baseline, GRPO-like)
    last_s(g)     = [sum_{j < s} 2^j r_j(g) / sum_{j < s} 2^j] * sum_{j >= s} p_j   (last_0 = 0)
    baseline_s(g) = (s * last_s(g) + (S - s) * avg_s) / S
    A_s(g)        = return_s(g) - baseline_s(g)

``last_s`` predicts the rest of the return from the rollout's *own* earlier budgets (a discounted mean that weights
the latest budget most), so late segments, whose remaining return is already mostly decided by the prefix, are
judged against their own prefix; early segments lean on the group mean. Summary tokens get
``r - mean(scores at the same budget)`` (the paper's decoupled summary policy).

Equation numbers: the paper's method section was not available here (only its abstract); the formulas were checked
term by term against the official code instead. Official code checked (fork wjurayj/AnytimeReasoner, ``verl/verl/trainer/ppo/brpo.py`` at commit 068a38b, read
with the search tool): ``compute_cot_advantage`` matches the formulas above term by term: ``discount_factor =
2.0``, ``discount_probs = 2 ** arange(S)``, ``avg_return`` is the group mean *including* the rollout itself,
``last_cot_return = prev * budget_probs[s:].sum()``, ``baseline = (s * last + (S - s) * avg) / S`` with 0-indexed
``s``; ``VARIANCE_REDUCTION`` variants ``v1only`` (baseline = last), ``v2only`` (baseline = avg, the "GRPO with
dense rewards" ablation), ``none`` (0). No standard-deviation normalisation of the thinking advantages.
Disagreements with the research note (suite.md §1.4):

* Indexing. The note writes ``baseline_s = (s last_s + (S - s) avg_s) / S`` without saying where ``s`` starts; the
  code's ``s`` is 0-indexed, so the first segment's baseline is the pure group mean (weight 0 on ``last``) and the
  last segment's is ``((S-1) last + avg) / S`` -- ``last`` never gets weight 1. Read 1-indexed, the note would give
  the first segment an empty ``last`` with weight ``1/S`` and the last segment pure ``last``. Here: the code.
* Summary advantages. With ``A = 1`` the code's baseline is the group mean of the scores at the same budget (as
  the note says); with ``A > 1`` it is the mean of *the same rollout's* ``A`` summaries at that budget
  (``grpo_id2mean[rollout][budget]``), not a group mean. :func:`summary_advantages` follows the code. With
  ``SUMMARY_METHOD = "grpo"`` only the last budget's summaries get an advantage.
* Bias. ``avg_s`` contains ``return_s(g)`` itself, so the expected segment-``s`` gradient is the true one times
  ``1 - (S - s) / (S G)`` (a per-segment shrink, not a direction error within a segment); ``leave_one_out=True``
  removes it. ``last_s`` depends only on earlier budgets, which segment ``s`` cannot affect, so it adds no bias.
  ``tests/test_suite_brpo.py`` checks both statements exactly by enumeration.

Demo (suite.md §1.4(c)): an "anytime" chain task. A prompt carries a key in ``0..V-1``; the policy writes ``T =
16`` tokens from ``V = 8``; a token equal to the key is a *useful* step. After ``k`` steps with ``u`` useful steps
so far a summary is correct with probability ``1 - (1 - h)^u`` (``h = 0.3``). Budgets ``{4, 8, 12, 16}``, uniform
prior. The thinking policy is a table of logits ``[key, position, token]`` started uniform (so every seed starts
from the same policy and differs only in its samples). GRPO (final budget's reward only, the paper's baseline,
std-normalised) against BRPO, at equal thinking rollouts (same prompts, group size, steps and Adam settings).
Measured, per seed: (1) the per-segment variance of the advantages at the initial policy (GRPO's unscaled
``r - mean``, in the same reward units as BRPO; the std-normalised form has variance ~1, larger still), and, as a
fairer reference, of the dense-reward group baseline (``v2only``), which has BRPO's return and differs only in the
baseline (with 1 summary per budget and, as a second measurement, 4); (2) after training, the exact anytime AUC =
``sum_j p_j acc(b_j)`` (the paper's objective; ``acc`` from the Poisson-binomial law of the useful-step count, no
sampling) and the final-budget accuracy, for BRPO, GRPO and (as a reference) the dense-reward group mean.

What the demo shows, beyond the claim: the late-segment variance gap to GRPO is mostly a matter of scale (a late
segment's ``return_s`` holds only its budgets' prior mass); against the dense-reward group mean alone, BRPO's
own-prefix term lowers the late variance only when the budget scores are well averaged. Tried at the initial and at
a BRPO-trained policy (1,024 groups): with ``A = 1`` summary the ratio v2only/BRPO on the last two segments was
~0.95 (start) and ~0.75 (trained); ``A = 4``: ~1.28 / ~0.85; ``A = 16``: ~1.7 / ~1.0. The AUC gain over GRPO
comes from the dense rewards: BRPO and the dense group mean train to the same AUC within noise.

Choices where the paper is silent:

* The summary policy is fixed (correctness probability ``1 - (1-h)^u``); only the thinking policy is trained. The
  paper trains both; :func:`summary_advantages` is implemented and tested but not trained in the demo.
* GRPO scores only the final budget (``A`` summaries there); BRPO scores every budget, i.e. it draws ``S`` times as
  many summaries. "Equal samples" means equal thinking rollouts, the expensive part in the paper.
* Token loss: mean over tokens of ``-A_{segment(t)} log pi(y_t)``; Adam, learning rate 0.05, 8 prompts x 8 rollouts
  per step, 40 steps (fast) / 60 steps (full), set once for the table policy and not tuned on the claim.
* The variance claim's threshold (>= 1.5x on the late segments, i.e. the last two) and the AUC claim (BRPO higher)
  are suite.md's proposals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from safetybed.suite.common.seq_task import group_advantages
from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["ENTRY", "AnytimeChainTask", "BRPOAdvantages", "Config", "brpo_advantages", "brpo_loss", "demo",
           "summary_advantages"]

#: The official code's baseline variants (``VARIANCE_REDUCTION``).
VARIANCE_REDUCTIONS = ("brpo", "v1only", "v2only", "none")


@dataclass(frozen=True)
class BRPOAdvantages:
    """The terms of BRPO's thinking advantage, each ``[B, G, S]`` (prompts, rollouts, segments)."""

    advantage: torch.Tensor
    segment_return: torch.Tensor
    group_average: torch.Tensor
    own_prefix: torch.Tensor
    baseline: torch.Tensor


def brpo_advantages(budget_scores: torch.Tensor, *, budget_probs: torch.Tensor, variance_reduction: str = "brpo",
                    discount_factor: float = 2.0, leave_one_out: bool = False) -> BRPOAdvantages:
    """BRPO's segment advantages (Qi et al. 2025, the BRPO baseline; official ``compute_cot_advantage``).

    ``budget_scores`` ``[B, G, S]``: ``r_j(g)``, the mean summary score of rollout ``g`` at budget ``j``;
    ``budget_probs`` ``[S]``: the prior ``p_j`` (normalised here). ``variance_reduction``: ``"brpo"`` (the paper),
    ``"v1only"`` (own-prefix baseline only), ``"v2only"`` (group mean only, GRPO on dense rewards), ``"none"``.
    ``leave_one_out``: exclude the rollout itself from the group mean (removes the ``1 - (S-s)/(SG)`` shrink).
    """
    if budget_scores.ndim != 3:
        raise ValueError(f"budget_scores: expected [prompts, rollouts, budgets], got shape "
                         f"{tuple(budget_scores.shape)}")
    _, group_size, segments = budget_scores.shape
    if budget_probs.shape != (segments,) or bool((budget_probs < 0).any()) or float(budget_probs.sum()) <= 0:
        raise ValueError(f"budget_probs: expected {segments} non-negative numbers with a positive sum, got "
                         f"{budget_probs.tolist()}")
    if variance_reduction not in VARIANCE_REDUCTIONS:
        raise ValueError(f"variance_reduction: expected one of {VARIANCE_REDUCTIONS}, got {variance_reduction!r}")
    if leave_one_out and group_size < 2:
        raise ValueError(f"leave_one_out: needs at least 2 rollouts per prompt, got {group_size}")
    probs = (budget_probs / budget_probs.sum()).to(budget_scores)
    weighted = budget_scores * probs
    # return_s = sum_{j >= s} p_j r_j: a reverse cumulative sum over budgets.
    segment_return = weighted.flip(-1).cumsum(-1).flip(-1)
    total = segment_return.sum(dim=1, keepdim=True)
    if leave_one_out:
        group_average = (total - segment_return) / (group_size - 1)
    else:  # the official code: the mean over the whole group, the rollout itself included
        group_average = (total / group_size).expand_as(segment_return)
    # last_s: the 2^j-discounted mean of the rollout's own earlier budget scores, scaled to the remaining mass.
    discount = discount_factor ** torch.arange(segments, dtype=budget_scores.dtype)
    prefix_sum = torch.cumsum(budget_scores * discount, dim=-1)
    prefix_norm = torch.cumsum(discount, dim=0)
    earlier_mean = torch.zeros_like(budget_scores)
    earlier_mean[..., 1:] = prefix_sum[..., :-1] / prefix_norm[:-1]  # uses budgets j < s only
    remaining_mass = probs.flip(0).cumsum(0).flip(0)
    own_prefix = earlier_mean * remaining_mass
    index = torch.arange(segments, dtype=budget_scores.dtype)
    if variance_reduction == "brpo":
        baseline = (index * own_prefix + (segments - index) * group_average) / segments
    elif variance_reduction == "v1only":
        baseline = own_prefix
    elif variance_reduction == "v2only":
        baseline = group_average
    else:
        baseline = torch.zeros_like(segment_return)
    return BRPOAdvantages(segment_return - baseline, segment_return, group_average, own_prefix, baseline)


def summary_advantages(summary_scores: torch.Tensor, *, final_only: bool = False) -> torch.Tensor:
    """Advantages of the summary tokens (Qi et al. 2025, decoupled summary policy; official
    ``compute_summary_advantage``). ``summary_scores`` ``[B, G, S, A]``: ``A`` summaries per (rollout, budget).

    ``A = 1``: the score minus the group mean at the same budget; ``A > 1``: minus the mean of the same rollout's
    ``A`` summaries at that budget (as the official code). ``final_only``: only the last budget is trained (the
    code's ``SUMMARY_METHOD = "grpo"``)."""
    if summary_scores.ndim != 4:
        raise ValueError(f"summary_scores: expected [prompts, rollouts, budgets, summaries], got shape "
                         f"{tuple(summary_scores.shape)}")
    if summary_scores.shape[-1] == 1:
        baseline = summary_scores.mean(dim=1, keepdim=True)
    else:
        baseline = summary_scores.mean(dim=-1, keepdim=True)
    advantage = summary_scores - baseline
    if final_only:
        advantage = advantage.clone()
        advantage[:, :, :-1] = 0.0
    return advantage


def brpo_loss(token_log_probs: torch.Tensor, segment_advantages: torch.Tensor, *, segment_of_token: torch.Tensor
              ) -> dict[str, torch.Tensor]:
    """The thinking policy's surrogate ``-mean_t A_{segment(t)} log pi(y_t | x, y_<t)`` (Qi et al. 2025: every
    token of segment ``s`` carries ``A_s``). ``token_log_probs`` ``[N, T]``, ``segment_advantages`` ``[N, S]``,
    ``segment_of_token`` ``[T]`` integer segment indices."""
    if segment_of_token.shape != (token_log_probs.shape[1],):
        raise ValueError(f"segment_of_token: expected shape ({token_log_probs.shape[1]},), got "
                         f"{tuple(segment_of_token.shape)}")
    token_advantages = segment_advantages.detach()[:, segment_of_token]
    return {"loss_actor": -(token_advantages * token_log_probs).mean(),
            "mean_advantage": token_advantages.mean()}


@dataclass(frozen=True)
class Config:
    """The demo's settings (defaults: module docstring)."""

    steps: int = 16
    """Length ``T`` of the thinking chain (suite.md: 16)."""
    budgets: tuple[int, ...] = (4, 8, 12, 16)
    """Cut points ``b_j`` (suite.md: {4, 8, 12, 16})."""
    vocabulary: int = 8
    """Tokens per step ``V``; one of them (the prompt's key) is useful, so a uniform policy is useful 1/8 of the
    time (chosen so the final budget starts near 50 % accuracy)."""
    step_gain: float = 0.3
    """``h``: a summary after ``u`` useful steps is correct with probability ``1 - (1 - h)^u``."""
    group_size: int = 8
    """Rollouts ``G`` per prompt (the official default ``COT_NUM = 8``)."""
    summaries: int = 1
    """Summaries ``A`` per budget (1: the summary baseline is the group mean)."""
    prompts_per_step: int = 8
    """Prompts per update (each with ``group_size`` rollouts)."""
    learning_rate: float = 0.05
    """Adam's learning rate on the logit table (set once, not tuned on the claim)."""
    discount_factor: float = 2.0
    """The ``2^j`` weights of ``last_s`` (official code: ``discount_factor = 2.0``)."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps: expected >= 1, got {self.steps!r}")
        if (not self.budgets or list(self.budgets) != sorted(set(self.budgets)) or self.budgets[0] < 1
                or self.budgets[-1] != self.steps):
            raise ValueError(f"budgets: expected increasing positive cut points ending at steps={self.steps}, got "
                             f"{self.budgets!r}")
        if self.vocabulary < 2:
            raise ValueError(f"vocabulary: expected >= 2, got {self.vocabulary!r}")
        if not 0 < self.step_gain < 1:
            raise ValueError(f"step_gain: expected a probability in (0, 1), got {self.step_gain!r}")
        for name in ("group_size", "summaries", "prompts_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size: expected >= 2 for a group baseline, got {self.group_size!r}")
        if not self.learning_rate > 0 or not self.discount_factor > 0:
            raise ValueError(f"learning_rate, discount_factor: expected > 0, got {self.learning_rate!r}, "
                             f"{self.discount_factor!r}")


class AnytimeChainTask:
    """The anytime chain (module docstring): keys ``0..V-1``, ``T`` steps, summaries scored at each budget."""

    def __init__(self, config: Config):
        self.config = config
        self.budget_probs = torch.full((len(config.budgets),), 1.0 / len(config.budgets), dtype=torch.float64)
        self.budget_index = torch.tensor(config.budgets) - 1
        # segment(t): the first budget index whose cut point lies after token t.
        self.segment_of_token = torch.bucketize(torch.arange(config.steps), self.budget_index)

    def correct_probability(self, useful_steps: torch.Tensor) -> torch.Tensor:
        return 1.0 - (1.0 - self.config.step_gain) ** useful_steps.to(torch.float64)

    def rollouts(self, logits: torch.Tensor, keys: torch.Tensor, *, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``[N, T]`` from the table policy and the budget scores ``[N, S]`` (mean of ``A`` summaries)."""
        probs = torch.softmax(logits.detach()[keys], dim=-1)  # [N, T, V]
        tokens = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(keys.shape[0],
                                                                                                      -1)
        useful_so_far = torch.cumsum((tokens == keys[:, None]).long(), dim=1)[:, self.budget_index]
        p_correct = self.correct_probability(useful_so_far)
        draws = torch.rand((*p_correct.shape, self.config.summaries), generator=generator, dtype=torch.float64)
        return tokens, (draws < p_correct[..., None]).to(torch.float64).mean(-1)

    def accuracy_curve(self, logits: torch.Tensor) -> torch.Tensor:
        """Exact accuracy at each budget ``[S]``, averaged over keys: the useful-step count after ``k`` steps is a
        Poisson-binomial variable (the steps are independent under the table policy)."""
        with torch.no_grad():
            probs = torch.softmax(logits.to(torch.float64), dim=-1)
            keys = torch.arange(self.config.vocabulary)
            useful = probs[keys, :, keys]  # [V, T]: P(step t is useful | key)
            law = torch.zeros(self.config.vocabulary, self.config.steps + 1, dtype=torch.float64)
            law[:, 0] = 1.0
            curve = []
            for t in range(self.config.steps):
                shifted = torch.zeros_like(law)
                shifted[:, 1:] = law[:, :-1]
                law = law * (1 - useful[:, t:t + 1]) + shifted * useful[:, t:t + 1]
                if t in self.budget_index.tolist():
                    counts = torch.arange(self.config.steps + 1)
                    curve.append((law * self.correct_probability(counts)).sum(-1).mean())
            return torch.stack(curve)

    def anytime_auc(self, logits: torch.Tensor) -> float:
        """``sum_j p_j acc(b_j)``: the prior-weighted area under the accuracy-vs-budget curve (the paper's J)."""
        return float((self.accuracy_curve(logits) * self.budget_probs).sum())


def _segment_advantages(method: str, task: AnytimeChainTask, scores: torch.Tensor, *, scale: bool
                        ) -> torch.Tensor:
    """``[B, G, S]`` advantages of ``method`` from budget scores ``[B, G, S]``."""
    if method == "grpo":  # final reward only, every segment shares it
        final = group_advantages(scores[..., -1], scale=scale)
        return final[..., None].expand_as(scores)
    return brpo_advantages(scores, budget_probs=task.budget_probs, variance_reduction=method,
                           discount_factor=task.config.discount_factor).advantage


def _advantage_variance(method: str, task: AnytimeChainTask, logits: torch.Tensor, *, groups: int,
                        generator: torch.Generator) -> np.ndarray:
    """Per-segment variance of the (unscaled) advantages over ``groups`` groups at the policy ``logits``."""
    config = task.config
    keys = torch.randint(0, config.vocabulary, (groups,), generator=generator).repeat_interleave(config.group_size)
    _, scores = task.rollouts(logits, keys, generator=generator)
    advantages = _segment_advantages(method, task, scores.reshape(groups, config.group_size, -1), scale=False)
    return advantages.reshape(-1, advantages.shape[-1]).var(dim=0).numpy()


def _train(method: str, task: AnytimeChainTask, *, updates: int, generator: torch.Generator) -> torch.Tensor:
    config = task.config
    logits = torch.zeros(config.vocabulary, config.steps, config.vocabulary, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=config.learning_rate)
    for _ in range(updates):
        keys = torch.randint(0, config.vocabulary, (config.prompts_per_step,), generator=generator)
        keys = keys.repeat_interleave(config.group_size)
        tokens, scores = task.rollouts(logits, keys, generator=generator)
        advantages = _segment_advantages(method, task, scores.reshape(config.prompts_per_step, config.group_size, -1),
                                         scale=True)
        log_probs = torch.log_softmax(logits[keys], dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
        loss = brpo_loss(log_probs, advantages.reshape(keys.shape[0], -1), segment_of_token=task.segment_of_token)
        optimiser.zero_grad()
        loss["loss_actor"].backward()
        optimiser.step()
    return logits.detach()


def demo(*, fast: bool, seed: int) -> DemoResult:
    """GRPO (final reward) vs BRPO on the anytime chain, over several seeds (module docstring)."""
    started = time.perf_counter()
    config = Config(steps=16)
    task = AnytimeChainTask(config)
    n_seeds, updates, variance_groups = (3, 40, 256) if fast else (10, 60, 1024)
    seeds = tuple(range(seed, seed + n_seeds))
    late = slice(len(config.budgets) - 2, None)
    rows: dict[str, list[float]] = {k: [] for k in ("auc_brpo", "auc_grpo", "auc_v2only", "final_brpo",
                                                     "final_grpo", "final_v2only", "ratio_late", "ratio_late_dense",
                                                     "ratio_late_dense_4", "auc_start")}
    four_summaries = AnytimeChainTask(Config(steps=16, summaries=4))
    per_segment: dict[str, list[np.ndarray]] = {"brpo": [], "grpo": [], "v2only": []}
    for one_seed in seeds:
        variance_seq, train_seq = np.random.SeedSequence(one_seed).spawn(2)
        variance_seed = int(variance_seq.generate_state(1)[0])
        start = torch.zeros(config.vocabulary, config.steps, config.vocabulary, dtype=torch.float64)
        variances = {m: _advantage_variance(m, task, start, groups=variance_groups,
                                            generator=torch.Generator().manual_seed(variance_seed))
                     for m in per_segment}  # common random numbers: the same rollouts for every method
        for m, v in variances.items():
            per_segment[m].append(v)
        rows["ratio_late"].append(float(np.mean(variances["grpo"][late] / variances["brpo"][late])))
        rows["ratio_late_dense"].append(float(np.mean(variances["v2only"][late] / variances["brpo"][late])))
        averaged = {m: _advantage_variance(m, four_summaries, start, groups=variance_groups,
                                           generator=torch.Generator().manual_seed(variance_seed))
                    for m in ("brpo", "v2only")}
        rows["ratio_late_dense_4"].append(float(np.mean(averaged["v2only"][late] / averaged["brpo"][late])))
        train_seed = int(train_seq.generate_state(1)[0])
        for method in ("brpo", "grpo", "v2only"):
            logits = _train(method, task, updates=updates, generator=torch.Generator().manual_seed(train_seed))
            curve = task.accuracy_curve(logits)
            rows[f"auc_{method}"].append(task.anytime_auc(logits))
            rows[f"final_{method}"].append(float(curve[-1]))
        rows["auc_start"].append(task.anytime_auc(start))
    measured = {"anytime_auc": measure(rows["auc_brpo"], unit="prior-weighted accuracy"),
                "final_budget_accuracy": measure(rows["final_brpo"], unit="fraction"),
                "variance_ratio_late_vs_grpo": measure(rows["ratio_late"], unit="GRPO var / BRPO var"),
                "variance_ratio_late_vs_dense_group_mean": measure(rows["ratio_late_dense"],
                                                                   unit="v2only var / BRPO var"),
                "variance_ratio_late_vs_dense_group_mean_4_summaries": measure(rows["ratio_late_dense_4"],
                                                                               unit="v2only var / BRPO var"),
                "anytime_auc_dense_group_mean": measure(rows["auc_v2only"], unit="prior-weighted accuracy"),
                "final_budget_accuracy_dense_group_mean": measure(rows["final_v2only"], unit="fraction")}
    baseline = {"anytime_auc": measure(rows["auc_grpo"], unit="prior-weighted accuracy"),
                "final_budget_accuracy": measure(rows["final_grpo"], unit="fraction")}
    for s in range(len(config.budgets)):
        measured[f"advantage_variance_segment_{s + 1}"] = measure([v[s] for v in per_segment["brpo"]],
                                                                  unit="reward^2")
        baseline[f"advantage_variance_segment_{s + 1}"] = measure([v[s] for v in per_segment["grpo"]],
                                                                  unit="reward^2")
    ratio = measured["variance_ratio_late_vs_grpo"].mean
    auc_gain = np.array(rows["auc_brpo"]) - np.array(rows["auc_grpo"])
    variance_held = ratio >= 1.5
    auc_held = float(auc_gain.mean()) > 0 and int((auc_gain > 0).sum()) > n_seeds // 2
    verdict = "reproduced" if variance_held and auc_held else "partly" if variance_held or auc_held else \
        "not reproduced"
    dense_gain = np.array(rows["auc_brpo"]) - np.array(rows["auc_v2only"])
    why = (f"late-segment advantage variance GRPO/BRPO {ratio:.2f}x (need >= 1.5; mostly because return_s of a late "
           f"segment carries only its budgets' prior mass; against the dense-reward group mean alone "
           f"{measured['variance_ratio_late_vs_dense_group_mean'].mean:.2f}x with 1 summary, "
           f"{measured['variance_ratio_late_vs_dense_group_mean_4_summaries'].mean:.2f}x with 4); anytime AUC "
           f"BRPO-GRPO {auc_gain.mean():+.3f} (higher on {int((auc_gain > 0).sum())}/{n_seeds} seeds; start "
           f"{rows['auc_start'][0]:.3f}; BRPO-dense group mean {dense_gain.mean():+.3f}); {updates} updates of "
           f"{config.prompts_per_step}x{config.group_size} rollouts, table policy, settings set once")
    return DemoResult(
        name="brpo",
        claim=("On an anytime chain (T=16, budgets 4/8/12/16, uniform prior), BRPO's thinking advantages have >= 1.5x "
               "lower variance than GRPO's on the last two segments, and BRPO reaches a higher anytime AUC than GRPO "
               "(final reward only) at equal rollouts."),
        measured=measured, baseline=baseline, verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings={"steps": config.steps, "budgets": list(config.budgets), "vocabulary": config.vocabulary,
                  "step_gain": config.step_gain, "group_size": config.group_size, "summaries": config.summaries,
                  "prompts_per_step": config.prompts_per_step, "learning_rate": config.learning_rate,
                  "updates": updates, "variance_groups": variance_groups, "discount_factor": config.discount_factor,
                  "grpo_training_advantage": "std-normalised (r - mean)/std", "variance_advantage": "unscaled"},
        wall_s=time.perf_counter() - started)


ENTRY = SuiteEntry(
    name="brpo", title="Optimizing Anytime Reasoning via Budget Relative Policy Optimization",
    citation="Qi et al. 2025", family="lm_pg", module=__name__, rule=brpo_advantages, demo=demo)
