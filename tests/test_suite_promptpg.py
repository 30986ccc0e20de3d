"""PromptPG (Lu et al. 2023): the without-replacement pair log-probability against enumeration (and the sampler's
frequencies), the REINFORCE gradient's mean against the exact gradient of the expected reward on a tiny case, and
the fast demo's direction."""

from __future__ import annotations

import itertools

import pytest
import torch

from safetybed.control.algorithms.common import build_module
from safetybed.suite.prompt_opt.promptpg import (
    ENTRY,
    Config,
    PromptPolicy,
    pair_log_probability,
    reinforce_loss,
    sample_shots,
)
from safetybed.suite.registry import DemoResult, run_demo

PROBABILITIES = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
PAIRS = [pair for pair in itertools.permutations(range(4), 2)]
#: Monte Carlo checks fail with probability below ~1e-4 (a 4-standard-error band).
STANDARD_ERRORS = 4.0


def _enumerated_pair_probability(a, b):
    """Sequential draws: ``p_a`` then ``p_b`` renormalised over what is left."""
    p = PROBABILITIES[0]
    return float(p[a] * p[b] / (p.sum() - p[a]))


def test_pair_log_probability_matches_enumeration():
    shots = torch.tensor(PAIRS)
    log_probability = pair_log_probability(PROBABILITIES.expand(len(PAIRS), 4), shots)
    expected = torch.tensor([_enumerated_pair_probability(a, b) for a, b in PAIRS], dtype=torch.float64)
    assert torch.exp(log_probability) == pytest.approx(expected, abs=1e-12)
    assert float(torch.exp(log_probability).sum()) == pytest.approx(1.0, abs=1e-12)
    # the official surrogate is the product of first-draw probabilities: 0.4 * 0.3, not 0.4 * 0.3 / 0.6
    surrogate = pair_log_probability(PROBABILITIES, torch.tensor([[0, 1]]), exact=False)
    assert float(torch.exp(surrogate)) == pytest.approx(0.12, abs=1e-12)


def test_sampler_frequencies_match_the_pair_probabilities():
    n = 100_000
    g = torch.Generator().manual_seed(11)
    shots = sample_shots(PROBABILITIES.float().expand(n, 4), 2, generator=g)
    for a, b in PAIRS:
        p = _enumerated_pair_probability(a, b)
        frequency = float(((shots[:, 0] == a) & (shots[:, 1] == b)).double().mean())
        assert abs(frequency - p) < STANDARD_ERRORS * (p * (1 - p) / n) ** 0.5


def test_reinforce_gradient_mean_is_the_exact_gradient():
    policy = build_module(lambda: PromptPolicy(3, 2), device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(5)).double()
    problem = torch.tensor([[0.5, -1.0, 0.3]], dtype=torch.float64)
    candidates = torch.tensor([[1.0, 0.2, -0.5], [-0.3, 0.8, 0.1], [0.4, 0.4, 0.9], [-1.0, -0.2, 0.6]],
                              dtype=torch.float64)
    reward = {pair: (1.0 if (pair[0] + 2 * pair[1]) % 3 == 0 else -1.0) for pair in PAIRS}

    def gradient(objective):
        policy.zero_grad()
        objective.backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters()]).clone()

    # exact: d/dtheta sum_pairs P(pair) r(pair), P by enumeration of the sequential draws
    probabilities = policy(problem, candidates)[0]
    expected_reward = sum(probabilities[a] * probabilities[b] / (1 - probabilities[a]) * reward[(a, b)]
                          for a, b in PAIRS)
    exact = gradient(expected_reward)

    def estimator_mean(exact_log_probability):
        mean = torch.zeros_like(exact)
        for pair in PAIRS:
            probabilities = policy(problem, candidates)
            weight = float(torch.exp(pair_log_probability(probabilities.detach(), torch.tensor([pair]))))
            loss = reinforce_loss(probabilities, torch.tensor([pair]), torch.tensor([reward[pair]]),
                                  exact=exact_log_probability)["loss_policy"]
            mean += weight * gradient(-loss)  # the ascent direction of one sampled pair
        return mean

    assert estimator_mean(True) == pytest.approx(exact, abs=1e-10)
    # the official sum-of-log-softmax surrogate is biased on this case
    assert float((estimator_mean(False) - exact).abs().max()) > 1e-3


def test_reinforce_loss_refuses_other_rewards_and_config_checks():
    with pytest.raises(ValueError, match="rewards"):
        reinforce_loss(PROBABILITIES, torch.tensor([[0, 1]]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="shot_number"):
        Config(shot_number=11)


def test_fast_demo_direction():
    result = run_demo(ENTRY, fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.name == "promptpg" and result.fast
    # the learned selection beats random shots and its own untrained start (0.05 slack each)
    assert result.measured["accuracy"].mean > result.baseline["accuracy"].mean + 0.05
    assert result.measured["accuracy"].mean > result.baseline["accuracy_untrained_policy"].mean + 0.05
    assert result.measured["accuracy"].mean <= result.baseline["oracle_accuracy"].mean + 1e-9
