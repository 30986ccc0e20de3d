"""Centaur's test-time update: one gradient step on the scoring head that lowers Cluster Entropy.

Sima et al., "Robust End-to-End Autonomous Driving with Test-Time Training" (Centaur, arXiv 2503.11650, 2025;
``research/centaur_dsac.md`` §1.3-1.4). Before acting on frame ``i`` the planner's scoring head ``theta`` takes one
plain gradient-descent step (no momentum)::

    theta_i = theta_ref - eta * mean_{f in the last F frames} dH_f / dtheta          (eta = 1e-4, F = 4)

where ``H_f`` is the Cluster Entropy (:func:`safetybed.control.planner.cluster_entropy.cluster_entropy`) of frame ``f``'s
scores. Only the head adapts; everything else is frozen. Gradients are taken on *past* frames, so the current
frame never waits for its own backward pass: :meth:`CentaurAdapter.record` runs after the action is out (off the
critical path), :meth:`CentaurAdapter.scores` of the next frame applies the step.

Choices where the paper is silent (each an option):

* ``cumulative=False`` (default, §1.3 [INFER]: the formula uses ``theta``): ``theta_ref`` is always the trained
  head, so every frame's weights are ``theta_0`` minus one step and the model's stored weights never change;
  ``cumulative=True``: ``theta_ref`` is the previous frame's adapted head, so the steps add up (the gradients of a
  frame are then taken at the weights it was scored with).
* ``entropy_threshold`` (selective TTT, value not published): step only when the current frame's entropy under
  ``theta_ref`` exceeds it (one extra forward pass, no backward); ``None`` steps whenever gradients are buffered.
* no gradient is buffered yet (the first frame of an episode): no step. :meth:`reset` empties the buffer (a new
  episode) and, in cumulative mode, returns to the trained head.

The model is never modified in place: adapted weights are applied with ``torch.func.functional_call``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

#: ``entropy_fn(scores) -> scalar``: the uncertainty that is minimised, e.g. ``partial(cluster_entropy,
#: clusters=...)``; ``scores`` is what the model returns for one frame.
EntropyFn = Callable[[torch.Tensor], torch.Tensor]


class CentaurAdapter:
    """Cluster-Entropy test-time training of ``model``'s ``head`` submodule (module docstring).

    Args:
        model: maps one frame's observation to its vocabulary scores (``model(obs) -> [K]``).
        head: name of the submodule that adapts (``dict(model.named_modules())[head]``), e.g. ``"scorer"``.
        entropy_fn: the entropy of one frame's scores (Cluster Entropy for Centaur).
        lr: step size ``eta`` (Centaur: 1e-4).
        frames: gradient buffer length ``F`` (Centaur: 4).
        cumulative: steps add up over frames instead of each starting from the trained head.
        entropy_threshold: step only when the current frame's entropy exceeds this (``None``: always).
    """

    def __init__(self, model: nn.Module, *, head: str, entropy_fn: EntropyFn, lr: float = 1e-4, frames: int = 4,
                 cumulative: bool = False, entropy_threshold: float | None = None):
        modules = dict(model.named_modules())
        if head not in modules or head == "":
            raise ValueError(f"head: expected the name of a submodule of the model, one of "
                             f"{sorted(name for name in modules if name)}, got {head!r}")
        if not lr > 0:
            raise ValueError(f"lr: expected > 0, got {lr}")
        if frames < 1:
            raise ValueError(f"frames: expected >= 1, got {frames}")
        self.model = model
        self.entropy_fn = entropy_fn
        self.lr = float(lr)
        self.frames = int(frames)
        self.cumulative = bool(cumulative)
        self.entropy_threshold = entropy_threshold
        self.names = [f"{head}.{name}" for name, _ in modules[head].named_parameters()]
        self.trained = {name: value.detach().clone() for name, value in model.named_parameters()
                        if name in self.names}
        self.reset()

    def reset(self) -> None:
        """A new episode: empty the gradient buffer; the reference head is the trained one again."""
        self.reference = {name: value.clone() for name, value in self.trained.items()}
        self.current = dict(self.reference)
        self._grads: deque[dict[str, torch.Tensor]] = deque(maxlen=self.frames)

    def _call(self, head: dict[str, torch.Tensor], obs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, head, (obs,), strict=False)

    def scores(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Scores of the current frame under this frame's adapted head, and named terms for the log:
        ``updated`` (a step was taken), ``entropy_before`` (under the reference head; only with a threshold)."""
        terms: dict[str, Any] = {"updated": False}
        self.current = self.reference
        if self._grads:
            due = True
            if self.entropy_threshold is not None:
                with torch.no_grad():
                    before = float(self.entropy_fn(self._call(self.reference, obs)))
                terms["entropy_before"] = before
                due = before > self.entropy_threshold
            if due:
                self.current = {name: self.reference[name] - self.lr * torch.stack(
                    [grads[name] for grads in self._grads]).mean(dim=0) for name in self.names}
                terms["updated"] = True
                if self.cumulative:
                    self.reference = self.current
        with torch.no_grad():
            return self._call(self.current, obs), terms

    def record(self, obs: torch.Tensor) -> torch.Tensor:
        """Buffer ``dH/dtheta`` of the frame just acted on (at ``theta_0``, or at its own weights when
        cumulative); call it after the action is sent. Returns the frame's entropy at those weights."""
        at = self.current if self.cumulative else self.trained
        head = {name: value.detach().requires_grad_(True) for name, value in at.items()}
        entropy = self.entropy_fn(self._call(head, obs))
        grads = torch.autograd.grad(entropy, [head[name] for name in self.names], allow_unused=True)
        self._grads.append({name: torch.zeros_like(head[name]) if grad is None else grad.detach()
                            for name, grad in zip(self.names, grads, strict=True)})
        return entropy.detach()
