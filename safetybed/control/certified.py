"""What a deployment bundle reads from a policy-smoothing certificate, as JSON fields (no certify code).

``safetybed certify`` writes ``certificate.json`` (:mod:`safetybed.certify.pipeline`); a bundle deployed from it
carries a verbatim copy. The deployment runtime must check that copy without importing the certification stack
(``control`` may not import ``certify``, ``tests/test_layers.py``), so the few facts it needs are read here from
the JSON document itself:

* ``certificate_id``: the first 16 hex digits of :func:`certificate_digest` of the document, so a certificate whose
  certified content was edited no longer matches its own id;
* ``controller.weights_sha256``: the sha256 of the ``weights.safetensors`` that was certified;
* ``sigma`` (= ``smoothing.sigma``): the smoothing noise [observation units] per raw frame;
* ``smoothing.frame_stack``: how many raw frames the base policy reads;
* ``scenario.spec``: the (noise-free) scenario the certificate holds for; ``controller.spec`` /
  ``controller.checkpoint``: where the certified controller was, relative to the folder certification ran in.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetybed.errors import InputError

CERTIFICATE_FORMAT = "safetybed-certificate/1"
CERTIFICATE_FILE = "certificate.json"
#: Keys left out of a certificate's digest: what differs between two certifications of the same run and settings.
_UNDIGESTED = ("certificate_id", "created_utc", "wall_time_s", "files", "run")


def certificate_digest(certificate: dict[str, Any]) -> str:
    """sha256 of the certificate's canonical JSON without its id, creation time, wall times, file names and
    whether its run was new, reused or resumed: the same run and settings give the same id."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _UNDIGESTED}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    body = strip(certificate)
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CertifiedSmoothing:
    """The facts of a certificate a bundle must agree with.

    Attributes:
        path: the ``certificate.json`` read.
        certificate_id: its id (checked against its content).
        weights_sha256: sha256 of the certified checkpoint's ``weights.safetensors``.
        sigma: smoothing noise standard deviation per raw frame [observation units].
        frame_stack: raw frames the base policy reads (1: none stacked).
        document: the whole certificate.
    """

    path: Path
    certificate_id: str
    weights_sha256: str
    sigma: float
    frame_stack: int
    document: dict[str, Any]

    @property
    def scenario_spec(self) -> dict[str, Any] | None:
        """The noise-free scenario spec (``ScenarioSpec`` JSON) the certificate holds for, if recorded."""
        return (self.document.get("scenario") or {}).get("spec")

    @property
    def controller_refs(self) -> list[str]:
        """Where the certified controller was: its spec, then its checkpoint (as certification recorded them)."""
        controller = self.document.get("controller") or {}
        return [ref for ref in (controller.get("spec"), controller.get("checkpoint")) if isinstance(ref, str)]


def certificate_path(path: str | Path) -> Path:
    """``path`` itself, or ``path/certificate.json`` when ``path`` is the folder ``safetybed certify`` wrote."""
    path = Path(path)
    if path.is_dir():
        path = path / CERTIFICATE_FILE
    if not path.is_file():
        raise InputError(f"{path}: certificate not found (expected the certificate.json that safetybed certify "
                         f"writes, or its folder)")
    return path


def read_certificate(path: str | Path) -> CertifiedSmoothing:
    """Read and check ``certificate.json`` (or a folder holding it).

    Raises:
        InputError: not JSON, not a certificate, a missing or ill-typed field, or content that does not match its
            ``certificate_id`` (the certificate was edited). The message names the file and the field.
    """
    path = certificate_path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != CERTIFICATE_FORMAT:
        given = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise InputError(f"{path}: format: expected {CERTIFICATE_FORMAT!r}, got {given!r}")
    expected_id = certificate_digest(document)[:16]
    if document.get("certificate_id") != expected_id:
        raise InputError(f"{path}: certificate_id: expected {expected_id!r} (the digest of the certificate's "
                         f"content), got {document.get('certificate_id')!r}; the certificate was edited")

    def field(*keys: str) -> Any:
        value: Any = document
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                raise InputError(f"{path}: {'.'.join(keys)}: missing from the certificate")
            value = value[key]
        return value

    weights = field("controller", "weights_sha256")
    sigma = field("sigma")
    frame_stack = field("smoothing", "frame_stack")
    if not isinstance(weights, str) or len(weights) != 64:
        raise InputError(f"{path}: controller.weights_sha256: expected a sha256 hex digest, got {weights!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma <= 0:
        raise InputError(f"{path}: sigma: expected a finite number > 0, got {sigma!r}")
    if field("smoothing", "sigma") != sigma:
        raise InputError(f"{path}: smoothing.sigma: expected {sigma!r} (the certificate's sigma), got "
                         f"{field('smoothing', 'sigma')!r}")
    if isinstance(frame_stack, bool) or not isinstance(frame_stack, int) or frame_stack < 1:
        raise InputError(f"{path}: smoothing.frame_stack: expected an integer >= 1, got {frame_stack!r}")
    return CertifiedSmoothing(path=path, certificate_id=expected_id, weights_sha256=weights, sigma=float(sigma),
                              frame_stack=frame_stack, document=document)
