"""The ego vehicle, its continuous action and the flat lane-frame observation of every highway scenario.

Action: ``Box(-1, 1, shape=(2,), float32)``

* ``a[0]`` -> longitudinal acceleration ``a[0] * ego.accel_scale_mps2`` [m/s^2] (5 m/s^2 by default), held for the
  control step; the ego does not reverse (its speed stops at 0).
* ``a[1]`` -> lane-change request: ``a[1] < -1/3`` change left (lane index - 1), ``a[1] > 1/3`` change right
  (lane index + 1), otherwise no new request (a change in progress continues). A request towards a lane that does
  not exist, is not reachable or is ``forbidden`` (e.g. a merge ramp) is ignored. Steering is highway-env's
  lane-following controller (``ControlledVehicle.steering_control``) towards the target lane, so the same action
  drives curved roads (roundabout, intersection turns along the ego's planned route).

Observation: ``Box(float32)`` of length ``len(EGO_FEATURES) + observed_vehicles * len(VEHICLE_FEATURES)``
(layout and units in :mod:`safetybed.spec.highway`), in physical units so that observation noise
(``perturbations.observation_noise_std``) is in metres and metres per second. All positions are in the frame of
the ego's current lane: ``dx`` along the lane (arc length on curved lanes), ``dy`` across it from the lane centre,
positive towards higher lane indices (to the right in highway-env). Vehicle slots hold the ``observed_vehicles``
nearest vehicles and obstacles (Euclidean distance) within ``observation_range_m``, nearest first; empty slots are
all zeros. Every feature is clipped to the declared bounds (:func:`observation_bounds`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from gymnasium import spaces
from highway_env import utils
from highway_env.envs.common.action import ActionType
from highway_env.envs.common.observation import ObservationType
from highway_env.road.lane import AbstractLane
from highway_env.road.road import LaneIndex, Road
from highway_env.vehicle.controller import ControlledVehicle
from highway_env.vehicle.kinematics import Vehicle
from highway_env.vehicle.objects import Landmark, RoadObject

from safetybed.spec.highway import EGO_FEATURES, VEHICLE_FEATURES, HighwaySpec

if TYPE_CHECKING:
    from highway_env.envs.common.abstract import AbstractEnv

LANE_CHANGE_THRESHOLD = 1.0 / 3.0  #: |a[1]| above this requests a lane change
MAX_SPEED_MPS = Vehicle.MAX_SPEED  # [m/s] highway-env's speed cap (40 m/s)
_MAX_RELATIVE_SPEED_MPS = 2.0 * MAX_SPEED_MPS  # [m/s]
_MAX_LANES = 10  # [count] bound of lanes_left / lanes_right / target_lane_shift


class EgoVehicle(ControlledVehicle):
    """The controlled vehicle: a commanded acceleration and a target lane, steered by lane following.

    highway-env calls ``act()`` every simulation frame; the ego re-applies its commanded acceleration and steers
    towards ``target_lane_index`` (following its route at lane ends). ``odometer_m`` is the distance driven
    since creation [m].
    """

    def __init__(self, road: Road, position, heading: float = 0, speed: float = 0,
                 target_lane_index: LaneIndex | None = None, target_speed: float | None = None, route=None):
        super().__init__(road, position, heading, speed, target_lane_index, target_speed, route)
        self.commanded_acceleration_mps2 = 0.0
        self.odometer_m = 0.0
        self.ignored_lane_change_requests = 0

    def command(self, *, acceleration_mps2: float, lane_change: int) -> None:
        """Set the acceleration [m/s^2] for the coming control step and request a lane change (-1, 0, +1)."""
        self.commanded_acceleration_mps2 = float(acceleration_mps2)
        if lane_change == 0:
            return
        _from, _to, _id = self.lane_index
        new_id = _id + lane_change
        lanes = self.road.network.graph[_from][_to]
        if 0 <= new_id < len(lanes) and lanes[new_id].is_reachable_from(self.position):
            self.target_lane_index = (_from, _to, new_id)
        else:
            self.ignored_lane_change_requests += 1

    def act(self, action: dict | str | None = None) -> None:
        self.follow_road()
        steering = float(np.clip(self.steering_control(self.target_lane_index), -self.MAX_STEERING_ANGLE,
                                 self.MAX_STEERING_ANGLE))
        acceleration = self.commanded_acceleration_mps2
        if self.speed <= 0.0:
            acceleration = max(acceleration, 0.0)
        Vehicle.act(self, {"steering": steering, "acceleration": acceleration})

    def step(self, dt: float) -> None:
        super().step(dt)
        if self.speed < 0.0:  # a held deceleration stops the ego; it never reverses
            self.speed = 0.0
        self.odometer_m += self.speed * dt


def decode_action(action: np.ndarray, *, accel_scale_mps2: float) -> tuple[float, int]:
    """(acceleration [m/s^2], lane change -1/0/+1) of one Box action, clipped into [-1, 1] (module docstring)."""
    clipped = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
    lane_change = -1 if clipped[1] < -LANE_CHANGE_THRESHOLD else (1 if clipped[1] > LANE_CHANGE_THRESHOLD else 0)
    return float(clipped[0]) * accel_scale_mps2, lane_change


class LaneFollowingAccelerationAction(ActionType):
    """highway-env action type for :class:`EgoVehicle` (see the module docstring for the mapping)."""

    def __init__(self, env: AbstractEnv, *, accel_scale_mps2: float):
        super().__init__(env)
        self.accel_scale_mps2 = float(accel_scale_mps2)
        self.last_acceleration_mps2 = 0.0
        self.last_lane_change = 0

    def space(self) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    @property
    def vehicle_class(self) -> type[EgoVehicle]:
        return EgoVehicle

    def decode(self, action: np.ndarray) -> tuple[float, int]:
        """(acceleration [m/s^2], lane change -1/0/+1) of a Box action (:func:`decode_action`)."""
        return decode_action(action, accel_scale_mps2=self.accel_scale_mps2)

    def act(self, action: np.ndarray) -> None:
        acceleration, lane_change = self.decode(action)
        self.last_acceleration_mps2, self.last_lane_change = acceleration, lane_change
        self.controlled_vehicle.command(acceleration_mps2=acceleration, lane_change=lane_change)


def lane_frame(lane: AbstractLane, position: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(longitudinal [m], lateral [m], unit tangent, unit normal) of ``position`` in ``lane``'s frame.

    The normal points towards positive lateral coordinates (higher lane indices) for straight and circular lanes.
    """
    longitudinal, lateral = lane.local_coordinates(position)
    heading = lane.heading_at(longitudinal)
    tangent = np.array([math.cos(heading), math.sin(heading)])
    normal = np.array([-math.sin(heading), math.cos(heading)])
    return longitudinal, lateral, tangent, normal


def available_side_lanes(vehicle: ControlledVehicle, side: int) -> int:
    """Number of consecutive lanes on ``side`` (-1 left, +1 right) of the vehicle's lane it may change into."""
    _from, _to, _id = vehicle.lane_index
    lanes = vehicle.road.network.graph[_from][_to]
    count, lane_id = 0, _id + side
    while 0 <= lane_id < len(lanes) and not lanes[lane_id].forbidden:
        count += 1
        lane_id += side
    return count


def observable_objects(ego: Vehicle, road: Road, range_m: float) -> list[RoadObject]:
    """Vehicles and obstacles (not landmarks) within ``range_m`` of the ego, nearest first."""
    found = [(float(np.linalg.norm(o.position - ego.position)), index, o)
             for index, o in enumerate(road.vehicles + road.objects)
             if o is not ego and not isinstance(o, Landmark)]
    return [o for distance, _, o in sorted(found, key=lambda item: item[:2]) if distance <= range_m]


def observation_bounds(highway: HighwaySpec) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the observation vector (float32)."""
    ego_low = [0.0, -10.0, -math.pi, 0.0, 0.0, 0.0, -_MAX_LANES, 0.0]
    ego_high = [MAX_SPEED_MPS, 10.0, math.pi, 10.0, _MAX_LANES, _MAX_LANES, _MAX_LANES, MAX_SPEED_MPS]
    range_m = highway.observation_range_m
    vehicle_low = [0.0, -range_m, -range_m, -_MAX_RELATIVE_SPEED_MPS, -MAX_SPEED_MPS]
    vehicle_high = [1.0, range_m, range_m, _MAX_RELATIVE_SPEED_MPS, MAX_SPEED_MPS]
    if len(ego_low) != len(EGO_FEATURES) or len(vehicle_low) != len(VEHICLE_FEATURES):  # pragma: no cover
        raise RuntimeError("observation bounds out of sync with the layout in safetybed.spec.highway")
    low = np.array(ego_low + vehicle_low * highway.observed_vehicles, dtype=np.float32)
    high = np.array(ego_high + vehicle_high * highway.observed_vehicles, dtype=np.float32)
    return low, high


class LaneFrameObservation(ObservationType):
    """highway-env observation type writing the flat lane-frame vector described in the module docstring."""

    def __init__(self, env: AbstractEnv, *, highway: HighwaySpec):
        super().__init__(env)
        self.highway = highway
        self.low, self.high = observation_bounds(highway)

    def space(self) -> spaces.Box:
        return spaces.Box(self.low, self.high, dtype=np.float32)

    def observe(self) -> np.ndarray:
        ego = self.observer_vehicle
        lane = ego.lane
        ego_s, ego_r, tangent, normal = lane_frame(lane, ego.position)
        target = ego.target_lane_index
        shift = target[2] - ego.lane_index[2] if target[:2] == ego.lane_index[:2] else 0
        speed_limit = lane.speed_limit if lane.speed_limit is not None else MAX_SPEED_MPS
        values = [ego.speed, ego_r, utils.wrap_to_pi(ego.heading - lane.heading_at(ego_s)),
                  lane.width_at(ego_s), available_side_lanes(ego, -1), available_side_lanes(ego, +1), shift,
                  speed_limit]
        objects = observable_objects(ego, self.env.road, self.highway.observation_range_m)
        for other in objects[:self.highway.observed_vehicles]:
            other_s, other_r = lane.local_coordinates(other.position)
            velocity = other.velocity
            values += [1.0, other_s - ego_s, other_r, float(np.dot(velocity - ego.velocity, tangent)),
                       float(np.dot(velocity, normal))]
        missing = self.highway.observed_vehicles - min(len(objects), self.highway.observed_vehicles)
        values += [0.0] * (missing * len(VEHICLE_FEATURES))
        return np.clip(np.asarray(values, dtype=np.float32), self.low, self.high)


def leader_gap_and_ttc(ego: Vehicle, road: Road) -> tuple[float, float]:
    """Bumper gap [m] and time-to-collision [s] to the closest vehicle/obstacle ahead in the ego's lane.

    ``(inf, inf)`` without a leader; the TTC is ``inf`` unless the gap is closing. Uses highway-env's lane membership
    (``Road.neighbour_vehicles``: on the lane within a 1 m margin), so a cutting-in vehicle counts once it crosses
    into the lane.
    """
    front, _ = road.neighbour_vehicles(ego, ego.lane_index)
    if front is None:
        return math.inf, math.inf
    gap = ego.lane_distance_to(front) - 0.5 * (ego.LENGTH + front.LENGTH)
    gap = max(gap, 0.0)
    _, _, tangent, _ = lane_frame(ego.lane, ego.position)
    closing = float(np.dot(ego.velocity - front.velocity, tangent))
    ttc = gap / closing if closing > 1e-9 else math.inf
    return float(gap), float(ttc)
