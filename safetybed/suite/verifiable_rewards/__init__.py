"""Staged and structured verifiable rewards: grounding boxes, temporal IoU (suite III)."""
