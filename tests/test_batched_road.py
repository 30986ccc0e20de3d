"""The sorted neighbour table equals the masked-reduction neighbour search (``Road.neighbour_vehicles``)."""

from __future__ import annotations

import torch

from safetybed.sims.batched.road import lane_neighbours, neighbour_table


def _check(x, y, present, lanes, length_m=2000.0):
    front, rear = neighbour_table(x_m=x, y_m=y, present=present, lanes=lanes, length_m=length_m)
    batch, count = x.shape
    env, lane, slot = torch.meshgrid(torch.arange(batch), torch.arange(lanes), torch.arange(count), indexing="ij")
    env, lane, slot = env.reshape(-1), lane.reshape(-1), slot.reshape(-1)
    want_front, want_rear = lane_neighbours(x_m=x, y_m=y, present=present, env=env, slot=slot, lane=lane,
                                            length_m=length_m)
    assert torch.equal(front.reshape(-1), want_front)
    assert torch.equal(rear.reshape(-1), want_rear)


def test_random_states():
    generator = torch.Generator().manual_seed(0)
    for count, lanes in ((1, 1), (2, 2), (9, 3), (51, 4)):
        x = torch.rand(64, count, generator=generator, dtype=torch.float64) * 400 - 20
        y = torch.rand(64, count, generator=generator, dtype=torch.float64) * 4 * lanes - 2
        present = torch.rand(64, count, generator=generator) > 0.1
        _check(x, y, present, lanes)


def test_ties_and_road_ends():
    """Equal x (several vehicles, self among them), vehicles beyond the road and in the margin overlap."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 6, (200, 12), generator=generator).to(torch.float64) * 10.0 - 10.0
    x[:, 0] = 2010.0  # past the end of a 2000 m road: on no lane
    y = torch.randint(0, 9, (200, 12), generator=generator).to(torch.float64) * 1.5 - 1.0
    present = torch.rand(200, 12, generator=generator) > 0.2
    _check(x, y, present, 3)
