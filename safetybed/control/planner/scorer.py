"""The trajectory-scoring network of the highway planner, in the style of Hydra-MDP.

Hydra-MDP (NVIDIA, arXiv 2406.06978; ``research/centaur_dsac.md`` §1.1) scores every vocabulary trajectory ``t_j``
with an imitation score and sigmoid safety sub-scores, and selects ``argmax_j phi(s_j)`` with the log-weighted
combination (the WoTE port's weights ``w = [0.1, 0.5, 0.5, 1.0]``)::

    phi_j = w_im log S_im,j + w_nc log NC_j + w_dac log DAC_j + w log(5 TTC_j + 2 C_j + 5 EP_j)

with ``S_im = softmax`` over the vocabulary and NC (no collision), DAC (drivable area), TTC (time to collision
above its threshold), C (comfort), EP (ego progress) each a sigmoid in (0, 1). The weights are an option; our default
(:data:`DEFAULT_WEIGHTS`) drops the imitation vote, for the measured reason given there.

Layout (the split Centaur's update needs): ``trunk`` (observation -> features; frozen at test time, with a
``LayerNorm``, the only layer TENT adapts) and ``scorer`` (features -> ``K x 6`` logits: the *scoring head* Centaur
adapts). ``forward(obs)`` returns ``phi`` ``[..., K]``; :meth:`TrajectoryScorer.sub_scores` returns every named term.
Training (imitation of a search-based expert, sub-score supervision from simulated candidates) is in :mod:`.training`.
"""

from __future__ import annotations

import torch
from torch import nn

#: The sub-scores in the order of the head's outputs after the imitation logit.
SUB_SCORES = ("nc", "dac", "ttc", "c", "ep")
#: ``(w_im, w_nc, w_dac, w)`` of phi used by the WoTE port of Hydra-MDP.
HYDRA_WEIGHTS = (0.1, 0.5, 0.5, 1.0)
#: Our default: ``phi = log(NC * DAC * (5 TTC + 2 C + 5 EP))``, the log of the predicted PDM score (imitation still
#: trains the shared trunk but does not vote). Measured on 500 cut-ins (seed 0) with one scorer trained on 300
#: expert episodes (``safetybed/control/planner/training.py``, 30 epochs): collision rate 69.0 % with HYDRA_WEIGHTS, 61.6 %
#: with (0.05, 1, 1, 1), 46.8 % with (0.02, 1, 1, 1), 8.8 % with these, 72.8 % by imitation alone; the expert it
#: imitates had 0 of 200. The imitation logits are overconfident off the expert's states.
DEFAULT_WEIGHTS = (0.0, 1.0, 1.0, 1.0)


class TrajectoryScorer(nn.Module):
    """Observation ``[..., obs_dim]`` -> selection score ``phi`` of each of ``vocabulary_size`` trajectories.

    Args:
        obs_dim: observation length (the highway lane-frame observation: 48).
        vocabulary_size: ``K`` (:class:`safetybed.control.planner.vocabulary.Vocabulary`).
        hidden: trunk width.
        weights: ``(w_im, w_nc, w_dac, w)`` of phi.
    """

    def __init__(self, obs_dim: int, vocabulary_size: int, *, hidden: int = 128,
                 weights: tuple[float, float, float, float] = DEFAULT_WEIGHTS):
        super().__init__()
        if obs_dim < 1 or vocabulary_size < 2 or hidden < 1:
            raise ValueError(f"obs_dim, vocabulary_size, hidden: expected >= 1, >= 2, >= 1; got {obs_dim}, "
                             f"{vocabulary_size}, {hidden}")
        self.vocabulary_size = vocabulary_size
        self.weights = tuple(float(w) for w in weights)
        self.trunk = nn.Sequential(nn.Linear(obs_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.scorer = nn.Linear(hidden, vocabulary_size * (1 + len(SUB_SCORES)))

    def sub_scores(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named terms, each ``[..., K]``: ``log_imitation`` (log S_im), the sigmoid sub-scores and ``phi``."""
        logits = self.scorer(self.trunk(obs)).unflatten(-1, (self.vocabulary_size, 1 + len(SUB_SCORES)))
        terms: dict[str, torch.Tensor] = {"imitation_logit": logits[..., 0],
                                          "log_imitation": torch.log_softmax(logits[..., 0], dim=-1)}
        for index, name in enumerate(SUB_SCORES, start=1):
            terms[f"{name}_logit"] = logits[..., index]
            terms[name] = torch.sigmoid(logits[..., index])
        w_im, w_nc, w_dac, w = self.weights
        log_sigmoid = nn.functional.logsigmoid
        terms["phi"] = (w_im * terms["log_imitation"] + w_nc * log_sigmoid(terms["nc_logit"])
                        + w_dac * log_sigmoid(terms["dac_logit"])
                        + w * torch.log(5 * terms["ttc"] + 2 * terms["c"] + 5 * terms["ep"]))
        return terms

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.sub_scores(obs)["phi"]
