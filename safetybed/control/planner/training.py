"""The highway trajectory-scoring planner: data from a search expert, and training.

* :func:`collect`: drive seeded episodes on the batched backend, at every step label every candidate by
  simulation (:func:`safetybed.control.planner.supervision.candidate_outcomes`) and act with the expert's first action
  (or, with probability ``explore``, a uniformly drawn candidate's, so that states off the expert's path are
  seen too; a choice, the paper trains on human logs).
* :func:`train_scorer`: Hydra-MDP's distillation (``research/centaur_dsac.md`` §1.1): cross-entropy of the
  imitation logits against the expert's index, plus binary cross-entropy of every sub-score logit against its
  simulated label (``ep`` is a soft label in [0, 1]); the loss returns its named terms.
* the controller that acts with it is :class:`safetybed.control.planner.controller.PlannerController`; ``safetybed
  train`` of a planner spec is :func:`safetybed.control.planner.train.train_planner_from_spec`.

Observations are scaled by the observation bounds (:func:`safetybed.sims.highway_obs.observation_bounds`) before the
scorer, so every input is in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from safetybed.control.algorithms.common import build_module
from safetybed.control.planner.scorer import DEFAULT_WEIGHTS, SUB_SCORES, TrajectoryScorer
from safetybed.control.planner.supervision import candidate_outcomes
from safetybed.control.planner.vocabulary import Vocabulary
from safetybed.sims.batched.sim import BatchedHighway
from safetybed.spec import ScenarioSpec


@dataclass
class Demonstrations:
    """States and their labels: ``obs`` ``[N, D]``, ``labels[name]`` ``[N, K]`` (and ``expert`` ``[N]``)."""

    obs: torch.Tensor
    labels: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.obs.shape[0])


def collect(spec: ScenarioSpec, vocabulary: Vocabulary, *, seeds: Sequence[int], explore: float = 0.2,
            generator: np.random.Generator, driver: ScaledScorer | None = None) -> Demonstrations:
    """Label every step of one episode per seed (module docstring); ``generator`` draws the exploration.

    ``driver``: drive with this scorer's choice instead of the expert's (DAgger's data from the learner's own
    state distribution); the labels are the expert's either way.
    """
    sim = BatchedHighway(spec, dtype=torch.float32)
    sim.reset([int(seed) for seed in seeds])
    first = torch.as_tensor(vocabulary.first_actions())
    done = torch.zeros(sim.batch, dtype=torch.bool)
    observations, labels = [], []
    for _ in range(spec.episode_steps):
        obs = sim.observe()
        outcome = candidate_outcomes(sim, vocabulary)
        alive = ~done
        observations.append(obs[alive])
        labels.append({name: value[alive] for name, value in outcome.items()})
        if driver is None:
            choice = outcome["expert"].clone()
        else:
            with torch.no_grad():
                choice = driver(obs.to(torch.float32)).argmax(dim=-1)
        explore_rows = torch.as_tensor(generator.random(sim.batch) < explore)
        random_choice = torch.as_tensor(generator.integers(0, len(vocabulary), sim.batch))
        choice = torch.where(explore_rows, random_choice, choice)
        result = sim.step(first[choice])
        done |= result.terminated.bool() | result.truncated.bool()
        if bool(done.all()):
            break
    return Demonstrations(obs=torch.cat(observations),
                          labels={name: torch.cat([row[name] for row in labels]) for name in labels[0]})


class ScaledScorer(nn.Module):
    """:class:`TrajectoryScorer` behind a fixed input scaling (observation / max(|low|, |high|) of its bounds)."""

    def __init__(self, scale: torch.Tensor, vocabulary_size: int, *, hidden: int = 64,
                 weights: tuple[float, float, float, float] = DEFAULT_WEIGHTS):
        super().__init__()
        self.register_buffer("inv_scale", 1.0 / scale.clamp_min(1e-6))
        self.net = TrajectoryScorer(int(scale.numel()), vocabulary_size, hidden=hidden, weights=weights)

    def sub_scores(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net.sub_scores(obs * self.inv_scale)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs * self.inv_scale)


def scorer_loss(model: ScaledScorer, obs: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Named terms: ``imitation`` (CE on the expert), one BCE per sub-score, and their sum ``loss``."""
    terms = model.sub_scores(obs)
    out = {"imitation": nn.functional.cross_entropy(terms["imitation_logit"], labels["expert"].long())}
    for name in SUB_SCORES:
        out[name] = nn.functional.binary_cross_entropy_with_logits(terms[f"{name}_logit"], labels[name].float())
    out["loss"] = sum(out.values())
    return out


def train_scorer(data: Demonstrations, vocabulary: Vocabulary, *, scale: torch.Tensor, epochs: int = 20,
                 batch_size: int = 256, lr: float = 1e-3, hidden: int = 64,
                 weights: tuple[float, float, float, float] = DEFAULT_WEIGHTS, seed: int = 0
                 ) -> tuple[ScaledScorer, list[dict[str, float]]]:
    """Fit a :class:`ScaledScorer` on ``data`` with Adam; returns it and the per-epoch mean of every loss term."""
    generator = torch.Generator().manual_seed(seed)
    # PyTorch's default initialisation drawn from our own generator (the trainers' build_module), not the global RNG.
    model = build_module(lambda: ScaledScorer(scale, len(vocabulary), hidden=hidden, weights=weights), device=torch.device("cpu"),
                         generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        sums: dict[str, float] = {}
        batches = 0
        for start in range(0, len(data), batch_size):
            index = order[start:start + batch_size]
            terms = scorer_loss(model, data.obs[index], {k: v[index] for k, v in data.labels.items()})
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            batches += 1
        history.append({name: value / batches for name, value in sums.items()})
    return model.eval(), history
