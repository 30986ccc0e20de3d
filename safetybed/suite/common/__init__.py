"""Shared toy problems and helpers of the suite, written once: tabular MDPs, bandits and the offline datasets
recorded by ``safetybed run`` and read back from the run store."""
