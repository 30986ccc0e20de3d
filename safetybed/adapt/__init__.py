"""Test-time adaptation, evaluated (issue 15): ``safetybed adapt`` compares none / Centaur / TENT on shifted suites.

The planner and the adaptation rules are controllers and live in :mod:`safetybed.control.planner`; this part runs
them through the batch runner and measures collisions, safety margins, progress, failure detection and latency
(:mod:`safetybed.adapt.evaluation`).
"""
