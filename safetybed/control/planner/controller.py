"""The trajectory-scoring planner as a controller, with optional test-time adaptation (none, Centaur, TENT).

:class:`PlannerController` acts with the first step of ``argmax_j phi_j`` (:mod:`.scorer`, :mod:`.vocabulary`) and
re-plans every control step. ``method`` picks the test-time adaptation:

* ``"none"``: the trained scorer as it is;
* ``"centaur"``: :class:`~safetybed.control.planner.centaur.CentaurAdapter` on the scoring head ``net.scorer``,
  with Cluster Entropy (:func:`~safetybed.control.planner.cluster_entropy.cluster_entropy`) over the vocabulary's
  direction clusters; the stored weights never change (steps are applied functionally);
* ``"tent"``: :class:`~safetybed.control.planner.tent.TentAdapter` on the trunk's LayerNorm affine parameters of
  this controller's own copy of the scorer.

**The test stream is one episode** (our choice, where TENT's paper adapts online over a whole test set): every
method returns to the trained weights at :meth:`reset`, so an episode's actions are a function of its own
observations only, and a run's records do not depend on which episodes a worker happened to see before (worker
count, executor and batch size change nothing). Adaptation is per episode, so each episode has its own controller
(``batch_stateless`` is false for every method; for ``"none"`` too, so that the three methods run the same code on
the same one-row inputs and differ only by the update).

**Off the critical path** (Centaur §1.4): the gradient of frame ``i`` is needed only from frame ``i + 1`` on, so
:meth:`after_action` computes it once the action is out; a deployment loop calls it from its adapt hook
(:func:`safetybed.control.runtime.run_in_pybullet`, :func:`safetybed.control.runtime.run_in_highway`). When nobody
calls it (the batch runner), :meth:`act` computes the pending gradient first: the same numbers, on the critical
path.

:meth:`decision_terms` returns the named terms of the last decision (``choice``, the Cluster ``entropy`` of the scores
acted on, ``updated``), which the rollouts store in the per-step log under ``"controller"``.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from safetybed.control.base import Controller
from safetybed.control.planner.centaur import CentaurAdapter
from safetybed.control.planner.cluster_entropy import cluster_entropy, direction_clusters
from safetybed.control.planner.tent import TentAdapter
from safetybed.control.planner.training import ScaledScorer
from safetybed.control.planner.vocabulary import Vocabulary
from safetybed.spec.planner import ADAPT_METHODS, AdaptSpec

#: The submodule Centaur adapts (the K x 6 scoring head of :class:`~safetybed.control.planner.scorer.TrajectoryScorer`).
SCORING_HEAD = "net.scorer"


class PlannerController(Controller):
    """First step of the best-scoring vocabulary trajectory, adapted at test time by ``method`` (module docstring).

    Args:
        model: the trained scorer (never modified: TENT works on a copy).
        vocabulary: its candidate trajectories.
        method: ``"none"``, ``"centaur"`` or ``"tent"``.
        options: the methods' options (``[adapt]`` of the planner spec).
        name: stored with every run.
    """

    batch_stateless = False

    def __init__(self, observation_space: gym.Space, action_space: gym.Space, *, model: ScaledScorer,
                 vocabulary: Vocabulary, method: str = "none", options: AdaptSpec | None = None,
                 name: str = "planner"):
        super().__init__(observation_space, action_space)
        if method not in ADAPT_METHODS:
            raise ValueError(f"method: expected one of {list(ADAPT_METHODS)}, got {method!r}")
        options = options or AdaptSpec()
        self.name, self.method, self.options = name, method, options
        self.model, self.vocabulary = model, vocabulary
        self.first = vocabulary.first_actions()
        centaur = options.centaur
        self.clusters = direction_clusters(torch.as_tensor(vocabulary.lateral_endpoints_m()),
                                           thresholds_m=centaur.thresholds_m)
        self.generator = torch.Generator().manual_seed(0)
        self.entropy_fn = partial(cluster_entropy, clusters=self.clusters, m=centaur.m, subset=centaur.subset,
                                  temperature=centaur.temperature, generator=self.generator)
        self.centaur: CentaurAdapter | None = None
        self.tent: TentAdapter | None = None
        if method == "centaur":
            self.centaur = CentaurAdapter(model, head=SCORING_HEAD, entropy_fn=self.entropy_fn, lr=centaur.lr,
                                          frames=centaur.frames, cumulative=centaur.cumulative,
                                          entropy_threshold=centaur.entropy_threshold)
        elif method == "tent":
            tent = options.tent
            self.tent = TentAdapter(copy.deepcopy(model), lr=tent.lr, betas=(tent.beta1, tent.beta2))
        self._pending: torch.Tensor | None = None
        self._terms: list[dict[str, Any]] = []

    def reset(self, *, seed: int | None = None) -> None:
        """A new episode: back to the trained weights, no buffered gradient (module docstring)."""
        super().reset(seed=seed)
        if seed is not None:  # the random Cluster-Entropy subset, if chosen, is drawn from the episode's stream
            self.generator.manual_seed(int(self.rng.integers(0, 2**63 - 1)))
        if self.centaur is not None:
            self.centaur.reset()
        if self.tent is not None:
            self.tent.reset()
        self._pending = None
        self._terms = []

    def after_action(self) -> None:
        """Compute the gradient of the frame just acted on (Centaur; nothing for the other methods)."""
        if self.centaur is not None and self._pending is not None:
            self.centaur.record(self._pending)
        self._pending = None

    def adapt_hook(self, obs_batch: np.ndarray, action_batch: np.ndarray, info: dict[str, Any]) -> None:
        """The deployment runtime's adapt hook (:func:`safetybed.control.runtime.run_in_pybullet`)."""
        self.after_action()

    def adapted_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter of the scorer as the last decision used it (stored weights, adapted where adapted)."""
        params = {name: value.detach() for name, value in self.model.named_parameters()}
        if self.centaur is not None:
            params.update({name: value.detach() for name, value in self.centaur.current.items()})
        if self.tent is not None:
            params = {name: value.detach() for name, value in self.tent.model.named_parameters()}
        return params

    def scores(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """One frame's selection scores ``[K]`` under this method, and its named terms."""
        if self.centaur is not None:
            self.after_action()  # no-op when the runtime already called it
            return self.centaur.scores(obs)
        if self.tent is not None:
            return self.tent.scores(obs)
        with torch.no_grad():
            return self.model(obs), {"updated": False}

    def act(self, obs_batch: np.ndarray, *, deterministic: bool = True) -> np.ndarray:
        obs_batch = self.check_batch(obs_batch)
        if obs_batch.shape[0] != 1:
            raise ValueError(f"obs_batch: the planner adapts per episode and acts on one row at a time, got "
                             f"{obs_batch.shape[0]} rows")
        obs = torch.as_tensor(obs_batch[0])
        scores, terms = self.scores(obs)
        choice = int(scores.argmax())
        with torch.no_grad():
            entropy = float(self.entropy_fn(scores))
        self._pending = obs
        self._terms = [{"choice": choice, "entropy": entropy, "updated": bool(terms.get("updated", False))}]
        return self.first[[choice]]

    def decision_terms(self) -> list[dict[str, Any]]:
        """Named terms of the last :meth:`act`, one dict per row (module docstring)."""
        return self._terms


def load_planner_controller(spec_path: str, *, method: str, name: str, observation_space: gym.Space,
                            action_space: gym.Space) -> PlannerController:
    """The planner a spec (``algorithm = "planner"``) describes, from its checkpoint, adapted by ``method``."""
    from safetybed.control.planner.checkpoint import load_planner_checkpoint
    from safetybed.errors import InputError
    from safetybed.spec.planner import load_planner_spec

    loaded = load_planner_spec(spec_path)
    if not loaded.checkpoint_dir.exists():
        raise InputError(f"{spec_path}: checkpoint: folder {loaded.checkpoint_dir} does not exist; train it with "
                         f"safetybed train {spec_path}")
    checkpoint = load_planner_checkpoint(loaded.checkpoint_dir)
    return PlannerController(observation_space, action_space, model=checkpoint.model,
                             vocabulary=checkpoint.vocabulary, method=method, options=loaded.spec.adapt, name=name)
