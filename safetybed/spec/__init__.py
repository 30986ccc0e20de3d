"""TOML spec loading and validation."""

from safetybed.spec.scenario import (
    MetricsSpec,
    PerturbationSpec,
    ScenarioSpec,
    load_scenario,
    parse_scenario,
)

__all__ = ["MetricsSpec", "PerturbationSpec", "ScenarioSpec", "load_scenario", "parse_scenario"]
