"""``safetybed evaluate``: run crash-rate evaluation methods and write the efficiency report.

Two kinds of SCENARIO:

* ``testbed:cut_in`` / ``testbed:cut_in_fixed`` — the known-answer testbed (:mod:`safetybed.evaluate.testbed`;
  the second logs a fixed critical set, so the stratified SCV assumption holds); the controller is the
  testbed's IDM ego (``builtin:idm``). ``coverage=R`` repeats every method R times and counts how often its CI
  covers the exact crash probability.
* a highway scenario spec — tests run through the batch runner and the run store (see
  :mod:`safetybed.evaluate.highway`), each method by its object in :data:`safetybed.evaluate.registry.METHODS`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from safetybed import __version__
from safetybed.errors import InputError
from safetybed.evaluate.efficiency import add_ratios, method_entry
from safetybed.evaluate.registry import first_test_count

TESTBED_PREFIX = "testbed:"
#: Testbed name -> its critical set (safetybed.evaluate.testbed): ``cut_in_fixed`` logs a fixed set of decisions.
TESTBEDS = {"cut_in": "adaptive", "cut_in_fixed": "fixed"}
#: Default tests per method on the testbed (crude MC needs ~30 / mu = 170,000 tests to reach RHW 0.3).
TESTBED_DEFAULT_TESTS = {"crude": 200_000, "nade": 10_000, "scv": 10_000, "d2rl": 10_000, "adate": 10_000}


def parse_methods(text: str) -> list[str]:
    """``"crude,nade"`` / ``"all"`` -> a list of known methods (InputError naming the bad one)."""
    from safetybed.evaluate.methods import METHODS

    names = list(METHODS) if text.strip() == "all" else [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise InputError(f"--method: expected one of {', '.join(METHODS)} (comma-separated) or all, got {text!r}")
    for name in names:
        if name not in METHODS:
            raise InputError(f"--method: expected one of {', '.join(METHODS)} (comma-separated) or all, "
                             f"got {name!r}")
    return list(dict.fromkeys(names))


def method_seed_for(seed: int, method: str) -> int:
    """Each method's test seed; ``scv`` post-processes the very tests ``nade`` runs (same seed)."""
    from safetybed.evaluate.methods import METHODS

    key = METHODS.index("nade" if method == "scv" else method)
    return int(np.random.SeedSequence(seed, spawn_key=(key,)).generate_state(1)[0])


def is_testbed(scenario: str) -> bool:
    return scenario.startswith(TESTBED_PREFIX)


def evaluate_testbed(scenario: str, *, controller: str, methods: list[str], tests: int | None = None,
                     seed: int = 0, confidence: float = 0.9, until_rhw: float | None = None,
                     max_tests: int | None = None, coverage: int = 0, target_rhw: float = 0.3,
                     bootstrap_resamples: int = 200, progress=None) -> dict[str, Any]:
    """Evaluate ``methods`` on the testbed; returns the report document
    (:func:`safetybed.report.evaluation.write_evaluation` writes it)."""
    from safetybed.evaluate.methods import coverage_study, run_testbed_method
    from safetybed.evaluate.testbed import CutInTestbed

    name = scenario[len(TESTBED_PREFIX):]
    if name not in TESTBEDS:
        raise InputError(f"SCENARIO: expected testbed:{' | testbed:'.join(TESTBEDS)}, got {scenario!r}")
    if controller not in ("builtin:idm", "testbed:ego"):
        raise InputError(f"--controller: the testbed's ego is its built-in IDM driver; expected builtin:idm, "
                         f"got {controller!r}")
    if until_rhw is not None and not 0 < until_rhw < 10:
        raise InputError(f"--until-rhw: expected a target relative half-width such as 0.3, got {until_rhw!r}")
    started = time.perf_counter()
    tables = CutInTestbed(critical_set=TESTBEDS[name]).build()
    exact = tables.exact_crash_probability
    entries = []
    for index, method in enumerate(methods):
        n = first_test_count(method, tests=tests, max_tests=max_tests, defaults=TESTBED_DEFAULT_TESTS)
        cap = max_tests if max_tests is not None else 50 * n
        method_seed = method_seed_for(seed, method)
        while True:
            run = run_testbed_method(tables, method, tests=n, seed=method_seed, confidence=confidence)
            rhw = run.primary().rhw
            if until_rhw is None or (rhw is not None and rhw < until_rhw) or n >= cap:
                break
            grow = 2.0 if rhw is None else min(max((rhw / until_rhw) ** 2 * 1.1, 1.2), 8.0)
            n = int(min(cap, np.ceil(n * grow)))
        for result in run.results:
            entry = method_entry(result, tests=run.tests, training_tests=run.training_tests, target=target_rhw,
                                 bootstrap_resamples=bootstrap_resamples, seed=seed)
            entry["covers_exact"] = bool(result.ci is not None and result.ci[0] <= exact <= result.ci[1])
            if "weights" in run.info:
                entry["adate_weights"] = run.info["weights"]
            if "training_crash_episodes" in run.info:
                entry["d2rl_training_crash_episodes"] = run.info["training_crash_episodes"]
            entries.append(entry)
        if progress is not None:
            progress(index + 1, len(methods))
    for entry in entries:
        if entry["method"] == "scv-martingale":
            entry["method_family"] = "scv"
    add_ratios(entries)
    document: dict[str, Any] = {
        "scenario": scenario, "controller": controller, "seed": seed, "confidence": confidence,
        "target_rhw": target_rhw, "exact_crash_probability": exact, "methods": entries,
        "package_version": __version__,
        "testbed": {"random_variables": ["r0 (gap at cut-in, m)", "a0 (BV acceleration at 0 s)",
                                         "a1 (BV acceleration at 1 s)"],
                    "scenarios_enumerated": int(tables.crash.size),
                    "critical_set": tables.bed.critical_set,
                    "surrogates": [m.name for m in tables.bed.surrogates],
                    "surrogate_crash_probabilities": [tables.surrogate_crash_probability(j)
                                                      for j in range(len(tables.bed.surrogates))]},
    }
    if coverage:
        per_method = {m: (tests if tests is not None else TESTBED_DEFAULT_TESTS[m]) for m in methods}
        rows = coverage_study(tables, methods=methods, repetitions=coverage, tests=per_method, seed=seed + 1,
                              confidence=confidence)
        document["coverage"] = [row.to_json(exact) for row in rows]
        document["coverage_goal"] = 0.85
    document["wall_time_s"] = time.perf_counter() - started
    return document


def evaluate_highway(scenario: str, *, controller: str, methods: list[str], tests: int | None = None,
                     seed: int = 0, confidence: float = 0.9, until_rhw: float | None = None,
                     max_tests: int | None = None, workers: int = 1, store_path: Path, out_dir: Path | None = None,
                     target_rhw: float = 0.3, bootstrap_resamples: int = 200, d2rl_iterations: int = 60,
                     adate_batches: int = 4, allow_partial: bool = False, backend: str | None = None,
                     progress=None) -> dict[str, Any]:
    """Evaluate ``methods`` on a highway scenario through the batch runner (every test stored in the run store).

    The scenario's ``[testing]`` section (or the defaults) gives NADE's settings; each method
    (:data:`safetybed.evaluate.registry.METHODS`) runs derived scenarios whose ``testing.method`` is its own
    (``crude``: NDE, no tester). ``scv`` post-processes the NADE tests of this call (NADE runs once when both are
    asked for). D2RL trains on the crash tests of the NADE run (or of its own NADE behaviour run), AdaTE runs
    ``adate_batches`` batches; their proposal files are written to ``out_dir`` (returned as ``out_dir``). A run
    that ends without all its planned tests stored raises :class:`~safetybed.errors.IncompleteRunError` unless
    ``allow_partial`` (the document then lists the incomplete runs under ``partial_runs``).
    """
    from safetybed.evaluate.highway import SUPPORTED_TASKS
    from safetybed.evaluate.registry import METHODS, HighwaySession
    from safetybed.spec.catalogue import load_scenario_arg
    from safetybed.spec.scenario import TestingSpec, with_backend

    spec, path = load_scenario_arg(scenario)
    spec = with_backend(spec, backend)
    if spec.simulator != "highway" or spec.task not in SUPPORTED_TASKS:
        raise InputError(f"{path}: evaluate needs testbed:cut_in, testbed:cut_in_fixed or a highway scenario of task "
                         f"{'|'.join(SUPPORTED_TASKS)}, got simulator {spec.simulator!r} task {spec.task!r}")
    if spec.highway.driver.model != "naturalistic":
        raise InputError(f"{path}: highway.driver.model: evaluate needs naturalistic background drivers, got "
                         f"{spec.highway.driver.model!r}")
    started = time.perf_counter()
    folder = Path(out_dir) if out_dir is not None else Path("evaluations") / f"{spec.name.replace('/', '_')}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    session = HighwaySession(spec=spec, path=path, controller=controller, testing=spec.testing or TestingSpec(),
                             store_path=store_path, folder=folder, seed=seed, confidence=confidence, workers=workers,
                             tests=tests, max_tests=max_tests, until_rhw=until_rhw, allow_partial=allow_partial,
                             d2rl_iterations=d2rl_iterations, adate_batches=adate_batches)
    entries = []
    for index, method in enumerate(methods):
        for result, n, training, info in METHODS[method].run_highway(session):
            entry = method_entry(result, tests=n, training_tests=training, target=target_rhw,
                                 bootstrap_resamples=bootstrap_resamples, seed=seed)
            entry.update(info)
            entries.append(entry)
        if progress is not None:
            progress(index + 1, len(methods))
    add_ratios(entries)
    document: dict[str, Any] = {
        "scenario": str(path), "scenario_name": spec.name, "controller": controller, "seed": seed,
        "confidence": confidence, "target_rhw": target_rhw, "methods": entries, "runs": session.run_ids,
        "store": str(store_path), "testing": session.testing.model_dump(), "package_version": __version__,
        "out_dir": str(folder),
        "wall_time_s": time.perf_counter() - started,
    }
    if session.partial_runs:
        document["partial_runs"] = session.partial_runs
    return document
