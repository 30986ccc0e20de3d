"""The classic-control adapter (CartPole, Pendulum, MuJoCo InvertedDoublePendulum) and the observation-noise wrapper it is used with."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

from safetybed.sims import make_env
from safetybed.sims.base import ObservationNoise
from safetybed.sims.classic import PENDULUM_MAX_COST, ClassicControlEnv, make_classic_env
from safetybed.spec import load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "classic"
#: Warnings gymnasium's checker raises about gymnasium's own spaces, which the adapter keeps on purpose:
#: CartPole's velocity bounds are infinite; Pendulum's action is a torque in [-2, 2] N m.
KNOWN_WARNINGS = ("observation space minimum value is -infinity", "observation space maximum value is infinity",
                  "recommend using a symmetric and normalized space")


def classic_env(task: str, *, episode_steps: int = 200, **classic) -> ClassicControlEnv:
    return make_classic_env(parse_scenario({"name": f"test/{task}", "simulator": "classic", "task": task,
                                            "episode_steps": episode_steps, "metrics": {"per_step_log": True},
                                            "classic": classic}))


def balance(obs: np.ndarray) -> int:
    """A linear CartPole rule that balances every seed tried (0-19) for 200 steps."""
    x_m, speed_mps, angle_rad, rate_radps = obs
    return int(angle_rad + 0.5 * rate_radps + 0.05 * x_m + 0.1 * speed_mps > 0)


@pytest.mark.parametrize("task", ["cartpole", "pendulum", "inverted_double_pendulum"])
def test_passes_gymnasium_env_checker(task):
    env = classic_env(task)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    unexpected = [str(w.message) for w in caught if not any(known in str(w.message) for known in KNOWN_WARNINGS)]
    assert unexpected == []


def test_cartpole_200_truncates_at_200_steps_with_success_and_full_return():
    env = make_env(load_scenario(SCENARIOS / "cartpole.toml"))
    assert env.unwrapped.return_range == (0.0, 200.0)
    assert env.action_space.n == 2 and env.observation_space.shape == (4,)
    obs, info = env.reset(seed=3)
    assert info["safety"]["gap_m"] == pytest.approx(2.4 - abs(obs[0]), abs=1e-6)
    episode_return, steps = 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(balance(obs))
        episode_return += reward
        steps += 1
        if terminated or truncated:
            break
        assert not info["safety"]["success"], "success is only declared at the end"
    assert (steps, terminated, truncated) == (200, False, True)
    assert info["safety"]["success"] and not info["safety"]["collision"]
    assert episode_return == 200.0


def test_cartpole_fall_is_a_collision_before_the_limit():
    env = classic_env("cartpole")
    env.reset(seed=0)
    steps = 0
    while True:  # always push right: the pole falls within a few dozen steps
        _, reward, terminated, truncated, info = env.step(1)
        steps += 1
        if terminated or truncated:
            break
    assert terminated and not truncated and steps < 200
    assert info["safety"]["collision"] and not info["safety"]["success"]
    assert abs(info["step_log"]["pole_angle_rad"]) > 12 * math.pi / 180 or info["safety"]["gap_m"] < 0


def test_pendulum_success_means_upright_and_returns_stay_in_range():
    env = classic_env("pendulum")
    low, high = env.return_range
    assert high == 0.0 and low == pytest.approx(-200 * 16.2736044, rel=1e-6)
    assert PENDULUM_MAX_COST == pytest.approx(math.pi**2 + 6.4 + 0.004)
    # Start exactly upright and at rest (gymnasium's reset options): zero torque keeps it there.
    _, info = env.reset(seed=0, options={"x_init": 0.0, "y_init": 0.0})
    assert info["safety"]["success"]
    _, _, _, _, info = env.step(np.zeros(1, dtype=np.float32))
    assert info["safety"]["success"] and info["step_log"]["angle_rad"] == 0.0
    # Hanging down (random start, full torque one way) is never upright; the return stays in range.
    env.reset(seed=1)
    episode_return = 0.0
    for _ in range(200):
        _, reward, terminated, truncated, info = env.step(np.array([2.0], dtype=np.float32))
        episode_return += reward
        assert info["safety"]["violations"] == 0 and not info["safety"]["collision"]
    assert truncated and not terminated
    assert low <= episode_return <= high


def test_gravity_knob_changes_the_dynamics():
    results = []
    for gravity in (None, 20.0):
        env = classic_env("cartpole") if gravity is None else classic_env("cartpole", gravity_mps2=gravity)
        env.reset(seed=5)
        for _ in range(5):
            obs, *_ = env.step(0)
        results.append(obs)
    assert classic_env("cartpole").inner.gravity == 9.8
    assert classic_env("pendulum").inner.g == 10.0 and classic_env("pendulum", gravity_mps2=3.7).inner.g == 3.7
    assert abs(results[1][3]) > abs(results[0][3])  # the pole falls faster under stronger gravity


@pytest.mark.parametrize("task", ["cartpole", "pendulum", "inverted_double_pendulum"])
def test_same_seed_same_trajectory_different_seed_different(task):
    env = classic_env(task)
    rng = np.random.default_rng(0)
    actions = ([int(a) for a in rng.integers(0, 2, 20)] if task == "cartpole"
               else [rng.uniform(-1, 1, 1).astype(np.float32) for _ in range(20)])

    def play(seed):
        records = [env.reset(seed=seed)]
        for action in actions:
            records.append(env.step(action))
            if records[-1][2]:
                break
        return records

    first = play(7)
    play(8)
    assert data_equivalence(first, play(7), exact=True)
    assert not np.allclose(first[0][0], play(8)[0][0])


def test_inverted_double_pendulum_fall_is_a_collision_with_the_tip_height_as_gap():
    env = make_env(load_scenario(SCENARIOS / "inverted_double_pendulum.toml"))
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert 0.1 < info["safety"]["gap_m"] < 0.2  # the tip starts near 1.2 m, 1 m is the fall height
    total, steps, terminated, truncated = 0.0, 0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(np.ones(1, dtype=np.float32))  # full push: falls
        total, steps = total + reward, steps + 1
    assert terminated and not truncated and steps < 100
    assert info["safety"]["collision"] and not info["safety"]["success"] and info["safety"]["gap_m"] <= 0
    assert env.unwrapped.return_range == (-math.inf, 10.0 * 1000) and total < 10.0 * steps
    heavy = classic_env("inverted_double_pendulum", gravity_mps2=20.0)
    assert heavy.inner.model.opt.gravity[2] == -20.0


ALPHA = 1e-6  # two-sided level of the noise checks below: a failure is a real discrepancy, not bad luck


def test_cartpole_noisy_adds_gaussian_noise_of_the_stated_std():
    noisy = make_env(load_scenario(SCENARIOS / "cartpole_noisy.toml"))
    clean = make_env(load_scenario(SCENARIOS / "cartpole.toml"))
    assert isinstance(noisy, ObservationNoise) and noisy.std == 0.2
    noise = []
    for seed in range(10):
        noisy_obs, _ = noisy.reset(seed=seed)
        clean_obs, _ = clean.reset(seed=seed)
        for _ in range(200):
            noise.append(noisy_obs - clean_obs)
            # Act on the clean state so both envs follow the same trajectory.
            action = balance(clean_obs)
            noisy_obs, _, terminated, truncated, _ = noisy.step(action)
            clean_obs, *_ = clean.step(action)
            if terminated or truncated:
                break
    noise = np.concatenate(noise).astype(np.float64)
    n = noise.size  # 8000 draws
    # For Gaussian draws the sample std has standard error sigma / sqrt(2 n) (= 0.0016 here) and the mean
    # sigma / sqrt(n); z = 4.9 is the two-sided ALPHA = 1e-6 quantile.
    z = 4.9
    assert n >= 4000
    assert abs(noise.std(ddof=1) - 0.2) < z * 0.2 / math.sqrt(2 * n)
    assert abs(noise.mean()) < z * 0.2 / math.sqrt(n)
    # Fresh noise every step and per component: neighbouring draws are uncorrelated.
    assert abs(np.corrcoef(noise[:-1], noise[1:])[0, 1]) < z / math.sqrt(n)


def test_bad_actions_get_clear_errors():
    env = classic_env("cartpole")
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="expected 0 or 1"):
        env.step(2)
    env = classic_env("pendulum")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        env.step(np.zeros(2, dtype=np.float32))
