"""Fault injection on a real two-node Ray cluster (run by tests/test_ray_cluster.py, inside its own namespaces).

Usage: ``python -m tests.ray_cluster_faults OUT_DIR`` (from the repository root) inside ``unshare --net --pid --fork --kill-child
--mount-proc`` with ``lo`` up. Starts :class:`~safetybed.runner.loopback.LoopbackCluster` (head + worker node,
token authentication on), launches ``safetybed run ... --executor ray`` through ``RAY_ADDRESS`` as the README
says, injects each fault and writes what happened to ``OUT_DIR/results.json``; the stores are left in
``OUT_DIR`` for the test to compare with an uninterrupted local run. Every process it starts lives in the
namespace and ends with it; the ones it kills on purpose are found by id (a node's namespace, a Ray worker
whose title is ``ray::run_unit``), never by a broad name.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from safetybed.runner.loopback import LoopbackCluster, descendants, process_title
from tests.test_runner import stored_count

REPO_ROOT = Path(__file__).resolve().parents[1]
EPISODES = 16
SEED = 21
WORKERS = 2
TIMEOUT_S = 150.0


def write_spec(out: Path) -> Path:
    path = out / "cut_in_short.toml"
    base = REPO_ROOT / "scenarios" / "highway" / "cut_in.toml"
    path.write_text(f'extends = "{base}"\nname = "test/cut_in_cluster"\nepisode_steps = 12\n', encoding="utf-8")
    return path


def run_command(spec: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "safetybed", "run", str(spec), "--controller", "builtin:idm", "--episodes",
            str(EPISODES), "--workers", str(WORKERS), "--seed", str(SEED), "--executor", "ray", "--store", str(store),
            "--json", *extra]


def stored(store: Path) -> int:
    return stored_count(store)


def running_episodes(pids: set[int]) -> list[int]:
    """The Ray workers among ``pids`` that are running an episode right now."""
    return sorted(pid for pid in pids if process_title(pid).startswith("ray::run_unit"))


def finish(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    result = {"returncode": process.returncode, "stderr_tail": stderr.decode(errors="replace")[-3000:]}
    try:
        result["status"] = json.loads(stdout)["status"]
    except (json.JSONDecodeError, KeyError):
        result["status"] = None
        result["stdout_tail"] = stdout.decode(errors="replace")[-3000:]
    return result


def inject(process: subprocess.Popen, store: Path, *, ready, act) -> dict:
    """Poll until ``ready()`` returns a target while the run is going, then ``act(target)`` once."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        target = ready()
        if target is not None:
            act(target)
            return {"injected": True, "stored_at_injection": stored(store), "target": target}
        time.sleep(0.05)
    return {"injected": False, "stored_at_injection": stored(store)}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    spec = write_spec(out)
    results: dict[str, dict] = {}
    started = time.monotonic()
    with LoopbackCluster(head_cpus=1, worker_cpus=1) as cluster:
        env = cluster.client_env()
        results["cluster_up_s"] = {"value": time.monotonic() - started}

        # Bad credentials, launched first (Ray spends ~20 s retrying before it gives up) and collected at the end.
        no_mode = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
        wrong = {**env, "RAY_AUTH_TOKEN": "0" * 64}
        wrong.pop("RAY_AUTH_TOKEN_PATH")
        credentials = {name: subprocess.Popen(run_command(spec, out / f"{name}.sqlite"), stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, env=case, cwd=REPO_ROOT)
                       for name, case in (("no_auth_mode", no_mode), ("wrong_token", wrong))}

        # (a) SIGKILL of a Ray worker process while it runs an episode.
        store = out / "worker_killed.sqlite"
        process = subprocess.Popen(run_command(spec, store), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=env, cwd=REPO_ROOT)
        every = lambda: cluster.node_pids("head") | cluster.node_pids("worker")  # noqa: E731
        fault = inject(process, store, ready=lambda: (running_episodes(every()) or [None])[0]
                       if stored(store) >= 2 else None,
                       act=lambda pid: os.kill(pid, signal.SIGKILL))
        results["worker_killed"] = {**fault, **finish(process), "store": str(store)}

        # (c) SIGKILL of the launching process (and its session), then --resume against the same cluster.
        store = out / "launcher_killed.sqlite"
        process = subprocess.Popen(run_command(spec, store), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=env, cwd=REPO_ROOT, start_new_session=True)
        fault = inject(process, store, ready=lambda: process.pid if stored(store) >= 3 else None,
                       act=lambda pid: os.killpg(pid, signal.SIGKILL))
        process.wait(timeout=60)
        with sqlite3.connect(store) as conn:
            run_id, status = conn.execute("SELECT run_id, status FROM runs").fetchone()
            at_kill = conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]
        resumed = subprocess.Popen(run_command(spec, store, "--resume", run_id), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT)
        results["launcher_killed"] = {**fault, "status_after_kill": status, "stored_after_kill": at_kill,
                                      "run_id": run_id, **finish(resumed), "store": str(store)}

        # An episode that raises its own exception, through the cluster: reported once, by index, not retried.
        os.environ.update(env)
        import ray

        from safetybed.runner import EpisodeTask
        from safetybed.runner.executors import EpisodeFailure, execute
        from safetybed.spec.catalogue import load_scenario_arg

        scenario_json = load_scenario_arg("classic/cartpole")[0].model_dump_json()
        tasks = [EpisodeTask(scenario_json=scenario_json, controller="builtin:no_such_driver" if i == 5
                             else "builtin:random", run_seed=1, index=i) for i in range(9)]
        outcomes = list(execute(tasks, executor="ray", workers=WORKERS))
        results["episode_raises"] = {
            "indices": sorted(o.index for o in outcomes),
            "failures": [{"index": o.index, "kind": o.kind, "submissions": o.submissions, "error": o.error}
                         for o in outcomes if isinstance(o, EpisodeFailure)]}
        ray.shutdown()

        # (b) The worker node stops mid-run, while it runs an episode.
        store = out / "node_stopped.sqlite"
        process = subprocess.Popen(run_command(spec, store), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=env, cwd=REPO_ROOT)
        fault = inject(process, store, ready=lambda: (running_episodes(cluster.node_pids("worker")) or [None])[0]
                       if stored(store) >= 2 else None,
                       act=lambda _pid: cluster.stop_worker())
        results["node_stopped"] = {**fault, **finish(process), "store": str(store)}

        for name, launched in credentials.items():
            results[name] = finish(launched)
    results["wall_s"] = {"value": time.monotonic() - started}
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    # This script is PID 1 of its namespace: the killed nodes' processes are re-parented to it; reap them.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.1)
    leftover = sorted(pid for pid in descendants(os.getpid()) if process_title(pid))
    if leftover:  # reported; they end with the namespace when this script exits
        print(f"processes left: {[(pid, process_title(pid)[:60]) for pid in leftover]}", file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
