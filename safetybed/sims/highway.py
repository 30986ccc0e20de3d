"""Driving adapter: highway-env 1.12.1 scenario families with naturalistic background traffic.

``make_highway_env(spec)`` builds one of six families (``spec.task``), each a highway-env ``AbstractEnv``
subclass configured from the strict ``[highway]`` section (no free-form config dicts reach highway-env), with
offscreen rendering and no render mode, ``simulation_frequency_hz`` / ``policy_frequency_hz`` from the spec:

============= =====================================================================================================
family        scene
============= =====================================================================================================
cruise        straight multi-lane highway, ego in a random lane, traffic ahead of and behind it in every lane
cut_in        cruise, plus a vehicle in an adjacent lane just ahead of the ego that changes into the ego's lane
              at its first decision at or after ``cut_in.start_s`` (a scripted, reproducible cut-in)
overtaking    a slower leader ahead in the ego's lane (its desired speed is its initial speed) and a free
              adjacent passing lane; other traffic elsewhere
merge         highway-env's ``MergeGenericEnv`` (ego on the rightmost highway lane, a vehicle merging from the ramp)
intersection  highway-env's ``IntersectionEnv`` (ego turns left to ``o1``; traffic with priority rules keeps
              spawning)
roundabout    highway-env's ``RoundaboutGenericEnv`` (ego enters from the south and leaves north)
============= =====================================================================================================

Background traffic of cruise / cut_in / overtaking / merge follows ``driver.model``: the naturalistic driver of
:mod:`safetybed.sims.highway_driver` (stochastic IDM + MOBIL, Feng et al. 2021 NADE) or highway-env's IDM vehicles.
The merge family's ramp vehicle is always highway-env's IDM vehicle (its lane change is mandatory, which a
stochastic MOBIL with a capped lane-change probability would often miss). Intersection and roundabout traffic is
highway-env's own (routes, priorities).

Action and observation: :mod:`safetybed.sims.highway_obs` (same layout for every family).

Episode: terminates when the ego crashes, and for merge / intersection / roundabout also when the route is
completed; truncates after ``episode_steps`` control steps. ``info["safety"]``:

* ``collision``: the ego is crashed; ``success``: cruise / cut_in: the episode reached its last step without a
  collision; overtaking: the ego's rear bumper is ahead of the slow leader's front bumper; merge: the ego has passed
  the end of the merge zone; intersection: the ego is 25 m into its exit road (highway-env ``has_arrived``);
  roundabout: the ego is on the north exit;
* ``ttc_s`` / ``gap_m``: to the closest vehicle or obstacle ahead in the ego's lane (bumper gap; ``inf`` if none);
* ``progress_m``: distance driven by the ego since reset (odometer);
* ``violations``: per step, 1 if the ego ends it off the road plus 1 if it drives more than 10 % above its
  lane's speed limit.

Reward (per control step, in [0, 1]): 0 after a collision or off the road, else the ego's forward speed along its
lane divided by the lane's speed limit, clipped to [0, 1]. Hence the episode return lies in
``env.return_range = (0, episode_steps)`` (``env.step_reward_range = (0, 1)``).

Decision log and testing hooks (naturalistic traffic), on ``env.unwrapped``:

* :meth:`HighwayScenarioEnv.decision_due` -- do background vehicles decide at the start of the next ``step``?
* :meth:`HighwayScenarioEnv.pending_decision_pmfs` -- for every *candidate* (a naturalistic, uncrashed vehicle
  within ``observation_range_m`` of the ego), the pmf it will sample from at that decision (a pure function of the
  current state: the same array the vehicle then uses);
* :meth:`HighwayScenarioEnv.override_next_decision` -- make a vehicle take a chosen action index at its next
  decision (the override hook of :class:`~safetybed.sims.highway_driver.NaturalisticVehicle`);
* :meth:`HighwayScenarioEnv.last_decisions` -- the :class:`~safetybed.sims.highway_driver.DecisionRecord` of every
  candidate that decided during the last ``step``; with ``metrics.decision_log`` the same records go into
  ``info["decisions"]`` as JSON-able dicts ``{"time_s", "vehicle_id", "pmf", "action", "source"}``.

Action indices: 0 = left lane change, 1 = right lane change, ``2 + i`` = acceleration ``env.acceleration_grid_mps2[i]``.

Randomness: everything comes from the environment's seeded generator ``self.np_random`` (highway-env's road uses
it for placement and routes); each naturalistic vehicle gets its own generator seeded from
(one 63-bit draw of ``self.np_random`` at reset, vehicle id) through ``numpy.random.SeedSequence``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from highway_env.envs.common.abstract import AbstractEnv
from highway_env.envs.intersection_env import IntersectionEnv
from highway_env.envs.merge_env import MergeGenericEnv
from highway_env.envs.roundabout_env import RoundaboutGenericEnv
from highway_env.road.road import Road, RoadNetwork
from highway_env.vehicle.behavior import IDMVehicle
from highway_env.vehicle.kinematics import Vehicle

from safetybed.errors import InputError
from safetybed.sims.base import StepSafety
from safetybed.sims.batched.placement import (
    KIND_EGO,
    KIND_IDM,
    KIND_NATURALISTIC,
    KIND_SCRIPTED_IDM,
    place_scene,
)
from safetybed.sims.highway_driver import (
    ACTION_LEFT,
    ACTION_RIGHT,
    DecisionRecord,
    DriverParams,
    NaturalisticVehicle,
    ScriptedIDMVehicle,
    configure_idm_vehicle,
)
from safetybed.sims.highway_obs import (
    MAX_SPEED_MPS,
    EgoVehicle,
    LaneFollowingAccelerationAction,
    LaneFrameObservation,
    lane_frame,
    leader_gap_and_ttc,
)
from safetybed.spec import ScenarioSpec

_SPEEDING_FACTOR = 1.1  # a violation is counted above 110 % of the lane speed limit
_LONG_DURATION_S = 1e9  # [s] highway-env's own time limit, disabled: safetybed truncates by control steps


@dataclass(frozen=True)
class DecisionPmf:
    """The pmf a candidate background vehicle will sample from at its next decision."""

    vehicle_id: int
    distance_m: float  # centre-to-centre distance to the ego [m]
    pmf: np.ndarray  # p(u | s), shape (action_count,), sums to 1


class IntersectionIDMVehicle(IDMVehicle):
    """highway-env's IDM vehicle for the intersection family.

    highway-env's ``IntersectionEnv`` overwrites class constants of its traffic class (jam distance, comfort
    accelerations); giving it this subclass keeps those writes away from ``IDMVehicle`` itself, which the other
    families use.
    """


class HighwayScenarioEnv(AbstractEnv):
    """Shared behaviour of every family: spaces, step bookkeeping, safety info, reward, decision hooks.

    Subclasses build the scene in :meth:`_build_scene` and may define :meth:`_goal_reached`.
    """

    #: ``success`` = the horizon was survived (cruise, cut_in) rather than a goal reached.
    SURVIVAL_TASK = True
    #: Terminate when the goal is reached (route-completion families).
    TERMINATE_ON_GOAL = False

    def __init__(self, scenario: ScenarioSpec):
        if scenario.simulator != "highway":
            raise ValueError(f"scenario.simulator: expected 'highway', got {scenario.simulator!r}")
        self.scenario = scenario
        self.highway = scenario.highway
        self.driver_params = DriverParams.from_spec(self.highway.driver,
                                                    simulation_frequency_hz=self.highway.simulation_frequency_hz)
        self.return_range = (0.0, float(scenario.episode_steps))
        self.step_reward_range = (0.0, 1.0)
        self.metadata = {"render_modes": [], "render_fps": self.highway.policy_frequency_hz}
        self.control_step = 0
        self._traffic_entropy = 0
        self._next_vehicle_id = 0
        self._last_decisions: list[DecisionRecord] = []
        super().__init__(config=self._highway_env_config(), render_mode=None)

    # -- configuration ------------------------------------------------------------------------------------------
    @property
    def naturalistic(self) -> bool:
        return self.highway.driver.model == "naturalistic"

    def _background_class(self) -> type[Vehicle]:
        return NaturalisticVehicle if self.naturalistic else IDMVehicle

    def _highway_env_config(self) -> dict[str, Any]:
        background = self._background_class()
        return {"simulation_frequency": self.highway.simulation_frequency_hz,
                "policy_frequency": self.highway.policy_frequency_hz,
                "offscreen_rendering": True, "show_trajectories": False, "manual_control": False,
                "real_time_rendering": False, "duration": _LONG_DURATION_S,
                "other_vehicles_type": f"{background.__module__}.{background.__qualname__}"}

    def define_spaces(self) -> None:
        # Built once: highway-env calls this twice per reset; keeping the same space objects keeps their seeds.
        if not isinstance(self.observation_type, LaneFrameObservation):
            self.observation_type = LaneFrameObservation(self, highway=self.highway)
            self.action_type = LaneFollowingAccelerationAction(
                self, accel_scale_mps2=self.highway.ego.accel_scale_mps2)
            self.observation_space = self.observation_type.space()
            self.action_space = self.action_type.space()

    @property
    def action_count(self) -> int:
        """Size of a background vehicle's action set (33 by default)."""
        return self.driver_params.action_count

    @property
    def acceleration_grid_mps2(self) -> np.ndarray:
        """Accelerations of actions 2, 3, ... [m/s^2]."""
        return self.driver_params.grid_mps2.copy()

    # -- reset --------------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options:
            raise ValueError(f"options: this environment takes no reset options (the scenario spec configures "
                             f"it), got keys {sorted(options)}")
        obs, _ = super().reset(seed=seed)
        return obs, self._make_info(collision=False, success=False, violations=0)

    def _reset(self) -> None:
        self.control_step = 0
        self._next_vehicle_id = 0
        self._last_decisions = []
        self.action_type.last_acceleration_mps2, self.action_type.last_lane_change = 0.0, 0
        self._traffic_entropy = int(self.np_random.integers(0, 2**63))
        self._build_scene()
        self._register_vehicles()
        self._after_registration()

    def _build_scene(self) -> None:
        raise NotImplementedError

    def _after_registration(self) -> None:
        """Scene set-up that needs configured vehicles (ids, generators), e.g. scripted actions."""

    def _register_vehicles(self) -> None:
        """Give every new vehicle an id (ego = 0 at reset) and configure new naturalistic vehicles."""
        ordered = [self.vehicle] + [v for v in self.road.vehicles if v is not self.vehicle] + self.road.objects
        for vehicle in ordered:
            if getattr(vehicle, "vehicle_id", -1) >= 0:
                continue
            vehicle.vehicle_id = self._next_vehicle_id
            self._next_vehicle_id += 1
            if isinstance(vehicle, NaturalisticVehicle):
                rng = np.random.default_rng(np.random.SeedSequence(self._traffic_entropy,
                                                                   spawn_key=(vehicle.vehicle_id,)))
                vehicle.configure(driver=self.driver_params, rng=rng, vehicle_id=vehicle.vehicle_id)

    # -- step ---------------------------------------------------------------------------------------------------
    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action: expected 2 finite numbers in [-1, 1] (acceleration, lane change), got "
                             f"{action.tolist()}")
        decision_time_s = self.steps / self.highway.simulation_frequency_hz
        candidates = ({v.vehicle_id for v, _ in self._candidates()} if self.decision_due() else set())
        obs, _, _, _, _ = super().step(action)
        self.control_step += 1
        self._register_vehicles()
        self._last_decisions = [
            v.last_decision for v in self._naturalistic_vehicles()
            if v.vehicle_id in candidates and v.last_decision is not None
            and abs(v.last_decision.time_s - decision_time_s) < 1e-9]
        ego = self.vehicle
        collision = bool(ego.crashed)
        goal = self._goal_reached()
        terminated = collision or (self.TERMINATE_ON_GOAL and goal)
        truncated = self.control_step >= self.scenario.episode_steps
        success = not collision and (truncated if self.SURVIVAL_TASK else goal)
        forward_speed, speed_limit = self._forward_speed_and_limit()
        violations = int(not ego.on_road) + int(forward_speed > _SPEEDING_FACTOR * speed_limit)
        reward = 0.0 if collision or not ego.on_road else float(np.clip(forward_speed / speed_limit, 0.0, 1.0))
        info = self._make_info(collision=collision, success=success, violations=violations)
        return obs, reward, bool(terminated), bool(truncated), info

    # AbstractEnv.step calls these; the adapter computes its own reward, termination and info after it.
    def _reward(self, action: np.ndarray) -> float:
        return 0.0

    def _is_terminated(self) -> bool:
        return False

    def _is_truncated(self) -> bool:
        return False

    def _info(self, obs: np.ndarray, action: Any = None) -> dict[str, Any]:
        return {}

    def _goal_reached(self) -> bool:
        return False

    def _forward_speed_and_limit(self) -> tuple[float, float]:
        ego = self.vehicle
        _, _, tangent, _ = lane_frame(ego.lane, ego.position)
        limit = ego.lane.speed_limit if ego.lane.speed_limit is not None else MAX_SPEED_MPS
        return float(np.dot(ego.velocity, tangent)), float(limit)

    def _make_info(self, *, collision: bool, success: bool, violations: int) -> dict[str, Any]:
        ego = self.vehicle
        gap_m, ttc_s = leader_gap_and_ttc(ego, self.road)
        safety = StepSafety(collision=collision, success=success, ttc_s=ttc_s, gap_m=gap_m,
                            progress_m=float(ego.odometer_m), violations=int(violations))
        info: dict[str, Any] = {"safety": safety}
        metrics = self.scenario.metrics
        if metrics.per_step_log:
            _, lateral, _, _ = lane_frame(ego.lane, ego.position)
            info["step_log"] = {
                "time_s": float(self.steps / self.highway.simulation_frequency_hz),
                "x_m": float(ego.position[0]), "y_m": float(ego.position[1]),
                "speed_mps": float(ego.speed), "heading_rad": float(ego.heading),
                "acceleration_command_mps2": float(self.action_type.last_acceleration_mps2),
                "lane_change_command": float(self.action_type.last_lane_change),
                "lane_id": float(ego.lane_index[2]), "lateral_offset_m": float(lateral),
                "gap_m": gap_m, "ttc_s": ttc_s, "progress_m": float(ego.odometer_m),
                "vehicles": float(len(self.road.vehicles) - 1)}
        if metrics.decision_log:
            info["decisions"] = [record.to_json() for record in self._last_decisions]
        return info

    # -- decision hooks -----------------------------------------------------------------------------------------
    def _naturalistic_vehicles(self) -> list[NaturalisticVehicle]:
        return [v for v in self.road.vehicles if isinstance(v, NaturalisticVehicle)]

    def _candidates(self) -> list[tuple[NaturalisticVehicle, float]]:
        ego = self.vehicle
        found = []
        for vehicle in self._naturalistic_vehicles():
            distance = float(np.linalg.norm(vehicle.position - ego.position))
            if not vehicle.crashed and distance <= self.highway.observation_range_m:
                found.append((vehicle, distance))
        return sorted(found, key=lambda item: (item[1], item[0].vehicle_id))

    def decision_due(self) -> bool:
        """Whether naturalistic background vehicles decide at the first frame of the next ``step``."""
        return any(vehicle.decision_due() for vehicle in self._naturalistic_vehicles())

    def pending_decision_pmfs(self) -> list[DecisionPmf]:
        """pmfs of the candidates' next decisions, nearest vehicle first (draws no random numbers).

        Meaningful when :meth:`decision_due` is true: the vehicles then decide on exactly this state.
        """
        return [DecisionPmf(vehicle_id=v.vehicle_id, distance_m=d, pmf=v.action_pmf()) for v, d in self._candidates()]

    def override_next_decision(self, vehicle_id: int, action: int) -> None:
        """Make naturalistic vehicle ``vehicle_id`` take action index ``action`` at its next decision."""
        self.background_vehicle(vehicle_id).override_next_action(action)

    def last_decisions(self) -> list[DecisionRecord]:
        """Decisions taken by candidate vehicles during the last ``step`` (empty after reset)."""
        return list(self._last_decisions)

    def background_vehicle(self, vehicle_id: int) -> NaturalisticVehicle:
        """The naturalistic background vehicle with this id (``ValueError`` if there is none)."""
        for vehicle in self._naturalistic_vehicles():
            if vehicle.vehicle_id == vehicle_id:
                return vehicle
        known = sorted(v.vehicle_id for v in self._naturalistic_vehicles())
        raise ValueError(f"vehicle_id: expected the id of a naturalistic background vehicle {known}, "
                         f"got {vehicle_id!r}")


# -- straight-road families ---------------------------------------------------------------------------------------
class CruiseEnv(HighwayScenarioEnv):
    """``cruise``: a straight highway of ``lanes`` lanes with traffic around the ego.

    Placement (:func:`safetybed.sims.batched.placement.place_scene`, all draws from ``self.np_random``): the ego
    starts at ``ego_start_m`` in a uniformly drawn lane at ``ego_speed_mps``. Each background vehicle is assigned a
    uniformly drawn lane. In the ego's lane the vehicles are split ahead/behind the ego by fair coin flips and
    chained away from it; in another lane the first vehicle sits within half a mean spacing of the ego's position
    and the others are chained ahead/behind it. Consecutive vehicles keep a bumper gap ``(s0 + v h) / density``
    with ``h ~ U(initial_headway_min_s, initial_headway_max_s)`` and speeds ``v ~ U(ego_speed -+
    initial_speed_spread_mps)``. Vehicles that would start off the road are dropped. The batched backend starts
    from the same scene.
    """

    def _build_scene(self) -> None:
        highway = self.highway
        network = RoadNetwork.straight_road_network(highway.lanes, length=highway.road_length_m,
                                                    speed_limit=highway.speed_limit_mps)
        self.road = Road(network=network, np_random=self.np_random, record_history=False)
        scene = place_scene(self.scenario, self.np_random)
        vehicles: list[Vehicle] = []
        for slot in range(scene.vehicles):
            lane = self.road.network.get_lane(("0", "1", scene.lane[slot]))
            s = scene.x_m[slot]
            if scene.kind[slot] == KIND_EGO:
                vehicle = EgoVehicle(self.road, lane.position(s, 0.0), heading=lane.heading_at(0.0),
                                     speed=scene.speed_mps[slot])
                self.vehicle = vehicle
            else:
                cls = {KIND_NATURALISTIC: NaturalisticVehicle, KIND_IDM: IDMVehicle,
                       KIND_SCRIPTED_IDM: ScriptedIDMVehicle}[scene.kind[slot]]
                vehicle = cls(self.road, lane.position(s, 0.0), heading=lane.heading_at(s),
                              speed=scene.speed_mps[slot])
                desired = scene.desired_speed_override_mps[slot]
                if isinstance(vehicle, NaturalisticVehicle):
                    vehicle.desired_speed_override_mps = desired
                else:
                    configure_idm_vehicle(vehicle, highway.driver, desired_speed_mps=desired)
            vehicles.append(vehicle)
        self.road.vehicles.extend(vehicles)
        if scene.script is not None:
            slot, target_lane, at_s = scene.script
            self.cutter = vehicles[slot]
            self._cut_in_action = ACTION_LEFT if scene.lane[slot] > target_lane else ACTION_RIGHT
            if isinstance(self.cutter, ScriptedIDMVehicle):
                self.cutter.script_lane_index = ("0", "1", target_lane)
                self.cutter.script_time_s = at_s
        if scene.leader_slot >= 0:
            self.leader = vehicles[scene.leader_slot]


class CutInEnv(CruiseEnv):
    """``cut_in``: cruise traffic plus a scripted cut-in from an adjacent lane (see :class:`CutInSpec`)."""

    def _after_registration(self) -> None:
        if isinstance(self.cutter, NaturalisticVehicle):
            self.cutter.schedule_action(self._cut_in_action, at_time_s=self.highway.cut_in.start_s)


class OvertakingEnv(CruiseEnv):
    """``overtaking``: a slower leader ahead of the ego and a free passing lane (see :class:`OvertakingSpec`)."""

    SURVIVAL_TASK = False

    def _goal_reached(self) -> bool:
        ego_s, _ = self.vehicle.lane.local_coordinates(self.vehicle.position)
        leader_s, _ = self.vehicle.lane.local_coordinates(self.leader.position)
        return ego_s - 0.5 * self.vehicle.LENGTH > leader_s + 0.5 * self.leader.LENGTH


# -- highway-env families -----------------------------------------------------------------------------------------
class MergeFamilyEnv(HighwayScenarioEnv, MergeGenericEnv):
    """``merge``: highway-env's generic merge; success = the ego passed the end of the merge zone."""

    SURVIVAL_TASK = False
    TERMINATE_ON_GOAL = True

    def _highway_env_config(self) -> dict[str, Any]:
        config = super()._highway_env_config()
        config.update({"lanes_count": self.highway.lanes, "vehicles_count": max(self.highway.vehicles - 1, 0)})
        return config

    def _build_scene(self) -> None:
        MergeGenericEnv._reset(self)
        self.vehicle.speed = self.highway.ego_speed_mps
        vehicles = []
        for vehicle in self.road.vehicles:
            if vehicle is not self.vehicle and vehicle.lane_index[0] == "j":
                # The merging vehicle: highway-env's IDM, whose MOBIL merge is mandatory at the ramp's end.
                if self.highway.vehicles == 0:
                    continue
                merging = IDMVehicle.create_from(vehicle)
                configure_idm_vehicle(merging, self.highway.driver, desired_speed_mps=vehicle.target_speed)
                vehicle = merging
            elif isinstance(vehicle, IDMVehicle) and not isinstance(vehicle, NaturalisticVehicle):
                configure_idm_vehicle(vehicle, self.highway.driver)
            vehicles.append(vehicle)
        self.road.vehicles = vehicles

    def _goal_reached(self) -> bool:
        return bool(self.vehicle.position[0] > self.end_position)


class IntersectionFamilyEnv(HighwayScenarioEnv, IntersectionEnv):
    """``intersection``: highway-env's 4-way intersection; success = highway-env's ``has_arrived``."""

    SURVIVAL_TASK = False
    TERMINATE_ON_GOAL = True

    def _background_class(self) -> type[Vehicle]:
        return IntersectionIDMVehicle

    def _highway_env_config(self) -> dict[str, Any]:
        config = super()._highway_env_config()
        config.update({"initial_vehicle_count": self.highway.vehicles, "destination": "o1", "controlled_vehicles": 1})
        return config

    def _build_scene(self) -> None:
        IntersectionEnv._reset(self)
        self.vehicle.speed = self.highway.ego_speed_mps

    def _goal_reached(self) -> bool:
        return bool(self.has_arrived(self.vehicle))


class RoundaboutFamilyEnv(HighwayScenarioEnv, RoundaboutGenericEnv):
    """``roundabout``: highway-env's generic roundabout; success = the ego is on the north exit."""

    SURVIVAL_TASK = False
    TERMINATE_ON_GOAL = True
    _EXIT_ROADS = (("nx", "nxs"), ("nxs", "nxr"))

    def _background_class(self) -> type[Vehicle]:
        return IDMVehicle

    def _highway_env_config(self) -> dict[str, Any]:
        config = super()._highway_env_config()
        config.update({"roundabout_lanes": self.highway.lanes, "vehicles_count": self.highway.vehicles})
        return config

    def _build_scene(self) -> None:
        RoundaboutGenericEnv._reset(self)
        self.vehicle.speed = self.highway.ego_speed_mps

    def _goal_reached(self) -> bool:
        return tuple(self.vehicle.lane_index[:2]) in self._EXIT_ROADS


FAMILIES: dict[str, type[HighwayScenarioEnv]] = {
    "cruise": CruiseEnv, "cut_in": CutInEnv, "overtaking": OvertakingEnv, "merge": MergeFamilyEnv,
    "intersection": IntersectionFamilyEnv, "roundabout": RoundaboutFamilyEnv,
}


def make_highway_env(spec: ScenarioSpec) -> gym.Env:
    """Build the (unwrapped) highway-env environment of a validated scenario spec.

    Raises :class:`~safetybed.errors.InputError` when the ``[highway]`` section does not fit the family (see
    :meth:`~safetybed.spec.highway.HighwaySpec.check_task`).
    """
    if spec.simulator != "highway":
        raise ValueError(f"spec.simulator: expected 'highway', got {spec.simulator!r}")
    try:
        spec.highway.check_task(spec.task)
    except ValueError as error:
        raise InputError(f"{spec.name}: {error}") from None
    return FAMILIES[spec.task](spec)


__all__ = ["ACTION_LEFT", "ACTION_RIGHT", "FAMILIES", "DecisionPmf", "HighwayScenarioEnv", "make_highway_env"]
