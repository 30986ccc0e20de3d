"""The ``[classic]`` section of a scenario spec: gymnasium classic-control reference tasks.

``cartpole`` is gymnasium's CartPole (Barto, Sutton & Anderson 1983), the task of the policy-smoothing
certificates (Kumar, Levine & Feizi 2022) with ``episode_steps = 200`` as CartPole-v0; ``pendulum`` is
gymnasium's Pendulum swing-up; ``inverted_double_pendulum`` is gymnasium's MuJoCo InvertedDoublePendulum-v5
(needs the ``mujoco`` extra), the benchmark's harder continuous task. The adapter is :mod:`safetybed.sims.classic`.

Example::

    [classic]
    gravity_mps2 = 12.0          # a heavier world than the task's default
    upright_tolerance_rad = 0.2  # pendulum: success = |angle| below this at the step
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from safetybed.spec.base import StrictModel

ClassicTask = Literal["cartpole", "pendulum", "inverted_double_pendulum"]


class ClassicSpec(StrictModel):
    """Physics knobs of a classic-control task (defaults reproduce gymnasium's tasks exactly)."""

    #: Gravitational acceleration [m/s^2]; ``None`` keeps the task's own value (CartPole 9.8, Pendulum 10.0,
    #: InvertedDoublePendulum 9.81).
    gravity_mps2: float | None = Field(None, gt=0, le=100)
    #: Pendulum only: the pendulum counts as upright (``success``) while |angle from vertical| < this [rad].
    upright_tolerance_rad: float = Field(0.2, gt=0, le=math.pi)
