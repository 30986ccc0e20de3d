"""Training on the batched highway backend: ``[train] vector = "batched"``, ``collision_penalty`` and
``extra_scenarios`` (the noise-trained driving controller of ``controllers/highway_sac_robust.toml``)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from safetybed.control.algorithms import sac
from safetybed.control.training import ConcatVectorEnv, TrainSetup
from safetybed.errors import InputError
from safetybed.sims.batched.vector_env import BatchedHighwayVectorEnv
from safetybed.spec import ScenarioSpec
from safetybed.spec.catalogue import load_scenario_arg
from safetybed.spec.controller import NetworkSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scenario(name: str, *, noise: float = 0.0, steps: int = 6) -> ScenarioSpec:
    data = load_scenario_arg(name)[0].model_dump()
    data["perturbations"]["observation_noise_std"] = noise
    data["episode_steps"] = steps
    return ScenarioSpec.model_validate(data)


def _setup(*, vector: str = "batched", extra: tuple[ScenarioSpec, ...] = (), penalty: float = 0.0,
           envs: int = 4) -> TrainSetup:
    return TrainSetup(scenario=_scenario("highway/cut_in", noise=0.1), network=NetworkSpec(hidden=[16, 16]),
                      steps=96, envs=envs, seed=3, device=torch.device("cpu"), eval_every_steps=96,
                      eval_episodes=2, vector=vector, collision_penalty=penalty, extra_scenarios=extra)


def test_batched_training_is_reproducible_and_sees_the_noise():
    config = sac.Config(learning_starts=32, batch_size=16, buffer_size=200, env_steps_per_round=4)
    first = sac.train(_setup(), config)
    again = sac.train(_setup(), config)
    assert first.env_steps == 96 and first.updates > 0
    for a, b in zip(first.policy.state_dict().values(), again.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert np.isfinite(first.evaluations[-1]["eval_collision_rate"])


def test_collision_penalty_reaches_exactly_the_colliding_steps():
    setup = _setup(penalty=7.0)
    env = setup.make_vec_env()
    assert isinstance(env, BatchedHighwayVectorEnv) and env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    setup.reset_vec_env(env)
    crash = np.tile(np.array([[1.0, 0.0]], np.float32), (setup.envs, 1))  # full throttle into the cut-in
    seen = 0
    for _ in range(12):
        _, reward, terminated, truncated, info = env.step(crash)
        ended = terminated | truncated
        shaped = setup.training_reward(reward, info, ended)
        collided = np.zeros(setup.envs, bool)
        for row in np.flatnonzero(ended):
            collided[row] = info["final_info"][row]["safety"]["collision"]
        np.testing.assert_array_equal(shaped, reward - 7.0 * collided)
        seen += int(collided.sum())
    assert seen > 0, "the test needs at least one collision to check the penalty"
    assert _setup().training_reward(reward, info, ended) is reward  # no penalty: the reward untouched


def test_extra_scenarios_split_envs_and_evaluations():
    setup = _setup(extra=(_scenario("highway/cruise_nde", noise=0.1),), envs=4)
    env = setup.make_vec_env()
    assert isinstance(env, ConcatVectorEnv) and env.sizes == [2, 2]
    obs = setup.reset_vec_env(env)
    assert obs.shape == (4, 48)
    for _ in range(8):
        obs, reward, terminated, truncated, info = env.step(np.zeros((4, 2), np.float32))
        assert info["safety"]["collision"].shape == (4,) and reward.shape == (4,)
    row = setup.evaluate(sac.SAC(setup.policy_arch("tanh_gaussian"), sac.Config(), device=torch.device("cpu"),
                                 generator=setup.generator, init_generator=setup.cpu_generator).actor,
                         setup.obs_normalizer())
    assert {"eval_highway_cut_in_collision_rate", "eval_highway_cruise_nde_collision_rate"} <= set(row)
    with pytest.raises(InputError, match="multiple of the number of training scenarios"):
        _setup(extra=(_scenario("highway/cruise_nde"),), envs=3)
    with pytest.raises(InputError, match="extra_scenarios"):
        _setup(extra=(load_scenario_arg("classic/pendulum")[0],))


def test_concat_vector_env_matches_its_parts():
    spec = _scenario("highway/cut_in", steps=3)
    parts = [BatchedHighwayVectorEnv(spec, 2, autoreset_mode=AutoresetMode.SAME_STEP) for _ in range(2)]
    whole = ConcatVectorEnv([BatchedHighwayVectorEnv(spec, 2, autoreset_mode=AutoresetMode.SAME_STEP)
                             for _ in range(2)])
    obs, _ = whole.reset(seed=10)
    ref = np.concatenate([parts[0].reset(seed=10)[0], parts[1].reset(seed=12)[0]])
    np.testing.assert_array_equal(obs, ref)
    for _ in range(4):
        obs, reward, *_ , info = whole.step(np.full((4, 2), 0.3, np.float32))
        ref = [part.step(np.full((2, 2), 0.3, np.float32)) for part in parts]
        np.testing.assert_array_equal(obs, np.concatenate([r[0] for r in ref]))
        np.testing.assert_array_equal(reward, np.concatenate([r[1] for r in ref]))
        if "final_obs" in info:
            np.testing.assert_array_equal(info["_final_obs"], np.concatenate([r[4]["_final_obs"] for r in ref]))
    assert isinstance(whole.single_observation_space, gym.spaces.Box)
