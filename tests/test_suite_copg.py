"""CoPG (Flet-Berliac et al. 2024): the fixed point π* ∝ π_ref exp(R/β) and the exact expected gradient on an
enumerated bandit, the reduction to IPO, and the fast demo's direction."""

from __future__ import annotations

import math

import pytest
import torch

from safetybed.suite.alignment.copg import ENTRY, Config, copg_loss, demo, ipo_loss, naive_pg_loss
from safetybed.suite.registry import VERDICTS, DemoResult

ARMS = 6
BETA = 0.5
TOLERANCE = 1e-10  # float64 enumeration: the oracle is exact up to rounding


def _bandit(seed: int) -> dict[str, torch.Tensor]:
    """A random reward, a non-uniform reference and a skewed full-support behaviour μ (float64)."""
    generator = torch.Generator().manual_seed(seed)
    reward = torch.rand(ARMS, generator=generator, dtype=torch.float64)
    log_ref = torch.log_softmax(torch.randn(ARMS, generator=generator, dtype=torch.float64), 0)
    behaviour = torch.softmax(3.0 * torch.randn(ARMS, generator=generator, dtype=torch.float64), 0)
    return {"reward": reward, "log_ref": log_ref, "behaviour": behaviour}


def _expected_copg(logits: torch.Tensor, bandit: dict[str, torch.Tensor]) -> torch.Tensor:
    """``E_{y, y' ~ μ×μ} ℓ_CoPG`` by enumerating every ordered pair, through the rule under test."""
    log_ratio = torch.log_softmax(logits, 0) - bandit["log_ref"]
    y, y_other = torch.meshgrid(torch.arange(ARMS), torch.arange(ARMS), indexing="ij")
    y, y_other = y.reshape(-1), y_other.reshape(-1)
    weights = bandit["behaviour"][y] * bandit["behaviour"][y_other]
    return copg_loss(log_ratio[y], log_ratio[y_other], bandit["reward"][y], bandit["reward"][y_other],
                     beta=BETA, weights=weights)["loss_policy"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_gradient_vanishes_at_the_regularised_optimum(seed: int) -> None:
    bandit = _bandit(seed)
    # π* ∝ π_ref exp(R/β): logits log π_ref + R/β (any constant shift is the same softmax).
    optimal = (bandit["log_ref"] + bandit["reward"] / BETA + 0.7).requires_grad_()
    (gradient,) = torch.autograd.grad(_expected_copg(optimal, bandit), optimal)
    assert gradient.abs().max() < TOLERANCE
    # Away from π* it does not vanish (the test can fail), ...
    shifted = (optimal.detach() + torch.linspace(-1, 1, ARMS, dtype=torch.float64)).requires_grad_()
    (gradient,) = torch.autograd.grad(_expected_copg(shifted, bandit), shifted)
    assert gradient.abs().max() > 1e-3
    # ... and the naive off-policy PG's expected gradient does not vanish at π* under a skewed μ (its bias).
    log_pi = torch.log_softmax(optimal, 0)
    naive = naive_pg_loss(log_pi, log_pi - bandit["log_ref"], bandit["reward"], beta=BETA,
                          weights=bandit["behaviour"])["loss_policy"]
    (naive_gradient,) = torch.autograd.grad(naive, optimal)
    assert naive_gradient.abs().max() > 1e-3


@pytest.mark.parametrize("seed", [3, 4])
def test_expected_gradient_matches_the_contrastive_policy_gradient(seed: int) -> None:
    """Hand oracle: with scale 1/(4β), ∇_θ E ℓ = -(1/2) Σ μ(y)μ(y') Δ(y,y') (e_y - e_y'), where Δ is the
    regularised-reward gap and ``∇ log π(y) - ∇ log π(y') = e_y - e_y'`` for softmax logits."""
    bandit = _bandit(seed)
    logits = torch.randn(ARMS, generator=torch.Generator().manual_seed(seed + 10),
                         dtype=torch.float64).requires_grad_()
    (autograd,) = torch.autograd.grad(_expected_copg(logits, bandit), logits)
    regularised = bandit["reward"] - BETA * (torch.log_softmax(logits.detach(), 0) - bandit["log_ref"])
    gap = regularised[:, None] - regularised[None, :]
    weighted = bandit["behaviour"][:, None] * bandit["behaviour"][None, :] * gap
    oracle = -0.5 * (weighted.sum(1) - weighted.sum(0))
    torch.testing.assert_close(autograd, oracle, rtol=0, atol=TOLERANCE)
    assert oracle.abs().max() > 1e-3


def test_a_half_reward_gap_gives_the_ipo_loss() -> None:
    """With R(y_w) - R(y_l) = 1/2 the CoPG loss is (β/4)·IPO(τ = β) (the paper's IPO generalisation)."""
    generator = torch.Generator().manual_seed(5)
    winner, loser = torch.randn(8, generator=generator), torch.randn(8, generator=generator)
    copg = copg_loss(winner, loser, torch.full((8,), 0.5), torch.zeros(8), beta=BETA)["loss_policy"]
    ipo = ipo_loss(winner - loser, tau=BETA)["loss_policy"]
    assert math.isclose(float(copg), BETA / 4 * float(ipo), rel_tol=1e-6)


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="beta"):
        Config(beta=0.0)
    with pytest.raises(ValueError, match="num_arms"):
        Config(num_arms=1)
    with pytest.raises(ValueError, match="beta"):
        copg_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=-1.0)


def test_fast_demo_copg_recovers_the_optimum_and_naive_pg_is_biased() -> None:
    result = demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.verdict in VERDICTS and result.fast
    assert ENTRY.name == result.name == "copg"
    copg, naive = result.measured["KL(pi||pi*)"], result.baseline["KL(pi||pi*)"]
    assert copg.n == naive.n == len(result.seeds) >= 2
    # Direction with the claim's own thresholds: CoPG below 0.01 nats, naive PG above 0.1 nats, on every seed.
    assert max(copg.values) < 0.01
    assert min(naive.values) > 0.1
    assert copg.mean < result.baseline["KL(pi||pi*), IPO"].mean
    assert copg.mean < result.baseline["KL(pi||pi*), DPO"].mean
