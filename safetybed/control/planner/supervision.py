"""Sub-score supervision: simulate every candidate trajectory from the state the planner scores it in.

Hydra-MDP is trained by distilling offline-simulated PDM sub-scores of every vocabulary trajectory plus imitation
of an expert (``research/centaur_dsac.md`` §1.1). Here the simulation is the batched highway backend itself: the
current batch is forked once per candidate (:func:`safetybed.sims.batched.fork.fork_rows`), each copy drives its
candidate's action plan open loop over the horizon (:meth:`safetybed.control.planner.vocabulary.Vocabulary.action_plans`),
and the outcomes become the labels (each ``[B, K]``, episode ``b``, candidate ``j``):

* ``nc``: no collision within the horizon (1 / 0);
* ``dac``: the plan's lane request, if any, targets a lane that exists (a request off the road is ignored by the
  ego, so the trajectory it names is not drivable);
* ``ttc``: the minimum time to collision with the leader stays at or above ``ttc_threshold_s`` (NAVSIM: 1 s);
* ``ep``: ego progress [m] over the horizon divided by the best candidate's (0 where it collided);
* ``c``: comfort: every change of commanded acceleration between steps within ``max_jerk_mps3`` [m/s^3].

The **expert** is the candidate with the best PDM score ``nc * dac * (5 ttc + 2 c + 5 ep) / 12`` (ties: the lowest
index), a search-based expert with the simulator as its model. The traffic's randomness is the same for every
candidate of an episode (the fork repeats it), so the search compares like with like; it is not the future the
episode itself will meet, so the expert is a planner under a known sample of the traffic, not an oracle.
"""

from __future__ import annotations

import torch

from safetybed.control.planner.vocabulary import Vocabulary
from safetybed.sims.batched.fork import fork_rows
from safetybed.sims.batched.sim import BatchedHighway


def candidate_outcomes(sim: BatchedHighway, vocabulary: Vocabulary, *, ttc_threshold_s: float = 1.0,
                       max_jerk_mps3: float = 4.0) -> dict[str, torch.Tensor]:
    """Labels of every candidate of every episode of ``sim`` (module docstring); ``sim`` itself does not move.

    Returns tensors ``[B, K]``: ``nc``, ``dac``, ``ttc``, ``ep``, ``c`` (floats in [0, 1]), ``pdm`` (the PDM
    score), ``progress_m``, ``min_ttc_s``, and ``expert`` ``[B]`` (the index of the best candidate).
    """
    batch, k = sim.batch, len(vocabulary)
    step_s = 1.0 / sim.highway.policy_frequency_hz
    plans = torch.as_tensor(vocabulary.action_plans(step_s=step_s), dtype=sim.dtype, device=sim.device)
    fork = fork_rows(sim, k)
    start_odometer = fork.odometer_m.clone()
    collided = torch.zeros(batch * k, dtype=torch.bool, device=sim.device)
    min_ttc = torch.full((batch * k,), float("inf"), dtype=sim.dtype, device=sim.device)
    lane = fork.lane[:, 0].clone()
    shifts = torch.as_tensor(vocabulary.lane_shifts(), device=sim.device).repeat(batch)
    target = lane + shifts
    drivable = (target >= 0) & (target < sim.lanes)
    for step in range(plans.shape[1]):
        actions = plans[:, step].repeat(batch, 1)
        result = fork.step(actions)
        collided |= result.collision.bool()
        min_ttc = torch.where(collided, torch.zeros_like(min_ttc), torch.minimum(min_ttc, result.ttc_s))
    progress = fork.odometer_m - start_odometer
    jerk = (plans[:, 1:, 0] - plans[:, :-1, 0]).abs().amax(dim=1) * vocabulary.accel_scale_mps2 / step_s \
        if plans.shape[1] > 1 else torch.zeros(k, dtype=sim.dtype, device=sim.device)
    shape = (batch, k)
    nc = (~collided).to(sim.dtype).reshape(shape)
    progress = torch.where(collided, torch.zeros_like(progress), progress).reshape(shape)
    best = progress.amax(dim=1, keepdim=True).clamp_min(1e-9)
    labels = {"nc": nc, "dac": drivable.to(sim.dtype).reshape(shape),
              "ttc": (min_ttc >= ttc_threshold_s).to(sim.dtype).reshape(shape), "ep": progress / best,
              "c": (jerk <= max_jerk_mps3).to(sim.dtype).repeat(batch).reshape(shape),
              "progress_m": progress, "min_ttc_s": min_ttc.reshape(shape)}
    labels["pdm"] = labels["nc"] * labels["dac"] * (5 * labels["ttc"] + 2 * labels["c"] + 5 * labels["ep"]) / 12
    labels["expert"] = labels["pdm"].argmax(dim=1)  # the first maximum on ties, as the docstring says
    return labels
