"""``safetybed evaluate``: run crash-rate evaluation methods and write the efficiency report.

Two kinds of SCENARIO:

* ``testbed:cut_in`` / ``testbed:cut_in_fixed`` — the known-answer testbed (:mod:`safetybed.evaluate.testbed`;
  the second logs a fixed critical set, so the stratified SCV assumption holds); the controller is the
  testbed's IDM ego (``builtin:idm``). ``coverage=R`` repeats every method R times and counts how often its CI
  covers the exact crash probability.
* a highway scenario spec — tests run through the batch runner and the run store (see
  :mod:`safetybed.evaluate.highway`).
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from safetybed import __version__
from safetybed.errors import InputError
from safetybed.evaluate.efficiency import add_ratios, method_entry

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


def first_test_count(method: str, *, tests: int | None, max_tests: int | None, defaults: dict[str, int]) -> int:
    """Tests of a method's first (or only) batch: ``--tests`` or the method's default, never above ``--max-tests``.

    ``--max-tests`` caps the tests of every method in both modes: without ``--until-rhw`` it lowers the default
    count; with it, it also stops the growth.
    """
    if tests is not None and max_tests is not None and tests > max_tests:
        raise InputError(f"--tests {tests} exceeds --max-tests {max_tests}; lower one of them")
    count = tests if tests is not None else defaults[method]
    return count if max_tests is None else min(count, max_tests)


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


#: Default tests per method on a highway scenario (crude MC's tests needed are extrapolated from its variance).
HIGHWAY_DEFAULT_TESTS = {"crude": 1000, "nade": 400, "scv": 400, "d2rl": 400, "adate": 400}
#: Column of the highway tester's features holding log10(W so far) / 10 (safetybed.sims.testing.tester.FEATURE_NAMES).
HIGHWAY_LOG_WEIGHT_FEATURE = 4
HIGHWAY_LOG_WEIGHT_SCALE = 10.0 * float(np.log(10.0))


def evaluate_highway(scenario: str, *, controller: str, methods: list[str], tests: int | None = None,
                     seed: int = 0, confidence: float = 0.9, until_rhw: float | None = None,
                     max_tests: int | None = None, workers: int = 1, store_path: Path, out_dir: Path | None = None,
                     target_rhw: float = 0.3, bootstrap_resamples: int = 200, d2rl_iterations: int = 60,
                     adate_batches: int = 4, allow_partial: bool = False, progress=None) -> dict[str, Any]:
    """Evaluate ``methods`` on a highway scenario through the batch runner (every test stored in the run store).

    The scenario's ``[testing]`` section (or the defaults) gives NADE's settings; each method runs a derived
    scenario whose ``testing.method`` is set accordingly (``crude``: NDE, no tester). ``scv`` post-processes the
    NADE tests of this call (NADE runs once when both are asked for). D2RL trains on the crash tests of the NADE
    run (or of its own NADE behaviour run), AdaTE runs ``adate_batches`` batches; their proposal files are written
    to ``out_dir``. A run that ends without all its planned tests stored raises
    :class:`~safetybed.errors.IncompleteRunError` unless ``allow_partial`` (the document then lists the
    incomplete runs under ``partial_runs``).
    """
    from safetybed.errors import IncompleteRunError
    from safetybed.evaluate.estimators import crude_estimate, nade_estimate, scv_estimate
    from safetybed.evaluate.highway import SUPPORTED_TASKS, critical_logs_from_run, records_from_logs
    from safetybed.evaluate.methods import SCV_VARIANTS
    from safetybed.runner import RunStore, start_run
    from safetybed.spec.catalogue import load_scenario_arg
    from safetybed.spec.scenario import TestingSpec

    spec, path = load_scenario_arg(scenario)
    if spec.simulator != "highway" or spec.task not in SUPPORTED_TASKS:
        raise InputError(f"{path}: evaluate needs testbed:cut_in, testbed:cut_in_fixed or a highway scenario of task "
                         f"{'|'.join(SUPPORTED_TASKS)}, got simulator {spec.simulator!r} task {spec.task!r}")
    if spec.highway.driver.model != "naturalistic":
        raise InputError(f"{path}: highway.driver.model: evaluate needs naturalistic background drivers, got "
                         f"{spec.highway.driver.model!r}")
    started = time.perf_counter()
    base = spec.testing or TestingSpec()
    folder = Path(out_dir) if out_dir is not None else Path("evaluations") / f"{spec.name.replace('/', '_')}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    run_ids: dict[str, list[str]] = {}
    partial_runs: list[dict[str, Any]] = []
    read: dict[str, list[tuple[bool, list[dict[str, Any]]]]] = {}

    def logs_of(run_id: str) -> list[tuple[bool, list[dict[str, Any]]]]:
        """Per test ``(crashed, critical steps)`` of a finished run, read from the store once."""
        if run_id not in read:
            read[run_id] = critical_logs_from_run(store_path, run_id, allow_partial=allow_partial)
        return read[run_id]

    def records_of(*run_ids_: str):
        return [r for rid in run_ids_ for r in records_from_logs(logs_of(rid))]

    def derived(method: str, proposal_file: Path | None = None):
        testing = TestingSpec.model_validate({
            "method": method, "epsilon": base.epsilon, "lookahead_s": base.lookahead_s,
            "criticality_threshold": base.criticality_threshold, "surrogate": base.surrogate,
            "proposal_file": None if proposal_file is None else str(proposal_file.resolve())})
        return spec.model_copy(update={"testing": testing, "name": f"{spec.name}[{method}]"})

    def run(method: str, n: int, run_seed: int, *, label: str, proposal_file: Path | None = None) -> str:
        with RunStore(store_path) as store:
            try:
                run_id = start_run(derived(method, proposal_file), scenario_path=path, controller=controller,
                                   episodes=n, seed=run_seed, workers=workers, executor="local", store=store)
            except IncompleteRunError as error:
                if not allow_partial:
                    raise
                run_id = error.run_id
                partial_runs.append({"label": label, **store.completeness(run_id).to_json_dict(),
                                     "run_id": run_id})
        run_ids.setdefault(label, []).append(run_id)
        return run_id

    def count(method: str) -> int:
        return first_test_count(method, tests=tests, max_tests=max_tests, defaults=HIGHWAY_DEFAULT_TESTS)

    def until(method: str, estimate_fn, run_fn) -> tuple[Any, int]:
        """Run chunks (each its own seeded run) until the RHW target or the cap is reached."""
        n_first = count(method)
        cap = max_tests if max_tests is not None else 20 * n_first
        chunks: list[Any] = []
        total, chunk_index, n_next = 0, 0, n_first
        while True:
            chunks.append(run_fn(n_next, chunk_index))
            total += n_next
            chunk_index += 1
            result = estimate_fn(chunks)
            rhw = None if result is None else result.rhw
            if until_rhw is None or (rhw is not None and rhw < until_rhw) or total >= cap:
                return result, total
            grow = 1.0 if rhw is None else max((rhw / until_rhw) ** 2 - 1.0, 0.2)
            n_next = int(min(cap - total, max(np.ceil(total * grow * 1.1), 10)))

    def chunk_seed(label: str, chunk: int) -> int:
        """Run seed of chunk ``chunk`` of ``label``: a pure function of (seed, label, chunk)."""
        key = zlib.crc32(label.encode())
        return int(np.random.SeedSequence(seed, spawn_key=(key, chunk)).generate_state(1, dtype=np.uint64)[0]) % (2**63)

    results: list[tuple[Any, int, int, dict[str, Any]]] = []  # (result, tests, training tests, info)
    for index, method in enumerate(methods):
        if method == "crude":
            result, n = until("crude", lambda chunks: crude_estimate([r.crashed for r in records_of(*chunks)],
                                                                     confidence=confidence),
                              lambda k, c: run("nde", k, chunk_seed("crude", c), label="crude"))
            results.append((result, n, 0, {}))
        elif method in ("nade", "scv"):
            if "nade" not in run_ids:  # scv post-processes the NADE tests: run them once
                until("nade", lambda chunks: _safe(nade_estimate, records_of(*chunks), confidence=confidence),
                      lambda k, c: run("nade", k, chunk_seed("nade", c), label="nade"))
            records = records_of(*run_ids["nade"])
            if method == "nade":
                results.append((nade_estimate(records, confidence=confidence), len(records), 0, {}))
            else:
                for variant in SCV_VARIANTS:
                    results.append((scv_estimate(records, variant=variant, cross_fit=True, confidence=confidence),
                                    len(records), 0, {}))
        elif method == "d2rl":
            results.append(_highway_d2rl(
                run=run, count=count, chunk_seed=chunk_seed, nade_runs=run_ids.get("nade", []),
                folder=folder, epsilon=base.epsilon, surrogate=base.surrogate,
                threshold=base.criticality_threshold, iterations=d2rl_iterations, seed=seed,
                confidence=confidence, logs_of=logs_of, records_of=records_of))
        else:  # adate
            results.append(_highway_adate(
                run=run, count=count, chunk_seed=chunk_seed, folder=folder,
                epsilon=base.epsilon, batches=adate_batches, confidence=confidence,
                logs_of=logs_of, records_of=records_of))
        if progress is not None:
            progress(index + 1, len(methods))
    entries = []
    for result, n, training, info in results:
        entry = method_entry(result, tests=n, training_tests=training, target=target_rhw,
                             bootstrap_resamples=bootstrap_resamples, seed=seed)
        entry.update(info)
        entries.append(entry)
    add_ratios(entries)
    document: dict[str, Any] = {
        "scenario": str(path), "scenario_name": spec.name, "controller": controller, "seed": seed,
        "confidence": confidence, "target_rhw": target_rhw, "methods": entries, "runs": run_ids,
        "store": str(store_path), "testing": base.model_dump(), "package_version": __version__,
        "out_dir": str(folder),
        "wall_time_s": time.perf_counter() - started,
    }
    if partial_runs:
        document["partial_runs"] = partial_runs
    return document


def _safe(estimator, records, **options):
    """The estimate, or None when the estimator refuses the data (e.g. no crash yet, while growing a run)."""
    from safetybed.evaluate.estimators import EstimatorInputError

    try:
        return estimator(records, **options)
    except EstimatorInputError:
        return None


def _highway_d2rl(*, run, count, chunk_seed, nade_runs, folder, epsilon, surrogate, threshold, iterations, seed,
                  confidence, logs_of, records_of):
    """D2RL on a highway scenario: crash tests of NADE (behaviour) -> PPO -> a run under the trained policy."""
    import math

    from safetybed.evaluate.d2rl import CrashEpisode, D2RLConfig, train_d2rl
    from safetybed.evaluate.estimators import nade_estimate
    from safetybed.sims.testing.d2rl_proposal import save_policy
    from safetybed.sims.testing.nade import NadeProposal

    behaviour_runs = list(nade_runs)
    if not behaviour_runs:
        behaviour_runs = [run("nade", count("d2rl"), chunk_seed("d2rl-behaviour", 0), label="d2rl-behaviour")]
    logs = [item for rid in behaviour_runs for item in logs_of(rid)]
    training_tests = len(logs)  # the behaviour (NADE) tests D2RL learnt from: part of its cost
    episodes = []
    for crashed, steps in logs:
        if crashed and steps:
            episodes.append(CrashEpisode(
                features=np.array([s["features"] for s in steps], dtype=np.float64),
                p=np.array([s["p"] for s in steps]), q_tilde=np.array([s["q_tilde"] for s in steps]),
                log_weight_b=float(sum(s["log_ratio"] for s in steps))))
    policy, history = train_d2rl(episodes, seed=int(np.random.SeedSequence(seed, spawn_key=(77,)).generate_state(1)[0]),
                                 config=D2RLConfig(iterations=iterations, initial_epsilon=epsilon,
                                                   log_weight_feature=HIGHWAY_LOG_WEIGHT_FEATURE,
                                                   log_weight_scale=HIGHWAY_LOG_WEIGHT_SCALE))
    policy_file = folder / "d2rl_policy.safetensors"
    save_policy(policy, policy_file, base=NadeProposal(epsilon=epsilon, surrogate=surrogate, threshold=threshold))
    run_id = run("d2rl", count("d2rl"), chunk_seed("d2rl", 0), label="d2rl", proposal_file=policy_file)
    result = nade_estimate(records_of(run_id), confidence=confidence)
    from dataclasses import replace

    info = {"d2rl_training_crash_episodes": len(episodes), "d2rl_policy": str(policy_file),
            "d2rl_training_second_moment_ratio": [h for h in history["second_moment_ratio"][:: max(1, math.ceil(
                len(history["second_moment_ratio"]) / 20))]]}
    return replace(result, method="d2rl"), result.n, training_tests, info


def _highway_adate(*, run, count, chunk_seed, folder, epsilon, batches, confidence, logs_of, records_of):
    """AdaTE on a highway scenario: :func:`~safetybed.evaluate.adate.run_adate` with each batch a stored run."""
    from dataclasses import replace

    from safetybed.evaluate.adate import StepLog, batch_sizes, run_adate
    from safetybed.evaluate.estimators import nade_estimate
    from safetybed.sims.testing.adate_proposal import save_proposal
    from safetybed.sims.testing.lookahead import DEFAULT_SURROGATES

    all_records, batch_runs = [], []

    def run_batch(proposal, size: int):
        batch = len(batch_runs)
        proposal_file = folder / f"adate_proposal_{batch}.json"
        save_proposal(proposal, proposal_file)
        run_id = run("adate", size, chunk_seed("adate", batch), label="adate", proposal_file=proposal_file)
        batch_runs.append(run_id)
        all_records.extend(records_of(run_id))
        return [(crashed, [StepLog(state_key=tuple(s["state_key"]), action=int(s["action"]), p=float(s["p"]),
                                   q=(1 - s["epsilon"]) * s["q_tilde"] + s["epsilon"] * s["p"],
                                   challenge=np.asarray(s["challenge"], dtype=np.float64)) for s in steps])
                for crashed, steps in logs_of(run_id)]

    result = run_adate(run_batch, m=len(DEFAULT_SURROGATES), sizes=batch_sizes(count("adate"), batches),
                       epsilon=epsilon)
    estimate = nade_estimate(all_records, confidence=confidence)
    return replace(estimate, method="adate"), estimate.n, 0, {
        "adate_weights": [w.tolist() for w in result["weights"]], "adate_target_pairs": len(result["target"])}
