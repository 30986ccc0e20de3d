"""The suite's registry, its CLI and the catalogue page: every entry issues 17-21 ask for is registered, has its
own test file and a stored full-demo result, and docs/suite.md is what ``safetybed suite report`` renders from them."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest

from safetybed.suite.registry import (
    VERDICTS,
    DemoResult,
    entries,
    load_result,
    measure,
    render_markdown,
    save_result,
)

REPO = Path(__file__).resolve().parents[1]
#: Algorithm suite I (issue 17), by entry name.
SUITE_I = {"traj-weighting", "odice", "policy-guided-diffusion", "hnpg", "props", "optimistic-actor-critic", "parl",
           "dichotomy-of-control", "a2pr"}
#: Algorithm suite II (issue 18).
SUITE_II = {"diagnose-unstable-directions", "vagram", "groove", "npg-variance-reduced", "ggtd", "martingale-pe",
            "distributional-dp", "squarecb"}
#: Algorithm suite III (issue 19).
SUITE_III = {"remax", "difficulty-filter", "entropy-cov", "brpo", "ghpo", "one-shot-rlvr", "gvm-raft",
             "satori-staged-rewards", "temporal-r1"}
#: Algorithm suite IV (issue 20).
SUITE_IV = {"f-dpg", "copg", "nash-mp", "rpo", "onpolicy-neggrad", "tvdpp", "automate-cot", "promptpg", "rldp"}
#: Algorithm suite V (issue 21).
SUITE_V = {"pada", "oomd-sea", "variance-corrected-averaging", "diff2", "fl-curriculum", "bsvrb", "adaptive-guidance",
           "deep-xva"}
SUITES = SUITE_I | SUITE_II | SUITE_III | SUITE_IV | SUITE_V


def _result(**changes) -> DemoResult:
    fields = dict(name="x", claim="c", measured={"return": measure([1.0, 2.0, 3.0], unit="return")},
                  baseline={"return": measure([0.5])}, verdict="partly", why="w", fast=False, seeds=(0, 1, 2),
                  settings={"steps": 3}, wall_s=1.5)
    return DemoResult(**{**fields, **changes})


def test_measure_is_the_student_t_mean_interval():
    m = measure([1.0, 2.0, 3.0])
    assert (m.mean, m.n) == (2.0, 3)
    assert m.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t_{0.975,2} s / sqrt(n), s = 1
    assert math.isnan(measure([4.0]).half_width) and measure([4.0]).text() == "4"


def test_demo_result_round_trips_and_refuses_unknown_verdicts(tmp_path):
    result = _result(baseline={"return": measure([0.5, 1.5])})
    assert DemoResult.from_json_dict(json.loads(json.dumps(result.to_json_dict()))) == result
    single = DemoResult.from_json_dict(json.loads(json.dumps(_result().to_json_dict())))
    assert math.isnan(single.baseline["return"].half_width)  # one seed: no interval, stored as null
    with pytest.raises(ValueError, match="verdict"):
        _result(verdict="worked")
    with pytest.raises(ValueError, match="fast"):
        save_result(_result(fast=True), root=tmp_path)
    save_result(result, root=tmp_path)
    assert load_result("x", root=tmp_path) == result and load_result("y", root=tmp_path) is None


def test_every_suite_entry_is_registered_with_its_own_tests():
    found = {entry.name: entry for entry in entries()}
    assert SUITES <= set(found), f"missing entries: {sorted(SUITES - set(found))}"
    for entry in found.values():
        assert entry.name == entry.name.lower() and " " not in entry.name
        assert entry.module.startswith(f"safetybed.suite.{entry.family}.")
        assert entry.title and entry.citation and callable(entry.rule) and inspect.getdoc(entry.rule)
        parameters = inspect.signature(entry.demo).parameters
        assert {"fast", "seed"} <= set(parameters)
        assert all(parameters[p].kind is inspect.Parameter.KEYWORD_ONLY for p in ("fast", "seed", *entry.options))
        assert all(parameters[p].default is None for p in entry.options), f"{entry.name}: options default to None"
        test_file = REPO / "tests" / f"test_suite_{entry.module.rsplit('.', 1)[1]}.py"
        assert test_file.exists(), f"{entry.name}: no {test_file.name}"


def test_every_suite_entry_has_a_stored_full_result_and_docs_suite_md_is_current():
    rows = [(entry, load_result(entry.name, root=REPO)) for entry in entries()]
    for entry, result in rows:
        if entry.name in SUITES:
            assert result is not None, f"{entry.name}: run `safetybed suite run {entry.name}`"
            assert not result.fast and result.verdict in VERDICTS and result.measured and result.why
    assert (REPO / "docs" / "suite.md").read_text() == render_markdown(rows), "run `safetybed suite report`"


def test_suite_cli_list_report_and_errors(cli, tmp_path):
    code, stdout, _ = cli("suite", "list", "--json")
    assert code == 0
    listed = {row["name"]: row for row in json.loads(stdout)}
    assert SUITES <= set(listed) and all(listed[n]["verdict"] in VERDICTS for n in SUITES)
    code, _, stderr = cli("suite", "run", "no-such-method", "--fast")
    assert code == 2 and "no-such-method" in stderr and "traj-weighting" in stderr
    code, _, stderr = cli("suite", "run", "odice", "--fast", "--controller", "controllers/cartpole_ppo.toml")
    assert code == 2 and "--controller" in stderr and "odice" in stderr
    page = tmp_path / "suite.md"
    code, _, _ = cli("suite", "report", "--out", str(page))
    assert code == 0 and all(f"`{name}`" in page.read_text() for name in SUITES)


def test_entry_options_are_checked():
    from safetybed.errors import InputError
    from safetybed.suite.registry import SuiteEntry, run_demo

    def demo(*, fast, seed, controller=None):
        return _result(name="probe", settings={"controller": str(controller)})

    with pytest.raises(ValueError, match="unknown"):
        SuiteEntry(name="probe", title="t", citation="c", family="f", module="m", rule=demo, demo=demo,
                   options=("budget",))
    plain = SuiteEntry(name="probe", title="t", citation="c", family="f", module="m", rule=demo, demo=demo)
    with pytest.raises(InputError, match="--controller"):
        run_demo(plain, fast=True, controller=Path("x.toml"))
    assert run_demo(plain, fast=True, controller=None).settings == {"controller": "None"}
    taking = SuiteEntry(name="probe", title="t", citation="c", family="f", module="m", rule=demo, demo=demo,
                        options=("controller",))
    assert run_demo(taking, fast=True, controller=Path("x.toml")).settings == {"controller": "x.toml"}
