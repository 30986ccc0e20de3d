"""The straight multi-lane road on tensors: lane membership, closest lane and vectorised neighbour search.

highway-env's ``RoadNetwork.straight_road_network``: lane ``k`` runs from ``(0, k * 4 m)`` along +x for
``road_length_m``, so a lane's longitudinal coordinate is ``x`` and its lateral one is ``y - 4 k`` (exactly, as
highway-env's dot products with the unit axes). Neighbour search (``Road.neighbour_vehicles``) is a masked
reduction over every other vehicle of the same episode: no loop over vehicles or episodes.
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


__all__ = ["NEIGHBOUR_MARGIN_M", "closest_lane", "lane_neighbours", "on_lane", "reachable"]
