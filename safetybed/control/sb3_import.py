"""Import Stable-Baselines3 ``.zip`` models without executing any pickle.

An SB3 zip (``docs/guide/save_format.rst``; ``research/ecosystem.md`` §5) holds

* ``data``: JSON of the algorithm's parameters. Objects that are not JSON (spaces, schedules, the policy
  class, often ``policy_kwargs``) are cloudpickled into a dict with a base64 ``":serialized:"`` field and,
  beside it, the object's first-level attributes as plain JSON or ``str()`` text;
* ``policy.pth``: the policy's ``state_dict`` (a torch pickle of tensors);
* optimiser states, ``pytorch_variables.pth``, ``_stable_baselines3_version``, ``system_info.txt``.

``SB3.load`` unpickles all of it, i.e. runs whatever code the file's author put there. This module instead

1. parses ``data`` with :func:`json.loads` and reads only plain fields -- a ``":serialized:"`` payload is
   never decoded (the policy class is recognised from the ``str()`` of its ``__init__`` that SB3 writes
   beside the payload, the activation from ``policy_kwargs["activation_fn"]``'s ``str()``);
2. reads ``policy.pth`` with ``torch.load(..., weights_only=True)``, torch's restricted unpickler that
   builds tensors and plain containers only and raises on anything else;
3. rebuilds SB3's ``MlpPolicy`` actor for PPO/A2C (``ActorCriticPolicy``), DQN, SAC and TD3/DDPG from the
   tensor shapes (hidden sizes are inferred, so a cloudpickled ``policy_kwargs`` costs nothing but the
   activation, which then takes the algorithm's default: Tanh for PPO/A2C, ReLU for DQN/SAC/TD3).

Observation and action spaces are cloudpickled in the zip, so they come from the scenario the controller
is used with; their shapes (and, for ``Box`` actions, the bounds SB3 rescales with) are checked against the
plain fields SB3 writes beside the payload and against the tensors.

Refused with :class:`~safetybed.errors.InputError` naming the file: other policy classes (CNN, MultiInput,
custom), feature extractors with parameters, gSDE (``use_sde``), non-``Box`` observations, action spaces
other than ``Box``/``Discrete``, and a ``vecnormalize.pkl`` beside the zip (RL-Zoo's observation
normalisation: a pickle, so its statistics cannot be reproduced here).
"""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from safetybed.control.base import Controller
from safetybed.errors import InputError

Family = Literal["actor_critic", "dqn", "sac", "td3"]

#: SB3 policy class (its ``__init__``'s qualified name in ``data["policy_class"]``) -> family.
#: ``MlpPolicy`` is an alias of these classes; DDPG uses ``TD3Policy`` and A2C ``ActorCriticPolicy``.
POLICY_CLASSES: dict[str, Family] = {
    "ActorCriticPolicy": "actor_critic",
    "DQNPolicy": "dqn",
    "SACPolicy": "sac",
    "TD3Policy": "td3",
}
#: SB3's default ``activation_fn`` per policy class (``common/policies.py``: Tanh; dqn/sac/td3: ReLU).
DEFAULT_ACTIVATION: dict[Family, str] = {"actor_critic": "Tanh", "dqn": "ReLU", "sac": "ReLU", "td3": "ReLU"}
#: Activations SB3 builds with ``activation_fn()`` (no arguments), so torch's defaults reproduce them.
ACTIVATIONS: dict[str, type[nn.Module]] = {name: getattr(nn, name) for name in (
    "ReLU", "Tanh", "ELU", "GELU", "SiLU", "LeakyReLU", "Sigmoid", "Softplus", "Mish", "SELU", "CELU")}
#: SAC's log-std clamp (``stable_baselines3/sac/policies.py``: LOG_STD_MIN, LOG_STD_MAX).
SAC_LOG_STD_MIN, SAC_LOG_STD_MAX = -20.0, 2.0
#: Largest zip entry read into memory [bytes]: bounds what a crafted archive (zip bomb) can cost.
MAX_ENTRY_BYTES = 1 << 30


@dataclass(frozen=True)
class SB3Model:
    """What :func:`read_sb3_zip` takes from a zip: plain values and tensors only.

    Attributes:
        path: the zip file.
        family: ``"actor_critic"`` (PPO, A2C), ``"dqn"``, ``"sac"`` or ``"td3"`` (TD3, DDPG).
        policy_class: SB3's policy class name, e.g. ``"ActorCriticPolicy"``.
        activation: activation class name in ``torch.nn`` (declared in ``policy_kwargs`` or the default).
        activation_declared: whether ``activation`` was read from the zip (else it is the family default).
        hidden: hidden layer widths of the actor, inferred from the tensor shapes.
        state_dict: the actor's tensors (SB3 key names).
        data: the parsed ``data`` JSON (serialized entries left as they are, undecoded).
    """

    path: Path
    family: Family
    policy_class: str
    activation: str
    activation_declared: bool
    hidden: tuple[int, ...]
    state_dict: dict[str, torch.Tensor]
    data: dict[str, Any]


def _read_entry(archive: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise InputError(f"{path}: not a Stable-Baselines3 model (zip entry {name!r} is missing)") from None
    if info.file_size > MAX_ENTRY_BYTES:
        raise InputError(f"{path}: zip entry {name!r} is {info.file_size} bytes; refusing entries over "
                         f"{MAX_ENTRY_BYTES} bytes")
    return archive.read(info)


def _plain_field(data: dict[str, Any], key: str) -> Any:
    """``data[key]``, or for a cloudpickled entry the dict of its plain first-level attributes."""
    value = data.get(key)
    if isinstance(value, dict) and ":serialized:" in value:
        return {k: v for k, v in value.items() if k != ":serialized:"}
    return value


def _policy_class_name(data: dict[str, Any], path: Path) -> str:
    # SB3 stores str() of the class's __dict__ items next to the payload; "__init__" reads
    # "<function ActorCriticPolicy.__init__ at 0x...>", which names the class without unpickling it.
    entry = _plain_field(data, "policy_class")
    text = entry.get("__init__") if isinstance(entry, dict) else None
    match = re.match(r"<function (\w+)\.__init__ at ", text) if isinstance(text, str) else None
    module = entry.get("__module__") if isinstance(entry, dict) else None
    if match is None or not isinstance(module, str) or not module.startswith("stable_baselines3."):
        raise InputError(f"{path}: data: policy_class: cannot tell the policy class (expected an SB3 MlpPolicy: "
                         f"{', '.join(POLICY_CLASSES)}); custom policies are not supported")
    name = match.group(1)
    if name not in POLICY_CLASSES:
        raise InputError(f"{path}: policy class {name} is not supported; expected an MlpPolicy "
                         f"({', '.join(POLICY_CLASSES)}) -- CNN, MultiInput (dict observation) and recurrent "
                         f"policies cannot be imported")
    return name


def _activation(data: dict[str, Any], family: Family, path: Path) -> tuple[str, bool]:
    kwargs = _plain_field(data, "policy_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise InputError(f"{path}: data: policy_kwargs: expected a JSON object, got {type(kwargs).__name__}")
    extractor = kwargs.get("features_extractor_class")
    if extractor is not None and "FlattenExtractor" not in str(extractor):
        raise InputError(f"{path}: policy_kwargs.features_extractor_class {extractor}: only SB3's FlattenExtractor "
                         f"is supported")
    declared = kwargs.get("activation_fn")
    if declared is None:
        return DEFAULT_ACTIVATION[family], False
    match = re.fullmatch(r"<class 'torch\.nn\.modules\.activation\.(\w+)'>", str(declared))
    if match is None or match.group(1) not in ACTIVATIONS:
        raise InputError(f"{path}: policy_kwargs.activation_fn {declared}: expected one of torch.nn."
                         f"{{{', '.join(ACTIVATIONS)}}}")
    return match.group(1), True


def _layer_indices(state: dict[str, torch.Tensor], prefix: str, path: Path) -> list[int]:
    """Indices of the Linear layers in an ``nn.Sequential`` saved under ``prefix`` (SB3's create_mlp)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.weight")
    indices = sorted(int(m.group(1)) for key in state if (m := pattern.fullmatch(key)))
    # create_mlp interleaves Linear and activation modules: Linear layers sit at 0, 2, 4, ...
    if indices != list(range(0, 2 * len(indices), 2)):
        raise InputError(f"{path}: policy.pth: {prefix}: unexpected layer layout (Linear layers at {indices}); "
                         f"expected SB3's MlpPolicy")
    return indices


def _linear(state: dict[str, torch.Tensor], key: str, path: Path) -> nn.Linear:
    weight, bias = state.get(f"{key}.weight"), state.get(f"{key}.bias")
    if weight is None or bias is None or weight.ndim != 2 or bias.shape != weight.shape[:1]:
        raise InputError(f"{path}: policy.pth: {key}: expected a Linear layer's weight and bias")
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    layer.load_state_dict({"weight": weight.float(), "bias": bias.float()})
    return layer


def _mlp(state: dict[str, torch.Tensor], prefix: str, activation: str, path: Path, *,
         final_activation: bool) -> list[nn.Module]:
    """The ``nn.Sequential`` under ``prefix``: Linear layers with ``activation`` after each, except the last
    one unless ``final_activation`` (SB3 latent nets end with an activation; Q-nets and TD3's mu do not)."""
    indices = _layer_indices(state, prefix, path)
    layers: list[nn.Module] = []
    for position, index in enumerate(indices):
        layers.append(_linear(state, f"{prefix}.{index}", path))
        if final_activation or position < len(indices) - 1:
            layers.append(ACTIVATIONS[activation]())
    return layers


def _load_failure(error: Exception) -> str:
    """The informative line of a ``torch.load`` failure (torch's text also suggests ``weights_only=False``,
    which is exactly what must not be done with an untrusted file)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    marker = "WeightsUnpickler error:"
    for index, line in enumerate(lines):
        if marker in line:
            rest = line.split(marker, 1)[1].strip()
            rest = rest or (lines[index + 1] if index + 1 < len(lines) else type(error).__name__)
            return rest.split(". Please", 1)[0]  # drop torch's advice to allowlist the global
    return lines[0] if lines else type(error).__name__


def read_sb3_zip(path: str | Path) -> SB3Model:
    """Read an SB3 zip's ``data`` (JSON only) and ``policy.pth`` (``weights_only=True``).

    Raises:
        InputError: the file is not an SB3 zip, the weights are not a plain state dict, or the policy is not
            a supported MlpPolicy.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: SB3 model file not found")
    try:
        with zipfile.ZipFile(path) as archive:
            data_bytes = _read_entry(archive, "data", path)
            weights_bytes = _read_entry(archive, "policy.pth", path)
    except zipfile.BadZipFile as error:
        raise InputError(f"{path}: not a zip archive ({error})") from None
    try:
        data = json.loads(data_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: data: invalid JSON ({error})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: data: expected a JSON object")
    try:
        # weights_only=True: torch's restricted unpickler, tensors and containers only; a pickle that asks for
        # any other global (os.system, pathlib.Path.touch, ...) raises instead of running.
        with warnings.catch_warnings():  # torch warns on pickle protocols other than 2; unreadable ones fail
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(io.BytesIO(weights_bytes), map_location="cpu", weights_only=True)
    except Exception as error:  # any failure means "not a plain state dict": refuse, whatever the cause
        raise InputError(f"{path}: policy.pth: refused: not a plain tensor state dict ({_load_failure(error)})"
                         ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise InputError(f"{path}: policy.pth: expected a dict of named tensors (a state dict)")

    policy_class = _policy_class_name(data, path)
    family = POLICY_CLASSES[policy_class]
    if data.get("use_sde") or (isinstance(data.get("policy_kwargs"), dict) and data["policy_kwargs"].get("use_sde")):
        raise InputError(f"{path}: use_sde: generalized state-dependent exploration (gSDE) is not supported")
    if any(key.startswith(("features_extractor.", "pi_features_extractor.", "vf_features_extractor.",
                           "actor.features_extractor.")) for key in state):
        raise InputError(f"{path}: policy.pth: the features extractor has parameters (e.g. a CNN); only SB3's "
                         f"FlattenExtractor is supported")
    activation, declared = _activation(data, family, path)
    actor_prefix = {"actor_critic": "mlp_extractor.policy_net", "dqn": "q_net.q_net", "sac": "actor.latent_pi",
                    "td3": "actor.mu"}[family]
    actor_state = {k: v for k, v in state.items() if k == actor_prefix or k.startswith(actor_prefix + ".")}
    for key in {"actor_critic": ("action_net.weight", "action_net.bias", "log_std"),
                "sac": ("actor.mu.weight", "actor.mu.bias", "actor.log_std.weight", "actor.log_std.bias"),
                "dqn": (), "td3": ()}[family]:
        if key in state:
            actor_state[key] = state[key]
        elif key != "log_std":  # PPO has a log_std only for Box actions
            raise InputError(f"{path}: policy.pth: tensor {key!r} is missing (expected SB3's {policy_class})")
    weights = [actor_state[f"{actor_prefix}.{i}.weight"] for i in _layer_indices(actor_state, actor_prefix, path)]
    if family in ("dqn", "td3"):
        if not weights:
            raise InputError(f"{path}: policy.pth: no layers under {actor_prefix}")
        weights = weights[:-1]  # the last Linear is the output layer
    hidden = tuple(int(w.shape[0]) for w in weights)
    return SB3Model(path=path, family=family, policy_class=policy_class, activation=activation,
                    activation_declared=declared, hidden=hidden, state_dict=actor_state, data=data)


def _parse_bounds(text: Any) -> np.ndarray | None:
    """numpy's ``str()`` of a bound array (``"[-2.]"``, ``"[ 1. inf]"``); ``None`` if summarised or not text."""
    if not isinstance(text, str) or "..." in text:
        return None
    try:
        return np.array([float(token) for token in text.replace("[", " ").replace("]", " ").split()])
    except ValueError:
        return None


def _check_spaces(model: SB3Model, observation_space: gym.Space, action_space: gym.Space) -> None:
    path, data = model.path, model.data
    obs_entry = _plain_field(data, "observation_space")
    if not isinstance(observation_space, gym.spaces.Box):
        raise InputError(f"{path}: observation space {observation_space}: expected a flat Box")
    if isinstance(obs_entry, dict):
        if "box.Box" not in str(obs_entry.get(":type:", "")):
            raise InputError(f"{path}: the model was trained on a {obs_entry.get(':type:')} observation space; "
                             f"only Box observations are supported")
        if "_shape" in obs_entry and tuple(obs_entry["_shape"]) != tuple(observation_space.shape):
            raise InputError(f"{path}: observation shape {tuple(obs_entry['_shape'])} does not match the "
                             f"scenario's {observation_space.shape}")
    act_entry = _plain_field(data, "action_space")
    act_type = str(act_entry.get(":type:", "")) if isinstance(act_entry, dict) else ""
    if isinstance(action_space, gym.spaces.Discrete):
        if act_type and "discrete.Discrete" not in act_type:
            raise InputError(f"{path}: the model acts in a {act_type} space, the scenario in {action_space}")
        if isinstance(act_entry, dict) and "n" in act_entry and str(act_entry["n"]) != str(int(action_space.n)):
            raise InputError(f"{path}: the model has {act_entry['n']} discrete actions, the scenario "
                             f"{int(action_space.n)}")
    elif isinstance(action_space, gym.spaces.Box):
        if act_type and "box.Box" not in act_type:
            raise InputError(f"{path}: the model acts in a {act_type} space, the scenario in {action_space}")
        if isinstance(act_entry, dict):
            if "_shape" in act_entry and tuple(act_entry["_shape"]) != tuple(action_space.shape):
                raise InputError(f"{path}: action shape {tuple(act_entry['_shape'])} does not match the "
                                 f"scenario's {action_space.shape}")
            # SB3 rescales / clips with the bounds it was trained with; different ones would change the actions.
            for name, ours in (("low", action_space.low), ("high", action_space.high)):
                theirs = _parse_bounds(act_entry.get(name))
                if theirs is not None and (theirs.size != ours.size or not np.allclose(
                        theirs, np.ravel(ours), rtol=1e-6, atol=1e-6)):
                    raise InputError(f"{path}: action bound {name} {act_entry.get(name)} does not match the "
                                     f"scenario's {np.ravel(ours).tolist()}")
    else:
        raise InputError(f"{path}: action space {action_space}: expected Box or Discrete")
    if model.family in ("dqn",) and not isinstance(action_space, gym.spaces.Discrete):
        raise InputError(f"{path}: a DQN model needs a Discrete action space, the scenario has {action_space}")
    if model.family in ("sac", "td3") and not isinstance(action_space, gym.spaces.Box):
        raise InputError(f"{path}: a {model.policy_class} model needs a Box action space, the scenario has "
                         f"{action_space}")


class SB3Controller(Controller):
    """An imported SB3 MlpPolicy; deterministic actions equal ``model.predict(obs, deterministic=True)``.

    Deterministic acting reproduces SB3's ``BasePolicy.predict``: PPO/A2C take the distribution's mode
    (argmax of the categorical probabilities, or the Gaussian mean clipped to the ``Box`` bounds); DQN takes
    ``argmax Q``; SAC ``tanh(mu)`` and TD3 the tanh-squashed actor output, both unscaled from ``[-1, 1]`` to
    the bounds (``low + (a + 1) (high - low) / 2``). Stochastic acting (``deterministic=False``) samples the
    policy distribution from the controller's own generator (PPO/A2C, SAC with log-std clamped to
    [-20, 2]); DQN and TD3 policies are deterministic (their exploration noise is a training device) and act
    greedily either way.
    """

    def __init__(self, model: SB3Model, *, observation_space: gym.Space, action_space: gym.Space,
                 name: str | None = None, deterministic: bool = True):
        _check_spaces(model, observation_space, action_space)  # InputError naming the file, before the base's checks
        super().__init__(observation_space, action_space)
        self.model = model
        self.name = name or f"sb3:{model.path}"
        self.deterministic = deterministic
        path, state, activation = model.path, model.state_dict, model.activation
        self._log_std: torch.Tensor | None = None
        self._log_std_head: nn.Linear | None = None
        if model.family == "actor_critic":
            layers = [*_mlp(state, "mlp_extractor.policy_net", activation, path, final_activation=True),
                      _linear(state, "action_net", path)]
            if isinstance(action_space, gym.spaces.Box):
                if "log_std" not in state:
                    raise InputError(f"{path}: policy.pth: 'log_std' is missing; a Box-action ActorCriticPolicy "
                                     f"has one")
                self._log_std = state["log_std"].float()
        elif model.family == "dqn":
            layers = _mlp(state, "q_net.q_net", activation, path, final_activation=False)
        elif model.family == "sac":
            layers = [*_mlp(state, "actor.latent_pi", activation, path, final_activation=True),
                      _linear(state, "actor.mu", path)]
            self._latent = nn.Sequential(*layers[:-1]).eval()
            self._log_std_head = _linear(state, "actor.log_std", path).eval()
        else:  # td3: actor.mu = create_mlp(..., squash_output=True): Linear/act ... Linear, Tanh
            layers = [*_mlp(state, "actor.mu", activation, path, final_activation=False), nn.Tanh()]
        self.net = nn.Sequential(*layers).eval()

        linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
        obs_dim = int(np.prod(observation_space.shape))
        if not linears or linears[0].in_features != obs_dim:
            given = linears[0].in_features if linears else "no"
            raise InputError(f"{path}: the network reads {given} inputs, the scenario's observation has {obs_dim}")
        out_dim = int(action_space.n) if isinstance(action_space, gym.spaces.Discrete) else int(
            np.prod(action_space.shape))
        if linears[-1].out_features != out_dim:
            raise InputError(f"{path}: the network has {linears[-1].out_features} outputs, the scenario's action "
                             f"space needs {out_dim}")

    @torch.no_grad()
    def act(self, obs_batch: np.ndarray, *, deterministic: bool | None = None) -> np.ndarray:
        deterministic = self.deterministic if deterministic is None else deterministic
        obs = torch.as_tensor(self.check_batch(obs_batch)).reshape(len(obs_batch), -1)  # FlattenExtractor
        space = self.action_space
        family = self.model.family
        if family == "sac":
            latent = self._latent(obs)
            mean = self.net[-1](latent)
            if not deterministic:
                log_std = self._log_std_head(latent).clamp(SAC_LOG_STD_MIN, SAC_LOG_STD_MAX)
                mean = mean + log_std.exp() * self._normal(mean.shape)
            return self._unscale(torch.tanh(mean).numpy())
        out = self.net(obs)
        if family == "td3":
            return self._unscale(out.numpy())
        if family == "dqn":
            return out.argmax(dim=1).numpy().astype(np.int64) + int(space.start)
        if isinstance(space, gym.spaces.Discrete):
            # torch.distributions.Categorical normalises the logits, then softmax; SB3's mode is argmax(probs).
            probs = torch.softmax(out - out.logsumexp(dim=-1, keepdim=True), dim=-1)
            if deterministic:
                return probs.argmax(dim=1).numpy().astype(np.int64) + int(space.start)
            cumulative = np.cumsum(probs.double().numpy(), axis=1)
            draws = self.rng.random((len(cumulative), 1)) * cumulative[:, -1:]
            choice = np.minimum((cumulative <= draws).sum(axis=1), cumulative.shape[1] - 1)
            return choice.astype(np.int64) + int(space.start)
        if not deterministic:
            out = out + self._log_std.exp() * self._normal(out.shape)
        actions = out.numpy().reshape((-1, *space.shape))
        return np.clip(actions, space.low, space.high)

    def _normal(self, shape: torch.Size) -> torch.Tensor:
        return torch.as_tensor(self.rng.standard_normal(tuple(shape)), dtype=torch.float32)

    def _unscale(self, squashed: np.ndarray) -> np.ndarray:
        """SB3's ``BasePolicy.unscale_action``: ``[-1, 1]`` -> ``[low, high]`` (no clipping)."""
        space = self.action_space
        squashed = squashed.reshape((-1, *space.shape))
        return space.low + (0.5 * (squashed + 1.0) * (space.high - space.low))


def load_sb3_controller(path: str | Path, *, observation_space: gym.Space, action_space: gym.Space,
                        name: str | None = None, deterministic: bool = True) -> SB3Controller:
    """Load an SB3 ``.zip`` as a :class:`SB3Controller` for the given spaces, executing no pickle.

    Example::

        env = gymnasium.make("CartPole-v1")
        controller = load_sb3_controller("ppo_cartpole.zip", observation_space=env.observation_space,
                                         action_space=env.action_space)
        actions = controller.act(obs_batch)   # == model.predict(obs_batch, deterministic=True)[0]

    Raises:
        InputError: unreadable or unsupported file, or spaces that do not fit the model (names the file).
    """
    path = Path(path)
    if (path.parent / "vecnormalize.pkl").exists():
        raise InputError(f"{path}: {path.parent / 'vecnormalize.pkl'} sits beside it: the model was trained on "
                         f"VecNormalize-d observations, whose statistics are a pickle that is not executed here, "
                         f"so its actions cannot be reproduced")
    model = read_sb3_zip(path)
    return SB3Controller(model, observation_space=observation_space, action_space=action_space, name=name,
                         deterministic=deterministic)
