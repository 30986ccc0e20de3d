"""Smoothed controllers, certification specs and the certify pipeline (small episode counts; seconds each)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from safetybed import seeding_keys
from safetybed.certify import estimators
from safetybed.certify.pipeline import resolve_certification
from safetybed.certify.smoothing import SmoothedController, smoothed_scenario, vector_rollouts
from safetybed.control import load_controller
from safetybed.control.checkpoint import load_checkpoint
from safetybed.control.networks import ObsNormalizer, Policy, PolicyArch
from safetybed.control.policy import PolicyController
from safetybed.errors import SpecError
from safetybed.report.certificate import certify_to_folder
from safetybed.runner import RunStore
from safetybed.runner.seeding import episode_seed
from safetybed.sims import make_env
from safetybed.sims.base import ObservationNoise
from safetybed.sims.framestack import FrameStack
from safetybed.sims.rollout import rollout
from safetybed.spec.catalogue import load_scenario_arg
from safetybed.spec.certify import load_certify_spec

from .conftest import REPO_ROOT

CARTPOLE_PPO = REPO_ROOT / "controllers" / "cartpole_ppo.toml"


def cartpole_env_and_controller(*, sigma: float = 0.0):
    scenario, _ = load_scenario_arg("classic/cartpole")
    if sigma:
        scenario = smoothed_scenario(scenario, sigma=sigma)
    env = make_env(scenario)
    controller = load_controller(str(CARTPOLE_PPO), scenario=scenario, observation_space=env.observation_space,
                                 action_space=env.action_space)
    return scenario, env, controller


def random_policy_controller(obs_dim: int, *, seed: int) -> PolicyController:
    """A 2-action categorical policy with weights drawn from a seeded generator (no global torch RNG)."""
    import gymnasium as gym

    policy = Policy(PolicyArch(kind="categorical", obs_dim=obs_dim, act_dim=2, hidden=(16,), activation="tanh"))
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.copy_(torch.as_tensor(rng.normal(0.0, 1.0, size=tuple(parameter.shape)), dtype=torch.float32))
    space = gym.spaces.Box(-np.inf, np.inf, shape=(obs_dim,), dtype=np.float32)
    return PolicyController(policy, ObsNormalizer(obs_dim, enabled=False), observation_space=space,
                            action_space=gym.spaces.Discrete(2), name="random-policy")


# -- the smoothed controller ------------------------------------------------------------------------------
def test_controller_side_smoothing_equals_scenario_side_draw_for_draw():
    """SmoothedController on the clean scenario == base controller on the noisy scenario, record for record,
    when both draw from the same noise stream: the pipeline's scenario-side smoothing is the smoothed policy."""
    _, noisy_env, base = cartpole_env_and_controller(sigma=0.4)
    _, clean_env, base_again = cartpole_env_and_controller()
    smoothed = SmoothedController(base_again, sigma=0.4, noise_spawn_key=seeding_keys.OBSERVATION_NOISE)
    for index in range(12):
        seed = episode_seed(3, index)
        scenario_side = rollout(noisy_env, base, seed=seed, index=index)
        controller_side = rollout(clean_env, smoothed, seed=seed, index=index)
        assert controller_side.outcome() == scenario_side.outcome()


def test_smoothing_noise_is_fresh_gaussian_per_step_and_reseeded():
    base = random_policy_controller(4, seed=0)
    smoothed = SmoothedController(base, sigma=0.3)
    obs = np.zeros((1, 4), dtype=np.float32)
    seen = []
    base.act = lambda batch, **_: (seen.append(np.array(batch)), np.zeros(len(batch), dtype=np.int64))[1]
    smoothed.reset(seed=5)
    for _ in range(4000):
        smoothed.act(obs)
    draws = np.concatenate(seen)
    # 16,000 N(0, 0.3^2) draws: mean within 4 standard errors of 0, std within 2 %; lag-1 correlation ~ 0.
    assert abs(draws.mean()) < 4 * 0.3 / np.sqrt(draws.size)
    assert draws.std() == pytest.approx(0.3, rel=0.02)
    assert abs(np.corrcoef(draws[:-1, 0], draws[1:, 0])[0, 1]) < 4 / np.sqrt(draws.shape[0])
    first = draws[:3].copy()
    seen.clear()
    smoothed.reset(seed=5)
    for _ in range(3):
        smoothed.act(obs)
    assert np.array_equal(np.concatenate(seen), first)  # reset(seed) fixes every draw


def test_default_noise_stream_differs_from_the_scenario_noise():
    """The default spawn key keeps a smoothed controller on a noisy scenario from re-using the scenario's draws."""
    base = random_policy_controller(4, seed=0)
    seen = []
    base.act = lambda batch, **_: (seen.append(np.array(batch)), np.zeros(len(batch), dtype=np.int64))[1]
    smoothed = SmoothedController(base, sigma=1.0)
    smoothed.reset(seed=11)
    smoothed.act(np.zeros((1, 4), dtype=np.float32))
    env_rng = np.random.default_rng(np.random.SeedSequence(11, spawn_key=(seeding_keys.OBSERVATION_NOISE,)))
    assert not np.allclose(seen[0][0], env_rng.normal(0.0, 1.0, size=4))


def test_frame_stack_noise_is_drawn_per_raw_frame_before_stacking():
    """Controller-side stacking == FrameStack(ObservationNoise(env)); consecutive stacks share their frames."""
    scenario, _ = load_scenario_arg("classic/cartpole")
    base = random_policy_controller(20, seed=1)
    inputs = []
    act = base.act
    base.act = lambda batch, **kw: (inputs.append(np.array(batch)), act(batch, **kw))[1]
    smoothed = SmoothedController(base, sigma=0.2, frame_stack=5, noise_spawn_key=seeding_keys.OBSERVATION_NOISE)
    assert smoothed.observation_space.shape == (4,)
    stacked_env = FrameStack(ObservationNoise(make_env(scenario), std=0.2), frames=5)
    base_only = random_policy_controller(20, seed=1)
    for index in range(6):
        seed = episode_seed(0, index)
        inputs.clear()
        controller_side = rollout(make_env(scenario), smoothed, seed=seed, index=index)
        scenario_side = rollout(stacked_env, base_only, seed=seed, index=index)
        assert controller_side.outcome() == scenario_side.outcome()
        frames = np.concatenate(inputs)[:, :].reshape(len(inputs), 5, 4)
        assert np.array_equal(frames[0, 0], frames[0, 4])  # the first frame fills every slot
        assert np.array_equal(frames[1:, :4], frames[:-1, 1:])  # one noise draw per raw frame, shifted along


def test_smoothed_controller_rejects_bad_arguments():
    base = random_policy_controller(20, seed=0)
    with pytest.raises(ValueError, match="sigma"):
        SmoothedController(base, sigma=-1.0)
    with pytest.raises(ValueError, match="frames"):
        SmoothedController(base, sigma=0.1, frame_stack=3)  # 20 is not a multiple of 3
    with pytest.raises(ValueError, match="observation_noise_std"):
        smoothed_scenario(load_scenario_arg("classic/cartpole_noisy")[0], sigma=0.2)


def test_vector_rollouts_match_the_runner_records():
    scenario, env, controller = cartpole_env_and_controller(sigma=0.2)
    indices = list(range(24))
    runner = [rollout(env, controller, seed=episode_seed(7, i), index=i) for i in indices]
    vectorised = sorted(vector_rollouts(scenario, controller, run_seed=7, indices=indices, num_envs=5),
                        key=lambda record: record.index)
    assert [r.index for r in vectorised] == indices
    assert [r.seed for r in vectorised] == [r.seed for r in runner]
    # Batched float32 products can round differently from batch-of-one products; with these seeds no action
    # is near-tied, so every record is identical (a pinned regression, not a guarantee).
    assert [r.outcome() for r in vectorised] == [r.outcome() for r in runner]


def test_vector_rollouts_refuse_stochastic_controllers():
    scenario, env, controller = cartpole_env_and_controller(sigma=0.2)
    controller.deterministic = False
    with pytest.raises(ValueError, match="deterministic"):
        next(vector_rollouts(scenario, controller, run_seed=0, indices=[0]))


# -- specs ----------------------------------------------------------------------------------------------------
def write_spec(tmp_path: Path, body: str, *, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


BASE_SPEC = f"""
name = "test_cartpole"
controller = "{CARTPOLE_PPO}"
scenario = "classic/cartpole"
sigma = 0.2
budgets = [0.2, 0.6]
episodes = 60
quantity = "expected_return"
seed = 0

[attack]
episodes = 3
min_log_prob_gaps = [0.0]
spend_fractions = [1.0]
pgd_steps = 3
noise_samples = 4
"""


@pytest.mark.parametrize(("edit", "field"), [
    ('scenario = "classic/cartpole_noisy"', "scenario"),
    ('scenario = "classic/pendulum"', "controller"),
    ('controller = "no_such_controller"', "controller"),
    ('scenario = "classic/no_such"', "scenario"),
])
def test_resolve_errors_name_file_and_field(tmp_path, edit, field):
    key = edit.split(" = ")[0]
    body = "\n".join(edit if line.startswith(f"{key} = ") else line for line in BASE_SPEC.splitlines())
    path = write_spec(tmp_path, body)
    with pytest.raises(SpecError) as caught:
        resolve_certification(path)
    assert caught.value.file == str(path) and caught.value.field == field


def test_shielded_controllers_are_refused(tmp_path):
    """The attack checks act with the policy network alone, so they would attack a different controller."""
    body = BASE_SPEC.replace(f'"{CARTPOLE_PPO}"', f'"{REPO_ROOT / "controllers" / "highway_sac_shielded.toml"}"').replace(
        '"classic/cartpole"', '"highway/cruise"').replace('quantity = "expected_return"', 'quantity = "no_collision"')
    path = write_spec(tmp_path, body)
    with pytest.raises(SpecError) as caught:
        resolve_certification(path)
    assert caught.value.file == str(path) and caught.value.field == "controller"
    assert "shield = 'idm'" in caught.value.reason and "highway_sac.toml" in caught.value.reason


def test_integer_estimator_needs_integer_returns(tmp_path):
    body = BASE_SPEC.replace('controller = ', 'estimator = "integer"\ncontroller = ').replace(
        f'"{CARTPOLE_PPO}"', f'"{REPO_ROOT / "controllers" / "pendulum_dsac_t.toml"}"').replace(
        '"classic/cartpole"', '"classic/pendulum"')
    with pytest.raises(SpecError) as caught:
        resolve_certification(write_spec(tmp_path, body))
    assert caught.value.field == "estimator"


def test_estimator_follows_the_scenario(tmp_path):
    assert resolve_certification(write_spec(tmp_path, BASE_SPEC)).estimator == "integer"
    dkw = resolve_certification(write_spec(tmp_path, BASE_SPEC.replace('quantity = "expected_return"',
                                                                        'estimator = "dkw"'), name="dkw.toml"))
    assert dkw.estimator == "dkw" and dkw.return_range == (0.0, 200.0)


def test_cli_style_errors_for_bad_spec_values(tmp_path):
    path = write_spec(tmp_path, BASE_SPEC.replace("budgets = [0.2, 0.6]", "budgets = [0.6, 0.2]"))
    with pytest.raises(SpecError) as caught:
        load_certify_spec(path)
    assert caught.value.field == "budgets" and "increasing" in caught.value.reason
    path = write_spec(tmp_path, BASE_SPEC.replace("seed = 0", "seed = 0\nsigmaa = 1.0"), name="typo.toml")
    with pytest.raises(SpecError) as caught:
        load_certify_spec(path)
    assert caught.value.field == "sigmaa" and "unknown key" in caught.value.reason


def test_every_shipped_certification_spec_resolves():
    paths = sorted((REPO_ROOT / "certify").glob("*.toml"))
    assert len(paths) >= 7
    for path in paths:
        loaded = load_certify_spec(path)
        cert = resolve_certification(path)
        assert cert.spec == loaded.spec
        assert cert.checkpoint.weights_sha256 == json.loads(
            (cert.checkpoint.path / "manifest.json").read_text())["weights_sha256"]


# -- the pipeline ---------------------------------------------------------------------------------------------
def test_certify_pipeline_end_to_end_reuse_and_resume(tmp_path):
    spec_path = write_spec(tmp_path, BASE_SPEC)
    store_path = tmp_path / "runs.sqlite"
    certificate = certify_to_folder(spec_path, out_dir=tmp_path / "out", store_path=store_path, workers=1)

    written = json.loads((tmp_path / "out" / "certificate.json").read_text())
    assert written["certificate_id"] == certificate["certificate_id"]
    assert (tmp_path / "out" / "report.html").is_file()
    with RunStore(store_path) as store:
        records = store.episodes(certificate["samples"]["run_id"])
        info = store.get_run(certificate["samples"]["run_id"])
    assert len(records) == 60 and certificate["samples"]["episodes"] == 60
    assert json.loads(info.scenario_json)["perturbations"]["observation_noise_std"] == 0.2
    returns = np.array([r.episode_return for r in records])
    for row in certificate["certified"]:  # the certificate is the estimator on the stored episodes
        expected = estimators.expectation_bound_integer(returns, sigma=0.2, budget=row["budget"], r_max=200,
                                                        alpha=0.05)
        assert row["certified"] == pytest.approx(expected.bound, rel=1e-12)
    values = [row["certified"] for row in certificate["certified"]]
    assert values[0] > values[1] and certificate["clean"]["certified_at_zero"] > values[0]
    assert certificate["clean"]["estimate"] == pytest.approx(returns.mean())
    assert certificate["controller"]["weights_sha256"] == load_checkpoint(
        REPO_ROOT / "controllers" / "weights" / "cartpole_ppo").weights_sha256
    assert {"safetybed", "python", "torch", "numpy", "scipy", "gymnasium"} <= set(certificate["versions"])
    attacks = certificate["attacks"]
    assert [row["budget"] for row in attacks["per_budget"]] == [0.2, 0.6]
    assert attacks["configurations_tried"] == 2 * 2 + 1 and attacks["attacked_episodes"] == 5 * 3
    for row in attacks["per_budget"]:
        assert row["pass"] == (row["attacked_upper"] >= row["certified"] - 1e-9)
    assert certificate["violations"] == len(attacks["violations"])
    assert certificate["reference"]["certified"][2] == 185.3  # published re-run curve, sigma = 0.2

    again = certify_to_folder(spec_path, out_dir=tmp_path / "again", store_path=store_path, attack_episodes=0)
    assert again["samples"]["run"] == "reused" and again["samples"]["run_id"] == certificate["samples"]["run_id"]
    assert [r["certified"] for r in again["certified"]] == values
    assert again["attacks"]["not_run"].startswith("not run")

    # Kill-and-resume: drop some episodes; the next certify finishes the same run to the same records.
    connection = sqlite3.connect(store_path)
    with connection:
        connection.execute("DELETE FROM episodes WHERE run_id = ? AND idx >= 40", (certificate["samples"]["run_id"],))
        connection.execute("UPDATE runs SET status = 'running'")
    connection.close()
    resumed = certify_to_folder(spec_path, out_dir=tmp_path / "resumed", store_path=store_path, attack_episodes=0)
    assert resumed["samples"]["run"] == "resumed"
    assert resumed["certificate_id"] == again["certificate_id"]  # same run, same settings: same certificate
    with RunStore(store_path) as store:
        assert [r.outcome() for r in store.episodes(resumed["samples"]["run_id"])] == [r.outcome() for r in records]


def test_a_run_is_not_reused_for_retrained_weights(tmp_path):
    import shutil

    from safetybed.control.checkpoint import save_checkpoint

    weights = tmp_path / "weights"
    shutil.copytree(REPO_ROOT / "controllers" / "weights" / "cartpole_ppo", weights)
    controller = tmp_path / "controller.toml"
    controller.write_text(CARTPOLE_PPO.read_text().replace('checkpoint = "weights/cartpole_ppo"',
                                                           'checkpoint = "weights"'), encoding="utf-8")
    spec = write_spec(tmp_path, BASE_SPEC.replace(f'"{CARTPOLE_PPO}"', f'"{controller}"'))
    first = certify_to_folder(spec, out_dir=tmp_path / "a", store_path=tmp_path / "runs.sqlite", attack_episodes=0)
    checkpoint = load_checkpoint(weights)
    with torch.no_grad():
        checkpoint.policy.net[-1].bias.add_(0.01)  # "retrained": same architecture, different weights
    save_checkpoint(weights, policy=checkpoint.policy, obs_norm=checkpoint.obs_norm, algorithm="ppo",
                    observation_space=checkpoint.observation_space, action_space=checkpoint.action_space, config={})
    second = certify_to_folder(spec, out_dir=tmp_path / "b", store_path=tmp_path / "runs.sqlite", attack_episodes=0)
    assert second["samples"]["run"] == "new" and second["samples"]["run_id"] != first["samples"]["run_id"]
    assert second["controller"]["weights_sha256"] != first["controller"]["weights_sha256"]


def test_binary_quantity_counts_episodes(tmp_path):
    body = BASE_SPEC.replace('quantity = "expected_return"', 'quantity = "no_collision"')
    certificate = certify_to_folder(write_spec(tmp_path, body), out_dir=tmp_path / "out",
                                    store_path=tmp_path / "runs.sqlite", attack_episodes=0)
    with RunStore(tmp_path / "runs.sqlite") as store:
        records = store.episodes(certificate["samples"]["run_id"])
    safe = sum(not r.collision for r in records)
    expected = estimators.binary_bound(safe, len(records), sigma=0.2, budget=0.6, alpha=0.05)
    assert certificate["certified"][1]["certified"] == pytest.approx(expected.bound)
    assert certificate["method"] == "binary-clopper-pearson" and certificate["reference"] is None


def test_frame_stacked_certification_runs_on_the_stacked_controller(tmp_path):
    scenario = tmp_path / "stack5.toml"
    scenario.write_text(f'extends = "{REPO_ROOT / "scenarios" / "classic" / "cartpole.toml"}"\n'
                        f'name = "test/cartpole_stack5"\n[perturbations]\nframe_stack = 5\n', encoding="utf-8")
    body = BASE_SPEC.replace(f'"{CARTPOLE_PPO}"', f'"{REPO_ROOT / "controllers" / "cartpole_ppo_stack5.toml"}"'
                             ).replace('"classic/cartpole"', f'"{scenario}"')
    cert = resolve_certification(write_spec(tmp_path, body))
    assert cert.frame_stack == 5 and cert.checkpoint.policy.arch.obs_dim == 20
    certificate = certify_to_folder(write_spec(tmp_path, body), out_dir=tmp_path / "out",
                                    store_path=tmp_path / "runs.sqlite", attack_episodes=2)
    assert certificate["smoothing"]["frame_stack"] == 5
    assert certificate["clean"]["mean_return"] > 150  # trained with this noise: balances nearly always
    # the attack perturbs raw frames (4 numbers) of the stacked controller, within the budget
    assert [row["budget"] for row in certificate["attacks"]["per_budget"]] == [0.2, 0.6]
    assert all(run["budget_spent_max"] <= run["budget"] * (1 + 1e-6) for run in certificate["attacks"]["runs"])


def test_bench_certify_reports_both_paths():
    from safetybed.certify.bench import bench_certify, format_table

    result = bench_certify(REPO_ROOT / "certify" / "cartpole_sigma0.2.toml", episodes=6, num_envs=3)
    assert result["episodes"] == 6 and result["identical_records"] == 6
    assert result["baseline_episodes_per_s"] > 0 and result["vectorised_episodes_per_s"] > 0
    assert "ratio" in format_table(result)
