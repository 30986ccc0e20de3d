"""Controllers: the batched interface, built-in rule-based controllers and controller loading."""

from safetybed.control.base import Controller, RandomController
from safetybed.control.loading import load_controller

__all__ = ["Controller", "RandomController", "load_controller"]
