"""``report.html`` of a certificate: one self-contained file, rendered from ``certificate.json`` alone.

Sections: the guarantee in words; the certified value against the budget B (with the attacked values and,
for the CartPole settings of the policy-smoothing paper, the published re-run curve beside ours); the clean
return distribution; the attack checks; every setting, hash and version. Plots are matplotlib (Agg) PNGs
embedded as ``data:`` URIs, so the file has no external assets and opens offline.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from safetybed.report.render import (
    STYLE,
    flatten,
    fmt,
    lower_bound,
    number,
    png_data_uri,
    table,
    upper_bound,
    verdict,
)


# -- plots ----------------------------------------------------------------------------------------------------
def certified_curve_plot(certificate: dict[str, Any]) -> str:
    """The certified value against the budget B, with the worst attacks (+-3 SEM) and any published curve,
    as a PNG ``data:`` URI."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.2, 4.4))
    axes = figure.subplots()
    curve = certificate["curve"]
    axes.plot(curve["budgets"], [lower_bound(v) for v in curve["certified"]], color="C0", lw=2,
              label=f"certified (ours, n = {certificate['samples']['episodes']:,}, {certificate['method']})")
    rows = certificate["certified"]
    axes.plot([r["budget"] for r in rows], [lower_bound(r["certified"]) for r in rows], "o", color="C0")
    clean = number(certificate["clean"]["estimate"])
    axes.axhline(clean, color="C0", ls=":", lw=1, label=f"clean smoothed estimate (ours) {clean:.4g}")
    attacks = certificate["attacks"].get("per_budget") or []
    if attacks:
        sems = [number(r["attacked_sem"]) for r in attacks]
        axes.errorbar([r["budget"] for r in attacks], [number(r["attacked"]) for r in attacks],
                      yerr=[3 * s if math.isfinite(s) else 0 for s in sems], fmt="s", color="C3", capsize=3,
                      label="worst attack (ours), +-3 SEM")
    reference = certificate.get("reference")
    if reference:
        axes.plot(reference["budgets"], reference["certified"], "--^", color="C7", lw=1.5,
                  label=f"published re-run certificate (ReCePS multiframe DQN, sigma = {reference['sigma']:g})")
        axes.axhline(reference["clean"], color="C7", ls=":", lw=1,
                     label=f"published re-run clean {reference['clean']:g}")
    axes.set_xlabel("total l2 budget B (observation units)")
    axes.set_ylabel(quantity_label(certificate))
    axes.set_title(f"{certificate['name']}: sigma = {certificate['sigma']:g}, alpha = {certificate['alpha']:g}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    return png_data_uri(figure)


def _histogram_plot(certificate: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.2, 3.4))
    axes = figure.subplots()
    histogram = certificate["clean"]["histogram"]
    edges, counts = histogram["edges"], histogram["counts"]
    axes.stairs(counts, edges, fill=True, color="C0", alpha=0.7)
    axes.set_yscale("log" if max(counts) > 50 * max(1, sorted(counts)[len(counts) // 2]) else "linear")
    axes.set_xlabel("episode return of the smoothed controller (no attack)")
    axes.set_ylabel("episodes")
    axes.set_title(f"clean return distribution, n = {certificate['samples']['episodes']:,}")
    axes.grid(alpha=0.3)
    return png_data_uri(figure)


# -- HTML -------------------------------------------------------------------------------------------------------
def quantity_label(certificate: dict[str, Any]) -> str:
    """What the certified number is, in words (axis label, table header)."""
    return {"expected_return": "expected episode return", "no_collision": "P(no collision)",
            "success": "P(success)", "percentile": f"{certificate.get('p')}-quantile of the return"}[
        certificate["quantity"]]


def render_certificate_html(certificate: dict[str, Any]) -> str:
    """The report as one HTML string (no external assets)."""
    escape = html.escape
    name = escape(certificate["name"])
    quantity = quantity_label(certificate)
    samples = certificate["samples"]
    clean = certificate["clean"]
    attacks = certificate["attacks"]
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Certificate {name}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>Policy-smoothing certificate: {name}</h1>",
             f"<p class=\"note\">certificate id <code>{escape(certificate['certificate_id'])}</code>, created "
             f"{escape(certificate['created_utc'])}; controller weights sha256 "
             f"<code>{escape(certificate['controller']['weights_sha256'])}</code>; run "
             f"<code>{escape(samples['run_id'])}</code> in <code>{escape(samples['store'])}</code></p>",
             f"<p class=\"guarantee\">{escape(certificate['guarantee'])}</p>"]
    if certificate.get("caveat"):
        parts.append(f"<p class=\"fail\">Caveat: {escape(certificate['caveat'])}</p>")
    if certificate.get("description"):
        parts.append(f"<p>{escape(certificate['description'])}</p>")

    parts.append("<h2>Certified value against the budget</h2>")
    parts.append(f'<img id="curve-plot" alt="certified {escape(quantity)} against the budget B" '
                 f'src="{certified_curve_plot(certificate)}">')
    reference = certificate.get("reference")
    if reference:
        parts.append(f"<p class=\"note\">Grey dashed: {escape(reference['source'])}. Its agent differs from ours "
                     f"(DQN on a 5-frame stack vs our controller), so the curves compare settings, not "
                     f"checkpoints.</p>")
    rows = [[r["budget"], r["budget_over_sigma"], lower_bound(r["certified"]), r["method"]]
            for r in certificate["certified"]]
    if reference:
        published = dict(zip(reference["budgets"], reference["certified"], strict=True))
        rows = [row + [published.get(row[0])] for row in rows]
    parts.append(table("certified-table", ["B", "B / sigma", f"certified {quantity}", "estimator"]
                       + (["published re-run"] if reference else []), rows,
                       caption=f"clean estimate {fmt(clean['estimate'])} (SEM {fmt(clean['sem'], 3)}); "
                               f"certified at B = 0: {fmt(lower_bound(clean['certified_at_zero']))}; alpha = "
                               f"{certificate['alpha']:g}, n = {samples['episodes']:,}"))

    parts.append("<h2>Clean return distribution</h2>")
    parts.append(f'<img id="histogram-plot" alt="histogram of clean smoothed returns" '
                 f'src="{_histogram_plot(certificate)}">')
    parts.append(table("clean-table", ["statistic", "value"], [
        ["mean return", clean["mean_return"]], ["return std", clean["return_std"]],
        ["min return", clean["return_min"]], ["max return", clean["return_max"]],
        ["no-collision rate", clean["no_collision_rate"]], ["success rate", clean["success_rate"]]]))

    parts.append("<h2>Attacks (sanity checks)</h2>")
    if attacks.get("not_run"):
        parts.append(f"<p>{escape(attacks['not_run'])}</p>")
    else:
        parts.append(f"<p>Check: {escape(attacks['check'])}. {attacks['configurations_tried']} attack runs "
                     f"({len(attacks['configurations'])} configurations x {len(attacks['per_budget'])} budgets + "
                     f"1 control), {attacks['attacked_episodes']:,} attacked episodes in all; "
                     f"<b>{len(attacks['violations'])} violation(s)</b>.</p>")
        attack_rows = [[r["budget"], lower_bound(r["certified"]), r["attacked"], r["attacked_sem"],
                        upper_bound(r["attacked_upper"]),
                        json.dumps(r["worst_configuration"]), verdict(r["pass"])] for r in attacks["per_budget"]]
        parts.append(table("attack-table", ["B", "certificate", "worst attacked", "SEM", "upper (+3 SEM)",
                                            "worst configuration", "check"], attack_rows,
                           caption=f"{attacks['episodes']} episodes per configuration and budget"))
        run_rows = [[r["budget"], json.dumps(r["configuration"]), r["estimate"], r["sem"], r["budget_spent_mean"],
                     r["attacked_steps_mean"]] for r in attacks["runs"]]
        parts.append(table("attack-runs-table", ["B", "configuration", "attacked estimate", "SEM",
                                                 "mean budget spent", "mean attacked steps"], run_rows,
                           caption="every configuration"))
        control = attacks.get("control")
        if control:
            parts.append(f"<p class=\"note\">Control: {escape(control['note'])}: attacked estimate "
                         f"{fmt(control['estimate'])} (SEM {fmt(control['sem'], 3)}) at B = "
                         f"{fmt(control['budget'])}.</p>")
        for note in attacks.get("skipped", []):
            parts.append(f"<p class=\"note\">{escape(note)}</p>")

    parts.append("<h2>Settings</h2>")
    settings: list[list[Any]] = []
    for key in ("quantity", "p", "estimator", "method", "alpha", "confidence", "sigma"):
        settings.append([key, certificate.get(key)])
    for section in ("smoothing", "samples", "controller", "scenario", "spec"):
        flatten(section, certificate[section], settings)
    flatten("attack.settings", attacks.get("settings", {}), settings)
    parts.append(table("settings-table", ["setting", "value"], settings))
    parts.append(table("versions-table", ["package", "version"], list(map(list, certificate["versions"].items()))))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(certificate: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`render_certificate_html` of ``certificate`` to ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_certificate_html(certificate), encoding="utf-8")
    return path


def write_certificate(certificate: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write ``certificate.json`` and ``report.html`` into ``out_dir``; sets and returns ``certificate["files"]``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "certificate.json"
    report_path = out / "report.html"
    certificate["files"] = {"certificate": str(json_path), "report": str(report_path)}
    json_path.write_text(json.dumps(certificate, indent=2), encoding="utf-8")
    write_report(certificate, report_path)
    return certificate["files"]


def certify_to_folder(path: str | Path, *, out_dir: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """What ``safetybed certify`` does: :func:`~safetybed.certify.pipeline.certify_from_spec` with ``options``,
    then :func:`write_certificate` into ``out_dir`` (default ``certificates/<spec name>``)."""
    from safetybed.certify.pipeline import DEFAULT_OUT, certify_from_spec

    certificate = certify_from_spec(path, **options)
    write_certificate(certificate, out_dir if out_dir is not None else DEFAULT_OUT / certificate["name"])
    return certificate
