"""Tabular MDPs with exact solutions: the oracles of the suite's math tests and the small demo problems.

A :class:`TabularMDP` holds ``P[s, a, s']`` and ``R[s, a]`` (expected reward) with a discount ``gamma`` and an
initial distribution ``mu0``. Exact answers: :func:`policy_evaluation` (a linear solve), :func:`value_iteration`
(to a tolerance), :func:`soft_value_iteration` (entropy-regularised, temperature ``tau``), and for episodic
problems :func:`finite_horizon_values` (backward induction over ``H`` steps). Problem builders:
:func:`gridworld`, :func:`riverswim`, :func:`combination_lock`.

Example (a 2-state chain whose values are known by hand)::

    >>> import numpy as np
    >>> mdp = TabularMDP(P=np.array([[[1.0, 0.0]], [[0.0, 1.0]]]), R=np.array([[0.0], [1.0]]), gamma=0.5)
    >>> policy_evaluation(mdp, np.ones((2, 1))).round(6).tolist()
    [0.0, 2.0]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TabularMDP", "combination_lock", "finite_horizon_values", "greedy", "gridworld",
           "policy_evaluation", "q_values", "riverswim", "sample_episode", "soft_value_iteration",
           "value_iteration"]


@dataclass(frozen=True)
class TabularMDP:
    """``P[s, a, s']`` transition probabilities, ``R[s, a]`` expected rewards, discount ``gamma`` and initial
    distribution ``mu0[s]`` (uniform when omitted). ``terminal[s]`` marks absorbing states with zero reward
    (used only for sampling episodes)."""

    P: np.ndarray
    R: np.ndarray
    gamma: float = 0.99
    mu0: np.ndarray | None = None
    terminal: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        P = np.asarray(self.P, dtype=float)
        R = np.asarray(self.R, dtype=float)
        if P.ndim != 3 or P.shape[0] != P.shape[2]:
            raise ValueError(f"P: expected shape [S, A, S], got {P.shape}")
        if R.shape != P.shape[:2]:
            raise ValueError(f"R: expected shape {P.shape[:2]}, got {R.shape}")
        if not np.allclose(P.sum(axis=2), 1.0, atol=1e-9) or (P < 0).any():
            raise ValueError("P: every P[s, a, :] must be a probability distribution")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma: expected in [0, 1], got {self.gamma}")
        mu0 = np.full(P.shape[0], 1.0 / P.shape[0]) if self.mu0 is None else np.asarray(self.mu0, dtype=float)
        if mu0.shape != (P.shape[0],) or not np.isclose(mu0.sum(), 1.0):
            raise ValueError(f"mu0: expected a distribution over {P.shape[0]} states, got shape {mu0.shape}")
        terminal = np.zeros(P.shape[0], bool) if self.terminal is None else np.asarray(self.terminal, bool)
        object.__setattr__(self, "P", P)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "mu0", mu0)
        object.__setattr__(self, "terminal", terminal)

    @property
    def n_states(self) -> int:
        return int(self.P.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.P.shape[1])


def _check_policy(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    policy = np.asarray(policy, dtype=float)
    if policy.shape != (mdp.n_states, mdp.n_actions):
        raise ValueError(f"policy: expected shape {(mdp.n_states, mdp.n_actions)}, got {policy.shape}")
    return policy / policy.sum(axis=1, keepdims=True)


def q_values(mdp: TabularMDP, v: np.ndarray) -> np.ndarray:
    """``Q[s, a] = R[s, a] + gamma * sum_s' P[s, a, s'] V[s']``."""
    return mdp.R + mdp.gamma * mdp.P @ np.asarray(v, dtype=float)


def policy_evaluation(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    """Exact ``V^pi`` by solving ``(I - gamma P_pi) V = R_pi`` (``gamma < 1``)."""
    if mdp.gamma >= 1:
        raise ValueError("policy_evaluation: needs gamma < 1; use finite_horizon_values for episodic problems")
    policy = _check_policy(mdp, policy)
    p_pi = np.einsum("sa,sat->st", policy, mdp.P)
    r_pi = (policy * mdp.R).sum(axis=1)
    return np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * p_pi, r_pi)


def value_iteration(mdp: TabularMDP, *, tol: float = 1e-10, max_iter: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """Optimal ``(V*, Q*)`` by value iteration until the sup-norm change is below ``tol``."""
    v = np.zeros(mdp.n_states)
    for _ in range(max_iter):
        q = q_values(mdp, v)
        new_v = q.max(axis=1)
        if np.max(np.abs(new_v - v)) < tol:
            return new_v, q_values(mdp, new_v)
        v = new_v
    raise RuntimeError(f"value_iteration: no convergence to {tol} in {max_iter} iterations (gamma={mdp.gamma})")


def soft_value_iteration(mdp: TabularMDP, *, tau: float, tol: float = 1e-10,
                         max_iter: int = 100_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entropy-regularised optimum ``(V, Q, pi)``: ``V = tau log sum_a exp(Q / tau)``, ``pi = exp((Q - V) / tau)``."""
    if tau <= 0:
        raise ValueError(f"tau: expected > 0, got {tau}")
    v = np.zeros(mdp.n_states)
    for _ in range(max_iter):
        q = q_values(mdp, v)
        top = q.max(axis=1)
        new_v = top + tau * np.log(np.exp((q - top[:, None]) / tau).sum(axis=1))
        if np.max(np.abs(new_v - v)) < tol:
            q = q_values(mdp, new_v)
            return new_v, q, np.exp((q - new_v[:, None]) / tau)
        v = new_v
    raise RuntimeError(f"soft_value_iteration: no convergence to {tol} in {max_iter} iterations")


def finite_horizon_values(mdp: TabularMDP, horizon: int, policy: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Undiscounted ``H``-step values by backward induction: ``V[h, s]`` and ``Q[h, s, a]`` for ``h = 0..H-1``
    (``V[H] = 0``), of ``policy[h, s, a]`` (or ``[s, a]``, stationary) when given, else optimal."""
    v = np.zeros((horizon + 1, mdp.n_states))
    q = np.zeros((horizon, mdp.n_states, mdp.n_actions))
    for h in reversed(range(horizon)):
        q[h] = mdp.R + mdp.P @ v[h + 1]
        if policy is None:
            v[h] = q[h].max(axis=1)
        else:
            pi = np.asarray(policy, dtype=float)
            pi = pi[h] if pi.ndim == 3 else pi
            v[h] = (_check_policy(mdp, pi) * q[h]).sum(axis=1)
    return v, q


def greedy(q: np.ndarray) -> np.ndarray:
    """The deterministic greedy policy of ``Q[..., s, a]`` as one-hot probabilities (first maximum on ties)."""
    q = np.asarray(q)
    return np.eye(q.shape[-1])[q.argmax(axis=-1)]


def sample_episode(mdp: TabularMDP, policy: np.ndarray, *, horizon: int, rng: np.random.Generator
                   ) -> list[tuple[int, int, float, int]]:
    """One episode ``[(s, a, r, s'), ...]`` of at most ``horizon`` steps from ``mu0`` under ``policy[s, a]`` (or
    ``[h, s, a]``); it stops early on a terminal state. Rewards are the expected ``R[s, a]``."""
    policy = np.asarray(policy, dtype=float)
    s = int(rng.choice(mdp.n_states, p=mdp.mu0))
    steps = []
    for h in range(horizon):
        pi = policy[h] if policy.ndim == 3 else policy
        a = int(rng.choice(mdp.n_actions, p=pi[s] / pi[s].sum()))
        s_next = int(rng.choice(mdp.n_states, p=mdp.P[s, a]))
        steps.append((s, a, float(mdp.R[s, a]), s_next))
        s = s_next
        if mdp.terminal[s]:
            break
    return steps


def gridworld(size: int = 5, *, slip: float = 0.0, goal: tuple[int, int] | None = None, goal_reward: float = 1.0,
              step_reward: float = 0.0, gamma: float = 0.95, start: tuple[int, int] = (0, 0)) -> TabularMDP:
    """A ``size x size`` grid, actions up/right/down/left, walls keep the agent in place; with probability
    ``slip`` the move goes in a uniformly random direction instead. Reaching ``goal`` (default: the far corner)
    pays ``goal_reward`` and the goal is absorbing with zero reward. State ``s = row * size + col``."""
    if size < 2:
        raise ValueError(f"size: expected >= 2, got {size}")
    if not 0 <= slip <= 1:
        raise ValueError(f"slip: expected in [0, 1], got {slip}")
    goal = goal or (size - 1, size - 1)
    n = size * size
    moves = [(-1, 0), (0, 1), (1, 0), (0, -1)]
    P = np.zeros((n, 4, n))
    R = np.full((n, 4), float(step_reward))
    goal_state = goal[0] * size + goal[1]

    def target(s: int, move: tuple[int, int]) -> int:
        row, col = divmod(s, size)
        row, col = min(max(row + move[0], 0), size - 1), min(max(col + move[1], 0), size - 1)
        return row * size + col

    for s in range(n):
        for a in range(4):
            if s == goal_state:
                P[s, a, s] = 1.0
                R[s, a] = 0.0
                continue
            for b, move in enumerate(moves):
                prob = (1 - slip) * (a == b) + slip / 4
                P[s, a, target(s, move)] += prob
            R[s, a] += goal_reward * P[s, a, goal_state]
    mu0 = np.zeros(n)
    mu0[start[0] * size + start[1]] = 1.0
    terminal = np.zeros(n, bool)
    terminal[goal_state] = True
    return TabularMDP(P, R, gamma, mu0, terminal)


def riverswim(n: int = 6, *, gamma: float = 0.95, small_reward: float = 5e-3, large_reward: float = 1.0
              ) -> TabularMDP:
    """RiverSwim (Strehl & Littman 2008): a chain of ``n`` states; action 0 (left) moves left surely and pays
    ``small_reward`` at state 0; action 1 (right) swims against the current: right w.p. 0.35, stay 0.6, left 0.05
    (0.6 right / 0.4 stay at state 0; 0.35 stay / 0.65 left at the end), paying ``large_reward`` x P(stay) at the
    far end. Starts at state 0. The optimal policy swims right; a myopic learner stays left."""
    if n < 3:
        raise ValueError(f"n: expected >= 3, got {n}")
    P = np.zeros((n, 2, n))
    R = np.zeros((n, 2))
    for s in range(n):
        P[s, 0, max(s - 1, 0)] = 1.0
        if s == 0:
            P[s, 1, 0], P[s, 1, 1] = 0.4, 0.6
        elif s == n - 1:
            P[s, 1, s], P[s, 1, s - 1] = 0.35, 0.65
        else:
            P[s, 1, s + 1], P[s, 1, s], P[s, 1, s - 1] = 0.35, 0.6, 0.05
    R[0, 0] = small_reward
    R[n - 1, 1] = large_reward * P[n - 1, 1, n - 1]
    mu0 = np.zeros(n)
    mu0[0] = 1.0
    return TabularMDP(P, R, gamma, mu0)


def combination_lock(horizon: int = 10, n_actions: int = 4, *, seed: int = 0) -> tuple[TabularMDP, np.ndarray]:
    """A combination lock of ``horizon`` steps: at step ``h`` only action ``code[h]`` advances to the next good
    state, any other action drops to an absorbing dead state; the reward 1 is paid only for the last correct
    action. States ``0..H-1`` are the good states by step (``H`` is the final state, ``H+1`` the dead state);
    returns the MDP (``gamma = 1``, start at state 0) and the ``code`` (drawn from ``seed``)."""
    if horizon < 1 or n_actions < 2:
        raise ValueError(f"horizon >= 1 and n_actions >= 2 expected, got {horizon}, {n_actions}")
    code = np.random.default_rng(seed).integers(n_actions, size=horizon)
    n = horizon + 2
    final, dead = horizon, horizon + 1
    P = np.zeros((n, n_actions, n))
    R = np.zeros((n, n_actions))
    for h in range(horizon):
        for a in range(n_actions):
            P[h, a, h + 1 if a == code[h] else dead] = 1.0
        R[h, code[h]] = 1.0 if h == horizon - 1 else 0.0
    P[final, :, final] = 1.0
    P[dead, :, dead] = 1.0
    mu0 = np.zeros(n)
    mu0[0] = 1.0
    terminal = np.zeros(n, bool)
    terminal[[final, dead]] = True
    return TabularMDP(P, R, 1.0, mu0, terminal), code
