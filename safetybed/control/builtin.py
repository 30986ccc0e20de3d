"""Registry of rule-based controllers addressable as ``builtin:NAME``."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym

from safetybed.control.base import Controller, RandomController
from safetybed.errors import InputError
from safetybed.spec import ScenarioSpec

Factory = Callable[[ScenarioSpec, gym.Space, gym.Space], Controller]


def _random(scenario: ScenarioSpec, observation_space: gym.Space, action_space: gym.Space) -> Controller:
    return RandomController(observation_space, action_space)


def _idm(scenario: ScenarioSpec, observation_space: gym.Space, action_space: gym.Space) -> Controller:
    from safetybed.control.builtin_idm import IDMController

    if scenario.simulator != "highway":
        raise InputError(f"builtin:idm drives highway scenarios only; {scenario.name!r} is a "
                         f"{scenario.simulator} scenario")
    return IDMController(observation_space, action_space, scenario=scenario)


def _reach(scenario: ScenarioSpec, observation_space: gym.Space, action_space: gym.Space) -> Controller:
    from safetybed.control.builtin_reach import ScriptedReachController

    if scenario.simulator != "bullet":
        raise InputError(f"builtin:reach drives bullet scenarios only; {scenario.name!r} is a "
                         f"{scenario.simulator} scenario")
    return ScriptedReachController(observation_space, action_space, scenario=scenario)


BUILTINS: dict[str, Factory] = {"random": _random, "idm": _idm, "reach": _reach}


def make_builtin(name: str, scenario: ScenarioSpec, observation_space: gym.Space,
                 action_space: gym.Space) -> Controller:
    if name not in BUILTINS:
        raise InputError(f"controller 'builtin:{name}': unknown built-in; expected one of "
                         f"{', '.join('builtin:' + key for key in sorted(BUILTINS))}")
    return BUILTINS[name](scenario, observation_space, action_space)
