"""Deployment runtime: load a verified bundle and run it; no training code is imported here.

A bundle (written by :func:`safetybed.control.bundle.deploy`) is a folder of data, never code::

    bundle.json               manifest: format, controller name, spaces, control rate [Hz], the network description
                              (``network``: architecture, normaliser, action head), frame stack, smoothing sigma,
                              certificate id + sha256, source weights sha256, versions, sha256 of every other file
    policy.safetensors        the tensors: ``policy.*`` (network weights) and ``obs_norm.*`` (normaliser mean, var,
                              count); a verbatim copy of the checkpoint's ``weights.safetensors``
    checkpoint_manifest.json  the source checkpoint's manifest, for provenance
    certificate.json          only in a certified bundle: a verbatim copy of the certificate it runs under
    bundle.sig                only in a signed bundle: ed25519 signature of the manifest digest

:func:`load_bundle` checks that every listed file exists and matches its sha256, and that ``bundle.json``
matches its own ``manifest_sha256`` (the digest of the manifest without that field), *before* any tensor is read.
It then rebuilds the network from the fixed layers of :mod:`safetybed.control.networks` as ``bundle.json``'s
``network`` describes it and fills it from the safetensors file: ``torch.load`` and ``torch.jit`` are never called on
bundle content, so loading a bundle runs no code that came with it. The digests catch corruption, truncation and
accidental edits; they are not a signature (whoever can rewrite the folder can rewrite the digests too). For that,
sign the bundle (``safetybed deploy ... --sign-key KEY.pem``) and pass ``trusted_keys`` to :func:`load_bundle`.

A **certified** bundle (``safetybed deploy CERTIFICATE_DIR --out DIR``) also holds ``certificate.json``;
:func:`load_bundle` refuses it unless the certificate is unedited (its sha256 is the manifest's
``certificate_sha256`` and its content matches its own ``certificate_id``), the policy weights are the certified
ones (``controller.weights_sha256``) and the manifest's ``smoothing_sigma`` / ``frame_stack`` are the certificate's.

Bundles of format ``safetybed-bundle/1`` (a TorchScript ``policy.ts``) still load, with a
:class:`SerializedCodeWarning`: TorchScript is serialized code that ``torch.jit.load`` runs. Rebuild them with
``safetybed deploy`` again.

Policy smoothing (Kumar, Levine & Feizi 2022, "Policy Smoothing for Provably Robust Reinforcement Learning",
ICLR; ``research/policy_smoothing.md`` §1(b)): with a ``smoothing_sigma`` σ, every :meth:`BundleController.act`
call makes **one fresh draw** of N(0, σ² I) noise of the shape of the raw observation batch, from the controller's
own generator, and adds it to the *raw* frame (its own units, before frame stacking and normalisation, not
clipped); with ``frame_stack = k`` the policy then reads the last ``k`` noisy frames, oldest first (earlier frames
keep the noise they were drawn with). ``reset(seed=s)`` re-seeds the generator as
``SeedSequence(s, spawn_key=(noise_spawn_key,))`` and clears the stack: exactly what
:class:`safetybed.certify.smoothing.SmoothedController` does, so with equal seeds and spawn keys the two act
identically (``tests/test_bundle_certified.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from safetybed import seeding_keys
from safetybed.control.base import Controller
from safetybed.control.certified import read_certificate
from safetybed.control.networks import ObsNormalizer, Policy, PolicyArch
from safetybed.control.spaces import sha256_file, space_from_json
from safetybed.errors import InputError
from safetybed.sims.base import add_observation_noise, noise_generator
from safetybed.sims.framestack import stack_rows

FORMAT = "safetybed-bundle/2"
#: The TorchScript format before ``FORMAT``: still loaded, with a :class:`SerializedCodeWarning`.
LEGACY_FORMAT = "safetybed-bundle/1"
BUNDLE_MANIFEST = "bundle.json"
MODEL_FILE = "policy.safetensors"
SIGNATURE_FILE = "bundle.sig"
#: What an ed25519 bundle signature signs: this prefix, then the 32 bytes of ``manifest_sha256``.
SIGNED_PREFIX = b"safetybed-bundle manifest_sha256\n"
#: Fields every bundle manifest must have (values may be ``null`` where documented).
REQUIRED_FIELDS = ("format", "controller", "model_file", "files", "observation_space", "action_space",
                   "source_weights_sha256", "smoothing_sigma", "certificate_id", "control_rate_hz",
                   "package_version", "torch_version", "manifest_sha256")
#: Further fields of ``FORMAT``.
REQUIRED_FIELDS_V2 = ("network", "frame_stack", "certificate_file", "certificate_sha256")

#: ``adapt_hook(obs_batch, action_batch, info)``: see :func:`run_in_pybullet`.
AdaptHook = Callable[[np.ndarray, np.ndarray, dict[str, Any]], None]


class SerializedCodeWarning(UserWarning):
    """A bundle of the old TorchScript format was loaded: its model is code that torch runs."""


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its ``manifest_sha256`` field."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def jit_load(path: Path, *, device: str = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` of a ``safetybed-bundle/1`` model (TorchScript, deprecated from torch 2.9 on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        return torch.jit.load(str(path), map_location=device)


class DeterministicPolicy(nn.Module):
    """Raw (stacked) observation batch -> deterministic action batch: normaliser, then the policy's
    deterministic head (argmax / squashed mean / mean clipped to the bounds, :meth:`Policy.forward`)."""

    def __init__(self, obs_norm: nn.Module, policy: nn.Module):
        super().__init__()
        self.obs_norm = obs_norm
        self.policy = policy

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(self.obs_norm(obs))


def network_description(policy: Policy, obs_norm: ObsNormalizer) -> dict[str, Any]:
    """The ``network`` field of a bundle manifest: everything :func:`build_policy_module` needs besides tensors."""
    arch = policy.arch
    head = {"categorical": "argmax of the logits",
            "tanh_gaussian": "tanh(mean) * (high - low) / 2 + (high + low) / 2",
            "gaussian": "mean clipped to [low, high]"}[arch.kind]
    return {"policy": arch.to_json(),
            "normalizer": {"enabled": bool(obs_norm.enabled), "clip": float(obs_norm.clip),
                           "std_floor": float(obs_norm.std_floor),
                           "formula": "clip((obs - mean) / sqrt(max(var, std_floor^2) + 1e-8), -clip, clip)"},
            "action_head": {"mode": "deterministic", "rule": head},
            "tensors": {"policy": "policy.*", "normalizer": "obs_norm.mean, obs_norm.var, obs_norm.count"}}


def build_policy_module(network: Any, tensors: dict[str, torch.Tensor], *, source: str) -> DeterministicPolicy:
    """The bundle's module, rebuilt from the fixed layers of :mod:`safetybed.control.networks`.

    ``network`` is the manifest's description (:func:`network_description`); ``tensors`` must fill it exactly
    (no missing or extra tensor, float32, matching shapes).

    Raises:
        InputError: a description the layers cannot build, or tensors that do not fit it (names ``source``).
    """
    try:
        arch = PolicyArch.from_json(network["policy"])
        normalizer = network["normalizer"]
        policy = Policy(arch)
        obs_norm = ObsNormalizer(arch.obs_dim, clip=float(normalizer["clip"]), enabled=bool(normalizer["enabled"]),
                                 std_floor=float(normalizer["std_floor"]))
        if network["action_head"]["mode"] != "deterministic":
            raise ValueError(f"action_head.mode: expected 'deterministic', got {network['action_head']['mode']!r}")
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{source}: network: not a network the runtime can build ({error!r})") from None
    wrong_dtype = sorted(name for name, tensor in tensors.items() if tensor.dtype != torch.float32)
    if wrong_dtype:
        raise InputError(f"{source}: tensors {', '.join(wrong_dtype)}: expected float32")
    try:
        policy.load_state_dict({k.removeprefix("policy."): v for k, v in tensors.items() if k.startswith("policy.")})
        obs_norm.load_state_dict({k.removeprefix("obs_norm."): v for k, v in tensors.items()
                                  if k.startswith("obs_norm.")})
    except RuntimeError as error:
        raise InputError(f"{source}: tensors do not fit the network ({str(error).splitlines()[0]})") from None
    stray = sorted(name for name in tensors if not name.startswith(("policy.", "obs_norm.")))
    if stray:
        raise InputError(f"{source}: unexpected tensors {', '.join(stray)} (expected policy.* and obs_norm.*)")
    return DeterministicPolicy(obs_norm, policy).eval()


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def read_bundle_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Read ``bundle.json`` and verify it, every file it lists and (if any) its certificate; returns the manifest.

    Raises:
        InputError: missing folder, file or field; a sha256 mismatch; an unknown format; a bundle that disagrees
            with its certificate (the message names the file, the field, what was expected and what was given).
    """
    bundle_dir = Path(bundle_dir)
    manifest_path = bundle_dir / BUNDLE_MANIFEST
    if not bundle_dir.is_dir():
        raise InputError(f"{bundle_dir}: bundle folder not found")
    if not manifest_path.is_file():
        raise InputError(f"{manifest_path}: missing; {bundle_dir} is not a complete bundle")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{manifest_path}: invalid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{manifest_path}: expected a JSON object")
    if manifest.get("format") not in (FORMAT, LEGACY_FORMAT):
        raise InputError(f"{manifest_path}: format: expected {FORMAT!r} (or the older {LEGACY_FORMAT!r}), got "
                         f"{manifest.get('format')!r}")
    required = REQUIRED_FIELDS + (REQUIRED_FIELDS_V2 if manifest["format"] == FORMAT else ())
    missing = [field for field in required if field not in manifest]
    if missing:
        raise InputError(f"{manifest_path}: incomplete bundle manifest: missing field(s) {', '.join(missing)}")
    actual = manifest_digest(manifest)
    if actual != manifest["manifest_sha256"]:
        raise InputError(f"{manifest_path}: contents do not match its manifest_sha256 ({actual[:12]}... vs "
                         f"{str(manifest['manifest_sha256'])[:12]}...); the manifest was edited or corrupted")
    files = manifest["files"]
    if not isinstance(files, dict) or manifest["model_file"] not in files:
        raise InputError(f"{manifest_path}: files: expected an object listing the model file "
                         f"{manifest['model_file']!r} with its sha256")
    certificate_file = manifest.get("certificate_file")
    if certificate_file is not None and certificate_file not in files:
        raise InputError(f"{manifest_path}: files: expected the certificate file {certificate_file!r} to be listed")
    for name, expected in files.items():
        if Path(name).name != name or name in (BUNDLE_MANIFEST, SIGNATURE_FILE, ".", ".."):
            raise InputError(f"{manifest_path}: files: {name!r} is not a plain file name inside the bundle")
        file_path = bundle_dir / name
        if not file_path.is_file():
            raise InputError(f"{file_path}: missing from the bundle (listed in {BUNDLE_MANIFEST})")
        actual = sha256_file(file_path)
        if name == certificate_file and actual != manifest["certificate_sha256"]:
            raise InputError(f"{file_path}: sha256: expected {manifest['certificate_sha256']} ({BUNDLE_MANIFEST} "
                             f"certificate_sha256), got {actual}; the certificate was edited after deploy")
        if actual != expected:
            raise InputError(f"{file_path}: sha256 {actual[:12]}... does not match {BUNDLE_MANIFEST}'s "
                             f"{str(expected)[:12]}...; the file was modified or corrupted")
    sigma = manifest["smoothing_sigma"]
    if sigma is not None and not (_number(sigma) and sigma >= 0):
        raise InputError(f"{manifest_path}: smoothing_sigma: expected null or a finite number >= 0, got {sigma!r}")
    for field in ("observation_space", "action_space"):
        try:
            space_from_json(manifest[field])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InputError(f"{manifest_path}: {field}: invalid space ({error!r})") from None
    rate = manifest["control_rate_hz"]
    if not (_number(rate) and rate > 0):
        raise InputError(f"{manifest_path}: control_rate_hz: expected a number > 0, got {rate!r}")
    if manifest["format"] == FORMAT:
        frame_stack = manifest["frame_stack"]
        if isinstance(frame_stack, bool) or not isinstance(frame_stack, int) or frame_stack < 1:
            raise InputError(f"{manifest_path}: frame_stack: expected an integer >= 1, got {frame_stack!r}")
        if certificate_file is not None:
            _check_certificate(bundle_dir, manifest)
        elif manifest["certificate_id"] is not None:
            raise InputError(f"{manifest_path}: certificate_id: expected null in a bundle without certificate_file, "
                             f"got {manifest['certificate_id']!r}")
    return manifest


def _check_certificate(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    """A certified bundle runs the certified smoothed policy: same weights, sigma and frame stacking."""
    manifest_path = bundle_dir / BUNDLE_MANIFEST
    certificate = read_certificate(bundle_dir / manifest["certificate_file"])  # refuses an edited certificate
    where = f"certificate {certificate.certificate_id} in {certificate.path.name}"
    model_path = bundle_dir / manifest["model_file"]
    weights = manifest["files"][manifest["model_file"]]  # the file's sha256, verified against it just before
    if weights != certificate.weights_sha256:
        raise InputError(f"{model_path}: sha256: expected {certificate.weights_sha256} (controller.weights_sha256 "
                         f"of {where}), got {weights}; these are not the certified weights")
    checks = [("certificate_id", certificate.certificate_id), ("source_weights_sha256", certificate.weights_sha256),
              ("smoothing_sigma", certificate.sigma), ("frame_stack", certificate.frame_stack)]
    for field, expected in checks:
        if manifest[field] != expected:
            raise InputError(f"{manifest_path}: {field}: expected {expected!r} (from {where}), got "
                             f"{manifest[field]!r}; the bundle would not run the certified smoothed policy")


# -- signatures -----------------------------------------------------------------------------------------------
TrustedKey = Any  # a path to a PEM public key, PEM bytes, or a cryptography Ed25519PublicKey


def require_ed25519():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise InputError("bundle signatures need the 'cryptography' package: pip install 'safetybed[export]'"
                         ) from None
    return ed25519


def public_key_from(key: TrustedKey):
    """An ``Ed25519PublicKey`` from a PEM file path, PEM bytes or the key itself."""
    ed25519 = require_ed25519()
    from cryptography.hazmat.primitives import serialization

    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.public_key()
    source = "key"
    if isinstance(key, str | Path):
        source = str(key)
        try:
            key = Path(key).read_bytes()
        except OSError as error:
            raise InputError(f"{source}: cannot read the public key ({error.strerror})") from None
    try:
        loaded = serialization.load_pem_public_key(bytes(key))
    except (ValueError, TypeError) as error:
        raise InputError(f"{source}: not a PEM public key ({error})") from None
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise InputError(f"{source}: expected an ed25519 public key, got {type(loaded).__name__}")
    return loaded


def signed_message(manifest_sha256: str) -> bytes:
    return SIGNED_PREFIX + bytes.fromhex(manifest_sha256)


def verify_signature(bundle_dir: str | Path, manifest: dict[str, Any], trusted_keys: Sequence[TrustedKey]) -> str:
    """Check ``bundle.sig`` against ``trusted_keys``; returns the hex of the public key that signed.

    Raises:
        InputError: no trusted key, no signature, or a signature no trusted key verifies.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    keys = [public_key_from(key) for key in trusted_keys]
    signature_path = Path(bundle_dir) / SIGNATURE_FILE
    if not keys:
        raise InputError("trusted_keys: expected at least one public key, got none")
    if not signature_path.is_file():
        raise InputError(f"{signature_path}: missing; the bundle is unsigned and trusted_keys were given")
    try:
        document = json.loads(signature_path.read_text(encoding="utf-8"))
        signature = bytes.fromhex(document["signature"])
        algorithm = document["algorithm"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise InputError(f"{signature_path}: not a bundle signature ({error!r})") from None
    if algorithm != "ed25519":
        raise InputError(f"{signature_path}: algorithm: expected 'ed25519', got {algorithm!r}")
    message = signed_message(manifest["manifest_sha256"])
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    raise InputError(f"{signature_path}: signature: does not verify with any of the {len(keys)} trusted key(s) "
                     f"(the bundle names signer {str(document.get('public_key'))[:16]}...); it was signed by another "
                     f"key or the bundle changed after signing")


# -- the controller -------------------------------------------------------------------------------------------
class BundleController(Controller):
    """A deployed controller: the bundle's module behind the batched :class:`Controller` API.

    Only the deterministic policy is exported, so ``act(..., deterministic=False)`` is refused. The observation
    space is one *raw* frame; with ``frame_stack = k`` the controller stacks the last ``k`` frames itself (the
    first frame of an episode fills every slot). With a ``smoothing_sigma`` every call adds one fresh draw of
    N(0, σ²) noise to the raw frames first (see the module docstring); ``reset(seed=...)`` fixes those draws and
    starts a new stack.

    Args:
        module: raw (stacked) observations -> actions.
        manifest: the verified ``bundle.json``.
        noise_spawn_key: spawn key of the noise generator (default :data:`seeding_keys.SMOOTHING_NOISE`, the
            default of ``SmoothedController``; :data:`seeding_keys.OBSERVATION_NOISE` reproduces the certification
            runner's scenario-side noise draw for draw, on the noise-free scenario only).

    Attributes:
        module: the module (raw observations -> actions); a test-time adaptation hook may read it.
        manifest: the verified ``bundle.json``.
        smoothing_sigma: σ of the observation noise, or ``None``.
        frame_stack: raw frames the policy reads.
        control_rate_hz: the control rate the policy was trained for [Hz].
    """

    def __init__(self, module: nn.Module, manifest: dict[str, Any], *, name: str | None = None,
                 device: str = "cpu", noise_spawn_key: int = seeding_keys.SMOOTHING_NOISE):
        super().__init__(space_from_json(manifest["observation_space"]), space_from_json(manifest["action_space"]))
        self.module = module.eval()
        self.manifest = manifest
        self.name = name or f"bundle:{manifest['controller']}"
        self.device = torch.device(device)
        self.smoothing_sigma: float | None = (None if manifest["smoothing_sigma"] is None
                                              else float(manifest["smoothing_sigma"]))
        self.frame_stack = int(manifest.get("frame_stack", 1))
        self.control_rate_hz = float(manifest["control_rate_hz"])
        self.noise_spawn_key = int(noise_spawn_key)
        self.smoothing_rng = noise_generator(0, self.noise_spawn_key)
        self.batch_stateless = self.frame_stack == 1 and not self.smoothing_sigma
        self._history: np.ndarray | None = None

    def reset(self, *, seed: int | None = None) -> None:
        super().reset(seed=seed)
        if seed is not None:
            self.smoothing_rng = noise_generator(seed, self.noise_spawn_key)
        self._history = None

    @torch.no_grad()
    def act(self, obs_batch: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        if not deterministic:
            raise ValueError("deterministic=False: a bundle holds only the deterministic policy; randomness "
                             "comes from its smoothing_sigma observation noise")
        obs = self.check_batch(obs_batch)
        if self.smoothing_sigma:
            # Kumar, Levine & Feizi 2022: one fresh draw per step on the raw frame, before stacking, not clipped;
            # float handling as SmoothedController and ObservationNoise (float64 sum, then float32).
            obs = add_observation_noise(obs, std=self.smoothing_sigma, rng=self.smoothing_rng, dtype=np.float32)
        self._history, obs = stack_rows(self._history, obs, frames=self.frame_stack)
        action = self.module(torch.as_tensor(obs, device=self.device)).cpu().numpy()
        if isinstance(self.action_space, gym.spaces.Discrete):
            return action.astype(np.int64) + int(self.action_space.start)
        return action.astype(self.action_space.dtype).reshape((-1, *self.action_space.shape))


def load_bundle(bundle_dir: str | Path, *, name: str | None = None, device: str = "cpu",
                noise_spawn_key: int = seeding_keys.SMOOTHING_NOISE,
                trusted_keys: Sequence[TrustedKey] | None = None) -> BundleController:
    """Verify a bundle folder and return its :class:`BundleController`.

    Args:
        bundle_dir: the bundle folder.
        name: the controller's name (default ``bundle:<controller>``).
        device: torch device to run on.
        noise_spawn_key: see :class:`BundleController`.
        trusted_keys: ed25519 public keys (PEM file paths, PEM bytes or key objects); when given, the bundle must
            carry a ``bundle.sig`` that one of them verifies. ``None``: signatures are not checked.

    Example::

        controller = load_bundle("bundles/cartpole_stack5")
        controller.reset(seed=0)
        actions = controller.act(obs_batch)     # obs_batch: (B, 4) raw CartPole frames

    Raises:
        InputError: the bundle is incomplete, was modified, disagrees with its certificate, or is not signed by a
            trusted key (the message names the file and what is wrong).
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_bundle_manifest(bundle_dir)
    if trusted_keys is not None:
        verify_signature(bundle_dir, manifest, trusted_keys)
    model_path = bundle_dir / manifest["model_file"]
    if manifest["format"] == LEGACY_FORMAT:
        source = (manifest.get("source") or {}).get("ref") or "CTRL"
        warnings.warn(f"{bundle_dir}: a {LEGACY_FORMAT} bundle: its {manifest['model_file']} is TorchScript, "
                      f"serialized code that torch.jit.load runs. Rebuild it as data (safetensors + JSON) with "
                      f"`safetybed deploy {source} --out NEW_DIR` (add --certificate CERTIFICATE_DIR for a certified "
                      f"bundle)", SerializedCodeWarning, stacklevel=2)
        try:
            module = jit_load(model_path, device=device)
        except RuntimeError as error:
            raise InputError(f"{model_path}: not a loadable TorchScript module ({str(error).splitlines()[0]})"
                             ) from None
        return BundleController(module, manifest, name=name, device=device, noise_spawn_key=noise_spawn_key)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(model_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{model_path}: not a readable safetensors file ({error})") from None
    module = build_policy_module(manifest["network"], tensors, source=str(bundle_dir / BUNDLE_MANIFEST))
    observation_space = space_from_json(manifest["observation_space"])
    stacked = int(np.prod(observation_space.shape)) * manifest["frame_stack"]
    if stacked != module.policy.arch.obs_dim:
        raise InputError(f"{bundle_dir / BUNDLE_MANIFEST}: network.policy.obs_dim: expected {stacked} "
                         f"(observation_space x frame_stack {manifest['frame_stack']}), got "
                         f"{module.policy.arch.obs_dim}")
    return BundleController(module.to(device), manifest, name=name, device=device, noise_spawn_key=noise_spawn_key)


# -- running in pybullet ---------------------------------------------------------------------------------------
def env_step_rate_hz(env: gym.Env) -> float:
    """How many ``env.step`` calls make one simulated second [Hz], read from the simulator.

    Supports safetybed's bullet envs (panda-gym's ``sim.timestep`` [s] x ``sim.n_substeps``), classic-control
    envs (CartPole's ``tau`` [s], Pendulum's ``dt`` [s]) and highway envs (one step per control period,
    ``policy_frequency_hz``).
    """
    inner = env.unwrapped
    scenario = getattr(inner, "scenario", None)
    if getattr(scenario, "simulator", None) == "highway":
        return float(scenario.highway.policy_frequency_hz)
    sim = getattr(inner, "sim", None)
    if sim is not None and hasattr(sim, "timestep") and hasattr(sim, "n_substeps"):
        return 1.0 / (float(sim.timestep) * int(sim.n_substeps))
    classic = getattr(inner, "inner", None)
    for attribute in ("tau", "dt"):
        if classic is not None and hasattr(classic, attribute):
            return 1.0 / float(getattr(classic, attribute))
    raise TypeError(f"cannot read the step period of {type(inner).__name__}; expected a safetybed bullet or "
                    f"classic env")


@dataclass(frozen=True)
class PybulletRun:
    """Outcome of :func:`run_in_pybullet`.

    Attributes:
        control_steps: controller decisions made.
        env_steps: ``env.step`` calls (``control_steps x hold_steps`` unless the episode ended early).
        hold_steps: env steps each action is held for (``env rate / control_rate_hz``).
        total_reward: sum of the env rewards.
        terminated / truncated: how the episode ended (both ``False`` if ``steps`` ran out first).
        final_info: the info dict of the last env step.
    """

    control_steps: int
    env_steps: int
    hold_steps: int
    total_reward: float
    terminated: bool
    truncated: bool
    final_info: dict[str, Any]
    decision_s: list[float] = dataclasses.field(default_factory=list)
    hook_s: list[float] = dataclasses.field(default_factory=list)


def run_in_pybullet(bundle_controller: Controller, env: gym.Env, *, control_rate_hz: float, steps: int,
                    seed: int | None = None, adapt_hook: AdaptHook | None = None) -> PybulletRun:
    """Run one episode of ``env`` (a safetybed bullet scenario env) with the controller at a fixed rate.

    The env advances at its own physics rate (bullet: 20 substeps of 2 ms = 25 Hz). The controller decides
    at ``control_rate_hz``, which must divide the env rate; each action is held (zero-order hold) for
    ``env rate / control_rate_hz`` env steps, as a controller with a slower loop than the simulator would.
    The env and the controller are reset with ``seed`` first; the run stops after ``steps`` control steps or
    when the episode terminates or is truncated.

    ``adapt_hook(obs_batch, action_batch, info) -> None`` is called after every control step (after the
    action has been applied for its hold period):

    * ``obs_batch``: ``(1, *observation_shape)`` float32, the observation the controller acted on (before
      any smoothing noise the controller adds itself);
    * ``action_batch``: ``(1, *action_shape)`` (or ``(1,)`` for discrete actions), the action applied;
    * ``info``: ``{"control_step": int (0-based), "time_s": float (simulated time at the end of the step),
      "next_obs_batch": (1, *observation_shape) float32, "reward": float (summed over the hold),
      "terminated": bool, "truncated": bool, "env_info": the last env step's info dict}``.

    The hook may update the controller in place (test-time adaptation: TENT, Centaur); the next control step
    uses whatever the controller has become. Its return value is ignored.

    Raises:
        ValueError: ``steps < 1``, or a control rate that is not a positive divisor of the env rate.
    """
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")
    env_rate_hz = env_step_rate_hz(env)
    if not control_rate_hz > 0:
        raise ValueError(f"control_rate_hz: expected > 0, got {control_rate_hz}")
    hold_steps = round(env_rate_hz / control_rate_hz)
    if hold_steps < 1 or not math.isclose(hold_steps * control_rate_hz, env_rate_hz, rel_tol=1e-9):
        raise ValueError(f"control_rate_hz: expected a divisor of the env's step rate {env_rate_hz:g} Hz "
                         f"(e.g. {env_rate_hz:g}, {env_rate_hz / 2:g}), got {control_rate_hz:g}")
    step_s = 1.0 / env_rate_hz
    obs, info = env.reset(seed=seed)
    bundle_controller.reset(seed=seed)
    env_steps = 0
    total_reward = 0.0
    terminated = truncated = False
    control_step = 0
    decision_s: list[float] = []
    hook_s: list[float] = []
    for control_step in range(steps):
        obs_batch = np.asarray(obs, dtype=np.float32)[None, ...]
        started = time.perf_counter()
        action_batch = bundle_controller.act(obs_batch)
        decision_s.append(time.perf_counter() - started)
        reward = 0.0
        for _ in range(hold_steps):
            obs, step_reward, terminated, truncated, info = env.step(action_batch[0])
            reward += float(step_reward)
            env_steps += 1
            if terminated or truncated:
                break
        total_reward += reward
        if adapt_hook is not None:
            started = time.perf_counter()
            adapt_hook(obs_batch, action_batch, {
                "control_step": control_step, "time_s": env_steps * step_s,
                "next_obs_batch": np.asarray(obs, dtype=np.float32)[None, ...], "reward": reward,
                "terminated": bool(terminated), "truncated": bool(truncated), "env_info": info})
            hook_s.append(time.perf_counter() - started)
        if terminated or truncated:
            break
    return PybulletRun(control_steps=control_step + 1, env_steps=env_steps, hold_steps=hold_steps,
                       total_reward=total_reward, terminated=bool(terminated), truncated=bool(truncated),
                       final_info=info, decision_s=decision_s, hook_s=hook_s)


def run_in_highway(controller: Controller, env: gym.Env, *, steps: int, seed: int | None = None,
                   adapt_hook: AdaptHook | None = None) -> PybulletRun:
    """One episode of a safetybed highway env with the controller deciding every control step (1 /
    ``policy_frequency_hz``), through the same loop and ``adapt_hook`` contract as :func:`run_in_pybullet`.

    For the test-time-adapting planner pass ``adapt_hook=controller.adapt_hook``: Centaur's gradient of each frame
    is then computed after its action is out (:mod:`safetybed.control.planner.controller`).
    """
    return run_in_pybullet(controller, env, control_rate_hz=env_step_rate_hz(env), steps=steps, seed=seed,
                           adapt_hook=adapt_hook)
