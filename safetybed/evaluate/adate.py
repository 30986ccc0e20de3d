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
from dataclasses import dataclass, field

import numpy as np

from safetybed.evaluate.critical import CriticalContext, Decision


@dataclass
class DenseTarget:
    """Tabular ``c*(s, u)`` from importance-weighted Monte-Carlo returns at critical pairs (dense RL)."""

    sums: dict[tuple[Hashable, int], float] = field(default_factory=dict)
    counts: dict[tuple[Hashable, int], int] = field(default_factory=dict)
    challenges: dict[tuple[Hashable, int], np.ndarray] = field(default_factory=dict)

    def update(self, state_key: Hashable, action: int, value: float, challenge: np.ndarray) -> None:
        key = (state_key, int(action))
        self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.challenges[key] = np.asarray(challenge, dtype=np.float64)

    def value(self, state_key: Hashable, action: int) -> float | None:
        key = (state_key, int(action))
        count = self.counts.get(key)
        return None if not count else self.sums[key] / count

    def __len__(self) -> int:
        return len(self.counts)


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


@dataclass
class AdaTEProposal:
    """The adaptive testing policy for weights ``w`` and the current dense target (see the module docstring)."""

    weights: np.ndarray
    target: DenseTarget = field(default_factory=DenseTarget)
    kappa: float = 1.0
    epsilon: float = 0.1
    name: str = "adate"

    def _scores(self, context: CriticalContext) -> np.ndarray:
        c_w = np.asarray(self.weights) @ context.challenge  # (A,)
        gap = np.zeros_like(c_w)
        if len(self.target):
            for u in np.flatnonzero(context.p > 0):
                value = self.target.value(context.state_key, int(u))
                if value is not None:
                    gap[u] = abs(value - c_w[u])
        return context.p * (c_w + self.kappa * gap)

    def criticality(self, context: CriticalContext) -> float:
        return float(self._scores(context).sum())

    def decide(self, context: CriticalContext) -> Decision:
        scores = self._scores(context)
        return Decision.from_scores(scores, self.epsilon, who="AdaTEProposal")


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


def save_proposal(proposal: AdaTEProposal, path) -> None:
    """Write an AdaTE proposal (weights, kappa, epsilon, dense target) as JSON."""
    import json
    from pathlib import Path

    target = proposal.target
    rows = [{"state_key": list(key[0]) if isinstance(key[0], tuple) else key[0], "action": key[1],
             "sum": target.sums[key], "count": target.counts[key],
             "challenge": [float(x) for x in target.challenges[key]]} for key in target.counts]
    document = {"format": "safetybed-adate-1", "weights": [float(w) for w in proposal.weights],
                "kappa": proposal.kappa, "epsilon": proposal.epsilon, "target": rows}
    Path(path).write_text(json.dumps(document))


def load_proposal(path) -> AdaTEProposal:
    """Read a proposal written by :func:`save_proposal` (InputError naming the file and field otherwise)."""
    import json
    from pathlib import Path

    from safetybed.errors import InputError

    file = Path(path)
    try:
        document = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{file}: expected an AdaTE proposal JSON file ({error})") from error
    if not isinstance(document, dict) or document.get("format") != "safetybed-adate-1":
        raise InputError(f"{file}: format: expected 'safetybed-adate-1'")
    try:
        target = DenseTarget()
        for row in document["target"]:
            key = (tuple(row["state_key"]) if isinstance(row["state_key"], list) else row["state_key"],
                   int(row["action"]))
            target.sums[key] = float(row["sum"])
            target.counts[key] = int(row["count"])
            target.challenges[key] = np.asarray(row["challenge"], dtype=np.float64)
        weights = np.asarray(document["weights"], dtype=np.float64)
        return AdaTEProposal(weights=weights, target=target, kappa=float(document["kappa"]),
                             epsilon=float(document["epsilon"]))
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{file}: malformed AdaTE proposal ({error!r})") from error
