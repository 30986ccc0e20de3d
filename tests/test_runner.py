"""Batch runner guarantees: seeding, worker-count and executor independence, kill-and-resume, export."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from safetybed.runner import RunStore, episode_seed, episode_sequence, resume_run, start_run
from safetybed.spec import load_scenario
from safetybed.spec.catalogue import load_scenario_arg

from .conftest import REPO_ROOT


def small_highway(tmp_path: Path, *, steps: int = 8) -> Path:
    """The catalogue cut-in family, shortened so a test run takes seconds."""
    path = tmp_path / "cut_in_short.toml"
    base = REPO_ROOT / "scenarios" / "highway" / "cut_in.toml"
    path.write_text(f'extends = "{base}"\nname = "test/cut_in_short"\nepisode_steps = {steps}\n', encoding="utf-8")
    return path


def stored_count(store_path: Path) -> int:
    """Episodes stored so far in a store another process is writing (0 while it is not there yet)."""
    if not store_path.exists():
        return 0
    try:
        with sqlite3.connect(store_path, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def idm_run_command(spec_path: Path, store_path: Path, *, episodes: int, seed: int) -> list[str]:
    """``safetybed run SPEC --controller builtin:idm`` on 2 local workers, as a subprocess command line."""
    return [sys.executable, "-m", "safetybed", "run", str(spec_path), "--controller", "builtin:idm",
            "--episodes", str(episodes), "--workers", "2", "--seed", str(seed), "--store", str(store_path), "--json"]


def outcomes(store: RunStore, run_id: str):
    return [record.outcome() for record in store.episodes(run_id, with_logs=True)]


# -- seeding --------------------------------------------------------------------------------------------------
def test_episode_sequence_matches_spawn():
    children = np.random.SeedSequence(1234).spawn(7)
    for index, child in enumerate(children):
        assert episode_sequence(1234, index).generate_state(4).tolist() == child.generate_state(4).tolist()


def test_episode_seeds_are_distinct_and_stable():
    seeds = [episode_seed(0, i) for i in range(2000)]
    assert len(set(seeds)) == len(seeds)
    assert episode_seed(0, 5) == episode_seed(0, 5)
    assert episode_seed(1, 5) != episode_seed(0, 5)


# -- store ----------------------------------------------------------------------------------------------------
def test_store_uses_wal_and_rejects_duplicate_episode(tmp_path):
    spec, path = load_scenario_arg("classic/cartpole")
    with RunStore(tmp_path / "s.sqlite") as store:
        run_id = start_run(spec, scenario_path=path, controller="builtin:random", episodes=3, seed=0, workers=1,
                           executor="local", store=store)
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        records = store.episodes(run_id)
        assert [r.index for r in records] == [0, 1, 2]
        with pytest.raises(sqlite3.IntegrityError):
            store.add_episode(run_id, records[0])
        assert len(store.episodes(run_id)) == 3  # the failed transaction left nothing behind
        assert store.get_run(run_id).status == "complete"


def test_episode_record_fields_are_physical(tmp_path):
    spec, path = load_scenario_arg("classic/cartpole")
    with RunStore(tmp_path / "s.sqlite") as store:
        run_id = start_run(spec, scenario_path=path, controller="builtin:random", episodes=5, seed=3, workers=1,
                           executor="local", store=store)
        for record in store.episodes(run_id):
            assert 1 <= record.length <= spec.episode_steps
            assert record.episode_return == pytest.approx(record.length)  # CartPole: +1 per step
            assert record.collision == record.terminated  # random play drops the pole long before 200 steps
            assert record.wall_time_s > 0


# -- guarantees (issue 2, item 10) ------------------------------------------------------------------------------
def test_same_records_with_one_and_two_workers(tmp_path):
    spec = load_scenario(small_highway(tmp_path))
    with RunStore(tmp_path / "s.sqlite") as store:
        one = start_run(spec, scenario_path="x", controller="builtin:random", episodes=6, seed=11, workers=1,
                        executor="local", store=store)
        two = start_run(spec, scenario_path="x", controller="builtin:random", episodes=6, seed=11, workers=2,
                        executor="local", store=store)
        assert outcomes(store, one) == outcomes(store, two)
        other = start_run(spec, scenario_path="x", controller="builtin:random", episodes=2, seed=12, workers=1,
                          executor="local", store=store)
        assert outcomes(store, other) != outcomes(store, one)[:2]


def test_same_records_with_local_and_ray_executors(tmp_path):
    pytest.importorskip("ray")
    import ray

    spec = load_scenario(small_highway(tmp_path, steps=6))
    try:
        with RunStore(tmp_path / "s.sqlite") as store:
            local = start_run(spec, scenario_path="x", controller="builtin:idm", episodes=4, seed=5, workers=2,
                              executor="local", store=store)
            on_ray = start_run(spec, scenario_path="x", controller="builtin:idm", episodes=4, seed=5, workers=2,
                               executor="ray", store=store)
            assert outcomes(store, local) == outcomes(store, on_ray)
    finally:
        ray.shutdown()


def test_killed_run_resumes_to_exactly_the_uninterrupted_records(tmp_path):
    spec_path = small_highway(tmp_path, steps=10)
    store_path = tmp_path / "killed.sqlite"
    episodes = 10
    process = subprocess.Popen(idm_run_command(spec_path, store_path, episodes=episodes, seed=7), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                               cwd=REPO_ROOT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and stored_count(store_path) < 3:
        time.sleep(0.2)
    assert process.poll() is None, f"run ended before it could be killed: {process.stderr.read().decode()}"
    os.killpg(process.pid, signal.SIGKILL)  # the CLI and its worker processes, no chance to clean up
    process.wait(timeout=30)

    with RunStore(store_path) as store:
        (info, done), = store.list_runs()
        assert info.status == "running" and 3 <= done < episodes
        resume_run(info.run_id, store=store, workers=1, executor="local")
        resumed = outcomes(store, info.run_id)
        assert store.get_run(info.run_id).status == "complete"
        fresh = start_run(load_scenario(spec_path), scenario_path=str(spec_path), controller="builtin:idm",
                          episodes=episodes, seed=7, workers=2, executor="local", store=store)
        assert [o[0] for o in resumed] == list(range(episodes))  # none lost, none duplicated
        assert resumed == outcomes(store, fresh)


def test_resume_refuses_a_different_experiment(tmp_path, cli):
    store_path = tmp_path / "s.sqlite"
    code, stdout, stderr = cli("run", "classic/cartpole", "--controller", "builtin:random", "--episodes", "2",
                               "--store", str(store_path), "--json")
    assert code == 0, stderr
    run_id = json.loads(stdout)["run_id"]
    code, _, stderr = cli("run", "classic/cartpole", "--controller", "builtin:random", "--episodes", "2",
                          "--store", str(store_path), "--seed", "9", "--resume", run_id)
    assert code == 2 and "--seed 9 differs" in stderr


# -- CLI round trip: run, runs list/show/export ---------------------------------------------------------------------
def test_runs_list_show_export(tmp_path, cli):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    store_path = str(tmp_path / "s.sqlite")
    code, stdout, stderr = cli("run", "classic/cartpole", "--controller", "builtin:random", "--episodes", "5",
                               "--store", store_path, "--seed", "2", "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    run_id = summary["run_id"]
    assert summary["episodes"] == 5 and summary["status"] == "complete"

    code, stdout, _ = cli("runs", "list", "--store", store_path, "--json")
    assert code == 0 and [row["run_id"] for row in json.loads(stdout)] == [run_id]

    code, stdout, _ = cli("runs", "show", run_id, "--store", store_path, "--json")
    shown = json.loads(stdout)
    assert code == 0 and shown["mean_return"] == pytest.approx(summary["mean_return"])

    csv_path, parquet_path = tmp_path / "e.csv", tmp_path / "e.parquet"
    assert cli("runs", "export", run_id, "--format", "csv", "--out", str(csv_path), "--store", store_path)[0] == 0
    assert cli("runs", "export", run_id, "--format", "parquet", "--out", str(parquet_path),
               "--store", store_path)[0] == 0
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    table = pq.read_table(parquet_path).to_pylist()
    assert len(rows) == len(table) == 5
    assert [float(row["episode_return"]) for row in rows] == [row["episode_return"] for row in table]
    assert np.mean([row["episode_return"] for row in table]) == pytest.approx(summary["mean_return"])

    code, _, stderr = cli("runs", "export", run_id, "--format", "xlsx", "--out", str(tmp_path / "x"),
                          "--store", store_path)
    assert code == 2 and "--format" in stderr
    code, _, stderr = cli("runs", "show", "no-such-run", "--store", store_path)
    assert code == 2 and "no-such-run" in stderr


def test_bad_flags_exit_2(cli, tmp_path):
    assert cli("run", "classic/cartpole", "--controller", "builtin:nope", "--episodes", "1",
               "--store", str(tmp_path / "s.sqlite"))[0] == 2
    assert cli("run", "classic/cartpole", "--controller", "builtin:random", "--episodes", "1",
               "--executor", "dask", "--store", str(tmp_path / "s.sqlite"))[0] == 2
    assert cli("run", "classic/cartpole", "--controller", "builtin:random", "--episodes", "0")[0] == 2
    assert cli("runs", "list", "--store", str(tmp_path / "absent.sqlite"))[0] == 2
