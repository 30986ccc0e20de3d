"""Every fixed spawn key lives in safetybed.seeding_keys, no two collide, and the values never change."""

from __future__ import annotations

import ast

from safetybed import seeding_keys
from safetybed.seeding_keys import KEYS, collisions, label_key

from .conftest import REPO_ROOT

#: The values records were drawn with: changing one changes stored runs, certificates and evaluations.
PINNED = {"CONTROLLER_RNG": 0xC7, "OBSERVATION_NOISE": 0x0B5, "SMOOTHING_NOISE": 0x5E0, "POLICY_SAMPLING": 0x70,
          "NADE_TESTER": 0x4E4144, "ADVERSARY": 0xA77, "HIGHWAY_D2RL_TRAINING": 77,
          "PLANNER_TRAINING": 0x91A}


def test_keys_are_pinned_and_named_once():
    assert KEYS == PINNED
    assert {name: getattr(seeding_keys, name) for name in KEYS} == PINNED
    assert label_key("nade") == 0x8FE1C54F  # zlib.crc32(b"nade"): the evaluation's chunk seeds


def test_no_two_keys_collide():
    assert collisions() == []
    assert collisions({"A": 1, "B": 2, "C": 1}) == ["A and C are both 0x1"]


def test_method_keys_stay_below_the_d2rl_training_key():
    """The evaluation seed spawns each method's test seed with the method's index (and D2RL's training seed)."""
    from safetybed.evaluate.methods import METHODS

    assert len(METHODS) <= seeding_keys.HIGHWAY_D2RL_TRAINING


def _literal_spawn_keys(path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "spawn_key" and any(isinstance(leaf, ast.Constant) and isinstance(leaf.value, int)
                                                      for leaf in ast.walk(keyword.value)):
                    yield f"{path.relative_to(REPO_ROOT)}:{node.lineno}"


def test_no_spawn_key_literal_outside_the_registry():
    found = [site for path in sorted((REPO_ROOT / "safetybed").rglob("*.py")) for site in _literal_spawn_keys(path)]
    assert found == [], f"name these keys in safetybed/seeding_keys.py: {found}"
