"""``safetybed bench sim``: control steps per second of each scenario family.

Each family is timed in this process with random actions over the same number of control steps as
its baseline, the stock gymnasium environment it wraps, measured in the same run on the same machine:
the ratio is what our adapter costs (or saves) against using the simulator directly. Medians over
``repeats`` timings are reported because shared machines are noisy.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np

from safetybed.sims import make_env
from safetybed.spec.catalogue import list_scenarios, load_scenario_arg

# Stock environment each family is compared with (same simulator, defaults of that package).
BASELINES = {
    ("highway", "cruise"): "highway-fast-v0", ("highway", "cut_in"): "highway-fast-v0",
    ("highway", "overtaking"): "highway-fast-v0", ("highway", "merge"): "merge-v0",
    ("highway", "intersection"): "intersection-v0", ("highway", "roundabout"): "roundabout-v0",
    ("bullet", "reach"): "PandaReach-v3", ("bullet", "push"): "PandaPush-v3",
    ("bullet", "pick_and_place"): "PandaPickAndPlace-v3",
    ("classic", "cartpole"): "CartPole-v1", ("classic", "pendulum"): "Pendulum-v1",
}
DEFAULT_FAMILIES = ("highway/cruise", "highway/cut_in", "highway/overtaking", "highway/merge",
                    "highway/intersection", "highway/roundabout", "bullet/reach", "bullet/push",
                    "bullet/pick_and_place", "classic/cartpole", "classic/pendulum")


def _time_steps(env: gym.Env, steps: int, *, seed: int) -> float:
    """Seconds for ``steps`` control steps with random actions (resets included when episodes end)."""
    rng = np.random.default_rng(seed)
    env.action_space.seed(int(rng.integers(2**31)))
    env.reset(seed=seed)
    started = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset(seed=int(rng.integers(2**31)))
    return time.perf_counter() - started


def _make_baseline(env_id: str) -> gym.Env:
    if env_id.startswith("Panda"):
        import panda_gym  # noqa: F401 - registers the Panda envs

        from safetybed.sims.base import quiet_stdout

        with quiet_stdout():
            return gym.make(env_id)
    if env_id in ("CartPole-v1", "Pendulum-v1"):
        return gym.make(env_id)
    import highway_env

    gym.register_envs(highway_env)
    return gym.make(env_id)


def bench_families(*, families: list[str] | None, steps: int, repeats: int = 3) -> list[dict[str, Any]]:
    names = list(families) if families else [name for name in DEFAULT_FAMILIES if name in list_scenarios()]
    rows = []
    for name in names:
        spec, _ = load_scenario_arg(name)
        env = make_env(spec)
        baseline_id = BASELINES[(spec.simulator, spec.task)]
        if spec.simulator == "bullet" and spec.bullet.reward_type == "dense":
            baseline_id = baseline_id.replace("-v3", "Dense-v3")  # same reward computation as ours
        baseline = _make_baseline(baseline_id)
        ours, theirs = [], []
        for repeat in range(repeats):  # interleave, so machine noise hits both alike
            ours.append(_time_steps(env, steps, seed=repeat))
            theirs.append(_time_steps(baseline, steps, seed=repeat))
        env.close()
        baseline.close()
        frames_per_step = 1
        if spec.simulator == "highway":
            frames_per_step = spec.highway.simulation_frequency_hz // spec.highway.policy_frequency_hz
        ours_rate = steps / statistics.median(ours)
        theirs_rate = steps / statistics.median(theirs)
        rows.append({"scenario": name, "steps_per_s": ours_rate, "frames_per_s": ours_rate * frames_per_step,
                     "baseline": baseline_id, "baseline_steps_per_s": theirs_rate, "ratio": ours_rate / theirs_rate,
                     "steps": steps, "repeats": repeats})
    return rows
