"""Deployment runtime: load a verified bundle and run it; no training code is imported here.

A bundle (written by :func:`safetybed.control.bundle.deploy`) is a folder::

    bundle.json               manifest: format, controller name, spaces, control rate [Hz], smoothing sigma,
                              certificate id, source weights sha256, versions, sha256 of every other file
    policy.ts                 TorchScript: raw observation batch -> deterministic action batch
                              (observation normaliser + policy network, traced)
    checkpoint_manifest.json  the source checkpoint's manifest, for provenance

:func:`load_bundle` checks that every listed file exists and matches its sha256, and that ``bundle.json``
matches its own ``manifest_sha256`` (the digest of the manifest without that field), *before* torch reads
the model. These digests catch corruption, truncation and accidental edits; they are not a signature: whoever
can rewrite the folder can rewrite the digests too, so a bundle is as trustworthy as its source.

This module needs torch, numpy, json, hashlib and :mod:`safetybed.control.base` only, so a robot or a
test-time-adaptation process can load a bundle without the training stack (algorithms, replay buffers,
network definitions).

Policy smoothing: if the manifest's ``smoothing_sigma`` is a number σ, :meth:`BundleController.act` adds
fresh N(0, σ²) noise to every observation (in the observation's own units, before normalisation) drawn from
the controller's own generator, re-seeded at ``reset(seed=...)``. This is the smoothed policy whose
certificate the bundle carries (Kumar, Levine & Feizi 2022, "Policy Smoothing for Provably Robust
Reinforcement Learning", ICLR; noise added to every observation of the episode).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from safetybed import seeding_keys
from safetybed.control.base import Controller
from safetybed.control.spaces import sha256_file, space_from_json
from safetybed.errors import InputError
from safetybed.sims.base import add_observation_noise, noise_generator

FORMAT = "safetybed-bundle/1"
BUNDLE_MANIFEST = "bundle.json"
#: Fields every bundle manifest must have (values may be ``null`` where documented).
REQUIRED_FIELDS = ("format", "controller", "model_file", "files", "observation_space", "action_space",
                   "source_weights_sha256", "smoothing_sigma", "certificate_id", "control_rate_hz",
                   "package_version", "torch_version", "manifest_sha256")

#: ``adapt_hook(obs_batch, action_batch, info)``: see :func:`run_in_pybullet`.
AdaptHook = Callable[[np.ndarray, np.ndarray, dict[str, Any]], None]


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its ``manifest_sha256`` field."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def jit_load(path: Path, *, device: str = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` without its deprecation warning (TorchScript is deprecated from torch 2.9 on but
    remains the one self-contained, Python-free model format torch can load)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        return torch.jit.load(str(path), map_location=device)


def read_bundle_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Read ``bundle.json`` and verify it and every file it lists; returns the manifest.

    Raises:
        InputError: missing folder, file or field; a sha256 mismatch; an unknown format (names the file).
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
    missing = [field for field in REQUIRED_FIELDS if field not in manifest]
    if missing:
        raise InputError(f"{manifest_path}: incomplete bundle manifest: missing field(s) {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise InputError(f"{manifest_path}: format: expected {FORMAT!r}, got {manifest['format']!r}")
    actual = manifest_digest(manifest)
    if actual != manifest["manifest_sha256"]:
        raise InputError(f"{manifest_path}: contents do not match its manifest_sha256 ({actual[:12]}... vs "
                         f"{str(manifest['manifest_sha256'])[:12]}...); the manifest was edited or corrupted")
    files = manifest["files"]
    if not isinstance(files, dict) or manifest["model_file"] not in files:
        raise InputError(f"{manifest_path}: files: expected an object listing the model file "
                         f"{manifest['model_file']!r} with its sha256")
    for name, expected in files.items():
        if Path(name).name != name or name in (BUNDLE_MANIFEST, ".", ".."):
            raise InputError(f"{manifest_path}: files: {name!r} is not a plain file name inside the bundle")
        file_path = bundle_dir / name
        if not file_path.is_file():
            raise InputError(f"{file_path}: missing from the bundle (listed in {BUNDLE_MANIFEST})")
        actual = sha256_file(file_path)
        if actual != expected:
            raise InputError(f"{file_path}: sha256 {actual[:12]}... does not match {BUNDLE_MANIFEST}'s "
                             f"{str(expected)[:12]}...; the file was modified or corrupted")
    sigma = manifest["smoothing_sigma"]
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, int | float)
                              or not math.isfinite(sigma) or sigma < 0):
        raise InputError(f"{manifest_path}: smoothing_sigma: expected null or a finite number >= 0, got {sigma!r}")
    for field in ("observation_space", "action_space"):
        try:
            space_from_json(manifest[field])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InputError(f"{manifest_path}: {field}: invalid space ({error!r})") from None
    rate = manifest["control_rate_hz"]
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
        raise InputError(f"{manifest_path}: control_rate_hz: expected a number > 0, got {rate!r}")
    return manifest


class BundleController(Controller):
    """A deployed controller: the bundle's TorchScript module behind the batched :class:`Controller` API.

    Only the deterministic policy is exported, so ``act(..., deterministic=False)`` is refused. With a
    ``smoothing_sigma`` in the manifest every call adds N(0, σ²) observation noise first (see the module
    docstring); ``reset(seed=...)`` fixes those draws.

    Attributes:
        module: the TorchScript module (raw observations -> actions); a test-time adaptation hook may read it.
        manifest: the verified ``bundle.json``.
        smoothing_sigma: σ of the observation noise, or ``None``.
        control_rate_hz: the control rate the policy was trained for [Hz].
    """

    def __init__(self, module: torch.jit.ScriptModule, manifest: dict[str, Any], *, name: str | None = None,
                 device: str = "cpu"):
        super().__init__(space_from_json(manifest["observation_space"]), space_from_json(manifest["action_space"]))
        self.module = module.eval()
        self.manifest = manifest
        self.name = name or f"bundle:{manifest['controller']}"
        self.device = torch.device(device)
        self.smoothing_sigma: float | None = (None if manifest["smoothing_sigma"] is None
                                              else float(manifest["smoothing_sigma"]))
        self.control_rate_hz = float(manifest["control_rate_hz"])
        self.smoothing_rng = np.random.default_rng(0)

    def reset(self, *, seed: int | None = None) -> None:
        super().reset(seed=seed)
        if seed is not None:
            self.smoothing_rng = noise_generator(seed, seeding_keys.SMOOTHING_NOISE)

    @torch.no_grad()
    def act(self, obs_batch: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        if not deterministic:
            raise ValueError("deterministic=False: a bundle holds only the deterministic policy; randomness "
                             "comes from its smoothing_sigma observation noise")
        obs = self.check_batch(obs_batch)
        if self.smoothing_sigma:
            obs = add_observation_noise(obs, std=self.smoothing_sigma, rng=self.smoothing_rng, dtype=np.float32)
        action = self.module(torch.as_tensor(obs, device=self.device)).cpu().numpy()
        if isinstance(self.action_space, gym.spaces.Discrete):
            return action.astype(np.int64) + int(self.action_space.start)
        return action.astype(self.action_space.dtype).reshape((-1, *self.action_space.shape))


def load_bundle(bundle_dir: str | Path, *, name: str | None = None, device: str = "cpu") -> BundleController:
    """Verify a bundle folder and return its :class:`BundleController`.

    Example::

        controller = load_bundle("bundles/reach_sac")
        controller.reset(seed=0)
        actions = controller.act(obs_batch)     # (B, 3) for bullet/reach

    Raises:
        InputError: the bundle is incomplete or was modified (the message names the file and what is wrong).
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_bundle_manifest(bundle_dir)
    model_path = bundle_dir / manifest["model_file"]
    try:
        module = jit_load(model_path, device=device)
    except RuntimeError as error:
        raise InputError(f"{model_path}: not a loadable TorchScript module ({str(error).splitlines()[0]})") from None
    return BundleController(module, manifest, name=name, device=device)


# -- running in pybullet ---------------------------------------------------------------------------------------
def env_step_rate_hz(env: gym.Env) -> float:
    """How many ``env.step`` calls make one simulated second [Hz], read from the simulator.

    Supports safetybed's bullet envs (panda-gym's ``sim.timestep`` [s] x ``sim.n_substeps``) and classic-control
    envs (CartPole's ``tau`` [s], Pendulum's ``dt`` [s]).
    """
    inner = env.unwrapped
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
    for control_step in range(steps):
        obs_batch = np.asarray(obs, dtype=np.float32)[None, ...]
        action_batch = bundle_controller.act(obs_batch)
        reward = 0.0
        for _ in range(hold_steps):
            obs, step_reward, terminated, truncated, info = env.step(action_batch[0])
            reward += float(step_reward)
            env_steps += 1
            if terminated or truncated:
                break
        total_reward += reward
        if adapt_hook is not None:
            adapt_hook(obs_batch, action_batch, {
                "control_step": control_step, "time_s": env_steps * step_s,
                "next_obs_batch": np.asarray(obs, dtype=np.float32)[None, ...], "reward": reward,
                "terminated": bool(terminated), "truncated": bool(truncated), "env_info": info})
        if terminated or truncated:
            break
    return PybulletRun(control_steps=control_step + 1, env_steps=env_steps, hold_steps=hold_steps,
                       total_reward=total_reward, terminated=bool(terminated), truncated=bool(truncated),
                       final_info=info)
