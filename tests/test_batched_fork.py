"""fork_rows: each copy of a forked batch runs exactly as its original would under the same actions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safetybed.sims.batched.fork import fork_rows
from safetybed.sims.batched.sim import BatchedHighway
from safetybed.spec.catalogue import load_scenario_arg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_forked_copies_follow_the_original_and_diverge_under_other_actions():
    spec, _ = load_scenario_arg("highway/cut_in")
    sim = BatchedHighway(spec, dtype=torch.float64)
    sim.reset([3, 4])
    rng = np.random.default_rng(0)
    for _ in range(4):  # into the episode, past the cut-in's start
        sim.step(torch.as_tensor(rng.uniform(-0.3, 0.3, (2, 2))))
    fork = fork_rows(sim, 3)
    assert fork.batch == 6 and sim.batch == 2
    torch.testing.assert_close(fork.observe(), sim.observe().repeat_interleave(3, dim=0), rtol=0, atol=0)
    for _ in range(6):
        action = torch.as_tensor(rng.uniform(-1, 1, (2, 2)))
        other = action.repeat_interleave(3, dim=0)
        other[2::3, 0] = -1.0  # copy 2 of each episode brakes at the limit instead
        original = sim.step(action)
        forked = fork.step(other)
        same = torch.tensor([True, True, False, True, True, False])
        torch.testing.assert_close(fork.observe()[same], sim.observe().repeat_interleave(2, dim=0), rtol=0, atol=0)
        assert torch.equal(forked.collision[same], original.collision.repeat_interleave(2))
    assert not torch.allclose(fork.observe()[2], sim.observe()[0])
    assert sim.naturalistic is not None and fork.naturalistic.sim is fork  # cut_in's drivers are naturalistic
    with pytest.raises(ValueError, match="repeats"):
        fork_rows(sim, 0)


def test_candidate_outcomes_equal_direct_rollouts_of_each_plan():
    from safetybed.control.planner.supervision import candidate_outcomes
    from safetybed.control.planner.vocabulary import Vocabulary

    spec, _ = load_scenario_arg("highway/cut_in")
    sim = BatchedHighway(spec, dtype=torch.float64)
    sim.reset([5, 6, 7])
    sim.step(torch.zeros(3, 2, dtype=torch.float64))  # the cut-in starts at 1 s: now
    before = sim.observe().clone()
    vocabulary = Vocabulary()
    labels = candidate_outcomes(sim, vocabulary)
    assert torch.equal(sim.observe(), before)  # the batch itself did not move
    assert labels["pdm"].shape == (3, len(vocabulary)) and labels["expert"].shape == (3,)
    plans = torch.as_tensor(vocabulary.action_plans(step_s=1.0), dtype=torch.float64)
    for j in (0, 17, 45, 79):
        alone = fork_rows(sim, 1)
        start = alone.odometer_m.clone()
        crashed = torch.zeros(3, dtype=torch.bool)
        for step in range(plans.shape[1]):
            crashed |= alone.step(plans[j, step].repeat(3, 1)).collision.bool()
        assert torch.equal(labels["nc"][:, j].bool(), ~crashed), j
        progress = torch.where(crashed, 0.0, alone.odometer_m - start)
        torch.testing.assert_close(labels["progress_m"][:, j], progress, rtol=0, atol=0)
    expert = labels["expert"]
    assert bool((labels["nc"][torch.arange(3), expert] == 1).all())  # some candidate survives every cut-in here
    assert bool((labels["pdm"][torch.arange(3), expert] == labels["pdm"].amax(dim=1)).all())
