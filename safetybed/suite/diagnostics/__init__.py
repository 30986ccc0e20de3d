"""Diagnostics: where a trained controller breaks (suite II)."""
