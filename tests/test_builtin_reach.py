"""``builtin:reach``: success rates on the shipped bullet scenarios, batching and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from safetybed.control.builtin import make_builtin
from safetybed.control.builtin_reach import ScriptedReachController
from safetybed.errors import InputError
from safetybed.sims import make_env
from safetybed.spec import load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def successes(task: str, seeds: range) -> int:
    scenario = load_scenario(SCENARIOS / "bullet" / f"{task}.toml")
    env = make_env(scenario)
    controller = make_builtin("reach", scenario, env.observation_space, env.action_space)
    assert isinstance(controller, ScriptedReachController)
    count = 0
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        controller.reset(seed=seed)
        for _ in range(scenario.episode_steps):
            obs, _, terminated, truncated, info = env.step(controller.act(obs[None])[0])
            if terminated or truncated:
                break
        count += info["safety"]["success"]
    env.close()
    return count


# Measured with panda-gym 3.0.7 / pybullet 3.2.7 (the module docstring of builtin_reach): reach 50/50
# (seeds 0-49), push 37/40, pick_and_place 40/40. The episodes are deterministic, so these thresholds only
# leave room for other pybullet builds: reach may lose one seed in 20, push and pick-and-place two in 10.
@pytest.mark.parametrize("task, seeds, required", [
    ("reach", range(20), 19),
    ("push", range(10), 8),
    ("pick_and_place", range(10), 8),
])
def test_scripted_controller_succeeds_on_the_shipped_scenarios(task, seeds, required):
    assert successes(task, seeds) >= required


def test_acts_on_a_batch_row_by_row():
    scenario = load_scenario(SCENARIOS / "bullet" / "push.toml")
    env = make_env(scenario)
    controller = ScriptedReachController(env.observation_space, env.action_space, scenario=scenario)
    observations = np.stack([env.reset(seed=seed)[0] for seed in range(3)])
    batch = controller.act(observations)
    assert batch.shape == (3, 3) and batch.dtype == np.float32
    assert np.all(np.abs(batch) <= 1.0)
    for row, obs in enumerate(observations):
        np.testing.assert_array_equal(batch[row], controller.act(obs[None])[0])
    env.close()


def test_reach_action_is_the_clipped_proportional_command():
    scenario = load_scenario(SCENARIOS / "bullet" / "reach.toml")
    env = make_env(scenario)
    controller = ScriptedReachController(env.observation_space, env.action_space, scenario=scenario,
                                         gain_per_m=10.0)
    obs = np.zeros((2, 12), dtype=np.float32)
    obs[0, -3:] = [0.01, -0.02, 0.5]  # goal 1 cm, -2 cm, 50 cm from an ee at the origin
    obs[1, 0:3] = [0.1, 0.1, 0.1]
    obs[1, -3:] = [0.1, 0.1, 0.1]
    np.testing.assert_allclose(controller.act(obs), [[0.1, -0.2, 1.0], [0.0, 0.0, 0.0]], atol=1e-6)
    env.close()


def test_refuses_scenarios_it_cannot_drive():
    joints = parse_scenario({"name": "x", "simulator": "bullet", "task": "reach", "episode_steps": 5,
                             "bullet": {"control_type": "joints"}})
    env = make_env(joints)
    with pytest.raises(InputError, match="control_type"):
        make_builtin("reach", joints, env.observation_space, env.action_space)
    env.close()
    cartpole = load_scenario(SCENARIOS / "classic" / "cartpole.toml")
    env = make_env(cartpole)
    with pytest.raises(InputError, match="bullet scenarios only"):
        make_builtin("reach", cartpole, env.observation_space, env.action_space)
    env.close()
