"""Simulator adapters: highway-env (driving), pybullet/panda-gym (robotics), gymnasium classic control."""

from safetybed.sims.base import StepSafety, apply_perturbations, empty_safety, make_env

__all__ = ["StepSafety", "apply_perturbations", "empty_safety", "make_env"]
