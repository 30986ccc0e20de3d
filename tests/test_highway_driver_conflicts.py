"""Simultaneous lane changes into the same lane: MOBIL's safety criterion must see the other changing vehicle.

highway-env's ``Road.neighbour_vehicles`` only sees vehicles physically in a lane, so a vehicle that has already
started changing into the candidate lane (the ego, or another background vehicle) used to be invisible to the
naturalistic driver's MOBIL check (Kesting, Treiber & Helbing 2007), and two vehicles could change into the middle
lane from both sides at once and collide. ``NaturalisticVehicle.lane_neighbours`` counts such vehicles at their
current longitudinal position.
"""

from __future__ import annotations

import numpy as np
import pytest

from safetybed.sims import make_env
from safetybed.sims.highway_driver import ACTION_LEFT, ACTION_RIGHT, NaturalisticVehicle
from safetybed.spec import load_scenario

from .conftest import REPO_ROOT

NDE = REPO_ROOT / "scenarios" / "highway" / "cruise_nde.toml"
LANE_CHANGE_MAX = 0.2  # lane_change_max of cruise_nde (default)
UNSAFE_FLOOR = 1e-7  # unsafe_lane_change_floor of cruise_nde
S0_M = 200.0  # longitudinal position of the vehicle under test [m]
SPEED_MPS = 25.0


@pytest.fixture(scope="module")
def spec():
    return load_scenario(NDE)


def place(vehicle, lane_id: int, s_m: float, speed_mps: float) -> None:
    """Put ``vehicle`` on the centre line of lane ``lane_id`` at ``s_m``, keeping that lane (no change in progress)."""
    lane_index = ("0", "1", lane_id)
    lane = vehicle.road.network.get_lane(lane_index)
    vehicle.position = lane.position(s_m, 0.0)
    vehicle.heading = lane.heading_at(s_m)
    vehicle.speed = speed_mps
    vehicle.lane_index, vehicle.lane = lane_index, lane
    vehicle.target_lane_index = lane_index


def scene(spec, *, seed: int = 0):
    """The cruise_nde env after reset with only the ego and three naturalistic vehicles left on the road.

    Returns ``(env, ego, subject, slow_leader, other)``: ``subject`` drives in lane 0 at ``S0_M`` behind a slow
    leader (so a change to lane 1 is attractive: its safe probability saturates at ``lane_change_max``); the ego
    and ``other`` are placed by each test (both start far away in lane 2).
    """
    env = make_env(spec).unwrapped
    env.reset(seed=seed)
    ego = env.vehicle
    naturalistic = [v for v in env.road.vehicles if isinstance(v, NaturalisticVehicle)]
    subject, slow_leader, other = naturalistic[:3]
    env.road.vehicles[:] = [ego, subject, slow_leader, other]
    place(subject, 0, S0_M, SPEED_MPS)
    place(slow_leader, 0, S0_M + 30.0, 15.0)
    place(ego, 2, S0_M + 600.0, SPEED_MPS)
    place(other, 2, S0_M + 700.0, SPEED_MPS)
    return env, ego, subject, slow_leader, other


def right_probability(vehicle: NaturalisticVehicle) -> float:
    return float(vehicle.action_pmf()[ACTION_RIGHT])


def test_ego_changing_into_the_same_lane_alongside_makes_the_change_unsafe(spec):
    env, ego, subject, *_ = scene(spec)
    place(ego, 2, S0_M, SPEED_MPS)
    # Ego keeps lane 2: lane 1 is empty, so the change out of the slow lane is safe and attractive.
    assert right_probability(subject) == pytest.approx(LANE_CHANGE_MAX)
    # Ego starts changing 2 -> 1 alongside: before the fix the ego was invisible and this stayed 0.2.
    ego.target_lane_index = ("0", "1", 1)
    assert ego.lane_index == ("0", "1", 2)
    assert right_probability(subject) == UNSAFE_FLOOR
    front, rear = subject.lane_neighbours(("0", "1", 1))
    assert front is ego and rear is None
    # The pmf still sums to one; the mass of the change moves to the accelerations.
    pmf = subject.action_pmf()
    assert pmf[ACTION_LEFT] == 0.0 and abs(pmf.sum() - 1.0) < 1e-12


@pytest.mark.parametrize("offset_m", [-4.9, -2.0, 0.0, 2.0, 4.9])
def test_any_longitudinal_overlap_is_unsafe_from_either_side(spec, offset_m):
    env, ego, subject, *_ = scene(spec)
    place(ego, 2, S0_M + offset_m, SPEED_MPS)  # vehicles are 5 m long: every offset here overlaps
    ego.target_lane_index = ("0", "1", 1)
    assert right_probability(subject) == UNSAFE_FLOOR
    front, rear = subject.lane_neighbours(("0", "1", 1))
    assert (front is ego) == (offset_m >= 0.0) and (rear is ego) == (offset_m < 0.0)


@pytest.mark.parametrize("offset_m", [-60.0, -8.0, 0.0, 8.0, 25.0, 150.0])
def test_a_changing_vehicle_counts_exactly_like_one_already_in_the_lane(spec, offset_m):
    """A vehicle changing into lane 1 at ``s`` gives the same pmf as the same vehicle driving in lane 1 at ``s``."""
    env, ego, subject, *_ = scene(spec)
    place(ego, 1, S0_M + offset_m, SPEED_MPS)
    in_lane = subject.action_pmf()
    place(ego, 2, S0_M + offset_m, SPEED_MPS)
    ego.target_lane_index = ("0", "1", 1)
    assert np.array_equal(subject.action_pmf(), in_lane)


def test_far_ahead_change_into_the_same_lane_keeps_the_normal_probability(spec):
    env, ego, subject, *_ = scene(spec)
    place(ego, 2, S0_M + 150.0, SPEED_MPS)
    ego.target_lane_index = ("0", "1", 1)
    front, rear = subject.lane_neighbours(("0", "1", 1))
    assert front is ego and rear is None  # seen, but far enough to be safe
    assert right_probability(subject) == pytest.approx(LANE_CHANGE_MAX)


def test_a_background_vehicle_changing_into_the_same_lane_is_seen_too(spec):
    env, ego, subject, _, other = scene(spec)
    place(other, 2, S0_M + 1.0, SPEED_MPS)
    assert right_probability(subject) == pytest.approx(LANE_CHANGE_MAX)
    other.target_lane_index = ("0", "1", 1)
    assert right_probability(subject) == UNSAFE_FLOOR
    # The changing vehicle itself has no further change available while its own change is in progress.
    assert other.action_pmf()[ACTION_LEFT] == 0.0 and other.action_pmf()[ACTION_RIGHT] == 0.0


def test_the_nearest_vehicle_wins_and_leaving_vehicles_still_count_where_they_are(spec):
    env, ego, subject, _, other = scene(spec)
    # The ego moves 2 -> 1, 80 m ahead; ``other`` drives in lane 1, 40 m ahead, and is leaving it for lane 2.
    place(ego, 2, S0_M + 80.0, SPEED_MPS)
    ego.target_lane_index = ("0", "1", 1)
    place(other, 1, S0_M + 40.0, SPEED_MPS)
    other.target_lane_index = ("0", "1", 2)
    # Lane 1: ``other`` is still physically there and nearer than the changing ego.
    assert subject.lane_neighbours(("0", "1", 1)) == (other, None)
    # Lane 2: highway-env sees the ego (physically there); ``other`` is changing into it and nearer.
    assert env.road.neighbour_vehicles(subject, ("0", "1", 2)) == (ego, None)
    assert subject.lane_neighbours(("0", "1", 2)) == (other, None)
    # The ego 80 m ahead is nearer than the physical leader in lane 1 once ``other`` has gone back to keeping lane 2.
    place(other, 2, S0_M + 120.0, SPEED_MPS)
    place(env.road.vehicles[2], 1, S0_M + 100.0, 15.0)  # the slow leader, now in lane 1
    assert env.road.neighbour_vehicles(subject, ("0", "1", 1))[0] is env.road.vehicles[2]
    assert subject.lane_neighbours(("0", "1", 1)) == (ego, None)


@pytest.mark.parametrize("seed", range(4))
def test_without_lane_changes_neighbours_are_exactly_highway_envs(spec, seed):
    env = make_env(spec).unwrapped
    env.reset(seed=seed)
    for vehicle in env.road.vehicles:
        if not isinstance(vehicle, NaturalisticVehicle):
            continue
        for lane_id in range(3):
            lane_index = ("0", "1", lane_id)
            assert vehicle.lane_neighbours(lane_index) == env.road.neighbour_vehicles(vehicle, lane_index)


def test_ego_lane_change_command_is_seen_by_background_decisions_in_the_same_frame(spec):
    """highway-env applies the ego's action before the background vehicles act within a frame."""
    env, ego, subject, *_ = scene(spec)
    place(ego, 2, S0_M, SPEED_MPS)
    assert subject.decision_due()
    env.step(np.array([0.0, -1.0], dtype=np.float32))  # ego: keep speed, change left (2 -> 1)
    assert ego.target_lane_index == ("0", "1", 1)
    record = subject.last_decision
    assert record is not None and record.time_s == 0.0
    assert record.pmf[ACTION_RIGHT] == UNSAFE_FLOOR
