"""DSAC-T: analytic oracles for the critic loss, gradient isolation, b_bar, delayed targets, a seeded run.

The reference for every hand computation is the paper-form loss of Duan et al. 2025 (arXiv 2310.05858),
as written in ``research/centaur_dsac.md`` §2.2-2.4 and the official ``dsac.py`` (DSAC-v2 at 4707a52).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from safetybed.control.algorithms import check_hyper, dsac_t
from safetybed.control.algorithms.replay import Batch
from safetybed.control.networks import PolicyArch
from safetybed.control.training import TrainSetup
from safetybed.spec.catalogue import load_scenario_arg
from safetybed.spec.controller import NetworkSpec, load_controller_spec

from .conftest import REPO_ROOT

OBS_DIM, ACT_DIM, BATCH = 3, 2, 16
ARCH = PolicyArch(kind="tanh_gaussian", obs_dim=OBS_DIM, act_dim=ACT_DIM, hidden=(16, 16), activation="relu",
                  action_low=(-2.0, -1.0), action_high=(2.0, 1.0), log_std_max=0.5)


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


def make_agent(seed: int = 0, *, dtype: torch.dtype = torch.float32, **overrides) -> dsac_t.DSACT:
    generator = torch.Generator()
    generator.manual_seed(seed)
    init = torch.Generator()
    init.manual_seed(seed + 1)
    agent = dsac_t.DSACT(ARCH, dsac_t.Config(**overrides), device=torch.device("cpu"), generator=generator,
                         init_generator=init)
    if dtype != torch.float32:
        for module in (agent.actor, agent.actor_target, agent.critic1, agent.critic2, agent.critic1_target,
                       agent.critic2_target):
            module.to(dtype)
    return agent


def make_batch(seed: int = 0, *, dtype: torch.dtype = torch.float32, reward_scale: float = 5.0) -> Batch:
    generator = torch.Generator()
    generator.manual_seed(1000 + seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=dtype)

    action = torch.rand((BATCH, ACT_DIM), generator=generator, dtype=dtype) * 2 - 1
    done = (torch.arange(BATCH) % 4 == 0).to(dtype)  # some terminal transitions
    return Batch(obs=normal(BATCH, OBS_DIM), action=action, reward=reward_scale * normal(BATCH),
                 next_obs=normal(BATCH, OBS_DIM), done=done)


def desynchronise(agent: dsac_t.DSACT, seed: int = 7) -> None:
    """Move the online networks away from their targets, so a loss that used the wrong copy would show."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    with torch.no_grad():
        for module in (agent.actor, agent.critic1, agent.critic2):
            for p in module.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def groups(agent: dsac_t.DSACT) -> dict[str, list[torch.Tensor]]:
    return {"actor": list(agent.actor.parameters()), "actor_target": list(agent.actor_target.parameters()),
            "critic1": list(agent.critic1.parameters()), "critic2": list(agent.critic2.parameters()),
            "critic1_target": list(agent.critic1_target.parameters()),
            "critic2_target": list(agent.critic2_target.parameters()), "log_alpha": [agent.log_alpha]}


def reached_by(agent: dsac_t.DSACT, loss_fn) -> set[str]:
    """Names of the parameter groups a loss's gradient reaches.

    Every parameter (targets included) is made to require grad first, so a missing ``no_grad`` or a
    missing freeze in the loss would show up as a gradient.
    """
    for params in groups(agent).values():
        for p in params:
            p.requires_grad_(True)
            p.grad = None
    loss_fn().backward()
    return {name for name, params in groups(agent).items()
            if any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)}


# -- (a) each loss reaches only its own network ------------------------------------------------------------------
def test_critic_loss_gradient_reaches_only_the_online_critics():
    agent = make_agent()
    batch = make_batch()
    assert reached_by(agent, lambda: agent.critic_loss(batch)["loss_critic"]) == {"critic1", "critic2"}
    assert reached_by(agent, lambda: agent.critic_loss(batch)["loss_critic_1"]) == {"critic1"}
    assert reached_by(agent, lambda: agent.critic_loss(batch)["loss_critic_2"]) == {"critic2"}


def test_actor_loss_gradient_reaches_only_the_actor():
    agent = make_agent()
    batch = make_batch()
    assert reached_by(agent, lambda: agent.actor_loss(batch.obs)["loss_actor"]) == {"actor"}
    # The freeze is undone afterwards: the critics train again.
    assert all(p.requires_grad for p in agent.critic1.parameters())


def test_alpha_loss_gradient_reaches_only_log_alpha():
    agent = make_agent()
    batch = make_batch()
    # A log-probability that still carries the actor's graph: the loss must not send gradient through it.
    def loss() -> torch.Tensor:
        return agent.alpha_loss(agent.actor.sample(batch.obs, generator=agent.generator)[1])

    assert reached_by(agent, loss) == {"log_alpha"}


# -- (b) the critic loss equals the paper formula, computed by hand ------------------------------------------------
def test_critic_loss_matches_hand_computation():
    dtype = torch.float64
    agent = make_agent(dtype=dtype, gamma=0.9, epsilon=0.1, clip_xi=3.0, z_clamp=1.0)
    desynchronise(agent)
    batch = make_batch(dtype=dtype)
    alpha = math.exp(1.0)  # log alpha starts at 1.0 (official code)
    assert float(agent.alpha) == pytest.approx(alpha)
    replay = torch.Generator()
    replay.set_state(agent.generator.get_state())
    with torch.no_grad():  # fix target critic 2's mean at the median of target critic 1's: both twins get picked
        peek = torch.Generator()
        peek.set_state(agent.generator.get_state())
        next_action, _ = agent.actor_target.sample(batch.next_obs, generator=peek)
        head = agent.critic2_target.net[-1]
        head.weight[0].zero_()
        head.bias[0] = agent.critic1_target(batch.next_obs, next_action)[:, 0].median()

    terms = agent.critic_loss(batch)

    with torch.no_grad():
        # Same draws in the documented order: target-policy noise, z_hat for critic 1, z_hat for critic 2.
        next_action, next_log_prob = agent.actor_target.sample(batch.next_obs, generator=replay)
        z_1 = torch.randn(BATCH, generator=replay, dtype=dtype).clamp(-1.0, 1.0)
        z_2 = torch.randn(BATCH, generator=replay, dtype=dtype).clamp(-1.0, 1.0)
        assert (z_1.abs() == 1.0).any() or (z_2.abs() == 1.0).any()  # the clamp is exercised
        out_1 = agent.critic1_target(batch.next_obs, next_action)
        out_2 = agent.critic2_target(batch.next_obs, next_action)
        qbar_1, sbar_1 = out_1[:, 0], F.softplus(out_1[:, 1])
        qbar_2, sbar_2 = out_2[:, 0], F.softplus(out_2[:, 1])
        pick_1 = qbar_1 < qbar_2
        assert pick_1.any() and (~pick_1).any()  # both branches of the twin selection occur
        z_next = torch.where(pick_1, qbar_1 + z_1 * sbar_1, qbar_2 + z_2 * sbar_2)
        q_next = torch.minimum(qbar_1, qbar_2)
        y_q = batch.reward + 0.9 * (1 - batch.done) * (q_next - alpha * next_log_prob)
        y_z = batch.reward + 0.9 * (1 - batch.done) * (z_next - alpha * next_log_prob)

        expected, clipped_any = [], False
        for critic in (agent.critic1, agent.critic2):
            out = critic(batch.obs, batch.action)
            q, sigma = out[:, 0], F.softplus(out[:, 1])
            b = sigma.mean()  # first batch: b_bar starts at the batch mean of sigma
            y_clip = q + torch.clamp(y_z - q, -3 * b, 3 * b)
            clipped_any |= bool((y_clip != y_z).any())
            per_sample = (-(y_q - q) / (sigma**2 + 0.1) * q - ((q - y_clip) ** 2 - sigma**2) / (sigma**3 + 0.1) * sigma)
            expected.append((b**2 + 0.1) * per_sample.mean())
    assert clipped_any  # the 3 b_bar clip is active on this batch

    torch.testing.assert_close(terms["loss_critic_1"], expected[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["loss_critic_2"], expected[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms["loss_critic"], expected[0] + expected[1], rtol=1e-6, atol=1e-6)


def test_critic_gradient_matches_the_dsac_t_gradient():
    """d L / d Q_j and d L / d sigma_j, read off the output layer's bias, equal the paper's gradient."""
    dtype = torch.float64
    agent = make_agent(dtype=dtype)
    desynchronise(agent)
    batch = make_batch(dtype=dtype)
    replay = torch.Generator()
    replay.set_state(agent.generator.get_state())
    agent.critic1.zero_grad()
    agent.critic_loss(batch)["loss_critic_1"].backward()

    with torch.no_grad():
        next_action, next_log_prob = agent.actor_target.sample(batch.next_obs, generator=replay)
        z_1 = torch.randn(BATCH, generator=replay, dtype=dtype).clamp(-3, 3)
        z_2 = torch.randn(BATCH, generator=replay, dtype=dtype).clamp(-3, 3)
        out_1 = agent.critic1_target(batch.next_obs, next_action)
        out_2 = agent.critic2_target(batch.next_obs, next_action)
        qbar_1, qbar_2 = out_1[:, 0], out_2[:, 0]
        z_next = torch.where(qbar_1 < qbar_2, qbar_1 + z_1 * F.softplus(out_1[:, 1]),
                             qbar_2 + z_2 * F.softplus(out_2[:, 1]))
        alpha = math.exp(1.0)
        y_q = batch.reward + 0.99 * (1 - batch.done) * (torch.minimum(qbar_1, qbar_2) - alpha * next_log_prob)
        y_z = batch.reward + 0.99 * (1 - batch.done) * (z_next - alpha * next_log_prob)
        out = agent.critic1(batch.obs, batch.action)
        q, raw = out[:, 0], out[:, 1]
        sigma = F.softplus(raw)
        b = sigma.mean()
        y_clip = q + torch.clamp(y_z - q, -3 * b, 3 * b)
        omega = (b**2 + 0.1) / BATCH
        grad_q = omega * -(y_q - q) / (sigma**2 + 0.1)
        grad_sigma = omega * -((y_clip - q) ** 2 - sigma**2) / (sigma**3 + 0.1)
        expected_bias_grad = torch.stack([grad_q.sum(), (grad_sigma * torch.sigmoid(raw)).sum()])
    torch.testing.assert_close(agent.critic1.net[-1].bias.grad, expected_bias_grad, rtol=1e-6, atol=1e-9)


# -- (c) b_bar: initial value and moving average ---------------------------------------------------------------
def test_b_bar_starts_at_first_batch_mean_then_moves_with_tau_b():
    agent = make_agent(tau_b=0.1)
    first, second = make_batch(0), make_batch(1)

    def sigma_means(batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([F.softplus(critic(batch.obs, batch.action)[:, 1]).mean()
                                for critic in (agent.critic1, agent.critic2)])

    assert not agent.b_bar_initialised
    expected = sigma_means(first)
    terms = agent.critic_loss(first)
    torch.testing.assert_close(agent.b_bar, expected)
    torch.testing.assert_close(torch.stack([terms["b_bar_1"], terms["b_bar_2"]]), expected)

    expected = 0.9 * expected + 0.1 * sigma_means(second)
    terms_second = agent.critic_loss(second)
    torch.testing.assert_close(agent.b_bar, expected)
    torch.testing.assert_close(torch.stack([terms_second["b_bar_1"], terms_second["b_bar_2"]]), expected)
    assert not torch.equal(terms["b_bar_1"], terms_second["b_bar_1"])  # earlier values are not overwritten


# -- (d) the clip boundary is xi * b_bar, not xi * sigma ---------------------------------------------------------
@pytest.mark.parametrize(("sigma", "b_bar", "clipped_target"), [
    (0.1, 1.0, 1.0),  # per-sample bound 0.3 would clip y_z = 1; the b_bar bound 3 does not
    (5.0, 0.1, 0.3),  # per-sample bound 15 would not clip; the b_bar bound 0.3 does
])
def test_clip_boundary_uses_b_bar(sigma: float, b_bar: float, clipped_target: float):
    agent = make_agent(dtype=torch.float64)
    q = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    std = torch.full((1,), sigma, dtype=torch.float64, requires_grad=True)
    y_q = torch.zeros(1, dtype=torch.float64)
    y_z = torch.ones(1, dtype=torch.float64)
    loss = agent.variance_adjusted_loss(q, std, y_q, y_z, torch.tensor(b_bar, dtype=torch.float64))
    loss.backward()
    eps = 0.1
    expected = (b_bar**2 + eps) * -((clipped_target - 0.0) ** 2 - sigma**2) / (sigma**3 + eps)
    assert std.grad.item() == pytest.approx(expected, rel=1e-12)


# -- (e) targets move only on delayed iterations, by Polyak averaging with tau ------------------------------------
def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


def test_targets_and_target_policy_move_only_on_delayed_steps():
    tau = 0.1
    agent = make_agent(tau=tau, delay_update=2)
    pairs = [("actor", "actor_target"), ("critic1", "critic1_target"), ("critic2", "critic2_target")]
    for step in range(4):
        before = {name: flat(getattr(agent, name)) for pair in pairs for name in pair}
        log_alpha_before = agent.log_alpha.detach().clone()
        terms = agent.update(make_batch(step))
        after = {name: flat(getattr(agent, name)) for pair in pairs for name in pair}
        delayed = step % 2 == 0
        assert not torch.equal(after["critic1"], before["critic1"])  # critics step every iteration
        assert ("loss_actor" in terms) == delayed and ("loss_alpha" in terms) == delayed
        assert ("entropy" in terms) == delayed
        assert torch.equal(after["actor"], before["actor"]) != delayed
        assert torch.equal(agent.log_alpha.detach(), log_alpha_before) != delayed
        for online, target in pairs:
            if delayed:
                torch.testing.assert_close(after[target], (1 - tau) * before[target] + tau * after[online])
            else:
                assert torch.equal(after[target], before[target])
    required = {"loss_critic", "loss_critic_1", "loss_critic_2", "alpha", "q_mean", "sigma_mean", "b_bar_1",
                "b_bar_2"}
    assert required <= set(terms)
    assert all(not value.requires_grad for value in terms.values())


def test_target_policy_off_bootstraps_with_the_online_policy():
    batch = make_batch()
    online, paper, copied = (make_agent(target_policy=flag) for flag in (False, True, True))
    for agent in (online, paper, copied):
        desynchronise(agent)  # the online actor moves away from the target policy
    copied.actor_target.load_state_dict(copied.actor.state_dict())
    targets = [agent.critic_loss(batch)["target_q_mean"] for agent in (online, paper, copied)]
    assert torch.equal(targets[0], targets[2]) and not torch.equal(targets[0], targets[1])


def test_config_errors_name_field_expected_and_given():
    with pytest.raises(ValueError, match=r"tau_b: expected in \(0, 1\], got 0"):
        dsac_t.Config(tau_b=0)
    with pytest.raises(ValueError, match=r"delay_update: expected an integer >= 1, got 0"):
        dsac_t.Config(delay_update=0)
    with pytest.raises(ValueError, match=r"epsilon: expected > 0, got -0.1"):
        dsac_t.Config(epsilon=-0.1)
    assert dataclasses.is_dataclass(dsac_t.Config) and dsac_t.Config().epsilon == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        dsac_t.Config().gamma = 0.5  # type: ignore[misc]


# -- (f) a short seeded training run ---------------------------------------------------------------------------
def short_run(seed: int):
    scenario, _ = load_scenario_arg("classic/pendulum")
    setup = TrainSetup(scenario=scenario, network=NetworkSpec(hidden=[32, 32], activation="gelu"), steps=300,
                       envs=2, seed=seed, device=torch.device("cpu"), eval_every_steps=150, eval_episodes=2)
    config = dsac_t.Config(learning_starts=100, env_steps_per_round=2, updates_per_round=1, batch_size=32)
    return setup, dsac_t.train(setup, config)


def test_train_smoke_is_finite_logs_rows_and_is_reproducible():
    setup, result = short_run(seed=3)
    assert result.env_steps == 300
    assert result.updates == 100  # (300 - 100) steps / 2 steps per round
    rows = setup.logger.rows
    assert [row["env_steps"] for row in rows] == [150.0, 300.0]
    for key in ("eval_return_mean", "loss_critic", "loss_actor", "loss_alpha", "alpha", "sigma_mean", "b_bar_1"):
        assert all(math.isfinite(row[key]) for row in rows), key
    assert all(-200 * 16.3 <= row["eval_return_mean"] <= 0 for row in rows)  # Pendulum's return range
    assert all(torch.isfinite(p).all() for p in result.policy.parameters())
    action = result.policy(torch.zeros(4, 3)).detach().numpy()
    assert np.isfinite(action).all() and (np.abs(action) <= 2.0).all()

    setup_again, again = short_run(seed=3)
    def without_time(logged: list[dict]) -> list[dict]:
        return [{key: value for key, value in row.items() if key != "wall_time_s"} for row in logged]

    assert without_time(setup_again.logger.rows) == without_time(rows)
    for (name, value), (_, other) in zip(result.policy.state_dict().items(), again.policy.state_dict().items(),
                                         strict=True):
        assert torch.equal(value, other), name
    _, different = short_run(seed=4)
    assert not torch.equal(flat(different.policy), flat(result.policy))


def test_controller_spec_builds_the_config():
    loaded = load_controller_spec(REPO_ROOT / "controllers" / "pendulum_dsac_t.toml")
    assert loaded.spec.algorithm == "dsac_t" and loaded.spec.checkpoint == "weights/pendulum_dsac_t"
    assert isinstance(check_hyper(loaded.spec, source=loaded.path), dsac_t.Config)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_update_runs_on_cuda_without_a_host_sync():
    generator = torch.Generator(device="cuda")
    generator.manual_seed(0)
    init = torch.Generator()
    init.manual_seed(1)
    batch = Batch(*(tensor.cuda() for tensor in make_batch()))
    for fused in (False, True):
        agent = dsac_t.DSACT(ARCH, dsac_t.Config(fused_critics=fused), device=torch.device("cuda"),
                             generator=generator, init_generator=init)
        agent.update(batch)  # the first update initialises b_bar and the optimisers' state
        torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation inside an update raises
        try:
            for _ in range(3):
                terms = agent.update(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert all(value.device.type == "cuda" and torch.isfinite(value) for value in terms.values())


# -- (g) fused twin critics: the same algorithm, one batched matmul per layer ---------------------------------------
def fused_pair(dtype: torch.dtype = torch.float64) -> tuple[dsac_t.DSACT, dsac_t.DSACT]:
    separate, fused = make_agent(dtype=dtype), make_agent(fused_critics=True)
    if dtype != torch.float32:
        for module in (fused.actor, fused.actor_target, fused.twin, fused.twin_target):
            module.to(dtype)
    return separate, fused


def test_fused_critics_start_equal_and_update_like_two_separate_critics():
    separate, fused = fused_pair()
    for index, critic in enumerate((separate.critic1, separate.critic2)):
        linears = [layer for layer in critic.net if isinstance(layer, torch.nn.Linear)]
        for layer, weight, bias in zip(linears, fused.twin.weights, fused.twin.biases, strict=True):
            assert torch.equal(weight[index], layer.weight.T) and torch.equal(bias[index, 0], layer.bias)
    batches = [make_batch(seed, dtype=torch.float64) for seed in range(5)]
    for batch in batches:  # five iterations: delayed actor, temperature and target updates included
        a, b = separate.update(batch), fused.update(batch)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.allclose(a[name], b[name], rtol=1e-9, atol=1e-12), name
    obs, action = batches[0].obs, batches[0].action
    for which in ("online", "target"):
        (q_a, _), (s_a, _) = separate._distributions(which, obs, action)
        (q_b, _), (s_b, _) = fused._distributions(which, obs, action)
        assert torch.allclose(q_a, q_b, rtol=1e-9, atol=1e-12) and torch.allclose(s_a, s_b, rtol=1e-9, atol=1e-12)
    assert torch.allclose(flat(separate.actor), flat(fused.actor), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(flat(separate.actor), flat(make_agent(dtype=torch.float64).actor))  # it moved


def test_fused_critic_losses_reach_only_their_own_member():
    _, fused = fused_pair(torch.float32)
    batch = make_batch()
    for params in (*fused.twin.parameters(), *fused.twin_target.parameters()):
        params.requires_grad_(True)
    for term, member in (("loss_critic_1", 0), ("loss_critic_2", 1)):
        fused.twin.zero_grad(set_to_none=True)
        fused.twin_target.zero_grad(set_to_none=True)
        fused.critic_loss(batch)[term].backward()
        for weight in fused.twin.weights:
            assert weight.grad[member].abs().sum() > 0 and weight.grad[1 - member].abs().sum() == 0
        assert all(p.grad is None for p in fused.twin_target.parameters())
    fused.twin.zero_grad(set_to_none=True)
    fused.actor_loss(batch.obs)["loss_actor"].backward()
    assert all(p.grad is None for p in fused.twin.parameters())  # frozen while the actor learns
    with pytest.raises(ValueError, match=r"expected \[batch, dim\]"):
        fused.twin(torch.zeros(2, 3, OBS_DIM), torch.zeros(2, 3, ACT_DIM))


# -- bench statistics ------------------------------------------------------------------------------------------
def test_bench_t_interval_matches_reference():
    from safetybed.control.bench_train import mean_t_interval

    # t_{0.975, 2} = 4.302652729911275 (scipy.stats.t.ppf(0.975, 2)); s = 1 for [1, 2, 3].
    interval = mean_t_interval([1.0, 2.0, 3.0])
    assert interval.mean == pytest.approx(2.0)
    assert interval.half_width == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)
    assert interval.n == 3 and interval.confidence == 0.95
