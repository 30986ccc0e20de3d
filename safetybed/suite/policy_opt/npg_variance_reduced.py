"""N-PG-IGT and N-HARPG: normalised, variance-reduced stochastic policy gradients with one or two trajectories per step.

Fatkhullin, Barakat, Kireeva & He 2023, "Stochastic Policy Gradient Methods: Improved Sample Complexity for
Fisher-non-degenerate Policies" (ICML 2023, arXiv 2302.01734). No official code was found (research report §2.11).

**The rule.** With ``g(tau, theta)`` the GPOMDP estimate of the policy gradient from one trajectory and ``d_t`` a
running direction (``theta_{-1} = theta_0``, ``d_{-1} = 0``, ``eta_0 = 1`` so ``d_0 = g(tau_0, theta_0)``):

- **N-PG-IGT** (Algorithm 1 of the paper): extrapolate ``theta~_t = theta_t + ((1 - eta_t) / eta_t) (theta_t -
  theta_{t-1})``, sample ``tau_t ~ pi(theta~_t)``, average ``d_t = (1 - eta_t) d_{t-1} + eta_t g(tau_t,
  theta~_t)`` and take a normalised step ``theta_{t+1} = theta_t + gamma_t d_t / |d_t|``. Implicit gradient
  transport: evaluating the new gradient at the extrapolated point cancels, to first order, the bias the momentum
  average ``d`` carries from old iterates. One trajectory per step, no importance sampling.
- **N-HARPG** (Algorithm 2): draw ``q ~ U[0, 1]``, ``theta^_t = q theta_t + (1 - q) theta_{t-1}``, sample
  ``tau_t ~ pi(theta_t)`` and ``tau^_t ~ pi(theta^_t)``, form the Hessian-vector estimate ``v_t = B(tau^_t,
  theta^_t) (theta_t - theta_{t-1})`` with ``B(tau, theta) = grad Phi(tau) grad log p(tau | theta)^T + grad^2
  Phi(tau)`` (``Phi(tau) = sum_t gamma^t r_t sum_{h <= t} log pi(a_h | s_h)``, so ``grad Phi = g``), and recurse
  ``d_t = (1 - eta_t)(d_{t-1} + v_t) + eta_t g(tau_t, theta_t)``, then the same normalised step. Because ``q`` is
  uniform, ``E[v_t] = int_0^1 hess J(theta_{t-1} + q Delta) Delta dq = grad J(theta_t) - grad J(theta_{t-1})``
  exactly, so ``d`` tracks the gradient without importance weights (a STORM-type recursion). Two trajectories
  per step.

:func:`variance_reduced_pg_step` implements both steps (and REINFORCE, the baseline) on a parameter vector given
trajectory-sampling oracles; :func:`gpomdp_gradient` and :func:`hessian_vector_estimate` are the estimators for a
tabular softmax policy ``pi(a | s) = softmax(theta[s])_a``.

**Step-size schedules (suite.md marks them unverified).** Only the abstract could be read here, so the theorems'
constants could not be checked against the paper's text. The exponents were re-derived from the standard analysis
of normalised momentum under (weak) gradient domination, ``delta_{t+1} <= (1 - c gamma_t) delta_t + 2 gamma_t
|e_t| + L gamma_t^2 / 2`` with ``delta = J* - J`` and ``e_t = d_t - grad J(theta_t)``: with ``gamma_t ~ 1/t`` the
gap follows the tracking error ``|e_t|``. For IGT ``|e_t| ~ eta_t^{1/2} + gamma_t^2 / eta_t^2`` (variance plus the
second-order transport bias), balanced by ``eta_t ~ t^{-4/5}`` so ``|e_T| ~ T^{-2/5}``: ``eps^{-2.5}``
trajectories, the abstract's rate. For HARPG the Hessian correction removes the bias term, ``|e_t| ~
eta_t^{1/2}`` with ``eta_t ~ 1/t`` gives ``T^{-1/2}``: ``eps^{-2}``, the abstract's rate. So this module uses
``gamma_t = gamma_0 * 2 / (t + 2)`` for both, ``eta_t = (2 / (t + 2))^{4/5}`` for N-PG-IGT and ``eta_t = 2 / (t +
2)`` for N-HARPG (``eta_0 = 1`` in both, so the first direction is a plain GPOMDP gradient). These exponents agree
with the abstract's two rates; the constant ``gamma_0`` (the theorems tie it to problem constants that are not
computable here) is a demo hyper-parameter.

**The demo.** A 5-state, 3-action MDP (:func:`demo_mdp`, drawn once from a fixed seed; ``gamma = 0.9``), tabular
softmax policy from ``theta = 0``. The discounted objective ``J(theta) = mu0 . V^pi`` is sampled without
truncation: each episode stops with probability ``1 - gamma`` after every step (:func:`sample_episode`), so the
undiscounted return of an episode is an unbiased sample of ``J`` and GPOMDP / the Hessian estimate run with
``discount = 1``. ``J`` is computed exactly (``common.tabular.policy_evaluation``) at checkpoints, ``J*`` by value
iteration. Methods, at the same budget of trajectories: REINFORCE/GPOMDP with batch 1 and batch ``m`` (constant
step, the paper's vanilla-PG baseline), N-PG-IGT (1 trajectory per step) and N-HARPG (2 per step). Measured over
seeds: trajectories until ``J(theta_t) >= J* - eps`` first holds (a run that never gets there counts as the budget:
a lower bound, with the fraction that got there beside it) for a ladder of ``eps`` (fractions of the initial gap
``J* - J(theta_0)``), and the slope of log(trajectories) against log(1/eps) over the ladder (§2.11(c)'s check:
HARPG ~ 2, IGT ~ 2.5, vanilla >= 3).

**What came out** (full demo, 5 seeds, 20,000 trajectories per run, checkpoints every 100;
``docs/suite/results/npg-variance-reduced.json``): not reproduced. To ``J* - 0.03`` of the initial gap, N-HARPG
needed 4,100 trajectories (5 / 5 seeds), N-PG-IGT 9,520 (3 / 5 within the budget), REINFORCE at batch 1 4,340 (4 /
5; its median seed needed 300) and at batch 10 1,620 (5 / 5). The fitted slopes are 1.6 (HARPG), 1.5 (IGT), 0.25
and 0.97 (REINFORCE): all below §2.11(c)'s expectations and in the opposite order. Why, on this problem: the
tabular softmax's score ``e_a - pi[s]`` vanishes as the policy becomes deterministic, so REINFORCE's variance
vanishes at a deterministic optimum and a constant step converges fast; the normalised methods' steps ``2 gamma_0
/ (t + 2)`` travel only about ``2 gamma_0 log t`` in total while the softmax needs ``|theta|`` of order ``log(1 /
eps)`` per state, and a larger ``gamma_0`` commits early to wrong near-deterministic actions (tried: 0.1 / 0.3 / 1
/ 3 / 10). N-HARPG was the most reliable method (every seed reached every level, lowest spread at the budget).
Rewards on [0, 1] were tried first: returns then carry a large constant, the action gaps are small relative to the
noise, and both normalised methods stalled at about 0.4 of the gap while small-step REINFORCE again won.

**Choices where the paper is silent** (its experiments are continuous control with Gaussian policies):
- the MDP, the softmax-tabular policy (it is *not* Fisher-non-degenerate: the Fisher matrix degenerates as the
  policy becomes deterministic, so the paper's theory does not cover it; the demo measures the effect anyway);
- geometric termination instead of the paper's truncated horizon ``H`` (no truncation bias, and ``J*`` is the true
  optimum of the discounted MDP);
- step-size constants (tried on the demo MDP, each method given the best of a small grid, see :class:`Config`);
- the normalisation's guard ``|d| = 0`` (no step is taken).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from safetybed.suite.common.tabular import TabularMDP, policy_evaluation, value_iteration
from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["ENTRY", "METHODS", "Config", "Episode", "EpisodeSampler", "PGState", "demo", "demo_mdp", "exact_policy_gradient",
           "exact_return", "gpomdp_gradient", "hessian_vector_estimate", "sample_episode", "softmax_policy",
           "step_sizes", "variance_reduced_pg_step"]

#: The methods the demo compares; ``reinforce`` runs with batch 1 and batch ``m``.
METHODS = ("reinforce", "n_pg_igt", "n_harpg")


# -- the tabular softmax policy, its exact objective and gradient -------------------------------------------------
def softmax_policy(theta: np.ndarray) -> np.ndarray:
    """``pi[s, a] = exp(theta[s, a]) / sum_b exp(theta[s, b])``."""
    shifted = np.exp(theta - theta.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def exact_return(mdp: TabularMDP, theta: np.ndarray) -> float:
    """``J(theta) = sum_s mu0(s) V^pi(s)``, the discounted return of the softmax policy (an exact linear solve)."""
    return float(mdp.mu0 @ policy_evaluation(mdp, softmax_policy(theta)))


def exact_policy_gradient(mdp: TabularMDP, theta: np.ndarray) -> np.ndarray:
    """``dJ / dtheta[s, a] = rho(s) pi(a | s) A(s, a)`` for the tabular softmax (the policy gradient theorem with
    ``d log pi(b | s) / d theta[s, a] = 1[a = b] - pi(a | s)``), where ``rho = mu0^T (I - gamma P_pi)^-1`` is the
    discounted state occupancy (unnormalised) and ``A = Q - V``."""
    pi = softmax_policy(theta)
    v = policy_evaluation(mdp, pi)
    q = mdp.R + mdp.gamma * mdp.P @ v
    p_pi = np.einsum("sa,sat->st", pi, mdp.P)
    occupancy = np.linalg.solve((np.eye(mdp.n_states) - mdp.gamma * p_pi).T, mdp.mu0)
    return occupancy[:, None] * pi * (q - v[:, None])


# -- trajectories and the one-trajectory estimators ------------------------------------------------------------------
@dataclass(frozen=True)
class Episode:
    """One trajectory: ``states[h]``, ``actions[h]`` and ``rewards[h]`` for ``h = 0..len-1``."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray


class EpisodeSampler:
    """Samples episodes of ``mdp`` from ``mu0`` that stop after each step with probability ``1 - gamma`` (and on a
    terminal state): the undiscounted return of an episode is an unbiased sample of the discounted value ``mu0 .
    V^pi``, with no truncation bias. Scalar inverse-CDF sampling in Python on cached CDFs (``rng.choice`` costs
    more than the whole step for one draw at a time)."""

    def __init__(self, mdp: TabularMDP, *, max_steps: int = 10_000) -> None:
        self.mdp = mdp
        self.max_steps = max_steps
        self._transition_cdf = np.cumsum(mdp.P, axis=2).tolist()
        self._start_cdf = np.cumsum(mdp.mu0).tolist()
        self._terminal = mdp.terminal.tolist()

    def __call__(self, policy: np.ndarray, *, rng: np.random.Generator) -> Episode:
        policy_cdf = np.cumsum(policy, axis=1).tolist()
        gamma = self.mdp.gamma
        uniforms: list[float] = []
        states: list[int] = []
        actions: list[int] = []

        def draw() -> float:
            if not uniforms:
                uniforms.extend(rng.random(64).tolist())
            return uniforms.pop()

        state = _pick(self._start_cdf, draw())
        for _ in range(self.max_steps):
            action = _pick(policy_cdf[state], draw())
            states.append(state)
            actions.append(action)
            state = _pick(self._transition_cdf[state][action], draw())
            if self._terminal[state] or draw() >= gamma:
                break
        s, a = np.array(states), np.array(actions)
        return Episode(s, a, self.mdp.R[s, a])


def _pick(cdf: list[float], u: float) -> int:
    """The first index whose cumulative probability exceeds ``u`` (the last one absorbs rounding)."""
    index, last = 0, len(cdf) - 1
    while index < last and u >= cdf[index]:
        index += 1
    return index


def sample_episode(mdp: TabularMDP, policy: np.ndarray, *, rng: np.random.Generator) -> Episode:
    """One geometrically terminated episode (see :class:`EpisodeSampler`, which caches the MDP's CDFs)."""
    return EpisodeSampler(mdp)(policy, rng=rng)


def _reward_to_go(episode: Episode, discount: float) -> np.ndarray:
    """``G_h = sum_{t >= h} discount^t r_t`` (discounted from the episode's start, as in GPOMDP)."""
    weighted = episode.rewards * discount ** np.arange(len(episode.rewards))
    return np.cumsum(weighted[::-1])[::-1]


def gpomdp_gradient(theta: np.ndarray, episode: Episode, *, discount: float = 1.0) -> np.ndarray:
    """GPOMDP: ``g(tau, theta) = sum_h grad log pi(a_h | s_h) sum_{t >= h} discount^t r_t`` (Fatkhullin et al.
    2023, §2, the estimator of both algorithms); ``discount = 1`` for geometrically terminated episodes."""
    pi = softmax_policy(theta)
    to_go = _reward_to_go(episode, discount)
    n_states, n_actions = theta.shape
    # grad_theta[s] log pi(a | s) = e_a - pi[s]: sum the reward-to-go by (s, a) and by s
    by_pair = np.bincount(episode.states * n_actions + episode.actions, weights=to_go, minlength=theta.size)
    by_state = np.bincount(episode.states, weights=to_go, minlength=n_states)
    return by_pair.reshape(n_states, n_actions) - by_state[:, None] * pi


def hessian_vector_estimate(theta: np.ndarray, episode: Episode, vector: np.ndarray, *,
                            discount: float = 1.0) -> np.ndarray:
    """``B(tau, theta) v = grad Phi (grad log p(tau | theta) . v) + grad^2 Phi v`` (the Hessian estimate of
    N-HARPG, Fatkhullin et al. 2023, Algorithm 2, after Shen et al. 2019), with ``Phi(tau, theta) = sum_h
    G_h log pi(a_h | s_h)`` so that ``grad Phi = g`` (GPOMDP) and ``E[B] = hess J``.

    For the softmax, ``grad^2 log pi(a | s)`` is the block ``-(diag pi[s] - pi[s] pi[s]^T)`` of state ``s``."""
    pi = softmax_policy(theta)
    to_go = _reward_to_go(episode, discount)
    # grad log p(tau) . v = sum_h (v[s_h, a_h] - pi[s_h] . v[s_h]); transitions do not depend on theta
    expected_v = np.einsum("sa,sa->s", pi, vector)
    score_dot_vector = float(np.sum(vector[episode.states, episode.actions] - expected_v[episode.states]))
    # sum_h G_h grad^2 log pi(a_h | s_h) v = -sum_s (sum_{h: s_h = s} G_h) (pi[s] * v[s] - pi[s] (pi[s] . v[s]))
    to_go_by_state = np.bincount(episode.states, weights=to_go, minlength=theta.shape[0])
    curvature = -to_go_by_state[:, None] * (pi * vector - pi * np.einsum("sa,sa->s", pi, vector)[:, None])
    return gpomdp_gradient(theta, episode, discount=discount) * score_dot_vector + curvature


# -- the rule -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PGState:
    """The iterate ``theta_t``, the previous iterate ``theta_{t-1}`` and the running direction ``d_{t-1}``."""

    theta: np.ndarray
    previous_theta: np.ndarray
    direction: np.ndarray

    @classmethod
    def start(cls, theta: np.ndarray) -> PGState:
        theta = np.asarray(theta, dtype=float)
        return cls(theta, theta.copy(), np.zeros_like(theta))


def step_sizes(method: str, t: int, *, initial_step: float) -> tuple[float, float]:
    """``(gamma_t, eta_t)`` of step ``t = 0, 1, ...``: ``gamma_t = initial_step * 2 / (t + 2)`` for the normalised
    methods, ``eta_t = (2 / (t + 2))^{4/5}`` (N-PG-IGT) or ``2 / (t + 2)`` (N-HARPG); REINFORCE keeps its constant
    ``initial_step`` (``eta`` unused, 1). Exponents re-derived from the abstract's rates (module docstring)."""
    if method == "reinforce":
        return initial_step, 1.0
    base = 2.0 / (t + 2)
    if method == "n_pg_igt":
        return initial_step * base, base ** 0.8
    if method == "n_harpg":
        return initial_step * base, base
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


def variance_reduced_pg_step(
        state: PGState, t: int, *, method: str, initial_step: float,
        sample_gradient: Callable[[np.ndarray], np.ndarray],
        sample_hessian_vector: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        rng: np.random.Generator | None = None, batch_size: int = 1) -> tuple[PGState, int]:
    """One ascent step of N-PG-IGT, N-HARPG or REINFORCE on ``J``; returns the new state and the number of
    trajectories it sampled.

    ``sample_gradient(theta)`` samples one trajectory at ``theta`` and returns ``g(tau, theta)``;
    ``sample_hessian_vector(theta, v)`` samples one at ``theta`` and returns ``B(tau, theta) v`` (N-HARPG only);
    ``rng`` draws N-HARPG's ``q``. ``batch_size`` is REINFORCE's ``m`` (the normalised methods use one).
    """
    gamma_t, eta_t = step_sizes(method, t, initial_step=initial_step)
    theta, previous = state.theta, state.previous_theta
    if method == "reinforce":
        gradient = np.mean([sample_gradient(theta) for _ in range(batch_size)], axis=0)
        return PGState(theta + gamma_t * gradient, theta, gradient), batch_size
    if method == "n_pg_igt":
        # Algorithm 1: theta~_t = theta_t + ((1 - eta_t) / eta_t)(theta_t - theta_{t-1}); tau_t ~ pi(theta~_t)
        extrapolated = theta + (1.0 - eta_t) / eta_t * (theta - previous)
        direction = (1.0 - eta_t) * state.direction + eta_t * sample_gradient(extrapolated)
        used = 1
    elif method == "n_harpg":
        if sample_hessian_vector is None or rng is None:
            raise ValueError("n_harpg: expected sample_hessian_vector and rng, got None")
        # Algorithm 2: theta^_t = q theta_t + (1 - q) theta_{t-1}, v_t = B(tau^_t, theta^_t)(theta_t - theta_{t-1})
        q = rng.random()
        displacement = theta - previous
        correction = sample_hessian_vector(q * theta + (1.0 - q) * previous, displacement)
        direction = (1.0 - eta_t) * (state.direction + correction) + eta_t * sample_gradient(theta)
        used = 2
    else:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    norm = float(np.linalg.norm(direction))
    # normalised step theta_{t+1} = theta_t + gamma_t d_t / |d_t| (both algorithms' last line)
    new_theta = theta + gamma_t * direction / norm if norm > 0 else theta.copy()
    return PGState(new_theta, theta, direction), used


# -- the demo -------------------------------------------------------------------------------------------------------
def demo_mdp(*, n_states: int = 5, n_actions: int = 3, gamma: float = 0.9, seed: int = 2023) -> TabularMDP:
    """A small random MDP: each ``(s, a)`` moves to 2 random next states with Dirichlet(1) probabilities, rewards
    uniform on [-1, 1] (centred, so returns are not dominated by a constant), start uniform. Drawn once from ``seed`` so every demo seed sees the same problem."""
    rng = np.random.default_rng(seed)
    P = np.zeros((n_states, n_actions, n_states))
    for s in range(n_states):
        for a in range(n_actions):
            successors = rng.choice(n_states, size=2, replace=False)
            P[s, a, successors] = rng.dirichlet(np.ones(2))
    R = rng.uniform(-1.0, 1.0, size=(n_states, n_actions))
    return TabularMDP(P, R, gamma)


@dataclass(frozen=True)
class Config:
    """The demo's settings. The paper has no tabular experiment; each default says where it comes from."""

    budget: int = 20_000
    """Trajectories per run (each method gets the same count)."""
    checkpoints: int = 200
    """Exact evaluations of ``J`` per run, evenly spaced in trajectories (the hitting times' resolution)."""
    batch_size: int = 10
    """REINFORCE's large batch ``m`` (§2.11(c): batch 1 and batch m)."""
    reinforce_step: float = 0.1
    """REINFORCE's constant step size at batch 1 (best of 0.03 / 0.1 / 0.3 on the demo MDP, 3 seeds, 10k trajectories)."""
    reinforce_batch_step: float = 0.3
    """REINFORCE's constant step size at batch ``m`` (best of 0.1 / 0.3 / 1.0)."""
    igt_initial_step: float = 1.0
    """N-PG-IGT's ``gamma_0`` (``gamma_t = gamma_0 * 2 / (t + 2)``; best of 0.1 / 0.3 / 1 / 3 / 10: smaller ones
    cannot travel far enough, larger ones commit early to wrong near-deterministic actions)."""
    harpg_initial_step: float = 1.0
    """N-HARPG's ``gamma_0`` (best of 0.1 / 0.3 / 1 / 3 / 10, as for N-PG-IGT)."""
    gap_fractions: tuple[float, ...] = (0.3, 0.2, 0.1, 0.05, 0.03)
    """The ladder of ``eps`` as fractions of the initial gap ``J* - J(theta_0)``; the headline is the smallest."""
    n_seeds: int = 5
    """Seeds ``seed, seed + 1, ...`` (the contract's minimum of 5; the fast demo uses 3)."""
    fewer_fraction: float = 0.2
    """The claim holds when a variance-reduced method needs >= this fraction fewer trajectories than the better
    REINFORCE at the headline ``eps`` (a margin that seed noise at n = 5 does not produce by itself)."""

    def __post_init__(self) -> None:
        for name in ("budget", "checkpoints", "batch_size", "n_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("reinforce_step", "reinforce_batch_step", "igt_initial_step", "harpg_initial_step"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected > 0, got {getattr(self, name)}")
        if not self.gap_fractions or any(not 0 < f < 1 for f in self.gap_fractions):
            raise ValueError(f"gap_fractions: expected values in (0, 1), got {self.gap_fractions}")
        if not 0 <= self.fewer_fraction < 1:
            raise ValueError(f"fewer_fraction: expected in [0, 1), got {self.fewer_fraction}")


#: The demo's runs: label -> (method, batch size, Config field holding its step size).
RUNS = {
    "reinforce_batch_1": ("reinforce", 1, "reinforce_step"),
    "reinforce_batch_m": ("reinforce", None, "reinforce_batch_step"),
    "n_pg_igt": ("n_pg_igt", 1, "igt_initial_step"),
    "n_harpg": ("n_harpg", 1, "harpg_initial_step"),
}


def _run(mdp: TabularMDP, label: str, config: Config, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One run from ``theta = 0``; returns the trajectory counts at the checkpoints and ``J`` there."""
    method, batch, step_field = RUNS[label]
    batch = config.batch_size if batch is None else batch

    sampler = EpisodeSampler(mdp)

    def sample_gradient(theta: np.ndarray) -> np.ndarray:
        return gpomdp_gradient(theta, sampler(softmax_policy(theta), rng=rng))

    def sample_hessian_vector(theta: np.ndarray, vector: np.ndarray) -> np.ndarray:
        return hessian_vector_estimate(theta, sampler(softmax_policy(theta), rng=rng), vector)

    state = PGState.start(np.zeros((mdp.n_states, mdp.n_actions)))
    spacing = config.budget / config.checkpoints
    counts, values = [0], [exact_return(mdp, state.theta)]
    used, t = 0, 0
    while used < config.budget:
        state, n = variance_reduced_pg_step(state, t, method=method, initial_step=getattr(config, step_field),
                                            sample_gradient=sample_gradient,
                                            sample_hessian_vector=sample_hessian_vector, rng=rng, batch_size=batch)
        used, t = used + n, t + 1
        if used >= spacing * len(counts) or used >= config.budget:
            counts.append(used)
            values.append(exact_return(mdp, state.theta))
    return np.array(counts), np.array(values)


def _hitting_count(counts: np.ndarray, values: np.ndarray, target: float, budget: int) -> tuple[float, bool]:
    """Trajectories until ``J >= target`` first holds at a checkpoint; ``(budget, False)`` when it never does."""
    hits = np.flatnonzero(values >= target)
    return (float(counts[hits[0]]), True) if hits.size else (float(budget), False)


def _slope(gap_fractions: tuple[float, ...], counts: list[float]) -> float:
    """Least-squares slope of log(trajectories) on log(1 / eps) (NaN with fewer than two positive counts)."""
    points = [(math.log(1 / f), math.log(c)) for f, c in zip(gap_fractions, counts, strict=True) if c > 0]
    if len(points) < 2:
        return math.nan
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0])


def demo(*, fast: bool, seed: int) -> DemoResult:
    """REINFORCE (batch 1 and batch m) vs N-PG-IGT vs N-HARPG at equal trajectory budgets on a tabular MDP."""
    config = Config(budget=3_000, checkpoints=60, n_seeds=3) if fast else Config()
    mdp = demo_mdp()
    optimal = float(mdp.mu0 @ value_iteration(mdp)[0])
    initial = exact_return(mdp, np.zeros((mdp.n_states, mdp.n_actions)))
    gap = optimal - initial
    seeds = tuple(range(seed, seed + config.n_seeds))
    curves: dict[str, list[np.ndarray]] = {label: [] for label in RUNS}
    counts_at: dict[str, np.ndarray] = {}
    for s in seeds:
        streams = np.random.SeedSequence(s).spawn(len(RUNS))
        for stream, label in zip(streams, RUNS, strict=True):
            counts, values = _run(mdp, label, config, np.random.default_rng(stream))
            curves[label].append(values)
            counts_at[label] = counts
    headline = min(config.gap_fractions)

    def numbers(label: str) -> dict:
        hits = {f: [_hitting_count(counts_at[label], v, optimal - f * gap, config.budget) for v in curves[label]]
                for f in config.gap_fractions}
        out = {}
        for f in sorted(config.gap_fractions, reverse=True):
            out[f"trajectories to J* - {f:g} gap"] = measure([c for c, _ in hits[f]], unit="trajectories")
        out["reached J* - eps (headline eps)"] = measure([ok for _, ok in hits[headline]], unit="fraction")
        out["gap at budget"] = measure([(optimal - v[-1]) / gap for v in curves[label]],
                                       unit="fraction of initial gap")
        slopes = [_slope(config.gap_fractions, [hits[f][i][0] if hits[f][i][1] else math.nan
                                                for f in config.gap_fractions]) for i in range(len(seeds))]
        # a seed that reached fewer than two levels has no slope; the measure is over the seeds that have one
        fitted = [value for value in slopes if math.isfinite(value)] or [math.nan]
        out["slope log(trajectories) vs log(1/eps)"] = measure(fitted, unit="exponent (seeds with a fit)")
        return out

    by_label = {label: numbers(label) for label in RUNS}
    key = f"trajectories to J* - {headline:g} gap"
    best_reinforce = min(by_label[k][key].mean for k in ("reinforce_batch_1", "reinforce_batch_m"))
    fewer = {label: by_label[label][key].mean <= (1 - config.fewer_fraction) * best_reinforce
             and by_label[label]["reached J* - eps (headline eps)"].mean == 1.0
             for label in ("n_pg_igt", "n_harpg")}
    verdict = "reproduced" if all(fewer.values()) else "partly" if any(fewer.values()) else "not reproduced"
    measured = {f"{label}: {k}": v for label in ("n_harpg", "n_pg_igt") for k, v in by_label[label].items()}
    baseline = {f"{label}: {k}": v for label in ("reinforce_batch_1", "reinforce_batch_m")
                for k, v in by_label[label].items()}
    slope_key = "slope log(trajectories) vs log(1/eps)"
    slopes = {label: by_label[label][slope_key].mean for label in RUNS}
    why = (f"to J* - {headline:g} gap: N-HARPG {by_label['n_harpg'][key].mean:.0f}, N-PG-IGT "
           f"{by_label['n_pg_igt'][key].mean:.0f}, REINFORCE batch 1 {by_label['reinforce_batch_1'][key].mean:.0f}"
           f", batch {config.batch_size} {by_label['reinforce_batch_m'][key].mean:.0f} trajectories (budget "
           f"{config.budget} counts a miss); slopes (§2.11(c) expects ~2 / ~2.5 / >=3): HARPG "
           f"{slopes['n_harpg']:.2f}, IGT {slopes['n_pg_igt']:.2f}, REINFORCE {slopes['reinforce_batch_1']:.2f} / "
           f"{slopes['reinforce_batch_m']:.2f} over the seeds that reached >= 2 levels; step sizes: best of grids of 3-5 per method; "
           f"tabular softmax REINFORCE's variance vanishes as the policy turns deterministic, while the normalised "
           f"methods' 2 gamma_0 / (t + 2) steps travel only ~2 gamma_0 log t")
    return DemoResult(
        name="npg-variance-reduced",
        claim=(f"N-PG-IGT and N-HARPG reach J* - eps (eps = {headline:g} of the initial gap) with >= "
               f"{config.fewer_fraction:.0%} fewer trajectories than REINFORCE at batch 1 or batch "
               f"{config.batch_size}, each at its best step size"),
        measured=measured, baseline=baseline, verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings={**{name: getattr(config, name) for name in config.__dataclass_fields__},
                  "mdp": {"n_states": mdp.n_states, "n_actions": mdp.n_actions, "gamma": mdp.gamma,
                          "optimal_return": optimal, "initial_return": initial},
                  "return_curves": {"trajectory_counts": {k: v.tolist() for k, v in counts_at.items()},
                                    "mean_gap_fraction": {k: ((optimal - np.mean(v, axis=0)) / gap).round(4).tolist()
                                                          for k, v in curves.items()}}},
    )


ENTRY = SuiteEntry(
    name="npg-variance-reduced",
    title="Stochastic Policy Gradient Methods: Improved Sample Complexity for Fisher-non-degenerate Policies",
    citation="Fatkhullin et al. 2023",
    family="policy_opt",
    module=__name__,
    rule=variance_reduced_pg_step,
    demo=demo,
)
