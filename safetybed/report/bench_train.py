"""The HTML report of ``safetybed bench train``: the learning table, the verdicts, curves, tuning grid, ablation."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from safetybed.report.render import STYLE, fmt, png_data_uri, table, write_json_and_html

SIDE_COLOURS = {"dsac_t": "#3366cc", "sb3_sac": "#cc6633", "mdpo_off": "#339966", "mdpo_on": "#9944aa",
                "sb3_ppo": "#777777"}


def _curves_plot(document: dict[str, Any], task: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.0, 3.6))
    for row in document["learning"]["rows"]:
        summary = row["summary"]
        if row["task"] != task or not summary or not summary["curve"]:
            continue
        steps, values = zip(*summary["curve"], strict=True)
        axis.plot(steps, values, color=SIDE_COLOURS.get(row["side"]), linestyle="-" if row["setting"] == "default"
                  else "--", label=f"{row['side']} ({row['setting']})")
    axis.set_xlabel("environment steps")
    axis.set_ylabel("deterministic return (mean over seeds)")
    axis.set_title(task)
    axis.legend(fontsize=7, ncol=2)
    uri = png_data_uri(figure)
    plt.close(figure)
    return uri


def _ci(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "not run"
    return f"{fmt(summary['mean'], 4)} [{fmt(summary['ci'][0], 4)}, {fmt(summary['ci'][1], 4)}]"


def render_bench_train_html(document: dict[str, Any]) -> str:
    escape = html.escape
    learning = document["learning"]
    parts = []
    if learning:
        rows = [[row["task"], row["steps"], row["setting"], row["side"], json.dumps(row["knobs"]) if row["knobs"]
                 else "defaults", _ci(row["summary"]), (row["summary"] or {}).get("n", 0)]
                for row in learning["rows"]]
        parts.append(table("learning", ["task", "steps", "setting", "side", "knobs", "final return, mean [95 % CI]",
                                        "seeds"], rows,
                           caption="Deterministic return on the same seeded evaluation episodes; Student-t "
                                   "interval over training seeds."))
        parts.append(table("verdicts", ["task", "setting", "ours", "theirs", "verdict"],
                           [[v["task"], v["setting"], v["ours"], v["theirs"], v["verdict"]]
                            for v in learning["verdicts"]],
                           caption="matches = overlapping CIs or a higher mean; better = CI wholly above; "
                                   "worse = CI wholly below."))
        for task in learning["tasks"]:
            parts.append(f'<img alt="learning curves {escape(task)}" src="{_curves_plot(document, task)}">')
        if learning["grid"]:
            parts.append(table("grid", ["side", "grid point", "knobs the side has", "final return [95 % CI]",
                                        "seeds"],
                               [[g["side"], json.dumps(g["point"]), json.dumps(g["knobs"]) or "defaults",
                                 _ci(g["summary"]), (g["summary"] or {}).get("n", 0)] for g in learning["grid"]],
                               caption=f"Tuning grid on {learning['tuning_task']}; tuned = the best mean per side: "
                                       f"{json.dumps(learning['tuned'])}."))
        elif learning.get("tuned_fixed"):
            parts.append(f"<p>Tuned points given with <code>--tuned</code> (chosen on an earlier run's grid, not "
                         f"re-tuned here): {escape(json.dumps(learning['tuned']))}.</p>")
        if learning["ablation"]:
            parts.append(table("ablation", ["DSAC-T variant", "knobs", "final return [95 % CI]", "seeds"],
                               [[a["label"], json.dumps(a["knobs"]), _ci(a["summary"]),
                                 (a["summary"] or {}).get("n", 0)] for a in learning["ablation"]],
                               caption=f"One change at a time from the paper's defaults, on "
                                       f"{learning.get('ablation_task', learning['tuning_task'])}."))
    throughput = document.get("throughput") or []
    if throughput:
        rows = []
        for row in throughput:
            medians = row["medians"]
            for name in medians:
                rows.append([row["task"], name, medians[name]["env_steps_per_s"],
                             medians[name]["env_steps_per_s"] / medians["sb3_sac"]["env_steps_per_s"],
                             medians[name]["updates_per_s"],
                             medians[name]["updates_per_s"] / medians["sb3_sac"]["updates_per_s"]])
        parts.append(table("throughput", ["task", "side", "env steps/s", "ratio vs SB3", "updates/s", "ratio vs SB3"],
                           rows, caption=f"Medians on {document.get('device')}; measured in this run."))
    settings = table("settings", ["setting", "value"],
                     [[key, json.dumps(value) if isinstance(value, dict | list) else value]
                      for key, value in document.get("protocol", {}).items()])
    title = "Training benchmark: safetybed trainers against Stable-Baselines3"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{STYLE}</style>"
            f"</head><body><h1>{escape(title)}</h1>{''.join(parts)}<h2>Protocol</h2>{settings}</body></html>")


def write_bench_train(document: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write ``bench_train.json`` and ``report.html`` into ``out_dir``; returns their paths."""
    return write_json_and_html(document, out_dir, json_name="bench_train.json", page=render_bench_train_html(document))
