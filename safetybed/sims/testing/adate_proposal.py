"""The AdaTE testing proposal at inference: surrogate weights and the dense target (Yang et al. 2024).

Training (the QP over surrogate weights and the dense-RL target) lives in :mod:`safetybed.evaluate.adate`; this is
what a test needs to draw from the adaptive environment, and its JSON file format.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from safetybed.sims.testing.critical import CriticalContext, Decision


@dataclass
class DenseTarget:
    """Tabular ``c*(s, u)`` from importance-weighted Monte-Carlo returns at critical pairs (dense RL)."""

    sums: dict[tuple[Hashable, int], float] = field(default_factory=dict)
    counts: dict[tuple[Hashable, int], int] = field(default_factory=dict)
    challenges: dict[tuple[Hashable, int], np.ndarray] = field(default_factory=dict)

    def update(self, state_key: Hashable, action: int, value: float, challenge: np.ndarray) -> None:
        key = (state_key, int(action))
        self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.challenges[key] = np.asarray(challenge, dtype=np.float64)

    def value(self, state_key: Hashable, action: int) -> float | None:
        key = (state_key, int(action))
        count = self.counts.get(key)
        return None if not count else self.sums[key] / count

    def __len__(self) -> int:
        return len(self.counts)


@dataclass
class AdaTEProposal:
    """The adaptive testing policy for weights ``w`` and the current dense target (see the module docstring)."""

    weights: np.ndarray
    target: DenseTarget = field(default_factory=DenseTarget)
    kappa: float = 1.0
    epsilon: float = 0.1
    name: str = "adate"

    def _scores(self, context: CriticalContext) -> np.ndarray:
        c_w = np.asarray(self.weights) @ context.challenge  # (A,)
        gap = np.zeros_like(c_w)
        if len(self.target):
            for u in np.flatnonzero(context.p > 0):
                value = self.target.value(context.state_key, int(u))
                if value is not None:
                    gap[u] = abs(value - c_w[u])
        return context.p * (c_w + self.kappa * gap)

    def criticality(self, context: CriticalContext) -> float:
        return float(self._scores(context).sum())

    def decide(self, context: CriticalContext) -> Decision:
        scores = self._scores(context)
        return Decision.from_scores(scores, self.epsilon, who="AdaTEProposal")


def save_proposal(proposal: AdaTEProposal, path) -> None:
    """Write an AdaTE proposal (weights, kappa, epsilon, dense target) as JSON."""
    import json
    from pathlib import Path

    target = proposal.target
    rows = [{"state_key": list(key[0]) if isinstance(key[0], tuple) else key[0], "action": key[1],
             "sum": target.sums[key], "count": target.counts[key],
             "challenge": [float(x) for x in target.challenges[key]]} for key in target.counts]
    document = {"format": "safetybed-adate-1", "weights": [float(w) for w in proposal.weights],
                "kappa": proposal.kappa, "epsilon": proposal.epsilon, "target": rows}
    Path(path).write_text(json.dumps(document))


def load_proposal(path) -> AdaTEProposal:
    """Read a proposal written by :func:`save_proposal` (InputError naming the file and field otherwise)."""
    import json
    from pathlib import Path

    from safetybed.errors import InputError

    file = Path(path)
    try:
        document = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{file}: expected an AdaTE proposal JSON file ({error})") from error
    if not isinstance(document, dict) or document.get("format") != "safetybed-adate-1":
        raise InputError(f"{file}: format: expected 'safetybed-adate-1'")
    try:
        target = DenseTarget()
        for row in document["target"]:
            key = (tuple(row["state_key"]) if isinstance(row["state_key"], list) else row["state_key"],
                   int(row["action"]))
            target.sums[key] = float(row["sum"])
            target.counts[key] = int(row["count"])
            target.challenges[key] = np.asarray(row["challenge"], dtype=np.float64)
        weights = np.asarray(document["weights"], dtype=np.float64)
        return AdaTEProposal(weights=weights, target=target, kappa=float(document["kappa"]),
                             epsilon=float(document["epsilon"]))
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{file}: malformed AdaTE proposal ({error!r})") from error
