"""The Ray executor on a real two-node cluster under faults (issue 11, item 3), and its connection errors.

One namespace session (``python -m tests.ray_cluster_faults`` inside ``unshare --net --pid ...``) starts a head and a
worker node on 127.0.0.1 with token authentication, launches ``safetybed run --executor ray`` through
``RAY_ADDRESS`` and injects: (a) SIGKILL of a Ray worker while it runs an episode, (b) the worker node stopping
mid-run, (c) SIGKILL of the launching process, then ``--resume``. Each store must end with exactly the records
of an uninterrupted local run. Needs root for the namespaces; on CI a missing namespace is a failure, not a
skip.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys

import pytest

from safetybed.runner import RunStore, start_run
from safetybed.runner.loopback import NAMESPACE_COMMAND, namespaces_available
from safetybed.spec import load_scenario

from .conftest import REPO_ROOT

pytest.importorskip("ray")


def outcomes(store_path, run_id=None):
    with RunStore(store_path, create=False) as store:
        if run_id is None:
            (info, _done), = store.list_runs()
            run_id = info.run_id
        return store.get_run(run_id).status, [r.outcome() for r in store.episodes(run_id, with_logs=True)]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    why = namespaces_available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the Ray cluster tests must run on CI: {why}")
        pytest.skip(why)
    out = tmp_path_factory.mktemp("cluster")
    script = 'ip link set lo up && exec "$@"'
    completed = subprocess.run([*NAMESPACE_COMMAND, "sh", "-c", script, "sh", sys.executable,
                                "-m", "tests.ray_cluster_faults", str(out)],
                               capture_output=True, text=True, timeout=420, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "processes left" not in completed.stderr, completed.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    # The uninterrupted local run the three faulted runs must equal.
    from .ray_cluster_faults import EPISODES, SEED

    spec = load_scenario(out / "cut_in_short.toml")
    with RunStore(out / "local.sqlite") as store:
        run_id = start_run(spec, scenario_path="x", controller="builtin:idm", episodes=EPISODES, seed=SEED,
                           workers=2, executor="local", store=store)
    return results, outcomes(out / "local.sqlite", run_id)[1]


def check_matches_local(entry: dict, local: list) -> None:
    assert entry["injected"], f"the fault was never injected: {entry}"
    assert entry["returncode"] == 0 and entry["status"] == "complete", entry["stderr_tail"]
    status, records = outcomes(entry["store"])
    assert status == "complete"
    assert [r[0] for r in records] == list(range(len(local)))  # none lost, none duplicated
    assert records == local


def test_worker_process_killed_while_running_an_episode(session):
    results, local = session
    entry = results["worker_killed"]
    assert entry["stored_at_injection"] < len(local)
    check_matches_local(entry, local)


def test_worker_node_stopped_mid_run(session):
    results, local = session
    entry = results["node_stopped"]
    assert entry["stored_at_injection"] < len(local)  # the node held a running episode when it went
    check_matches_local(entry, local)


def test_launcher_killed_then_resumed_against_the_same_cluster(session):
    results, local = session
    entry = results["launcher_killed"]
    assert entry["status_after_kill"] == "running" and entry["stored_after_kill"] < len(local)
    check_matches_local(entry, local)


def test_an_episode_that_raises_on_the_cluster_is_reported_once(session):
    results, _ = session
    entry = results["episode_raises"]
    assert entry["indices"] == list(range(9))
    assert [(f["index"], f["kind"], f["submissions"]) for f in entry["failures"]] == [(5, "exception", 1)]


@pytest.mark.parametrize("case", ["no_auth_mode", "wrong_token"])
def test_missing_or_wrong_token_is_one_message_and_exit_2(session, case):
    results, _ = session
    entry = results[case]
    assert entry["returncode"] == 2
    lines = [line for line in entry["stderr_tail"].splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in entry["stderr_tail"], entry["stderr_tail"]
    assert "RAY_AUTH_MODE=token" in lines[0] and "RAY_AUTH_TOKEN" in lines[0]
    assert ("without a token" if case == "no_auth_mode" else "refused this client's token") in lines[0]


# -- connection errors that need no cluster -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("address,expected", [("127.0.0.1:{port}", "no Ray head node answers there"),
                                              ("head-node-without-port", "expected HOST:PORT")])
def test_bad_ray_address_is_one_message_and_exit_2(tmp_path, address, expected):
    env = {**os.environ, "RAY_ADDRESS": address.format(port=free_port())}
    completed = subprocess.run([sys.executable, "-m", "safetybed", "run", "classic/cartpole", "--controller",
                                "builtin:random", "--episodes", "2", "--executor", "ray", "--store",
                                str(tmp_path / "s.sqlite")], capture_output=True, text=True, env=env,
                               cwd=REPO_ROOT, timeout=120)
    assert completed.returncode == 2
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "RAY_ADDRESS" in lines[0] and expected in lines[0], completed.stderr
    with sqlite3.connect(tmp_path / "s.sqlite") as conn:  # refused before a run was created
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
