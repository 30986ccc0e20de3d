"""Offline datasets recorded by the batch runner and read back from the run store.

The offline-RL demos learn from what ``safetybed run`` stores: a scenario with ``metrics.per_step_log`` on is
run once per behaviour controller (a weak one such as ``builtin:random`` and a good shipped one), each run is
stored in a :class:`~safetybed.runner.RunStore` like any other, and :func:`record_dataset` reads the complete
runs back into one :class:`OfflineDataset` of transitions (obs, action, reward, next obs, terminal) with the
episode each came from. A second call with the same parts reuses the stored runs (and resumes a partial one),
so a dataset is recorded once per store.

Example (from the repository root; about 10 s)::

    from safetybed.suite.common.offline_data import DatasetPart, record_dataset
    data = record_dataset("classic/cartpole", parts=[DatasetPart("builtin:random", 95),
                                                     DatasetPart(shipped_controller("cartpole_ppo"), 5)],
                          seed=0, store_path="runs/suite.sqlite")
    print(data.size, data.episode_returns.mean())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from safetybed.errors import InputError
from safetybed.runner import RunStore
from safetybed.runner.batch import run_or_resume, stored_episodes
from safetybed.spec.catalogue import catalogue_dirs, load_scenario_arg

__all__ = ["DEFAULT_SUITE_STORE", "DatasetPart", "OfflineDataset", "record_dataset", "shipped_controller"]

#: The run store the suite's demos record their datasets in (beside the default ``runs/safetybed.sqlite``).
DEFAULT_SUITE_STORE = Path("runs") / "suite.sqlite"


@dataclass(frozen=True)
class DatasetPart:
    """``episodes`` episodes of behaviour ``controller`` (any reference ``safetybed run`` accepts)."""

    controller: str
    episodes: int


@dataclass(frozen=True)
class OfflineDataset:
    """Transitions of a mixed offline dataset, aligned along the first axis (``N`` transitions, ``E`` episodes).

    Attributes:
        observations, next_observations: ``[N, obs_dim]`` float32.
        actions: ``[N, act_dim]`` float32 for a Box action space, ``[N]`` int64 for a Discrete one.
        rewards: ``[N]`` float32.
        terminals: ``[N]`` bool, true on the last step of an episode that *terminated* (not on a time-out), so
            a learner bootstraps through time-outs.
        episode: ``[N]`` int64, the episode (``0..E-1``) each transition belongs to.
        episode_returns: ``[E]`` undiscounted returns.
        episode_controllers: ``[E]`` the behaviour controller of each episode.
        run_ids: the stored runs the data came from, one per part.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    episode: np.ndarray
    episode_returns: np.ndarray
    episode_controllers: tuple[str, ...]
    run_ids: tuple[str, ...]

    @property
    def size(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def episodes(self) -> int:
        return int(self.episode_returns.shape[0])

    def episode_starts(self) -> np.ndarray:
        """Index of the first transition of every episode, ``[E]``."""
        return np.flatnonzero(np.r_[True, self.episode[1:] != self.episode[:-1]])

    def select_episodes(self, keep: np.ndarray) -> OfflineDataset:
        """The dataset restricted to the episodes where boolean ``keep[E]`` is true (renumbered)."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.episodes,):
            raise ValueError(f"keep: expected shape ({self.episodes},), got {keep.shape}")
        rows = keep[self.episode]
        renumber = np.cumsum(keep) - 1
        return OfflineDataset(self.observations[rows], self.actions[rows], self.rewards[rows],
                              self.next_observations[rows], self.terminals[rows], renumber[self.episode[rows]],
                              self.episode_returns[keep],
                              tuple(c for c, k in zip(self.episode_controllers, keep, strict=True) if k),
                              self.run_ids)


def shipped_controller(name: str) -> str:
    """The path of a shipped controller spec ``controllers/NAME.toml`` (from the working directory or the
    package's catalogue)."""
    for folder in catalogue_dirs("controllers"):
        path = folder / f"{name}.toml"
        if path.exists():
            return str(path)
    raise InputError(f"controller {name!r}: no controllers/{name}.toml in {[str(d) for d in catalogue_dirs('controllers')]}")


def record_dataset(scenario: str, *, parts: Sequence[DatasetPart], seed: int,
                   store_path: str | Path = DEFAULT_SUITE_STORE, workers: int = 1) -> OfflineDataset:
    """Run (or reuse) one stored run per part of ``scenario`` with the per-step log on, and read them back.

    Part ``k`` runs with seed ``seed + k``, so the parts' episodes never share a seed; the runs are complete
    before they are read (:func:`~safetybed.runner.batch.stored_episodes` refuses a partial one).
    """
    if not parts:
        raise ValueError("parts: expected at least one DatasetPart, got none")
    spec, path = load_scenario_arg(scenario)
    spec = spec.model_copy(update={"metrics": spec.metrics.model_copy(update={"per_step_log": True})})
    Path(store_path).parent.mkdir(parents=True, exist_ok=True)
    obs, actions, rewards, next_obs, terminals, episode = [], [], [], [], [], []
    returns: list[float] = []
    controllers: list[str] = []
    run_ids: list[str] = []
    with RunStore(store_path) as store:
        for k, part in enumerate(parts):
            if part.episodes < 1:
                raise ValueError(f"parts[{k}].episodes: expected >= 1, got {part.episodes}")
            run_id = run_or_resume(store, spec, scenario_path=str(path), controller=part.controller, seed=seed + k,
                                   episodes=part.episodes, workers=workers, progress=None)
            run_ids.append(run_id)
            for record in stored_episodes(store, run_id, with_logs=True):
                steps = record.steps or []
                if len(steps) != record.length:
                    raise InputError(f"run {run_id} episode {record.index}: {len(steps)} logged steps for "
                                     f"{record.length} steps (was the per-step log on?)")
                for j, step in enumerate(steps):
                    obs.append(step["obs"])
                    next_obs.append(step["next_obs"])
                    actions.append(step["action"])
                    rewards.append(step["reward"])
                    terminals.append(bool(record.terminated and j == len(steps) - 1))
                    episode.append(len(returns))
                returns.append(record.episode_return)
                controllers.append(part.controller)
    action_array = np.asarray(actions)
    action_array = action_array.astype(np.int64) if action_array.ndim == 1 else action_array.astype(np.float32)
    return OfflineDataset(np.asarray(obs, dtype=np.float32), action_array, np.asarray(rewards, dtype=np.float32),
                          np.asarray(next_obs, dtype=np.float32), np.asarray(terminals, dtype=bool),
                          np.asarray(episode, dtype=np.int64), np.asarray(returns, dtype=np.float64),
                          tuple(controllers), tuple(run_ids))
