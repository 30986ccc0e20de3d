"""BatchedHighwayVectorEnv: gymnasium vector-env contract, autoreset, seeds, and per-row resets.

gymnasium 1.x ships no checker for vector environments (``gymnasium.utils.env_checker.check_env`` takes a single
``gym.Env``), so the contract is checked against gymnasium's own ``SyncVectorEnv`` over the highway-env backend:
same spaces, same info layout and dtypes, the same seeds per sub-env (``seed + i``), and the same first
observations after a reset and after an autoreset (placement is exact; the dynamics run in float32 here, so only
reset observations are compared). ``passive_env_checker.check_obs`` checks observations against the spaces.
"""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.utils.passive_env_checker import check_obs
from gymnasium.vector import AutoresetMode

from safetybed.errors import InputError
from safetybed.sims.batched.sim import BatchedHighway
from safetybed.sims.batched.vector_env import SAFETY_DTYPES, BatchedHighwayVectorEnv, RowResetHighway
from safetybed.sims.highway import make_highway_env
from safetybed.spec import ScenarioSpec
from safetybed.spec.catalogue import load_scenario_arg

NEEDS_NATURALISTIC = pytest.mark.skipif(importlib.util.find_spec("safetybed.sims.batched.naturalistic") is None,
                                        reason="safetybed.sims.batched.naturalistic not available yet")
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 cores shared: torch threads would wait on each other
DRIVERS = ["idm", pytest.param("naturalistic", marks=NEEDS_NATURALISTIC)]


def _spec(task: str = "cut_in", *, driver: str = "idm", episode_steps: int = 3, **highway) -> ScenarioSpec:
    data = load_scenario_arg(f"highway/{task}")[0].model_dump()
    data["highway"]["driver"]["model"] = driver
    data["highway"].update(highway)
    data["episode_steps"] = episode_steps
    return ScenarioSpec.model_validate(data)


def _reference(spec: ScenarioSpec, num_envs: int) -> gym.vector.SyncVectorEnv:
    return gym.vector.SyncVectorEnv([lambda: make_highway_env(spec)] * num_envs,
                                    autoreset_mode=AutoresetMode.NEXT_STEP)


def test_spaces_and_metadata_match_the_highway_env_backend():
    spec = _spec()
    env = BatchedHighwayVectorEnv(spec, 3)
    single = make_highway_env(spec)
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert env.single_observation_space == single.observation_space
    assert env.single_action_space == single.action_space
    assert env.observation_space == gym.vector.utils.batch_space(single.observation_space, 3)
    assert env.action_space.shape == (3, 2) and env.action_space.dtype == np.float32
    observation, _ = env.reset(seed=0)
    check_obs(observation, env.observation_space, "reset")
    env.action_space.seed(0)
    observation, *_ = env.step(env.action_space.sample())
    check_obs(observation, env.observation_space, "step")
    env.close()
    assert env.closed


@pytest.mark.parametrize(("task", "driver"), [("cut_in", "idm"), ("overtaking", "idm"), ("cruise", "idm"),
                                              pytest.param("cut_in", "naturalistic", marks=NEEDS_NATURALISTIC)])
def test_seeds_infos_and_autoreset_match_sync_vector_env(task, driver):
    """reset(seed=s) gives sub-env i seed s + i; reset() and autoresets continue each sub-env's generator."""
    spec = _spec(task, driver=driver, episode_steps=2)
    ours, theirs = BatchedHighwayVectorEnv(spec, 3), _reference(spec, 3)
    obs, info = ours.reset(seed=11)
    ref_obs, ref_info = theirs.reset(seed=11)
    np.testing.assert_allclose(obs, ref_obs, atol=1e-4)
    _assert_same_layout(info, ref_info)
    actions = np.zeros((3, 2), dtype=np.float32)
    for step in range(7):  # 0-based: truncation at steps 1 and 4, autoresets at steps 2 and 5
        obs, reward, terminated, truncated, info = ours.step(actions)
        ref_obs, ref_reward, ref_terminated, ref_truncated, ref_info = theirs.step(actions)
        _assert_same_layout(info, ref_info)
        assert obs.dtype == np.float32 and reward.dtype == ref_reward.dtype == np.float64
        np.testing.assert_array_equal(truncated, ref_truncated)
        np.testing.assert_array_equal(terminated, ref_terminated)
        np.testing.assert_allclose(reward, ref_reward, atol=1e-3)
        if step in (2, 5):  # the autoreset step: each sub-env's next episode, first observation
            assert not truncated.any() and (reward == 0).all()
            np.testing.assert_allclose(obs, ref_obs, atol=1e-4)
            np.testing.assert_array_equal(info["safety"]["progress_m"], 0.0)
            np.testing.assert_allclose(info["safety"]["gap_m"], ref_info["safety"]["gap_m"], rtol=1e-5)
        else:
            assert truncated.all() == (step in (1, 4))
    obs, _ = ours.reset()  # no seed: continue the generators, as highway-env's reset()
    ref_obs, _ = theirs.reset()
    np.testing.assert_allclose(obs, ref_obs, atol=1e-4)


def _assert_same_layout(info, reference):
    assert set(info) == set(reference) == {"safety", "_safety"}
    assert set(info["safety"]) == set(reference["safety"])
    for key, dtype in SAFETY_DTYPES.items():
        assert info["safety"][key].dtype == reference["safety"][key].dtype == dtype, key
        assert info["safety"][key].shape == reference["safety"][key].shape
        np.testing.assert_array_equal(info["safety"][f"_{key}"], reference["safety"][f"_{key}"])
    np.testing.assert_array_equal(info["_safety"], reference["_safety"])


def test_same_seeds_give_same_observations_and_constructor_seed_is_the_first_reset():
    spec = _spec(episode_steps=4)
    actions = np.random.default_rng(3).uniform(-1, 1, size=(6, 4, 2)).astype(np.float32)
    runs = []
    for env in (BatchedHighwayVectorEnv(spec, 4, seed=5), BatchedHighwayVectorEnv(spec, 4)):
        first = env.reset() if env._default_seed is not None else env.reset(seed=5)
        runs.append([first[0]] + [env.step(action)[0] for action in actions])
    assert data_equivalence(runs[0], runs[1])
    other = BatchedHighwayVectorEnv(spec, 4).reset(seed=[5, 6, 7, 9])[0]
    np.testing.assert_array_equal(other[:3], runs[0][0][:3])
    assert not np.array_equal(other[3], runs[0][0][3])


def test_autoreset_follows_every_episode_end_with_random_actions():
    """With full throttle and lane changes some episodes crash: the next step restarts exactly those."""
    spec = _spec(episode_steps=6)
    env = BatchedHighwayVectorEnv(spec, 16, seed=0)
    env.reset()
    env.action_space.seed(1)
    ended = np.zeros(16, dtype=bool)
    terminations = 0
    for _ in range(14):
        action = env.action_space.sample()
        action[:, 0] = 1.0
        _, reward, terminated, truncated, info = env.step(action)
        assert (reward[ended] == 0).all() and not terminated[ended].any() and not truncated[ended].any()
        np.testing.assert_array_equal(info["safety"]["progress_m"][ended], 0.0)
        assert (info["safety"]["progress_m"][~ended] > 0).all()
        terminations += int(terminated.sum())
        ended = terminated | truncated
    assert terminations > 0  # the crash path ran


def test_reset_mask_resets_only_those_rows_and_truncation_is_per_row():
    spec = _spec(episode_steps=3)
    env = BatchedHighwayVectorEnv(spec, 3)
    start, _ = env.reset(seed=0)
    actions = np.zeros((3, 2), dtype=np.float32)
    env.step(actions)
    moved, *_ = env.step(actions)
    mask = np.array([False, True, False])
    obs, info = env.reset(seed=0, options={"reset_mask": mask})
    np.testing.assert_allclose(obs[1], start[1], atol=1e-6)  # seed 0 + 1 again
    np.testing.assert_array_equal(obs[[0, 2]], moved[[0, 2]])
    np.testing.assert_array_equal(info["_safety"], mask)
    _, _, _, truncated, _ = env.step(actions)
    np.testing.assert_array_equal(truncated, [True, False, True])
    with pytest.raises(ValueError, match="reset_mask"):
        env.reset(options={"reset_mask": np.zeros(3, dtype=bool)})


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_reset_row_runs_as_the_same_episode_alone(driver):
    """reset_rows writes a whole episode state: the row then runs exactly as that seed in a batch of its own."""
    spec = _spec(driver=driver, episode_steps=40)
    rng = np.random.default_rng(0)
    actions = torch.as_tensor(rng.uniform(-1, 1, size=(8, 3, 2)))
    sim = RowResetHighway(spec, dtype=torch.float64)
    untouched = BatchedHighway(spec, dtype=torch.float64)
    sim.reset([1, 2, 3])
    untouched.reset([1, 2, 3])
    for k in range(2):
        sim.step(actions[k])
        untouched.step(actions[k])
    first = sim.reset_rows([1], [42])
    alone = BatchedHighway(spec, dtype=torch.float64)
    torch.testing.assert_close(first, alone.reset([42]), rtol=0, atol=0)
    for k in range(2, 8):
        mine, solo, other = sim.step(actions[k]), alone.step(actions[k][1:2]), untouched.step(actions[k])
        torch.testing.assert_close(mine.observation[1:2], solo.observation, rtol=0, atol=0)
        torch.testing.assert_close(mine.observation[[0, 2]], other.observation[[0, 2]], rtol=0, atol=0)
        assert mine.progress_m[1] == solo.progress_m[0]
    assert sim.elapsed_steps.tolist() == [8, 6, 8]


def test_clear_errors():
    spec = _spec()
    with pytest.raises(ValueError, match="num_envs"):
        BatchedHighwayVectorEnv(spec, 0)
    env = BatchedHighwayVectorEnv(spec, 2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((2, 2), dtype=np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        env.step(np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full((2, 2), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="2 entries"):
        env.reset(seed=[1, 2, 3])
    with pytest.raises(ValueError, match="options"):
        env.reset(options={"other": 1})
    merge = load_scenario_arg("highway/merge")[0]
    with pytest.raises(InputError, match="families"):
        BatchedHighwayVectorEnv(merge, 2)


@pytest.mark.parametrize("noise_std", [0.0, 0.1])
def test_same_step_autoreset_and_observation_noise_match_sync_vector_env(noise_std):
    """SAME_STEP (the training loops' mode): the final observation in info, the reset one returned, and
    perturbations.observation_noise_std drawn per sub-env as ObservationNoise in each sub-env of SyncVectorEnv."""
    from safetybed.sims import make_env

    data = _spec(episode_steps=2).model_dump()
    data["perturbations"]["observation_noise_std"] = noise_std
    spec = ScenarioSpec.model_validate(data)
    ours = BatchedHighwayVectorEnv(spec, 3, autoreset_mode=AutoresetMode.SAME_STEP)
    theirs = gym.vector.SyncVectorEnv([lambda: make_env(spec)] * 3, autoreset_mode=AutoresetMode.SAME_STEP)
    assert ours.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    obs, _ = ours.reset(seed=4)
    ref_obs, _ = theirs.reset(seed=4)
    np.testing.assert_allclose(obs, ref_obs, atol=1e-4)
    actions = np.zeros((3, 2), dtype=np.float32)
    for step in range(5):  # 0-based: both episodes of every sub-env end at steps 1 and 3
        obs, reward, terminated, truncated, info = ours.step(actions)
        ref_obs, ref_reward, ref_terminated, ref_truncated, ref_info = theirs.step(actions)
        np.testing.assert_array_equal(truncated, ref_truncated)
        assert truncated.all() == (step in (1, 3))
        assert set(info) == set(ref_info), step
        np.testing.assert_allclose(reward, ref_reward, atol=1e-3)
        if step in (1, 3):  # reset observations of the next episodes; the last ones of the old in final_obs
            np.testing.assert_allclose(obs, ref_obs, atol=1e-4)
            np.testing.assert_array_equal(info["_final_obs"], ref_info["_final_obs"])
            np.testing.assert_allclose(np.stack(info["final_obs"]), np.stack(ref_info["final_obs"]), atol=1e-2)
            np.testing.assert_array_equal(info["safety"]["progress_m"], 0.0)
            assert info["final_info"][0]["safety"]["progress_m"] > 0
        else:
            np.testing.assert_allclose(obs, ref_obs, atol=1e-2)
    if noise_std:  # the noise differs between sub-envs and steps, so the comparison above tested it
        assert not np.allclose(obs[0], obs[1])
