"""A2PR (Liu et al. 2024) and its TD3+BC base (Fujimoto & Gu 2021): the advantage-guided target and mask, the VAE
loss counting only positive-advantage rows, the value target, TD3+BC's lambda = alpha / mean|Q| and A2PR's whole
actor loss with its gradient, all against hand-computed numbers; each loss trains only its own network; and the
fast demo on a Pendulum dataset recorded by the batch runner."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from safetybed.control.algorithms.common import frozen
from safetybed.suite.common.td3_bc import (
    TD3BCConfig,
    TransitionBatch,
    normalized_q_term,
    td3_bc_actor_terms,
    td3_critic_loss,
)
from safetybed.suite.offline_rl.a2pr import (
    A2PR,
    ENTRY,
    MARGIN,
    ActionVAE,
    Config,
    a2pr_actor_loss,
    a2pr_vae_loss,
    a2pr_value_loss,
    advantage_guided_targets,
    claim_verdict,
)
from safetybed.suite.registry import run_demo


def test_advantage_guided_targets_and_mask_by_hand():
    vae_actions = torch.tensor([[0.5], [0.5], [0.5]])
    dataset_actions = torch.tensor([[-1.0], [-1.0], [-1.0]])
    value = torch.tensor([0.0, 0.0, 0.0])
    q_vae = torch.tensor([1.0, -1.0, 0.0])   # A(a_hat) = 1, -1, 0
    q_data = torch.tensor([0.5, 2.0, -3.0])  # A(a) = 0.5, 2, -3
    guide = advantage_guided_targets(vae_actions, dataset_actions, q_vae, q_data, value, mask=2.0)
    assert guide["from_vae"].tolist() == [True, False, True]
    assert guide["targets"][:, 0].tolist() == [0.5, -1.0, 0.5]
    # weight = mask (1[Q(a_hat) >= V] + 1[Q(a) > V]): 2 (1 + 1), 2 (0 + 1), 2 (1 + 0)
    assert guide["weights"].tolist() == [4.0, 2.0, 2.0]
    # Ties go to the VAE's action (official: advantage_pi >= advantage_action); neither beating V: no regulariser.
    tie = advantage_guided_targets(vae_actions[:1], dataset_actions[:1], torch.tensor([-1.0]), torch.tensor([-1.0]),
                                   value[:1], mask=1.0)
    assert tie["from_vae"].tolist() == [True] and tie["weights"].tolist() == [0.0]


def test_vae_reconstruction_counts_only_positive_advantage_rows():
    vae = ActionVAE(2, 1, latent_dim=2, max_action=2.0, hidden=(8,), log_std_bounds=(-4.0, 15.0))
    states = torch.zeros(4, 2)
    actions = torch.tensor([[0.1], [0.2], [0.3], [0.4]], requires_grad=True)
    q_data, value = torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.zeros(4)
    terms = a2pr_vae_loss(states, actions, vae=vae, q_data=q_data, value=value, vae_weight=3.0, kl_weight=0.5,
                          generator=torch.Generator().manual_seed(0))
    reconstruction, _, _ = vae(states, actions, generator=torch.Generator().manual_seed(0))
    squared = (reconstruction - actions).square()[:, 0]
    # Rows 0 and 2 have A > 0; the mean divides by the whole batch (official code).
    assert terms["loss_recon"].item() == pytest.approx(3.0 * (squared[0] + squared[2]).item() / 4, rel=1e-6)
    assert terms["positive_fraction"].item() == 0.5
    assert terms["loss_vae"].item() == pytest.approx((terms["loss_recon"] + 0.5 * terms["loss_kl"]).item())
    # The negative-advantage rows do not move the reconstruction term at all.
    (grad,) = torch.autograd.grad(terms["loss_recon"], actions)
    assert grad[[1, 3]].abs().max().item() == 0.0 and grad[[0, 2]].abs().min().item() > 0.0


def test_value_target_is_the_smaller_of_two_td_targets():
    class FixedCritic(nn.Module):  # min(Q1, Q2)(s', a') = [1, -2]
        def forward(self, states, actions):
            return torch.tensor([1.0, 3.0]), torch.tensor([2.0, -2.0])

    batch = TransitionBatch(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([0.5, 0.5]), torch.zeros(2, 1),
                            torch.tensor([1.0, 0.0]))
    value = nn.Sequential(nn.Linear(1, 1), nn.Flatten(0))  # V(s), [B]
    terms = a2pr_value_loss(batch, value=value, critic=FixedCritic(), next_actions=torch.zeros(2, 1),
                            target_q=torch.tensor([0.0, 4.0]), discount=0.5)
    # Current critics: r + gamma (1 - d) min Q = [0.5 + 0.5, 0.5 + 0] = [1.0, 0.5]; min with target_q [0, 4].
    assert terms["value_target"].tolist() == [0.0, 0.5]


def test_td3_bc_lambda_normalises_the_q_term_by_hand():
    q = torch.tensor([2.0, -4.0], requires_grad=True)
    terms = normalized_q_term(q, alpha=2.5)
    assert terms["lambda"].item() == pytest.approx(2.5 / 3.0)
    assert terms["loss_q"].item() == pytest.approx(-2.5 / 3.0 * -1.0)
    terms["loss_q"].backward()
    assert q.grad.tolist() == pytest.approx([-2.5 / 3.0 / 2] * 2)  # the normaliser is held constant
    actor = td3_bc_actor_terms(torch.tensor([[0.0], [1.0]]), torch.tensor([1.0, 1.0]), torch.tensor([[1.0], [1.0]]),
                               alpha=1.0)
    assert actor["loss_bc"].item() == pytest.approx(0.5) and actor["loss_actor"].item() == pytest.approx(-0.5)


class _FixedActions(nn.Module):
    """pi(s) = a learnable [B, 1] table, whatever the state."""

    def __init__(self, actions: list[float]):
        super().__init__()
        self.table = nn.Parameter(torch.tensor(actions)[:, None])

    def forward(self, states):
        return self.table


class _ParabolaCritic(nn.Module):
    """Q_1(s, a) = -(a - 0.5)^2."""

    def first(self, states, actions):
        return -(actions[:, 0] - 0.5).square()


class _AffineVAE(nn.Module):
    """VAE(s, a) = 0.5 a + 0.2."""

    def forward(self, states, actions, *, generator):
        return 0.5 * actions + 0.2, None, None


@pytest.mark.parametrize(("through_vae", "expected_grad"), [(False, [-6.0, 5.3]), (True, [-6.0, 5.15])])
def test_a2pr_actor_loss_and_its_gradient_by_hand(through_vae, expected_grad):
    # pi = [0, 1]; a = [0.5, -1]; a_hat = 0.5 pi + 0.2 = [0.2, 0.7]; V = -0.3.
    # Q(pi) = [-0.25, -0.25] -> lambda = 2.5 / 0.25 = 10, loss_q = -10 * -0.25 = 2.5.
    # Row 0: A(a_hat) = -0.09 + 0.3 = 0.21 < A(a) = 0.3 -> a_tilde = a = 0.5, weight 1 + 1 = 2.
    # Row 1: A(a_hat) = -0.04 + 0.3 = 0.26 >= A(a) = -2.25 + 0.3 -> a_tilde = a_hat = 0.7, weight 1 + 0 = 1.
    # loss_bc = (2 * 0.5^2 + 1 * 0.3^2) / 2 = 0.295.
    actor = _FixedActions([0.0, 1.0])
    terms = a2pr_actor_loss(torch.zeros(2, 1), torch.tensor([[0.5], [-1.0]]), actor=actor, critic=_ParabolaCritic(),
                            vae=_AffineVAE(), value=torch.tensor([-0.3, -0.3]), alpha=2.5, mask=1.0,
                            generator=torch.Generator(), gradient_through_vae=through_vae)
    assert terms["lambda"].item() == pytest.approx(10.0)
    assert terms["loss_q"].item() == pytest.approx(2.5)
    assert terms["loss_bc"].item() == pytest.approx(0.295)
    assert terms["loss_actor"].item() == pytest.approx(2.795)
    assert terms["guide_from_vae"].item() == 0.5 and terms["guide_weight"].item() == 1.5
    # d loss_q / d pi_i = (lambda / B) 2 (pi_i - 0.5) = [-5, 5]; d loss_bc / d pi_i = w_i (pi_i - a_tilde_i) =
    # [-1, 0.3], times (1 - 0.5) on row 1 when the gradient also flows through a_hat = 0.5 pi + 0.2.
    terms["loss_actor"].backward()
    assert actor.table.grad[:, 0].tolist() == pytest.approx(expected_grad)


def _has_gradient(module: nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_each_loss_trains_only_its_own_network():
    g = torch.Generator().manual_seed(0)
    small = (8,)
    learner = A2PR(3, 1, max_action=1.0, config=Config(td3_bc=TD3BCConfig(hidden=small), vae_hidden=small,
                                                       value_hidden=small), generator=g)
    batch = TransitionBatch(torch.randn(16, 3, generator=g), torch.rand(16, 1, generator=g) * 2 - 1,
                            torch.randn(16, generator=g), torch.randn(16, 3, generator=g), torch.ones(16))
    networks = {"actor": learner.actor, "critic": learner.critic, "value": learner.value, "vae": learner.vae}

    def landed(loss: torch.Tensor) -> set[str]:
        for module in networks.values():
            module.zero_grad(set_to_none=True)
        loss.backward()
        return {name for name, module in networks.items() if _has_gradient(module)}

    critic = td3_critic_loss(batch, critic=learner.critic, critic_target=learner.critic_target,
                             actor_target=learner.actor_target, discount=0.99, policy_noise=0.2, noise_clip=0.5,
                             max_action=1.0, generator=g)
    assert landed(critic["loss_critic"]) == {"critic"}
    value = a2pr_value_loss(batch, value=learner.value, critic=learner.critic, next_actions=critic["next_actions"],
                            target_q=critic["target_q"], discount=0.99)
    assert landed(value["loss_value"]) == {"value"}
    q_data = learner.critic.first(batch.states, batch.actions).detach()
    vae = a2pr_vae_loss(batch.states, batch.actions, vae=learner.vae, q_data=q_data, value=q_data - 1.0,
                        vae_weight=1.0, kl_weight=0.5, generator=g)
    assert landed(vae["loss_vae"]) == {"vae"}
    with frozen(learner.critic, learner.vae):  # as A2PR.update builds it
        actor = a2pr_actor_loss(batch.states, batch.actions, actor=learner.actor, critic=learner.critic,
                                vae=learner.vae, value=q_data - 1.0, alpha=2.5, mask=1.0, generator=g)
    assert landed(actor["loss_actor"]) == {"actor"}
    # A whole update runs and reports every term; the actor steps every second update (TD3's delay).
    terms = learner.update(batch)
    assert {"loss_critic", "loss_value", "loss_vae", "loss_recon", "loss_kl"} <= set(terms)
    assert "loss_actor" not in terms and "loss_actor" in learner.update(batch)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mask: expected >= 0"):
        Config(mask=-1.0)
    with pytest.raises(ValueError, match="policy_delay: expected an integer >= 1"):
        TD3BCConfig(policy_delay=0)
    with pytest.raises(ValueError, match="latent_dim: expected None or an integer >= 1"):
        Config(latent_dim=0)


def test_verdict_follows_the_claims_thresholds():
    assert claim_verdict(MARGIN, -MARGIN) == "reproduced"
    assert claim_verdict(0.8, -0.36) == "partly"
    assert claim_verdict(0.0, -0.5) == "not reproduced"
    assert claim_verdict(0.5, None) == "partly" and claim_verdict(0.05, None) == "not reproduced"


def test_fast_demo_is_measured_on_testbed_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the dataset is recorded in ./runs/suite.sqlite
    result = run_demo(ENTRY, fast=True, seed=0)  # on one torch thread, as `safetybed suite run`
    assert (tmp_path / "runs" / "suite.sqlite").exists()
    assert result.name == "a2pr" and result.fast and result.seeds == (0,)
    assert {"mixed score", "mixed return"} <= set(result.measured) & set(result.baseline)
    gain = result.measured["mixed gain over TD3+BC"].mean
    assert math.isfinite(gain)
    assert gain == pytest.approx(result.measured["mixed score"].mean - result.baseline["mixed score"].mean)
    assert result.verdict == claim_verdict(gain, None)
    # At the fast budget (1.2k gradient steps) the critics are still poor and A2PR's weaker regulariser lets the
    # actor follow them: it is behind TD3+BC (seen on seeds 0-2 up to ~3k steps; the full demo's 6k overtake it).
    # The direction asserted is what is true here, with the claim's margin as the tolerance.
    assert gain < MARGIN
    assert result.verdict == "not reproduced"
