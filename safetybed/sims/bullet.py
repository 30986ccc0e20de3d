"""Robot-arm adapter: panda-gym's Reach, Push and PickAndPlace (v3) on pybullet in DIRECT mode.

The robot, tasks and scene are panda-gym's (Gallouédec et al. 2021, "panda-gym: Open-source goal-conditioned
environments for robotic learning", arXiv:2106.13687; ``panda_gym/envs/panda_tasks.py`` for the set-up
copied here: Panda base at ``(-0.6, 0, 0)``, gripper blocked except in pick-and-place). pybullet is
Coumans & Bai 2016-2021. This module drives panda-gym's robot and task objects itself instead of calling
``RobotTaskEnv.reset/step`` so that it can (a) make every episode a pure function of its seed, (b) apply
pushes at every physics substep and (c) measure contact forces at every substep.

Observation (flat ``Box(-10, 10)`` float32, panda-gym's declared bounds; values are clipped into them,
which can only bind for velocities above 10 m/s under extreme pushes), in this order:

================  =====================================================================================
reach (12)        ee position [m] (3), ee velocity [m/s] (3) | achieved goal = ee position (3) | desired goal (3)
push (24)         ee position (3), ee velocity (3), cube position [m] (3), cube orientation (Euler xyz)
                  [rad] (3), cube velocity [m/s] (3), cube angular velocity [rad/s] (3) | achieved goal =
                  cube position (3) | desired goal (3)
pick_and_place    as push, with the finger opening [m] after the ee velocity (index 6)
(25)
================  =====================================================================================

That is ``[robot observation, task observation, achieved goal, desired goal]``: the end effector is always
``obs[0:3]``, the achieved goal ``obs[-6:-3]`` and the desired goal ``obs[-3:]``.

Actions: panda-gym's ``Box(-1, 1)``: with ``control_type = "ee"`` an end-effector displacement target of
``0.05 m x action`` per axis (3 numbers), with ``"joints"`` a joint-angle change of ``0.05 rad x action``
(7 numbers); pick-and-place adds one gripper number (finger opening change of ``0.2 x action`` [m]).
One control step is 20 physics substeps of 2 ms (0.04 s).

Episodes: ``truncated`` after ``spec.episode_steps`` control steps; ``terminated`` at the first step that
meets the goal when ``terminate_on_success`` (panda-gym v3's own rule: ``RobotTaskEnv.step`` ends the
episode "iff the agent has reached the target"), never otherwise.

``info["safety"]`` (see :mod:`safetybed.sims.base`):

* ``success``: panda-gym's ``is_success`` (achieved goal within ``distance_threshold_m`` of the goal);
* ``violations``: 1 if the end effector ends the step outside ``[workspace_low_m, workspace_high_m]``,
  plus 1 per arm joint (the 7 revolute joints; fingers excluded, they rest at their limit) within
  ``joint_limit_margin_rad`` of a limit;
* ``collision``: the contact force on the arm exceeded ``contact_force_limit_n`` this step. The force is
  the sum of the contact normal forces on all links of the arm (against the table, the floor or the cube;
  the fingers' grasp on the cube excluded), sampled after every physics substep and averaged over the
  control step -- what a 25 Hz force sensor would read. Per-substep values of rigid contact are impulse /
  2 ms spikes (a full-speed push of the cube peaks at 340 N for one substep but averages 31 N), so the
  average is the robust measure; the single-substep peak is still logged. Touching the table or the
  cube is part of the tasks and not a collision by itself; pressing the fingers into the table is
  (270-290 N);
* ``progress_m``: distance achieved-to-desired goal at reset minus the distance now [m];
* ``gap_m``: the distance achieved-to-desired goal now [m]; ``ttc_s``: ``inf`` (not defined for an arm).

Perturbations from ``[bullet]`` (the generic observation noise and action delay wrap this env in
:func:`safetybed.sims.base.apply_perturbations`): ``mass_scale``/``friction_scale`` change the perturbed body
with ``changeDynamics`` (the cube; for reach the arm's links), and with probability ``push_probability`` per
control step a horizontal force of ``push_force_n`` [N] in a uniformly random direction is applied with
``applyExternalForce`` at the cube's centre of mass (reach: at the end effector) for every substep of that
step. All draws come from generators spawned from ``self.np_random``.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from safetybed.sims.base import StepSafety, quiet_stdout
from safetybed.spec import ScenarioSpec
from safetybed.spec.bullet import BulletSpec

#: Per-step cap on the dense reward's distance [m]: makes ``return_range`` a true bound even if a push
#: throws the cube off the table. It never binds for reach (the arm cannot get 2 m from a goal).
DISTANCE_CAP_M = 2.0
#: panda-gym's declared observation bounds (``RobotTaskEnv.observation_space``).
OBSERVATION_BOUND = 10.0
ARM_JOINTS = tuple(range(7))  # the Panda's 7 revolute joints in its URDF
EE_LINK = 11  # panda_grasptarget, panda-gym's ``Panda.ee_link``
FINGER_LINKS = (9, 10)  # panda_leftfinger, panda_rightfinger
_FAR_AWAY_M = (0.0, 0.0, 50.0)  # where the cube waits while stale contacts are flushed at reset


class BulletTaskEnv(gym.Env):
    """A panda-gym task as a seeded gymnasium env with a flat observation and safety metrics.

    Args:
        task: ``"reach"``, ``"push"`` or ``"pick_and_place"``.
        section: the scenario's ``[bullet]`` section.
        episode_steps: control steps before ``truncated``.
        per_step_log: also return ``info["step_log"]``: ee position [m], distance to goal [m], the step's
            contact force and its single-substep peak [N], smallest joint-limit margin [rad], push force [N].
    """

    metadata = {"render_modes": [], "render_fps": 25}

    def __init__(self, *, task: str, section: BulletSpec, episode_steps: int, per_step_log: bool = False):
        if task not in ("reach", "push", "pick_and_place"):
            raise ValueError(f"task: expected reach|push|pick_and_place, got {task!r}")
        if episode_steps < 1:
            raise ValueError(f"episode_steps: expected >= 1, got {episode_steps}")
        self.task_name = task
        self.section = section
        self.episode_steps = int(episode_steps)
        self.per_step_log = bool(per_step_log)
        self.render_mode = None

        # pybullet prints "argv[0]=--background_color_red=..." with C printf when it connects, which would
        # corrupt the one JSON document of a --json command.
        with quiet_stdout():
            from panda_gym.envs.robots.panda import Panda
            from panda_gym.envs.tasks.pick_and_place import PickAndPlace
            from panda_gym.envs.tasks.push import Push
            from panda_gym.envs.tasks.reach import Reach
            from panda_gym.pybullet import PyBullet

            # renderer="Tiny" with render_mode="rgb_array" is panda-gym's DIRECT (headless) connection.
            self.sim = PyBullet(render_mode="rgb_array", renderer="Tiny")
        self.client = self.sim.physics_client
        self.robot = Panda(self.sim, block_gripper=task != "pick_and_place",
                           base_position=np.array([-0.6, 0.0, 0.0]), control_type=section.control_type)
        common = {"reward_type": section.reward_type, "distance_threshold": section.distance_threshold_m}
        if task == "reach":
            self.task = Reach(self.sim, get_ee_position=self.robot.get_ee_position, **common)
        elif task == "push":
            self.task = Push(self.sim, **common)
        else:
            self.task = PickAndPlace(self.sim, **common)
        # panda-gym keeps pybullet body ids by name only in this private table.
        self.robot_id = self.sim._bodies_idx["panda"]
        self.object_id = self.sim._bodies_idx.get("object")
        joint_info = [self.client.getJointInfo(self.robot_id, joint) for joint in ARM_JOINTS]
        self.joint_lower_rad = np.array([info[8] for info in joint_info])
        self.joint_upper_rad = np.array([info[9] for info in joint_info])
        self.workspace_low_m = np.array(section.workspace_low_m)
        self.workspace_high_m = np.array(section.workspace_high_m)

        self._scale_dynamics(mass_scale=section.mass_scale, friction_scale=section.friction_scale)
        # Place the task once so the observation size is known, then keep the scene as every episode's
        # starting state (restored at reset, so no velocity survives from an earlier episode).
        self.task.np_random = np.random.default_rng(0)
        self.robot.reset()
        self.task.reset()
        self._pristine_state = self.client.saveState()

        size = self._flat_observation().shape
        self.observation_space = gym.spaces.Box(-OBSERVATION_BOUND, OBSERVATION_BOUND, shape=size,
                                                dtype=np.float32)
        self.action_space = self.robot.action_space
        low = -float(episode_steps) * (1.0 if section.reward_type == "sparse" else DISTANCE_CAP_M)
        #: Bounds of the episode return (sum of rewards): sparse rewards are in {-1, 0}, dense ones in
        #: [-DISTANCE_CAP_M, 0] per step.
        self.return_range: tuple[float, float] = (low, 0.0)

        self._steps: int | None = None
        self._initial_distance_m = 0.0
        self._push_rng = np.random.default_rng(0)

    # -- perturbations ------------------------------------------------------------------------------

    def perturbed_links(self) -> tuple[int, list[int]]:
        """The body the mass/friction scaling and pushes act on, with its links (-1 = the base)."""
        if self.object_id is not None:
            return self.object_id, [-1]
        return self.robot_id, [-1, *range(self.client.getNumJoints(self.robot_id))]

    def _scale_dynamics(self, *, mass_scale: float, friction_scale: float) -> None:
        body, links = self.perturbed_links()
        for link in links:
            mass_kg, lateral_friction, inertia_kgm2 = self.client.getDynamicsInfo(body, link)[:3]
            changes: dict[str, Any] = {"lateralFriction": lateral_friction * friction_scale}
            if mass_kg > 0:  # a fixed base (mass 0) stays fixed
                changes["mass"] = mass_kg * mass_scale
                changes["localInertiaDiagonal"] = [value * mass_scale for value in inertia_kgm2]
            self.client.changeDynamics(body, link, **changes)

    def _draw_push(self) -> np.ndarray | None:
        """This step's push force [N] in the world frame, or ``None``.

        Both numbers are drawn every step whatever ``push_probability`` is, so changing the probability
        does not shift the rest of the stream.
        """
        section = self.section
        if section.push_force_n <= 0 or section.push_probability <= 0:
            return None
        happens = self._push_rng.random() < section.push_probability
        heading_rad = self._push_rng.uniform(0.0, 2.0 * math.pi)
        if not happens:
            return None
        return section.push_force_n * np.array([math.cos(heading_rad), math.sin(heading_rad), 0.0])

    def _apply_push(self, force_n: np.ndarray) -> None:
        if self.object_id is not None:
            body, link = self.object_id, -1
            position = self.client.getBasePositionAndOrientation(body)[0]
        else:
            body, link = self.robot_id, EE_LINK
            position = self.client.getLinkState(body, link)[0]
        self.client.applyExternalForce(body, link, force_n.tolist(), position, self.client.WORLD_FRAME)

    # -- measurements -------------------------------------------------------------------------------

    def _flat_observation(self) -> np.ndarray:
        parts = (self.robot.get_obs(), self.task.get_obs(), self.task.get_achieved_goal(), self.task.get_goal())
        flat = np.concatenate(parts).astype(np.float32)
        return np.clip(flat, -OBSERVATION_BOUND, OBSERVATION_BOUND)

    def _distance_m(self) -> float:
        return float(np.linalg.norm(self.task.get_achieved_goal() - self.task.get_goal()))

    def _robot_contact_force_n(self) -> float:
        """Sum of the contact normal forces on the arm after the last substep [N], grasp forces excluded."""
        total_n = 0.0
        for contact in self.client.getContactPoints(bodyA=self.robot_id):
            # The fingers squeezing the cube is grasping (up to 2 x 170 N by design), not an impact.
            if contact[2] == self.object_id and contact[3] in FINGER_LINKS:
                continue
            total_n += contact[9]
        return total_n

    def _joint_margins_rad(self) -> np.ndarray:
        angles = np.array([state[0] for state in self.client.getJointStates(self.robot_id, ARM_JOINTS)])
        return np.minimum(angles - self.joint_lower_rad, self.joint_upper_rad - angles)

    # -- gymnasium API ------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        task_rng, self._push_rng = self.np_random.spawn(2)
        self.client.restoreState(self._pristine_state)
        self.robot.reset()
        if self.object_id is not None:
            self.client.resetBasePositionAndOrientation(self.object_id, _FAR_AWAY_M, (0.0, 0.0, 0.0, 1.0))
        # restoreState keeps pybullet's contact manifolds; without this flush a contact cached in the
        # previous episode changes the first steps of this one (measured: 7.7 mm of cube drift).
        self.client.performCollisionDetection()
        self.task.np_random = task_rng
        self.task.reset()
        self._steps = 0
        self._initial_distance_m = self._distance_m()
        success = bool(self.task.is_success(self.task.get_achieved_goal(), self.task.get_goal()))
        safety = StepSafety(collision=False, success=success, ttc_s=math.inf, gap_m=self._initial_distance_m,
                            progress_m=0.0, violations=self._violations(self._joint_margins_rad()))
        return self._flat_observation(), {"is_success": success, "safety": safety}

    def _violations(self, margins_rad: np.ndarray) -> int:
        ee_m = self.robot.get_ee_position()
        outside = bool(np.any(ee_m < self.workspace_low_m) or np.any(ee_m > self.workspace_high_m))
        return int(outside) + int(np.sum(margins_rad < self.section.joint_limit_margin_rad))

    def step(self, action: Any):
        if self._steps is None:
            raise RuntimeError("step() called before reset(); call reset(seed=...) first")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action: expected shape {self.action_space.shape}, got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action: expected finite numbers, got {action.tolist()}")

        self.robot.set_action(action)
        push_n = self._draw_push()
        substep_forces_n = np.empty(self.sim.n_substeps)
        for substep in range(self.sim.n_substeps):
            if push_n is not None:  # external forces are cleared after every stepSimulation
                self._apply_push(push_n)
            self.client.stepSimulation()
            substep_forces_n[substep] = self._robot_contact_force_n()
        contact_force_n = float(substep_forces_n.mean())
        self._steps += 1

        achieved, desired = self.task.get_achieved_goal(), self.task.get_goal()
        success = bool(self.task.is_success(achieved, desired))
        reward = max(float(self.task.compute_reward(achieved, desired, {})), -DISTANCE_CAP_M)
        distance_m = self._distance_m()
        margins_rad = self._joint_margins_rad()
        terminated = success and self.section.terminate_on_success
        truncated = self._steps >= self.episode_steps
        safety = StepSafety(collision=contact_force_n > self.section.contact_force_limit_n, success=success,
                            ttc_s=math.inf, gap_m=distance_m, progress_m=self._initial_distance_m - distance_m,
                            violations=self._violations(margins_rad))
        info: dict[str, Any] = {"is_success": success, "safety": safety}
        if self.per_step_log:
            ee_m = self.robot.get_ee_position()
            push = push_n if push_n is not None else np.zeros(3)
            info["step_log"] = {
                "ee_x_m": float(ee_m[0]), "ee_y_m": float(ee_m[1]), "ee_z_m": float(ee_m[2]),
                "distance_to_goal_m": distance_m, "contact_force_n": contact_force_n,
                "peak_contact_force_n": float(substep_forces_n.max()),
                "min_joint_margin_rad": float(margins_rad.min()),
                "push_force_x_n": float(push[0]), "push_force_y_n": float(push[1]),
            }
        return self._flat_observation(), reward, terminated, truncated, info

    def close(self) -> None:
        self.sim.close()


def make_bullet_env(spec: ScenarioSpec) -> BulletTaskEnv:
    """Build the (unperturbed-by-wrappers) panda-gym env of a ``simulator = "bullet"`` scenario."""
    if spec.simulator != "bullet":
        raise ValueError(f"simulator: expected 'bullet', got {spec.simulator!r}")
    return BulletTaskEnv(task=spec.task, section=spec.section(), episode_steps=spec.episode_steps,
                         per_step_log=spec.metrics.per_step_log)
