"""Cluster Entropy: the uncertainty of a trajectory-scoring planner over driving directions.

Centaur (Sima, Chitta, Yu, Lan, Luo, Geiger, Li & Alvarez, "Robust End-to-End Autonomous Driving with Test-Time
Training", arXiv 2503.11650, 2025; ``research/centaur_dsac.md`` §1.2): sample ``M`` of the planner's vocabulary
trajectories, put each in one of five direction clusters by its lateral endpoint (left, slight-left, forward,
slight-right, right), average the scores of each cluster's members, softmax the cluster means and take the Shannon
entropy::

    m_c = mean_{j in subset, cluster(j) = c} score_j          (clusters with no member are dropped)
    p_c = softmax(m / temperature)_c
    H   = -sum_c p_c log p_c                                   (0 <= H <= log(#clusters present))

High when several directions carry high average scores; minimising it (:mod:`safetybed.control.planner.centaur`) sharpens the
planner's choice of direction. What the paper leaves open, and what we chose (each an option):

* the subset (§1.2 (a)): the ``M`` highest-scoring trajectories by default (``subset="top"``: the competitive
  candidates), or ``M`` drawn uniformly without replacement from a given generator (``subset="random"``);
* the score (§1.2 (b)): whatever the caller passes, which for our planner is the combined selection score
  (log-scale, :mod:`safetybed.control.planner.scorer`) so the cluster means are logits;
* the cluster bins (§1.2 (c)): fixed thresholds on the lateral endpoint in metres, :data:`DEFAULT_THRESHOLDS_M`
  (|y| < 0.75 m forward, 0.75-2.5 m slight, beyond 2.5 m a full lane (4 m) towards a neighbour);
* a temperature inside the softmax (§1.2 (d)), default 1;
* empty clusters (§1.2 (e)): dropped from the softmax.

Lateral sign convention: highway-env's, positive towards higher lane indices (to the right), so cluster 0 is "left"
(most negative endpoint) and cluster 4 "right".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

#: Cluster names, in order of increasing lateral endpoint.
CLUSTERS = ("left", "slight-left", "forward", "slight-right", "right")
#: Bin edges [m] on the lateral endpoint separating the five clusters (4 edges, increasing).
DEFAULT_THRESHOLDS_M = (-2.5, -0.75, 0.75, 2.5)

Subset = Literal["top", "random"]


def direction_clusters(lateral_endpoints_m: torch.Tensor, *,
                       thresholds_m: Sequence[float] = DEFAULT_THRESHOLDS_M) -> torch.Tensor:
    """Cluster id (0 = left ... 4 = right) of each trajectory from its lateral endpoint [m], shape ``[K]`` -> ``[K]``.

    An endpoint equal to an edge belongs to the cluster on its right (``torch.bucketize(..., right=True)``).
    """
    edges = torch.as_tensor(list(thresholds_m), dtype=torch.float64)
    if edges.numel() != len(CLUSTERS) - 1 or not bool(torch.all(edges[1:] > edges[:-1])):
        raise ValueError(f"thresholds_m: expected {len(CLUSTERS) - 1} increasing edges [m], got {list(thresholds_m)}")
    return torch.bucketize(torch.as_tensor(lateral_endpoints_m, dtype=torch.float64), edges, right=True)


def select_subset(scores: torch.Tensor, m: int, *, subset: Subset = "top",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the ``m`` vocabulary entries the entropy is computed over (all of them when ``m >= K``)."""
    k = scores.shape[-1]
    if m < 1:
        raise ValueError(f"m: expected >= 1 trajectories, got {m}")
    if m >= k:
        return torch.arange(k, device=scores.device)
    if subset == "top":
        return torch.topk(scores.detach(), m).indices
    if subset == "random":
        if generator is None:
            raise ValueError("subset='random' needs a torch.Generator (no global random state)")
        return torch.randperm(k, generator=generator, device=generator.device)[:m].to(scores.device)
    raise ValueError(f"subset: expected 'top' or 'random', got {subset!r}")


def cluster_entropy(scores: torch.Tensor, clusters: torch.Tensor, *, m: int = 100, subset: Subset = "top",
                    temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cluster Entropy of one frame's scores ``[K]`` (differentiable in ``scores``); module docstring.

    Args:
        scores: selection score of every vocabulary trajectory (higher is better).
        clusters: cluster id of every trajectory (:func:`direction_clusters`), ``[K]``.
        m: trajectories sampled (Centaur: 100).
        subset: ``"top"`` (the ``m`` best-scoring) or ``"random"`` (uniform, from ``generator``).
        temperature: softmax temperature over the cluster means (> 0).
    """
    if scores.dim() != 1 or clusters.shape != scores.shape:
        raise ValueError(f"scores, clusters: expected two [K] tensors, got {tuple(scores.shape)} and "
                         f"{tuple(clusters.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    index = select_subset(scores, m, subset=subset, generator=generator)
    chosen, ids = scores[index], clusters.to(scores.device)[index].long()
    count = torch.zeros(len(CLUSTERS), dtype=scores.dtype, device=scores.device).index_add(
        0, ids, torch.ones_like(chosen))
    total = torch.zeros(len(CLUSTERS), dtype=scores.dtype, device=scores.device).index_add(0, ids, chosen)
    present = count > 0
    means = total[present] / count[present]
    log_p = torch.log_softmax(means / temperature, dim=0)
    return -(log_p.exp() * log_p).sum()
