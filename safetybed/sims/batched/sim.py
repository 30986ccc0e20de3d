"""The batched highway simulator: a batch of straight-road episodes as tensors ``[batch, vehicles]``.

:class:`BatchedHighway` runs ``B`` episodes of one scenario spec (families ``cruise``, ``cut_in``, ``overtaking``)
on any torch device, float32 by default (float64 for the faithfulness tests). One control step is
``simulation_frequency / policy_frequency`` frames of highway-env's ``AbstractEnv._simulate``:

1. at the first frame the ego's action is decoded (:mod:`safetybed.sims.highway_obs`: acceleration
   ``a[0] * accel_scale``, lane-change request ``a[1]`` beyond +-1/3);
2. every vehicle acts (``Road.act``): the ego steers to its target lane and applies its command; highway-env's IDM
   vehicles run MOBIL (``IDMVehicle.change_lane_policy`` with its lane-change timer and abort rule) and IDM; the
   scripted cut-in vehicle changes lane at its time; naturalistic vehicles decide at 1 Hz
   (:mod:`safetybed.sims.batched.naturalistic`) and hold their decision;
3. every vehicle steps (``Vehicle.step``, kinematic bicycle), then every pair is checked for collision
   (``Road.step``: separating axes with highway-env's impact translation, applied at the next frame).

After the frames: observation, reward, termination and ``info["safety"]`` exactly as
:class:`safetybed.sims.highway.HighwayScenarioEnv` defines them, as tensors.

highway-env's act phase is sequential: a vehicle sees the target lanes that earlier vehicles (in
``road.vehicles`` order) chose in the same frame. Decisions that read other vehicles' target lanes (the IDM
abort rule, the naturalistic driver's merging neighbours) are therefore solved as a fixed point: recompute with
the targets of earlier slots taken from the previous pass until nothing changes. The sequential result is the
unique fixed point (slot ``i`` is exact after ``i + 1`` passes), and one or two passes suffice in practice.

Episodes never interact: every quantity is reduced within one episode, and random draws come from each
episode's own streams (:mod:`safetybed.sims.batched.naturalistic`), so an episode's trajectory depends only on
its seed, never on the batch it runs in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from safetybed.sims.batched import kinematics
from safetybed.sims.batched.libm import elementwise, libm_pow
from safetybed.sims.batched.placement import (
    KIND_EGO,
    KIND_IDM,
    KIND_NATURALISTIC,
    KIND_SCRIPTED_IDM,
    LANE_WIDTH_M,
    VEHICLE_LENGTH_M,
    Scene,
    initial_scene,
    max_vehicles,
)
from safetybed.sims.batched.road import closest_lane, neighbour_table, on_lane, reachable
from safetybed.sims.highway_obs import LANE_CHANGE_THRESHOLD, observation_bounds
from safetybed.spec import ScenarioSpec

IDM_ACC_MAX_MPS2 = 6.0  #: highway-env ``IDMVehicle.ACC_MAX`` [m/s^2]
LANE_CHANGE_DELAY_S = 1.0  #: highway-env ``IDMVehicle.LANE_CHANGE_DELAY`` [s]
MIN_LANE_CHANGE_SPEED_MPS = 1.0  #: MOBIL only runs for vehicles faster than this [m/s]
SPEEDING_FACTOR = 1.1  #: a violation is counted above 110 % of the speed limit (as the highway-env adapter)
FAR_AWAY_M = -1.0e7  #: x of an empty vehicle slot [m]: far from everything, never on a lane


@dataclass
class StepResult:
    """One control step of every episode of the batch (tensors ``[B]`` unless noted)."""

    observation: torch.Tensor  #: [B, obs_dim]
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    collision: torch.Tensor
    success: torch.Tensor
    ttc_s: torch.Tensor
    gap_m: torch.Tensor
    progress_m: torch.Tensor
    violations: torch.Tensor


class BatchedHighway:
    """``B`` episodes of one straight-road highway scenario, stepped together (see the module docstring)."""

    def __init__(self, spec: ScenarioSpec, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        if spec.simulator != "highway":
            raise ValueError(f"spec.simulator: expected 'highway', got {spec.simulator!r}")
        self.spec = spec
        self.highway = spec.highway
        self.device = torch.device(device)
        self.dtype = dtype
        #: float64 is the reference mode: the C library's scalar math, batch-independent and bitwise equal to
        #: numpy's (:mod:`safetybed.sims.batched.libm`); float32 the speed mode (SIMD math).
        self.exact = dtype == torch.float64
        self.lanes = self.highway.lanes
        self.length_m = float(self.highway.road_length_m)
        self.speed_limit_mps = float(self.highway.speed_limit_mps)
        self.frames_per_step = self.highway.simulation_frequency_hz // self.highway.policy_frequency_hz
        self.dt_s = 1 / self.highway.simulation_frequency_hz
        self.slots = max_vehicles(spec)
        low, high = observation_bounds(self.highway)
        self.obs_low = torch.as_tensor(low, dtype=dtype, device=self.device)
        self.obs_high = torch.as_tensor(high, dtype=dtype, device=self.device)
        driver = self.highway.driver
        self.cam = driver.idm_max_accel_mps2  # COMFORT_ACC_MAX
        self.cam_min = -driver.idm_comfort_decel_mps2  # COMFORT_ACC_MIN
        self.distance_wanted_m = driver.idm_min_gap_m + VEHICLE_LENGTH_M  # centre to centre, as highway-env
        self.time_wanted_s = driver.idm_time_headway_s
        self.delta = driver.idm_delta
        self.politeness = driver.mobil_politeness
        self.min_gain_mps2 = driver.mobil_gain_threshold_mps2
        self.max_braking_mps2 = driver.mobil_max_braking_mps2
        self.naturalistic = None
        if driver.model == "naturalistic":
            from safetybed.sims.batched.naturalistic import NaturalisticTraffic

            self.naturalistic = NaturalisticTraffic(self)
        self.batch = 0
        self._table = None

    # -- reset --------------------------------------------------------------------------------------------------
    def reset(self, seeds: Sequence[int]) -> torch.Tensor:
        """Start one episode per seed, each from exactly the highway-env backend's ``reset(seed=seed)`` state."""
        return self.load_scenes([initial_scene(self.spec, int(seed)) for seed in seeds])

    def load_scenes(self, scenes: Sequence[Scene]) -> torch.Tensor:
        """Start one episode per :class:`~safetybed.sims.batched.placement.Scene`; returns the observations."""
        if not scenes:
            raise ValueError("scenes: expected at least one episode, got none")
        batch, slots = len(scenes), self.slots
        x = np.full((batch, slots), FAR_AWAY_M)
        lane = np.zeros((batch, slots), dtype=np.int64)
        speed = np.zeros((batch, slots))
        target_speed = np.zeros((batch, slots))
        timer = np.zeros((batch, slots))
        kind = np.full((batch, slots), KIND_IDM, dtype=np.int64)
        present = np.zeros((batch, slots), dtype=bool)
        script_lane = np.full((batch, slots), -1, dtype=np.int64)
        script_time = np.full((batch, slots), math.inf)
        leader = np.full(batch, -1, dtype=np.int64)
        for b, scene in enumerate(scenes):
            n = scene.vehicles
            if n > slots:
                raise ValueError(f"scenes[{b}]: expected at most {slots} vehicles, got {n}")
            x[b, :n], lane[b, :n], speed[b, :n] = scene.x_m, scene.lane, scene.speed_mps
            target_speed[b, :n], timer[b, :n], kind[b, :n] = scene.target_speed_mps, scene.timer_s, scene.kind
            present[b, :n] = True
            if scene.script is not None:
                slot, target, at_s = scene.script
                script_lane[b, slot], script_time[b, slot] = target, at_s
            leader[b] = scene.leader_slot
        tensor = self._tensor
        self.batch = batch
        self.x = tensor(x)
        self.lane = tensor(lane, torch.long)
        self.y = LANE_WIDTH_M * self.lane.to(self.dtype)
        self.heading = torch.zeros_like(self.x)
        self.speed = tensor(speed)
        self.target_speed = tensor(target_speed)
        self.timer = tensor(timer)
        self.kind = tensor(kind, torch.long)
        self.present = tensor(present, torch.bool)
        self.target_lane = self.lane.clone()
        self.crashed = torch.zeros_like(self.present)
        self.impact = torch.zeros(batch, slots, 2, dtype=self.dtype, device=self.device)
        self.has_impact = torch.zeros_like(self.present)
        self.enable_lane_change = self.present.clone()
        self.script_lane = tensor(script_lane, torch.long)
        self.script_time = tensor(script_time)
        self.clock_s = torch.zeros(batch, dtype=self.dtype, device=self.device)
        self.leader_slot = tensor(leader, torch.long)
        self.command_mps2 = torch.zeros(batch, dtype=self.dtype, device=self.device)
        self.last_lane_change = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.odometer_m = torch.zeros(batch, dtype=self.dtype, device=self.device)
        self.frames = 0
        self.control_step = 0
        self._envs = torch.arange(batch, device=self.device)
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None
        self._is_idm = self.present & ((self.kind == KIND_IDM) | (self.kind == KIND_SCRIPTED_IDM))
        if self.naturalistic is not None:
            self.naturalistic.reset(scenes)
        return self.observe()

    def _tensor(self, array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype or self.dtype, device=self.device)

    # -- helpers over flat (env, slot) queries ------------------------------------------------------------------
    def neighbours(self, env: torch.Tensor, slot: torch.Tensor, lane: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Front and rear slots (``-1``: none) of vehicles (``env``, ``slot``) in lanes ``lane`` (flat ``[M]``).

        Looked up in the frame's neighbour table (:func:`~safetybed.sims.batched.road.neighbour_table`, built once
        per frame: positions do not change during the act phase); a lane off the road has no neighbours.
        """
        if self._table is None:
            self._table = neighbour_table(x_m=self.x, y_m=self.y, present=self.present, lanes=self.lanes,
                                          length_m=self.length_m)
        front_table, rear_table = self._table
        valid = (lane >= 0) & (lane < self.lanes)
        lane = lane.clamp(0, self.lanes - 1)
        front, rear = front_table[env, lane, slot], rear_table[env, lane, slot]
        return torch.where(valid, front, -1), torch.where(valid, rear, -1)

    def idm(self, env: torch.Tensor, follower: torch.Tensor, leader: torch.Tensor) -> torch.Tensor:
        """highway-env ``IDMVehicle.acceleration`` of ``follower`` behind ``leader`` (slots; ``-1``: none).

        With the background drivers' parameters (the deciding vehicle's constants in highway-env, all equal
        here). A missing follower gives 0 and a missing leader a free road; the gap is centre to centre along
        the follower's lane against ``DISTANCE_WANTED = s0 + length``.
        """
        f = follower.clamp(min=0)
        speed, heading = self.speed[env, f], self.heading[env, f]
        target = torch.clamp(self.target_speed[env, f], 0.0, self.speed_limit_mps)
        acceleration = self.cam * (1 - libm_pow(torch.clamp(speed, min=0.0) / kinematics.not_zero(target).abs(),
                                                self.delta, exact=self.exact))
        lead = leader.clamp(min=0)
        gap = self.x[env, lead] - self.x[env, f]
        lead_speed, lead_heading = self.speed[env, lead], self.heading[env, lead]
        desired = self._desired_gap(speed, self._closing(speed, heading, lead_speed, lead_heading))
        interaction = self.cam * libm_pow(desired / kinematics.not_zero(gap), 2.0, exact=self.exact)
        acceleration = torch.where(leader >= 0, acceleration - interaction, acceleration)
        return torch.where(follower >= 0, acceleration, torch.zeros_like(acceleration))

    def _closing(self, speed, heading, lead_speed, lead_heading) -> torch.Tensor:
        """``dot(v_follower - v_leader, direction_follower)`` [m/s], in numpy's operation order."""
        cos_h, sin_h = self.cos(heading), self.sin(heading)
        return ((speed * cos_h - lead_speed * self.cos(lead_heading)) * cos_h
                + (speed * sin_h - lead_speed * self.sin(lead_heading)) * sin_h)

    def cos(self, angle: torch.Tensor) -> torch.Tensor:
        return elementwise(torch.cos, angle, exact=self.exact)

    def sin(self, angle: torch.Tensor) -> torch.Tensor:
        return elementwise(torch.sin, angle, exact=self.exact)

    def lateral_in(self, env: torch.Tensor, slot: torch.Tensor, lane: torch.Tensor) -> torch.Tensor:
        return self.y[env, slot] - LANE_WIDTH_M * lane.to(self.dtype)

    def seen_targets(self, env: torch.Tensor, slot: torch.Tensor, before: torch.Tensor, after: torch.Tensor
                     ) -> torch.Tensor:
        """Target lanes ``[M, N]`` that vehicle (``env``, ``slot``) sees in a sequential act phase.

        Slots before it have acted (``after``), the others not yet (``before``); both are ``[B, N]``.
        """
        earlier = torch.arange(self.slots, device=self.device)[None, :] < slot[:, None]
        return torch.where(earlier, after[env], before[env])

    # -- one control step ---------------------------------------------------------------------------------------
    def step(self, action: torch.Tensor) -> StepResult:
        """Apply the ego actions ``[B, 2]`` (continuous, in [-1, 1]) for one control step."""
        action = torch.as_tensor(action, dtype=self.dtype, device=self.device)
        if action.shape != (self.batch, 2):
            raise ValueError(f"action: expected shape ({self.batch}, 2), got {tuple(action.shape)}")
        if not bool(torch.isfinite(action).all()):
            raise ValueError("action: expected finite numbers in [-1, 1], got NaN or inf")
        self.command_ego(action)
        for _ in range(self.frames_per_step):
            self._frame()
        self.control_step += 1
        return self._result()

    def command_ego(self, action: torch.Tensor) -> None:
        """Decode the ego actions ``[B, 2]`` and retarget its lane (``EgoVehicle.command``; idempotent in a step)."""
        clipped = torch.clamp(action, -1.0, 1.0)
        self.command_mps2 = clipped[:, 0] * self.highway.ego.accel_scale_mps2
        lane_change = torch.where(clipped[:, 1] < -LANE_CHANGE_THRESHOLD, -1,
                                  torch.where(clipped[:, 1] > LANE_CHANGE_THRESHOLD, 1, 0))
        self.last_lane_change = lane_change
        new_lane = self.lane[:, 0] + lane_change
        valid = (new_lane >= 0) & (new_lane < self.lanes)
        lateral = self.y[:, 0] - LANE_WIDTH_M * new_lane.to(self.dtype)
        valid &= reachable(x_m=self.x[:, 0], lateral_m=lateral, length_m=self.length_m) & (lane_change != 0)
        self.target_lane[:, 0] = torch.where(valid, new_lane, self.target_lane[:, 0])

    def _frame(self) -> None:
        steering, acceleration = self._act()
        self._move(steering, acceleration)
        self._collide()
        self.frames += 1

    # -- act phase ----------------------------------------------------------------------------------------------
    def _act(self) -> tuple[torch.Tensor, torch.Tensor]:
        before = self.target_lane.clone()
        self._script_lane_changes()
        if self.naturalistic is not None:
            self.naturalistic.decide(before)
        self._idm_lane_changes(before)
        lateral = self.y - LANE_WIDTH_M * self.target_lane.to(self.dtype)
        steering = kinematics.steering_control(lateral_m=lateral, heading_rad=self.heading, speed_mps=self.speed,
                                               exact=self.exact)
        acceleration = torch.zeros_like(self.x)
        # the ego: its command, never reversing from a stop
        ego_acc = torch.where(self.speed[:, 0] <= 0, torch.clamp(self.command_mps2, min=0.0), self.command_mps2)
        acceleration[:, 0] = ego_acc
        idm = self._is_idm & ~self.crashed
        if bool(idm.any()):
            env, slot = idm.nonzero(as_tuple=True)
            acceleration[env, slot] = self._idm_acceleration(env, slot)
        if self.naturalistic is not None:
            acceleration = torch.where(self.kind == KIND_NATURALISTIC, self.naturalistic.held_acceleration_mps2,
                                       acceleration)
        return steering, acceleration

    def _idm_acceleration(self, env: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """``IDMVehicle.act``'s longitudinal command: IDM in the own lane, the minimum with the target lane's."""
        front, _ = self.neighbours(env, slot, self.lane[env, slot])
        acceleration = self.idm(env, slot, front)
        changing = self.lane[env, slot] != self.target_lane[env, slot]
        if bool(changing.any()):
            rows = changing.nonzero(as_tuple=True)[0]
            target_front, _ = self.neighbours(env[rows], slot[rows], self.target_lane[env[rows], slot[rows]])
            acceleration[rows] = torch.minimum(acceleration[rows], self.idm(env[rows], slot[rows], target_front))
        return torch.clamp(acceleration, -IDM_ACC_MAX_MPS2, IDM_ACC_MAX_MPS2)

    def _script_lane_changes(self) -> None:
        """``ScriptedIDMVehicle.act``: at its time the cut-in vehicle targets the ego's lane and stops MOBIL."""
        due = ((self.kind == KIND_SCRIPTED_IDM) & (self.script_lane >= 0) & ~self.crashed
               & (self.clock_s[:, None] >= self.script_time - 1e-6))
        self.target_lane = torch.where(due, self.script_lane, self.target_lane)
        self.script_lane = torch.where(due, -1, self.script_lane)
        self.enable_lane_change = self.enable_lane_change & ~due

    def _idm_lane_changes(self, before: torch.Tensor) -> None:
        """``IDMVehicle.change_lane_policy`` for every IDM vehicle (abort rule, timer, MOBIL on both sides)."""
        deciding = self._is_idm & ~self.crashed & self.enable_lane_change
        ongoing = deciding & (self.lane != self.target_lane)
        timed = deciding & ~ongoing & (self.timer > LANE_CHANGE_DELAY_S)
        if bool(timed.any()):
            env, slot = timed.nonzero(as_tuple=True)
            self.timer[env, slot] = 0.0
            new_target = self.lane[env, slot].clone()
            changed = torch.zeros_like(slot, dtype=torch.bool)
            moving = self.speed[env, slot].abs() >= MIN_LANE_CHANGE_SPEED_MPS
            for side in (-1, 1):  # left first, then right: a right change that MOBIL accepts wins
                lane = self.lane[env, slot] + side
                exists = (lane >= 0) & (lane < self.lanes)
                lane = lane.clamp(0, self.lanes - 1)
                ok = exists & moving & reachable(x_m=self.x[env, slot], lateral_m=self.lateral_in(env, slot, lane),
                                                 length_m=self.length_m)
                ok &= self._mobil(env, slot, lane)
                new_target = torch.where(ok, lane, new_target)
                changed |= ok
            self.target_lane[env, slot] = torch.where(changed, new_target, self.target_lane[env, slot])
        if bool(ongoing.any()):
            self._abort_lane_changes(ongoing, before)

    def _mobil(self, env: torch.Tensor, slot: torch.Tensor, lane: torch.Tensor) -> torch.Tensor:
        """highway-env ``IDMVehicle.mobil`` (no route): safe for the new follower and worth the threshold."""
        new_front, new_rear = self.neighbours(env, slot, lane)
        new_rear_a = self.idm(env, new_rear, new_front)
        new_rear_pred_a = self.idm(env, new_rear, slot)
        safe = ~(new_rear_pred_a < -self.max_braking_mps2)
        old_front, old_rear = self.neighbours(env, slot, self.lane[env, slot])
        self_pred_a = self.idm(env, slot, new_front)
        self_a = self.idm(env, slot, old_front)
        old_rear_a = self.idm(env, old_rear, slot)
        old_rear_pred_a = self.idm(env, old_rear, old_front)
        jerk = self_pred_a - self_a + self.politeness * (new_rear_pred_a - new_rear_a + old_rear_pred_a - old_rear_a)
        return safe & ~(jerk < self.min_gain_mps2)

    def _abort_lane_changes(self, ongoing: torch.Tensor, before: torch.Tensor) -> None:
        """Abort a lane change if another vehicle changing into the same lane is ahead within the desired gap.

        Reads other vehicles' target lanes, so solved as the fixed point of the sequential act phase (module
        docstring). Only vehicles with a lane change in progress at the start of their act can abort.
        """
        env, slot = ongoing.nonzero(as_tuple=True)
        own_target = self.target_lane[env, slot]
        others = torch.arange(self.slots, device=self.device)
        distance = self.x[env] - self.x[env, slot][:, None]  # [M, N]
        gaps = self._desired_gaps(env, slot)
        geometric = ((others[None, :] != slot[:, None]) & self.present[env]
                     & (self.lane[env] != own_target[:, None]) & (distance > 0) & (distance < gaps))
        after = self.target_lane.clone()
        for _ in range(self.slots + 1):
            seen = self.seen_targets(env, slot, before, after)
            abort = (geometric & (seen == own_target[:, None])).any(dim=1)
            proposal = self.target_lane.clone()
            proposal[env, slot] = torch.where(abort, self.lane[env, slot], own_target)
            if torch.equal(proposal, after):
                break
            after = proposal
        self.target_lane = after

    def _desired_gaps(self, env: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """``desired_gap(self, v)`` ``[M, N]`` of each query vehicle against every vehicle of its episode."""
        speed, heading = self.speed[env, slot][:, None], self.heading[env, slot][:, None]
        return self._desired_gap(speed, self._closing(speed, heading, self.speed[env], self.heading[env]))

    def _desired_gap(self, speed: torch.Tensor, closing: torch.Tensor) -> torch.Tensor:
        """highway-env ``IDMVehicle.desired_gap``: ``d0 + v T + v dv / (2 sqrt(a b))`` [m], centre to centre."""
        return (self.distance_wanted_m + speed * self.time_wanted_s
                + speed * closing / (2 * math.sqrt(-self.cam * self.cam_min)))

    # -- step phase ---------------------------------------------------------------------------------------------
    def _move(self, steering: torch.Tensor, acceleration: torch.Tensor) -> None:
        self.timer = torch.where(self._is_idm | (self.kind == KIND_NATURALISTIC), self.timer + self.dt_s,
                                 self.timer)
        x, y, heading, speed = kinematics.bicycle_step(
            x_m=self.x, y_m=self.y, heading_rad=self.heading, speed_mps=self.speed, steering_rad=steering,
            acceleration_mps2=acceleration, crashed=self.crashed, dt_s=self.dt_s, exact=self.exact)
        x = torch.where(self.has_impact, x + self.impact[..., 0], x)
        y = torch.where(self.has_impact, y + self.impact[..., 1], y)
        self.crashed = self.crashed | (self.has_impact & self.present)
        self.has_impact = torch.zeros_like(self.has_impact)
        no_reverse = (self.kind == KIND_NATURALISTIC) | (self.kind == KIND_EGO)
        speed = torch.where(no_reverse & (speed < 0), torch.zeros_like(speed), speed)
        present = self.present
        self.x = torch.where(present, x, self.x)
        self.y = torch.where(present, y, self.y)
        self.heading = torch.where(present, heading, self.heading)
        self.speed = torch.where(present, speed, self.speed)
        self.lane = closest_lane(self.y, lanes=self.lanes)
        self._table = None
        self.odometer_m = self.odometer_m + self.speed[:, 0] * self.dt_s
        self.clock_s = self.clock_s + self.dt_s
        if self.naturalistic is not None:
            self.naturalistic.after_frame()

    def _collide(self) -> None:
        """``Road.step``'s pairwise ``handle_collisions`` for every pair that can touch (see :meth:`_pairs`)."""
        first, second, env = self._pairs()
        if first.numel() == 0:
            return
        corners = kinematics.rectangle_corners(self.x, self.y, self.heading, exact=self.exact)
        cos_h, sin_h = self.cos(self.heading), self.sin(self.heading)
        velocity = torch.stack([self.speed * cos_h, self.speed * sin_h], dim=-1)
        intersecting, will, translation = kinematics.sat_collision(
            corners[env, first], corners[env, second], velocity[env, first] * self.dt_s,
            velocity[env, second] * self.dt_s)
        crashed = self.crashed.clone()
        crashed[env[intersecting], first[intersecting]] = True
        crashed[env[intersecting], second[intersecting]] = True
        self.crashed = crashed
        if bool(will.any()):
            # highway-env overwrites a vehicle's impact at every pair it meets, in (i, j) loop order: the last wins
            env, first, second, translation = env[will], first[will], second[will], translation[will]
            order = first * self.slots + second
            rows = torch.cat([env, env])
            slots = torch.cat([first, second])
            keys = torch.cat([order, order])
            values = torch.cat([translation / 2, -translation / 2])
            flat = rows * self.slots + slots
            best = torch.full((self.batch * self.slots,), -1, dtype=torch.long, device=self.device)
            best.scatter_reduce_(0, flat, keys, reduce="amax")
            winner = keys == best[flat]
            impact = self.impact.reshape(-1, 2).clone()
            impact[flat[winner]] = values[winner]
            has = self.has_impact.reshape(-1).clone()
            has[flat[winner]] = True
            self.impact = impact.reshape(self.batch, self.slots, 2)
            self.has_impact = has.reshape(self.batch, self.slots)

    def _pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pairs (first < second in slot order, env) that pass highway-env's spherical pre-check.

        Candidates are neighbours within a window of ``k`` in each episode's x order, ``k`` doubled until every
        pair closer in x than the largest pre-check radius is inside the window (so no pair is missed). The
        pre-check (``RoadObject._is_colliding``: centre distance > mean diagonal + the first vehicle's speed * dt)
        runs on the sorted arrays; only the pairs that pass are gathered.
        """
        x = torch.where(self.present, self.x, torch.full_like(self.x, FAR_AWAY_M))
        order = torch.argsort(x, dim=1)
        sorted_x, sorted_y = x.gather(1, order), self.y.gather(1, order)
        sorted_present, sorted_speed = self.present.gather(1, order), self.speed.gather(1, order)
        radius = kinematics.DIAGONAL_M + float(self.speed.abs().max()) * self.dt_s
        n = self.slots
        window = min(8, n - 1)
        while window < n - 1:
            spread = sorted_x[:, window:] - sorted_x[:, :-window]
            both = sorted_present[:, window:] & sorted_present[:, :-window]
            if not bool((both & (spread <= radius)).any()):
                break
            window = min(2 * window, n - 1)
        firsts, seconds, envs = [], [], []
        for offset in range(1, window + 1):
            a, b = order[:, :-offset], order[:, offset:]
            dx = sorted_x[:, offset:] - sorted_x[:, :-offset]
            dy = sorted_y[:, offset:] - sorted_y[:, :-offset]
            first_speed = torch.where(a < b, sorted_speed[:, :-offset], sorted_speed[:, offset:])
            keep = (sorted_present[:, :-offset] & sorted_present[:, offset:]
                    & ~(torch.sqrt(dx * dx + dy * dy) > kinematics.DIAGONAL_M + first_speed * self.dt_s))
            env, position = keep.nonzero(as_tuple=True)
            a, b = a[env, position], b[env, position]
            firsts.append(torch.minimum(a, b))
            seconds.append(torch.maximum(a, b))
            envs.append(env)
        return torch.cat(firsts), torch.cat(seconds), torch.cat(envs)

    # -- observation, reward, safety ----------------------------------------------------------------------------
    def observe(self) -> torch.Tensor:
        """The lane-frame observation ``[B, obs_dim]`` of :class:`safetybed.sims.highway_obs.LaneFrameObservation`."""
        highway = self.highway
        lane = self.lane[:, 0]
        lane_y = LANE_WIDTH_M * lane.to(self.dtype)
        ego_x, ego_r = self.x[:, 0], self.y[:, 0] - lane_y
        shift = (self.target_lane[:, 0] - lane).to(self.dtype)
        ego = torch.stack([self.speed[:, 0], ego_r, kinematics.wrap_to_pi(self.heading[:, 0]),
                           torch.full_like(ego_x, LANE_WIDTH_M), lane.to(self.dtype),
                           (self.lanes - 1 - lane).to(self.dtype), shift,
                           torch.full_like(ego_x, self.speed_limit_mps)], dim=1)
        dx = self.x - ego_x[:, None]
        dy = self.y - self.y[:, :1]
        distance = torch.sqrt(dx * dx + dy * dy)
        visible = self.present & (distance <= highway.observation_range_m)
        visible[:, 0] = False
        key = torch.where(visible, distance, torch.full_like(distance, math.inf))
        order = torch.argsort(key, dim=1, stable=True)[:, :highway.observed_vehicles]
        shown = visible.gather(1, order)
        vx, vy = self.speed * self.cos(self.heading), self.speed * self.sin(self.heading)
        features = torch.stack([torch.ones_like(dx), dx, self.y - lane_y[:, None], vx - vx[:, :1], vy], dim=2)
        slots = features.gather(1, order[:, :, None].expand(-1, -1, features.shape[2]))
        slots = torch.where(shown[:, :, None], slots, torch.zeros_like(slots))
        observation = torch.cat([ego, slots.reshape(self.batch, -1)], dim=1)
        return torch.clamp(observation, self.obs_low, self.obs_high)

    def leader_gap_and_ttc(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Bumper gap [m] and TTC [s] to the ego's leader in its lane (``inf`` without; TTC ``inf`` unless closing)."""
        env = self._envs
        zero = torch.zeros_like(env)
        front, _ = self.neighbours(env, zero, self.lane[:, 0])
        lead = front.clamp(min=0)
        gap = torch.clamp(self.x[env, lead] - self.x[:, 0] - VEHICLE_LENGTH_M, min=0.0)
        closing = self.speed[:, 0] * self.cos(self.heading[:, 0]) - self.speed[env, lead] * self.cos(
            self.heading[env, lead])
        inf = torch.full_like(gap, math.inf)
        ttc = torch.where(closing > 1e-9, gap / torch.where(closing > 1e-9, closing, torch.ones_like(closing)), inf)
        has = front >= 0
        return torch.where(has, gap, inf), torch.where(has, ttc, inf)

    def _result(self) -> StepResult:
        collision = self.crashed[:, 0].clone()
        forward = self.speed[:, 0] * self.cos(self.heading[:, 0])
        lateral = self.y[:, 0] - LANE_WIDTH_M * self.lane[:, 0].to(self.dtype)
        on_road = on_lane(x_m=self.x[:, 0], lateral_m=lateral, length_m=self.length_m)
        violations = (~on_road).long() + (forward > SPEEDING_FACTOR * self.speed_limit_mps).long()
        reward = torch.where(collision | ~on_road, torch.zeros_like(forward),
                             torch.clamp(forward / self.speed_limit_mps, 0.0, 1.0))
        truncated = torch.full_like(collision, self.control_step >= self.spec.episode_steps)
        if self.spec.task == "overtaking":
            lead = self.leader_slot.clamp(min=0)
            goal = (self.x[:, 0] - 0.5 * VEHICLE_LENGTH_M > self.x[self._envs, lead] + 0.5 * VEHICLE_LENGTH_M)
            success = ~collision & goal
        else:
            success = ~collision & truncated
        gap, ttc = self.leader_gap_and_ttc()
        return StepResult(observation=self.observe(), reward=reward, terminated=collision, truncated=truncated,
                          collision=collision, success=success, ttc_s=ttc, gap_m=gap, progress_m=self.odometer_m,
                          violations=violations)


__all__ = ["BatchedHighway", "StepResult"]
