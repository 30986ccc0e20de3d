"""f-DPG: fitting a policy to a target distribution by minimising any f-divergence.

Go, Korbak, Kruszewski, Rozen, Ryu & Dymetman, 2023, "Aligning Language Models with Preferences through
f-divergence Minimization" (ICML 2023, arXiv 2302.08215). The target is an energy-based model
``p(x) = P(x) / Z`` (here ``P(x) = a(x) b(x)``: a base model ``a`` times a 0/1 constraint ``b``). f-DPG minimises
``D_f(π_θ‖p) = E_p[f(π_θ/p)]``; its gradient (the paper's Theorem 1, eq. (4)-(5)) is

    ∇_θ D_f(π_θ‖p) = E_{x~q}[ (π_θ(x)/q(x)) · f'(π_θ(x)/p(x)) · ∇_θ log π_θ(x) ],

so ``-f'(π/p)`` is a *pseudo-reward* maximised by a policy gradient with importance weights ``π/q`` from the proposal
``q`` (here ``q = π_θ``, on-policy), and a moving-average baseline of the pseudo-rewards reduces its variance
(:func:`f_dpg_loss`). The four divergences (the paper's Table 1; ``t = π/p``):

====================  ======================================  ========================  ===========================
divergence            f(t)                                    f'(t)                     D_f(π‖p)
====================  ======================================  ========================  ===========================
forward KL (DPG)      ``-log t``                              ``-1/t``                  ``KL(p‖π)``
reverse KL (RLHF)     ``t log t``                             ``log t + 1``             ``KL(π‖p)``
total variation       ``|t - 1| / 2``                         ``sign(t - 1) / 2``       ``TV(π, p)``
Jensen-Shannon        ``t log(2t/(1+t)) + log(2/(1+t))``      ``log(2t / (1+t))``       ``2 JS(π, p)``
====================  ======================================  ========================  ===========================

Formula check against the official code (naver/disco, read through the search tool, corpus "code"):
``disco/tuners/losses/f_divergence.py`` (``FDivergenceLoss.__call__``): ``log_t = log π.detach() - (log P - log Z)``,
``pseudo_reward = -f'(log_t)``, ``advantage = pseudo_reward - baseline.value`` where the baseline is a
``WindowedMovingAverage`` (window 1024) of past pseudo-rewards, read *before* it is updated with this batch (so it
does not depend on the current sample), importance ratios ``exp(log π.detach() - log q)`` and
``loss = mean(IR · (-advantage) · log π)``. Verified: ``kl.py`` ``f' = -exp(-log_t)`` (= -1/t), ``tv.py``
``f' = sign(log_t)/2``, ``js.py`` ``f' = log 2 - softplus(-log_t)`` (= log(2t/(1+t)), so disco's "JS" is
``2 JS``; we keep that scale), and the older ``reverse_kl.py`` reward ``IR · (log π - log p + 1)`` (= ``IR · f'``,
f' = log t + 1). All as in suite.md §1.8(a); implemented the same way here.

Choices where the paper is silent:

* **Zero target probability.** ``b(x) = 0`` makes ``log t = +∞``. Forward KL, TV and JS have finite limits there
  (0, 1/2, log 2), but reverse KL's pseudo-reward is ``-∞``. We clamp ``log t ≤ max_log_ratio`` (default 20), which
  leaves the other three unchanged and gives reverse KL a finite penalty (``-21``) on constraint violations.
* **Z is exact** (the 256 outcomes are enumerated) instead of the paper's importance-sampling estimate: this
  isolates the divergence choice from the partition-function noise.
* The baseline is the paper/disco windowed mean of past pseudo-rewards (window 1024 in disco; here
  ``baseline_window`` samples). The policy is initialised at ``a`` (the paper fine-tunes from the base model).

The demo (:func:`demo`, suite.md §1.8(c)): sequences of length 4 over a vocabulary of 4 (256 outcomes, so every
divergence is exact). ``a`` is a random autoregressive model (tabular per-prefix logits), ``b(x) = 1[x contains
token 3]``, ``p ∝ a·b``. A tabular autoregressive policy (one logit vector per prefix, 85 prefixes) starts at ``a``
and is trained on-policy with Adam by each of the four losses on the same sample budget. Measured exactly at the
end: ``KL(p‖π)``, the policy entropy, ``π(b = 1)`` (constraint satisfaction), the fraction of ``p``'s mass on
outcomes where ``π ≥ p/10`` (mode coverage), and the number of updates until ``KL(p‖π)`` first falls below a
threshold (a fifth of ``KL(p‖a)``; a half was tried first and every divergence but reverse KL hit it within the
same 10-15 updates, too coarse to compare). Claims (the paper's §4 findings, suite.md's thresholds): reverse KL has
the lowest entropy; JS ends with the lowest forward KL or within 10 % of the lowest; JS reaches the threshold in
fewer updates than forward KL; every divergence ends with constraint satisfaction > 0.9. Over seeds seed, seed + 1,
... (3 seeds x 150 updates fast, 8 seeds x 400 updates full; the seeds of one divergence train side by side as one
batch);
each seed draws its own ``a`` and its own samples. Only what the claims need is tuned: none was (lr 0.05, batch 64
taken as plain defaults); a tabular policy can represent ``p`` exactly, so every divergence has the same optimum and
the differences are in the path of on-policy training, not in the fixed point.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["Config", "DIVERGENCES", "ENTRY", "TabularAutoregressive", "WindowedBaseline", "demo", "divergence",
           "f_dpg_loss", "f_prime"]

#: The divergences of the demo (the paper's Table 1), by name.
DIVERGENCES = ("forward_kl", "reverse_kl", "tv", "js")
#: Sequence length and vocabulary size of the demo (suite.md §1.8(c)): 4**4 = 256 outcomes.
SEQUENCE_LENGTH = 4
VOCABULARY = 4
#: The token whose presence is the constraint b(x).
CONSTRAINT_TOKEN = 3


def f_prime(log_t: torch.Tensor, name: str) -> torch.Tensor:
    """``f'(t)`` as a function of ``log t`` (Go et al. 2023, Table 1; as naver/disco's ``f_prime(log_t)``)."""
    if name == "forward_kl":
        return -torch.exp(-log_t)  # f(t) = -log t
    if name == "reverse_kl":
        return log_t + 1.0  # f(t) = t log t
    if name == "tv":
        return torch.sign(log_t) / 2.0  # f(t) = |t - 1| / 2
    if name == "js":
        return math.log(2.0) - torch.nn.functional.softplus(-log_t)  # log(2t / (1 + t))
    raise ValueError(f"divergence: expected one of {DIVERGENCES}, got {name!r}")


def divergence(policy_log_probs: torch.Tensor, target_log_probs: torch.Tensor, name: str) -> torch.Tensor:
    """Exact ``D_f(π‖p) = Σ_x p(x) f(π(x)/p(x))`` over enumerated outcomes (differentiable in ``π``).

    Both arguments are normalised log-probabilities over the same outcomes (the last axis; leading axes are
    independent runs); ``p`` may have zeros for forward KL, TV
    and JS (their ``p·f(π/p)`` has a finite limit); reverse KL is then infinite unless ``π`` is zero there too."""
    pi, p = policy_log_probs.exp(), target_log_probs.exp()
    if name == "forward_kl":
        return torch.where(p > 0, p * (target_log_probs - policy_log_probs), 0.0).sum(dim=-1)
    if name == "reverse_kl":
        return (pi * (policy_log_probs - target_log_probs)).sum(dim=-1)
    if name == "tv":
        return 0.5 * torch.abs(pi - p).sum(dim=-1)
    if name == "js":  # 2 JS: KL(π‖m) + KL(p‖m), m = (π + p)/2
        log_m = torch.logaddexp(policy_log_probs, target_log_probs) - math.log(2.0)
        return ((pi * (policy_log_probs - log_m)).sum(dim=-1)
                + torch.where(p > 0, p * (target_log_probs - log_m), 0.0).sum(dim=-1))
    raise ValueError(f"divergence: expected one of {DIVERGENCES}, got {name!r}")


class WindowedBaseline:
    """The mean of the last ``window`` pseudo-rewards (naver/disco's ``WindowedMovingAverage``); ``None`` until the
    first update, so the first batch uses no baseline (as disco does).

    Pseudo-rewards of shape ``(runs, batch)`` keep one window per run (independent runs trained side by side);
    ``value`` is then a ``(runs, 1)`` tensor."""

    def __init__(self, window: int) -> None:
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window: expected an integer >= 1, got {window!r}")
        self.window = window
        self._rewards: torch.Tensor | None = None

    @property
    def value(self) -> torch.Tensor | None:
        return None if self._rewards is None else self._rewards.mean(dim=-1, keepdim=True)

    def update(self, pseudo_rewards: torch.Tensor) -> None:
        new = pseudo_rewards.detach().to(torch.float64)
        recent = new if self._rewards is None else torch.cat([self._rewards, new], dim=-1)
        self._rewards = recent[..., -self.window:]


def f_dpg_loss(policy_log_probs: torch.Tensor, proposal_log_probs: torch.Tensor, target_log_scores: torch.Tensor,
               log_partition: float | torch.Tensor, *, divergence_name: str,
               baseline: float | torch.Tensor | None = None,
               max_log_ratio: float = 20.0, sample_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The f-DPG surrogate loss whose gradient estimates ``∇ D_f(π_θ‖p)`` (Go et al. 2023, Theorem 1, eq. (5)).

    Args:
        policy_log_probs: ``log π_θ(x)`` of the samples, with a graph to θ.
        proposal_log_probs: ``log q(x)`` of the samples (``q = π_θ`` detached for on-policy training).
        target_log_scores: ``log P(x)`` of the unnormalised target (``-inf`` where ``P = 0``).
        log_partition: ``log Z`` of the target (``(runs, 1)`` for side-by-side runs of shape ``(runs, batch)``).
        divergence_name: one of :data:`DIVERGENCES`.
        baseline: the moving-average baseline subtracted from the pseudo-reward (``None``: none).
        max_log_ratio: ``log(π/p)`` is clamped above at this value (a zero-target sample would give reverse KL an
            infinite pseudo-reward; the paper is silent, see the module docstring).
        sample_weights: weights of the samples in the mean (``None``: uniform, a Monte-Carlo mean); the math test
            passes ``q(x)`` of every enumerated outcome to get the estimator's exact expectation.

    Returns:
        ``loss_actor`` (differentiate this), ``pseudo_reward`` ``-f'(π/p)``, ``advantage`` (minus the baseline) and
        ``importance_weight`` ``π/q``, the last three detached.
    """
    if divergence_name not in DIVERGENCES:
        raise ValueError(f"divergence_name: expected one of {DIVERGENCES}, got {divergence_name!r}")
    policy_detached = policy_log_probs.detach()
    log_t = torch.clamp(policy_detached - (target_log_scores - log_partition), max=max_log_ratio)
    pseudo_reward = -f_prime(log_t, divergence_name)  # the paper's pseudo-reward -f'(π/p), eq. (5)
    advantage = pseudo_reward if baseline is None else pseudo_reward - baseline
    importance_weight = torch.exp(policy_detached - proposal_log_probs.detach())  # π/q
    per_sample = importance_weight * (-advantage) * policy_log_probs  # ∇ = (π/q) f'(π/p) ∇log π
    if sample_weights is None:
        loss = per_sample.mean(dim=-1).sum()  # the Monte-Carlo mean, summed over side-by-side runs
    else:
        loss = torch.sum(sample_weights * per_sample)
    return {"loss_actor": loss, "pseudo_reward": pseudo_reward, "advantage": advantage,
            "importance_weight": importance_weight}


class TabularAutoregressive(torch.nn.Module):
    """An autoregressive model over ``VOCABULARY**SEQUENCE_LENGTH`` sequences with one logit vector per prefix.

    ``logits`` has shape ``(..., prefixes, VOCABULARY)``; leading axes are independent models trained side by side.
    ``log_probs()`` enumerates every outcome (index ``i`` is the base-``VOCABULARY`` sequence, first token most
    significant) and returns their exact log-probabilities, with a graph to the logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        n_prefixes = sum(VOCABULARY**k for k in range(SEQUENCE_LENGTH))
        if logits.shape[-2:] != (n_prefixes, VOCABULARY):
            raise ValueError(f"logits: expected shape (..., {n_prefixes}, {VOCABULARY}), got {tuple(logits.shape)}")
        self.logits = torch.nn.Parameter(logits.clone().to(torch.float64))
        self.register_buffer("sequences", all_sequences())
        prefix_ids = torch.zeros(self.sequences.shape, dtype=torch.long)
        offset, code = 0, torch.zeros(self.sequences.shape[0], dtype=torch.long)
        for position in range(SEQUENCE_LENGTH):  # prefix x_<t has id offset_t + its base-V code
            prefix_ids[:, position] = offset + code
            offset += VOCABULARY**position
            code = code * VOCABULARY + self.sequences[:, position]
        # flat index of (prefix, next token) for every outcome and position
        self.register_buffer("token_index", prefix_ids * VOCABULARY + self.sequences)

    def log_probs(self) -> torch.Tensor:
        flat = torch.log_softmax(self.logits, dim=-1).flatten(-2)  # (..., prefixes * V)
        return flat[..., self.token_index].sum(dim=-1)  # (..., outcomes)


def all_sequences() -> torch.Tensor:
    """Every sequence of the demo, ``(VOCABULARY**SEQUENCE_LENGTH, SEQUENCE_LENGTH)``, in base-V order."""
    index = torch.arange(VOCABULARY**SEQUENCE_LENGTH)
    digits = [(index // VOCABULARY**(SEQUENCE_LENGTH - 1 - k)) % VOCABULARY for k in range(SEQUENCE_LENGTH)]
    return torch.stack(digits, dim=1)


@dataclass(frozen=True)
class Config:
    """Hyper-parameters of the rule and of the demo."""

    updates: int = 400
    """Adam updates per divergence (suite.md §1.8(c) sets no budget; our choice, sized for the shared CPU)."""
    batch_size: int = 64
    """On-policy samples per update (our choice; the paper uses 256 sequences of a GPT-2 on GPU)."""
    learning_rate: float = 0.05
    """Adam step size on the tabular logits (our choice, not tuned)."""
    baseline_window: int = 1024
    """Pseudo-rewards in the moving-average baseline (naver/disco's default window)."""
    max_log_ratio: float = 20.0
    """Upper clamp on log(π/p) (our choice; see the module docstring)."""
    base_logit_scale: float = 1.5
    """Standard deviation of the random base model's logits (our choice: peaked enough to have modes)."""
    eval_every: int = 1
    """Updates between exact evaluations of KL(p‖π) for the steps-to-threshold count."""
    threshold_fraction: float = 0.2
    """The steps-to-threshold target is KL(p‖π) ≤ this fraction of KL(p‖a) (our choice)."""
    coverage_ratio: float = 0.1
    """An outcome counts as covered when π(x) ≥ this ratio · p(x) (our choice)."""

    def __post_init__(self) -> None:
        for name in ("updates", "batch_size", "baseline_window", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        for name in ("learning_rate", "max_log_ratio", "base_logit_scale"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        for name in ("threshold_fraction", "coverage_ratio"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"{name}: expected a number in (0, 1), got {value!r}")


def random_base_logits(rng: np.random.Generator, *, scale: float) -> torch.Tensor:
    """Per-prefix logits of the random autoregressive base model ``a``."""
    n_prefixes = sum(VOCABULARY**k for k in range(SEQUENCE_LENGTH))
    return torch.as_tensor(rng.normal(0.0, scale, size=(n_prefixes, VOCABULARY)), dtype=torch.float64)


def target_log_scores(base_log_probs: torch.Tensor) -> torch.Tensor:
    """``log P(x) = log a(x) + log b(x)``, ``b(x) = 1[x contains CONSTRAINT_TOKEN]``."""
    satisfied = (all_sequences() == CONSTRAINT_TOKEN).any(dim=1)
    return torch.where(satisfied, base_log_probs, -math.inf)


def train(base_logits: torch.Tensor, divergence_name: str, config: Config, *, generator: torch.Generator,
          ) -> dict[str, torch.Tensor]:
    """Fit tabular policies started at ``a`` to ``p ∝ a·b`` with the f-DPG loss; exact metrics at the end.

    ``base_logits`` is ``(runs, prefixes, VOCABULARY)``: one base model per run, trained side by side (one Adam over
    all runs; each run's gradient is its own, and Adam is per-coordinate). Returns one value per run for each
    metric."""
    policy = TabularAutoregressive(base_logits)
    with torch.no_grad():
        base_log_probs = policy.log_probs()
    log_scores = target_log_scores(base_log_probs)
    log_partition = torch.logsumexp(log_scores, dim=-1, keepdim=True)
    target = log_scores - log_partition
    satisfied = torch.isfinite(log_scores)
    threshold = config.threshold_fraction * divergence(base_log_probs, target, "forward_kl")
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    baseline = WindowedBaseline(config.baseline_window)
    never = float(config.updates + config.eval_every)  # not reached: censored at the budget
    steps_to_threshold = torch.full(threshold.shape, never, dtype=torch.float64)
    for update in range(config.updates):
        log_probs = policy.log_probs()
        samples = torch.multinomial(log_probs.detach().exp(), config.batch_size, replacement=True,
                                    generator=generator)
        sample_log_probs = log_probs.gather(-1, samples)
        terms = f_dpg_loss(sample_log_probs, sample_log_probs.detach(), log_scores.gather(-1, samples),
                           log_partition, divergence_name=divergence_name, baseline=baseline.value,
                           max_log_ratio=config.max_log_ratio)
        baseline.update(terms["pseudo_reward"])  # read before, updated after: disco's order
        optimizer.zero_grad()
        terms["loss_actor"].backward()
        optimizer.step()
        if (update + 1) % config.eval_every == 0:
            with torch.no_grad():
                reached = divergence(policy.log_probs(), target, "forward_kl") <= threshold
                steps_to_threshold = torch.where(reached & (steps_to_threshold == never),
                                                 float(update + 1), steps_to_threshold)
    with torch.no_grad():
        final = policy.log_probs()
        pi, p = final.exp(), target.exp()
        return {
            "forward_kl": divergence(final, target, "forward_kl"),
            "entropy": -(pi * final).sum(dim=-1),
            "constraint": torch.where(satisfied, pi, 0.0).sum(dim=-1),
            "coverage": torch.where(pi >= config.coverage_ratio * p, p, 0.0).sum(dim=-1),
            "steps_to_threshold": steps_to_threshold.squeeze(-1),
            "target_entropy": -torch.where(satisfied, p * target, 0.0).sum(dim=-1),
        }


def demo(*, fast: bool, seed: int) -> DemoResult:
    """The four f-DPG losses on the 256-outcome toy, over seeds (suite.md §1.8(c))."""
    start = time.perf_counter()
    config = Config(updates=150) if fast else Config()
    seeds = list(range(seed, seed + (3 if fast else 8)))
    # one base model a per seed; each divergence gets its own sample stream
    base_logits = torch.stack([random_base_logits(np.random.default_rng(np.random.SeedSequence(s)),
                                                  scale=config.base_logit_scale) for s in seeds])
    streams = np.random.SeedSequence([seed, len(seeds)]).spawn(len(DIVERGENCES))
    results: dict[str, dict[str, list[float]]] = {}
    for name, stream in zip(DIVERGENCES, streams, strict=True):
        generator = torch.Generator().manual_seed(int(stream.generate_state(1)[0]))
        metrics = train(base_logits, name, config, generator=generator)
        results[name] = {key: [float(v) for v in value.reshape(-1)] for key, value in metrics.items()}

    def mean_of(name: str, key: str) -> float:
        return float(np.mean(results[name][key]))

    units = {"forward_kl": "KL(p||pi) [nats]", "entropy": "entropy [nats]", "constraint": "fraction",
             "coverage": "fraction of p's mass", "steps_to_threshold": "updates"}

    def measures(name: str) -> dict:
        return {key: measure(results[name][key], unit=unit) for key, unit in units.items()}

    measured = measures("js")
    for name in ("reverse_kl", "tv"):
        measured.update({f"{name} {key}": m for key, m in measures(name).items()})
    measured["target entropy"] = measure(results["js"]["target_entropy"], unit="entropy [nats]")
    baseline = measures("forward_kl")

    entropies = {name: mean_of(name, "entropy") for name in DIVERGENCES}
    forward_kls = {name: mean_of(name, "forward_kl") for name in DIVERGENCES}
    checks = {
        "reverse KL lowest entropy": min(entropies, key=entropies.get) == "reverse_kl",
        "JS forward KL lowest or within 10%": forward_kls["js"] <= 1.1 * min(forward_kls.values()),
        "JS faster than forward KL to threshold": mean_of("js", "steps_to_threshold")
        < mean_of("forward_kl", "steps_to_threshold"),
        "all constraint > 0.9": all(mean_of(name, "constraint") > 0.9 for name in DIVERGENCES),
    }
    held = [k for k, ok in checks.items() if ok]
    failed = [k for k, ok in checks.items() if not ok]
    verdict = "reproduced" if not failed else ("not reproduced" if not held else "partly")
    summary = "; ".join(f"{n}: H={entropies[n]:.3g}, KL(p||pi)={forward_kls[n]:.3g}, "
                        f"steps={mean_of(n, 'steps_to_threshold'):.0f}, sat={mean_of(n, 'constraint'):.3f}"
                        for n in DIVERGENCES)
    why = (f"held: {', '.join(held) or 'none'}; failed: {', '.join(failed) or 'none'} ({summary}; reverse KL "
           f"still covers {mean_of('reverse_kl', 'coverage'):.2f} of p's mass, no collapse below 0.5); "
           "lr/batch not tuned, exact Z; threshold 0.5 KL(p||a) tried first (all tied)")
    return DemoResult(
        name="f-dpg",
        claim=("On a 256-outcome toy with p ∝ a·b, b(x) = 1 if x contains token 3 else 0: reverse KL ends with the "
               "lowest entropy, JS with the lowest KL(p||π) or within 10 % of it and in fewer updates than forward KL "
               "(DPG) to KL ≤ 0.2 KL(p||a), "
               "and every divergence with constraint satisfaction > 0.9."),
        measured=measured, baseline=baseline, verdict=verdict, why=why, fast=fast, seeds=tuple(seeds),
        settings={**asdict(config), "sequence_length": SEQUENCE_LENGTH, "vocabulary": VOCABULARY,
                  "constraint_token": CONSTRAINT_TOKEN, "policy": "tabular autoregressive, initialised at a",
                  "measured": "js", "baseline": "forward_kl (DPG)"},
        wall_s=time.perf_counter() - start)


ENTRY = SuiteEntry(
    name="f-dpg", title="Aligning Language Models with Preferences through f-divergence Minimization",
    citation="Go et al. 2023", family="alignment", module=__name__, rule=f_dpg_loss, demo=demo)
