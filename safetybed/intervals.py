"""The one confidence-interval result type: run summaries, crash-rate estimates and the training benchmark all
report their intervals as a :class:`ConfidenceInterval`.

In JSON an interval is ``[low, high]`` (:func:`safetybed.jsonsafe.json_safe`); its level and method are stated
by the document around it (``confidence``, ``method``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ConfidenceInterval", "clopper_pearson"]


@dataclass(frozen=True)
class ConfidenceInterval:
    """A two-sided confidence interval ``[low, high]``.

    Attributes:
        low, high: the ends (NaN when the interval cannot be computed; an end may be infinite).
        level: the confidence level, ``0 < level < 1`` (0.95 for a 95 % interval).
        method: how it was computed: ``"student-t"``, ``"clopper-pearson"``, ``"normal"``, ...

    It also reads as the pair ``(low, high)``: ``ci[0]``, ``low, high = ci``, ``tuple(ci)``.

    >>> ci = ConfidenceInterval(0.1, 0.3, level=0.9, method="normal")
    >>> ci.contains(0.2), ci[1], tuple(ci)
    (True, 0.3, (0.1, 0.3))
    """

    low: float
    high: float
    level: float
    method: str

    def contains(self, value: float) -> bool:
        """``low <= value <= high`` (False when an end is NaN)."""
        return bool(self.low <= value <= self.high)

    def __iter__(self) -> Iterator[float]:
        return iter((self.low, self.high))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> float:
        return (self.low, self.high)[index]


def clopper_pearson(successes: int, n: int, confidence: float) -> ConfidenceInterval:
    """The exact two-sided binomial interval of Clopper & Pearson (1934) for ``successes`` out of ``n``: beta
    quantiles at ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``, with the ends 0 and 1 when there are no
    successes or no failures."""
    from scipy import stats

    alpha = 1.0 - confidence
    low = float(stats.beta.ppf(alpha / 2, successes, n - successes + 1)) if successes > 0 else 0.0
    high = float(stats.beta.ppf(1 - alpha / 2, successes + 1, n - successes)) if successes < n else 1.0
    return ConfidenceInterval(low, high, confidence, "clopper-pearson")
