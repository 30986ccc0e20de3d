"""The one JSON encoding of every document safetybed writes (records, run summaries, certificates, evaluations).

JSON has no ``inf`` or ``NaN``, so a non-finite number is written as ``null`` (``None``), everywhere: a reader
that needs the sign of an infinity knows it from what the field is (a certified lower bound that certifies
nothing is ``-inf``, see :mod:`safetybed.report.certificate`). numpy scalars become the Python scalar, numpy
arrays and tuples become lists, mapping keys become strings and a
:class:`~safetybed.intervals.ConfidenceInterval` becomes ``[low, high]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from safetybed.intervals import ConfidenceInterval

__all__ = ["finite_or_none", "json_safe"]


def finite_or_none(value: float) -> float | None:
    """``value`` if it is finite, else ``None``: the encoding of one number (``inf``, ``-inf`` and NaN alike)."""
    return value if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON-able Python values, non-finite floats as ``None``.

    >>> json_safe({"a": np.float32(0.5), 1: (np.inf, np.nan), "b": np.arange(2), "c": np.bool_(True)})
    {'a': 0.5, '1': [None, None], 'b': [0, 1], 'c': True}

    Anything else (strings, ``None``, plain ints and bools, unknown objects) is returned as it is.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, ConfidenceInterval):
        return [json_safe(value.low), json_safe(value.high)]
    return value
