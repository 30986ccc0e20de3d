"""safetybed.sims.idm: hand-computed IDM and MOBIL values, broadcasting, guards and physical outcomes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from safetybed.sims.idm import (
    MIN_GAP_M,
    IDMParams,
    free_road_acceleration,
    idm_acceleration,
    mobil_incentive,
    mobil_is_safe,
)

#: a_max = 1 m/s^2, b = 2 m/s^2, s0 = 2 m, T = 1 s, delta = 4 (sqrt(a_max b) = sqrt 2); v0 = 20 m/s below.
PARAMS = IDMParams(max_accel_mps2=1.0, comfort_decel_mps2=2.0, min_gap_m=2.0, time_headway_s=1.0, delta=4.0)
V0 = 20.0


# -- hand-computed values -----------------------------------------------------------------------------------------
def test_free_road_is_a_max_times_one_minus_speed_ratio_to_the_delta():
    # v = v0 / 2: a = 1 (1 - 0.5^4) = 0.9375 (exact in binary), free road by default (gap = inf).
    assert idm_acceleration(PARAMS, speed_mps=10.0, desired_speed_mps=V0) == 0.9375
    # Another exponent and a_max: a = 2 (1 - 0.5^2) = 1.5; at v = v0 the free-road acceleration is 0.
    params = dataclasses.replace(PARAMS, max_accel_mps2=2.0, delta=2.0)
    assert idm_acceleration(params, speed_mps=15.0, desired_speed_mps=30.0) == 1.5
    assert idm_acceleration(PARAMS, speed_mps=V0, desired_speed_mps=V0) == 0.0
    # Above v0 it brakes: a = 1 (1 - 1.5^4) = -4.0625.
    assert idm_acceleration(PARAMS, speed_mps=30.0, desired_speed_mps=V0) == -4.0625
    assert free_road_acceleration(speed_mps=10.0, desired_speed_mps=V0, max_accel_mps2=1.0, delta=4.0) == 0.9375


def test_standstill_behind_a_stopped_leader():
    # v = 0, dv = 0: s* = s0, a = a_max (1 - 0 - (s0 / s)^2). At the jam distance s = s0 the free term and the
    # interaction cancel: a = 0, the vehicle stays at rest (not -a_max). Closer, at s = s0 / sqrt 2, a = -a_max;
    # at s = 2 s0, a = a_max (1 - 1/4) = 0.75.
    assert idm_acceleration(PARAMS, speed_mps=0.0, desired_speed_mps=V0, gap_m=2.0) == 0.0
    assert idm_acceleration(PARAMS, speed_mps=0.0, desired_speed_mps=V0, gap_m=2.0 / math.sqrt(2.0)) == (
        pytest.approx(-1.0, rel=1e-14))
    assert idm_acceleration(PARAMS, speed_mps=0.0, desired_speed_mps=V0, gap_m=4.0) == 0.75


def test_closing_on_a_slower_leader_by_hand():
    # v = 10, s = 20 m, dv = +4 m/s (closing): s* = 2 + 10 * 1 + 10 * 4 / (2 sqrt 2) = 12 + 10 sqrt 2 = 26.142 m;
    # (s*/s)^2 = (344 + 240 sqrt 2) / 400 = 0.86 + 0.6 sqrt 2 = 1.708528; a = 0.9375 - 1.708528 = -0.771028.
    expected = 0.9375 - (0.86 + 0.6 * math.sqrt(2.0))
    assert expected == pytest.approx(-0.771028137, abs=1e-9)
    value = idm_acceleration(PARAMS, speed_mps=10.0, desired_speed_mps=V0, gap_m=20.0, closing_speed_mps=4.0)
    assert value == pytest.approx(expected, rel=1e-14)


def test_a_faster_leader_cannot_shrink_the_desired_gap_below_s0():
    # v = 10, dv = -20 (leader 20 m/s faster): v T + v dv / (2 sqrt 2) = 10 - 70.7 < 0 -> s* = s0 = 2 m;
    # s = 20 m: a = 0.9375 - (2 / 20)^2 = 0.9275 (without the max(0, .) s* would be negative: a = 0.9375 - 3.57).
    value = idm_acceleration(PARAMS, speed_mps=10.0, desired_speed_mps=V0, gap_m=20.0, closing_speed_mps=-20.0)
    assert value == pytest.approx(0.9275, rel=1e-14)


def test_equilibrium_gap_gives_zero_acceleration():
    # Same speed as the leader: a = 0 at s_e = s*(v) / sqrt(1 - (v / v0)^4) = 12 / sqrt(0.9375) = 12.3935 m.
    s_e = 12.0 / math.sqrt(0.9375)
    assert idm_acceleration(PARAMS, speed_mps=10.0, desired_speed_mps=V0, gap_m=s_e) == pytest.approx(0.0, abs=1e-14)
    assert idm_acceleration(PARAMS, speed_mps=10.0, desired_speed_mps=V0, gap_m=s_e + 1.0) > 0.0
    assert idm_acceleration(PARAMS, speed_mps=10.0, desired_speed_mps=V0, gap_m=s_e - 1.0) < 0.0


def test_guards_negative_speed_overlap_and_zero_desired_speed():
    # A negative speed counts as 0: free road a = a_max, also behind a leader (s* = s0, as at v = 0).
    assert idm_acceleration(PARAMS, speed_mps=-1.0, desired_speed_mps=V0) == 1.0
    assert (idm_acceleration(PARAMS, speed_mps=-1.0, desired_speed_mps=V0, gap_m=4.0, closing_speed_mps=-3.0)
            == idm_acceleration(PARAMS, speed_mps=0.0, desired_speed_mps=V0, gap_m=4.0))
    # Overlap (gap <= 0) is floored at 0.1 m: at v = 0, a = 1 - (2 / 0.1)^2 = -399 (finite).
    for gap in (0.0, -3.0):
        assert idm_acceleration(PARAMS, speed_mps=0.0, desired_speed_mps=V0, gap_m=gap) == pytest.approx(
            1.0 - (2.0 / MIN_GAP_M) ** 2, rel=1e-14)
    # v0 = 0 (a speed limit of 0) is floored at 1e-3 m/s: standing still, a = a_max; at 1e-3 m/s, a = 0.
    assert idm_acceleration(PARAMS, speed_mps=0.0, desired_speed_mps=0.0) == 1.0
    assert idm_acceleration(PARAMS, speed_mps=1e-3, desired_speed_mps=0.0) == 0.0


def test_infinite_gap_is_exactly_the_free_road():
    speeds = np.linspace(-2.0, 40.0, 101)
    free = free_road_acceleration(speed_mps=speeds, desired_speed_mps=V0, max_accel_mps2=1.0, delta=4.0)
    assert np.array_equal(idm_acceleration(PARAMS, speed_mps=speeds, desired_speed_mps=V0, gap_m=np.inf,
                                           closing_speed_mps=5.0), free)


def test_mobil_incentive_and_safety_by_hand():
    # gain = (0.5 - (-1)) + 0.5 [(-0.3 - 0.2) + (0.4 - (-0.4))] = 1.5 + 0.5 * 0.3 = 1.65.
    values = {"self_before_mps2": -1.0, "self_after_mps2": 0.5, "new_follower_before_mps2": 0.2,
              "new_follower_after_mps2": -0.3, "old_follower_before_mps2": -0.4, "old_follower_after_mps2": 0.4}
    assert mobil_incentive(**values, politeness=0.5) == pytest.approx(1.65, rel=1e-14)
    assert mobil_incentive(**values, politeness=0.0) == 1.5  # egoistic: only one's own advantage
    # Safe iff neither the new follower nor the changing vehicle brakes harder than b_safe = 3 (>= is safe).
    assert mobil_is_safe(self_after_mps2=0.0, new_follower_after_mps2=-3.0, max_braking_mps2=3.0)
    assert not mobil_is_safe(self_after_mps2=0.0, new_follower_after_mps2=-3.01, max_braking_mps2=3.0)
    assert not mobil_is_safe(self_after_mps2=-3.5, new_follower_after_mps2=0.0, max_braking_mps2=3.0)
    safe = mobil_is_safe(self_after_mps2=np.array([0.0, -4.0, 0.0]),
                         new_follower_after_mps2=np.array([-1.0, 0.0, -4.0]), max_braking_mps2=3.0)
    assert safe.tolist() == [True, False, False]


# -- vectorisation ------------------------------------------------------------------------------------------------
def test_broadcasting_over_a_batch_equals_elementwise_scalar_calls():
    rng = np.random.default_rng(12)
    speed = rng.uniform(-1.0, 35.0, (3, 4))
    gap = rng.uniform(-2.0, 80.0, (3, 4))
    gap[0, 1] = gap[2, 3] = np.inf  # free road inside the batch
    closing = rng.uniform(-10.0, 10.0, (3, 4))
    desired = np.array([15.0, 25.0, 30.0, 35.0])  # (4,): per column
    # Three drivers (rows), parameters of shape (3, 1).
    a_max, b, s0, headway = (np.array([[1.0], [1.5], [2.0]]), np.array([[2.0], [1.5], [3.0]]),
                             np.array([[2.0], [3.0], [1.0]]), np.array([[1.2], [1.8], [0.8]]))
    batch = IDMParams(max_accel_mps2=a_max, comfort_decel_mps2=b, min_gap_m=s0, time_headway_s=headway, delta=4.0)
    result = idm_acceleration(batch, speed_mps=speed, desired_speed_mps=desired, gap_m=gap, closing_speed_mps=closing)
    assert result.shape == (3, 4)
    for i in range(3):
        one = IDMParams(max_accel_mps2=float(a_max[i, 0]), comfort_decel_mps2=float(b[i, 0]),
                        min_gap_m=float(s0[i, 0]), time_headway_s=float(headway[i, 0]), delta=4.0)
        for j in range(4):
            scalar = idm_acceleration(one, speed_mps=float(speed[i, j]), desired_speed_mps=float(desired[j]),
                                      gap_m=float(gap[i, j]), closing_speed_mps=float(closing[i, j]))
            assert result[i, j] == pytest.approx(scalar, rel=1e-13, abs=1e-13), (i, j)
    gains = mobil_incentive(self_before_mps2=result, self_after_mps2=result[::-1], new_follower_before_mps2=0.0,
                            new_follower_after_mps2=result[:, ::-1], old_follower_before_mps2=result,
                            old_follower_after_mps2=0.0, politeness=np.array([0.0, 0.5, 1.0, 0.2]))
    assert gains.shape == (3, 4)
    assert gains[1, 2] == pytest.approx(mobil_incentive(
        self_before_mps2=result[1, 2], self_after_mps2=result[1, 2], new_follower_before_mps2=0.0,
        new_follower_after_mps2=result[1, 1], old_follower_before_mps2=result[1, 2], old_follower_after_mps2=0.0,
        politeness=1.0), rel=1e-14)


def test_params_are_frozen_keyword_only_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PARAMS.delta = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        IDMParams(1.0, 2.0, 2.0, 1.0)  # type: ignore[misc]
    with pytest.raises(ValueError, match="comfort_decel_mps2"):
        IDMParams(max_accel_mps2=1.0, comfort_decel_mps2=0.0, min_gap_m=2.0, time_headway_s=1.0)
    with pytest.raises(ValueError, match="min_gap_m"):
        IDMParams(max_accel_mps2=1.0, comfort_decel_mps2=1.0, min_gap_m=np.array([1.0, -1.0]), time_headway_s=1.0)
    with pytest.raises(ValueError, match="max_accel_mps2"):
        IDMParams(max_accel_mps2=math.nan, comfort_decel_mps2=1.0, min_gap_m=2.0, time_headway_s=1.0)
    assert IDMParams(max_accel_mps2=1.0, comfort_decel_mps2=1.0, min_gap_m=0.0, time_headway_s=0.0).delta == 4.0


# -- physical outcomes --------------------------------------------------------------------------------------------
def _follow(leader_speed_mps: np.ndarray, gap_m: np.ndarray, speed_mps: np.ndarray, *, seconds: float,
            dt_s: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of IDM followers behind leaders at constant speed (semi-implicit Euler, no reversing).

    Returns (final gap, final speed, minimum gap over the run).
    """
    gap, speed = gap_m.astype(float).copy(), speed_mps.astype(float).copy()
    min_gap = gap.copy()
    for _ in range(int(round(seconds / dt_s))):
        accel = idm_acceleration(PARAMS, speed_mps=speed, desired_speed_mps=V0, gap_m=gap,
                                 closing_speed_mps=speed - leader_speed_mps)
        new_speed = np.maximum(speed + accel * dt_s, 0.0)
        gap = gap + (leader_speed_mps - 0.5 * (speed + new_speed)) * dt_s
        speed = new_speed
        min_gap = np.minimum(min_gap, gap)
    return gap, speed, min_gap


def test_followers_stop_behind_an_obstacle_without_collision_and_converge_to_the_equilibrium_gap():
    # Stopped obstacle 150 m ahead, approach at 5..20 m/s: every follower stops (speed ~ 0) at about s0, never
    # touching it (an IDM driver is collision-free, Treiber et al. 2000).
    approach = np.array([5.0, 10.0, 15.0, 20.0])
    gap, speed, min_gap = _follow(np.zeros(4), np.full(4, 150.0), approach, seconds=300.0)
    assert np.all(min_gap > 0.0)
    assert np.all(speed < 1e-2)
    assert np.all(np.abs(gap - PARAMS.min_gap_m) < 0.5), gap
    # Leader at 10 m/s, followers starting too close / too far at its speed: the gap settles at
    # s_e = s*(10) / sqrt(1 - (10 / 20)^4) = 12 / sqrt(0.9375) = 12.3935 m and the speeds at the leader's.
    gap, speed, min_gap = _follow(np.full(3, 10.0), np.array([8.0, 30.0, 80.0]), np.full(3, 10.0), seconds=300.0)
    assert np.all(min_gap > 0.0)
    np.testing.assert_allclose(gap, 12.0 / math.sqrt(0.9375), atol=1e-3)
    np.testing.assert_allclose(speed, 10.0, atol=1e-4)
