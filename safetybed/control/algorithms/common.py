"""Small helpers shared by the off-policy algorithms (DSAC-T, SAC): config checks, seeded init, Polyak, freezing."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


def require(name: str, value: object, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def init_linear_(module: nn.Module, *, generator: torch.Generator) -> nn.Module:
    """Redraw every ``nn.Linear`` with PyTorch's default scheme, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
    from ``generator`` instead of the global RNG."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
    return module


def polyak_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * online``."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Forward passes inside build no graph to these modules' parameters (gradients still reach inputs)."""
    params = [p for module in modules for p in module.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def build_module(factory: Callable[[], nn.Module], *, device: torch.device, generator: torch.Generator) -> nn.Module:
    # Construct with the global RNG's state saved and restored (nn.Linear draws from it), then redraw
    # the weights from the run's own generator.
    with torch.random.fork_rng(devices=[]):
        module = factory()
    return init_linear_(module, generator=generator).to(device)
