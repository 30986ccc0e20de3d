"""``safetybed bench batched --quick --json``: the document's structure and positive ratios (never timings)."""

from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 cores shared: torch threads would wait on each other


def _positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_bench_batched_quick_json(cli):
    code, stdout, stderr = cli("bench", "batched", "--quick", "--json", "--device", "cpu")
    assert code == 0, stderr
    document = json.loads(stdout)  # exactly one JSON document on stdout
    assert set(document) == {"device", "repeats", "quick", "traffic", "policy", "envpool"}
    device = document["device"]
    assert device["type"] == "cpu" and device["dtype"] == "float32" and device["torch_threads"] >= 1
    assert isinstance(device["name"], str) and device["name"]
    assert document["quick"] is True and document["repeats"] == 1

    traffic = document["traffic"]
    assert traffic["frames_per_control_step"] == 15
    assert _positive(traffic["highway_env"]["vehicle_frames_per_s"])
    assert [row["batch"] for row in traffic["rows"]] == [1, 4]
    for row in traffic["rows"]:
        assert {"batch", "control_steps", "vehicles", "env_steps_per_s", "vehicle_frames_per_s", "reset_s",
                "ratio"} <= set(row)
        assert _positive(row["ratio"]) and _positive(row["vehicle_frames_per_s"]) and row["vehicles"] > row["batch"]

    policy = document["policy"]
    assert policy["scenario"] == "highway/cut_in" and policy["controller"] == "builtin:idm"
    assert policy["driver"] in ("idm", "naturalistic")
    assert policy["episode_steps"] == 3 and 1 <= policy["highway_env"]["policy_steps"] <= 3
    assert [row["batch"] for row in policy["rows"]] == [1, 4]
    for row in policy["rows"]:
        assert row["episodes"] == row["batch"]
        assert row["batch"] <= row["policy_steps"] <= row["batch"] * policy["episode_steps"]
        assert _positive(row["ratio_policy_steps"]) and _positive(row["ratio_episodes"])

    envpool = document["envpool"]
    if envpool["measured"]:
        assert all(_positive(row["ratio"]) for row in envpool["rows"])
    else:
        assert "not measured" in envpool["note"]


def test_bench_batched_table_and_errors(cli):
    code, stdout, stderr = cli("bench", "batched", "--quick", "--device", "cpu", "--batch-sizes", "2",
                               "--policy-batch-sizes", "2")
    assert code == 0, stderr
    assert "vehicle-frames/s" in stdout and "highway-env" in stdout and "batched cpu" in stdout
    assert stdout.count("x\n") >= 4  # a ratio on every row
    code, _, stderr = cli("bench", "batched", "--quick", "--batch-sizes", "1,99999")
    assert code == 2 and "16384" in stderr
    code, _, stderr = cli("bench", "batched", "--quick", "--batch-sizes", "a")
    assert code == 2 and "--batch-sizes" in stderr


@pytest.mark.parametrize("driver", ["idm"])
def test_bench_batched_explicit_driver(cli, driver):
    code, stdout, stderr = cli("bench", "batched", "--quick", "--json", "--device", "cpu", "--batch-sizes", "1",
                               "--policy-batch-sizes", "1", "--driver", driver)
    assert code == 0, stderr
    assert json.loads(stdout)["policy"]["driver"] == driver
