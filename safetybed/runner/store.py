"""The run store: one SQLite file (WAL mode) holding runs, episodes, per-step logs and decision logs.

Every finished episode is written in its own transaction together with its step and decision logs,
so a run killed at any instant leaves only whole episodes behind and ``--resume`` re-runs exactly
the missing ones. Tables::

    runs(run_id PK, created_utc, scenario_name, scenario_path, scenario_json, controller, seed,
         episodes, executor, workers, package_version, status, finished_utc)
    episodes(run_id, idx, seed, episode_return, length, collision, success, terminated, truncated,
             min_ttc_s, min_gap_m, progress_m, violations, wall_time_s)        PK (run_id, idx)
    steps(run_id, idx, t, data JSON)                                         PK (run_id, idx, t)
    decisions(run_id, idx, k, data JSON)                                     PK (run_id, idx, k)
    failures(run_id, idx, kind, error, detail, submissions)                  PK (run_id, idx)
    run_weights(run_id PK, weights_sha256)   the controller weights a run was played with (the runner stores
                                             the controller *reference*; certification must not reuse a run
                                             played before the weights were retrained)

A run's ``status`` is ``running`` while episodes execute, ``complete`` only when :meth:`RunStore.completeness`
finds every planned index ``0..episodes-1`` stored exactly once, and ``partial`` otherwise (some episodes
failed or were lost; ``failures`` says which and why, and ``--resume`` runs them again). A run whose process
was killed stays ``running`` until it is resumed.
"""

from __future__ import annotations

import json
import math
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safetybed import __version__
from safetybed.errors import InputError
from safetybed.jsonsafe import finite_or_none
from safetybed.runner.executors import EpisodeFailure
from safetybed.sims.rollout import EpisodeRecord

DEFAULT_STORE = Path("runs") / "safetybed.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_utc TEXT NOT NULL,
    scenario_name TEXT NOT NULL,
    scenario_path TEXT NOT NULL,
    scenario_json TEXT NOT NULL,
    controller TEXT NOT NULL,
    seed INTEGER NOT NULL,
    episodes INTEGER NOT NULL,
    executor TEXT NOT NULL,
    workers INTEGER NOT NULL,
    package_version TEXT NOT NULL,
    status TEXT NOT NULL,
    finished_utc TEXT
);
CREATE TABLE IF NOT EXISTS episodes (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    idx INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    episode_return REAL NOT NULL,
    length INTEGER NOT NULL,
    collision INTEGER NOT NULL,
    success INTEGER NOT NULL,
    terminated INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    min_ttc_s REAL,
    min_gap_m REAL,
    progress_m REAL NOT NULL,
    violations INTEGER NOT NULL,
    wall_time_s REAL NOT NULL,
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, t INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (run_id, idx, t)
);
CREATE TABLE IF NOT EXISTS decisions (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, k INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (run_id, idx, k)
);
CREATE TABLE IF NOT EXISTS run_weights (
    run_id TEXT PRIMARY KEY REFERENCES runs(run_id), weights_sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    run_id TEXT NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL, error TEXT NOT NULL, detail TEXT NOT NULL,
    submissions INTEGER NOT NULL,
    PRIMARY KEY (run_id, idx)
);
"""

RUN_STATUSES = ("running", "partial", "complete")

EPISODE_COLUMNS = ("idx", "seed", "episode_return", "length", "collision", "success", "terminated", "truncated",
                   "min_ttc_s", "min_gap_m", "progress_m", "violations", "wall_time_s")


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    created_utc: str
    scenario_name: str
    scenario_path: str
    scenario_json: str
    controller: str
    seed: int
    episodes: int
    executor: str
    workers: int
    package_version: str
    status: str
    finished_utc: str | None


def format_indices(indices: Iterable[int], *, limit: int = 20) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``; past ``limit`` ranges the rest is counted, not listed."""
    ranges: list[list[int]] = []
    for index in sorted(indices):
        if ranges and index == ranges[-1][1] + 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    parts = [str(low) if low == high else f"{low}-{high}" for low, high in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"... ({len(ranges) - limit} more ranges)")
    return ", ".join(parts)


@dataclass(frozen=True)
class Completeness:
    """Which of a run's planned episode indices the store holds, and how often (the runner's invariant)."""

    run_id: str
    planned: int
    stored: int
    missing: tuple[int, ...]
    duplicated: tuple[int, ...]
    unexpected: tuple[int, ...]
    failures: tuple[EpisodeFailure, ...]

    @property
    def complete(self) -> bool:
        """Exactly the indices ``0..planned-1``, each once."""
        return not (self.missing or self.duplicated or self.unexpected)

    def describe(self) -> str:
        """One line: what is wrong (empty when complete)."""
        if self.complete:
            return ""
        parts = [f"{self.stored} episode records stored for {self.planned} planned"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing (index {format_indices(self.missing)})")
        if self.duplicated:
            parts.append(f"{len(self.duplicated)} stored more than once (index {format_indices(self.duplicated)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} outside 0..{self.planned - 1} "
                         f"(index {format_indices(self.unexpected)})")
        for failure in self.failures[:5]:
            parts.append(f"episode {failure.index} {'raised' if failure.kind == 'exception' else 'was lost'}: "
                         f"{failure.error}")
        if len(self.failures) > 5:
            parts.append(f"{len(self.failures) - 5} more failures (safetybed runs show {self.run_id})")
        return "; ".join(parts)

    def to_json_dict(self) -> dict[str, Any]:
        return {"complete": self.complete, "planned": self.planned, "stored": self.stored,
                "missing_indices": list(self.missing), "duplicated_indices": list(self.duplicated),
                "unexpected_indices": list(self.unexpected),
                "failures": [{"index": f.index, "kind": f.kind, "error": f.error, "submissions": f.submissions}
                             for f in self.failures]}


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunStore:
    """A connection to one store file; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path = DEFAULT_STORE, *, create: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise InputError(f"--store {self.path}: no run store at this path")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise InputError(f"--store {self.path}: not a safetybed SQLite store ({error})") from None
        self.conn.row_factory = sqlite3.Row

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs -----------------------------------------------------------------------------------------------
    def create_run(self, *, scenario_name: str, scenario_path: str, scenario_json: str, controller: str,
                   seed: int, episodes: int, executor: str, workers: int) -> str:
        run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        with self._transaction():
            self.conn.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, _utc_now(), scenario_name, scenario_path, scenario_json, controller, seed, episodes,
                 executor, workers, __version__, "running", None))
        return run_id

    def get_run(self, run_id: str) -> RunInfo:
        row = self.conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise InputError(f"run {run_id!r}: not found in store {self.path}")
        return RunInfo(**dict(row))

    def list_runs(self) -> list[tuple[RunInfo, int]]:
        rows = self.conn.execute(
            "SELECT runs.*, (SELECT COUNT(*) FROM episodes e WHERE e.run_id = runs.run_id) AS done "
            "FROM runs ORDER BY created_utc, run_id").fetchall()
        result = []
        for row in rows:
            data = dict(row)
            done = data.pop("done")
            result.append((RunInfo(**data), done))
        return result

    def record_weights(self, run_id: str, weights_sha256: str) -> None:
        """Remember the sha256 of the controller weights ``run_id`` is played with."""
        with self._transaction():
            self.conn.execute("INSERT OR REPLACE INTO run_weights VALUES (?, ?)", (run_id, weights_sha256))

    def run_weights(self) -> dict[str, str]:
        """run id -> weights sha256, for the runs whose weights were recorded."""
        rows = self.conn.execute("SELECT run_id, weights_sha256 FROM run_weights").fetchall()
        played_with = {row[0]: row[1] for row in rows}
        # Stores written before this table existed kept the same data in certify's own table.
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'certify_runs'").fetchone():
            for run_id, sha in self.conn.execute("SELECT run_id, weights_sha256 FROM certify_runs"):
                played_with.setdefault(run_id, sha)
        return played_with

    def mark_status(self, run_id: str, status: str) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"status: expected one of {', '.join(RUN_STATUSES)}, got {status!r}")
        finished = _utc_now() if status == "complete" else None
        with self._transaction():
            self.conn.execute("UPDATE runs SET status = ?, finished_utc = ? WHERE run_id = ?",
                              (status, finished, run_id))

    # -- episodes -------------------------------------------------------------------------------------------
    def done_indices(self, run_id: str) -> set[int]:
        return {row[0] for row in self.conn.execute("SELECT idx FROM episodes WHERE run_id = ?", (run_id,))}

    def completeness(self, run_id: str) -> Completeness:
        """Count the stored records of each index against the run's plan (does not trust the primary key)."""
        planned = self.get_run(run_id).episodes
        counts = dict(self.conn.execute("SELECT idx, COUNT(*) FROM episodes WHERE run_id = ? GROUP BY idx",
                                        (run_id,)).fetchall())
        failures = tuple(EpisodeFailure(row["idx"], row["kind"], row["error"], row["submissions"], row["detail"])
                         for row in self.conn.execute("SELECT * FROM failures WHERE run_id = ? ORDER BY idx",
                                                      (run_id,)))
        return Completeness(run_id=run_id, planned=planned, stored=sum(counts.values()),
                            missing=tuple(i for i in range(planned) if i not in counts),
                            duplicated=tuple(sorted(i for i, n in counts.items() if n > 1)),
                            unexpected=tuple(sorted(i for i in counts if not 0 <= i < planned)),
                            failures=failures)

    def add_failure(self, run_id: str, failure: EpisodeFailure) -> None:
        """Remember why episode ``failure.index`` has no record (replaced by its record once it succeeds)."""
        with self._transaction():
            self.conn.execute("INSERT OR REPLACE INTO failures VALUES (?,?,?,?,?,?)",
                              (run_id, failure.index, failure.kind, failure.error, failure.detail,
                               failure.submissions))

    def add_episode(self, run_id: str, record: EpisodeRecord) -> None:
        """Write one finished episode with its logs, atomically (and forget an earlier failure of it)."""
        with self._transaction():
            self.conn.execute("DELETE FROM failures WHERE run_id = ? AND idx = ?", (run_id, record.index))
            self.conn.execute(
                f"INSERT INTO episodes (run_id, {', '.join(EPISODE_COLUMNS)}) VALUES ({', '.join('?' * 14)})",
                (run_id, record.index, record.seed, record.episode_return, record.length, int(record.collision),
                 int(record.success), int(record.terminated), int(record.truncated),
                 finite_or_none(record.min_ttc_s), finite_or_none(record.min_gap_m), record.progress_m,
                 record.violations, record.wall_time_s))
            if record.steps:
                self.conn.executemany("INSERT INTO steps VALUES (?,?,?,?)",
                                      [(run_id, record.index, k, json.dumps(step))
                                       for k, step in enumerate(record.steps)])
            if record.decisions:
                self.conn.executemany("INSERT INTO decisions VALUES (?,?,?,?)",
                                      [(run_id, record.index, k, json.dumps(decision))
                                       for k, decision in enumerate(record.decisions)])

    def episodes(self, run_id: str, *, with_logs: bool = False) -> list[EpisodeRecord]:
        """All stored episodes of a run, ordered by index."""
        rows = self.conn.execute(
            f"SELECT {', '.join(EPISODE_COLUMNS)} FROM episodes WHERE run_id = ? ORDER BY idx", (run_id,)).fetchall()
        steps: dict[int, list[dict[str, Any]]] = {}
        decisions: dict[int, list[dict[str, Any]]] = {}
        if with_logs:
            for idx, data in self.conn.execute("SELECT idx, data FROM steps WHERE run_id = ? ORDER BY idx, t",
                                               (run_id,)):
                steps.setdefault(idx, []).append(json.loads(data))
            for idx, data in self.conn.execute(
                    "SELECT idx, data FROM decisions WHERE run_id = ? ORDER BY idx, k", (run_id,)):
                decisions.setdefault(idx, []).append(json.loads(data))
        return [EpisodeRecord(index=row["idx"], seed=row["seed"], episode_return=row["episode_return"],
                              length=row["length"], collision=bool(row["collision"]), success=bool(row["success"]),
                              terminated=bool(row["terminated"]), truncated=bool(row["truncated"]),
                              min_ttc_s=math.inf if row["min_ttc_s"] is None else row["min_ttc_s"],
                              min_gap_m=math.inf if row["min_gap_m"] is None else row["min_gap_m"],
                              progress_m=row["progress_m"], violations=row["violations"],
                              wall_time_s=row["wall_time_s"], steps=steps.get(row["idx"]),
                              decisions=decisions.get(row["idx"]))
                for row in rows]

    def _transaction(self) -> _Transaction:
        return _Transaction(self.conn)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def iter_rows(records: list[EpisodeRecord]) -> Iterator[dict[str, Any]]:
    """Flat rows for export (no logs)."""
    for record in records:
        row = {name: getattr(record, name) for name in EpisodeRecord.DETERMINISTIC_FIELDS}
        row["wall_time_s"] = record.wall_time_s
        yield row
