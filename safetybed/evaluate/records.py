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

    Optional, per critical step, read only by ``scv_estimate(variant="learned")``: ``criticality[k]``, the
    proposal's criticality ``sum_u p(u) c(s, u)`` of the step, and ``state[k]``, a vector of the step's state
    known before the maneuver is drawn (the highway records: relative position, range rate, ego speed, lane
    relation, vehicle speed). Leave them empty when not available.
    """

    __test__ = False  # not a pytest test class despite the name

    crashed: bool
    p: Sequence[float] = ()
    q_tilde: Sequence[float] = ()
    epsilon: Sequence[float] = ()
    criticality: Sequence[float] = ()
    state: Sequence[Sequence[float]] = ()
