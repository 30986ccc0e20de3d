"""The highway planner as a controller (issue 15): specs, training, checkpoints, adaptation methods in the runner,
the ``safetybed adapt`` command, its statistics, and certification's refusal of adapting controllers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from safetybed.errors import InputError, SpecError
from safetybed.sims.rollout import EpisodeRecord

from .conftest import REPO_ROOT

SPEC_TEXT = """
name = "tiny_planner"
algorithm = "planner"
scenario = "highway/cut_in"
checkpoint = "weights"

[network]
hidden = 16

[train]
episodes = 4
epochs = 2
dagger_rounds = 0

[adapt.centaur]
lr = {lr}
cumulative = {cumulative}
"""


def _write_spec(folder: Path, name: str = "planner.toml", *, lr: float = 10.0, cumulative: bool = False) -> Path:
    path = folder / name
    path.write_text(SPEC_TEXT.format(lr=lr, cumulative=str(cumulative).lower()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_planner(tmp_path_factory) -> Path:
    """A planner spec with a checkpoint trained in seconds (4 expert episodes, 2 epochs)."""
    from safetybed.control.train import train_from_spec

    folder = tmp_path_factory.mktemp("planner")
    spec = _write_spec(folder)
    summary = train_from_spec(spec)
    assert summary["algorithm"] == "planner" and summary["rounds"][0]["states"] > 0
    return spec


def _scenario_and_spaces(name: str = "highway/cut_in"):
    from safetybed.sims import make_env
    from safetybed.spec.catalogue import load_scenario_arg

    scenario, _ = load_scenario_arg(name)
    env = make_env(scenario)
    spaces = env.observation_space, env.action_space
    env.close()
    return scenario, spaces


def _load(ref: str):
    from safetybed.control import load_controller

    scenario, (observation_space, action_space) = _scenario_and_spaces()
    return load_controller(ref, scenario=scenario, observation_space=observation_space, action_space=action_space)


def test_planner_references_and_spec_errors(tmp_path, tiny_planner):
    assert _load(str(tiny_planner)).method == "none"
    assert _load(f"adapt:tent:{tiny_planner}").method == "tent"
    with pytest.raises(InputError, match="adapt:METHOD:SPEC"):
        _load(f"adapt:bogus:{tiny_planner}")
    with pytest.raises(InputError, match="needs a planner spec"):
        _load(f"adapt:centaur:{REPO_ROOT / 'controllers/highway_sac.toml'}")
    bad = tmp_path / "bad.toml"
    bad.write_text(tiny_planner.read_text().replace("hidden = 16", "hiden = 16"), encoding="utf-8")
    with pytest.raises(SpecError, match=r"network.hiden"):
        _load(f"adapt:none:{bad}")


def test_planner_checkpoint_is_verified(tmp_path, tiny_planner):
    import shutil

    from safetybed.control.planner.checkpoint import load_planner_checkpoint

    checkpoint = load_planner_checkpoint(tiny_planner.parent / "weights")
    assert checkpoint.manifest["format"] == "safetybed-planner/1" and len(checkpoint.vocabulary) == 80
    copy = tmp_path / "weights"
    shutil.copytree(tiny_planner.parent / "weights", copy)
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256"):
        load_planner_checkpoint(copy)


def _rollouts(ref: str, seeds: list[int], scenario_name: str = "highway/cut_in") -> list[EpisodeRecord]:
    from safetybed.adapt.evaluation import prepare_scenario
    from safetybed.sims.batched.rollout import batched_rollouts

    scenario, _ = _scenario_and_spaces(scenario_name)
    return batched_rollouts(prepare_scenario(scenario), lambda: _load(ref), seeds=seeds, indices=list(range(len(seeds))))


@pytest.mark.parametrize("method", ["none", "centaur", "tent"])
def test_adapting_planner_records_do_not_depend_on_the_batch(tiny_planner, method):
    ref = f"adapt:{method}:{tiny_planner}"
    together = _rollouts(ref, [11, 12, 13])
    alone = [_rollouts(ref, [seed])[0] for seed in (11, 12, 13)]
    assert [r.outcome()[1:] for r in together] == [r.outcome()[1:] for r in alone]
    # every step's log carries the planner's terms (absent before issue 15: the per-step log had no "controller")
    terms = [step["controller"] for step in together[0].steps]
    assert all(set(t) == {"choice", "entropy", "updated"} and 0 <= t["entropy"] <= math.log(5) + 1e-9 for t in terms)
    if method == "centaur":
        assert terms[0]["updated"] is False  # nothing buffered at an episode's first decision
    assert any(t["updated"] for t in terms[1:]) == (method != "none")
    none = _rollouts(f"adapt:none:{tiny_planner}", [11])[0]
    assert terms[0]["choice"] == none.steps[0]["controller"]["choice"]  # TENT acts on its pre-step output


def test_centaur_non_cumulative_keeps_stored_weights_and_changes_decisions(tiny_planner):
    controller = _load(f"adapt:centaur:{tiny_planner}")  # lr = 10: large enough to change choices
    stored = {name: value.clone() for name, value in controller.model.state_dict().items()}
    none = _rollouts(f"adapt:none:{tiny_planner}", [21, 22, 23, 24])
    centaur = _rollouts(f"adapt:centaur:{tiny_planner}", [21, 22, 23, 24])
    choices = [[s["controller"]["choice"] for s in r.steps] for r in (*none, *centaur)]
    assert choices[:4] != choices[4:]
    controller.reset(seed=1)
    obs = torch.zeros(controller.observation_space.shape)
    for _ in range(3):
        controller.act(obs.numpy()[None])
    assert all(torch.equal(stored[name], value) for name, value in controller.model.state_dict().items())


def test_evaluation_statistics_match_hand_computed_values():
    from safetybed.adapt.evaluation import auroc, episode_composite, mcnemar_p

    # pairs (pos > neg): 0.9 beats all three; 0.4 beats 0.1 and ties 0.4 -> (3 + 1 + 0.5) / 6
    assert auroc([0.9, 0.4], [0.5, 0.1, 0.4]) == pytest.approx(0.75)
    assert mcnemar_p([True, True, True, False], [False, False, False, False]) == pytest.approx(0.25)
    assert mcnemar_p([True, False], [True, False]) == 1.0
    scenario, _ = _scenario_and_spaces()
    record = EpisodeRecord(index=0, seed=0, episode_return=0, length=20, collision=False, success=True,
                           terminated=False, truncated=True, min_ttc_s=0.5, min_gap_m=3, progress_m=350.0,
                           violations=0, wall_time_s=0)
    # NC = 1, TTC = 0 (0.5 s < 1 s), EP = 350 m / (35 m/s x 20 s) = 0.5  ->  (0 + 2.5) / 10
    assert episode_composite(record, scenario) == pytest.approx(0.25)
    record.collision = True
    assert episode_composite(record, scenario) == 0.0


def test_adapt_command_stores_resumes_and_reports(tmp_path, tiny_planner, cli):
    args = ["adapt", "unshifted", "noisy", "--controller", str(tiny_planner), "--episodes", "4",
            "--latency-episodes", "1", "--store", str(tmp_path / "runs.db"), "--out", str(tmp_path / "out"), "--json"]
    code, stdout, stderr = cli(*args)
    assert code == 0, stderr
    document = json.loads(stdout)
    assert [s["label"] for s in document["suites"]] == ["unshifted", "noisy"]
    rows = document["suites"][0]["methods"]
    assert [r["method"] for r in rows] == ["none", "centaur", "tent"]
    assert all(r["episodes"] == 4 and r["decisions"] > 0 for r in rows)
    assert set(document["latency"]) == {"none", "centaur", "tent"}
    assert document["latency"]["centaur"]["hook"]["n"] > 0
    assert "certificate" in document["certificate_note"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Cluster Entropy as a failure detector" in html and "data:image/png;base64" in html
    code, stdout, stderr = cli(*args)
    assert code == 0, stderr
    again = json.loads(stdout)
    assert [r["run_id"] for s in again["suites"] for r in s["methods"]] == \
        [r["run_id"] for s in document["suites"] for r in s["methods"]]  # reused, not run twice
    code, _, stderr = cli("adapt", "unshifted", "--controller", str(tiny_planner), "--method", "sgd",
                          "--store", str(tmp_path / "runs.db"), "--out", str(tmp_path / "bad"))
    assert code == 2 and "--method" in stderr


def test_certify_refuses_an_adapting_planner(tmp_path, tiny_planner):
    from safetybed.certify.pipeline import resolve_certification

    spec = tmp_path / "certify.toml"
    spec.write_text(f'name = "p"\ncontroller = "{tiny_planner}"\nscenario = "highway/cut_in"\nsigma = 0.5\n'
                    f'budgets = [0.5]\nepisodes = 100\n', encoding="utf-8")
    with pytest.raises(SpecError, match="test-time-adapting planner"):
        resolve_certification(spec)


def test_shifted_suites_validate_and_shift():
    from safetybed.adapt.evaluation import SUITES, resolve_suites

    suites = resolve_suites(["all"])
    assert [label for label, _, _ in suites] == list(SUITES)
    specs = {label: spec for label, spec, _ in suites}
    assert specs["dense"].highway.vehicles > specs["unshifted"].highway.vehicles
    assert specs["aggressive"].highway.cut_in.gap_max_m < specs["unshifted"].highway.cut_in.gap_min_m + 5
    assert specs["noisy"].perturbations.observation_noise_std > 0
    assert specs["mixed"].highway.driver.resolved_unsafe_lane_change_floor > \
        specs["unshifted"].highway.driver.resolved_unsafe_lane_change_floor
    assert np.isclose(specs["unshifted"].perturbations.observation_noise_std, 0.0)


@pytest.mark.parametrize(("method", "adapted_prefix"), [("centaur", "net.scorer."), ("tent", "net.trunk.1.")])
def test_bundle_with_adaptation_changes_only_its_head(tmp_path, tiny_planner, method, adapted_prefix):
    """A deployed planner adapting in the deployment loop changes only the scoring head (Centaur) or the LayerNorm
    (TENT), never the bundle on disk."""
    from safetybed.control.bundle import deploy
    from safetybed.control.runtime import run_in_highway
    from safetybed.control.spaces import sha256_file
    from safetybed.sims import make_env

    bundle = deploy(str(tiny_planner), tmp_path / "bundle", adapt=method)
    before = sha256_file(bundle / "weights.safetensors")
    controller = _load(str(bundle))
    assert controller.method == method
    stored = {name: value.clone() for name, value in controller.model.named_parameters()}
    scenario, _ = _scenario_and_spaces()
    env = make_env(scenario)
    run = run_in_highway(controller, env, steps=5, seed=3, adapt_hook=controller.adapt_hook)
    env.close()
    assert run.control_steps >= 2 and len(run.hook_s) == run.control_steps
    adapted = controller.adapted_parameters()
    changed = {name for name in stored if not torch.equal(stored[name], adapted[name])}
    assert changed and all(name.startswith(adapted_prefix) for name in changed), changed
    assert all(torch.equal(stored[name], value) for name, value in controller.model.named_parameters())
    assert sha256_file(bundle / "weights.safetensors") == before


def test_planner_bundle_round_trip_and_refusals(tmp_path, tiny_planner, cli):
    from safetybed.control.bundle import deploy

    bundle = deploy(str(tiny_planner), tmp_path / "bundle")
    deployed, direct = _load(str(bundle)), _load(f"adapt:none:{tiny_planner}")
    obs = np.random.default_rng(0).normal(size=(5, *direct.observation_space.shape)).astype(np.float32)
    assert all(np.array_equal(deployed.act(row[None]), direct.act(row[None])) for row in obs)
    with pytest.raises(InputError, match="needs a planner spec"):
        deploy(str(REPO_ROOT / "controllers/highway_sac.toml"), tmp_path / "sac", adapt="centaur")
    with pytest.raises(InputError, match="--smoothing-sigma"):
        deploy(str(tiny_planner), tmp_path / "smoothed", smoothing_sigma=0.5)
    manifest = bundle / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"hidden": 16', '"hidden": 17'))
    with pytest.raises(InputError, match="checkpoint_manifest_sha256"):
        _load(str(bundle))
    code, stdout, _ = cli("deploy", str(tiny_planner), "--out", str(tmp_path / "cli"), "--adapt", "tent", "--json")
    assert code == 0 and json.loads(stdout)["adapt"]["method"] == "tent"
    code, _, stderr = cli("deploy", str(tiny_planner), "--out", str(tmp_path / "bad"), "--adapt", "bogus")
    assert code == 2 and "--adapt" in stderr
