"""The ``idm`` safety shield: a learned highway controller's actions, overruled where IDM / MOBIL call them unsafe.

A controller spec with ``shield = "idm"`` acts through :class:`IDMShield`, which reads the same observation as the
policy and changes its action only where it is unsafe by the rules of ``builtin:idm``
(:mod:`safetybed.control.builtin_idm`, parameters from the scenario's ``[highway.ego]`` and ``[highway.driver]``):

* Lateral: a lane-change request (``|a[1]| > 1/3``, the mapping of :mod:`safetybed.sims.highway_obs`) is replaced
  by "keep lane" (``a[1] = 0``) unless MOBIL's safety criterion (Kesting, Treiber & Helbing 2007) holds for the
  target lane: the lane exists, no vehicle in it overlaps the ego longitudinally, and neither the new follower nor
  the ego behind the new leader would have to brake harder than ``mobil_max_braking_mps2``. A vehicle counts as in
  the target lane if it is there now or will be within ``lateral_anticipation_s`` at its lateral speed, so one that
  is moving into the lane occupies it. A change already in progress is not re-checked (the action cannot abort
  it); a request equal to it changes nothing and passes unchanged.
* Longitudinal: ``a[0] <- min(a[0], a_IDM / accel_scale_mps2)`` with ``a_IDM`` the ego's IDM acceleration
  (Treiber, Hennecke & Helbing 2000) behind the leader of its lane, a vehicle it must yield to, and, during a lane
  change or with an approved new request, the leader of the target lane (``DrivingRules.longitudinal_acceleration``).
  The IDM term includes its free-road part, so the shielded ego never accelerates harder than the IDM's
  ``idm_max_accel_mps2`` nor faster than ``min(idm_desired_speed_mps, speed limit)``.

This mirrors the safety-indicator mask of NADE's test subject "AV2", a Dueling-DQN whose unsafe actions are masked
before it acts (Feng, Yan, Sun, Feng & Liu 2021, *Nat. Commun.* 12:748; ``research/cav_eval.md`` §4.1). The shield
is deterministic and keeps no state between steps; training (``safetybed train``) trains the raw policy, and the
shield is applied only when acting.
"""

from __future__ import annotations

import numpy as np

from safetybed.control.base import Controller
from safetybed.control.builtin_idm import DrivingRules, check_highway_spaces
from safetybed.errors import InputError
from safetybed.sims.highway_obs import LANE_CHANGE_THRESHOLD
from safetybed.spec import ScenarioSpec


class IDMShield(Controller):
    """Wraps a highway controller; see the module docstring for the rules.

    Args:
        controller: the shielded controller (e.g. a trained policy), acting on the scenario's spaces.
        scenario: the highway scenario it drives; ``[highway.ego]`` / ``[highway.driver]`` give the IDM and MOBIL
            parameters.
        name: identifier stored with runs (default: ``"shield:idm(<controller name>)"``).

    Raises:
        ValueError: ``scenario`` is not a highway scenario, or the controller's spaces are not its spaces.
    """

    def __init__(self, controller: Controller, *, scenario: ScenarioSpec, name: str | None = None):
        super().__init__(controller.observation_space, controller.action_space)
        check_highway_spaces(scenario, controller.observation_space, controller.action_space, who="the idm shield")
        self.controller = controller
        self.name = name or f"shield:idm({controller.name})"
        self.accel_scale_mps2 = scenario.highway.ego.accel_scale_mps2
        self.rules = DrivingRules(scenario.highway)

    def reset(self, *, seed: int | None = None) -> None:
        super().reset(seed=seed)
        self.controller.reset(seed=seed)

    def act(self, obs_batch: np.ndarray, *, deterministic: bool | None = None) -> np.ndarray:
        obs_batch = self.check_batch(obs_batch)
        options = {} if deterministic is None else {"deterministic": deterministic}
        actions = np.array(self.controller.act(obs_batch, **options), dtype=self.action_space.dtype, copy=True)
        for index, row in enumerate(obs_batch):
            actions[index] = self.shield(row, actions[index])
        return actions

    def shield(self, observation: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The shielded version of one ``action`` (a copy; unchanged values where the action is safe)."""
        traffic = self.rules.traffic(observation)
        action = np.array(action, copy=True)
        request = (-1 if action[1] < -LANE_CHANGE_THRESHOLD else 1 if action[1] > LANE_CHANGE_THRESHOLD else 0)
        if request not in (0, traffic.target_lane_shift) and not self.rules.lane_change_is_safe(traffic, request):
            action[1], request = 0.0, 0  # MOBIL safety criterion fails (Kesting et al. 2007): keep the lane
        safe_mps2 = self.rules.longitudinal_acceleration(traffic, lane_change=request)
        safe_command = float(np.clip(safe_mps2 / self.accel_scale_mps2, -1.0, 1.0))
        if action[0] > safe_command:  # IDM bound (Treiber et al. 2000); NaN commands are left to the env
            action[0] = safe_command
        return action


def shield_controller(controller: Controller, *, shield: str, scenario: ScenarioSpec, source: str) -> Controller:
    """``controller`` behind the spec's ``shield`` (``"none"``: unchanged).

    Raises:
        InputError: an unknown shield, or ``"idm"`` with a scenario that is not a highway scenario.
    """
    if shield == "none":
        return controller
    if shield != "idm":
        raise InputError(f"{source}: shield: expected \"none\" or \"idm\", got {shield!r}")
    if scenario.simulator != "highway":
        raise InputError(f"{source}: shield = \"idm\" shields highway controllers only; scenario {scenario.name!r} "
                         f"is a {scenario.simulator} scenario (use a spec with shield = \"none\")")
    try:
        return IDMShield(controller, scenario=scenario, name=source)
    except ValueError as error:
        raise InputError(f"{source}: {error}") from None
