"""1-shot RLVR (Wang et al. 2025): the historical-variance score on a hand-built history, the entropy bonus's
gradient on a softmax against the analytic one, and the fast demo's well-formed, honest result."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safetybed.suite.lm_data.one_shot import (
    ENTRY,
    Config,
    historical_variance_scores,
    one_shot_loss,
    select_example,
)
from safetybed.suite.registry import DemoResult

# Four examples' training accuracy over four epochs (hand-built).
HISTORY = np.array([[0.0, 0.0, 0.0, 0.0],
                    [0.0, 1.0, 0.0, 1.0],
                    [0.5, 0.5, 1.0, 1.0],
                    [1.0, 1.0, 1.0, 1.0]])


def test_historical_variance_score_by_hand():
    """std (population, as the official np.std): 0, 0.5, 0.25, 0 -> example 1. 'lim': epoch means
    (0.375, 0.625, 0.5, 0.75), Σ(1 - mean)² = 0.84375; example 3 scores 1 - 0.84375 / 0.84375 = 0, example 0 scores
    1 - (0.375² + 0.625² + 0.5² + 0.75²) / 0.84375 = 1 - 1.34375 / 0.84375."""
    np.testing.assert_allclose(historical_variance_scores(HISTORY), [0.0, 0.5, 0.25, 0.0], atol=1e-12)
    assert select_example(HISTORY) == 1
    lim = historical_variance_scores(HISTORY, method="lim")
    assert lim[3] == pytest.approx(0.0, abs=1e-12)
    assert lim[0] == pytest.approx(1 - 1.34375 / 0.84375)
    # example 1: Σ(a - mean)² = 0.375² + 0.375² + 0.5² + 0.25² = 0.59375
    assert lim[1] == pytest.approx(1 - 0.59375 / 0.84375)
    with pytest.raises(ValueError, match="method"):
        historical_variance_scores(HISTORY, method="variance")


def test_entropy_gradient_on_a_softmax_is_analytic():
    """loss_entropy = -c · mean H(softmax(z)); dH/dz_k = -p_k (log p_k + H), so d loss / dz_k = c p_k (log p_k + H)
    / (number of tokens). The policy-gradient term is off (the entropy-only ablation)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 2, 10, generator=generator, requires_grad=True)
    log_p = torch.log_softmax(logits, dim=-1)
    entropies = -(log_p.exp() * log_p).sum(-1)  # what TinyGRUPolicy.token_log_probs returns
    chosen = log_p[..., 0]
    coef = 1e-3
    terms = one_shot_loss(chosen, entropies, torch.ones(6), group_size=3, entropy_coef=coef, policy_gradient=False)
    terms["loss"].backward()
    with torch.no_grad():
        p = log_p.exp()
        h = -(p * log_p).sum(-1, keepdim=True)
        expected = coef * p * (log_p + h) / entropies.numel()
    torch.testing.assert_close(logits.grad, expected, rtol=1e-4, atol=1e-10)  # the grads are ~1e-5: tight atol
    assert float(terms["loss_policy"]) == 0.0


def test_config_checks():
    with pytest.raises(ValueError, match="pool_size"):
        Config(pool_size=100, copies_per_step=16)


def test_fast_demo_reports_what_it_measured():
    """Seed 0. On this tiny model the effect is not expected to appear (suite.md §5), so the test checks what holds:
    the one example is fitted better than the full-set run fits its pool (final batch accuracy), the verdict follows the stated checks, and the
    selected example has the highest std in the history."""
    result = ENTRY.demo(fast=True, seed=0)
    assert isinstance(result, DemoResult) and result.name == "one-shot-rlvr"
    assert result.measured["final_train_accuracy"].mean > result.baseline["final_train_accuracy"].mean
    checks = result.settings["checks"]
    expected = ("reproduced" if all(checks.values()) else
                "partly" if checks["1-shot gain >= 0.02"] or checks["post-saturation gain > 0"] else
                "not reproduced")
    assert result.verdict == expected
    chosen = result.settings["examples"][0]
    assert chosen["selected_std"] >= chosen["random_std"]
    assert math.isfinite(result.measured["test_gain"].mean)
