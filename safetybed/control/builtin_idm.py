"""``builtin:idm``: an IDM + MOBIL ego driver that reads only the highway observation vector.

Longitudinal: the Intelligent Driver Model (Treiber, Hennecke & Helbing 2000, *Phys. Rev. E* 62:1805)::

    a = a_max [1 - (v / v0)^delta - (s* / s)^2],   s* = s0 + max(0, v T + v dv / (2 sqrt(a_max b)))

behind the leader in the ego's lane (``s`` bumper gap, ``dv`` closing speed), with the ``[highway.ego]`` parameters
(D2RL's AV under test by default) and ``v0`` capped by the lane speed limit. While a lane change is in progress
(``target_lane_shift != 0``) the acceleration is the smaller of the IDM accelerations behind the leaders of the
current and the target lane, as highway-env's ``IDMVehicle`` does.

Lateral: MOBIL (Kesting, Treiber & Helbing 2007, *Transp. Res. Rec.* 1999:86-94). For each side lane the ego may
change into, the change is *safe* if neither the new follower nor the ego itself would have to brake harder than
``mobil_max_braking_mps2``, and its incentive is::

    gain = (a~_ego - a_ego) + politeness [(a~_new_follower - a_new_follower) + (a~_old_follower - a_old_follower)]

The ego requests the safe change with the largest gain above ``mobil_gain_threshold_mps2``. Other vehicles'
accelerations are predicted with the background drivers' IDM (``[highway.driver]``).

Lane membership from the observation (layout in :mod:`safetybed.spec.highway`): a vehicle is in the lane ``k``
lanes to the side (``k = 0`` the ego's) if its lateral position ``dy_m`` is, now or ``lateral_anticipation_s``
later at its lateral speed ``vy_mps``, within half a lane width plus 1 m of that lane's centre (highway-env's
``on_lane`` margin). The anticipation makes the ego brake for a vehicle that is cutting in, not only once it has
arrived. It also yields to a vehicle outside its lane whose constant-velocity prediction collides with the ego
within ``yield_horizon_s`` (crossing traffic): that vehicle becomes a virtual leader. All vehicles are taken to be
highway-env's 5 m long (for obstacles, which are shorter, the gap is underestimated, i.e. conservative).

Action: ``[clip(a / accel_scale_mps2, -1, 1), lane]`` with ``lane`` = -1 (change left), 0 (keep), +1 (change right),
the mapping of :mod:`safetybed.sims.highway_obs`. The controller is deterministic and keeps no state between steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from safetybed.control.base import Controller
from safetybed.spec import ScenarioSpec
from safetybed.spec.highway import EGO_FEATURES, VEHICLE_FEATURES

VEHICLE_LENGTH_M = 5.0  # [m] highway-env's Vehicle.LENGTH
LANE_MARGIN_M = 1.0  # [m] lateral margin of lane membership (highway-env on_lane margin)
_MIN_GAP_M = 0.1  # [m] floor of the IDM gap: overlapping vehicles give a finite, very large braking demand
_MIN_LANE_CHANGE_SPEED_MPS = 1.0  # [m/s]
_EGO = {name: index for index, name in enumerate(EGO_FEATURES)}
_VEHICLE = {name: index for index, name in enumerate(VEHICLE_FEATURES)}


@dataclass(frozen=True)
class _IDM:
    max_accel_mps2: float
    comfort_decel_mps2: float
    min_gap_m: float
    time_headway_s: float
    desired_speed_mps: float
    delta: float

    def acceleration(self, speed_mps: float, speed_limit_mps: float, gap_m: float = math.inf,
                     closing_speed_mps: float = 0.0) -> float:
        """IDM acceleration [m/s^2] (Treiber et al. 2000); ``gap_m = inf`` on a free road."""
        speed = max(speed_mps, 0.0)
        desired = max(min(self.desired_speed_mps, speed_limit_mps), 1e-3)
        acceleration = self.max_accel_mps2 * (1.0 - (speed / desired) ** self.delta)
        if math.isfinite(gap_m):
            dynamic = speed * self.time_headway_s + speed * closing_speed_mps / (
                2.0 * math.sqrt(self.max_accel_mps2 * self.comfort_decel_mps2))
            desired_gap = self.min_gap_m + max(0.0, dynamic)
            acceleration -= self.max_accel_mps2 * (desired_gap / max(gap_m, _MIN_GAP_M)) ** 2
        return acceleration


@dataclass(frozen=True)
class _Neighbour:
    gap_m: float  # bumper gap to the ego [m]
    speed_mps: float  # its speed [m/s]


class IDMController(Controller):
    """IDM + MOBIL ego driver for highway scenarios (see the module docstring).

    Args:
        observation_space: the highway observation ``Box`` of ``scenario`` (its length is checked).
        action_space: ``Box(-1, 1, shape=(2,))``.
        scenario: the highway scenario; ``[highway.ego]`` holds the driver parameters.
    """

    name = "builtin:idm"

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, *, scenario: ScenarioSpec):
        super().__init__(observation_space, action_space)
        if scenario.simulator != "highway":
            raise ValueError(f"scenario: builtin:idm drives highway scenarios only, got simulator "
                             f"{scenario.simulator!r}")
        highway = scenario.highway
        if observation_space.shape != (highway.observation_size,):
            raise ValueError(f"observation_space: expected shape ({highway.observation_size},) for "
                             f"{highway.observed_vehicles} observed vehicles, got {observation_space.shape}")
        if not isinstance(action_space, gym.spaces.Box) or action_space.shape != (2,):
            raise ValueError(f"action_space: expected Box(-1, 1, shape=(2,)) (acceleration, lane change), "
                             f"got {action_space}")
        ego, driver = highway.ego, highway.driver
        self.observed_vehicles = highway.observed_vehicles
        self.accel_scale_mps2 = ego.accel_scale_mps2
        self.anticipation_s = ego.lateral_anticipation_s
        self.yield_horizon_s = ego.yield_horizon_s
        self.politeness = ego.mobil_politeness
        self.gain_threshold_mps2 = ego.mobil_gain_threshold_mps2
        self.max_braking_mps2 = ego.mobil_max_braking_mps2
        self.ego_idm = _IDM(ego.idm_max_accel_mps2, ego.idm_comfort_decel_mps2, ego.idm_min_gap_m,
                            ego.idm_time_headway_s, ego.idm_desired_speed_mps, ego.idm_delta)
        self.other_idm = _IDM(driver.idm_max_accel_mps2, driver.idm_comfort_decel_mps2, driver.idm_min_gap_m,
                              driver.idm_time_headway_s, driver.idm_desired_speed_mps, driver.idm_delta)

    def act(self, obs_batch: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        obs_batch = self.check_batch(obs_batch)
        return np.stack([self._act_one(row.astype(np.float64)) for row in obs_batch]).astype(np.float32)

    # -- one observation ------------------------------------------------------------------------------------------
    def _conflict_leader(self, vehicles: np.ndarray, speed: float, lane_width: float) -> _Neighbour | None:
        """The nearest vehicle ahead, outside the ego's lane now, predicted to collide with the ego (yield to it).

        Constant-velocity prediction over ``yield_horizon_s`` in the ego-lane frame: a collision is predicted when
        the vehicle is both within one vehicle length of the ego longitudinally and inside the ego's lane corridor
        at the same time. Such a vehicle (crossing traffic at an intersection, a vehicle entering a roundabout lane)
        becomes a virtual leader at its current distance and longitudinal speed.
        """
        if self.yield_horizon_s <= 0 or len(vehicles) == 0:
            return None
        half = 0.5 * lane_width + LANE_MARGIN_M
        times = np.linspace(0.0, self.yield_horizon_s, 13)[None, :]
        dx, dy = vehicles[:, [_VEHICLE["dx_m"]]], vehicles[:, [_VEHICLE["dy_m"]]]
        dvx, vy = vehicles[:, [_VEHICLE["dvx_mps"]]], vehicles[:, [_VEHICLE["vy_mps"]]]
        outside_now = np.abs(dy[:, 0]) >= half
        overlap = (np.abs(dx + dvx * times) < VEHICLE_LENGTH_M) & (np.abs(dy + vy * times) < half)
        conflict = outside_now & (dx[:, 0] > 0) & overlap.any(axis=1)
        if not conflict.any():
            return None
        nearest = int(np.argmin(np.where(conflict, dx[:, 0], np.inf)))
        return _Neighbour(gap_m=float(dx[nearest, 0]) - VEHICLE_LENGTH_M,
                          speed_mps=max(speed + float(dvx[nearest, 0]), 0.0))

    def _act_one(self, row: np.ndarray) -> np.ndarray:
        speed = float(row[_EGO["speed_mps"]])
        lane_width = max(float(row[_EGO["lane_width_m"]]), 1.0)
        speed_limit = float(row[_EGO["speed_limit_mps"]])
        shift = int(round(float(row[_EGO["target_lane_shift"]])))
        vehicles = row[len(EGO_FEATURES):].reshape(self.observed_vehicles, len(VEHICLE_FEATURES))
        vehicles = vehicles[vehicles[:, _VEHICLE["presence"]] > 0.5]

        def neighbours(side: int) -> tuple[_Neighbour | None, _Neighbour | None]:
            """Leader and follower in the lane ``side`` lanes from the ego's (centre-to-centre dx -> bumper gap)."""
            centre = side * lane_width
            dy, vy = vehicles[:, _VEHICLE["dy_m"]], vehicles[:, _VEHICLE["vy_mps"]]
            half = 0.5 * lane_width + LANE_MARGIN_M
            inside = (np.abs(dy - centre) < half) | (np.abs(dy + vy * self.anticipation_s - centre) < half)
            leader = follower = None
            for dx, dvx in vehicles[inside][:, [_VEHICLE["dx_m"], _VEHICLE["dvx_mps"]]]:
                candidate = _Neighbour(gap_m=abs(dx) - VEHICLE_LENGTH_M, speed_mps=speed + dvx)
                if dx > 0 and (leader is None or candidate.gap_m < leader.gap_m):
                    leader = candidate
                elif dx <= 0 and (follower is None or candidate.gap_m < follower.gap_m):
                    follower = candidate
            return leader, follower

        def ego_accel(leader: _Neighbour | None) -> float:
            if leader is None:
                return self.ego_idm.acceleration(speed, speed_limit)
            return self.ego_idm.acceleration(speed, speed_limit, leader.gap_m, speed - leader.speed_mps)

        def follower_accel(follower: _Neighbour | None, gap_m: float, leader_speed_mps: float) -> float:
            if follower is None:
                return 0.0
            return self.other_idm.acceleration(follower.speed_mps, speed_limit, gap_m,
                                               follower.speed_mps - leader_speed_mps)

        leader, follower = neighbours(0)
        acceleration = min(ego_accel(leader), ego_accel(self._conflict_leader(vehicles, speed, lane_width)))
        if shift != 0:
            acceleration = min(acceleration, ego_accel(neighbours(shift)[0]))
        lane_change = 0
        if shift == 0 and speed >= _MIN_LANE_CHANGE_SPEED_MPS:
            best_gain = self.gain_threshold_mps2
            sides = [side for side, name in ((-1, "lanes_left"), (1, "lanes_right")) if row[_EGO[name]] >= 0.5]
            for side in sides:
                new_leader, new_follower = neighbours(side)
                ego_after = ego_accel(new_leader)
                # New follower: behind its current leader (the new leader) before, behind the ego after.
                between = (new_follower.gap_m + VEHICLE_LENGTH_M + new_leader.gap_m
                           if new_follower is not None and new_leader is not None else math.inf)
                new_follower_before = follower_accel(new_follower, between,
                                                     new_leader.speed_mps if new_leader else speed)
                new_follower_after = follower_accel(new_follower, new_follower.gap_m if new_follower else math.inf,
                                                    speed)
                if new_follower_after < -self.max_braking_mps2 or ego_after < -self.max_braking_mps2:
                    continue  # MOBIL safety criterion (Kesting et al. 2007), extended to the ego
                old_between = (follower.gap_m + VEHICLE_LENGTH_M + leader.gap_m
                               if follower is not None and leader is not None else math.inf)
                old_follower_before = follower_accel(follower, follower.gap_m if follower else math.inf, speed)
                old_follower_after = follower_accel(follower, old_between, leader.speed_mps if leader else speed)
                gain = (ego_after - ego_accel(leader) + self.politeness * (
                    new_follower_after - new_follower_before + old_follower_after - old_follower_before))
                if gain > best_gain:
                    best_gain, lane_change = gain, side
            if lane_change:
                acceleration = min(acceleration, ego_accel(neighbours(lane_change)[0]))
        return np.array([np.clip(acceleration / self.accel_scale_mps2, -1.0, 1.0), float(lane_change)])
