"""On-policy sampling and negative gradients in preference fine-tuning, on the paper's 1-D categorical bandit.

Paper: Fahim Tajwar, Anikait Singh, Archit Sharma, Rafael Rafailov, Jeff Schneider, Tengyang Xie, Stefano Ermon,
Chelsea Finn, Aviral Kumar (2024), "Preference Fine-Tuning of LLMs Should Leverage Suboptimal, On-Policy Data"
(arXiv 2404.14367; official code Asap7772/understanding-rlhf, ``bandit_experiment/``). An analysis paper: methods are
classed by (i) on-policy sampling vs a fixed offline data set from ``pi_ref`` and (ii) a negative gradient (a
contrastive loss that pushes down the likelihood of worse samples: IPO) vs maximum likelihood on filtered samples
(Best-of-N SFT). Claim (their Sec. 5 / Fig. 4 bandit): when the reward peak lies where ``pi_ref`` has little mass,
on-policy sampling with a negative gradient ("mode-seeking") moves probability mass fastest; when the peak is already
likely under ``pi_ref``, every method works.

The two losses (:func:`best_of_n_sft_loss`, :func:`ipo_loss`), for groups of ``N`` samples ``y_1..y_N`` of one prompt:

* Best-of-N SFT (maximum likelihood on filtered data): ``L = -E_groups[log pi(y*)]`` with ``y* = argmax_i r(y_i)``.
* IPO (Azar et al. 2023, eq. 17, in the official code's parametrisation ``(h - beta)^2`` with ``beta`` the target
  margin, i.e. ``beta = 1 / (2 tau)``): over every pair ``i < j`` of a group, winner ``w`` = the higher reward,
  ``h = [log pi(w) - log pi_ref(w)] - [log pi(l) - log pi_ref(l)]`` and ``L = E_pairs[(h - beta)^2]``.

The four learners (:func:`train`) differ only in where each epoch's groups come from: "offline" draws them from
``pi_ref``, "on-policy" from the current ``pi`` (official ``_off_policy`` / ``_negative_gradient_methods`` with
``action_sampler = agent`` for epochs > 0); both take ``inner_steps`` Adam steps on each batch.

Demo (:func:`demo`): 100 actions; ``pi_ref`` is the official one, a Cauchy(loc -0.7, scale 0.4) pushed through tanh
and binned into 100 equal bins of [-1, 1] (median in bin 19, at position 19.8 = tanh(-0.7); the tanh Jacobian
moves the interior mode to about bin 11, and the Cauchy tails pile up in the end bins: 7.8 % in bin 0, 4.2 % in
bin 99; 4.6 % of the mass lies in bins 60-80); the misaligned reward is the official
``reward_4`` ``exp(-((a - 70) / 10)^2)``, the aligned one ``reward_5`` ``exp(-((a - 20) / 10)^2)``. The policy is a
free logit vector started at ``log pi_ref`` (the official code first fits its network to ``pi_data`` by KL). The
score is the exact expected reward ``sum_a pi(a) r(a)`` after each gradient step; the demo counts gradient steps until
it first reaches 0.9 of the maximum reward (1.0); a run that never gets there counts as the step budget (censored,
reported as such). Hyper-parameters are the official scripts' (N = 10, 10 prompts per epoch, 15 steps per batch,
Adam lr 0.01, IPO beta = 10).

What building it showed (fast settings, seeds 0-1, misaligned reward): both offline learners never reach 0.9 (they
stay near pi_ref's support: Best-of-N SFT of pi_ref samples plateaus near 0.3, offline IPO near 0.1), while the two
on-policy learners both get there in about the same number of steps, so on-policy sampling, not the negative
gradient, carries the speed-up here. Also tried, none giving on-policy IPO a 2x lead over on-policy Best-of-N:
``N = 4`` (262 / 292 vs 375 / 239 steps), ``beta = 2`` (IPO slower: never within 375 steps), 2 prompts per epoch
(375 / 285 vs 375 / 275). The official settings are kept.

Choices where the paper is silent (or the code differs from what the demo needs):

* No context: the official bandit has 100-dim random contexts that the reward ignores; one state with a free logit
  vector (a tabular policy) keeps the effect and removes the network. Its start is exactly ``log pi_ref``.
* ``pi_ref`` is computed exactly from the Cauchy CDF per bin (the official code estimates it from 10 000 samples).
* Offline data: the same loop with ``pi_ref`` as the sampler every epoch (a fresh batch of ``prompts x N`` samples
  from ``pi_ref`` per epoch, 15 steps on each), so both columns use the same sample budget and step count.
* Ties in reward go to the later sample of a sorted pair (as the official ``dpo_decide_winner``); with continuous
  rewards ties occur only for repeated actions, whose pair then contributes ``h = 0``.
* Steps-to-threshold is measured on the exact expected reward, not on 4 evaluation samples per state as in the
  official ``evaluate``.
* The claim's thresholds are suite.md's proposals, checked as three sub-claims: misaligned, on-policy IPO >= 2x
  faster than the faster offline learner, and >= 2x faster than on-policy Best-of-N SFT (the ML-only method);
  aligned, the fastest other learner within 2x of it ("the ordering collapses"). All three: reproduced; one or two:
  partly. A learner that never reaches the threshold counts as the budget, so its ratio is a lower bound.
* The fast demo uses lr 0.03 on 25 epochs (375 steps) instead of lr 0.01 on 100 (1500), 2 seeds instead of 3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats

from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["Config", "ENTRY", "LEARNERS", "best_of_n_sft_loss", "bump_reward", "collect_groups", "demo",
           "ipo_loss", "reference_policy", "train"]


def reference_policy(n_actions: int = 100, *, loc: float = -0.7, scale: float = 0.4) -> np.ndarray:
    """The official discrete ``pi_data``: ``tanh(X)``, ``X ~ Cauchy(loc, scale)``, binned into ``n_actions`` equal bins
    of [-1, 1]; bin probabilities exact from the Cauchy CDF (``P(a) = F(atanh(hi_a)) - F(atanh(lo_a))``)."""
    if n_actions < 2:
        raise ValueError(f"n_actions: expected >= 2, got {n_actions}")
    if scale <= 0:
        raise ValueError(f"scale: expected > 0, got {scale}")
    edges = np.linspace(-1.0, 1.0, n_actions + 1)
    with np.errstate(divide="ignore"):  # atanh(+-1) = +-inf: the end bins hold the Cauchy's tails
        cdf = stats.cauchy.cdf(np.arctanh(edges), loc=loc, scale=scale)
    probabilities = np.diff(cdf)
    return probabilities / probabilities.sum()


def bump_reward(actions: np.ndarray | torch.Tensor, *, peak: float, width: float = 10.0) -> np.ndarray:
    """The official 1-D discrete rewards: ``exp(-((a - peak) / width)^2)`` (``reward_4``: peak 70, ``reward_5``:
    peak 20, width 10). Maximum 1 at ``a = peak``."""
    actions = np.asarray(actions, dtype=float)
    return np.exp(-(((actions - peak) / width) ** 2))


def collect_groups(logits: torch.Tensor, *, n_groups: int, group_size: int, generator: torch.Generator
                   ) -> torch.Tensor:
    """``[n_groups, group_size]`` actions drawn i.i.d. from ``softmax(logits)`` (on-policy when ``logits`` are the
    current policy's, offline when they are ``log pi_ref``)."""
    probabilities = torch.softmax(logits.detach(), dim=-1)
    flat = torch.multinomial(probabilities, n_groups * group_size, replacement=True, generator=generator)
    return flat.view(n_groups, group_size)


def best_of_n_sft_loss(log_probs: torch.Tensor, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """Best-of-N SFT (Tajwar et al. 2024, Sec. 4: maximum likelihood on filtered data; official ``_off_policy`` with
    ``no_negative_gradient``). ``log_probs`` and ``rewards`` are ``[G, N]`` (log pi and reward of each sample);
    ``loss_policy = -mean_g log pi(y*_g)`` with ``y*_g`` the group's highest-reward sample (the first on ties)."""
    if log_probs.shape != rewards.shape or log_probs.dim() != 2:
        raise ValueError(f"log_probs, rewards: expected equal [G, N] shapes, got {tuple(log_probs.shape)}, "
                         f"{tuple(rewards.shape)}")
    best = torch.argmax(rewards, dim=1)
    selected = log_probs.gather(1, best[:, None]).squeeze(1)
    return {"loss_policy": -selected.mean(), "selected_log_prob": selected.detach().mean()}


def ipo_loss(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, rewards: torch.Tensor, *, beta: float
             ) -> dict[str, torch.Tensor]:
    """IPO on all pairs of each group (Azar et al. 2023, eq. 17, as used by Tajwar et al. 2024 and the official
    ``dpo_utils.dpo_loss`` with ``loss_type="ipo"``): ``loss_policy = mean_pairs (h - beta)^2`` with
    ``h = [log pi(w) - log pi_ref(w)] - [log pi(l) - log pi_ref(l)]``, ``w`` the higher-reward sample of the pair.
    Inputs are ``[G, N]``; ``beta`` is the target log-ratio margin (the code's parametrisation, ``1 / (2 tau)``)."""
    if not (log_probs.shape == ref_log_probs.shape == rewards.shape) or log_probs.dim() != 2:
        raise ValueError("log_probs, ref_log_probs, rewards: expected equal [G, N] shapes, got "
                         f"{tuple(log_probs.shape)}, {tuple(ref_log_probs.shape)}, {tuple(rewards.shape)}")
    if log_probs.shape[1] < 2:
        raise ValueError(f"group size: expected >= 2 samples per group for pairs, got {log_probs.shape[1]}")
    if beta <= 0:
        raise ValueError(f"beta: expected > 0, got {beta}")
    log_ratio = log_probs - ref_log_probs.detach()  # log pi(y) - log pi_ref(y)
    first, second = torch.triu_indices(log_probs.shape[1], log_probs.shape[1], offset=1)
    second_wins = rewards[:, second] >= rewards[:, first]  # ties to the later sample, as dpo_decide_winner
    winner = torch.where(second_wins, log_ratio[:, second], log_ratio[:, first])
    loser = torch.where(second_wins, log_ratio[:, first], log_ratio[:, second])
    margin = winner - loser  # h
    return {"loss_policy": ((margin - beta) ** 2).mean(), "margin": margin.detach().mean()}


@dataclass(frozen=True)
class Config:
    """The bandit and the learners (defaults: the official ``scripts/onpolicy_ipo.sh`` / ``best_of_n.sh``)."""

    n_actions: int = 100
    """Discrete actions (official ``num_actions=100``)."""
    ref_loc: float = -0.7
    """Cauchy location before tanh of ``pi_ref`` (official ``get_learner_dict``): median in bin 19 (position 19.8)."""
    ref_scale: float = 0.4
    """Cauchy scale of ``pi_ref`` (official)."""
    reward_width: float = 10.0
    """Width of the reward bump (official ``reward_4`` / ``reward_5``)."""
    misaligned_peak: float = 70.0
    """Reward peak far from ``pi_ref``'s mode (official ``reward_4``)."""
    aligned_peak: float = 20.0
    """Reward peak at ``pi_ref``'s mode (official ``reward_5``)."""
    group_size: int = 10
    """Samples per prompt ``N`` (official ``N_values=(10)``)."""
    groups_per_epoch: int = 10
    """Prompts per epoch (official ``num_train_states=10``; here identical, there is no context)."""
    epochs: int = 100
    """Data-collection rounds (official ``epochs=100``)."""
    inner_steps: int = 15
    """Gradient steps per collected batch (official ``num_iterations_on_same_samples=15``)."""
    learning_rate: float = 0.01
    """Adam step size (official ``lr=0.01``)."""
    beta: float = 10.0
    """IPO target margin (official ``beta=10.0``)."""
    threshold_fraction: float = 0.9
    """Steps are counted until the expected reward first reaches this fraction of the maximum (suite.md §1.12)."""
    n_seeds: int = 3
    """Seeds ``seed, seed + 1, ...`` (the official scripts use 5; 3 keep the full demo under 2 min on 2 shared
    cores)."""

    def __post_init__(self) -> None:
        for name in ("group_size", "n_actions"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name}: expected >= 2, got {getattr(self, name)}")
        for name in ("groups_per_epoch", "epochs", "inner_steps", "n_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("ref_scale", "reward_width", "learning_rate", "beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected > 0, got {getattr(self, name)}")
        if not 0 < self.threshold_fraction <= 1:
            raise ValueError(f"threshold_fraction: expected in (0, 1], got {self.threshold_fraction}")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.inner_steps


#: The four learners of the analysis: (on-policy sampling?, loss).
LEARNERS: dict[str, tuple[bool, str]] = {
    "offline_best_of_n": (False, "best_of_n"),
    "onpolicy_best_of_n": (True, "best_of_n"),
    "offline_ipo": (False, "ipo"),
    "onpolicy_ipo": (True, "ipo"),
}


def train(learner: str, reward: Callable[[np.ndarray], np.ndarray], config: Config, *,
          generator: torch.Generator) -> np.ndarray:
    """Run one of :data:`LEARNERS` from ``pi = pi_ref``; returns the exact expected reward ``[total_steps + 1]``
    (index 0 before any step)."""
    if learner not in LEARNERS:
        raise ValueError(f"learner: expected one of {sorted(LEARNERS)}, got {learner!r}")
    on_policy, loss_name = LEARNERS[learner]
    ref_log_probs = torch.log(torch.as_tensor(reference_policy(config.n_actions, loc=config.ref_loc,
                                                               scale=config.ref_scale)))
    reward_table = torch.as_tensor(reward(np.arange(config.n_actions)))
    logits = ref_log_probs.clone().requires_grad_()  # pi starts at pi_ref (the official SFT-to-pi_data start)
    optimizer = torch.optim.Adam([logits], lr=config.learning_rate)
    curve = [float(torch.softmax(logits.detach(), -1) @ reward_table)]
    for _ in range(config.epochs):
        # the only difference between the two columns of the analysis: who draws the batch
        sampler = logits if on_policy else ref_log_probs
        actions = collect_groups(sampler, n_groups=config.groups_per_epoch, group_size=config.group_size,
                                 generator=generator)
        rewards = reward_table[actions]
        for _ in range(config.inner_steps):
            log_probs = torch.log_softmax(logits, dim=-1)[actions]
            if loss_name == "ipo":
                terms = ipo_loss(log_probs, ref_log_probs[actions], rewards, beta=config.beta)
            else:
                terms = best_of_n_sft_loss(log_probs, rewards)
            optimizer.zero_grad()
            terms["loss_policy"].backward()
            optimizer.step()
            curve.append(float(torch.softmax(logits.detach(), -1) @ reward_table))
    return np.asarray(curve)


def steps_to_threshold(curve: np.ndarray, threshold: float) -> tuple[int, bool]:
    """First step index with ``curve >= threshold`` and True, or ``(len(curve) - 1, False)`` if never (censored)."""
    hits = np.flatnonzero(curve >= threshold)
    return (int(hits[0]), True) if hits.size else (len(curve) - 1, False)


def demo(*, fast: bool, seed: int) -> DemoResult:
    """Gradient steps to 0.9 of the maximum reward for the four learners, misaligned (peak 70) and aligned (peak 20)
    rewards, over ``n_seeds`` seeds."""
    # fast: a 3x larger step on a quarter of the epochs compresses the same dynamics (checked on seed 0: the same
    # ordering of the four learners as at the official lr 0.01)
    config = Config(epochs=25, learning_rate=0.03, n_seeds=2) if fast else Config()
    seeds = tuple(range(seed, seed + config.n_seeds))
    rewards = {"misaligned": lambda a: bump_reward(a, peak=config.misaligned_peak, width=config.reward_width),
               "aligned": lambda a: bump_reward(a, peak=config.aligned_peak, width=config.reward_width)}
    threshold = config.threshold_fraction * 1.0  # max_a r(a) = 1 at the peak
    steps: dict[tuple[str, str], list[float]] = {}
    reached: dict[tuple[str, str], list[float]] = {}
    final: dict[tuple[str, str], list[float]] = {}
    for run_seed in seeds:
        children = np.random.SeedSequence(run_seed).spawn(len(rewards) * len(LEARNERS))
        runs = [(case, learner) for case in rewards for learner in LEARNERS]
        for (case, learner), child in zip(runs, children, strict=True):
            generator = torch.Generator().manual_seed(int(child.generate_state(1)[0]))
            curve = train(learner, rewards[case], config, generator=generator)
            count, hit = steps_to_threshold(curve, threshold)
            steps.setdefault((case, learner), []).append(float(count))
            reached.setdefault((case, learner), []).append(float(hit))
            final.setdefault((case, learner), []).append(float(curve[-1]))

    unit_steps = f"gradient steps to {config.threshold_fraction:g} x max reward (budget {config.total_steps})"
    others = [name for name in LEARNERS if name != "onpolicy_ipo"]

    def speedup(case: str, rivals: list[str]) -> list[float]:
        """Per seed: the fastest rival's steps over on-policy IPO's (>= 2 is the claim; a lower bound when the rival
        is censored at the budget)."""
        ours = steps[(case, "onpolicy_ipo")]
        return [min(steps[(case, o)][i] for o in rivals) / max(ours[i], 1.0) for i in range(len(seeds))]

    offline = ["offline_best_of_n", "offline_ipo"]
    measured, baseline = {}, {}
    for case in rewards:
        measured[f"{case}_steps"] = measure(steps[(case, "onpolicy_ipo")], unit=unit_steps)
        measured[f"{case}_reached"] = measure(reached[(case, "onpolicy_ipo")], unit="fraction of seeds")
        measured[f"{case}_final_reward"] = measure(final[(case, "onpolicy_ipo")], unit="expected reward")
        measured[f"{case}_speedup_vs_best_other"] = measure(speedup(case, others), unit="steps ratio (other / ours)")
        measured[f"{case}_speedup_vs_offline"] = measure(speedup(case, offline), unit="steps ratio (other / ours)")
        measured[f"{case}_speedup_vs_onpolicy_best_of_n"] = measure(speedup(case, ["onpolicy_best_of_n"]),
                                                                    unit="steps ratio (other / ours)")
        for other in others:
            baseline[f"{case}_steps_{other}"] = measure(steps[(case, other)], unit=unit_steps)
            baseline[f"{case}_reached_{other}"] = measure(reached[(case, other)], unit="fraction of seeds")
            baseline[f"{case}_final_reward_{other}"] = measure(final[(case, other)], unit="expected reward")
    start_reward = {case: float(reference_policy(config.n_actions, loc=config.ref_loc, scale=config.ref_scale)
                                @ rewards[case](np.arange(config.n_actions))) for case in rewards}

    # three sub-claims: >= 2x faster than the offline learners, >= 2x faster than on-policy ML (Best-of-N SFT),
    # and the gap collapsing (< 2x to the fastest other) when the reward peak is likely under pi_ref
    ours_reached = measured["misaligned_reached"].mean == 1.0
    vs_offline = measured["misaligned_speedup_vs_offline"].mean
    vs_onpolicy_ml = measured["misaligned_speedup_vs_onpolicy_best_of_n"].mean
    aligned_speedup = measured["aligned_speedup_vs_best_other"].mean
    held = [ours_reached and vs_offline >= 2.0, ours_reached and vs_onpolicy_ml >= 2.0, aligned_speedup < 2.0]
    verdict = "reproduced" if all(held) else ("partly" if any(held) else "not reproduced")
    censored = {o: v for o in others if (v := float(np.mean(reached[("misaligned", o)]))) < 1.0}
    why = (f"misaligned: on-policy IPO {measured['misaligned_steps'].mean:.0f} steps (reached on "
           f"{measured['misaligned_reached'].mean:.0%} of seeds); offline / ours >= {vs_offline:.2f} "
           f"({'held' if held[0] else 'missed'}; censored at {config.total_steps}: "
           f"{', '.join(f'{o} reached on {v:.0%}' for o, v in censored.items()) or 'none'}); on-policy Best-of-N / "
           f"ours = {vs_onpolicy_ml:.2f} ({'held' if held[1] else 'missed'}: on-policy sampling alone does most of "
           f"it); aligned: fastest other / ours = {aligned_speedup:.2f} (collapse {'held' if held[2] else 'missed'}); "
           f"start rewards {start_reward['misaligned']:.3f} / {start_reward['aligned']:.3f}")
    return DemoResult(
        name="onpolicy-neggrad",
        claim=("On the 1-D 100-action bandit with pi_ref peaked at 20, on-policy IPO reaches 0.9 x max reward in >= 2x "
               "fewer gradient steps than offline IPO and offline / on-policy Best-of-N SFT when the reward peaks at "
               "70, and all methods are within 2x of it when the reward peaks at 20."),
        measured=measured, baseline=baseline, verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings=asdict(config) | {"total_steps": config.total_steps, "learners": list(LEARNERS),
                                   "start_expected_reward": start_reward},
    )


ENTRY = SuiteEntry(
    name="onpolicy-neggrad",
    title="Preference Fine-Tuning of LLMs Should Leverage Suboptimal, On-Policy Data",
    citation="Tajwar et al. 2024",
    family="alignment",
    module=__name__,
    rule=ipo_loss,
    demo=demo,
)
