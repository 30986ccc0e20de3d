"""PPO and the on-policy rollout: analytic oracles (GAE, clipped objective), gradient routing, training.

Hand-computed numbers are worked out in the comments next to them; tolerances are float32 round-off.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from safetybed.control.algorithms import ppo
from safetybed.control.algorithms.rollout import (
    RolloutBatch,
    RolloutBuffer,
    action_distribution,
    collect,
    compute_gae,
)
from safetybed.control.base import RandomController
from safetybed.control.networks import ObsNormalizer, Policy, PolicyArch, ValueNetwork
from safetybed.control.training import TrainSetup
from safetybed.sims import make_env
from safetybed.sims.rollout import rollout
from safetybed.spec.catalogue import load_scenario_arg
from safetybed.spec.controller import NetworkSpec

# -- GAE -------------------------------------------------------------------------------------------------------


def test_gae_hand_computed_truncation_bootstraps_and_termination_does_not():
    # gamma = lambda = 0.5, so gamma * lambda = 0.25. Column 0 runs on; column 1 is truncated after t = 0
    # (V(final_obs) = 8 is bootstrapped) and terminates at t = 2 (nothing is bootstrapped; last value ignored).
    buffer = RolloutBuffer(steps=3, envs=2, obs_dim=1, action_shape=(), discrete=True, device=torch.device("cpu"))
    rewards = [[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]]
    values = [[0.5, 2.0], [1.0, 1.0], [2.0, 1.0]]
    terminated = [[0, 0], [0, 0], [0, 1]]
    done = [[0, 1], [0, 0], [0, 1]]
    final_values = [[0.0, 8.0], [0.0, 0.0], [0.0, 0.0]]
    for t in range(3):
        buffer.add(obs=torch.zeros(2, 1), actions=torch.zeros(2, dtype=torch.long), log_probs=torch.zeros(2),
                   values=torch.tensor(values[t]), rewards=torch.tensor(rewards[t]),
                   terminated=torch.tensor(terminated[t], dtype=torch.float32),
                   done=torch.tensor(done[t], dtype=torch.float32), final_values=torch.tensor(final_values[t]))
    batch = buffer.finish(torch.tensor([4.0, 100.0]), gamma=0.5, gae_lambda=0.5)
    # Column 0: delta_2 = 1 + 0.5*4 - 2 = 1,  A_2 = 1
    #           delta_1 = 1 + 0.5*2 - 1 = 1,  A_1 = 1 + 0.25*1 = 1.25
    #           delta_0 = 1 + 0.5*1 - 0.5 = 1, A_0 = 1 + 0.25*1.25 = 1.3125
    # Column 1: delta_2 = 3 + 0 - 1 = 2 (terminated),       A_2 = 2
    #           delta_1 = 2 + 0.5*1 - 1 = 1.5,              A_1 = 1.5 + 0.25*2 = 2
    #           delta_0 = 1 + 0.5*8 - 2 = 3 (truncated: V(final_obs) = 8, recursion stops), A_0 = 3
    expected = torch.tensor([[1.3125, 3.0], [1.25, 2.0], [1.0, 2.0]]).reshape(-1)
    torch.testing.assert_close(batch.advantages, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(batch.returns, expected + torch.tensor(values).reshape(-1), rtol=0, atol=1e-6)


def test_gae_with_lambda_one_is_the_discounted_return_minus_value():
    # An episode of 5 rewards of 1 that terminates: A_t = sum_k gamma^k r_{t+k} - V(s_t) when lambda = 1.
    gamma = 0.9
    rewards = torch.ones(5, 1)
    values = torch.tensor([[0.3], [-0.2], [0.7], [1.5], [0.1]])
    next_values = torch.cat([values[1:], torch.tensor([[123.0]])])
    terminated = torch.tensor([[0.0], [0.0], [0.0], [0.0], [1.0]])
    advantages, returns = compute_gae(rewards, values, next_values, terminated, terminated.clone(),
                                      gamma=gamma, gae_lambda=1.0)
    monte_carlo = torch.tensor([[sum(gamma**k for k in range(5 - t))] for t in range(5)])
    torch.testing.assert_close(advantages, monte_carlo - values, rtol=0, atol=1e-5)
    torch.testing.assert_close(returns, monte_carlo, rtol=0, atol=1e-5)


class _CounterEnv(gym.Env):
    """Observation = steps since reset; reward 1; ends after ``length`` steps (truncated or terminated)."""

    def __init__(self, *, length: int, terminate: bool):
        self.length, self.terminate = length, terminate
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.length
        return (np.array([float(self.t)], dtype=np.float32), 1.0, end and self.terminate,
                end and not self.terminate, {})


class _ObsValue(nn.Module):
    """V(s) = s, so the bootstrap value of a state can be read off the state."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs[..., 0]


def test_collect_bootstraps_with_the_final_observation_of_a_same_step_autoreset_env():
    env = gym.vector.SyncVectorEnv([lambda: _CounterEnv(length=3, terminate=False),
                                    lambda: _CounterEnv(length=2, terminate=True)],
                                   autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    raw_obs, _ = env.reset(seed=[0, 1])
    policy = Policy(PolicyArch(kind="categorical", obs_dim=1, act_dim=2, hidden=(4,)))
    buffer = RolloutBuffer(steps=4, envs=2, obs_dim=1, action_shape=(), discrete=True, device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    raw_obs, last_values = collect(env, buffer, raw_obs, policy=policy, value=_ObsValue(),
                                   obs_norm=ObsNormalizer(1, enabled=False), generator=generator,
                                   action_space=env.single_action_space)
    batch = buffer.finish(last_values, gamma=0.5, gae_lambda=1.0)
    # Env 0 (truncated after 3 steps): values 0,1,2,0; next values 1,2,V(final_obs)=3,1.
    #   delta = 1.5, 1, 0.5, 1.5; A_3 = 1.5, A_2 = 0.5 (episode end), A_1 = 1 + 0.5*0.5 = 1.25,
    #   A_0 = 1.5 + 0.5*1.25 = 2.125.  (Bootstrapping the reset observation instead would give A_2 = -1.)
    # Env 1 (terminated after 2 steps): values 0,1,0,1; delta = 1.5, 0, 1.5, 0; A = 1.5, 0, 1.5, 0.
    expected = torch.tensor([[2.125, 1.5], [1.25, 0.0], [0.5, 1.5], [1.5, 0.0]]).reshape(-1)
    torch.testing.assert_close(batch.advantages, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(batch.values, torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [0.0, 1.0]]
                                                          ).reshape(-1))
    env.close()


# -- the clipped objective ----------------------------------------------------------------------------------------


def _categorical_policy_and_value(seed: int = 0) -> tuple[Policy, ValueNetwork]:
    generator = torch.Generator().manual_seed(seed)
    policy = Policy(PolicyArch(kind="categorical", obs_dim=3, act_dim=2, hidden=(8,), activation="tanh"))
    value = ValueNetwork(3, hidden=(8,), activation="tanh")
    for parameter in [*policy.parameters(), *value.parameters()]:
        nn.init.normal_(parameter, std=0.5, generator=generator)
    return policy, value


def test_clipped_objective_matches_a_hand_computation():
    policy, value = _categorical_policy_and_value()
    obs = torch.linspace(-1, 1, 15).reshape(5, 3)
    actions = torch.tensor([0, 1, 0, 1, 1])
    with torch.no_grad():
        log_probs_now = action_distribution(policy, obs).log_prob(actions)
        predicted = value(obs)
    ratios = torch.tensor([0.5, 1.0, 1.5, 1.1, 0.7])
    advantages = torch.tensor([1.0, -1.0, 2.0, -2.0, -1.0])
    offsets = torch.tensor([0.1, -0.2, 0.3, 0.0, 1.0])  # returns - V(s)
    batch = RolloutBatch(obs=obs, actions=actions, log_probs=log_probs_now - ratios.log(),
                         values=predicted - 0.5, advantages=advantages, returns=predicted + offsets)
    config = ppo.Config(clip_range=0.2, normalize_advantages=False, ent_coef=0.01, vf_coef=0.5)
    terms = ppo.PPO(policy, value, config=config).losses(batch)
    # min(r A, clip(r, 0.8, 1.2) A): min(0.5, 0.8) = 0.5; min(-1, -1) = -1; min(3, 2.4) = 2.4;
    # min(-2.2, -2.2) = -2.2; min(-0.7, -0.8) = -0.8. Mean = -1.1 / 5 = -0.22, so loss_policy = 0.22.
    assert terms["loss_policy"].item() == pytest.approx(0.22, abs=1e-6)
    # |r - 1| > 0.2 for r = 0.5, 1.5, 0.7.
    assert terms["clip_fraction"].item() == pytest.approx(0.6, abs=1e-7)
    expected_kl = float(np.mean([(r - 1) - math.log(r) for r in ratios.tolist()]))
    assert terms["approx_kl"].item() == pytest.approx(expected_kl, abs=1e-6)
    # Unclipped value loss: 0.5 * mean(offset^2) = 0.5 * (0.01 + 0.04 + 0.09 + 0 + 1) / 5 = 0.114.
    assert terms["loss_value"].item() == pytest.approx(0.114, abs=1e-6)
    with torch.no_grad():
        probs = torch.softmax(policy.net(obs), dim=-1)
        entropy = -(probs * probs.log()).sum(-1).mean().item()
    assert terms["entropy"].item() == pytest.approx(entropy, abs=1e-6)
    assert terms["loss_total"].item() == pytest.approx(0.22 - 0.01 * entropy + 0.5 * 0.114, abs=1e-6)

    # Clipped value loss: V_old = V - 0.5, so V_clip = V_old + 0.2 = V - 0.3 and its error is offset + 0.3:
    # max(offset^2, (offset + 0.3)^2) = 0.16, 0.04, 0.36, 0.09, 1.69 -> 0.5 * 2.34 / 5 = 0.234.
    clipped = ppo.PPO(policy, value, config=ppo.Config(clip_range_value=0.2)).losses(batch)
    assert clipped["loss_value"].item() == pytest.approx(0.234, abs=1e-6)


def test_advantage_normalisation_standardises_per_minibatch():
    policy, value = _categorical_policy_and_value()
    obs = torch.linspace(-1, 1, 12).reshape(4, 3)
    actions = torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        log_probs = action_distribution(policy, obs).log_prob(actions) + torch.tensor([0.1, -0.3, 0.2, 0.0])
    advantages = torch.tensor([3.0, -1.0, 0.5, 2.0])
    batch = RolloutBatch(obs, actions, log_probs, torch.zeros(4), advantages, torch.zeros(4))
    standardised = (advantages - advantages.mean()) / advantages.std()
    normalised = ppo.PPO(policy, value, config=ppo.Config()).losses(batch)
    by_hand = ppo.PPO(policy, value, config=ppo.Config(normalize_advantages=False)).losses(
        batch._replace(advantages=standardised))
    assert normalised["loss_policy"].item() == pytest.approx(by_hand["loss_policy"].item(), abs=1e-5)


# -- gradient routing -------------------------------------------------------------------------------------------


def _touched(loss: torch.Tensor, networks: dict[str, nn.Module]) -> set[str]:
    """Names of the networks in which ``loss`` leaves a non-zero gradient."""
    for network in networks.values():
        network.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {name for name, network in networks.items()
            if any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in network.parameters())}


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_each_ppo_loss_term_reaches_only_its_own_network(kind):
    generator = torch.Generator().manual_seed(1)
    arch = PolicyArch(kind=kind, obs_dim=3, act_dim=2, hidden=(8,), action_low=(-1.0, -1.0) if kind == "gaussian"
                      else (), action_high=(1.0, 1.0) if kind == "gaussian" else ())
    policy, value = Policy(arch), ValueNetwork(3, hidden=(8,), activation="relu")
    obs = torch.randn(6, 3, generator=generator)
    with torch.no_grad():
        actions, log_probs = policy.sample(obs, generator=generator)
    batch = RolloutBatch(obs, actions, log_probs + 0.1, torch.zeros(6), torch.randn(6, generator=generator),
                         torch.randn(6, generator=generator))
    terms = ppo.PPO(policy, value, config=ppo.Config()).losses(batch)
    networks = {"policy": policy, "value": value}
    assert _touched(terms["loss_policy"], networks) == {"policy"}
    assert _touched(terms["entropy"], networks) == {"policy"}
    assert _touched(terms["loss_value"], networks) == {"value"}
    assert _touched(terms["loss_total"], networks) == {"policy", "value"}


def test_config_errors_name_the_field_the_expectation_and_the_value():
    with pytest.raises(ValueError, match=r"clip_range: expected > 0, got -0\.1"):
        ppo.Config(clip_range=-0.1)
    with pytest.raises(ValueError, match=r"n_steps: expected an integer >= 1, got 0"):
        ppo.Config(n_steps=0)
    with pytest.raises(ValueError, match=r"gae_lambda: expected in \[0, 1\], got 1\.5"):
        ppo.Config(gae_lambda=1.5)


# -- training ---------------------------------------------------------------------------------------------------

#: Short CartPole run: 4 envs x 128 steps x 8 iterations = 4096 env steps. CleanRL's CartPole settings except
#: the Adam step, 10x larger (2.5e-3) so that 4096 steps suffice.
SHORT_RUN = ppo.Config(n_steps=128, minibatches=4, epochs=4, learning_rate=2.5e-3, ent_coef=0.01,
                       anneal_learning_rate=True)


def _cartpole_setup(seed: int) -> TrainSetup:
    scenario, _ = load_scenario_arg("classic/cartpole")
    return TrainSetup(scenario=scenario, network=NetworkSpec(hidden=[32, 32], activation="tanh"), steps=4096,
                      envs=4, seed=seed, device=torch.device("cpu"), eval_every_steps=4096, eval_episodes=20)


def test_short_training_run_is_reproducible_and_beats_a_random_policy():
    first = ppo.train(_cartpole_setup(seed=3), SHORT_RUN)
    second = ppo.train(_cartpole_setup(seed=3), SHORT_RUN)
    assert first.env_steps == second.env_steps == 4096
    for (name, a), (_, b) in zip(first.policy.state_dict().items(), second.policy.state_dict().items(), strict=True):
        assert torch.equal(a, b), name

    # A uniform-random policy keeps CartPole up for about 22 steps on average. With these settings seeds
    # 0-5 reached 143-200 (deterministic evaluation, 20 episodes), so asserting >= 3x random and >= 80
    # leaves a wide margin while still failing for a policy that learned nothing (a constant push scores ~9).
    env = make_env(load_scenario_arg("classic/cartpole")[0])
    random_controller = RandomController(env.observation_space, env.action_space)
    seeds = np.random.SeedSequence(1234).generate_state(20)
    random_return = float(np.mean([rollout(env, random_controller, seed=int(s)).episode_return for s in seeds]))
    trained_return = first.evaluations[-1]["eval_return_mean"]
    assert trained_return >= max(80.0, 3 * random_return), (trained_return, random_return)
