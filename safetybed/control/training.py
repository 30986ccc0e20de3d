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
    #: ``[train] collision_penalty``: subtracted from the training reward of a step that ends in a collision.
    collision_penalty: float = 0.0
    #: ``[train] extra_scenarios``: more scenarios to train on besides ``scenario`` (same spaces); the ``envs``
    #: sub-environments and the evaluation episodes are split evenly over all of them.
    extra_scenarios: tuple[ScenarioSpec, ...] = ()
    logger: CSVLogger = field(default_factory=lambda: CSVLogger(None))
    progress: Callable[[int, int], None] | None = None

    def __post_init__(self) -> None:
        self.scenarios = (self.scenario, *self.extra_scenarios)
        if self.envs % len(self.scenarios):
            raise InputError(f"[train] envs = {self.envs}: expected a multiple of the number of training scenarios "
                             f"({len(self.scenarios)}: {', '.join(s.name for s in self.scenarios)}), so that each "
                             f"gets the same number of sub-environments")
        spaces = _single_spaces(self.scenario)
        for extra in self.extra_scenarios:
            if _single_spaces(extra) != spaces:
                raise InputError(f"[train] extra_scenarios: {extra.name!r} has observation/action spaces "
                                 f"{_single_spaces(extra)}, expected those of {self.scenario.name!r}: {spaces}")
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
    def _vec_env(self, scenario: ScenarioSpec, count: int) -> gym.vector.VectorEnv:
        mode = gym.vector.AutoresetMode.SAME_STEP
        if self.vector == "batched":
            from safetybed.sims.batched.vector_env import BatchedHighwayVectorEnv

            # One torch batch on the host (the networks may be on a GPU): the same episodes as the
            # highway-env backend's sub-environments (placement draw for draw, noise draw for draw).
            return BatchedHighwayVectorEnv(scenario, count, autoreset_mode=mode)
        scenario_json = scenario.model_dump_json()
        fns = [_EnvFactory(scenario_json) for _ in range(count)]
        if self.vector == "async" and count > 1:
            env = gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode, context="spawn")
        else:
            env = gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
        return env

    def make_vec_env(self) -> gym.vector.VectorEnv:
        """``envs`` sub-environments, autoreset in the same step (final obs in ``info["final_obs"]``), split evenly
        over ``scenarios`` (the spec's scenario first, then ``[train] extra_scenarios``) in that order.

        ``vector``: ``sync`` / ``async`` gymnasium vector envs over :func:`safetybed.sims.make_env`, or
        ``batched``: the batched highway backend (:class:`safetybed.sims.batched.vector_env.BatchedHighwayVectorEnv`;
        straight-road highway families only, observation noise the only perturbation).
        """
        share = self.envs // len(self.scenarios)
        envs = [self._vec_env(scenario, share) for scenario in self.scenarios]
        return envs[0] if len(envs) == 1 else ConcatVectorEnv(envs)

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

    def training_reward(self, reward: np.ndarray, info: dict[str, Any], ended: np.ndarray) -> np.ndarray:
        """The reward the learner sees: the scenario's, minus ``collision_penalty`` where a step collided.

        Vector envs autoreset in the same step, so an ended sub-env's step info is in ``info["final_info"]``
        (``info["safety"]`` of that row is already its reset info).
        """
        if not self.collision_penalty:
            return reward
        collided = np.zeros(len(reward), dtype=bool)
        safety = info.get("safety", {})
        if "collision" in safety:
            collided |= np.asarray(safety["collision"], dtype=bool) & np.asarray(safety["_collision"], dtype=bool)
        final = info.get("final_info")
        for row in np.flatnonzero(ended):
            if final is not None and info["_final_info"][row]:
                collided[row] = bool(final[row].get("safety", {}).get("collision", False))
        return np.asarray(reward, dtype=np.float64) - self.collision_penalty * collided

    # -- evaluation / progress -------------------------------------------------------------------------------
    def evaluate(self, policy: Policy, obs_norm: ObsNormalizer, *, episodes: int | None = None) -> dict[str, float]:
        """Mean and std of the deterministic policy's return, and its collision rate, over seeded evaluation
        episodes (of the training scenario, with its ``observation_noise_std``)."""
        from safetybed.sims.rollout import rollout

        count = episodes or self.eval_episodes
        seeds = self._eval_seeds if count <= len(self._eval_seeds) else self._eval_seq.generate_state(count)
        records, row = [], {}
        for index, scenario in enumerate(self.scenarios):  # episode i on scenario i mod len(scenarios)
            env = make_env(scenario)
            controller = PolicyController(policy, obs_norm, observation_space=env.observation_space,
                                          action_space=env.action_space, name="training-eval",
                                          device=str(self.device))
            mine = [rollout(env, controller, seed=int(seed)) for seed in seeds[index:count:len(self.scenarios)]]
            env.close()
            if len(self.scenarios) > 1 and mine:
                tag = scenario.name.replace("/", "_")
                row[f"eval_{tag}_return_mean"] = float(np.mean([r.episode_return for r in mine]))
                row[f"eval_{tag}_collision_rate"] = float(np.mean([r.collision for r in mine]))
            records += mine
        returns = [record.episode_return for record in records]
        policy.train()
        return {"eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
                "eval_episodes": float(len(returns)),
                "eval_collision_rate": float(np.mean([record.collision for record in records])), **row}

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


class ConcatVectorEnv(gym.vector.VectorEnv):
    """Several vector envs with the same single spaces side by side: sub-envs of ``envs[0]``, then ``envs[1]``, ...

    ``reset(seed=[...])`` takes one seed per sub-env (in that order); an int ``s`` gives sub-env ``i`` seed
    ``s + i`` as gymnasium's vector envs. Infos are merged as ``SyncVectorEnv._add_info`` would merge the
    sub-envs' infos (arrays with ``_key`` masks; rows of an env that gave no such key are masked out).
    """

    def __init__(self, envs: list[gym.vector.VectorEnv]):
        self.envs = envs
        self.sizes = [int(env.num_envs) for env in envs]
        self.num_envs = sum(self.sizes)
        self.single_observation_space = envs[0].single_observation_space
        self.single_action_space = envs[0].single_action_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        modes = {env.metadata.get("autoreset_mode") for env in envs}
        if len(modes) != 1:
            raise ValueError(f"envs: expected one autoreset mode, got {modes}")
        self.metadata = {"autoreset_mode": modes.pop()}

    def _split(self, values: Any) -> list[Any]:
        bounds = np.cumsum([0, *self.sizes])
        return [values[bounds[i]:bounds[i + 1]] for i in range(len(self.envs))]

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None):
        if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
            seed = [int(seed) + i for i in range(self.num_envs)]
        seeds = self._split(seed) if seed is not None else [None] * len(self.envs)
        results = [env.reset(seed=s, options=options) for env, s in zip(self.envs, seeds, strict=True)]
        return (np.concatenate([obs for obs, _ in results]), _merge_infos([info for _, info in results], self.sizes))

    def step(self, actions: np.ndarray):
        results = [env.step(a) for env, a in zip(self.envs, self._split(np.asarray(actions)), strict=True)]
        obs, rewards, terminated, truncated = (np.concatenate([r[k] for r in results]) for k in range(4))
        return obs, rewards, terminated, truncated, _merge_infos([r[4] for r in results], self.sizes)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()


def _merge_infos(infos: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Concatenate the vector infos of consecutive blocks of ``sizes`` sub-envs (``_key`` masks kept)."""
    merged: dict[str, Any] = {}
    keys = [key for info in infos for key in info if not key.startswith("_")]
    for key in dict.fromkeys(keys):
        present = [info for info in infos if key in info]
        if isinstance(present[0][key], dict):
            parts = [info.get(key, {}) for info in infos]
            merged[key] = _merge_infos(parts, sizes)
        else:
            template = np.asarray(present[0][key])
            blocks = [np.asarray(info[key]) if key in info else np.zeros((size,), dtype=template.dtype)
                      for info, size in zip(infos, sizes, strict=True)]
            merged[key] = np.concatenate(blocks)
        merged[f"_{key}"] = np.concatenate([np.asarray(info.get(f"_{key}", np.zeros(size, np.bool_)), np.bool_)
                                            for info, size in zip(infos, sizes, strict=True)])
    return merged


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
