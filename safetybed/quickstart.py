"""``safetybed quickstart``: the main job on the embedded defaults.

For now it runs the first job users come for, a scenario batch run, on both real simulators: the
highway-env cut-in family against the built-in IDM/MOBIL driver and the pybullet Panda reach task
against the scripted reach controller. Results go to ``OUT/runs.sqlite`` and ``OUT/summary.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetybed.catalogue import load_scenario_arg
from safetybed.runner import RunStore, run_summary, start_run

QUICKSTART_JOBS = (("highway/cut_in", "builtin:idm"), ("bullet/reach", "builtin:reach"))


def run_quickstart(*, out_dir: Path, episodes: int, workers: int, on_summary: Callable[[Any, Path], None],
                   progress_factory: Callable[[str], Any]) -> dict[str, Any]:
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    store_path = out_dir / "runs.sqlite"
    results = []
    with RunStore(store_path) as store:
        for scenario_name, controller in QUICKSTART_JOBS:
            spec, path = load_scenario_arg(scenario_name)
            with progress_factory(f"{spec.name} x {controller}") as progress:
                run_id = start_run(spec, scenario_path=path, controller=controller, episodes=episodes, seed=0,
                                   workers=workers, executor="local", store=store, progress=progress)
            summary = run_summary(store, run_id)
            on_summary(summary, store_path)
            results.append(summary.to_json_dict())
    result = {"store": str(store_path), "summary_file": str(out_dir / "summary.json"), "runs": results,
              "wall_time_s": time.perf_counter() - started}
    (out_dir / "summary.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result
