"""highway-env's vehicle kinematics, lane-following steering and collision test, on tensors of any shape.

Each function is the elementwise (broadcasting) form of one highway-env 1.12.1 method, with the same
floating-point operation order where it matters, so that float64 runs track the highway-env backend to
round-off (``tests/test_batched_faithfulness.py``):

* :func:`steering_control` -- ``ControlledVehicle.steering_control`` on a straight lane of heading 0;
* :func:`bicycle_step` -- ``Vehicle.clip_actions`` + ``Vehicle.step`` (modified kinematic bicycle model);
* :func:`sat_collision` -- ``utils.are_polygons_intersecting`` of two oriented rectangles (separating axes,
  swept by each one's displacement over the frame), returning (intersecting, will_intersect, translation).
"""

from __future__ import annotations

import math

import torch

from safetybed.sims.batched.libm import elementwise
from safetybed.sims.batched.placement import VEHICLE_LENGTH_M, VEHICLE_WIDTH_M

MAX_SPEED_MPS = 40.0  #: highway-env ``Vehicle.MAX_SPEED`` [m/s]
MIN_SPEED_MPS = -40.0  #: highway-env ``Vehicle.MIN_SPEED`` [m/s]
MAX_STEERING_RAD = math.pi / 3  #: highway-env ``ControlledVehicle.MAX_STEERING_ANGLE`` [rad]
TAU_HEADING_S = 0.2  #: highway-env ``ControlledVehicle.TAU_HEADING`` [s]
TAU_LATERAL_S = 0.6  #: highway-env ``ControlledVehicle.TAU_LATERAL`` [s]
KP_HEADING = 1 / TAU_HEADING_S  # [1/s]
KP_LATERAL = 1 / TAU_LATERAL_S  # [1/s]
NOT_ZERO_EPS = 1e-2  #: highway-env ``utils.not_zero`` default eps
DIAGONAL_M = math.sqrt(VEHICLE_LENGTH_M**2 + VEHICLE_WIDTH_M**2)  #: ``RoadObject.diagonal`` [m]


def not_zero(value: torch.Tensor, eps: float = NOT_ZERO_EPS) -> torch.Tensor:
    """highway-env ``utils.not_zero``: ``value`` if ``|value| > eps``, else ``+eps`` (``value >= 0``) or ``-eps``."""
    small = torch.where(value >= 0, torch.full_like(value, eps), torch.full_like(value, -eps))
    return torch.where(value.abs() > eps, value, small)


def wrap_to_pi(angle: torch.Tensor) -> torch.Tensor:
    """highway-env ``utils.wrap_to_pi``: ``((angle + pi) mod 2 pi) - pi`` with a floor modulo, as numpy's ``%``."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def steering_control(*, lateral_m: torch.Tensor, heading_rad: torch.Tensor, speed_mps: torch.Tensor,
                     exact: bool = True) -> torch.Tensor:
    """Steering angle [rad] towards a straight target lane of heading 0 (``ControlledVehicle.steering_control``).

    ``lateral_m`` is the vehicle's lateral coordinate in the target lane. The result is clipped to
    :data:`MAX_STEERING_RAD` (twice in highway-env, once in the method and once by the caller: the same).
    ``exact``: the C library's scalar routines (:mod:`safetybed.sims.batched.libm`).
    """
    lateral_speed_command = -KP_LATERAL * lateral_m
    heading_command = elementwise(torch.arcsin, torch.clamp(lateral_speed_command / not_zero(speed_mps), -1.0, 1.0),
                                  exact=exact)
    heading_ref = torch.clamp(heading_command, -math.pi / 4, math.pi / 4)
    heading_rate_command = KP_HEADING * wrap_to_pi(heading_ref - heading_rad)
    slip_angle = elementwise(torch.arcsin, torch.clamp(
        VEHICLE_LENGTH_M / 2 / not_zero(speed_mps) * heading_rate_command, -1.0, 1.0), exact=exact)
    steering = elementwise(torch.arctan, 2 * elementwise(torch.tan, slip_angle, exact=exact), exact=exact)
    return torch.clamp(steering, -MAX_STEERING_RAD, MAX_STEERING_RAD)


def bicycle_step(*, x_m: torch.Tensor, y_m: torch.Tensor, heading_rad: torch.Tensor, speed_mps: torch.Tensor,
                 steering_rad: torch.Tensor, acceleration_mps2: torch.Tensor, crashed: torch.Tensor, dt_s: float,
                 exact: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frame of ``Vehicle.step`` (after ``clip_actions``): new (x, y, heading, speed); impacts are the caller's.

    A crashed vehicle steers 0 and brakes with ``-speed``; above :data:`MAX_SPEED_MPS` the acceleration is capped at
    ``MAX_SPEED - speed`` (below :data:`MIN_SPEED_MPS`, floored at ``MIN_SPEED - speed``).
    """
    steering = torch.where(crashed, torch.zeros_like(steering_rad), steering_rad)
    acceleration = torch.where(crashed, -1.0 * speed_mps, acceleration_mps2)
    acceleration = torch.where(speed_mps > MAX_SPEED_MPS,
                               torch.minimum(acceleration, 1.0 * (MAX_SPEED_MPS - speed_mps)), acceleration)
    acceleration = torch.where(speed_mps < MIN_SPEED_MPS,
                               torch.maximum(acceleration, 1.0 * (MIN_SPEED_MPS - speed_mps)), acceleration)
    beta = elementwise(torch.arctan, 1 / 2 * elementwise(torch.tan, steering, exact=exact), exact=exact)
    x = x_m + speed_mps * elementwise(torch.cos, heading_rad + beta, exact=exact) * dt_s
    y = y_m + speed_mps * elementwise(torch.sin, heading_rad + beta, exact=exact) * dt_s
    heading = heading_rad + speed_mps * elementwise(torch.sin, beta, exact=exact) / (VEHICLE_LENGTH_M / 2) * dt_s
    speed = speed_mps + acceleration * dt_s
    return x, y, heading, speed


def rectangle_corners(x_m: torch.Tensor, y_m: torch.Tensor, heading_rad: torch.Tensor, *, exact: bool = True
                      ) -> torch.Tensor:
    """Corners ``[..., 4, 2]`` of each vehicle's rectangle in highway-env's ``RoadObject.polygon`` order."""
    half_length, half_width = VEHICLE_LENGTH_M / 2, VEHICLE_WIDTH_M / 2
    local = torch.tensor([[-half_length, -half_width], [-half_length, half_width], [half_length, half_width],
                          [half_length, -half_width]], dtype=x_m.dtype, device=x_m.device)
    c = elementwise(torch.cos, heading_rad, exact=exact)[..., None]
    s = elementwise(torch.sin, heading_rad, exact=exact)[..., None]
    px, py = local[:, 0], local[:, 1]
    corner_x = (c * px + -s * py) + x_m[..., None]
    corner_y = (s * px + c * py) + y_m[..., None]
    return torch.stack([corner_x, corner_y], dim=-1)


def _edge_normals(corners: torch.Tensor) -> torch.Tensor:
    """Unit normals ``[..., 4, 2]`` of the edges p_k -> p_{k+1} (closed polygon), as highway-env computes them."""
    following = torch.roll(corners, shifts=-1, dims=-2)
    nx = -following[..., 1] + corners[..., 1]
    ny = following[..., 0] - corners[..., 0]
    norm = torch.sqrt(nx * nx + ny * ny)  # np.linalg.norm of a 2-vector
    return torch.stack([nx / norm, ny / norm], dim=-1)


def _dot(points: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """``[M, K, P]`` projections ``p . a`` of points ``[M, P, 2]`` on axes ``[M, K, 2]``, written out (no BLAS), so
    that every element is ``px * ax + py * ay`` whatever the batch."""
    return (points[:, None, :, 0] * axes[:, :, None, 0]) + (points[:, None, :, 1] * axes[:, :, None, 1])


def _interval_distance(min_a, max_a, min_b, max_b):
    """highway-env ``utils.interval_distance`` (negative when the intervals overlap)."""
    return torch.where(min_a < min_b, min_b - max_a, min_a - max_b)


def _centre(corners: torch.Tensor) -> torch.Tensor:
    """Mean of the four corners, summed in numpy's order for fewer than 8 terms (sequentially)."""
    return (((corners[:, 0] + corners[:, 1]) + corners[:, 2]) + corners[:, 3]) / 4


def sat_collision(corners_a: torch.Tensor, corners_b: torch.Tensor, displacement_a: torch.Tensor,
                  displacement_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``utils.are_polygons_intersecting`` for pairs of rectangles ``[M, 4, 2]`` with displacements ``[M, 2]``.

    Returns ``(intersecting [M], will_intersect [M], translation [M, 2])``. The translation is the minimum over
    the eight edge normals (A's four, then B's) of the swept interval distance, first minimum on ties, pointing
    from B's centre towards A's (meaningful where ``will_intersect``).
    """
    normals = torch.cat([_edge_normals(corners_a), _edge_normals(corners_b)], dim=-2)  # [M, 8, 2]
    proj_a, proj_b = _dot(corners_a, normals), _dot(corners_b, normals)  # [M, 8, 4]
    min_a, max_a = proj_a.min(dim=-1).values, proj_a.max(dim=-1).values
    min_b, max_b = proj_b.min(dim=-1).values, proj_b.max(dim=-1).values
    intersecting = (_interval_distance(min_a, max_a, min_b, max_b) <= 0).all(dim=-1)
    relative = displacement_a - displacement_b
    velocity_projection = normals[..., 0] * relative[:, None, 0] + normals[..., 1] * relative[:, None, 1]
    min_a = torch.where(velocity_projection < 0, min_a + velocity_projection, min_a)
    max_a = torch.where(velocity_projection < 0, max_a, max_a + velocity_projection)
    distance = _interval_distance(min_a, max_a, min_b, max_b)
    will_intersect = (distance <= 0).all(dim=-1)
    best = distance.abs().argmin(dim=-1)  # first minimum, as the strict '<' of the reference loop
    axis = normals.gather(1, best[:, None, None].expand(-1, 1, 2))[:, 0]
    min_distance = distance.abs().gather(1, best[:, None])[:, 0]
    centre_difference = _centre(corners_a) - _centre(corners_b)
    along = centre_difference[:, 0] * axis[:, 0] + centre_difference[:, 1] * axis[:, 1]
    sign = torch.where(along > 0, 1.0, -1.0).to(axis.dtype)
    translation = min_distance[:, None] * (sign[:, None] * axis)
    return intersecting, will_intersect, translation


__all__ = ["DIAGONAL_M", "MAX_SPEED_MPS", "MAX_STEERING_RAD", "bicycle_step", "not_zero", "rectangle_corners",
           "sat_collision", "steering_control", "wrap_to_pi"]
