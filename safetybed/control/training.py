"""Scaffolding shared by the training algorithms, so each algorithm file holds only the algorithm.

An algorithm module (``safetybed/control/algorithms/<name>.py``) exposes

* ``Config``: a frozen dataclass of hyper-parameters (a docstring per field, validated in ``__post_init__``);
* ``train(setup: TrainSetup, config: Config) -> TrainResult``;
* an agent object whose ``update(batch) -> dict[str, torch.Tensor]`` returns named loss terms.

:class:`TrainSetup` gives it seeded vector environments, seeded generators, the device, a CSV logger,
periodic evaluation and progress reporting.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from safetybed.control.networks import ObsNormalizer, Policy, PolicyArch
from safetybed.control.policy import PolicyController
from safetybed.errors import InputError
from safetybed.sims import make_env
from safetybed.spec import ScenarioSpec
from safetybed.spec.controller import NetworkSpec


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an input error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False); "
                         "use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device: expected auto, cpu or cuda, got {device!r}")
    return torch.device(device)


class CSVLogger:
    """One row per call in ``path``; a key that first appears in a later row widens the file (no key is lost)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.columns: list[str] = []
        self.rows: list[dict[str, float]] = []

    def log(self, row: dict[str, Any]) -> None:
        clean = {key: (float(value.detach().cpu()) if isinstance(value, torch.Tensor) else value)
                 for key, value in row.items()}
        self.rows.append(clean)
        if self.path is None:
            return
        new_columns = [key for key in clean if key not in self.columns]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if new_columns or not self.path.exists():
            self.columns += new_columns
            with self.path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.columns)
                writer.writeheader()
                writer.writerows(self.rows)
            return
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=self.columns).writerow(clean)


@dataclass
class TrainResult:
    policy: Policy
    obs_norm: ObsNormalizer
    evaluations: list[dict[str, float]] = field(default_factory=list)
    env_steps: int = 0
    updates: int = 0
    wall_time_s: float = 0.0


@dataclass
class TrainSetup:
    """Everything an algorithm needs besides its own hyper-parameters."""

    scenario: ScenarioSpec
    network: NetworkSpec
    steps: int
    envs: int
    seed: int
    device: torch.device
    eval_every_steps: int = 10_000
    eval_episodes: int = 10
    vector: str = "sync"
    logger: CSVLogger = field(default_factory=lambda: CSVLogger(None))
    progress: Callable[[int, int], None] | None = None

    def __post_init__(self) -> None:
        self.seed_sequence = np.random.SeedSequence(self.seed)
        env_seq, sample_seq, torch_seq, self._eval_seq = self.seed_sequence.spawn(4)
        self.env_seed = int(env_seq.generate_state(1)[0])
        self.rng = np.random.default_rng(sample_seq)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(torch_seq.generate_state(1)[0]))
        # CPU generator for anything sampled on the host (e.g. replay indices built with torch).
        self.cpu_generator = torch.Generator()
        self.cpu_generator.manual_seed(int(torch_seq.generate_state(2)[1]))
        # The same seeded evaluation episodes at every evaluation, so the learning curve compares like with like.
        self._eval_seeds = [int(seed) for seed in self._eval_seq.generate_state(self.eval_episodes)]
        self._started = time.perf_counter()
        self._next_eval = self.eval_every_steps
        self.evaluations: list[dict[str, float]] = []

    # -- environments ----------------------------------------------------------------------------------------
    def make_vec_env(self) -> gym.vector.VectorEnv:
        """``envs`` copies of the scenario, autoreset in the same step (final obs in ``info["final_obs"]``)."""
        scenario_json = self.scenario.model_dump_json()
        fns = [_EnvFactory(scenario_json) for _ in range(self.envs)]
        mode = gym.vector.AutoresetMode.SAME_STEP
        if self.vector == "async" and self.envs > 1:
            env = gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode, context="spawn")
        else:
            env = gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
        return env

    def reset_vec_env(self, env: gym.vector.VectorEnv) -> np.ndarray:
        obs, _ = env.reset(seed=[self.env_seed + i for i in range(self.envs)])
        return obs

    @property
    def observation_space(self) -> gym.spaces.Box:
        return _single_spaces(self.scenario)[0]

    @property
    def action_space(self) -> gym.Space:
        return _single_spaces(self.scenario)[1]

    def policy_arch(self, kind: str, **overrides: Any) -> PolicyArch:
        """A :class:`PolicyArch` for this scenario's spaces and the spec's ``[network]``."""
        obs_space, act_space = self.observation_space, self.action_space
        if isinstance(act_space, gym.spaces.Discrete):
            if kind != "categorical":
                raise InputError(f"algorithm needs a continuous (Box) action space; scenario {self.scenario.name!r} "
                                 f"has {act_space}")
            act_dim, low, high = int(act_space.n), (), ()
        else:
            if kind == "categorical":
                raise InputError(f"scenario {self.scenario.name!r} has continuous actions; expected Discrete")
            act_dim = int(np.prod(act_space.shape))
            low, high = tuple(float(v) for v in act_space.low.ravel()), tuple(float(v) for v in act_space.high.ravel())
        options = {"hidden": tuple(self.network.hidden), "activation": self.network.activation}
        options.update(overrides)
        return PolicyArch(kind=kind, obs_dim=int(np.prod(obs_space.shape)), act_dim=act_dim,
                          action_low=low, action_high=high, **options)

    def obs_normalizer(self) -> ObsNormalizer:
        return ObsNormalizer(int(np.prod(self.observation_space.shape)), enabled=self.network.normalize_observations,
                             std_floor=self.network.observation_std_floor).to(self.device)

    # -- evaluation / progress -------------------------------------------------------------------------------
    def evaluate(self, policy: Policy, obs_norm: ObsNormalizer, *, episodes: int | None = None) -> dict[str, float]:
        """Mean and std of the deterministic policy's return over seeded evaluation episodes."""
        from safetybed.sims.rollout import rollout

        env = make_env(self.scenario)
        controller = PolicyController(policy, obs_norm, observation_space=env.observation_space,
                                      action_space=env.action_space, name="training-eval", device=str(self.device))
        count = episodes or self.eval_episodes
        seeds = self._eval_seeds if count <= len(self._eval_seeds) else self._eval_seq.generate_state(count)
        returns = [rollout(env, controller, seed=int(seed)).episode_return for seed in seeds[:count]]
        env.close()
        policy.train()
        return {"eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
                "eval_episodes": float(len(returns))}

    def maybe_evaluate(self, env_steps: int, policy: Policy, obs_norm: ObsNormalizer, *,
                       extra: dict[str, Any] | None = None, force: bool = False) -> dict[str, float] | None:
        """Evaluate every ``eval_every_steps`` environment steps (and when ``force``); log and return the row."""
        if self.progress:
            self.progress(min(env_steps, self.steps), self.steps)
        if not force and env_steps < self._next_eval:
            return None
        while self._next_eval <= env_steps:
            self._next_eval += self.eval_every_steps
        row = {"env_steps": float(env_steps), "wall_time_s": time.perf_counter() - self._started,
               **self.evaluate(policy, obs_norm)}
        if extra:
            row.update({key: (float(value.detach().cpu()) if isinstance(value, torch.Tensor) else float(value))
                        for key, value in extra.items() if _is_number(value)})
        self.logger.log(row)
        self.evaluations.append(row)
        return row

    def result(self, policy: Policy, obs_norm: ObsNormalizer, *, env_steps: int, updates: int) -> TrainResult:
        return TrainResult(policy=policy, obs_norm=obs_norm, evaluations=self.evaluations, env_steps=env_steps,
                           updates=updates, wall_time_s=time.perf_counter() - self._started)


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, int | float) and math.isfinite(float(value))


class _EnvFactory:
    """Picklable env constructor (``AsyncVectorEnv`` with ``spawn`` pickles it)."""

    def __init__(self, scenario_json: str):
        self.scenario_json = scenario_json

    def __call__(self) -> gym.Env:
        return make_env(ScenarioSpec.model_validate_json(self.scenario_json))


_SPACES: dict[str, tuple[gym.Space, gym.Space]] = {}


def _single_spaces(scenario: ScenarioSpec) -> tuple[gym.Space, gym.Space]:
    key = scenario.model_dump_json()
    if key not in _SPACES:
        env = make_env(scenario)
        _SPACES[key] = (env.observation_space, env.action_space)
        env.close()
    return _SPACES[key]
