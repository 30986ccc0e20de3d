"""Training algorithms, one readable file each (see :mod:`safetybed.control.training` for the contract)."""

from __future__ import annotations

import importlib
from types import ModuleType

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
