"""Importance-sampling tests on the highway scenarios: the NADE tester wrapper (simulator side).

Feng, Yan, Sun, Feng & Liu (2021), *Nat. Commun.* 12:748 (NADE); ``research/cav_eval.md`` §1, §4.1, §6.3.

:class:`HighwayTester` wraps a straight-road highway environment (cruise, cut_in, overtaking) with naturalistic
background traffic. At every control step at which the background vehicles decide (1 Hz), it

1. describes every candidate vehicle (``env.unwrapped.pending_decision_pmfs()``: naturalistic, within the
   observation range, nearest first) by a :class:`~safetybed.sims.testing.critical.CriticalContext`: its pmf ``p``,
   the maneuver challenge of its 33 actions under each surrogate ego (:mod:`safetybed.sims.testing.lookahead`), a
   feature vector (:data:`FEATURE_NAMES`) and a discretised state key;
2. picks the principal other vehicle (POV): the candidate of largest ``proposal.criticality`` (ties: the
   nearest); NADE controls one POV per decision (``num_controlled_critical_bvs = 1``);
3. if that criticality is > 0 (a *critical* step), asks the proposal for ``q~`` and ``epsilon``, draws the POV's
   action from ``q = (1 - epsilon) q~ + epsilon p`` with the tester's own generator, overrides the POV's decision
   with it, and after the step appends one entry to ``info["decisions"]`` (:data:`CRITICAL_KEYS`).

Non-critical steps log nothing and have likelihood ratio 1. The batch runner stores ``info["decisions"]`` in the
run store's ``decisions`` table; :func:`safetybed.evaluate.highway.records_from_run` reads a run
back as :class:`~safetybed.evaluate.records.TestRecord` s for the crash-rate estimators.

The tester should wrap the adapter itself (``make_env`` puts it inside the perturbation wrappers): the action it
sees in ``step`` is then exactly the ego's command of the step, which the surrogates hold for their reaction time.
Vehicles whose next decision is scripted (the cut-in of the ``cut_in`` family) are never chosen as POV: a script
takes precedence over an override, and a scripted manoeuvre is part of the scenario, not a naturalistic draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from safetybed import seeding_keys
from safetybed.sims.highway import HighwayScenarioEnv
from safetybed.sims.testing.critical import CriticalContext, Decision, Proposal, critical_step, sample_action
from safetybed.sims.testing.lookahead import (
    DEFAULT_SURROGATES,
    EgoKinematics,
    Surrogate,
    VehicleKinematics,
    maneuver_challenge,
)
from safetybed.sims.testing.nade import NadeProposal
from safetybed.spec.scenario import TESTABLE_HIGHWAY_TASKS, TestingSpec

#: Tasks the tester supports: one straight road, so lane indices and longitudinal coordinates are shared.
SUPPORTED_TASKS = TESTABLE_HIGHWAY_TASKS

#: Features of a candidate (the D2RL observation), each scaled to roughly [-1, 1]:
#: ``relative_position`` (BV minus ego, centre to centre along the road) / 120 m, clipped;
#: ``range_rate`` (BV speed minus ego speed) / 20 m/s, clipped; ``ego_speed`` / 40 m/s;
#: ``lane_relation`` sign(BV lane - ego lane) (-1 left, 0 same lane, +1 right);
#: ``log_weight`` log10 of the test's likelihood ratio so far / 10;
#: ``log_criticality`` log10(NADE criticality of the vehicle + 1e-12) / 12 (surrogate row of the tester);
#: ``vehicle_speed`` BV speed / 40 m/s; ``time_fraction`` control steps so far / episode steps.
FEATURE_NAMES: tuple[str, ...] = ("relative_position", "range_rate", "ego_speed", "lane_relation", "log_weight",
                                  "log_criticality", "vehicle_speed", "time_fraction")
_POSITION_SCALE_M = 120.0
_RANGE_RATE_SCALE_MPS = 20.0
_SPEED_SCALE_MPS = 40.0
#: State-key bins (AdaTE's tabular target): lane relation, relative position 2 m, range rate 1 m/s, ego speed 2 m/s.
_POSITION_BIN_M, _RANGE_RATE_BIN_MPS, _SPEED_BIN_MPS = 2.0, 1.0, 2.0

#: Keys of each critical-step entry in ``info["decisions"]``.
CRITICAL_KEYS = ("critical", "proposal", "time_s", "vehicle_id", "action", "p", "q_tilde", "epsilon", "log_ratio",
                 "criticality", "candidates", "state_key", "features", "challenge", "p_full", "q_tilde_full")


def make_proposal(testing: TestingSpec) -> Proposal:
    """The proposal of a ``[testing]`` section (extension point: add D2RL / AdaTE here).

    ``method = "nade"``: :class:`~safetybed.sims.testing.nade.NadeProposal` with the section's ``epsilon``,
    ``surrogate`` row and ``criticality_threshold`` (Feng et al. 2021); ``"d2rl"`` / ``"adate"``: the trained
    proposal in ``proposal_file`` (:func:`safetybed.sims.testing.d2rl_proposal.load_proposal`,
    :func:`safetybed.sims.testing.adate_proposal.load_proposal`).
    """
    if testing.method == "nade":
        return NadeProposal(epsilon=testing.epsilon, surrogate=testing.surrogate,
                            threshold=testing.criticality_threshold)
    if testing.method == "d2rl":
        from safetybed.sims.testing.d2rl_proposal import load_proposal

        return load_proposal(testing.proposal_file)
    if testing.method == "adate":
        from safetybed.sims.testing.adate_proposal import load_proposal as load_adate

        return load_adate(testing.proposal_file)
    raise ValueError(f"testing.method: expected a method with an importance proposal ('nade'), got "
                     f"{testing.method!r}")


def make_tester(env: gym.Env, testing: TestingSpec) -> HighwayTester:
    """Wrap a highway adapter in the tester a ``[testing]`` section asks for."""
    return HighwayTester(env, proposal=make_proposal(testing), lookahead_s=testing.lookahead_s,
                         feature_surrogate=testing.surrogate)


class HighwayTester(gym.Wrapper):
    """Controls one background vehicle per critical decision by importance sampling (see the module docstring).

    ``proposal``: the testing policy (NADE by default); ``surrogates``: ego models whose challenges form the
    rows of every context's ``challenge`` matrix (row 0 = NADE's); ``lookahead_s``: look-ahead horizon [s];
    ``feature_surrogate``: the row used for the ``log_criticality`` feature.
    """

    def __init__(self, env: gym.Env, *, proposal: Proposal | None = None,
                 surrogates: Sequence[Surrogate] = DEFAULT_SURROGATES, lookahead_s: float = 2.0,
                 feature_surrogate: int = 0):
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, HighwayScenarioEnv):
            raise TypeError(f"env: expected a highway scenario environment (safetybed.sims.highway), got "
                            f"{type(base).__name__}")
        task = base.scenario.task
        if task not in SUPPORTED_TASKS or not base.naturalistic:
            raise ValueError(f"env: the highway tester needs a straight-road family {list(SUPPORTED_TASKS)} with "
                             f"naturalistic background drivers, got task {task!r} with driver model "
                             f"{base.highway.driver.model!r}")
        if not surrogates:
            raise ValueError("surrogates: expected at least one surrogate ego model, got none")
        if not 0 <= feature_surrogate < len(surrogates):
            raise ValueError(f"feature_surrogate: expected a row in [0, {len(surrogates) - 1}], "
                             f"got {feature_surrogate!r}")
        if not (math.isfinite(lookahead_s) and lookahead_s > 0):
            raise ValueError(f"lookahead_s: expected a finite horizon > 0 [s], got {lookahead_s!r}")
        self.proposal: Proposal = proposal if proposal is not None else NadeProposal()
        self.surrogates = tuple(surrogates)
        self.lookahead_s = float(lookahead_s)
        self.feature_surrogate = int(feature_surrogate)
        self._rng = np.random.default_rng(np.random.SeedSequence(0, spawn_key=(seeding_keys.NADE_TESTER,)))
        self.log_weight = 0.0  # log of the test's likelihood ratio so far (Feng et al. 2021: W = prod_t p_t / q_t)
        self.critical_steps = 0

    # -- gymnasium ----------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(seeding_keys.NADE_TESTER,)))
        self.log_weight = 0.0
        self.critical_steps = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        base: HighwayScenarioEnv = self.env.unwrapped
        entry = None
        if base.decision_due():
            # Apply the ego's command first (idempotent: highway-env applies it again at the step's first frame,
            # before any background vehicle decides), so the pmfs read here are the ones the vehicles will use.
            ignored = base.vehicle.ignored_lane_change_requests
            base.action_type.act(np.asarray(action, dtype=np.float64))
            base.vehicle.ignored_lane_change_requests = ignored
            entry = self._control_decision(action)
        obs, reward, terminated, truncated, info = self.env.step(action)
        if entry is not None:
            self._check_override_taken(entry)
            self._reconcile_pmf(entry)
            info = dict(info)
            info["decisions"] = list(info.get("decisions") or []) + [entry]
        return obs, reward, terminated, truncated, info

    # -- the NADE decision ------------------------------------------------------------------------------------------
    def contexts(self, *, ego_acceleration_mps2: float = 0.0,
                 ego_lane_change: int = 0) -> tuple[list[int], list[CriticalContext]]:
        """Ids and contexts of the candidates that may be controlled at the pending decision (nearest first).

        ``ego_acceleration_mps2`` / ``ego_lane_change`` (-1, 0, +1): the ego's command for the coming step. The
        look-ahead puts the ego in the lane it is heading for after that command (its target lane, or the lane it
        requests now), so that a vehicle changing into the same lane at the same instant counts as a conflict.
        Pure (draws nothing); meaningful when ``env.unwrapped.decision_due()`` is true.
        """
        base: HighwayScenarioEnv = self.env.unwrapped
        ego = base.vehicle
        lane_frame = ego.lane
        _from, _to, current_lane = ego.lane_index
        lanes = len(base.road.network.graph[_from][_to])
        grid = base.acceleration_grid_mps2
        ego_s = float(lane_frame.local_coordinates(ego.position)[0])
        ego_lane = int(ego.target_lane_index[2])
        if ego_lane_change and 0 <= current_lane + ego_lane_change < lanes:
            ego_lane = int(current_lane + ego_lane_change)  # as EgoVehicle.command retargets
        ego_state = EgoKinematics(position_m=ego_s, speed_mps=float(ego.speed), lane=ego_lane,
                                  length_m=float(ego.LENGTH), acceleration_mps2=float(ego_acceleration_mps2))
        ids, pmfs, states = [], [], []
        for pending in base.pending_decision_pmfs():
            vehicle = base.background_vehicle(pending.vehicle_id)
            if vehicle.script_due() or not vehicle.decision_due():
                continue
            ids.append(pending.vehicle_id)
            pmfs.append(pending.pmf)
            # A lane-change action holds the IDM acceleration of the decision instant, clipped to the grid.
            hold = float(np.clip(vehicle.idm_decision_acceleration(), grid[0], grid[-1]))
            states.append(VehicleKinematics(position_m=float(lane_frame.local_coordinates(vehicle.position)[0]),
                                            speed_mps=float(vehicle.speed), lane=int(vehicle.target_lane_index[2]),
                                            length_m=float(vehicle.LENGTH), lane_change_acceleration_mps2=hold))
        contexts = candidate_contexts(ego_state, pmfs, states, lanes=lanes, acceleration_grid_mps2=grid,
                                      surrogates=self.surrogates, lookahead_s=self.lookahead_s,
                                      feature_surrogate=self.feature_surrogate, log_weight=self.log_weight,
                                      time_fraction=base.control_step / base.scenario.episode_steps)
        return ids, contexts

    def _control_decision(self, action) -> dict[str, Any] | None:
        base: HighwayScenarioEnv = self.env.unwrapped
        ego_acceleration_mps2, ego_lane_change = base.action_type.decode(action)
        ids, contexts = self.contexts(ego_acceleration_mps2=ego_acceleration_mps2, ego_lane_change=ego_lane_change)
        entry = critical_entry(ids, contexts, proposal=self.proposal, rng=self._rng,
                               time_s=base.steps / base.highway.simulation_frequency_hz)
        if entry is None:
            return None
        base.override_next_decision(entry["vehicle_id"], entry["action"])
        self.log_weight += entry["log_ratio"]  # W = prod over critical steps of p / q (Feng et al. 2021)
        self.critical_steps += 1
        return entry

    def _reconcile_pmf(self, entry: dict[str, Any]) -> None:
        """Make the logged likelihood ratio use the pmf the vehicle actually had when it decided
        (:func:`reconcile_entry`)."""
        base: HighwayScenarioEnv = self.env.unwrapped
        taken = next(r for r in base.last_decisions() if r.vehicle_id == entry["vehicle_id"])
        self.log_weight += reconcile_entry(entry, np.asarray(taken.pmf))

    def _check_override_taken(self, entry: dict[str, Any]) -> None:
        base: HighwayScenarioEnv = self.env.unwrapped
        taken = [r for r in base.last_decisions() if r.vehicle_id == entry["vehicle_id"]]
        check_override_taken(entry, [(r.source, r.action) for r in taken])


def critical_entry(ids: Sequence[int], contexts: Sequence[CriticalContext], *, proposal: Proposal,
                   rng: np.random.Generator, time_s: float) -> dict[str, Any] | None:
    """NADE's decision at one pending background decision: the critical-step entry, or ``None`` if not critical.

    The principal other vehicle (POV) is the candidate of largest ``proposal.criticality`` (first maximum = the
    nearest: contexts are nearest first); a step is critical when that criticality is > 0. The POV's action is
    drawn with one ``rng.random()`` from the defensive mixture ``q = (1 - epsilon) q~ + epsilon p`` (Owen 2013;
    Feng et al. 2021). The caller overrides the POV's decision with ``entry["action"]`` and adds
    ``entry["log_ratio"]`` to the test's log weight. Both backends' testers call this (one home).
    """
    if not contexts:
        return None
    criticalities = np.array([proposal.criticality(context) for context in contexts], dtype=np.float64)
    if not np.all(np.isfinite(criticalities)) or np.any(criticalities < 0):
        raise ValueError(f"proposal {proposal.name!r}: criticality must be finite and >= 0, got "
                         f"{criticalities.tolist()}")
    pov = int(np.argmax(criticalities))
    if not criticalities[pov] > 0:
        return None
    context = contexts[pov]
    decision = proposal.decide(context)
    _check_decision(proposal.name, decision, context.p)
    chosen = sample_action(decision, context.p, float(rng.random()))
    step = critical_step(decision, context.p, chosen, state_key=context.state_key)
    return {"critical": True, "proposal": proposal.name, "time_s": float(time_s),
            "vehicle_id": int(ids[pov]), "action": int(chosen), "p": step.p, "q_tilde": step.q_tilde,
            "epsilon": step.epsilon, "log_ratio": step.log_ratio, "criticality": float(criticalities[pov]),
            "candidates": len(contexts), "state_key": list(context.state_key),
            "features": [float(x) for x in context.features],
            "challenge": [float(x) for x in context.challenge[:, chosen]],
            "p_full": [float(x) for x in context.p], "q_tilde_full": [float(x) for x in decision.q_tilde]}


def _check_decision(name: str, decision: Decision, p: np.ndarray) -> None:
    q_tilde = np.asarray(decision.q_tilde, dtype=np.float64)
    if q_tilde.shape != p.shape or not np.all(np.isfinite(q_tilde)) or np.any(q_tilde < 0):
        raise ValueError(f"proposal {name!r}: q_tilde must be {p.shape[0]} finite probabilities >= 0, got "
                         f"shape {q_tilde.shape}")
    if abs(float(q_tilde.sum()) - 1.0) > 1e-6:
        raise ValueError(f"proposal {name!r}: q_tilde must sum to 1, got {float(q_tilde.sum())!r}")
    if not 0.0 < decision.epsilon <= 1.0:
        raise ValueError(f"proposal {name!r}: epsilon must be in (0, 1], got {decision.epsilon!r}")


def check_override_taken(entry: dict[str, Any], taken: Sequence[tuple[str, int]]) -> None:
    """Raise if the POV's decision (``(source, action)`` of its decisions in the step) was not the override."""
    if not taken or taken[0][0] != "override" or taken[0][1] != entry["action"]:
        raise RuntimeError(f"HighwayTester: vehicle {entry['vehicle_id']} did not take the overridden action "
                           f"{entry['action']} at t = {entry['time_s']:g} s (decision: {list(taken)}); the "
                           f"likelihood ratio of this test would be wrong")


def reconcile_entry(entry: dict[str, Any], pmf_taken: np.ndarray) -> float:
    """Rewrite ``entry`` to the pmf the POV actually had when it decided; returns the change of the log weight.

    A background vehicle acting earlier in the same frame can start a lane change that changes the POV's MOBIL
    safety check, so its naturalistic pmf at decision time can differ from the one read before the step. The
    importance weight must be ``p_actual(u) / q(u)`` with ``q`` the mixture actually sampled from; the entry is
    rewritten so that ``(p, q_tilde, epsilon)`` still reproduce that ``q`` exactly (:func:`reconciled_mixture`)
    and is flagged ``pmf_reconciled``.
    """
    p_actual = float(pmf_taken[entry["action"]])
    if abs(p_actual - entry["p"]) <= 1e-12 * max(p_actual, entry["p"]):
        return 0.0
    q = (1.0 - entry["epsilon"]) * entry["q_tilde"] + entry["epsilon"] * entry["p"]
    if p_actual <= 0.0:
        raise RuntimeError(f"HighwayTester: vehicle {entry['vehicle_id']} took action {entry['action']} that its "
                           f"own pmf gives probability 0 at t = {entry['time_s']:g} s")
    q_tilde, eps = reconciled_mixture(q, entry["epsilon"], p_actual)
    log_ratio = math.log(p_actual) - math.log(q)
    delta = log_ratio - entry["log_ratio"]
    entry.update({"p": p_actual, "q_tilde": q_tilde, "epsilon": eps, "log_ratio": log_ratio,
                  "pmf_reconciled": True, "p_full": [float(x) for x in pmf_taken]})
    return delta


def candidate_contexts(ego_state: EgoKinematics, pmfs: Sequence[np.ndarray], states: Sequence[VehicleKinematics], *,
                       lanes: int, acceleration_grid_mps2: np.ndarray, surrogates: Sequence[Surrogate],
                       lookahead_s: float, feature_surrogate: int, log_weight: float, time_fraction: float,
                       ) -> list[CriticalContext]:
    """The :class:`CriticalContext` of each candidate (pmf ``p``, kinematics) at a pending decision.

    The one home of a context (both backends' testers call it): the maneuver challenge of every action under each
    surrogate ego (:func:`~safetybed.sims.testing.lookahead.maneuver_challenge`), the features
    (:data:`FEATURE_NAMES`) and the state key. ``log_weight``: the test's log likelihood ratio so far;
    ``time_fraction``: control steps so far / episode steps.
    """
    challenge = maneuver_challenge(ego_state, list(states), lanes=lanes, acceleration_grid_mps2=acceleration_grid_mps2,
                                   surrogates=surrogates, lookahead_s=lookahead_s)
    ego_s, ego_lane = ego_state.position_m, ego_state.lane
    contexts = []
    for p, state, rows in zip(pmfs, states, challenge, strict=True):
        relative_m = state.position_m - ego_s
        range_rate_mps = state.speed_mps - ego_state.speed_mps
        lane_relation = int(np.sign(state.lane - ego_lane))
        nade_criticality = float(np.dot(p, rows[feature_surrogate]))  # Feng et al. 2021: sum_u p c
        features = np.array([
            np.clip(relative_m / _POSITION_SCALE_M, -1.0, 1.0),
            np.clip(range_rate_mps / _RANGE_RATE_SCALE_MPS, -1.0, 1.0),
            ego_state.speed_mps / _SPEED_SCALE_MPS,
            lane_relation,
            log_weight / math.log(10.0) / 10.0,
            math.log10(nade_criticality + 1e-12) / 12.0,
            state.speed_mps / _SPEED_SCALE_MPS,
            time_fraction,
        ], dtype=np.float64)
        state_key = (lane_relation, math.floor(relative_m / _POSITION_BIN_M),
                     math.floor(range_rate_mps / _RANGE_RATE_BIN_MPS),
                     math.floor(ego_state.speed_mps / _SPEED_BIN_MPS))
        contexts.append(CriticalContext(p=p, challenge=rows, features=features, state_key=state_key,
                                        log_weight_so_far=log_weight))
    return contexts


def reconciled_mixture(q: float, epsilon: float, p_actual: float) -> tuple[float, float]:
    """``(q_tilde', epsilon')`` in ``[0, 1] x (0, 1]`` with ``(1 - epsilon') q_tilde' + epsilon' p_actual = q``.

    The sampled action's probability ``q`` under the mixture the tester drew from is kept exactly; only its
    split between the importance component and the (corrected) naturalistic ``p_actual`` changes:
    ``q_tilde' = (q - epsilon p_actual) / (1 - epsilon)`` when that lies in [0, 1]; else ``q_tilde' = 0,
    epsilon' = q / p_actual`` (p_actual > q) or ``q_tilde' = 1, epsilon' = (1 - q) / (1 - p_actual)``
    (p_actual < q, e.g. a lane change the tester read as safe, p = 0.2, that the vehicle's own check made unsafe,
    p_actual = 1e-7). Raises ValueError when no such split exists (q = 1 with p_actual < 1, or p_actual <= 0).
    """
    if not (0.0 < q <= 1.0 and 0.0 < p_actual <= 1.0 and 0.0 < epsilon <= 1.0):
        raise ValueError(f"reconciled_mixture: expected q, p_actual, epsilon in (0, 1], got {q!r}, {p_actual!r}, "
                         f"{epsilon!r}")
    q_tilde = (q - epsilon * p_actual) / (1.0 - epsilon) if epsilon < 1.0 else math.nan
    if 0.0 <= q_tilde <= 1.0:
        return q_tilde, epsilon
    if p_actual >= q:
        return 0.0, q / p_actual
    if q >= 1.0:
        raise ValueError(f"reconciled_mixture: q = 1 cannot be split with p_actual = {p_actual!r} < 1")
    return 1.0, (1.0 - q) / (1.0 - p_actual)


__all__ = ["CRITICAL_KEYS", "FEATURE_NAMES", "HighwayTester", "SUPPORTED_TASKS", "candidate_contexts", "check_override_taken",
           "critical_entry", "make_proposal", "make_tester", "reconcile_entry", "reconciled_mixture"]
