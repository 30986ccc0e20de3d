"""Scenario spec validation: every malformed spec exits 2 with one message naming file, field and reason."""

from __future__ import annotations

import textwrap

import pytest

from safetybed.errors import SpecError
from safetybed.spec import load_scenario, parse_scenario

from .conftest import assert_validate_rejects

GOOD = """
name = "t/highway"
simulator = "highway"
task = "cut_in"
episode_steps = 10
"""

# (id, TOML text, field expected in the message, words expected in the reason)
MALFORMED = [
    ("unknown-top-key", GOOD + "episdoe_steps = 3\n", "episdoe_steps", "unknown key"),
    ("unknown-section-key", GOOD + "[highway]\nlanez = 3\n", "highway.lanez", "unknown key"),
    ("unknown-nested-key", GOOD + "[highway.driver]\nsigma = 0.3\n", "highway.driver.sigma", "unknown key"),
    ("unknown-section", GOOD + "[traffic]\nlanes = 3\n", "traffic", "unknown key"),
    ("missing-name", 'simulator = "highway"\ntask = "cut_in"\nepisode_steps = 10\n', "name", "missing"),
    ("missing-simulator", 'name = "x"\ntask = "cut_in"\nepisode_steps = 10\n', "simulator", "missing"),
    ("missing-steps", 'name = "x"\nsimulator = "highway"\ntask = "cut_in"\n', "episode_steps", "missing"),
    ("bad-simulator", GOOD.replace('"highway"', '"carla"'), "simulator", "highway"),
    ("bad-task", GOOD.replace('"cut_in"', '"cutin"'), "task", "expected one of"),
    ("task-of-other-sim", GOOD.replace('"cut_in"', '"reach"'), "task", "expected one of"),
    ("steps-zero", GOOD.replace("episode_steps = 10", "episode_steps = 0"), "episode_steps", "greater than"),
    ("steps-string", GOOD.replace("episode_steps = 10", 'episode_steps = "10"'), "episode_steps", "integer"),
    ("steps-float", GOOD.replace("episode_steps = 10", "episode_steps = 10.5"), "episode_steps", "integer"),
    ("lanes-too-many", GOOD + "[highway]\nlanes = 60\n", "highway.lanes", "less than"),
    ("lanes-type", GOOD + "[highway]\nlanes = \"three\"\n", "highway.lanes", "integer"),
    ("negative-speed", GOOD + "[highway]\nego_speed_mps = -3.0\n", "highway.ego_speed_mps", "greater than"),
    ("sigma-zero", GOOD + "[highway.driver]\naccel_sigma_mps2 = 0.0\n", "highway.driver.accel_sigma_mps2",
     "greater than"),
    ("driver-model", GOOD + "[highway.driver]\nmodel = \"human\"\n", "highway.driver.model", "naturalistic"),
    ("noise-negative", GOOD + "[perturbations]\nobservation_noise_std = -1.0\n",
     "perturbations.observation_noise_std", "greater than"),
    ("delay-type", GOOD + "[perturbations]\naction_delay_steps = 1.5\n", "perturbations.action_delay_steps",
     "integer"),
    ("metrics-bool", GOOD + "[metrics]\nper_step_log = \"yes\"\n", "metrics.per_step_log", "boolean"),
    ("wrong-section", GOOD + "[bullet]\nmass_scale = 2.0\n", "bullet", "not allowed"),
    ("bullet-vector-length",
     'name = "b"\nsimulator = "bullet"\ntask = "reach"\nepisode_steps = 5\n[bullet]\nworkspace_low_m = [0.0, 0.0]\n',
     "bullet.workspace_low_m", "at least 3"),
    ("bullet-mass-zero",
     'name = "b"\nsimulator = "bullet"\ntask = "push"\nepisode_steps = 5\n[bullet]\nmass_scale = 0.0\n',
     "bullet.mass_scale", "greater than"),
    ("classic-unknown",
     'name = "c"\nsimulator = "classic"\ntask = "cartpole"\nepisode_steps = 5\n[classic]\ngravity = 3.0\n',
     "classic.gravity", "unknown key"),
    ("name-empty", GOOD.replace('name = "t/highway"', 'name = ""'), "name", "at least 1"),
    ("section-not-table", GOOD + "highway = 3\n", "highway", "valid dictionary"),
    ("invalid-toml", GOOD + "lanes = [1, \n", "", "invalid TOML"),
    ("extends-missing", 'extends = "nope.toml"\n' + GOOD, "extends", "not found"),
    ("extends-type", "extends = 3\n" + GOOD, "extends", "relative path"),
]


@pytest.mark.parametrize(("case", "text", "field", "reason"), MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_spec_exits_2_naming_file_and_field(cli, tmp_path, case, text, field, reason):
    assert_validate_rejects(cli, tmp_path, case, text, field, reason)


def test_table_has_at_least_20_cases():
    assert len(MALFORMED) >= 20


def test_missing_file_exits_2(cli, tmp_path):
    code, _, stderr = cli("scenarios", "validate", str(tmp_path / "absent.toml"))
    assert code == 2
    assert "absent.toml" in stderr and "not found" in stderr


def test_extends_merges_tables(tmp_path):
    (tmp_path / "base.toml").write_text(GOOD + "[highway]\nlanes = 4\nvehicles = 7\n", encoding="utf-8")
    (tmp_path / "child.toml").write_text(textwrap.dedent("""
        extends = "base.toml"
        name = "child"
        [highway]
        vehicles = 3
    """), encoding="utf-8")
    spec = load_scenario(tmp_path / "child.toml")
    assert spec.name == "child"
    assert spec.highway.lanes == 4 and spec.highway.vehicles == 3


def test_extends_cycle_is_an_error(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n' + GOOD, encoding="utf-8")
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n' + GOOD, encoding="utf-8")
    with pytest.raises(SpecError, match="circular"):
        load_scenario(tmp_path / "a.toml")


def test_default_section_is_filled_in():
    spec = parse_scenario({"name": "x", "simulator": "classic", "task": "cartpole", "episode_steps": 200})
    assert spec.classic is not None and spec.section() is spec.classic


def test_every_catalogue_scenario_is_valid(cli):
    from safetybed.spec.catalogue import list_scenarios

    paths = [str(path) for path in list_scenarios().values()]
    assert paths, "the scenario catalogue is empty"
    code, _, stderr = cli("scenarios", "validate", *paths)
    assert code == 0, stderr


def test_scenarios_readme_documents_every_field():
    """docs stay true: each field of each section model is named in scenarios/README.md."""
    from safetybed.spec.bullet import BulletSpec
    from safetybed.spec.classic import ClassicSpec
    from safetybed.spec.highway import CutInSpec, EgoSpec, HighwaySpec, NaturalisticDriverSpec, OvertakingSpec
    from safetybed.spec.scenario import MetricsSpec, PerturbationSpec, ScenarioSpec

    from .conftest import REPO_ROOT

    readme = (REPO_ROOT / "scenarios" / "README.md").read_text(encoding="utf-8")
    models = (ScenarioSpec, PerturbationSpec, MetricsSpec, HighwaySpec, NaturalisticDriverSpec, EgoSpec, CutInSpec,
              OvertakingSpec, BulletSpec, ClassicSpec)
    missing = [f"{model.__name__}.{name}" for model in models for name in model.model_fields
               if f"`{name}`" not in readme and f".{name}`" not in readme and f"`{name}," not in readme
               and f", `{name}`" not in readme and f"[{name}]" not in readme and f".{name}]" not in readme]
    assert not missing, f"undocumented spec fields: {missing}"
