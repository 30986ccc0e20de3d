"""TENT, the fully test-time adaptation baseline: entropy minimisation on normalisation affine parameters.

Wang, Shelhamer, Liu, Olshausen & Darrell, "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021
(code ``DequanWang/tent``; ``research/centaur_dsac.md`` §1.6). For a trajectory-scoring planner the prediction is
the softmax over all ``K`` vocabulary scores ("full entropy"):

    H = -sum_j softmax(s)_j log softmax(s)_j          (tent.py ``softmax_entropy``, averaged over the batch)

One Adam step (lr 1e-3, betas (0.9, 0.999), no weight decay: ``cfgs/tent.yaml``) per forward pass, on the affine
weight and bias of every normalisation layer only (``collect_params``; LayerNorm here, as our networks have no
BatchNorm), and the output returned is the one from *before* the step (``forward_and_adapt``). Online by default
(the weights and the optimiser state carry over, ``episodic=False``); :meth:`TentAdapter.reset` restores both
(``episodic=True`` calls it before every frame).

Unlike :class:`safetybed.control.planner.centaur.CentaurAdapter`, TENT changes the model in place (as the original does).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

#: Layers whose affine parameters TENT adapts.
NORM_LAYERS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


def full_entropy(scores: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of ``softmax(scores)`` over the last dimension (tent.py ``softmax_entropy``)."""
    log_p = torch.log_softmax(scores, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def norm_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The affine weight and bias of every normalisation layer of ``model``, by name (TENT's ``collect_params``)."""
    found: dict[str, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_LAYERS):
            for name, parameter in module.named_parameters(recurse=False):
                if name in ("weight", "bias"):
                    found[f"{module_name}.{name}" if module_name else name] = parameter
    return found


class TentAdapter:
    """TENT on ``model`` (``model(obs) -> scores [..., K]``): one Adam step per frame on its norm affine parameters.

    Args:
        model: the planner; adapted in place.
        lr: Adam learning rate (TENT's CIFAR setting: 1e-3).
        betas: Adam betas.
        episodic: reset the weights and the optimiser before every frame.
    """

    def __init__(self, model: nn.Module, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 episodic: bool = False):
        self.model = model
        self.params = norm_parameters(model)
        if not self.params:
            raise ValueError("model: TENT adapts normalisation layers (LayerNorm / BatchNorm / GroupNorm) and the "
                             "model has none")
        if not lr > 0:
            raise ValueError(f"lr: expected > 0, got {lr}")
        self.lr, self.betas, self.episodic = float(lr), betas, bool(episodic)
        self._saved = copy.deepcopy(model.state_dict())
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=self.lr, betas=self.betas, weight_decay=0.0)

    def reset(self) -> None:
        """Back to the trained weights and a fresh optimiser (TENT's ``reset``)."""
        self.model.load_state_dict(self._saved)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=self.lr, betas=self.betas, weight_decay=0.0)

    def scores(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The frame's scores (before the step) and named terms: ``entropy`` (the minimised loss)."""
        if self.episodic:
            self.reset()
        outputs = self.model(obs)
        loss = full_entropy(outputs).mean()
        params = list(self.params.values())
        for parameter, grad in zip(params, torch.autograd.grad(loss, params), strict=True):
            parameter.grad = grad  # the norm parameters only; no other parameter gets a gradient
        self.optimizer.step()
        return outputs.detach(), {"entropy": float(loss.detach()), "updated": True}
