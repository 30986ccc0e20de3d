"""The straight multi-lane road on tensors: lane membership, closest lane and vectorised neighbour search.

highway-env's ``RoadNetwork.straight_road_network``: lane ``k`` runs from ``(0, k * 4 m)`` along +x for
``road_length_m``, so a lane's longitudinal coordinate is ``x`` and its lateral one is ``y - 4 k`` (exactly, as
highway-env's dot products with the unit axes). Neighbour search (``Road.neighbour_vehicles``) is a per-frame
table (:func:`neighbour_table`): no loop over vehicles or episodes.
"""

from __future__ import annotations

import torch

from safetybed.sims.batched.placement import LANE_WIDTH_M, VEHICLE_LENGTH_M

NEIGHBOUR_MARGIN_M = 1.0  #: ``Road.neighbour_vehicles`` counts a vehicle on a lane within this lateral margin [m]


def closest_lane(y_m: torch.Tensor, *, lanes: int) -> torch.Tensor:
    """``RoadNetwork.get_closest_lane_index`` on the straight road: the lane minimising ``|y - 4 k|``, lowest on ties.

    The longitudinal and heading terms of highway-env's distance are the same for every lane of one road.
    """
    centres = LANE_WIDTH_M * torch.arange(lanes, dtype=y_m.dtype, device=y_m.device)
    return (y_m[..., None] - centres).abs().argmin(dim=-1)


def on_lane(*, x_m: torch.Tensor, lateral_m: torch.Tensor, length_m: float, margin_m: float = 0.0) -> torch.Tensor:
    """``AbstractLane.on_lane``: ``|lateral| <= width / 2 + margin`` and ``-5 m <= x < length + 5 m``."""
    return ((lateral_m.abs() <= LANE_WIDTH_M / 2 + margin_m) & (x_m >= -VEHICLE_LENGTH_M)
            & (x_m < length_m + VEHICLE_LENGTH_M))


def reachable(*, x_m: torch.Tensor, lateral_m: torch.Tensor, length_m: float) -> torch.Tensor:
    """``AbstractLane.is_reachable_from``: ``|lateral| <= 2 width`` and ``0 <= x < length + 5 m``."""
    return (lateral_m.abs() <= 2 * LANE_WIDTH_M) & (x_m >= 0) & (x_m < length_m + VEHICLE_LENGTH_M)


def neighbour_table(*, x_m: torch.Tensor, y_m: torch.Tensor, present: torch.Tensor, lanes: int, length_m: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Front and rear slots ``[B, lanes, N]`` of every vehicle in every lane: :func:`lane_neighbours` for all queries.

    Per episode and lane the members (present, on the lane within the 1 m margin) are sorted by (x, slot), and
    each vehicle's neighbours are found by binary search (``O(N log N)`` per lane, not a masked ``O(N^2)``
    reduction), with ``Road.neighbour_vehicles``' rules: the front is the nearest other member with ``x >= x_self``, the latest slot among equal ``x``; the
    rear the nearest with ``x < x_self``, the earliest slot among equal ``x``. ``tests/test_batched_road.py``
    checks it against a masked search over every other vehicle on random and tied states.
    """
    batch, count = x_m.shape
    device = x_m.device
    centres = LANE_WIDTH_M * torch.arange(lanes, dtype=y_m.dtype, device=device)
    lateral = y_m[:, None, :] - centres[None, :, None]  # [B, L, N]
    xs = x_m[:, None, :].expand(batch, lanes, count)
    member = present[:, None, :] & on_lane(x_m=xs, lateral_m=lateral, length_m=length_m, margin_m=NEIGHBOUR_MARGIN_M)
    inf = torch.tensor(float("inf"), dtype=x_m.dtype, device=device)
    key = torch.where(member, xs, inf)
    order = torch.argsort(key, dim=-1, stable=True)  # (x, slot) order: slots ascend within equal x
    sorted_x = key.gather(-1, order).contiguous()
    positions = torch.arange(count, device=device)
    # runs of equal x in the sorted order: each position's first and last index of its run
    differs = sorted_x[..., 1:] != sorted_x[..., :-1]
    edge = torch.ones_like(sorted_x[..., :1], dtype=torch.bool)
    run_start = torch.cummax(torch.where(torch.cat([edge, differs], -1), positions, 0), dim=-1).values
    run_end = torch.cummin(torch.where(torch.cat([differs, edge], -1), positions, count - 1).flip(-1),
                           dim=-1).values.flip(-1)
    last = count - 1

    def at(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return table.gather(-1, index.clamp(0, last))

    left = torch.searchsorted(sorted_x, xs.contiguous(), side="left")  # first member with x >= x_self
    level = (left <= last) & (at(sorted_x, left) == xs)
    right = torch.where(level, at(run_end, left) + 1, left)  # first member with x > x_self
    own = positions.expand(batch, lanes, count)
    # rear: the member just below x_self, then the first (lowest slot) of its run of equal x
    rear = torch.where(left > 0, at(order, at(run_start, left - 1)), -1)
    # front: others at exactly x_self (the latest slot that is not self), else the last of the next run above
    others_here = (right - left) - member.long() > 0
    top = at(order, right - 1)
    here = torch.where(top == own, at(order, right - 2), top)
    above = at(order, at(run_end, right))
    above = torch.where((right <= last) & torch.isfinite(at(sorted_x, right)), above, -1)
    front = torch.where(others_here, here, above)
    return front, rear


__all__ = ["NEIGHBOUR_MARGIN_M", "closest_lane", "neighbour_table", "on_lane", "reachable"]
