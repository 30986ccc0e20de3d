"""A gymnasium ``VectorEnv`` over the batched highway backend: ``num_envs`` sub-environments, one torch batch.

:class:`BatchedHighwayVectorEnv` behaves like ``gymnasium.vector.SyncVectorEnv`` over ``num_envs`` copies of the
highway-env backend (:func:`safetybed.sims.highway.make_highway_env`) of one straight-road scenario (families
``cruise``, ``cut_in``, ``overtaking``), but steps them all at once in :class:`~.sim.BatchedHighway`:

* spaces: ``single_observation_space`` is the lane-frame observation ``Box`` of
  :func:`safetybed.sims.highway_obs.observation_bounds` (float32), ``single_action_space`` is
  ``Box(-1, 1, (2,), float32)`` (acceleration command, lane-change request); ``observation_space`` /
  ``action_space`` are their batched versions (``gymnasium.vector.utils.batch_space``);
* outputs are numpy arrays: observations ``(num_envs, obs_dim)`` float32, rewards float64, terminations and
  truncations bool, as ``SyncVectorEnv`` returns them;
* ``infos["safety"]`` holds the adapter's ``info["safety"]`` fields (``collision``, ``success``, ``ttc_s`` [s],
  ``gap_m`` [m], ``progress_m`` [m], ``violations``) as arrays ``(num_envs,)`` with gymnasium's ``_key`` masks,
  i.e. exactly what ``SyncVectorEnv._add_info`` builds from the sub-environments' infos;
* autoreset: ``AutoresetMode.NEXT_STEP``, gymnasium >= 1.0's default (``metadata["autoreset_mode"]``; see
  https://farama.org/Vector-Autoreset-Mode and ``SyncVectorEnv.step``): the ``step`` after a sub-environment
  terminated or truncated resets it, ignores its action and returns its first observation with reward 0,
  ``terminated = truncated = False`` and its reset info. ``autoreset_mode=AutoresetMode.SAME_STEP`` (what the
  training loops use): a sub-environment that ends is reset in the same step, which returns its first new
  observation, and its last observation is in ``infos["final_obs"]`` (object array, ``infos["_final_obs"]`` the
  mask) with its ``info["safety"]`` in ``infos["final_info"]``, as ``SyncVectorEnv`` in that mode;
* observation noise: ``perturbations.observation_noise_std`` (the only perturbation simulated here) adds fresh
  N(0, std^2) noise to every observation of every sub-environment, exactly as
  :class:`safetybed.sims.base.ObservationNoise` in each sub-environment would: one generator per
  sub-environment, re-seeded from the seed of a seeded reset (``noise_generator(seed, OBSERVATION_NOISE)``) and
  continued by unseeded resets, one draw per observation in the order they are returned (a final observation
  before the reset observation that follows it);
* seeds: ``reset(seed=s)`` resets sub-environment ``i`` with seed ``s + i`` (a list gives one seed per
  sub-environment, ``None`` entries included), as gymnasium's vector environments do. A reset without a seed
  (and every autoreset) continues the sub-environment's own generator, as highway-env's ``reset()`` continues
  ``env.np_random``: sub-environment ``i`` replays ``env.reset(seed=s + i)``, then ``env.reset()``, ... of the
  highway-env backend, episode for episode (placement draw for draw, :mod:`.placement`). The constructor's
  ``seed`` is the seed of the first ``reset()`` called without one (``None``: operating-system entropy).
  ``reset(options={"reset_mask": mask})`` resets only the sub-environments where ``mask`` is true
  (``SyncVectorEnv``'s option).

Per-row reset: :class:`~.sim.BatchedHighway` resets a whole batch. :class:`RowResetHighway` adds
:meth:`~RowResetHighway.reset_rows` / :meth:`~RowResetHighway.load_rows`: the new scenes are loaded into a scratch
batch of the same size, and every per-episode tensor (leading dimension ``batch``, of the simulator and of its
naturalistic-traffic state) is copied row by row into the running batch. Episodes never interact
(:mod:`.sim`), so a row reset this way runs exactly as the same episode in a batch of its own. It also counts
control steps per row, so that each row truncates after its own ``episode_steps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from safetybed import seeding_keys
from safetybed.errors import InputError
from safetybed.sims.base import add_observation_noise, noise_generator
from safetybed.sims.batched.placement import STRAIGHT_FAMILIES, Scene, initial_scene, scene_from_generator
from safetybed.sims.batched.sim import BatchedHighway, StepResult
from safetybed.sims.highway_obs import observation_bounds
from safetybed.spec import ScenarioSpec

#: The ``info["safety"]`` fields of :class:`safetybed.sims.base.StepSafety` and their numpy dtypes (those
#: ``SyncVectorEnv._add_info`` gives Python ``bool`` / ``float`` / ``int`` values).
SAFETY_DTYPES = {"collision": np.bool_, "success": np.bool_, "ttc_s": np.float64, "gap_m": np.float64,
                 "progress_m": np.float64, "violations": np.int64}


class RowResetHighway(BatchedHighway):
    """:class:`BatchedHighway` whose rows (episodes) can be reset one by one, with per-row step counts.

    ``elapsed_steps`` [B] counts each row's control steps since its reset; ``truncated`` (and ``success`` of the
    survival families) are per row: ``elapsed_steps >= spec.episode_steps``.
    """

    def __init__(self, spec: ScenarioSpec, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        super().__init__(spec, device=device, dtype=dtype)
        self._scratch: BatchedHighway | None = None
        self.elapsed_steps = torch.zeros(0, dtype=torch.long, device=self.device)

    def load_scenes(self, scenes: Sequence[Scene]) -> torch.Tensor:
        observation = super().load_scenes(scenes)
        self.elapsed_steps = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        return observation

    def reset_rows(self, rows: Sequence[int], seeds: Sequence[int | None]) -> torch.Tensor:
        """Restart rows ``rows`` from ``initial_scene(spec, seed)``; returns their observations ``[len(rows), D]``."""
        if len(rows) != len(seeds):
            raise ValueError(f"seeds: expected one seed per row ({len(rows)}), got {len(seeds)}")
        return self.load_rows(rows, [initial_scene(self.spec, None if s is None else int(s)) for s in seeds])

    def load_rows(self, rows: Sequence[int], scenes: Sequence[Scene]) -> torch.Tensor:
        """Restart rows ``rows`` from ``scenes`` (one each); the other rows go on untouched.

        The scenes are loaded into a scratch batch of the full size (the other scratch rows repeat the first
        scene: they are never read), then every per-episode tensor is copied over for these rows only.
        """
        if self.batch == 0:
            raise RuntimeError("reset_rows: the batch has not been reset yet; call reset(seeds) first")
        rows = [int(r) for r in rows]
        if len(rows) != len(scenes):
            raise ValueError(f"scenes: expected one scene per row ({len(rows)}), got {len(scenes)}")
        if not rows:
            return self.observe()[:0]
        if len(set(rows)) != len(rows) or min(rows) < 0 or max(rows) >= self.batch:
            raise ValueError(f"rows: expected distinct rows in [0, {self.batch}), got {rows}")
        traffic = self.naturalistic
        if traffic is not None and traffic.frame % traffic.frames_per_decision:
            raise InputError(f"{self.spec.name}: restarting one episode needs the batch's frame counter "
                             f"({traffic.frame}) on a naturalistic decision boundary (every "
                             f"{traffic.frames_per_decision} frames), which {self.frames_per_step} frames per "
                             f"control step (simulation_frequency_hz / policy_frequency_hz) do not keep")
        if self._scratch is None:
            self._scratch = BatchedHighway(self.spec, device=self.device, dtype=self.dtype)
        full = [scenes[0]] * self.batch
        for row, scene in zip(rows, scenes, strict=True):
            full[row] = scene
        self._scratch.load_scenes(full)
        index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        _copy_rows(self, self._scratch, index, self.batch)
        self._table = None  # the neighbour table of the old rows' positions
        if traffic is not None:
            scratch = self._scratch.naturalistic
            if scratch.uniforms.shape != traffic.uniforms.shape:  # a longer run drew more: same streams, same size
                scratch._draw_uniforms(traffic.uniforms.shape[2])
            _copy_rows(traffic, scratch, index, self.batch)
            # The drivers count frames for the whole batch; a restarted row's scripted cut-in is due
            # script_frame frames after its own start, i.e. at the batch's frame counter now + script_frame.
            traffic.script_frame = traffic.script_frame.index_add(
                0, index, torch.full_like(traffic.script_frame[index], traffic.frame))
        self.elapsed_steps = self.elapsed_steps.index_fill(0, index, 0)
        return self.observe()[index]

    def _result(self) -> StepResult:
        # Called once at the end of every step: count the step, then truncate per row.
        self.elapsed_steps = self.elapsed_steps + 1
        result = super()._result()
        result.truncated = self.elapsed_steps >= self.spec.episode_steps
        if self.spec.task != "overtaking":  # survival families: success = the horizon reached without collision
            result.success = ~result.collision & result.truncated
        return result


def _copy_rows(target: object, source: object, index: torch.Tensor, batch: int) -> None:
    """Copy rows ``index`` of every per-episode attribute (leading dimension ``batch``) of ``source`` into ``target``.

    Tensors are replaced out of place (``index_copy``), so no other reference to the old tensor changes.
    Attributes that are the same for every row (constants, ``arange(batch)``) are equal in both objects, so
    copying their rows changes nothing.
    """
    for name, value in vars(source).items():
        if name.startswith("__"):
            continue
        current = getattr(target, name, None)
        if isinstance(value, torch.Tensor):
            if (value.dim() >= 1 and value.shape[0] == batch and isinstance(current, torch.Tensor)
                    and current.shape == value.shape):
                setattr(target, name, current.index_copy(0, index, value[index].to(current.dtype)))
        elif isinstance(value, np.ndarray):
            if value.ndim >= 1 and value.shape[0] == batch and isinstance(current, np.ndarray):
                updated = current.copy()
                updated[index.cpu().numpy()] = value[index.cpu().numpy()]
                setattr(target, name, updated)
        elif isinstance(value, list) and len(value) == batch and isinstance(current, list) and len(current) == batch:
            updated = list(current)
            for row in index.tolist():
                updated[row] = value[row]
            setattr(target, name, updated)


class BatchedHighwayVectorEnv(VectorEnv):
    """``num_envs`` episodes of one straight-road highway scenario as a gymnasium vector env (module docstring).

    Args:
        spec: a highway scenario of family ``cruise``, ``cut_in`` or ``overtaking``; of its ``perturbations``
            only ``observation_noise_std`` is simulated, and its ``testing`` section must be off or NDE (others
            are refused).
        num_envs: sub-environments (rows of the batch), at least 1.
        device: torch device of the simulation (``"cpu"``, ``"cuda"``, ...); outputs are numpy on the host.
        seed: seed of the first ``reset()`` called without one (sub-environment ``i`` gets ``seed + i``).
        dtype: simulation precision (float32 by default; observations are returned as float32 either way).
        autoreset_mode: ``NEXT_STEP`` (gymnasium's default) or ``SAME_STEP`` (module docstring).
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, spec: ScenarioSpec, num_envs: int, *, device: str | torch.device = "cpu",
                 seed: int | None = None, dtype: torch.dtype = torch.float32,
                 autoreset_mode: AutoresetMode = AutoresetMode.NEXT_STEP):
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise ValueError(f"num_envs: expected an integer >= 1, got {num_envs!r}")
        if spec.simulator != "highway" or spec.task not in STRAIGHT_FAMILIES:
            raise InputError(f"{spec.name}: the batched backend simulates the highway families "
                             f"{list(STRAIGHT_FAMILIES)}, got {spec.simulator}/{spec.task}")
        if spec.testing is not None and spec.testing.method != "nde":
            raise InputError(f"{spec.name}: testing.method = {spec.testing.method!r}: the batched backend has no "
                             f"importance-sampled (NADE) traffic; use the highway-env backend (safetybed.sims)")
        if _has_perturbations(spec):
            raise InputError(f"{spec.name}: perturbations: the batched vector env simulates observation noise "
                             f"only (no action_delay_steps, no frame_stack); set those to their defaults or wrap "
                             f"the env yourself")
        if autoreset_mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode: expected AutoresetMode.NEXT_STEP or SAME_STEP, got {autoreset_mode!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0):
            raise ValueError(f"seed: expected an integer >= 0 or None, got {seed!r}")
        self.scenario = spec
        self.num_envs = int(num_envs)
        self.sim = RowResetHighway(spec, device=device, dtype=dtype)
        low, high = observation_bounds(spec.highway)
        self.single_observation_space = spaces.Box(low, high, dtype=np.float32)
        self.single_action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._default_seed = None if seed is None else int(seed)
        self.metadata = {**self.metadata, "autoreset_mode": autoreset_mode}
        self._same_step = autoreset_mode == AutoresetMode.SAME_STEP
        self._noise_std = float(spec.perturbations.observation_noise_std)
        self._noise: list[np.random.Generator] = [np.random.default_rng(0) for _ in range(self.num_envs)]
        self._generators: list[np.random.Generator | None] = [None] * self.num_envs
        self._autoreset = np.zeros(self.num_envs, dtype=np.bool_)
        self._started = False

    # -- reset --------------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-environment (or those of ``options["reset_mask"]``); see the module docstring."""
        seeds = self._seeds(seed)
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if options:
            raise ValueError(f"options: only 'reset_mask' is understood (the scenario spec configures the rest), "
                             f"got keys {sorted(options)}")
        if mask is not None:
            mask = self._check_mask(mask)
        if mask is None or not self._started:
            if mask is not None:
                raise RuntimeError("reset: options['reset_mask'] needs a first full reset() of every sub-env")
            scenes = [self._scene(i, seeds[i]) for i in range(self.num_envs)]
            self.sim.load_scenes(scenes)
            self._autoreset[:] = False
            self._started = True
            rows = np.arange(self.num_envs)
        else:
            rows = np.flatnonzero(mask)
            self.sim.load_rows(rows.tolist(), [self._scene(int(i), seeds[int(i)]) for i in rows])
            self._autoreset[rows] = False
        for row in rows:
            if seeds[int(row)] is not None:
                self._noise[int(row)] = noise_generator(int(seeds[int(row)]), seeding_keys.OBSERVATION_NOISE)
        observation = self._observations()
        if mask is not None:
            observation[~mask] = self._last_observation[~mask]  # the other sub-envs' last observations
        self._last_observation = self._add_noise(observation, rows)
        return self._last_observation.copy(), self._reset_infos(rows)

    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None and not self._started and self._default_seed is not None:
            seed = self._default_seed
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
            seeds: list[int | None] = [int(seed) + i for i in range(self.num_envs)]
        elif isinstance(seed, Sequence) and not isinstance(seed, str):
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"seed: a list of seeds must have num_envs = {self.num_envs} entries, got "
                                 f"{len(seeds)}")
        else:
            raise ValueError(f"seed: expected None, an integer or a list of {self.num_envs} seeds, got {seed!r}")
        for s in seeds:
            if s is not None and (isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 0):
                raise ValueError(f"seed: expected integers >= 0 (or None), got {s!r}")
        return [None if s is None else int(s) for s in seeds]

    def _check_mask(self, mask: Any) -> np.ndarray:
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
            raise ValueError(f"options['reset_mask']: expected a numpy bool array of shape ({self.num_envs},), got "
                             f"{getattr(mask, 'dtype', type(mask))} {getattr(mask, 'shape', '')}")
        if not mask.any():
            raise ValueError("options['reset_mask']: expected at least one True entry, got none")
        return mask

    def _scene(self, index: int, seed: int | None) -> Scene:
        """Sub-env ``index``'s next scene: a fresh generator for a seed, else its own generator continued."""
        if seed is not None or self._generators[index] is None:
            self._generators[index], _ = seeding.np_random(seed)
        return scene_from_generator(self.scenario, self._generators[index])

    # -- step ---------------------------------------------------------------------------------------------------
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One control step of every sub-environment (sub-envs that ended last step are reset instead)."""
        if not self._started:
            raise RuntimeError("step: call reset() before step()")
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.num_envs, 2):
            raise ValueError(f"actions: expected shape ({self.num_envs}, 2), got {actions.shape}")
        actions = np.where(self._autoreset[:, None], np.float32(0.0), actions)  # ignored: those rows are reset
        if not np.all(np.isfinite(actions)):
            raise ValueError("actions: expected finite numbers in [-1, 1], got NaN or inf")
        result = self.sim.step(torch.as_tensor(actions, device=self.sim.device))
        rewards = result.reward.to(torch.float64).cpu().numpy()
        terminated = result.terminated.cpu().numpy().astype(np.bool_)
        truncated = result.truncated.cpu().numpy().astype(np.bool_)
        safety = {"collision": result.collision, "success": result.success, "ttc_s": result.ttc_s,
                  "gap_m": result.gap_m, "progress_m": result.progress_m, "violations": result.violations}
        safety = {key: value.cpu().numpy().astype(SAFETY_DTYPES[key]) for key, value in safety.items()}
        every = np.arange(self.num_envs)
        if self._same_step:
            observation = self._add_noise(self._observations(), every)
            ended = terminated | truncated
            infos = self._infos(safety, np.ones(self.num_envs, np.bool_))
            rows = np.flatnonzero(ended)
            if rows.size:
                final_obs = np.empty(self.num_envs, dtype=object)
                final_info = np.empty(self.num_envs, dtype=object)
                for row in rows:
                    final_obs[row] = observation[row].copy()
                    final_info[row] = {"safety": {key: values[row].item() for key, values in safety.items()}}
                self.sim.load_rows(rows.tolist(), [self._scene(int(i), None) for i in rows])
                observation[rows] = self._add_noise(self._observations(), rows)[rows]
                fresh = self._reset_safety()  # SyncVectorEnv merges the reset info over the step info
                for key, values in infos["safety"].items():
                    if not key.startswith("_"):
                        values[rows] = fresh[key][rows]
                infos.update({"final_obs": final_obs, "_final_obs": ended.copy(), "final_info": final_info,
                              "_final_info": ended.copy()})
            self._last_observation = observation
            return observation.copy(), rewards, terminated, truncated, infos
        reset_rows = np.flatnonzero(self._autoreset)
        if reset_rows.size:
            self.sim.load_rows(reset_rows.tolist(), [self._scene(int(i), None) for i in reset_rows])
            rewards[reset_rows] = 0.0
            terminated[reset_rows] = False
            truncated[reset_rows] = False
            fresh = self._reset_safety()
            for key, values in safety.items():
                values[reset_rows] = fresh[key][reset_rows]
        observation = self._add_noise(self._observations(), every)
        self._last_observation = observation
        self._autoreset = terminated | truncated
        return observation.copy(), rewards, terminated, truncated, self._infos(safety, np.ones(self.num_envs, np.bool_))

    # -- outputs ------------------------------------------------------------------------------------------------
    def _observations(self) -> np.ndarray:
        return self.sim.observe().to(torch.float32).cpu().numpy()

    def _add_noise(self, observation: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``observation`` with rows ``rows`` noised in place, one draw each from its sub-env's generator."""
        if self._noise_std > 0:
            for row in rows:
                observation[row] = add_observation_noise(observation[row], std=self._noise_std,
                                                         rng=self._noise[int(row)], dtype=np.float32)
        return observation

    def _reset_safety(self) -> dict[str, np.ndarray]:
        """The adapter's reset ``info["safety"]`` of every row as it stands now (no collision, no progress)."""
        gap, ttc = self.sim.leader_gap_and_ttc()
        zeros = np.zeros(self.num_envs)
        return {"collision": zeros.astype(np.bool_), "success": zeros.astype(np.bool_),
                "ttc_s": ttc.to(torch.float64).cpu().numpy(), "gap_m": gap.to(torch.float64).cpu().numpy(),
                "progress_m": zeros.astype(np.float64), "violations": zeros.astype(np.int64)}

    def _reset_infos(self, rows: np.ndarray) -> dict[str, Any]:
        mask = np.zeros(self.num_envs, dtype=np.bool_)
        mask[rows] = True
        safety = self._reset_safety()
        for values in safety.values():
            values[~mask] = np.zeros((), dtype=values.dtype)  # as _add_info leaves rows that gave no info
        return self._infos(safety, mask)

    def _infos(self, safety: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, Any]:
        nested: dict[str, Any] = {}
        for key, values in safety.items():
            nested[key] = values
            nested[f"_{key}"] = mask.copy()
        return {"safety": nested, "_safety": mask.copy()}

    def close_extras(self, **kwargs: Any) -> None:
        self.sim = None  # type: ignore[assignment]


def _has_perturbations(spec: ScenarioSpec) -> bool:
    """Perturbations other than observation noise (which the vector env simulates)."""
    perturb = spec.perturbations
    return bool(perturb.action_delay_steps or perturb.frame_stack > 1)


__all__ = ["BatchedHighwayVectorEnv", "RowResetHighway", "SAFETY_DTYPES"]
