"""On-policy Mirror Descent Policy Optimization (Tomar, Shani, Efroni & Ghavamzadeh, ICLR 2022).

Each iteration ``k`` (1-based) collects a rollout with ``pi_k``, then takes ``m`` full-batch Adam steps on

    J(theta) = E[ pi_theta(a|s) / pi_k(a|s) * A_hat ] - (1 / t_k) E_s[ KL(pi_theta(.|s) || pi_k(.|s)) ]

(the paper's eq. 11 / the official ``mdpo_on/mdpo.py`` "multistep-SGD" objective), with standardised GAE
advantages and the step size ``t_k = 1 - (k - 1) / K`` over ``K`` iterations, so the KL weight grows as
training proceeds. The KL is in closed form: diagonal Gaussians (state-independent log-std) or
categoricals. The value function is fitted afterwards with a clipped loss, ``value_epochs`` passes of
minibatches of 128. Everything follows ``research/centaur_dsac.md`` §3.1 (the official code, HEAD c9bd3ba).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from safetybed.control.algorithms.common import require, require_flags, require_integers, require_positive
from safetybed.control.algorithms.onpolicy import train_on_policy
from safetybed.control.algorithms.rollout import RolloutBatch, action_distribution
from safetybed.control.networks import Policy, ValueNetwork
from safetybed.control.training import TrainResult, TrainSetup


@dataclass(frozen=True)
class Config:
    """On-policy MDPO hyper-parameters; defaults are the official code's (``mdpo_on/run_mujoco.py``)."""

    n_steps: int = 2048
    """Environment steps collected from *each* env per iteration (``timesteps_per_batch`` = 2048)."""
    policy_steps: int = 10
    """``m``: full-batch Adam steps on the MDPO objective per iteration (README ``--sgd_steps=10``)."""
    learning_rate: float = 3e-4
    """Adam step size for the policy and the value function (the code's constant ``outer_learning_rate``)."""
    adam_eps: float = 1e-5
    """Adam epsilon of the policy optimiser (the value optimiser keeps 1e-8, as the code's ``MpiAdam``)."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip of each policy step (``tf.clip_by_global_norm(grads, 0.5)``)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    value_epochs: int = 5
    """Passes of the value function over each rollout (``vf_iters`` = 5)."""
    value_batch_size: int = 128
    """Value minibatch size; a final partial minibatch is dropped, as in the code."""
    clip_range_value: float = 0.2
    """Clip of ``V - V_old`` in the value loss ``max((V - R)^2, (V_clip - R)^2)`` (``cliprange_vf``)."""
    normalize_rewards: bool = True
    """Scale rewards by a running std of the discounted return (the code's ``VecNormalize``)."""

    def __post_init__(self) -> None:
        require_integers(self, ("n_steps", "policy_steps", "value_epochs", "value_batch_size"))
        require_positive(self, ("learning_rate", "adam_eps", "max_grad_norm", "clip_range_value"))
        require("gamma", self.gamma, 0 < self.gamma <= 1, "in (0, 1]")
        require("gae_lambda", self.gae_lambda, 0 <= self.gae_lambda <= 1, "in [0, 1]")
        require_flags(self, ("normalize_rewards",))


def step_size(k: int, iterations: int) -> float:
    """``t_k = 1 - (k - 1) / K`` for iteration ``k`` in ``1..K``: 1 at the start, ``1/K`` at the end.

    The official code evaluates ``1 - (iters_so_far - 1) / K`` with a 0-based ``iters_so_far``, i.e.
    ``1 + 1/K`` at the first iteration; we use the 1-based form stated in the brief and research notes.
    """
    if iterations < 1 or not 1 <= k <= iterations:
        raise ValueError(f"k: expected 1 <= k <= iterations = {iterations}, got {k}")
    return 1.0 - (k - 1) / iterations


def kl_new_old(policy: Policy, old_policy: Policy, obs: torch.Tensor) -> torch.Tensor:
    """Per-state ``KL(pi_theta(.|s) || pi_k(.|s))`` in closed form (gradient flows into ``policy`` only)."""
    if policy.arch.kind == "categorical":
        log_p = torch.log_softmax(policy.net(obs), dim=-1)
        with torch.no_grad():
            log_q = torch.log_softmax(old_policy.net(obs), dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    mean, log_std = policy.mean_log_std(obs)
    with torch.no_grad():
        old_mean, old_log_std = old_policy.mean_log_std(obs)
    # KL(N(m1, s1^2) || N(m0, s0^2)) = log(s0/s1) + (s1^2 + (m1 - m0)^2) / (2 s0^2) - 1/2, summed over dims.
    return (old_log_std - log_std
            + ((2 * log_std).exp() + (mean - old_mean).pow(2)) / (2 * (2 * old_log_std).exp()) - 0.5).sum(-1)


class MDPOOn:
    """On-policy MDPO: ``update`` runs one whole iteration (``m`` policy steps, value epochs, ``pi_k <- pi``).

    The rollout of each iteration comes from ``pi_k``: ``policy`` equals ``old_policy`` between updates.
    """

    def __init__(self, policy: Policy, value: ValueNetwork, *, config: Config, iterations: int,
                 rng: np.random.Generator):
        if iterations < 1:
            raise ValueError(f"iterations: expected >= 1, got {iterations}")
        self.policy, self.value, self.config = policy, value, config
        self.iterations, self.k = iterations, 1
        self.rng = rng
        self.old_policy = copy.deepcopy(policy).requires_grad_(False)
        self.policy_optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate, eps=config.adam_eps)
        self.value_optimizer = torch.optim.Adam(value.parameters(), lr=config.learning_rate)
        #: Policy gradient steps taken so far (``m`` per iteration).
        self.updates = 0

    @property
    def t_k(self) -> float:
        return step_size(min(self.k, self.iterations), self.iterations)

    def policy_losses(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """``loss_policy = -J(theta)`` and the mean ``kl`` (with graph into the policy)."""
        advantages = batch.advantages
        advantages = (advantages - advantages.mean()) / (advantages.std(unbiased=False) + 1e-8)
        ratio = (action_distribution(self.policy, batch.obs).log_prob(batch.actions) - batch.log_probs).exp()
        kl = kl_new_old(self.policy, self.old_policy, batch.obs).mean()
        loss_policy = -((ratio * advantages).mean() - kl / self.t_k)
        return {"loss_policy": loss_policy, "kl": kl}

    def value_loss(self, batch: RolloutBatch) -> torch.Tensor:
        """Clipped value loss ``mean(max((V - R)^2, (V_old + clip(V - V_old) - R)^2))`` (no factor 1/2, as the code)."""
        predicted = self.value(batch.obs)
        clipped = batch.values + (predicted - batch.values).clamp(-self.config.clip_range_value,
                                                                  self.config.clip_range_value)
        return torch.max((predicted - batch.returns).pow(2), (clipped - batch.returns).pow(2)).mean()

    def update(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        """One MDPO iteration on a full rollout; returns the terms after the policy steps."""
        t_k = self.t_k
        for _ in range(self.config.policy_steps):
            terms = self.policy_losses(batch)
            self.policy_optimizer.zero_grad(set_to_none=True)
            terms["loss_policy"].backward()
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.max_grad_norm)
            self.policy_optimizer.step()
        with torch.no_grad():
            terms = self.policy_losses(batch)
            entropy = action_distribution(self.policy, batch.obs).entropy().mean()
        value_losses = []
        size = batch.obs.shape[0]
        for _ in range(self.config.value_epochs):
            order = self.rng.permutation(size)
            for start in range(0, size - self.config.value_batch_size + 1, self.config.value_batch_size):
                index = torch.as_tensor(order[start:start + self.config.value_batch_size], device=batch.obs.device)
                loss_value = self.value_loss(RolloutBatch(*(field[index] for field in batch)))
                self.value_optimizer.zero_grad(set_to_none=True)
                loss_value.backward()
                self.value_optimizer.step()
                value_losses.append(loss_value.detach())
        self.old_policy.load_state_dict(self.policy.state_dict())
        self.k += 1
        self.updates += self.config.policy_steps
        return {"loss_policy": terms["loss_policy"], "kl": terms["kl"],
                "loss_value": torch.stack(value_losses).mean(), "t_k": torch.tensor(t_k), "entropy": entropy}

    def learn(self, rollout: RolloutBatch) -> dict[str, torch.Tensor]:
        """The on-policy loop's hook: each rollout is one iteration, i.e. one ``update``."""
        return self.update(rollout)


def train(setup: TrainSetup, config: Config) -> TrainResult:
    """Train with on-policy MDPO in ``setup``'s scenario for at least ``setup.steps`` env steps."""
    return train_on_policy(setup, config, batch_field="value_batch_size",
                           make_agent=lambda policy, value, iterations: MDPOOn(
                               policy, value, config=config, iterations=iterations, rng=setup.rng.spawn(1)[0]))
