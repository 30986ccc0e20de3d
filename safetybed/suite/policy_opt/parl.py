"""PARL: bilevel policy alignment, with the upper level's data drawn from the lower level's optimal policy.

Chakraborty, Bedi, Koppel, Manocha, Wang, Wang & Huang 2024, "PARL: A Unified Framework for Policy Alignment in
Reinforcement Learning" (arXiv 2308.02585; the ICLR 2024 version adds "from Human Feedback" to the title). No
official code was found (research report §2.7).

**The rule.** Reward parameters ``nu`` (upper level) and a policy ``theta`` (lower level)::

    min_nu  G(nu) = E_{(tau1, tau2) ~ pi_theta*(nu)} [ l_BT(tau1, tau2, y; nu) ] + (l2 / 2) |nu|^2
    s.t.    theta*(nu) = argmax_theta  V(pi_theta; r_nu) + temperature * entropy(pi_theta)

(the PARL problem, §3 of the paper; the entropy regularisation is this module's lower level, see below). The key
point of the paper is that the upper level's data distribution depends on ``theta*(nu)``. Its hypergradient is::

    grad_nu G = d_nu G  +  (d_nu theta*)^T grad_theta G                                           (A-PARL, §4)

with ``d_nu theta*`` from the implicit function theorem. Here ``theta`` is the table ``log pi(a | s)`` of the
exact soft-optimal policy; :func:`soft_optimum` solves the lower level by soft value iteration and differentiates
its fixed point, :func:`parl_hypergradient` evaluates both terms of the hypergradient. For linear rewards
``r_nu(s, a) = phi(s, a) . nu`` the soft Bellman equation ``Q = Phi nu + gamma P V(Q)``, ``V = tau logsumexp(Q /
tau)`` gives, by the implicit function theorem, ``dV/dnu = (I - gamma P_pi)^-1 Pi Phi`` (the discounted feature
occupancy of ``pi``), ``dQ/dnu = Phi + gamma P dV/dnu`` and ``d log pi / d nu = (dQ/dnu - dV/dnu) / tau``. The
upper loss on a sample of pairs is a self-normalised importance-weighted mean, so the same formula is the exact
``G`` when the "sample" is the enumeration of all pairs, and an estimate of it when the pairs were sampled; its
derivative through the weights is ``(d_nu theta*)^T grad_theta G`` with ``grad_theta G[s, a] = sum_i w_i (l_i -
G) (N_i1[s, a] + N_i2[s, a])`` (the visit counts of the pair's two trajectories): the score-function form of the
derivative of an expectation under ``pi_theta``, with the loss mean as its baseline.

**The demo.** A 5x5 gridworld (``common.tabular.gridworld``, deterministic) from the bottom-left corner to the
bottom-right one. The hidden human reward prefers a path: the detour up the left column, along the middle row and
down the right column costs nothing, other cells are rough (-1 per arrival), the three bottom-row cells between
start and goal are lava (-5), the goal pays +10; one-hot state features on arrival, so ``r_nu`` is linear in
state features and the human reward is realisable. The human labels a pair of trajectories by Bradley-Terry on
their discounted true returns. Both methods start from the same policy ``pi_0``, soft-optimal for a "demonstrated"
reward ``nu_0`` (path 0, every other cell -1, goal 0): it keeps to the path but has no drive to the goal, and it
almost never touches the lava. **Standard RLHF** fits ``nu`` by regularised maximum likelihood on ``N`` pairs
from ``pi_0`` and returns the soft-optimal policy (one curve point per ``N``, nested datasets). **PARL** alternates:
query ``queries_per_round`` pairs from ``pi_theta*(nu)``, then ``steps_per_round`` hypergradient steps on ``G``.
**PARL without the distribution term** (an ablation, not in the paper) takes the same on-policy queries and drops
``(d_nu theta*)^T grad_theta G``. The score is the true discounted return of the soft-optimal policy from the start
as a fraction of the true optimal return ``J*`` (value iteration on the true reward). Measured over seeds: queries
until the fraction first reaches 0.9 (a seed that never does within the budget counts as the budget, a lower
bound, and the fraction of seeds that got there is reported beside it), the fraction at the end of the budget, the
discounted lava occupancy of the final policy and how many queried trajectories touched lava; the return curves
(mean and per seed) are in ``settings["return_curves"]``. A Monte-Carlo check of ``G`` itself (expected labels) at
the true reward and at a quarter of it is in ``settings["upper_objective_check"]``.

**What came out** (full demo, 5 seeds, 400 queries; ``docs/suite/results/parl.json``): fixed-data RLHF learns
nothing about the lava (its ``pi_0`` data almost never touch it, so the penalty leaves those rewards at 0), takes
the shortcut and ends far below 0: the distribution-shift half of the claim holds. PARL with the exact
hypergradient never reached 0.9 at any step size tried (0.02 / 0.05 / 0.1: 0.66 / 0.33 / 0.14 of ``J*`` at the
budget), while the same loop without the distribution term reached 0.9 on 5 / 5 / 4 of 5 seeds. The reason is the
objective, not the estimator: ``G`` is the Bradley-Terry loss on the policy's *own* pairs, which is lower for
policies whose pairs are easy to rank; at temperature 0.15 ``G`` is about 0.69 at the true reward (fraction 0.99)
and about 0.54 at a quarter of it (fraction 0.83), so the term ``(d_nu theta*)^T grad_theta G`` pulls away from the
aligned policy. The hypergradient itself matches finite differences of the exact ``G`` (tests).

**Choices where the paper is silent** (it works with deep RL on DM Control / Meta-World):
- lower level: entropy-regularised soft value iteration, solved exactly, and ``theta = log pi``; the implicit
  function theorem is applied to the soft Bellman fixed point, whose Jacobian ``I - gamma P Pi`` is invertible for
  ``gamma < 1``. (The paper's ``-[grad^2_theta V]^-1 grad^2_theta,nu V`` on softmax logits is singular along a
  per-state shift of the logits; the fixed-point form is the same derivative of the policy without that null space.)
- upper loss: Bradley-Terry negative log-likelihood ``-y log sigma(R_nu(tau1) - R_nu(tau2)) - (1 - y) log
  sigma(R_nu(tau2) - R_nu(tau1))`` on discounted feature returns, plus ``(l2 / 2)|nu|^2`` (maximum likelihood is
  unbounded on separable pairs and unidentified on unvisited states); the same penalty for RLHF's fit.
- data reuse: every queried pair is kept; its weight for ``pi_theta*(nu)`` is the trajectory-pair likelihood
  ratio against the mixture of all query policies so far (the balance heuristic of multiple importance sampling),
  self-normalised. This keeps ``G`` an estimate at the current ``nu``, as the rule requires, without discarding
  queries. (Weights only against each pair's own query policy were tried: the effective sample size collapsed.)
- step: plain gradient descent ``nu <- nu - step_size * grad`` (A-PARL's form), the lower level re-solved exactly
  after every step; ``step_size`` = 0.05 of {0.02, 0.05, 0.1} (the best for the ablation; PARL failed at all).
- trajectories of at most ``horizon`` steps from the start state, ending early at the goal; the human's
  rationality ``beta = 1`` in return units.
- settings tried for the world: a uniform initial policy with the goal 8 steps away (nothing reached the goal
  within the horizon, no method learned), path bonuses instead of costs (an oscillating local optimum), and
  temperatures 0.3 / 0.2 / 0.15 (0.15 kept: at 0.3 even the true reward's soft-optimal policy scores 0.96 of J*).

**Formula checks.** The report marks the rule **[paper]**; there is no official code to check it against, and only
the abstract could be read here, so the section references above are to the paper's structure (problem, then
A-PARL) and no equation numbers are given. The
hypergradient is checked in the tests against central finite differences of the exact ``G`` (all trajectory
pairs of a tiny MDP enumerated), and ``d log pi / d nu`` against finite differences of soft value iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit, logsumexp

from safetybed.suite.common.tabular import (
    TabularMDP,
    gridworld,
    policy_evaluation,
    sample_episode,
    soft_value_iteration,
    value_iteration,
)
from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["ENTRY", "Config", "PreferencePairs", "SoftOptimum", "bradley_terry_loss", "demo",
           "parl_hypergradient", "soft_optimum"]

# -- the demo's world: a 5x5 grid whose hidden reward prefers a detour around lava ------------------------------
GRID_SIZE = 5
START = (4, 0)
GOAL = (4, 4)
#: The preferred path: up the left column, along the middle row, down the right column (8 steps to the goal).
PATH = ((4, 0), (3, 0), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (3, 4))
#: The shortcut the preferred path avoids: the bottom row between start and goal (4 steps to the goal).
LAVA = ((4, 1), (4, 2), (4, 3))
ROUGH_REWARD = -1.0  # [return units] per arrival on any other cell
LAVA_REWARD = -5.0  # [return units] per arrival on lava
GOAL_REWARD = 10.0  # [return units] on arrival at the (absorbing) goal
#: The initial ("demonstrated") reward: path 0, every other cell -1, the goal not valued.
INITIAL_OFF_PATH_REWARD = -1.0


@dataclass(frozen=True)
class Config:
    """The demo's settings. The paper has no tabular experiment; where a default is not the paper's, it says why."""

    gamma: float = 0.95
    """Discount of the MDP, of the returns the human compares and of the evaluation (``gridworld``'s default)."""
    temperature: float = 0.15
    """Entropy temperature ``tau`` of the lower level [return units]; 0.15: the true reward's soft-optimal policy
    then scores 0.996 of the hard optimum, so 0.9 is reachable, and trajectories still differ (tried 0.3, 0.2)."""
    horizon: int = 12
    """Steps per queried trajectory [steps]: the preferred path takes 8, so a hesitant policy misses the goal."""
    human_rationality: float = 1.0
    """Bradley-Terry temperature ``beta`` of the simulated human [return units]."""
    l2: float = 0.01
    """Weight of ``(l2 / 2)|nu|^2`` in both methods' upper loss (keeps unvisited states' rewards at 0)."""
    query_budget: int = 400
    """Preference queries (trajectory pairs) each method may ask for."""
    queries_per_round: int = 20
    """PARL's pairs per round, and the spacing of both methods' curve points."""
    steps_per_round: int = 5
    """PARL's hypergradient steps per round (A-PARL takes one upper step per outer iteration; 5 per 20 queries
    keeps the number of lower-level solves small)."""
    step_size: float = 0.05
    """Gradient-descent step on ``nu``, of the three tried (0.02, 0.05, 0.1) the best for the ablation; the exact
    hypergradient reached 0.9 at none of them."""
    target_fraction: float = 0.9
    """The claim's threshold: return as a fraction of the true optimal return."""
    fewer_queries_fraction: float = 0.3
    """The claim's saving: PARL needs at least this fraction fewer queries than RLHF."""
    seeds: int = 5
    """Seeds of the demo (seed, seed + 1, ...)."""

    def __post_init__(self) -> None:
        for name in ("horizon", "query_budget", "queries_per_round", "steps_per_round", "seeds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        for name in ("temperature", "human_rationality", "step_size"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected > 0, got {getattr(self, name)!r}")
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma: expected in (0, 1), got {self.gamma!r}")
        if self.l2 < 0:
            raise ValueError(f"l2: expected >= 0, got {self.l2!r}")
        if self.query_budget % self.queries_per_round:
            raise ValueError(f"query_budget: expected a multiple of queries_per_round={self.queries_per_round}, "
                             f"got {self.query_budget}")
        if not 0 < self.target_fraction <= 1 or not 0 <= self.fewer_queries_fraction < 1:
            raise ValueError(f"target_fraction in (0, 1] and fewer_queries_fraction in [0, 1) expected, got "
                             f"{self.target_fraction!r}, {self.fewer_queries_fraction!r}")


# -- the lower level: the soft-optimal policy and its derivative in nu ------------------------------------------
@dataclass(frozen=True)
class SoftOptimum:
    """``theta*(nu)``: the entropy-regularised optimal policy of ``r_nu = features . nu`` and its derivative.

    Attributes:
        policy: ``pi[s, a]``.
        log_policy: ``theta[s, a] = log pi(a | s) = (Q - V) / tau``.
        q: soft ``Q[s, a]``; v: soft ``V[s]``.
        dlog_policy_dnu: ``d theta[s, a] / d nu[k]``, shape ``[S, A, d]`` (the implicit derivative).
    """

    policy: np.ndarray
    log_policy: np.ndarray
    q: np.ndarray
    v: np.ndarray
    dlog_policy_dnu: np.ndarray


def soft_optimum(dynamics: TabularMDP, features: np.ndarray, nu: np.ndarray, *, temperature: float) -> SoftOptimum:
    """Solve the lower level exactly and differentiate it (Chakraborty et al. 2024, §4: ``d_nu theta*`` by the
    implicit function theorem).

    ``dynamics`` supplies ``P``, ``gamma``, ``mu0`` and ``terminal`` (its ``R`` is ignored); ``features[s, a, k]``
    make the reward ``R = features @ nu``. The soft Bellman fixed point ``Q = R + gamma P V``, ``V = tau log sum_a
    exp(Q / tau)`` is solved by :func:`soft_value_iteration`; differentiating it gives ``dV = Pi dQ``, ``dQ =
    features + gamma P dV``, so ``dV/dnu = (I - gamma P_pi)^-1 (Pi features)``.
    """
    features = np.asarray(features, dtype=float)
    nu = np.asarray(nu, dtype=float)
    if features.shape[:2] != (dynamics.n_states, dynamics.n_actions) or features.ndim != 3:
        raise ValueError(f"features: expected shape [{dynamics.n_states}, {dynamics.n_actions}, d], got "
                         f"{features.shape}")
    if nu.shape != features.shape[2:]:
        raise ValueError(f"nu: expected shape {features.shape[2:]}, got {nu.shape}")
    mdp = TabularMDP(dynamics.P, features @ nu, dynamics.gamma, dynamics.mu0, dynamics.terminal)
    v, q, policy = soft_value_iteration(mdp, tau=temperature)
    gamma, transitions = dynamics.gamma, dynamics.P
    policy_transitions = np.einsum("sa,sat->st", policy, transitions)
    # Implicit function theorem on F(Q, nu) = Q - features nu - gamma P V(Q) = 0, solved in state space.
    dv_dnu = np.linalg.solve(np.eye(dynamics.n_states) - gamma * policy_transitions,
                             np.einsum("sa,sak->sk", policy, features))
    dq_dnu = features + gamma * np.einsum("sat,tk->sak", transitions, dv_dnu)
    return SoftOptimum(policy=policy, log_policy=(q - v[:, None]) / temperature, q=q, v=v,
                       dlog_policy_dnu=(dq_dnu - dv_dnu[:, None, :]) / temperature)


# -- the upper level: Bradley-Terry loss on pairs drawn from the current policy ---------------------------------
@dataclass(frozen=True)
class PreferencePairs:
    """Trajectories and the pairs the human compared.

    Attributes:
        states, actions: ``[n_trajectories, horizon]`` integer arrays (padding where ``mask`` is 0).
        mask: ``[n_trajectories, horizon]``, 1 on the steps the trajectory took.
        feature_returns: ``[n_trajectories, d]``, discounted feature sums ``sum_t gamma^t phi(s_t, a_t)``.
        first, second: ``[n_pairs]`` trajectory indices of each pair.
        label: ``[n_pairs]`` probability that ``first`` is preferred (0/1 for a sampled label).
        log_base_weight: ``[n_pairs]``, the pair's log-weight apart from its policy factor: its weight for the
            policy ``pi`` is ``exp(log_base_weight + log pi(actions of first) + log pi(actions of second))``,
            self-normalised. Sampled pairs: minus the log-probability of their actions under the distribution
            they were drawn from (transitions cancel). All pairs enumerated: the log-probability of their start
            states and transitions, so that the weights are the pairs' probabilities.
    """

    states: np.ndarray
    actions: np.ndarray
    mask: np.ndarray
    feature_returns: np.ndarray
    first: np.ndarray
    second: np.ndarray
    label: np.ndarray
    log_base_weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_trajectories = len(self.states)
        if not (self.actions.shape == self.mask.shape == self.states.shape) or len(self.feature_returns) != \
                n_trajectories:
            raise ValueError(f"states, actions, mask: expected one shape and feature_returns {n_trajectories} rows, "
                             f"got {self.states.shape}, {self.actions.shape}, {self.mask.shape}, "
                             f"{np.shape(self.feature_returns)}")
        n_pairs = len(self.first)
        base = np.zeros(n_pairs) if self.log_base_weight is None else np.asarray(self.log_base_weight, float)
        if not (len(self.second) == len(self.label) == len(base) == n_pairs):
            raise ValueError(f"first, second, label, log_base_weight: expected {n_pairs} entries each, got "
                             f"{len(self.second)}, {len(self.label)}, {len(base)}")
        object.__setattr__(self, "log_base_weight", base)

    def trajectory_log_likelihood(self, log_policy: np.ndarray) -> np.ndarray:
        """``sum_t log pi(a_t | s_t)`` of every trajectory under ``log_policy[s, a]``."""
        return (self.mask * log_policy[self.states, self.actions]).sum(axis=1)


def bradley_terry_loss(feature_difference: np.ndarray, label: np.ndarray, nu: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pair Bradley-Terry negative log-likelihood and its gradient in ``nu`` (the upper loss of PARL's RLHF
    instance, §3): ``z = (Phi(tau1) - Phi(tau2)) . nu``, ``l = -y log sigma(z) - (1 - y) log sigma(-z)``,
    ``dl/dnu = (sigma(z) - y) (Phi(tau1) - Phi(tau2))``."""
    margin = feature_difference @ nu
    loss = -(label * log_expit(margin) + (1 - label) * log_expit(-margin))
    return {"loss": loss, "grad": (expit(margin) - label)[:, None] * feature_difference}


def parl_hypergradient(optimum: SoftOptimum, pairs: PreferencePairs, nu: np.ndarray, *, l2: float = 0.0,
                       include_distribution_term: bool = True) -> dict[str, np.ndarray | float]:
    """PARL's upper loss ``G(nu)`` on ``pairs`` weighted for ``pi_theta*(nu)``, and its hypergradient
    ``d_nu G + (d_nu theta*)^T grad_theta G`` (Chakraborty et al. 2024, §4, A-PARL's hypergradient).

    ``optimum`` must be :func:`soft_optimum` at ``nu``. The weights ``w_i`` are self-normalised (see
    :class:`PreferencePairs`), so ``G = sum_i w_i l_i + (l2 / 2)|nu|^2``. Returns ``loss_upper`` (G),
    ``loss_preference`` (its data part), ``grad_direct`` (``d_nu G`` at fixed data distribution),
    ``grad_distribution`` (``(d_nu theta*)^T grad_theta G``, zero when ``include_distribution_term`` is False),
    ``grad_theta`` (``grad_theta G[s, a]``), ``hypergradient`` and ``effective_sample_size`` (``1 / sum w^2``).
    """
    nu = np.asarray(nu, dtype=float)
    trajectory_ll = pairs.trajectory_log_likelihood(optimum.log_policy)
    log_weight = pairs.log_base_weight + trajectory_ll[pairs.first] + trajectory_ll[pairs.second]
    weight = np.exp(log_weight - logsumexp(log_weight))
    terms = bradley_terry_loss(pairs.feature_returns[pairs.first] - pairs.feature_returns[pairs.second],
                               pairs.label, nu)
    loss_preference = float(weight @ terms["loss"])
    grad_direct = weight @ terms["grad"] + l2 * nu
    # grad_theta G[s, a] = sum_i w_i (l_i - G) (N_i1 + N_i2)[s, a]: the derivative through the pair's likelihood
    # under pi_theta (self-normalisation supplies the baseline G).
    pair_coefficient = weight * (terms["loss"] - loss_preference)
    trajectory_coefficient = (np.bincount(pairs.first, pair_coefficient, minlength=len(pairs.states))
                              + np.bincount(pairs.second, pair_coefficient, minlength=len(pairs.states)))
    n_states, n_actions = optimum.log_policy.shape
    grad_theta = np.bincount((pairs.states * n_actions + pairs.actions).ravel(),
                             (pairs.mask * trajectory_coefficient[:, None]).ravel(),
                             minlength=n_states * n_actions).reshape(n_states, n_actions)
    grad_distribution = (np.einsum("sa,sak->k", grad_theta, optimum.dlog_policy_dnu) if include_distribution_term
                         else np.zeros_like(nu))
    return {"loss_upper": loss_preference + 0.5 * l2 * float(nu @ nu), "loss_preference": loss_preference,
            "grad_direct": grad_direct, "grad_distribution": grad_distribution, "grad_theta": grad_theta,
            "hypergradient": grad_direct + grad_distribution,
            "effective_sample_size": float(1.0 / np.sum(weight ** 2))}


# -- the demo -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _World:
    dynamics: TabularMDP
    features: np.ndarray  # [S, A, S]: one-hot of the arrival state (zero out of the absorbing goal)
    true_nu: np.ndarray
    initial_nu: np.ndarray
    lava_states: np.ndarray
    optimal_return: float


def _world(config: Config) -> _World:
    dynamics = gridworld(GRID_SIZE, gamma=config.gamma, goal=GOAL, start=START, goal_reward=0.0)
    n = dynamics.n_states
    cell = {(row, col): row * GRID_SIZE + col for row in range(GRID_SIZE) for col in range(GRID_SIZE)}
    goal = cell[GOAL]
    features = dynamics.P.copy()  # E[one_hot(s') | s, a]: the reward is paid on arrival, linear in state features
    features[goal] = 0.0
    true_nu = np.full(n, ROUGH_REWARD)
    true_nu[[cell[c] for c in PATH]] = 0.0
    true_nu[[cell[c] for c in LAVA]] = LAVA_REWARD
    true_nu[goal] = GOAL_REWARD
    initial_nu = np.full(n, INITIAL_OFF_PATH_REWARD)
    initial_nu[[cell[c] for c in PATH]] = 0.0
    initial_nu[goal] = 0.0
    true_mdp = TabularMDP(dynamics.P, features @ true_nu, config.gamma, dynamics.mu0, dynamics.terminal)
    optimal_return = float(dynamics.mu0 @ value_iteration(true_mdp)[0])
    return _World(dynamics, features, true_nu, initial_nu, np.array([cell[c] for c in LAVA]), optimal_return)


def _evaluate(world: _World, policy: np.ndarray) -> tuple[float, float]:
    """The policy's true return as a fraction of ``J*``, and its discounted lava occupancy from the start."""
    true_mdp = TabularMDP(world.dynamics.P, world.features @ world.true_nu, world.dynamics.gamma,
                          world.dynamics.mu0, world.dynamics.terminal)
    fraction = float(world.dynamics.mu0 @ policy_evaluation(true_mdp, policy)) / world.optimal_return
    lava_mdp = TabularMDP(world.dynamics.P, world.features[:, :, world.lava_states].sum(axis=2),
                          world.dynamics.gamma, world.dynamics.mu0, world.dynamics.terminal)
    return fraction, float(world.dynamics.mu0 @ policy_evaluation(lava_mdp, policy))


def _query(world: _World, policy: np.ndarray, n_pairs: int, config: Config, rng: np.random.Generator
           ) -> PreferencePairs:
    """``n_pairs`` fresh pairs from ``policy``, labelled by the simulated Bradley-Terry human."""
    n_trajectories = 2 * n_pairs
    states = np.zeros((n_trajectories, config.horizon), int)
    actions = np.zeros((n_trajectories, config.horizon), int)
    mask = np.zeros((n_trajectories, config.horizon))
    for i in range(n_trajectories):
        for t, (s, a, _, _) in enumerate(sample_episode(world.dynamics, policy, horizon=config.horizon, rng=rng)):
            states[i, t], actions[i, t], mask[i, t] = s, a, 1.0
    discount = config.gamma ** np.arange(config.horizon)
    feature_returns = np.einsum("nt,ntk->nk", mask * discount, world.features[states, actions])
    true_returns = feature_returns @ world.true_nu
    first, second = np.arange(n_pairs), np.arange(n_pairs, n_trajectories)
    prefer_first = expit((true_returns[first] - true_returns[second]) / config.human_rationality)
    label = (rng.random(n_pairs) < prefer_first).astype(float)
    return PreferencePairs(states, actions, mask, feature_returns, first, second, label)


def _concatenate(a: PreferencePairs, b: PreferencePairs) -> PreferencePairs:
    offset = len(a.states)
    return PreferencePairs(np.concatenate([a.states, b.states]), np.concatenate([a.actions, b.actions]),
                           np.concatenate([a.mask, b.mask]), np.concatenate([a.feature_returns, b.feature_returns]),
                           np.concatenate([a.first, b.first + offset]), np.concatenate([a.second, b.second + offset]),
                           np.concatenate([a.label, b.label]))


def _fit_rlhf(pairs: PreferencePairs, n_pairs: int, l2: float, dimension: int) -> np.ndarray:
    """Standard RLHF's reward: regularised Bradley-Terry maximum likelihood on the first ``n_pairs`` pairs."""
    difference = (pairs.feature_returns[pairs.first] - pairs.feature_returns[pairs.second])[:n_pairs]
    label = pairs.label[:n_pairs]

    def objective(nu: np.ndarray) -> tuple[float, np.ndarray]:
        terms = bradley_terry_loss(difference, label, nu)
        return float(terms["loss"].mean() + 0.5 * l2 * nu @ nu), terms["grad"].mean(axis=0) + l2 * nu

    return minimize(objective, np.zeros(dimension), jac=True, method="L-BFGS-B").x


@dataclass(frozen=True)
class _Run:
    fractions: np.ndarray  # true-return fraction after each round of queries
    final_lava_occupancy: float
    lava_coverage: float  # fraction of queried trajectories that touched lava


def _run_rlhf(world: _World, config: Config, rng: np.random.Generator) -> _Run:
    initial_policy = soft_optimum(world.dynamics, world.features, world.initial_nu,
                                  temperature=config.temperature).policy
    pairs = _query(world, initial_policy, config.query_budget, config, rng)
    fractions, lava = [], math.nan
    for n_pairs in range(config.queries_per_round, config.query_budget + 1, config.queries_per_round):
        nu = _fit_rlhf(pairs, n_pairs, config.l2, world.true_nu.size)
        fraction, lava = _evaluate(world, soft_optimum(world.dynamics, world.features, nu,
                                                       temperature=config.temperature).policy)
        fractions.append(fraction)
    return _Run(np.array(fractions), lava, _lava_coverage(world, pairs))


def _lava_coverage(world: _World, pairs: PreferencePairs) -> float:
    return float((np.isin(pairs.states, world.lava_states) & (pairs.mask > 0)).any(axis=1).mean())


def _run_parl(world: _World, config: Config, rng: np.random.Generator, *, include_distribution_term: bool) -> _Run:
    nu = world.initial_nu.copy()
    optimum = soft_optimum(world.dynamics, world.features, nu, temperature=config.temperature)
    buffer = _query(world, optimum.policy, 0, config, rng)
    query_log_policies: list[np.ndarray] = []
    fractions, lava = [], math.nan
    for _ in range(config.query_budget // config.queries_per_round):
        buffer = _concatenate(buffer, _query(world, optimum.policy, config.queries_per_round, config, rng))
        query_log_policies.append(optimum.log_policy)
        # Balance-heuristic weights: each pair against the mixture of all query policies so far.
        pair_ll = np.array([ll[buffer.first] + ll[buffer.second] for ll in
                            (buffer.trajectory_log_likelihood(lp) for lp in query_log_policies)])
        log_mixture = logsumexp(pair_ll, axis=0) - math.log(len(query_log_policies))
        weighted = PreferencePairs(buffer.states, buffer.actions, buffer.mask, buffer.feature_returns,
                                   buffer.first, buffer.second, buffer.label, -log_mixture)
        for _ in range(config.steps_per_round):
            terms = parl_hypergradient(optimum, weighted, nu, l2=config.l2,
                                       include_distribution_term=include_distribution_term)
            nu = nu - config.step_size * terms["hypergradient"]
            optimum = soft_optimum(world.dynamics, world.features, nu, temperature=config.temperature)
        fraction, lava = _evaluate(world, optimum.policy)
        fractions.append(fraction)
    return _Run(np.array(fractions), lava, _lava_coverage(world, buffer))


def _queries_to_target(run: _Run, config: Config) -> float | None:
    reached = np.flatnonzero(run.fractions >= config.target_fraction)
    return None if reached.size == 0 else float((reached[0] + 1) * config.queries_per_round)


def _upper_objective_check(world: _World, config: Config, rng: np.random.Generator, *, n_pairs: int = 1000
                           ) -> dict[str, dict[str, float]]:
    """Monte-Carlo ``G`` (expected human labels, no penalty) and the true-return fraction at the true reward and at
    a quarter of it: where PARL's upper objective is lower, its minimiser would move."""
    found = {}
    for label, scale in (("true reward", 1.0), ("0.25 x true reward", 0.25)):
        nu = scale * world.true_nu
        policy = soft_optimum(world.dynamics, world.features, nu, temperature=config.temperature).policy
        pairs = _query(world, policy, n_pairs, config, rng)
        true_returns = pairs.feature_returns @ world.true_nu
        expected_label = expit((true_returns[pairs.first] - true_returns[pairs.second]) / config.human_rationality)
        loss = bradley_terry_loss(pairs.feature_returns[pairs.first] - pairs.feature_returns[pairs.second],
                                  expected_label, nu)["loss"]
        found[label] = {"G": float(loss.mean()), "G_standard_error": float(loss.std(ddof=1) / math.sqrt(n_pairs)),
                        "return_fraction": _evaluate(world, policy)[0]}
    return found


def demo(*, fast: bool, seed: int, config: Config | None = None) -> DemoResult:
    """PARL against fixed-data RLHF at equal numbers of preference queries on the lava-detour gridworld."""
    config = config or (Config(query_budget=160, seeds=2) if fast else Config())
    world = _world(config)
    seeds = tuple(range(seed, seed + config.seeds))
    methods = {"parl": {"include_distribution_term": True}, "parl_direct_only": {"include_distribution_term": False}}
    runs: dict[str, list[_Run]] = {"rlhf": [], **{name: [] for name in methods}}
    for s in seeds:
        # Per seed: RLHF's, PARL's and the ablation's streams (children 0, 1, 2 of the seed's SeedSequence).
        rlhf_rng, *method_rngs = (np.random.default_rng(child) for child in
                                  np.random.SeedSequence(s).spawn(1 + len(methods)))
        runs["rlhf"].append(_run_rlhf(world, config, rlhf_rng))
        for (name, options), rng in zip(methods.items(), method_rngs, strict=True):
            runs[name].append(_run_parl(world, config, rng, **options))
    # The G check draws from child 3 of the first seed, a stream no run uses.
    check_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2 + len(methods))[-1])
    objective_check = _upper_objective_check(world, config, check_rng)

    key = f"queries to {config.target_fraction} (never = budget, a lower bound)"
    reach_key = f"seeds reaching {config.target_fraction} within budget"

    def numbers(name: str) -> dict:
        hits = [_queries_to_target(run, config) for run in runs[name]]
        return {
            key: measure([config.query_budget if h is None else h for h in hits], unit="queries"),
            reach_key: measure([h is not None for h in hits], unit="fraction"),
            "return at budget": measure([run.fractions[-1] for run in runs[name]], unit="fraction of J*"),
            "lava occupancy of final policy": measure([run.final_lava_occupancy for run in runs[name]],
                                                      unit="discounted visits"),
            "queried trajectories touching lava": measure([run.lava_coverage for run in runs[name]],
                                                          unit="fraction"),
        }

    measured, baseline, ablation = numbers("parl"), numbers("rlhf"), numbers("parl_direct_only")
    measured.update({f"{label} (no distribution term)": value for label, value in ablation.items()})
    parl_queries, rlhf_queries = measured[key].mean, baseline[key].mean
    parl_reaches = measured[reach_key].mean == 1.0
    # RLHF's censored mean is a lower bound on its true mean, so this ratio is conservative for the claim.
    fewer = parl_reaches and parl_queries <= (1 - config.fewer_queries_fraction) * rlhf_queries
    rlhf_plateaus = baseline["return at budget"].mean < config.target_fraction
    verdict = "reproduced" if fewer and rlhf_plateaus else "partly" if fewer or rlhf_plateaus else "not reproduced"
    true_g, scaled_g = (objective_check[k]["G"] for k in ("true reward", "0.25 x true reward"))
    at_budget = {name: m["return at budget"].mean for name, m in (("parl", measured), ("rlhf", baseline))}
    objective_says = (f"PARL's G is lower at 0.25 x the true reward than at it ({scaled_g:.3f} vs {true_g:.3f}), so "
                      f"its exact hypergradient pulls towards easier-to-rank, less aligned policies"
                      if scaled_g < true_g else
                      f"PARL's G is not lower at 0.25 x the true reward ({scaled_g:.3f} vs {true_g:.3f})")
    why = (f"PARL reached {config.target_fraction} of J* on {measured[reach_key].mean:.0%} of seeds "
           f"({parl_queries:.0f} queries vs RLHF's >= {rlhf_queries:.0f}; {at_budget['parl']:.2f} vs "
           f"{at_budget['rlhf']:.2f} of J* at the budget); fixed-data RLHF "
           f"{'stays below' if rlhf_plateaus else 'reaches'} {config.target_fraction} (its queries touch lava in "
           f"{baseline['queried trajectories touching lava'].mean:.1%} of trajectories, its final policy's "
           f"discounted lava occupancy is {baseline['lava occupancy of final policy'].mean:.2f}); without the "
           f"distribution term the same on-policy loop reached it on {ablation[reach_key].mean:.0%} of seeds "
           f"({ablation[key].mean:.0f} queries); {objective_says}; step sizes 0.02, 0.05, 0.1 tried")
    counts = list(range(config.queries_per_round, config.query_budget + 1, config.queries_per_round))
    curves = {name: {"mean": np.mean([run.fractions for run in runs[name]], axis=0).round(4).tolist(),
                     "per_seed": [run.fractions.round(4).tolist() for run in runs[name]]} for name in runs}
    return DemoResult(
        name="parl",
        claim=(f"PARL reaches >= {config.target_fraction} of the true optimal return with >= "
               f"{config.fewer_queries_fraction:.0%} fewer preference queries than RLHF on a fixed initial-policy "
               f"dataset, which plateaus below it because of distribution shift"),
        measured=measured, baseline=baseline, verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings={**{name: getattr(config, name) for name in config.__dataclass_fields__},
                  "world": {"grid_size": GRID_SIZE, "start": START, "goal": GOAL, "path": PATH, "lava": LAVA,
                            "rough_reward": ROUGH_REWARD, "lava_reward": LAVA_REWARD, "goal_reward": GOAL_REWARD,
                            "initial_off_path_reward": INITIAL_OFF_PATH_REWARD,
                            "optimal_return": world.optimal_return},
                  "upper_objective_check": objective_check,
                  "return_curves": {"query_counts": counts, "unit": "true return as a fraction of J*",
                                    "rlhf": curves["rlhf"], "parl": curves["parl"],
                                    "parl_without_distribution_term": curves["parl_direct_only"]}},
    )


ENTRY = SuiteEntry(
    name="parl",
    title="PARL: A Unified Framework for Policy Alignment in Reinforcement Learning",
    citation="Chakraborty et al. 2024",
    family="policy_opt",
    module=__name__,
    rule=parl_hypergradient,
    demo=demo,
)
