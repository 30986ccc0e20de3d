"""Controller specs: each trains through the CLI on a tiny budget; shipped weights load and act via the runner."""

from __future__ import annotations

import json

import pytest

from safetybed.control.checkpoint import load_checkpoint
from safetybed.errors import InputError
from safetybed.spec.controller import load_controller_spec
from safetybed.spec.planner import is_planner_spec, load_planner_spec

from .conftest import REPO_ROOT

ALL_SPECS = sorted((REPO_ROOT / "controllers").glob("*.toml"))
PLANNERS = [spec for spec in ALL_SPECS if is_planner_spec(spec)]  # tests/test_planner.py covers their training
SPECS = [spec for spec in ALL_SPECS if spec not in PLANNERS]
SHIPPED = [spec for spec in SPECS if load_controller_spec(spec).checkpoint_dir.exists()]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_controller_spec_is_shipped_with_weights():
    assert SPECS and PLANNERS, "controllers/ has no specs"
    assert [spec.name for spec in SHIPPED] == [spec.name for spec in SPECS]
    assert all(load_planner_spec(spec).checkpoint_dir.exists() for spec in PLANNERS)


@pytest.mark.parametrize("spec", PLANNERS, ids=[spec.stem for spec in PLANNERS])
def test_shipped_planners_act_through_the_runner(cli, tmp_path, spec):
    code, stdout, stderr = cli("run", "highway/cut_in", "--controller", f"adapt:centaur:{spec}", "--episodes", "3",
                               "--backend", "batched", "--store", str(tmp_path / "runs.db"), "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["episodes"] == 3


def test_a_planner_spec_where_a_policy_spec_is_expected_is_a_clear_error():
    with pytest.raises(InputError, match="planner spec"):
        load_controller_spec(PLANNERS[0])


@pytest.mark.parametrize("spec", SPECS, ids=[spec.stem for spec in SPECS])
def test_train_runs_on_a_tiny_budget(cli, tmp_path, spec):
    code, stdout, stderr = cli("train", str(spec), "--steps", "64", "--device", "cpu", "--out", str(tmp_path),
                               "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["env_steps"] >= 64
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.manifest["algorithm"] == load_controller_spec(spec).spec.algorithm
    assert (tmp_path / "training_log.csv").read_text().startswith("env_steps")


def test_train_threads_option_sets_and_restores_torch_threads(cli, tmp_path):
    import torch

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    code, stdout, stderr = cli("train", str(SPECS[0]), "--steps", "64", "--device", "cpu", "--threads", str(wanted),
                               "--out", str(tmp_path), "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["torch_threads"] == wanted and torch.get_num_threads() == before
    code, _, stderr = cli("train", str(SPECS[0]), "--threads", "0", "--out", str(tmp_path / "zero"))
    assert code == 2 and "--threads" in stderr


@pytest.mark.parametrize("spec", SHIPPED, ids=[spec.stem for spec in SHIPPED])
def test_shipped_weights_act_through_the_runner(cli, tmp_path, spec):
    loaded = load_controller_spec(spec)
    code, stdout, stderr = cli("run", loaded.scenario_ref(), "--controller", str(spec), "--episodes", "3",
                               "--store", str(tmp_path / "s.sqlite"), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["episodes"] == 3 and summary["controller"] == str(spec)
    manifest = load_checkpoint(loaded.checkpoint_dir).manifest
    assert (loaded.checkpoint_dir / "weights.safetensors").stat().st_size < 200_000  # tens of KB
    assert manifest["algorithm"] == loaded.spec.algorithm


def test_tampered_checkpoint_is_refused(tmp_path):
    import shutil

    source = load_controller_spec(SHIPPED[0]).checkpoint_dir
    copy = tmp_path / "ckpt"
    shutil.copytree(source, copy)
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256"):
        load_checkpoint(copy)


@pytest.mark.parametrize(("text", "field"), [
    ('name = "x"\nalgorithm = "sac"\nscenario = "classic/pendulum"\ncheckpoint = "w"\n[hyper]\nlearning_rat = 1.0\n',
     "hyper.learning_rat"),
    ('name = "x"\nalgorithm = "a2c"\nscenario = "classic/pendulum"\ncheckpoint = "w"\n', "algorithm"),
    ('name = "x"\nalgorithm = "sac"\nscenario = "classic/pendulum"\ncheckpoint = "w"\n[train]\nenvs = 0\n',
     "train.envs"),
    ('name = "x"\nalgorithm = "sac"\nscenario = "classic/pendulum"\ncheckpoint = "w"\n[network]\nwidth = 3\n',
     "network.width"),
])
def test_malformed_controller_spec_exits_2(cli, tmp_path, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    code, _, stderr = cli("train", str(path), "--steps", "10", "--out", str(tmp_path / "out"))
    assert code == 2
    assert "bad.toml" in stderr and field in stderr and "Traceback" not in stderr


def test_non_utf8_controller_spec_exits_2(cli, tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    code, _, stderr = cli("train", str(path), "--steps", "10")
    assert code == 2 and "latin1.toml" in stderr and "UTF-8" in stderr
