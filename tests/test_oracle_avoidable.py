"""``safetybed oracle``: the unavoidable-collision share is the share of episodes no oracle strategy survives."""

from __future__ import annotations

import numpy as np
import pytest

from safetybed.errors import InputError
from safetybed.evaluate import avoidable
from safetybed.runner import RunStore, start_run
from safetybed.spec import ScenarioSpec
from safetybed.spec.catalogue import load_scenario_arg
from safetybed.spec.scenario import with_backend

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cut_in(**cut_in) -> ScenarioSpec:
    data = load_scenario_arg("highway/cut_in")[0].model_dump()
    data["highway"]["cut_in"].update(cut_in)
    return ScenarioSpec.model_validate(data)


def test_idm_strategy_is_the_runners_idm_on_the_same_episodes(tmp_path):
    spec = _cut_in()
    summary = avoidable.avoidable_share(spec, episodes=12, seed=3)
    store = RunStore(tmp_path / "runs.sqlite")
    run_id = start_run(with_backend(spec, "batched"), scenario_path="highway/cut_in", controller="builtin:idm",
                       episodes=12, seed=3, workers=1, executor="local", store=store)
    records = store.episodes(run_id)
    assert summary["strategies"]["builtin:idm"] == pytest.approx(np.mean([r.collision for r in records]))
    assert len(summary["strategies"]) == len(avoidable.ACCELERATIONS) * len(avoidable.LANE_REQUESTS) + 1


def test_unavoidable_means_every_strategy_collides(monkeypatch):
    """A cut-in 0-1 m ahead of the ego, 8-10 m/s slower: most episodes are lost whatever the ego does; the
    usual 10-25 m gaps are all avoidable (the count is the all-collide column of the per-strategy matrix)."""
    hard = avoidable.avoidable_share(_cut_in(gap_min_m=0.0, gap_max_m=1.0, relative_speed_min_mps=-10.0,
                                             relative_speed_max_mps=-8.0), episodes=8)
    easy = avoidable.avoidable_share(_cut_in(), episodes=8)
    assert hard["unavoidable"] > easy["unavoidable"] == 0
    assert min(hard["strategies"].values()) >= hard["unavoidable_share"]
    low, high = hard["unavoidable_ci"]
    assert low <= hard["unavoidable_share"] <= high
    with pytest.raises(InputError, match="straight-road"):
        avoidable.avoidable_share(load_scenario_arg("highway/merge")[0], episodes=2)
