"""DSAC-T (DSACv2): distributional soft actor-critic with three refinements.

Duan, Wang, Xiao, Gao, Li, Liu, Zhang, Cheng & Li, "Distributional Soft Actor-Critic with Three
Refinements", IEEE TPAMI 47(5):3935-3946, 2025 (arXiv 2310.05858). The loss is the paper form, as in the
official code before its 2025 Huber variant (``Jingliang-Duan/DSAC-v2``, ``dsac.py`` at 4707a52;
``research/centaur_dsac.md`` §2).

Each critic ``i`` models the soft return as ``Z_i(s, a) ~ N(Q_i(s, a), sigma_i(s, a)^2)``, with
``sigma = softplus(raw)``. The three refinements over DSAC (v1) are

1. *expected value substitution*: the mean is regressed on the expected target ``y_q`` (built from the
   target critics' means), the standard deviation on a sampled target ``y_z``;
2. *twin value distribution learning*: per sample, the target critic with the smaller mean supplies both
   ``y_q`` and ``y_z`` (the distributional form of clipped double-Q);
3. *variance-based critic gradient adjustment*: ``epsilon``-stabilised denominators, the loss scaled by
   ``b_bar^2 + epsilon`` where ``b_bar`` is a moving average of the batch-mean ``sigma``, and the sampled
   target clipped to ``Q +- clip_xi * b_bar``.

The actor, the temperature and all targets (both target critics *and a target policy*) move every
``delay_update`` critic updates.

Choices the paper leaves open (documented so they can be revisited):

* the critic and the actor update in sequence within an iteration (the actor loss sees the freshly
  updated critics); the official code computes every gradient before stepping any optimiser;
* the first ``learning_starts`` environment steps use uniform random actions (as SAC implementations do;
  the official sampler acts with the initial policy);
* the replay buffer stores *raw* observations; when ``[network] normalize_observations`` is on, batches
  are normalised with the current running statistics when sampled (as SB3 does with ``VecNormalize``),
  and the statistics are updated with every observation the vector env returns;
* network weights are drawn from ``setup.cpu_generator`` (PyTorch's default ``nn.Linear`` scheme), so the
  initial networks are a function of the seed alone, on CPU and CUDA alike;
* replay indices, policy noise and ``z_hat`` are drawn from ``setup.generator`` (on the training device).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from safetybed.control.algorithms.common import (
    polyak_,
    require,
    require_flags,
    require_integers,
    require_positive,
)
from safetybed.control.algorithms.offpolicy import SoftActorCritic, check_soft_actor_critic, train_off_policy
from safetybed.control.algorithms.replay import Batch
from safetybed.control.networks import PolicyArch, TwinQNetwork
from safetybed.control.training import TrainResult, TrainSetup

#: Names of the terms ``update`` returns (see its docstring for when each is present).
LOSS_TERMS = ("loss_critic", "loss_critic_1", "loss_critic_2", "loss_actor", "loss_alpha", "alpha", "entropy",
              "q_mean", "sigma_mean", "target_q_mean", "b_bar_1", "b_bar_2")


@dataclass(frozen=True)
class Config:
    """DSAC-T hyper-parameters. Defaults are the official MuJoCo settings (``centaur_dsac.md`` §2.5).

    Network sizes come from the controller spec's ``[network]`` (the paper uses 3x256 GELU for the actor
    and both critics).
    """

    critic_learning_rate: float = 1e-4
    """Adam learning rate of each critic."""
    actor_learning_rate: float = 1e-4
    """Adam learning rate of the policy."""
    alpha_learning_rate: float = 3e-4
    """Adam learning rate of ``log alpha`` (temperature)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target critics and the target policy (per delayed update)."""
    tau_b: float = 0.005
    """Moving-average rate of ``b_bar``, the running batch-mean of each critic's ``sigma``."""
    delay_update: int = 2
    """The actor, ``alpha`` and the targets update once every this many critic updates."""
    batch_size: int = 256
    """Transitions per gradient update."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions (capped at the run's total environment steps)."""
    learning_starts: int = 10_000
    """Environment steps of uniform random actions before the first update."""
    env_steps_per_round: int = 20
    """Environment steps (summed over the vector envs) collected between rounds of updates (official: 20)."""
    updates_per_round: int = 1
    """Gradient updates per round."""
    epsilon: float = 0.1
    """``epsilon`` ("bias") in the variance-adjusted critic loss: stabilises ``1/sigma^2``, ``1/sigma^3``."""
    clip_xi: float = 3.0
    """``xi``: the sampled target is clipped to ``Q +- xi * b_bar`` (3-sigma rule)."""
    z_clamp: float = 3.0
    """The standard-normal draw ``z_hat`` of the sampled target is clamped to ``+-z_clamp``."""
    init_log_alpha: float = 1.0
    """Initial ``log alpha`` (official code: 1.0, i.e. ``alpha_0 = e``); the fixed value if not ``auto_alpha``."""
    auto_alpha: bool = True
    """Learn the temperature towards ``target_entropy``."""
    target_entropy: float | None = None
    """Target policy entropy [nats]; ``None`` means ``-dim(A)``."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before learning (official default 1)."""
    log_std_min: float = -20.0
    """Lower clamp of the policy's log-std."""
    log_std_max: float = 0.5
    """Upper clamp of the policy's log-std (DSAC-T code: 0.5)."""
    target_policy: bool = True
    """Draw the next action of the critic target from the Polyak-averaged *target policy* (the paper and the
    official code); ``False`` draws it from the online policy, as SAC does (an ablation: ``safetybed bench train``'s
    ``target_policy`` knob)."""
    fused_critics: bool = False
    """Hold both critics (and both target critics) in one :class:`~safetybed.control.networks.TwinQNetwork`, so
    each layer is one batched matmul for both. Same initial weights and, up to float rounding, the same updates
    as two separate critics (tested); fewer kernel launches, which is what limits small networks on a GPU.
    Off by default: it changes the float rounding of every update, and its speed-up was measured on CPU only
    (``safetybed bench train --no-learning`` reports both; no GPU was available to this work)."""
    compile: bool = False
    """Run the critics through ``torch.compile`` (falls back to eager, with a note, if compilation fails).

    Off by default: on an H100 it made the short training loop slower (compile time, and recompiles when
    the actor loss freezes the critics); see ``safetybed bench train --compile``."""

    def __post_init__(self) -> None:
        check_soft_actor_critic(self)
        require_positive(self, ("epsilon", "clip_xi", "z_clamp"))
        require("tau_b", self.tau_b, 0 < self.tau_b <= 1, "in (0, 1]")
        require_integers(self, ("delay_update",))
        require_flags(self, ("compile", "fused_critics", "target_policy"))


# -- the agent -------------------------------------------------------------------------------------------------
class DSACT(SoftActorCritic):
    """Actor, twin distributional critics, their targets, a target policy and the temperature.

    The delayed updates (actor, temperature, targets) run when ``iteration % delay_update == 0``.

    Args: as :class:`~safetybed.control.algorithms.offpolicy.SoftActorCritic`; ``generator`` draws the
    policy noise and ``z_hat``.
    """

    #: Each critic outputs [mean, raw std] (Duan et al. 2025, §2.1 of the research note).
    critic_outputs = 2

    def __init__(self, arch: PolicyArch, config: Config, *, device: torch.device, generator: torch.Generator,
                 init_generator: torch.Generator):
        super().__init__(arch, config, device=device, generator=generator, init_generator=init_generator)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        #: b_bar_1, b_bar_2: moving averages of each critic's batch-mean sigma; set by the first batch.
        self.b_bar = torch.zeros(2, device=self.device)
        self.b_bar_initialised = False
        self.compile_note: str | None = None
        if config.fused_critics:
            # The separate critics built above fix the initial weights (same draws as unfused); the twin copies
            # them and replaces them, and the critic optimiser (no steps taken yet) moves to the twin.
            self.twin = TwinQNetwork.from_pair(self.critic1, self.critic2, activation=arch.activation)
            self.twin_target = TwinQNetwork.from_pair(self.critic1_target, self.critic2_target,
                                                      activation=arch.activation).requires_grad_(False)
            del self.critic1, self.critic2, self.critic1_target, self.critic2_target
            self.critic_optimizer = torch.optim.Adam(self.twin.parameters(), lr=config.critic_learning_rate)
            self._critics: dict[str, torch.nn.Module] = {"online": self.twin, "target": self.twin_target}
        else:
            self._critics = {"critic1": self.critic1, "critic2": self.critic2,
                             "critic1_target": self.critic1_target, "critic2_target": self.critic2_target}
        if config.compile:
            self._compile_critics(arch)

    def _compile_critics(self, arch: PolicyArch) -> None:
        compiled = {name: torch.compile(module) for name, module in self._critics.items()}
        try:  # compilation happens at the first call: try it now, on a throw-away batch
            obs = torch.zeros(2, arch.obs_dim, device=self.device)
            action = torch.zeros(2, arch.act_dim, device=self.device)
            for module in compiled.values():
                out = module(obs, action)
                if out.requires_grad:  # the online critics: compile their backward too
                    out.sum().backward()
        except Exception as error:  # any compiler failure means: run eager
            self.compile_note = f"torch.compile failed ({type(error).__name__}: {error}); running eager"
            return
        finally:
            self.critic_optimizer.zero_grad(set_to_none=True)
        self._critics = compiled
        self.compile_note = "critics compiled with torch.compile"

    def _distributions(self, which: str, obs: torch.Tensor, action: torch.Tensor
                       ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``((Q_1, Q_2), (sigma_1, sigma_2))`` of the ``"online"`` or ``"target"`` critics, ``sigma = softplus(raw)``."""
        if self.config.fused_critics:
            first, second = self._critics[which](obs, action).unbind(0)
        else:
            suffix = "_target" if which == "target" else ""
            first = self._critics[f"critic1{suffix}"](obs, action)
            second = self._critics[f"critic2{suffix}"](obs, action)
        return (first[..., 0], second[..., 0]), (F.softplus(first[..., 1]), F.softplus(second[..., 1]))

    def online_critics(self) -> tuple[torch.nn.Module, ...]:
        return (self.twin,) if self.config.fused_critics else (self.critic1, self.critic2)

    def critic_means(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._distributions("online", obs, action)[0]

    # -- losses ------------------------------------------------------------------------------------------------
    def critic_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The DSAC-T critic loss ``L_1 + L_2`` (paper form) and its parts.

        Side effect: updates ``b_bar`` with this batch *before* using it (official order). Random draws,
        all from ``self.generator`` and in this order: the target policy's noise ``[batch, act_dim]``, then
        ``z_hat`` for target critic 1 ``[batch]``, then for target critic 2 ``[batch]``.
        """
        cfg = self.config
        alpha = self.alpha
        with torch.no_grad():
            # The next action comes from the *target* policy (Duan et al. 2025; DSAC-T code, centaur_dsac §2.2).
            next_policy = self.actor_target if cfg.target_policy else self.actor
            next_action, next_log_prob = next_policy.sample(batch.next_obs, generator=self.generator)
            (next_mean_1, next_mean_2), (next_std_1, next_std_2) = self._distributions(
                "target", batch.next_obs, next_action)
            z_hat_1 = self._standard_normal(next_mean_1).clamp(-cfg.z_clamp, cfg.z_clamp)
            z_hat_2 = self._standard_normal(next_mean_2).clamp(-cfg.z_clamp, cfg.z_clamp)
            next_sample_1 = next_mean_1 + z_hat_1 * next_std_1  # Z_hat_i ~ N(Q_bar_i, sigma_bar_i^2)
            next_sample_2 = next_mean_2 + z_hat_2 * next_std_2
            # Twin value distribution learning: the target critic with the smaller mean gives both targets.
            next_mean = torch.minimum(next_mean_1, next_mean_2)
            next_sample = torch.where(next_mean_1 < next_mean_2, next_sample_1, next_sample_2)
            reward = cfg.reward_scale * batch.reward
            bootstrap = cfg.gamma * (1.0 - batch.done)
            # Expected value substitution: y_q (expected) drives the mean, y_z (sampled) the variance.
            target_mean = reward + bootstrap * (next_mean - alpha * next_log_prob)
            target_sample = reward + bootstrap * (next_sample - alpha * next_log_prob)

        (mean_1, mean_2), (std_1, std_2) = self._distributions("online", batch.obs, batch.action)
        self._update_b_bar(torch.stack([std_1.detach().mean(), std_2.detach().mean()]))
        loss_1 = self.variance_adjusted_loss(mean_1, std_1, target_mean, target_sample, self.b_bar[0])
        loss_2 = self.variance_adjusted_loss(mean_2, std_2, target_mean, target_sample, self.b_bar[1])
        return {"loss_critic": loss_1 + loss_2, "loss_critic_1": loss_1, "loss_critic_2": loss_2,
                "q_mean": 0.5 * (mean_1.detach().mean() + mean_2.detach().mean()),
                "sigma_mean": 0.5 * (std_1.detach().mean() + std_2.detach().mean()),
                "target_q_mean": target_mean.mean(), "b_bar_1": self.b_bar[0], "b_bar_2": self.b_bar[1]}

    def _standard_normal(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def _update_b_bar(self, batch_std_mean: torch.Tensor) -> None:
        """``b_bar <- (1 - tau_b) b_bar + tau_b mean(sigma)``, initialised to the first batch's mean."""
        if not self.b_bar_initialised:
            self.b_bar = batch_std_mean.clone()
            self.b_bar_initialised = True
        else:  # a new tensor, so values handed out earlier stay as they were
            self.b_bar = torch.lerp(self.b_bar, batch_std_mean, self.config.tau_b)

    def variance_adjusted_loss(self, mean: torch.Tensor, std: torch.Tensor, target_mean: torch.Tensor,
                                target_sample: torch.Tensor, b_bar: torch.Tensor) -> torch.Tensor:
        """Surrogate whose gradient is the DSAC-T critic gradient (variance-based gradient adjustment):

        ``(b^2 + eps) E[-(y_q - Q)/(s^2 + eps) grad Q - ((y_z^clip - Q)^2 - s^2)/(s^3 + eps) grad sigma]``
        with ``s = max(sigma, 0)`` held constant and ``y_z^clip = Q + clip(y_z - Q, -xi b, xi b)``.
        """
        cfg = self.config
        mean_const = mean.detach()
        std_const = std.detach().clamp(min=0.0)
        # Adaptive clipping boundary: xi * b_bar (the moving average, not the per-sample sigma).
        bound = cfg.clip_xi * b_bar
        target_clipped = mean_const + (target_sample - mean_const).clamp(-bound, bound)
        mean_weight = (target_mean - mean_const) / (std_const.pow(2) + cfg.epsilon)
        std_weight = ((mean_const - target_clipped).pow(2) - std_const.pow(2)) / (std_const.pow(3) + cfg.epsilon)
        # omega = b_bar^2 + eps rescales the gradient so its size does not depend on the return's scale.
        return (b_bar.pow(2) + cfg.epsilon) * (-mean_weight * mean - std_weight * std).mean()

    # -- one iteration ----------------------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One DSAC-T iteration; returns detached loss terms.

        Always present: ``loss_critic``, ``loss_critic_1``, ``loss_critic_2``, ``q_mean``, ``sigma_mean``,
        ``target_q_mean``, ``b_bar_1``, ``b_bar_2``, ``alpha``. On delayed iterations only (when the actor
        moves): ``loss_actor``, ``entropy`` and, with ``auto_alpha``, ``loss_alpha``.
        """
        cfg = self.config
        terms = self.critic_loss(batch)
        self.critic_optimizer.zero_grad(set_to_none=True)
        terms["loss_critic"].backward()
        self.critic_optimizer.step()

        if self.iteration % cfg.delay_update == 0:  # delayed policy / temperature / target updates
            terms.update(self.update_actor_and_alpha(batch.obs))  # on the freshly updated critics
            if cfg.fused_critics:
                polyak_(self.twin_target, self.twin, cfg.tau)
            else:
                polyak_(self.critic1_target, self.critic1, cfg.tau)
                polyak_(self.critic2_target, self.critic2, cfg.tau)
            polyak_(self.actor_target, self.actor, cfg.tau)
        self.iteration += 1
        terms["alpha"] = self.alpha
        return {name: value.detach() for name, value in terms.items()}


# -- training loop ---------------------------------------------------------------------------------------------
def train(setup: TrainSetup, config: Config) -> TrainResult:
    """Train DSAC-T on ``setup.scenario`` for ``setup.steps`` environment steps."""
    device = setup.device
    arch = setup.policy_arch("tanh_gaussian", log_std_min=config.log_std_min, log_std_max=config.log_std_max)
    agent = DSACT(arch, config, device=device, generator=setup.generator, init_generator=setup.cpu_generator)
    return train_off_policy(setup, agent, arch=arch, config=config, loss_terms=LOSS_TERMS)
