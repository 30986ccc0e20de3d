"""Every fixed ``spawn_key`` of a :class:`numpy.random.SeedSequence` in safetybed, named in one place.

A random stream is ``SeedSequence(root, spawn_key=(..., KEY))``: two streams spawned from one root with the same
key draw the same numbers, so no two keys here are equal (:func:`collisions`, checked on import and by
``tests/test_seeding_keys.py``). The values are frozen: changing one changes every record drawn from its stream.

Keys not listed are positions, not constants: episode ``i`` of a run is ``spawn_key=(i,)`` of the run seed
(:mod:`safetybed.runner.seeding`), a highway vehicle's driver is ``(vehicle_id,)`` of the episode's traffic
entropy (:mod:`safetybed.sims.highway`), and an evaluation method's test seed is ``(its index in
safetybed.evaluate.methods.METHODS,)`` of the evaluation seed.
"""

from __future__ import annotations

import zlib

# -- from the seed an episode's environment and controller are reset with: SeedSequence(seed, spawn_key=(KEY,)) --
#: :class:`safetybed.control.base.Controller`'s own generator ``rng`` (a controller's random draws).
CONTROLLER_RNG = 0xC7
#: :class:`safetybed.sims.base.ObservationNoise`, the scenario's observation noise. Certification draws from the
#: same stream on purpose (``certify.attack``'s smoothing noise, ``SmoothedController(noise_spawn_key=...)``),
#: so that ``budget = 0`` reproduces the runner's noisy episodes draw for draw.
OBSERVATION_NOISE = 0x0B5
#: A smoothed controller's noise: :class:`safetybed.certify.smoothing.SmoothedController` by default, and
#: :class:`safetybed.control.runtime.BundleController`, so a deployed bundle with ``smoothing_sigma`` draws the
#: noise of the controller that was certified.
SMOOTHING_NOISE = 0x5E0
#: The torch generator of :class:`safetybed.control.policy.PolicyController` (stochastic actions), seeded with
#: this stream's first 32-bit word.
POLICY_SAMPLING = 0x70
#: :class:`safetybed.sims.testing.tester.HighwayTester`'s maneuver draws ("NAD" in ASCII).
NADE_TESTER = 0x4E4144

# -- from a run seed, after episode i's own key: SeedSequence(run_seed, spawn_key=(i, KEY)) --------------------
#: The adversary of attacked episode ``i`` (EOT noise samples, random starts; :mod:`safetybed.certify.attack`).
ADVERSARY = 0xA77

# -- from the evaluation seed: SeedSequence(seed, spawn_key=(KEY,)) --------------------------------------------
#: The training seed of the highway D2RL proposal. The method test seeds share this root with keys
#: ``0 .. len(METHODS) - 1``, all below it; run chunks use ``(label_key(label), chunk)``.
HIGHWAY_D2RL_TRAINING = 77

# -- from a planner spec's [train] seed: SeedSequence(seed, spawn_key=(KEY, scenario index, round)) --------------
#: The highway planner's training episodes and exploration draws (:mod:`safetybed.control.planner.train`).
PLANNER_TRAINING = 0x91A

#: Every fixed key, by name.
KEYS: dict[str, int] = {
    "CONTROLLER_RNG": CONTROLLER_RNG,
    "OBSERVATION_NOISE": OBSERVATION_NOISE,
    "SMOOTHING_NOISE": SMOOTHING_NOISE,
    "POLICY_SAMPLING": POLICY_SAMPLING,
    "NADE_TESTER": NADE_TESTER,
    "ADVERSARY": ADVERSARY,
    "HIGHWAY_D2RL_TRAINING": HIGHWAY_D2RL_TRAINING,
    "PLANNER_TRAINING": PLANNER_TRAINING,
}


def label_key(label: str) -> int:
    """The spawn key of a labelled stream (the evaluation pipeline's run chunks): the CRC-32 of the label."""
    return zlib.crc32(label.encode())


def collisions(keys: dict[str, int] = KEYS) -> list[str]:
    """``"A and B are both 0x.."`` for every later name in ``keys`` whose value an earlier one has."""
    first: dict[int, str] = {}
    found = []
    for name, key in keys.items():
        if key in first:
            found.append(f"{first[key]} and {name} are both {key:#x}")
        else:
            first[key] = name
    return found


if collisions():
    raise RuntimeError(f"safetybed.seeding_keys: spawn keys collide: {'; '.join(collisions())}")
