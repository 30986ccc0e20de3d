"""Tests for safetybed.suite.optim.variance_corrected_avg (Tian et al. 2024, variance-corrected averaging)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safetybed.suite.optim.variance_corrected_avg import (
    Config,
    demo,
    gossip_merge,
    metropolis_weights,
    ring_adjacency,
    variance_corrected_average,
)
from safetybed.suite.registry import DemoResult


def test_averaging_shrinks_gaussian_variance_by_one_over_k_and_correction_restores_it():
    # Oracle: the mean of k independent N(0, s^2) tensors is N(0, s^2 / k) exactly; the correction (eps = 0)
    # returns a tensor whose sample variance equals the target (the mean of the k variances) exactly.
    k, n, sigma = 4, 200_000, 0.3
    generator = torch.Generator().manual_seed(0)
    tensors = sigma * torch.randn(k, n, generator=generator, dtype=torch.float64)
    plain = tensors.mean(dim=0)
    # Sample variance of n Gaussians: relative standard error sqrt(2 / n) ~ 0.3 %; allow 5 of them.
    assert plain.var().item() == pytest.approx(sigma**2 / k, rel=5 * math.sqrt(2 / n))
    corrected = variance_corrected_average(tensors, epsilon=0.0)
    target = tensors.var(dim=1).mean().item()
    assert corrected.var().item() == pytest.approx(target, rel=1e-10)
    assert corrected.mean().item() == pytest.approx(plain.mean().item(), abs=1e-12)
    # Correlation with the plain average is 1: the correction is an affine rescaling about the mean.
    assert torch.corrcoef(torch.stack([plain, corrected]))[0, 1].item() == pytest.approx(1.0, abs=1e-10)


def test_conservative_target_mixes_own_and_others():
    generator = torch.Generator().manual_seed(1)
    tensors = torch.randn(3, 1000, generator=generator, dtype=torch.float64) * torch.tensor([[1.0], [2.0], [3.0]])
    own = 0.5 * torch.randn(1000, generator=generator, dtype=torch.float64)
    out = variance_corrected_average(tensors, own=own, conservative=0.25, epsilon=0.0)
    expected = 0.25 * own.var().item() + 0.75 * tensors.var(dim=1).mean().item()
    assert out.var().item() == pytest.approx(expected, rel=1e-10)


def test_ring_mixing_is_doubly_stochastic_and_gossip_preserves_the_mean():
    mixing = metropolis_weights(ring_adjacency(8))
    np.testing.assert_allclose(mixing.sum(axis=0), 1.0)
    np.testing.assert_allclose(mixing.sum(axis=1), 1.0)
    assert np.allclose(np.diag(mixing), 1 / 3) and mixing[0, 1] == pytest.approx(1 / 3) and mixing[0, 4] == 0.0
    generator = torch.Generator().manual_seed(2)
    params = {"w": torch.randn(8, 50, 40, generator=generator, dtype=torch.float64)}
    merged = gossip_merge(params, torch.as_tensor(mixing), correct=False)
    torch.testing.assert_close(merged["w"].mean(dim=0), params["w"].mean(dim=0))
    # Plain gossip of independent tensors: variance ratio sum_j W_ij^2 = 3 / 9 = 1/3.
    ratio = merged["w"].reshape(8, -1).var(dim=1).mean() / params["w"].reshape(8, -1).var(dim=1).mean()
    assert ratio.item() == pytest.approx(1 / 3, rel=0.05)
    corrected = gossip_merge(params, torch.as_tensor(mixing), correct=True, epsilon=0.0)
    variances = params["w"].reshape(8, -1).var(dim=1)
    for i in range(8):
        neighbours = [(i - 1) % 8, i, (i + 1) % 8]
        assert corrected["w"][i].var().item() == pytest.approx(variances[neighbours].mean().item(), rel=1e-10)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="nodes"):
        Config(nodes=2)
    with pytest.raises(ValueError, match="target_accuracy"):
        Config(target_accuracy=1.5)


def test_fast_demo_correction_is_not_slower_and_variance_collapses():
    result = demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.verdict in ("reproduced", "partly", "not reproduced")
    assert result.baseline["first_merge_variance_ratio"].mean == pytest.approx(1 / 3, abs=0.05)
    assert result.measured["first_merge_variance_ratio"].mean == pytest.approx(1.0, abs=0.05)
    # Direction: corrected gossip reaches the target in no more rounds than plain gossip (tolerance 0 rounds).
    assert result.measured["rounds_to_target"].mean <= result.baseline["rounds_to_target"].mean
