"""Checkpoints: policy weights in ``safetensors`` plus a JSON manifest. Loading never unpickles.

A checkpoint is a folder::

    manifest.json         format, algorithm, policy architecture, spaces, normalisation, config,
                          package/torch versions, sha256 of the weights file
    weights.safetensors   tensors "policy.*" and "obs_norm.*" (observation normalisation statistics)

:func:`load_checkpoint` verifies the sha256 before reading any tensor, and rebuilds the network from
the manifest's :class:`~safetybed.control.networks.PolicyArch` (no code comes from the file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from safetensors.torch import load_file, save_file

from safetybed import __version__
from safetybed.control.networks import ObsNormalizer, Policy, PolicyArch
from safetybed.control.spaces import sha256_file, space_from_json, space_to_json
from safetybed.errors import InputError

FORMAT = "safetybed-checkpoint/1"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the policy, its observation normaliser and the manifest."""

    policy: Policy
    obs_norm: ObsNormalizer
    manifest: dict[str, Any]
    path: Path | None = None

    @property
    def observation_space(self) -> gym.Space:
        return space_from_json(self.manifest["observation_space"])

    @property
    def action_space(self) -> gym.Space:
        return space_from_json(self.manifest["action_space"])

    @property
    def weights_sha256(self) -> str:
        return self.manifest["weights_sha256"]


def save_checkpoint(out_dir: str | Path, *, policy: Policy, obs_norm: ObsNormalizer, algorithm: str,
                    observation_space: gym.Space, action_space: gym.Space, config: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/weights.safetensors`` and ``out_dir/manifest.json``; returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"policy.{name}": tensor.detach().cpu().contiguous() for name, tensor in policy.state_dict().items()}
    tensors.update({f"obs_norm.{name}": tensor.detach().cpu().contiguous()
                    for name, tensor in obs_norm.state_dict().items()})
    weights_path = out_dir / WEIGHTS
    save_file(tensors, str(weights_path))
    weights_path.chmod(0o644)  # safetensors writes 0600; a shipped checkpoint is meant to be read by others
    manifest = {
        "format": FORMAT,
        "algorithm": algorithm,
        "policy": policy.arch.to_json(),
        "normalizer": {"enabled": obs_norm.enabled, "clip": obs_norm.clip, "std_floor": obs_norm.std_floor},
        "observation_space": space_to_json(observation_space),
        "action_space": space_to_json(action_space),
        "config": config,
        "package_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "weights_file": WEIGHTS,
        "weights_sha256": sha256_file(weights_path),
        **(extra or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return out_dir


def read_verified_manifest(path: Path, *, fmt: str, kind: str = "checkpoint") -> tuple[dict[str, Any], Path]:
    """``path/manifest.json`` of format ``fmt`` and its weights file, whose sha256 is checked before anything reads
    it (the one home of that check for policy and planner checkpoints); :class:`InputError` names what is wrong."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise InputError(f"{path}: not a {kind} folder ({MANIFEST} is missing)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{manifest_path}: invalid JSON ({error})") from None
    if manifest.get("format") != fmt:
        raise InputError(f"{manifest_path}: format: expected {fmt!r}, got {manifest.get('format')!r}")
    weights_path = path / manifest.get("weights_file", WEIGHTS)
    if not weights_path.is_file():
        raise InputError(f"{weights_path}: weights file is missing")
    actual = sha256_file(weights_path)
    if actual != manifest.get("weights_sha256"):
        raise InputError(f"{weights_path}: sha256 {actual[:12]}... does not match the manifest's "
                         f"{str(manifest.get('weights_sha256'))[:12]}...; the weights were modified or corrupted")
    return manifest, weights_path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and verify a checkpoint folder; :class:`InputError` (exit 2) names what is wrong."""
    path = Path(path)
    manifest, weights_path = read_verified_manifest(path, fmt=FORMAT)
    try:
        arch = PolicyArch.from_json(manifest["policy"])
        policy = Policy(arch)
        obs_norm = ObsNormalizer(arch.obs_dim, clip=float(manifest["normalizer"]["clip"]),
                                 enabled=bool(manifest["normalizer"]["enabled"]),
                                 std_floor=float(manifest["normalizer"].get("std_floor", 0.0)))
        tensors = load_file(str(weights_path))
        policy.load_state_dict({k.removeprefix("policy."): v for k, v in tensors.items() if k.startswith("policy.")})
        obs_norm.load_state_dict({k.removeprefix("obs_norm."): v for k, v in tensors.items()
                                  if k.startswith("obs_norm.")})
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"{path}: checkpoint does not match its manifest ({error})") from None
    policy.eval()
    return Checkpoint(policy=policy, obs_norm=obs_norm, manifest=manifest, path=path)
