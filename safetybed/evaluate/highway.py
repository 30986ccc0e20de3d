"""Read stored highway tests back for the crash-rate estimators.

The NADE tester (:mod:`safetybed.sims.testing.tester`) logs every critical step of a test in
``info["decisions"]``; the batch runner stores them in the run store's ``decisions`` table. The functions here
read a finished run back as :class:`~safetybed.evaluate.records.TestRecord` s (for the estimators) or as the raw
per-test critical-step logs (for D2RL's and AdaTE's training).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetybed.evaluate.records import TestRecord
from safetybed.sims.testing.tester import FEATURE_NAMES, SUPPORTED_TASKS


def records_from_run(store_path: str | Path, run_id: str, *, allow_partial: bool = False) -> list[TestRecord]:
    """The tests of a stored run as :class:`TestRecord` s, in episode order.

    ``crashed`` is the episode's collision flag; ``p``, ``q_tilde``, ``epsilon`` come from its decision-log
    entries with ``"critical": true`` (written by :class:`HighwayTester`), in the order they were taken. A run
    without a tester (NDE) gives records with empty sequences. Raises
    :class:`~safetybed.errors.InputError` if the store or the run does not exist, and
    :class:`~safetybed.errors.IncompleteRunError` if the run lacks planned tests (unless ``allow_partial``).
    """
    return records_from_logs(critical_logs_from_run(store_path, run_id, allow_partial=allow_partial))


#: The :data:`FEATURE_NAMES` that make a record's ``state`` (the kinematic ones, known before the draw).
STATE_FEATURES: tuple[str, ...] = ("relative_position", "range_rate", "ego_speed", "lane_relation", "vehicle_speed")
_STATE_COLUMNS = tuple(FEATURE_NAMES.index(name) for name in STATE_FEATURES)


def records_from_logs(logs: list[tuple[bool, list[dict[str, Any]]]]) -> list[TestRecord]:
    """:class:`TestRecord` s from the per-test ``(crashed, critical steps)`` of :func:`critical_logs_from_run`.

    ``criticality`` and ``state`` (:data:`STATE_FEATURES`) are filled where every step of the test logged them.
    """
    records = []
    for crashed, steps in logs:
        covariates: dict[str, Any] = {}
        if all("criticality" in d and len(d.get("features") or ()) == len(FEATURE_NAMES) for d in steps):
            covariates = {"criticality": tuple(float(d["criticality"]) for d in steps),
                          "state": tuple(tuple(float(d["features"][c]) for c in _STATE_COLUMNS) for d in steps)}
        records.append(TestRecord(crashed=crashed, p=tuple(float(d["p"]) for d in steps),
                                  q_tilde=tuple(float(d["q_tilde"]) for d in steps),
                                  epsilon=tuple(float(d["epsilon"]) for d in steps), **covariates))
    return records


def critical_logs_from_run(store_path: str | Path, run_id: str, *,
                           allow_partial: bool = False) -> list[tuple[bool, list[dict[str, Any]]]]:
    """Per test of a stored run: ``(crashed, critical-step log entries)`` in episode order (for D2RL / AdaTE).

    A run without every planned test stored is refused unless ``allow_partial``.
    """
    from safetybed.runner.batch import stored_episodes
    from safetybed.runner.store import RunStore

    with RunStore(store_path, create=False) as store:
        store.get_run(run_id)
        episodes = stored_episodes(store, run_id, with_logs=True, allow_partial=allow_partial)
    return [(bool(e.collision), [d for d in (e.decisions or []) if d.get("critical")]) for e in episodes]


__all__ = ["STATE_FEATURES", "SUPPORTED_TASKS", "critical_logs_from_run", "records_from_logs", "records_from_run"]
