"""Deployment bundles: ``safetybed deploy CTRL --out DIR``.

:func:`deploy` turns a trained controller (a controller spec ``controllers/*.toml`` -> its checkpoint, or a
checkpoint folder; the rules of :func:`safetybed.control.loading.load_controller`) into a self-contained
folder that :func:`safetybed.control.runtime.load_bundle` runs without the training code: a TorchScript
module of observation normaliser + deterministic policy, and a ``bundle.json`` manifest with the sha256 of
every file (layout and verification in :mod:`safetybed.control.runtime`).

Manifest fields: ``format``, ``controller`` (name), ``source`` (reference, checkpoint folder, algorithm),
``source_weights_sha256`` (the checkpoint's ``weights.safetensors``), ``scenario`` (name or ``null``),
``observation_space`` / ``action_space`` (space JSON), ``control_rate_hz`` [Hz], ``smoothing_sigma``
(``null`` unless a certificate sets it, see :func:`annotate_bundle`), ``certificate_id`` (``null`` unless
given), ``package_version`` / ``torch_version`` / ``numpy_version`` / ``python_version``, ``created_utc``,
``model_file``, ``files`` (name -> sha256) and ``manifest_sha256`` (digest of everything else).
"""

from __future__ import annotations

import json
import math
import platform
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from safetybed import __version__
from safetybed.control.runtime import (
    BUNDLE_MANIFEST,
    FORMAT,
    env_step_rate_hz,
    manifest_digest,
    read_bundle_manifest,
    sha256_file,
)
from safetybed.errors import InputError
from safetybed.spec import ScenarioSpec

MODEL_FILE = "policy.ts"
SOURCE_MANIFEST_FILE = "checkpoint_manifest.json"


class DeterministicPolicy(nn.Module):
    """Raw observation batch -> deterministic action batch: the module a bundle exports."""

    def __init__(self, obs_norm: nn.Module, policy: nn.Module):
        super().__init__()
        self.obs_norm = obs_norm
        self.policy = policy

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(self.obs_norm(obs))


def _resolve_checkpoint(controller_ref: str) -> tuple[Path, str, str | None]:
    """(checkpoint folder, controller name, the spec's scenario reference or ``None``)."""
    path = Path(controller_ref)
    if path.suffix == ".toml":
        from safetybed.spec.controller import load_controller_spec

        loaded = load_controller_spec(path)
        if loaded.spec.shield != "none":
            # A bundle holds the policy network only; the shield needs the scenario's IDM/MOBIL parameters and
            # would silently be lost.
            raise InputError(f"{path}: shield = {loaded.spec.shield!r}: deployment bundles hold the policy network "
                             f"only, so a shielded controller cannot be deployed (it would act unshielded); run it "
                             f"through its spec (--controller {path}) instead")
        if not loaded.checkpoint_dir.exists():
            raise InputError(f"{path}: checkpoint: folder {loaded.checkpoint_dir} does not exist; train it with "
                             f"safetybed train {path}")
        return loaded.checkpoint_dir, loaded.spec.name, loaded.scenario_ref()
    if path.is_dir() and (path / "manifest.json").exists():
        return path, path.resolve().name, None
    raise InputError(f"deploy {controller_ref!r}: expected a controller spec (controllers/*.toml) or a checkpoint "
                     f"folder (manifest.json + weights.safetensors); built-in, SB3 and bundle controllers are "
                     f"not deployed")


def scenario_control_rate_hz(spec: ScenarioSpec, env: Any) -> float:
    """The rate at which the scenario's env asks for actions [Hz]."""
    if spec.simulator == "highway":
        return float(spec.highway.policy_frequency_hz)
    return env_step_rate_hz(env)


def _trace(module: nn.Module, obs_dim: int) -> torch.jit.ScriptModule:
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, obs_dim, generator=generator)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        traced = torch.jit.trace(module.eval(), example)
    # Tracing records one path through the code; check it against eager mode on another batch size.
    check = torch.randn(5, obs_dim, generator=generator) * 3
    with torch.no_grad():
        if not torch.equal(traced(check), module(check)):
            raise RuntimeError("the traced policy disagrees with the eager one; the bundle would act differently")
    return traced


def _write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    manifest = {**manifest, "manifest_sha256": manifest_digest(manifest)}
    (bundle_dir / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def _check_sigma(smoothing_sigma: float | None) -> None:
    if smoothing_sigma is not None and not (math.isfinite(smoothing_sigma) and smoothing_sigma >= 0):
        raise InputError(f"smoothing_sigma: expected a finite number >= 0, got {smoothing_sigma}")


def deploy(controller_ref: str, out_dir: str | Path, *, scenario: ScenarioSpec | str | None = None,
           control_rate_hz: float | None = None, smoothing_sigma: float | None = None,
           certificate_id: str | None = None, overwrite: bool = False) -> Path:
    """Write a deployment bundle for a checkpoint-based controller; returns the bundle folder.

    Args:
        controller_ref: a controller spec (``controllers/*.toml``) or a checkpoint folder.
        out_dir: the bundle folder (created; must be empty or absent unless ``overwrite``).
        scenario: scenario spec, path or catalogue name the controller is deployed in; default: the controller
            spec's scenario, else the checkpoint manifest's ``scenario`` if it names a catalogue scenario. The
            checkpoint's spaces are checked against it and the control rate is read from its simulator.
        control_rate_hz: the control rate [Hz] when there is no scenario (must agree with it when there is).
        smoothing_sigma: policy-smoothing σ the bundle controller adds to observations (``None``: no noise).
        certificate_id: id of the certificate that covers this bundle, if any.
        overwrite: replace the bundle files in a non-empty ``out_dir``.

    Example::

        deploy("controllers/reach_sac.toml", "bundles/reach_sac")
        controller = safetybed.control.runtime.load_bundle("bundles/reach_sac")

    Raises:
        InputError: unusable reference, spaces that do not fit the scenario, unknown control rate, or a
            non-empty ``out_dir``.
    """
    from safetybed.control.checkpoint import load_checkpoint, space_to_json

    _check_sigma(smoothing_sigma)
    checkpoint_dir, name, spec_scenario = _resolve_checkpoint(controller_ref)
    checkpoint = load_checkpoint(checkpoint_dir)
    observation_space, action_space = checkpoint.observation_space, checkpoint.action_space

    spec = _resolve_scenario(scenario if scenario is not None else spec_scenario, checkpoint.manifest,
                             need_it=control_rate_hz is None)
    if spec is not None:
        from safetybed.control.loading import _check_spaces
        from safetybed.control.policy import PolicyController
        from safetybed.sims import make_env

        env = make_env(spec)
        try:
            _check_spaces(controller_ref, PolicyController.from_checkpoint(checkpoint, name=name),
                          env.observation_space, env.action_space)
            scenario_rate_hz = scenario_control_rate_hz(spec, env)
        finally:
            env.close()
        if control_rate_hz is not None and not math.isclose(control_rate_hz, scenario_rate_hz, rel_tol=1e-9):
            raise InputError(f"control_rate_hz {control_rate_hz:g}: scenario {spec.name!r} runs at "
                             f"{scenario_rate_hz:g} Hz")
        control_rate_hz = scenario_rate_hz
    if not (control_rate_hz is not None and math.isfinite(control_rate_hz) and control_rate_hz > 0):
        raise InputError(f"control_rate_hz: expected a number > 0, got {control_rate_hz}")

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not overwrite)):
        raise InputError(f"{out_dir}: exists and is not an empty folder; choose another --out or overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    obs_dim = int(np.prod(observation_space.shape))
    traced = _trace(DeterministicPolicy(checkpoint.obs_norm, checkpoint.policy), obs_dim)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        traced.save(str(out_dir / MODEL_FILE))
    (out_dir / SOURCE_MANIFEST_FILE).write_bytes((checkpoint_dir / "manifest.json").read_bytes())

    manifest = {
        "format": FORMAT,
        "controller": name,
        "source": {"ref": controller_ref, "checkpoint": str(Path(checkpoint_dir).resolve()),
                   "algorithm": checkpoint.manifest.get("algorithm")},
        "source_weights_sha256": checkpoint.weights_sha256,
        "scenario": spec.name if spec is not None else None,
        "observation_space": space_to_json(observation_space),
        "action_space": space_to_json(action_space),
        "control_rate_hz": float(control_rate_hz),
        "smoothing_sigma": None if smoothing_sigma is None else float(smoothing_sigma),
        "certificate_id": certificate_id,
        "package_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_file": MODEL_FILE,
        "files": {MODEL_FILE: sha256_file(out_dir / MODEL_FILE),
                  SOURCE_MANIFEST_FILE: sha256_file(out_dir / SOURCE_MANIFEST_FILE)},
    }
    _write_manifest(out_dir, manifest)  # last: an interrupted deploy leaves no bundle.json, which load refuses
    return out_dir


def _resolve_scenario(scenario: ScenarioSpec | str | None, checkpoint_manifest: dict[str, Any], *,
                      need_it: bool) -> ScenarioSpec | None:
    """The given scenario, else the one the checkpoint's manifest records (if it is in the catalogue)."""
    if isinstance(scenario, ScenarioSpec):
        return scenario
    from safetybed.spec.catalogue import load_scenario_arg

    if scenario is not None:
        return load_scenario_arg(scenario)[0]
    recorded = checkpoint_manifest.get("scenario")
    if isinstance(recorded, str):
        try:
            return load_scenario_arg(recorded)[0]
        except InputError:
            if need_it:
                raise InputError(f"the checkpoint was trained on scenario {recorded!r}, which is not in the "
                                 f"catalogue; pass scenario= (--scenario) or control_rate_hz= "
                                 f"(--control-rate-hz)") from None
            return None
    if need_it:
        raise InputError("control rate unknown: pass scenario= (--scenario) or control_rate_hz= (--control-rate-hz)")
    return None


def annotate_bundle(bundle_dir: str | Path, *, smoothing_sigma: float | None = None,
                    certificate_id: str | None = None) -> dict[str, Any]:
    """Set ``smoothing_sigma`` and/or ``certificate_id`` (the ones given) in a verified bundle; returns the
    new manifest. This is how certification attaches its result to a bundle."""
    _check_sigma(smoothing_sigma)
    bundle_dir = Path(bundle_dir)
    manifest = read_bundle_manifest(bundle_dir)
    if smoothing_sigma is not None:
        manifest["smoothing_sigma"] = float(smoothing_sigma)
    if certificate_id is not None:
        manifest["certificate_id"] = certificate_id
    manifest.pop("manifest_sha256")
    _write_manifest(bundle_dir, manifest)
    return read_bundle_manifest(bundle_dir)
