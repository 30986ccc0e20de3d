"""Preference alignment and draft distillation on bandits and the tiny sequence model (suite IV)."""
