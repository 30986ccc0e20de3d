"""Small helpers shared by the training algorithms: config checks, the final evaluation, seeded init,
Polyak averaging, freezing."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from safetybed.control.networks import ObsNormalizer, Policy
    from safetybed.control.training import TrainResult, TrainSetup


# -- config checks (for ``Config.__post_init__``) ----------------------------------------------------------------
def require(name: str, value: object, ok: bool, expected: str) -> None:
    """Raise ``ValueError("<name>: expected <expected>, got <value!r>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def require_integers(config: Any, names: Iterable[str], *, minimum: int = 1) -> None:
    """Each field is an ``int`` (not a ``bool``) of at least ``minimum``."""
    for name in names:
        value = getattr(config, name)
        require(name, value, isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                f"an integer >= {minimum}")


def require_positive(config: Any, names: Iterable[str]) -> None:
    """Each field is ``> 0``."""
    for name in names:
        require(name, getattr(config, name), getattr(config, name) > 0, "> 0")


def require_flags(config: Any, names: Iterable[str]) -> None:
    """Each field is a ``bool``."""
    for name in names:
        require(name, getattr(config, name), isinstance(getattr(config, name), bool), "true or false")


# -- the end of a training loop ---------------------------------------------------------------------------------
def finish(setup: TrainSetup, policy: Policy, obs_norm: ObsNormalizer, *, env_steps: int, updates: int,
           extra: dict[str, torch.Tensor]) -> TrainResult:
    """Evaluate the final policy (unless the last periodic evaluation was at ``env_steps``) and return the result."""
    if not setup.evaluations or setup.evaluations[-1]["env_steps"] != env_steps:
        setup.maybe_evaluate(env_steps, policy, obs_norm, extra=extra, force=True)
    return setup.result(policy, obs_norm, env_steps=env_steps, updates=updates)


# -- networks ---------------------------------------------------------------------------------------------------
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
