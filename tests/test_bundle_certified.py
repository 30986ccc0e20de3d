"""Bundles deployed from a certificate run the certified smoothed policy, and bundles are data, not code.

* A bundle deployed from a certificate acts exactly like the smoothed controller certification rolls out:
  identical actions, step by step, to ``SmoothedController`` (same seeds, same noise draws) and identical
  episodes to the certificate's own stored runner episodes, for a 5-frame-stack and a single-frame CartPole
  controller. On the code before bundle format 2 the frame-stacked case fails: that bundle added the noise to
  the stacked 20-number vector (a fresh draw for every copy of a frame), a policy that was never certified.
* ``load_bundle`` refuses a bundle whose sigma, frame stacking or weights differ from its certificate, or whose
  certificate was edited; each message names the file, the field, the expected and the given value.
* A format-2 bundle loads with ``torch.load``, ``torch.jit`` and ``pickle`` disabled; a format-1 TorchScript
  bundle still loads, with a :class:`SerializedCodeWarning` telling how to rebuild it.
* Optional ed25519 signatures: ``trusted_keys`` refuses unsigned and wrongly signed bundles.

Certificates are made here with few episodes (20, no attacks; about a second each).
"""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from safetybed import seeding_keys
from safetybed.certify.pipeline import certify_from_spec
from safetybed.certify.smoothing import SmoothedController
from safetybed.control.bundle import deploy, deploy_certified
from safetybed.control.checkpoint import load_checkpoint
from safetybed.control.policy import PolicyController
from safetybed.control.runtime import (
    BUNDLE_MANIFEST,
    LEGACY_FORMAT,
    DeterministicPolicy,
    SerializedCodeWarning,
    load_bundle,
    manifest_digest,
)
from safetybed.control.spaces import sha256_file, space_to_json
from safetybed.errors import InputError
from safetybed.report.certificate import write_certificate
from safetybed.runner import RunStore
from safetybed.runner.batch import stored_episodes
from safetybed.sims import make_env
from safetybed.sims.rollout import rollout
from safetybed.spec import ScenarioSpec
from safetybed.threads import torch_threads

from .conftest import REPO_ROOT

#: name -> (controller spec, certification spec, frame stack)
CASES = {
    "stack5": ("controllers/cartpole_ppo_stack5.toml", "certify/cartpole_stack5_sigma0.2.toml", 5),
    "single": ("controllers/cartpole_ppo.toml", "certify/cartpole_sigma0.2.toml", 1),
}
EPISODES = 20


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def certified(tmp_path_factory, one_thread) -> dict[str, dict[str, Path]]:
    """name -> {"certificate": folder, "bundle": folder, "store": sqlite}; made from the repository root, where
    the certificate's controller paths resolve."""
    root = tmp_path_factory.mktemp("certified")
    result = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO_ROOT)
        for name, (_, spec, _) in CASES.items():
            store = root / f"{name}.sqlite"
            certificate = certify_from_spec(spec, episodes=EPISODES, attack_episodes=0, store_path=store)
            write_certificate(certificate, root / f"{name}-certificate")
            bundle = deploy_certified(root / f"{name}-certificate", root / f"{name}-bundle")
            result[name] = {"certificate": root / f"{name}-certificate", "bundle": bundle, "store": store}
    return result


def raw_scenario(certificate_dir: Path) -> ScenarioSpec:
    """The certificate's noise-free scenario without its frame stacking: the raw frames a robot delivers."""
    spec = ScenarioSpec.model_validate(json.loads((certificate_dir / "certificate.json").read_text())["scenario"]["spec"])
    return spec.model_copy(update={"perturbations": spec.perturbations.model_copy(update={"frame_stack": 1})})


def certified_smoothed_controller(name: str, certificate_dir: Path) -> SmoothedController:
    certificate = json.loads((certificate_dir / "certificate.json").read_text())
    base = PolicyController.from_checkpoint(load_checkpoint(REPO_ROOT / certificate["controller"]["checkpoint"]),
                                            name="base")
    return SmoothedController(base, sigma=certificate["sigma"], frame_stack=certificate["smoothing"]["frame_stack"])


def assert_same_actions(bundle, smoothed, scenario: ScenarioSpec, *, seeds: list[int]) -> int:
    """Step both controllers on the same trajectory; every action must be equal. Returns the steps compared."""
    env = make_env(scenario)
    steps = 0
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            bundle.reset(seed=seed)
            smoothed.reset(seed=seed)
            done = False
            while not done:
                batch = np.asarray(obs, dtype=np.float32)[None]
                action = bundle.act(batch)
                expected = smoothed.act(batch)
                assert np.array_equal(action, expected), f"seed {seed}, step {steps}: {action} != {expected}"
                obs, _, terminated, truncated, _ = env.step(action[0])
                done = terminated or truncated
                steps += 1
    finally:
        env.close()
    return steps


# -- (a) the bundle is the certified smoothed controller ------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_certified_bundle_acts_like_the_certified_smoothed_controller(certified, name):
    bundle = load_bundle(certified[name]["bundle"])
    assert bundle.frame_stack == CASES[name][2] and bundle.smoothing_sigma == 0.2
    assert bundle.observation_space.shape == (4,)  # raw frames in; the bundle stacks them itself
    smoothed = certified_smoothed_controller(name, certified[name]["certificate"])
    steps = assert_same_actions(bundle, smoothed, raw_scenario(certified[name]["certificate"]),
                                seeds=[0, 1, 7, 123, 2**31 - 1])
    assert steps > 100  # several real episodes, not a few steps


@pytest.mark.parametrize("name", list(CASES))
def test_certified_bundle_replays_the_certificates_own_episodes(certified, name):
    """With the scenario noise stream, the bundle on raw frames plays the very episodes certification stored."""
    bundle = load_bundle(certified[name]["bundle"], noise_spawn_key=seeding_keys.OBSERVATION_NOISE)
    certificate = json.loads((certified[name]["certificate"] / "certificate.json").read_text())
    with RunStore(certified[name]["store"]) as store:
        records = stored_episodes(store, certificate["samples"]["run_id"])
    assert len(records) == EPISODES
    env = make_env(raw_scenario(certified[name]["certificate"]))
    try:
        for record in records[:8]:
            replay = rollout(env, bundle, seed=record.seed, index=record.index)
            assert replay.outcome() == record.outcome(), f"episode {record.index}"
    finally:
        env.close()


def test_bundle_network_is_bitwise_the_checkpoint_policy(certified):
    checkpoint = load_checkpoint(REPO_ROOT / "controllers" / "weights" / "cartpole_ppo_stack5")
    plain = deploy(str(REPO_ROOT / CASES["stack5"][0]), certified["stack5"]["bundle"].parent / "plain-stack5")
    bundle = load_bundle(plain)
    assert bundle.smoothing_sigma is None and bundle.frame_stack == 5 and bundle.manifest["certificate_id"] is None
    obs = np.random.default_rng(0).normal(0.0, 1.0, size=(64, 20)).astype(np.float32)
    expected = PolicyController.from_checkpoint(checkpoint, name="source").act(obs)
    with torch.no_grad():
        actual = bundle.module(torch.as_tensor(obs)).numpy()
    np.testing.assert_array_equal(actual, expected)


# -- (b) refusals ---------------------------------------------------------------------------------------------
def rewrite_manifest(bundle_dir: Path, **fields) -> None:
    """Edit bundle.json fields and recompute every digest, as someone who can rewrite the folder would."""
    path = bundle_dir / BUNDLE_MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(fields)
    for name in manifest["files"]:
        manifest["files"][name] = sha256_file(bundle_dir / name)
    if manifest.get("certificate_file"):
        manifest["certificate_sha256"] = manifest["files"][manifest["certificate_file"]]
    manifest["manifest_sha256"] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def stack5_copy(certified, tmp_path) -> Path:
    return Path(shutil.copytree(certified["stack5"]["bundle"], tmp_path / "bundle"))


def test_wrong_sigma_is_refused(stack5_copy):
    rewrite_manifest(stack5_copy, smoothing_sigma=0.1)
    with pytest.raises(InputError, match=r"bundle\.json: smoothing_sigma: expected 0\.2 \(from certificate \w+ in "
                                         r"certificate\.json\), got 0\.1"):
        load_bundle(stack5_copy)


def test_wrong_frame_stacking_is_refused(stack5_copy):
    manifest = json.loads((stack5_copy / BUNDLE_MANIFEST).read_text())
    five_frames = manifest["observation_space"]
    wide = {**five_frames, "shape": [20], "low": five_frames["low"] * 5, "high": five_frames["high"] * 5}
    rewrite_manifest(stack5_copy, frame_stack=1, observation_space=wide)  # the stacked vector, stacked outside
    with pytest.raises(InputError, match=r"bundle\.json: frame_stack: expected 5 \(from certificate \w+ in "
                                         r"certificate\.json\), got 1"):
        load_bundle(stack5_copy)


def test_edited_certificate_is_refused(stack5_copy):
    path = stack5_copy / "certificate.json"
    certificate = json.loads(path.read_text())
    certificate["certified"][0]["certified"] += 10.0  # a better certificate than was computed
    path.write_text(json.dumps(certificate, indent=2))
    with pytest.raises(InputError, match=r"certificate\.json: sha256: expected [0-9a-f]{64} \(bundle\.json "
                                         r"certificate_sha256\), got [0-9a-f]{64}; the certificate was edited"):
        load_bundle(stack5_copy)
    rewrite_manifest(stack5_copy)  # even with every digest of the bundle rewritten to match
    with pytest.raises(InputError, match=r"certificate\.json: certificate_id: expected '[0-9a-f]{16}' \(the digest "
                                         r"of the certificate's content\), got '[0-9a-f]{16}'; the certificate was "
                                         r"edited"):
        load_bundle(stack5_copy)


def test_weights_that_are_not_the_certified_ones_are_refused(stack5_copy):
    model = stack5_copy / "policy.safetensors"
    tensors = load_file(str(model))
    tensors["policy.net.0.bias"] = tensors["policy.net.0.bias"] + 1e-3
    save_file(tensors, str(model))
    rewrite_manifest(stack5_copy)
    with pytest.raises(InputError, match=r"policy\.safetensors: sha256: expected [0-9a-f]{64} \(controller\."
                                         r"weights_sha256 of certificate \w+ in certificate\.json\), got [0-9a-f]{64}; "
                                         r"these are not the certified weights"):
        load_bundle(stack5_copy)


def test_deploy_refuses_what_the_certificate_does_not_cover(certified, tmp_path):
    certificate = certified["stack5"]["certificate"]
    with pytest.raises(InputError, match=r"cartpole_ppo\.toml: weights_sha256: expected [0-9a-f]{64} \(controller\."
                                         r"weights_sha256 of certificate"):
        deploy(str(REPO_ROOT / "controllers" / "cartpole_ppo.toml"), tmp_path / "a", certificate=certificate)
    with pytest.raises(InputError, match=r"smoothing_sigma: expected 0\.2 \(sigma of certificate \w+ .*\), got 0\.5"):
        deploy(str(REPO_ROOT / CASES["stack5"][0]), tmp_path / "b", certificate=certificate, smoothing_sigma=0.5)
    with pytest.raises(InputError, match=r"frame_stack: expected 5 \(smoothing\.frame_stack of certificate"):
        deploy(str(REPO_ROOT / CASES["stack5"][0]), tmp_path / "c", certificate=certificate, frame_stack=1)
    assert not any((tmp_path / folder).exists() for folder in "abc")


# -- (c) the old TorchScript format ---------------------------------------------------------------------------
def write_legacy_bundle(folder: Path, checkpoint_dir: Path) -> Path:
    """A ``safetybed-bundle/1`` bundle as the deploy before format 2 wrote it (traced TorchScript)."""
    checkpoint = load_checkpoint(checkpoint_dir)
    folder.mkdir()
    module = DeterministicPolicy(checkpoint.obs_norm, checkpoint.policy).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(module, torch.zeros(2, checkpoint.policy.arch.obs_dim)).save(str(folder / "policy.ts"))
    (folder / "checkpoint_manifest.json").write_bytes((checkpoint_dir / "manifest.json").read_bytes())
    manifest = {"format": LEGACY_FORMAT, "controller": "cartpole_ppo",
                "source": {"ref": "controllers/cartpole_ppo.toml"}, "source_weights_sha256": checkpoint.weights_sha256,
                "scenario": "classic/cartpole", "observation_space": space_to_json(checkpoint.observation_space),
                "action_space": space_to_json(checkpoint.action_space), "control_rate_hz": 50.0,
                "smoothing_sigma": None, "certificate_id": None, "package_version": "0.1.0",
                "torch_version": torch.__version__, "model_file": "policy.ts",
                "files": {name: sha256_file(folder / name) for name in ("policy.ts", "checkpoint_manifest.json")}}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / BUNDLE_MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_old_torchscript_bundle_still_loads_with_a_warning(tmp_path):
    checkpoint_dir = REPO_ROOT / "controllers" / "weights" / "cartpole_ppo"
    legacy = write_legacy_bundle(tmp_path / "legacy", checkpoint_dir)
    with pytest.warns(SerializedCodeWarning, match=r"safetybed-bundle/1 bundle: its policy\.ts is TorchScript, "
                                                   r"serialized code .* `safetybed deploy controllers/cartpole_ppo\.toml "
                                                   r"--out NEW_DIR`"):
        bundle = load_bundle(legacy)
    obs = np.random.default_rng(1).normal(0.0, 1.0, size=(32, 4)).astype(np.float32)
    source = PolicyController.from_checkpoint(load_checkpoint(checkpoint_dir), name="source")
    np.testing.assert_array_equal(bundle.act(obs), source.act(obs))


# -- (d) loading runs no code ---------------------------------------------------------------------------------
def test_new_bundle_loads_without_executing_code(certified, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the bundle load path deserialised code")

    for target, attribute in [(torch, "load"), (torch.jit, "load"), (torch.jit, "trace"), (torch.jit, "script"),
                              (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(target, attribute, refuse)
    for name in CASES:
        bundle = load_bundle(certified[name]["bundle"])
        bundle.reset(seed=0)
        assert bundle.act(np.zeros((3, 4), dtype=np.float32)).shape == (3,)
    with pytest.raises(AssertionError, match="deserialised code"):  # the patch is live: the old format trips it
        torch.jit.load("policy.ts")


# -- signatures -----------------------------------------------------------------------------------------------
def test_signed_bundles_and_trusted_keys(certified, tmp_path):
    pytest.importorskip("cryptography")
    from safetybed.control.bundle import generate_signing_key, sign_bundle

    key, public = generate_signing_key(tmp_path / "keys" / "robot.pem")
    other_key, other_public = generate_signing_key(tmp_path / "keys" / "other.pem")
    assert public.name == "robot.pub.pem" and (key.stat().st_mode & 0o777) == 0o600
    bundle_dir = Path(shutil.copytree(certified["single"]["bundle"], tmp_path / "bundle"))
    with pytest.raises(InputError, match=r"bundle\.sig: missing; the bundle is unsigned"):
        load_bundle(bundle_dir, trusted_keys=[public])
    sign_bundle(bundle_dir, key)
    assert load_bundle(bundle_dir, trusted_keys=[other_public, public]).frame_stack == 1
    with pytest.raises(InputError, match=r"bundle\.sig: signature: does not verify with any of the 1 trusted key"):
        load_bundle(bundle_dir, trusted_keys=[other_public])
    sign_bundle(bundle_dir, other_key)  # re-signed by someone else
    with pytest.raises(InputError, match="does not verify"):
        load_bundle(bundle_dir, trusted_keys=[public])
    with pytest.raises(InputError, match="exists; a key is never overwritten"):
        generate_signing_key(key)


# -- the command line -----------------------------------------------------------------------------------------
def test_deploy_command_from_a_certificate(certified, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    certificate = certified["stack5"]["certificate"]
    code, out, err = cli("deploy", str(certificate), "--out", str(tmp_path / "a"), "--json")
    assert code == 0, err
    manifest = json.loads(out)
    expected_id = json.loads((certificate / "certificate.json").read_text())["certificate_id"]
    assert manifest["certificate_id"] == expected_id and manifest["frame_stack"] == 5
    assert manifest["smoothing_sigma"] == 0.2 and "certificate.json" in manifest["files"]
    assert manifest["certificate_sha256"] == sha256_file(certificate / "certificate.json")

    code, out, err = cli("deploy", CASES["stack5"][0], "--certificate", str(certificate / "certificate.json"),
                         "--out", str(tmp_path / "b"), "--json")
    assert code == 0, err
    assert json.loads(out)["certificate_id"] == expected_id

    code, _, err = cli("deploy", CASES["single"][0], "--certificate", str(certificate), "--out", str(tmp_path / "c"))
    assert code == 2 and "weights_sha256: expected" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_keygen_and_signed_deploy_commands(certified, tmp_path, cli, monkeypatch):
    pytest.importorskip("cryptography")
    monkeypatch.chdir(REPO_ROOT)
    code, out, err = cli("keygen", "--out", str(tmp_path / "key.pem"), "--json")
    assert code == 0, err
    keys = json.loads(out)
    code, _, err = cli("deploy", str(certified["single"]["certificate"]), "--out", str(tmp_path / "bundle"),
                       "--sign-key", keys["private_key"])
    assert code == 0, err
    assert load_bundle(tmp_path / "bundle", trusted_keys=[keys["public_key"]]).smoothing_sigma == 0.2
