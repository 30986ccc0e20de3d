"""AdaTE: adaptive testing environments from several surrogate models (Yang et al. 2024).

Yang, Bai, Ji, Zhang, Hu & Feng, "Adaptive Testing Environment Generation for Connected and Automated Vehicles
with Dense Reinforcement Learning", arXiv 2402.19275; ``research/cav_eval.md`` §3 (a reconstruction from the
abstract: the paper's body was not available, so the choices below are ours and are marked as such).

* ``m`` surrogate ego models give maneuver-challenge tables ``c_j(s, u)`` (the rows of
  :attr:`CriticalContext.challenge`); the environment uses ``c_w = sum_j w_j c_j``.
* The weights solve the regression of the surrogates onto a target ``c*(s, u)`` for the real ego as a quadratic
  program (paper: "a regression task utilizing quadratic programming"), here in cvxpy::

      minimise_w  sum_{(s, u) visited} rho(s, u) (sum_j w_j c_j(s, u) - c^*(s, u))^2    s.t.  w >= 0

  with ``rho`` the visit count (our choice; §3.3 suggests exposure or visit frequency).
* The target is learnt by *dense* RL: only critical (s, u) pairs are updated, by importance-weighted Monte-Carlo
  policy evaluation: after critical step t of a test, ``G_t = 1{crash} * prod_{k > t} p_k / q_k`` is an unbiased
  sample of ``c*(s_t, u_t) = P_p(crash | s_t, u_t)`` (the later critical steps are re-weighted to the
  naturalistic distribution; non-critical steps have weight 1). ``c*`` is the running mean per pair.
* The adaptive testing policy samples the POV's action from ``q~ ∝ p (c_w + kappa |c* - c_w|)`` (gap-driven
  exploration where surrogates and the real ego disagree; unvisited pairs have gap 0), mixed with
  ``epsilon p`` as in NADE. Every test is weighted by the ``q`` it was actually sampled from, and each batch's
  policy depends only on earlier batches, so pooling all batches keeps the estimate unbiased.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from safetybed.sims.testing.adate_proposal import AdaTEProposal, DenseTarget


def fit_weights(target: DenseTarget, *, m: int, sum_to_one: bool = False) -> np.ndarray:
    """Solve the AdaTE quadratic program in cvxpy (see the module docstring); returns ``w`` (shape ``(m,)``)."""
    import cvxpy as cp

    if len(target) == 0:
        raise ValueError("target: no critical (s, u) pair has been visited yet, so there is nothing to regress on")
    keys = list(target.counts)
    challenge = np.stack([target.challenges[k] for k in keys])  # (P, m)
    if challenge.shape[1] != m:
        raise ValueError(f"target: expected challenge vectors of {m} surrogates, got {challenge.shape[1]}")
    values = np.array([target.sums[k] / target.counts[k] for k in keys])
    rho = np.array([target.counts[k] for k in keys], dtype=np.float64)
    sqrt_rho = np.sqrt(rho / rho.sum())
    w = cp.Variable(m, nonneg=True)
    objective = cp.Minimize(cp.sum_squares(cp.multiply(sqrt_rho, challenge @ w - values)))
    constraints = [cp.sum(w) == 1] if sum_to_one else []
    problem = cp.Problem(objective, constraints)
    problem.solve()
    if w.value is None or problem.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"AdaTE quadratic program did not solve: status {problem.status}")
    return np.clip(np.asarray(w.value, dtype=np.float64), 0.0, None)


@dataclass(frozen=True)
class StepLog:
    """A critical step as AdaTE needs it: where, what, with which probabilities and surrogate challenges."""

    state_key: Hashable
    action: int
    p: float
    q: float
    challenge: np.ndarray  # (m,) challenge of the sampled action under each surrogate


def dense_returns(crashed: bool, steps: list[StepLog]) -> list[float]:
    """``G_t = 1{crash} prod_{k > t} p_k / q_k`` for each critical step t of one test."""
    out = []
    log_future = 0.0
    for step in reversed(steps):
        out.append(float(crashed) * float(np.exp(log_future)))
        log_future += np.log(step.p) - np.log(step.q)
    return out[::-1]


def batch_sizes(tests: int, batches: int) -> list[int]:
    """Split ``tests`` into ``batches`` near-equal batches (the last one takes the remainder)."""
    if batches < 1 or tests < batches:
        raise ValueError(f"tests, batches: expected 1 <= batches <= tests, got {tests!r}, {batches!r}")
    size = tests // batches
    return [size] * (batches - 1) + [tests - size * (batches - 1)]


def run_adate(run_batch: Callable[[AdaTEProposal, int], list[tuple[bool, list[StepLog]]]], *, m: int,
              sizes: Sequence[int], initial_weights: np.ndarray | None = None, kappa: float = 1.0,
              epsilon: float = 0.1, progress=None) -> dict:
    """The AdaTE loop: {run a batch -> update c* (dense RL) -> solve the QP -> rebuild the policy}.

    ``run_batch(proposal, n)`` runs ``n`` tests under ``proposal`` and returns per test ``(crashed, steps)``;
    batch ``k`` has ``sizes[k]`` tests. Returns the weights history, the per-batch test logs and the target.
    """
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"sizes: expected one positive test count per batch, got {list(sizes)!r}")
    weights = np.eye(m)[0] if initial_weights is None else np.asarray(initial_weights, dtype=np.float64)
    target = DenseTarget()
    history, logs = [weights.copy()], []
    for batch, size in enumerate(sizes):
        proposal = AdaTEProposal(weights=weights.copy(), target=_frozen_copy(target), kappa=kappa, epsilon=epsilon)
        tests = run_batch(proposal, size)
        logs.append(tests)
        for crashed, steps in tests:
            for step, value in zip(steps, dense_returns(crashed, steps), strict=True):
                target.update(step.state_key, step.action, value, step.challenge)
        if len(target):
            weights = fit_weights(target, m=m)
            if not weights.sum() > 0:  # every surrogate useless: keep the previous environment
                weights = history[-1].copy()
        history.append(weights.copy())
        if progress is not None:
            progress(batch + 1, len(sizes))
    return {"weights": history, "logs": logs, "target": target}


def _frozen_copy(target: DenseTarget) -> DenseTarget:
    return DenseTarget(sums=dict(target.sums), counts=dict(target.counts), challenges=dict(target.challenges))
