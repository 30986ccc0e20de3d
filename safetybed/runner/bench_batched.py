"""``safetybed bench batched``: the batched highway backend against the highway-env backend, same run, same machine.

Two measurements, each the median of ``repeats`` timings (shared machines are noisy; the sides are interleaved so
that noise hits both alike):

1. **Traffic** (vehicle-frames/s): highway-v0-like traffic, i.e. family ``cruise`` with ``lanes = 4``,
   ``vehicles = 50``, ``driver.model = "idm"`` (highway-env's ``IDMVehicle`` + MOBIL; highway-env's ``highway-v0``
   defaults: ``lanes_count = 4``, ``vehicles_count = 50``, 15 Hz simulation, 1 Hz policy), the ego driven by the
   fixed action ``(0, 0)``. A vehicle-frame is one vehicle advanced by one simulation frame (1/15 s): the
   vehicles on the road (those placed at reset) times the frames simulated. highway-env backend
   (:func:`safetybed.sims.highway.make_highway_env`): one env; batched backend (:class:`.sim.BatchedHighway`,
   float32): one batch of ``B`` episodes per batch size. Resets are timed apart (``reset_s``).
2. **Policy** (policy steps/s, episodes/s): ``highway/cut_in`` with ``builtin:idm`` driving the ego. highway-env
   backend: one env, episodes one after another, one ``controller.act`` call per step; batched backend: ``B``
   episodes at once, one ``controller.act(obs_batch)`` call per step for the whole batch (observations copied to
   the host and actions back, as a deployed loop would). A policy step is one episode's control step up to its
   end (termination or truncation); a batch runs until all its episodes ended, and the steps of ended episodes
   are simulated but not counted. Times include resets. Background traffic: the catalogue's driver model when
   the batched backend has it (:mod:`.naturalistic`), else ``idm`` on both sides (``--driver``).

Ratios are batched / highway-env on the same quantity. When EnvPool (https://github.com/sail-sg/envpool) imports
and has ``Highway-v0`` (its C++ port of highway-env's ``highway-v0``: 4 lanes, 50 vehicles, 15 Hz / 1 Hz,
``DiscreteMetaAction``), it is timed on the traffic measurement too, with the fixed action ``IDLE`` and
``vehicles_count + 1`` vehicles per env (highway-env's ``HighwayEnv._create_vehicles``); otherwise the document
says why it was not measured.

torch's CPU threads (``--threads``, printed) matter on a shared machine: with every core's thread busy elsewhere,
torch's intra-op threads wait on each other and a step can take 10x longer; the medians then hide some of it, the
run time not.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from safetybed.errors import InputError
from safetybed.spec import ScenarioSpec
from safetybed.spec.catalogue import load_scenario_arg

MAX_BATCH = 16384
DEFAULT_BATCH_SIZES = (1, 16, 256, 1024, 4096)
DEFAULT_POLICY_BATCH_SIZES = (1, 16, 256, 1024)
QUICK_BATCH_SIZES = (1, 4)
TRAFFIC_LANES, TRAFFIC_VEHICLES = 4, 50  # highway-env highway-v0: lanes_count, vehicles_count
POLICY_SCENARIO, POLICY_CONTROLLER = "highway/cut_in", "builtin:idm"
ENVPOOL_TASK, ENVPOOL_IDLE = "Highway-v0", 1  # DiscreteMetaAction: 0 LANE_LEFT, 1 IDLE, 2 LANE_RIGHT, 3 FASTER, 4 SLOWER


def parse_batch_sizes(text: str, *, option: str = "--batch-sizes") -> list[int]:
    """``"1,16,256"`` -> ``[1, 16, 256]``; each in ``[1, MAX_BATCH]`` (``InputError`` otherwise)."""
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            size = int(part)
        except ValueError:
            raise InputError(f"{option}: expected comma-separated integers, got {text!r}") from None
        if not 1 <= size <= MAX_BATCH:
            raise InputError(f"{option}: expected batch sizes in [1, {MAX_BATCH}], got {size}")
        sizes.append(size)
    if not sizes:
        raise InputError(f"{option}: expected at least one batch size, got {text!r}")
    return sizes


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an ``InputError``."""
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device: expected auto, cpu or cuda, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    return torch.device(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def traffic_spec() -> ScenarioSpec:
    """highway-v0-like traffic: ``highway/cruise`` with 4 lanes, 50 vehicles, highway-env IDM drivers."""
    data = load_scenario_arg("highway/cruise")[0].model_dump()
    data["highway"].update(lanes=TRAFFIC_LANES, vehicles=TRAFFIC_VEHICLES)
    data["highway"]["driver"]["model"] = "idm"
    return ScenarioSpec.model_validate(data)


def policy_spec(*, driver: str, episode_steps: int | None = None) -> ScenarioSpec:
    """``highway/cut_in`` with background driver ``driver`` (``auto``: the catalogue's)."""
    data = load_scenario_arg(POLICY_SCENARIO)[0].model_dump()
    if driver == "auto":
        driver = data["highway"]["driver"]["model"]
    elif driver not in ("idm", "naturalistic"):
        raise InputError(f"--driver: expected auto, idm or naturalistic, got {driver!r}")
    data["highway"]["driver"]["model"] = driver
    if episode_steps is not None:
        data["episode_steps"] = episode_steps
    return ScenarioSpec.model_validate(data)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _report(progress: Callable[[str], None] | None, measurement: str, backend: str, batch: int, seconds: float,
            *, reset_s: float | None = None) -> None:
    if progress:
        reset = "" if reset_s is None else f" (+ reset {reset_s:.2f} s)"
        progress(f"  {measurement}: {backend}, batch {batch}: {seconds:.2f} s{reset}")


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -- traffic: vehicle-frames/s ------------------------------------------------------------------------------------
def _highway_env_traffic(env: gym.Env, steps: int) -> tuple[float, int]:
    """(seconds, vehicle-frames) of ``steps`` control steps of one highway-env env with the action (0, 0)."""
    env.reset(seed=0)
    frames = env.unwrapped.highway.simulation_frequency_hz // env.unwrapped.highway.policy_frequency_hz
    action = np.zeros(2)
    vehicle_frames = 0
    started = time.perf_counter()
    for _ in range(steps):
        vehicle_frames += len(env.unwrapped.road.vehicles) * frames
        env.step(action)
    return time.perf_counter() - started, vehicle_frames


def _batched_traffic(sim, batch: int, steps: int) -> tuple[float, float, int]:
    """(reset seconds, step seconds, vehicle-frames) of ``steps`` control steps of a batch with actions 0."""
    device = sim.device
    _sync(device)
    started = time.perf_counter()
    sim.reset(range(batch))
    _sync(device)
    reset_s = time.perf_counter() - started
    vehicles = int(sim.present.sum())
    action = torch.zeros(batch, 2, dtype=sim.dtype, device=device)
    started = time.perf_counter()
    for _ in range(steps):
        sim.step(action)
    _sync(device)
    return reset_s, time.perf_counter() - started, vehicles * sim.frames_per_step * steps


# -- policy: policy steps/s, episodes/s -----------------------------------------------------------------------------
def _highway_env_policy(env: gym.Env, controller, episodes: int) -> tuple[float, int]:
    """(seconds, policy steps) of ``episodes`` highway-env episodes driven by ``controller``."""
    policy_steps = 0
    started = time.perf_counter()
    for episode in range(episodes):
        observation, _ = env.reset(seed=episode)
        while True:
            action = controller.act(observation[None])[0]
            observation, _, terminated, truncated, _ = env.step(action)
            policy_steps += 1
            if terminated or truncated:
                break
    return time.perf_counter() - started, policy_steps


def _batched_policy(sim, controller, batch: int) -> tuple[float, int]:
    """(seconds, policy steps) of one batch of ``batch`` episodes run to their ends, one ``act`` per step."""
    device = sim.device
    _sync(device)
    started = time.perf_counter()
    observation = sim.reset(range(batch))
    ended = torch.zeros(batch, dtype=torch.bool, device=device)
    policy_steps = 0
    while True:
        actions = controller.act(observation.cpu().numpy())
        result = sim.step(torch.as_tensor(actions, dtype=sim.dtype, device=device))
        policy_steps += batch - int(ended.sum())
        ended |= result.terminated | result.truncated
        observation = result.observation
        if bool(ended.all()):
            break
    _sync(device)
    return time.perf_counter() - started, policy_steps


# -- EnvPool ----------------------------------------------------------------------------------------------------
def _envpool_traffic(batch_sizes: Sequence[int], *, steps: int, repeats: int, baseline_vfps: float,
                     progress: Callable[[str], None] | None) -> dict[str, Any]:
    try:
        import envpool
    except ImportError as error:
        return {"measured": False, "note": f"EnvPool {ENVPOOL_TASK} not measured: envpool is not installed "
                                           f"({error.msg})"}
    except Exception as error:  # noqa: BLE001 - a broken install is reported, not fatal
        return {"measured": False, "note": f"EnvPool {ENVPOOL_TASK} not measured: import envpool failed: "
                                           f"{type(error).__name__}: {error}"}
    version = getattr(envpool, "__version__", "?")
    if ENVPOOL_TASK not in envpool.list_all_envs():
        return {"measured": False, "version": version,
                "note": f"EnvPool {ENVPOOL_TASK} not measured: envpool {version} has no {ENVPOOL_TASK}"}
    rows = []
    for batch in batch_sizes:
        if progress:
            progress(f"traffic: envpool {ENVPOOL_TASK}, batch {batch}")
        env = envpool.make_gymnasium(ENVPOOL_TASK, num_envs=batch, seed=0)
        config = env.spec.config
        vehicles = int(config.vehicles_count) + int(config.controlled_vehicles)
        frames = int(config.simulation_frequency) // int(config.policy_frequency)
        action = np.full(batch, ENVPOOL_IDLE, dtype=np.int32)
        times = []
        for _ in range(repeats):
            env.reset()
            started = time.perf_counter()
            for _ in range(steps):
                env.step(action)
            times.append(time.perf_counter() - started)
        env.close()
        seconds = _median(times)
        vfps = batch * vehicles * frames * steps / seconds
        rows.append({"batch": batch, "control_steps": steps, "vehicles_per_env": vehicles,
                     "env_steps_per_s": batch * steps / seconds, "vehicle_frames_per_s": vfps,
                     "ratio": vfps / baseline_vfps, "num_threads": int(config.num_threads)})
    return {"measured": True, "version": version, "task": ENVPOOL_TASK, "action": "IDLE", "rows": rows}


# -- the benchmark --------------------------------------------------------------------------------------------------
def bench_batched(*, batch_sizes: Sequence[int] | None = None, policy_batch_sizes: Sequence[int] | None = None,
                  device: str = "auto", repeats: int | None = None, quick: bool = False, steps: int | None = None,
                  baseline_steps: int | None = None, policy_episodes: int | None = None, driver: str = "auto",
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Both measurements of the module docstring; returns one JSON-able document.

    Args:
        batch_sizes: traffic batch sizes (default :data:`DEFAULT_BATCH_SIZES`, quick :data:`QUICK_BATCH_SIZES`).
        policy_batch_sizes: policy batch sizes (default :data:`DEFAULT_POLICY_BATCH_SIZES`, quick as above).
        device: ``auto``, ``cpu`` or ``cuda`` (the batched side; highway-env runs on the CPU).
        repeats: timings per measurement, the median reported (default 3; quick 1).
        quick: tiny sizes for tests (1 repeat, 1 control step, 3-step episodes) unless given explicitly.
        steps: control steps per batched traffic timing (default 2; quick 1).
        baseline_steps: control steps per highway-env traffic timing (default 5; quick 1).
        policy_episodes: highway-env episodes per policy timing (default 3; quick 1).
        driver: background drivers of the policy scenario: ``auto``, ``idm`` or ``naturalistic``.
    """
    from safetybed.control import load_controller
    from safetybed.sims.batched.sim import BatchedHighway
    from safetybed.sims.highway import make_highway_env

    repeats = (1 if quick else 3) if repeats is None else repeats
    if repeats < 1:
        raise InputError(f"--repeats: expected at least 1, got {repeats}")
    torch_device = resolve_device(device)
    batch_sizes = list(batch_sizes or (QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES))
    policy_batch_sizes = list(policy_batch_sizes or (QUICK_BATCH_SIZES if quick else DEFAULT_POLICY_BATCH_SIZES))
    for name, sizes in (("batch_sizes", batch_sizes), ("policy_batch_sizes", policy_batch_sizes)):
        if any(not 1 <= b <= MAX_BATCH for b in sizes):
            raise InputError(f"{name}: expected batch sizes in [1, {MAX_BATCH}], got {sizes}")
    steps = (1 if quick else 2) if steps is None else steps
    baseline_steps = (1 if quick else 5) if baseline_steps is None else baseline_steps
    policy_episodes = (1 if quick else 3) if policy_episodes is None else policy_episodes
    for name, value in (("steps", steps), ("baseline_steps", baseline_steps), ("policy_episodes", policy_episodes)):
        if value < 1:
            raise InputError(f"--{name.replace('_', '-')}: expected at least 1, got {value}")
    dtype = torch.float32

    # 1. traffic
    spec = traffic_spec()
    frames_per_step = spec.highway.simulation_frequency_hz // spec.highway.policy_frequency_hz
    env = make_highway_env(spec)
    sims = {batch: BatchedHighway(spec, device=torch_device, dtype=dtype) for batch in batch_sizes}
    if torch_device.type == "cuda":  # kernels and allocator warm, once per size
        for batch, sim in sims.items():
            _batched_traffic(sim, batch, 1)
    baseline_times, batched_times = [], {batch: [] for batch in batch_sizes}
    reset_times = {batch: [] for batch in batch_sizes}
    vehicle_frames = {}
    for repeat in range(repeats):
        if progress:
            progress(f"traffic: repeat {repeat + 1}/{repeats}: highway-env, batched {batch_sizes}")
        seconds, baseline_frames = _highway_env_traffic(env, baseline_steps)
        baseline_times.append(seconds)
        _report(progress, "traffic", "highway-env", 1, seconds)
        for batch, sim in sims.items():
            reset_s, seconds, vehicle_frames[batch] = _batched_traffic(sim, batch, steps)
            reset_times[batch].append(reset_s)
            batched_times[batch].append(seconds)
            _report(progress, "traffic", "batched", batch, seconds, reset_s=reset_s)
    env.close()
    baseline_s = _median(baseline_times)
    baseline_vfps = baseline_frames / baseline_s
    traffic = {
        "scenario": f"highway/cruise, lanes {TRAFFIC_LANES}, vehicles {TRAFFIC_VEHICLES}, driver idm",
        "ego_action": [0.0, 0.0], "frames_per_control_step": frames_per_step,
        "highway_env": {"control_steps": baseline_steps, "vehicles": baseline_frames // (frames_per_step *
                                                                                        baseline_steps),
                        "env_steps_per_s": baseline_steps / baseline_s, "vehicle_frames_per_s": baseline_vfps},
        "rows": []}
    for batch in batch_sizes:
        seconds = _median(batched_times[batch])
        vfps = vehicle_frames[batch] / seconds
        traffic["rows"].append({
            "batch": batch, "control_steps": steps, "vehicles": vehicle_frames[batch] / (frames_per_step * steps),
            "env_steps_per_s": batch * steps / seconds, "vehicle_frames_per_s": vfps,
            "reset_s": _median(reset_times[batch]), "ratio": vfps / baseline_vfps})
    del sims

    # 2. policy
    episode_steps = 3 if quick else None
    spec = policy_spec(driver=driver, episode_steps=episode_steps)
    env = make_highway_env(spec)
    controller = load_controller(POLICY_CONTROLLER, scenario=spec, observation_space=env.observation_space,
                                 action_space=env.action_space)
    sims = {batch: BatchedHighway(spec, device=torch_device, dtype=dtype) for batch in policy_batch_sizes}
    if torch_device.type == "cuda":
        for batch, sim in sims.items():
            _batched_policy(sim, controller, batch)
    baseline_times, batched_times = [], {batch: [] for batch in policy_batch_sizes}
    policy_steps = {}
    for repeat in range(repeats):
        if progress:
            progress(f"policy: repeat {repeat + 1}/{repeats}: highway-env, batched {policy_batch_sizes}")
        seconds, baseline_steps_done = _highway_env_policy(env, controller, policy_episodes)
        baseline_times.append(seconds)
        _report(progress, "policy", "highway-env", 1, seconds)
        for batch, sim in sims.items():
            seconds, policy_steps[batch] = _batched_policy(sim, controller, batch)
            batched_times[batch].append(seconds)
            _report(progress, "policy", "batched", batch, seconds)
    env.close()
    del sims
    baseline_s = _median(baseline_times)
    baseline_sps, baseline_eps = baseline_steps_done / baseline_s, policy_episodes / baseline_s
    policy = {
        "scenario": POLICY_SCENARIO, "controller": POLICY_CONTROLLER, "driver": spec.highway.driver.model,
        "episode_steps": spec.episode_steps,
        "highway_env": {"episodes": policy_episodes, "policy_steps": baseline_steps_done,
                        "policy_steps_per_s": baseline_sps, "episodes_per_s": baseline_eps},
        "rows": []}
    for batch in policy_batch_sizes:
        seconds = _median(batched_times[batch])
        sps, eps = policy_steps[batch] / seconds, batch / seconds
        policy["rows"].append({"batch": batch, "episodes": batch, "policy_steps": policy_steps[batch],
                               "policy_steps_per_s": sps, "episodes_per_s": eps,
                               "ratio_policy_steps": sps / baseline_sps, "ratio_episodes": eps / baseline_eps})

    # 3. EnvPool, if it is there
    envpool = _envpool_traffic(batch_sizes, steps=steps, repeats=repeats, baseline_vfps=baseline_vfps,
                               progress=progress)
    for row in traffic["rows"] + policy["rows"]:
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - a zero timing
                row[key] = None
    return {"device": {"requested": device, "type": torch_device.type, "name": device_name(torch_device),
                       "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                       "machine_cpus": os.cpu_count(), "dtype": str(dtype).removeprefix("torch.")},
            "repeats": repeats, "quick": quick, "traffic": traffic, "policy": policy, "envpool": envpool}


def format_table(result: dict[str, Any]) -> str:
    """The document as the plain-text tables the CLI prints."""
    device, traffic, policy = result["device"], result["traffic"], result["policy"]
    hw = traffic["highway_env"]
    lines = [f"safetybed bench batched: batched on {device['type']} ({device['name']}), torch {device['torch']}, "
             f"{device['torch_threads']} torch threads, {device['dtype']}; {device['machine_cpus']} CPUs",
             f"highway-env backend on 1 CPU; medians of {result['repeats']} timings; ratio = batched / highway-env",
             "",
             f"traffic: {traffic['scenario']}, ego action (0, 0), {traffic['frames_per_control_step']} frames "
             f"per control step; {hw['vehicles']} vehicles on the road",
             f"{'backend':<22} {'batch':>6} {'steps':>6} {'vehicles':>9} {'env steps/s':>12} "
             f"{'vehicle-frames/s':>17} {'reset s':>8} {'ratio':>9}",
             f"{'highway-env':<22} {1:>6} {hw['control_steps']:>6} {hw['vehicles']:>9.1f} "
             f"{hw['env_steps_per_s']:>12.2f} {hw['vehicle_frames_per_s']:>17,.0f} {'':>8} {1.0:>8.2f}x"]
    for row in traffic["rows"]:
        lines.append(f"{'batched ' + device['type']:<22} {row['batch']:>6} {row['control_steps']:>6} "
                     f"{row['vehicles'] / row['batch']:>9.1f} {row['env_steps_per_s']:>12.2f} "
                     f"{row['vehicle_frames_per_s']:>17,.0f} {row['reset_s']:>8.3f} {row['ratio']:>8.2f}x")
    envpool = result["envpool"]
    if envpool.get("measured"):
        for row in envpool["rows"]:
            lines.append(f"{'envpool ' + envpool['version']:<22} {row['batch']:>6} {row['control_steps']:>6} "
                         f"{row['vehicles_per_env']:>9.1f} {row['env_steps_per_s']:>12.2f} "
                         f"{row['vehicle_frames_per_s']:>17,.0f} {'':>8} {row['ratio']:>8.2f}x")
    hp = policy["highway_env"]
    lines += ["",
              f"policy: {policy['scenario']} ({policy['episode_steps']} steps per episode, driver "
              f"{policy['driver']}), {policy['controller']} driving the ego, one act() call per step for the "
              f"whole batch",
              f"{'backend':<22} {'batch':>6} {'episodes':>8} {'policy steps/s':>15} {'episodes/s':>11} "
              f"{'ratio steps':>12} {'ratio episodes':>15}",
              f"{'highway-env':<22} {1:>6} {hp['episodes']:>8} {hp['policy_steps_per_s']:>15,.1f} "
              f"{hp['episodes_per_s']:>11,.2f} {1.0:>11.2f}x {1.0:>14.2f}x"]
    for row in policy["rows"]:
        lines.append(f"{'batched ' + device['type']:<22} {row['batch']:>6} {row['episodes']:>8} "
                     f"{row['policy_steps_per_s']:>15,.1f} {row['episodes_per_s']:>11,.2f} "
                     f"{row['ratio_policy_steps']:>11.2f}x {row['ratio_episodes']:>14.2f}x")
    if not envpool.get("measured"):
        lines += ["", envpool["note"]]
    return "\n".join(lines)


__all__ = ["DEFAULT_BATCH_SIZES", "DEFAULT_POLICY_BATCH_SIZES", "MAX_BATCH", "bench_batched", "format_table",
           "parse_batch_sizes", "policy_spec", "resolve_device", "traffic_spec"]
