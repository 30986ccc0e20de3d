"""``safetybed train CONTROLLER_SPEC``: train the controller a spec describes and write its checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetybed.control.algorithms import algorithm_module, check_hyper
from safetybed.control.checkpoint import save_checkpoint
from safetybed.control.training import CSVLogger, TrainSetup, resolve_device
from safetybed.errors import InputError
from safetybed.spec.catalogue import load_scenario_arg
from safetybed.spec.controller import load_controller_spec


def train_from_spec(spec_path: str | Path, *, steps: int | None = None, device: str | None = None,
                    out: str | Path | None = None, seed: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train, save the checkpoint (default: the spec's ``checkpoint`` folder) and return a summary.

    A planner spec (``algorithm = "planner"``) is trained by :func:`safetybed.control.planner.train.
    train_planner_from_spec` (by episodes, on the CPU: ``steps``, ``device`` and ``seed`` do not apply).
    """
    from safetybed.spec.planner import is_planner_spec

    if is_planner_spec(spec_path):
        given = [flag for flag, value in (("--steps", steps), ("--device", device), ("--seed", seed)) if value]
        if given:
            raise InputError(f"{given[0]}: a planner spec ({spec_path}) is trained by [train] episodes on the CPU; "
                             f"set its [train] section instead")
        from safetybed.control.planner.train import train_planner_from_spec

        return train_planner_from_spec(spec_path, out=out, progress=progress)
    loaded = load_controller_spec(spec_path)
    spec = loaded.spec
    config = check_hyper(spec, source=loaded.path)
    scenario, _ = load_scenario_arg(loaded.scenario_ref())
    extras = [load_scenario_arg(loaded.scenario_ref(ref))[0] for ref in spec.train.extra_scenarios]
    if spec.train.observation_noise_std > 0:
        scenario, *extras = [_with_noise(s, spec.train.observation_noise_std) for s in (scenario, *extras)]
    if steps is not None and steps < 1:
        raise InputError(f"--steps: expected >= 1, got {steps}")
    out_dir = Path(out) if out is not None else loaded.checkpoint_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    total_steps = steps or spec.train.steps
    setup = TrainSetup(scenario=scenario, network=spec.network, steps=total_steps, envs=spec.train.envs,
                       seed=spec.train.seed if seed is None else seed,
                       device=resolve_device(device or spec.train.device),
                       eval_every_steps=min(spec.train.eval_every_steps, total_steps),
                       eval_episodes=spec.train.eval_episodes, vector=spec.train.vector,
                       collision_penalty=spec.train.collision_penalty, extra_scenarios=tuple(extras),
                       logger=CSVLogger(out_dir / "training_log.csv"), progress=progress)
    result = algorithm_module(spec.algorithm).train(setup, config)
    last = setup.evaluations[-1] if setup.evaluations else None
    final = last if last and last["env_steps"] == result.env_steps else setup.evaluate(result.policy, result.obs_norm)
    save_checkpoint(out_dir, policy=result.policy.cpu(), obs_norm=result.obs_norm.cpu(), algorithm=spec.algorithm,
                    observation_space=setup.observation_space, action_space=setup.action_space,
                    config=dataclasses.asdict(config),
                    extra={"controller_spec": spec.name, "scenario": scenario.name,
                           "train": {**spec.train.model_dump(), "steps": total_steps, "seed": setup.seed,
                                     "device": str(setup.device)},
                           "network": spec.network.model_dump(),
                           "final_eval_return_mean": final["eval_return_mean"]})
    summary = {"controller": spec.name, "algorithm": spec.algorithm, "checkpoint": os.path.relpath(out_dir),
               "env_steps": result.env_steps, "updates": result.updates, "wall_time_s": result.wall_time_s,
               "device": str(setup.device), "final_eval_return_mean": final["eval_return_mean"],
               "final_eval_return_std": final["eval_return_std"]}
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _with_noise(scenario, std: float):
    """``scenario`` with ``perturbations.observation_noise_std = std`` (drawn per raw frame, before stacking)."""
    return scenario.model_copy(update={"perturbations": scenario.perturbations.model_copy(
        update={"observation_noise_std": std})})

