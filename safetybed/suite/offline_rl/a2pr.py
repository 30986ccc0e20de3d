"""A2PR: advantage-guided policy regularisation with a VAE of the high-advantage behaviour.

Liu, Li, Lan, Gao, Pan & Xu 2024, "Adaptive Advantage-Guided Policy Regularization for Offline Reinforcement
Learning" (ICML; arXiv 2405.19909). TD3+BC (Fujimoto & Gu 2021, :mod:`safetybed.suite.common.td3_bc`) pulls the
policy towards *every* dataset action; on a dataset that is mostly poor behaviour that regulariser is the
"unnecessary conservativeness" the paper removes. A2PR keeps TD3's twin critics and adds, every gradient step:

1. **A state value** ``V(s)``, regressed to the smaller of two TD targets at TD3's smoothed next action ``a'``:
   ``min(r + gamma (1 - d) min_i Q_bar_i(s', a'), r + gamma (1 - d) min_i Q_i(s', a'))`` (target and current
   critics; :func:`a2pr_value_loss`). It defines the advantage ``A(s, a) = Q_1(s, a) - V(s)``.
2. **An "augmented behaviour policy"** (the paper's EPBL, Sec. 4.1): a VAE whose reconstruction term counts only
   the pairs with ``A(s, a) > 0``, ``vae_weight * 1[Q_1(s, a) > V(s)] * ||VAE(s, a) - a||^2`` plus ``0.5 KL`` over
   every row (:func:`a2pr_vae_loss`), so its decoder reproduces the high-advantage part of the data.
3. **The actor** (Sec. 4.2, :func:`a2pr_actor_loss`, the core rule): with ``a_hat = VAE(s, pi(s))`` (the policy's
   action projected onto the high-advantage behaviour) and the guide ``a_tilde = a_hat`` if ``A(s, a_hat) >=
   A(s, a)`` else the dataset action ``a``,
   ``-lambda Q_1(s, pi(s)) + mask * (1[Q_1(s, a_hat) >= V(s)] + 1[Q_1(s, a) > V(s)]) * ||pi(s) - a_tilde||^2``,
   ``lambda = alpha / mean|Q_1(s, pi(s))|`` as in TD3+BC. A state where neither candidate beats ``V`` gets no
   regulariser at all; one where both do is pulled twice as hard.

Every term was checked against the official code, ``ltlhuuu/A2PR`` ``A2PR.py`` ``A2PR.train`` (the paper's
equations could not be read here, so its section numbers are given and the code is the reference). What the
code does that the paper's summary does not say, all kept here:

* the value target is the *minimum of two* TD targets (target critics and the just-updated critics, both at the
  smoothed ``a'``), not ``min_i Q_bar_i(s, a)`` at the dataset action; the value network is trained every step;
* the advantage threshold (the paper's ``epsilon_A``) is 0, and ``Q_1`` alone (not the min of the two critics)
  enters every advantage; ``V`` is the value network's output *before* this step's value update;
* the VAE's KL term is averaged over all rows, the advantage weight multiplies only the reconstruction, and the
  reconstruction mean divides by the whole batch (so its effective step size shrinks with the fraction of
  positive-advantage rows); VAE updates run every step, the actor's every second one (TD3's delay);
* ``a_hat`` is one reparameterised pass ``VAE(s, pi(s))`` (encoder then decoder, the latent sampled with the
  encoder's std, not the prior's), and it is *not* detached: the regulariser's gradient reaches ``pi`` through
  the VAE too (``Config.gradient_through_vae``; the VAE's own weights are frozen in the actor step here);
* ``mask`` is 1.0 in the agent's constructor, 0.5 in its argparse default and 0.4 / 1.5 in the README's hopper
  commands; the VAE is 750-750 with latent ``2 * dim(A)``, log-std clamped to ``[-4, 15]``, Adam 1e-3; the
  actor is 3x256 and the critic and value 4x256 (deeper than TD3+BC's 2x256).

A consequence of the code's value target worth knowing: ``y_V`` backs up the *dataset* action's reward through
the pessimistic ``min`` of both critics, so ``V(s)`` tracks roughly ``min_i Q_i(s, a)`` rather than an average over
actions, and ``A(s, a) = Q_1(s, a) - V(s)`` is positive on most rows (85-99 % of the demo's batches, random
actions included). The VAE therefore models most of the data, and what mainly separates A2PR from TD3+BC in the
demo is the guide: ``a_hat = VAE(s, pi(s))`` (the policy's own action projected onto the data) wins the advantage
comparison on 50-80 % of the rows, so the actor is pulled far less towards the random actions.

Choices here where paper and code are silent or too big for the CPU demo: actor and critics share TD3+BC's
architecture (:class:`~safetybed.suite.common.td3_bc.TD3BCConfig`), so the comparison isolates the regulariser;
the demo uses 2x64 ReLU networks for all four (actor, critics, value, VAE encoder and decoder), 6k gradient steps
(the paper's 1M would take days here; the networks run at about 330 TD3+BC and 135 A2PR steps/s on one idle
core), TD3+BC's action scaling to ``[-1, 1]`` (:class:`~safetybed.suite.common.td3_bc.ContinuousTransitions`)
and ``mask = 1``. Tried while sizing (seeds 0-2, evaluation every 1k steps): on the mixed data A2PR is *behind*
TD3+BC until about 3k steps, overtakes it by 4-5k and is at the expert's return by 6-8k, while TD3+BC stays near
-950; on the pure data both drift down after 2-4k steps (the critics over-value actions the single expert never
took), A2PR the more since its regulariser switches off wherever ``V`` rises above both ``Q`` values (its
positive-advantage fraction fell to 10-20 % there).

**Demo** (:func:`demo`): Pendulum swing-up (``classic/pendulum``) from datasets the testbed records
(:func:`~safetybed.suite.common.offline_data.record_dataset`, read back from the run store): *mixed*, 70 % of
the episodes from ``builtin:random`` (return about -1200) and 30 % from the shipped DSAC-T controller
``controllers/pendulum_dsac_t.toml`` (about -150), and *pure*, the shipped controller alone (deterministic, so a
narrow near-expert dataset rather than D4RL's noisier "medium"). TD3+BC and A2PR take the same number of gradient
steps with the same networks, seeds and batches, and their deterministic actors are evaluated on the same seeded
episodes. Scores are normalised by the dataset's own random and expert episode returns, ``(R - R_random) /
(R_expert - R_random)``. The paper's claim, scaled to this problem: A2PR beats TD3+BC by at least 0.1 of that
gap on the mixed data and is within 0.1 of it on the pure data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from safetybed.control.algorithms.common import build_module, frozen, require, require_flags
from safetybed.control.networks import ValueNetwork, mlp
from safetybed.suite.common.offline_data import (
    DatasetPart,
    OfflineDataset,
    record_dataset,
    shipped_controller,
)
from safetybed.suite.common.td3_bc import (
    TD3BC,
    ContinuousTransitions,
    TD3BCConfig,
    TransitionBatch,
    TwinCritic,
    evaluate_actor,
    normalized_q_term,
    train_offline,
)
from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["A2PR", "ENTRY", "ActionVAE", "Config", "a2pr_actor_loss", "a2pr_value_loss", "a2pr_vae_loss",
           "advantage_guided_targets", "demo"]

_CPU = torch.device("cpu")


@dataclass(frozen=True)
class Config:
    """A2PR hyper-parameters; defaults are the official code's (``ltlhuuu/A2PR``, ``A2PR.py`` and ``main.py``)."""

    td3_bc: TD3BCConfig = TD3BCConfig()
    """The TD3 part (critics, actor, ``alpha = 2.5``, smoothing noise, delay 2): the official code's values are
    TD3+BC's."""
    mask: float = 1.0
    """Weight of the advantage-guided regulariser (the agent's constructor default; the README uses 0.4 for
    hopper-medium, 1.5 for hopper-random)."""
    vae_weight: float = 1.0
    """Weight of the positive-advantage reconstruction term (official default)."""
    kl_weight: float = 0.5
    """Weight of the VAE's KL term (official ``recon_loss + 0.5 * KL_loss``)."""
    latent_dim: int | None = None
    """VAE latent size; ``None``: ``2 * dim(A)`` (official)."""
    vae_hidden: tuple[int, ...] = (750, 750)
    """Hidden widths of the VAE's encoder and of its decoder (official, after BCQ)."""
    vae_learning_rate: float = 1e-3
    """Adam learning rate of the VAE (official: PyTorch's default)."""
    value_hidden: tuple[int, ...] = (256, 256, 256, 256)
    """Hidden widths of the value network (official)."""
    value_learning_rate: float = 3e-4
    """Adam learning rate of the value network (official)."""
    log_std_bounds: tuple[float, float] = (-4.0, 15.0)
    """Clamp of the encoder's log-std (official, after BCQ)."""
    gradient_through_vae: bool = True
    """Let the regulariser's gradient reach ``pi(s)`` through ``a_hat = VAE(s, pi(s))`` (official: ``a_hat`` is
    not detached); ``False`` treats the guide action as a constant."""

    def __post_init__(self) -> None:
        require("td3_bc", self.td3_bc, isinstance(self.td3_bc, TD3BCConfig), "a TD3BCConfig")
        require("mask", self.mask, self.mask >= 0, ">= 0")
        require("vae_weight", self.vae_weight, self.vae_weight > 0, "> 0")
        require("kl_weight", self.kl_weight, self.kl_weight >= 0, ">= 0")
        require("latent_dim", self.latent_dim, self.latent_dim is None or (
            isinstance(self.latent_dim, int) and not isinstance(self.latent_dim, bool) and self.latent_dim >= 1),
            "None or an integer >= 1")
        for name in ("vae_hidden", "value_hidden"):
            widths = getattr(self, name)
            require(name, widths, isinstance(widths, tuple) and len(widths) >= 1
                    and all(isinstance(w, int) and w >= 1 for w in widths), "a non-empty tuple of widths >= 1")
        require("vae_learning_rate", self.vae_learning_rate, self.vae_learning_rate > 0, "> 0")
        require("value_learning_rate", self.value_learning_rate, self.value_learning_rate > 0, "> 0")
        low, high = self.log_std_bounds
        require("log_std_bounds", self.log_std_bounds, low < high, "(low, high) with low < high")
        require_flags(self, ("gradient_through_vae",))


# -- networks ---------------------------------------------------------------------------------------------------
class ActionVAE(nn.Module):
    """A conditional VAE of actions given states (BCQ's, Fujimoto et al. 2019): the encoder maps ``(s, a)`` to a
    diagonal Gaussian over ``z``, the decoder maps ``(s, z)`` to ``a_max tanh(.)``."""

    def __init__(self, state_dim: int, action_dim: int, *, latent_dim: int, max_action: float,
                 hidden: tuple[int, ...], log_std_bounds: tuple[float, float]):
        super().__init__()
        self.encoder = mlp(state_dim + action_dim, 2 * latent_dim, hidden=hidden, activation="relu")
        self.decoder = mlp(state_dim + latent_dim, action_dim, hidden=hidden, activation="relu")
        self.latent_dim = latent_dim
        self.max_action = float(max_action)
        self.log_std_bounds = log_std_bounds

    def decode(self, states: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return self.max_action * torch.tanh(self.decoder(torch.cat([states, latent], dim=-1)))

    def forward(self, states: torch.Tensor, actions: torch.Tensor, *,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reconstruction, mean, std)``: one reparameterised pass ``z = mean + std * eps``."""
        mean, log_std = self.encoder(torch.cat([states, actions], dim=-1)).chunk(2, dim=-1)
        std = log_std.clamp(*self.log_std_bounds).exp()
        latent = mean + std * torch.randn(std.shape, generator=generator)
        return self.decode(states, latent), mean, std


# -- losses -----------------------------------------------------------------------------------------------------
def a2pr_value_loss(batch: TransitionBatch, *, value: nn.Module, critic: TwinCritic, next_actions: torch.Tensor,
                    target_q: torch.Tensor, discount: float) -> dict[str, torch.Tensor]:
    """``mean (V(s) - y_V)^2`` with ``y_V = min(target_q, r + gamma (1 - d) min_i Q_i(s', a'))``: the smaller of
    TD3's target (``target_q``, from the target critics) and the same target from the current critics, both at
    the smoothed next action ``a'`` (official ``A2PR.train``). Returns ``loss_value``, ``value`` (``V(s)``,
    detached) and ``value_target``."""
    with torch.no_grad():
        q1, q2 = critic(batch.next_states, next_actions)
        current_target = batch.rewards + discount * batch.not_done * torch.min(q1, q2)
        value_target = torch.min(current_target, target_q)
    v = value(batch.states)
    return {"loss_value": F.mse_loss(v, value_target), "value": v.detach(), "value_target": value_target}


def a2pr_vae_loss(states: torch.Tensor, actions: torch.Tensor, *, vae: ActionVAE, q_data: torch.Tensor,
                  value: torch.Tensor, vae_weight: float, kl_weight: float,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The augmented behaviour policy's loss (Liu et al. 2024, Sec. 4.1, EPBL):
    ``mean(vae_weight * 1[A(s, a) > 0] * (VAE(s, a) - a)^2) + kl_weight * KL(q(z | s, a) || N(0, I))`` with
    ``A(s, a) = Q_1(s, a) - V(s)``; only the reconstruction is advantage-weighted, the KL is over all rows
    (official code).

    Args:
        states, actions: the batch, ``[B, S]`` and ``[B, A]``.
        q_data: ``Q_1(s, a)`` at the dataset actions, ``[B]`` (no gradient needed).
        value: ``V(s)``, ``[B]``.

    Returns ``loss_vae``, ``loss_recon``, ``loss_kl`` and ``positive_fraction`` (rows with ``A > 0``).
    """
    reconstruction, mean, std = vae(states, actions, generator=generator)
    positive = (q_data > value).to(actions.dtype)  # EPBL: only high-advantage behaviour is reproduced
    loss_recon = (vae_weight * positive[:, None] * (reconstruction - actions).square()).mean()
    loss_kl = -0.5 * (1.0 + torch.log(std.square()) - mean.square() - std.square()).mean()
    return {"loss_vae": loss_recon + kl_weight * loss_kl, "loss_recon": loss_recon, "loss_kl": loss_kl,
            "positive_fraction": positive.mean()}


def advantage_guided_targets(vae_actions: torch.Tensor, dataset_actions: torch.Tensor, q_vae: torch.Tensor,
                             q_data: torch.Tensor, value: torch.Tensor, *, mask: float) -> dict[str, torch.Tensor]:
    """The guide action and the regulariser's weight per row (Liu et al. 2024, Sec. 4.2).

    ``a_tilde = a_hat`` where ``A(s, a_hat) >= A(s, a)``, else the dataset action ``a``; weight ``mask *
    (1[Q(s, a_hat) >= V(s)] + 1[Q(s, a) > V(s)])`` (0, ``mask`` or ``2 mask``), as in the official code.

    Args:
        vae_actions: ``a_hat = VAE(s, pi(s))``, ``[B, A]``.
        dataset_actions: ``a``, ``[B, A]``.
        q_vae, q_data: ``Q_1(s, a_hat)`` and ``Q_1(s, a)``, ``[B]``.
        value: ``V(s)``, ``[B]``.

    Returns ``targets`` (``[B, A]``; carries ``vae_actions``' gradient where chosen), ``weights`` (``[B]``) and
    ``from_vae`` (``[B]`` bool).
    """
    from_vae = (q_vae - value) >= (q_data - value)
    targets = torch.where(from_vae[:, None], vae_actions, dataset_actions)
    weights = mask * ((q_vae >= value).to(q_vae.dtype) + (q_data > value).to(q_vae.dtype))
    return {"targets": targets, "weights": weights.detach(), "from_vae": from_vae}


def a2pr_actor_loss(states: torch.Tensor, dataset_actions: torch.Tensor, *, actor: nn.Module, critic: TwinCritic,
                    vae: ActionVAE, value: torch.Tensor, alpha: float, mask: float, generator: torch.Generator,
                    gradient_through_vae: bool = True) -> dict[str, torch.Tensor]:
    """A2PR's actor loss (Liu et al. 2024, Sec. 4.2; official ``A2PR.train``), the core rule:

    ``-lambda mean Q_1(s, pi(s)) + mean(mask (1[Q_1(s, a_hat) >= V] + 1[Q_1(s, a) > V]) ||pi(s) - a_tilde||^2)``,
    ``lambda = alpha / mean|Q_1(s, pi(s))|`` (TD3+BC's Eq. 4), ``a_hat = VAE(s, pi(s))`` and ``a_tilde`` the one of
    ``a_hat`` and ``a`` with the larger advantage (:func:`advantage_guided_targets`).

    Only ``actor``'s parameters should be trained by this loss: the caller freezes ``critic`` and ``vae``
    (:func:`~safetybed.control.algorithms.common.frozen`); the gradient still flows *through* them to ``pi(s)``.
    ``value`` is ``V(s)`` (``[B]``, no gradient).

    Returns ``loss_actor`` (the sum), ``loss_q``, ``loss_bc``, ``lambda``, ``guide_from_vae`` (fraction of rows
    guided by ``a_hat``) and ``guide_weight`` (mean weight).
    """
    pi = actor(states)
    terms = normalized_q_term(critic.first(states, pi), alpha=alpha)
    vae_actions, _, _ = vae(states, pi, generator=generator)
    if not gradient_through_vae:
        vae_actions = vae_actions.detach()
    with torch.no_grad():
        q_vae = critic.first(states, vae_actions)
        q_data = critic.first(states, dataset_actions)
    guide = advantage_guided_targets(vae_actions, dataset_actions, q_vae, q_data, value, mask=mask)
    terms["loss_bc"] = (guide["weights"][:, None] * (pi - guide["targets"]).square()).mean()
    terms["loss_actor"] = terms["loss_q"] + terms["loss_bc"]
    terms["guide_from_vae"] = guide["from_vae"].to(pi.dtype).mean()
    terms["guide_weight"] = guide["weights"].mean()
    return terms


# -- the learner ------------------------------------------------------------------------------------------------
class A2PR(TD3BC):
    """TD3+BC's actor, twin critics and targets (:class:`~safetybed.suite.common.td3_bc.TD3BC`) plus ``V(s)`` and
    the advantage-weighted VAE; each :meth:`update` trains critics, value, VAE and (every ``policy_delay``-th
    step) the actor with :func:`a2pr_actor_loss`."""

    def __init__(self, state_dim: int, action_dim: int, *, max_action: float, config: Config,
                 generator: torch.Generator):
        super().__init__(state_dim, action_dim, max_action=max_action, config=config.td3_bc, generator=generator)
        self.a2pr = config
        latent_dim = config.latent_dim or 2 * action_dim
        self.value = build_module(lambda: ValueNetwork(state_dim, hidden=config.value_hidden, activation="relu"),
                                  device=_CPU, generator=generator)
        self.vae = build_module(lambda: ActionVAE(state_dim, action_dim, latent_dim=latent_dim, max_action=max_action,
                                                  hidden=config.vae_hidden, log_std_bounds=config.log_std_bounds),
                                device=_CPU, generator=generator)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=config.value_learning_rate, fused=True)
        self.vae_optimizer = torch.optim.Adam(self.vae.parameters(), lr=config.vae_learning_rate, fused=True)

    def extra_update(self, batch: TransitionBatch, critic_terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = a2pr_value_loss(batch, value=self.value, critic=self.critic, next_actions=critic_terms["next_actions"],
                                target_q=critic_terms["target_q"], discount=self.config.discount)
        self.step(self.value_optimizer, terms["loss_value"])
        with torch.no_grad():
            q_data = self.critic.first(batch.states, batch.actions)
        vae_terms = a2pr_vae_loss(batch.states, batch.actions, vae=self.vae, q_data=q_data, value=terms["value"],
                                  vae_weight=self.a2pr.vae_weight, kl_weight=self.a2pr.kl_weight,
                                  generator=self.generator)
        self.step(self.vae_optimizer, vae_terms["loss_vae"])
        return terms | vae_terms

    def actor_terms(self, batch: TransitionBatch, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with frozen(self.vae):
            return a2pr_actor_loss(batch.states, batch.actions, actor=self.actor, critic=self.critic, vae=self.vae,
                                   value=terms["value"], alpha=self.config.alpha, mask=self.a2pr.mask,
                                   generator=self.generator, gradient_through_vae=self.a2pr.gradient_through_vae)


# -- demo -------------------------------------------------------------------------------------------------------
SCENARIO = "classic/pendulum"
#: Pendulum's torque bound [N m] (gymnasium's ``Box(-2, 2)``).
MAX_TORQUE_NM = 2.0
#: The claim's margin, as a fraction of the dataset's (expert - random) return gap.
MARGIN = 0.10


@dataclass(frozen=True)
class _DemoSize:
    steps: int
    random_episodes: int
    expert_episodes: int
    eval_episodes: int
    hidden: tuple[int, ...]
    datasets: tuple[str, ...]


_FAST = _DemoSize(steps=1200, random_episodes=14, expert_episodes=6, eval_episodes=5, hidden=(64, 64),
                  datasets=("mixed",))
_FULL = _DemoSize(steps=6000, random_episodes=35, expert_episodes=15, eval_episodes=10, hidden=(64, 64),
                  datasets=("mixed", "pure"))


def _datasets(size: _DemoSize, seed: int) -> dict[str, OfflineDataset]:
    expert = shipped_controller("pendulum_dsac_t")
    parts = {"mixed": [DatasetPart("builtin:random", size.random_episodes), DatasetPart(expert, size.expert_episodes)],
             "pure": [DatasetPart(expert, size.random_episodes + size.expert_episodes)]}
    # Parts k of one dataset run with seed data_seed + k; 10 apart keeps every run's episode seeds distinct.
    return {name: record_dataset(SCENARIO, parts=parts[name], seed=10 * seed + 5 * index)
            for index, name in enumerate(size.datasets)}


def _reference_returns(data: OfflineDataset) -> tuple[float, float]:
    """Mean episode return of the random and of the expert episodes of a mixed dataset."""
    random = np.array([c == "builtin:random" for c in data.episode_controllers])
    return float(data.episode_returns[random].mean()), float(data.episode_returns[~random].mean())


def claim_verdict(mixed_gain: float, pure_gain: float | None) -> str:
    """The verdict from the mean score gains of A2PR over TD3+BC: the mixed-data gain must reach ``MARGIN`` and the
    pure-data gain must not fall below ``-MARGIN``; both: reproduced, one: partly (also when the pure dataset was
    not run, ``pure_gain is None``, and the mixed one holds), none: not reproduced."""
    if pure_gain is None:
        return "partly" if mixed_gain >= MARGIN else "not reproduced"
    held = int(mixed_gain >= MARGIN) + int(pure_gain >= -MARGIN)
    return ("not reproduced", "partly", "reproduced")[held]


def demo(*, fast: bool, seed: int) -> DemoResult:
    """TD3+BC against A2PR on the mixed (and, in the full demo, the pure) Pendulum dataset; see the module
    docstring."""
    size = _FAST if fast else _FULL
    seeds = (seed,) if fast else tuple(seed + k for k in range(3))
    td3 = TD3BCConfig(hidden=size.hidden)
    a2pr = Config(td3_bc=td3, vae_hidden=size.hidden, value_hidden=size.hidden)
    returns: dict[tuple[str, str], list[float]] = {}
    scores: dict[tuple[str, str], list[float]] = {}
    steps_per_s: dict[str, list[float]] = {"td3_bc": [], "a2pr": []}
    for s in seeds:
        datasets = _datasets(size, s)
        random_return, expert_return = _reference_returns(datasets["mixed"])
        for name, data in datasets.items():
            transitions = ContinuousTransitions.from_dataset(data, max_action=MAX_TORQUE_NM)
            for method, learner_class, config in (("td3_bc", TD3BC, td3), ("a2pr", A2PR, a2pr)):
                start = time.perf_counter()
                learner = train_offline(learner_class, transitions, config=config, steps=size.steps, seed=s)
                steps_per_s[method].append(size.steps / (time.perf_counter() - start))
                # The same seeded start states for both methods: a paired comparison.
                result = float(evaluate_actor(learner.act, SCENARIO, episodes=size.eval_episodes,
                                              seed=10_000 + 100 * s).mean())
                returns.setdefault((method, name), []).append(result)
                scores.setdefault((method, name), []).append((result - random_return)
                                                             / (expert_return - random_return))

    def numbers(method: str) -> dict:
        out = {}
        for name in size.datasets:
            out[f"{name} score"] = measure(scores[(method, name)], unit="fraction of (expert - random) return gap")
            out[f"{name} return"] = measure(returns[(method, name)], unit="return")
        return out

    gains = {name: measure(np.subtract(scores[("a2pr", name)], scores[("td3_bc", name)]),
                           unit="fraction of (expert - random) return gap") for name in size.datasets}
    verdict = claim_verdict(gains["mixed"].mean, gains["pure"].mean if "pure" in gains else None)
    why = (f"A2PR - TD3+BC on mixed: {gains['mixed'].mean:+.2f} of the gap (needs >= {MARGIN})"
           + (f"; on pure: {gains['pure'].mean:+.2f} (needs >= -{MARGIN})" if "pure" in gains else
              "; pure dataset not run in --fast")
           + f"; {size.steps} gradient steps, {len(seeds)} seed(s); tried 2k-10k steps, mask 1.0 only")
    measured = numbers("a2pr") | {f"{name} gain over TD3+BC": gains[name] for name in size.datasets}
    return DemoResult(
        name="a2pr",
        claim=(f"On Pendulum with 70 % random + 30 % expert episodes A2PR's return exceeds TD3+BC's by >= "
               f"{MARGIN} of the (expert - random) gap at equal gradient steps, and on the expert-only data it is "
               f"no worse than TD3+BC by more than {MARGIN} of the gap."),
        measured=measured, baseline=numbers("td3_bc"), verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings={"scenario": SCENARIO, "gradient_steps": size.steps, "batch_size": td3.batch_size,
                  "hidden": list(size.hidden), "random_episodes": size.random_episodes,
                  "expert_episodes": size.expert_episodes, "pure_episodes": size.random_episodes
                  + size.expert_episodes, "eval_episodes": size.eval_episodes, "alpha": td3.alpha,
                  "mask": a2pr.mask, "vae_weight": a2pr.vae_weight, "datasets": list(size.datasets),
                  "steps_per_s": {m: float(np.mean(v)) for m, v in steps_per_s.items()}},
    )


ENTRY = SuiteEntry(name="a2pr", title="Adaptive Advantage-Guided Policy Regularization for Offline Reinforcement "
                   "Learning", citation="Liu et al. 2024", family="offline_rl", module=__name__,
                   rule=a2pr_actor_loss, demo=demo)
