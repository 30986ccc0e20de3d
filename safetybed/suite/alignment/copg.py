"""CoPG: Contrastive Policy Gradient, an off-policy policy gradient with a contrastive baseline.

Flet-Berliac, Grinsztajn, Strub, Wu, Choi, Cremer, Ahmadian, Chandak, Gheshlaghi Azar, Pietquin & Geist, 2024,
"Contrastive Policy Gradient: Aligning LLMs on sequence-level scores in a supervised-friendly fashion"
(arXiv 2406.19185). For a KL-regularised objective ``J(π) = E_π[R] - β KL(π ‖ π_ref)`` write the regularised reward
``R_β^π(y) = R(y) - β log π(y)/π_ref(y)``. For pairs ``(y, y')`` drawn from *any* behaviour distribution μ, CoPG
minimises the squared contrastive gap (the paper's CoPG loss)::

    ℓ(y, y') = scale · ( R_β^π(y) - R_β^π(y') )²,         scale = 1 / (4β)  (our default, see below)

whose gradient is ``-(1/2) (R_β^π(y) - R_β^π(y')) (∇ log π(y) - ∇ log π(y'))``: a policy gradient on each sample
with the other sample's regularised reward as baseline, and no importance weights. For any full-support μ the
minimiser is ``π* ∝ π_ref exp(R/β)`` (the gap vanishes for every pair exactly when ``β log π/π_ref = R + const``).
With a reward gap of 1/2 between winner and loser it is ``(β/4)`` times the IPO loss with τ = β (tested).

**Formula check.** suite.md §1.9 marks the formula "reconstructed"; no official code exists (Cohere) and the
search tool gave only the abstract and summaries of the paper, not its equation. The abstract (seeds file)
confirms the properties used here: off-policy, no importance sampling, a "right" state baseline, generalises IPO
and classic PG. The *scale* of the square cannot be checked; it does not move the minimiser. We use
``1/(4β)`` so that the gradient is half the plain contrastive PG estimate whatever β (``scale`` is an option of
:func:`copg_loss`; ``scale = 1`` gives suite.md's bare square).

Baselines (suite.md §1.9(c)):

* **naive off-policy PG**: ``-E_μ[sg(R_β^π(y)) log π(y)]``, the on-policy PG estimator fed μ samples without
  importance weights. Its fixed point solves ``μ(y) R_β^π(y) ∝ π(y)`` (softmax logits), not ``π*``: biased.
* **IPO** (Azar et al. 2024): ``(h - 1/(2τ))²`` with ``h = log π/π_ref(y_w) - log π/π_ref(y_l)``, τ = β.
* **DPO** (Rafailov et al. 2023): ``-log σ(β h)``.
  Both use the preference ``y_w = argmax R`` of each pair (ties dropped), i.e. only the sign of ``R(y) - R(y')``.

Demo (:func:`demo`): a 20-arm bandit, ``R(k) ~ U(0, 1)``, π_ref uniform, a Zipf-skewed behaviour
``μ(k) ∝ 1/rank^s`` on a random permutation of the arms. A fixed offline set of pairs from μ; each method trains
tabular softmax logits (initialised at π_ref) by full-batch Adam on its loss; we report ``KL(π ‖ π*)`` [nats]
(also the objective gap: ``J(π*) - J(π) = β KL(π ‖ π*)``) and the expected reward ``E_π[R]``. Claims: CoPG
reaches ``KL < 0.01``, naive PG stays biased (``KL > 0.1``), and CoPG ends closer to π* than IPO and DPO. Over
seeds ``seed .. seed+4`` (fast: 3). With exact rewards and every arm in the data the empirical CoPG loss is zero
exactly at π*, so CoPG's KL is at rounding level; the full demo adds a run with Gaussian noise on the observed
rewards (reported, not in the verdict), where CoPG's error is the finite-sample one of rarely seen arms.

Full demo only, reported but not part of the verdict: the shared digit task
(:mod:`safetybed.suite.common.seq_task`, 0/1 verifiable reward). Two completions per prompt from the warm-started
GRU, which is both μ and π_ref; CoPG and naive PG each train a copy on minibatches of these fixed pairs, and we
report the held-out sampled pass-rate change. Since μ = π_ref = the initial policy, naive PG starts on-policy and
its bias only grows as π moves away, so this part checks that CoPG improves the reward from offline pairs, not the
bias (which the bandit measures exactly). Tried on seed 0: β = 0.05 (CoPG -0.074, naive +0.026), β = 0.5
(+0.014 / +0.019), β = 0.2 with lr 3e-4 (+0.009 / +0.018); kept β = 0.5, lr 1e-3.

Choices where the paper is silent (ours): β = 0.1; Zipf exponent 1.5; R uniform on [0, 1] and exact (noise-free,
"known R"); pairs drawn i.i.d. from μ × μ (pairs with ``y = y'`` give no CoPG/IPO/DPO signal and are kept);
Adam, lr 0.05, full batch; the same steps for every method; DPO's β equal to the KL β.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from safetybed.suite.common.seq_task import DigitTask, pass_rate, warm_started
from safetybed.suite.registry import DemoResult, Measure, SuiteEntry, measure

__all__ = ["Config", "ENTRY", "copg_loss", "demo", "dpo_loss", "ipo_loss", "naive_pg_loss"]


@dataclass(frozen=True)
class Config:
    """The bandit demo's settings."""

    num_arms: int = 20
    """Arms of the bandit (suite.md §1.9(c))."""
    beta: float = 0.1
    """KL coefficient β of ``J = E_π[R] - β KL(π‖π_ref)`` (ours; the paper's bandit value was not readable)."""
    zipf_exponent: float = 1.5
    """``μ(k) ∝ rank^-s``: the behaviour's skew (ours; suite.md says "Zipf-skewed")."""
    pairs: int = 2000
    """Offline pairs ``(y, y') ~ μ × μ`` (ours: enough that every arm appears, so π* is identifiable)."""
    steps: int = 1000
    """Full-batch Adam steps, the same for every method (ours)."""
    learning_rate: float = 0.05
    """Adam step size on the logits (ours)."""
    seeds: int = 5
    """Independent bandits / datasets (seed, seed + 1, ...)."""
    reward_noise: float = 0.1
    """Std of Gaussian noise on the observed rewards in an extra run (reported, not in the verdict; ours)."""
    digit_task: bool = True
    """Also run the digit-task part (full demo only: it needs a warm start per seed)."""
    digit_seeds: int = 2
    """Warm starts (seeds 0, 1, ... offset by the demo seed) for the digit part (ours, sized to the budget)."""
    digit_prompts: int = 2048
    """Offline prompts, two completions each from the warm-started policy μ = π_ref (ours)."""
    digit_updates: int = 150
    """Adam updates on minibatches of the fixed offline pairs (ours)."""
    digit_batch: int = 256
    """Pairs per update (ours)."""
    digit_learning_rate: float = 1e-3
    """Adam step size on the GRU (ours; the warm start's own scale)."""
    digit_beta: float = 0.5
    """KL coefficient on the digit task (ours: β = 0.05 asked for a log-ratio gap of 1/β = 20 nats per 1/0 pair
    and lowered the pass rate by 7 points on seed 0; 0.5 and 0.2 raised it)."""

    def __post_init__(self) -> None:
        for name in ("num_arms", "pairs", "steps", "seeds", "digit_seeds", "digit_prompts", "digit_updates",
                     "digit_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (2 if name == "num_arms" else 1):
                raise ValueError(f"{name}: expected a positive integer (num_arms >= 2), got {value!r}")
        if not (isinstance(self.reward_noise, (int, float)) and math.isfinite(self.reward_noise)
                and self.reward_noise >= 0):
            raise ValueError(f"reward_noise: expected a finite number >= 0, got {self.reward_noise!r}")
        for name in ("beta", "zipf_exponent", "learning_rate", "digit_learning_rate", "digit_beta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")


def _mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return values.mean() if weights is None else (weights * values).sum() / weights.sum()


def copg_loss(log_ratio: torch.Tensor, log_ratio_other: torch.Tensor, reward: torch.Tensor,
              reward_other: torch.Tensor, *, beta: float, scale: float | None = None,
              weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The CoPG loss of Flet-Berliac et al. 2024 on a batch of pairs ``(y, y')``.

    Args:
        log_ratio, log_ratio_other: ``log π(y) - log π_ref(y)`` and the same for ``y'`` ``[N]`` (with a graph).
        reward, reward_other: ``R(y)``, ``R(y')`` ``[N]`` (any scores; no preference needed).
        beta: the KL coefficient β > 0.
        scale: the factor on the square; ``None`` means ``1/(4β)`` (our choice; the paper's is unverified).
        weights: optional per-pair weights ``[N]`` (e.g. ``μ(y) μ(y')`` to take an exact expectation); ``None``
            averages.

    Returns ``{"loss_policy", "regularized_gap"}``: the (weighted) mean loss and the per-pair detached gap
    ``R_β^π(y) - R_β^π(y')``.
    """
    if beta <= 0:
        raise ValueError(f"beta: expected > 0, got {beta!r}")
    factor = 1.0 / (4.0 * beta) if scale is None else float(scale)
    # R_β^π(y) - R_β^π(y'), the contrastive gap of the paper's CoPG loss.
    gap = (reward - beta * log_ratio) - (reward_other - beta * log_ratio_other)
    return {"loss_policy": _mean(factor * gap.square(), weights), "regularized_gap": gap.detach()}


def naive_pg_loss(log_prob: torch.Tensor, log_ratio: torch.Tensor, reward: torch.Tensor, *, beta: float,
                  weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Naive off-policy PG (suite.md §1.9(c) baseline): ``-mean(sg(R - β log π/π_ref) · log π)`` on μ samples.

    The on-policy estimator of ``∇J`` used on behaviour samples without importance weights (biased)."""
    weight = (reward - beta * log_ratio).detach()
    return {"loss_policy": _mean(-(weight * log_prob), weights)}


def ipo_loss(margin: torch.Tensor, *, tau: float, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """IPO (Azar et al. 2024, eq. 17): ``mean (h - 1/(2τ))²``, ``h`` = winner's minus loser's log-ratio."""
    return {"loss_policy": _mean((margin - 1.0 / (2.0 * tau)).square(), weights)}


def dpo_loss(margin: torch.Tensor, *, beta: float, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """DPO (Rafailov et al. 2023, eq. 7): ``-mean log σ(β h)``."""
    return {"loss_policy": _mean(-torch.nn.functional.logsigmoid(beta * margin), weights)}


#: The demo's methods: CoPG and its three baselines.
METHODS = ("copg", "naive_pg", "ipo", "dpo")


@dataclass(frozen=True)
class _Bandit:
    reward: torch.Tensor  # R(k) [num_arms]
    behaviour: torch.Tensor  # μ(k) [num_arms]
    optimal: torch.Tensor  # π*(k) ∝ π_ref exp(R/β)
    first: torch.Tensor  # y of each offline pair [pairs]
    second: torch.Tensor  # y' of each offline pair [pairs]
    observed: torch.Tensor  # the rewards the learner sees for (y, y'): R plus optional noise [pairs, 2]


def _make_bandit(config: Config, seed: int, *, reward_noise: float = 0.0) -> _Bandit:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1909]))
    reward = rng.uniform(0.0, 1.0, size=config.num_arms)
    zipf = 1.0 / np.arange(1, config.num_arms + 1) ** config.zipf_exponent
    behaviour = np.empty(config.num_arms)
    behaviour[rng.permutation(config.num_arms)] = zipf / zipf.sum()
    pairs = rng.choice(config.num_arms, size=(config.pairs, 2), p=behaviour)
    # Noise is drawn after the bandit and the pairs, so a noisy run sees the same bandit and pairs as the exact one.
    observed = reward[pairs] + reward_noise * rng.standard_normal(pairs.shape)
    reward_t = torch.tensor(reward, dtype=torch.float64)
    # π_ref uniform, so π* = softmax(R/β).
    return _Bandit(reward_t, torch.tensor(behaviour, dtype=torch.float64), torch.softmax(reward_t / config.beta, 0),
                   torch.tensor(pairs[:, 0]), torch.tensor(pairs[:, 1]), torch.tensor(observed, dtype=torch.float64))


def _train(method: str, bandits: list[_Bandit], config: Config) -> torch.Tensor:
    """Tabular logits trained offline by ``method``, one row per bandit; returns the final policies ``[B, K]``.

    Full batch over each bandit's fixed pairs. The bandits are independent rows trained together (the sum of their
    own mean losses) to save time.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    num_bandits, num_arms = len(bandits), config.num_arms
    logits = torch.zeros(num_bandits, num_arms, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=config.learning_rate)
    log_ref = -math.log(num_arms)
    y = torch.stack([b.first for b in bandits])  # [B, N]
    y_other = torch.stack([b.second for b in bandits])
    r = torch.stack([b.observed[:, 0] for b in bandits])
    r_other = torch.stack([b.observed[:, 1] for b in bandits])
    # Preferences derived from the observed rewards: the higher one wins; ties (y = y' when exact) carry no
    # preference. The winner-minus-loser margin is sign(r - r') · (h(y) - h(y')).
    preference_sign = torch.sign(r - r_other)
    has_preference = (preference_sign != 0).double()
    samples, sample_rewards = torch.cat([y, y_other], 1), torch.cat([r, r_other], 1)  # each pair: two μ samples
    for _ in range(config.steps):
        log_pi = torch.log_softmax(logits, 1)
        log_ratio = log_pi - log_ref
        ratio, ratio_other = log_ratio.gather(1, y), log_ratio.gather(1, y_other)
        if method == "copg":
            loss = copg_loss(ratio, ratio_other, r, r_other, beta=config.beta)["loss_policy"]
        elif method == "naive_pg":
            loss = naive_pg_loss(log_pi.gather(1, samples), log_ratio.gather(1, samples), sample_rewards,
                                 beta=config.beta)["loss_policy"]
        elif method == "ipo":
            loss = ipo_loss(preference_sign * (ratio - ratio_other), tau=config.beta,
                            weights=has_preference)["loss_policy"]
        else:
            loss = dpo_loss(preference_sign * (ratio - ratio_other), beta=config.beta,
                            weights=has_preference)["loss_policy"]
        optimizer.zero_grad()
        (num_bandits * loss).backward()  # the sum of the bandits' own mean losses (equal pair counts)
        optimizer.step()
    return torch.softmax(logits.detach(), 1)


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p * (p.clamp_min(1e-300).log() - q.log())).sum())


def _digit_part(config: Config, seed: int) -> dict[str, list[float]]:
    """CoPG vs naive off-policy PG on fixed pairs from the warm-started GRU (μ = π_ref), 0/1 verifiable reward.

    Returns the held-out sampled pass-rate change per warm start for each method."""
    task = DigitTask(digits=2)
    changes: dict[str, list[float]] = {"copg": [], "naive_pg": []}
    for offset in range(config.digit_seeds):
        reference, _ = warm_started(task, seed=seed + offset)
        streams = np.random.SeedSequence([seed + offset, 1919]).generate_state(4)
        prompts = task.sample(config.digit_prompts, generator=torch.Generator().manual_seed(int(streams[0])))
        sampler = torch.Generator().manual_seed(int(streams[1]))
        completions, _ = reference.sample(prompts.tokens, generator=sampler)
        completions_other, _ = reference.sample(prompts.tokens, generator=sampler)
        reward, reward_other = task.reward(prompts, completions), task.reward(prompts, completions_other)
        with torch.no_grad():
            ref_lp = reference.token_log_probs(prompts.tokens, completions)[0].sum(1)
            ref_lp_other = reference.token_log_probs(prompts.tokens, completions_other)[0].sum(1)
        held_out = task.sample(1024, generator=torch.Generator().manual_seed(int(streams[2])))
        before = pass_rate(reference, task, held_out, generator=torch.Generator().manual_seed(int(streams[3])),
                           samples=4)
        for method in changes:
            policy = copy.deepcopy(reference)
            optimizer = torch.optim.Adam(policy.parameters(), lr=config.digit_learning_rate)
            batches = torch.Generator().manual_seed(int(streams[1]) + 1)
            for _ in range(config.digit_updates):
                index = torch.randint(0, config.digit_prompts, (config.digit_batch,), generator=batches)
                tokens = prompts.tokens[index]
                log_pi = policy.token_log_probs(tokens, completions[index])[0].sum(1)
                log_pi_other = policy.token_log_probs(tokens, completions_other[index])[0].sum(1)
                ratio, ratio_other = log_pi - ref_lp[index], log_pi_other - ref_lp_other[index]
                if method == "copg":
                    loss = copg_loss(ratio, ratio_other, reward[index], reward_other[index],
                                     beta=config.digit_beta)["loss_policy"]
                else:
                    loss = naive_pg_loss(torch.cat([log_pi, log_pi_other]), torch.cat([ratio, ratio_other]),
                                         torch.cat([reward[index], reward_other[index]]),
                                         beta=config.digit_beta)["loss_policy"]
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            after = pass_rate(policy, task, held_out, generator=torch.Generator().manual_seed(int(streams[3])),
                              samples=4)
            changes[method].append(after - before)
    return changes


def demo(*, fast: bool, seed: int) -> DemoResult:
    """CoPG vs naive off-policy PG, IPO and DPO on the offline Zipf-behaviour bandit, over seeds."""
    config = Config(steps=300, seeds=3, reward_noise=0.0, digit_task=False) if fast else Config()
    seeds = tuple(range(seed, seed + config.seeds))
    kl: dict[str, list[float]] = {m: [] for m in METHODS}
    expected_reward: dict[str, list[float]] = {m: [] for m in METHODS}  # E_π[R]
    bandits = [_make_bandit(config, run_seed) for run_seed in seeds]
    optimal_reward = [float((b.optimal * b.reward).sum()) for b in bandits]
    for method in METHODS:
        policies = _train(method, bandits, config)
        for bandit, pi in zip(bandits, policies, strict=True):
            # J(π*) - J(π) = β KL(π ‖ π*) exactly (π* is the Gibbs tilt), so the KL also measures the objective gap.
            kl[method].append(_kl(pi, bandit.optimal))
            expected_reward[method].append(float((pi * bandit.reward).sum()))
    noisy_kl: dict[str, list[float]] = {m: [] for m in METHODS}
    if config.reward_noise > 0:
        noisy = [_make_bandit(config, run_seed, reward_noise=config.reward_noise) for run_seed in seeds]
        for method in METHODS:
            for bandit, pi in zip(noisy, _train(method, noisy, config), strict=True):
                noisy_kl[method].append(_kl(pi, bandit.optimal))

    kl_unit, r_unit = "KL(pi||pi*) [nats]", "E_pi[R] [reward]"
    measured: dict[str, Measure] = {"KL(pi||pi*)": measure(kl["copg"], unit=kl_unit),
                                    "expected reward": measure(expected_reward["copg"], unit=r_unit),
                                    "expected reward of pi*": measure(optimal_reward, unit=r_unit)}
    baseline: dict[str, Measure] = {"KL(pi||pi*)": measure(kl["naive_pg"], unit=kl_unit),
                                    "expected reward": measure(expected_reward["naive_pg"], unit=r_unit)}
    for method, label in (("ipo", "IPO"), ("dpo", "DPO")):
        baseline[f"KL(pi||pi*), {label}"] = measure(kl[method], unit=kl_unit)
        baseline[f"expected reward, {label}"] = measure(expected_reward[method], unit=r_unit)
    if config.reward_noise > 0:
        noisy_label = f"KL(pi||pi*), reward noise {config.reward_noise:g}"
        measured[noisy_label] = measure(noisy_kl["copg"], unit=kl_unit)
        baseline[noisy_label] = measure(noisy_kl["naive_pg"], unit=kl_unit)
        for method, label in (("ipo", "IPO"), ("dpo", "DPO")):
            baseline[f"{noisy_label}, {label}"] = measure(noisy_kl[method], unit=kl_unit)

    noisy_line = ""
    if config.reward_noise > 0:
        noisy_line = (f"; with reward noise {config.reward_noise:g} (not in the verdict) CoPG "
                      f"{np.mean(noisy_kl['copg']):.2g}, naive PG {np.mean(noisy_kl['naive_pg']):.2g}")
    digit_line = "digit task not run (fast demo)"
    if config.digit_task:
        changes = _digit_part(config, seed)
        measured["digit task: held-out pass-rate change"] = measure(changes["copg"], unit="fraction")
        baseline["digit task: held-out pass-rate change"] = measure(changes["naive_pg"], unit="fraction")
        digit_line = (f"digit task (reported, not in the verdict) pass-rate change CoPG "
                      f"{np.mean(changes['copg']):+.3f}, naive PG {np.mean(changes['naive_pg']):+.3f}")

    mean = {m: float(np.mean(kl[m])) for m in METHODS}
    copg_converges = mean["copg"] < 0.01
    naive_biased = mean["naive_pg"] > 0.1
    beats_preferences = mean["copg"] < min(mean["ipo"], mean["dpo"])
    held = [copg_converges, naive_biased, beats_preferences]
    verdict = "reproduced" if all(held) else ("partly" if any(held) else "not reproduced")
    why = (f"mean KL(pi||pi*): CoPG {mean['copg']:.2g} (target < 0.01), naive PG {mean['naive_pg']:.2g} "
           f"(target > 0.1), IPO {mean['ipo']:.2g}, DPO {mean['dpo']:.2g} (target: above CoPG); "
           f"{config.pairs} offline pairs, beta {config.beta}, Zipf s {config.zipf_exponent}{noisy_line}; "
           f"{digit_line}")
    return DemoResult(
        name="copg",
        claim=("Trained offline on pairs from a Zipf-skewed behaviour, CoPG recovers pi* ∝ pi_ref exp(R/beta) "
               "(KL(pi||pi*) < 0.01), naive off-policy PG stays biased (KL > 0.1), and IPO/DPO on preferences "
               "derived from R end farther from pi* than CoPG."),
        measured=measured, baseline=baseline, verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings={"num_arms": config.num_arms, "beta": config.beta, "zipf_exponent": config.zipf_exponent,
                  "pairs": config.pairs, "steps": config.steps, "learning_rate": config.learning_rate,
                  "optimizer": "Adam, full batch, tabular logits from pi_ref", "copg_scale": "1/(4 beta)",
                  "ipo_tau": config.beta, "dpo_beta": config.beta, "reward": "U(0, 1), exact", "reward_noise_extra_run": config.reward_noise,
                  "digit_task": ({"warm_starts": config.digit_seeds, "prompts": config.digit_prompts,
                                  "updates": config.digit_updates, "batch_pairs": config.digit_batch,
                                  "learning_rate": config.digit_learning_rate, "beta": config.digit_beta}
                                 if config.digit_task else "not run")})


ENTRY = SuiteEntry(
    name="copg",
    title="Contrastive Policy Gradient: Aligning LLMs on sequence-level scores in a supervised-friendly fashion",
    citation="Flet-Berliac et al. 2024",
    family="alignment",
    module=__name__,
    rule=copg_loss,
    demo=demo,
)
