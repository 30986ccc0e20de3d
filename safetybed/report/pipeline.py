"""``pipeline.html``: one page for one controller, from its training log to its deployment bundle.

safetybed's promise is one pipeline in which the certified controller is the evaluated and the deployed one.
This page puts the documents each step wrote side by side and checks that promise: every section says which
weights sha256 it refers to, and the page says at the top whether they are all the controller's own
(``weights.safetensors`` of its checkpoint). A section that names other weights is a *mismatch* (red banner);
one that names none is *unverified* (amber). Either makes ``consistent`` false in ``pipeline.json``.

Sources (each optional except the controller):

- training: ``training_log.csv`` (``env_steps``, ``eval_return_mean``, optional ``eval_return_std`` and loss
  columns) and ``training.json`` of the checkpoint folder (or ``training_dir``);
- certificate: ``certificate.json`` of ``safetybed certify`` (:func:`safetybed.certify.pipeline.certify_from_spec`);
- evaluations: ``evaluation.json`` of ``safetybed evaluate`` (:func:`safetybed.report.evaluation.write_evaluation`);
- bundle: ``bundle.json`` of ``safetybed deploy``, read generically (``format``, ``controller``,
  ``certificate_id``, ``source_weights_sha256`` where present).

Every source file is copied into ``out_dir/sources/`` and linked from the page (relative links), so the folder
is portable; ``pipeline.json`` indexes them with their sha256.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetybed.control.checkpoint import MANIFEST, WEIGHTS
from safetybed.errors import InputError
from safetybed.report.certificate import certified_curve_plot, quantity_label
from safetybed.report.render import STYLE, Raw, fmt, lower_bound, number, png_data_uri, table, verdict

FORMAT = "safetybed-pipeline-report/1"
SOURCES = "sources"

MATCH, MISMATCH, UNKNOWN = "match", "mismatch", "unknown"


# -- reading the sources ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One input file, read once: what is parsed, hashed and copied are the same bytes."""

    path: Path
    data: bytes
    #: where the copy goes, relative to out_dir
    copy_to: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def index(self) -> dict[str, str]:
        return {"path": self.copy_to, "sha256": self.sha256, "from": str(self.path.resolve())}


def _read(path: Path, copy_to: str) -> Source:
    try:
        return Source(path=path, data=path.read_bytes(), copy_to=copy_to)
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None


def _json_object(source: Source) -> dict[str, Any]:
    try:
        value = json.loads(source.data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{source.path}: invalid JSON ({error})") from None
    if not isinstance(value, dict):
        raise InputError(f"{source.path}: expected a JSON object, got {type(value).__name__}")
    return value


_MISSING = object()


def _field(document: dict[str, Any], dotted: str, path: Path, kind: type, *, nullable: bool = False,
           prefix: str = "") -> Any:
    """``document[a][b]`` for ``dotted = "a.b"``, checked to be a ``kind`` (``float``: any number);
    :class:`InputError` names the file and the field (``prefix + dotted``)."""
    value: Any = document
    for key in dotted.split("."):
        value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            raise InputError(f"{path}: {prefix}{dotted}: missing")
    if value is None and nullable:
        return None
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        wanted = "a number"
    else:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        wanted = {str: "a string", int: "an integer", list: "a list", dict: "an object"}.get(kind, kind.__name__)
    if not ok:
        raise InputError(f"{path}: {prefix}{dotted}: expected {wanted}{' or null' if nullable else ''}, got "
                         f"{json.dumps(value)[:60]}")
    return value


@dataclass(frozen=True)
class Controller:
    name: str
    weights_sha256: str
    checkpoint_dir: Path
    spec: Source | None
    manifest: Source


def _read_controller(controller_spec: Path) -> Controller:
    """The controller spec (``.toml``) or checkpoint folder, its manifest, and the sha256 of its weights file."""
    controller_spec = Path(controller_spec)
    spec_source = None
    if controller_spec.suffix == ".toml":
        from safetybed.spec.controller import load_controller_spec

        loaded = load_controller_spec(controller_spec)
        name, checkpoint_dir = loaded.spec.name, loaded.checkpoint_dir
        spec_source = _read(controller_spec, f"{SOURCES}/controller/{controller_spec.name}")
    elif controller_spec.is_dir():
        name, checkpoint_dir = controller_spec.resolve().name, controller_spec
    else:
        raise InputError(f"{controller_spec}: expected a controller spec (.toml) or a checkpoint folder")
    manifest = _read(checkpoint_dir / MANIFEST, f"{SOURCES}/controller/{MANIFEST}")
    recorded = _field(_json_object(manifest), "weights_sha256", manifest.path, str)
    weights = _read(checkpoint_dir / WEIGHTS, "")
    if weights.sha256 != recorded:
        raise InputError(f"{weights.path}: sha256 {weights.sha256[:12]}... does not match {manifest.path} "
                         f"weights_sha256 {recorded[:12]}...; the weights were modified or corrupted")
    return Controller(name=name, weights_sha256=weights.sha256, checkpoint_dir=checkpoint_dir, spec=spec_source,
                      manifest=manifest)


@dataclass(frozen=True)
class WeightsCheck:
    """Which weights a section refers to, and whether they are the controller's."""

    section: str
    status: str  # MATCH | MISMATCH | UNKNOWN
    weights_sha256: str | None
    reason: str


def _check(section: str, recorded: str | None, expected: str, reason: str) -> WeightsCheck:
    if recorded is None:
        return WeightsCheck(section, UNKNOWN, None, reason)
    return WeightsCheck(section, MATCH if recorded == expected else MISMATCH, recorded, reason)


def _reference_check(section: str, ref: str, *, base: Path, expected: str) -> WeightsCheck:
    """The check of a controller reference as ``safetybed evaluate --controller`` takes it (relative paths from
    the working directory, else from ``base``): a builtin has no weights, a spec or folder names its own."""
    if ref.startswith("builtin:"):
        return WeightsCheck(section, MISMATCH, None, f"evaluated {ref}, a rule-based controller without weights")
    if ref.startswith("sb3:"):
        return WeightsCheck(section, UNKNOWN, None, f"evaluated {ref}, an SB3 import that records no weights hash")
    path = next((c for c in (Path(ref), base / ref) if c.exists()), None)
    if path is None:
        return WeightsCheck(section, UNKNOWN, None, f"evaluated {ref}, not found here nor beside the evaluation")
    try:
        if path.suffix == ".toml":
            from safetybed.spec.controller import load_controller_spec

            path = load_controller_spec(path).checkpoint_dir
        for name, key in (("bundle.json", "source_weights_sha256"), (MANIFEST, "weights_sha256")):
            if (path / name).is_file():
                recorded = json.loads((path / name).read_text(encoding="utf-8")).get(key)
                if isinstance(recorded, str):
                    return _check(section, recorded, expected, f"evaluated {ref} ({key} of {path / name})")
    except (InputError, OSError, ValueError) as error:
        return WeightsCheck(section, UNKNOWN, None, f"evaluated {ref}, which cannot be read ({error})")
    return WeightsCheck(section, UNKNOWN, None, f"evaluated {ref}, which records no weights hash")


def _check_rows(path: Path, name: str, rows: list[Any], fields: dict[str, bool]) -> None:
    """Each of ``rows`` is an object whose ``fields`` are numbers (null allowed where the value is True)."""
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"{path}: {name}[{index}]: expected an object, got {json.dumps(row)[:60]}")
        for key, nullable in fields.items():
            _field(row, key, path, float, nullable=nullable, prefix=f"{name}[{index}].")


# -- sections ---------------------------------------------------------------------------------------------------
@dataclass
class Section:
    """One section of the page: its sources, its weights check (None: not provided) and its parsed document."""

    key: str
    title: str
    sources: list[Source] = field(default_factory=list)
    check: WeightsCheck | None = None
    document: Any = None

    def index(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"title": self.title, "provided": self.document is not None,
                                 "sources": [s.index() for s in self.sources]}
        if self.check is not None:
            entry["weights"] = asdict(self.check)
        return entry


def _training_section(training_dir: Path | None, controller: Controller) -> Section:
    section = Section("training", "Training")
    explicit = training_dir is not None
    folder = Path(training_dir) if explicit else controller.checkpoint_dir
    log_path = folder / "training_log.csv"
    if not log_path.is_file():
        if explicit:
            raise InputError(f"{log_path}: training log is missing")
        return section
    log = _read(log_path, f"{SOURCES}/training/training_log.csv")
    section.sources.append(log)
    try:
        rows = list(csv.DictReader(io.StringIO(log.data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{log_path}: not a CSV file ({error})") from None
    columns = list(rows[0]) if rows else []
    for required in ("env_steps", "eval_return_mean"):
        if required not in columns:
            raise InputError(f"{log_path}: column {required}: missing (columns: {', '.join(columns) or 'none'})")
    curves: dict[str, list[float]] = {}
    for name in columns:
        values = []
        for line, row in enumerate(rows, start=2):
            try:
                values.append(float(row[name]) if row[name] not in ("", None) else math.nan)
            except ValueError:
                raise InputError(f"{log_path}: line {line}, column {name}: expected a number, got "
                                 f"{row[name]!r}") from None
        curves[name] = values
    summary: dict[str, Any] = {}
    if (folder / "training.json").is_file():
        summary_source = _read(folder / "training.json", f"{SOURCES}/training/training.json")
        section.sources.append(summary_source)
        summary = _json_object(summary_source)
    section.document = {"curves": curves, "summary": summary}
    if folder.resolve() == controller.checkpoint_dir.resolve():
        section.check = WeightsCheck("training", MATCH, controller.weights_sha256,
                                     "the log of the checkpoint folder the weights are in")
    elif (folder / MANIFEST).is_file():
        manifest = _read(folder / MANIFEST, "")
        section.check = _check("training", _field(_json_object(manifest), "weights_sha256", manifest.path, str),
                               controller.weights_sha256, f"{folder / MANIFEST} weights_sha256")
    else:
        section.check = WeightsCheck("training", UNKNOWN, None, f"{folder} has no {MANIFEST} naming its weights")
    return section


def _certificate_section(certificate_dir: Path | None, controller: Controller) -> Section:
    section = Section("certificate", "Certificate")
    if certificate_dir is None:
        return section
    source = _read(Path(certificate_dir) / "certificate.json", f"{SOURCES}/certificate/certificate.json")
    section.sources.append(source)
    certificate = _json_object(source)
    for dotted, kind in (("name", str), ("certificate_id", str), ("quantity", str), ("method", str),
                         ("controller.weights_sha256", str), ("sigma", float), ("alpha", float),
                         ("samples.episodes", int), ("certified", list), ("curve.budgets", list),
                         ("curve.certified", list), ("clean", dict), ("attacks", dict)):
        _field(certificate, dotted, source.path, kind)
    _field(certificate, "clean.estimate", source.path, float, nullable=True)
    _field(certificate, "clean.sem", source.path, float, nullable=True)
    _check_rows(source.path, "certified", certificate["certified"], {"budget": False, "certified": True})
    per_budget = certificate["attacks"].get("per_budget") or []
    if not isinstance(per_budget, list):
        raise InputError(f"{source.path}: attacks.per_budget: expected a list, got {json.dumps(per_budget)[:60]}")
    _check_rows(source.path, "attacks.per_budget", per_budget,
                {"budget": False, "attacked": True, "attacked_sem": True})
    if (Path(certificate_dir) / "report.html").is_file():
        section.sources.append(_read(Path(certificate_dir) / "report.html", f"{SOURCES}/certificate/report.html"))
    section.document = certificate
    section.check = _check("certificate", certificate["controller"]["weights_sha256"], controller.weights_sha256,
                           "certificate.json controller.weights_sha256")
    return section


def _evaluation_section(index: int, folder: Path, controller: Controller) -> Section:
    label = f"evaluation-{index + 1}"
    section = Section(label, f"Evaluation {index + 1}")
    source = _read(Path(folder) / "evaluation.json", f"{SOURCES}/{label}/evaluation.json")
    section.sources.append(source)
    document = _json_object(source)
    methods = _field(document, "methods", source.path, list)
    for position, entry in enumerate(methods):
        prefix = f"methods[{position}]."
        if not isinstance(entry, dict):
            raise InputError(f"{source.path}: methods[{position}]: expected an object, got {json.dumps(entry)[:60]}")
        _field(entry, "method", source.path, str, prefix=prefix)
        _field(entry, "estimate", source.path, float, nullable=True, prefix=prefix)
        _field(entry, "n", source.path, int, prefix=prefix)
        ci = entry.get("ci")
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2
                                   and all(v is None or isinstance(v, int | float) for v in ci)):
            raise InputError(f"{source.path}: {prefix}ci: expected [low, high] or null, got {json.dumps(ci)[:60]}")
    if (Path(folder) / "report.html").is_file():
        section.sources.append(_read(Path(folder) / "report.html", f"{SOURCES}/{label}/report.html"))
    section.document = document
    ref = document.get("controller")
    recorded = document.get("controller_weights_sha256")
    if isinstance(recorded, str):
        section.check = _check(label, recorded, controller.weights_sha256, "evaluation.json controller_weights_sha256")
    elif isinstance(ref, dict) and isinstance(ref.get("weights_sha256"), str):
        section.check = _check(label, ref["weights_sha256"], controller.weights_sha256,
                               "evaluation.json controller.weights_sha256")
    elif isinstance(ref, str):
        section.check = _reference_check(label, ref, base=Path(folder), expected=controller.weights_sha256)
    else:
        section.check = WeightsCheck(label, UNKNOWN, None, "evaluation.json records no controller")
    return section


def _bundle_section(bundle_dir: Path | None, controller: Controller,
                    certificate: dict[str, Any] | None) -> tuple[Section, list[WeightsCheck]]:
    """The bundle section, its weights check, and (as a second check) whether it ships this certificate."""
    section = Section("bundle", "Deployment bundle")
    if bundle_dir is None:
        return section, []
    source = _read(Path(bundle_dir) / "bundle.json", f"{SOURCES}/bundle/bundle.json")
    section.sources.append(source)
    bundle = _json_object(source)
    for key in ("format", "controller", "certificate_id", "source_weights_sha256"):
        if key in bundle:
            _field(bundle, key, source.path, str, nullable=True)
    section.document = bundle
    recorded = bundle.get("source_weights_sha256")
    section.check = _check("bundle", recorded, controller.weights_sha256,
                           "bundle.json source_weights_sha256" if recorded else
                           "bundle.json records no source_weights_sha256")
    extra = []
    shipped, certified = bundle.get("certificate_id"), (certificate or {}).get("certificate_id")
    if shipped and certified and shipped != certified:
        extra.append(WeightsCheck("bundle.certificate_id", MISMATCH, None,
                                  f"bundle.json certificate_id {shipped} is not this certificate ({certified})"))
    return section, extra


# -- plots ------------------------------------------------------------------------------------------------------
def _figure(width_in: float, height_in: float, panels: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in))
    return figure, figure.subplots(1, panels, squeeze=False)[0]


def _training_plot(curves: dict[str, list[float]]) -> str:
    losses = [name for name in curves if name.startswith("loss")]
    figure, axes = _figure(9.0 if losses else 6.4, 3.6, 2 if losses else 1)
    steps, mean = curves["env_steps"], curves["eval_return_mean"]
    axes[0].plot(steps, mean, "o-", color="C0", label="evaluation return (mean)")
    if "eval_return_std" in curves:
        std = curves["eval_return_std"]
        axes[0].fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                             [m + s for m, s in zip(mean, std, strict=True)], color="C0", alpha=0.2,
                             label="+-1 std over evaluation episodes")
    axes[0].set_xlabel("environment steps")
    axes[0].set_ylabel("episode return")
    axes[0].set_title("evaluation return during training")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if losses:
        for name in losses:
            axes[1].plot(steps, curves[name], label=name)
        axes[1].set_yscale("symlog", linthresh=1e-2)
        axes[1].set_xlabel("environment steps")
        axes[1].set_title("loss terms (symlog)")
        axes[1].grid(alpha=0.3)
        axes[1].legend(fontsize=7)
    return png_data_uri(figure)


def _crash_rate_plot(sections: list[Section]) -> str:
    """Every method's estimate with its confidence interval, one row per (evaluation, method)."""
    rows = [(f"{s.title}: {entry['method']}", entry, s.document.get("exact_crash_probability"))
            for s in sections for entry in s.document["methods"]]
    figure, (axes,) = _figure(7.2, 0.9 + 0.42 * len(rows))
    for y, (_, entry, _) in enumerate(rows):
        estimate = number(entry.get("estimate"))
        low, high = (number(v) for v in (entry.get("ci") or [None, None]))
        if math.isfinite(estimate) and estimate > 0:
            errors = [[estimate - low if math.isfinite(low) else 0], [high - estimate if math.isfinite(high) else 0]]
            axes.errorbar([estimate], [y], xerr=errors, fmt="o", color=f"C{y % 10}", capsize=3)
    exact = {e for _, _, e in rows if isinstance(e, int | float) and e > 0}
    for value in exact:
        axes.axvline(value, color="black", ls="--", lw=1, label=f"exact {value:.3g}")
    axes.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("crash probability per test (estimate and CI)")
    axes.grid(alpha=0.3, axis="x")
    if exact:
        axes.legend(fontsize=7)
    return png_data_uri(figure)


# -- HTML -------------------------------------------------------------------------------------------------------
_PAGE_STYLE = STYLE + """
.banner{padding:.8em 1em;margin:1em 0;font-weight:600}.banner-bad{background:#b00020;color:#fff;font-size:1.1em}
.banner-warn{background:#fff3cd;border-left:6px solid #e0a800}.banner-ok{background:#e8f5e9;
border-left:6px solid #116611}.missing{color:#777;font-style:italic}.match{color:#116611;font-weight:600}
.mismatch{color:#b00020;font-weight:700}.unknown{color:#a06800;font-weight:600}h3{font-size:1em}
"""


def _links(section: Section) -> str:
    if not section.sources:
        return ""
    items = ", ".join(f'<a href="{html.escape(s.copy_to)}">{html.escape(Path(s.copy_to).name)}</a> '
                      f'<span class="note">(sha256 <code>{s.sha256[:16]}</code>)</span>' for s in section.sources)
    return f'<p class="note">Sources: {items}</p>'


def _status(check: WeightsCheck | None) -> Raw:
    if check is None:
        return Raw('<span class="missing">not provided</span>')
    return Raw(f'<span class="{check.status}">{check.status}</span>')


def _banner(controller: Controller, checks: list[WeightsCheck]) -> str:
    escape = html.escape
    bad = [c for c in checks if c.status == MISMATCH]
    unverified = [c for c in checks if c.status == UNKNOWN]
    if bad:
        items = "; ".join(f"{escape(c.section)}: {escape(c.reason)}"
                          + (f" (<code>{escape(c.weights_sha256)}</code>)" if c.weights_sha256 else "") for c in bad)
        return (f'<div id="consistency-banner" class="banner banner-bad">MISMATCH: not one controller. '
                f'{len(bad)} section(s) refer to other weights than {escape(controller.name)}\'s: {items}</div>')
    if unverified:
        items = "; ".join(f"{escape(c.section)}: {escape(c.reason)}" for c in unverified)
        return (f'<div id="consistency-banner" class="banner banner-warn">NOT VERIFIED: {len(unverified)} '
                f"section(s) record no weights hash, so the page cannot show they are this controller: "
                f"{items}</div>")
    return (f'<div id="consistency-banner" class="banner banner-ok">Consistent: every section provided refers to '
            f'weights sha256 <code>{controller.weights_sha256[:16]}...</code>.</div>')


def _training_html(section: Section) -> list[str]:
    curves, summary = section.document["curves"], section.document["summary"]
    parts = [f'<img id="training-plot" alt="evaluation return against environment steps" '
             f'src="{_training_plot(curves)}">']
    last = len(curves["env_steps"]) - 1
    rows = [["evaluations in the log", last + 1], ["last env_steps", curves["env_steps"][last]],
            ["last eval_return_mean", curves["eval_return_mean"][last]]]
    rows += [[key, value if not isinstance(value, dict | list) else json.dumps(value)]
             for key, value in summary.items()]
    parts.append(table("training-table", ["field", "value"], rows, caption="training.json and the log's last row"))
    return parts


def _certificate_html(section: Section) -> list[str]:
    escape = html.escape
    certificate = section.document
    clean, samples = certificate["clean"], certificate["samples"]
    attacks = {row["budget"]: row for row in certificate["attacks"].get("per_budget") or []}
    parts = [f'<p class="note">certificate id <code>{escape(certificate["certificate_id"])}</code>, '
             f'{escape(certificate["name"])}: {escape(quantity_label(certificate))}, sigma = '
             f'{certificate["sigma"]:g}, alpha = {certificate["alpha"]:g}, n = {samples["episodes"]:,} clean '
             f'smoothed episodes, {escape(certificate["method"])}</p>']
    if certificate.get("guarantee"):
        parts.append(f'<p class="guarantee">{escape(certificate["guarantee"])}</p>')
    if certificate.get("caveat"):
        parts.append(f'<p class="fail">Caveat: {escape(certificate["caveat"])}</p>')
    parts.append(f'<img id="certificate-plot" alt="certified value against the budget, with attacks" '
                 f'src="{certified_curve_plot(certificate)}">')
    rows = []
    for row in certificate["certified"]:
        attack = attacks.get(row["budget"])
        worst = (Raw(f"{escape(fmt(attack['attacked']))} &plusmn; {escape(fmt(attack['attacked_sem'], 3))}")
                 if attack else Raw('<span class="missing">not run</span>'))
        check = verdict(bool(attack["pass"])) if attack and "pass" in attack else "-"
        rows.append([row["budget"], lower_bound(row["certified"]), worst, check])
    parts.append(table("certificate-table", ["B", f"certified {quantity_label(certificate)}",
                                             "worst attack ± SEM", "check (attack + 3 SEM >= certified)"], rows,
                       caption=f"clean estimate {fmt(clean['estimate'])} (SEM {fmt(clean['sem'], 3)}); "
                               f"certified at B = 0: {fmt(lower_bound(clean.get('certified_at_zero')))}; "
                               f"violations: {fmt(certificate.get('violations'))}"))
    if certificate["attacks"].get("not_run"):
        parts.append(f'<p class="note">Attacks: {escape(str(certificate["attacks"]["not_run"]))}</p>')
    return parts


def _evaluations_html(sections: list[Section]) -> list[str]:
    escape = html.escape
    parts = [f'<img id="evaluation-plot" alt="crash-rate estimates with confidence intervals" '
             f'src="{_crash_rate_plot(sections)}">']
    for section in sections:
        document = section.document
        confidence = document.get("confidence", 0.9)
        parts.append(f"<h3>{escape(section.title)}: {escape(str(document.get('scenario', '')))}, controller "
                     f"<code>{escape(str(document.get('controller', '')))}</code></h3>")
        rows = []
        for entry in document["methods"]:
            low, high = entry.get("ci") or [None, None]
            ratios = entry.get("fewer_tests_than") or {}
            rows.append([entry["method"], entry.get("estimate"), f"[{fmt(low)}, {fmt(high)}]", entry.get("rhw"),
                         entry["n"], entry.get("n_crashes"), entry.get("tests_needed"),
                         ", ".join(f"{fmt(v, 3)}x vs {k}" for k, v in ratios.items()) or "-"])
        exact = document.get("exact_crash_probability")
        parts.append(table(f"{section.key}-table", ["method", "estimate", f"{confidence:.0%} CI", "RHW", "tests",
                                                    "crashes", f"tests to RHW {document.get('target_rhw', 0.3):g}",
                                                    "fewer tests than"], rows,
                           caption=f"crash probability per test; exact value {fmt(exact)}" if exact is not None
                           else "crash probability per test"))
        parts.append(_links(section))
    return parts


def _bundle_html(section: Section) -> list[str]:
    bundle = section.document
    rows = [[key, bundle.get(key)] for key in ("format", "controller", "certificate_id", "source_weights_sha256",
                                               "scenario", "smoothing_sigma", "created_utc") if key in bundle]
    rows.append(["sha256 of bundle.json", section.sources[0].sha256])
    parts = [table("bundle-table", ["field", "value"], rows)]
    if not bundle.get("certificate_id"):
        parts.append('<p class="unknown">This bundle names no certificate (certificate_id is empty).</p>')
    return parts


def _render_page(controller: Controller, sections: list[Section], checks: list[WeightsCheck]) -> str:
    """The page as one HTML string (plots embedded; links only to the copies under ``sources/``)."""
    escape = html.escape
    name = escape(controller.name)
    parts = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Pipeline {name}</title>'
             f"<style>{_PAGE_STYLE}</style></head><body>",
             f"<h1>Pipeline report: {name}</h1>",
             f'<p>Controller <b>{name}</b>, weights sha256 <code id="weights-sha256">'
             f"{escape(controller.weights_sha256)}</code> (<code>{escape(str(controller.checkpoint_dir))}/"
             f"{WEIGHTS}</code>).</p>", _banner(controller, checks)]
    rows = [["Controller", controller.weights_sha256, Raw('<span class="match">reference</span>'),
             f"sha256 of {WEIGHTS} (equal to {MANIFEST} weights_sha256)"]]
    rows += [[s.title, s.check.weights_sha256 if s.check else None, _status(s.check),
              s.check.reason if s.check else "-"] for s in sections[1:]]
    rows += [[c.section, None, _status(c), c.reason] for c in checks if c.section == "bundle.certificate_id"]
    parts.append(table("consistency-table", ["section", "weights sha256 it refers to", "same weights?", "from"],
                       rows))
    parts.append(_links(sections[0]))
    renderers = {"training": _training_html, "certificate": _certificate_html, "bundle": _bundle_html}
    evaluations = [s for s in sections if s.key.startswith("evaluation-")]
    for section in sections[1:]:
        if section.key.startswith("evaluation-"):
            continue
        if section.key == "bundle":  # evaluations come before the bundle, as in the pipeline
            parts.append('<h2 id="evaluations">Crash-rate evaluation</h2>')
            parts += (_evaluations_html(evaluations) if evaluations
                      else ['<p class="missing">not provided</p>'])
        parts.append(f'<h2 id="{section.key}">{escape(section.title)}</h2>')
        if section.document is None:
            parts.append('<p class="missing">not provided</p>')
            continue
        parts += renderers[section.key](section)
        parts.append(_links(section))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_pipeline_report(out_dir: str | Path, *, controller_spec: str | Path, certificate_dir: str | Path | None,
                          evaluation_dirs: list[str | Path], bundle_dir: str | Path | None,
                          training_dir: str | Path | None = None) -> dict[str, Any]:
    """Write ``out_dir/pipeline.html``, ``out_dir/pipeline.json`` and copies of every source under
    ``out_dir/sources/``; returns the content of ``pipeline.json``.

    Args:
        out_dir: folder to write (created).
        controller_spec: the controller spec (``controllers/X.toml``) or its checkpoint folder; the weights sha256
            every section is checked against is that of its ``weights.safetensors``.
        certificate_dir: folder of ``certificate.json`` (``safetybed certify --out``), or None.
        evaluation_dirs: folders of ``evaluation.json`` (``safetybed evaluate --out``); may be empty.
        bundle_dir: folder of ``bundle.json`` (``safetybed deploy --out``), or None.
        training_dir: folder of ``training_log.csv`` / ``training.json``; default the checkpoint folder (not
            provided when it has no log).

    ``pipeline.json`` has ``consistent`` (every provided section refers to the controller's weights),
    ``disagreeing`` (the sections that refer to other weights) and ``unverified`` (those that name none), and per
    section its sources (path relative to ``out_dir``, sha256) and its weights check.

    Raises:
        InputError: a source is missing, unreadable, or lacks a field the page needs (the message names the file
            and the field).
    """
    out = Path(out_dir)
    controller = _read_controller(Path(controller_spec))
    controller_section = Section("controller", "Controller", sources=[s for s in (controller.spec,
                                                                                  controller.manifest) if s])
    controller_section.document = controller.name
    certificate = _certificate_section(None if certificate_dir is None else Path(certificate_dir), controller)
    evaluations = [_evaluation_section(i, Path(folder), controller) for i, folder in enumerate(evaluation_dirs)]
    bundle, bundle_checks = _bundle_section(None if bundle_dir is None else Path(bundle_dir), controller,
                                            certificate.document)
    training = _training_section(None if training_dir is None else Path(training_dir), controller)
    sections = [controller_section, training, certificate, *evaluations, bundle]
    checks = [s.check for s in sections if s.check is not None] + bundle_checks

    # Everything is read (and checked) before anything is written: a source inside out_dir/sources survives.
    shutil.rmtree(out / SOURCES, ignore_errors=True)
    for section in sections:
        for source in section.sources:
            target = out / source.copy_to
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.data)
    index: dict[str, Any] = {
        "format": FORMAT,
        "controller": {"name": controller.name, "weights_sha256": controller.weights_sha256,
                       "checkpoint": str(controller.checkpoint_dir)},
        "consistent": all(c.status == MATCH for c in checks),
        "disagreeing": [asdict(c) for c in checks if c.status == MISMATCH],
        "unverified": [asdict(c) for c in checks if c.status == UNKNOWN],
        "sections": {s.key: s.index() for s in sections},
        "html": "pipeline.html",
    }
    if not evaluations:
        index["sections"]["evaluations"] = {"title": "Crash-rate evaluation", "provided": False, "sources": []}
    (out / "pipeline.html").write_text(_render_page(controller, sections, checks), encoding="utf-8")
    (out / "pipeline.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return index
