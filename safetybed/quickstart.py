"""``safetybed quickstart``: the main job on the embedded defaults.

It runs the first two jobs users come for. A scenario batch run on both real simulators: the highway-env
cut-in family (on the batched backend, :mod:`safetybed.sims.batched`) against the built-in IDM/MOBIL driver and the pybullet Panda reach task against the scripted
reach controller. Then a certification report: the noise-trained CartPole controller smoothed with
sigma = 0.2 (``certify/cartpole_sigma0.2.toml``) on ``10 x episodes`` clean episodes (at least 200; the spec's
10,000 and its attacks are for ``safetybed certify``). Last, a crash-rate evaluation on the known-answer cut-in
testbed (crude MC, NADE, SCV and AdaTE against the exact crash probability; ``safetybed evaluate``). Last, a small
version of the driving pipeline (``safetybed pipeline``): the noise-trained highway driver certified on 400 cut-in
episodes (no attacks), its certificate deployed as a bundle, the bundle's crash rate on ``cruise_nade`` by NADE and
SCV (40 tests each), and one report. Results go to ``OUT/runs.sqlite``,
``OUT/certificate/{certificate.json,report.html}``, ``OUT/evaluation/{evaluation.json,report.html}``,
``OUT/pipeline/pipeline.html`` and ``OUT/summary.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetybed.errors import InputError
from safetybed.report.certificate import certify_to_folder
from safetybed.report.evaluation import write_evaluation
from safetybed.runner import RunStore, run_summary, start_run
from safetybed.spec.catalogue import load_scenario_arg
from safetybed.spec.scenario import with_backend

#: (scenario, controller, backend): the highway run uses the batched backend (same records, far faster).
QUICKSTART_JOBS = (("highway/cut_in", "builtin:idm", "batched"), ("bullet/reach", "builtin:reach", None))
QUICKSTART_CERTIFICATION = "cartpole_sigma0.2.toml"
QUICKSTART_EVALUATION = ("testbed:cut_in", "builtin:idm", ["crude", "nade", "scv", "adate"])
#: The driving pipeline (:mod:`safetybed.pipeline`), small: certify the noise-trained driver on cut-in, deploy
#: the certificate, evaluate the bundle's crash rate on cruise_nade with NADE + SCV, one report.
QUICKSTART_PIPELINE = "highway_robust_cut_in.toml"
QUICKSTART_PIPELINE_EPISODES = 400
QUICKSTART_PIPELINE_TESTS = 40


def _certification_spec(name: str = QUICKSTART_CERTIFICATION) -> Path:
    from safetybed.spec.catalogue import catalogue_dirs

    for folder in catalogue_dirs("certify"):
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"certify/{name}: not found in ./certify or the installed checkout")


def run_quickstart(*, out_dir: Path, episodes: int, workers: int, on_summary: Callable[[Any, Path], None],
                   progress_factory: Callable[[str], Any]) -> dict[str, Any]:
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    store_path = out_dir / "runs.sqlite"
    results = []
    with RunStore(store_path) as store:
        for scenario_name, controller, backend in QUICKSTART_JOBS:
            spec, path = load_scenario_arg(scenario_name)
            spec = with_backend(spec, backend)
            with progress_factory(f"{spec.name} x {controller}") as progress:
                run_id = start_run(spec, scenario_path=path, controller=controller, episodes=episodes, seed=0,
                                   workers=workers, executor="local", store=store, progress=progress)
            summary = run_summary(store, run_id)
            on_summary(summary, store_path)
            results.append(summary.to_json_dict())
    certificate = certify_to_folder(_certification_spec(), episodes=max(10 * episodes, 200), attack_episodes=0,
                                    out_dir=out_dir / "certificate", store_path=store_path, workers=workers,
                                    progress=progress_factory)
    from safetybed.evaluate.pipeline import evaluate_testbed

    scenario, controller, methods = QUICKSTART_EVALUATION
    with progress_factory("crash-rate evaluation (testbed)") as progress:
        evaluation = evaluate_testbed(scenario, controller=controller, methods=methods, seed=0,
                                      bootstrap_resamples=50, progress=progress)
    evaluation["files"] = write_evaluation(evaluation, out_dir / "evaluation")
    from safetybed.pipeline import run_pipeline

    # Attacks are left out here (they run on the highway-env backend, ~0.4 s per episode and setting):
    # safetybed pipeline certify/highway_robust_cut_in.toml runs them.
    pipeline = run_pipeline(_certification_spec(QUICKSTART_PIPELINE), out_dir / "pipeline",
                            episodes=QUICKSTART_PIPELINE_EPISODES, attack_episodes=0,
                            tests=QUICKSTART_PIPELINE_TESTS, workers=workers, store_path=store_path,
                            progress_factory=progress_factory)
    result = {"store": str(store_path), "summary_file": str(out_dir / "summary.json"), "runs": results,
              "evaluation": {"scenario": scenario, "exact_crash_probability": evaluation["exact_crash_probability"],
                             "files": evaluation["files"],
                             "methods": [{key: entry.get(key) for key in ("method", "estimate", "ci", "rhw", "n",
                                                                          "n_crashes", "tests_needed", "caveat")}
                                         for entry in evaluation["methods"]]},
              "certificate": {key: certificate[key] for key in ("certificate_id", "name", "sigma", "alpha", "method",
                                                                 "certified", "files")}
              | {"clean_estimate": certificate["clean"]["estimate"], "episodes": certificate["samples"]["episodes"]},
              "pipeline": {key: pipeline[key] for key in ("report", "bundle", "certificate", "consistent",
                                                           "certified", "evaluations", "timings_s")}
              | {"episodes": QUICKSTART_PIPELINE_EPISODES, "attacks": "none (safetybed pipeline runs them)"},
              "wall_time_s": time.perf_counter() - started}
    (out_dir / "summary.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
