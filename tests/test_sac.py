"""SAC baseline: gradient isolation, the soft Q loss by hand, Polyak targets, a seeded run.

The reference for the hand computations is Haarnoja et al. 2018, "Soft Actor-Critic Algorithms and
Applications" (arXiv 1812.05905), §4.2 and §5, with clipped double-Q (Fujimoto et al. 2018).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safetybed.control.algorithms import sac
from safetybed.control.algorithms.replay import Batch
from safetybed.control.networks import PolicyArch
from safetybed.control.training import TrainSetup
from safetybed.spec.catalogue import load_scenario_arg
from safetybed.spec.controller import NetworkSpec

OBS_DIM, ACT_DIM, BATCH = 3, 2, 16
ARCH = PolicyArch(kind="tanh_gaussian", obs_dim=OBS_DIM, act_dim=ACT_DIM, hidden=(16, 16), activation="relu",
                  action_low=(-2.0, -1.0), action_high=(2.0, 1.0))


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One intra-op thread for these tiny networks, restored afterwards.

    They gain nothing from more, and on a loaded 2-core machine OpenMP's spin-waiting made the short
    training runs about 50 times slower (150 s instead of 2 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_agent(seed: int = 0, *, dtype: torch.dtype = torch.float32, **overrides) -> sac.SAC:
    generator = torch.Generator()
    generator.manual_seed(seed)
    init = torch.Generator()
    init.manual_seed(seed + 1)
    agent = sac.SAC(ARCH, sac.Config(**overrides), device=torch.device("cpu"), generator=generator,
                    init_generator=init)
    for module in (agent.actor, agent.critic1, agent.critic2, agent.critic1_target, agent.critic2_target):
        module.to(dtype)
    return agent


def make_batch(seed: int = 0, *, dtype: torch.dtype = torch.float32) -> Batch:
    generator = torch.Generator()
    generator.manual_seed(1000 + seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=dtype)

    action = torch.rand((BATCH, ACT_DIM), generator=generator, dtype=dtype) * 2 - 1
    done = (torch.arange(BATCH) % 4 == 0).to(dtype)
    return Batch(obs=normal(BATCH, OBS_DIM), action=action, reward=normal(BATCH), next_obs=normal(BATCH, OBS_DIM),
                 done=done)


def groups(agent: sac.SAC) -> dict[str, list[torch.Tensor]]:
    return {"actor": list(agent.actor.parameters()), "critic1": list(agent.critic1.parameters()),
            "critic2": list(agent.critic2.parameters()), "critic1_target": list(agent.critic1_target.parameters()),
            "critic2_target": list(agent.critic2_target.parameters()), "log_alpha": [agent.log_alpha]}


def reached_by(agent: sac.SAC, loss_fn) -> set[str]:
    """Parameter groups a loss's gradient reaches (targets are made to require grad, to expose leaks)."""
    for params in groups(agent).values():
        for p in params:
            p.requires_grad_(True)
            p.grad = None
    loss_fn().backward()
    return {name for name, params in groups(agent).items()
            if any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)}


def test_each_loss_reaches_only_its_own_network():
    agent = make_agent()
    batch = make_batch()
    assert reached_by(agent, lambda: agent.critic_loss(batch)["loss_critic"]) == {"critic1", "critic2"}
    assert reached_by(agent, lambda: agent.critic_loss(batch)["loss_critic_1"]) == {"critic1"}
    assert reached_by(agent, lambda: agent.actor_loss(batch.obs)["loss_actor"]) == {"actor"}
    assert all(p.requires_grad for p in agent.critic2.parameters())  # the freeze is undone

    def alpha_loss() -> torch.Tensor:  # log-probabilities that still carry the actor's graph
        return agent.alpha_loss(agent.actor.sample(batch.obs, generator=agent.generator)[1])

    assert reached_by(agent, alpha_loss) == {"log_alpha"}


def test_critic_loss_matches_hand_computation():
    dtype = torch.float64
    agent = make_agent(dtype=dtype, gamma=0.9, init_log_alpha=-0.5)
    with torch.no_grad():  # online critics differ from their targets, so using the wrong copy would show
        for p in [*agent.critic1.parameters(), *agent.critic2.parameters()]:
            p.mul_(1.5)
    batch = make_batch(dtype=dtype)
    replay = torch.Generator()
    replay.set_state(agent.generator.get_state())
    terms = agent.critic_loss(batch)
    with torch.no_grad():
        next_action, next_log_prob = agent.actor.sample(batch.next_obs, generator=replay)
        q_next = torch.minimum(agent.critic1_target(batch.next_obs, next_action)[:, 0],
                               agent.critic2_target(batch.next_obs, next_action)[:, 0])
        y = batch.reward + 0.9 * (1 - batch.done) * (q_next - math.exp(-0.5) * next_log_prob)
        expected = [0.5 * ((critic(batch.obs, batch.action)[:, 0] - y) ** 2).mean()
                    for critic in (agent.critic1, agent.critic2)]
    torch.testing.assert_close(terms["loss_critic_1"], expected[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["loss_critic_2"], expected[1], rtol=1e-6, atol=1e-6)


def test_targets_follow_by_polyak_every_update():
    tau = 0.1
    agent = make_agent(tau=tau)
    for step in range(2):
        before = [torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])
                  for module in (agent.critic1_target, agent.critic2_target)]
        terms = agent.update(make_batch(step))
        for target, online, old in zip((agent.critic1_target, agent.critic2_target), (agent.critic1, agent.critic2),
                                       before, strict=True):
            now = torch.cat([p.detach().reshape(-1) for p in target.parameters()])
            fresh = torch.cat([p.detach().reshape(-1) for p in online.parameters()])
            torch.testing.assert_close(now, (1 - tau) * old + tau * fresh)
    assert {"loss_critic", "loss_critic_1", "loss_critic_2", "loss_actor", "loss_alpha", "alpha", "entropy",
            "q_mean"} <= set(terms)


def test_config_errors_name_field_expected_and_given():
    with pytest.raises(ValueError, match=r"tau: expected in \(0, 1\], got 1.5"):
        sac.Config(tau=1.5)
    with pytest.raises(ValueError, match=r"batch_size: expected an integer >= 1, got 0"):
        sac.Config(batch_size=0)


def short_run(seed: int):
    scenario, _ = load_scenario_arg("classic/pendulum")
    setup = TrainSetup(scenario=scenario, network=NetworkSpec(hidden=[32, 32]), steps=300, envs=1, seed=seed,
                       device=torch.device("cpu"), eval_every_steps=150, eval_episodes=2)
    return setup, sac.train(setup, sac.Config(learning_starts=150, batch_size=32))


def test_train_smoke_is_finite_logs_rows_and_is_reproducible():
    setup, result = short_run(seed=5)
    assert (result.env_steps, result.updates) == (300, 150)
    rows = setup.logger.rows
    assert [row["env_steps"] for row in rows] == [150.0, 300.0]
    assert math.isnan(rows[0]["loss_critic"])  # no update before learning_starts; the column exists anyway
    assert all(math.isfinite(rows[-1][key]) for key in ("eval_return_mean", "loss_critic", "loss_actor", "alpha"))
    action = result.policy(torch.zeros(4, 3)).detach().numpy()
    assert np.isfinite(action).all() and (np.abs(action) <= 2.0).all()

    _, again = short_run(seed=5)
    assert all(torch.equal(a, b) for a, b in zip(result.policy.state_dict().values(),
                                                 again.policy.state_dict().values(), strict=True))
    assert [row["eval_return_mean"] for row in setup.evaluations] == [row["eval_return_mean"]
                                                                      for row in again.evaluations]
