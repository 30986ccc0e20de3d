"""The algorithm suite: the seed papers' methods, each runnable, checked and measured on a small problem.

One module per method under a family folder (``offline_rl/``, ``policy_opt/``, ...); shared toy problems in
``common/``. Every module registers one :class:`~safetybed.suite.registry.SuiteEntry` in a module-level
``ENTRY``; :func:`~safetybed.suite.registry.entries` finds them. The suite is a leaf: nothing outside it imports
it but the CLI. The catalogue with the measured verdicts is ``docs/suite.md`` (``safetybed suite report``).
"""
