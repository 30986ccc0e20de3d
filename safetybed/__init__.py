"""safetybed: a simulation-focused safety and robustness testbed for learned controllers.

The package is organised by concept (see ``DESIGN.md``):

* :mod:`safetybed.spec`    -- TOML scenario specs, validated with pydantic;
* :mod:`safetybed.sims`    -- simulator adapters (highway-env, pybullet/panda-gym, classic control);
* :mod:`safetybed.control` -- the controller interface and built-in controllers;
* :mod:`safetybed.runner`  -- seeded batch runs, executors and the SQLite run store;
* :mod:`safetybed.cli`     -- the ``safetybed`` command.
"""

__version__ = "0.1.0"
