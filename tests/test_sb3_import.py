"""SB3 import: our actions equal SB3's own ``predict(deterministic=True)``, and no pickle in the zip ever runs.

The reference is Stable-Baselines3 itself: tiny models are trained here for a few hundred steps, saved with
``model.save`` and loaded both ways.
"""

from __future__ import annotations

import base64
import io
import json
import pathlib
import pickle
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from safetybed.control.sb3_import import SB3Controller, load_sb3_controller
from safetybed.errors import InputError

sb3 = pytest.importorskip("stable_baselines3")

SMALL_NET = {"net_arch": [16, 16]}
#: (file stem, algorithm, env id, constructor options, training steps)
MODELS = {
    "ppo_cartpole": ("PPO", "CartPole-v1", {"n_steps": 64, "batch_size": 32, "n_epochs": 1}, 128),
    "ppo_pendulum": ("PPO", "Pendulum-v1", {"n_steps": 64, "batch_size": 32, "n_epochs": 1}, 128),
    "dqn_cartpole": ("DQN", "CartPole-v1", {"learning_starts": 50}, 200),
    "sac_pendulum": ("SAC", "Pendulum-v1", {"learning_starts": 50, "batch_size": 32}, 150),
    # A declared non-default activation: cloudpickles policy_kwargs, so the activation must come from the
    # plain-text attributes SB3 writes beside the payload.
    "td3_pendulum": ("TD3", "Pendulum-v1", {"learning_starts": 50, "batch_size": 32,
                                             "policy_kwargs": {**SMALL_NET, "activation_fn": torch.nn.Tanh}}, 150),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sb3")
    paths = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 16-unit layers: intra-op threads only add contention on a busy CI machine
    try:
        for stem, (algorithm, env_id, options, steps) in MODELS.items():
            options = {"policy_kwargs": SMALL_NET, **options}
            model = getattr(sb3, algorithm)("MlpPolicy", env_id, seed=0, device="cpu", **options)
            model.learn(steps)
            model.save(folder / f"{stem}.zip")
            paths[stem] = folder / f"{stem}.zip"
    finally:
        torch.set_num_threads(threads)
    return paths


def observations(env: gym.Env, count: int = 100) -> np.ndarray:
    """``count`` observations, wider than the training distribution so clipping and squashing bind."""
    rng = np.random.default_rng(1234)
    return (3.0 * rng.standard_normal((count, *env.observation_space.shape))).astype(np.float32)


@pytest.mark.parametrize("stem", list(MODELS))
def test_actions_equal_sb3_predict(trained, stem):
    algorithm, env_id, _, _ = MODELS[stem]
    env = gym.make(env_id)
    ours = load_sb3_controller(trained[stem], observation_space=env.observation_space,
                               action_space=env.action_space)
    theirs = getattr(sb3, algorithm).load(trained[stem], device="cpu")
    obs = observations(env)
    expected, _ = theirs.predict(obs, deterministic=True)
    actual = ours.act(obs)
    assert actual.shape == expected.shape
    if isinstance(env.action_space, gym.spaces.Discrete):
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
        assert env.action_space.contains(actual[0])
    # one row at a time gives the same actions as the batch
    np.testing.assert_allclose(np.concatenate([ours.act(row[None]) for row in obs[:5]]), actual[:5], atol=1e-6)


def test_architecture_is_inferred_from_tensors(trained):
    env = gym.make("Pendulum-v1")
    td3 = load_sb3_controller(trained["td3_pendulum"], observation_space=env.observation_space,
                              action_space=env.action_space)
    assert td3.model.family == "td3" and td3.model.hidden == (16, 16)
    assert td3.model.activation == "Tanh" and td3.model.activation_declared
    sac = load_sb3_controller(trained["sac_pendulum"], observation_space=env.observation_space,
                              action_space=env.action_space)
    assert sac.model.activation == "ReLU" and not sac.model.activation_declared  # SB3's SAC default


def test_stochastic_actions_are_seeded_and_in_bounds(trained):
    env = gym.make("Pendulum-v1")
    controller = load_sb3_controller(trained["sac_pendulum"], observation_space=env.observation_space,
                                     action_space=env.action_space)
    obs = observations(env, 20)
    controller.reset(seed=7)
    first = controller.act(obs, deterministic=False)
    controller.reset(seed=7)
    np.testing.assert_array_equal(controller.act(obs, deterministic=False), first)
    assert np.all(np.abs(first) <= 2.0) and not np.allclose(first, controller.act(obs))


def test_mismatched_spaces_are_refused(trained):
    pendulum = gym.make("Pendulum-v1")
    with pytest.raises(InputError, match="ppo_cartpole.zip"):
        load_sb3_controller(trained["ppo_cartpole"], observation_space=pendulum.observation_space,
                            action_space=pendulum.action_space)
    wide = gym.spaces.Box(-5.0, 5.0, (1,), np.float32)  # SAC unscales with the bounds it was trained with
    with pytest.raises(InputError, match="action bound"):
        load_sb3_controller(trained["sac_pendulum"], observation_space=pendulum.observation_space,
                            action_space=wide)


def rewrite_zip(source: Path, target: Path, *, data: dict | None = None, policy_pth: bytes | None = None) -> Path:
    """Copy an SB3 zip, replacing its ``data`` JSON and/or ``policy.pth`` bytes."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            content = old.read(name)
            if name == "data" and data is not None:
                content = json.dumps(data).encode()
            elif name == "policy.pth" and policy_pth is not None:
                content = policy_pth
            new.writestr(name, content)
    return target


def read_data(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("data"))


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("policy_class.__init__", "<function ActorCriticCnnPolicy.__init__ at 0x7f0>", "ActorCriticCnnPolicy"),
    ("policy_class.__init__", "<function MultiInputActorCriticPolicy.__init__ at 0x7f0>", "MultiInput"),
    ("policy_class.__module__", "my_package.policies", "custom policies"),
    ("use_sde", True, "gSDE"),
])
def test_unsupported_policies_are_refused(trained, tmp_path, field, value, reason):
    data = read_data(trained["ppo_pendulum"])
    *parents, key = field.split(".")
    target = data
    for parent in parents:
        target = target[parent]
    target[key] = value
    path = rewrite_zip(trained["ppo_pendulum"], tmp_path / "edited.zip", data=data)
    env = gym.make("Pendulum-v1")
    with pytest.raises(InputError, match=reason) as error:
        load_sb3_controller(path, observation_space=env.observation_space, action_space=env.action_space)
    assert str(path) in str(error.value)


def test_vecnormalize_beside_the_zip_is_refused(trained, tmp_path):
    path = rewrite_zip(trained["ppo_cartpole"], tmp_path / "model.zip")
    (tmp_path / "vecnormalize.pkl").write_bytes(b"not read")
    env = gym.make("CartPole-v1")
    with pytest.raises(InputError, match="VecNormalize"):
        load_sb3_controller(path, observation_space=env.observation_space, action_space=env.action_space)


def test_not_a_zip_is_refused(tmp_path):
    path = tmp_path / "model.zip"
    path.write_bytes(b"PK not really")
    env = gym.make("CartPole-v1")
    with pytest.raises(InputError, match="not a zip"):
        load_sb3_controller(path, observation_space=env.observation_space, action_space=env.action_space)


# -- no pickle is ever executed ---------------------------------------------------------------------------------
class TouchOnUnpickle:
    """Unpickling this object creates ``marker`` (via ``pathlib.Path.touch``): a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps(TouchOnUnpickle(marker), protocol=4)


def test_malicious_payload_really_runs_when_unpickled(tmp_path):
    """Control experiment: the payload used below does create its marker when someone unpickles it."""
    marker = tmp_path / "control-marker"
    pickle.loads(malicious_pickle(marker))  # noqa: S301 - deliberately unpickling our own payload
    assert marker.exists()


def poison_serialized_entries(data: dict, payload: bytes) -> dict:
    """Replace every cloudpickled entry's payload (and add one to policy_kwargs) with ``payload``."""
    encoded = base64.b64encode(payload).decode()
    poisoned = {}
    for key, value in data.items():
        if isinstance(value, dict) and ":serialized:" in value:
            value = {**value, ":serialized:": encoded}
        poisoned[key] = value
    poisoned["policy_kwargs"] = {":type:": "<class 'dict'>", ":serialized:": encoded}
    return poisoned


def test_serialized_payloads_in_data_are_never_decoded(trained, tmp_path):
    marker = tmp_path / "data-marker"
    source = trained["ppo_cartpole"]
    data = poison_serialized_entries(read_data(source), malicious_pickle(marker))
    path = rewrite_zip(source, tmp_path / "poisoned.zip", data=data)
    env = gym.make("CartPole-v1")
    controller = load_sb3_controller(path, observation_space=env.observation_space, action_space=env.action_space)
    obs = observations(env)
    expected, _ = sb3.PPO.load(source, device="cpu").predict(obs, deterministic=True)
    np.testing.assert_array_equal(controller.act(obs), expected)  # still the same policy (default Tanh)
    assert not marker.exists()


@pytest.mark.parametrize("container", ["raw_pickle", "torch_save"])
def test_malicious_policy_pth_is_refused(trained, tmp_path, container):
    marker = tmp_path / "pth-marker"
    data_marker = tmp_path / "data-marker"
    if container == "raw_pickle":
        weights = malicious_pickle(marker)
    else:  # torch's own zip format around a state dict that smuggles the object in
        buffer = io.BytesIO()
        torch.save({"action_net.weight": torch.zeros(2, 16), "hook": TouchOnUnpickle(marker)}, buffer)
        weights = buffer.getvalue()
    source = trained["ppo_cartpole"]
    data = poison_serialized_entries(read_data(source), malicious_pickle(data_marker))
    path = rewrite_zip(source, tmp_path / "malicious.zip", data=data, policy_pth=weights)
    env = gym.make("CartPole-v1")
    with pytest.raises(InputError, match=r"malicious\.zip: policy\.pth: refused"):
        load_sb3_controller(path, observation_space=env.observation_space, action_space=env.action_space)
    assert not marker.exists() and not data_marker.exists()


def test_controller_type_and_name(trained):
    env = gym.make("CartPole-v1")
    controller = load_sb3_controller(trained["dqn_cartpole"], observation_space=env.observation_space,
                                     action_space=env.action_space)
    assert isinstance(controller, SB3Controller)
    assert controller.name == f"sb3:{trained['dqn_cartpole']}"


def test_sb3_reference_in_load_controller(trained):
    """``sb3:PATH.zip`` through :func:`load_controller` (skipped until loading.py resolves ``sb3:``)."""
    from safetybed.control import load_controller
    from safetybed.sims import make_env
    from safetybed.spec.catalogue import load_scenario_arg

    spec, _ = load_scenario_arg("classic/cartpole")
    env = make_env(spec)
    ref = f"sb3:{trained['ppo_cartpole']}"
    try:
        controller = load_controller(ref, scenario=spec, observation_space=env.observation_space,
                                     action_space=env.action_space)
    except InputError as error:
        if "expected builtin:NAME" in str(error) and "sb3:PATH" not in str(error):
            pytest.skip("load_controller does not resolve sb3: references yet")
        raise
    obs = observations(env)
    expected, _ = sb3.PPO.load(trained["ppo_cartpole"], device="cpu").predict(obs, deterministic=True)
    np.testing.assert_array_equal(controller.act(obs), expected)
