"""A small EDM diffusion model over fixed-length vectors (Karras, Aittala, Aila & Laine 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models"), shared by the suite's diffusion methods.

* Preconditioning (their Table 1): ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with
  ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``,
  ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``c_noise = ln(sigma) / 4`` (``sd`` = ``sigma_data``).
* Training: ``ln sigma ~ N(P_mean, P_std^2)``, loss ``lambda(sigma) ||D(x + sigma n; sigma) - x||^2`` with
  ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``.
* Sampling: the deterministic Heun sampler (their Algorithm 1) over ``sigma_i = (sigma_max^(1/rho) + i/(N-1)
  (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, ``sigma_N = 0``. A ``guidance`` hook ``(x, step, steps) -> x``
  runs before every step, so a method can steer samples (policy guidance, classifier-free guidance).

The data are expected standardised (``sigma_data = 1``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from safetybed.control.algorithms.common import build_module

__all__ = ["EDMConfig", "EDMDenoiser", "edm_loss", "gaussian_denoiser", "heun_sample", "karras_sigmas", "train_edm"]

Guidance = Callable[[torch.Tensor, int, int], torch.Tensor]


@dataclass(frozen=True)
class EDMConfig:
    """EDM settings; defaults from Karras et al. 2022 (``sigma_data`` 1 for standardised data)."""

    sigma_data: float = 1.0
    """Standard deviation of the (standardised) data."""
    p_mean: float = -1.2
    """Mean of ``ln sigma`` during training (theirs)."""
    p_std: float = 1.2
    """Standard deviation of ``ln sigma`` during training (theirs)."""
    sigma_min: float = 0.002
    """Smallest sampling noise level (theirs)."""
    sigma_max: float = 80.0
    """Largest sampling noise level (theirs)."""
    rho: float = 7.0
    """Schedule curvature (theirs)."""


class EDMDenoiser(nn.Module):
    """``D(x; sigma)`` with EDM's preconditioning around an MLP ``F([c_in x, c_noise])``."""

    def __init__(self, dim: int, *, hidden: int = 256, config: EDMConfig = EDMConfig()) -> None:
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sd = self.config.sigma_data
        sigma = sigma.reshape(-1, 1).expand(x.shape[0], 1)
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / torch.sqrt(sigma ** 2 + sd ** 2)
        c_in = 1 / torch.sqrt(sigma ** 2 + sd ** 2)
        c_noise = torch.log(sigma) / 4
        return c_skip * x + c_out * self.net(torch.cat([c_in * x, c_noise], dim=-1))


def edm_loss(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, *,
             config: EDMConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """EDM's weighted denoising loss on a batch ``x``; returns ``loss``."""
    ln_sigma = config.p_mean + config.p_std * torch.randn(x.shape[0], 1, generator=generator)
    sigma = ln_sigma.exp()
    noisy = x + sigma * torch.randn(x.shape, generator=generator)
    weight = (sigma ** 2 + config.sigma_data ** 2) / (sigma * config.sigma_data) ** 2
    return {"loss": (weight * (denoiser(noisy, sigma) - x).square()).mean()}


def train_edm(data: torch.Tensor, *, steps: int, generator: torch.Generator, hidden: int = 256,
              batch_size: int = 256, learning_rate: float = 1e-3, config: EDMConfig = EDMConfig()) -> EDMDenoiser:
    """Train an :class:`EDMDenoiser` on the rows of ``data`` (standardised) with Adam."""
    denoiser = build_module(lambda: EDMDenoiser(data.shape[1], hidden=hidden, config=config),
                            device=torch.device("cpu"), generator=generator)
    optimiser = torch.optim.Adam(denoiser.parameters(), lr=learning_rate)
    for _ in range(steps):
        batch = data[torch.randint(0, data.shape[0], (batch_size,), generator=generator)]
        loss = edm_loss(denoiser, batch, config=config, generator=generator)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return denoiser


def karras_sigmas(steps: int, *, config: EDMConfig = EDMConfig()) -> torch.Tensor:
    """The ``steps`` noise levels of Karras et al. 2022 (Eq. 5) followed by 0."""
    if steps < 2:
        raise ValueError(f"steps: expected >= 2, got {steps}")
    i = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    lo, hi = config.sigma_min ** (1 / config.rho), config.sigma_max ** (1 / config.rho)
    return torch.cat([(hi + i * (lo - hi)) ** config.rho, torch.zeros(1, dtype=torch.float64)]).float()


def heun_sample(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, int], *,
                steps: int, generator: torch.Generator, guidance: Guidance | None = None,
                config: EDMConfig = EDMConfig()) -> torch.Tensor:
    """Karras et al. 2022 Algorithm 1 (deterministic Heun), ``guidance(x, i, steps)`` applied before step ``i``."""
    sigmas = karras_sigmas(steps, config=config)
    x = sigmas[0] * torch.randn(shape, generator=generator)
    for i in range(steps):
        if guidance is not None:
            x = guidance(x, i, steps)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        with torch.no_grad():
            slope = (x - denoiser(x, sigma.expand(1))) / sigma
            x_next = x + (sigma_next - sigma) * slope
            if sigma_next > 0:
                slope_next = (x_next - denoiser(x_next, sigma_next.expand(1))) / sigma_next
                x_next = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
        x = x_next
    return x


def gaussian_denoiser(mean: torch.Tensor, std: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The exact optimal denoiser of data ``N(mean, std^2 I)``: ``mean + std^2 / (std^2 + sigma^2) (x - mean)``
    (an oracle for tests of the sampler)."""
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1)
        return mean + std ** 2 / (std ** 2 + s ** 2) * (x - mean)
    return denoise


