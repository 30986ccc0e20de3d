"""The crash-rate evaluation methods, one object each: how it produces its tests and its estimates.

Like ``control/algorithms/ALGORITHMS``, :data:`METHODS` maps a method name to the one object that knows the
method; the testbed pipeline (:func:`safetybed.evaluate.methods.run_testbed_method`) and the highway pipeline
(:func:`safetybed.evaluate.pipeline.evaluate_highway`) iterate over it instead of branching on names. A method
has

* ``rows``: the names of the estimates it reports (SCV: one per variant);
* ``estimates(batch_or_records, confidence=...)``: those estimates from its tests;
* ``run_testbed(tables, ...)``: its tests on the known-answer testbed -> :class:`~safetybed.evaluate.methods.MethodRun`;
* ``run_highway(session)``: its tests through the batch runner (:class:`HighwaySession`) -> report rows.

The order of :data:`METHODS` is part of the seeding (``method_seed_for`` uses a method's position): new methods go
at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from safetybed import seeding_keys
from safetybed.evaluate.estimators import (
    EstimateResult,
    EstimatorInputError,
    crude_estimate,
    nade_estimate,
    scv_estimate,
)
from safetybed.sims.testing.tester import FEATURE_NAMES

#: The SCV variants ``scv`` reports, in this order (the first is the method's primary estimate).
SCV_VARIANTS = ("martingale", "stratified", "learned")
#: Column of the highway tester's features holding log10(W so far) / 10, and the scale back to a natural log.
HIGHWAY_LOG_WEIGHT_FEATURE = FEATURE_NAMES.index("log_weight")
HIGHWAY_LOG_WEIGHT_SCALE = 10.0 * float(np.log(10.0))
#: Default tests per method on a highway scenario (crude MC's tests needed are extrapolated from its variance).
HIGHWAY_DEFAULT_TESTS = {"crude": 1000, "nade": 400, "scv": 400, "d2rl": 400, "adate": 400}

#: One report row: (estimate, tests it used, training tests, extra fields).
Row = tuple[EstimateResult, int, int, dict[str, Any]]


def _renamed(result: EstimateResult, method: str) -> EstimateResult:
    return replace(result, method=method)


def _safe(estimator, records, **options):
    """The estimate, or None when the estimator refuses the data (e.g. no crash yet, while growing a run)."""
    try:
        return estimator(records, **options)
    except EstimatorInputError:
        return None


def first_test_count(method: str, *, tests: int | None, max_tests: int | None, defaults: dict[str, int]) -> int:
    """Tests of a method's first (or only) batch: ``--tests`` or the method's default, never above ``--max-tests``.

    ``--max-tests`` caps the tests of every method in both modes: without ``--until-rhw`` it lowers the default
    count; with it, it also stops the growth.
    """
    from safetybed.errors import InputError

    if tests is not None and max_tests is not None and tests > max_tests:
        raise InputError(f"--tests {tests} exceeds --max-tests {max_tests}; lower one of them")
    count = tests if tests is not None else defaults[method]
    return count if max_tests is None else min(count, max_tests)


# -- the highway runs -------------------------------------------------------------------------------------------
@dataclass
class HighwaySession:
    """One ``evaluate_highway`` call: the derived scenarios, the runs it stored and the tests read back."""

    spec: Any  # ScenarioSpec
    path: Path
    controller: str
    testing: Any  # TestingSpec: NADE's settings, shared by every method
    store_path: Path
    folder: Path
    seed: int
    confidence: float
    workers: int = 1
    tests: int | None = None
    max_tests: int | None = None
    until_rhw: float | None = None
    allow_partial: bool = False
    d2rl_iterations: int = 60
    adate_batches: int = 4
    run_ids: dict[str, list[str]] = field(default_factory=dict)
    partial_runs: list[dict[str, Any]] = field(default_factory=list)
    _read: dict[str, list] = field(default_factory=dict, repr=False)

    def logs_of(self, run_id: str) -> list[tuple[bool, list[dict[str, Any]]]]:
        """Per test ``(crashed, critical steps)`` of a finished run, read from the store once."""
        from safetybed.evaluate.highway import critical_logs_from_run

        if run_id not in self._read:
            self._read[run_id] = critical_logs_from_run(self.store_path, run_id, allow_partial=self.allow_partial)
        return self._read[run_id]

    def records_of(self, *run_ids: str):
        from safetybed.evaluate.highway import records_from_logs

        return [r for rid in run_ids for r in records_from_logs(self.logs_of(rid))]

    def derived(self, method: str, proposal_file: Path | None = None):
        """The scenario with ``testing.method = method`` (``nde``: no tester) and NADE's other settings."""
        from safetybed.spec.scenario import TestingSpec

        base = self.testing
        testing = TestingSpec.model_validate({
            "method": method, "epsilon": base.epsilon, "lookahead_s": base.lookahead_s,
            "criticality_threshold": base.criticality_threshold, "surrogate": base.surrogate,
            "proposal_file": None if proposal_file is None else str(proposal_file.resolve())})
        return self.spec.model_copy(update={"testing": testing, "name": f"{self.spec.name}[{method}]"})

    def run(self, method: str, n: int, run_seed: int, *, label: str, proposal_file: Path | None = None) -> str:
        """One stored run of ``n`` tests; an incomplete one is refused unless ``allow_partial``."""
        from safetybed.errors import IncompleteRunError
        from safetybed.runner import RunStore, start_run

        with RunStore(self.store_path) as store:
            try:
                run_id = start_run(self.derived(method, proposal_file), scenario_path=self.path,
                                   controller=self.controller, episodes=n, seed=run_seed, workers=self.workers,
                                   executor="local", store=store)
            except IncompleteRunError as error:
                if not self.allow_partial:
                    raise
                run_id = error.run_id
                self.partial_runs.append({"label": label, **store.completeness(run_id).to_json_dict(),
                                          "run_id": run_id})
        self.run_ids.setdefault(label, []).append(run_id)
        return run_id

    def count(self, method: str) -> int:
        return first_test_count(method, tests=self.tests, max_tests=self.max_tests, defaults=HIGHWAY_DEFAULT_TESTS)

    def chunk_seed(self, label: str, chunk: int) -> int:
        """Run seed of chunk ``chunk`` of ``label``: a pure function of (seed, label, chunk)."""
        key = seeding_keys.label_key(label)
        state = np.random.SeedSequence(self.seed, spawn_key=(key, chunk)).generate_state(1, dtype=np.uint64)[0]
        return int(state) % (2**63)

    def until(self, method: str, estimate_fn, run_fn) -> tuple[Any, int]:
        """Run chunks (each its own seeded run) until the RHW target or the cap is reached."""
        n_first = self.count(method)
        cap = self.max_tests if self.max_tests is not None else 20 * n_first
        chunks: list[Any] = []
        total, chunk_index, n_next = 0, 0, n_first
        while True:
            chunks.append(run_fn(n_next, chunk_index))
            total += n_next
            chunk_index += 1
            result = estimate_fn(chunks)
            rhw = None if result is None else result.rhw
            if self.until_rhw is None or (rhw is not None and rhw < self.until_rhw) or total >= cap:
                return result, total
            grow = 1.0 if rhw is None else max((rhw / self.until_rhw) ** 2 - 1.0, 0.2)
            n_next = int(min(cap - total, max(np.ceil(total * grow * 1.1), 10)))

    def nade_records(self):
        """NADE's tests of this call, run (once, grown by ``until``) on first use; SCV and D2RL reuse them."""
        if "nade" not in self.run_ids:
            self.until("nade", lambda chunks: _safe(nade_estimate, self.records_of(*chunks),
                                                    confidence=self.confidence),
                       lambda k, c: self.run("nade", k, self.chunk_seed("nade", c), label="nade"))
        return self.records_of(*self.run_ids["nade"])


# -- the methods ------------------------------------------------------------------------------------------------
class CrudeMonteCarlo:
    """Naturalistic (NDE) testing, the crash indicator averaged."""

    name = "crude"
    rows = ("crude",)

    def estimates(self, batch, *, confidence: float) -> list[EstimateResult]:
        return [crude_estimate(batch.crashed, confidence=confidence)]

    def run_testbed(self, tables, *, tests: int, test_rng, seed_stream, confidence: float, options, progress=None):
        return tables.run(tests, rng=test_rng), 0, {}

    def run_highway(self, session: HighwaySession) -> list[Row]:
        result, n = session.until(
            "crude", lambda chunks: crude_estimate([r.crashed for r in session.records_of(*chunks)],
                                                   confidence=session.confidence),
            lambda k, c: session.run("nde", k, session.chunk_seed("crude", c), label="crude"))
        return [(result, n, 0, {})]


class NadeImportanceSampling:
    """NADE (Feng et al. 2021): importance sampling of the critical steps' maneuvers."""

    name = "nade"
    rows = ("nade",)

    def estimates(self, batch, *, confidence: float) -> list[EstimateResult]:
        records = batch.records() if hasattr(batch, "records") else batch
        return [_renamed(nade_estimate(records, confidence=confidence), self.name)]

    def run_testbed(self, tables, *, tests: int, test_rng, seed_stream, confidence: float, options, progress=None):
        from safetybed.sims.testing.nade import NadeProposal

        return tables.run(tests, rng=test_rng, table=tables.tabulate(NadeProposal())), 0, {}

    def run_highway(self, session: HighwaySession) -> list[Row]:
        records = session.nade_records()
        return [(nade_estimate(records, confidence=session.confidence), len(records), 0, {})]


class SparseControlVariates(NadeImportanceSampling):
    """SCV (Yang et al. 2022) on NADE's very tests: martingale, stratified and learned variants, cross-fitted."""

    name = "scv"
    rows = tuple(f"scv-{variant}" for variant in SCV_VARIANTS)

    def estimates(self, batch, *, confidence: float) -> list[EstimateResult]:
        records = batch.records() if hasattr(batch, "records") else batch
        return [scv_estimate(records, variant=variant, cross_fit=True, confidence=confidence)
                for variant in SCV_VARIANTS]

    def run_highway(self, session: HighwaySession) -> list[Row]:
        records = session.nade_records()
        return [(result, len(records), 0, {}) for result in self.estimates(records, confidence=session.confidence)]


class DenseRL(NadeImportanceSampling):
    """D2RL (Feng et al. 2023): a PPO-trained defensive weight on NADE's critical steps."""

    name = "d2rl"
    rows = ("d2rl",)

    def train_testbed(self, tables, *, seed_stream, behaviour_tests: int, iterations: int, progress=None):
        """NADE behaviour tests, then PPO on their crash episodes; returns (policy, info, behaviour tests run)."""
        from safetybed.evaluate.d2rl import D2RLConfig, train_d2rl
        from safetybed.evaluate.testbed import LOG_WEIGHT_FEATURE, crash_episodes
        from safetybed.sims.testing.nade import NadeProposal

        behaviour_stream, train_stream = seed_stream.spawn(2)
        behaviour = tables.run(behaviour_tests, rng=np.random.default_rng(behaviour_stream),
                               table=tables.tabulate(NadeProposal()))
        episodes = crash_episodes(tables, behaviour)
        policy, history = train_d2rl(episodes, seed=int(train_stream.generate_state(1)[0]),
                                     config=D2RLConfig(iterations=iterations, log_weight_feature=LOG_WEIGHT_FEATURE),
                                     progress=progress)
        info = {"training_crash_episodes": len(episodes),
                "training_second_moment_ratio": history["second_moment_ratio"], "policy": policy}
        return policy, info, behaviour.n

    def run_testbed(self, tables, *, tests: int, test_rng, seed_stream, confidence: float, options, progress=None):
        from safetybed.sims.testing.d2rl_proposal import D2RLProposal

        policy, info, training = self.train_testbed(tables, seed_stream=seed_stream,
                                                    behaviour_tests=options["d2rl_behaviour_tests"],
                                                    iterations=options["d2rl_iterations"], progress=progress)
        return tables.run(tests, rng=test_rng, table=tables.tabulate(D2RLProposal(policy=policy))), training, info

    def run_highway(self, session: HighwaySession) -> list[Row]:
        """Crash tests of NADE (behaviour) -> PPO -> a run under the trained policy."""
        from safetybed.evaluate.d2rl import CrashEpisode, D2RLConfig, train_d2rl
        from safetybed.sims.testing.d2rl_proposal import save_policy
        from safetybed.sims.testing.nade import NadeProposal

        base = session.testing
        behaviour_runs = list(session.run_ids.get("nade", []))
        if not behaviour_runs:
            behaviour_runs = [session.run("nade", session.count("d2rl"), session.chunk_seed("d2rl-behaviour", 0),
                                          label="d2rl-behaviour")]
        logs = [item for rid in behaviour_runs for item in session.logs_of(rid)]
        training_tests = len(logs)  # the behaviour (NADE) tests D2RL learnt from: part of its cost
        episodes = [CrashEpisode(features=np.array([s["features"] for s in steps], dtype=np.float64),
                                 p=np.array([s["p"] for s in steps]), q_tilde=np.array([s["q_tilde"] for s in steps]),
                                 log_weight_b=float(sum(s["log_ratio"] for s in steps)))
                    for crashed, steps in logs if crashed and steps]
        training_seed = np.random.SeedSequence(session.seed, spawn_key=(seeding_keys.HIGHWAY_D2RL_TRAINING,))
        policy, history = train_d2rl(episodes, seed=int(training_seed.generate_state(1)[0]),
                                     config=D2RLConfig(iterations=session.d2rl_iterations,
                                                       initial_epsilon=base.epsilon,
                                                       log_weight_feature=HIGHWAY_LOG_WEIGHT_FEATURE,
                                                       log_weight_scale=HIGHWAY_LOG_WEIGHT_SCALE))
        policy_file = session.folder / "d2rl_policy.safetensors"
        save_policy(policy, policy_file, base=NadeProposal(epsilon=base.epsilon, surrogate=base.surrogate,
                                                           threshold=base.criticality_threshold))
        run_id = session.run("d2rl", session.count("d2rl"), session.chunk_seed("d2rl", 0), label="d2rl",
                             proposal_file=policy_file)
        result = nade_estimate(session.records_of(run_id), confidence=session.confidence)
        ratios = history["second_moment_ratio"]
        info = {"d2rl_training_crash_episodes": len(episodes), "d2rl_policy": str(policy_file),
                "d2rl_training_second_moment_ratio": list(ratios[:: max(1, math.ceil(len(ratios) / 20))])}
        return [(_renamed(result, self.name), result.n, training_tests, info)]


class AdaptiveTestingEnvironment(NadeImportanceSampling):
    """AdaTE (Yang et al. 2024): surrogate weights by a QP, a dense target, gap-driven sampling; batches pooled."""

    name = "adate"
    rows = ("adate",)

    def run_testbed(self, tables, *, tests: int, test_rng, seed_stream, confidence: float, options, progress=None):
        from safetybed.evaluate.adate import batch_sizes, run_adate
        from safetybed.evaluate.testbed import TestBatch, adate_batch_runner

        sink: list = []
        result = run_adate(adate_batch_runner(tables, rng=test_rng, sink=sink), m=len(tables.bed.surrogates),
                           sizes=batch_sizes(tests, options["adate_batches"]), progress=progress)
        return TestBatch.concatenate(sink), 0, {"weights": [w.tolist() for w in result["weights"]]}

    def run_highway(self, session: HighwaySession) -> list[Row]:
        """:func:`~safetybed.evaluate.adate.run_adate` with each batch a stored run."""
        from safetybed.evaluate.adate import StepLog, batch_sizes, run_adate
        from safetybed.sims.testing.adate_proposal import save_proposal
        from safetybed.sims.testing.lookahead import DEFAULT_SURROGATES

        all_records, batch_runs = [], []

        def run_batch(proposal, size: int):
            batch = len(batch_runs)
            proposal_file = session.folder / f"adate_proposal_{batch}.json"
            save_proposal(proposal, proposal_file)
            run_id = session.run("adate", size, session.chunk_seed("adate", batch), label="adate",
                                 proposal_file=proposal_file)
            batch_runs.append(run_id)
            all_records.extend(session.records_of(run_id))
            return [(crashed, [StepLog(state_key=tuple(s["state_key"]), action=int(s["action"]), p=float(s["p"]),
                                       q=(1 - s["epsilon"]) * s["q_tilde"] + s["epsilon"] * s["p"],
                                       challenge=np.asarray(s["challenge"], dtype=np.float64)) for s in steps])
                    for crashed, steps in session.logs_of(run_id)]

        result = run_adate(run_batch, m=len(DEFAULT_SURROGATES),
                           sizes=batch_sizes(session.count("adate"), session.adate_batches),
                           epsilon=session.testing.epsilon)
        estimate = nade_estimate(all_records, confidence=session.confidence)
        return [(_renamed(estimate, self.name), estimate.n, 0, {
            "adate_weights": [w.tolist() for w in result["weights"]], "adate_target_pairs": len(result["target"])})]


#: Every evaluation method by name, in the order of their seeds.
METHODS: dict[str, Any] = {method.name: method for method in (
    CrudeMonteCarlo(), NadeImportanceSampling(), SparseControlVariates(), DenseRL(), AdaptiveTestingEnvironment())}

__all__ = ["HIGHWAY_DEFAULT_TESTS", "METHODS", "SCV_VARIANTS", "HighwaySession", "first_test_count"]
