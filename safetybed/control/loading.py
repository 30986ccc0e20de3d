"""Resolve a controller reference (``builtin:NAME``, later spec paths, bundles, ``sb3:``) to a Controller."""

from __future__ import annotations

import gymnasium as gym

from safetybed.control.base import Controller
from safetybed.control.builtin import make_builtin
from safetybed.errors import InputError
from safetybed.spec import ScenarioSpec


def load_controller(ref: str, *, scenario: ScenarioSpec, observation_space: gym.Space,
                    action_space: gym.Space) -> Controller:
    """Build the controller named by ``ref`` for a scenario's spaces.

    Raises:
        InputError: the reference is malformed or names nothing usable (exit code 2).
    """
    if ref.startswith("builtin:"):
        return make_builtin(ref.removeprefix("builtin:"), scenario, observation_space, action_space)
    raise InputError(f"--controller {ref!r}: expected builtin:NAME (builtin:idm, builtin:random, "
                     f"builtin:reach); trained controllers, bundles and sb3: zips arrive with the "
                     f"controllers issue")
