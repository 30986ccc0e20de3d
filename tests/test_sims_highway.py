"""highway-env adapter: API conformance, determinism, the naturalistic driver's pmf and decision timing, the hooks.

Every test is seeded; vehicle counts and horizons are small so the module runs in seconds.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from safetybed.errors import InputError
from safetybed.sims import make_env
from safetybed.sims.highway import FAMILIES, make_highway_env
from safetybed.sims.highway_driver import (
    ACTION_LEFT,
    ACTION_RIGHT,
    FIRST_ACCELERATION_ACTION,
    NaturalisticVehicle,
    acceleration_pmf,
    lane_change_probability,
)
from safetybed.sims.idm import IDMParams, idm_acceleration
from safetybed.spec import load_scenario, parse_scenario
from safetybed.spec.highway import EGO_FEATURES, VEHICLE_FEATURES

from .conftest import REPO_ROOT

SIGMA_MPS2 = 0.3  # default accel_sigma_mps2 (research/cav_eval.md §4.1)
GRID_MPS2 = -4.0 + 0.2 * np.arange(31)  # default acceleration grid, NADE global_val.py


def scenario(task: str, *, steps: int = 6, metrics: dict | None = None, **highway):
    highway.setdefault("vehicles", 5)
    return parse_scenario({"name": f"test/{task}", "simulator": "highway", "task": task, "episode_steps": steps,
                           "highway": highway, "metrics": metrics or {}})


def rollout(env, seed: int, steps: int):
    """Observations, rewards, flags and infos of ``steps`` steps of seeded random actions."""
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, 2)).astype(np.float32)
    obs, info = env.reset(seed=seed)
    trace = [(obs, info)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return trace


def same(a, b) -> bool:
    """Exact equality of nested (obs, reward, flags, info) traces; inf == inf, arrays elementwise."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(same, a, b))
    return a == b


# -- conformance --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", sorted(FAMILIES))
def test_every_family_passes_the_gymnasium_checker(task):
    env = make_highway_env(scenario(task, metrics={"per_step_log": True, "decision_log": True}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning (bounds, dtypes, determinism) fails the test
        check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (len(EGO_FEATURES) + 8 * len(VEHICLE_FEATURES),)
    assert env.action_space.shape == (2,)
    assert env.return_range == (0.0, 6.0)


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "scenarios" / "highway").glob("*.toml")), ids=lambda p: p.stem)
def test_catalogue_scenarios_build_and_step(path):
    spec = load_scenario(path)
    env = make_env(spec)
    noisy = spec.perturbations.observation_noise_std > 0  # observation noise is never clipped (sims.base)

    def fits(observation):
        return observation.shape == env.observation_space.shape if noisy else env.observation_space.contains(observation)

    obs, info = env.reset(seed=1)
    assert fits(obs)
    assert set(info["safety"]) == {"collision", "success", "ttc_s", "gap_m", "progress_m", "violations"}
    obs, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
    assert 0.0 <= reward <= 1.0 and fits(obs)


@pytest.mark.parametrize("task", ["cruise", "cut_in", "merge", "roundabout"])
def test_same_seed_same_trajectory_different_seed_different(task):
    spec = scenario(task, steps=4, metrics={"per_step_log": True, "decision_log": True})
    first, second = make_highway_env(spec), make_highway_env(spec)
    trace = rollout(first, seed=11, steps=4)
    assert same(trace, rollout(second, seed=11, steps=4))  # a fresh env object
    assert same(trace, rollout(first, seed=11, steps=4))  # the same env object, re-seeded
    other = rollout(first, seed=12, steps=4)
    assert not np.array_equal(trace[0][0], other[0][0])


def test_infos_are_json_able_and_truncation_follows_episode_steps():
    env = make_highway_env(scenario("cruise", steps=3, metrics={"per_step_log": True, "decision_log": True}))
    trace = rollout(env, seed=0, steps=10)
    assert len(trace) == 4 and trace[-1][3] is True and not any(step[3] for step in trace[1:-1])
    for step in trace[1:]:
        info = step[-1]
        json.dumps(info)  # floats (inf allowed by Python's json), ints, bools, lists only
        assert all(isinstance(value, float) for value in info["step_log"].values())
        assert isinstance(info["decisions"], list)
    progress = [step[-1]["safety"]["progress_m"] for step in trace]
    assert progress[0] == 0.0 and all(b >= a for a, b in zip(progress, progress[1:], strict=False))


def test_unfitting_sections_are_rejected_with_the_field_named():
    with pytest.raises(InputError, match=r"highway\.cut_in: the cruise family does not use"):
        make_highway_env(scenario("cruise", cut_in={"start_s": 2.0}))
    with pytest.raises(InputError, match=r"highway\.lanes: the cut_in family needs at least 2 lanes"):
        make_highway_env(scenario("cut_in", lanes=1))
    with pytest.raises(InputError, match=r"highway\.driver: the intersection family does not use"):
        make_highway_env(scenario("intersection", driver={"model": "idm"}))
    with pytest.raises(ValueError, match="options"):
        make_highway_env(scenario("cruise")).reset(seed=0, options={"config": {"lanes_count": 9}})
    with pytest.raises(ValueError, match="action: expected 2 finite numbers"):
        env = make_highway_env(scenario("cruise"))
        env.reset(seed=0)
        env.step(np.array([np.nan, 0.0]))


def test_spec_rejects_an_inconsistent_acceleration_grid_and_frequencies():
    from safetybed.errors import SpecError

    with pytest.raises(SpecError, match="accel_step_mps2"):
        scenario("cruise", driver={"accel_step_mps2": 0.7})
    with pytest.raises(SpecError, match="policy_frequency_hz"):
        scenario("cruise", policy_frequency_hz=4)
    with pytest.raises(SpecError, match="decision_frequency_hz"):
        scenario("cruise", policy_frequency_hz=1, driver={"decision_frequency_hz": 3.0})


# -- observation --------------------------------------------------------------------------------------------------
def test_observation_layout_in_the_ego_lane_frame():
    env = make_highway_env(scenario("overtaking", lanes=3, vehicles=1, ego_speed_mps=25.0,
                                    overtaking={"leader_gap_min_m": 40.0, "leader_gap_max_m": 40.0,
                                                "leader_speed_min_mps": 18.0, "leader_speed_max_mps": 18.0}))
    obs, _ = env.reset(seed=3)
    ego = dict(zip(EGO_FEATURES, obs[:len(EGO_FEATURES)], strict=True))
    lane_id = env.vehicle.lane_index[2]
    assert ego["speed_mps"] == pytest.approx(25.0)
    assert ego["lateral_offset_m"] == pytest.approx(0.0, abs=1e-5)
    assert ego["lane_width_m"] == pytest.approx(4.0)
    assert (ego["lanes_left"], ego["lanes_right"]) == (lane_id, 2 - lane_id)
    assert ego["target_lane_shift"] == 0 and ego["speed_limit_mps"] == pytest.approx(35.0)
    slots = obs[len(EGO_FEATURES):].reshape(8, len(VEHICLE_FEATURES))
    presence, dx, dy, dvx, vy = slots[0]
    # The slow leader: 40 m bumper gap + 5 m length ahead, in the lane centre, 18 - 25 m/s relative speed.
    assert (presence, dx, dy, dvx, vy) == pytest.approx((1.0, 45.0, 0.0, -7.0, 0.0), abs=1e-4)
    assert np.all(slots[1:] == 0.0)  # empty slots are all zeros
    _, _, _, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert info["safety"]["gap_m"] < 40.0  # the ego (25 m/s) closed in on the leader (about 18 m/s)


# -- the naturalistic driver ----------------------------------------------------------------------------------------
def test_acceleration_pmf_against_hand_computed_gaussian_ratios():
    pmf = acceleration_pmf(0.1, GRID_MPS2, sigma_mps2=SIGMA_MPS2, prune_below=1e-10)
    zero, point_two, point_four = (int(np.argmin(np.abs(GRID_MPS2 - a))) for a in (0.0, 0.2, 0.4))
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert pmf[zero] == pytest.approx(pmf[point_two], rel=1e-12)  # 0.1 lies midway between 0.0 and 0.2
    # p(0.4) / p(0.2) = exp(-(0.3^2 - 0.1^2) / (2 * 0.3^2)) = exp(-4/9), by hand.
    assert pmf[point_four] / pmf[point_two] == pytest.approx(math.exp(-4.0 / 9.0), rel=1e-12)
    assert np.all(pmf[np.abs(GRID_MPS2 - 0.1) > 2.5] == 0.0)  # pruned: exp(-2.4^2 / 0.18) ~ 1e-14 < 1e-10
    far = acceleration_pmf(-25.0, GRID_MPS2, sigma_mps2=SIGMA_MPS2, prune_below=1e-10)
    assert far[0] == 1.0  # a mean far below the grid puts all mass on the lowest acceleration, no NaN


def test_idm_and_mobil_probability_formulas_by_hand():
    params = IDMParams(max_accel_mps2=2.0, comfort_decel_mps2=4.0, min_gap_m=5.0, time_headway_s=1.5, delta=4.0)
    # Free road at v = v0 / 2: a = 2 (1 - 0.5^4) = 1.875.
    assert idm_acceleration(params, speed_mps=17.5, desired_speed_mps=35.0) == pytest.approx(1.875)
    # v = 20, gap 30 m, closing 5 m/s: s* = 5 + 30 + 20 * 5 / (2 sqrt 8) = 52.6777; a = 2 (1 - (4/7)^4 - (s*/30)^2).
    expected = 2.0 * (1 - (20 / 35) ** 4 - ((5 + 30 + 100 / (2 * math.sqrt(8))) / 30) ** 2)
    assert idm_acceleration(params, speed_mps=20.0, desired_speed_mps=35.0, gap_m=30.0,
                            closing_speed_mps=5.0) == pytest.approx(expected, rel=1e-12)
    options = {"threshold_mps2": 0.2, "saturation_mps2": 1.0, "floor": 1e-3, "maximum": 0.2}
    assert lane_change_probability(0.1, safe=True, **options) == 1e-3
    assert lane_change_probability(0.7, safe=True, **options) == pytest.approx(1e-3 + 0.199 * 0.5)
    assert lane_change_probability(5.0, safe=True, **options) == 0.2
    assert lane_change_probability(5.0, safe=False, **options) == 1e-3


def test_every_candidate_pmf_is_normalised_and_peaks_at_the_idm_acceleration():
    env = make_highway_env(scenario("cruise", vehicles=8, lanes=3))
    for seed in range(3):
        env.reset(seed=seed)
        pmfs = env.pending_decision_pmfs()
        assert pmfs and [p.distance_m for p in pmfs] == sorted(p.distance_m for p in pmfs)
        for entry in pmfs:
            vehicle = env.background_vehicle(entry.vehicle_id)
            pmf = entry.pmf
            assert pmf.shape == (33,) and np.all(pmf >= 0.0)
            assert abs(pmf.sum() - 1.0) < 1e-9
            lane_id, lanes = vehicle.lane_index[2], 3
            assert (pmf[ACTION_LEFT] == 0.0) == (lane_id == 0)  # no left lane -> probability exactly 0
            assert (pmf[ACTION_RIGHT] == 0.0) == (lane_id == lanes - 1)
            accel = pmf[FIRST_ACCELERATION_ACTION:] / pmf[FIRST_ACCELERATION_ACTION:].sum()
            a_idm = vehicle.idm_decision_acceleration()
            nearest = int(np.argmin(np.abs(GRID_MPS2 - np.clip(a_idm, GRID_MPS2[0], GRID_MPS2[-1]))))
            assert int(np.argmax(accel)) == nearest
            # Gaussian shape: log p(a_i) - log p(a_j) = -((a_i - mu)^2 - (a_j - mu)^2) / (2 sigma^2) where unpruned.
            kept = np.flatnonzero(accel)
            if len(kept) >= 2 and GRID_MPS2[0] < a_idm < GRID_MPS2[-1]:
                i, j = kept[0], kept[-1]
                expected = -((GRID_MPS2[i] - a_idm) ** 2 - (GRID_MPS2[j] - a_idm) ** 2) / (2 * SIGMA_MPS2**2)
                assert math.log(accel[i] / accel[j]) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_decisions_happen_at_1_hz_and_are_held_between():
    # Policy at the simulation rate (15 Hz) so every step is one frame and the holding is visible step by step.
    env = make_highway_env(scenario("cruise", steps=46, vehicles=6, policy_frequency_hz=15,
                                    metrics={"decision_log": True}))
    env.reset(seed=5)
    vehicles = [v for v in env.road.vehicles if isinstance(v, NaturalisticVehicle)]
    due_steps, logged_steps, decision_times = [], [], set()
    held = {v.vehicle_id: None for v in vehicles}
    for step in range(46):
        if env.decision_due():
            due_steps.append(step)
        *_, info = env.step(np.zeros(2, dtype=np.float32))
        if info["decisions"]:
            logged_steps.append(step)
            decision_times |= {record["time_s"] for record in info["decisions"]}
        for vehicle in vehicles:
            if vehicle.crashed:
                continue
            if step % 15 == 0:
                held[vehicle.vehicle_id] = vehicle.held_acceleration_mps2
                assert vehicle.last_decision.time_s == pytest.approx(step / 15)
            # Between decisions the acceleration command stays exactly the one chosen at the last decision.
            assert vehicle.held_acceleration_mps2 == held[vehicle.vehicle_id]
            assert vehicle.action["acceleration"] == held[vehicle.vehicle_id]
            assert vehicle.last_decision.time_s == pytest.approx(15 * (step // 15) / 15)
    assert due_steps == [0, 15, 30, 45]
    assert logged_steps == [0, 15, 30, 45] and decision_times == {0.0, 1.0, 2.0, 3.0}


def test_pending_pmf_is_the_one_sampled_and_override_keeps_other_streams():
    spec = scenario("cruise", vehicles=8, metrics={"decision_log": True})
    plain, overridden = make_highway_env(spec), make_highway_env(spec)
    plain.reset(seed=7)
    overridden.reset(seed=7)
    pending = {p.vehicle_id: p.pmf for p in overridden.pending_decision_pmfs()}
    target = min(pending)
    overridden.override_next_decision(target, FIRST_ACCELERATION_ACTION)  # brake at -4 m/s^2
    *_, info_plain = plain.step(np.zeros(2, dtype=np.float32))
    *_, info_override = overridden.step(np.zeros(2, dtype=np.float32))
    records = {r["vehicle_id"]: r for r in info_override["decisions"]}
    assert set(records) == set(pending)
    for vehicle_id, record in records.items():
        assert np.array_equal(np.array(record["pmf"]), pending[vehicle_id])  # the pmf announced is the one used
    assert records[target]["action"] == FIRST_ACCELERATION_ACTION and records[target]["source"] == "override"
    assert overridden.background_vehicle(target).held_acceleration_mps2 == pytest.approx(-4.0)
    # Each vehicle has its own generator and always draws once per decision: the others decide exactly alike.
    others_plain = [r for r in info_plain["decisions"] if r["vehicle_id"] != target]
    others_override = [r for r in info_override["decisions"] if r["vehicle_id"] != target]
    assert others_plain == others_override and others_plain
    assert records[target]["pmf"] == next(r["pmf"] for r in info_plain["decisions"] if r["vehicle_id"] == target)
    with pytest.raises(ValueError, match="vehicle_id"):
        overridden.override_next_decision(10_000, 3)
    with pytest.raises(ValueError, match=r"action: expected an integer index in \[0, 32\]"):
        overridden.override_next_decision(target, 33)


def test_cut_in_is_scripted_and_reproducible():
    env = make_highway_env(scenario("cut_in", steps=4, vehicles=4, metrics={"decision_log": True}))
    for seed in range(3):
        env.reset(seed=seed)
        ego, cutter = env.vehicle, env.cutter
        assert abs(cutter.lane_index[2] - ego.lane_index[2]) == 1
        sources = []
        for _ in range(3):
            *_, info = env.step(np.zeros(2, dtype=np.float32))
            sources += [(r["time_s"], r["source"]) for r in info["decisions"] if r["vehicle_id"] == cutter.vehicle_id]
        assert (1.0, "script") in sources  # the cut-in decision at start_s = 1 s
        assert cutter.lane_index == ego.lane_index  # ... and it has arrived in the ego's lane by t = 3 s


def test_idm_background_model_runs_without_decision_records():
    env = make_highway_env(scenario("cut_in", vehicles=4, driver={"model": "idm"}, metrics={"decision_log": True}))
    env.reset(seed=0)
    assert not env.decision_due() and env.pending_decision_pmfs() == []
    for _ in range(3):
        *_, info = env.step(np.zeros(2, dtype=np.float32))
        assert info["decisions"] == []
    assert env.cutter.lane_index == env.vehicle.lane_index  # the scripted IDM cut-in happened as well
