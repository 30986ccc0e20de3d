"""Planner checkpoints: the scorer's tensors in ``safetensors`` plus a JSON manifest; loading never unpickles.

A planner checkpoint is a folder::

    manifest.json         format, obs_dim, hidden, phi weights, vocabulary, observation / action spaces, the
                          training summary, sha256 of the weights file
    weights.safetensors   the :class:`~safetybed.control.planner.training.ScaledScorer` state dict (its input scale,
                          trunk and scoring head), stored as ``dtype`` (float16 for the shipped planner, to keep the
                          tracked file small; it is cast to float32 on load, so the float16 values *are* the planner)

:func:`load_planner_checkpoint` verifies the sha256 before reading any tensor and rebuilds the network from the
manifest's numbers (no code comes from the file).
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
from safetybed.control.checkpoint import read_verified_manifest
from safetybed.control.planner.training import ScaledScorer
from safetybed.control.planner.vocabulary import Vocabulary
from safetybed.control.spaces import sha256_file, space_from_json, space_to_json
from safetybed.errors import InputError

FORMAT = "safetybed-planner/1"
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


@dataclass
class PlannerCheckpoint:
    """A loaded planner: its scorer (float32, eval mode), its vocabulary and the manifest."""

    model: ScaledScorer
    vocabulary: Vocabulary
    manifest: dict[str, Any]

    @property
    def observation_space(self) -> gym.Space:
        return space_from_json(self.manifest["observation_space"])

    @property
    def action_space(self) -> gym.Space:
        return space_from_json(self.manifest["action_space"])


def vocabulary_to_json(vocabulary: Vocabulary) -> dict[str, Any]:
    return {"accelerations_mps2": list(vocabulary.accelerations_mps2), "horizon_s": vocabulary.horizon_s,
            "lane_width_m": vocabulary.lane_width_m, "lane_change_s": vocabulary.lane_change_s,
            "accel_scale_mps2": vocabulary.accel_scale_mps2}


def save_planner_checkpoint(out_dir: str | Path, *, model: ScaledScorer, vocabulary: Vocabulary,
                            observation_space: gym.Space, action_space: gym.Space, dtype: torch.dtype = torch.float16,
                            extra: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/weights.safetensors`` (as ``dtype``) and ``out_dir/manifest.json``; returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().cpu().to(dtype).contiguous() for name, value in model.state_dict().items()}
    weights_path = out_dir / WEIGHTS
    save_file(tensors, str(weights_path))
    weights_path.chmod(0o644)
    manifest = {
        "format": FORMAT, "algorithm": "planner", "obs_dim": int(model.inv_scale.numel()),
        "hidden": int(model.net.trunk[0].out_features), "phi_weights": list(model.net.weights),
        "vocabulary": vocabulary_to_json(vocabulary), "stored_dtype": str(dtype).removeprefix("torch."),
        "observation_space": space_to_json(observation_space), "action_space": space_to_json(action_space),
        "package_version": __version__, "torch_version": torch.__version__.split("+")[0],
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "weights_file": WEIGHTS, "weights_sha256": sha256_file(weights_path), **(extra or {}),
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return out_dir


def load_planner_checkpoint(path: str | Path) -> PlannerCheckpoint:
    """Load and verify a planner checkpoint folder; :class:`InputError` (exit 2) names what is wrong."""
    path = Path(path)
    manifest_path = path / MANIFEST
    manifest, weights_path = read_verified_manifest(path, fmt=FORMAT, kind="planner checkpoint")
    try:
        vocabulary = Vocabulary(**{**manifest["vocabulary"],
                                   "accelerations_mps2": tuple(manifest["vocabulary"]["accelerations_mps2"])})
        scale = torch.ones(int(manifest["obs_dim"]))
        with torch.random.fork_rng(devices=[]):  # the constructor's random init is overwritten just below
            model = ScaledScorer(scale, len(vocabulary), hidden=int(manifest["hidden"]),
                                 weights=tuple(float(w) for w in manifest["phi_weights"]))
        tensors = {name: value.to(torch.float32) for name, value in load_file(str(weights_path)).items()}
        model.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"{manifest_path}: does not describe the stored weights ({error})") from None
    return PlannerCheckpoint(model=model.eval(), vocabulary=vocabulary, manifest=manifest)
