"""Offline RL: learning controllers from datasets recorded by the batch runner (suite I)."""
