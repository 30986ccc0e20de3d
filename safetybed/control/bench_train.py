"""``safetybed bench train``: shared pieces of the training benchmark, and its throughput half.

The learning half (equal budgets, defaults and a tuned row, curves, the DSAC-T ablation) is
:mod:`safetybed.control.bench_learning`; this module holds what both halves share (the protocol, the
seeded deterministic evaluation, the Student-t interval) and the throughput measurement: environment
steps per second of the whole training loop at one gradient update per environment step (warm-up and
set-up included, evaluation excluded), and gradient updates per second on a filled replay buffer, for
DSAC-T (separate and fused twin critics), our SAC and SB3 SAC with the same batch size and network sizes, medians over ``repeats``,
ratios ours / SB3, all measured in the same run so that machine noise hits every side alike. SB3 trains
on gymnasium's ``Pendulum-v1`` for ``classic/pendulum`` (same dynamics, reward and 200-step limit) and on
the safetybed env itself for every other task. Timings are never asserted anywhere; they are reported.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from safetybed.control.algorithms import dsac_t, sac
from safetybed.control.algorithms.replay import ReplayBuffer
from safetybed.control.training import TrainSetup, resolve_device
from safetybed.intervals import MeanInterval, mean_t_interval  # noqa: F401  (re-exported for the benchmark)
from safetybed.sims import make_env
from safetybed.sims.rollout import seeded_returns
from safetybed.spec import ScenarioSpec
from safetybed.spec.catalogue import load_scenario_arg
from safetybed.spec.controller import NetworkSpec

DEFAULT_TASKS = ("classic/pendulum", "bullet/reach")
#: Gymnasium id SB3 trains on for a scenario, when it is not the safetybed env itself.
SB3_GYM_IDS = {"classic/pendulum": "Pendulum-v1"}
#: Our sides of the throughput comparison: DSAC-T with separate and with fused twin critics, and our SAC.
OURS_THROUGHPUT = ("dsac_t", "dsac_t_fused", "sac")
#: Seeds of the evaluation episodes, shared by every policy (disjoint from training seeds by construction).
EVAL_SEED_BASE = 10_000


# -- evaluation shared by both sides ---------------------------------------------------------------------------
def deterministic_return(act: Callable[[np.ndarray], np.ndarray], scenario: ScenarioSpec, *,
                         episodes: int, seed_base: int = EVAL_SEED_BASE) -> float:
    """Mean return of ``act`` (one observation -> one action) over the seeded episodes ``seed_base + i``."""
    return float(seeded_returns(act, scenario, episodes=episodes, seed_base=seed_base).mean())


def _torch_actor(policy: torch.nn.Module, obs_norm: torch.nn.Module, device: torch.device
                 ) -> Callable[[np.ndarray], np.ndarray]:
    policy.eval()

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        tensor = torch.as_tensor(obs, dtype=torch.float32, device=device)[None]
        return policy(obs_norm(tensor))[0].cpu().numpy()

    return act


# -- the two sides ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """What both sides share."""

    hidden: tuple[int, ...]
    activation: str
    batch_size: int
    learning_starts: int
    device: torch.device
    compile: bool


def _ours_setup(scenario: ScenarioSpec, protocol: Protocol, *, steps: int, seed: int) -> TrainSetup:
    network = NetworkSpec(hidden=list(protocol.hidden), activation=protocol.activation)
    # One evaluation episode at the end only: the shared evaluation below is what is reported.
    return TrainSetup(scenario=scenario, network=network, steps=steps, envs=1, seed=seed, device=protocol.device,
                      eval_every_steps=steps, eval_episodes=1)


def _ours_config(algorithm: str, protocol: Protocol, *, steps: int) -> Any:
    common = {"learning_starts": protocol.learning_starts, "env_steps_per_round": 1, "updates_per_round": 1,
              "batch_size": protocol.batch_size, "buffer_size": max(steps, 1)}
    if algorithm in ("dsac_t", "dsac_t_fused"):
        return dsac_t.Config(**common, compile=protocol.compile, fused_critics=algorithm == "dsac_t_fused")
    return sac.Config(**common)


def _sb3_env(task: str, scenario: ScenarioSpec) -> gym.Env:
    if task in SB3_GYM_IDS:
        return gym.make(SB3_GYM_IDS[task])  # Pendulum-v1 keeps gymnasium's 200-step limit
    return make_env(scenario)


#: SB3 activation class for each ``[network] activation`` name.
SB3_ACTIVATIONS = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "gelu": torch.nn.GELU, "elu": torch.nn.ELU}


def sb3_model(algorithm: str, task: str, scenario: ScenarioSpec, protocol: Protocol, *, seed: int,
              **config: Any) -> Any:
    """An SB3 ``algorithm`` (``"SAC"``, ``"PPO"``) model on ``task`` with the protocol's networks and device.

    ``config`` goes to the model's constructor. On-policy models get the hidden sizes for both the policy and
    the value network.
    """
    import stable_baselines3

    model_cls = getattr(stable_baselines3, algorithm)
    net_arch: Any = list(protocol.hidden)
    if algorithm == "PPO":
        net_arch = {"pi": list(protocol.hidden), "vf": list(protocol.hidden)}
    # SB3 seeds the global RNGs here (its own choice); our code never reads them.
    return model_cls("MlpPolicy", _sb3_env(task, scenario), seed=seed, device=str(protocol.device), verbose=0,
                     policy_kwargs={"net_arch": net_arch, "activation_fn": SB3_ACTIVATIONS[protocol.activation]},
                     **config)


def _sb3_model(task: str, scenario: ScenarioSpec, protocol: Protocol, *, steps: int, seed: int,
               learning_starts: int) -> Any:
    return sb3_model("SAC", task, scenario, protocol, seed=seed, buffer_size=max(steps, 1),
                     learning_starts=learning_starts, batch_size=protocol.batch_size, train_freq=1, gradient_steps=1)


# -- throughput ------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loop_rate_ours(algorithm: str, scenario: ScenarioSpec, protocol: Protocol, *, steps: int,
                    warmup: int) -> float:
    """Environment steps/s of the whole training loop, set-up included, final evaluation excluded."""
    module = sac if algorithm == "sac" else dsac_t
    setup = _ours_setup(scenario, protocol, steps=steps, seed=0)
    config = dataclasses.replace(_ours_config(algorithm, protocol, steps=steps), learning_starts=warmup)
    module.train(setup, config)
    # Wall time from the set-up's creation to the final evaluation row, taken before that evaluation runs.
    return steps / setup.evaluations[-1]["wall_time_s"]


def _loop_rate_sb3(task: str, scenario: ScenarioSpec, protocol: Protocol, *, steps: int, warmup: int) -> float:
    started = time.perf_counter()
    model = _sb3_model(task, scenario, protocol, steps=steps, seed=0, learning_starts=warmup)
    model.learn(total_timesteps=steps)
    _sync(protocol.device)
    return steps / (time.perf_counter() - started)


def _random_transitions(scenario: ScenarioSpec, count: int, *, seed: int) -> tuple[np.ndarray, ...]:
    env = make_env(scenario)
    rng = np.random.default_rng(seed)
    env.action_space.seed(int(rng.integers(2**31)))
    obs, _ = env.reset(seed=seed)
    rows: list[tuple] = []
    for _ in range(count):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rows.append((obs, action, reward, next_obs, terminated))
        obs = env.reset(seed=int(rng.integers(2**31)))[0] if terminated or truncated else next_obs
    env.close()
    return tuple(np.asarray(column, dtype=np.float32) for column in zip(*rows, strict=True))


def _update_rate_ours(algorithm: str, scenario: ScenarioSpec, protocol: Protocol, *, updates: int,
                      transitions: tuple[np.ndarray, ...]) -> tuple[float, str | None]:
    setup = _ours_setup(scenario, protocol, steps=len(transitions[0]), seed=0)
    config = _ours_config(algorithm, protocol, steps=len(transitions[0]))
    arch_kwargs = {"log_std_min": config.log_std_min, "log_std_max": config.log_std_max}
    arch = setup.policy_arch("tanh_gaussian", **arch_kwargs)
    agent_cls = sac.SAC if algorithm == "sac" else dsac_t.DSACT
    agent = agent_cls(arch, config, device=setup.device, generator=setup.generator, init_generator=setup.cpu_generator)
    buffer = ReplayBuffer(capacity=len(transitions[0]), obs_dim=arch.obs_dim, act_dim=arch.act_dim,
                          device=setup.device)
    buffer.add(*transitions)
    for _ in range(10):  # warm up allocators / compiled graphs
        agent.update(buffer.sample(protocol.batch_size, generator=setup.generator))
    _sync(setup.device)
    started = time.perf_counter()
    for _ in range(updates):
        agent.update(buffer.sample(protocol.batch_size, generator=setup.generator))
    _sync(setup.device)
    return updates / (time.perf_counter() - started), getattr(agent, "compile_note", None)


def _update_rate_sb3(task: str, scenario: ScenarioSpec, protocol: Protocol, *, updates: int, fill: int) -> float:
    model = _sb3_model(task, scenario, protocol, steps=fill, seed=0, learning_starts=fill)
    model.learn(total_timesteps=fill)  # fills the buffer; no update before learning_starts
    model.train(gradient_steps=10, batch_size=protocol.batch_size)
    _sync(protocol.device)
    started = time.perf_counter()
    model.train(gradient_steps=updates, batch_size=protocol.batch_size)
    _sync(protocol.device)
    return updates / (time.perf_counter() - started)


# -- the benchmark ---------------------------------------------------------------------------------------------
def bench_throughput(*, tasks: list[str], device: str, compile: bool, batch_size: int = 256,
                     hidden: tuple[int, ...] = (256, 256), activation: str = "relu", throughput_steps: int = 1000,
                     throughput_updates: int = 300, repeats: int = 3,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Throughput of DSAC-T and our SAC against SB3 SAC (medians over ``repeats``, ratios ours / SB3).

    Args:
        tasks: scenario names, e.g. ``["classic/pendulum"]``.
        device: ``auto``, ``cpu`` or ``cuda`` (every side uses it).
        compile: run DSAC-T's critics through ``torch.compile`` (falls back to eager with a note).
        batch_size, hidden, activation: shared by every side, actor and critics alike.
        throughput_steps: environment steps of each timed training loop (warm-up: ``batch_size`` steps).
        throughput_updates: gradient updates in each timed update loop.
        repeats: timings per side; medians are reported.
        progress: called with a short line before each piece of work.

    Returns:
        ``{"protocol": ..., "throughput": [row per task], "notes": [...], "wall_time_s": ...}``; each row holds
        the medians, every sample and the ratios ours / SB3.
    """
    if repeats < 1:
        raise ValueError(f"repeats: expected >= 1, got {repeats}")
    if not tasks:
        raise ValueError("tasks: expected at least one scenario name, got none")
    say = progress or (lambda line: None)
    protocol = Protocol(hidden=tuple(hidden), activation=activation, batch_size=batch_size,
                        learning_starts=batch_size, device=resolve_device(device), compile=compile)
    started = time.perf_counter()
    notes: list[str] = []
    throughput_rows: list[dict[str, Any]] = []
    for task in tasks:
        scenario, _ = load_scenario_arg(task)
        warmup = batch_size
        transitions = _random_transitions(scenario, max(throughput_steps, batch_size), seed=0)
        rates: dict[str, dict[str, list[float]]] = {name: {"env_steps_per_s": [], "updates_per_s": []}
                                                   for name in (*OURS_THROUGHPUT, "sb3_sac")}
        for repeat in range(repeats):
            say(f"throughput {task}: repeat {repeat + 1}/{repeats}")
            for name in OURS_THROUGHPUT:
                rates[name]["env_steps_per_s"].append(
                    _loop_rate_ours(name, scenario, protocol, steps=throughput_steps, warmup=warmup))
                rate, note = _update_rate_ours(name, scenario, protocol, updates=throughput_updates,
                                               transitions=transitions)
                rates[name]["updates_per_s"].append(rate)
                if note and note not in notes:
                    notes.append(note)
            rates["sb3_sac"]["env_steps_per_s"].append(
                _loop_rate_sb3(task, scenario, protocol, steps=throughput_steps, warmup=warmup))
            rates["sb3_sac"]["updates_per_s"].append(
                _update_rate_sb3(task, scenario, protocol, updates=throughput_updates, fill=len(transitions[0])))
        medians = {name: {key: statistics.median(values) for key, values in rate.items()}
                   for name, rate in rates.items()}
        row: dict[str, Any] = {"task": task, "steps": throughput_steps, "updates": throughput_updates,
                               "repeats": repeats, "medians": medians, "samples": rates}
        for name in OURS_THROUGHPUT:
            for key in ("env_steps_per_s", "updates_per_s"):
                row[f"{name}_vs_sb3_{key}"] = medians[name][key] / medians["sb3_sac"][key]
        throughput_rows.append(row)
    return {"protocol": {"hidden": list(protocol.hidden), "activation": activation, "batch_size": batch_size,
                         "device": str(protocol.device), "compile": compile, "torch_threads": torch.get_num_threads()},
            "throughput": throughput_rows, "notes": notes, "wall_time_s": time.perf_counter() - started}


def _interval_text(summary: dict[str, Any] | None) -> str:
    return "not run" if not summary else f"{summary['mean']:.1f} [{summary['ci'][0]:.1f}, {summary['ci'][1]:.1f}]"


def format_table(result: dict[str, Any]) -> str:
    """Plain-text tables of a ``safetybed bench train`` document (``learning`` and/or ``throughput``)."""
    lines = []
    learning = result.get("learning")
    if learning:
        lines.append("learning: final deterministic return, mean [95% t-interval] over seeds")
        lines.append(f"{'task':<18}{'steps':>7} {'setting':<8}{'side':<9}{'seeds':>6}  {'return [CI]':<28}knobs")
        for row in learning["rows"]:
            summary = row["summary"]
            text = _interval_text(summary)
            lines.append(f"{row['task']:<18}{row['steps']:>7} {row['setting']:<8}{row['side']:<9}"
                         f"{(summary or {}).get('n', 0):>6}  {text:<28}{row['knobs'] or 'defaults'}")
        for verdict in learning["verdicts"]:
            lines.append(f"verdict {verdict['task']} {verdict['setting']}: {verdict['ours']} vs {verdict['theirs']}: "
                         f"{verdict['verdict']}")
        for entry in learning["ablation"]:
            summary = entry["summary"]
            lines.append(f"ablation (DSAC-T, {learning.get('ablation_task', learning['tuning_task'])}): {entry['label']}: {_interval_text(summary)} "
                         f"(n={(summary or {}).get('n', 0)})")
    if result.get("throughput"):
        lines.append("throughput: medians; ratio = ours / SB3 SAC")
        lines.append(f"{'task':<18}{'side':<13}{'env steps/s':>13}{'ratio':>8}{'updates/s':>12}{'ratio':>8}")
        for row in result["throughput"]:
            medians = row["medians"]
            for name in (*OURS_THROUGHPUT, "sb3_sac"):
                env_ratio = medians[name]["env_steps_per_s"] / medians["sb3_sac"]["env_steps_per_s"]
                update_ratio = medians[name]["updates_per_s"] / medians["sb3_sac"]["updates_per_s"]
                lines.append(f"{row['task']:<18}{name:<13}{medians[name]['env_steps_per_s']:>13.1f}{env_ratio:>8.2f}"
                             f"{medians[name]['updates_per_s']:>12.1f}{update_ratio:>8.2f}")
    lines.extend(f"note: {note}" for note in result.get("notes", []))
    return "\n".join(lines)
