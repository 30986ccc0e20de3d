"""The suite's shared toys: exact tabular solvers against hand-computed values, and the offline datasets read back
from the run store against the stored episodes they came from."""

from __future__ import annotations

import numpy as np
import pytest

from safetybed.runner import RunStore
from safetybed.suite.common.offline_data import DatasetPart, record_dataset, shipped_controller
from safetybed.suite.common.tabular import (
    TabularMDP,
    combination_lock,
    finite_horizon_values,
    greedy,
    gridworld,
    policy_evaluation,
    q_values,
    riverswim,
    sample_episode,
    soft_value_iteration,
    value_iteration,
)


def test_gridworld_optimal_value_is_discounted_shortest_path():
    # The goal reward is paid on the step into the goal: from distance d, V* = gamma^(d - 1) (by hand).
    mdp = gridworld(5, gamma=0.9)
    v, q = value_iteration(mdp)
    assert v[0] == pytest.approx(0.9 ** 7, abs=1e-9)
    assert v[3 * 5 + 4] == pytest.approx(1.0, abs=1e-9)  # next to the goal
    assert policy_evaluation(mdp, greedy(q)) == pytest.approx(v, abs=1e-8)


def test_policy_evaluation_solves_the_bellman_equation_of_a_stochastic_policy():
    mdp = gridworld(4, slip=0.2, gamma=0.8)
    rng = np.random.default_rng(0)
    policy = rng.dirichlet(np.ones(4), size=mdp.n_states)
    v = policy_evaluation(mdp, policy)
    assert v == pytest.approx((policy * q_values(mdp, v)).sum(axis=1), abs=1e-12)


def test_soft_value_iteration_satisfies_the_soft_bellman_equation_and_tends_to_the_optimum():
    mdp = riverswim(5, gamma=0.9)
    v, q, pi = soft_value_iteration(mdp, tau=0.1)
    assert v == pytest.approx(0.1 * np.log(np.exp(q / 0.1).sum(axis=1)), abs=1e-9)
    assert pi.sum(axis=1) == pytest.approx(np.ones(5))
    v_star, _ = value_iteration(mdp)
    v_cold, _, _ = soft_value_iteration(mdp, tau=1e-4)
    assert v_cold == pytest.approx(v_star, abs=1e-3)
    assert (v >= v_star - 1e-12).all()  # the entropy bonus only adds


def test_riverswim_optimum_swims_right_and_combination_lock_values():
    _, q = value_iteration(riverswim(6))
    assert greedy(q).argmax(axis=1).tolist() == [1] * 6
    mdp, code = combination_lock(6, 3, seed=1)
    v, _ = finite_horizon_values(mdp, 6)
    assert v[0, 0] == 1.0
    uniform = np.full((mdp.n_states, 3), 1 / 3)
    v_uniform, _ = finite_horizon_values(mdp, 6, uniform)
    assert v_uniform[0, 0] == pytest.approx(3.0 ** -6)  # guessing the code by chance
    steps = sample_episode(mdp, np.eye(3)[np.r_[code, 0, 0]], horizon=6, rng=np.random.default_rng(0))
    assert [a for _, a, _, _ in steps] == code.tolist() and steps[-1][2] == 1.0


def test_tabular_mdp_rejects_bad_input():
    with pytest.raises(ValueError, match="probability distribution"):
        TabularMDP(P=np.array([[[0.5, 0.6]], [[0.0, 1.0]]]), R=np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"R: expected shape \(2, 1\)"):
        TabularMDP(P=np.array([[[1.0, 0.0]], [[0.0, 1.0]]]), R=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="gamma < 1"):
        policy_evaluation(combination_lock(3, 2)[0], np.full((5, 2), 0.5))


def test_offline_dataset_is_the_stored_episodes_and_is_recorded_once(tmp_path):
    store_path = tmp_path / "suite.sqlite"
    parts = [DatasetPart("builtin:random", 6), DatasetPart(shipped_controller("cartpole_ppo"), 2)]
    data = record_dataset("classic/cartpole", parts=parts, seed=3, store_path=store_path)
    with RunStore(store_path) as store:
        records = [r for run_id in data.run_ids for r in store.episodes(run_id)]
        assert len(store.list_runs()) == 2
    assert data.episodes == 8 and data.size == sum(r.length for r in records)
    assert data.episode_controllers == ("builtin:random",) * 6 + (parts[1].controller,) * 2
    # Returns and terminals agree with the stored records; next_obs of a step is the next step's obs.
    sums = np.bincount(data.episode, weights=data.rewards)
    assert sums == pytest.approx([r.episode_return for r in records])
    assert data.terminals.sum() == sum(r.terminated for r in records)
    same_episode = data.episode[1:] == data.episode[:-1]
    assert np.array_equal(data.next_observations[:-1][same_episode], data.observations[1:][same_episode])
    assert data.actions.dtype == np.int64 and set(np.unique(data.actions)) <= {0, 1}
    assert data.episode_returns[6:].min() > data.episode_returns[:6].max()  # the shipped PPO beats random
    again = record_dataset("classic/cartpole", parts=parts, seed=3, store_path=store_path)
    assert again.run_ids == data.run_ids and np.array_equal(again.observations, data.observations)
    good = data.select_episodes(data.episode_returns > data.episode_returns[:6].max())
    assert good.episodes == 2 and good.size == int(data.episode_returns[6:].sum())
    assert good.episode_starts().tolist() == [0, int(data.episode_returns[6])]
