"""The batched backend through the runner: same records as the highway-env backend, whatever the batch size."""

from __future__ import annotations

import json
import math

import pytest

from safetybed.errors import InputError
from safetybed.runner import executors
from safetybed.runner.episode import EpisodeTask, run_episode
from safetybed.spec import ScenarioSpec
from safetybed.spec.catalogue import load_scenario_arg
from safetybed.spec.scenario import with_backend


def _spec(*, noise: float = 0.0, frame_stack: int = 1, delay: int = 0, backend: str = "batched") -> ScenarioSpec:
    data = load_scenario_arg("highway/cut_in")[0].model_dump()
    data["highway"]["driver"]["model"] = "idm"
    data["perturbations"] = {"observation_noise_std": noise, "frame_stack": frame_stack, "action_delay_steps": delay}
    data["backend"] = backend
    return ScenarioSpec.model_validate(data)


def _close(a, b) -> bool:
    if isinstance(a, float):
        return a == b or (math.isfinite(a) and abs(a - b) < 1e-9)
    return a == b


def _outcomes(records):
    return {r.index: tuple(getattr(r, name) for name in r.DETERMINISTIC_FIELDS) for r in records}


def _run(spec: ScenarioSpec, episodes: int, controller: str = "builtin:idm"):
    tasks = [EpisodeTask(spec.model_dump_json(), controller, 5, i) for i in range(episodes)]
    return list(executors.execute(tasks, executor="local", workers=1))


@pytest.mark.parametrize(("perturbation", "controller"), [
    ({}, "builtin:idm"), ({"noise": 0.3}, "builtin:idm"), ({"frame_stack": 3, "delay": 1}, "builtin:random")])
def test_records_equal_highway_env_backend(perturbation, controller):
    """IDM traffic (deterministic): every record field equal to the highway-env backend's.

    builtin:idm is served in one call per step (batch-stateless); builtin:random gets a controller per episode.
    """
    batched = _outcomes(_run(_spec(**perturbation), 8, controller))
    reference = {}
    for index in range(8):
        task = EpisodeTask(_spec(**perturbation, backend="highway-env").model_dump_json(), controller, 5, index)
        reference.update(_outcomes([run_episode(task)]))
    assert batched.keys() == reference.keys()
    for index in reference:
        assert all(_close(a, b) for a, b in zip(batched[index], reference[index], strict=True)), (
            index, batched[index], reference[index])


def test_records_do_not_depend_on_batch_size(monkeypatch):
    """Chunks of 3 and one chunk of 10 give bitwise identical records (builtin:random: per-episode controllers)."""
    spec = _spec(noise=0.1)
    whole = _outcomes(_run(spec, 10, "builtin:random"))
    monkeypatch.setattr(executors, "BATCH_EPISODES", 3)
    chunked = _outcomes(list(executors.run_batched(
        [EpisodeTask(spec.model_dump_json(), "builtin:random", 5, i) for i in range(10)], batch_episodes=3)))
    assert whole == chunked


def test_backend_flag_validation():
    merge = load_scenario_arg("highway/merge")[0]
    with pytest.raises(InputError, match="batched.*cruise"):
        with_backend(merge, "batched")
    with pytest.raises(InputError, match="--backend nope"):
        with_backend(load_scenario_arg("highway/cut_in")[0], "nope")
    assert with_backend(merge, None) is merge


def test_cli_run_batched(tmp_path, cli):
    code, out, err = cli("run", "highway/cut_in", "--controller", "builtin:idm", "--episodes", "3", "--backend",
                         "batched", "--store", str(tmp_path / "s.sqlite"), "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["episodes"] == 3 and document["status"] == "complete"
    code, _, err = cli("run", "highway/merge", "--controller", "builtin:idm", "--episodes", "1", "--backend",
                       "batched", "--store", str(tmp_path / "s.sqlite"))
    assert code == 2 and "backend" in err


def _same(a, b, path="") -> None:
    """Equal JSON-like values, floats to 1e-9 (the pmfs agree to ~1e-15, not bitwise)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == b or (a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b))), (path, a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (path, sorted(a), sorted(b))
        for key in a:
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), (path, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("name", ["highway/cut_in", "highway/cruise_nade"])
def test_step_and_decision_logs_equal_highway_env_backend(name):
    """metrics.per_step_log and decision_log on the batched backend: the same logs (and NADE entries after them)."""
    data = load_scenario_arg(name)[0].model_dump()
    data["metrics"].update(per_step_log=True, decision_log=True)
    reference_spec = ScenarioSpec.model_validate({**data, "backend": "highway-env"})
    batched_spec = ScenarioSpec.model_validate({**data, "backend": "batched"})
    batched = _run(batched_spec, 5)
    logged = 0
    for record in batched:
        reference = run_episode(EpisodeTask(reference_spec.model_dump_json(), "builtin:idm", 5, record.index))
        _same(record.to_json_dict()["steps"], reference.to_json_dict()["steps"], "steps")
        _same(record.to_json_dict()["decisions"], reference.to_json_dict()["decisions"], "decisions")
        logged += len(reference.decisions or [])
    assert logged > 0


def test_batched_backend_on_ray_gives_the_local_records():
    """--executor ray with the batched backend: chunks as Ray tasks, the same records as the local batch."""
    pytest.importorskip("ray")
    import ray

    spec = _spec(noise=0.1)
    tasks = [EpisodeTask(spec.model_dump_json(), "builtin:idm", 5, i) for i in range(6)]
    local = _outcomes(executors.execute(tasks, executor="local", workers=1))
    try:
        on_ray = _outcomes(executors.execute(tasks, executor="ray", workers=2))  # 2 chunks of 3
    finally:
        ray.shutdown()
    assert on_ray == local
