"""The one confidence-interval result type: run summaries, crash-rate estimates and the training benchmark all
report their intervals as a :class:`ConfidenceInterval`.

In JSON an interval is ``[low, high]`` (:func:`safetybed.jsonsafe.json_safe`); its level and method are stated
by the document around it (``confidence``, ``method``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ConfidenceInterval", "MeanInterval", "clopper_pearson", "mean_t_interval"]


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


@dataclass(frozen=True)
class MeanInterval:
    """A mean with its two-sided Student-t confidence interval ``ci = [mean - half_width, mean + half_width]``.

    Example: ``mean_t_interval([1, 2, 3])`` has mean 2, n 3 and half width
    ``t_{0.975, 2} * 1 / sqrt(3) = 4.3027 / 1.7321 = 2.484``.
    """

    mean: float
    half_width: float
    n: int
    ci: ConfidenceInterval

    @property
    def confidence(self) -> float:
        return self.ci.level

    def to_json_dict(self) -> dict[str, Any]:
        """The benchmark row's fields: ``mean``, ``half_width``, ``n``, ``confidence``, ``method``."""
        return {"mean": self.mean, "half_width": self.half_width, "n": self.n, "confidence": self.ci.level,
                "method": self.ci.method}


def mean_t_interval(values: list[float], *, confidence: float = 0.95) -> MeanInterval:
    """Mean of ``values`` with its ``confidence`` Student-t interval (``nan`` half width for n < 2)."""
    from scipy import stats

    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected in (0, 1), got {confidence}")
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("values: expected at least one value, got none")
    mean = float(data.mean())
    if data.size < 2:
        half = math.nan
    else:
        half = float(stats.t.ppf(0.5 + confidence / 2, data.size - 1) * data.std(ddof=1) / math.sqrt(data.size))
    return MeanInterval(mean, half, int(data.size),
                        ConfidenceInterval(mean - half, mean + half, confidence, "Student t on seed means"))
