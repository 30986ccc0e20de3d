"""builtin:idm: the vectorised ``act`` equals the per-row reference (``act_reference``) bitwise.

Random and edge-case observation batches in the layout of :mod:`safetybed.spec.highway` for several catalogue
scenarios (and one with non-default parameters, anticipation and yield horizon 0), then real highway-env
observations. Each batch also checks that the branches it is meant to exercise are hit (lane changes to both
sides, clipping at both ends, conflict leaders, alongside vehicles), so a vacuous batch cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest

from safetybed.control import load_controller
from safetybed.control.builtin_idm import BatchedDrivingRules, IDMController, _libm_pow
from safetybed.sims import make_env
from safetybed.sims.highway import make_highway_env
from safetybed.spec import parse_scenario
from safetybed.spec.catalogue import load_scenario_arg
from safetybed.spec.highway import EGO_FEATURES, VEHICLE_FEATURES

SCENARIOS = ("highway/cut_in", "highway/cruise", "highway/overtaking", "highway/intersection",
             "highway/roundabout", "highway/merge")
EGO = {name: index for index, name in enumerate(EGO_FEATURES)}
VEH = {name: index for index, name in enumerate(VEHICLE_FEATURES)}

#: Non-default parameters: no anticipation, no yielding, polite MOBIL, other IDM exponents, a low threshold,
#: jam distances 0 (then a vehicle alongside need not make the IDM brake: only the alongside test refuses).
CUSTOM = {"name": "test/custom_idm", "simulator": "highway", "task": "cruise", "episode_steps": 10,
          "highway": {"observed_vehicles": 6,
                      "ego": {"lateral_anticipation_s": 0.0, "yield_horizon_s": 0.0, "mobil_politeness": 0.5,
                              "mobil_gain_threshold_mps2": 0.0, "idm_delta": 3.0, "idm_desired_speed_mps": 25.0,
                              "idm_min_gap_m": 0.0},
                      "driver": {"idm_delta": 2.5, "idm_desired_speed_mps": 30.0, "idm_min_gap_m": 0.0}}}


def _spec(name: str):
    return parse_scenario(CUSTOM) if name == "custom" else load_scenario_arg(name)[0]


def _controller(spec) -> IDMController:
    env = make_highway_env(spec)
    ctrl = load_controller("builtin:idm", scenario=spec, observation_space=env.observation_space,
                           action_space=env.action_space)
    assert isinstance(ctrl, IDMController) and ctrl.batch_stateless
    return ctrl


def _assert_bitwise_equal(ctrl: IDMController, obs: np.ndarray) -> np.ndarray:
    # The float64 decisions first: the float32 actions would hide most last-bit differences.
    rules = ctrl.rules
    acceleration, lane_change = BatchedDrivingRules(rules, ctrl.check_batch(obs)).decide()
    expected_change = np.empty(len(obs))
    expected_acceleration = np.empty(len(obs))
    for index, row in enumerate(ctrl.check_batch(obs)):
        traffic = rules.traffic(row)
        expected_change[index] = rules.mobil_lane_change(traffic)
        expected_acceleration[index] = rules.longitudinal_acceleration(traffic, lane_change=int(expected_change[index]))
    assert acceleration.dtype == np.float64
    differ = np.flatnonzero(acceleration.view(np.uint64) != expected_acceleration.view(np.uint64))
    assert differ.size == 0, (f"float64 accelerations: {differ.size} of {len(obs)} rows differ, first {differ[:5]}: "
                              f"{acceleration[differ[:3]]} vs {expected_acceleration[differ[:3]]}")
    assert np.array_equal(lane_change, expected_change, equal_nan=True)
    fast, reference = ctrl.act(obs), ctrl.act_reference(obs)
    assert fast.dtype == reference.dtype == np.float32 and fast.shape == reference.shape == (len(obs), 2)
    differ = np.flatnonzero(~np.all(fast.view(np.uint32) == reference.view(np.uint32), axis=1))
    assert differ.size == 0, (f"{differ.size} of {len(obs)} rows differ, first {differ[:5]}: "
                              f"vectorised {fast[differ[:3]]} reference {reference[differ[:3]]}")
    assert np.array_equal(fast, reference, equal_nan=True)
    return reference


def _random_batch(rng: np.random.Generator, observed: int, rows: int) -> np.ndarray:
    """Observations around the ego: vehicles near lane centres (and boundaries), alongside, cutting in, crossing."""
    obs = np.zeros((rows, len(EGO_FEATURES) + observed * len(VEHICLE_FEATURES)))
    ego = obs[:, :len(EGO_FEATURES)]
    ego[:, EGO["speed_mps"]] = rng.choice([0.0, 0.3, 0.999, 1.0, 5.0, 20.0, 30.0, 33.33, 40.0], rows) \
        + rng.uniform(0.0, 1.0, rows) * rng.integers(0, 2, rows)
    width = rng.choice([4.0, 4.0, 4.0, 3.5, 0.6], rows) + rng.normal(0.0, 0.05, rows) * rng.integers(0, 2, rows)
    ego[:, EGO["lane_width_m"]] = width
    ego[:, EGO["lanes_left"]] = rng.choice([0.0, 1.0, 2.0, 0.49, 0.5, 0.51], rows, p=[.3, .3, .1, .1, .1, .1])
    ego[:, EGO["lanes_right"]] = rng.choice([0.0, 1.0, 2.0, 0.49, 0.5, 0.51], rows, p=[.3, .3, .1, .1, .1, .1])
    ego[:, EGO["target_lane_shift"]] = rng.choice([0.0, -1.0, 1.0, 0.4, -0.6, 0.5, 1.5, 2.0, -2.0], rows,
                                                  p=[.6, .1, .1, .04, .04, .03, .03, .03, .03])
    ego[:, EGO["speed_limit_mps"]] = rng.choice([0.0, 10.0, 20.0, 30.0, 35.0, 40.0], rows)
    ego[:, EGO["lateral_offset_m"]] = rng.normal(0.0, 0.5, rows)
    ego[:, EGO["heading_error_rad"]] = rng.normal(0.0, 0.1, rows)
    slots = obs[:, len(EGO_FEATURES):].reshape(rows, observed, len(VEHICLE_FEATURES))
    shape = (rows, observed)
    lane = rng.integers(-2, 3, shape)
    slots[..., VEH["presence"]] = rng.choice([0.0, 1.0, 1.0, 0.4, 0.6], shape)
    slots[..., VEH["dx_m"]] = np.where(rng.random(shape) < 0.25, rng.choice([-5.0, -4.9, 0.0, 4.9, 5.0, 5.1], shape),
                                       rng.uniform(-60.0, 60.0, shape))
    on_boundary = rng.random(shape) < 0.1
    dy = lane * width[:, None] + rng.normal(0.0, 0.4, shape)
    slots[..., VEH["dy_m"]] = np.where(on_boundary, np.sign(lane + 0.5) * (0.5 * width[:, None] + 1.0), dy)
    slots[..., VEH["dvx_mps"]] = rng.uniform(-15.0, 15.0, shape) * rng.integers(0, 2, shape)
    slots[..., VEH["vy_mps"]] = rng.uniform(-4.0, 4.0, shape) * (rng.random(shape) < 0.4)
    # Crossing traffic ahead (intersection / roundabout): far to the side, moving across the ego's lane.
    crossing = rng.random(shape) < 0.08
    slots[..., VEH["dy_m"]] = np.where(crossing, rng.choice([-12.0, 12.0], shape), slots[..., VEH["dy_m"]])
    slots[..., VEH["vy_mps"]] = np.where(crossing, -np.sign(slots[..., VEH["dy_m"]]) * rng.uniform(3.0, 10.0, shape),
                                         slots[..., VEH["vy_mps"]])
    slots[..., VEH["dx_m"]] = np.where(crossing, rng.uniform(3.0, 40.0, shape), slots[..., VEH["dx_m"]])
    # Empty slots are all zeros, except some with junk behind presence 0 (must be ignored all the same).
    empty = (slots[..., VEH["presence"]] <= 0.5) & (rng.random(shape) < 0.7)
    slots[empty] = 0.0
    return obs.astype(np.float32)


def _edge_cases(observed: int) -> np.ndarray:
    """Hand-made rows: empty road, alongside, cut-ins, ties, no side lanes, standstill, crossing traffic."""
    def row(*, speed=25.0, left=1.0, right=1.0, shift=0.0, limit=35.0, width=4.0, vehicles=()):
        ego = dict.fromkeys(EGO_FEATURES, 0.0)
        ego.update(speed_mps=speed, lane_width_m=width, lanes_left=left, lanes_right=right,
                   target_lane_shift=shift, speed_limit_mps=limit)
        slots = np.zeros((observed, len(VEHICLE_FEATURES)))
        for slot, vehicle in enumerate(vehicles[:observed]):
            slots[slot] = (1.0, *vehicle)
        return np.concatenate([[ego[name] for name in EGO_FEATURES], slots.ravel()])

    slow_leader = (20.0, 0.0, -10.0, 0.0)
    rows = [
        row(), row(speed=0.0), row(speed=0.5), row(speed=1.0, vehicles=[slow_leader]), row(speed=0.0, limit=0.0),
        row(left=0.0, right=0.0, vehicles=[slow_leader]),  # no side lanes: stays
        row(vehicles=[slow_leader]),  # overtakes
        row(vehicles=[slow_leader, (0.0, -4.0, 0.0, 0.0)]),  # left blocked alongside
        row(vehicles=[slow_leader, (2.0, -4.0, 0.0, 0.0), (-1.0, 4.0, 0.0, 0.0)]),  # both sides alongside
        row(vehicles=[slow_leader, (-8.0, -4.0, 10.0, 0.0)]),  # fast new follower on the left: unsafe
        row(vehicles=[(15.0, -4.0, 0.0, 3.0)]),  # cut-in from the left, lateral speed
        row(vehicles=[(15.0, 4.0, -5.0, -2.5), (30.0, 0.0, -2.0, 0.0)]),  # cut-in from the right
        row(vehicles=[(12.0, 0.0, 0.0, 0.0), (12.0, 0.0, -5.0, 0.0)]),  # tied gaps: the first slot wins
        row(vehicles=[(60.0, 0.0, 0.0, 0.0), (60.0, 0.0, -3.0, 0.0)]),  # ... unclipped
        row(vehicles=[(60.0, 0.0, -3.0, 0.0), (60.0, 0.0, 0.0, 0.0)]),
        row(vehicles=[(-10.0, 0.0, 0.0, 0.0), (-10.0, 0.0, 5.0, 0.0), slow_leader]),  # tied followers
        row(shift=1.0, vehicles=[slow_leader, (10.0, 4.0, -20.0, 0.0)]),  # change in progress, target leader
        row(shift=-1.0, vehicles=[(10.0, -4.0, -20.0, 0.0)]),
        row(shift=2.0, vehicles=[(10.0, 8.0, -20.0, 0.0)]),  # two lanes over
        row(vehicles=[(10.0, -12.0, -25.0, 8.0)]),  # crossing traffic: yield
        row(vehicles=[(10.0, 12.0, -25.0, -8.0), (8.0, -12.0, -25.0, 8.0)]),
        row(speed=10.0, vehicles=[(10.0, -12.0, -25.0, 8.0)]),  # crossing vehicle moving backwards: speed 0
        row(vehicles=[(10.0, 3.0, -25.0, -10.0)]),  # exactly on the corridor edge |dy| = w / 2 + 1, jumping across
        row(vehicles=[(10.0, -3.0, -25.0, 10.0)]),
        row(speed=5.0, vehicles=[(20.0, 0.0, -5.0, 0.0), (2.0, -4.0, 15.0, 0.0)]),  # alongside, pulling away
        row(speed=5.0, vehicles=[(20.0, 0.0, -5.0, 0.0), (-2.0, 4.0, -5.0, 0.0)]),  # alongside, stopped
        row(speed=5.0, vehicles=[(3.0, 0.0, -5.0, 0.0)]),  # overlapping leader: gap floor
        row(speed=40.0, limit=20.0, vehicles=[(5.05, 0.0, -40.0, 0.0)]),  # hard braking: clipped at -1
        row(speed=33.33, limit=33.33), row(width=0.5, vehicles=[slow_leader, (10.0, -1.2, 0.0, 0.0)]),
        row(speed=30.0, vehicles=[(25.0, 0.0, -12.0, 0.0), (-30.0, -4.0, -5.0, 0.0), (60.0, -4.0, 5.0, 0.0),
                                  (-40.0, 4.0, -8.0, 0.0), (50.0, 4.0, 2.0, 0.0)]),
    ]
    return np.array(rows, dtype=np.float32)


def _hits(ctrl: IDMController, obs: np.ndarray) -> dict[str, int]:
    rules = ctrl.rules
    traffics = [rules.traffic(row) for row in obs]
    return {"conflict": sum(t.conflict_leader(horizon_s=rules.yield_horizon_s) is not None for t in traffics),
            "shift": sum(t.target_lane_shift != 0 for t in traffics)}


@pytest.mark.parametrize("name", [*SCENARIOS, "custom"])
def test_vectorised_act_equals_the_row_code_on_random_and_edge_case_batches(name):
    spec = _spec(name)
    ctrl = _controller(spec)
    observed = spec.highway.observed_vehicles
    obs = np.concatenate([_edge_cases(observed), _random_batch(np.random.default_rng(len(name)), observed, 600)])
    actions = _assert_bitwise_equal(ctrl, obs)
    # The batch exercises the branches: both lane changes, braking clipped at -1 (a_max / scale < 1, so no +1
    # clip), unclipped values, changes in progress, conflict leaders.
    assert {-1.0, 0.0, 1.0} <= set(actions[:, 1].tolist())
    assert (actions[:, 0] == -1.0).sum() > 10
    assert ((np.abs(actions[:, 0]) < 1.0) & (actions[:, 0] != 0.0)).sum() > 100
    hits = _hits(ctrl, obs)
    assert hits["shift"] > 50
    assert hits["conflict"] > 10 or spec.highway.ego.yield_horizon_s == 0
    # Extreme values (inf, nan, +-3e38, denormals, -0): Python's min / max and numpy's differ on nan. Not in
    # target_lane_shift, whose int(round(.)) in the row code raises on inf / nan.
    extreme = _random_batch(np.random.default_rng(7), observed, 400)
    rng = np.random.default_rng(8)
    replace = rng.random(extreme.shape) < 0.03
    replace[:, EGO["target_lane_shift"]] = False
    values = np.array([np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-40, -0.0], dtype=np.float32)
    extreme = np.where(replace, rng.choice(values, extreme.shape), extreme)
    with np.errstate(all="ignore"):
        assert np.isnan(_assert_bitwise_equal(ctrl, extreme)).any()
    # A row alone gives the same bits as inside the batch (no batch dependence), through act (which serves
    # batches below 4 rows with the row code) and through BatchedDrivingRules itself.
    full = BatchedDrivingRules(ctrl.rules, ctrl.check_batch(obs)).decide()
    for index in (0, 7, len(obs) - 1):
        assert np.array_equal(ctrl.act(obs[index:index + 1]), actions[index:index + 1])
        alone = BatchedDrivingRules(ctrl.rules, ctrl.check_batch(obs[index:index + 1])).decide()
        assert all(np.array_equal(one, whole[index:index + 1]) for one, whole in zip(alone, full, strict=True))
    assert ctrl.act(obs[:0]).shape == (0, 2)


@pytest.mark.parametrize("name", ["highway/cut_in", "highway/intersection", "highway/roundabout", "highway/merge"])
def test_vectorised_act_equals_the_row_code_on_highway_env_observations(name):
    spec = load_scenario_arg(name)[0]
    env = make_env(spec)
    ctrl = load_controller("builtin:idm", scenario=spec, observation_space=env.observation_space,
                           action_space=env.action_space)
    observations = []
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        for _ in range(25):
            observations.append(obs)
            obs, _, terminated, truncated, _ = env.step(ctrl.act(obs[None])[0])
            if terminated or truncated:
                break
    env.close()
    obs = np.stack(observations)
    assert obs[:, len(EGO_FEATURES)::len(VEHICLE_FEATURES)].sum() > len(obs)  # traffic is observed
    _assert_bitwise_equal(ctrl, obs)
    # Perturbed copies: lateral speeds (cut-ins), shifted gaps, slower/faster ego.
    rng = np.random.default_rng(3)
    perturbed = np.repeat(obs, 4, axis=0).astype(np.float64)
    slots = perturbed[:, len(EGO_FEATURES):].reshape(len(perturbed), -1, len(VEHICLE_FEATURES))
    slots[..., VEH["vy_mps"]] += rng.normal(0.0, 2.0, slots.shape[:2]) * slots[..., VEH["presence"]]
    slots[..., VEH["dx_m"]] += rng.normal(0.0, 5.0, slots.shape[:2]) * slots[..., VEH["presence"]]
    perturbed[:, EGO["speed_mps"]] *= rng.uniform(0.0, 1.5, len(perturbed))
    _assert_bitwise_equal(ctrl, perturbed.astype(np.float32))


def test_libm_pow_is_numpys_scalar_pow():
    rng = np.random.default_rng(0)
    base = np.concatenate([rng.uniform(0.0, 3.0, 3000), rng.uniform(0.0, 1e3, 1000), [0.0, -0.0, np.inf, np.nan,
                                                                                      1e200, 1.0]])
    for exponent in (2, 4.0, 3.0, 2.5):
        with np.errstate(all="ignore"):
            expected = np.array([np.float64(value) ** exponent for value in base])
        got = _libm_pow(base, exponent)
        assert np.array_equal(got.view(np.uint64), expected.view(np.uint64))
