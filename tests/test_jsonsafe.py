"""One JSON encoding for every document: non-finite numbers are null, numpy values plain Python."""

from __future__ import annotations

import json
import math

import numpy as np

from safetybed.jsonsafe import finite_or_none, json_safe


def test_non_finite_numbers_are_null_wherever_they_are():
    document = {"a": math.inf, "b": [-math.inf, math.nan, 1.5], "c": (np.float32(np.inf), np.float64(2.0)),
                "d": {"e": np.array([np.nan, 3.0])}}
    assert json_safe(document) == {"a": None, "b": [None, None, 1.5], "c": [None, 2.0], "d": {"e": [None, 3.0]}}
    json.dumps(json_safe(document), allow_nan=False)  # strict JSON


def test_numpy_values_become_python_values():
    out = json_safe({1: np.int64(3), "flag": np.bool_(False), "grid": np.arange(4).reshape(2, 2), "s": "inf"})
    assert out == {"1": 3, "flag": False, "grid": [[0, 1], [2, 3]], "s": "inf"}
    assert type(out["1"]) is int and type(out["flag"]) is bool


def test_finite_or_none():
    assert finite_or_none(0.25) == 0.25
    assert [finite_or_none(v) for v in (math.inf, -math.inf, math.nan)] == [None, None, None]
