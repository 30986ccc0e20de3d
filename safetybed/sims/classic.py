"""Classic-control adapter: gymnasium's CartPole and Pendulum as safetybed scenarios.

CartPole is Barto, Sutton & Anderson 1983 (gymnasium ``CartPoleEnv``, +1 reward per step including the
failing one); the policy-smoothing paper certifies it with a 200-step horizon (Kumar, Levine & Feizi 2022,
CartPole-v0), so ``scenarios/classic/cartpole.toml`` sets ``episode_steps = 200`` and the return lies in
``[0, 200]``. Pendulum is gymnasium's swing-up ``PendulumEnv`` (reward ``-(angle^2 + 0.1 rate^2 +
0.001 torque^2)`` per step).

Spaces are gymnasium's own: CartPole observes ``[cart position [m], cart velocity [m/s], pole angle [rad],
pole angular velocity [rad/s]]`` and acts with ``Discrete(2)`` (push left / right, 10 N); Pendulum observes
``[cos angle, sin angle, angular velocity [rad/s]]`` and acts with ``Box(-2, 2, (1,))``, a torque [N m].

``info["safety"]`` (see :mod:`safetybed.sims.base`):

==========  =========================================================  =========================================
key         CartPole                                                   Pendulum
==========  =========================================================  =========================================
collision   the pole fell past 12 deg or the cart left the +-2.4 m     never
            track (gymnasium's termination) before the time limit
success     at the last step only: survived all ``episode_steps``      this step ends with |angle| <
                                                                       ``upright_tolerance_rad`` (so the last
                                                                       step says "upright at the end")
gap_m       distance from the cart to the nearer track end [m]         ``inf`` (no obstacle)
progress_m  0 (no goal to approach)                                    0
violations  0                                                          0
ttc_s       ``inf``                                                    ``inf``
==========  =========================================================  =========================================

Both envs are truncated after ``spec.episode_steps`` control steps; the wrapped gymnasium env draws its
start state from this env's ``np_random``, so a seed fixes the episode.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv, angle_normalize

from safetybed.sims.base import empty_safety
from safetybed.spec import ScenarioSpec
from safetybed.spec.classic import ClassicSpec

#: Largest per-step cost of gymnasium's Pendulum: pi^2 + 0.1 * 8^2 + 0.001 * 2^2 (angle, rate, torque).
PENDULUM_MAX_COST = math.pi**2 + 0.1 * 8.0**2 + 0.001 * 2.0**2


class ClassicControlEnv(gym.Env):
    """CartPole or Pendulum with a step limit, safety metrics and a declared return range.

    Args:
        task: ``"cartpole"`` or ``"pendulum"``.
        section: the scenario's ``[classic]`` section.
        episode_steps: control steps before ``truncated``.
        per_step_log: also return ``info["step_log"]``.
    """

    metadata = {"render_modes": [], "render_fps": 50}

    def __init__(self, *, task: str, section: ClassicSpec, episode_steps: int, per_step_log: bool = False):
        if task not in ("cartpole", "pendulum"):
            raise ValueError(f"task: expected cartpole|pendulum, got {task!r}")
        if episode_steps < 1:
            raise ValueError(f"episode_steps: expected >= 1, got {episode_steps}")
        self.task_name = task
        self.section = section
        self.episode_steps = int(episode_steps)
        self.per_step_log = bool(per_step_log)
        self.render_mode = None
        if task == "cartpole":
            self.inner: CartPoleEnv | PendulumEnv = CartPoleEnv()
            if section.gravity_mps2 is not None:
                self.inner.gravity = section.gravity_mps2
            #: Bounds of the episode return: +1 per step.
            self.return_range: tuple[float, float] = (0.0, float(episode_steps))
        else:
            gravity = 10.0 if section.gravity_mps2 is None else section.gravity_mps2
            self.inner = PendulumEnv(g=gravity)
            self.return_range = (-PENDULUM_MAX_COST * episode_steps, 0.0)
        self.observation_space = self.inner.observation_space
        self.action_space = self.inner.action_space
        self._steps: int | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.inner.np_random = self.np_random  # one generator: the start state comes from this env's seed
        observation, _ = self.inner.reset(options=options)
        self._steps = 0
        safety = empty_safety()
        if self.task_name == "cartpole":
            safety["gap_m"] = self._track_gap_m()
        else:
            safety["success"] = self._upright()
        return observation, {"safety": safety}

    def _track_gap_m(self) -> float:
        return float(self.inner.x_threshold - abs(self.inner.state[0]))

    def _upright(self) -> bool:
        return bool(abs(angle_normalize(self.inner.state[0])) < self.section.upright_tolerance_rad)

    def step(self, action: Any):
        if self._steps is None:
            raise RuntimeError("step() called before reset(); call reset(seed=...) first")
        if self.task_name == "pendulum":
            action = np.asarray(action, dtype=np.float32)
            if action.shape != self.action_space.shape or not np.all(np.isfinite(action)):
                raise ValueError(f"action: expected a finite array of shape {self.action_space.shape}, "
                                 f"got {action.tolist()}")
        elif not self.action_space.contains(action):
            raise ValueError(f"action: expected 0 or 1 (Discrete(2)), got {action!r}")
        observation, reward, terminated, _, _ = self.inner.step(action)
        self._steps += 1
        truncated = self._steps >= self.episode_steps
        safety = empty_safety()
        if self.task_name == "cartpole":
            safety.update(collision=bool(terminated), success=truncated and not terminated,
                          gap_m=self._track_gap_m())
            log = {"cart_position_m": float(self.inner.state[0]), "pole_angle_rad": float(self.inner.state[2])}
        else:
            safety["success"] = self._upright()
            log = {"angle_rad": float(angle_normalize(self.inner.state[0])),
                   "angular_velocity_radps": float(self.inner.state[1]),
                   "torque_nm": float(self.inner.last_u)}
        info: dict[str, Any] = {"safety": safety}
        if self.per_step_log:
            info["step_log"] = log
        return observation, float(reward), bool(terminated), truncated, info

    def close(self) -> None:
        self.inner.close()


def make_classic_env(spec: ScenarioSpec) -> ClassicControlEnv:
    """Build the classic-control env of a ``simulator = "classic"`` scenario."""
    if spec.simulator != "classic":
        raise ValueError(f"simulator: expected 'classic', got {spec.simulator!r}")
    return ClassicControlEnv(task=spec.task, section=spec.section(), episode_steps=spec.episode_steps,
                             per_step_log=spec.metrics.per_step_log)
