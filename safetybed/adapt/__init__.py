"""Test-time adaptation of trajectory-scoring planners (issue 15): Cluster Entropy, the Centaur update, TENT.

The planner controller, the shifted scenario suites and ``safetybed adapt`` are still to come; these are the
method's rules as functions and adapters, each with its paper and equation in its module docstring.
"""

from safetybed.adapt.centaur import CentaurAdapter
from safetybed.adapt.cluster_entropy import CLUSTERS, cluster_entropy, direction_clusters
from safetybed.adapt.tent import TentAdapter, full_entropy

__all__ = ["CLUSTERS", "CentaurAdapter", "TentAdapter", "cluster_entropy", "direction_clusters", "full_entropy"]
