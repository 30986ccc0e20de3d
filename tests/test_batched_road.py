"""The sorted neighbour table equals the masked-reduction neighbour search (``Road.neighbour_vehicles``)."""

from __future__ import annotations

import torch

from safetybed.sims.batched.placement import LANE_WIDTH_M
from safetybed.sims.batched.road import NEIGHBOUR_MARGIN_M, neighbour_table, on_lane


def lane_neighbours(*, x_m: torch.Tensor, y_m: torch.Tensor, present: torch.Tensor, env: torch.Tensor,
                    slot: torch.Tensor, lane: torch.Tensor, length_m: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Front and rear vehicle slots (``-1``: none) of queries (``env[m]``, ``slot[m]``) in lane ``lane[m]``.

    ``Road.neighbour_vehicles``: among the other present vehicles on ``lane`` (within the 1 m margin), the front
    one is the nearest with ``x >= x_self`` (ties: the later slot, as highway-env's ``<=``), the rear one the
    nearest with ``x < x_self`` (ties: the earlier slot). ``x_m``, ``y_m``, ``present`` are ``[B, N]``; the
    queries are flat ``[M]`` index tensors, so a caller asks only for the rows it needs.
    """
    others_x, others_y = x_m[env], y_m[env]  # [M, N]
    count = x_m.shape[1]
    slots = torch.arange(count, device=x_m.device)
    lateral = others_y - LANE_WIDTH_M * lane[:, None].to(y_m.dtype)
    candidate = (present[env] & on_lane(x_m=others_x, lateral_m=lateral, length_m=length_m,
                                        margin_m=NEIGHBOUR_MARGIN_M) & (slots[None, :] != slot[:, None]))
    own = x_m[env, slot][:, None]
    ahead = candidate & (others_x >= own)
    behind = candidate & (others_x < own)
    inf = torch.tensor(float("inf"), dtype=x_m.dtype, device=x_m.device)
    front_x = torch.where(ahead, others_x, inf).min(dim=1, keepdim=True).values
    rear_x = torch.where(behind, others_x, -inf).max(dim=1, keepdim=True).values
    front = torch.where(ahead & (others_x == front_x), slots, -1).max(dim=1).values
    rear = torch.where(behind & (others_x == rear_x), slots, count).min(dim=1).values
    rear = torch.where(rear == count, -1, rear)
    return front, rear


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
