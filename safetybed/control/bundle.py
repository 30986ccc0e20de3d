"""Deployment bundles: ``safetybed deploy CTRL --out DIR`` and ``safetybed deploy CERTIFICATE_DIR --out DIR``.

:func:`deploy` turns a trained controller (a controller spec ``controllers/*.toml`` -> its checkpoint, or a
checkpoint folder; the rules of :func:`safetybed.control.loading.load_controller`) into a self-contained folder of
*data* that :func:`safetybed.control.runtime.load_bundle` runs without the training code and without executing
anything it reads: the checkpoint's safetensors weights, and a ``bundle.json`` that describes the network, its
pre- and post-processing and the sha256 of every file (layout and verification in
:mod:`safetybed.control.runtime`). :func:`deploy_certified` deploys the smoothed controller a certificate covers,
with the certificate's sigma and frame stacking, and copies the certificate into the bundle.

Manifest fields: ``format``, ``controller`` (name), ``source`` (reference, checkpoint folder, algorithm),
``source_weights_sha256`` (the checkpoint's ``weights.safetensors``, copied verbatim as ``policy.safetensors``),
``scenario`` (name or ``null``), ``observation_space`` (one raw frame) / ``action_space`` (space JSON),
``network`` (:func:`~safetybed.control.runtime.network_description`: the ``PolicyArch`` fields, the normaliser's
``enabled`` / ``clip`` / ``std_floor``, the deterministic action head), ``frame_stack`` (raw frames the policy
reads, stacked by the runtime), ``control_rate_hz`` [Hz], ``smoothing_sigma`` (``null`` unless a certificate or
:func:`annotate_bundle` sets it), ``smoothing_noise`` (how the noise is drawn, in words), ``certificate_id`` /
``certificate_file`` / ``certificate_sha256`` (``null`` unless certified), ``package_version`` /
``torch_version`` / ``numpy_version`` / ``python_version``, ``created_utc``, ``model_file``, ``files`` (name ->
sha256) and ``manifest_sha256`` (digest of everything else).

Signing (optional, needs ``cryptography``: ``pip install 'safetybed[export]'``): :func:`generate_signing_key`
(``safetybed keygen --out KEY.pem``) writes an ed25519 key pair; ``deploy(..., sign_key=KEY.pem)`` (``--sign-key``)
writes ``bundle.sig``, the signature of the manifest digest (which covers every file); ``load_bundle(...,
trusted_keys=[KEY.pub.pem])`` refuses bundles that no trusted key signed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safetybed import __version__
from safetybed.control.certified import CERTIFICATE_FILE, CertifiedSmoothing, read_certificate
from safetybed.control.runtime import (
    BUNDLE_MANIFEST,
    FORMAT,
    MODEL_FILE,
    SIGNATURE_FILE,
    build_policy_module,
    env_step_rate_hz,
    manifest_digest,
    network_description,
    read_bundle_manifest,
    require_ed25519,
    sha256_file,
    signed_message,
)
from safetybed.errors import InputError
from safetybed.spec import ScenarioSpec

SOURCE_MANIFEST_FILE = "checkpoint_manifest.json"
SMOOTHING_NOISE_WORDS = ("one fresh N(0, sigma^2 I) draw per act() call on the raw observation frame (its own units), "
                         "before frame stacking and observation normalisation, not clipped; the generator is "
                         "SeedSequence(seed, spawn_key=(noise_spawn_key,)) at reset(seed), as SmoothedController")


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


def _write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    manifest = {**manifest, "manifest_sha256": manifest_digest(manifest)}
    (bundle_dir / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def _check_sigma(smoothing_sigma: float | None) -> None:
    if smoothing_sigma is not None and not (math.isfinite(smoothing_sigma) and smoothing_sigma >= 0):
        raise InputError(f"smoothing_sigma: expected a finite number >= 0, got {smoothing_sigma}")


def _certified_settings(certificate: CertifiedSmoothing, *, controller_ref: str, weights_sha256: str,
                        smoothing_sigma: float | None, frame_stack: int | None) -> tuple[float, int]:
    """(sigma, frame stack) of a certified deployment, refusing settings the certificate does not cover."""
    where = f"certificate {certificate.certificate_id} ({certificate.path})"
    if weights_sha256 != certificate.weights_sha256:
        raise InputError(f"{controller_ref}: weights_sha256: expected {certificate.weights_sha256} (controller."
                         f"weights_sha256 of {where}), got {weights_sha256}; deploy the controller that was certified")
    if smoothing_sigma is not None and smoothing_sigma != certificate.sigma:
        raise InputError(f"smoothing_sigma: expected {certificate.sigma:g} (sigma of {where}), got {smoothing_sigma:g}")
    if frame_stack is not None and frame_stack != certificate.frame_stack:
        raise InputError(f"frame_stack: expected {certificate.frame_stack} (smoothing.frame_stack of {where}), got "
                         f"{frame_stack}")
    return certificate.sigma, certificate.frame_stack


def deploy(controller_ref: str, out_dir: str | Path, *, scenario: ScenarioSpec | str | None = None,
           control_rate_hz: float | None = None, smoothing_sigma: float | None = None,
           frame_stack: int | None = None, certificate: str | Path | None = None,
           sign_key: str | Path | None = None, overwrite: bool = False, adapt: str = "none") -> Path:
    """Write a deployment bundle for a checkpoint-based controller; returns the bundle folder.

    A planner spec (``algorithm = "planner"``) is deployed by :func:`safetybed.control.planner.bundle.
    deploy_planner` with its test-time adaptation method ``adapt``; smoothing, certificates, a scenario or a
    control rate do not apply to it (a planner cannot be certified).

    Args:
        controller_ref: a controller spec (``controllers/*.toml``) or a checkpoint folder.
        out_dir: the bundle folder (created; must be empty or absent unless ``overwrite``).
        scenario: scenario spec, path or catalogue name the controller is deployed in; default: the certificate's
            scenario, else the controller spec's, else the checkpoint manifest's ``scenario`` if it names a
            catalogue scenario. The checkpoint's spaces are checked against it and the control rate and frame
            stack are read from it.
        control_rate_hz: the control rate [Hz] when there is no scenario (must agree with it when there is).
        smoothing_sigma: policy-smoothing σ the bundle controller adds to every raw frame (``None``: no noise, or
            the certificate's).
        frame_stack: raw frames the policy reads (default: the certificate's, else the scenario's, else 1).
        certificate: ``certificate.json`` (or the folder ``safetybed certify`` wrote) of the certified smoothed
            controller: the bundle then runs with its sigma and frame stack, carries a copy of it, and deploying
            other weights is refused.
        sign_key: ed25519 private key (PEM, :func:`generate_signing_key`) to sign the bundle with.
        overwrite: replace the bundle files in a non-empty ``out_dir``.

    Example::

        deploy("controllers/reach_sac.toml", "bundles/reach_sac")
        controller = safetybed.control.runtime.load_bundle("bundles/reach_sac")

    Raises:
        InputError: unusable reference, spaces that do not fit the scenario, unknown control rate, settings or
            weights the certificate does not cover, or a non-empty ``out_dir``.
    """
    from safetybed.control.checkpoint import load_checkpoint, space_to_json
    from safetybed.sims.framestack import raw_space
    from safetybed.spec.planner import is_planner_spec

    if str(controller_ref).endswith(".toml") and is_planner_spec(controller_ref):
        given = [flag for flag, value in (("--smoothing-sigma", smoothing_sigma), ("--certificate", certificate),
                                          ("--frame-stack", frame_stack), ("--sign-key", sign_key), ("--scenario", scenario),
                                          ("--control-rate-hz", control_rate_hz)) if value]
        if given:
            raise InputError(f"{given[0]}: {controller_ref} is a planner; its bundles take no smoothing, "
                             f"certificate, frame stack, signature, scenario or control rate (a planner cannot be certified)")
        from safetybed.control.planner.bundle import deploy_planner

        return deploy_planner(controller_ref, out_dir, adapt=adapt, overwrite=overwrite)
    if adapt != "none":
        raise InputError(f"--adapt {adapt}: test-time adaptation needs a planner spec (algorithm = \"planner\", "
                         f"e.g. controllers/highway_planner.toml), got {controller_ref}")
    _check_sigma(smoothing_sigma)
    checkpoint_dir, name, spec_scenario = _resolve_checkpoint(controller_ref)
    checkpoint = load_checkpoint(checkpoint_dir)
    certified = read_certificate(certificate) if certificate is not None else None
    if certified is not None:
        smoothing_sigma, frame_stack = _certified_settings(
            certified, controller_ref=controller_ref, weights_sha256=checkpoint.weights_sha256,
            smoothing_sigma=smoothing_sigma, frame_stack=frame_stack)
        if scenario is None and certified.scenario_spec is not None:
            scenario = ScenarioSpec.model_validate(certified.scenario_spec)
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
        scenario_stack = int(spec.perturbations.frame_stack)
        if frame_stack is not None and frame_stack != scenario_stack:
            raise InputError(f"frame_stack: scenario {spec.name!r} stacks {scenario_stack} frame(s), got "
                             f"{frame_stack}" + (f" from certificate {certified.certificate_id}" if certified else ""))
        frame_stack = scenario_stack
    if not (control_rate_hz is not None and math.isfinite(control_rate_hz) and control_rate_hz > 0):
        raise InputError(f"control_rate_hz: expected a number > 0, got {control_rate_hz}")
    frame_stack = 1 if frame_stack is None else int(frame_stack)
    try:
        frame_space = raw_space(observation_space, frame_stack)
    except (TypeError, ValueError) as error:
        raise InputError(f"frame_stack {frame_stack}: {error}") from None

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not overwrite)):
        raise InputError(f"{out_dir}: exists and is not an empty folder; choose another --out or overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (BUNDLE_MANIFEST, SIGNATURE_FILE, CERTIFICATE_FILE):  # an overwritten bundle keeps none of these
        (out_dir / stale).unlink(missing_ok=True)
    weights_file = checkpoint_dir / checkpoint.manifest.get("weights_file", "weights.safetensors")
    shutil.copyfile(weights_file, out_dir / MODEL_FILE)
    (out_dir / SOURCE_MANIFEST_FILE).write_bytes((checkpoint_dir / "manifest.json").read_bytes())
    network = network_description(checkpoint.policy, checkpoint.obs_norm)
    _check_rebuilt(out_dir, network, checkpoint)
    files = {MODEL_FILE: sha256_file(out_dir / MODEL_FILE),
             SOURCE_MANIFEST_FILE: sha256_file(out_dir / SOURCE_MANIFEST_FILE)}
    if certified is not None:
        shutil.copyfile(certified.path, out_dir / CERTIFICATE_FILE)
        files[CERTIFICATE_FILE] = sha256_file(out_dir / CERTIFICATE_FILE)

    manifest = {
        "format": FORMAT,
        "controller": name,
        "source": {"ref": controller_ref, "checkpoint": str(Path(checkpoint_dir).resolve()),
                   "algorithm": checkpoint.manifest.get("algorithm")},
        "source_weights_sha256": checkpoint.weights_sha256,
        "scenario": spec.name if spec is not None else None,
        "observation_space": space_to_json(frame_space),
        "action_space": space_to_json(action_space),
        "network": network,
        "frame_stack": frame_stack,
        "control_rate_hz": float(control_rate_hz),
        "smoothing_sigma": None if smoothing_sigma is None else float(smoothing_sigma),
        "smoothing_noise": SMOOTHING_NOISE_WORDS if smoothing_sigma else None,
        "certificate_id": certified.certificate_id if certified is not None else None,
        "certificate_file": CERTIFICATE_FILE if certified is not None else None,
        "certificate_sha256": files.get(CERTIFICATE_FILE),
        "package_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_file": MODEL_FILE,
        "files": files,
    }
    _write_manifest(out_dir, manifest)  # last but the signature: an interrupted deploy leaves no bundle.json
    read_bundle_manifest(out_dir)  # what load_bundle will check, certificate included
    if sign_key is not None:
        sign_bundle(out_dir, sign_key)
    return out_dir


def _check_rebuilt(out_dir: Path, network: dict[str, Any], checkpoint: Any) -> None:
    """The module the runtime will rebuild acts bit for bit like the checkpoint's (two batch sizes)."""
    from safetensors.torch import load_file

    from safetybed.control.runtime import DeterministicPolicy

    rebuilt = build_policy_module(network, load_file(str(out_dir / MODEL_FILE)), source=str(out_dir))
    eager = DeterministicPolicy(checkpoint.obs_norm, checkpoint.policy).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rows in (1, 5):
            obs = torch.randn(rows, checkpoint.policy.arch.obs_dim, generator=generator) * 3
            if not torch.equal(rebuilt(obs), eager(obs)):
                raise RuntimeError("the rebuilt policy disagrees with the checkpoint's; the bundle would act "
                                   "differently")


def deploy_certified(certificate: str | Path, out_dir: str | Path, *, controller_ref: str | None = None,
                     sign_key: str | Path | None = None, overwrite: bool = False) -> Path:
    """``safetybed deploy CERTIFICATE_DIR --out DIR``: deploy the controller a certificate covers.

    The controller is ``controller_ref`` if given, else the one the certificate records (its controller spec,
    then its checkpoint folder, as paths relative to the folder certification ran in); either way its weights
    must be the certified ones. The scenario, sigma and frame stack come from the certificate.

    Raises:
        InputError: a missing or edited certificate, a controller that cannot be found, or other weights.
    """
    certified = read_certificate(certificate)
    if controller_ref is None:
        found = [ref for ref in certified.controller_refs if Path(ref).exists()]
        if not found:
            raise InputError(f"{certified.path}: controller: neither {' nor '.join(certified.controller_refs) or '?'} "
                             f"exists from {os.getcwd()}; run from the folder certification ran in, or pass the "
                             f"controller: safetybed deploy CTRL --certificate {certified.path} --out {out_dir}")
        controller_ref = found[0]
    return deploy(controller_ref, out_dir, certificate=certified.path, sign_key=sign_key, overwrite=overwrite)


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


def annotate_bundle(bundle_dir: str | Path, *, smoothing_sigma: float) -> dict[str, Any]:
    """Set ``smoothing_sigma`` in a verified, uncertified bundle (uncertified smoothing); returns the new manifest.

    A certified bundle takes its sigma from its certificate and is refused here: deploy it from the certificate
    (:func:`deploy_certified`). A signature the bundle had no longer applies and is removed.
    """
    _check_sigma(smoothing_sigma)
    bundle_dir = Path(bundle_dir)
    manifest = read_bundle_manifest(bundle_dir)
    if manifest.get("certificate_file") is not None or manifest["certificate_id"] is not None:
        raise InputError(f"{bundle_dir / BUNDLE_MANIFEST}: smoothing_sigma: the bundle is certified (certificate "
                         f"{manifest['certificate_id']}), so its sigma is the certificate's; it cannot be changed")
    manifest["smoothing_sigma"] = float(smoothing_sigma)
    if "smoothing_noise" in manifest:
        manifest["smoothing_noise"] = SMOOTHING_NOISE_WORDS if smoothing_sigma else None
    manifest.pop("manifest_sha256")
    (bundle_dir / SIGNATURE_FILE).unlink(missing_ok=True)
    _write_manifest(bundle_dir, manifest)
    return read_bundle_manifest(bundle_dir)


# -- signing --------------------------------------------------------------------------------------------------
def _private_key(path: str | Path):
    require_ed25519()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as error:
        raise InputError(f"{path}: cannot read the signing key ({error.strerror})") from None
    except (ValueError, TypeError) as error:
        raise InputError(f"{path}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InputError(f"{path}: expected an ed25519 private key, got {type(key).__name__}")
    return key


def generate_signing_key(out_path: str | Path) -> tuple[Path, Path]:
    """Write a new ed25519 key pair: ``out_path`` (private, PEM PKCS#8, mode 0600) and ``<stem>.pub.pem`` beside
    it (public, PEM); returns both paths. Refuses to overwrite an existing key."""
    require_ed25519()  # the install hint if cryptography is missing
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private_path = Path(out_path)
    public_path = private_path.with_name(private_path.name.removesuffix(".pem") + ".pub.pem")
    for path in (private_path, public_path):
        if path.exists():
            raise InputError(f"{path}: exists; a key is never overwritten (choose another --out)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def sign_bundle(bundle_dir: str | Path, sign_key: str | Path) -> Path:
    """Write ``bundle.sig``: the ed25519 signature (with ``sign_key``, a PEM private key) of the verified
    manifest's digest, which covers every file of the bundle; returns its path."""
    require_ed25519()
    from cryptography.hazmat.primitives import serialization

    bundle_dir = Path(bundle_dir)
    manifest = read_bundle_manifest(bundle_dir)
    key = _private_key(sign_key)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    document = {"algorithm": "ed25519", "signed": "safetybed-bundle manifest_sha256 (SIGNED_PREFIX + 32 bytes)",
                "manifest_sha256": manifest["manifest_sha256"], "public_key": public,
                "signature": key.sign(signed_message(manifest["manifest_sha256"])).hex()}
    path = bundle_dir / SIGNATURE_FILE
    path.write_text(json.dumps(document, indent=2, sort_keys=True), encoding="utf-8")
    return path
