"""The ``[highway]`` section of a scenario spec: highway-env road, traffic, the naturalistic driver and the ego.

Besides the section model, this module holds the *observation contract* of every highway scenario
(:data:`EGO_FEATURES`, :data:`VEHICLE_FEATURES`): the adapter (``safetybed.sims.highway``) writes observations
in this layout and rule-based controllers (``builtin:idm``) read them, so neither has to import the other.

Which fields a family reads (giving a field the family ignores a non-default value is an error, see
:meth:`HighwaySpec.check_task`):

============== ===============================================================================================
family         fields it ignores
============== ===============================================================================================
cruise         ``cut_in``, ``overtaking``
cut_in         ``overtaking``
overtaking     ``cut_in``
merge          straight-road traffic fields (``density``, ``road_length_m``, ``ego_start_m``, ``speed_limit_mps``,
               ``initial_*``), ``cut_in``, ``overtaking``
intersection   as merge, plus ``lanes`` and ``driver`` (highway-env's own IDM traffic with priority rules)
roundabout     as merge, plus ``driver`` (highway-env's own IDM traffic); ``lanes`` = lanes of the ring
============== ===============================================================================================
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from safetybed.spec.base import StrictModel

HighwayTask = Literal["cruise", "cut_in", "overtaking", "merge", "intersection", "roundabout"]

#: Ego features at the start of every highway observation, in this order (units in the names).
#: ``speed_mps`` ego speed; ``lateral_offset_m`` ego offset from its lane centre (+ towards higher lane
#: indices, i.e. to the right in highway-env); ``heading_error_rad`` ego heading minus lane heading, wrapped to
#: [-pi, pi]; ``lane_width_m``; ``lanes_left`` / ``lanes_right`` number of adjacent lanes the ego may change
#: into on each side [count]; ``target_lane_shift`` target lane index minus current lane index (non-zero while
#: a lane change is in progress) [lanes]; ``speed_limit_mps`` of the ego's lane.
EGO_FEATURES: tuple[str, ...] = ("speed_mps", "lateral_offset_m", "heading_error_rad", "lane_width_m",
                                 "lanes_left", "lanes_right", "target_lane_shift", "speed_limit_mps")

#: Features of each of the ``observed_vehicles`` slots that follow, nearest vehicle first (Euclidean distance).
#: ``presence`` 1 for a vehicle, 0 for an empty slot (all zeros); ``dx_m`` longitudinal position along the
#: ego's lane minus the ego's (centre to centre, + ahead); ``dy_m`` lateral position in the ego's lane frame,
#: measured from the lane centre (+ towards higher lane indices); ``dvx_mps`` longitudinal speed minus the
#: ego's (+ pulling away); ``vy_mps`` lateral speed in the ego lane frame (+ towards higher lane indices).
VEHICLE_FEATURES: tuple[str, ...] = ("presence", "dx_m", "dy_m", "dvx_mps", "vy_mps")

#: Fields of :class:`HighwaySpec` that only the straight-road families (cruise, cut_in, overtaking) read.
STRAIGHT_ROAD_FIELDS = frozenset({"density", "road_length_m", "ego_start_m", "speed_limit_mps",
                                  "initial_speed_spread_mps", "initial_headway_min_s", "initial_headway_max_s"})
_IGNORED_FIELDS: dict[str, frozenset[str]] = {
    "cruise": frozenset({"cut_in", "overtaking"}),
    "cut_in": frozenset({"overtaking"}),
    "overtaking": frozenset({"cut_in"}),
    "merge": STRAIGHT_ROAD_FIELDS | {"cut_in", "overtaking"},
    "intersection": STRAIGHT_ROAD_FIELDS | {"cut_in", "overtaking", "lanes", "driver"},
    "roundabout": STRAIGHT_ROAD_FIELDS | {"cut_in", "overtaking", "driver"},
}


class NaturalisticDriverSpec(StrictModel):
    """Background-driver model (Feng et al. 2021 NADE fallback model; ``research/cav_eval.md`` §1, §4.1, §6.2).

    ``model = "naturalistic"``: stochastic IDM (acceleration drawn from a pmf on the grid
    ``accel_min_mps2, accel_min_mps2 + accel_step_mps2, ..., accel_max_mps2``, proportional to
    N(a_IDM, ``accel_sigma_mps2``^2), entries below ``pmf_prune_below`` dropped and the rest renormalised) plus
    stochastic MOBIL lane changes, decided at ``decision_frequency_hz`` and held in between. The probability of
    a lane change to an available side lane rises linearly in the MOBIL gain from ``lane_change_floor`` (gain at
    or below ``mobil_gain_threshold_mps2``) to ``lane_change_max`` (gain at or above
    threshold + ``mobil_gain_saturation_mps2``). A change that fails MOBIL's safety criterion gets
    ``unsafe_lane_change_floor`` (``None``: the same as ``lane_change_floor``); rare-event testing sets it far lower,
    so that background vehicles do not sideswipe the ego every few hundred decisions. ``accel_tail_mass`` (eta)
    mixes a uniform tail into the acceleration pmf, ``(1 - eta) * [pruned Gaussian] + eta * uniform(grid)``, so
    that emergency braking / hard acceleration far from a_IDM stays possible but rare (the pruned Gaussian alone
    gives them probability 0). ``model = "idm"``: highway-env's deterministic IDM + MOBIL vehicles with the
    IDM/MOBIL parameters below.
    """

    model: Literal["naturalistic", "idm"] = "naturalistic"
    decision_frequency_hz: float = Field(1.0, gt=0, le=15)
    accel_sigma_mps2: float = Field(0.3, gt=0, le=5)
    accel_min_mps2: float = Field(-4.0, ge=-10, lt=0)
    accel_max_mps2: float = Field(2.0, gt=0, le=10)
    accel_step_mps2: float = Field(0.2, gt=0, le=2)
    pmf_prune_below: float = Field(1e-10, ge=0, lt=1e-2)
    # IDM parameters of background vehicles (D2RL conf/defaultconf.py, research/cav_eval.md §4.1).
    idm_max_accel_mps2: float = Field(2.0, gt=0)
    idm_comfort_decel_mps2: float = Field(4.0, gt=0)
    idm_min_gap_m: float = Field(5.0, ge=0)
    idm_time_headway_s: float = Field(1.5, gt=0)
    idm_desired_speed_mps: float = Field(35.0, gt=0)
    idm_delta: float = Field(4.0, gt=0)
    # MOBIL parameters of background vehicles (D2RL).
    mobil_politeness: float = Field(0.1, ge=0, le=1)
    mobil_gain_threshold_mps2: float = Field(0.2, ge=0)
    mobil_max_braking_mps2: float = Field(3.0, gt=0)
    mobil_gain_saturation_mps2: float = Field(1.0, gt=0, le=20)
    lane_change_floor: float = Field(1e-3, ge=0, le=0.5)
    lane_change_max: float = Field(0.2, ge=0, le=0.5)
    unsafe_lane_change_floor: float | None = Field(None, ge=0, le=0.5)
    accel_tail_mass: float = Field(0.0, ge=0, le=0.1)

    @model_validator(mode="after")
    def _check_grid_and_probabilities(self) -> NaturalisticDriverSpec:
        intervals = (self.accel_max_mps2 - self.accel_min_mps2) / self.accel_step_mps2
        if abs(intervals - round(intervals)) > 1e-6:
            raise ValueError(f"accel_step_mps2: expected to divide accel_max_mps2 - accel_min_mps2 = "
                             f"{self.accel_max_mps2 - self.accel_min_mps2:g} into whole steps, got "
                             f"{self.accel_step_mps2:g} ({intervals:.4g} steps)")
        if self.lane_change_floor > self.lane_change_max:
            raise ValueError(f"lane_change_floor: expected <= lane_change_max ({self.lane_change_max:g}), "
                             f"got {self.lane_change_floor:g}")
        if self.unsafe_lane_change_floor is not None and self.unsafe_lane_change_floor > self.lane_change_max:
            raise ValueError(f"unsafe_lane_change_floor: expected <= lane_change_max ({self.lane_change_max:g}), "
                             f"got {self.unsafe_lane_change_floor:g}")
        return self

    @property
    def resolved_unsafe_lane_change_floor(self) -> float:
        """p(lane change) of a change that fails MOBIL's safety criterion (``lane_change_floor`` when unset)."""
        return self.lane_change_floor if self.unsafe_lane_change_floor is None else self.unsafe_lane_change_floor

    @property
    def acceleration_count(self) -> int:
        """Number of points of the acceleration grid (31 for the defaults)."""
        return int(round((self.accel_max_mps2 - self.accel_min_mps2) / self.accel_step_mps2)) + 1

    @property
    def action_count(self) -> int:
        """Size of a background vehicle's action set: left, right, then the acceleration grid (33 by default)."""
        return 2 + self.acceleration_count


class EgoSpec(StrictModel):
    """The ego vehicle's action scaling and the parameters of the ``builtin:idm`` ego driver.

    The ego's longitudinal acceleration is ``action[0] * accel_scale_mps2``. The IDM defaults are D2RL's AV under
    test (``research/cav_eval.md`` §4.1: a_max = 1.5, b = 2 m/s^2, s0 = 2 m, T = 1.2 s, v0 = 33.33 m/s);
    MOBIL follows Kesting et al. (2007) with the politeness of NADE's AV surrogate (0).
    ``lateral_anticipation_s``: ``builtin:idm`` treats a vehicle as being in a lane if it is there now or will
    be there after this time at its current lateral speed (so it reacts to a cut-in while it happens).
    ``yield_horizon_s``: ``builtin:idm`` yields to a vehicle outside its lane whose constant-velocity prediction
    collides with the ego within this time (crossing traffic at intersections and roundabouts); 0 disables it.
    """

    accel_scale_mps2: float = Field(5.0, gt=0, le=10)
    idm_max_accel_mps2: float = Field(1.5, gt=0)
    idm_comfort_decel_mps2: float = Field(2.0, gt=0)
    idm_min_gap_m: float = Field(2.0, ge=0)
    idm_time_headway_s: float = Field(1.2, gt=0)
    idm_desired_speed_mps: float = Field(33.33, gt=0)
    idm_delta: float = Field(4.0, gt=0)
    mobil_politeness: float = Field(0.0, ge=0, le=1)
    mobil_gain_threshold_mps2: float = Field(0.2, ge=0)
    mobil_max_braking_mps2: float = Field(3.0, gt=0)
    lateral_anticipation_s: float = Field(1.0, ge=0, le=5)
    yield_horizon_s: float = Field(3.0, ge=0, le=10)


class CutInSpec(StrictModel):
    """The scripted cut-in of the ``cut_in`` family.

    At reset a background vehicle is placed in a lane adjacent to the ego's (side drawn at random), its rear
    bumper ``gap_m`` ~ U(gap_min_m, gap_max_m) ahead of the ego's front bumper, driving at the ego's speed plus
    U(relative_speed_min_mps, relative_speed_max_mps). At its first decision at or after ``start_s`` it changes
    into the ego's lane.
    """

    start_s: float = Field(1.0, ge=0, le=60)
    gap_min_m: float = Field(10.0, ge=0, le=200)
    gap_max_m: float = Field(25.0, ge=0, le=200)
    relative_speed_min_mps: float = Field(-3.0, ge=-20, le=20)
    relative_speed_max_mps: float = Field(0.0, ge=-20, le=20)

    @model_validator(mode="after")
    def _check_ranges(self) -> CutInSpec:
        if self.gap_min_m > self.gap_max_m:
            raise ValueError(f"gap_min_m: expected <= gap_max_m ({self.gap_max_m:g}), got {self.gap_min_m:g}")
        if self.relative_speed_min_mps > self.relative_speed_max_mps:
            raise ValueError(f"relative_speed_min_mps: expected <= relative_speed_max_mps "
                             f"({self.relative_speed_max_mps:g}), got {self.relative_speed_min_mps:g}")
        return self


class OvertakingSpec(StrictModel):
    """The slow leader of the ``overtaking`` family.

    At reset a background vehicle drives in the ego's lane, ``gap`` ~ U(leader_gap_min_m, leader_gap_max_m)
    (bumper to bumper) ahead, at a speed ~ U(leader_speed_min_mps, leader_speed_max_mps) that is also its IDM
    desired speed. The adjacent passing lane (left of the ego, or right when the ego is in the leftmost lane) is
    kept free of other traffic.
    """

    leader_gap_min_m: float = Field(30.0, ge=0, le=500)
    leader_gap_max_m: float = Field(50.0, ge=0, le=500)
    leader_speed_min_mps: float = Field(15.0, ge=0, le=40)
    leader_speed_max_mps: float = Field(20.0, ge=0, le=40)

    @model_validator(mode="after")
    def _check_ranges(self) -> OvertakingSpec:
        if self.leader_gap_min_m > self.leader_gap_max_m:
            raise ValueError(f"leader_gap_min_m: expected <= leader_gap_max_m ({self.leader_gap_max_m:g}), "
                             f"got {self.leader_gap_min_m:g}")
        if self.leader_speed_min_mps > self.leader_speed_max_mps:
            raise ValueError(f"leader_speed_min_mps: expected <= leader_speed_max_mps "
                             f"({self.leader_speed_max_mps:g}), got {self.leader_speed_min_mps:g}")
        return self


class HighwaySpec(StrictModel):
    """Road and traffic of a driving scenario (highway-env 1.12).

    ``vehicles`` is the number of background vehicles at reset (including the cut-in vehicle / slow leader /
    ramp vehicle of the cut_in / overtaking / merge families; the intersection family keeps spawning more).
    Straight-road families: ``lanes`` lanes of ``road_length_m``, speed limit ``speed_limit_mps``, ego at
    ``ego_start_m`` in a random lane; background vehicles start at speeds ego_speed +- ``initial_speed_spread_mps``
    with bumper gaps (s0 + v * h) / ``density``, h ~ U(``initial_headway_min_s``, ``initial_headway_max_s``).
    ``observed_vehicles`` slots of the observation hold the nearest vehicles within ``observation_range_m``;
    the same range selects the background vehicles whose decisions are logged.
    ``policy_frequency_hz`` must divide ``simulation_frequency_hz``, and with the naturalistic driver it must be
    a whole multiple of ``driver.decision_frequency_hz`` (so decisions fall on control-step boundaries, where a
    testing method can read their pmfs and override them).
    """

    lanes: int = Field(3, ge=1, le=6)
    vehicles: int = Field(10, ge=0, le=100)
    density: float = Field(1.0, gt=0, le=5)
    road_length_m: float = Field(2000.0, gt=50, le=10000)
    ego_start_m: float = Field(200.0, ge=0, le=9000)
    speed_limit_mps: float = Field(35.0, gt=0, le=40)
    ego_speed_mps: float = Field(25.0, ge=0, le=40)
    initial_speed_spread_mps: float = Field(3.0, ge=0, le=20)
    initial_headway_min_s: float = Field(1.0, gt=0, le=10)
    initial_headway_max_s: float = Field(3.0, gt=0, le=10)
    simulation_frequency_hz: int = Field(15, ge=1, le=60)
    policy_frequency_hz: int = Field(1, ge=1, le=15)
    observed_vehicles: int = Field(8, ge=1, le=30)
    observation_range_m: float = Field(120.0, gt=0, le=1000)
    driver: NaturalisticDriverSpec = NaturalisticDriverSpec()
    ego: EgoSpec = EgoSpec()
    cut_in: CutInSpec = CutInSpec()
    overtaking: OvertakingSpec = OvertakingSpec()

    @model_validator(mode="after")
    def _check_consistency(self) -> HighwaySpec:
        if self.simulation_frequency_hz % self.policy_frequency_hz:
            raise ValueError(f"policy_frequency_hz: expected a divisor of simulation_frequency_hz "
                             f"({self.simulation_frequency_hz}), got {self.policy_frequency_hz}")
        if self.driver.model == "naturalistic":
            frames = self.simulation_frequency_hz / self.driver.decision_frequency_hz
            steps = self.policy_frequency_hz / self.driver.decision_frequency_hz
            if abs(frames - round(frames)) > 1e-9:
                raise ValueError(f"driver.decision_frequency_hz: expected to divide simulation_frequency_hz "
                                 f"({self.simulation_frequency_hz}) into whole frames, got "
                                 f"{self.driver.decision_frequency_hz:g}")
            if abs(steps - round(steps)) > 1e-9 or round(steps) < 1:
                raise ValueError(f"driver.decision_frequency_hz: expected policy_frequency_hz "
                                 f"({self.policy_frequency_hz}) to be a whole multiple of it, got "
                                 f"{self.driver.decision_frequency_hz:g}")
        if self.initial_headway_min_s > self.initial_headway_max_s:
            raise ValueError(f"initial_headway_min_s: expected <= initial_headway_max_s "
                             f"({self.initial_headway_max_s:g}), got {self.initial_headway_min_s:g}")
        if self.ego_start_m >= self.road_length_m:
            raise ValueError(f"ego_start_m: expected < road_length_m ({self.road_length_m:g}), "
                             f"got {self.ego_start_m:g}")
        return self

    @property
    def observation_size(self) -> int:
        """Length of the flat observation vector: ego features, then ``observed_vehicles`` vehicle slots."""
        return len(EGO_FEATURES) + self.observed_vehicles * len(VEHICLE_FEATURES)

    def check_task(self, task: str) -> None:
        """Raise ``ValueError("highway.FIELD: reason")`` if this section does not fit the scenario family ``task``.

        Checks that the family has the lanes / vehicles it needs and that every field the family ignores is at its
        default (a value that would be silently ignored is an error).
        """
        if task not in _IGNORED_FIELDS:
            raise ValueError(f"task: expected one of {sorted(_IGNORED_FIELDS)}, got {task!r}")
        # Compared with the defaults rather than through model_fields_set, so that a spec that went through
        # model_dump/model_validate (as the runner ships scenarios to workers) passes the same check.
        ignored = sorted(name for name in _IGNORED_FIELDS[task]
                         if getattr(self, name) != type(self).model_fields[name].get_default(call_default_factory=True))
        if ignored:
            raise ValueError(f"highway.{ignored[0]}: the {task} family does not use this field, but it differs "
                             f"from its default; remove it")
        if task in ("cut_in", "overtaking") and self.lanes < 2:
            raise ValueError(f"highway.lanes: the {task} family needs at least 2 lanes, got {self.lanes}")
        if task in ("cut_in", "overtaking") and self.vehicles < 1:
            raise ValueError(f"highway.vehicles: the {task} family needs at least 1 background vehicle "
                             f"(the {'cut-in vehicle' if task == 'cut_in' else 'slow leader'}), got {self.vehicles}")

