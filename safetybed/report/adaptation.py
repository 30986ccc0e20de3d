"""The HTML report of ``safetybed adapt``: the (suite x method) table, the collision-rate plot, detection, latency."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from safetybed.report.render import STYLE, Raw, fmt, number, png_data_uri, table, write_json_and_html

METHOD_COLOURS = {"none": "#777777", "centaur": "#3366cc", "tent": "#cc6633"}


def _collision_plot(document: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = document["suites"]
    methods = document["methods"]
    figure, axis = plt.subplots(figsize=(7.0, 3.6))
    width = 0.8 / len(methods)
    for m, method in enumerate(methods):
        xs, ys, low, high = [], [], [], []
        for s, suite in enumerate(suites):
            row = next(r for r in suite["methods"] if r["method"] == method)
            rate = number(row["collision_rate"])
            xs.append(s + (m - (len(methods) - 1) / 2) * width)
            ys.append(100 * rate)
            low.append(100 * (rate - number(row["collision_ci"][0])))
            high.append(100 * (number(row["collision_ci"][1]) - rate))
        axis.bar(xs, ys, width=width, yerr=[low, high], capsize=3, label=method,
                 color=METHOD_COLOURS.get(method, None))
    axis.set_xticks(range(len(suites)), [suite["label"] for suite in suites])
    axis.set_ylabel(f"collision rate [%] ({document['confidence']:.0%} CI)")
    axis.set_title(f"{document['episodes']} episodes per suite and method")
    axis.legend(fontsize=8)
    uri = png_data_uri(figure)
    plt.close(figure)
    return uri


def _ci(values: list[Any], scale: float = 1.0, digits: int = 3) -> str:
    return f"[{fmt(number(values[0]) * scale, digits)}, {fmt(number(values[1]) * scale, digits)}]"


def render_adaptation_html(document: dict[str, Any]) -> str:
    escape = html.escape
    rows, detection_rows = [], []
    for suite in document["suites"]:
        for row in suite["methods"]:
            verdict = ""
            if row["method"] != "none":
                verdict = ("lower" if row.get("lowers_collisions") else
                           "HIGHER" if row.get("raises_collisions") else "overlapping")
            rows.append([suite["label"], row["method"], fmt(100 * number(row["collision_rate"]), 3),
                         _ci(row["collision_ci"], 100), row["collisions"], row["episodes"],
                         f"{fmt(row['min_ttc_s'], 3)} / {fmt(row.get('min_ttc_p10_s'), 3)}",
                         row["progress_m"], f"{fmt(row['composite'], 3)} {_ci(row['composite_ci'])}",
                         row.get("changed_episodes", "-"), fmt(100 * number(row["updated_decisions"]), 3),
                         row.get("mcnemar_p", "-"), verdict])
            det = row["detection"]
            detection_rows.append([suite["label"], row["method"], det["auroc"], _ci(det["auroc_ci"]),
                                   det["pre_collision_frames"], det["normal_frames"],
                                   det["mean_entropy_pre_collision"], det["mean_entropy_normal"]])
    main = table("adaptation", ["suite", "method", "collision rate [%]", f"{document['confidence']:.0%} CI [%]",
                                "collisions", "episodes", "min TTC median / p10 [s]", "mean progress [m]",
                                "composite [CI]", "episodes changed vs none", "decisions updated [%]",
                                "McNemar p vs none", "CI vs none"], rows,
                 caption="Every method meets the same episode seeds; 'lower' = its CI lies wholly below none's.")
    detection_table = table("detection", ["suite", "method", "AUROC", "CI", "pre-collision frames",
                                          "normal frames", "mean entropy before collisions", "mean entropy otherwise"],
                            detection_rows,
                            caption="Cluster Entropy of the last decisions before a collision vs every decision of "
                                    "episodes without one (bootstrap CI over episodes).")
    pooled = document.get("detection_pooled") or {}
    if pooled:
        detection_table += (f"<p>Pooled over every suite, method none: AUROC {fmt(pooled['auroc'], 3)} "
                            f"{_ci(pooled['auroc_ci'])} ({pooled['pre_collision_frames']} pre-collision frames, "
                            f"{pooled['normal_frames']} normal frames; 0.5 = no better than chance).</p>")
    latency_rows = [[method, entry["decision"]["median_ms"], entry["decision"]["p95_ms"],
                     entry["hook"]["median_ms"], entry["hook"]["p95_ms"], entry["decision"]["n"]]
                    for method, entry in document.get("latency", {}).items()]
    latency_table = table("latency", ["method", "decision median [ms]", "decision p95 [ms]",
                                      "adapt hook median [ms]", "adapt hook p95 [ms]", "decisions"], latency_rows,
                          caption=f"Deployment loop on the highway-env backend ({document.get('latency_scenario')}), "
                                  f"one torch thread, this machine; the hook runs after the action is out.")
    settings = table("settings", ["setting", "value"],
                     [[key, json.dumps(document[key]) if isinstance(document[key], dict | list) else document[key]]
                      for key in ("controller_spec", "methods", "episodes", "seed", "confidence", "package_version")])
    title = "Test-time adaptation on shifted highway suites"
    plot = Raw(f'<img alt="collision rates" src="{_collision_plot(document)}">')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{STYLE}</style>"
            f"</head><body><h1>{escape(title)}</h1>"
            f"<p class='guarantee'>{escape(document['certificate_note'])}</p>"
            f"<h2>Collisions, safety margin and progress</h2>{plot}{main}"
            f"<h2>Cluster Entropy as a failure detector</h2>{detection_table}"
            f"<h2>Latency per decision</h2>{latency_table}<h2>Settings</h2>{settings}</body></html>")


def write_adaptation(document: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write ``adaptation.json`` and ``report.html`` into ``out_dir``; returns their paths."""
    return write_json_and_html(document, out_dir, json_name="adaptation.json", page=render_adaptation_html(document))
