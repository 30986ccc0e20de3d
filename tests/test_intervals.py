"""The one confidence-interval type: what run summaries, estimates and the bench report; ``[low, high]`` in JSON."""

from __future__ import annotations

import dataclasses
import math

import pytest

from safetybed.intervals import ConfidenceInterval
from safetybed.jsonsafe import json_safe


def test_interval_reads_as_its_pair_and_is_low_high_in_json():
    ci = ConfidenceInterval(0.25, 0.75, level=0.9, method="clopper-pearson")
    assert (ci[0], ci[1]) == (0.25, 0.75) and tuple(ci) == (0.25, 0.75)
    low, high = ci
    assert (low, high) == (0.25, 0.75)
    assert ci.contains(0.5) and ci.contains(0.25) and not ci.contains(0.8)
    assert json_safe({"ci": ci}) == {"ci": [0.25, 0.75]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        ci.low = 0.0  # type: ignore[misc]


def test_non_finite_ends():
    ci = ConfidenceInterval(math.nan, math.inf, level=0.95, method="student-t")
    assert not ci.contains(0.0)
    assert json_safe(ci) == [None, None]


def test_clopper_pearson_matches_scipys_exact_binomial_interval():
    from scipy import stats

    from safetybed.intervals import clopper_pearson

    for k, n in ((0, 10), (3, 40), (40, 40), (1, 2000)):
        ours = clopper_pearson(k, n, 0.95)
        reference = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert ours.method == "clopper-pearson" and ours.level == 0.95
        assert abs(ours.low - reference.low) < 1e-12 and abs(ours.high - reference.high) < 1e-12, (k, n)
