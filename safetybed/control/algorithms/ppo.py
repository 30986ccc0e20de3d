"""PPO-clip (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv 1707.06347).

Discrete actions use a categorical policy, Box actions a diagonal Gaussian with a state-independent
log-std; the value function is a separate network. Per iteration: collect ``n_steps`` steps from every
env, compute GAE(gamma, lambda) (:mod:`~safetybed.control.algorithms.rollout`), then ``epochs`` passes of
shuffled minibatches on

    L = -E[min(r A, clip(r, 1 - eps, 1 + eps) A)] - ent_coef H[pi] + vf_coef 0.5 E[(V - R)^2]    (eq. 7, 9)

with ``r = pi(a|s) / pi_old(a|s)``. Defaults follow CleanRL's ``ppo_continuous_action.py`` and SB3's PPO
(which agree on all but ``n_steps``/``batch_size``: 2048 / 32 minibatches = SB3's 64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from safetybed.control.algorithms.common import require, require_flags, require_integers, require_positive
from safetybed.control.algorithms.onpolicy import train_on_policy
from safetybed.control.algorithms.rollout import RolloutBatch, action_distribution, minibatch_indices
from safetybed.control.networks import Policy, ValueNetwork
from safetybed.control.training import TrainResult, TrainSetup


@dataclass(frozen=True)
class Config:
    """PPO hyper-parameters (``[hyper]`` of a controller spec)."""

    n_steps: int = 2048
    """Environment steps collected from *each* env per iteration (SB3 2048; CleanRL's Atari/discrete 128)."""
    minibatches: int = 32
    """Minibatches per epoch; the batch of ``n_steps * envs`` samples is split evenly (CleanRL ``num_minibatches``)."""
    epochs: int = 10
    """Passes over each rollout (``K`` in Schulman et al. 2017, Table 3: 10)."""
    learning_rate: float = 3e-4
    """Adam step size for policy and value together (Schulman et al. 2017, Table 3)."""
    anneal_learning_rate: bool = False
    """Decay the step size linearly to 0 over training (CleanRL ``anneal_lr``; SB3 keeps it constant)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda (Schulman et al. 2016)."""
    clip_range: float = 0.2
    """epsilon of the clipped ratio ``clip(r, 1 - eps, 1 + eps)``."""
    clip_range_value: float | None = None
    """Clip ``V - V_old`` to +-this in the value loss (CleanRL ``clip_vloss``); ``None`` = plain squared error (SB3)."""
    normalize_advantages: bool = True
    """Standardise advantages per minibatch (both CleanRL and SB3)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus (0 for continuous control in CleanRL/SB3; 0.01 for CleanRL's Atari)."""
    vf_coef: float = 0.5
    """Weight of the value loss ``0.5 E[(V - R)^2]`` in the total loss."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip over policy and value parameters."""
    target_kl: float | None = None
    """Stop an iteration's epochs early once the approximate KL exceeds this (``None``: never)."""
    adam_eps: float = 1e-5
    """Adam epsilon (CleanRL and the OpenAI baselines use 1e-5, not torch's 1e-8)."""
    normalize_rewards: bool = False
    """Scale rewards by a running std of the discounted return (SB3 ``VecNormalize(norm_reward=True)``)."""

    def __post_init__(self) -> None:
        require_integers(self, ("n_steps", "minibatches", "epochs"))
        require_positive(self, ("learning_rate", "clip_range", "max_grad_norm", "adam_eps"))
        require("gamma", self.gamma, 0 < self.gamma <= 1, "in (0, 1]")
        require("gae_lambda", self.gae_lambda, 0 <= self.gae_lambda <= 1, "in [0, 1]")
        for name in ("clip_range_value", "target_kl"):
            value = getattr(self, name)
            require(name, value, value is None or value > 0, "> 0 or None")
        require("ent_coef", self.ent_coef, self.ent_coef >= 0, ">= 0")
        require("vf_coef", self.vf_coef, self.vf_coef >= 0, ">= 0")
        require_flags(self, ("anneal_learning_rate", "normalize_advantages", "normalize_rewards"))


class PPO:
    """The PPO-clip losses, one Adam step on a minibatch (``update``) and one iteration on a rollout (``learn``).

    Args:
        policy, value: the networks, trained together by one Adam.
        config: hyper-parameters.
        iterations: how many rollouts training will see (the horizon of ``anneal_learning_rate``).
        rng: shuffles each epoch's minibatches; ``learn`` needs it, ``losses`` and ``update`` do not.
    """

    def __init__(self, policy: Policy, value: ValueNetwork, *, config: Config, iterations: int = 1,
                 rng: np.random.Generator | None = None):
        if iterations < 1:
            raise ValueError(f"iterations: expected >= 1, got {iterations}")
        self.policy, self.value, self.config = policy, value, config
        self.iterations, self.rng = iterations, rng
        self.parameters = [*policy.parameters(), *value.parameters()]
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.learning_rate, eps=config.adam_eps)
        #: Rollouts learned from so far, and minibatch updates (Adam steps) taken so far.
        self.iteration = self.updates = 0

    def set_learning_rate(self, learning_rate: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate

    def losses(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """Named loss terms of one minibatch (with graph); ``loss_total`` is what ``update`` minimises."""
        config = self.config
        distribution = action_distribution(self.policy, batch.obs)
        log_ratio = distribution.log_prob(batch.actions) - batch.log_probs
        ratio = log_ratio.exp()
        advantages = batch.advantages
        if config.normalize_advantages and advantages.numel() > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        # Clipped surrogate, Schulman et al. 2017 eq. 7 (negated: we minimise).
        clipped_ratio = ratio.clamp(1.0 - config.clip_range, 1.0 + config.clip_range)
        loss_policy = -torch.min(ratio * advantages, clipped_ratio * advantages).mean()
        entropy = distribution.entropy().mean()
        predicted = self.value(batch.obs)
        squared_error = (predicted - batch.returns).pow(2)
        if config.clip_range_value is not None:
            clipped = batch.values + (predicted - batch.values).clamp(-config.clip_range_value,
                                                                      config.clip_range_value)
            squared_error = torch.max(squared_error, (clipped - batch.returns).pow(2))
        loss_value = 0.5 * squared_error.mean()
        loss_total = loss_policy - config.ent_coef * entropy + config.vf_coef * loss_value
        with torch.no_grad():
            # Low-variance estimator of KL(old || new) (Schulman, "Approximating KL divergence", 2020).
            approx_kl = ((ratio - 1.0) - log_ratio).mean()
            clip_fraction = ((ratio - 1.0).abs() > config.clip_range).float().mean()
        return {"loss_policy": loss_policy, "loss_value": loss_value, "entropy": entropy,
                "approx_kl": approx_kl, "clip_fraction": clip_fraction, "loss_total": loss_total}

    def update(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """One clipped-gradient Adam step on ``loss_total``; returns the (detached) terms before the step."""
        terms = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss_total"].backward()
        nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.optimizer.step()
        return {name: value.detach() for name, value in terms.items()}


    def learn(self, rollout: RolloutBatch) -> dict[str, torch.Tensor]:
        """``epochs`` passes of shuffled minibatches over one rollout (Schulman et al. 2017, Algorithm 1: ``K``
        epochs of minibatch SGD), fewer once the approximate KL passes ``target_kl``.

        Returns the terms of the last minibatch.
        """
        config = self.config
        if self.rng is None:
            raise ValueError("learn: PPO needs rng= (it shuffles the minibatches)")
        if config.anneal_learning_rate:
            self.set_learning_rate(config.learning_rate * (1.0 - self.iteration / self.iterations))
        size = rollout.obs.shape[0]
        terms: dict[str, torch.Tensor] = {}
        for _ in range(config.epochs):
            for indices in minibatch_indices(size, config.minibatches, self.rng):
                index = torch.as_tensor(indices, device=rollout.obs.device)
                terms = self.update(RolloutBatch(*(field[index] for field in rollout)))
                self.updates += 1
            if config.target_kl is not None and float(terms["approx_kl"]) > config.target_kl:
                break
        self.iteration += 1
        return terms


def train(setup: TrainSetup, config: Config) -> TrainResult:
    """Train a PPO policy in ``setup``'s scenario for at least ``setup.steps`` env steps."""
    return train_on_policy(setup, config, batch_field="minibatches",
                           make_agent=lambda policy, value, iterations: PPO(
                               policy, value, config=config, iterations=iterations, rng=setup.rng))
