"""Transcendental functions with one scalar routine per element: batch-independent, numpy-equal results on CPU.

On CPU, torch evaluates transcendental functions of contiguous tensors with SIMD routines (Sleef) for full vectors
and with the C library for the remainder, so an element's last bit depends on where it falls in the tensor, i.e.
on the batch. :func:`elementwise` hands torch a strided view instead, on which it runs its scalar loop (the C
library's ``pow`` / ``exp`` / ``cos`` / ``sin`` / ``tan`` / ``atan`` / ``asin``, which numpy's float64 scalars use as
well): results are independent of the batch, and equal numpy's bitwise. The scalar loop is slower, so the batched
simulator uses it in float64 (its reference mode, the runner's) and the SIMD routines in float32 (its speed mode,
``exact=False``). Other devices evaluate each element independently already.
"""

from __future__ import annotations

import torch


def elementwise(op, values: torch.Tensor, *args, exact: bool = True) -> torch.Tensor:
    """``op(values, *args)`` with the same scalar routine for every element (``exact``; see the module docstring)."""
    if not exact or values.device.type != "cpu" or values.numel() == 0:
        return op(values, *args)
    spread = torch.empty((*values.shape, 2), dtype=values.dtype, device=values.device)
    spread[..., 0] = values
    return op(spread[..., 0], *args)


def libm_pow(base: torch.Tensor, exponent: float, *, exact: bool = True) -> torch.Tensor:
    """``base ** exponent`` as numpy computes it on float64 scalars (the C library's ``pow``; :func:`elementwise`).

    The exponent is passed as a tensor: torch turns a scalar exponent 2 into ``x * x``, which differs from
    ``pow(x, 2)`` in the last bit for about 0.1 % of the inputs.
    """
    return elementwise(torch.pow, base, torch.tensor(exponent, dtype=base.dtype, device=base.device), exact=exact)


__all__ = ["elementwise", "libm_pow"]
