"""``safetybed bench train``'s learning half: knob mapping, stored resumable jobs, worker-count independence."""

from __future__ import annotations

import json
import math

import pytest
import torch

from safetybed.control.bench_learning import Job, Plan, effective_knobs, run_jobs, side_config
from safetybed.control.bench_train import Protocol
from safetybed.errors import InputError

TINY = Protocol(hidden=(8, 8), activation="relu", batch_size=16, learning_starts=50, device=torch.device("cpu"),
                compile=False)


def test_knobs_map_onto_each_sides_own_settings_and_defaults_share_a_job():
    assert side_config("dsac_t", {"learning_rate": 3e-4, "init_alpha": 1.0}, TINY, steps=500) == {
        "learning_starts": 50, "batch_size": 16, "buffer_size": 500, "env_steps_per_round": 1,
        "updates_per_round": 1, "critic_learning_rate": 3e-4, "actor_learning_rate": 3e-4, "init_log_alpha": 0.0}
    assert side_config("sb3_sac", {"init_alpha": math.e}, TINY, steps=500)["ent_coef"] == "auto_2.71828"
    assert side_config("sb3_ppo", {"learning_rate": 1e-3}, TINY, steps=500) == {"learning_rate": 1e-3}
    # A grid point equal to a side's default is the default run; a knob the side lacks is dropped.
    assert effective_knobs("sb3_sac", {"learning_rate": 3e-4, "init_alpha": 1.0}) == ()
    assert effective_knobs("dsac_t", {"learning_rate": 1e-4, "init_alpha": math.e}) == ()
    assert effective_knobs("mdpo_off", {"learning_rate": 1e-4, "init_alpha": 1.0}) == (("learning_rate", 1e-4),)
    with pytest.raises(ValueError, match="knobs: expected some of"):
        effective_knobs("dsac_t", {"gamma": 0.9})
    plan = Plan(tasks={"classic/pendulum": 200}, sides=("dsac_t", "sb3_sac"), seeds=2, grid_seeds=1)
    grid = set(plan.grid_jobs())
    assert len(grid) == 8 and set(plan.default_jobs()) & grid == {  # one grid point per side is its default
        plan.job("classic/pendulum", side, 0, {}) for side in ("dsac_t", "sb3_sac")}


def test_results_do_not_depend_on_the_worker_count_and_a_rerun_resumes(tmp_path):
    jobs = [Job(task="classic/pendulum", side=side, seed=seed, steps=120, eval_episodes=1, curve_points=2,
                curve_episodes=1) for side in ("dsac_t", "sb3_sac") for seed in (0, 1)]
    serial = run_jobs(jobs, TINY, out_dir=tmp_path / "one", workers=1)
    parallel = run_jobs(jobs, TINY, out_dir=tmp_path / "two", workers=2)
    for job in jobs:
        assert serial[job.key]["final_return"] == parallel[job.key]["final_return"]
        assert serial[job.key]["curve"] == parallel[job.key]["curve"] and len(serial[job.key]["curve"]) == 2
    assert serial[jobs[0].key]["final_return"] != serial[jobs[1].key]["final_return"]  # the seed matters
    lines: list[str] = []
    again = run_jobs(jobs, TINY, out_dir=tmp_path / "one", workers=1, progress=lines.append)
    assert lines == ["4 runs planned, 4 stored, 0 to train (1 at a time)"]
    assert {key: value["final_return"] for key, value in again.items()} == \
        {key: value["final_return"] for key, value in serial.items()}
    path = tmp_path / "one" / "jobs" / f"{jobs[0].key}.json"
    stored = json.loads(path.read_text())
    stored["protocol"]["batch_size"] = 32
    path.write_text(json.dumps(stored))
    with pytest.raises(InputError, match="field protocol"):
        run_jobs(jobs, TINY, out_dir=tmp_path / "one", workers=1)


def test_cli_runs_writes_the_report_and_refuses_bad_options(tmp_path, cli):
    out = tmp_path / "bench"
    code, stdout, _ = cli("bench", "train", "--task", "classic/pendulum=120", "--seeds", "2", "--grid-seeds", "1",
                          "--side", "dsac_t", "--side", "sb3_sac", "--no-tune", "--no-ablation", "--hidden", "8,8",
                          "--batch-size", "16", "--learning-starts", "50", "--no-throughput", "--out", str(out))
    assert code == 0, stdout
    document = json.loads((out / "bench_train.json").read_text())
    rows = document["learning"]["rows"]
    assert {(row["side"], row["setting"]) for row in rows} == {("dsac_t", "default"), ("sb3_sac", "default")}
    assert all(row["summary"]["n"] == 2 for row in rows)
    assert "learning curves classic/pendulum" in (out / "report.html").read_text()
    assert cli("bench", "train", "--task", "classic/pendulum=ten", "--out", str(out))[0] == 2
    code, _, stderr = cli("bench", "train", "--side", "td3", "--out", str(out))
    assert code == 2 and "--side" in stderr


def test_fixed_tuned_points_skip_the_grid_and_the_ablation_moves_to_its_task(tmp_path, cli):
    assert side_config("dsac_t", {"delay_update": 1}, TINY, steps=500)["delay_update"] == 1
    assert side_config("dsac_t", {"target_policy": 0.0}, TINY, steps=500)["target_policy"] is False
    assert side_config("dsac_t", {"log_std_max": 2.0}, TINY, steps=500)["log_std_max"] == 2.0
    assert effective_knobs("dsac_t", {"log_std_max": 0.5}) == ()  # the DSAC-T code's ceiling is the default
    assert effective_knobs("dsac_t", {"delay_update": 2}) == ()  # the paper's default
    assert effective_knobs("sb3_sac", {"delay_update": 1}) == ()  # SB3 has no such knob
    plan = Plan(tasks={"classic/pendulum": 200, "bullet/reach": 300}, sides=("dsac_t", "sb3_sac"), seeds=2,
                grid_seeds=1, fixed_tuned={"dsac_t": {"learning_rate": 3e-4}, "sb3_sac": {"learning_rate": 3e-4}},
                ablation_task="bullet/reach")
    assert plan.grid_jobs() == []
    assert {job.task for job in plan.ablation_jobs()} == {"bullet/reach"}
    from safetybed.control.bench_learning import choose_tuned

    assert choose_tuned(plan, {}) == {"dsac_t": {"learning_rate": 3e-4}, "sb3_sac": {}}  # SB3's 3e-4 = default
    out = tmp_path / "bench"
    code, stdout, _ = cli("bench", "train", "--task", "classic/pendulum=120", "--seeds", "1", "--side", "dsac_t",
                          "--tuned", "dsac_t:learning_rate=3e-4,delay_update=1", "--no-ablation", "--hidden", "8,8",
                          "--batch-size", "16", "--learning-starts", "50", "--no-throughput", "--out", str(out))
    assert code == 0, stdout
    learning = json.loads((out / "bench_train.json").read_text())["learning"]
    assert learning["tuned_fixed"] and learning["grid"] == []
    assert learning["tuned"] == {"dsac_t": {"delay_update": 1.0, "learning_rate": 3e-4}}
    assert {row["setting"] for row in learning["rows"]} == {"default", "tuned"}
    for bad, field in (("td3:learning_rate=1", "side"), ("sb3_sac:delay_update=1", "knobs"),
                       ("dsac_t:learning_rate=fast", "number")):
        code, _, stderr = cli("bench", "train", "--task", "classic/pendulum=120", "--tuned", bad, "--out", str(out))
        assert code == 2 and "--tuned" in stderr and field in stderr, stderr
    code, _, stderr = cli("bench", "train", "--task", "classic/pendulum=120", "--ablation-task", "bullet/reach",
                          "--out", str(out))
    assert code == 2 and "--ablation-task" in stderr


def test_throughput_measures_every_side_in_one_run_and_formats_ratios():
    from safetybed.control.bench_train import OURS_THROUGHPUT, bench_throughput, format_table

    result = bench_throughput(tasks=["classic/pendulum"], device="cpu", compile=False, batch_size=16, hidden=(8, 8),
                              throughput_steps=40, throughput_updates=3, repeats=1)
    (row,) = result["throughput"]
    assert set(row["medians"]) == {*OURS_THROUGHPUT, "sb3_sac"} and "dsac_t_fused" in OURS_THROUGHPUT
    for name in OURS_THROUGHPUT:  # rates are reported, never asserted: only that they are real numbers
        assert row[f"{name}_vs_sb3_updates_per_s"] > 0 and math.isfinite(row[f"{name}_vs_sb3_env_steps_per_s"])
    assert "dsac_t_fused" in format_table(result)
