"""Training algorithms, one readable file each (see :mod:`safetybed.control.training` for the contract)."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from safetybed.errors import SpecError

ALGORITHMS = {
    "dsac_t": "safetybed.control.algorithms.dsac_t",
    "sac": "safetybed.control.algorithms.sac",
    "ppo": "safetybed.control.algorithms.ppo",
    "mdpo_on": "safetybed.control.algorithms.mdpo_on",
    "mdpo_off": "safetybed.control.algorithms.mdpo_off",
}


def algorithm_module(name: str) -> ModuleType:
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {', '.join(ALGORITHMS)}, got {name!r}")
    return importlib.import_module(ALGORITHMS[name])


def algorithm_config_class(name: str) -> type:
    return algorithm_module(name).Config


def check_hyper(spec, *, source: Path | str) -> Any:
    """Build the algorithm's frozen Config from ``[hyper]``; unknown keys and bad values are SpecErrors."""
    config_cls = algorithm_config_class(spec.algorithm)
    names = {f.name for f in dataclasses.fields(config_cls)}
    for key in spec.hyper:
        if key not in names:
            raise SpecError(source, f"hyper.{key}", f"unknown key for algorithm {spec.algorithm!r}; expected one "
                                                     f"of {', '.join(sorted(names))}")
    try:
        return config_cls(**spec.hyper)
    except (TypeError, ValueError) as error:
        raise SpecError(source, "hyper", str(error)) from None
