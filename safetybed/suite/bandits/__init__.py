"""Bandits: contextual bandits with regression oracles (suite II)."""
