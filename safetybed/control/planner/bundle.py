"""Deployment bundles of the highway planner, with the test-time adaptation method as a bundle setting.

A planner bundle is a folder::

    planner.json          format, controller name, scenario, the adaptation method and its options, and the
                          sha256 of manifest.json
    manifest.json         the planner checkpoint's manifest, copied byte for byte (spaces, network numbers,
                          vocabulary, sha256 of the weights)
    weights.safetensors   the planner's weights, copied byte for byte

:func:`load_planner_bundle` checks ``manifest.json`` against ``planner.json``'s sha256 and the weights against the
manifest's (:func:`~safetybed.control.planner.checkpoint.load_planner_checkpoint`) before reading a tensor, rebuilds
the scorer from the manifest's numbers (no code comes from the folder) and returns a
:class:`~safetybed.control.planner.controller.PlannerController` with the bundle's method. Adaptation never writes
to the folder: Centaur's steps are applied functionally, TENT works on an in-memory copy (``tests/test_planner.py``
checks that only the scoring head, or only the LayerNorm, changes). No smoothing sigma or certificate: a planner
cannot be certified (:mod:`safetybed.certify.pipeline`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetybed.control.planner.checkpoint import MANIFEST, WEIGHTS, load_planner_checkpoint
from safetybed.control.planner.controller import PlannerController
from safetybed.control.spaces import sha256_file
from safetybed.errors import InputError
from safetybed.spec.planner import ADAPT_METHODS, AdaptSpec, load_planner_spec

FORMAT = "safetybed-planner-bundle/1"
BUNDLE_MANIFEST = "planner.json"


def deploy_planner(spec_path: str | Path, out_dir: str | Path, *, adapt: str = "none",
                   overwrite: bool = False) -> Path:
    """Write a planner bundle for the planner spec at ``spec_path``, adapting by ``adapt``; returns the folder."""
    if adapt not in ADAPT_METHODS:
        raise InputError(f"--adapt: expected one of {', '.join(ADAPT_METHODS)}, got {adapt!r}")
    loaded = load_planner_spec(spec_path)
    checkpoint_dir = loaded.checkpoint_dir
    load_planner_checkpoint(checkpoint_dir)  # verified before anything is copied
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {out}: folder is not empty (pass overwrite=True / --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST, WEIGHTS):
        shutil.copyfile(checkpoint_dir / name, out / name)
    manifest = {"format": FORMAT, "controller": loaded.spec.name, "scenario": loaded.spec.scenario,
                "adapt": {"method": adapt, "options": loaded.spec.adapt.model_dump()},
                "checkpoint_manifest_sha256": sha256_file(out / MANIFEST)}
    (out / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return out


def is_planner_bundle(path: str | Path) -> bool:
    return (Path(path) / BUNDLE_MANIFEST).is_file()


def load_planner_bundle(bundle_dir: str | Path, *, name: str | None = None) -> PlannerController:
    """Verify a planner bundle and return its controller; :class:`InputError` (exit 2) names what is wrong."""
    folder = Path(bundle_dir)
    path = folder / BUNDLE_MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable planner bundle manifest ({error})") from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path}: format: expected {FORMAT!r}, got {manifest.get('format')!r}")
    actual = sha256_file(folder / MANIFEST) if (folder / MANIFEST).is_file() else None
    if actual != manifest.get("checkpoint_manifest_sha256"):
        raise InputError(f"{path}: checkpoint_manifest_sha256: {folder / MANIFEST} is missing or was modified")
    adapt = manifest.get("adapt") or {}
    method = adapt.get("method")
    if method not in ADAPT_METHODS:
        raise InputError(f"{path}: adapt.method: expected one of {', '.join(ADAPT_METHODS)}, got {method!r}")
    try:
        options = AdaptSpec.model_validate_json(json.dumps(adapt.get("options") or {}))  # JSON mode: lists -> tuples
    except ValueError as error:
        raise InputError(f"{path}: adapt.options: {error}") from None
    checkpoint = load_planner_checkpoint(folder)
    return PlannerController(checkpoint.observation_space, checkpoint.action_space, model=checkpoint.model,
                             vocabulary=checkpoint.vocabulary, method=method, options=options,
                             name=name or f"bundle:{manifest.get('controller')}")
