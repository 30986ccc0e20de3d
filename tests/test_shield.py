"""The idm safety shield: hand-checked decisions on synthetic observations, physical outcomes, loading and errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from safetybed.control import load_controller
from safetybed.control.base import Controller
from safetybed.control.shield import IDMShield
from safetybed.errors import InputError
from safetybed.sims import make_env
from safetybed.sims.highway import make_highway_env
from safetybed.sims.rollout import rollout
from safetybed.spec import load_scenario

from .conftest import REPO_ROOT
from .test_builtin_idm import observation, spec

SHIELDED_SPEC = REPO_ROOT / "controllers" / "highway_sac_shielded.toml"


class FixedAction(Controller):
    """Returns the same action for every observation (a stand-in for a policy)."""

    name = "fixed"

    def __init__(self, observation_space, action_space, action):
        super().__init__(observation_space, action_space)
        self.action = np.asarray(action, dtype=np.float32)

    def act(self, obs_batch: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        return np.tile(self.action, (self.check_batch(obs_batch).shape[0], 1))


class Weaver(Controller):
    """Full throttle and a random lane-change request every step: a reckless policy."""

    name = "weaver"

    def act(self, obs_batch: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        batch = self.check_batch(obs_batch).shape[0]
        return np.column_stack([np.ones(batch), self.rng.choice([-1.0, 1.0], size=batch)]).astype(np.float32)


def shielded(action, scenario=None) -> IDMShield:
    scenario = scenario or spec()
    env = make_highway_env(scenario)
    return IDMShield(FixedAction(env.observation_space, env.action_space, action), scenario=scenario)


def act(shield: IDMShield, obs: np.ndarray) -> np.ndarray:
    return shield.act(obs[None])[0]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- decisions on synthetic observations ----------------------------------------------------------------------------
def test_an_unsafe_lane_change_is_replaced_by_keep_lane():
    shield = shielded([-0.5, -0.9])  # gentle braking, change left
    alongside = (1.0, -4.0, 0.0, 0.0)  # a car right next to the ego in the left lane
    action = act(shield, observation(vehicles=[alongside]))
    assert action[1] == 0.0 and action[0] == pytest.approx(-0.5)
    # Close behind in the left lane and 8 m/s faster: its IDM braking for the ego would exceed 3 m/s^2.
    assert act(shield, observation(vehicles=[(-12.0, -4.0, 8.0, 0.0)]))[1] == 0.0
    # Two lanes to the left, moving towards the target lane at 2 m/s: it occupies the lane within 1 s.
    arriving = (2.0, -8.0, 0.0, 2.0)
    assert act(shield, observation(lanes_left=2, vehicles=[arriving]))[1] == 0.0
    assert act(shield, observation(lanes_left=2, vehicles=[(2.0, -8.0, 0.0, 0.0)]))[1] == -0.9  # staying there
    assert act(shield, observation(lanes_left=0))[1] == 0.0  # no lane on the left


def test_a_safe_lane_change_and_a_safe_action_are_left_untouched():
    far_behind_slower = (-60.0, -4.0, -2.0, 0.0)
    for action, obs in [([0.1, -0.9], observation(vehicles=[far_behind_slower])),
                        ([0.1, 0.8], observation(vehicles=[(-4.0, -4.0, 0.0, 0.0)])),  # the car is on the left
                        ([-0.2, 0.0], observation()),
                        ([-1.0, 0.2], observation(vehicles=[(1.0, -4.0, 0.0, 0.0)]))]:  # 0.2: no request
        shield = shielded(action)
        assert np.array_equal(act(shield, obs), np.asarray(action, dtype=np.float32))
        assert np.array_equal(shield.act(np.stack([obs, obs])), np.tile(np.float32(action), (2, 1)))


def test_acceleration_is_capped_by_the_idm_behind_a_slow_leader():
    # The value hand-computed in test_builtin_idm: ego 20 m/s, leader 30 m bumper gap ahead, 5 m/s slower, D2RL AV
    # IDM (a_max 1.5, b 2, s0 2 m, T 1.2 s, v0 33.33 m/s): a = -3.7119 m/s^2 -> command -3.7119 / 5.
    expected = 1.5 * (1 - (20 / 33.33) ** 4 - ((2 + 24 + 100 / (2 * math.sqrt(3.0))) / 30) ** 2) / 5.0
    leader = (35.0, 0.0, -5.0, 0.0)
    obs = observation(speed=20.0, lanes_left=0, lanes_right=0, vehicles=[leader])
    assert act(shielded([1.0, 0.0]), obs)[0] == pytest.approx(expected, rel=1e-5)
    assert act(shielded([-0.9, 0.0]), obs)[0] == pytest.approx(-0.9)  # already braking harder: unchanged
    # During a lane change to the right, the same leader in the target lane caps the command too.
    changing = observation(speed=20.0, shift=1, vehicles=[(35.0, 4.0, -5.0, 0.0)])
    assert act(shielded([1.0, 1.0]), changing) == pytest.approx([expected, 1.0], rel=1e-5)
    # On a free road the bound is the IDM's free-road acceleration: 1.5 (1 - (25 / 33.33)^4) at 25 m/s.
    assert act(shielded([1.0, 0.0]), observation())[0] == pytest.approx(1.5 * (1 - (25 / 33.33) ** 4) / 5, rel=1e-5)


def test_shield_is_stateless_and_passes_the_controller_seed_on():
    env = make_highway_env(spec())
    shield = IDMShield(Weaver(env.observation_space, env.action_space), scenario=spec())
    obs = np.stack([observation(vehicles=[(1.0, -4.0, 0.0, 0.0)])] * 4)
    shield.reset(seed=3)
    first = shield.act(obs)
    shield.reset(seed=3)
    assert np.array_equal(shield.act(obs), first)
    assert np.all(first[:, 1] != -1.0)  # the left change is never let through with a car alongside


# -- physical outcome in highway-env --------------------------------------------------------------------------------
def test_a_reckless_policy_stops_crashing_behind_the_shield():
    # Measured on highway/cruise, seeds 0-9: the weaver crashes in 10/10 episodes alone and in 0/10 shielded.
    scenario = load_scenario(REPO_ROOT / "scenarios" / "highway" / "cruise.toml")
    env = make_env(scenario)
    weaver = Weaver(env.observation_space, env.action_space)
    shield = IDMShield(weaver, scenario=scenario)
    raw = [rollout(env, weaver, seed=seed) for seed in range(4)]
    safe = [rollout(env, shield, seed=seed) for seed in range(4)]
    assert sum(record.collision for record in raw) >= 3
    assert not any(record.collision for record in safe)
    assert all(record.length == scenario.episode_steps for record in safe)
    assert np.mean([record.episode_return for record in safe]) > 0.7 * scenario.episode_steps  # it keeps moving


# -- loading, runner, errors ----------------------------------------------------------------------------------------
def test_shipped_shielded_spec_acts_through_the_runner(cli, tmp_path):
    scenario = load_scenario(REPO_ROOT / "scenarios" / "highway" / "cut_in.toml")
    env = make_env(scenario)
    controller = load_controller(str(SHIELDED_SPEC), scenario=scenario, observation_space=env.observation_space,
                                 action_space=env.action_space)
    assert isinstance(controller, IDMShield) and controller.name == str(SHIELDED_SPEC)
    code, stdout, stderr = cli("run", "highway/cut_in", "--controller", str(SHIELDED_SPEC), "--episodes", "2",
                               "--workers", "2", "--store", str(tmp_path / "s.sqlite"), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["episodes"] == 2 and summary["controller"] == str(SHIELDED_SPEC)
    assert summary["collision_rate"] == 0.0


def test_idm_shield_with_a_classic_scenario_is_a_clear_error(tmp_path):
    checkpoint = REPO_ROOT / "controllers" / "weights" / "highway_sac"
    path = tmp_path / "shielded_pendulum.toml"
    path.write_text(f'name = "x"\nalgorithm = "sac"\nscenario = "classic/pendulum"\ncheckpoint = "{checkpoint}"\n'
                    f'shield = "idm"\n', encoding="utf-8")
    scenario = load_scenario(REPO_ROOT / "scenarios" / "classic" / "pendulum.toml")
    env = make_env(scenario)
    with pytest.raises(InputError, match=r'shield = "idm" shields highway controllers only.*classic scenario'):
        load_controller(str(path), scenario=scenario, observation_space=env.observation_space,
                        action_space=env.action_space)
    highway_env = make_highway_env(spec())
    inner = FixedAction(highway_env.observation_space, highway_env.action_space, [0.0, 0.0])
    with pytest.raises(ValueError, match="highway scenarios only"):
        IDMShield(inner, scenario=scenario)


def test_deploy_refuses_a_shielded_spec(tmp_path):
    from safetybed.control.bundle import deploy

    with pytest.raises(InputError, match="cannot be deployed"):
        deploy(str(SHIELDED_SPEC), tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
