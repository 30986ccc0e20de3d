"""The one place torch's intra-op thread count is changed (a process-wide setting, so always restored)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch on ``count`` intra-op threads inside the block.

    Small tensors gain nothing from more threads, and on a busy machine spinning threads cost a lot: the attack's
    small MLP (1000 tanh calls on 640 x 64 floats) took 1.45 s on two threads against 0.13 s on one, and the
    batched highway simulator's per-frame reductions on a 50-episode batch were ~20x slower on two threads of a
    loaded 2-core machine (63.8 s against 3.0 s for 50 cut-in episodes).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


__all__ = ["torch_threads"]
