"""A one-step linear task on which the policy-smoothing bound is attained exactly: an analytic oracle.

``research/policy_smoothing.md`` §1(c) and §3.3(1): the controller observes a fixed point ``x0``, adds its
smoothing noise ``xi ~ N(0, sigma^2 I)``, and takes action 1 ("success", reward 1) iff ``w . (x0 + delta + xi)
> 0``, else action 0 (reward 0); the episode ends after that one step. Then::

    P[success | delta] = Phi( w . (x0 + delta) / (sigma ||w||) )

so the clean smoothed value is ``p = Phi(w . x0 / (sigma ||w||))``, and the best ℓ2 adversary with budget
``B`` puts all of it against ``w``, ``delta* = -B w / ||w||``, reaching exactly::

    P[success | delta*] = Phi( Phi^-1(p) - B / sigma )

which is the Gaussian Neyman-Pearson bound (Cohen, Rosenfeld & Kolter 2019; Kumar, Levine & Feizi 2022,
eq. (1) of the notes) with equality. An attack that measures less than this has a bug (or the bound has); an
attack that measures more is sub-optimal here. The notes' reference run: ``p = 0.8850``, ``B/sigma = 0.8``,
attacked ``0.6561`` against the bound ``0.6555``.

Example::

    toy = LinearToy.from_clean_probability(0.885, sigma=0.5)
    toy.attacked_value(budget=0.4)                    # Phi(Phi^-1(0.885) - 0.8) = 0.6556
    policy, obs_norm = toy.policy()
    attack_episodes(policy=policy, obs_norm=obs_norm, scenario=toy.make_env, sigma=toy.sigma, budget=0.4,
                    episodes=4000, seed=0, spend_rule="fraction", spend_fraction=1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from scipy import special

from safetybed.control.networks import ObsNormalizer, Policy, PolicyArch


class LinearToyEnv(gym.Env):
    """One step: observe the fixed ``observation``; action 1 earns reward 1, action 0 earns 0; then done.

    The env itself is deterministic (all randomness is the controller's smoothing noise); ``reset(seed=...)``
    is accepted for the gymnasium contract. ``return_range = (0, 1)``.
    """

    metadata = {"render_modes": []}

    def __init__(self, *, observation: Sequence[float]):
        point = np.asarray(observation, dtype=np.float32)
        if point.ndim != 1 or point.size < 1 or not np.all(np.isfinite(point)):
            raise ValueError(f"observation: expected a finite 1-d vector, got {observation!r}")
        self.point = point
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=point.shape, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.return_range = (0.0, 1.0)
        self._done: bool | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._done = False
        return self.point.copy(), {}

    def step(self, action: Any):
        if self._done is None or self._done:
            raise RuntimeError("step() called outside an episode; call reset(seed=...) first")
        if not self.action_space.contains(action):
            raise ValueError(f"action: expected 0 or 1 (Discrete(2)), got {action!r}")
        self._done = True
        return self.point.copy(), float(action == 1), True, False, {}


@dataclass(frozen=True)
class LinearToy:
    """The task's parameters and its exact values.

    Attributes:
        weights: ``w``, the normal of the base policy's decision boundary (observation units^-1).
        observation: ``x0``, the fixed observation [observation units].
        sigma: the smoothing noise standard deviation [observation units].
    """

    weights: tuple[float, ...]
    observation: tuple[float, ...]
    sigma: float

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.observation) or not self.weights:
            raise ValueError(f"weights and observation: expected equal non-zero lengths, got "
                             f"{len(self.weights)} and {len(self.observation)}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma: expected a finite value > 0, got {self.sigma}")
        if not np.linalg.norm(self.weights) > 0:
            raise ValueError("weights: expected a non-zero vector")

    @classmethod
    def from_clean_probability(cls, probability: float, *, sigma: float,
                               weights: Sequence[float] = (0.6, -0.8)) -> LinearToy:
        """The toy whose clean smoothed success probability is ``probability``: ``x0 = sigma Phi^-1(p) w/||w||``."""
        if not 0 < probability < 1:
            raise ValueError(f"probability: expected a value in (0, 1), got {probability}")
        unit = np.asarray(weights, dtype=float) / np.linalg.norm(weights)
        point = sigma * special.ndtri(probability) * unit
        return cls(weights=tuple(float(w) for w in weights), observation=tuple(float(x) for x in point),
                   sigma=float(sigma))

    @property
    def _unit(self) -> np.ndarray:
        return np.asarray(self.weights, dtype=float) / np.linalg.norm(self.weights)

    @property
    def _margin(self) -> float:
        """Signed distance of ``x0`` from the decision boundary, in units of sigma (``Phi^-1(p)``).

        Measured from the float32 observation the env emits, so the exact values match what is simulated.
        """
        point = np.asarray(self.observation, dtype=np.float32).astype(float)
        return float(self._unit @ point / self.sigma)

    def clean_value(self) -> float:
        """Exact clean smoothed success probability ``Phi(w . x0 / (sigma ||w||))``."""
        return float(special.ndtr(self._margin))

    def optimal_attack(self, budget: float) -> np.ndarray:
        """The optimal perturbation ``-budget w / ||w||`` [observation units]."""
        if not (math.isfinite(budget) and budget >= 0):
            raise ValueError(f"budget: expected a finite value >= 0, got {budget}")
        return -budget * self._unit

    def attacked_value(self, budget: float) -> float:
        """Exact success probability under the optimal attack: ``Phi(Phi^-1(p) - budget / sigma)``."""
        if not (math.isfinite(budget) and budget >= 0):
            raise ValueError(f"budget: expected a finite value >= 0, got {budget}")
        return float(special.ndtr(self._margin - budget / self.sigma))

    def make_env(self) -> LinearToyEnv:
        return LinearToyEnv(observation=self.observation)

    def policy(self) -> tuple[Policy, ObsNormalizer]:
        """The linear base policy as a categorical :class:`Policy`: logits ``(0, w . o)``, no normalisation."""
        dim = len(self.weights)
        policy = Policy(PolicyArch(kind="categorical", obs_dim=dim, act_dim=2, hidden=()))
        with torch.no_grad():
            (layer,) = policy.net
            layer.weight.zero_()
            layer.weight[1] = torch.as_tensor(self.weights, dtype=torch.float32)
            layer.bias.zero_()
        return policy.eval(), ObsNormalizer(dim, enabled=False)
