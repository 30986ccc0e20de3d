"""SAC: soft actor-critic with twin Q networks and a learned temperature (the baseline for DSAC-T).

Haarnoja, Zhou, Hartikainen, Tucker, Ha, Tan, Kumar, Zhu, Gupta, Abbeel & Levine, "Soft Actor-Critic
Algorithms and Applications", arXiv 1812.05905, 2018: soft Q loss (§4.2), reparameterised policy loss
(§4.2), automatic temperature adjustment towards a target entropy of ``-dim(A)`` (§5); twin Q networks
with the minimum in the target (clipped double-Q, Fujimoto, van Hoof & Meger 2018).

Choices the paper leaves open (the same as :mod:`safetybed.control.algorithms.dsac_t`, so the two files
differ only in the algorithm): critic, actor and temperature update in sequence; uniform random actions
for the first ``learning_starts`` steps; raw observations in the replay buffer, normalised when sampled;
initial weights drawn from ``setup.cpu_generator``; every other draw from ``setup.generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from safetybed.control.algorithms.common import polyak_, require_integers
from safetybed.control.algorithms.offpolicy import SoftActorCritic, check_soft_actor_critic, train_off_policy
from safetybed.control.algorithms.replay import Batch
from safetybed.control.training import TrainResult, TrainSetup

#: Names of the terms ``update`` returns (see its docstring for when each is present).
LOSS_TERMS = ("loss_critic", "loss_critic_1", "loss_critic_2", "loss_actor", "loss_alpha", "alpha", "entropy",
              "q_mean", "target_q_mean")


@dataclass(frozen=True)
class Config:
    """SAC hyper-parameters; defaults follow Haarnoja et al. 2018 (Table 1 of arXiv 1812.05905) and SB3.

    Network sizes come from the controller spec's ``[network]`` (the paper uses 2x256 ReLU).
    """

    critic_learning_rate: float = 3e-4
    """Adam learning rate of the twin critics."""
    actor_learning_rate: float = 3e-4
    """Adam learning rate of the policy."""
    alpha_learning_rate: float = 3e-4
    """Adam learning rate of ``log alpha`` (temperature)."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    target_update_interval: int = 1
    """Update the target critics once every this many gradient updates."""
    batch_size: int = 256
    """Transitions per gradient update."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions (capped at the run's total environment steps)."""
    learning_starts: int = 5_000
    """Environment steps of uniform random actions before the first update (CleanRL's value)."""
    env_steps_per_round: int = 1
    """Environment steps (summed over the vector envs) collected between rounds of updates."""
    updates_per_round: int = 1
    """Gradient updates per round."""
    init_log_alpha: float = 0.0
    """Initial ``log alpha`` (``alpha_0 = 1``, as SB3's ``ent_coef="auto"``); the fixed value if not ``auto_alpha``."""
    auto_alpha: bool = True
    """Learn the temperature towards ``target_entropy``."""
    target_entropy: float | None = None
    """Target policy entropy [nats]; ``None`` means ``-dim(A)``."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before learning."""
    log_std_min: float = -20.0
    """Lower clamp of the policy's log-std (SB3)."""
    log_std_max: float = 2.0
    """Upper clamp of the policy's log-std (SB3)."""

    def __post_init__(self) -> None:
        check_soft_actor_critic(self)
        require_integers(self, ("target_update_interval",))


# -- the agent -------------------------------------------------------------------------------------------------
class SAC(SoftActorCritic):
    """Actor, twin critics, their targets and the temperature (:class:`SoftActorCritic`, one output per critic).

    Args: as :class:`~safetybed.control.algorithms.offpolicy.SoftActorCritic`; ``generator`` draws the
    policy noise.
    """

    def critic_means(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.critic1(obs, action)[..., 0], self.critic2(obs, action)[..., 0]

    # -- losses ------------------------------------------------------------------------------------------------
    def critic_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Soft Q loss ``sum_i 0.5 E[(Q_i(s, a) - y)^2]``, ``y = r + gamma (1 - d)(min_i Q_bar_i(s', a') - alpha log pi(a'|s'))``.

        ``a' ~ pi(.|s')`` is drawn from the *current* policy (Haarnoja et al. 2018, §4.2) with ``self.generator``.
        """
        cfg = self.config
        with torch.no_grad():
            next_action, next_log_prob = self.actor.sample(batch.next_obs, generator=self.generator)
            next_q = torch.minimum(self.critic1_target(batch.next_obs, next_action)[..., 0],
                                   self.critic2_target(batch.next_obs, next_action)[..., 0])  # clipped double-Q
            soft_value = next_q - self.alpha * next_log_prob  # V(s') = E[Q - alpha log pi] (soft value)
            target = cfg.reward_scale * batch.reward + cfg.gamma * (1.0 - batch.done) * soft_value
        q_1 = self.critic1(batch.obs, batch.action)[..., 0]
        q_2 = self.critic2(batch.obs, batch.action)[..., 0]
        loss_1 = 0.5 * (q_1 - target).pow(2).mean()
        loss_2 = 0.5 * (q_2 - target).pow(2).mean()
        return {"loss_critic": loss_1 + loss_2, "loss_critic_1": loss_1, "loss_critic_2": loss_2,
                "q_mean": 0.5 * (q_1.detach().mean() + q_2.detach().mean()), "target_q_mean": target.mean()}

    # -- one iteration ----------------------------------------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One SAC gradient update; returns detached loss terms.

        Always present: ``loss_critic``, ``loss_critic_1``, ``loss_critic_2``, ``q_mean``, ``target_q_mean``,
        ``loss_actor``, ``entropy``, ``alpha``; ``loss_alpha`` with ``auto_alpha``.
        """
        cfg = self.config
        terms = self.critic_loss(batch)
        self.critic_optimizer.zero_grad(set_to_none=True)
        terms["loss_critic"].backward()
        self.critic_optimizer.step()
        terms.update(self.update_actor_and_alpha(batch.obs))  # on the freshly updated critics
        if self.iteration % cfg.target_update_interval == 0:
            polyak_(self.critic1_target, self.critic1, cfg.tau)
            polyak_(self.critic2_target, self.critic2, cfg.tau)
        self.iteration += 1
        terms["alpha"] = self.alpha
        return {name: value.detach() for name, value in terms.items()}


# -- training loop ---------------------------------------------------------------------------------------------
def train(setup: TrainSetup, config: Config) -> TrainResult:
    """Train SAC on ``setup.scenario`` for ``setup.steps`` environment steps."""
    device = setup.device
    arch = setup.policy_arch("tanh_gaussian", log_std_min=config.log_std_min, log_std_max=config.log_std_max)
    agent = SAC(arch, config, device=device, generator=setup.generator, init_generator=setup.cpu_generator)
    return train_off_policy(setup, agent, arch=arch, config=config, loss_terms=LOSS_TERMS)
