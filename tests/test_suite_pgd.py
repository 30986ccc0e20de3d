"""Policy-Guided Diffusion (Jackson et al. 2024) and the shared EDM model (Karras et al. 2022): the Heun sampler
with the exact Gaussian denoiser reproduces the Gaussian, the preconditioning is the identity at sigma -> 0, the
guidance step is the normalised analytic gradient, and the fast demo's guidance raises the target likelihood."""

from __future__ import annotations

import pytest
import torch

from safetybed.suite.common.diffusion import EDMDenoiser, gaussian_denoiser, heun_sample, karras_sigmas
from safetybed.suite.offline_rl.pgd import ENTRY, action_guidance


def test_heun_sampler_with_the_optimal_denoiser_samples_the_gaussian():
    mean = torch.tensor([1.0, -2.0, 0.5])
    samples = heun_sample(gaussian_denoiser(mean, 0.7), (20000, 3), steps=40,
                          generator=torch.Generator().manual_seed(0))
    assert samples.mean(0).tolist() == pytest.approx(mean.tolist(), abs=0.03)
    assert samples.std(0).tolist() == pytest.approx([0.7] * 3, rel=0.03)


def test_preconditioning_is_the_identity_at_zero_noise_and_the_schedule_ends_at_zero():
    denoiser = EDMDenoiser(4, hidden=8)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    assert denoiser(x, torch.tensor([1e-6])).detach() == pytest.approx(x, abs=1e-5)  # c_skip -> 1, c_out -> 0
    sigmas = karras_sigmas(10)
    assert sigmas[0].item() == pytest.approx(80.0) and sigmas[-2].item() == pytest.approx(0.002, rel=1e-4)
    assert sigmas[-1].item() == 0.0 and (sigmas[:-1].diff() < 0).all()


def test_guidance_moves_actions_along_the_normalised_log_likelihood_gradient():
    target = torch.tensor([0.5, -0.5])

    def log_prob(x):  # log N(a; target, I) up to a constant, actions in x[:, 2:]
        return -0.5 * (x[:, 2:] - target).square().sum(dim=1)

    x = torch.tensor([[9.0, 9.0, 0.0, 0.0], [1.0, 1.0, 3.5, -0.5]])
    out = action_guidance(x, 2, 10, strength=1.0, log_prob=log_prob, action_slice=slice(2, None))
    gradient = target - x[:, 2:]
    expected = x[:, 2:] + 0.8 * gradient / gradient.norm(dim=1, keepdim=True)  # lambda (1 - 2/10)
    assert out[:, 2:] == pytest.approx(expected) and out[:, :2].tolist() == x[:, :2].tolist()
    assert action_guidance(x, 9, 10, strength=1.0, log_prob=log_prob, action_slice=slice(2, None)) is x


def test_fast_demo_guidance_raises_the_target_likelihood():
    result = ENTRY.demo(fast=True, seed=0)
    assert result.measured["log pi_target"].mean > result.baseline["log pi_target"].mean + 1.0
    assert result.measured["dynamics error"].mean < 2 * result.baseline["dynamics error"].mean
