"""``pipeline.html`` / ``pipeline.json``: one controller's training, certificate, evaluations and bundle on one page,
with the check that every section refers to the controller's own weights."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from safetybed.control.bundle import deploy
from safetybed.errors import InputError
from safetybed.evaluate.pipeline import evaluate_testbed
from safetybed.report.certificate import certify_to_folder
from safetybed.report.evaluation import write_evaluation
from safetybed.report.pipeline import write_pipeline_report
from safetybed.threads import torch_threads

from .conftest import REPO_ROOT
from .test_certify_report import SPEC as REPORT_SPEC

CONTROLLER = REPO_ROOT / "controllers" / "cartpole_ppo.toml"
WEIGHTS_SHA256 = json.loads((REPO_ROOT / "controllers" / "weights" / "cartpole_ppo" / "manifest.json")
                            .read_text(encoding="utf-8"))["weights_sha256"]
# The tiny CartPole certification of the certificate-report test, under its own name.
SPEC = REPORT_SPEC.replace('name = "report_test"', 'name = "pipeline_report_test"')
HEADINGS = ["Training", "Certificate", "Crash-rate evaluation", "Deployment bundle"]


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """Real outputs of certify, evaluate and deploy, small. ``safetybed evaluate`` runs only highway scenarios
    and the testbed (whose ego is builtin:idm), so the evaluation of *this* controller is the real testbed
    document with its ``controller`` set as ``evaluate --controller controllers/cartpole_ppo.toml`` records it."""
    torch_threads(1)
    folder = tmp_path_factory.mktemp("pipeline")
    spec = folder / "spec.toml"
    spec.write_text(SPEC, encoding="utf-8")
    certificate = certify_to_folder(spec, out_dir=folder / "cert", store_path=folder / "runs.sqlite")
    document = evaluate_testbed("testbed:cut_in", controller="builtin:idm", methods=["nade"], tests=200,
                                bootstrap_resamples=20)
    write_evaluation(document, folder / "eval_idm")
    write_evaluation(dict(document, controller=str(CONTROLLER)), folder / "eval")
    deploy(str(CONTROLLER), folder / "bundle")
    return {"folder": folder, "certificate": certificate, "cert": folder / "cert", "eval": folder / "eval",
            "eval_idm": folder / "eval_idm", "bundle": folder / "bundle"}


def report(out: Path, artefacts, **overrides) -> dict:
    arguments = {"controller_spec": CONTROLLER, "certificate_dir": artefacts["cert"],
                 "evaluation_dirs": [artefacts["eval"]], "bundle_dir": artefacts["bundle"]}
    arguments.update(overrides)
    return write_pipeline_report(out, **arguments)


class _Page(HTMLParser):
    """Tables (id -> body rows), links, images, element ids and the text under each h2."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[str] = []
        self.images: list[str] = []
        self.ids: dict[str, str] = {}
        self.under: dict[str, list[str]] = {}
        self._heading: str | None = None
        self._in_h2 = False
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids[attrs["id"]] = attrs.get("class") or ""
        if tag == "a":
            self.links.append(attrs["href"])
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "h2":
            self._in_h2, self._heading = True, ""
        elif tag == "table":
            self._table = attrs["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
            self.under[self._heading] = []
        elif tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._in_h2:
            self._heading += data
        elif self._heading is not None:
            self.under[self._heading].append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(out: Path) -> _Page:
    page = _Page()
    page.feed((out / "pipeline.html").read_text(encoding="utf-8"))
    page.close()
    return page


def test_all_sections_render_and_refer_to_the_same_weights(artefacts, tmp_path):
    index = report(tmp_path, artefacts)
    assert index["consistent"] is True and index["disagreeing"] == [] and index["unverified"] == []
    assert index["controller"] == {"name": "cartpole_ppo", "weights_sha256": WEIGHTS_SHA256,
                                   "checkpoint": str(REPO_ROOT / "controllers" / "weights" / "cartpole_ppo")}
    assert json.loads((tmp_path / "pipeline.json").read_text(encoding="utf-8")) == index
    for key in ("training", "certificate", "evaluation-1", "bundle"):
        assert index["sections"][key]["provided"] and index["sections"][key]["weights"]["status"] == "match"
    # every source is copied under sources/, hashed in the index, and linked from the page by a relative path
    page = parse(tmp_path)
    indexed = {s["path"]: s["sha256"] for section in index["sections"].values() for s in section["sources"]}
    assert {"sources/certificate/certificate.json", "sources/evaluation-1/evaluation.json",
            "sources/bundle/bundle.json", "sources/training/training_log.csv"} <= set(indexed)
    for path, sha256 in indexed.items():
        assert hashlib.sha256((tmp_path / path).read_bytes()).hexdigest() == sha256
    assert set(page.links) == set(indexed)
    assert (tmp_path / "sources" / "certificate" / "certificate.json").read_bytes() == (
        artefacts["cert"] / "certificate.json").read_bytes()
    assert all(src.startswith("data:image/png;base64,") for src in page.images) and len(page.images) == 3
    assert [h for h in page.under if h in HEADINGS] == HEADINGS
    assert page.ids["consistency-banner"] == "banner banner-ok"
    # the tables carry the documents' numbers
    certificate = artefacts["certificate"]
    rows = page.tables["certificate-table"]
    assert [float(r[0]) for r in rows] == [0.2, 0.4, 1.0]
    assert [r[3] for r in rows] == ["pass" if r["pass"] else "FAIL" for r in certificate["attacks"]["per_budget"]]
    assert all("±" in r[2] for r in rows)
    assert [r[0] for r in page.tables["evaluation-1-table"]] == ["nade"]
    assert page.tables["evaluation-1-table"][0][4] == "200"
    bundle = dict(page.tables["bundle-table"])
    assert bundle["source_weights_sha256"] == WEIGHTS_SHA256
    assert bundle["sha256 of bundle.json"] == hashlib.sha256(
        (artefacts["bundle"] / "bundle.json").read_bytes()).hexdigest()


def test_other_weights_are_a_mismatch_shown_in_red(artefacts, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    manifest = json.loads((artefacts["bundle"] / "bundle.json").read_text(encoding="utf-8"))
    (bundle / "bundle.json").write_text(json.dumps(dict(manifest, source_weights_sha256="0" * 64)), encoding="utf-8")
    index = report(tmp_path / "out", artefacts, bundle_dir=bundle,
                   evaluation_dirs=[artefacts["eval"], artefacts["eval_idm"]])
    assert index["consistent"] is False
    assert [(d["section"], d["weights_sha256"]) for d in index["disagreeing"]] == [
        ("evaluation-2", None), ("bundle", "0" * 64)]
    assert "builtin:idm" in index["disagreeing"][0]["reason"]
    page = parse(tmp_path / "out")
    assert page.ids["consistency-banner"] == "banner banner-bad"
    banner = (tmp_path / "out" / "pipeline.html").read_text(encoding="utf-8")
    assert "MISMATCH" in banner and "0" * 64 in banner
    status = {row[0]: row[2] for row in page.tables["consistency-table"]}
    assert status == {"Controller": "reference", "Training": "match", "Certificate": "match",
                      "Evaluation 1": "match", "Evaluation 2": "mismatch", "Deployment bundle": "mismatch"}


def test_a_certificate_of_other_weights_disagrees(artefacts, tmp_path):
    cert = tmp_path / "cert"
    cert.mkdir()
    certificate = json.loads((artefacts["cert"] / "certificate.json").read_text(encoding="utf-8"))
    certificate["controller"]["weights_sha256"] = "f" * 64
    (cert / "certificate.json").write_text(json.dumps(certificate), encoding="utf-8")
    index = report(tmp_path / "out", artefacts, certificate_dir=cert)
    assert not index["consistent"] and [d["section"] for d in index["disagreeing"]] == ["certificate"]


def test_a_bundle_that_ships_another_certificate_disagrees(artefacts, tmp_path):
    manifest = json.loads((artefacts["bundle"] / "bundle.json").read_text(encoding="utf-8"))
    for shipped, expected in ((artefacts["certificate"]["certificate_id"], []),
                              ("0123456789abcdef", ["bundle.certificate_id"])):
        bundle = tmp_path / shipped
        bundle.mkdir()
        (bundle / "bundle.json").write_text(json.dumps(dict(manifest, certificate_id=shipped)), encoding="utf-8")
        index = report(tmp_path / f"out-{shipped}", artefacts, bundle_dir=bundle)
        assert [d["section"] for d in index["disagreeing"]] == expected and index["consistent"] is (not expected)


def test_missing_sections_render_as_not_provided(artefacts, tmp_path):
    index = report(tmp_path, artefacts, bundle_dir=None, evaluation_dirs=[])
    assert index["consistent"] is True
    assert index["sections"]["bundle"] == {"title": "Deployment bundle", "provided": False, "sources": []}
    assert index["sections"]["evaluations"]["provided"] is False
    page = parse(tmp_path)
    assert [h for h in page.under if h in HEADINGS] == HEADINGS
    for heading in ("Deployment bundle", "Crash-rate evaluation"):
        assert "".join(page.under[heading]).strip() == "not provided"
    assert "bundle-table" not in page.tables
    assert not (tmp_path / "sources" / "bundle").exists()


def test_an_evaluation_that_names_no_controller_is_unverified(artefacts, tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    document = json.loads((artefacts["eval"] / "evaluation.json").read_text(encoding="utf-8"))
    del document["controller"]
    (folder / "evaluation.json").write_text(json.dumps(document), encoding="utf-8")
    index = report(tmp_path / "out", artefacts, evaluation_dirs=[folder])
    assert not index["consistent"] and index["disagreeing"] == []
    assert [u["section"] for u in index["unverified"]] == ["evaluation-1"]
    assert parse(tmp_path / "out").ids["consistency-banner"] == "banner banner-warn"


@pytest.mark.parametrize(("edit", "field"), [
    (lambda text: text[: len(text) // 2], "invalid JSON"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "certified"}), "certified: missing"),
    (lambda text: json.dumps(dict(json.loads(text), sigma="0.2")), "sigma: expected a number"),
    (lambda text: json.dumps(dict(json.loads(text), controller={})), "controller.weights_sha256: missing"),
    (lambda text: json.dumps(dict(json.loads(text), certified=[{"budget": "x"}])),
     "certified[0].budget: expected a number"),
])
def test_invalid_certificate_raises_input_error_naming_file_and_field(artefacts, tmp_path, edit, field):
    cert = tmp_path / "cert"
    cert.mkdir()
    (cert / "certificate.json").write_text(edit((artefacts["cert"] / "certificate.json").read_text("utf-8")),
                                           encoding="utf-8")
    with pytest.raises(InputError) as error:
        report(tmp_path / "out", artefacts, certificate_dir=cert)
    assert str(cert / "certificate.json") in str(error.value) and field in str(error.value)
    assert not (tmp_path / "out" / "pipeline.html").exists()


def test_missing_certificate_file_raises_input_error(artefacts, tmp_path):
    with pytest.raises(InputError, match="certificate.json"):
        report(tmp_path / "out", artefacts, certificate_dir=tmp_path)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_pipeline_page_renders_in_headless_chromium(artefacts, tmp_path):
    from PIL import Image

    report(tmp_path, artefacts, evaluation_dirs=[artefacts["eval"], artefacts["eval_idm"]])
    page = (tmp_path / "pipeline.html").resolve().as_uri()
    chromium = ["chromium", "--headless", "--no-sandbox", "--disable-gpu"]
    screenshot = tmp_path / "pipeline.png"
    subprocess.run([*chromium, f"--screenshot={screenshot}", "--window-size=1100,3600", page], check=True,
                   timeout=120, capture_output=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 50_000
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels[::97], axis=0)) > 50  # text, tables and plots, not one colour
    # the mismatch banner (#b00020) is drawn: a band of at least 1,000 x 30 pixels
    assert np.all(pixels == (176, 0, 32), axis=1).sum() > 30_000
    dom = subprocess.run([*chromium, "--dump-dom", page], check=True, timeout=120, capture_output=True,
                         text=True).stdout
    assert f'<code id="weights-sha256">{WEIGHTS_SHA256}</code>' in dom
    for heading in HEADINGS:
        assert f">{heading}</h2>" in dom
    assert 'class="banner banner-bad"' in dom
