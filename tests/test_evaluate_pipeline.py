"""``safetybed evaluate`` on a highway scenario: every method runs through the runner and the store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safetybed.errors import InputError
from safetybed.evaluate.highway import STATE_FEATURES, records_from_run
from safetybed.evaluate.pipeline import evaluate_highway
from safetybed.report.evaluation import write_evaluation
from safetybed.sims.testing.adate_proposal import load_proposal as load_adate
from safetybed.sims.testing.d2rl_proposal import load_proposal as load_d2rl


@pytest.fixture(scope="module")
def document(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    document = evaluate_highway("scenarios/highway/cruise_nade.toml", controller="builtin:idm",
                                methods=["crude", "nade", "scv", "d2rl", "adate"], tests=12, seed=3, workers=1,
                                store_path=folder / "store.sqlite", out_dir=folder / "out", d2rl_iterations=2,
                                adate_batches=2, bootstrap_resamples=5)
    document["files"] = write_evaluation(document, document["out_dir"])  # what the CLI does with it
    return document


def test_every_method_reports_a_result(document):
    names = [entry["method"] for entry in document["methods"]]
    assert names == ["crude", "nade", "scv-martingale", "scv-stratified", "scv-learned", "d2rl", "adate"]
    for entry in document["methods"]:
        for key in ("estimate", "ci", "rhw", "n", "n_crashes", "tests", "tests_needed", "rhw_curve"):
            assert key in entry
    nade = document["methods"][1]
    assert nade["n"] == 12 and nade["n_crashes"] >= 1
    crude = document["methods"][0]
    assert crude["tests_needed"] > 0 and crude["tests_needed_source"]


def test_runs_are_stored_and_proposals_reload(document):
    store = document["store"]
    assert set(document["runs"]) == {"crude", "nade", "d2rl", "adate"}
    for run_id in document["runs"]["nade"]:
        records = records_from_run(store, run_id)
        assert len(records) == 12
        for record in records:
            assert len(record.p) == len(record.q_tilde) == len(record.epsilon)
            # the learned SCV variant's covariates: one criticality and one kinematic state per critical step
            assert len(record.criticality) == len(record.state) == len(record.p)
            assert all(len(row) == len(STATE_FEATURES) for row in record.state)
    d2rl = load_d2rl(next(e for e in document["methods"] if e["method"] == "d2rl")["d2rl_policy"])
    eps = d2rl.policy.epsilon(np.zeros((3, 8)))
    assert np.all((eps >= 0.001) & (eps <= 0.999))
    adate = load_adate(f"{document['files']['json'].rsplit('/', 1)[0]}/adate_proposal_1.json")
    assert adate.weights.shape == (3,) and np.all(adate.weights >= 0)
    saved = json.loads(open(document["files"]["json"]).read())
    assert saved["methods"][1]["estimate"] == document["methods"][1]["estimate"]


def test_non_highway_scenarios_are_refused(tmp_path):
    with pytest.raises(InputError, match="evaluate needs"):
        evaluate_highway("scenarios/classic/cartpole.toml", controller="builtin:random", methods=["nade"],
                         store_path=tmp_path / "s.sqlite")
