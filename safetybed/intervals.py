"""The one confidence-interval result type: run summaries, crash-rate estimates and the training benchmark all
report their intervals as a :class:`ConfidenceInterval`.

In JSON an interval is ``[low, high]`` (:func:`safetybed.jsonsafe.json_safe`); its level and method are stated
by the document around it (``confidence``, ``method``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ConfidenceInterval"]


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
