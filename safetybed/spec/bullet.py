"""The ``[bullet]`` section of a scenario spec: panda-gym arm tasks on pybullet (DIRECT mode).

The tasks are panda-gym's ``PandaReach``, ``PandaPush`` and ``PandaPickAndPlace`` (v3; Gallouédec et al.
2021, "panda-gym: Open-source goal-conditioned environments for robotic learning", arXiv:2106.13687).
Positions are in panda-gym's world frame [m]: the table top is the plane ``z = 0``, the arm's base sits at
``(-0.6, 0, 0)`` and goals are drawn around the origin. The adapter is :mod:`safetybed.sims.bullet`.

Example::

    [bullet]
    reward_type = "dense"
    mass_scale = 2.0          # the cube weighs 2 kg instead of 1 kg
    push_force_n = 20.0       # [N], horizontal, random direction
    push_probability = 0.05   # per control step
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from safetybed.spec.base import StrictModel

BulletTask = Literal["reach", "push", "pick_and_place"]
Vec3 = Annotated[list[float], Field(min_length=3, max_length=3)]


class BulletSpec(StrictModel):
    """Physics knobs and safety thresholds of a panda-gym task.

    The *perturbed body* is the cube for ``push`` and ``pick_and_place`` and the arm itself for ``reach``
    (which has no object): ``mass_scale`` and ``friction_scale`` change its pybullet dynamics and the
    random pushes hit it (the cube's centre of mass, or the end effector).
    """

    #: panda-gym's reward: ``"sparse"`` = -1 per step while the goal is not met, ``"dense"`` = minus the
    #: distance to the goal [m] (capped at 2 m per step so the return range is a true bound).
    reward_type: Literal["sparse", "dense"] = "dense"
    #: ``"ee"``: actions move the end effector (3 numbers, +1 for the gripper in pick_and_place);
    #: ``"joints"``: actions move the 7 arm joints (+1 for the gripper).
    control_type: Literal["ee", "joints"] = "ee"
    #: Success radius around the goal [m] (panda-gym's ``distance_threshold``).
    distance_threshold_m: float = Field(0.05, gt=0, le=0.5)
    #: End the episode (``terminated``) at the first step that meets the goal, as panda-gym v3 does; with
    #: ``false`` the episode always runs ``episode_steps`` steps (the arm must then also *stay* safe).
    terminate_on_success: bool = True
    #: Multiplies the mass (and rotational inertia) of the perturbed body: cube 1 kg x scale; for reach,
    #: every link of the arm.
    mass_scale: float = Field(1.0, gt=0, le=100)
    #: Multiplies the lateral friction coefficient of the perturbed body (pybullet multiplies the two
    #: bodies' coefficients in a contact, so cube-table and finger-cube friction scale by exactly this).
    friction_scale: float = Field(1.0, gt=0, le=100)
    #: Magnitude of a random horizontal push on the perturbed body [N], held for one control step (0.04 s).
    push_force_n: float = Field(0.0, ge=0, le=500)
    #: Probability of a push at each control step (direction uniform in the horizontal plane).
    push_probability: float = Field(0.0, ge=0, le=1)
    #: Allowed box of the end effector [m]; a step ending outside it counts one violation.
    workspace_low_m: Vec3 = [-0.5, -0.5, -0.05]
    workspace_high_m: Vec3 = [0.5, 0.5, 0.6]
    #: An arm joint closer than this to either of its limits counts one violation per joint [rad].
    joint_limit_margin_rad: float = Field(0.05, ge=0, le=1)
    #: A collision is a control step whose contact force on the arm -- the sum of the contact normal forces
    #: on all its links (grasp forces of the fingers on the cube excluded), averaged over the step's 20
    #: substeps -- exceeds this [N]. Averaging over the 40 ms step removes the 2 ms impulse spikes of rigid
    #: contact, whose height depends on the substep length. Measured for reference (push, default masses):
    #: pushing the cube 5-14 N, ramming it at full speed 31 N; fingers driven into the table (ee target
    #: z = 0) 270-290 N.
    contact_force_limit_n: float = Field(50.0, gt=0)

    @model_validator(mode="after")
    def _check_workspace(self) -> BulletSpec:
        for axis, low, high in zip("xyz", self.workspace_low_m, self.workspace_high_m, strict=True):
            if not low < high:
                raise ValueError(f"workspace_low_m: expected each bound below workspace_high_m, got "
                                 f"{axis}: low {low} >= high {high}")
        return self
