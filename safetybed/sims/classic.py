"""Classic-control adapter: gymnasium's CartPole, Pendulum and MuJoCo InvertedDoublePendulum as scenarios.

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

``inverted_double_pendulum`` is gymnasium's ``InvertedDoublePendulumEnv`` (v5, MuJoCo; the ``mujoco`` extra):
a cart on a rail balancing two linked poles, observing 9 values (cart position [m], sines and cosines of
the two hinge angles, cart velocity [m/s], hinge angular velocities [rad/s], constraint force) as float32,
acting with a force command in ``Box(-1, 1, (1,))``. Reward: 10 per step alive minus the tip's distance
and velocity penalties. ``collision``: the tip fell to 1 m or below (gymnasium's termination);
``success`` at the last step only: balanced for all ``episode_steps``; ``gap_m``: tip height above 1 m.
Its return has no finite lower bound (the velocity penalty is unbounded), so ``return_range`` starts at
``-inf`` and return certificates, which need a finite bound, are refused for it.

All envs are truncated after ``spec.episode_steps`` control steps; the wrapped gymnasium env draws its
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


#: InvertedDoublePendulum-v5: reward per step while the tip is above ``IDP_FALL_HEIGHT_M`` (before penalties).
IDP_ALIVE_REWARD = 10.0
#: InvertedDoublePendulum-v5 terminates when the tip's height is at or below this [m].
IDP_FALL_HEIGHT_M = 1.0


def _inverted_double_pendulum() -> Any:
    try:
        from gymnasium.envs.mujoco.inverted_double_pendulum_v5 import InvertedDoublePendulumEnv
    except ImportError as error:  # mujoco is an optional extra
        raise ImportError("task inverted_double_pendulum needs MuJoCo: pip install 'safetybed[mujoco]' "
                          f"({error})") from None
    return InvertedDoublePendulumEnv()


class ClassicControlEnv(gym.Env):
    """CartPole or Pendulum with a step limit, safety metrics and a declared return range.

    Args:
        task: ``"cartpole"``, ``"pendulum"`` or ``"inverted_double_pendulum"``.
        section: the scenario's ``[classic]`` section.
        episode_steps: control steps before ``truncated``.
        per_step_log: also return ``info["step_log"]``.
    """

    metadata = {"render_modes": [], "render_fps": 50}

    def __init__(self, *, task: str, section: ClassicSpec, episode_steps: int, per_step_log: bool = False):
        if task not in ("cartpole", "pendulum", "inverted_double_pendulum"):
            raise ValueError(f"task: expected cartpole|pendulum|inverted_double_pendulum, got {task!r}")
        if episode_steps < 1:
            raise ValueError(f"episode_steps: expected >= 1, got {episode_steps}")
        self.task_name = task
        self.section = section
        self.episode_steps = int(episode_steps)
        self.per_step_log = bool(per_step_log)
        self.render_mode = None
        if task == "cartpole":
            self.inner: Any = CartPoleEnv()
            if section.gravity_mps2 is not None:
                self.inner.gravity = section.gravity_mps2
            #: Bounds of the episode return: +1 per step.
            self.return_range: tuple[float, float] = (0.0, float(episode_steps))
        elif task == "inverted_double_pendulum":
            self.inner = _inverted_double_pendulum()
            if section.gravity_mps2 is not None:
                self.inner.model.opt.gravity[2] = -section.gravity_mps2
            self.return_range = (-math.inf, IDP_ALIVE_REWARD * episode_steps)
        else:
            gravity = 10.0 if section.gravity_mps2 is None else section.gravity_mps2
            self.inner = PendulumEnv(g=gravity)
            self.return_range = (-PENDULUM_MAX_COST * episode_steps, 0.0)
        self.observation_space = self.inner.observation_space
        if task == "inverted_double_pendulum":  # MuJoCo observes float64; policies and buffers use float32
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, self.inner.observation_space.shape, np.float32)
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
        elif self.task_name == "inverted_double_pendulum":
            observation = observation.astype(np.float32)
            safety["gap_m"] = self._tip_height_m() - IDP_FALL_HEIGHT_M
        else:
            safety["success"] = self._upright()
        return observation, {"safety": safety}

    def _tip_height_m(self) -> float:
        return float(self.inner.data.site_xpos[0][2])

    def _track_gap_m(self) -> float:
        return float(self.inner.x_threshold - abs(self.inner.state[0]))

    def _upright(self) -> bool:
        return bool(abs(angle_normalize(self.inner.state[0])) < self.section.upright_tolerance_rad)

    def step(self, action: Any):
        if self._steps is None:
            raise RuntimeError("step() called before reset(); call reset(seed=...) first")
        if self.task_name in ("pendulum", "inverted_double_pendulum"):
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
        elif self.task_name == "inverted_double_pendulum":
            observation = observation.astype(np.float32)
            safety.update(collision=bool(terminated), success=truncated and not terminated,
                          gap_m=self._tip_height_m() - IDP_FALL_HEIGHT_M)
            log = {"cart_position_m": float(self.inner.data.qpos[0]), "tip_height_m": self._tip_height_m()}
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
