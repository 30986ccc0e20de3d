"""Statistical faithfulness of the batched backend, naturalistic traffic (fast seeded variant of
``safetybed bench backends``; the full 2,000-episode tables are in docs/batched.md)."""

from __future__ import annotations

from safetybed.runner.compare_backends import compare_backends
from safetybed.spec import ScenarioSpec
from safetybed.spec.catalogue import load_scenario_arg


def test_cut_in_episodes_are_indistinguishable_and_a_changed_scenario_is_not():
    spec, _ = load_scenario_arg("highway/cut_in")
    same = compare_backends(spec, "builtin:idm", episodes=80, seed=11)
    assert same["holds"], same
    # Negative control: the same test must tell a different scenario apart (ego 5 m/s faster).
    data = spec.model_dump()
    data["highway"]["ego_speed_mps"] += 5.0
    faster = ScenarioSpec.model_validate(data)
    changed = compare_backends(spec, "builtin:idm", episodes=80, seed=11, batched_spec=faster)
    assert not changed["holds"], changed
