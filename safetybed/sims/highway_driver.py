"""The naturalistic background driver: stochastic IDM + stochastic MOBIL with 1 Hz decisions (NADE's NDE model).

Model (Feng et al. 2021, *Nat. Commun.* 12:748, "NADE"; fallback model of their ``NDDVehicle``;
``research/cav_eval.md`` §1, §4.1, §6.2). At every decision instant (``decision_frequency_hz``, 1 Hz by
default) a background vehicle draws one of ``2 + K`` actions (33 with the default grid) from a pmf ``p(u | s)``:

==========  =================================================================================
index       action
==========  =================================================================================
0           change to the left lane (lane index - 1)
1           change to the right lane (lane index + 1)
2 .. K+1    constant acceleration ``accel_min + (i - 2) * accel_step`` [m/s^2] (ascending grid)
==========  =================================================================================

* Lane changes: for each side lane that exists, is reachable and is not ``forbidden``, and only while no lane
  change is in progress and the vehicle moves (>= 1 m/s), the MOBIL incentive (Kesting, Treiber & Helbing
  2007)::

      gain = (a~_c - a_c) + politeness * [(a~_n - a_n) + (a~_o - a_o)]

  is mapped to a probability ``floor + (max - floor) * clip((gain - threshold) / saturation, 0, 1)``; a change that
  fails MOBIL's safety criterion (new follower, or the vehicle itself, would brake harder than
  ``mobil_max_braking_mps2``) gets ``unsafe_lane_change_floor`` (default: ``floor``): such changes stay possible
  but rare, which is what makes background crashes possible at all (cav_eval.md §6.2). Unavailable sides get
  probability 0. The new leader and follower in the candidate lane include vehicles (the ego among them) that
  have already started changing into that lane, at their current longitudinal position
  (:meth:`NaturalisticVehicle.lane_neighbours`): two vehicles changing into the same lane at once with an unsafe
  gap, or alongside each other, fail the safety criterion.
* Acceleration: ``p(a_i) ∝ exp(-(a_i - a_IDM)^2 / (2 sigma^2))`` on the grid (NADE ``stochastic_IDM``), entries
  below ``pmf_prune_below`` set to 0, renormalised, mixed with a uniform tail
  ``(1 - accel_tail_mass) * gaussian + accel_tail_mass / K`` (default tail mass 0: NADE's pmf exactly; a positive
  mass makes emergency braking possible, which the pruned Gaussian rules out), and scaled by
  ``1 - p_left - p_right``. ``a_IDM`` is the
  Intelligent Driver Model (Treiber, Hennecke & Helbing 2000; :mod:`safetybed.sims.idm`, which also holds the
  MOBIL incentive and safety criterion) with the spec's background parameters;
  during a lane change it is the smaller of the IDM accelerations behind the leaders of both lanes (as
  highway-env's ``IDMVehicle.act``).

The chosen action is **held** until the next decision: highway-env calls ``act()`` every simulation frame
(15 Hz), so the vehicle keeps a frame counter and only decides every ``simulation_frequency / decision_frequency``
frames; in between it re-applies the held acceleration and steers towards its target lane with highway-env's
lane-following controller. A lane-change action holds the IDM acceleration of that instant (clipped to the grid).

Randomness: each vehicle owns a ``numpy.random.Generator`` derived from the environment's seeded generator and
the vehicle id (see ``safetybed.sims.highway``), and draws exactly one uniform per decision, *also when its action
is overridden*, so overriding one vehicle never shifts another vehicle's random stream (common random numbers).

References: Feng, Yan, Sun, Feng & Liu (2021), *Nat. Commun.* 12:748 (NADE); Treiber, Hennecke & Helbing (2000),
*Phys. Rev. E* 62:1805 (IDM); Kesting, Treiber & Helbing (2007), *Transp. Res. Rec.* 1999:86-94 (MOBIL).

Override hook: :meth:`NaturalisticVehicle.override_next_action` makes the vehicle take a given action index at
its next decision instead of sampling (``source = "override"``; used by importance-sampling testers), and
:meth:`NaturalisticVehicle.schedule_action` makes it take an action at its first decision at or after a time
(``source = "script"``; used by scenario scripts such as the cut-in). Every decision leaves a
:class:`DecisionRecord` with the full pmf, the action taken and its source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from highway_env.road.road import LaneIndex, Road
from highway_env.vehicle.behavior import IDMVehicle
from highway_env.vehicle.kinematics import Vehicle
from highway_env.vehicle.objects import RoadObject

from safetybed.sims.idm import IDMParams, idm_acceleration, mobil_incentive, mobil_is_safe
from safetybed.spec.highway import NaturalisticDriverSpec

ACTION_LEFT = 0  #: action index of a change to the left lane (lane index - 1)
ACTION_RIGHT = 1  #: action index of a change to the right lane (lane index + 1)
FIRST_ACCELERATION_ACTION = 2  #: action index of the first (lowest) acceleration of the grid

DecisionSource = Literal["sampled", "override", "script"]
_MIN_LANE_CHANGE_SPEED_MPS = 1.0  # [m/s] highway-env's IDMVehicle does not change lanes below this speed


def acceleration_pmf(mean_mps2: float, grid_mps2: np.ndarray, *, sigma_mps2: float,
                     prune_below: float, tail_mass: float = 0.0) -> np.ndarray:
    """pmf on ``grid_mps2`` proportional to N(mean, sigma^2), pruned below ``prune_below`` and renormalised.

    Computed in log space, so a mean far outside the grid puts (almost) all mass on the nearest grid point
    instead of dividing 0 by 0. ``tail_mass`` (eta) mixes in a uniform pmf on the grid,
    ``(1 - eta) * gaussian + eta / len(grid)``: rare emergency manoeuvres keep a positive probability (eta = 0
    returns the pruned Gaussian unchanged, NADE's ``stochastic_IDM``, Feng et al. 2021).
    """
    log_weight = -0.5 * ((grid_mps2 - mean_mps2) / sigma_mps2) ** 2
    weight = np.exp(log_weight - log_weight.max())
    pmf = weight / weight.sum()
    pmf[pmf < prune_below] = 0.0
    pmf = pmf / pmf.sum()
    if tail_mass > 0.0:
        pmf = (1.0 - tail_mass) * pmf + tail_mass / len(grid_mps2)
    return pmf


def lane_change_probability(gain_mps2: float, *, safe: bool, threshold_mps2: float, saturation_mps2: float,
                            floor: float, maximum: float, unsafe_floor: float | None = None) -> float:
    """Clipped-linear stochastic MOBIL: ``floor`` below the threshold, ``maximum`` at saturation.

    A change that fails MOBIL's safety criterion gets ``unsafe_floor`` (``None``: ``floor``).
    """
    if not safe:
        return floor if unsafe_floor is None else unsafe_floor
    if not math.isfinite(gain_mps2):
        return floor
    fraction = min(max((gain_mps2 - threshold_mps2) / saturation_mps2, 0.0), 1.0)
    return floor + (maximum - floor) * fraction


@dataclass(frozen=True)
class DriverParams:
    """Everything a :class:`NaturalisticVehicle` needs, resolved from the spec once per environment."""

    idm: IDMParams
    desired_speed_mps: float  # IDM v0 [m/s] (capped by the lane speed limit)
    grid_mps2: np.ndarray  # acceleration grid, ascending [m/s^2]
    sigma_mps2: float  # std of the acceleration pmf around a_IDM [m/s^2]
    prune_below: float  # pmf entries below this are set to 0 [-]
    politeness: float  # MOBIL politeness p [-]
    gain_threshold_mps2: float  # MOBIL incentive threshold [m/s^2]
    gain_saturation_mps2: float  # gain above the threshold where p(lane change) reaches its maximum [m/s^2]
    max_braking_mps2: float  # MOBIL safety criterion b_safe [m/s^2]
    lane_change_floor: float  # p(lane change) of an available, safe but unattractive change [-]
    lane_change_max: float  # largest p(lane change) per side and decision [-]
    unsafe_lane_change_floor: float  # p(lane change) of a change that fails MOBIL's safety criterion [-]
    accel_tail_mass: float  # weight of the uniform tail of the acceleration pmf [-]
    frames_per_decision: int  # simulation frames between decisions [-]
    simulation_frequency_hz: int  # [Hz]

    @classmethod
    def from_spec(cls, spec: NaturalisticDriverSpec, *, simulation_frequency_hz: int) -> DriverParams:
        grid = spec.accel_min_mps2 + spec.accel_step_mps2 * np.arange(spec.acceleration_count)
        return cls(
            idm=IDMParams.from_spec(spec),
            desired_speed_mps=spec.idm_desired_speed_mps, grid_mps2=grid, sigma_mps2=spec.accel_sigma_mps2,
            prune_below=spec.pmf_prune_below, politeness=spec.mobil_politeness,
            gain_threshold_mps2=spec.mobil_gain_threshold_mps2,
            gain_saturation_mps2=spec.mobil_gain_saturation_mps2, max_braking_mps2=spec.mobil_max_braking_mps2,
            lane_change_floor=spec.lane_change_floor, lane_change_max=spec.lane_change_max,
            unsafe_lane_change_floor=spec.resolved_unsafe_lane_change_floor, accel_tail_mass=spec.accel_tail_mass,
            frames_per_decision=int(round(simulation_frequency_hz / spec.decision_frequency_hz)),
            simulation_frequency_hz=simulation_frequency_hz)

    @property
    def action_count(self) -> int:
        return FIRST_ACCELERATION_ACTION + len(self.grid_mps2)


@dataclass(frozen=True)
class DecisionRecord:
    """One decision of one background vehicle.

    ``pmf`` is the naturalistic pmf p(. | s) the vehicle sampled from (shape ``(action_count,)``), ``action`` the
    index it took and ``source`` why: ``"sampled"`` from ``pmf``, ``"override"`` set through the override hook,
    ``"script"`` part of the scenario definition (e.g. the cut-in; not a naturalistic draw).
    """

    time_s: float  # simulation time of the decision since reset [s]
    vehicle_id: int
    pmf: np.ndarray
    action: int
    source: DecisionSource

    def to_json(self) -> dict[str, Any]:
        """JSON-able form used in ``info["decisions"]``."""
        return {"time_s": float(self.time_s), "vehicle_id": int(self.vehicle_id),
                "pmf": [float(p) for p in self.pmf], "action": int(self.action), "source": self.source}


def _lane_coordinate(lane, obj: RoadObject) -> float:
    return lane.local_coordinates(obj.position)[0]


class NaturalisticVehicle(IDMVehicle):
    """A background vehicle driven by the stochastic IDM/MOBIL model above (see the module docstring).

    Created by highway-env code with IDMVehicle's constructor; the environment then calls :meth:`configure`
    with the driver parameters, the vehicle's own random generator and its id. Crashed vehicles stop deciding
    (highway-env brakes them to a stop).
    """

    def __init__(self, road: Road, position, heading: float = 0, speed: float = 0,
                 target_lane_index: LaneIndex | None = None, target_speed: float | None = None,
                 route=None, enable_lane_change: bool = True, timer: float | None = None):
        super().__init__(road, position, heading, speed, target_lane_index, target_speed, route,
                         enable_lane_change, timer)
        self.driver: DriverParams | None = None
        self.rng: np.random.Generator | None = None
        self.vehicle_id = -1
        self.frame = 0  # simulation frames since reset [-]
        self.held_acceleration_mps2 = 0.0
        self.last_decision: DecisionRecord | None = None
        self._last_decision_frame = -1
        self._override: int | None = None
        self._script: list[tuple[float, int]] = []
        #: IDM desired speed of this vehicle [m/s]; ``None`` = the spec's ``idm_desired_speed_mps``.
        self.desired_speed_override_mps: float | None = None

    # -- set-up ------------------------------------------------------------------------------------------------
    def configure(self, *, driver: DriverParams, rng: np.random.Generator, vehicle_id: int) -> None:
        """Attach the driver model, the vehicle's own generator and its id (called once, right after reset)."""
        self.driver = driver
        self.rng = rng
        self.vehicle_id = int(vehicle_id)
        override = self.desired_speed_override_mps
        self.target_speed = driver.desired_speed_mps if override is None else float(override)

    def randomize_behavior(self) -> None:
        """No per-vehicle parameter noise: all randomness is in the decision pmf."""

    # -- the model -----------------------------------------------------------------------------------------------
    @property
    def time_s(self) -> float:
        """Simulation time since reset [s], from the vehicle's frame counter."""
        return self.frame / self._params.simulation_frequency_hz

    @property
    def _params(self) -> DriverParams:
        if self.driver is None:
            raise RuntimeError("NaturalisticVehicle used before configure(): the environment must configure "
                               "every naturalistic vehicle after creating it")
        return self.driver

    def decision_due(self) -> bool:
        """Whether the vehicle decides at the current frame (and has not done so yet)."""
        return (not self.crashed and self.frame % self._params.frames_per_decision == 0
                and self._last_decision_frame != self.frame)

    def _desired_speed(self, vehicle: RoadObject) -> float:
        desired = self.target_speed if vehicle is self else self._params.desired_speed_mps
        lane = getattr(vehicle, "lane", None)
        if lane is not None and lane.speed_limit is not None:
            desired = min(desired, lane.speed_limit)
        return desired

    def _idm(self, follower: RoadObject | None, leader: RoadObject | None, lane) -> float:
        """IDM acceleration of ``follower`` behind ``leader`` measured along ``lane`` (0 for no / immobile follower)."""
        if follower is None or not isinstance(follower, Vehicle):
            return 0.0
        if leader is None:
            return float(idm_acceleration(self._params.idm, speed_mps=follower.speed,
                                          desired_speed_mps=self._desired_speed(follower)))
        gap = (_lane_coordinate(lane, leader) - _lane_coordinate(lane, follower)
               - 0.5 * (follower.LENGTH + leader.LENGTH))
        closing = float(np.dot(follower.velocity - leader.velocity, follower.direction))
        return float(idm_acceleration(self._params.idm, speed_mps=follower.speed,
                                      desired_speed_mps=self._desired_speed(follower), gap_m=gap,
                                      closing_speed_mps=closing))

    def _lane_change_in_progress(self) -> bool:
        return self.target_lane_index[:2] == self.lane_index[:2] and self.target_lane_index != self.lane_index

    def idm_decision_acceleration(self) -> float:
        """a_IDM at the current state [m/s^2]; during a lane change the minimum over current and target lane.

        The leader in the target lane is found by :meth:`lane_neighbours`, so it includes a vehicle that is
        changing into the same lane ahead.
        """
        network = self.road.network
        front, _ = self.road.neighbour_vehicles(self, self.lane_index)
        acceleration = self._idm(self, front, self.lane)
        if self._lane_change_in_progress():
            target_lane = network.get_lane(self.target_lane_index)
            front, _ = self.lane_neighbours(self.target_lane_index)
            acceleration = min(acceleration, self._idm(self, front, target_lane))
        return acceleration

    def side_lane(self, action: int) -> LaneIndex | None:
        """The lane a lane-change action would target, or ``None`` where that change is not available."""
        if self._lane_change_in_progress() or self.speed < _MIN_LANE_CHANGE_SPEED_MPS:
            return None
        _from, _to, _id = self.lane_index
        new_id = _id - 1 if action == ACTION_LEFT else _id + 1
        if not 0 <= new_id < len(self.road.network.graph[_from][_to]):
            return None
        candidate = (_from, _to, new_id)
        if not self.road.network.get_lane(candidate).is_reachable_from(self.position):
            return None
        return candidate

    def lane_neighbours(self, lane_index: LaneIndex) -> tuple[RoadObject | None, RoadObject | None]:
        """The vehicles ahead of and behind this one in ``lane_index``, counting those changing into it.

        highway-env's ``Road.neighbour_vehicles`` only sees objects that are physically in the lane. A vehicle
        that has already started changing into ``lane_index`` (its ``target_lane_index``, while its
        ``lane_index`` is still its old lane; the ego included: highway-env applies the ego's action before the
        background vehicles act in the same frame) is counted here as occupying ``lane_index`` at its current
        longitudinal position, and becomes the new leader (follower) if it is nearer ahead (behind) by lane
        coordinate than the one found in the lane. So MOBIL's safety criterion (Kesting, Treiber & Helbing 2007)
        rejects two simultaneous changes into the same lane whose gap is unsafe; a vehicle alongside gives a
        negative bumper gap and thus always an unsafe change. Without such vehicles the result is exactly
        ``Road.neighbour_vehicles``.
        """
        road = self.road
        front, rear = road.neighbour_vehicles(self, lane_index)
        merging = [vehicle for vehicle in road.vehicles
                   if vehicle is not self and vehicle is not front and vehicle is not rear
                   and getattr(vehicle, "target_lane_index", None) == lane_index
                   and vehicle.lane_index != lane_index]
        if not merging:
            return front, rear
        lane = road.network.get_lane(lane_index)
        s_self = _lane_coordinate(lane, self)
        s_front = math.inf if front is None else _lane_coordinate(lane, front)
        s_rear = -math.inf if rear is None else _lane_coordinate(lane, rear)
        for vehicle in merging:
            s_vehicle = _lane_coordinate(lane, vehicle)
            if s_self <= s_vehicle < s_front:
                front, s_front = vehicle, s_vehicle
            elif s_rear < s_vehicle < s_self:
                rear, s_rear = vehicle, s_vehicle
        return front, rear

    def mobil(self, lane_index: LaneIndex) -> tuple[float, bool]:
        """MOBIL (Kesting et al. 2007) gain [m/s^2] of changing to ``lane_index`` and whether it is safe.

        The new leader and follower come from :meth:`lane_neighbours`, which counts vehicles already changing
        into ``lane_index``: a simultaneous change into the same lane with an unsafe gap fails the safety
        criterion.
        """
        road, b_safe = self.road, self._params.max_braking_mps2
        new_lane = road.network.get_lane(lane_index)
        new_front, new_rear = self.lane_neighbours(lane_index)
        new_rear_before = self._idm(new_rear, new_front, new_lane)
        new_rear_after = self._idm(new_rear, self, new_lane)
        self_after = self._idm(self, new_front, new_lane)
        safe = bool(mobil_is_safe(self_after_mps2=self_after, new_follower_after_mps2=new_rear_after,
                                  max_braking_mps2=b_safe))
        old_front, old_rear = road.neighbour_vehicles(self, self.lane_index)
        self_before = self._idm(self, old_front, self.lane)
        old_rear_before = self._idm(old_rear, self, self.lane)
        old_rear_after = self._idm(old_rear, old_front, self.lane)
        gain = mobil_incentive(self_before_mps2=self_before, self_after_mps2=self_after,
                               new_follower_before_mps2=new_rear_before, new_follower_after_mps2=new_rear_after,
                               old_follower_before_mps2=old_rear_before, old_follower_after_mps2=old_rear_after,
                               politeness=self._params.politeness)
        return gain, safe

    def action_pmf(self) -> np.ndarray:
        """The naturalistic pmf p(u | s) over the action set at the current state (pure: draws nothing)."""
        params = self._params
        side_probability = []
        for action in (ACTION_LEFT, ACTION_RIGHT):
            lane_index = self.side_lane(action)
            if lane_index is None:
                side_probability.append(0.0)
                continue
            gain, safe = self.mobil(lane_index)
            side_probability.append(lane_change_probability(
                gain, safe=safe, threshold_mps2=params.gain_threshold_mps2,
                saturation_mps2=params.gain_saturation_mps2, floor=params.lane_change_floor,
                maximum=params.lane_change_max, unsafe_floor=params.unsafe_lane_change_floor))
        accel = acceleration_pmf(self.idm_decision_acceleration(), params.grid_mps2,
                                 sigma_mps2=params.sigma_mps2, prune_below=params.prune_below,
                                 tail_mass=params.accel_tail_mass)
        pmf = np.empty(params.action_count)
        pmf[ACTION_LEFT], pmf[ACTION_RIGHT] = side_probability
        pmf[FIRST_ACCELERATION_ACTION:] = (1.0 - sum(side_probability)) * accel
        return pmf

    # -- hooks for testing methods and scenario scripts -------------------------------------------------------
    def override_next_action(self, action: int) -> None:
        """Take ``action`` (an index into the action set) at the next decision instead of sampling.

        The vehicle still draws its uniform for that decision (its random stream stays aligned) and records the
        decision with ``source = "override"``. An infeasible lane change is executed as keeping the lane (with the
        IDM acceleration). A scripted action due at the same decision takes precedence; the override then waits
        for the following decision.
        """
        self._check_action(action)
        self._override = int(action)

    def schedule_action(self, action: int, *, at_time_s: float) -> None:
        """Take ``action`` at the first decision at or after ``at_time_s`` [s] (``source = "script"``)."""
        self._check_action(action)
        if not math.isfinite(at_time_s) or at_time_s < 0:
            raise ValueError(f"at_time_s: expected a finite time >= 0, got {at_time_s}")
        self._script.append((float(at_time_s), int(action)))
        self._script.sort()

    @property
    def pending_override(self) -> int | None:
        return self._override

    def script_due(self) -> bool:
        """Whether a scripted action takes precedence over sampling and overrides at the next decision."""
        return bool(self._script) and self._script[0][0] <= self.time_s + 1e-9

    def _check_action(self, action: int) -> None:
        count = self._params.action_count
        if isinstance(action, bool) or not isinstance(action, int | np.integer) or not 0 <= action < count:
            raise ValueError(f"action: expected an integer index in [0, {count - 1}], got {action!r}")

    # -- highway-env hooks ----------------------------------------------------------------------------------------
    def _decide(self) -> None:
        params = self._params
        pmf = self.action_pmf()
        uniform = self.rng.random()  # drawn at every decision, overridden or not (common random numbers)
        cumulative = np.cumsum(pmf)
        sampled = min(int(np.searchsorted(cumulative, uniform, side="right")), int(np.flatnonzero(pmf)[-1]))
        if self.script_due():
            action, source = self._script.pop(0)[1], "script"
        elif self._override is not None:
            action, source = self._override, "override"
            self._override = None
        else:
            action, source = sampled, "sampled"
        if action >= FIRST_ACCELERATION_ACTION:
            self.held_acceleration_mps2 = float(params.grid_mps2[action - FIRST_ACCELERATION_ACTION])
        else:
            lane_index = self.side_lane(action)
            if lane_index is not None:
                self.target_lane_index = lane_index
            self.held_acceleration_mps2 = float(np.clip(self.idm_decision_acceleration(), params.grid_mps2[0],
                                                        params.grid_mps2[-1]))
        self.last_decision = DecisionRecord(time_s=self.time_s, vehicle_id=self.vehicle_id, pmf=pmf,
                                            action=int(action), source=source)
        self._last_decision_frame = self.frame

    def act(self, action: dict | str | None = None) -> None:
        """Called by highway-env every simulation frame: decide at decision instants, else hold the decision."""
        if self.crashed:
            return
        self.follow_road()
        if self.decision_due():
            self._decide()
        steering = float(np.clip(self.steering_control(self.target_lane_index), -self.MAX_STEERING_ANGLE,
                                 self.MAX_STEERING_ANGLE))
        # Skip IDMVehicle/ControlledVehicle.act, which would recompute a deterministic IDM/MOBIL command.
        Vehicle.act(self, {"steering": steering, "acceleration": self.held_acceleration_mps2})

    def step(self, dt: float) -> None:
        super().step(dt)
        if self.speed < 0.0:  # no reversing on a highway: a held deceleration stops the vehicle
            self.speed = 0.0
        self.frame += 1


def configure_idm_vehicle(vehicle: IDMVehicle, spec: NaturalisticDriverSpec, *,
                          desired_speed_mps: float | None = None) -> None:
    """Give a highway-env ``IDMVehicle`` the spec's IDM/MOBIL parameters (``driver.model = "idm"``).

    Set as instance attributes, so highway-env's class constants (shared by every environment in the process)
    stay untouched. highway-env measures ``DISTANCE_WANTED`` centre to centre, hence the added vehicle length.
    """
    vehicle.COMFORT_ACC_MAX = spec.idm_max_accel_mps2
    vehicle.COMFORT_ACC_MIN = -spec.idm_comfort_decel_mps2
    vehicle.DISTANCE_WANTED = spec.idm_min_gap_m + vehicle.LENGTH
    vehicle.TIME_WANTED = spec.idm_time_headway_s
    vehicle.DELTA = spec.idm_delta
    vehicle.POLITENESS = spec.mobil_politeness
    vehicle.LANE_CHANGE_MIN_ACC_GAIN = spec.mobil_gain_threshold_mps2
    vehicle.LANE_CHANGE_MAX_BRAKING_IMPOSED = spec.mobil_max_braking_mps2
    vehicle.target_speed = spec.idm_desired_speed_mps if desired_speed_mps is None else float(desired_speed_mps)


class ScriptedIDMVehicle(IDMVehicle):
    """A highway-env IDM vehicle that changes to ``script_lane_index`` at ``script_time_s`` and then keeps that lane.

    Used for the cut-in when ``driver.model = "idm"`` (the naturalistic vehicle uses :meth:`schedule_action`).
    """

    def __init__(self, road: Road, position, heading: float = 0, speed: float = 0,
                 target_lane_index: LaneIndex | None = None, target_speed: float | None = None,
                 route=None, enable_lane_change: bool = True, timer: float | None = None):
        super().__init__(road, position, heading, speed, target_lane_index, target_speed, route,
                         enable_lane_change, timer)
        self.script_lane_index: LaneIndex | None = None
        self.script_time_s = math.inf
        self.clock_s = 0.0  # [s] since reset

    def act(self, action: dict | str | None = None) -> None:
        if self.script_lane_index is not None and self.clock_s >= self.script_time_s - 1e-6 and not self.crashed:
            self.target_lane_index = self.script_lane_index
            self.script_lane_index = None
            self.enable_lane_change = False  # stay in the new lane: deterministic MOBIL would often turn back
        super().act(action)

    def step(self, dt: float) -> None:
        super().step(dt)
        self.clock_s += dt
