"""NADE on the batched backend: the critical-step entries the estimators read equal the highway-env tester's."""

from __future__ import annotations

import json

from safetybed.runner.episode import EpisodeTask, run_episode, run_episode_batch
from safetybed.spec.catalogue import load_scenario_arg


def test_nade_entries_identical_to_highway_env_tester():
    spec, _ = load_scenario_arg("highway/cruise_nade")
    batched_spec = spec.model_copy(update={"backend": "batched"})
    reference = [run_episode(EpisodeTask(spec.model_dump_json(), "builtin:idm", 3, i)) for i in range(10)]
    batched = run_episode_batch([EpisodeTask(batched_spec.model_dump_json(), "builtin:idm", 3, i) for i in range(10)])
    entries = 0
    for ours, theirs in zip(batched, reference, strict=True):
        assert json.dumps(ours.decisions, default=str) == json.dumps(theirs.decisions, default=str), ours.index
        assert ours.collision == theirs.collision and abs(ours.episode_return - theirs.episode_return) < 1e-9
        entries += len(theirs.decisions or [])
    assert entries >= 15, "too few critical steps to check the tester"
