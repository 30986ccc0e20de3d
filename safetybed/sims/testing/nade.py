"""NADE importance sampling: the naturalistic and adversarial driving environment (Feng et al. 2021).

Feng, Yan, Sun, Feng & Liu, "Intelligent driving intelligence test for autonomous vehicles with naturalistic and
adversarial environment", *Nat. Commun.* 12:748 (2021); ``research/cav_eval.md`` §1, §4.1.

At each decision the criticality of action ``u`` of a candidate vehicle is (paper eq. for the importance
function; code ``NADE_core.py``)::

    criticality(u) = p(u | s) * challenge(u | s) * P_SM(AV action | s)

where ``challenge`` is the crash probability of the AV surrogate model (SM) after the maneuver. Our surrogates
are deterministic given the maneuver (a kinematic look-ahead or an exact table), so ``P_SM(AV action | s) = 1``
and is folded into ``challenge``. The vehicle's criticality is the sum over ``u``; the POV is the most critical
candidate and the step is critical when that sum exceeds ``threshold`` (0 in NADE, ``criticality_threshold``).
The POV's action is drawn from ``q = (1 - epsilon) q~ + epsilon p`` with ``q~(u) = criticality(u) / sum`` and
``epsilon = 0.1`` (NADE ``config/configs.yml``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safetybed.sims.testing.critical import CriticalContext, Decision

DEFAULT_EPSILON = 0.1  #: NADE's defensive weight (config/configs.yml)


@dataclass(frozen=True)
class NadeProposal:
    """NADE's importance function with surrogate ``surrogate`` (a row of the context's challenge matrix)."""

    epsilon: float = DEFAULT_EPSILON
    surrogate: int = 0
    threshold: float = 0.0
    name: str = "nade"

    def __post_init__(self) -> None:
        if not 0.0 < self.epsilon <= 1.0:
            raise ValueError(f"epsilon: expected a defensive weight in (0, 1], got {self.epsilon!r}")
        if self.threshold < 0:
            raise ValueError(f"threshold: expected a criticality threshold >= 0, got {self.threshold!r}")

    def _weights(self, context: CriticalContext) -> np.ndarray:
        return context.p * context.challenge[self.surrogate]

    def criticality(self, context: CriticalContext) -> float:
        total = float(self._weights(context).sum())
        return total if total > self.threshold else 0.0

    def decide(self, context: CriticalContext) -> Decision:
        weights = self._weights(context)
        return Decision.from_scores(weights, self.epsilon, who="NadeProposal")
