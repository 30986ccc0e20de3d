"""The naturalistic background driver (stochastic IDM + stochastic MOBIL, 1 Hz decisions) on tensors ``[B, N]``.

The batched form of :class:`safetybed.sims.highway_driver.NaturalisticVehicle`, NADE's naturalistic driving model
(Feng, Yan, Sun, Feng & Liu 2021, *Nat. Commun.* 12:748): at every decision instant each present, uncrashed
naturalistic vehicle draws one of ``2 + K`` actions (0 = left lane change, 1 = right lane change, ``2 + i`` =
acceleration ``grid[i]``) from a pmf ``p(u | s)`` and holds it until the next decision:

* lane changes: for each available side (no lane change in progress, speed >= 1 m/s, the lane exists and is
  reachable) the MOBIL incentive (Kesting, Treiber & Helbing 2007, *Transp. Res. Rec.* 1999:86-94) mapped to a
  clipped-linear probability; a change that fails MOBIL's safety criterion gets the unsafe floor. The new leader
  and follower count vehicles (the ego among them) that are already changing into the candidate lane;
* acceleration: a Gaussian around the Intelligent Driver Model's acceleration (Treiber, Hennecke & Helbing 2000,
  *Phys. Rev. E* 62:1805; bumper gaps, :mod:`safetybed.sims.idm`) on the grid, in log space, pruned,
  renormalised and mixed with a uniform tail, scaled by ``1 - p_left - p_right``.

Every formula is :mod:`safetybed.sims.idm` / :mod:`safetybed.sims.highway_driver` written with torch ops in the
same operation order: sums over the grid replay numpy's pairwise summation and ``pow`` / ``exp`` / ``cos`` /
``sin`` run the C library's scalar routines on CPU (:func:`elementwise`), so float64 pmfs equal highway-env's
to round-off (the states themselves agree to ~1e-14) and never depend on the batch an episode runs in.

Randomness: the reference vehicle with id ``i`` (here slot ``i``; the ego is slot 0) owns the generator
``default_rng(SeedSequence(traffic_entropy, spawn_key=(i,)))`` and draws one uniform per decision, also when the
action is overridden or scripted. :meth:`NaturalisticTraffic.reset` draws all of an episode's uniforms up front
(float64, then cast to the simulator's dtype), so a batched episode uses exactly the highway-env episode's numbers
and its trajectory depends only on its seed. In float32 the cast rounds a uniform to the nearest float32 (1.0
included, which the clamp to the last nonzero entry handles), and the float32 pmf differs from the float64 one by
round-off, so a float32 sample differs from highway-env's only where the uniform lies within ~1e-7 of a
cumulative-pmf boundary.

highway-env's act phase is sequential in slot order: a vehicle's merging neighbours see the target lanes that
earlier slots chose in the same frame. The decisions are therefore solved as the fixed point of
:meth:`BatchedHighway.seen_targets` (as the IDM abort rule of :class:`~safetybed.sims.batched.sim.BatchedHighway`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from safetybed.sims.batched.libm import elementwise, libm_pow
from safetybed.sims.batched.placement import KIND_NATURALISTIC, VEHICLE_LENGTH_M, Scene
from safetybed.sims.batched.road import reachable
from safetybed.sims.highway_driver import (
    ACTION_LEFT,
    ACTION_RIGHT,
    FIRST_ACCELERATION_ACTION,
    DecisionRecord,
    DriverParams,
)
from safetybed.sims.idm import MIN_DESIRED_SPEED_MPS, MIN_GAP_M

#: Decision sources (``last_source``): as :class:`~safetybed.sims.highway_driver.DecisionRecord`'s ``source``.
SOURCE_NONE, SOURCE_SAMPLED, SOURCE_OVERRIDE, SOURCE_SCRIPT = -1, 0, 1, 2
SOURCE_NAMES = ("sampled", "override", "script")  #: ``SOURCE_NAMES[code]``
MIN_LANE_CHANGE_SPEED_MPS = 1.0  #: no lane change below this speed [m/s] (highway-env's ``IDMVehicle``)
SCRIPT_TOLERANCE_S = 1e-9  #: a scripted action is due at the first decision at or after its time minus this [s]
_PAIRWISE_BLOCK = 8  # numpy's pairwise summation: 8 interleaved accumulators (blocks of at most 128 elements)


def pairwise_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension in the order of numpy's ``add.reduce`` (pairwise summation), for <= 128 terms.

    numpy sums ``n >= 8`` contiguous values with 8 accumulators ``r[j] = x[j] + x[j + 8] + ...`` (sequential),
    combined as ``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))``, then adds the ``n % 8`` remaining terms one
    by one; ``n < 8`` values are summed sequentially from 0. Replaying that order keeps the sums bitwise equal to
    the reference module's and independent of how many rows the batch has.
    """
    n = values.shape[-1]
    if n > 128:
        raise ValueError(f"values: expected at most 128 terms in the last dimension, got {n}")
    if n < _PAIRWISE_BLOCK:
        total = torch.zeros_like(values[..., 0])
        for i in range(n):
            total = total + values[..., i]
        return total
    full = n - n % _PAIRWISE_BLOCK
    blocks = values[..., :full].reshape(*values.shape[:-1], full // _PAIRWISE_BLOCK, _PAIRWISE_BLOCK)
    r = blocks[..., 0, :]
    for k in range(1, full // _PAIRWISE_BLOCK):
        r = r + blocks[..., k, :]
    total = ((r[..., 0] + r[..., 1]) + (r[..., 2] + r[..., 3])) + ((r[..., 4] + r[..., 5]) + (r[..., 6] + r[..., 7]))
    for i in range(full, n):
        total = total + values[..., i]
    return total


def acceleration_pmf(mean_mps2: torch.Tensor, grid_mps2: torch.Tensor, *, sigma_mps2: float, prune_below: float,
                     tail_mass: float = 0.0) -> torch.Tensor:
    """:func:`safetybed.sims.highway_driver.acceleration_pmf` for a batch of means ``[M]``: pmfs ``[M, K]``.

    ``p(a_i) ∝ exp(-(a_i - mean)^2 / (2 sigma^2))`` in log space (NADE's stochastic IDM, Feng et al. 2021), entries
    below ``prune_below`` set to 0, renormalised, mixed with ``tail_mass`` of a uniform pmf on the grid.
    """
    standardised = (grid_mps2[None, :] - mean_mps2[:, None]) / sigma_mps2
    log_weight = -0.5 * (standardised * standardised)  # numpy's array ** 2 is np.square
    weight = elementwise(torch.exp, log_weight - log_weight.max(dim=1, keepdim=True).values)
    pmf = weight / pairwise_sum(weight)[:, None]
    pmf = torch.where(pmf < prune_below, torch.zeros_like(pmf), pmf)
    pmf = pmf / pairwise_sum(pmf)[:, None]
    if tail_mass > 0.0:
        pmf = (1.0 - tail_mass) * pmf + tail_mass / grid_mps2.shape[0]
    return pmf


def lane_change_probability(gain_mps2: torch.Tensor, *, safe: torch.Tensor, threshold_mps2: float,
                            saturation_mps2: float, floor: float, maximum: float, unsafe_floor: float
                            ) -> torch.Tensor:
    """:func:`safetybed.sims.highway_driver.lane_change_probability` elementwise (stochastic MOBIL).

    ``floor + (maximum - floor) * clip((gain - threshold) / saturation, 0, 1)``; ``unsafe_floor`` where the change
    fails MOBIL's safety criterion (Kesting et al. 2007), ``floor`` for a non-finite gain.
    """
    fraction = torch.clamp((gain_mps2 - threshold_mps2) / saturation_mps2, 0.0, 1.0)
    probability = floor + (maximum - floor) * fraction
    probability = torch.where(torch.isfinite(gain_mps2), probability, torch.full_like(probability, floor))
    return torch.where(safe, probability, torch.full_like(probability, unsafe_floor))


class NaturalisticTraffic:
    """The naturalistic drivers of one :class:`~safetybed.sims.batched.sim.BatchedHighway` (module docstring).

    The simulator calls :meth:`reset` at the end of ``load_scenes``, :meth:`decide` at the start of every frame's
    act phase and :meth:`after_frame` at the end of its move phase; it applies :attr:`held_acceleration_mps2` to
    every naturalistic vehicle. Testing hooks: :meth:`pending_pmfs`, :meth:`override_next_decision` and the
    record of the last decisions (:attr:`last_decided`, :attr:`last_pmf`, :attr:`last_action`,
    :attr:`last_source`, :meth:`last_decision_records`).
    """

    def __init__(self, sim):
        self.sim = sim
        highway = sim.highway
        self.params = DriverParams.from_spec(highway.driver, simulation_frequency_hz=highway.simulation_frequency_hz)
        params = self.params
        self.action_count = params.action_count
        self.frames_per_decision = params.frames_per_decision
        self.simulation_frequency_hz = highway.simulation_frequency_hz
        self.grid_mps2 = torch.as_tensor(params.grid_mps2, dtype=sim.dtype, device=sim.device)
        self.grid_low_mps2 = float(params.grid_mps2[0])
        self.grid_high_mps2 = float(params.grid_mps2[-1])
        idm = params.idm
        self.max_accel_mps2 = float(idm.max_accel_mps2)
        self.min_gap_m = float(idm.min_gap_m)
        self.time_headway_s = float(idm.time_headway_s)
        self.delta = float(idm.delta)
        self.gap_denominator = 2.0 * math.sqrt(float(idm.max_accel_mps2) * float(idm.comfort_decel_mps2))
        #: IDM desired speed of every vehicle but the deciding one: the spec's, capped by the speed limit [m/s]
        self.others_desired_mps = min(params.desired_speed_mps, sim.speed_limit_mps)
        #: decisions per vehicle and episode: one at frame 0 and one every ``frames_per_decision`` frames
        total_frames = sim.spec.episode_steps * sim.frames_per_step
        self.decisions_per_episode = total_frames // self.frames_per_decision + 1
        self.frame = 0
        self.held_acceleration_mps2 = torch.zeros(0, 0, dtype=sim.dtype, device=sim.device)

    # -- reset --------------------------------------------------------------------------------------------------
    def reset(self, scenes: Sequence[Scene]) -> None:
        """Per episode: draw every naturalistic vehicle's decision uniforms and set up the cut-in script."""
        sim = self.sim
        batch, slots, device = len(scenes), sim.slots, sim.device
        self._entropies = [int(scene.traffic_entropy) for scene in scenes]
        self._naturalistic = (sim.kind == KIND_NATURALISTIC) & sim.present
        self._draw_uniforms(self.decisions_per_episode)
        script_action = np.full((batch, slots), -1, dtype=np.int64)
        script_frame = np.zeros((batch, slots), dtype=np.int64)
        for b, scene in enumerate(scenes):
            if scene.script is None:
                continue
            slot, target_lane, at_s = scene.script
            if scene.kind[slot] != KIND_NATURALISTIC:
                continue
            if not math.isfinite(at_s) or at_s < 0:
                raise ValueError(f"scenes[{b}].script: expected a finite time >= 0, got {at_s}")
            # CutInEnv._after_registration: left if the cutter's lane index is above the target's, else right
            script_action[b, slot] = ACTION_LEFT if scene.lane[slot] > target_lane else ACTION_RIGHT
            script_frame[b, slot] = self._first_frame_at(at_s)
        self.script_action = torch.as_tensor(script_action, device=device)
        self.script_frame = torch.as_tensor(script_frame, device=device)
        self.override = torch.full((batch, slots), -1, dtype=torch.long, device=device)
        self.decision_count = torch.zeros((batch, slots), dtype=torch.long, device=device)
        self.held_acceleration_mps2 = torch.zeros((batch, slots), dtype=sim.dtype, device=device)
        self.last_decided = torch.zeros((batch, slots), dtype=torch.bool, device=device)
        self.last_pmf = torch.zeros((batch, slots, self.action_count), dtype=sim.dtype, device=device)
        self.last_action = torch.full((batch, slots), -1, dtype=torch.long, device=device)
        self.last_source = torch.full((batch, slots), SOURCE_NONE, dtype=torch.long, device=device)
        self.last_decision_frame = -1
        self.frame = 0

    def _draw_uniforms(self, count: int) -> None:
        """``uniforms[b, slot, k]``: the ``k``-th ``rng.random()`` of vehicle ``slot``'s generator in episode ``b``."""
        sim = self.sim
        naturalistic = self._naturalistic.cpu().numpy()
        uniforms = np.zeros((len(self._entropies), sim.slots, count))
        for b, slot in zip(*np.nonzero(naturalistic), strict=True):
            rng = np.random.default_rng(np.random.SeedSequence(self._entropies[b], spawn_key=(int(slot),)))
            uniforms[b, slot] = rng.random(count)  # the same doubles as `count` calls of rng.random()
        self.uniforms = torch.as_tensor(uniforms, dtype=sim.dtype, device=sim.device)

    def _first_frame_at(self, at_s: float) -> int:
        """The first frame ``f`` with ``at_s <= f / simulation_frequency + tolerance`` (``script_due``)."""
        frequency = self.simulation_frequency_hz
        frame = max(0, math.ceil((at_s - SCRIPT_TOLERANCE_S) * frequency))
        while frame > 0 and at_s <= (frame - 1) / frequency + SCRIPT_TOLERANCE_S:
            frame -= 1
        while not at_s <= frame / frequency + SCRIPT_TOLERANCE_S:
            frame += 1
        return frame

    # -- hooks --------------------------------------------------------------------------------------------------
    def after_frame(self) -> None:
        """End of a frame (``NaturalisticVehicle.step``'s frame counter)."""
        self.frame += 1

    @property
    def time_s(self) -> float:
        """Simulation time since reset [s]."""
        return self.frame / self.simulation_frequency_hz

    def deciders(self) -> torch.Tensor:
        """``[B, N]``: vehicles that decide at the start of the current frame (``decision_due``)."""
        if self.frame % self.frames_per_decision:
            return torch.zeros_like(self._naturalistic)
        return self._naturalistic & ~self.sim.crashed

    def script_due(self) -> torch.Tensor:
        """``[B, N]``: vehicles whose next decision is scripted (``NaturalisticVehicle.script_due``)."""
        return (self.script_action >= 0) & (self.frame >= self.script_frame)

    def decision_accelerations(self) -> torch.Tensor:
        """``[B, N]``: ``idm_decision_acceleration`` of every uncrashed naturalistic vehicle now (0 elsewhere).

        With every vehicle's current target lane (pure, as :meth:`pending_pmfs`); the NADE tester's hold of a
        lane-change action before it is clipped to the grid.
        """
        sim = self.sim
        hold = torch.zeros_like(sim.x)
        mask = self._naturalistic & ~sim.crashed
        if bool(mask.any()):
            env, slot = mask.nonzero(as_tuple=True)
            hold[env, slot] = self._decision_acceleration(env, slot, sim.target_lane[env, slot], sim.target_lane[env])
        return hold

    def pending_pmfs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pmfs ``[B, N, A]`` every present, uncrashed naturalistic vehicle would sample from if it decided now.

        Pure (draws nothing, changes nothing): ``NaturalisticVehicle.action_pmf`` at the current state, with every
        vehicle's current target lane. Returns ``(pmf, mask [B, N])``; rows outside the mask are 0.
        """
        sim = self.sim
        mask = self._naturalistic & ~sim.crashed
        pmf = torch.zeros((sim.batch, sim.slots, self.action_count), dtype=sim.dtype, device=sim.device)
        if bool(mask.any()):
            env, slot = mask.nonzero(as_tuple=True)
            pmf[env, slot] = self._pmf(env, slot, sim.target_lane[env])[0]
        return pmf, mask

    def override_next_decision(self, env_idx, slot_idx, action) -> None:
        """Make vehicle(s) (``env_idx``, ``slot_idx``) take action index ``action`` at their next decision.

        As ``NaturalisticVehicle.override_next_action``: the uniform of that decision is still used up, a scripted
        action due at the same decision takes precedence (the override then waits), and an infeasible lane change
        keeps the lane. Arguments are ints or broadcastable integer tensors.
        """
        sim, count = self.sim, self.action_count
        env = torch.as_tensor(env_idx, device=sim.device)
        slot = torch.as_tensor(slot_idx, device=sim.device)
        action = torch.as_tensor(action, device=sim.device)
        for name, value in (("env_idx", env), ("slot_idx", slot), ("action", action)):
            if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
                raise ValueError(f"{name}: expected integer indices, got dtype {value.dtype}")
        env, slot, action = torch.broadcast_tensors(env, slot, action)
        env, slot, action = env.reshape(-1).long(), slot.reshape(-1).long(), action.reshape(-1).long()
        if bool(((action < 0) | (action >= count)).any()):
            raise ValueError(f"action: expected integer indices in [0, {count - 1}], got {action.tolist()}")
        if bool(((env < 0) | (env >= sim.batch)).any()):
            raise ValueError(f"env_idx: expected episode indices in [0, {sim.batch - 1}], got {env.tolist()}")
        if bool(((slot < 0) | (slot >= sim.slots)).any()) or not bool(self._naturalistic[env, slot].all()):
            raise ValueError(f"slot_idx: expected slots of naturalistic vehicles, got {slot.tolist()} in episodes "
                             f"{env.tolist()}")
        self.override[env, slot] = action

    def last_decision_records(self, env_idx: int) -> list[DecisionRecord]:
        """The :class:`DecisionRecord` of every vehicle of episode ``env_idx`` that decided at the last decision."""
        if not 0 <= env_idx < self.sim.batch:
            raise ValueError(f"env_idx: expected an episode index in [0, {self.sim.batch - 1}], got {env_idx}")
        time_s = self.last_decision_frame / self.simulation_frequency_hz
        slots = self.last_decided[env_idx].nonzero(as_tuple=True)[0].tolist()
        pmf = self.last_pmf[env_idx].double().cpu().numpy()
        action = self.last_action[env_idx].tolist()
        source = self.last_source[env_idx].tolist()
        return [DecisionRecord(time_s=time_s, vehicle_id=slot, pmf=pmf[slot].copy(), action=int(action[slot]),
                               source=SOURCE_NAMES[source[slot]]) for slot in slots]  # type: ignore[arg-type]

    # -- the decision ---------------------------------------------------------------------------------------------
    def decide(self, before: torch.Tensor) -> None:
        """Decide for every vehicle whose decision is due (``NaturalisticVehicle._decide``), in slot order.

        ``before``: target lanes ``[B, N]`` at the start of the act phase. Sets ``sim.target_lane`` and
        :attr:`held_acceleration_mps2` of the deciders, consumes their uniforms, scripts and overrides and records
        the decisions.
        """
        sim = self.sim
        deciding = self.deciders()
        if not bool(deciding.any()):
            return
        env, slot = deciding.nonzero(as_tuple=True)
        index = self.decision_count[env, slot]
        if int(index.max()) >= self.uniforms.shape[2]:  # stepped past the episode: draw more (same streams)
            self._draw_uniforms(2 * self.uniforms.shape[2])
        uniform = self.uniforms[env, slot, index]
        script_due = self.script_due()[env, slot]
        override = self.override[env, slot]
        after = sim.target_lane.clone()
        seen = sim.seen_targets(env, slot, before, after)
        pmf, action, source, target, held = self._decisions(env, slot, seen, uniform, script_due, override)
        for _ in range(sim.slots + 1):
            proposal = sim.target_lane.clone()
            proposal[env, slot] = target
            if torch.equal(proposal, after):
                break
            after = proposal
            # a decision is a function of its vehicle's state and of the targets it sees: redo the rows whose
            # seen targets changed
            new_seen = sim.seen_targets(env, slot, before, after)
            rows = (new_seen != seen).any(dim=1).nonzero(as_tuple=True)[0]
            seen = new_seen
            redone = self._decisions(env[rows], slot[rows], seen[rows], uniform[rows], script_due[rows],
                                     override[rows])
            for value, part in zip((pmf, action, source, target, held), redone, strict=True):
                value[rows] = part
        sim.target_lane = after
        self.held_acceleration_mps2[env, slot] = held
        self.script_action[env, slot] = torch.where(script_due, -1, self.script_action[env, slot])
        self.override[env, slot] = torch.where(source == SOURCE_OVERRIDE, -1, override)
        self.decision_count[env, slot] = index + 1
        self.last_decided = deciding
        self.last_pmf = torch.zeros_like(self.last_pmf)
        self.last_pmf[env, slot] = pmf
        self.last_action = torch.full_like(self.last_action, -1)
        self.last_action[env, slot] = action
        self.last_source = torch.full_like(self.last_source, SOURCE_NONE)
        self.last_source[env, slot] = source
        self.last_decision_frame = self.frame

    def _decisions(self, env: torch.Tensor, slot: torch.Tensor, seen: torch.Tensor, uniform: torch.Tensor,
                   script_due: torch.Tensor, override: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """pmf, action, source, new target lane and held acceleration of deciders seeing target lanes ``seen``."""
        sim = self.sim
        pmf, side_lanes, available, acceleration = self._pmf(env, slot, seen)
        cumulative = torch.cumsum(pmf, dim=1)
        sampled = torch.searchsorted(cumulative, uniform[:, None].contiguous(), right=True)[:, 0]
        actions = torch.arange(self.action_count, device=sim.device)
        last_nonzero = torch.where(pmf != 0, actions, -1).max(dim=1).values
        sampled = torch.minimum(sampled, last_nonzero)
        action = torch.where(script_due, self.script_action[env, slot], torch.where(override >= 0, override, sampled))
        source = torch.where(script_due, SOURCE_SCRIPT, torch.where(override >= 0, SOURCE_OVERRIDE, SOURCE_SAMPLED))
        own_target = seen.gather(1, slot[:, None])[:, 0]
        target = own_target
        for side, action_index in enumerate((ACTION_LEFT, ACTION_RIGHT)):
            change = (action == action_index) & available[:, side]
            target = torch.where(change, side_lanes[:, side], target)
        is_acceleration = action >= FIRST_ACCELERATION_ACTION
        held = self.grid_mps2[(action - FIRST_ACCELERATION_ACTION).clamp(min=0)]
        # a lane-change action holds a_IDM of the decision instant, after its target lane was set
        changed = ~is_acceleration & (target != own_target)
        lane_change_acceleration = acceleration.clone()
        if bool(changed.any()):
            rows = changed.nonzero(as_tuple=True)[0]
            lane_change_acceleration[rows] = self._decision_acceleration(env[rows], slot[rows], target[rows],
                                                                         seen[rows])
        lane_change_acceleration = torch.clamp(lane_change_acceleration, self.grid_low_mps2, self.grid_high_mps2)
        held = torch.where(is_acceleration, held, lane_change_acceleration)
        return pmf, action, source, target, held

    def _pmf(self, env: torch.Tensor, slot: torch.Tensor, seen: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``NaturalisticVehicle.action_pmf`` of vehicles (``env``, ``slot``) seeing target lanes ``seen [M, N]``.

        Returns ``(pmf [M, A], side lanes [M, 2], side available [M, 2], a_IDM [M])`` (sides: left, right).
        """
        sim, params = self.sim, self.params
        lane = sim.lane[env, slot]
        own_target = seen.gather(1, slot[:, None])[:, 0]
        in_progress = own_target != lane
        moving = ~(sim.speed[env, slot] < MIN_LANE_CHANGE_SPEED_MPS)
        old_front, old_rear = sim.neighbours(env, slot, lane)
        self_before = self._idm(env, slot, old_front, slot)
        old_rear_before = self._idm(env, old_rear, slot, slot)
        old_rear_after = self._idm(env, old_rear, old_front, slot)
        probabilities, side_lanes, available = [], [], []
        for side in (-1, 1):  # ACTION_LEFT (lane index - 1), then ACTION_RIGHT
            new_lane = lane + side
            exists = (new_lane >= 0) & (new_lane < sim.lanes)
            new_lane = new_lane.clamp(0, sim.lanes - 1)
            ok = exists & ~in_progress & moving & reachable(
                x_m=sim.x[env, slot], lateral_m=sim.lateral_in(env, slot, new_lane), length_m=sim.length_m)
            new_front, new_rear = self._lane_neighbours(env, slot, new_lane, seen)
            new_rear_before = self._idm(env, new_rear, new_front, slot)
            new_rear_after = self._idm(env, new_rear, slot, slot)
            self_after = self._idm(env, slot, new_front, slot)
            safe = (new_rear_after >= -params.max_braking_mps2) & (self_after >= -params.max_braking_mps2)
            gain = self_after - self_before + params.politeness * (
                new_rear_after - new_rear_before + old_rear_after - old_rear_before)
            probability = lane_change_probability(
                gain, safe=safe, threshold_mps2=params.gain_threshold_mps2,
                saturation_mps2=params.gain_saturation_mps2, floor=params.lane_change_floor,
                maximum=params.lane_change_max, unsafe_floor=params.unsafe_lane_change_floor)
            probabilities.append(torch.where(ok, probability, torch.zeros_like(probability)))
            side_lanes.append(new_lane)
            available.append(ok)
        acceleration = self_before  # idm_decision_acceleration: the own-lane leader of Road.neighbour_vehicles
        if bool(in_progress.any()):
            rows = in_progress.nonzero(as_tuple=True)[0]
            acceleration = acceleration.clone()
            front, _ = self._lane_neighbours(env[rows], slot[rows], own_target[rows], seen[rows])
            acceleration[rows] = torch.minimum(acceleration[rows], self._idm(env[rows], slot[rows], front, slot[rows]))
        accel = acceleration_pmf(acceleration, self.grid_mps2, sigma_mps2=params.sigma_mps2,
                                 prune_below=params.prune_below, tail_mass=params.accel_tail_mass)
        left, right = probabilities
        pmf = torch.cat([left[:, None], right[:, None], (1.0 - (left + right))[:, None] * accel], dim=1)
        return pmf, torch.stack(side_lanes, dim=1), torch.stack(available, dim=1), acceleration

    def _decision_acceleration(self, env: torch.Tensor, slot: torch.Tensor, own_target: torch.Tensor,
                               seen: torch.Tensor) -> torch.Tensor:
        """``idm_decision_acceleration`` with own target lane ``own_target`` (min over both lanes while changing)."""
        front, _ = self.sim.neighbours(env, slot, self.sim.lane[env, slot])
        acceleration = self._idm(env, slot, front, slot)
        changing = own_target != self.sim.lane[env, slot]
        target_front, _ = self._lane_neighbours(env, slot, own_target, seen)
        return torch.where(changing, torch.minimum(acceleration, self._idm(env, slot, target_front, slot)),
                           acceleration)

    def _lane_neighbours(self, env: torch.Tensor, slot: torch.Tensor, lane: torch.Tensor, seen: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``NaturalisticVehicle.lane_neighbours``: front / rear slots in ``lane``, counting merging vehicles.

        A vehicle whose (seen) target lane is ``lane`` while its lane is another one occupies ``lane`` at its
        current x: it replaces ``Road.neighbour_vehicles``' front (rear) if strictly nearer, the first such
        vehicle in slot order on ties (the reference's sequential scan).
        """
        sim = self.sim
        front, rear = sim.neighbours(env, slot, lane)
        x = sim.x[env]  # [M, N]
        own = sim.x[env, slot][:, None]
        slots = torch.arange(sim.slots, device=sim.device)
        merging = (sim.present[env] & (slots[None, :] != slot[:, None]) & (seen == lane[:, None])
                   & (sim.lane[env] != lane[:, None]))
        inf = torch.full_like(own, math.inf)
        front_x = torch.where(front[:, None] >= 0, x.gather(1, front.clamp(min=0)[:, None]), inf)
        rear_x = torch.where(rear[:, None] >= 0, x.gather(1, rear.clamp(min=0)[:, None]), -inf)
        ahead = merging & (x >= own) & (x < front_x)
        behind = merging & (x < own) & (x > rear_x)
        nearest_ahead = torch.where(ahead, x, inf).min(dim=1, keepdim=True).values
        nearest_behind = torch.where(behind, x, -inf).max(dim=1, keepdim=True).values
        merged_front = torch.where(ahead & (x == nearest_ahead), slots, sim.slots).min(dim=1).values
        merged_rear = torch.where(behind & (x == nearest_behind), slots, sim.slots).min(dim=1).values
        front = torch.where(merged_front < sim.slots, merged_front, front)
        rear = torch.where(merged_rear < sim.slots, merged_rear, rear)
        return front, rear

    def _idm(self, env: torch.Tensor, follower: torch.Tensor, leader: torch.Tensor, deciding: torch.Tensor
             ) -> torch.Tensor:
        """``NaturalisticVehicle._idm``: IDM acceleration of ``follower`` behind ``leader`` (slots; ``-1``: none).

        :func:`safetybed.sims.idm.idm_acceleration` (Treiber et al. 2000) with bumper gaps and the closing speed
        projected on the follower's heading; the desired speed is the deciding vehicle's own target speed for
        itself and the spec's for every other vehicle, capped by the speed limit. No follower: 0; no leader: the
        free-road acceleration.
        """
        sim = self.sim
        f, lead = follower.clamp(min=0), leader.clamp(min=0)
        raw_speed, heading = sim.speed[env, f], sim.heading[env, f]
        own_desired = torch.clamp(sim.target_speed[env, f], max=sim.speed_limit_mps)
        desired = torch.where(follower == deciding, own_desired, torch.full_like(own_desired, self.others_desired_mps))
        speed = torch.clamp(raw_speed, min=0.0)
        free = self.max_accel_mps2 * (1.0 - libm_pow(speed / torch.clamp(desired, min=MIN_DESIRED_SPEED_MPS),
                                                     self.delta))
        lead_speed, lead_heading = sim.speed[env, lead], sim.heading[env, lead]
        cos_h, sin_h = elementwise(torch.cos, heading), elementwise(torch.sin, heading)
        lead_cos, lead_sin = elementwise(torch.cos, lead_heading), elementwise(torch.sin, lead_heading)
        closing = (raw_speed * cos_h - lead_speed * lead_cos) * cos_h + (raw_speed * sin_h - lead_speed * lead_sin) * sin_h
        gap = sim.x[env, lead] - sim.x[env, f] - 0.5 * (VEHICLE_LENGTH_M + VEHICLE_LENGTH_M)
        desired_gap = self.min_gap_m + torch.clamp(
            speed * self.time_headway_s + speed * closing / self.gap_denominator, min=0.0)
        interaction = self.max_accel_mps2 * libm_pow(desired_gap / torch.clamp(gap, min=MIN_GAP_M), 2.0)
        acceleration = torch.where(leader >= 0, free - interaction, free)
        return torch.where(follower >= 0, acceleration, torch.zeros_like(acceleration))


__all__ = ["SOURCE_NAMES", "SOURCE_NONE", "SOURCE_OVERRIDE", "SOURCE_SAMPLED", "SOURCE_SCRIPT",
           "NaturalisticTraffic", "acceleration_pmf", "lane_change_probability",
           "pairwise_sum"]
