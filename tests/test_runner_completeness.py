"""Nothing lost, nothing duplicated: every executor stores each planned index once, and a run is ``complete``
only when the store says so (issue 11)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

from safetybed.errors import IncompleteRunError
from safetybed.runner import EpisodeTask, RunStore, resume_run, start_run
from safetybed.runner.batch import finalize_run, stored_episodes
from safetybed.runner.executors import EpisodeFailure, execute
from safetybed.runner.loopback import descendants, process_title
from safetybed.runner.store import format_indices
from safetybed.spec.catalogue import load_scenario_arg

from .conftest import REPO_ROOT
from .test_runner import idm_run_command, outcomes, small_highway, stored_count


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module; the executor connects to it instead of starting one."""
    ray = pytest.importorskip("ray")
    saved = os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


def cartpole():
    return load_scenario_arg("classic/cartpole")


# -- the lost episode (issue 11, item 1) --------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_every_planned_index_is_stored_once(tmp_path, executor, workers, request):
    """More episodes than the 2 x workers kept in flight. Failed on the old Ray executor: index 2 x workers was
    taken from the queue by ``zip(queue, range(2 * workers))`` and never run, and the run was still 'complete'."""
    if executor == "ray":
        request.getfixturevalue("local_ray")
    spec, path = cartpole()
    episodes = 2 * workers + 3
    with RunStore(tmp_path / "s.sqlite") as store:
        run_id = start_run(spec, scenario_path=path, controller="builtin:random", episodes=episodes, seed=4,
                           workers=workers, executor=executor, store=store)
        assert [record.index for record in store.episodes(run_id)] == list(range(episodes))
        assert store.completeness(run_id).complete and store.get_run(run_id).status == "complete"
        reference = start_run(spec, scenario_path=path, controller="builtin:random", episodes=episodes, seed=4,
                              workers=1, executor="local", store=store)
        assert outcomes(store, run_id) == outcomes(store, reference)


# -- an episode's own exception: reported by index, not retried ------------------------------------------------------
@pytest.mark.parametrize("executor,workers", [("local", 1), ("local", 2), ("ray", 2)])
def test_an_episode_that_raises_is_reported_once_by_index(executor, workers, request):
    if executor == "ray":
        request.getfixturevalue("local_ray")
    spec, _ = cartpole()
    scenario_json = spec.model_dump_json()
    tasks = [EpisodeTask(scenario_json=scenario_json, controller="builtin:no_such_driver" if i == 3
                         else "builtin:random", run_seed=1, index=i) for i in range(7)]
    results = list(execute(tasks, executor=executor, workers=workers))
    failures = [r for r in results if isinstance(r, EpisodeFailure)]
    assert sorted(r.index for r in results) == list(range(7))  # one outcome per task, none twice
    assert [(f.index, f.kind, f.submissions) for f in failures] == [(3, "exception", 1)]
    assert "no_such_driver" in failures[0].error and "\n" not in failures[0].error
    assert "no_such_driver" in failures[0].detail  # the traceback (or Ray's remote one) is kept


def test_resume_with_a_broken_controller_leaves_a_partial_run_that_names_its_failures(tmp_path, cli):
    """A real failure: the run's checkpoint folder is gone when it is resumed. Every episode fails with the
    loader's error, once; the run is 'partial', and resuming after the folder is back completes it."""
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(REPO_ROOT / "controllers" / "weights" / "cartpole_ppo", checkpoint)
    spec, path = load_scenario_arg("classic/cartpole_noisy")
    store_path = tmp_path / "s.sqlite"
    with RunStore(store_path) as store:
        run_id = store.create_run(scenario_name=spec.name, scenario_path=str(path),
                                  scenario_json=spec.model_dump_json(), controller=str(checkpoint), seed=3,
                                  episodes=4, executor="local", workers=1)
        moved = shutil.move(checkpoint, tmp_path / "elsewhere")
        with pytest.raises(IncompleteRunError) as raised:
            resume_run(run_id, store=store, workers=1, executor="local")
        message = str(raised.value)
        assert "0 episode records stored for 4 planned" in message and "index 0-3" in message
        assert f"--resume {run_id}" in message and "episode 0 raised" in message
        completeness = store.completeness(run_id)
        assert store.get_run(run_id).status == "partial"
        assert [(f.index, f.kind, f.submissions) for f in completeness.failures] == [(i, "exception", 1)
                                                                                     for i in range(4)]
    code, stdout, _ = cli("runs", "show", run_id, "--store", str(store_path), "--json")
    shown = json.loads(stdout)
    assert code == 0 and shown["status"] == "partial"
    assert shown["completeness"]["missing_indices"] == [0, 1, 2, 3]
    assert [f["index"] for f in shown["completeness"]["failures"]] == [0, 1, 2, 3]

    shutil.move(moved, checkpoint)
    with RunStore(store_path) as store:
        resume_run(run_id, store=store, workers=2, executor="local")
        assert store.get_run(run_id).status == "complete"
        assert store.completeness(run_id).failures == ()  # a success replaces the failure
        fresh = start_run(spec, scenario_path=path, controller=str(checkpoint), episodes=4, seed=3, workers=1,
                          executor="local", store=store)
        assert outcomes(store, run_id) == outcomes(store, fresh)


# -- the completeness invariant (issue 11, item 2) ----------------------------------------------------------------
def test_a_store_missing_an_index_is_partial_and_refused_by_estimates(tmp_path, cli):
    spec, path = cartpole()
    store_path = tmp_path / "s.sqlite"
    with RunStore(store_path) as store:
        run_id = start_run(spec, scenario_path=path, controller="builtin:random", episodes=6, seed=2, workers=1,
                           executor="local", store=store)
        before = outcomes(store, run_id)
    with sqlite3.connect(store_path) as conn:
        conn.execute("DELETE FROM episodes WHERE run_id = ? AND idx = 3", (run_id,))
    with RunStore(store_path) as store:
        completeness = store.completeness(run_id)
        assert (completeness.complete, completeness.missing, completeness.duplicated) == (False, (3,), ())
        with pytest.raises(IncompleteRunError, match=r"1 missing \(index 3\)"):
            finalize_run(store, run_id)
        assert store.get_run(run_id).status == "partial"
        with pytest.raises(IncompleteRunError, match="--allow-partial"):
            stored_episodes(store, run_id)
        assert len(stored_episodes(store, run_id, allow_partial=True)) == 5
    from safetybed.evaluate.highway import records_from_run  # what every highway estimate reads

    with pytest.raises(IncompleteRunError, match=r"1 missing \(index 3\)"):
        records_from_run(store_path, run_id)
    assert len(records_from_run(store_path, run_id, allow_partial=True)) == 5
    code, stdout, _ = cli("runs", "show", run_id, "--store", str(store_path), "--json")
    assert code == 0 and json.loads(stdout)["completeness"]["missing_indices"] == [3]
    code, stdout, _ = cli("runs", "show", run_id, "--store", str(store_path))
    assert "missing episodes" in stdout and "index 3" in stdout and f"--resume {run_id}" in stdout

    code, stdout, stderr = cli("run", "classic/cartpole", "--controller", "builtin:random", "--episodes", "6",
                               "--seed", "2", "--store", str(store_path), "--resume", run_id, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["status"] == "complete"
    with RunStore(store_path) as store:
        assert outcomes(store, run_id) == before


def test_a_store_holding_an_index_twice_is_not_complete(tmp_path):
    """A store whose episodes table lacks the primary key (written by another tool, or merged by hand) can hold an
    index twice; the invariant counts records and does not rely on the key."""
    store_path = tmp_path / "foreign.sqlite"
    with sqlite3.connect(store_path) as conn:
        conn.execute("CREATE TABLE episodes (run_id TEXT NOT NULL, idx INTEGER NOT NULL, seed INTEGER NOT NULL, "
                     "episode_return REAL NOT NULL, length INTEGER NOT NULL, collision INTEGER NOT NULL, "
                     "success INTEGER NOT NULL, terminated INTEGER NOT NULL, truncated INTEGER NOT NULL, "
                     "min_ttc_s REAL, min_gap_m REAL, progress_m REAL NOT NULL, violations INTEGER NOT NULL, "
                     "wall_time_s REAL NOT NULL)")
    spec, path = cartpole()
    with RunStore(store_path) as store:
        run_id = start_run(spec, scenario_path=path, controller="builtin:random", episodes=4, seed=2, workers=1,
                           executor="local", store=store)
        store.add_episode(run_id, store.episodes(run_id)[2])
        completeness = store.completeness(run_id)
        assert (completeness.complete, completeness.missing, completeness.duplicated) == (False, (), (2,))
        with pytest.raises(IncompleteRunError, match=r"5 episode records stored for 4 planned; 1 stored more than "
                                                     r"once \(index 2\)"):
            finalize_run(store, run_id)
        assert store.get_run(run_id).status == "partial"


def test_format_indices():
    assert format_indices([7, 1, 2, 3, 9, 10]) == "1-3, 7, 9-10"
    assert format_indices([]) == ""
    assert format_indices(range(0, 50, 2), limit=3) == "0, 2, 4, ... (22 more ranges)"


# -- a dead local worker process -------------------------------------------------------------------------------------
def test_a_killed_local_worker_process_is_replaced_and_its_episodes_rerun(tmp_path):
    spec_path = small_highway(tmp_path, steps=10)
    store_path = tmp_path / "s.sqlite"
    episodes = 10
    process = subprocess.Popen(idm_run_command(spec_path, store_path, episodes=episodes, seed=8),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        killed = None
        while time.monotonic() < deadline and process.poll() is None and killed is None:
            workers = [pid for pid in descendants(process.pid) if "spawn_main" in process_title(pid)]
            if stored_count(store_path) >= 2 and workers:
                os.kill(workers[0], signal.SIGKILL)  # a pool worker of our own child, by its id
                killed = workers[0]
            time.sleep(0.1)
        assert killed is not None, "the run ended before a worker could be killed"
        stdout, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout)["status"] == "complete"
    with RunStore(store_path) as store:
        (info, done), = store.list_runs()
        fresh = start_run(load_scenario_arg(str(spec_path))[0], scenario_path="x", controller="builtin:idm",
                          episodes=episodes, seed=8, workers=1, executor="local", store=store)
        assert outcomes(store, info.run_id) == outcomes(store, fresh)
