"""``safetybed pipeline CERTIFY_SPEC --out DIR``: certify, deploy, evaluate and report one controller.

The one pipeline in which the certified controller is the deployed and the evaluated controller:

1. **certify** the controller of a certification spec (``certify/*.toml``: controller, scenario, sigma, budgets;
   :func:`safetybed.report.certificate.certify_to_folder`) -> ``DIR/certificate/``;
2. **deploy** the certificate (:func:`safetybed.control.bundle.deploy_certified`): a bundle that runs the smoothed
   policy exactly as certified (sigma per raw frame, one fresh draw per step) and carries the certificate's id
   and sha256 -> ``DIR/bundle/``;
3. **evaluate** the crash rate of *that bundle* (so of the smoothed, deployed policy) with statistically efficient
   testing on each ``--evaluate`` scenario (:func:`safetybed.evaluate.pipeline.evaluate_highway`; default
   ``highway/cruise_nade`` with NADE and SCV) -> ``DIR/evaluation-<scenario>/``;
4. **report**: one page, ``DIR/pipeline.html`` (:func:`safetybed.report.pipeline.write_pipeline_report`): the
   training curve, the certified curve with attacks, the crash-rate estimates and the bundle, each checked
   against the controller's weights sha256.

Every episode is stored in the run store (``--store``), so a second call reuses (or finishes) the same runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from safetybed.errors import InputError

#: Crash-rate evaluation by default: the naturalistic cruise with NADE's importance sampling, and SCV on its tests.
DEFAULT_EVALUATIONS = ("highway/cruise_nade",)
DEFAULT_METHODS = ("nade", "scv")

ProgressFactory = Callable[[str], AbstractContextManager[Any]]


def _folder_name(scenario: str) -> str:
    """``evaluation-<file stem>`` for a scenario file, ``evaluation-<family>-<name>`` for a catalogue name."""
    return "evaluation-" + (Path(scenario).stem if scenario.endswith(".toml") else scenario.replace("/", "-"))


def run_pipeline(certify_spec: str | Path, out_dir: str | Path, *, episodes: int | None = None,
                 attack_episodes: int | None = None, evaluate: Sequence[str] = DEFAULT_EVALUATIONS,
                 methods: Sequence[str] = DEFAULT_METHODS, tests: int | None = None, seed: int = 0,
                 workers: int = 1, store_path: str | Path | None = None, backend: str | None = None,
                 progress_factory: ProgressFactory | None = None) -> dict[str, Any]:
    """Run the four steps (module docstring) and return a summary with every file written.

    Args:
        certify_spec: a certification spec; its controller must be a trained controller spec.
        out_dir: the pipeline folder (``certificate/``, ``bundle/``, ``evaluation-*/``, ``pipeline.html``).
        episodes, attack_episodes: override the spec's clean episodes and attack episodes per configuration.
        evaluate: highway scenarios for the crash-rate evaluation (empty: none).
        methods: evaluation methods (``safetybed evaluate --method``).
        tests: tests per evaluation method (default: the method's own).
        seed: seed of the evaluation runs (the certificate's seeds are in its spec).
        workers: parallel workers of every step.
        store_path: the SQLite run store (default ``DIR/runs.sqlite``).
        backend: simulator backend of the certification and the evaluations (``batched`` / ``highway-env``;
            default: the certification spec's, which the evaluations then use too).
        progress_factory: ``factory(description)`` -> a context manager yielding a ``(done, total)`` callback.
    """
    from safetybed.control.bundle import deploy_certified
    from safetybed.evaluate.pipeline import evaluate_highway, parse_methods
    from safetybed.report.certificate import certify_to_folder
    from safetybed.report.evaluation import write_evaluation
    from safetybed.report.pipeline import write_pipeline_report

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    store = Path(store_path) if store_path is not None else out / "runs.sqlite"
    method_list = parse_methods(",".join(methods)) if evaluate else []
    progress_factory = progress_factory or (lambda _name: nullcontext(None))
    timings: dict[str, float] = {}

    started = time.perf_counter()
    certificate = certify_to_folder(certify_spec, out_dir=out / "certificate", episodes=episodes,
                                    attack_episodes=attack_episodes, store_path=store, workers=workers,
                                    progress=progress_factory, backend=backend)
    timings["certify_s"] = time.perf_counter() - started

    started = time.perf_counter()
    bundle_dir = deploy_certified(out / "certificate", out / "bundle", overwrite=True)
    timings["deploy_s"] = time.perf_counter() - started

    from safetybed.certify.pipeline import resolve_certification

    resolved = resolve_certification(certify_spec, backend=backend)
    # The evaluation runs on the backend the certification ran on (the batched one for highway specs that ask for
    # it), unless that scenario family has no batched simulator.
    evaluation_backend = backend if backend is not None else resolved.scenario.backend
    evaluation_dirs: list[Path] = []
    evaluations: list[dict[str, Any]] = []
    for scenario in evaluate:
        started = time.perf_counter()
        folder = out / _folder_name(scenario)
        with progress_factory(f"evaluate {scenario}") as progress:
            document = evaluate_highway(scenario, controller=str(bundle_dir), methods=method_list, tests=tests,
                                        seed=seed, workers=workers, store_path=store, out_dir=folder,
                                        backend=evaluation_backend, progress=progress)
        write_evaluation(document, folder)
        evaluation_dirs.append(folder)
        evaluations.append({"scenario": scenario, "folder": str(folder),
                            "methods": [{key: entry.get(key) for key in ("method", "estimate", "ci", "rhw", "n",
                                                                          "tests_needed")}
                                        for entry in document["methods"]]})
        timings[f"evaluate {scenario} s"] = time.perf_counter() - started

    index = write_pipeline_report(out, controller_spec=resolved.controller_path,
                                  certificate_dir=out / "certificate", evaluation_dirs=evaluation_dirs,
                                  bundle_dir=bundle_dir)
    return {"certificate": str(out / "certificate" / "certificate.json"), "bundle": str(bundle_dir),
            "evaluations": evaluations, "report": str(out / "pipeline.html"), "index": str(out / "pipeline.json"),
            "consistent": index["consistent"], "store": str(store), "timings_s": timings,
            "certified": certificate.get("certified")}
