"""The panda-gym adapter: gymnasium conformance, seeding, physical outcomes of the perturbation knobs, safety
metrics and a quiet stdout. Every test is seeded; none times anything."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

from safetybed.errors import SpecError
from safetybed.sims import make_env
from safetybed.sims.base import quiet_stdout
from safetybed.sims.bullet import DISTANCE_CAP_M, BulletTaskEnv, make_bullet_env
from safetybed.spec import load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "bullet"
TASKS = ("reach", "push", "pick_and_place")
OBSERVATION_SIZES = {"reach": 12, "push": 24, "pick_and_place": 25}
ACTION_SIZES = {"reach": 3, "push": 3, "pick_and_place": 4}
GRAVITY_MPS2 = 9.81  # panda-gym's PyBullet.setGravity
SUBSTEP_S = 1.0 / 500  # panda-gym's PyBullet.timestep
SUBSTEPS = 20  # panda-gym's PyBullet.n_substeps
#: Lateral friction coefficient of cube and table: pybullet's default 0.5 each (panda-gym sets none);
#: pybullet combines a contact's two coefficients by multiplying them.
CUBE_TABLE_FRICTION = 0.5 * 0.5


def bullet_env(task: str, *, episode_steps: int = 50, per_step_log: bool = False, **bullet) -> BulletTaskEnv:
    spec = parse_scenario({"name": f"test/{task}", "simulator": "bullet", "task": task,
                           "episode_steps": episode_steps, "metrics": {"per_step_log": per_step_log},
                           "bullet": bullet})
    return make_bullet_env(spec)


def rollout(env, seed: int, actions: np.ndarray) -> list:
    """(obs, reward, terminated, truncated, info) of every step, after the reset's (obs, info)."""
    records = [env.reset(seed=seed)]
    for action in actions:
        records.append(env.step(action))
    return records


@pytest.mark.parametrize("task", TASKS)
def test_passes_gymnasium_env_checker_without_warnings(task):
    env = bullet_env(task, push_force_n=20.0, push_probability=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("task", TASKS)
def test_shipped_scenario_spaces_and_documented_layout(task):
    env = make_env(load_scenario(SCENARIOS / f"{task}.toml"))
    raw = env.unwrapped
    assert env.observation_space.shape == (OBSERVATION_SIZES[task],)
    assert env.observation_space.dtype == np.float32
    assert env.action_space.shape == (ACTION_SIZES[task],)
    assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
    obs, info = env.reset(seed=3)
    np.testing.assert_allclose(obs[0:3], raw.robot.get_ee_position(), atol=1e-6)
    np.testing.assert_allclose(obs[-6:-3], raw.task.get_achieved_goal(), atol=1e-6)
    np.testing.assert_allclose(obs[-3:], raw.task.get_goal(), atol=1e-6)
    assert set(info["safety"]) == {"collision", "success", "ttc_s", "gap_m", "progress_m", "violations"}
    assert info["safety"]["gap_m"] == pytest.approx(np.linalg.norm(obs[-6:-3] - obs[-3:]), abs=1e-6)
    assert raw.return_range == (-50 * DISTANCE_CAP_M, 0.0)
    env.close()


@pytest.mark.parametrize("task", ["reach", "push"])
def test_same_seed_same_trajectory_even_after_other_episodes(task):
    actions = np.random.default_rng(7).uniform(-1, 1, size=(20, ACTION_SIZES[task])).astype(np.float32)
    knobs = {"push_force_n": 30.0, "push_probability": 0.5, "terminate_on_success": False}
    first, second = bullet_env(task, per_step_log=True, **knobs), bullet_env(task, per_step_log=True, **knobs)
    reference = rollout(first, 11, actions)
    # The second env first plays other episodes: one drives the hand into the table and the cube, one
    # stops after a single step while the cube is still settling. A stale contact (pybullet keeps contact
    # manifolds across restoreState), velocity or generator state would show up in the replay.
    rollout(second, 5, np.tile(np.array([0.3, -0.3, -1.0, 0.0][:ACTION_SIZES[task]], np.float32), (30, 1)))
    rollout(second, 6, actions[:1])
    replay = rollout(second, 11, actions)
    assert data_equivalence(reference, replay, exact=True)
    pushes = [record[4]["step_log"]["push_force_x_n"] != 0 for record in reference[1:]]
    assert 3 <= sum(pushes) <= 17, "push_probability 0.5 should push in some steps, not all"

    other = rollout(first, 12, actions)
    assert not np.allclose(reference[0][0], other[0][0])
    assert not np.allclose(reference[-1][0], other[-1][0])
    first.close()
    second.close()


def displacement_after_one_pushed_step(*, push_force_n: float, **knobs) -> tuple[np.ndarray, np.ndarray]:
    """Cube displacement [m] and push force [N] (both horizontal) of the first step, arm held still."""
    env = bullet_env("push", per_step_log=True, push_force_n=push_force_n, push_probability=1.0,
                     terminate_on_success=False, **knobs)
    obs, _ = env.reset(seed=4)
    start_m = obs[6:9].copy()
    obs, _, _, _, info = env.step(np.zeros(3, dtype=np.float32))
    env.close()
    log = info["step_log"]
    moved_m = obs[6:9] - start_m
    assert abs(moved_m[2]) < 1e-3, "a horizontal push must not lift or sink the cube"
    return moved_m[:2].astype(np.float64), np.array([log["push_force_x_n"], log["push_force_y_n"]])


def expected_slide_m(*, force_n: float, mass_kg: float, friction: float) -> float:
    """Distance a resting cube slides in one control step under a constant horizontal force.

    Kinetic friction mu*m*g opposes the push, so a = F/m - mu*g; pybullet integrates with semi-implicit
    Euler (v_k = v_{k-1} + a dt, x_k = x_{k-1} + v_k dt), so after n substeps x = a dt^2 n(n+1)/2.
    """
    acceleration_mps2 = force_n / mass_kg - friction * GRAVITY_MPS2
    return acceleration_mps2 * SUBSTEP_S**2 * SUBSTEPS * (SUBSTEPS + 1) / 2


def test_pushed_cube_slides_along_the_force_by_the_analytic_distance():
    moved_m, force_n = displacement_after_one_pushed_step(push_force_n=20.0)
    cos_angle = moved_m @ force_n / (np.linalg.norm(moved_m) * np.linalg.norm(force_n))
    assert math.degrees(math.acos(min(cos_angle, 1.0))) < 2.0
    assert np.linalg.norm(force_n) == pytest.approx(20.0)
    expected = expected_slide_m(force_n=20.0, mass_kg=1.0, friction=CUBE_TABLE_FRICTION)  # 14.7 mm
    assert np.linalg.norm(moved_m) == pytest.approx(expected, rel=0.05)


def test_heavier_or_grippier_cube_slides_less_as_physics_predicts():
    base_m = np.linalg.norm(displacement_after_one_pushed_step(push_force_n=20.0)[0])
    heavy_m, heavy_force = displacement_after_one_pushed_step(push_force_n=20.0, mass_scale=2.0)
    grippy_m, _ = displacement_after_one_pushed_step(push_force_n=20.0, friction_scale=2.0)
    # Same seed => same push direction; only the dynamics changed.
    _, base_force = displacement_after_one_pushed_step(push_force_n=20.0)
    np.testing.assert_allclose(heavy_force, base_force)
    assert np.linalg.norm(heavy_m) < 0.6 * base_m
    assert np.linalg.norm(heavy_m) == pytest.approx(
        expected_slide_m(force_n=20.0, mass_kg=2.0, friction=CUBE_TABLE_FRICTION), rel=0.05)  # 6.3 mm
    assert np.linalg.norm(grippy_m) == pytest.approx(
        expected_slide_m(force_n=20.0, mass_kg=1.0, friction=2 * CUBE_TABLE_FRICTION), rel=0.05)  # 12.7 mm


def test_mass_and_friction_scaling_show_in_pybullet_dynamics_info():
    env = bullet_env("push", mass_scale=2.5, friction_scale=0.4)
    mass_kg, friction, inertia = env.client.getDynamicsInfo(env.object_id, -1)[:3]
    assert mass_kg == pytest.approx(2.5)  # panda-gym's cube: 1 kg
    assert friction == pytest.approx(0.4 * 0.5)  # pybullet default 0.5
    cube_inertia = 1.0 * 0.04**2 / 6  # solid cube, 4 cm edge, 1 kg [kg m^2]
    np.testing.assert_allclose(inertia, [2.5 * cube_inertia] * 3, rtol=1e-6)
    env.close()

    default, heavy = bullet_env("reach"), bullet_env("reach", mass_scale=2.0, friction_scale=3.0)
    for link in range(default.client.getNumJoints(default.robot_id)):
        plain = default.client.getDynamicsInfo(default.robot_id, link)
        scaled = heavy.client.getDynamicsInfo(heavy.robot_id, link)
        assert scaled[0] == pytest.approx(2.0 * plain[0])
        assert scaled[1] == pytest.approx(3.0 * plain[1])
    default.close()
    heavy.close()


def test_push_on_reach_moves_the_hand_along_the_force():
    # Seed 0 draws a push along +y, across the arm, where the position-controlled Panda yields most;
    # radially (along x) it is much stiffer, so a direction check needs a sideways push.
    calm, pushed = (bullet_env("reach", per_step_log=True, terminate_on_success=False, push_force_n=force,
                               push_probability=1.0) for force in (0.0, 300.0))
    calm.reset(seed=0)
    pushed.reset(seed=0)
    calm_obs, *_ = calm.step(np.zeros(3, dtype=np.float32))
    pushed_obs, _, _, _, info = pushed.step(np.zeros(3, dtype=np.float32))
    shift_m = (pushed_obs[:3] - calm_obs[:3])[:2]
    force_n = np.array([info["step_log"]["push_force_x_n"], info["step_log"]["push_force_y_n"]])
    assert np.linalg.norm(shift_m) > 0.01
    assert shift_m @ force_n > 0.9 * np.linalg.norm(shift_m) * np.linalg.norm(force_n)
    calm.close()
    pushed.close()


def test_truncates_at_episode_steps_and_terminates_on_success_only_when_asked():
    env = bullet_env("reach", episode_steps=5, terminate_on_success=False)
    env.reset(seed=0)
    flags = [env.step(np.zeros(3, dtype=np.float32))[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]
    env.close()

    env = bullet_env("reach", terminate_on_success=True)
    obs, _ = env.reset(seed=0)
    for _ in range(50):
        obs, _, terminated, truncated, info = env.step(np.clip(10 * (obs[-3:] - obs[:3]), -1, 1))
        if terminated or truncated:
            break
    assert terminated and info["safety"]["success"] and info["is_success"]
    env.close()


def test_pressing_into_the_table_is_a_collision_and_metrics_track_the_goal():
    env = bullet_env("reach", per_step_log=True, terminate_on_success=False)
    obs, info = env.reset(seed=2)
    initial_gap_m = info["safety"]["gap_m"]
    collisions = []
    for _ in range(20):  # drive the hand straight down into the table top at z = 0
        obs, _, _, _, info = env.step(np.array([0.0, 0.0, -1.0], dtype=np.float32))
        collisions.append(info["safety"]["collision"])
        gap_m = np.linalg.norm(obs[-6:-3] - obs[-3:])
        assert info["safety"]["gap_m"] == pytest.approx(gap_m, abs=1e-6)
        assert info["safety"]["progress_m"] == pytest.approx(initial_gap_m - gap_m, abs=1e-6)
        assert math.isinf(info["safety"]["ttc_s"])
    assert not collisions[0], "the hand starts 20 cm above the table"
    assert all(collisions[-5:])
    assert info["step_log"]["contact_force_n"] > 50.0
    assert info["step_log"]["ee_z_m"] < 0.02
    env.close()


def test_workspace_and_joint_limit_violations_are_counted():
    # The neutral end effector is at z = 0.197 m: above a 0.1 m ceiling it is one workspace violation.
    env = bullet_env("reach", workspace_high_m=[0.5, 0.5, 0.1], terminate_on_success=False)
    _, info = env.reset(seed=0)
    assert info["safety"]["violations"] == 1
    env.close()
    # Joint control: turn the wrist (joint 7, limit 2.9671 rad, neutral 0.79 rad) until it hits its limit.
    env = bullet_env("reach", control_type="joints", per_step_log=True, terminate_on_success=False)
    env.reset(seed=0)
    wrist_forward = np.array([0, 0, 0, 0, 0, 0, 1.0], dtype=np.float32)
    counts = []
    for _ in range(50):
        _, _, _, _, info = env.step(wrist_forward)
        angles_rad = [state[0] for state in env.client.getJointStates(env.robot_id, range(7))]
        near_limit = sum(min(angle - low, high - angle) < 0.05 for angle, low, high
                         in zip(angles_rad, env.joint_lower_rad, env.joint_upper_rad, strict=True))
        assert info["safety"]["violations"] == near_limit  # the hand only turns: no workspace violation
        counts.append(near_limit)
    assert counts[0] == 0 and counts[-1] == 1
    assert info["step_log"]["min_joint_margin_rad"] < 0.05
    env.close()


@pytest.mark.parametrize("reward_type, low", [("sparse", -50.0), ("dense", -50 * DISTANCE_CAP_M)])
def test_episode_returns_stay_inside_the_declared_return_range(reward_type, low):
    env = bullet_env("push", reward_type=reward_type, push_force_n=200.0, push_probability=0.3,
                     terminate_on_success=False)
    assert env.return_range == (low, 0.0)
    rng = np.random.default_rng(0)
    for seed in range(2):
        env.reset(seed=seed)
        episode_return = sum(env.step(rng.uniform(-1, 1, 3).astype(np.float32))[1] for _ in range(50))
        assert low <= episode_return <= 0.0
    env.close()


def test_constructing_an_env_prints_nothing_on_stdout(capfd):
    from panda_gym.pybullet import PyBullet

    raw = PyBullet(render_mode="rgb_array", renderer="Tiny")  # what the silencer is for
    raw.close()
    assert "argv[0]=" in capfd.readouterr().out
    env = bullet_env("push")
    env.reset(seed=0)
    env.close()
    with quiet_stdout():
        os.write(1, b"swallowed\n")  # file descriptor 1, as C printf writes
    os.write(1, b"kept\n")
    assert capfd.readouterr().out == "kept\n"


def test_stdout_through_a_pipe_stays_one_json_document():
    # A pipe makes C stdio fully buffered: text buffered inside the silenced block must not leak later.
    program = ("import json; from safetybed.sims import make_env; from safetybed.spec import load_scenario; "
               f"env = make_env(load_scenario({str(SCENARIOS / 'push.toml')!r})); env.reset(seed=0); "
               "env.close(); print(json.dumps({'ok': True}))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == {"ok": True}


def test_bad_input_gets_clear_errors():
    env = bullet_env("pick_and_place")
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros(4, dtype=np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action: expected shape \(4,\)"):
        env.step(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([0.0, np.nan, 0.0, 0.0], dtype=np.float32))
    env.close()
    with pytest.raises(SpecError, match="workspace_low_m"):
        parse_scenario({"name": "x", "simulator": "bullet", "task": "reach", "episode_steps": 5,
                        "bullet": {"workspace_low_m": [0.0, 0.0, 0.7]}})
    with pytest.raises(SpecError, match="push_force_m"):
        parse_scenario({"name": "x", "simulator": "bullet", "task": "reach", "episode_steps": 5,
                        "bullet": {"push_force_m": 3.0}})
