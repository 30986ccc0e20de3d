"""Initial states of the straight-road families: the one placement both highway backends use.

:func:`place_scene` draws a ``cruise`` / ``cut_in`` / ``overtaking`` scene (ego lane, background lanes, gaps,
speeds, the cut-in vehicle or slow leader) from a generator; the highway-env backend
(:class:`safetybed.sims.highway.CruiseEnv`) builds its vehicles from it, drawing from its ``np_random``, and
:func:`initial_scene` replays the highway-env backend's ``reset(seed=seed)`` (the same generator, the traffic
entropy first) so a batched episode starts from exactly the highway-env episode's state (positions, speeds,
lanes, vehicle order and ids, IDM lane-change timers, scripted cut-in). ``tests/test_batched_faithfulness.py``
checks it against reset highway-env environments.

This is the one per-episode Python step of the batched backend: it runs once per episode at reset (about
50 scalar draws); everything after reset is batched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from gymnasium.utils import seeding

from safetybed.errors import InputError
from safetybed.spec import ScenarioSpec

VEHICLE_LENGTH_M = 5.0  #: highway-env ``Vehicle.LENGTH`` [m]
VEHICLE_WIDTH_M = 2.0  #: highway-env ``Vehicle.WIDTH`` [m]
LANE_WIDTH_M = 4.0  #: highway-env ``StraightLane.DEFAULT_WIDTH`` [m]
LANE_CHANGE_DELAY_S = 1.0  #: highway-env ``IDMVehicle.LANE_CHANGE_DELAY`` [s]

#: Vehicle kinds (``Scene.kind``).
KIND_EGO, KIND_IDM, KIND_NATURALISTIC, KIND_SCRIPTED_IDM = 0, 1, 2, 3
STRAIGHT_FAMILIES = ("cruise", "cut_in", "overtaking")


@dataclass
class Scene:
    """One episode's initial state; vehicle ``0`` is the ego, the others in highway-env's ``road.vehicles`` order."""

    x_m: list[float] = field(default_factory=list)
    lane: list[int] = field(default_factory=list)
    speed_mps: list[float] = field(default_factory=list)
    target_speed_mps: list[float] = field(default_factory=list)
    #: IDM desired speed given to a vehicle at placement (the overtaking leader's), ``None``: the spec's.
    desired_speed_override_mps: list[float | None] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    timer_s: list[float] = field(default_factory=list)
    traffic_entropy: int = 0
    #: Scripted lane change: (vehicle slot, target lane, time [s]) or ``None``.
    script: tuple[int, int, float] | None = None
    #: Slot of the overtaking family's slow leader (``-1`` otherwise).
    leader_slot: int = -1

    @property
    def vehicles(self) -> int:
        return len(self.x_m)


class _Placer:
    """The draws of ``CruiseEnv._build_scene`` and the families' ``_place_family_vehicles``, in their order."""

    def __init__(self, spec: ScenarioSpec, rng: np.random.Generator):
        self.spec = spec
        self.highway = spec.highway
        self.rng = rng
        self.scene = Scene()
        self.naturalistic = self.highway.driver.model == "naturalistic"

    def build(self) -> Scene:
        highway = self.highway
        ego_lane = int(self.rng.integers(highway.lanes))
        self._append(highway.ego_start_m, ego_lane, highway.ego_speed_mps, KIND_EGO,
                     target_speed_mps=highway.ego_speed_mps)
        task = self.spec.task
        if task == "cruise":
            self._place_traffic(highway.vehicles, ego_lane=ego_lane, lanes=range(highway.lanes))
        elif task == "cut_in":
            self._cut_in(ego_lane)
        elif task == "overtaking":
            self._overtaking(ego_lane)
        else:
            raise ValueError(f"spec.task: expected one of {list(STRAIGHT_FAMILIES)} for the batched backend, "
                             f"got {task!r}")
        return self.scene

    def _append(self, x_m: float, lane: int, speed_mps: float, kind: int, *, target_speed_mps: float,
                desired_speed_override_mps: float | None = None) -> int:
        scene = self.scene
        scene.desired_speed_override_mps.append(desired_speed_override_mps)
        scene.x_m.append(float(x_m))
        scene.lane.append(int(lane))
        scene.speed_mps.append(float(speed_mps))
        scene.target_speed_mps.append(float(target_speed_mps))
        scene.kind.append(kind)
        # IDMVehicle.__init__: timer = (sum(position) * pi) % LANE_CHANGE_DELAY, position = (x, lane * width)
        position_sum = float(np.sum(np.array([x_m, lane * LANE_WIDTH_M], dtype=np.float64)))
        scene.timer_s.append((position_sum * np.pi) % LANE_CHANGE_DELAY_S)
        return len(scene.x_m) - 1

    def _add_background(self, lane: int, x_m: float, speed_mps: float, *, desired_speed_mps: float | None = None,
                        scripted: bool = False) -> int | None:
        if not 0.0 <= x_m <= self.highway.road_length_m:
            return None
        if self.naturalistic:
            kind = KIND_NATURALISTIC
        else:
            kind = KIND_SCRIPTED_IDM if scripted else KIND_IDM
        desired = self.highway.driver.idm_desired_speed_mps if desired_speed_mps is None else desired_speed_mps
        return self._append(x_m, lane, speed_mps, kind, target_speed_mps=float(desired),
                            desired_speed_override_mps=desired_speed_mps)

    def _random_speed(self) -> float:
        spread = self.highway.initial_speed_spread_mps
        return max(0.0, self.highway.ego_speed_mps + float(self.rng.uniform(-spread, spread)))

    def _random_gap(self, speed_mps: float) -> float:
        highway = self.highway
        headway_s = float(self.rng.uniform(highway.initial_headway_min_s, highway.initial_headway_max_s))
        return (highway.driver.idm_min_gap_m + speed_mps * headway_s) / highway.density

    def _chain(self, lane: int, start_m: float, count: int, direction: int) -> None:
        position = start_m
        for _ in range(count):
            speed = self._random_speed()
            position += direction * (VEHICLE_LENGTH_M + self._random_gap(speed))
            self._add_background(lane, position, speed)

    def _mean_spacing_m(self) -> float:
        highway = self.highway
        headway = 0.5 * (highway.initial_headway_min_s + highway.initial_headway_max_s)
        return VEHICLE_LENGTH_M + (highway.driver.idm_min_gap_m + highway.ego_speed_mps * headway) / highway.density

    def _place_traffic(self, count: int, *, ego_lane: int, lanes, anchors: dict[int, float] | None = None,
                       ahead_only_from: dict[int, float] | None = None, behind_only: frozenset[int] = frozenset(),
                       ) -> None:
        lanes = list(lanes)
        if count <= 0 or not lanes:
            return
        anchors = dict(anchors or {})
        ahead_only_from = ahead_only_from or {}
        assigned = self.rng.integers(len(lanes), size=count)
        ego_s = self.highway.ego_start_m
        for slot, lane in enumerate(lanes):
            lane_count = int(np.sum(assigned == slot))
            if lane_count == 0:
                continue
            if lane == ego_lane:
                anchor = ego_s
            elif lane in anchors:
                anchor = anchors[lane]
            else:
                anchor = ego_s + float(self.rng.uniform(-0.5, 0.5)) * self._mean_spacing_m()
                self._add_background(lane, anchor, self._random_speed())
                lane_count -= 1
            ahead = 0 if lane in behind_only else int(self.rng.binomial(lane_count, 0.5))
            self._chain(lane, ahead_only_from.get(lane, anchor), ahead, +1)
            self._chain(lane, anchor, lane_count - ahead, -1)

    def _cut_in(self, ego_lane: int) -> None:
        highway, cut_in = self.highway, self.highway.cut_in
        sides = [lane for lane in (ego_lane - 1, ego_lane + 1) if 0 <= lane < highway.lanes]
        cutter_lane = sides[int(self.rng.integers(len(sides)))]
        gap = float(self.rng.uniform(cut_in.gap_min_m, cut_in.gap_max_m))
        relative = float(self.rng.uniform(cut_in.relative_speed_min_mps, cut_in.relative_speed_max_mps))
        cutter_s = highway.ego_start_m + VEHICLE_LENGTH_M + gap
        cutter = self._add_background(cutter_lane, cutter_s, max(0.0, highway.ego_speed_mps + relative),
                                      scripted=True)
        if cutter is None:
            raise InputError(f"{self.spec.name}: highway.cut_in: the cut-in vehicle would start off the road "
                             f"(at {cutter_s:.1f} m of {highway.road_length_m:g} m)")
        self.scene.script = (cutter, ego_lane, float(cut_in.start_s))
        self._place_traffic(highway.vehicles - 1, ego_lane=ego_lane, lanes=range(highway.lanes),
                            anchors={cutter_lane: cutter_s}, ahead_only_from={ego_lane: cutter_s})

    def _overtaking(self, ego_lane: int) -> None:
        highway, overtaking = self.highway, self.highway.overtaking
        passing_lane = ego_lane - 1 if ego_lane > 0 else ego_lane + 1
        gap = float(self.rng.uniform(overtaking.leader_gap_min_m, overtaking.leader_gap_max_m))
        speed = float(self.rng.uniform(overtaking.leader_speed_min_mps, overtaking.leader_speed_max_mps))
        leader_s = highway.ego_start_m + VEHICLE_LENGTH_M + gap
        leader = self._add_background(ego_lane, leader_s, speed, desired_speed_mps=speed)
        if leader is None:
            raise InputError(f"{self.spec.name}: highway.overtaking: the leader would start off the road "
                             f"(at {leader_s:.1f} m of {highway.road_length_m:g} m)")
        self.scene.leader_slot = leader
        lanes = [lane for lane in range(highway.lanes) if lane != passing_lane]
        self._place_traffic(highway.vehicles - 1, ego_lane=ego_lane, lanes=lanes, behind_only=frozenset({ego_lane}))


def place_scene(spec: ScenarioSpec, rng: np.random.Generator) -> Scene:
    """The straight-road scene of ``spec`` drawn from ``rng`` (the one home of the families' placement).

    The highway-env backend builds its vehicles from it (:class:`safetybed.sims.highway.CruiseEnv`, drawing from
    its ``np_random``); the batched backend loads it into tensors. ``traffic_entropy`` is left 0 (the caller's).
    """
    if spec.simulator != "highway" or spec.task not in STRAIGHT_FAMILIES:
        raise InputError(f"{spec.name}: the straight-road placement covers the families {list(STRAIGHT_FAMILIES)}, "
                         f"got task {spec.task!r}")
    return _Placer(spec, rng).build()


def scene_from_generator(spec: ScenarioSpec, rng: np.random.Generator) -> Scene:
    """The scene highway-env's reset places from the environment's generator ``rng`` (advanced by the draws).

    As the highway-env backend's ``_reset``: one 63-bit draw for the traffic entropy (the naturalistic drivers'
    streams), then :func:`place_scene`. A ``reset()`` without a seed continues the generator.
    """
    entropy = int(rng.integers(0, 2**63))
    scene = place_scene(spec, rng)
    scene.traffic_entropy = entropy
    return scene


def initial_scene(spec: ScenarioSpec, seed: int | None) -> Scene:
    """The initial state of the highway-env episode ``reset(seed=seed)`` of ``spec`` (a straight-road family):
    :func:`scene_from_generator` on gymnasium's ``seeding.np_random(seed)``."""
    rng, _ = seeding.np_random(seed)
    return scene_from_generator(spec, rng)


def max_vehicles(spec: ScenarioSpec) -> int:
    """Vehicle slots a batch of ``spec`` needs: the ego plus every background vehicle placed at reset."""
    return 1 + spec.highway.vehicles


__all__ = ["KIND_EGO", "KIND_IDM", "KIND_NATURALISTIC", "KIND_SCRIPTED_IDM", "LANE_WIDTH_M", "STRAIGHT_FAMILIES",
           "Scene", "VEHICLE_LENGTH_M", "VEHICLE_WIDTH_M", "initial_scene", "max_vehicles",
           "place_scene", "scene_from_generator"]
