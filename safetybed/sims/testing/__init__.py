"""The NADE tester and what it needs at run time (simulator side; numpy, torch for D2RL's policy, no trainers).

* :mod:`~safetybed.sims.testing.critical`: critical-step contexts, decisions and the defensive mixture;
* :mod:`~safetybed.sims.testing.lookahead`: maneuver challenge under surrogate egos;
* :mod:`~safetybed.sims.testing.nade`, :mod:`~safetybed.sims.testing.d2rl_proposal`,
  :mod:`~safetybed.sims.testing.adate_proposal`: the proposals at inference (and their file formats);
* :mod:`~safetybed.sims.testing.tester`: :class:`HighwayTester`, the wrapper that logs every critical step.

Training the D2RL and AdaTE proposals, and estimating crash rates from stored tests, is in
:mod:`safetybed.evaluate`.
"""
