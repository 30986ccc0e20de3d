"""ODICE (Mao et al. 2024): the orthogonal projection on hand-made vectors, the DICE loss's gradients by hand, and
the fast demo's measured comparison (reported whatever its direction)."""

from __future__ import annotations

import math

import pytest
import torch

from safetybed.suite.offline_rl.odice import ENTRY, dice_loss, orthogonal_gradient


def test_orthogonal_gradient_by_hand():
    g_f = torch.tensor([2.0, 0.0])
    assert orthogonal_gradient(g_f, torch.tensor([0.0, 3.0])).tolist() == [2.0, 3.0]  # already orthogonal
    assert orthogonal_gradient(g_f, torch.tensor([-5.0, 0.0])).tolist() == [2.0, 0.0]  # parallel part removed
    mixed = orthogonal_gradient(g_f, torch.tensor([1.0, 1.0]), eta=0.5)
    assert mixed.tolist() == pytest.approx([2.0, 0.5])
    assert (mixed - g_f).dot(g_f).item() == pytest.approx(0.0)  # the added part is orthogonal to g_f
    assert orthogonal_gradient(torch.zeros(2), torch.tensor([1.0, 2.0])).tolist() == [1.0, 2.0]


def test_dice_loss_gradients_by_hand():
    # One transition: delta = r + gamma V(s') - V(s); dL/dV(s) = (1 - lam) - lam e^(delta - 1),
    # dL/dV(s') = lam gamma e^(delta - 1).
    v_s, v_next = torch.tensor([0.5], requires_grad=True), torch.tensor([0.2], requires_grad=True)
    terms = dice_loss(v_s, v_next, torch.tensor([1.0]), torch.tensor([1.0]), gamma=0.9, dice_lambda=0.8)
    terms["loss"].backward()
    e = math.exp(1.0 + 0.9 * 0.2 - 0.5 - 1)
    assert v_s.grad.item() == pytest.approx(0.2 - 0.8 * e)
    assert v_next.grad.item() == pytest.approx(0.8 * 0.9 * e)
    assert terms["loss"].item() == pytest.approx(0.2 * 0.5 + 0.8 * e)


def test_fast_demo_is_measured_and_judged_from_its_numbers():
    result = ENTRY.demo(fast=True, seed=0)
    ortho, true = result.measured, result.baseline
    assert ortho["value RMS error"].n == 2
    lowest = ortho["value RMS error"].mean <= min(true["value RMS error"].mean, true["value RMS error (semi)"].mean)
    # On this gridworld the true gradient reaches the objective's minimiser and orthogonal stays with semi.
    assert true["value RMS error"].mean < ortho["value RMS error"].mean
    assert result.verdict != "reproduced" and not lowest
