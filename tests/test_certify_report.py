"""``report.html``: one self-contained file with the plots embedded and the expected tables."""

from __future__ import annotations

import base64
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from safetybed.certify.reference import PUBLISHED_CARTPOLE
from safetybed.report.certificate import certify_to_folder, render_certificate_html

from .conftest import REPO_ROOT

SPEC = f"""
name = "report_test"
description = "a <b>tiny</b> certification for the report test"
controller = "{REPO_ROOT / 'controllers' / 'cartpole_ppo.toml'}"
scenario = "classic/cartpole"
sigma = 0.2
budgets = [0.2, 0.4, 1.0]
episodes = 40
seed = 0

[attack]
episodes = 2
spend_rules = ["fraction"]
spend_fractions = [1.0]
pgd_steps = 2
noise_samples = 2
"""


class _Structure(HTMLParser):
    """Collects images, tables (id -> body rows of cell texts), external references and the text."""

    def __init__(self):
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.external: list[str] = []
        self.text: list[str] = []
        self._table: str | None = None
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            if value and not value.startswith("data:"):
                self.external.append(value)
        if tag == "table":
            self._table = attrs.get("id", f"table-{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def certified(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    spec = folder / "spec.toml"
    spec.write_text(SPEC, encoding="utf-8")
    certificate = certify_to_folder(spec, out_dir=folder / "out", store_path=folder / "runs.sqlite")
    return certificate, folder / "out" / "report.html"


def parse(html_text: str) -> _Structure:
    parser = _Structure()
    parser.feed(html_text)
    parser.close()
    return parser


def test_report_embeds_its_plots_and_needs_nothing_external(certified):
    _, report = certified
    structure = parse(report.read_text(encoding="utf-8"))
    assert structure.external == []
    ids = {image.get("id") for image in structure.images}
    assert {"curve-plot", "histogram-plot"} <= ids
    for image in structure.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix):])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_tables_have_the_expected_rows(certified):
    certificate, report = certified
    structure = parse(report.read_text(encoding="utf-8"))
    certified_rows = structure.tables["certified-table"]
    assert [float(row[0]) for row in certified_rows] == [0.2, 0.4, 1.0]
    published = dict(zip(PUBLISHED_CARTPOLE[0.2]["budgets"], PUBLISHED_CARTPOLE[0.2]["certified"], strict=True))
    assert [float(row[-1]) for row in certified_rows] == [published[0.2], published[0.4], published[1.0]]
    attack_rows = structure.tables["attack-table"]
    assert [float(row[0]) for row in attack_rows] == [0.2, 0.4, 1.0]
    assert [row[-1] for row in attack_rows] == ["pass" if r["pass"] else "FAIL"
                                                for r in certificate["attacks"]["per_budget"]]
    settings = {row[0]: row[1] for row in structure.tables["settings-table"]}
    assert settings["controller.weights_sha256"] == certificate["controller"]["weights_sha256"]
    assert settings["samples.run_id"] == certificate["samples"]["run_id"]
    assert settings["sigma"] == "0.2" and settings["alpha"] == "0.05"
    versions = {row[0] for row in structure.tables["versions-table"]}
    assert {"safetybed", "torch", "numpy", "gymnasium"} <= versions
    text = " ".join(structure.text)
    assert "published re-run" in text and "<b>tiny</b>" in text  # user text is escaped, not interpreted


def test_report_without_attacks_says_so(certified):
    certificate, _ = certified
    without = dict(certificate, attacks={"not_run": "not run: [attack] episodes = 0", "per_budget": []},
                   reference=None)
    structure = parse(render_certificate_html(without))
    assert "attack-table" not in structure.tables and "published re-run" not in " ".join(structure.text)
    assert any("not run" in chunk for chunk in structure.text)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(certified, tmp_path):
    _, report = certified
    screenshot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={screenshot}",
                    "--window-size=1100,2400", Path(report).resolve().as_uri()], check=True, timeout=120,
                   capture_output=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


def test_report_reads_null_bounds_back_as_infinities(certified):
    """certificate.json writes -inf / +inf as null (safetybed.jsonsafe): a certified value that certifies
    nothing still shows as -inf, an attack's unbounded upper confidence bound as inf."""
    certificate, _ = certified
    rows = [dict(row, certified=None) for row in certificate["certified"]]
    per_budget = [dict(row, certified=None, attacked_upper=None) for row in certificate["attacks"]["per_budget"]]
    edited = dict(certificate, certified=rows, clean=dict(certificate["clean"], certified_at_zero=None),
                  curve=dict(certificate["curve"], certified=[None] * len(certificate["curve"]["certified"])),
                  attacks=dict(certificate["attacks"], per_budget=per_budget))
    structure = parse(render_certificate_html(edited))
    assert [row[2] for row in structure.tables["certified-table"]] == ["-inf"] * len(rows)
    assert [(row[1], row[4]) for row in structure.tables["attack-table"]] == [("-inf", "inf")] * len(per_budget)
    assert any("certified at B = 0: -inf" in chunk for chunk in structure.text)
