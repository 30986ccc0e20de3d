"""The ``safetybed`` command (also ``python -m safetybed``).

Exit codes: 0 success, 2 bad input (spec, flag, file: one message, no traceback), 1 internal failure.
Every command that produces results accepts ``--json`` and then prints exactly one JSON document
on stdout, with progress bars and tables suppressed.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from safetybed.errors import IncompleteRunError, InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="safetybed: safety and robustness testbed for learned controllers.")
scenarios_app = typer.Typer(no_args_is_help=True, help="List and validate scenario specs.")
runs_app = typer.Typer(no_args_is_help=True, help="Inspect and export stored runs.")
bench_app = typer.Typer(no_args_is_help=True, help="Throughput benchmarks (ratios against a baseline measured "
                                                     "in the same run).")
app.add_typer(scenarios_app, name="scenarios")
app.add_typer(runs_app, name="runs")
suite_app = typer.Typer(no_args_is_help=True, help="The algorithm suite: the seed papers' methods, each with a "
                                                     "demo measuring its paper's claim (docs/suite.md).")
app.add_typer(bench_app, name="bench")
app.add_typer(suite_app, name="suite")

# Piped output (logs, CI) gets a wide fixed width so tables are not folded into 80 columns.
out = Console() if sys.stdout.isatty() else Console(width=160)
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")]
AllowPartialFlag = Annotated[bool, typer.Option(
    "--allow-partial", help="Compute from a run that lacks planned episodes (failed or lost) instead of refusing; "
                            "the result names the missing ones and is valid only if they are missing for reasons "
                            "unrelated to their outcome.")]
StoreOption = Annotated[Path | None, typer.Option("--store", help="SQLite run store (default: runs/safetybed.sqlite).")]
BackendOption = Annotated[str | None, typer.Option(
    "--backend", help="Simulator backend: highway-env or batched (the torch-batched highway simulator; default: the "
                      "scenario's backend field).")]


# While a --json command runs, file descriptor 1 points at stderr so that nothing else reaches stdout (Ray's
# driver prints its raylet messages there, native libraries print from C); the document goes to the real stdout.
_json_stream = None


def emit_json(document, *, indent: int | None = 2, default=None) -> None:
    """Print the command's one JSON document on the real stdout."""
    stream = _json_stream if _json_stream is not None else sys.stdout
    stream.write(json.dumps(document, indent=indent, default=default) + "\n")
    stream.flush()


@contextmanager
def _stdout_reserved_for_json(enabled: bool, *, restore_fd: bool):
    """``restore_fd=False`` (the console script) keeps fd 1 on stderr until the process exits: Ray's atexit
    shutdown prints the raylet's log tail to stdout after the command has returned."""
    global _json_stream
    if not enabled:
        yield
        return
    saved_stdout = sys.stdout
    try:
        real = saved_stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # captured (pytest capsys): keep writing to the capture
        real = False
    saved_fd = None
    saved_stdout.flush()
    if real:
        saved_fd = os.dup(1)
        _json_stream = os.fdopen(os.dup(saved_fd), "w", encoding="utf-8")
        os.dup2(2, 1)
    else:
        _json_stream = saved_stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved_stdout if restore_fd or saved_fd is None else sys.stderr
        if saved_fd is not None:
            _json_stream.close()
            if restore_fd:
                sys.stderr.flush()
                os.dup2(saved_fd, 1)
            os.close(saved_fd)
        _json_stream = None


def _store_path(store: Path | None) -> Path:
    from safetybed.runner import DEFAULT_STORE

    return store if store is not None else DEFAULT_STORE


@contextmanager
def progress_bar(description: str, *, enabled: bool):
    """Yield a ``(done, total)`` callback drawing a rich progress bar on a terminal; a no-op otherwise."""
    if not enabled or not err.is_terminal:
        yield None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, transient=False) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:  # what a JSON-safe document holds for NaN and infinities (safetybed.jsonsafe)
        return "-"
    if value != value:  # NaN
        return "-"
    if value in (float("inf"), float("-inf")):
        return "inf"
    return f"{value:.{digits}g}"


def print_summary(summary, *, store: Path) -> None:
    table = Table(title=f"run {summary.run_id}", show_header=False)
    table.add_row("scenario", summary.scenario)
    table.add_row("controller", summary.controller)
    table.add_row("episodes", f"{summary.episodes} / {summary.planned_episodes} ({summary.status})")
    level = f"{summary.confidence:.0%} CI"
    table.add_row("mean return", f"{_fmt(summary.mean_return, 4)}  [{_fmt(summary.return_ci.low, 4)}, "
                                 f"{_fmt(summary.return_ci.high, 4)}] {level}")
    table.add_row("collision rate", f"{_fmt(summary.collision_rate)}  [{_fmt(summary.collision_ci.low)}, "
                                    f"{_fmt(summary.collision_ci.high)}] {level} (Clopper-Pearson)")
    table.add_row("success rate", f"{_fmt(summary.success_rate)}  [{_fmt(summary.success_ci.low)}, "
                                  f"{_fmt(summary.success_ci.high)}] {level} (Clopper-Pearson)")
    table.add_row("min time-to-collision", f"{_fmt(summary.min_ttc_s)} s")
    table.add_row("min gap", f"{_fmt(summary.min_gap_m)} m")
    table.add_row("mean progress", f"{_fmt(summary.mean_progress_m)} m")
    table.add_row("constraint violations", str(summary.total_violations))
    completeness = summary.completeness or {}
    if completeness and not completeness["complete"]:
        from safetybed.runner.store import format_indices

        for key, label in (("missing_indices", "missing episodes"), ("duplicated_indices", "stored twice"),
                           ("unexpected_indices", "outside the plan")):
            if completeness[key]:
                table.add_row(f"[red]{label}[/red]", f"{len(completeness[key])}: index "
                                                     f"{format_indices(completeness[key])}")
        for failure in completeness["failures"]:
            table.add_row(f"[red]episode {failure['index']} {failure['kind']}[/red]", failure["error"])
        table.add_row("resume with", f"safetybed run ... --resume {summary.run_id}")
    table.add_row("store", str(store))
    out.print(table)


# -- scenarios ----------------------------------------------------------------------------------------------
@scenarios_app.command("list")
def scenarios_list(as_json: JsonFlag = False) -> None:
    """List the scenario catalogue (scenarios/**.toml)."""
    from safetybed.spec import load_scenario
    from safetybed.spec.catalogue import list_scenarios

    rows = []
    for name, path in list_scenarios().items():
        try:
            spec = load_scenario(path)
            rows.append({"name": name, "path": str(path), "simulator": spec.simulator, "task": spec.task,
                         "episode_steps": spec.episode_steps, "description": spec.description, "valid": True})
        except InputError as error:
            rows.append({"name": name, "path": str(path), "valid": False, "error": str(error)})
    if as_json:
        emit_json(rows)
        return
    table = Table(title="scenarios")
    for column in ("name", "simulator", "task", "steps", "description"):
        table.add_column(column)
    for row in rows:
        if row["valid"]:
            table.add_row(row["name"], row["simulator"], row["task"], str(row["episode_steps"]), row["description"])
        else:
            table.add_row(row["name"], "[red]invalid[/red]", "", "", row["error"])
    out.print(table)


@scenarios_app.command("validate")
def scenarios_validate(paths: Annotated[list[Path], typer.Argument(help="Scenario TOML files.")],
                       as_json: JsonFlag = False) -> None:
    """Validate scenario specs; exit 2 on the first invalid one, naming file, field and reason."""
    from safetybed.spec import load_scenario

    checked = []
    for path in paths:
        spec = load_scenario(path)
        checked.append({"path": str(path), "name": spec.name, "simulator": spec.simulator, "task": spec.task})
    if as_json:
        emit_json({"valid": checked})
    else:
        for item in checked:
            out.print(f"[green]ok[/green] {item['path']} ({item['simulator']}/{item['task']})")


# -- run ------------------------------------------------------------------------------------------------------
@app.command("run")
def run(
    scenario: Annotated[str, typer.Argument(help="Scenario TOML path or catalogue name (e.g. highway/cut_in).")],
    controller: Annotated[str, typer.Option("--controller", help="builtin:NAME, controller spec, bundle or sb3:ZIP.")],
    episodes: Annotated[int, typer.Option("--episodes", min=1, help="Number of episodes.")] = 100,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Parallel workers.")] = 1,
    executor: Annotated[str, typer.Option("--executor", help="local (process pool) or ray.")] = "local",
    store: StoreOption = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Run seed; episode i uses SeedSequence(seed).spawn()[i].")] = 0,
    resume: Annotated[str | None, typer.Option("--resume", help="Finish the missing episodes of this run id.")] = None,
    backend: BackendOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Run seeded episodes of SCENARIO against a controller and store every result."""
    from safetybed.runner import RunStore, resume_run, run_summary, start_run
    from safetybed.spec.catalogue import load_scenario_arg
    from safetybed.spec.scenario import with_backend

    spec, path = load_scenario_arg(scenario)
    spec = with_backend(spec, backend)
    store_path = _store_path(store)
    incomplete: IncompleteRunError | None = None
    with RunStore(store_path) as run_store, progress_bar(spec.name, enabled=not as_json) as progress:
        try:
            if resume:
                run_id = resume_run(resume, store=run_store, workers=workers, executor=executor, scenario=spec,
                                    controller=controller, episodes=episodes, seed=seed, progress=progress)
            else:
                run_id = start_run(spec, scenario_path=path, controller=controller, episodes=episodes, seed=seed,
                                   workers=workers, executor=executor, store=run_store, progress=progress,
                                   on_created=None if as_json else
                                   (lambda rid: err.print(f"run id {rid} (resume with --resume {rid})")))
        except IncompleteRunError as error:  # show what was stored, then fail with the error's one message
            incomplete, run_id = error, error.run_id
        summary = run_summary(run_store, run_id)
    if as_json:
        emit_json({"store": str(store_path), **summary.to_json_dict()})
    else:
        print_summary(summary, store=store_path)
    if incomplete is not None:
        raise incomplete


# -- runs -----------------------------------------------------------------------------------------------------
@runs_app.command("list")
def runs_list(store: StoreOption = None, as_json: JsonFlag = False) -> None:
    """List the runs in the store."""
    from safetybed.runner import RunStore

    with RunStore(_store_path(store), create=False) as run_store:
        rows = [{"run_id": info.run_id, "created_utc": info.created_utc, "scenario": info.scenario_name,
                 "controller": info.controller, "seed": info.seed, "episodes_done": done,
                 "episodes": info.episodes, "status": info.status} for info, done in run_store.list_runs()]
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"runs in {_store_path(store)}")
    table.add_column("run id", no_wrap=True)
    for column in ("created (UTC)", "scenario", "controller", "seed", "episodes", "status"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["run_id"], row["created_utc"], row["scenario"], row["controller"], str(row["seed"]),
                      f"{row['episodes_done']}/{row['episodes']}", row["status"])
    out.print(table)


@runs_app.command("show")
def runs_show(run_id: str, store: StoreOption = None, as_json: JsonFlag = False) -> None:
    """Summary statistics of one run."""
    from safetybed.runner import RunStore, run_summary

    with RunStore(_store_path(store), create=False) as run_store:
        summary = run_summary(run_store, run_id)
    if as_json:
        emit_json(summary.to_json_dict())
    else:
        print_summary(summary, store=_store_path(store))


@runs_app.command("export")
def runs_export(run_id: str,
                fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")],
                out_file: Annotated[Path, typer.Option("--out", help="Output file.")],
                store: StoreOption = None, as_json: JsonFlag = False) -> None:
    """Export one row per episode to Parquet or CSV."""
    from safetybed.runner import RunStore
    from safetybed.runner.export import export_records

    with RunStore(_store_path(store), create=False) as run_store:
        run_store.get_run(run_id)
        records = run_store.episodes(run_id)
    written = export_records(records, run_id=run_id, fmt=fmt, out=out_file)
    if as_json:
        emit_json({"run_id": run_id, "format": fmt, "rows": len(records), "out": str(written)}, indent=None)
    else:
        out.print(f"wrote {len(records)} episodes of {run_id} to {written}")


# -- train ------------------------------------------------------------------------------------------------------
@app.command("train")
def train(
    controller_spec: Annotated[Path, typer.Argument(help="Controller spec (controllers/*.toml).")],
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda (default: the spec's).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Environment steps (default: the spec's).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Checkpoint folder (default: the spec's).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Training seed (default: the spec's).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="Torch intra-op threads while training "
                                                "(default: torch's, one per core). Small networks train fastest "
                                                "on 1: on a busy 2-core machine more threads wait on each other "
                                                "(10-70x slower measured).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train the controller a spec describes; writes safetensors weights + manifest + training log."""
    import contextlib

    import torch

    from safetybed.control.train import train_from_spec
    from safetybed.threads import torch_threads

    with (torch_threads(threads) if threads is not None else contextlib.nullcontext(),
          progress_bar(f"train {controller_spec.name}", enabled=not as_json) as progress):
        used_threads = torch.get_num_threads()
        summary = train_from_spec(controller_spec, steps=steps, device=device, out=out_dir, seed=seed,
                                  progress=progress)
    summary["torch_threads"] = used_threads
    if as_json:
        emit_json(summary)
        return
    table = Table(title=f"trained {summary['controller']} ({summary['algorithm']})", show_header=False)
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    out.print(table)


# -- deploy ---------------------------------------------------------------------------------------------------
@app.command("deploy")
def deploy_command(
    controller: Annotated[str, typer.Argument(help="Controller spec (controllers/*.toml), checkpoint folder, or the "
                                                   "certificate folder safetybed certify wrote (certificate.json).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Bundle folder to write (absent or empty).")],
    certificate: Annotated[Path | None, typer.Option("--certificate", help="certificate.json (or its folder) of the "
                                                                           "certified smoothed controller.")] = None,
    scenario: Annotated[str | None, typer.Option("--scenario", help="Scenario the bundle runs in (default: the "
                                                                    "certificate's, else the controller spec's).")] = None,
    control_rate_hz: Annotated[float | None, typer.Option("--control-rate-hz", help="Control rate [Hz] when there "
                                                                                    "is no scenario.")] = None,
    sign_key: Annotated[Path | None, typer.Option("--sign-key", help="ed25519 private key (PEM, safetybed keygen) "
                                                                     "to sign the bundle with.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the bundle files in a non-empty --out.")
                         ] = False,
    adapt: Annotated[str, typer.Option("--adapt", help="Planner specs only: test-time adaptation of the deployed "
                                                       "planner, none|centaur|tent.")] = "none",
    as_json: JsonFlag = False,
) -> None:
    """Write a self-contained deployment bundle of data (safetensors weights + bundle.json network description,
    every file's sha256); from a certificate it runs the certified smoothed policy and carries the certificate."""
    from safetybed.control.bundle import deploy, deploy_certified
    from safetybed.control.certified import CERTIFICATE_FILE
    from safetybed.control.runtime import read_bundle_manifest

    source = Path(controller)
    if certificate is None and (source.suffix == ".json" or (source / CERTIFICATE_FILE).is_file()):
        if scenario is not None or control_rate_hz is not None:
            raise InputError(f"deploy {controller}: --scenario / --control-rate-hz: a certified bundle takes both "
                             f"from its certificate")
        bundle_dir = deploy_certified(source, out_dir, sign_key=sign_key, overwrite=overwrite)
    else:
        bundle_dir = deploy(controller, out_dir, scenario=scenario, control_rate_hz=control_rate_hz,
                            certificate=certificate, sign_key=sign_key, overwrite=overwrite, adapt=adapt)
    from safetybed.control.planner.bundle import BUNDLE_MANIFEST, is_planner_bundle

    if is_planner_bundle(bundle_dir):
        planner = json.loads((bundle_dir / BUNDLE_MANIFEST).read_text(encoding="utf-8"))
        if as_json:
            emit_json({"bundle": str(bundle_dir), **planner})
        else:
            out.print(f"planner bundle {bundle_dir} ({planner['controller']}, adaptation "
                      f"{planner['adapt']['method']}); run it with safetybed run SCENARIO --controller {bundle_dir}")
        return
    manifest = read_bundle_manifest(bundle_dir)
    if as_json:
        emit_json({"bundle": str(bundle_dir), **manifest})
        return
    table = Table(title=f"bundle {bundle_dir}", show_header=False)
    for key in ("controller", "scenario", "control_rate_hz", "source_weights_sha256", "frame_stack",
                "smoothing_sigma", "certificate_id"):
        table.add_row(key, str(manifest[key]))
    for name, digest in manifest["files"].items():
        table.add_row(name, f"sha256 {digest}")
    if sign_key is not None:
        table.add_row("bundle.sig", f"ed25519, key {sign_key}")
    out.print(table)
    out.print(f"load it with safetybed.control.runtime.load_bundle({str(bundle_dir)!r}) or "
              f"safetybed run SCENARIO --controller {bundle_dir}")
    if manifest["frame_stack"] > 1:
        out.print(f"the bundle stacks {manifest['frame_stack']} raw frames itself: run it on a scenario without "
                  f"frame_stack (the raw frames)")


@app.command("keygen")
def keygen_command(
    out_file: Annotated[Path, typer.Option("--out", help="Private key file to write (PEM); the public key goes "
                                                         "beside it as NAME.pub.pem.")],
    as_json: JsonFlag = False,
) -> None:
    """Create an ed25519 key pair for signing bundles (safetybed deploy ... --sign-key KEY.pem)."""
    from safetybed.control.bundle import generate_signing_key

    private_path, public_path = generate_signing_key(out_file)
    if as_json:
        emit_json({"private_key": str(private_path), "public_key": str(public_path)}, indent=None)
        return
    out.print(f"wrote {private_path} (private, keep it secret) and {public_path} (give it to load_bundle(..., "
              f"trusted_keys=[{str(public_path)!r}]))")


# -- certify / attack -------------------------------------------------------------------------------------------
@app.command("certify")
def certify_command(
    cert_spec: Annotated[Path, typer.Argument(help="Certification spec (certify/*.toml).")],
    episodes: Annotated[int | None, typer.Option("--episodes", min=1, help="Clean smoothed episodes.")] = None,
    attack_episodes: Annotated[int | None, typer.Option("--attack-episodes", min=0,
                                                        help="Episodes per attack setting (0: no attacks).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for certificate.json and report.html.")] = None,
    store: StoreOption = None,
    workers: Annotated[int, typer.Option("--workers", min=1)] = 1,
    allow_partial: AllowPartialFlag = False,
    backend: BackendOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Certify a smoothed controller (policy smoothing): certificate.json + report.html."""
    from safetybed.report.certificate import certify_to_folder

    certificate = certify_to_folder(cert_spec, episodes=episodes, attack_episodes=attack_episodes, out_dir=out_dir,
                                    store_path=store, workers=workers, allow_partial=allow_partial, backend=backend,
                                    progress=(lambda name: progress_bar(name, enabled=not as_json)))
    if as_json:
        emit_json(certificate, default=str)
        return
    out.print(json.dumps({key: certificate[key] for key in certificate if key in
                          ("name", "quantity", "sigma", "certified", "clean", "attacks", "files")},
                         indent=2, default=str), markup=False, highlight=False)


@app.command("pipeline")
def pipeline_command(
    cert_spec: Annotated[Path, typer.Argument(help="Certification spec (certify/*.toml): its controller, scenario, "
                                                   "sigma and budgets.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for certificate/, bundle/, evaluation-*/ and "
                                                        "pipeline.html.")],
    episodes: Annotated[int | None, typer.Option("--episodes", min=1, help="Clean smoothed episodes (default: "
                                                                           "the spec's).")] = None,
    attack_episodes: Annotated[int | None, typer.Option("--attack-episodes", min=0,
                                                        help="Episodes per attack setting (0: no attacks).")] = None,
    evaluate: Annotated[list[str] | None, typer.Option("--evaluate", help="Highway scenario for the crash-rate "
                                                                          "evaluation of the bundle (repeatable; "
                                                                          "default highway/cruise_nade).")] = None,
    no_evaluation: Annotated[bool, typer.Option("--no-evaluation", help="Skip the crash-rate evaluation.")] = False,
    method: Annotated[str, typer.Option("--method", help="Evaluation methods, comma-separated.")] = "nade,scv",
    tests: Annotated[int | None, typer.Option("--tests", min=2, help="Tests per evaluation method.")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the evaluation runs.")] = 0,
    workers: Annotated[int, typer.Option("--workers", min=1)] = 1,
    store: Annotated[Path | None, typer.Option("--store", help="SQLite run store (default: OUT/runs.sqlite).")]
    = None,
    backend: BackendOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Certify -> deploy the certificate -> evaluate the bundle's crash rate -> one report (pipeline.html)."""
    from safetybed.pipeline import DEFAULT_EVALUATIONS, run_pipeline

    scenarios = [] if no_evaluation else (evaluate or list(DEFAULT_EVALUATIONS))
    summary = run_pipeline(cert_spec, out_dir, episodes=episodes, attack_episodes=attack_episodes,
                           evaluate=scenarios, methods=[m.strip() for m in method.split(",") if m.strip()],
                           tests=tests, seed=seed, workers=workers, store_path=store, backend=backend,
                           progress_factory=(lambda name: progress_bar(name, enabled=not as_json)))
    if as_json:
        emit_json(summary, default=str)
        return
    table = Table(title=f"pipeline {cert_spec}")
    for column in ("budget B", "certified", "clean estimate"):
        table.add_column(column)
    for row in summary["certified"] or []:
        table.add_row(_fmt(row["budget"]), _fmt(row["certified"]), _fmt(row["estimate"]))
    out.print(table)
    for evaluation in summary["evaluations"]:
        for entry in evaluation["methods"]:
            ci = entry.get("ci") or [float("nan"), float("nan")]
            out.print(f"{evaluation['scenario']} {entry['method']}: crash rate {_fmt(entry['estimate'])} "
                      f"[{_fmt(ci[0])}, {_fmt(ci[1])}], {entry['n']} tests", markup=False, highlight=False)
    verdict = "every section refers to the same weights" if summary["consistent"] else \
        "NOT CONSISTENT: a section refers to other weights (see the banner)"
    out.print(f"bundle: {summary['bundle']}\nreport: {summary['report']} ({verdict})", markup=False, highlight=False)


@app.command("oracle")
def oracle_command(
    scenario: Annotated[str, typer.Argument(help="Straight-road highway scenario (cruise, cut_in, overtaking).")],
    episodes: Annotated[int, typer.Option("--episodes", min=1)] = 2000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Run seed: the same episodes as safetybed run "
                                                            "--seed.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Upper bound on the share of unavoidable collisions: episodes no oracle strategy survives."""
    from safetybed.evaluate.avoidable import avoidable_share
    from safetybed.spec.catalogue import load_scenario_arg

    spec, _ = load_scenario_arg(scenario)
    with progress_bar("oracle strategies", enabled=not as_json) as progress:
        summary = avoidable_share(spec, episodes=episodes, seed=seed, progress=progress)
    if as_json:
        emit_json(summary)
        return
    table = Table(title=f"oracle strategies on {spec.name}, {episodes} episodes")
    table.add_column("strategy")
    table.add_column("collision rate")
    for name, rate in summary["strategies"].items():
        table.add_row(name, _fmt(rate))
    out.print(table)
    low, high = summary["unavoidable_ci"]
    out.print(f"no strategy avoids the collision in {summary['unavoidable']} of {episodes} episodes: unavoidable "
              f"share <= {_fmt(summary['unavoidable_share'])} ({summary['confidence']:.0%} CI [{_fmt(low)}, "
              f"{_fmt(high)}])", markup=False, highlight=False)


@app.command("attack")
def attack_command(
    cert_spec: Annotated[Path, typer.Argument(help="Certification spec (certify/*.toml).")],
    budget: Annotated[float, typer.Option("--budget", min=0.0, help="Total L2 budget over the episode.")],
    episodes: Annotated[int | None, typer.Option("--episodes", min=1)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Adaptive total-budget L2 attack on the smoothed controller (and the unsmoothed one as a control)."""
    from safetybed.certify.pipeline import attack_from_spec

    result = attack_from_spec(cert_spec, budget=budget, episodes=episodes,
                              progress=(lambda name: progress_bar(name, enabled=not as_json)))
    if as_json:
        emit_json(result, default=str)
        return
    table = Table(title=f"attack {result['name']}: total l2 budget B = {result['budget']:g}, sigma = "
                        f"{result['sigma']:g}, {result['episodes']} episodes per setting ({result['quantity']})")
    for column in ("controller", "configuration", "attacked estimate", "sem", "budget spent (mean / max)"):
        table.add_column(column)
    for label, run_result in [*(("smoothed", r) for r in result["runs"]), ("unsmoothed (control)", result["control"])]:
        table.add_row(label, json.dumps(run_result["configuration"], sort_keys=True), _fmt(run_result["estimate"], 4),
                      _fmt(run_result["sem"]), f"{_fmt(run_result['budget_spent_mean'])} / "
                                               f"{_fmt(run_result['budget_spent_max'])}")
    out.print(table)
    out.print(f"worst smoothed setting: {json.dumps(result['worst']['configuration'], sort_keys=True)} -> "
              f"{_fmt(result['worst']['estimate'], 4)}", markup=False, highlight=False)


# -- bench ----------------------------------------------------------------------------------------------------
@bench_app.command("sim")
def bench_sim(
    steps: Annotated[int, typer.Option("--steps", min=1, help="Control steps per scenario family.")] = 60,
    families: Annotated[list[str] | None, typer.Option("--family", help="Catalogue names (repeatable).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Env steps/s per scenario family, with the stock environment measured in the same run as baseline."""
    from safetybed.sims.bench import bench_families

    rows = bench_families(families=families, steps=steps)
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"safetybed bench sim ({steps} control steps each, 1 process, random actions)")
    for column in ("scenario", "steps/s", "sim frames/s", "baseline (stock env)", "baseline steps/s", "ratio"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["scenario"], f"{row['steps_per_s']:.1f}", f"{row['frames_per_s']:.0f}",
                      row["baseline"], f"{row['baseline_steps_per_s']:.1f}", f"{row['ratio']:.2f}x")
    out.print(table)


@bench_app.command("backends")
def bench_backends(
    scenario: Annotated[str, typer.Argument(help="A straight-road highway scenario (cruise, cut_in, overtaking).")]
    = "highway/cut_in",
    controller: Annotated[str, typer.Option("--controller", help="Ego controller.")] = "builtin:idm",
    episodes: Annotated[int, typer.Option("--episodes", min=20, help="Episodes per backend.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="highway-env run seed (batched: seed + 1).")] = 0,
    workers: Annotated[int, typer.Option("--workers", min=1, help="highway-env worker processes.")] = 1,
    alpha: Annotated[float, typer.Option("--alpha", min=1e-6, max=0.5, help="Family-wise level (Bonferroni).")]
    = 0.05,
    as_json: JsonFlag = False,
) -> None:
    """Statistical faithfulness: two-sample tests of highway-env episodes against batched ones (float64, float32)."""
    from safetybed.runner.compare_backends import compare_backends
    from safetybed.spec.catalogue import load_scenario_arg

    spec, _ = load_scenario_arg(scenario)
    with progress_bar(f"{spec.name}: both backends", enabled=not as_json) as progress:
        document = compare_backends(spec, controller, episodes=episodes, seed=seed, workers=workers, alpha=alpha,
                                    progress=progress)
    if as_json:
        emit_json(document)
        return
    table = Table(title=f"highway-env vs batched: {spec.name}, {controller}, {episodes} episodes per backend "
                        f"(p-values; Bonferroni threshold {document['bonferroni_threshold']:.2g})")
    for column in ("batched dtype", "metric", "highway-env", "batched", "test", "p-value", "indistinguishable"):
        table.add_column(column)
    for row in document["rows"]:
        for metric, test in row["tests"].items():
            table.add_row(row["dtype"], metric, f"{test['reference']:.4g}", f"{test['batched']:.4g}", test["test"],
                          f"{test['p_value']:.3g}", "yes" if test["p_value"] >= document["bonferroni_threshold"]
                          else "NO")
    out.print(table)
    out.print(f"highway-env: {document['reference_wall_time_s']:.1f} s; batched: "
              + ", ".join(f"{row['dtype']} {row['wall_time_s']:.1f} s" for row in document["rows"]))


@bench_app.command("executors")
def bench_executors_command(
    workers: Annotated[int, typer.Option("--workers", min=1, help="Workers on both sides.")] = 2,
    classic_episodes: Annotated[int, typer.Option("--classic-episodes", min=0,
                                                  help="classic/cartpole episodes (builtin:random).")] = 2000,
    highway_episodes: Annotated[int, typer.Option("--highway-episodes", min=0,
                                                  help="highway/cut_in episodes (builtin:idm).")] = 200,
    loopback: Annotated[bool, typer.Option("--loopback", help="Start a two-node Ray cluster on 127.0.0.1 for the "
                                                              "check, in private namespaces (root).")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Ray (RAY_ADDRESS, or --loopback) vs the local pool: episodes/s, every index stored once, equal records."""
    from safetybed.runner.bench import bench_executors, format_table

    cluster = nullcontext()
    if loopback:
        from safetybed.runner.loopback import LoopbackCluster, in_private_network, reexec_in_namespace

        if not in_private_network():  # run this same command again inside its own namespaces
            argv = [sys.executable, "-m", "safetybed", *sys.argv[1:]]
            sys.exit(reexec_in_namespace(argv).returncode)
        half = max(1, workers // 2)
        cluster = LoopbackCluster(head_cpus=half, worker_cpus=max(1, workers - half))
    with cluster as started:
        if started is not None:
            os.environ.update(started.client_env())
        _bench_executors_print(bench_executors, format_table, workers=workers, classic=classic_episodes,
                               highway=highway_episodes, seed=seed, as_json=as_json)


def _bench_executors_print(bench, format_table, *, workers, classic, highway, seed, as_json) -> None:
    workloads = [w for w in (("classic/cartpole", "builtin:random", classic), ("highway/cut_in", "builtin:idm", highway))
                 if w[2] > 0]
    result = bench(workloads=workloads, workers=workers, seed=seed,
                   progress=None if as_json else (lambda line: err.print(line, markup=False)))
    if as_json:
        emit_json(result)
    else:
        out.print(format_table(result), markup=False, highlight=False)


@bench_app.command("train")
def bench_train_command(
    tasks: Annotated[list[str] | None, typer.Option("--task", help="Scenario, optionally NAME=STEPS (repeatable); "
                                                                   "default: classic/pendulum=20000.")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Env steps of a --task given without =STEPS.")] = 20_000,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Training seeds per (task, side, setting).")] = 5,
    grid_seeds: Annotated[int, typer.Option("--grid-seeds", min=1, help="Seeds of the tuning grid's and the "
                                                                        "ablation's off-default points.")] = 3,
    sides: Annotated[list[str] | None, typer.Option("--side", help="dsac_t, mdpo_off, mdpo_on, sb3_sac, sb3_ppo "
                                                                   "(repeatable; default: all).")] = None,
    tune: Annotated[bool, typer.Option("--tune/--no-tune", help="Run the tuning grid and the tuned rows.")] = True,
    ablation: Annotated[bool, typer.Option("--ablation/--no-ablation", help="Run the DSAC-T ablation.")] = True,
    ablation_task: Annotated[str | None, typer.Option("--ablation-task", help="Task of the DSAC-T ablation "
                                                                              "(default: the first --task).")] = None,
    tuned: Annotated[list[str] | None, typer.Option("--tuned", help="SIDE:KNOB=V[,KNOB=V] (repeatable): use this "
                                                                    "tuned point, chosen on an earlier grid, and "
                                                                    "skip the grid.")] = None,
    learning_starts: Annotated[int, typer.Option("--learning-starts", min=1, help="Uniform-random warm-up steps "
                                                                                  "(off-policy sides).")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Replay batch (off-policy sides).")] = 256,
    hidden: Annotated[str, typer.Option("--hidden", help="Hidden sizes of every network, comma-separated.")]
    = "256,256",
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Training runs at a time (one torch thread each).")] = 1,
    out_dir: Annotated[Path, typer.Option("--out", help="Stored runs (resumable) and the report.")]
    = Path("reports/bench_train"),
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda (every side).")] = "auto",
    compile_critics: Annotated[bool, typer.Option("--compile", help="torch.compile DSAC-T's critics "
                                                                    "(throughput).")] = False,
    learning: Annotated[bool, typer.Option("--learning/--no-learning", help="Run the learning comparison.")] = True,
    throughput: Annotated[bool, typer.Option("--throughput/--no-throughput", help="Run the throughput "
                                                                                  "comparison.")] = True,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Throughput timings per side (median).")] = 3,
    as_json: JsonFlag = False,
) -> None:
    """Our trainers vs Stable-Baselines3 at equal budgets (returns with 95 % CIs, curves, tuned rows, ablation)
    and DSAC-T / SAC throughput against SB3 SAC; writes OUT/bench_train.json and OUT/report.html."""
    from safetybed.control.bench_learning import SIDES, Plan, bench_learning
    from safetybed.control.bench_train import Protocol, bench_throughput, format_table
    from safetybed.control.training import resolve_device
    from safetybed.report.bench_train import write_bench_train

    task_steps = _parse_task_steps(tasks or ["classic/pendulum=20000"], default_steps=steps)
    chosen_sides = tuple(sides or SIDES)
    unknown = [side for side in chosen_sides if side not in SIDES]
    if unknown:
        raise InputError(f"--side: expected some of {', '.join(SIDES)}, got {', '.join(unknown)}")
    try:
        hidden_sizes = tuple(int(size) for size in hidden.split(","))
    except ValueError:
        raise InputError(f"--hidden: expected comma-separated integers such as 256,256, got {hidden!r}") from None
    say = None if as_json else (lambda line: err.print(line, markup=False))
    document: dict = {"learning": None, "throughput": [], "notes": []}
    if learning:
        protocol = Protocol(hidden=hidden_sizes, activation="relu", batch_size=batch_size,
                            learning_starts=learning_starts, device=resolve_device(device), compile=False)
        if ablation_task is not None and ablation_task not in task_steps:
            raise InputError(f"--ablation-task: expected one of the --task names ({', '.join(task_steps)}), "
                             f"got {ablation_task!r}")
        plan = Plan(tasks=task_steps, sides=chosen_sides, seeds=seeds, grid_seeds=min(grid_seeds, seeds), tune=tune,
                    tuning_task=next(iter(task_steps)), ablation=ablation, ablation_task=ablation_task,
                    fixed_tuned=_parse_tuned(tuned) if tuned else None)
        document["learning"] = bench_learning(plan, protocol, out_dir=out_dir, workers=jobs, progress=say)
        document["protocol"] = {"hidden": list(hidden_sizes), "activation": "relu", "batch_size": batch_size,
                                "learning_starts": learning_starts, "device": str(protocol.device),
                                "jobs": jobs, "seeds": seeds}
    if throughput:
        result = bench_throughput(tasks=list(task_steps), device=device, compile=compile_critics,
                                  batch_size=batch_size, hidden=hidden_sizes, repeats=repeats, progress=say)
        document.update(throughput=result["throughput"], notes=result["notes"], throughput_protocol=result["protocol"])
    document["device"] = str(resolve_device(device))
    paths = write_bench_train(document, out_dir)
    if as_json:
        emit_json(document, default=str)
    else:
        out.print(format_table(document), markup=False, highlight=False)
        out.print(f"report: {paths['html']}", markup=False)


def _parse_tuned(entries: list[str]) -> dict[str, dict[str, float]]:
    """``["dsac_t:learning_rate=3e-4"]`` -> ``{"dsac_t": {"learning_rate": 3e-4}}`` (checked against the sides)."""
    from safetybed.control.bench_learning import KNOBS, SIDES

    chosen: dict[str, dict[str, float]] = {}
    for entry in entries:
        side, _, rest = entry.partition(":")
        if side not in SIDES:
            raise InputError(f"--tuned {entry!r}: expected SIDE:KNOB=V[,KNOB=V] with SIDE one of "
                             f"{', '.join(SIDES)}, got side {side!r}")
        knobs: dict[str, float] = {}
        for item in filter(None, rest.split(",")):
            name, _, value = item.partition("=")
            if name not in SIDES[side].knobs:
                raise InputError(f"--tuned {entry!r}: {side} has the knobs {', '.join(SIDES[side].knobs)}, "
                                 f"got {name!r} (all knobs: {', '.join(KNOBS)})")
            try:
                knobs[name] = float(value)
            except ValueError:
                raise InputError(f"--tuned {entry!r}: knob {name} needs a number, got {value!r}") from None
        chosen[side] = knobs
    return chosen


def _parse_task_steps(tasks: list[str], *, default_steps: int) -> dict[str, int]:
    """``["classic/pendulum=20000", "bullet/reach"]`` -> ``{"classic/pendulum": 20000, "bullet/reach": default}``."""
    parsed: dict[str, int] = {}
    for entry in tasks:
        name, _, count = entry.partition("=")
        try:
            value = int(count) if count else default_steps
        except ValueError:
            value = 0
        if not name or value < 1:
            raise InputError(f"--task {entry!r}: expected NAME or NAME=STEPS with STEPS a positive integer")
        parsed[name] = value
    return parsed


@bench_app.command("batched")
def bench_batched_command(
    batch_sizes: Annotated[str | None, typer.Option(
        "--batch-sizes", help="Traffic batch sizes, comma-separated, each <= 16384 (default 1,16,256,1024,4096).")]
    = None,
    policy_batch_sizes: Annotated[str | None, typer.Option(
        "--policy-batch-sizes", help="Policy (highway/cut_in + builtin:idm) batch sizes (default 1,16,256,1024).")]
    = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda (the batched backend).")] = "auto",
    repeats: Annotated[int | None, typer.Option("--repeats", min=1, help="Timings per measurement (median; "
                                                                         "default 3).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Control steps per batched traffic timing "
                                                                     "(default 2).")] = None,
    baseline_steps: Annotated[int | None, typer.Option("--baseline-steps", min=1, help="Control steps per "
                                                       "highway-env traffic timing (default 5).")] = None,
    policy_episodes: Annotated[int | None, typer.Option("--policy-episodes", min=1, help="highway-env episodes "
                                                        "per policy timing (default 3).")] = None,
    driver: Annotated[str, typer.Option("--driver", help="Policy scenario's background drivers: auto (the "
                                                         "catalogue's when batched has it), idm, naturalistic.")]
    = "auto",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch.set_num_threads for the batched "
                                                "side (default: torch's; on a machine other processes share, 1 "
                                                "avoids torch's threads waiting on each other).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes (for tests): batches 1,4, one repeat.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Batched highway backend vs highway-env: vehicle-frames/s, policy steps/s, episodes/s and their ratios."""
    from safetybed.runner.bench_batched import bench_batched, format_table, parse_batch_sizes

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    result = bench_batched(
        batch_sizes=parse_batch_sizes(batch_sizes) if batch_sizes else None,
        policy_batch_sizes=(parse_batch_sizes(policy_batch_sizes, option="--policy-batch-sizes")
                            if policy_batch_sizes else None),
        device=device, repeats=repeats, quick=quick, steps=steps, baseline_steps=baseline_steps,
        policy_episodes=policy_episodes, driver=driver,
        progress=None if as_json else (lambda line: err.print(line, markup=False)))
    if as_json:
        emit_json(result)
    else:
        out.print(format_table(result), markup=False, highlight=False)


@bench_app.command("certify")
def bench_certify_command(
    spec: Annotated[Path | None, typer.Argument(help="Certification spec (default: CartPole sigma 0.2).")] = None,
    episodes: Annotated[int, typer.Option("--episodes", min=1)] = 512,
    num_envs: Annotated[int, typer.Option("--envs", min=1, help="Vectorised environments.")] = 64,
    as_json: JsonFlag = False,
) -> None:
    """Smoothed episodes/s: vectorised envs + batched inference vs the one-env-at-a-time loop, same run."""
    from safetybed.certify.bench import DEFAULT_SPEC, bench_certify, format_table

    result = bench_certify(spec or DEFAULT_SPEC, episodes=episodes, num_envs=num_envs)
    if as_json:
        emit_json(result, default=str)
    else:
        out.print(format_table(result), markup=False, highlight=False)


# -- evaluate ---------------------------------------------------------------------------------------------------
@app.command("evaluate")
def evaluate_command(
    scenario: Annotated[str, typer.Argument(help="testbed:cut_in | testbed:cut_in_fixed (known answer) or a highway scenario spec.")],
    controller: Annotated[str, typer.Option("--controller", help="Controller under test (builtin:idm for the "
                                                                 "testbed).")],
    method: Annotated[str, typer.Option("--method", help="crude|nade|scv|d2rl|adate, comma-separated, or all.")],
    tests: Annotated[int | None, typer.Option("--tests", min=2, help="Tests per method (default per method).")] = None,
    until_rhw: Annotated[float | None, typer.Option("--until-rhw", help="Add tests until the RHW is below this.")]
    = None,
    max_tests: Annotated[int | None, typer.Option("--max-tests", min=2, help="Most tests per method, with or "
                                                                         "without --until-rhw (lowers the default "
                                                                         "count; stops --until-rhw's growth).")]
    = None,
    coverage: Annotated[int, typer.Option("--coverage", min=0, help="Testbed only: repetitions of a coverage "
                                                                    "study (0: none).")] = 0,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    confidence: Annotated[float, typer.Option("--confidence", min=0.5, max=0.999)] = 0.9,
    workers: Annotated[int, typer.Option("--workers", min=1)] = 1,
    store: StoreOption = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for evaluation.json and report.html.")]
    = None,
    allow_partial: AllowPartialFlag = False,
    backend: BackendOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Estimate the crash rate per test with statistically efficient testing; report RHW and tests needed."""
    from safetybed.evaluate.pipeline import evaluate_testbed, is_testbed, parse_methods

    methods = parse_methods(method)
    with progress_bar("evaluate", enabled=not as_json) as progress:
        if is_testbed(scenario):
            document = evaluate_testbed(scenario, controller=controller, methods=methods, tests=tests, seed=seed,
                                        confidence=confidence, until_rhw=until_rhw, max_tests=max_tests,
                                        coverage=coverage, progress=progress)
        else:
            from safetybed.evaluate.pipeline import evaluate_highway

            document = evaluate_highway(scenario, controller=controller, methods=methods, tests=tests, seed=seed,
                                        confidence=confidence, until_rhw=until_rhw, max_tests=max_tests,
                                        workers=workers, store_path=_store_path(store), out_dir=out_dir,
                                        allow_partial=allow_partial, backend=backend, progress=progress)
            out_dir = Path(document["out_dir"])
    if out_dir is not None:
        from safetybed.report.evaluation import write_evaluation

        document["files"] = write_evaluation(document, out_dir)
    if as_json:
        emit_json(document, default=str)
        return
    print_evaluation(document)


def print_evaluation(document) -> None:
    table = Table(title=f"crash-rate evaluation: {document['scenario']}")
    for column in ("method", "estimate", "CI", "RHW", "tests", "crashes", "tests to RHW<0.3 (extrap.)",
                   "x fewer than crude", "x fewer than NADE"):
        table.add_column(column)
    for entry in document["methods"]:
        ci = entry.get("ci") or [float("nan"), float("nan")]
        ratios = entry.get("fewer_tests_than") or {}
        table.add_row(entry["method"], _fmt(entry["estimate"]), f"[{_fmt(ci[0])}, {_fmt(ci[1])}]",
                      _fmt(entry["rhw"]) if entry.get("rhw") is not None else "-", str(entry["n"]),
                      str(entry["n_crashes"]), _fmt(entry["tests_needed"]) if entry.get("tests_needed") else "-",
                      _fmt(ratios["crude"]) if "crude" in ratios else "-",
                      _fmt(ratios["nade"]) if "nade" in ratios else "-")
    out.print(table)
    for entry in document["methods"]:
        if entry.get("caveat"):
            out.print(f"note: {entry['method']} is {entry['caveat']}", markup=False, highlight=False)
    if document.get("exact_crash_probability") is not None:
        out.print(f"exact crash probability: {document['exact_crash_probability']:.6g}")
    for row in document.get("coverage", []):
        out.print(f"coverage {row['method']}: {row['covered']}/{row['repetitions']} = {row['coverage']:.0%}")
    if document.get("files"):
        out.print(f"report: {document['files']['html']}")


# -- adapt ------------------------------------------------------------------------------------------------------
@app.command("adapt")
def adapt_command(
    scenarios: Annotated[list[str], typer.Argument(help="Suites to run: unshifted, dense, aggressive, noisy, mixed, "
                                                         "all, or highway scenario specs / catalogue names.")],
    controller: Annotated[str, typer.Option("--controller", help="Planner spec (algorithm = \"planner\").")]
    = "controllers/highway_planner.toml",
    method: Annotated[str, typer.Option("--method", help="none|centaur|tent, comma-separated, or all (none is "
                                                         "always run: it is the reference).")] = "all",
    episodes: Annotated[int, typer.Option("--episodes", min=2, help="Episodes per (suite, method).")] = 500,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Run seed (the same episodes for every method).")] = 0,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Torch threads of the batched runs.")] = 1,
    latency_episodes: Annotated[int, typer.Option("--latency-episodes", min=0, help="Episodes of the deployment "
                                                                                    "loop timed per method "
                                                                                    "(0: no latency).")] = 10,
    confidence: Annotated[float, typer.Option("--confidence", min=0.5, max=0.999)] = 0.95,
    store: StoreOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for adaptation.json and report.html.")]
    = Path("reports/adaptation"),
    as_json: JsonFlag = False,
) -> None:
    """Compare test-time adaptation (none, Centaur, TENT) of the highway planner on shifted suites.

    Every (suite, method) is a stored, seeded run of the batch runner; running the same command again reuses
    complete runs and resumes partial ones.
    """
    from safetybed.adapt.evaluation import evaluate_adaptation, resolve_suites
    from safetybed.report.adaptation import write_adaptation
    from safetybed.runner import RunStore
    from safetybed.spec.planner import ADAPT_METHODS

    methods = list(ADAPT_METHODS) if method == "all" else [m.strip() for m in method.split(",") if m.strip()]
    suites = resolve_suites(scenarios)
    with RunStore(_store_path(store)) as run_store, progress_bar("adapt", enabled=not as_json) as progress:
        def report_progress(label: str, done: int, total: int) -> None:
            if progress:
                progress(done, total)
            if not as_json and done == 0:
                err.print(label)

        document = evaluate_adaptation(suites, controller_spec=controller, methods=methods, episodes=episodes,
                                       seed=seed, store=run_store, workers=workers,
                                       latency_episodes=latency_episodes, confidence=confidence,
                                       progress=report_progress)
    document["files"] = write_adaptation(document, out_dir)
    if as_json:
        emit_json(document)
        return
    table = Table(title=f"test-time adaptation: {controller}, {episodes} episodes each")
    for column in ("suite", "method", "collision rate", "CI", "min TTC [s]", "progress [m]", "composite",
                   "changed", "vs none"):
        table.add_column(column)
    for suite in document["suites"]:
        for row in suite["methods"]:
            verdict = "" if row["method"] == "none" else (
                "lower" if row["lowers_collisions"] else "HIGHER" if row["raises_collisions"] else "overlaps")
            table.add_row(suite["label"], row["method"], _fmt(row["collision_rate"]),
                          f"[{_fmt(row['collision_ci'][0])}, {_fmt(row['collision_ci'][1])}]",
                          _fmt(row["min_ttc_s"]), _fmt(row["progress_m"]), _fmt(row["composite"]),
                          str(row.get("changed_episodes", "-")), verdict)
    out.print(table)
    for name, entry in document["latency"].items():
        out.print(f"latency {name}: decision median {entry['decision']['median_ms']:.3g} ms, p95 "
                  f"{entry['decision']['p95_ms']:.3g} ms; adapt hook median {entry['hook']['median_ms']:.3g} ms")
    out.print(document["certificate_note"], markup=False, highlight=False)
    out.print(f"report: {document['files']['html']}")


# -- quickstart -------------------------------------------------------------------------------------------------
@app.command("quickstart")
def quickstart(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the store and summary.")] = Path("quickstart-out"),
    episodes: Annotated[int, typer.Option("--episodes", min=1, help="Episodes per scenario.")] = 20,
    workers: Annotated[int, typer.Option("--workers", min=1)] = 2,
    as_json: JsonFlag = False,
) -> None:
    """The main jobs end to end on the embedded defaults: driving and robot batch runs, a certificate report, a
    crash-rate evaluation and a small certify -> deploy -> evaluate pipeline of the driving controller."""
    from safetybed.quickstart import run_quickstart

    def report(summary, store: Path) -> None:
        if not as_json:
            print_summary(summary, store=store)

    result = run_quickstart(out_dir=out_dir, episodes=episodes, workers=workers, on_summary=report,
                            progress_factory=lambda name: progress_bar(name, enabled=not as_json))
    if as_json:
        emit_json(result)
    else:
        certificate = result["certificate"]
        certified = ", ".join(f"{row['certified']:.4g} at B = {row['budget']:g}" for row in certificate["certified"])
        out.print(f"certificate {certificate['name']} ({certificate['certificate_id']}): clean "
                  f"{certificate['clean_estimate']:.4g} over {certificate['episodes']} episodes; certified {certified} "
                  f"(alpha = {certificate['alpha']:g}); report {certificate['files']['report']}")
        evaluation = result["evaluation"]
        estimates = "; ".join(f"{row['method']} {row['estimate']:.3g} (RHW {row['rhw']:.2f}, {row['n']} tests)"
                              + (f" - {row['caveat']}" if row.get("caveat") else "")
                              for row in evaluation["methods"] if row["rhw"] is not None)
        out.print(f"crash-rate evaluation on {evaluation['scenario']} (exact "
                  f"{evaluation['exact_crash_probability']:.3g}): {estimates}; report {evaluation['files']['html']}",
                  markup=False, highlight=False)
        pipeline = result["pipeline"]
        certified = ", ".join(f"{row['certified']:.4g} at B = {row['budget']:g}" for row in pipeline["certified"])
        crash = "; ".join(f"{entry['method']} {_fmt(entry['estimate'])} ({entry['n']} tests)"
                          for evaluation in pipeline["evaluations"] for entry in evaluation["methods"])
        out.print(f"driving pipeline ({pipeline['episodes']} episodes, attacks: {pipeline['attacks']}): certified "
                  f"P(no collision) {certified}; crash rate of the deployed bundle on cruise_nade: {crash}; "
                  f"bundle {pipeline['bundle']}; report {pipeline['report']}"
                  + ("" if pipeline["consistent"] else " (NOT CONSISTENT: see the report's banner)"),
                  markup=False, highlight=False)
        out.print(f"\n[bold green]quickstart done[/bold green] in {result['wall_time_s']:.0f} s. Results: store "
                  f"{result['store']}, summary {result['summary_file']}")
        out.print(f"Inspect with: safetybed runs list --store {result['store']}")


@suite_app.command("list")
def suite_list(as_json: JsonFlag = False) -> None:
    """Every suite entry: name, paper, family and the verdict of its last stored full demo."""
    from safetybed.suite.registry import entries, load_result

    rows = []
    for entry in entries():
        result = load_result(entry.name)
        rows.append({"name": entry.name, "title": entry.title, "citation": entry.citation, "family": entry.family,
                     "module": entry.module, "verdict": result.verdict if result else None})
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"safetybed suite: {len(rows)} entries (verdicts from docs/suite/results/)")
    for column in ("name", "family", "paper", "last verdict"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["family"], f"{row['title']} ({row['citation']})", row["verdict"] or "not run")
    out.print(table)


@suite_app.command("run")
def suite_run(
    name: Annotated[str, typer.Argument(help="Entry name (safetybed suite list).")],
    fast: Annotated[bool, typer.Option("--fast", help="The reduced demo (<= 30 s on 2 cores); not stored.")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Base seed (multi-seed demos use seed, seed+1, ...).")]
    = 0,
    save: Annotated[bool, typer.Option("--save/--no-save", help="Store a full demo's result in "
                                                                "docs/suite/results/ (for suite report).")] = True,
    controller: Annotated[Path | None, typer.Option(
        "--controller", help="A controller spec to run the demo on (only entries that take it; the stored result "
                             "is the default controller's, so a run with --controller is not stored).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run one entry's demo: the paper's claimed effect against its baseline, measured, with a verdict."""
    from safetybed.suite.registry import get_entry, run_demo, save_result

    entry = get_entry(name)
    if not as_json:
        err.print(f"{entry.name}: {entry.title} ({entry.citation}), {'fast' if fast else 'full'} demo ...")
    result = run_demo(entry, fast=fast, seed=seed, controller=controller)
    stored = save_result(result) if save and not fast and controller is None else None
    if as_json:
        emit_json(result.to_json_dict())
        return
    table = Table(title=f"{entry.name} ({'fast' if fast else 'full'}, seeds {list(result.seeds)}, "
                        f"{result.wall_s:.1f} s): {result.claim}")
    for column in ("quantity", "method", "baseline"):
        table.add_column(column)
    for label in dict.fromkeys([*result.measured, *result.baseline]):
        table.add_row(label, result.measured[label].text() if label in result.measured else "—",
                      result.baseline[label].text() if label in result.baseline else "—")
    out.print(table)
    out.print(f"verdict: [bold]{result.verdict}[/bold]: {result.why}", markup=True, highlight=False)
    if stored:
        out.print(f"stored {stored}")


@suite_app.command("report")
def suite_report(
    output: Annotated[Path, typer.Option("--out", help="The markdown page to write.")] = Path("docs/suite.md"),
) -> None:
    """Regenerate docs/suite.md from the stored full-demo results."""
    from safetybed.suite.registry import entries, load_result, render_markdown

    rows = [(entry, load_result(entry.name)) for entry in entries()]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_markdown(rows))
    done = sum(result is not None for _, result in rows)
    out.print(f"wrote {output}: {len(rows)} entries, {done} with a stored full-demo result")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: maps bad input to exit code 2 with one message."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        with _stdout_reserved_for_json("--json" in arguments, restore_fd=argv is not None):
            app(args=arguments, prog_name="safetybed")
    except InputError as error:
        err.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except IncompleteRunError as error:
        err.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)


