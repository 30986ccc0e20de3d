"""Trajectory weighting (Hong et al. 2023): RW / AW weights against hand-computed values, behaviour cloning under the
weighted sampler converging to the re-weighted behaviour policy, the shared offline learners' losses, and the fast
demo's direction on CartPole mixtures recorded by the batch runner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safetybed.suite.common.offline_data import OfflineDataset
from safetybed.suite.common.offline_learners import (
    BCConfig,
    DiscreteTransitions,
    IQLAgent,
    IQLConfig,
    UniformSampler,
    WeightedSampler,
    expectile_loss,
    iql_losses,
    train_bc,
)
from safetybed.suite.offline_rl.traj_weighting import (
    ENTRY,
    Config,
    trajectory_weighted_sampler,
    trajectory_weights,
    transition_probabilities,
)
from safetybed.suite.registry import VERDICTS, DemoResult


def _dataset(episode: list[int], returns: list[float], actions: list[int], first_obs: list[float] | None = None
             ) -> OfflineDataset:
    episode_array = np.asarray(episode, dtype=np.int64)
    n = episode_array.size
    obs = np.zeros((n, 1), np.float32)
    if first_obs is not None:
        starts = np.flatnonzero(np.r_[True, episode_array[1:] != episode_array[:-1]])
        obs[starts, 0] = first_obs
    return OfflineDataset(obs, np.asarray(actions, np.int64), np.ones(n, np.float32), obs.copy(),
                          np.zeros(n, bool), episode_array, np.asarray(returns, np.float64),
                          ("behaviour",) * len(returns), ("run",))


def test_return_weights_by_hand():
    # Returns 0, 5, 10 normalise to 0, 0.5, 1; with alpha = 0.1 the weights are proportional to 1, e^5, e^10.
    weights = trajectory_weights(np.array([0.0, 5.0, 10.0]), temperature=0.1)
    expected = np.exp([0.0, 5.0, 10.0]) / np.exp([0.0, 5.0, 10.0]).sum()
    assert weights == pytest.approx(expected, rel=1e-12)
    # Affine changes of the returns do not change min-max-normalised weights.
    assert trajectory_weights(np.array([7.0, 17.0, 27.0])) == pytest.approx(expected, rel=1e-12)
    # Equal returns: the normalisation is undefined and every trajectory keeps the same weight.
    assert trajectory_weights(np.full(4, 200.0)) == pytest.approx(np.full(4, 0.25))


def test_advantage_weights_by_hand():
    # s0 = 0, 1, 2, 3 and G = 0, 1, 2, 4: least squares gives V(s0) = 1.3 s0 - 0.2 (slope 6.5 / 5, by hand),
    # A = 0.2, -0.1, -0.4, 0.3, normalised A = 6/7, 3/7, 0, 1.
    s0 = np.array([[0.0], [1.0], [2.0], [3.0]])
    weights = trajectory_weights(np.array([0.0, 1.0, 2.0, 4.0]), scheme="advantage", initial_observations=s0)
    logits = np.array([6 / 7, 3 / 7, 0.0, 1.0]) / 0.1
    assert weights == pytest.approx(np.exp(logits) / np.exp(logits).sum(), rel=1e-9)
    # A return the start state explains exactly gives no advantage to anyone (round-off is not stretched to [0, 1]).
    exact = trajectory_weights(5.0 + 2.0 * s0[:, 0], scheme="advantage", initial_observations=s0)
    assert exact == pytest.approx(np.full(4, 0.25))
    with pytest.raises(ValueError, match="initial_observations"):
        trajectory_weights(np.ones(4), scheme="advantage")


def test_transition_probabilities_trajectory_and_transition_mass():
    episode = np.array([0, 0, 0, 1, 2, 2])
    weights = np.array([0.5, 0.2, 0.3])
    by_trajectory = transition_probabilities(weights, episode)
    assert np.bincount(episode, weights=by_trajectory) == pytest.approx(weights)  # trajectory i gets w_i
    assert by_trajectory[:3] == pytest.approx(np.full(3, 0.5 / 3))
    # The official code's softmax over transitions: each transition ∝ w_i, so trajectory mass ∝ T_i w_i.
    by_transition = transition_probabilities(weights, episode, mass="transition")
    mass = np.array([3 * 0.5, 0.2, 2 * 0.3])
    assert np.bincount(episode, weights=by_transition) == pytest.approx(mass / mass.sum())
    with pytest.raises(ValueError, match="mass"):
        Config(mass="episode")  # type: ignore[arg-type]


def test_weighted_sampler_draws_its_probabilities():
    probabilities = np.array([0.1, 0.0, 0.6, 0.3])
    draws = WeightedSampler(probabilities).sample(200_000, generator=np.random.default_rng(0))
    frequencies = np.bincount(draws, minlength=4) / draws.size
    # 5 binomial standard errors at n = 200 000 (at most 0.0011 each): fails with probability < 1e-5.
    assert frequencies == pytest.approx(probabilities, abs=5 * math.sqrt(0.25 / draws.size))
    with pytest.raises(ValueError, match="non-negative"):
        WeightedSampler(np.array([0.5, -0.1]))


def test_bc_under_the_weighted_sampler_learns_the_reweighted_behaviour_policy():
    # One state; trajectory 0 (return 0) takes action 0 three times, trajectory 1 (return 1) takes action 1 once.
    # With alpha = 1 the RW weights are 1 / (1 + e) and e / (1 + e); drawing trajectories with those masses,
    # the maximum-likelihood policy is pi(1) = e / (1 + e) = 0.731. Uniform transitions give pi(1) = 1/4, and the
    # code's per-transition softmax (mass T_i w_i) would give e / (3 + e) = 0.475.
    data = _dataset([0, 0, 0, 1], [0.0, 1.0], [0, 0, 0, 1])
    transitions = DiscreteTransitions.from_dataset(data, n_actions=2)
    config = BCConfig(hidden=(8,), learning_rate=1e-2, steps=400, batch_size=512)
    obs = torch.zeros(1, 1)

    def learned_pi1(sampler) -> float:
        policy = train_bc(transitions, sampler=sampler, config=config, seed=0).policy
        with torch.no_grad():
            return float(torch.softmax(policy.logits(obs), dim=-1)[0, 1])

    weighted = trajectory_weighted_sampler(data, scheme="return", config=Config(temperature=1.0))
    assert learned_pi1(weighted) == pytest.approx(math.e / (1 + math.e), abs=0.03)
    assert learned_pi1(UniformSampler(transitions.size)) == pytest.approx(0.25, abs=0.03)


def test_expectile_loss_by_hand_and_iql_gradients_stay_in_their_networks():
    diff = torch.tensor([1.0, -2.0])
    assert float(expectile_loss(diff, 0.7)) == pytest.approx((0.7 * 1.0 + 0.3 * 4.0) / 2)
    data = _dataset([0, 0, 1], [2.0, 1.0], [0, 1, 1], first_obs=[0.5, -0.5])
    transitions = DiscreteTransitions.from_dataset(data, n_actions=2)
    agent = IQLAgent(transitions, (8,), torch.Generator().manual_seed(0))
    terms = iql_losses(agent, transitions.batch(np.arange(3)), IQLConfig())
    assert {"loss_value", "loss_actor", "loss_critic"} <= set(terms)
    owners = {"loss_value": agent.value, "loss_actor": agent.policy, "loss_critic": agent.critics}
    for name, owner in owners.items():
        agent.zero_grad(set_to_none=True)
        terms = iql_losses(agent, transitions.batch(np.arange(3)), IQLConfig())
        terms[name].backward()
        own = {id(p) for p in owner.parameters()}
        for p in agent.parameters():
            has_grad = p.grad is not None and bool(p.grad.abs().sum() > 0)
            if id(p) not in own:
                assert not has_grad, f"{name} leaked a gradient outside its network"
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in owner.parameters() if p.requires_grad)


def test_fast_demo_weighted_bc_beats_uniform_bc_on_the_mixture(tmp_path):
    result = ENTRY.demo(fast=True, seed=0, store_path=tmp_path / "suite.sqlite")
    assert isinstance(result, DemoResult) and result.name == "traj-weighting" and result.verdict in VERDICTS
    assert result.measured["mix5 expert transition share"].mean == pytest.approx(0.05, abs=0.02)
    # Direction with margin: weighted BC at least 1.5x uniform BC on 5 % expert transitions (the claim asks 2x) ...
    for suffix in ("", " AW"):  # RW, AW
        assert result.measured[f"bc mix5{suffix}"].mean >= 1.5 * result.baseline["bc mix5"].mean
        # ... and within 10 % of uniform BC on expert-only data.
        assert result.measured[f"bc expert{suffix}"].mean >= 0.9 * result.baseline["bc expert"].mean
