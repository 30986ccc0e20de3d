"""The per-test record every crash-rate estimator consumes (one entry per critical step)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TestRecord:
    """One test (episode): whether the ego crashed, and per critical step the three numbers of its likelihood ratio.

    ``p[k]``: naturalistic probability of the maneuver sampled at the k-th critical step; ``q_tilde[k]``: the
    importance component's probability of it; ``epsilon[k]``: the defensive mixture weight, so the sampling
    probability was ``q = (1 - epsilon) q~ + epsilon p`` and the step's likelihood ratio is ``p / q``
    (``research/cav_eval.md`` §1). A test run under the naturalistic distribution has empty sequences.
    """

    __test__ = False  # not a pytest test class despite the name

    crashed: bool
    p: Sequence[float] = ()
    q_tilde: Sequence[float] = ()
    epsilon: Sequence[float] = ()
