"""The HTML report of ``safetybed evaluate``: estimates, efficiency table, RHW-vs-tests plot, coverage."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from safetybed.report.render import Raw, fmt, png_data_uri, table, verdict, write_json_and_html


def _rhw_plot(document: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for entry in document["methods"]:
        curve = entry.get("rhw_curve") or {}
        points = [(n, r) for n, r in zip(curve.get("tests", []), curve.get("rhw", []), strict=True) if r is not None]
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], label=entry["method"])
    target = document.get("target_rhw", 0.3)
    axis.axhline(target, color="black", linestyle="--", linewidth=1, label=f"RHW = {target:g}")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("tests")
    axis.set_ylabel(f"relative half-width ({document.get('confidence', 0.9):.0%} CI)")
    axis.set_title("Precision vs number of tests")
    axis.legend(fontsize=8)
    uri = png_data_uri(figure)
    plt.close(figure)
    return uri


def render_evaluation_html(document: dict[str, Any]) -> str:
    escape = html.escape
    exact = document.get("exact_crash_probability")
    rows = []
    for entry in document["methods"]:
        ci = entry.get("ci") or [None, None]
        boot = entry.get("bootstrap") or {}
        ratios = entry.get("fewer_tests_than") or {}
        rows.append([entry["method"], entry["estimate"], f"[{fmt(ci[0])}, {fmt(ci[1])}]", entry.get("rhw"),
                     entry["n"], entry["n_crashes"], entry.get("training_tests", 0), entry.get("tests_needed"),
                     entry.get("tests_to_target"),
                     f"{fmt(boot.get('median'))} [{fmt(boot.get('p10'))}, {fmt(boot.get('p90'))}]",
                     ratios.get("crude"), ratios.get("nade")])
    summary = table("methods", ["method", "estimate", f"{document.get('confidence', 0.9):.0%} CI", "RHW", "tests",
                                "crashes", "training tests", "tests to RHW<0.3 (extrapolated)",
                                "observed", "bootstrap median [p10, p90]", "x fewer than crude",
                                "x fewer than NADE"], rows,
                    caption="tests to the target RHW: extrapolated n (rhw/target)^2 from the per-test variance; "
                            "observed = first n after which the running RHW stays below the target")
    coverage_html = ""
    if document.get("coverage"):
        cov_rows = [[row["method"], row["repetitions"], row["tests_per_repetition"], row["covered"],
                     row["coverage"], row.get("mean_estimate"), row.get("bias_z"),
                     verdict(row["coverage"] >= document.get("coverage_goal", 0.85))]
                    for row in document["coverage"]]
        coverage_html = "<h2>Coverage over repetitions</h2>" + table(
            "coverage", ["method", "repetitions", "tests each", "covered", "coverage", "mean estimate",
                         "bias z", "goal"], cov_rows,
            caption=f"share of {document.get('confidence', 0.9):.0%} CIs covering the exact value "
                    f"{fmt(exact)}; goal {document.get('coverage_goal', 0.85):.0%}")
    settings = table("settings", ["setting", "value"],
                     [[key, json.dumps(document[key]) if isinstance(document[key], dict | list) else document[key]]
                      for key in ("scenario", "controller", "seed", "confidence", "target_rhw",
                                  "exact_crash_probability", "package_version") if key in document])
    plot = f'<img alt="RHW vs tests" src="{_rhw_plot(document)}">'
    caveats = "".join(f"<p class='fail'>{escape(entry['method'])}: {escape(entry['caveat'])}</p>"
                      for entry in document["methods"] if entry.get("caveat"))
    caveats += "".join(f"<p class='fail'>incomplete run {escape(run['run_id'])} ({escape(run['label'])}, "
                       f"--allow-partial): {run['stored']} of {run['planned']} tests stored; missing index "
                       f"{escape(', '.join(map(str, run['missing_indices'][:20])))}</p>"
                       for run in document.get("partial_runs", []))
    title = f"Crash-rate evaluation: {document.get('scenario', '')}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}.pass{color:green}.fail{color:red}"
            f"</style></head><body><h1>{escape(title)}</h1>"
            f"<p>Controller: {escape(str(document.get('controller', '')))}. Crash probability per test.</p>"
            f"{summary}{caveats}{Raw(plot)}{coverage_html}<h2>Settings</h2>{settings}</body></html>")


def write_evaluation(document: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write ``evaluation.json`` and ``report.html`` into ``out_dir``; returns their paths."""
    return write_json_and_html(document, out_dir, json_name="evaluation.json", page=render_evaluation_html(document))
