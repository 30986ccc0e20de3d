"""``safetybed bench certify``: smoothed episodes/s, vectorised + batched vs the runner's one-env loop.

Both sides play the same episodes (same run seed, same indices) of a certification spec's smoothed scenario
with its base controller, in this process, on one torch thread (what a runner worker uses):

* **baseline**: the runner's loop, :func:`safetybed.sims.rollout.rollout` one episode at a time, one policy
  call per step on a batch of one;
* **vectorised**: :func:`safetybed.certify.smoothing.vector_rollouts`, ``num_envs`` episodes in a gymnasium
  ``SyncVectorEnv`` with one batched policy call per step.

The result reports both rates, their ratio, and how many of the vectorised records equal the runner's
(batched float32 products round differently from batch-of-one products, so a near-tied action can flip).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from safetybed.certify.pipeline import resolve_certification
from safetybed.certify.smoothing import vector_rollouts
from safetybed.errors import InputError
from safetybed.runner.seeding import episode_seed
from safetybed.sims.rollout import rollout
from safetybed.threads import torch_threads

DEFAULT_SPEC = Path("certify") / "cartpole_sigma0.2.toml"


def bench_certify(spec: str | Path = DEFAULT_SPEC, *, episodes: int = 512, num_envs: int = 64,
                  seed: int = 0) -> dict[str, Any]:
    """Time ``episodes`` smoothed episodes both ways; returns rates [episodes/s], ratio and record agreement."""
    from safetybed.control import load_controller
    from safetybed.sims import make_env

    if episodes < 1 or num_envs < 1:
        raise InputError(f"--episodes and --envs: expected >= 1, got {episodes} and {num_envs}")
    if not Path(spec).exists():
        from safetybed.spec.catalogue import PACKAGE_ROOT

        packaged = PACKAGE_ROOT / spec
        spec = packaged if packaged.exists() else spec
    cert = resolve_certification(spec)
    scenario = cert.run_scenario
    env = make_env(scenario)
    controller = load_controller(cert.controller_ref, scenario=scenario, observation_space=env.observation_space,
                                 action_space=env.action_space)
    indices = list(range(episodes))
    with torch_threads(1):
        started = time.perf_counter()
        baseline = [rollout(env, controller, seed=episode_seed(seed, i), index=i) for i in indices]
        baseline_s = time.perf_counter() - started
        env.close()
        started = time.perf_counter()
        vectorised = sorted(vector_rollouts(scenario, controller, run_seed=seed, indices=indices, num_envs=num_envs),
                            key=lambda record: record.index)
        vectorised_s = time.perf_counter() - started
    identical = sum(a.outcome() == b.outcome() for a, b in zip(baseline, vectorised, strict=True))
    baseline_rate = episodes / baseline_s
    vectorised_rate = episodes / vectorised_s
    return {"spec": str(cert.path), "scenario": scenario.name, "controller": cert.controller_ref,
            "sigma": cert.spec.sigma, "frame_stack": cert.frame_stack, "episodes": episodes, "num_envs": num_envs,
            "steps": int(sum(r.length for r in baseline)),
            "baseline": "runner loop (rollout, 1 env, batch-of-one policy calls)",
            "baseline_episodes_per_s": baseline_rate, "vectorised_episodes_per_s": vectorised_rate,
            "ratio": vectorised_rate / baseline_rate, "identical_records": identical,
            "baseline_mean_return": float(np.mean([r.episode_return for r in baseline])),
            "vectorised_mean_return": float(np.mean([r.episode_return for r in vectorised])),
            "torch_threads": 1}


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`bench_certify`'s result."""
    lines = [f"safetybed bench certify: {result['spec']} (sigma = {result['sigma']:g}, {result['episodes']} episodes, "
             f"{result['steps']} steps, 1 torch thread)",
             f"  baseline   {result['baseline_episodes_per_s']:9.1f} episodes/s  {result['baseline']}",
             f"  vectorised {result['vectorised_episodes_per_s']:9.1f} episodes/s  SyncVectorEnv x "
             f"{result['num_envs']}, batched policy calls",
             f"  ratio      {result['ratio']:9.2f}x",
             f"  records identical to the runner's: {result['identical_records']} / {result['episodes']} "
             f"(mean return {result['baseline_mean_return']:.4g} vs {result['vectorised_mean_return']:.4g})"]
    return "\n".join(lines)
