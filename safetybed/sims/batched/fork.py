"""Fork a running batch: every episode continued in ``repeats`` independent copies, from its exact current state.

A trajectory-scoring planner is supervised by simulating each of its candidate trajectories from the state it
is in (Hydra-MDP's offline PDM sub-scores; ``research/centaur_dsac.md`` §1.1). :func:`fork_rows` gives that state
``repeats`` times over: row ``b * repeats + r`` of the fork is copy ``r`` of episode ``b``, with every per-episode
tensor (leading dimension ``batch``) repeated and every batch-wide counter (frames, control step) kept. Episodes
never interact (:mod:`.sim`), so each copy runs exactly as the original would under the same actions.

Naturalistic traffic (``driver.model = "naturalistic"``) is forked with it: the drivers' per-episode state and their
random streams (pre-drawn uniforms, a function of each episode's entropy) are repeated too, so every copy of an
episode meets the same traffic randomness (common random numbers) and differs from the others only through the
ego's actions and their consequences.
"""

from __future__ import annotations

import copy

import torch

from safetybed.sims.batched.sim import BatchedHighway


def fork_rows(sim: BatchedHighway, repeats: int) -> BatchedHighway:
    """A new :class:`BatchedHighway` of ``sim.batch * repeats`` rows (module docstring); ``sim`` is untouched."""
    if repeats < 1:
        raise ValueError(f"repeats: expected >= 1, got {repeats}")
    if sim.batch == 0:
        raise RuntimeError("fork_rows: the batch has not been reset yet")
    batch = sim.batch
    fork = _repeated(sim, batch, repeats)
    fork.batch = batch * repeats
    fork._envs = torch.arange(fork.batch, device=sim.device)
    fork._table = None
    if sim.naturalistic is not None:
        fork.naturalistic = _repeated(sim.naturalistic, batch, repeats)
        fork.naturalistic.sim = fork
    return fork


def _repeated(source: object, batch: int, repeats: int) -> object:
    """A shallow copy of ``source`` whose per-episode tensors and lists (leading length ``batch``) are repeated."""
    target = copy.copy(source)
    for name, value in vars(source).items():
        if name == "_envs":
            continue
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch:
            setattr(target, name, value.repeat_interleave(repeats, dim=0).clone())
        elif isinstance(value, list) and len(value) == batch:
            setattr(target, name, [item for item in value for _ in range(repeats)])
    return target
