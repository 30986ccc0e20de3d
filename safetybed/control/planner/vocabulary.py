"""The planning vocabulary of the highway trajectory-scoring planner: lateral targets x speed profiles.

Hydra-MDP and Centaur score a fixed vocabulary of ego trajectories (K-means over human driving, k = 4096-8192;
``research/centaur_dsac.md`` §1.1). Our highway ego follows lanes (``safetybed.sims.highway_obs``: an acceleration
command and a lane-change request), so the vocabulary is built from what it can execute instead:

* **lateral targets** (:data:`LATERAL_TARGETS`): keep the lane; change left or right now; change left or right
  late (requested ``late_start_s`` into the horizon, so only part of the change is done by its end). Late changes
  give the "slight-left" / "slight-right" directions of Centaur's five clusters;
* **speed profiles**: an acceleration held for the first half of the horizon, then a second one, each from
  ``accelerations_mps2`` (4 x 4 = 16 profiles by default);

so ``K = 5 x 16 = 80`` trajectories over ``horizon_s = 4 s``. Lateral motion is modelled as a linear ramp over
``lane_change_s`` (a choice: highway-env's lane-following controller takes ~2 s to cross a 4 m lane at highway
speed); the lateral endpoint at the horizon [m] is what Cluster Entropy bins
(:func:`safetybed.control.planner.cluster_entropy.direction_clusters`).

Receding-horizon execution: the planner acts with the *first step* of its chosen trajectory (:meth:`Vocabulary.
first_actions`): the first acceleration as the command ``a[0] = accel / accel_scale``, and a lane request
``a[1] = -1`` / ``+1`` for a change now (a late change starts with no request), then plans again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

#: (name, lane shift (-1 left, +1 right), start of the change [s] as a fraction of the horizon: 0 now, None never).
LATERAL_TARGETS = (("keep", 0, None), ("left", -1, 0.0), ("right", 1, 0.0), ("late-left", -1, 0.75),
                   ("late-right", 1, 0.75))


@dataclass(frozen=True)
class Vocabulary:
    """The candidate trajectories (module docstring); every array is indexed by trajectory ``j`` in ``[0, K)``.

    Args:
        accelerations_mps2: accelerations of each half of the horizon [m/s^2].
        horizon_s: planning horizon [s] (Centaur / NAVSIM: 4 s).
        lane_width_m: lane width [m] (highway-env's default 4 m).
        lane_change_s: duration of a lane change [s].
        accel_scale_mps2: the ego's acceleration scale [m/s^2] (``a[0] = accel / accel_scale``).
    """

    accelerations_mps2: tuple[float, ...] = (-5.0, -2.0, 0.0, 2.0)
    horizon_s: float = 4.0
    lane_width_m: float = 4.0
    lane_change_s: float = 2.0
    accel_scale_mps2: float = 5.0
    entries: list[tuple[str, int, float | None, float, float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.horizon_s > 0 or not self.lane_change_s > 0 or not self.lane_width_m > 0:
            raise ValueError(f"horizon_s, lane_change_s, lane_width_m: expected > 0, got {self.horizon_s}, "
                             f"{self.lane_change_s}, {self.lane_width_m}")
        if any(abs(a) > self.accel_scale_mps2 for a in self.accelerations_mps2):
            raise ValueError(f"accelerations_mps2: expected values within +-accel_scale_mps2 "
                             f"({self.accel_scale_mps2}), got {self.accelerations_mps2}")
        entries = [(name, shift, start, a1, a2) for (name, shift, start), a1, a2 in
                   itertools.product(LATERAL_TARGETS, self.accelerations_mps2, self.accelerations_mps2)]
        object.__setattr__(self, "entries", entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def names(self) -> list[str]:
        return [f"{name} {a1:+g}/{a2:+g} m/s^2" for name, _, _, a1, a2 in self.entries]

    def lateral_endpoints_m(self) -> np.ndarray:
        """Lateral offset at the horizon [m], positive to the right (higher lane index), ``[K]``."""
        out = np.zeros(len(self))
        for j, (_, shift, start, _, _) in enumerate(self.entries):
            if start is not None:
                done = np.clip((self.horizon_s * (1 - start)) / self.lane_change_s, 0.0, 1.0)
                out[j] = shift * self.lane_width_m * done
        return out

    def speed_profiles_mps2(self) -> np.ndarray:
        """``[K, 2]``: the acceleration of the first and of the second half of the horizon [m/s^2]."""
        return np.array([[a1, a2] for _, _, _, a1, a2 in self.entries])

    def lane_shifts(self) -> np.ndarray:
        """``[K]``: the lane each trajectory ends in, relative to the current one (-1 left, +1 right)."""
        return np.array([shift for _, shift, _, _, _ in self.entries])

    def action_plans(self, *, step_s: float) -> np.ndarray:
        """``[K, S, 2]`` float32: every trajectory as env actions over ``S = round(horizon_s / step_s)`` control
        steps of ``step_s`` [s]: the first acceleration for the first half of the steps, the second for the rest,
        and one lane request at the step its change starts (none for ``keep``)."""
        steps = round(self.horizon_s / step_s)
        if steps < 1 or abs(steps * step_s - self.horizon_s) > 1e-9:
            raise ValueError(f"step_s: expected a divisor of horizon_s = {self.horizon_s} s, got {step_s}")
        plans = np.zeros((len(self), steps, 2), dtype=np.float32)
        half = (steps + 1) // 2
        for j, (_, shift, start, a1, a2) in enumerate(self.entries):
            plans[j, :half, 0] = a1 / self.accel_scale_mps2
            plans[j, half:, 0] = a2 / self.accel_scale_mps2
            if start is not None:
                plans[j, min(round(start * steps), steps - 1), 1] = float(shift)
        return plans

    def first_actions(self) -> np.ndarray:
        """``[K, 2]`` float32: the env action of each trajectory's first step (module docstring)."""
        actions = np.zeros((len(self), 2), dtype=np.float32)
        for j, (_, shift, start, a1, _) in enumerate(self.entries):
            actions[j, 0] = a1 / self.accel_scale_mps2
            actions[j, 1] = float(shift) if start == 0.0 else 0.0
        return actions
