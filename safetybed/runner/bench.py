"""``safetybed bench executors``: the scale check of the Ray executor against the local one.

For each workload (scenario, controller, episodes) the same run is executed twice in this process, on the
same machine, with the same worker count: once by the local process pool (the baseline) and once by Ray
(the cluster at ``RAY_ADDRESS``, or with ``--loopback`` a two-node cluster on 127.0.0.1 started for the
check). Each run must end ``complete`` with every index stored once and the two runs' records must be equal;
the table gives episodes/s of each and their ratio. A single timing per side (a run of thousands of
episodes is its own average); rerun the command to see the spread.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetybed.runner.batch import start_run
from safetybed.runner.store import RunStore
from safetybed.spec.catalogue import load_scenario_arg

#: The issue 11 scale check: 2,000 short episodes and 200 highway episodes.
DEFAULT_WORKLOADS = (("classic/cartpole", "builtin:random", 2000), ("highway/cut_in", "builtin:idm", 200))


def _timed_run(store: RunStore, scenario: str, controller: str, episodes: int, *, executor: str, workers: int,
               seed: int) -> dict[str, Any]:
    spec, path = load_scenario_arg(scenario)
    started = time.perf_counter()
    run_id = start_run(spec, scenario_path=path, controller=controller, episodes=episodes, seed=seed,
                       workers=workers, executor=executor, store=store)
    wall_s = time.perf_counter() - started
    completeness = store.completeness(run_id)
    return {"run_id": run_id, "wall_s": wall_s, "episodes_per_s": episodes / wall_s,
            "complete": completeness.complete, "stored": completeness.stored,
            "status": store.get_run(run_id).status}


def bench_executors(*, workloads=DEFAULT_WORKLOADS, workers: int = 2, seed: int = 0, store_path: Path | None = None,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Local vs Ray on each workload; returns rows with both sides' episodes/s, the ratio and the checks."""
    folder = None if store_path is not None else tempfile.TemporaryDirectory(prefix="sb-bench-")
    path = Path(store_path) if store_path is not None else Path(folder.name) / "bench.sqlite"
    rows = []
    try:
        with RunStore(path) as store:
            import ray

            from safetybed.runner.executors import connect_ray

            connect_ray(workers=workers)
            nodes = sum(1 for node in ray.nodes() if node["Alive"])
            cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
            for scenario, controller, episodes in workloads:
                sides = {}
                for executor in ("local", "ray"):
                    if progress:
                        progress(f"{scenario}: {episodes} episodes on {executor} ({workers} workers)")
                    sides[executor] = _timed_run(store, scenario, controller, episodes, executor=executor,
                                                 workers=workers, seed=seed)
                local_records = [r.outcome() for r in store.episodes(sides["local"]["run_id"], with_logs=True)]
                ray_records = [r.outcome() for r in store.episodes(sides["ray"]["run_id"], with_logs=True)]
                rows.append({
                    "scenario": scenario, "controller": controller, "episodes": episodes, "workers": workers,
                    "local": sides["local"], "ray": sides["ray"],
                    "ratio_ray_over_local": sides["ray"]["episodes_per_s"] / sides["local"]["episodes_per_s"],
                    "every_index_once": sides["local"]["complete"] and sides["ray"]["complete"],
                    "records_equal": local_records == ray_records})
    finally:
        import ray

        if ray.is_initialized():  # before a loopback cluster's nodes go, so the driver leaves quietly
            ray.shutdown()
        if folder is not None:
            folder.cleanup()
    return {"ray_address": os.environ.get("RAY_ADDRESS", "(local Ray instance)"), "ray_nodes": nodes,
            "ray_cpus": cluster_cpus, "machine_cpus": os.cpu_count(), "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"safetybed bench executors: Ray at {result['ray_address']} ({result['ray_nodes']} nodes, "
             f"{result['ray_cpus']:g} CPUs) vs the local process pool, same worker count, same run, "
             f"{result['machine_cpus']} CPUs on this machine",
             f"{'scenario':<18} {'episodes':>8} {'workers':>7} {'local ep/s':>11} {'ray ep/s':>9} "
             f"{'ray/local':>9}  every index once  records equal"]
    for row in result["rows"]:
        lines.append(f"{row['scenario']:<18} {row['episodes']:>8} {row['workers']:>7} "
                     f"{row['local']['episodes_per_s']:>11.1f} {row['ray']['episodes_per_s']:>9.1f} "
                     f"{row['ratio_ray_over_local']:>8.2f}x  {'yes' if row['every_index_once'] else 'NO':<16}  "
                     f"{'yes' if row['records_equal'] else 'NO'}")
    return "\n".join(lines)
