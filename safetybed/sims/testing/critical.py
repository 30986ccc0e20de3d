"""What every importance-sampling tester sees at a decision step, and the proposals that act on it.

A *tester* (the known-answer testbed in :mod:`safetybed.evaluate.testbed`, or the highway tester in
:mod:`safetybed.evaluate.highway`) describes each candidate background vehicle at a 1 Hz decision by a
:class:`CriticalContext`: its naturalistic pmf ``p(u | s)`` over the action set, the maneuver challenge of every
action under each of ``m`` surrogate ego models, a feature vector (the D2RL observation) and a discretised state
key (for AdaTE's tabular target). A :class:`Proposal` turns the context of the principal other vehicle (POV) into
the importance component ``q~(u | s)`` and the defensive weight ``epsilon``; the tester then draws the POV's action
from the defensive mixture (Owen 2013; Feng et al. 2021, NADE, ``research/cav_eval.md`` §1 item 4)::

    q(u | s) = (1 - epsilon) * q~(u | s) + epsilon * p(u | s)

and logs ``p(u_t)``, ``q~(u_t)`` and ``epsilon`` of the sampled action (a :class:`CriticalStep`). A step whose
POV criticality is 0 is not critical: the vehicle samples from ``p`` and the step's likelihood ratio is 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class CriticalContext:
    """One candidate background vehicle at one decision step.

    ``p``: naturalistic pmf over the action set, shape ``(A,)``.
    ``challenge``: shape ``(m, A)``; ``challenge[j, u]`` in [0, 1] is the probability that surrogate ego ``j``
    crashes after the vehicle takes action ``u`` (NADE's "maneuver challenge"); row 0 is NADE's own surrogate.
    ``features``: the D2RL observation of this step (float vector, roughly in [-1, 1]).
    ``state_key``: a hashable discretised state (AdaTE's tabular target ``c*(s, u)`` is indexed by it and ``u``).
    ``log_weight_so_far``: log of the test's likelihood ratio up to (not including) this step.
    """

    p: np.ndarray
    challenge: np.ndarray
    features: np.ndarray
    state_key: Any
    log_weight_so_far: float = 0.0


@dataclass(frozen=True)
class Decision:
    """What a proposal decided for one context: ``q_tilde`` (shape ``(A,)``, sums to 1) and ``epsilon`` in (0, 1]."""

    q_tilde: np.ndarray
    epsilon: float

    @classmethod
    def from_scores(cls, scores: np.ndarray, epsilon: float, *, who: str) -> Decision:
        """``q~ = scores / sum(scores)``; ``who`` names the proposal in the error for an all-zero (non-critical) row."""
        total = scores.sum()
        if not total > 0:
            raise ValueError(f"{who}.decide: called on a non-critical context (criticality 0)")
        return cls(q_tilde=scores / total, epsilon=epsilon)

    def mixture(self, p: np.ndarray) -> np.ndarray:
        """The sampling pmf ``q = (1 - epsilon) q~ + epsilon p``."""
        return (1.0 - self.epsilon) * self.q_tilde + self.epsilon * p


@dataclass(frozen=True)
class CriticalStep:
    """The log of one critical step: the sampled action and the three numbers the estimators need."""

    action: int
    p: float  # naturalistic probability of the sampled action
    q_tilde: float  # importance component's probability of it
    epsilon: float  # defensive weight
    state_key: Any = None

    @property
    def q(self) -> float:
        return (1.0 - self.epsilon) * self.q_tilde + self.epsilon * self.p

    @property
    def log_ratio(self) -> float:
        """log p/q of this step (0 when p = q)."""
        return float(np.log(self.p) - np.log(self.q))


class Proposal(Protocol):
    """A testing policy: NADE, D2RL or AdaTE."""

    name: str

    def criticality(self, context: CriticalContext) -> float:
        """How critical this vehicle is (>= 0); the POV is the candidate with the largest value, 0 = not critical."""

    def decide(self, context: CriticalContext) -> Decision:
        """``q~`` and ``epsilon`` for the POV (called only when its criticality is > 0)."""


def sample_action(decision: Decision, p: np.ndarray, uniform: float) -> int:
    """Inverse-cdf draw of an action index from the mixture with one uniform in [0, 1)."""
    q = decision.mixture(p)
    cumulative = np.cumsum(q)
    index = int(np.searchsorted(cumulative, uniform * cumulative[-1], side="right"))
    return min(index, int(np.flatnonzero(q)[-1]))


def critical_step(decision: Decision, p: np.ndarray, action: int, *, state_key: Any = None) -> CriticalStep:
    """The log entry of a critical step at which ``action`` was drawn from ``decision``'s mixture."""
    return CriticalStep(action=int(action), p=float(p[action]), q_tilde=float(decision.q_tilde[action]),
                        epsilon=float(decision.epsilon), state_key=state_key)
