"""NADE on highway-env: the look-ahead challenge, the tester's logs, the run-store reader and the [testing] spec."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safetybed.evaluate.highway import records_from_run
from safetybed.sims.highway_driver import acceleration_pmf, lane_change_probability
from safetybed.sims.testing.critical import CriticalContext, Decision
from safetybed.sims.testing.lookahead import (
    DEFAULT_SURROGATES,
    EgoKinematics,
    Surrogate,
    VehicleKinematics,
    maneuver_challenge,
)
from safetybed.sims.testing.nade import NadeProposal
from safetybed.sims.testing.tester import CRITICAL_KEYS, FEATURE_NAMES, HighwayTester, make_proposal
from safetybed.spec import parse_scenario

from .conftest import assert_validate_rejects

GRID_MPS2 = -4.0 + 0.2 * np.arange(31)
LEFT, RIGHT = 0, 1


def accel_action(acceleration_mps2: float) -> int:
    return 2 + int(round((acceleration_mps2 + 4.0) / 0.2))


def challenge_of(ego: EgoKinematics, vehicle: VehicleKinematics, *, lanes: int = 3) -> np.ndarray:
    return maneuver_challenge(ego, [vehicle], lanes=lanes, acceleration_grid_mps2=GRID_MPS2)[0]


# -- look-ahead: hand-computed kinematics -------------------------------------------------------------------------
EGO = EgoKinematics(position_m=100.0, speed_mps=25.0, lane=1)


def test_challenge_shape_and_values():
    vehicles = [VehicleKinematics(position_m=110.0, speed_mps=25.0, lane=1),
                VehicleKinematics(position_m=60.0, speed_mps=25.0, lane=0)]
    challenge = maneuver_challenge(EGO, vehicles, lanes=3, acceleration_grid_mps2=GRID_MPS2)
    assert challenge.shape == (2, len(DEFAULT_SURROGATES), 33)
    assert set(np.unique(challenge)) <= {0.0, 1.0}
    assert maneuver_challenge(EGO, [], lanes=3, acceleration_grid_mps2=GRID_MPS2).shape == (0, 3, 33)


@pytest.mark.parametrize(("gap_m", "crashing"), [(5.0, [-4.0, -3.8, -3.6]), (7.0, []), (30.0, [])])
def test_braking_leader_crashes_the_surrogate_only_from_a_short_gap(gap_m, crashing):
    """Hand computation for surrogate 0 (reaction 1 s holding 0 m/s^2, then braking saturated at -4 m/s^2).

    Both at 25 m/s; the leader brakes at -d. After 1 s the gap is g - d/2 and the ego is d m/s faster; over the next
    second the ego brakes at -4, so the gap shrinks by d - (4 - d)/2. At 2 s: gap = g - 2d + 2, so the ego crashes
    iff d >= (g + 2) / 2: d >= 3.5 for g = 5 m (grid -4, -3.8, -3.6), never for g = 7 m (d would exceed 4).
    """
    leader = VehicleKinematics(position_m=EGO.position_m + 5.0 + gap_m, speed_mps=25.0, lane=1)
    row = challenge_of(EGO, leader)[0]
    expected = np.zeros(33)
    expected[[accel_action(a) for a in crashing]] = 1.0
    assert row.tolist() == expected.tolist()


def test_ego_command_during_reaction_counts():
    """An ego already braking at -4 m/s^2 keeps the 5 m gap to a leader braking at -4 (same deceleration)."""
    leader = VehicleKinematics(position_m=EGO.position_m + 10.0, speed_mps=25.0, lane=1)
    braking_ego = EgoKinematics(position_m=100.0, speed_mps=25.0, lane=1, acceleration_mps2=-4.0)
    assert challenge_of(braking_ego, leader)[0, accel_action(-4.0)] == 0.0
    assert challenge_of(EGO, leader)[0, accel_action(-4.0)] == 1.0


def test_cut_in_right_in_front_crashes_every_surrogate():
    """A vehicle 1 m ahead (bumper gap) in the right lane, 3 m/s slower, changing left: overlap within 1 s."""
    cutter = VehicleKinematics(position_m=EGO.position_m + 5.0 + 1.0, speed_mps=22.0, lane=2)
    challenge = challenge_of(EGO, cutter)
    assert challenge[:, LEFT].tolist() == [1.0, 1.0, 1.0]
    assert challenge[:, RIGHT].tolist() == [0.0, 0.0, 0.0]  # lane 3 does not exist: a no-op, stays in lane 2
    assert not challenge[:, 2:].any()  # accelerating in its own lane never reaches the ego


def test_side_by_side_lane_change_is_a_sideswipe_and_a_far_cut_in_is_not():
    alongside = VehicleKinematics(position_m=EGO.position_m + 2.0, speed_mps=25.0, lane=0)
    assert challenge_of(EGO, alongside)[:, RIGHT].tolist() == [1.0, 1.0, 1.0]
    far_ahead = VehicleKinematics(position_m=EGO.position_m + 60.0, speed_mps=25.0, lane=0)
    assert not challenge_of(EGO, far_ahead).any()


def test_vehicles_in_far_lanes_have_no_challenge():
    ego = EgoKinematics(position_m=100.0, speed_mps=25.0, lane=0)
    alongside_two_lanes_away = VehicleKinematics(position_m=101.0, speed_mps=25.0, lane=2)
    assert not challenge_of(ego, alongside_two_lanes_away).any()
    ego_lane_3 = EgoKinematics(position_m=100.0, speed_mps=25.0, lane=3)
    assert not challenge_of(ego_lane_3, VehicleKinematics(position_m=100.0, speed_mps=25.0, lane=1), lanes=4).any()


def test_accelerating_follower_rear_ends_the_ego():
    """Follower 2.1 m behind at equal speed, ego cruising: the gap closes by a t^2 / 2 = 2a m in 2 s (a >= 1.05)."""
    follower = VehicleKinematics(position_m=EGO.position_m - 5.0 - 2.1, speed_mps=25.0, lane=1)
    row = challenge_of(EGO, follower)[0]
    expected = (GRID_MPS2 >= 1.05).astype(float)
    assert row[2:].tolist() == expected.tolist()
    assert row[:2].tolist() == [0.0, 0.0]  # leaving the lane ends the conflict


def test_surrogate_and_lookahead_inputs_are_checked():
    with pytest.raises(ValueError, match="max_brake_mps2"):
        Surrogate("x", max_accel_mps2=1.0, comfort_decel_mps2=1.0, min_gap_m=1.0, time_headway_s=1.0,
                  desired_speed_mps=30.0, max_brake_mps2=0.0)
    with pytest.raises(ValueError, match="lookahead_s"):
        maneuver_challenge(EGO, [], lanes=3, acceleration_grid_mps2=GRID_MPS2, lookahead_s=0.0)
    assert DEFAULT_SURROGATES[0].max_accel_mps2 == 1.5 and DEFAULT_SURROGATES[0].time_headway_s == 1.2


# -- background-driver tails ----------------------------------------------------------------------------------------
def test_accel_tail_mass_mixes_a_uniform_tail():
    gaussian = acceleration_pmf(0.0, GRID_MPS2, sigma_mps2=0.3, prune_below=1e-10)
    assert gaussian[0] == 0.0  # -4 m/s^2 is pruned: emergency braking impossible without a tail
    tailed = acceleration_pmf(0.0, GRID_MPS2, sigma_mps2=0.3, prune_below=1e-10, tail_mass=1e-3)
    np.testing.assert_allclose(tailed, 0.999 * gaussian + 1e-3 / 31, rtol=1e-12, atol=0)
    assert tailed.sum() == pytest.approx(1.0, abs=1e-12)


def test_unsafe_lane_change_floor():
    options = {"threshold_mps2": 0.2, "saturation_mps2": 1.0, "floor": 1e-3, "maximum": 0.2}
    assert lane_change_probability(5.0, safe=False, unsafe_floor=1e-7, **options) == 1e-7
    assert lane_change_probability(5.0, safe=False, **options) == 1e-3  # unset: today's behaviour
    assert lane_change_probability(0.0, safe=True, unsafe_floor=1e-7, **options) == 1e-3


# -- the tester -----------------------------------------------------------------------------------------------------
def nade_spec(*, episode_steps: int = 12, **testing):
    return parse_scenario({
        "name": "t/cruise_nade", "simulator": "highway", "task": "cruise", "episode_steps": episode_steps,
        "highway": {"lanes": 3, "vehicles": 12, "density": 1.5,
                    "driver": {"unsafe_lane_change_floor": 1e-5, "accel_tail_mass": 1e-2}},
        "testing": {"method": "nade", **testing}})


def play(env, controller, seed: int) -> list[dict]:
    """One episode; per step the tester's critical entry (or None) and the vehicles' actual decisions."""
    obs, _ = env.reset(seed=seed)
    controller.reset(seed=seed)
    steps, done = [], False
    while not done:
        action = controller.act(np.asarray(obs)[None, ...])[0]
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        critical = [d for d in info.get("decisions", []) if d.get("critical")]
        records = env.unwrapped.last_decisions()
        taken = {r.vehicle_id: (r.action, r.source) for r in records}
        pmfs = {r.vehicle_id: [float(x) for x in r.pmf] for r in records}
        steps.append({"critical": critical, "taken": taken, "pmfs": pmfs, "collision": info["safety"]["collision"]})
    return steps


@pytest.fixture(scope="module")
def tester_episodes():
    from safetybed.control import load_controller
    from safetybed.sims import make_env

    spec = nade_spec()
    env = make_env(spec)
    controller = load_controller("controllers/highway_sac_shielded.toml", scenario=spec, observation_space=env.observation_space,
                                 action_space=env.action_space)
    episodes = [play(env, controller, seed) for seed in range(4)]
    again = play(env, controller, 2)
    return env, episodes, again


def test_make_env_wraps_nade_scenarios_only():
    from safetybed.sims import make_env

    assert isinstance(make_env(nade_spec()), HighwayTester)
    plain = nade_spec().model_copy(update={"testing": None})
    assert not isinstance(make_env(plain), HighwayTester)
    nde = parse_scenario({"name": "x", "simulator": "highway", "task": "cruise", "episode_steps": 3,
                          "testing": {"method": "nde"}})
    assert not isinstance(make_env(nde), HighwayTester)


def test_tester_logs_consistent_probabilities(tester_episodes):
    _, episodes, _ = tester_episodes
    entries = [entry for steps in episodes for step in steps for entry in step["critical"]]
    assert len(entries) >= 5, "the test traffic should give several critical steps"
    for entry in entries:
        assert set(CRITICAL_KEYS) <= set(entry)
        p, q_tilde, eps = entry["p"], entry["q_tilde"], entry["epsilon"]
        q = (1 - eps) * q_tilde + eps * p
        assert eps == 0.1 and p > 0 and q >= eps * p
        assert entry["log_ratio"] == pytest.approx(math.log(p) - math.log(q), rel=1e-12, abs=1e-12)
        assert entry["p_full"][entry["action"]] == p and entry["q_tilde_full"][entry["action"]] == q_tilde
        assert sum(entry["p_full"]) == pytest.approx(1.0, abs=1e-9)
        assert sum(entry["q_tilde_full"]) == pytest.approx(1.0, abs=1e-9)
        assert entry["criticality"] > 0 and len(entry["features"]) == len(FEATURE_NAMES)
        assert all(-1.5 <= x <= 1.5 for x in entry["features"])
        assert len(entry["challenge"]) == len(DEFAULT_SURROGATES) and len(entry["state_key"]) == 4


def test_overridden_vehicle_took_the_logged_action_one_pov_per_decision(tester_episodes):
    _, episodes, _ = tester_episodes
    for steps in episodes:
        for step in steps:
            assert len(step["critical"]) <= 1  # NADE controls one vehicle per decision
            for entry in step["critical"]:
                assert step["taken"][entry["vehicle_id"]] == (entry["action"], "override")
                assert step["pmfs"][entry["vehicle_id"]] == entry["p_full"]  # the pmf the vehicle decided with
            overridden = [vid for vid, (_, source) in step["taken"].items() if source == "override"]
            assert len(overridden) == len(step["critical"])


def test_same_seed_gives_identical_logs(tester_episodes):
    _, episodes, again = tester_episodes
    assert again == episodes[2]


def test_defensive_weight_one_gives_unit_weights():
    """epsilon = 1 samples from p itself: every critical step's ratio p/q is exactly 1."""
    from safetybed.control import load_controller
    from safetybed.sims import make_env

    spec = nade_spec(epsilon=1.0)
    env = make_env(spec)
    controller = load_controller("controllers/highway_sac_shielded.toml", scenario=spec, observation_space=env.observation_space,
                                 action_space=env.action_space)
    entries = [entry for seed in range(3) for step in play(env, controller, seed) for entry in step["critical"]]
    assert entries
    assert all(entry["log_ratio"] == 0.0 and entry["epsilon"] == 1.0 for entry in entries)
    assert env.unwrapped is not env and isinstance(env, HighwayTester) and env.log_weight == 0.0


def test_proposal_output_is_checked():
    from safetybed.sims import make_env

    class BadProposal:
        name = "bad"

        def criticality(self, context: CriticalContext) -> float:
            return 1.0

        def decide(self, context: CriticalContext) -> Decision:
            return Decision(q_tilde=np.full(context.p.shape, 0.5), epsilon=0.1)

    env = HighwayTester(make_env(nade_spec().model_copy(update={"testing": None})), proposal=BadProposal())
    env.reset(seed=0)
    with pytest.raises(ValueError, match="sum to 1"):
        env.step(np.zeros(2))


def test_tester_refuses_other_environments():
    from safetybed.sims import make_env

    cartpole = make_env(parse_scenario({"name": "c", "simulator": "classic", "task": "cartpole",
                                        "episode_steps": 5}))
    with pytest.raises(TypeError, match="highway"):
        HighwayTester(cartpole)
    merge = make_env(parse_scenario({"name": "m", "simulator": "highway", "task": "merge", "episode_steps": 5}))
    with pytest.raises(ValueError, match="straight-road"):
        HighwayTester(merge)


def test_make_proposal_from_the_testing_section():
    proposal = make_proposal(nade_spec(epsilon=0.2, surrogate=1, criticality_threshold=0.01).testing)
    assert proposal == NadeProposal(epsilon=0.2, surrogate=1, threshold=0.01)


def test_records_from_run_roundtrip(tmp_path):
    from safetybed.runner import RunStore, episode_seed, start_run
    from safetybed.sims.rollout import rollout

    spec = nade_spec(episode_steps=10)
    store_path = tmp_path / "store.sqlite"
    with RunStore(store_path) as store:
        run_id = start_run(spec, scenario_path="t", controller="builtin:idm", episodes=4, seed=5, workers=1,
                           executor="local", store=store)
        stored = store.episodes(run_id, with_logs=True)
    records = records_from_run(store_path, run_id)
    assert [r.crashed for r in records] == [e.collision for e in stored]
    assert sum(len(r.p) for r in records) >= 1
    from safetybed.control import load_controller
    from safetybed.sims import make_env

    env = make_env(spec)
    controller = load_controller("builtin:idm", scenario=spec, observation_space=env.observation_space,
                                 action_space=env.action_space)
    for index, record in enumerate(records):
        fresh = rollout(env, controller, seed=episode_seed(5, index), index=index)
        critical = [d for d in (fresh.decisions or []) if d.get("critical")]
        assert record.crashed == fresh.collision
        assert list(record.p) == [d["p"] for d in critical]
        assert list(record.q_tilde) == [d["q_tilde"] for d in critical]
        assert list(record.epsilon) == [d["epsilon"] for d in critical]


# -- the [testing] section --------------------------------------------------------------------------------------------
HIGHWAY = 'name = "t"\nsimulator = "highway"\ntask = "cruise"\nepisode_steps = 5\n'
CLASSIC = 'name = "c"\nsimulator = "classic"\ntask = "cartpole"\nepisode_steps = 5\n'
MALFORMED_TESTING = [
    ("other-simulator", CLASSIC + '[testing]\nmethod = "nade"\n', "testing", "only allowed for simulator"),
    ("unknown-method", HIGHWAY + '[testing]\nmethod = "mc"\n', "testing.method", "nde"),
    ("unknown-key", HIGHWAY + '[testing]\nepsilonn = 0.1\n', "testing.epsilonn", "unknown key"),
    ("epsilon-zero", HIGHWAY + '[testing]\nepsilon = 0.0\n', "testing.epsilon", "greater than"),
    ("epsilon-above-one", HIGHWAY + '[testing]\nepsilon = 1.5\n', "testing.epsilon", "less than"),
    ("lookahead-zero", HIGHWAY + '[testing]\nlookahead_s = 0\n', "testing.lookahead_s", "greater than"),
    ("surrogate-row", HIGHWAY + f'[testing]\nsurrogate = {len(DEFAULT_SURROGATES)}\n', "testing.surrogate",
     "less than"),
    ("threshold-negative", HIGHWAY + '[testing]\ncriticality_threshold = -1\n', "testing.criticality_threshold",
     "greater than"),
    ("nade-on-merge", HIGHWAY.replace('"cruise"', '"merge"') + '[testing]\nmethod = "nade"\n', "testing.method",
     "straight-road"),
    ("nade-idm-traffic", HIGHWAY + '[highway.driver]\nmodel = "idm"\n[testing]\nmethod = "nade"\n', "testing.method",
     "naturalistic"),
    ("tail-too-big", HIGHWAY + '[highway.driver]\naccel_tail_mass = 0.5\n', "highway.driver.accel_tail_mass",
     "less than"),
    ("unsafe-floor-above-max", HIGHWAY + '[highway.driver]\nunsafe_lane_change_floor = 0.3\n',
     "highway.driver.unsafe_lane_change_floor", "lane_change_max"),
]


@pytest.mark.parametrize(("case", "text", "field", "reason"), MALFORMED_TESTING,
                         ids=[case[0] for case in MALFORMED_TESTING])
def test_malformed_testing_section_exits_2(cli, tmp_path, case, text, field, reason):
    assert field  # every case here names its field
    assert_validate_rejects(cli, tmp_path, case, text, field, reason)


def test_last_surrogate_row_is_valid():
    spec = parse_scenario({"name": "t", "simulator": "highway", "task": "cruise", "episode_steps": 5,
                           "testing": {"method": "nade", "surrogate": len(DEFAULT_SURROGATES) - 1}})
    assert spec.testing.surrogate == len(DEFAULT_SURROGATES) - 1


def test_readme_documents_the_testing_section():
    from safetybed.spec.scenario import TestingSpec

    from .conftest import REPO_ROOT

    readme = (REPO_ROOT / "scenarios" / "README.md").read_text(encoding="utf-8")
    assert "[testing]" in readme
    assert not [name for name in TestingSpec.model_fields if f"`{name}`" not in readme]


def test_logged_p_is_the_pmf_the_vehicle_decided_with():
    """Regression: the tester read pmfs before the ego's lane-change command was applied, so a background vehicle
    whose MOBIL check the ego's new target lane makes unsafe was logged with p = 0.2 instead of the floor; the
    likelihood ratio must use the pmf the vehicle actually sampled from."""
    from safetybed.control import load_controller
    from safetybed.sims import make_env
    from safetybed.spec import load_scenario

    spec = load_scenario("scenarios/highway/cruise_nade.toml")
    env = make_env(spec)
    controller = load_controller("controllers/highway_sac_shielded.toml", scenario=spec, observation_space=env.observation_space,
                                 action_space=env.action_space)
    checked = 0
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(controller.act(obs[None])[0])
            done = terminated or truncated
            taken = {r.vehicle_id: r for r in env.unwrapped.last_decisions()}
            for entry in info.get("decisions", []):
                if entry.get("critical"):
                    record = taken[entry["vehicle_id"]]
                    np.testing.assert_allclose(entry["p_full"], record.pmf, rtol=1e-12, atol=0)
                    assert entry["p"] == pytest.approx(float(record.pmf[entry["action"]]), rel=1e-12)
                    q = (1 - entry["epsilon"]) * entry["q_tilde"] + entry["epsilon"] * entry["p"]
                    assert entry["log_ratio"] == pytest.approx(np.log(entry["p"]) - np.log(q), abs=1e-9)
                    checked += 1
    assert checked > 5


def test_the_ego_command_of_the_step_is_seen_by_the_logged_pmf():
    """Deterministic scene for the regression above: the ego moves 2 -> 1 alongside a vehicle in lane 0 whose
    change to lane 1 is otherwise attractive (p = 0.2). The vehicle decides after the ego's command, so its pmf
    gives that change the unsafe floor, and the tester must log that pmf, not the one from before the command."""
    from safetybed.sims import make_env
    from safetybed.sims.highway_driver import NaturalisticVehicle
    from safetybed.spec import load_scenario

    from .test_highway_driver_conflicts import place

    env = make_env(load_scenario("scenarios/highway/cruise_nade.toml"))
    env.reset(seed=0)
    base = env.unwrapped
    ego = base.vehicle
    subject, slow_leader, other = [v for v in base.road.vehicles if isinstance(v, NaturalisticVehicle)][:3]
    base.road.vehicles[:] = [ego, subject, slow_leader, other]
    place(subject, 0, 200.0, 25.0)
    place(slow_leader, 0, 230.0, 15.0)
    place(ego, 2, 200.0, 25.0)
    place(other, 2, 900.0, 25.0)
    _, _, _, _, info = env.step(np.array([0.0, -1.0]))  # keep speed, change left (lane 2 -> 1)
    entries = [d for d in info.get("decisions", []) if d.get("critical")]
    taken = {r.vehicle_id: r for r in base.last_decisions()}
    assert entries, "the scene should make a background vehicle critical"
    for entry in entries:
        np.testing.assert_allclose(entry["p_full"], taken[entry["vehicle_id"]].pmf, rtol=1e-12, atol=0)
    subject_entries = [d for d in entries if d["vehicle_id"] == subject.vehicle_id]
    assert len(subject_entries) == 1  # the subject is the POV: its change into the ego's new lane is the danger
    assert subject_entries[0]["p_full"][1] == pytest.approx(1e-7)  # ACTION_RIGHT at the unsafe floor


@pytest.mark.parametrize(("q", "epsilon", "p_actual", "expected"), [
    (0.5, 0.9, 0.5, (0.5, 0.9)),  # unchanged p: the split is the original one
    (0.1, 0.9, 0.2, (0.0, 0.5)),  # p_actual > q: all of q is the naturalistic part
    # The overtaking case that produced q_tilde = 1.8: read p = 0.2, q = 0.18, vehicle's own p = 1e-7.
    (0.18, 0.9, 1e-7, (1.0, (1 - 0.18) / (1 - 1e-7))),
])
def test_reconciled_mixture_keeps_q_and_stays_a_probability(q, epsilon, p_actual, expected):
    from safetybed.sims.testing.tester import reconciled_mixture

    q_tilde, eps = reconciled_mixture(q, epsilon, p_actual)
    assert (q_tilde, eps) == pytest.approx(expected, rel=1e-12)
    assert 0.0 <= q_tilde <= 1.0 and 0.0 < eps <= 1.0
    assert (1 - eps) * q_tilde + eps * p_actual == pytest.approx(q, rel=1e-12)
    with pytest.raises(ValueError, match="q = 1"):
        reconciled_mixture(1.0, 0.5, 0.3)
