"""Resolve a controller reference to a :class:`~safetybed.control.base.Controller`.

References: ``builtin:NAME``; a controller spec ``controllers/X.toml`` (its trained checkpoint, behind the
spec's ``shield`` if it names one, :mod:`safetybed.control.shield`); a checkpoint folder (``manifest.json`` +
``weights.safetensors``); a deployment bundle folder (``bundle.json``, see :mod:`safetybed.control.runtime`; ``planner.json``, see
:mod:`safetybed.control.planner.bundle`);
``sb3:PATH.zip``, a Stable-Baselines3 model imported without executing its pickles
(:mod:`safetybed.control.sb3_import`); a planner spec (``algorithm = "planner"``,
:mod:`safetybed.control.planner`), and ``adapt:METHOD:SPEC`` for that planner with test-time adaptation
``METHOD`` (``none``, ``centaur``, ``tent``).
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

from safetybed.control.base import Controller
from safetybed.control.builtin import make_builtin
from safetybed.errors import InputError
from safetybed.spec import ScenarioSpec


def _check_spaces(ref: str, controller: Controller, observation_space: gym.Space, action_space: gym.Space) -> None:
    if tuple(controller.observation_space.shape) != tuple(observation_space.shape):
        raise InputError(f"--controller {ref}: observation shape {controller.observation_space.shape} does not "
                         f"match the scenario's {observation_space.shape}")
    same_kind = type(controller.action_space) is type(action_space)
    if not same_kind or (isinstance(action_space, gym.spaces.Discrete) and controller.action_space.n != action_space.n):
        raise InputError(f"--controller {ref}: action space {controller.action_space} does not match the "
                         f"scenario's {action_space}")
    if isinstance(action_space, gym.spaces.Box) and not (
            np.allclose(controller.action_space.low, action_space.low)
            and np.allclose(controller.action_space.high, action_space.high)):
        raise InputError(f"--controller {ref}: action bounds differ from the scenario's {action_space}")


def _is_planner(path: Path, ref: str, *, adapting: bool) -> bool:
    from safetybed.spec.planner import is_planner_spec

    planner = path.suffix == ".toml" and is_planner_spec(path)
    if adapting and not planner:
        raise InputError(f"--controller {ref!r}: test-time adaptation needs a planner spec (a controller TOML with "
                         f"algorithm = \"planner\", e.g. controllers/highway_planner.toml), got {path}")
    return planner


def load_controller(ref: str, *, scenario: ScenarioSpec, observation_space: gym.Space,
                    action_space: gym.Space) -> Controller:
    """Build the controller named by ``ref`` for a scenario's spaces.

    Raises:
        InputError: the reference is malformed, names nothing usable, or does not fit the spaces (exit 2).
    """
    if ref.startswith("builtin:"):
        return make_builtin(ref.removeprefix("builtin:"), scenario, observation_space, action_space)
    path = Path(ref)
    method = None
    if ref.startswith("adapt:"):
        from safetybed.spec.planner import ADAPT_METHODS

        method, _, spec_ref = ref.removeprefix("adapt:").partition(":")
        if method not in ADAPT_METHODS or not spec_ref:
            raise InputError(f"--controller {ref!r}: expected adapt:METHOD:SPEC with METHOD one of "
                             f"{', '.join(ADAPT_METHODS)} and SPEC a planner spec (controllers/highway_planner.toml)")
        path = Path(spec_ref)
    if (method is not None or path.suffix == ".toml") and _is_planner(path, ref, adapting=method is not None):
        from safetybed.control.planner.controller import load_planner_controller

        controller = load_planner_controller(str(path), method=method or "none", name=ref,
                                             observation_space=observation_space, action_space=action_space)
    elif ref.startswith("sb3:"):
        from safetybed.control.sb3_import import load_sb3_controller

        controller = load_sb3_controller(ref.removeprefix("sb3:"), observation_space=observation_space,
                                         action_space=action_space, name=ref)
    elif path.suffix == ".toml":
        from safetybed.control.checkpoint import load_checkpoint
        from safetybed.control.policy import PolicyController
        from safetybed.spec.controller import load_controller_spec

        loaded = load_controller_spec(path)
        if not loaded.checkpoint_dir.exists():
            raise InputError(f"{path}: checkpoint: folder {loaded.checkpoint_dir} does not exist; train it with "
                             f"safetybed train {path}")
        controller = PolicyController.from_checkpoint(load_checkpoint(loaded.checkpoint_dir), name=ref,
                                                     deterministic=loaded.spec.deterministic)
        if loaded.spec.shield != "none":
            from safetybed.control.shield import shield_controller

            controller = shield_controller(controller, shield=loaded.spec.shield, scenario=scenario, source=ref)
    elif path.is_dir() and (path / "planner.json").exists():
        from safetybed.control.planner.bundle import load_planner_bundle

        controller = load_planner_bundle(path, name=ref)
    elif path.is_dir() and (path / "bundle.json").exists():
        from safetybed.control.runtime import load_bundle

        controller = load_bundle(path, name=ref)
    elif path.is_dir() and (path / "manifest.json").exists():
        from safetybed.control.checkpoint import load_checkpoint
        from safetybed.control.policy import PolicyController

        controller = PolicyController.from_checkpoint(load_checkpoint(path), name=ref)
    else:
        raise InputError(f"--controller {ref!r}: expected builtin:NAME (builtin:idm, builtin:random, builtin:reach), "
                         f"a controller spec (controllers/*.toml), a checkpoint folder, a bundle folder "
                         f"(bundle.json) or sb3:PATH.zip")
    _check_spaces(ref, controller, observation_space, action_space)
    return controller
