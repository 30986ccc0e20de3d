"""The maneuver challenge of a background vehicle's actions, by a short kinematic look-ahead.

NADE (Feng et al. 2021, *Nat. Commun.* 12:748; ``research/cav_eval.md`` §1 item 2, §6.3) scores every action ``u``
of a candidate background vehicle (BV) by its *maneuver challenge*: the probability that the AV crashes after the
BV takes ``u``, under an AV surrogate model. NADE looks the challenge up in tables learned offline, D2RL runs a
depth-1 search with collision checks; here it is a depth-1 kinematic look-ahead in the road's longitudinal frame,
vectorised over candidates, surrogates and the whole action set (33 actions with the default grid):

* acceleration action ``2 + i``: the BV keeps its lane and holds ``grid[i]`` for ``lookahead_s`` (speed >= 0);
* lane-change action (0 = left, lane - 1; 1 = right, lane + 1): the BV is in the target lane from ``t = 0`` and
  holds its lane-change acceleration (the IDM acceleration the driver holds, ~0); a change to a lane that does
  not exist is a no-op (the BV keeps its lane with that acceleration).

Then, with the ego's lane ``E``:

* BV in ``E`` ahead of the ego: the surrogate ego holds its current command for ``reaction_time_s`` (its control
  step: it decided at the same instant as the BV, without seeing the manoeuvre) and then follows the BV with IDM
  (Treiber et al. 2000; :mod:`safetybed.sims.idm`), acceleration clipped to ``[-max_brake_mps2, max_accel_mps2]``,
  integrated at ``dt_s``;
* BV in ``E`` behind the ego: the ego holds its command for ``reaction_time_s``, then keeps its speed (it does
  not react to followers);
* a lane change into ``E`` whose BV overlaps the ego longitudinally at any time in ``[0, lane_change_s]`` (a
  sideswipe) is a crash;
* every other case (the BV ends outside ``E``) has challenge 0.

A crash is a bumper gap <= 0 at any step of the horizon. The surrogates are deterministic, so the challenge is 0
or 1 and NADE's ``P_SM(AV action | s)`` is 1 (folded into the challenge, see :mod:`safetybed.sims.testing.nade`).
The look-ahead is pairwise (ego and one BV): other vehicles are ignored, as in NADE's per-vehicle decomposition.

References: Feng, Yan, Sun, Feng & Liu (2021), *Nat. Commun.* 12:748 (NADE); Feng et al. (2023), *Nature* 615:620
(D2RL); Treiber, Hennecke & Helbing (2000), *Phys. Rev. E* 62:1805 (IDM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from safetybed.sims.highway_driver import ACTION_LEFT, ACTION_RIGHT, FIRST_ACCELERATION_ACTION
from safetybed.sims.idm import IDMParams, idm_acceleration

VEHICLE_LENGTH_M = 5.0  # [m] highway-env's Vehicle.LENGTH


@dataclass(frozen=True)
class Surrogate:
    """A deterministic IDM model of the ego, used only to score manoeuvres (not to drive the ego)."""

    name: str
    max_accel_mps2: float  # IDM a [m/s^2]
    comfort_decel_mps2: float  # IDM b [m/s^2]
    min_gap_m: float  # IDM s0, bumper to bumper [m]
    time_headway_s: float  # IDM T [s]
    desired_speed_mps: float  # IDM v0 [m/s]
    delta: float = 4.0  # IDM acceleration exponent [-]
    max_brake_mps2: float = 4.0  # strongest braking the surrogate applies [m/s^2] (NADE's AV range is [-4, 2])
    reaction_time_s: float = 1.0  # the ego holds its current command this long before reacting [s]

    def __post_init__(self) -> None:
        for name in ("max_accel_mps2", "comfort_decel_mps2", "time_headway_s", "desired_speed_mps", "delta",
                     "max_brake_mps2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Surrogate.{name}: expected a finite number > 0, got {value!r}")
        for name in ("min_gap_m", "reaction_time_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Surrogate.{name}: expected a finite number >= 0, got {value!r}")


#: Row 0 is NADE's surrogate: D2RL's AV under test (IDM a = 1.5, b = 2 m/s^2, s0 = 2 m, T = 1.2 s, v0 = 33.33 m/s;
#: ``research/cav_eval.md`` §4.1), braking down to -4 m/s^2 (NADE's AV acceleration range). Rows 1 and 2 bracket
#: it for AdaTE's surrogate mixture: a cautious driver (longer gaps, harder emergency braking) and an aggressive one
#: (short gaps, weaker brakes).
DEFAULT_SURROGATES: tuple[Surrogate, ...] = (
    Surrogate("d2rl_av_idm", max_accel_mps2=1.5, comfort_decel_mps2=2.0, min_gap_m=2.0, time_headway_s=1.2,
              desired_speed_mps=33.33, max_brake_mps2=4.0),
    Surrogate("cautious_idm", max_accel_mps2=1.0, comfort_decel_mps2=1.5, min_gap_m=3.0, time_headway_s=1.8,
              desired_speed_mps=30.0, max_brake_mps2=5.0),
    Surrogate("aggressive_idm", max_accel_mps2=2.0, comfort_decel_mps2=3.0, min_gap_m=1.0, time_headway_s=0.8,
              desired_speed_mps=36.0, max_brake_mps2=3.0),
)


@dataclass(frozen=True)
class EgoKinematics:
    """The ego in the road's longitudinal frame at the decision instant."""

    position_m: float  # longitudinal coordinate of the centre along the road [m]
    speed_mps: float
    lane: int  # lane index (the target lane while a lane change is in progress)
    length_m: float = VEHICLE_LENGTH_M
    acceleration_mps2: float = 0.0  # command held during the reaction time [m/s^2]


@dataclass(frozen=True)
class VehicleKinematics:
    """A candidate background vehicle in the same frame."""

    position_m: float  # longitudinal coordinate of the centre [m]
    speed_mps: float
    lane: int  # lane index (the target lane while a lane change is in progress)
    length_m: float = VEHICLE_LENGTH_M
    lane_change_acceleration_mps2: float = 0.0  # acceleration held during a lane-change action [m/s^2]


def _constant_acceleration(position_m: np.ndarray, speed_mps: np.ndarray, acceleration_mps2: np.ndarray,
                           time_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position and speed after ``time_s`` at a held acceleration, stopping (not reversing) at speed 0."""
    stop_s = np.where(acceleration_mps2 < 0, speed_mps / np.maximum(-acceleration_mps2, 1e-12), np.inf)
    moving_s = np.minimum(time_s, stop_s)
    return (position_m + speed_mps * moving_s + 0.5 * acceleration_mps2 * moving_s ** 2,
            np.maximum(speed_mps + acceleration_mps2 * moving_s, 0.0))


def maneuver_challenge(ego: EgoKinematics, vehicles: Sequence[VehicleKinematics], *, lanes: int,
                       acceleration_grid_mps2: np.ndarray, surrogates: Sequence[Surrogate] = DEFAULT_SURROGATES,
                       lookahead_s: float = 2.0, dt_s: float = 0.1, lane_change_s: float = 1.0) -> np.ndarray:
    """Challenge of every action of every vehicle for every surrogate: array ``(len(vehicles), m, A)`` of 0/1.

    ``A = 2 + len(acceleration_grid_mps2)`` (action 0 left, 1 right, ``2 + i`` acceleration ``grid[i]``), ``m =
    len(surrogates)``; ``lanes`` is the number of lanes (valid lane indices ``0 .. lanes - 1``). See the module
    docstring for the model (Feng et al. 2021 maneuver challenge, by a depth-1 look-ahead as in D2RL).
    """
    grid = np.asarray(acceleration_grid_mps2, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
        raise ValueError(f"acceleration_grid_mps2: expected a non-empty 1-D array of finite numbers, got {grid!r}")
    if not surrogates:
        raise ValueError("surrogates: expected at least one surrogate, got none")
    if not (math.isfinite(lookahead_s) and lookahead_s > 0 and math.isfinite(dt_s) and 0 < dt_s <= lookahead_s):
        raise ValueError(f"lookahead_s, dt_s: expected 0 < dt_s <= lookahead_s, got {lookahead_s!r}, {dt_s!r}")
    if not (math.isfinite(lane_change_s) and lane_change_s >= 0):
        raise ValueError(f"lane_change_s: expected a finite number >= 0, got {lane_change_s!r}")
    if lanes < 1:
        raise ValueError(f"lanes: expected >= 1, got {lanes!r}")
    actions = FIRST_ACCELERATION_ACTION + grid.size
    if not vehicles:
        return np.zeros((0, len(surrogates), actions))

    position = np.array([v.position_m for v in vehicles], dtype=np.float64)[:, None]  # (N, 1)
    speed = np.array([max(v.speed_mps, 0.0) for v in vehicles], dtype=np.float64)[:, None]
    lane = np.array([v.lane for v in vehicles], dtype=np.int64)[:, None]
    half_length = 0.5 * (np.array([v.length_m for v in vehicles], dtype=np.float64)[:, None] + ego.length_m)
    lane_change_accel = np.array([v.lane_change_acceleration_mps2 for v in vehicles], dtype=np.float64)[:, None]

    # Lane and held acceleration after each action, shape (N, A).
    shift = np.zeros(actions, dtype=np.int64)
    shift[ACTION_LEFT], shift[ACTION_RIGHT] = -1, 1
    target = lane + shift
    exists = (target >= 0) & (target < lanes)
    lane_after = np.where(exists, target, lane)
    changes_lane = exists & (shift != 0)
    accel = np.empty((len(vehicles), actions))
    accel[:, :FIRST_ACCELERATION_ACTION] = lane_change_accel
    accel[:, FIRST_ACCELERATION_ACTION:] = grid
    in_ego_lane = lane_after == ego.lane
    ahead = np.broadcast_to(position >= ego.position_m, in_ego_lane.shape)
    follows_bv = in_ego_lane & ahead  # the ego follows the BV with IDM
    bv_follows = in_ego_lane & ~ahead  # the BV follows the ego
    cuts_in = in_ego_lane & changes_lane

    # Surrogate parameters, shape (m, 1, 1), broadcast against (N, A).
    def column(name: str) -> np.ndarray:
        return np.array([getattr(s, name) for s in surrogates], dtype=np.float64)[:, None, None]

    idm = IDMParams(max_accel_mps2=column("max_accel_mps2"), comfort_decel_mps2=column("comfort_decel_mps2"),
                    min_gap_m=column("min_gap_m"), time_headway_s=column("time_headway_s"), delta=column("delta"))
    desired_speed = column("desired_speed_mps")
    max_brake, reaction = column("max_brake_mps2"), column("reaction_time_s")

    steps = int(round(lookahead_s / dt_s))
    shape = (len(surrogates), len(vehicles), actions)
    follower_position = np.full(shape, ego.position_m)  # ego following the BV (IDM after the reaction time)
    follower_speed = np.full(shape, max(ego.speed_mps, 0.0))
    free_position = np.full((len(surrogates), 1, 1), ego.position_m)  # ego ignoring the BV behind it
    free_speed = np.full((len(surrogates), 1, 1), max(ego.speed_mps, 0.0))
    crashed = np.zeros(shape, dtype=bool)
    for k in range(steps + 1):
        time_s = k * dt_s
        bv_position, bv_speed = _constant_acceleration(position, speed, accel, np.asarray(time_s))
        gap_ahead = bv_position - follower_position - half_length
        gap_behind = free_position - bv_position - half_length
        crashed |= follows_bv & (gap_ahead <= 0.0)
        crashed |= bv_follows & (gap_behind <= 0.0)
        if time_s <= lane_change_s + 1e-9:  # sideswipe while the BV moves across into the ego's lane
            crashed |= cuts_in & (np.abs(bv_position - free_position) < half_length)
        if k == steps:
            break
        reacting = time_s >= reaction - 1e-9
        idm_accel = np.clip(idm_acceleration(idm, speed_mps=follower_speed, desired_speed_mps=desired_speed,
                                             gap_m=gap_ahead, closing_speed_mps=follower_speed - bv_speed),
                            -max_brake, idm.max_accel_mps2)
        follower_accel = np.where(reacting, idm_accel, ego.acceleration_mps2)
        free_accel = np.where(reacting, 0.0, ego.acceleration_mps2)
        follower_position, follower_speed = _constant_acceleration(follower_position, follower_speed,
                                                                   follower_accel, np.asarray(dt_s))
        free_position, free_speed = _constant_acceleration(free_position, free_speed, free_accel,
                                                           np.asarray(dt_s))
    return crashed.transpose(1, 0, 2).astype(np.float64)


__all__ = ["DEFAULT_SURROGATES", "EgoKinematics", "Surrogate", "VehicleKinematics", "maneuver_challenge"]
