"""A learned, state-dependent sparse control variate (the ``"learned"`` variant of :func:`scv_estimate`).

Why. The SCV features ``r_j - 1`` (E5-E7 in :mod:`safetybed.evaluate.estimators`) only say *which* mixture
component each critical step drew from. On the highway a drawn adversarial maneuver ends in a crash in about two
tests of three, and which ones crash is not a function of the ``r``'s: it is a function of the kinematic state at
that step (gap, range rate, speeds, lane; a classifier on those separates crash from survival with a cross-validated
AUC of 0.97 on 1,289 adversarial draws of 5,000 cruise tests). The SCV paper (Yang et al. 2022 [1]) optimises its
control variates "by leveraging the testing results"; this variant does so for the state of the critical variables.

What. With ``W_{<j}`` the likelihood ratio of the steps before ``j``, ``C_j`` the proposal's criticality
``sum_u p(u) c(s_j, u)`` and ``g`` a learned crash probability after an adversarial draw in state ``s_j``::

    psi_i = sum_j W_{<j} C_j g(s_j) (r_j - 1),   E_q[psi] = 0 for any g fixed before the test       (E8)

It is the martingale increment ``W_{<j} (p/q)(u_j) v(s_j, u_j) - W_{<j} sum_u p(u) v(s_j, u)`` of the ideal control
variate for a value ``v(s, u) = c(s, u) g(s)``: with NADE's ``q~(u) = p(u) c(s, u) / C`` the two terms are
``W_{<j} r_j C_j g`` and ``W_{<j} C_j g``. ``W_{<j}``, ``C_j``, ``s_j`` and ``g`` are known before the maneuver is
drawn and ``E_q[r_j | history] = 1``, so (E8) has mean 0 whatever ``g`` is; ``g`` only decides how much variance it
removes. Unbiasedness needs ``g`` to be fitted on *other* tests: the learned variant always cross-fits (``g`` and
``beta`` on one half, applied to the other).

``g`` is a small tanh network (2 x 16 units) fitted by full-batch L-BFGS with weight decay on the states of the
fitting half's adversarial draws (steps with ``q~ > p``), labelled by whether the test crashed; seeded, float64, no
minibatches, so it is deterministic. Choices the paper is silent on (it is not available to us, ``cav_eval.md`` §7):
the network, the label (the test's crash, not the crash times the later steps' ratio; those ratios are about 1 at
ε = 0.9), and that the learned feature joins the martingale features (E6-E7) in one regression rather than
replacing them.

References: [1] J. Yang, H. Sun, H. He, Y. Zhang, S. Feng, H. X. Liu, arXiv:2212.00517 (2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

#: Hidden units per layer, L-BFGS iterations and weight decay of the crash model ``g``.
HIDDEN_UNITS = 16
LBFGS_ITERATIONS = 300
WEIGHT_DECAY = 1e-3


class CovariateError(ValueError):
    """Records lack (or carry malformed) ``criticality`` / ``state`` entries; the estimator re-raises it."""


def _optional(record: Any, name: str) -> Any:
    if isinstance(record, Mapping):
        return record.get(name, ())
    return getattr(record, name, ())


def parse_covariates(records: Sequence[Any], n_steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``criticality`` (total,) and ``state`` (total, d) of every critical step, in the estimators' order."""
    criticality: list[float] = []
    states: list[Sequence[float]] = []
    width = None
    for index, (record, k) in enumerate(zip(records, n_steps, strict=True)):
        crit, state = _optional(record, "criticality"), _optional(record, "state")
        if len(crit) != k or len(state) != k:
            raise CovariateError(
                f"record {index}: criticality, state: expected one entry per critical step ({int(k)}) for the "
                f"learned variant, got {len(crit)} and {len(state)} (records from records_from_run and the testbed "
                "carry them)"
            )
        for j, row in enumerate(state):
            row = np.asarray(row, dtype=float).ravel()
            width = row.size if width is None else width
            if row.size != width or row.size == 0 or not np.isfinite(row).all():
                raise CovariateError(f"record {index}: state[{j}]: expected {width} finite floats, got {row.tolist()}")
            states.append(row)
        criticality.extend(float(c) for c in crit)
    crit_array = np.asarray(criticality, dtype=float)
    bad = ~(np.isfinite(crit_array) & (crit_array >= 0))
    if bad.any():
        raise CovariateError(f"criticality: expected finite values >= 0, got {float(crit_array[np.argmax(bad)])!r}")
    state_array = np.vstack(states) if states else np.zeros((0, 1))
    return crit_array, state_array


def fit_crash_model(states: np.ndarray, crashed: np.ndarray, *, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """``g(s) ~ P(crash | adversarial draw in state s)``: a 2 x 16 tanh network, full-batch L-BFGS, float64.

    Inputs are standardised with the training mean and spread. Returns a function of an (m, d) array.
    """
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    x = torch.as_tensor(np.asarray(states, dtype=np.float64))
    y = torch.as_tensor(np.asarray(crashed, dtype=np.float64))
    mean, spread = x.mean(dim=0), x.std(dim=0) + 1e-9
    layers = [torch.nn.Linear(x.shape[1], HIDDEN_UNITS), torch.nn.Tanh(),
              torch.nn.Linear(HIDDEN_UNITS, HIDDEN_UNITS), torch.nn.Tanh(), torch.nn.Linear(HIDDEN_UNITS, 1)]
    net = torch.nn.Sequential(*layers).double()
    with torch.no_grad():  # seeded initialisation (no global RNG)
        for layer in net:
            if isinstance(layer, torch.nn.Linear):
                fan_in = layer.weight.shape[1]
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64)
                                   / math.sqrt(fan_in))
                layer.bias.zero_()
    inputs = (x - mean) / spread
    optimiser = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=LBFGS_ITERATIONS,
                                  line_search_fn="strong_wolfe")
    weights = [param for name, param in net.named_parameters() if name.endswith("weight")]

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = net(inputs).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        loss = loss + WEIGHT_DECAY * sum((w ** 2).sum() for w in weights)
        loss.backward()
        return loss

    optimiser.step(closure)

    def predict(new_states: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            z = (torch.as_tensor(np.asarray(new_states, dtype=np.float64)) - mean) / spread
            return torch.sigmoid(net(z).squeeze(1)).numpy()

    return predict


def learned_feature(*, record_of_step: np.ndarray, n: int, weight_before: np.ndarray, ratios: np.ndarray,
                    criticality: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(E8) per test: ``sum_j W_{<j} C_j g(s_j) (r_j - 1)``; all step arrays flat, ``weight_before`` is ``W_{<j}``."""
    return np.bincount(record_of_step, weights=weight_before * criticality * g * (ratios - 1.0), minlength=n)
