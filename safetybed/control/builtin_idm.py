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

The IDM and MOBIL formulas themselves are :mod:`safetybed.sims.idm` (shared with the background drivers, the
NADE look-ahead and the testbed). The pieces are reusable: :class:`ObservedTraffic` parses one observation,
:class:`DrivingRules` holds the IDM and MOBIL rules with a scenario's parameters; the ``idm`` safety shield
(:mod:`safetybed.control.shield`) uses both. :class:`BatchedDrivingRules` applies the same rules to a whole batch
with array operations (the batched backend calls ``act`` once for 1024+ episodes), bitwise equal to
:class:`DrivingRules` row by row; :meth:`IDMController.act_reference` is the row-by-row reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import repeat

import gymnasium as gym
import numpy as np

from safetybed.control.base import Controller
from safetybed.sims.idm import (
    MIN_DESIRED_SPEED_MPS,
    MIN_GAP_M,
    IDMParams,
    idm_acceleration,
    mobil_incentive,
    mobil_is_safe,
)
from safetybed.spec import ScenarioSpec
from safetybed.spec.highway import (
    EGO_FEATURES,
    VEHICLE_FEATURES,
    HighwaySpec,
)

VEHICLE_LENGTH_M = 5.0  # [m] highway-env's Vehicle.LENGTH
LANE_MARGIN_M = 1.0  # [m] lateral margin of lane membership (highway-env on_lane margin)
_MIN_LANE_CHANGE_SPEED_MPS = 1.0  # [m/s]
#: [rows] batches this large go through BatchedDrivingRules (~0.6 ms fixed cost), smaller ones row by row
#: (~0.15 ms a row); both give the same bits
_BATCHED_FROM_ROWS = 4
_EGO = {name: index for index, name in enumerate(EGO_FEATURES)}
_VEHICLE = {name: index for index, name in enumerate(VEHICLE_FEATURES)}


@dataclass(frozen=True)
class Neighbour:
    """A vehicle ahead of or behind the ego in some lane."""

    gap_m: float  # bumper gap to the ego [m]
    speed_mps: float  # its speed [m/s]


@dataclass(frozen=True)
class ObservedTraffic:
    """One highway observation vector, parsed (layout in :mod:`safetybed.spec.highway`).

    ``vehicles`` holds the occupied slots only, one row of :data:`VEHICLE_FEATURES` each.
    """

    speed_mps: float
    lane_width_m: float
    speed_limit_mps: float
    target_lane_shift: int  # [lanes] non-zero while a lane change is in progress
    lanes_left: float  # [count] lanes the ego may change into on its left (not whole under observation noise)
    lanes_right: float  # [count] ... on its right
    vehicles: np.ndarray

    @classmethod
    def from_observation(cls, row: np.ndarray, *, observed_vehicles: int) -> ObservedTraffic:
        row = np.asarray(row, dtype=np.float64)
        vehicles = row[len(EGO_FEATURES):].reshape(observed_vehicles, len(VEHICLE_FEATURES))
        return cls(speed_mps=float(row[_EGO["speed_mps"]]), lane_width_m=max(float(row[_EGO["lane_width_m"]]), 1.0),
                   speed_limit_mps=float(row[_EGO["speed_limit_mps"]]),
                   target_lane_shift=int(round(float(row[_EGO["target_lane_shift"]]))),
                   lanes_left=float(row[_EGO["lanes_left"]]), lanes_right=float(row[_EGO["lanes_right"]]),
                   vehicles=vehicles[vehicles[:, _VEHICLE["presence"]] > 0.5])

    def side_available(self, side: int) -> bool:
        """Whether the ego may change into the lane on ``side`` (-1 left, +1 right)."""
        if side == 0:
            return True
        return (self.lanes_left if side < 0 else self.lanes_right) >= 0.5

    def in_lane(self, side: int, *, anticipation_s: float) -> np.ndarray:
        """Mask of ``vehicles`` in the lane ``side`` lanes from the ego's, now or ``anticipation_s`` later.

        Lane membership is highway-env's ``on_lane`` test (half a lane width plus 1 m around the lane centre),
        applied to the current lateral position and to its constant-lateral-speed prediction.
        """
        centre = side * self.lane_width_m
        dy, vy = self.vehicles[:, _VEHICLE["dy_m"]], self.vehicles[:, _VEHICLE["vy_mps"]]
        half = 0.5 * self.lane_width_m + LANE_MARGIN_M
        return (np.abs(dy - centre) < half) | (np.abs(dy + vy * anticipation_s - centre) < half)

    def neighbours(self, side: int, *, anticipation_s: float) -> tuple[Neighbour | None, Neighbour | None]:
        """Leader and follower in the lane ``side`` lanes from the ego's (centre-to-centre dx -> bumper gap)."""
        leader = follower = None
        inside = self.in_lane(side, anticipation_s=anticipation_s)
        for dx, dvx in self.vehicles[inside][:, [_VEHICLE["dx_m"], _VEHICLE["dvx_mps"]]]:
            candidate = Neighbour(gap_m=abs(dx) - VEHICLE_LENGTH_M, speed_mps=self.speed_mps + dvx)
            if dx > 0 and (leader is None or candidate.gap_m < leader.gap_m):
                leader = candidate
            elif dx <= 0 and (follower is None or candidate.gap_m < follower.gap_m):
                follower = candidate
        return leader, follower

    def conflict_leader(self, *, horizon_s: float) -> Neighbour | None:
        """The nearest vehicle ahead, outside the ego's lane now, predicted to collide with the ego (yield to it).

        Constant-velocity prediction over ``horizon_s`` in the ego-lane frame: a collision is predicted when
        the vehicle is both within one vehicle length of the ego longitudinally and inside the ego's lane corridor
        at the same time. Such a vehicle (crossing traffic at an intersection, a vehicle entering a roundabout lane)
        becomes a virtual leader at its current distance and longitudinal speed.
        """
        vehicles = self.vehicles
        if horizon_s <= 0 or len(vehicles) == 0:
            return None
        half = 0.5 * self.lane_width_m + LANE_MARGIN_M
        times = np.linspace(0.0, horizon_s, 13)[None, :]
        dx, dy = vehicles[:, [_VEHICLE["dx_m"]]], vehicles[:, [_VEHICLE["dy_m"]]]
        dvx, vy = vehicles[:, [_VEHICLE["dvx_mps"]]], vehicles[:, [_VEHICLE["vy_mps"]]]
        outside_now = np.abs(dy[:, 0]) >= half
        overlap = (np.abs(dx + dvx * times) < VEHICLE_LENGTH_M) & (np.abs(dy + vy * times) < half)
        conflict = outside_now & (dx[:, 0] > 0) & overlap.any(axis=1)
        if not conflict.any():
            return None
        nearest = int(np.argmin(np.where(conflict, dx[:, 0], np.inf)))
        return Neighbour(gap_m=float(dx[nearest, 0]) - VEHICLE_LENGTH_M,
                         speed_mps=max(self.speed_mps + float(dvx[nearest, 0]), 0.0))


class DrivingRules:
    """IDM car following and MOBIL lane-change rules on :class:`ObservedTraffic`, with a highway spec's parameters.

    The ego follows the IDM of ``[highway.ego]`` (Treiber et al. 2000); the other vehicles' reactions are
    predicted with the background drivers' IDM of ``[highway.driver]``. Lane changes follow MOBIL (Kesting, Treiber
    & Helbing 2007). Shared by ``builtin:idm`` and the ``idm`` safety shield (:mod:`safetybed.control.shield`).
    """

    def __init__(self, highway: HighwaySpec):
        ego = highway.ego
        self.observed_vehicles = highway.observed_vehicles
        self.anticipation_s = ego.lateral_anticipation_s
        self.yield_horizon_s = ego.yield_horizon_s
        self.politeness = ego.mobil_politeness
        self.gain_threshold_mps2 = ego.mobil_gain_threshold_mps2
        self.max_braking_mps2 = ego.mobil_max_braking_mps2
        self.ego_idm = IDMParams.from_spec(ego)
        self.ego_desired_speed_mps = ego.idm_desired_speed_mps
        self.other_idm = IDMParams.from_spec(highway.driver)
        self.other_desired_speed_mps = highway.driver.idm_desired_speed_mps

    def traffic(self, row: np.ndarray) -> ObservedTraffic:
        return ObservedTraffic.from_observation(row, observed_vehicles=self.observed_vehicles)

    def neighbours(self, traffic: ObservedTraffic, side: int) -> tuple[Neighbour | None, Neighbour | None]:
        return traffic.neighbours(side, anticipation_s=self.anticipation_s)

    def ego_acceleration(self, traffic: ObservedTraffic, leader: Neighbour | None) -> float:
        """The ego's IDM acceleration [m/s^2] behind ``leader`` (free road when ``None``); ``v0`` capped by the
        lane speed limit."""
        desired = min(self.ego_desired_speed_mps, traffic.speed_limit_mps)
        if leader is None:
            return float(idm_acceleration(self.ego_idm, speed_mps=traffic.speed_mps, desired_speed_mps=desired))
        return float(idm_acceleration(self.ego_idm, speed_mps=traffic.speed_mps, desired_speed_mps=desired,
                                      gap_m=leader.gap_m, closing_speed_mps=traffic.speed_mps - leader.speed_mps))

    def _follower_acceleration(self, traffic: ObservedTraffic, follower: Neighbour | None, gap_m: float,
                               leader_speed_mps: float) -> float:
        if follower is None:
            return 0.0
        return float(idm_acceleration(self.other_idm, speed_mps=follower.speed_mps,
                                      desired_speed_mps=min(self.other_desired_speed_mps, traffic.speed_limit_mps),
                                      gap_m=gap_m, closing_speed_mps=follower.speed_mps - leader_speed_mps))

    def longitudinal_acceleration(self, traffic: ObservedTraffic, *, lane_change: int = 0) -> float:
        """The ego's IDM acceleration [m/s^2]: the smallest behind the leader of its lane, a vehicle it must yield
        to, and the leader of the lane it is changing into (a change in progress, or the new ``lane_change``), as
        highway-env's ``IDMVehicle`` does during lane changes."""
        acceleration = min(self.ego_acceleration(traffic, self.neighbours(traffic, 0)[0]),
                           self.ego_acceleration(traffic, traffic.conflict_leader(horizon_s=self.yield_horizon_s)))
        for side in {traffic.target_lane_shift, lane_change} - {0}:
            acceleration = min(acceleration, self.ego_acceleration(traffic, self.neighbours(traffic, side)[0]))
        return acceleration

    def _new_follower_accelerations(self, traffic: ObservedTraffic, side: int) -> tuple[float, float]:
        """(before, after) IDM accelerations [m/s^2] of the new follower in the lane on ``side``."""
        new_leader, new_follower = self.neighbours(traffic, side)
        # New follower: behind its current leader (the new leader) before, behind the ego after.
        between = (new_follower.gap_m + VEHICLE_LENGTH_M + new_leader.gap_m
                   if new_follower is not None and new_leader is not None else math.inf)
        before = self._follower_acceleration(traffic, new_follower, between,
                                             new_leader.speed_mps if new_leader else traffic.speed_mps)
        after = self._follower_acceleration(traffic, new_follower, new_follower.gap_m if new_follower else math.inf,
                                            traffic.speed_mps)
        return before, after

    def lane_change_is_safe(self, traffic: ObservedTraffic, side: int) -> bool:
        """MOBIL's safety criterion (Kesting et al. 2007, eq. 2), extended to the ego, for a change to ``side``.

        Safe when the lane exists, no vehicle in it (now or ``lateral_anticipation_s`` later, so a vehicle moving
        into it counts) overlaps the ego longitudinally, and neither the new follower nor the ego behind the new
        leader would have to brake harder than ``mobil_max_braking_mps2``.
        """
        if side == 0 or not traffic.side_available(side):
            return side == 0
        dx = traffic.vehicles[traffic.in_lane(side, anticipation_s=self.anticipation_s), _VEHICLE["dx_m"]]
        if np.any(np.abs(dx) < VEHICLE_LENGTH_M):
            return False  # alongside: the IDM gaps below would be negative
        _, new_follower_after = self._new_follower_accelerations(traffic, side)
        ego_after = self.ego_acceleration(traffic, self.neighbours(traffic, side)[0])
        return bool(mobil_is_safe(self_after_mps2=ego_after, new_follower_after_mps2=new_follower_after,
                                  max_braking_mps2=self.max_braking_mps2))

    def mobil_gain(self, traffic: ObservedTraffic, side: int) -> float:
        """MOBIL incentive [m/s^2] of a change to ``side`` (Kesting et al. 2007, eq. 3)::

            gain = (a~_ego - a_ego) + politeness [(a~_new_follower - a_new_follower) + (a~_old - a_old)]
        """
        leader, follower = self.neighbours(traffic, 0)
        new_follower_before, new_follower_after = self._new_follower_accelerations(traffic, side)
        old_between = (follower.gap_m + VEHICLE_LENGTH_M + leader.gap_m
                       if follower is not None and leader is not None else math.inf)
        old_follower_before = self._follower_acceleration(traffic, follower,
                                                          follower.gap_m if follower else math.inf, traffic.speed_mps)
        old_follower_after = self._follower_acceleration(traffic, follower, old_between,
                                                         leader.speed_mps if leader else traffic.speed_mps)
        return mobil_incentive(self_before_mps2=self.ego_acceleration(traffic, leader),
                               self_after_mps2=self.ego_acceleration(traffic, self.neighbours(traffic, side)[0]),
                               new_follower_before_mps2=new_follower_before,
                               new_follower_after_mps2=new_follower_after,
                               old_follower_before_mps2=old_follower_before, old_follower_after_mps2=old_follower_after,
                               politeness=self.politeness)

    def mobil_lane_change(self, traffic: ObservedTraffic) -> int:
        """The safe change (-1 left, +1 right) with the largest gain above ``mobil_gain_threshold_mps2``, else 0.

        No new change is requested while one is in progress or below 1 m/s.
        """
        if traffic.target_lane_shift != 0 or traffic.speed_mps < _MIN_LANE_CHANGE_SPEED_MPS:
            return 0
        best_gain, lane_change = self.gain_threshold_mps2, 0
        for side in (-1, 1):
            if not traffic.side_available(side) or not self.lane_change_is_safe(traffic, side):
                continue
            gain = self.mobil_gain(traffic, side)
            if gain > best_gain:
                best_gain, lane_change = gain, side
        return lane_change


def _libm_pow(base: np.ndarray, exponent: float) -> np.ndarray:
    """``base ** exponent`` elementwise as numpy computes it on float64 *scalars* (the C library's ``pow``).

    numpy's vectorised ``power`` (SIMD routines, and ``x * x`` for an exponent 2) differs from the scalar ``pow``
    in the last bit for a fraction of the inputs, so :class:`BatchedDrivingRules` would not equal
    :class:`DrivingRules` bitwise. ``exponent > 0`` (the IDM's ``delta`` and 2): ``+0.0`` stays ``+0.0``, which
    skips the absent neighbours (free road, gap ``inf``).
    """
    out = np.zeros_like(base)
    todo = ~((base == 0.0) & ~np.signbit(base))
    values = base[todo].tolist()
    try:
        out[todo] = list(map(math.pow, values, repeat(exponent)))
    except (OverflowError, ValueError):  # math.pow raises where numpy's scalar pow returns inf / nan
        with np.errstate(all="ignore"):
            out[todo] = [np.float64(value) ** exponent for value in values]
    return out


@dataclass(frozen=True)
class _Neighbours:
    """One neighbour per row of a batch (``present`` False: none; ``gap_m`` / ``speed_mps`` then meaningless)."""

    present: np.ndarray  # [B] bool
    gap_m: np.ndarray  # [B]
    speed_mps: np.ndarray  # [B]


class BatchedDrivingRules:
    """:class:`DrivingRules` on a whole batch of observations at once, bitwise equal to it row by row.

    The same IDM / MOBIL rules and parameters, with the per-row branches as masks and the per-vehicle scans as a
    loop over the observed-vehicle slots. Every float is computed with the operations of the per-row code, in its
    order (Python's ``min`` / ``max`` as ``where`` on the same comparison, the C library's ``pow``), so each row's
    result equals :meth:`DrivingRules.mobil_lane_change` and then :meth:`DrivingRules.longitudinal_acceleration`
    with that lane change to the last bit. One instance per batch: ``BatchedDrivingRules(rules, obs).decide()``.
    """

    def __init__(self, rules: DrivingRules, obs_batch: np.ndarray):
        """Parse ``obs_batch`` [B, observation] as :meth:`ObservedTraffic.from_observation` does each row."""
        self.rules = rules
        self.obs = obs = np.asarray(obs_batch, dtype=np.float64)
        vehicles = obs[:, len(EGO_FEATURES):].reshape(len(obs), rules.observed_vehicles, len(VEHICLE_FEATURES))
        self.speed = obs[:, _EGO["speed_mps"]]
        width = obs[:, _EGO["lane_width_m"]]
        self.lane_width = np.where(1.0 > width, 1.0, width)  # max(width, 1.0)
        self.speed_limit = obs[:, _EGO["speed_limit_mps"]]
        self.shift = np.rint(obs[:, _EGO["target_lane_shift"]])  # int(round(.)): half to even
        self.present = vehicles[:, :, _VEHICLE["presence"]] > 0.5
        self.dx, self.dy = vehicles[:, :, _VEHICLE["dx_m"]], vehicles[:, :, _VEHICLE["dy_m"]]
        self.dvx, self.vy = vehicles[:, :, _VEHICLE["dvx_mps"]], vehicles[:, :, _VEHICLE["vy_mps"]]
        ego_desired = rules.ego_desired_speed_mps
        self.ego_free = self._free_road(rules.ego_idm, self.speed, np.where(self.speed_limit < ego_desired,
                                                                             self.speed_limit, ego_desired))
        other_desired = rules.other_desired_speed_mps
        self.other_desired = np.where(self.speed_limit < other_desired, self.speed_limit, other_desired)

    def decide(self) -> tuple[np.ndarray, np.ndarray]:
        """(acceleration [m/s^2], lane change in {-1, 0, +1} as float) for every row of the batch."""
        rules, obs, shift = self.rules, self.obs, self.shift
        # mobil_lane_change
        leader, follower = self._neighbours(0.0)
        self_before = self._ego_acceleration(leader)
        old_follower = self._follower_free(follower)
        old_before = self._follower_acceleration(follower, old_follower, follower.gap_m, self.speed)
        old_between = follower.gap_m + VEHICLE_LENGTH_M + leader.gap_m
        old_after = self._follower_acceleration(follower, old_follower, np.where(leader.present, old_between, math.inf),
                                                np.where(leader.present, leader.speed_mps, self.speed))
        eligible = (shift == 0) & ~(self.speed < _MIN_LANE_CHANGE_SPEED_MPS)
        best_gain = np.full(len(obs), rules.gain_threshold_mps2)
        lane_change = np.zeros(len(obs))
        for side, lanes in ((-1, obs[:, _EGO["lanes_left"]]), (1, obs[:, _EGO["lanes_right"]])):
            inside = self._in_lane(float(side))
            new_leader, new_follower = self._neighbours(float(side), inside)
            alongside = (inside & (np.abs(self.dx) < VEHICLE_LENGTH_M)).any(axis=1)
            new_free = self._follower_free(new_follower)
            between = new_follower.gap_m + VEHICLE_LENGTH_M + new_leader.gap_m
            new_before = self._follower_acceleration(new_follower, new_free,
                                                     np.where(new_leader.present, between, math.inf),
                                                     np.where(new_leader.present, new_leader.speed_mps, self.speed))
            new_after = self._follower_acceleration(new_follower, new_free, new_follower.gap_m, self.speed)
            self_after = self._ego_acceleration(new_leader)
            safe = ~alongside & mobil_is_safe(self_after_mps2=self_after, new_follower_after_mps2=new_after,
                                              max_braking_mps2=rules.max_braking_mps2)
            gain = mobil_incentive(self_before_mps2=self_before, self_after_mps2=self_after,
                                   new_follower_before_mps2=new_before, new_follower_after_mps2=new_after,
                                   old_follower_before_mps2=old_before, old_follower_after_mps2=old_after,
                                   politeness=rules.politeness)
            better = eligible & (lanes >= 0.5) & safe & (gain > best_gain)
            best_gain = np.where(better, gain, best_gain)
            lane_change = np.where(better, float(side), lane_change)

        # longitudinal_acceleration: a new change is requested only when none is in progress, so at most one side
        acceleration = self._ego_acceleration(self._conflict_leader())
        acceleration = np.where(acceleration < self_before, acceleration, self_before)  # min(own, conflict)
        side = np.where(shift != 0, shift, lane_change)
        side_acceleration = self._ego_acceleration(self._neighbours(side)[0])
        acceleration = np.where((side != 0) & (side_acceleration < acceleration), side_acceleration, acceleration)
        return acceleration, lane_change

    # -- ObservedTraffic ----------------------------------------------------------------------------------------
    def _in_lane(self, side) -> np.ndarray:
        """[B, slots] occupied slots in the lane ``side`` (scalar or [B]) lanes from the ego's."""
        centre = (side * self.lane_width)[:, None]
        half = (0.5 * self.lane_width + LANE_MARGIN_M)[:, None]
        inside = ((np.abs(self.dy - centre) < half)
                  | (np.abs(self.dy + self.vy * self.rules.anticipation_s - centre) < half))
        return self.present & inside

    def _neighbours(self, side, inside: np.ndarray | None = None) -> tuple[_Neighbours, _Neighbours]:
        """Leader and follower in the lane ``side`` lanes away (``inside``: its :meth:`_in_lane` mask, if known):
        the first nearest in slot order, as the row code."""
        inside = self._in_lane(side) if inside is None else inside
        gaps, speeds = np.abs(self.dx) - VEHICLE_LENGTH_M, self.speed[:, None] + self.dvx
        rows = len(self.speed)
        found = {kind: (np.zeros(rows, dtype=bool), np.zeros(rows), np.zeros(rows)) for kind in ("lead", "follow")}
        for slot in range(inside.shape[1]):
            gap, dx = gaps[:, slot], self.dx[:, slot]
            for kind, behind in (("lead", dx > 0), ("follow", dx <= 0)):
                present, best_gap, best_speed = found[kind]
                take = inside[:, slot] & behind & (~present | (gap < best_gap))
                found[kind] = (present | take, np.where(take, gap, best_gap),
                               np.where(take, speeds[:, slot], best_speed))
        return _Neighbours(*found["lead"]), _Neighbours(*found["follow"])

    def _conflict_leader(self) -> _Neighbours:
        """:meth:`ObservedTraffic.conflict_leader` per row."""
        horizon = self.rules.yield_horizon_s
        rows = len(self.speed)
        if horizon <= 0:
            return _Neighbours(np.zeros(rows, dtype=bool), np.zeros(rows), np.zeros(rows))
        half = (0.5 * self.lane_width + LANE_MARGIN_M)[:, None]
        conflict = self.present & (np.abs(self.dy) >= half) & (self.dx > 0)  # candidates: ahead, outside now
        row, slot = np.nonzero(conflict)
        times = np.linspace(0.0, horizon, 13)[None, :]
        overlap = ((np.abs(self.dx[row, slot, None] + self.dvx[row, slot, None] * times) < VEHICLE_LENGTH_M)
                   & (np.abs(self.dy[row, slot, None] + self.vy[row, slot, None] * times) < half[row]))
        conflict[row, slot] = overlap.any(axis=1)
        nearest = np.argmin(np.where(conflict, self.dx, np.inf), axis=1)[:, None]
        speed = self.speed + np.take_along_axis(self.dvx, nearest, axis=1)[:, 0]
        return _Neighbours(conflict.any(axis=1), np.take_along_axis(self.dx, nearest, axis=1)[:, 0] - VEHICLE_LENGTH_M,
                           np.where(0.0 > speed, 0.0, speed))  # max(speed, 0.0)

    # -- IDM (safetybed.sims.idm.idm_acceleration with the scalar pow) ------------------------------------------
    @staticmethod
    def _free_road(params: IDMParams, speed: np.ndarray, desired: np.ndarray) -> np.ndarray:
        ratio = np.maximum(speed, 0.0) / np.maximum(desired, MIN_DESIRED_SPEED_MPS)
        return params.max_accel_mps2 * (1.0 - _libm_pow(ratio, params.delta))

    @staticmethod
    def _interaction(params: IDMParams, speed: np.ndarray, gap: np.ndarray, closing: np.ndarray) -> np.ndarray:
        speed = np.maximum(speed, 0.0)
        desired_gap = params.min_gap_m + np.maximum(0.0, speed * params.time_headway_s + speed * closing / (
            2.0 * np.sqrt(params.max_accel_mps2 * params.comfort_decel_mps2)))
        return params.max_accel_mps2 * _libm_pow(desired_gap / np.maximum(gap, MIN_GAP_M), 2)

    def _ego_acceleration(self, leader: _Neighbours) -> np.ndarray:
        """:meth:`DrivingRules.ego_acceleration`; a missing leader is the free road (gap inf, closing 0)."""
        gap = np.where(leader.present, leader.gap_m, math.inf)
        closing = np.where(leader.present, self.speed - leader.speed_mps, 0.0)
        return self.ego_free - self._interaction(self.rules.ego_idm, self.speed, gap, closing)

    def _follower_free(self, follower: _Neighbours) -> np.ndarray:
        return self._free_road(self.rules.other_idm, np.where(follower.present, follower.speed_mps, 0.0),
                               self.other_desired)

    def _follower_acceleration(self, follower: _Neighbours, free: np.ndarray, gap: np.ndarray,
                               leader_speed: np.ndarray) -> np.ndarray:
        """:meth:`DrivingRules._follower_acceleration`: 0 without a follower."""
        speed = np.where(follower.present, follower.speed_mps, 0.0)
        interaction = self._interaction(self.rules.other_idm, speed, np.where(follower.present, gap, math.inf),
                                        np.where(follower.present, speed - leader_speed, 0.0))
        return np.where(follower.present, free - interaction, 0.0)


def check_highway_spaces(scenario: ScenarioSpec, observation_space: gym.Space, action_space: gym.Space, *,
                         who: str) -> None:
    """Raise ``ValueError`` unless ``scenario`` is a highway scenario with its observation and action spaces."""
    if scenario.simulator != "highway":
        raise ValueError(f"scenario: {who} drives highway scenarios only, got simulator {scenario.simulator!r}")
    highway = scenario.highway
    if observation_space.shape != (highway.observation_size,):
        raise ValueError(f"observation_space: expected shape ({highway.observation_size},) for "
                         f"{highway.observed_vehicles} observed vehicles, got {observation_space.shape}")
    if not isinstance(action_space, gym.spaces.Box) or action_space.shape != (2,):
        raise ValueError(f"action_space: expected Box(-1, 1, shape=(2,)) (acceleration, lane change), "
                         f"got {action_space}")


class IDMController(Controller):
    """IDM + MOBIL ego driver for highway scenarios (see the module docstring).

    Args:
        observation_space: the highway observation ``Box`` of ``scenario`` (its length is checked).
        action_space: ``Box(-1, 1, shape=(2,))``.
        scenario: the highway scenario; ``[highway.ego]`` holds the driver parameters.
    """

    name = "builtin:idm"
    batch_stateless = True  # rules of the observation row only

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, *, scenario: ScenarioSpec):
        super().__init__(observation_space, action_space)
        check_highway_spaces(scenario, observation_space, action_space, who="builtin:idm")
        self.accel_scale_mps2 = scenario.highway.ego.accel_scale_mps2
        self.rules = DrivingRules(scenario.highway)

    def act(self, obs_batch: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        """Actions of all rows with :class:`BatchedDrivingRules`; below :data:`_BATCHED_FROM_ROWS` rows (the
        highway-env backend's one row per step) with the row code, which is faster there and gives the same bits."""
        obs_batch = self.check_batch(obs_batch)
        if 0 < len(obs_batch) < _BATCHED_FROM_ROWS:
            return self.act_reference(obs_batch)
        acceleration, lane_change = BatchedDrivingRules(self.rules, obs_batch).decide()
        return np.stack([np.clip(acceleration / self.accel_scale_mps2, -1.0, 1.0), lane_change],
                        axis=1).astype(np.float32)

    def act_reference(self, obs_batch: np.ndarray) -> np.ndarray:
        """:meth:`act` row by row with :class:`DrivingRules` (the reference :meth:`act` equals bitwise)."""
        obs_batch = self.check_batch(obs_batch)
        return np.stack([self._act_one(row) for row in obs_batch]).astype(np.float32)

    def _act_one(self, row: np.ndarray) -> np.ndarray:
        traffic = self.rules.traffic(row)
        lane_change = self.rules.mobil_lane_change(traffic)
        acceleration = self.rules.longitudinal_acceleration(traffic, lane_change=lane_change)
        return np.array([np.clip(acceleration / self.accel_scale_mps2, -1.0, 1.0), float(lane_change)])
