"""Sequence-level policy gradients for language-model-style policies, on the digit task and on driving episodes (suite III)."""
