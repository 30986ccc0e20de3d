"""The README's main job: quickstart runs a real highway-env and pybullet batch run and writes a certificate."""

from __future__ import annotations

import json


def test_quickstart_runs_both_simulators_and_certifies(cli, tmp_path):
    code, stdout, stderr = cli("quickstart", "--out", str(tmp_path), "--episodes", "2", "--workers", "1", "--json")
    assert code == 0, stderr
    result = json.loads(stdout)
    assert [run["scenario"] for run in result["runs"]] == ["highway/cut_in", "bullet/reach"]
    assert all(run["episodes"] == 2 and run["status"] == "complete" for run in result["runs"])
    assert (tmp_path / "runs.sqlite").exists() and (tmp_path / "summary.json").exists()
    certificate = result["certificate"]
    bounds = [row["certified"] for row in certificate["certified"]]
    assert bounds == sorted(bounds, reverse=True) and bounds[0] <= certificate["clean_estimate"]
    assert (tmp_path / "certificate" / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    evaluation = result["evaluation"]
    assert [row["method"] for row in evaluation["methods"]] == ["crude", "nade", "scv-martingale", "scv-stratified",
                                                                 "scv-learned", "adate"]
    exact = evaluation["exact_crash_probability"]
    nade = evaluation["methods"][1]
    assert nade["ci"][0] <= exact <= nade["ci"][1]  # seed 0: checked; coverage itself is tested elsewhere
    # The stratified SCV fit measures its own assumption and flags the adaptive testbed (K depends on maneuvers).
    assert "so this estimate is biased" in evaluation["methods"][3]["caveat"]  # its check measured the bias
    assert evaluation["methods"][2]["caveat"] is None  # martingale: nothing to flag
    assert (tmp_path / "evaluation" / "report.html").exists()
    # The small driving pipeline: certified on cut-in, the certificate deployed, the bundle evaluated, one page.
    pipeline = result["pipeline"]
    assert pipeline["consistent"] is True
    assert [row["budget"] for row in pipeline["certified"]] == [0.25, 0.5, 1.0]
    assert [entry["method"] for entry in pipeline["evaluations"][0]["methods"]][:2] == ["nade", "scv-martingale"]
    bundle = json.loads((tmp_path / "pipeline" / "bundle" / "bundle.json").read_text(encoding="utf-8"))
    certificate_file = json.loads((tmp_path / "pipeline" / "certificate" / "certificate.json").read_text("utf-8"))
    assert bundle["certificate_id"] == certificate_file["certificate_id"] and bundle["smoothing_sigma"] == 0.5
    index = json.loads((tmp_path / "pipeline" / "pipeline.json").read_text(encoding="utf-8"))
    assert index["consistent"] and (tmp_path / "pipeline" / "pipeline.html").exists()
