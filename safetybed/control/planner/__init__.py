"""The highway trajectory-scoring planner and its test-time adaptation rules (issue 15).

* :mod:`.vocabulary` (candidate trajectories), :mod:`.scorer` (Hydra-MDP-style scoring network),
  :mod:`.supervision` (labels from simulating every candidate), :mod:`.training` / :mod:`.train` (expert data,
  DAgger, distillation; ``safetybed train`` of a planner spec), :mod:`.checkpoint` (safetensors + manifest);
* :mod:`.cluster_entropy` (Centaur's Cluster Entropy), :mod:`.centaur` (the Centaur update), :mod:`.tent` (TENT);
* :mod:`.controller`: the planner as a controller, adapted by ``none`` / ``centaur`` / ``tent``.

They live under ``control`` because the planner is a controller: the runner's workers, the deployment runtime and
certification load it (``adapt:METHOD:SPEC``); the evaluation of adaptation is :mod:`safetybed.adapt`.
"""

from safetybed.control.planner.centaur import CentaurAdapter
from safetybed.control.planner.cluster_entropy import CLUSTERS, cluster_entropy, direction_clusters
from safetybed.control.planner.tent import TentAdapter, full_entropy

__all__ = ["CLUSTERS", "CentaurAdapter", "TentAdapter", "cluster_entropy", "direction_clusters", "full_entropy"]
