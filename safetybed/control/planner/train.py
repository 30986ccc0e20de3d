"""``safetybed train`` of a planner spec: label expert episodes, distil the scorer, DAgger, save the checkpoint.

1. Round 0: ``[train] episodes`` seeded episodes of each training scenario driven by the search expert (with
   ``explore``), every state labelled by simulating every candidate (:func:`~.training.collect`).
2. Rounds ``1 .. dagger_rounds`` (DAgger, Ross, Gordon & Bagnell, AISTATS 2011): as many new episodes driven by the
   scorer trained so far (with the same exploration), labelled by the expert; the scorer is re-trained from its
   initial seed on all the data so far.
3. The final scorer is saved (:func:`~.checkpoint.save_planner_checkpoint`) with the training summary, including
   each round's data size and loss terms.

Episode seeds and exploration come from ``SeedSequence([train] seed, spawn_key=(PLANNER_TRAINING, scenario, round))``,
disjoint from every run's episode seeds (``spawn_key=(i,)``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safetybed import seeding_keys
from safetybed.control.planner.checkpoint import save_planner_checkpoint
from safetybed.control.planner.training import Demonstrations, ScaledScorer, collect, train_scorer
from safetybed.control.planner.vocabulary import Vocabulary
from safetybed.errors import InputError
from safetybed.spec.catalogue import load_scenario_arg
from safetybed.spec.planner import load_planner_spec
from safetybed.threads import torch_threads

#: Episodes labelled per batch (64 episodes x 80 candidates is one batched simulation of 5,120 rows).
CHUNK_EPISODES = 64


def _concat(parts: list[Demonstrations]) -> Demonstrations:
    return Demonstrations(obs=torch.cat([p.obs for p in parts]),
                          labels={name: torch.cat([p.labels[name] for p in parts]) for name in parts[0].labels})


def train_planner_from_spec(spec_path: str | Path, *, episodes: int | None = None, out: str | Path | None = None,
                            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train the planner a spec describes, save its checkpoint (default: the spec's folder), return a summary."""
    from safetybed.sims import make_env

    loaded = load_planner_spec(spec_path)
    spec = loaded.spec
    train = spec.train
    if episodes is not None and episodes < 1:
        raise InputError(f"--steps: expected >= 1 episodes per scenario and round, got {episodes}")
    episodes = episodes or train.episodes
    scenarios = [load_scenario_arg(loaded.scenario_ref(ref))[0] for ref in [spec.scenario, *train.extra_scenarios]]
    for scenario in scenarios:
        if scenario.simulator != "highway":
            raise InputError(f"{spec_path}: scenario: the planner drives highway scenarios, got {scenario.name} "
                             f"({scenario.simulator})")
    env = make_env(scenarios[0])
    observation_space, action_space = env.observation_space, env.action_space
    env.close()
    vocabulary = Vocabulary(accelerations_mps2=tuple(spec.vocabulary.accelerations_mps2),
                            horizon_s=spec.vocabulary.horizon_s, lane_change_s=spec.vocabulary.lane_change_s)
    scale = torch.as_tensor(np.maximum(np.abs(observation_space.low), np.abs(observation_space.high)),
                            dtype=torch.float32)
    out_dir = Path(out) if out is not None else loaded.checkpoint_dir
    started = time.perf_counter()
    total = len(scenarios) * episodes * (train.dagger_rounds + 1)
    done = 0
    parts: list[Demonstrations] = []
    rounds: list[dict[str, Any]] = []
    model: ScaledScorer | None = None
    with torch_threads(1):
        for round_index in range(train.dagger_rounds + 1):
            for scenario_index, scenario in enumerate(scenarios):
                sequence = np.random.SeedSequence(train.seed, spawn_key=(seeding_keys.PLANNER_TRAINING,
                                                                         scenario_index, round_index))
                generator = np.random.default_rng(sequence)
                seeds = generator.integers(0, 2**63 - 1, size=episodes)
                for start in range(0, episodes, CHUNK_EPISODES):
                    chunk = seeds[start:start + CHUNK_EPISODES]
                    parts.append(collect(scenario, vocabulary, seeds=chunk.tolist(), explore=train.explore,
                                         generator=generator, driver=model))
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            data = _concat(parts)
            model, history = train_scorer(data, vocabulary, scale=scale, epochs=train.epochs,
                                          batch_size=train.batch_size, lr=train.lr, hidden=spec.network.hidden,
                                          weights=spec.network.weights, seed=train.seed)
            rounds.append({"round": round_index, "states": len(data), "final_epoch": history[-1]})
    summary = {"controller": spec.name, "algorithm": "planner", "checkpoint": os.path.relpath(out_dir),
               "scenarios": [s.name for s in scenarios], "episodes_per_scenario_and_round": episodes,
               "dagger_rounds": train.dagger_rounds, "rounds": rounds,
               "wall_time_s": time.perf_counter() - started}
    save_planner_checkpoint(out_dir, model=model, vocabulary=vocabulary, observation_space=observation_space,
                            action_space=action_space, extra={"controller_spec": spec.name, "training": summary,
                                                              "train": train.model_dump()})
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
