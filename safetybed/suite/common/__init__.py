"""Shared toy problems and helpers of the suite, written once: tabular MDPs, bandits and the offline datasets
recorded by ``safetybed run`` and read back from the run store, and the digit-addition task with a tiny GRU
policy (``seq_task``) for the sequence-level policy gradients."""
