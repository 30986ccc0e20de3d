"""The Intelligent Driver Model and the MOBIL lane-change incentive, vectorised (the one home of both laws).

IDM (Treiber, Hennecke & Helbing 2000, *Phys. Rev. E* 62:1805), the acceleration of a follower at speed ``v``
behind a leader at bumper-to-bumper gap ``s``, closing at ``dv`` (follower speed minus leader speed)::

    a = a_max [1 - (v / v0)^delta - (s* / s)^2],   s* = s0 + max(0, v T + v dv / (2 sqrt(a_max b)))

with ``a_max`` the maximum acceleration, ``b`` the comfortable deceleration, ``s0`` the jam distance, ``T`` the
desired time gap, ``v0`` the desired speed and ``delta`` the acceleration exponent. A free road is ``s = inf``
(the interaction term is then exactly 0). Computed as ``a_max [1 - (v / v0)^delta] - a_max (s* / s)^2``: that is
the operation order of the simulators' drivers, so their results are unchanged to the last bit.

MOBIL (Kesting, Treiber & Helbing 2007, *Transp. Res. Rec.* 1999:86-94): a change of lane is *safe* when the new
follower (here also the changing vehicle itself) need not brake harder than ``b_safe`` (eq. 2), and its
incentive is (eq. 3, without the bias term)::

    gain = (a~_c - a_c) + p [(a~_n - a_n) + (a~_o - a_o)]

``c`` the changing vehicle, ``n`` the new and ``o`` the old follower, ``~`` after the change, ``p`` the
politeness. The caller compares the gain with its threshold (deterministic MOBIL) or maps it to a probability
(the naturalistic driver).

Every function works on Python floats and on numpy arrays of any broadcastable shapes (parameters included: a
batch of drivers is an :class:`IDMParams` of arrays). Only elementwise arithmetic, ``maximum`` and ``sqrt``
are used, with no branching on values, so the functions port to torch as they are. Guards: speeds below 0 count
as 0, ``v0`` is floored at :data:`MIN_DESIRED_SPEED_MPS` and ``s`` at :data:`MIN_GAP_M` (overlapping vehicles
give a finite, very large braking demand). Clipping to a vehicle's braking limit is the caller's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_GAP_M = 0.1  #: [m] floor on the IDM gap: an overlap gives a finite, very large braking demand
MIN_DESIRED_SPEED_MPS = 1e-3  #: [m/s] floor on the desired speed v0 (a speed limit of 0 divides by it)


@dataclass(frozen=True, kw_only=True)
class IDMParams:
    """Intelligent Driver Model parameters of one driver (floats) or a batch of drivers (broadcastable arrays).

    The desired speed ``v0`` is not a field: it depends on the situation (a vehicle's own target, capped by the
    lane's speed limit) and is an argument of :func:`idm_acceleration`.
    """

    max_accel_mps2: Any  #: a_max: maximum acceleration [m/s^2], > 0
    comfort_decel_mps2: Any  #: b: comfortable deceleration [m/s^2], > 0
    min_gap_m: Any  #: s0: jam distance, bumper to bumper [m], >= 0
    time_headway_s: Any  #: T: desired time gap [s], >= 0
    delta: Any = 4.0  #: acceleration exponent [-], > 0 (4 in Treiber et al. 2000)

    def __post_init__(self) -> None:
        for name, lowest, strict in (("max_accel_mps2", 0.0, True), ("comfort_decel_mps2", 0.0, True),
                                     ("min_gap_m", 0.0, False), ("time_headway_s", 0.0, False),
                                     ("delta", 0.0, True)):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            ok = np.isfinite(value) & ((value > lowest) if strict else (value >= lowest))
            if not np.all(ok):
                raise ValueError(f"IDMParams.{name}: expected finite numbers {'>' if strict else '>='} {lowest:g}, "
                                 f"got {getattr(self, name)!r}")

    @classmethod
    def from_spec(cls, driver: Any) -> IDMParams:
        """The ``idm_*`` fields of a driver spec (``[highway.ego]`` or ``[highway.driver]``)."""
        return cls(max_accel_mps2=driver.idm_max_accel_mps2, comfort_decel_mps2=driver.idm_comfort_decel_mps2,
                   min_gap_m=driver.idm_min_gap_m, time_headway_s=driver.idm_time_headway_s,
                   delta=driver.idm_delta)


def free_road_acceleration(*, speed_mps: Any, desired_speed_mps: Any, max_accel_mps2: Any,
                           delta: Any = 4.0) -> Any:
    """IDM acceleration on a free road [m/s^2]: ``a_max [1 - (v / v0)^delta]`` (Treiber et al. 2000).

    Equal to :func:`idm_acceleration` with ``gap_m = inf``; needs only these three parameters.
    """
    return _free_road(np.maximum(speed_mps, 0.0), desired_speed_mps, max_accel_mps2, delta)


def idm_acceleration(params: IDMParams, *, speed_mps: Any, desired_speed_mps: Any, gap_m: Any = math.inf,
                     closing_speed_mps: Any = 0.0) -> Any:
    """IDM acceleration [m/s^2] of a follower (Treiber et al. 2000; equation in the module docstring).

    Args:
        params: the driver's (or drivers') parameters.
        speed_mps: follower speed ``v`` [m/s] (below 0 counts as 0).
        desired_speed_mps: desired speed ``v0`` [m/s] (floored at :data:`MIN_DESIRED_SPEED_MPS`).
        gap_m: bumper-to-bumper gap ``s`` to the leader [m]; ``inf`` for a free road (floored at
            :data:`MIN_GAP_M`).
        closing_speed_mps: ``dv``, follower speed minus leader speed [m/s] (its effect on ``s*`` is
            multiplied by ``v``; irrelevant on a free road).

    All arguments broadcast against each other and against the fields of ``params``.
    """
    speed = np.maximum(speed_mps, 0.0)
    # One expression: a large batch keeps few temporaries alive (the testbed builds from 75k scenarios at once).
    interaction = params.max_accel_mps2 * (_desired_gap(params, speed, closing_speed_mps)
                                           / np.maximum(gap_m, MIN_GAP_M)) ** 2
    return _free_road(speed, desired_speed_mps, params.max_accel_mps2, params.delta) - interaction


def _desired_gap(params: IDMParams, speed: Any, closing_speed_mps: Any) -> Any:
    """``s* = s0 + max(0, v T + v dv / (2 sqrt(a_max b)))`` [m] for a speed already clipped at 0."""
    return params.min_gap_m + np.maximum(0.0, speed * params.time_headway_s + speed * closing_speed_mps / (
        2.0 * np.sqrt(params.max_accel_mps2 * params.comfort_decel_mps2)))


def _free_road(speed: Any, desired_speed_mps: Any, max_accel_mps2: Any, delta: Any) -> Any:
    """``a_max [1 - (v / v0)^delta]`` for a speed already clipped at 0."""
    return max_accel_mps2 * (1.0 - (speed / np.maximum(desired_speed_mps, MIN_DESIRED_SPEED_MPS)) ** delta)


def mobil_incentive(*, self_before_mps2: Any, self_after_mps2: Any, new_follower_before_mps2: Any,
                    new_follower_after_mps2: Any, old_follower_before_mps2: Any, old_follower_after_mps2: Any,
                    politeness: Any) -> Any:
    """MOBIL incentive [m/s^2] of a lane change (Kesting et al. 2007, eq. 3, no bias)::

        gain = (a~_c - a_c) + p [(a~_n - a_n) + (a~_o - a_o)]

    ``self`` is the changing vehicle (c), ``new_follower`` the follower in the target lane (n), ``old_follower``
    the follower in the current lane (o); ``before`` / ``after`` the IDM accelerations before / after the change
    (0 for a missing follower). ``politeness`` p [-] weighs the followers' advantage against one's own.
    """
    return (self_after_mps2 - self_before_mps2 + politeness * (
        new_follower_after_mps2 - new_follower_before_mps2 + old_follower_after_mps2 - old_follower_before_mps2))


def mobil_is_safe(*, self_after_mps2: Any, new_follower_after_mps2: Any, max_braking_mps2: Any) -> Any:
    """MOBIL's safety criterion (Kesting et al. 2007, eq. 2), extended to the changing vehicle itself.

    True where neither the new follower nor the changing vehicle (behind its new leader) would have to brake
    harder than ``max_braking_mps2`` (b_safe > 0) after the change.
    """
    return (new_follower_after_mps2 >= -max_braking_mps2) & (self_after_mps2 >= -max_braking_mps2)


__all__ = ["MIN_DESIRED_SPEED_MPS", "MIN_GAP_M", "IDMParams", "free_road_acceleration", "idm_acceleration",
           "mobil_incentive", "mobil_is_safe"]
