"""Per-episode seeds.

Episode ``i`` of a run with seed ``s`` is seeded from ``SeedSequence(s).spawn(n)[i]``, i.e. the
sequence with ``spawn_key=(i,)``. Building that child directly (instead of spawning ``n`` children)
gives the same seed for any ``n``, any worker count and any resume point.
"""

from __future__ import annotations

import numpy as np

MAX_RUN_SEED = 2**63 - 1


def episode_sequence(run_seed: int, index: int) -> np.random.SeedSequence:
    """The ``SeedSequence`` of episode ``index``: identical to ``SeedSequence(run_seed).spawn(index + 1)[index]``."""
    if not 0 <= run_seed <= MAX_RUN_SEED:
        raise ValueError(f"run_seed: expected an integer in [0, 2**63), got {run_seed}")
    if index < 0:
        raise ValueError(f"index: expected >= 0, got {index}")
    return np.random.SeedSequence(run_seed, spawn_key=(index,))


def episode_seed(run_seed: int, index: int) -> int:
    """A 63-bit integer seed for ``env.reset(seed=...)`` and ``controller.reset(seed=...)``."""
    high, low = episode_sequence(run_seed, index).generate_state(2, dtype=np.uint32)
    return int((int(high) << 32 | int(low)) & MAX_RUN_SEED)
