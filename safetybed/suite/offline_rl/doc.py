"""Dichotomy of Control (DoC): condition the policy on a latent future that carries no information about luck.

Paper: Sherry Yang, Dale Schuurmans, Pieter Abbeel, Ofir Nachum (2023), "Dichotomy of Control: Separating What
You Can Control from What You Cannot" (ICLR 2023). Official code: google-research
``dichotomy_of_control/models/tabular_sdt.py`` (tabular DoC, read for this module) and ``tabular_dt.py`` (the
tabular decision-transformer baseline). The paper's text was not available here: steps are cited by the paper's
section structure and the official code, not by equation numbers.

Return-conditioned supervised learning (decision transformer, DT) learns ``pi(a | s, R)`` and acts with the
highest return ``R``; when a high return was luck, conditioning on it picks the gamble. DoC (paper Sec. 4) learns

* a posterior ``q(z | s, a, R)`` over ``K`` latents (the tabular code's future summary: the action and the binned
  return-to-go; ``K = |A| * n_bins`` as there),
* a policy ``pi(a | s, z)`` and a return model ``V(R | s, z)``, both by cross-entropy under ``z ~ q``,
* the mutual-information constraint "``z`` carries no information about the luck of any later transition"
  (the paper: ``I(z; r_k, s_{k+1} | history, s_k, a_k) = 0`` for every step ``k``) through a contrastive energy
  ``f(z, s, a, x)``: ``MI_f = E[sum_{k >= t} f(z_t, s_k, a_k, x_k) - log sum_x rho(x | s_k, a_k) exp f(z_t, s_k,
  a_k, x)]`` (a Donsker-Varadhan lower bound on that information, tight at ``f = log p(x | s, a, z) / rho(x | s,
  a)``, exactly 0 at the optimal ``f`` when ``z`` is independent of the luck). ``f`` maximises ``MI_f``; the
  posterior, policy and value minimise ``loss_actor + loss_value + energy_weight * MI_f``;
* inference: at state ``s`` pick the latent the prior can produce with the best predicted return,
  ``z*(s) = argmax_z E_V[R | s, z]``, and act with ``pi(. | s, z*(s))``.

The luck ``x_k`` is the next state ``s_{k+1}`` (the paper's ``(s_{k+1}, r_k)``; here rewards are deterministic
given ``(s, a)``, so the next state is all of it) and ``rho(x | s, a)`` is the data's transition frequency.
Everything is a table: the expectation over ``z ~ q`` is summed exactly instead of sampled with a straight-through
estimator (the official code's choice), and the loss is full-batch over frequency tables of the data.

Demo: (1) the lottery bandit: arm A pays 1 w.p. 0.3 (else 0), arm B pays 0.6 surely; returns in 3 bins on
``[0, 1]`` so only A's 1 reaches the top bin; uniform behaviour data. DT conditioned on the top bin picks A
(expected 0.3); DoC should pick B (0.6). (2) A 4x4 slippery FrozenLake (:func:`frozen_lake`, the standard map;
the move goes the intended way or either perpendicular way w.p. 1/3 each; holes terminal with 0; the goal pays 1)
with uniform behaviour data: exact expected returns of the DT, DoC and BC policies (and the optimum) by backward
induction on the MDP. Both are MDPs built with :class:`~safetybed.suite.common.tabular.TabularMDP`, so every
expected return is exact.

Choices where the paper is silent, and checks against the official code:

* Inference rule. The official tabular code picks ``argmax_z V(top bin | s, z)``; the paper's neural DoC picks the
  prior sample with the highest scalar value ``E[R | z]`` (``stochastic_decision_transformer.py``). With 2 bins
  (the paper's Bernoulli bandit, FrozenLake) they agree; on this 3-bin lottery the top-bin rule cannot prefer B
  (``p(top | B) = 0``), so the demo uses the expected-return rule and also reports the top-bin rule.
  ``E_V[R | s, z]`` uses each bin's mean data return.
* The latent must be one the prior ``p(z | s)`` produces (the paper samples 100 latents from a learned prior;
  the tabular code takes the argmax over all latents, untrained ones included). Here the prior is the aggregate
  posterior of the data at ``s`` (the optimum of the paper's KL term for a fixed ``q``) and a latent needs prior
  mass ``>= min_prior_mass = 0.01`` (a latent seen about once in 100 samples). The KL term itself is not in the
  loss (the tabular code has none either).
* Sign of the MI term for the posterior. The tabular code minimises ``energy_weight * (-f + logsumexp)`` over
  *all* variables, posterior included, which (read literally) pushes ``q`` to *raise* the bound; the paper's
  constraint wants ``q`` to lower it, with ``f`` raising it (a min-max). This module follows the paper.
* Which luck. The tabular code (a one-step bandit) contrasts the return bin; the paper contrasts each step's
  ``(s_{k+1}, r_k)``. With a per-step latent (the tabular code's ``q(z | s, a, R)``) a constraint on the step's
  own next state alone leaves ``z_t`` free to encode the luck of later steps, which on FrozenLake it did (a
  "success" latent at the start state); so ``z_t`` is contrasted with every later transition of its episode
  (``ReturnData.future``), which for the bandit is the same as the tabular code's single step.
* ``rho``: the tabular code's prior is the marginal frequency of the return bin; this module uses the conditional
  ``rho(x | s, a)``, weighted as the later transitions are, for which the bound is exactly 0 at the optimal ``f``
  when ``z`` is independent of the luck and the exact conditional MI when it is not (the tests check both).
* ``energy_steps = 5`` ascent steps of ``f`` per step of the rest: with one, the posterior escaped the bound by
  moving the luck to latents ``f`` had not caught up with (value loss near 0, bound small).
* ``energy_weight = 4``. On the lottery, encoding the luck in ``z`` lowers the value loss by exactly
  ``I(z; R | a)``, the MI it costs, so weight 1 (the official default) leaves ``q`` indifferent (2 of 5 seeds
  picked A); a weight above 1 makes the constraint bind. Tried 1, 2, 4, 10 on the lottery (2, 4 and 10 picked B on
  all 5 seeds tried) and 4 and 20 on FrozenLake over 8 seeds (neither beat DT on average).
* What FrozenLake showed (full demo: DoC 0.038 vs DT 0.032, optimum 0.335, 8 seeds): even a latent that is
  exactly the action (fixed by hand) makes DoC greedy on the data's Monte-Carlo success estimates of the uniform
  policy, worth 0.08 and 0.17 on two 1000-episode datasets (greedy on the exact uniform-policy Q gives 0.33);
  the learned posterior still leaks some luck, and the per-state argmax over latents then picks lucky ones
  (several seeds end near 0). Not fixed here: the demo reports it.
* DT and BC are the exact minimisers of their tabular cross-entropies (counts): ``pi_DT(a | s) = p(a | s, top
  bin)``, falling back to BC ``p(a | s)`` at a state without top-bin data, and to uniform at an unseen state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from safetybed.suite.common.tabular import TabularMDP, finite_horizon_values, sample_episode
from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["ENTRY", "Config", "DoCTables", "ReturnData", "bc_policy", "demo", "doc_losses", "doc_policy",
           "dt_policy", "frozen_lake", "latent_transition_weights", "lottery_bandit", "train_doc",
           "transition_scores"]


@dataclass(frozen=True)
class Config:
    """Tabular DoC hyper-parameters."""

    energy_weight: float = 4.0
    """Weight of the MI estimate in the posterior's loss (official flag ``energy_weight``, default 1; see the
    module docstring for why 4)."""
    learning_rate: float = 0.05
    """Adam learning rate of every table (the official tabular runs use 0.01 with 10,000 minibatch steps; full
    batches converge in fewer, larger steps)."""
    steps: int = 1500
    """Full-batch Adam steps."""
    n_latents: int | None = None
    """Number of latents ``K``; None means ``|A| * n_bins`` (official ``num_latents``)."""
    energy_steps: int = 5
    """Ascent steps of the energy ``f`` per step of the posterior, policy and value: the min over ``q`` of the
    max over ``f`` needs ``f`` near its best response, or ``q`` escapes the bound by moving the luck to a latent
    ``f`` has not caught up with (seen with 1 step: the value loss fell to ~0 while the bound stayed small)."""
    min_prior_mass: float = 0.01
    """A latent is eligible at inference when the aggregate posterior gives it at least this mass at ``s``."""
    init_std: float = 1.0
    """Standard deviation of the tables' truncated-normal initial logits (official ``tf.random.truncated_normal``)."""

    def __post_init__(self) -> None:
        if not self.energy_weight >= 0:
            raise ValueError(f"energy_weight: expected >= 0, got {self.energy_weight}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: expected > 0, got {self.learning_rate}")
        for name in ("steps", "energy_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if self.n_latents is not None and (not isinstance(self.n_latents, int) or self.n_latents < 1):
            raise ValueError(f"n_latents: expected None or an integer >= 1, got {self.n_latents!r}")
        if not 0 <= self.min_prior_mass < 1:
            raise ValueError(f"min_prior_mass: expected in [0, 1), got {self.min_prior_mass}")
        if not self.init_std > 0:
            raise ValueError(f"init_std: expected > 0, got {self.init_std}")


# -- data ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReturnData:
    """An offline dataset as frequency tables over its steps (every step of every episode weighs the same).

    Attributes:
        counts: ``[S, A, B]`` share of steps with state ``s``, action ``a`` and return-to-go in bin ``b``.
        future: ``[S, A, B, S, A, S']`` for each step ``t`` with ``(s, a, b)``, the transitions
            ``(s_k, a_k, s_{k+1})`` of the same episode at ``k >= t`` (``future_steps=None``) or at ``k = t`` only
            (``future_steps=1``), as a share of all steps: what the MI constraint sees.
        transition_prior: ``rho[s, a, s']``, the transition frequencies of ``future`` (each transition weighs as
            often as it is a later step of some step; uniform where ``(s, a)`` is unseen).
        bin_values: the mean data return in each bin (the bin's centre when no return falls in it).
    """

    counts: np.ndarray
    future: np.ndarray
    transition_prior: np.ndarray
    bin_values: np.ndarray

    @cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        """``counts``, ``future`` and ``log_rho`` as float32 tensors (converted once, used by every loss call)."""
        with np.errstate(divide="ignore"):
            log_rho = np.log(self.transition_prior)
        return {"counts": torch.as_tensor(self.counts, dtype=torch.float32),
                "future": torch.as_tensor(self.future, dtype=torch.float32),
                "log_rho": torch.as_tensor(log_rho, dtype=torch.float32)}

    @property
    def n_states(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_actions(self) -> int:
        return int(self.counts.shape[1])

    @property
    def n_bins(self) -> int:
        return int(self.counts.shape[2])

    @classmethod
    def from_episodes(cls, episodes: Sequence[Sequence[tuple[int, int, float, int]]], *, n_states: int,
                      n_actions: int, n_bins: int, max_return: float, future_steps: int | None = None
                      ) -> ReturnData:
        """From episodes ``[(s, a, r, s'), ...]``; a return-to-go ``R`` falls in bin
        ``min(floor(n_bins * R / max_return), n_bins - 1)``."""
        if n_bins < 2 or not max_return > 0:
            raise ValueError(f"n_bins >= 2 and max_return > 0 expected, got {n_bins}, {max_return}")
        if future_steps is not None and future_steps < 1:
            raise ValueError(f"future_steps: expected None or >= 1, got {future_steps}")
        steps, pairs, returns = [], [], []
        for episode in episodes:
            to_go = np.cumsum([r for _, _, r, _ in episode][::-1])[::-1]
            bins = np.minimum(np.floor(n_bins * to_go / max_return + 1e-9).astype(int), n_bins - 1)
            table = np.array([(s, a, b, s_next) for (s, a, _, s_next), b in zip(episode, bins, strict=True)],
                             dtype=int).reshape(-1, 4)
            first, later = np.triu_indices(len(episode))
            if future_steps is not None:
                keep = later - first < future_steps
                first, later = first[keep], later[keep]
            steps.append(table)
            pairs.append(np.concatenate([table[first, :3], table[later][:, [0, 1, 3]]], axis=1))
            returns.append(to_go)
        table, pair_table, returns_array = np.concatenate(steps), np.concatenate(pairs), np.concatenate(returns)
        if table.shape[0] == 0:
            raise ValueError("episodes: expected at least one step, got none")
        counts = np.zeros((n_states, n_actions, n_bins))
        np.add.at(counts, tuple(table[:, :3].T), 1.0 / table.shape[0])
        future = np.zeros((n_states, n_actions, n_bins, n_states, n_actions, n_states))
        np.add.at(future, tuple(pair_table.T), 1.0 / table.shape[0])
        # rho is the transition frequency under the same weighting as the pairs, so that a latent independent of
        # the data (a constant) has a bound of exactly 0 at the optimal f, and not the finite-sample difference
        # between two weightings of the same transitions.
        transitions = future.sum(axis=(0, 1, 2))
        seen = transitions.sum(axis=2, keepdims=True)
        rho = np.divide(transitions, seen, out=np.full_like(transitions, 1.0 / n_states), where=seen > 0)
        bin_values = np.array([returns_array[table[:, 2] == b].mean() if (table[:, 2] == b).any()
                               else (b + 0.5) * max_return / n_bins for b in range(n_bins)])
        return cls(counts, future, rho, bin_values)


# -- the DoC tables and losses ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DoCTables:
    """The learnable logits of tabular DoC (official ``TabularSDT`` variables).

    Attributes:
        posterior: ``[S, A, B, K]`` logits of ``q(z | s, a, R-bin)``.
        policy: ``[S, K, A]`` logits of ``pi(a | s, z)``.
        value: ``[S, K, B]`` logits of ``V(R-bin | s, z)``.
        energy: ``[S, A, S', K]`` the energy ``f(z, s, a, s')``.
    """

    posterior: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    energy: torch.Tensor

    @classmethod
    def init(cls, *, n_states: int, n_actions: int, n_bins: int, n_latents: int, std: float,
             generator: torch.Generator) -> DoCTables:
        shapes = ((n_states, n_actions, n_bins, n_latents), (n_states, n_latents, n_actions),
                  (n_states, n_latents, n_bins), (n_states, n_actions, n_states, n_latents))
        return cls(*(torch.nn.init.trunc_normal_(torch.empty(shape), std=std, a=-2 * std, b=2 * std,
                                                 generator=generator).requires_grad_() for shape in shapes))

    def parameters(self) -> list[torch.Tensor]:
        return [self.posterior, self.policy, self.value, self.energy]


def transition_scores(energy: torch.Tensor, log_rho: torch.Tensor) -> torch.Tensor:
    """``f(z, s, a, s') - log sum_x rho(x | s, a) exp f(z, s, a, x)`` for every ``(s, a, s', z)``: the
    contrastive score whose expectation under the data's ``(z, s, a, s')`` is the MI bound. ``energy`` is
    ``[S, A, S', K]``, ``log_rho`` is ``[S, A, S']``."""
    return energy - torch.logsumexp(energy + log_rho[..., None], dim=2, keepdim=True)


def latent_transition_weights(posterior_probs: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
    """The data's joint weight of (latent of step ``t``, later transition ``(s_k, a_k, s_{k+1})``), ``[S, A, S',
    K]``: ``sum_{s, a, b} future[s, a, b, ...] q(z | s, a, b)``."""
    return torch.tensordot(future, posterior_probs, dims=([0, 1, 2], [0, 1, 2]))


def doc_losses(tables: DoCTables, data: ReturnData, *, energy_weight: float) -> dict[str, torch.Tensor]:
    """Tabular DoC losses (Yang et al. 2023, Sec. 4; official ``TabularSDT.train_step``), the expectation over
    ``z ~ q(z | s, a, R)`` summed exactly, weighted by the data's step frequencies:

    * ``loss_actor = E[-log pi(a | s, z)]``, ``loss_value = E[-log V(R | s, z)]``;
    * ``mi_estimate = E[sum_k f(z, s_k, a_k, s_{k+1}) - log sum_x rho(x | s_k, a_k) exp f(z, s_k, a_k, x)]``,
      the contrastive (Donsker-Varadhan) bound on the information ``z`` of step ``t`` carries about the luck of
      the transitions ``k`` of its episode (``data.future``);
    * ``loss_model = loss_actor + loss_value + energy_weight * mi_estimate`` with ``f`` held fixed (the posterior,
      policy and value *lower* the MI), and ``loss_energy = -mi_estimate`` with ``q`` held fixed (``f`` tightens
      the bound). Each term's gradient reaches only its own tables.
    """
    counts, future, log_rho = (data.tensors[k] for k in ("counts", "future", "log_rho"))
    q = torch.softmax(tables.posterior, dim=-1)  # [S, A, B, K]
    log_pi = torch.log_softmax(tables.policy, dim=-1).permute(0, 2, 1)[:, :, None, :]  # [S, A, 1, K]
    log_v = torch.log_softmax(tables.value, dim=-1).permute(0, 2, 1)[:, None, :, :]  # [S, 1, B, K]
    loss_actor = -(counts[..., None] * q * log_pi).sum()
    loss_value = -(counts[..., None] * q * log_v).sum()
    weights = latent_transition_weights(q, future)
    scores = transition_scores(tables.energy, log_rho)
    mi_for_model = (weights * scores.detach()).sum()
    mi_for_energy = (weights.detach() * scores).sum()
    return {"loss_actor": loss_actor, "loss_value": loss_value, "mi_estimate": mi_for_energy.detach(),
            "loss_model": loss_actor + loss_value + energy_weight * mi_for_model, "loss_energy": -mi_for_energy}


def train_doc(data: ReturnData, *, config: Config, generator: torch.Generator) -> DoCTables:
    """Fit the DoC tables by full-batch Adam: ``config.energy_steps`` ascent steps of the MI bound for ``f``
    (``loss_energy``, with ``q`` fixed), then one step of ``loss_model`` for the posterior, policy and value
    (:func:`doc_losses`), ``config.steps`` times."""
    n_latents = config.n_latents or data.n_actions * data.n_bins
    tables = DoCTables.init(n_states=data.n_states, n_actions=data.n_actions, n_bins=data.n_bins,
                            n_latents=n_latents, std=config.init_std, generator=generator)
    model_optimizer = torch.optim.Adam([tables.posterior, tables.policy, tables.value], lr=config.learning_rate)
    energy_optimizer = torch.optim.Adam([tables.energy], lr=config.learning_rate)
    future, log_rho = data.tensors["future"], data.tensors["log_rho"]
    for _ in range(config.steps):
        with torch.no_grad():  # q is fixed during f's steps, so its weights are contracted once
            weights = latent_transition_weights(torch.softmax(tables.posterior, dim=-1), future)
        for _ in range(config.energy_steps):
            energy_optimizer.zero_grad()
            (-(weights * transition_scores(tables.energy, log_rho)).sum()).backward()
            energy_optimizer.step()
        model_optimizer.zero_grad()
        doc_losses(tables, data, energy_weight=config.energy_weight)["loss_model"].backward()
        model_optimizer.step()
    return tables


def latent_prior(tables: DoCTables, data: ReturnData) -> np.ndarray:
    """``p(z | s)``: the aggregate posterior of the data at each state (uniform at an unseen state)."""
    with torch.no_grad():
        q = torch.softmax(tables.posterior, dim=-1).numpy()  # [S, A, B, K]
    counts = data.counts
    joint = np.einsum("sab,sabk->sk", counts, q)
    total = joint.sum(axis=1, keepdims=True)
    return np.divide(joint, total, out=np.full_like(joint, 1.0 / joint.shape[1]), where=total > 0)


def doc_policy(tables: DoCTables, data: ReturnData, *, min_prior_mass: float, rule: str = "expected"
               ) -> np.ndarray:
    """DoC inference (Yang et al. 2023, Sec. 4; official ``get_policy``): at each state the eligible latent
    (prior mass ``>= min_prior_mass``) with the best predicted return, then ``pi(. | s, z*)``. ``rule="expected"``
    ranks latents by ``E_V[R | s, z]`` (the paper's scalar value), ``rule="top_bin"`` by ``V(top bin | s, z)``
    (the tabular code). Returns ``[S, A]``; uniform at a state without data."""
    if rule not in ("expected", "top_bin"):
        raise ValueError(f"rule: expected 'expected' or 'top_bin', got {rule!r}")
    with torch.no_grad():
        value = torch.softmax(tables.value, dim=-1).numpy()  # [S, K, B]
        action = torch.softmax(tables.policy, dim=-1).numpy()  # [S, K, A]
    score = value @ data.bin_values if rule == "expected" else value[..., -1]
    prior = latent_prior(tables, data)
    score = np.where(prior >= min_prior_mass, score, -np.inf)
    best = score.argmax(axis=1)
    policy = action[np.arange(data.n_states), best]
    seen = data.counts.sum(axis=(1, 2)) > 0
    policy[~seen] = 1.0 / data.n_actions
    return policy


def bc_policy(data: ReturnData) -> np.ndarray:
    """Behaviour cloning: ``p(a | s)`` of the data (uniform at an unseen state)."""
    counts = data.counts.sum(axis=2)
    total = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, total, out=np.full_like(counts, 1.0 / data.n_actions), where=total > 0)


def dt_policy(data: ReturnData) -> np.ndarray:
    """Tabular return-conditioned DT conditioned on the top return bin (official ``TabularDT``): ``p(a | s, R =
    top)`` of the data, BC where a state has no top-bin data."""
    top = data.counts[:, :, -1]
    total = top.sum(axis=1, keepdims=True)
    return np.where(total > 0, top / np.where(total > 0, total, 1.0), bc_policy(data))


# -- the demo problems -----------------------------------------------------------------------------------------
def lottery_bandit(*, win_probability: float = 0.3, sure_reward: float = 0.6) -> TabularMDP:
    """The lottery bandit as a 2-step MDP: from state 0, arm A (action 0) goes to "won" (state 1) w.p.
    ``win_probability`` else "lost" (2); arm B (action 1) goes to "sure" (3). Any action then pays 1, 0 or
    ``sure_reward`` and ends in the absorbing terminal state 4. Horizon 2."""
    P = np.zeros((5, 2, 5))
    P[0, 0, 1], P[0, 0, 2], P[0, 1, 3] = win_probability, 1.0 - win_probability, 1.0
    P[1:, :, 4] = 1.0
    R = np.zeros((5, 2))
    R[1], R[3] = 1.0, sure_reward
    mu0 = np.eye(5)[0]
    return TabularMDP(P, R, 1.0, mu0, np.eye(5)[4].astype(bool))


FROZEN_LAKE_MAP = ("SFFF", "FHFH", "FFFH", "HFFG")


def frozen_lake(grid: Sequence[str] = FROZEN_LAKE_MAP) -> TabularMDP:
    """A slippery FrozenLake (Gymnasium's ``FrozenLake-v1`` dynamics): actions left/down/right/up; the move goes
    the intended way or either perpendicular way w.p. 1/3 each (walls keep the agent in place); holes ``H`` are
    terminal with reward 0; the goal ``G`` pays 1 on the step after it is reached and moves to an absorbing
    terminal state (index ``rows * cols``), so the reward is a function of ``(s, a)`` as
    :class:`~safetybed.suite.common.tabular.TabularMDP` needs. Starts at ``S``."""
    rows, cols = len(grid), len(grid[0])
    n = rows * cols
    done = n
    P = np.zeros((n + 1, 4, n + 1))
    R = np.zeros((n + 1, 4))
    moves = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    terminal = np.zeros(n + 1, bool)
    terminal[done] = True
    P[done, :, done] = 1.0
    for s in range(n):
        row, col = divmod(s, cols)
        cell = grid[row][col]
        if cell == "H":
            terminal[s] = True
            P[s, :, s] = 1.0
            continue
        if cell == "G":
            P[s, :, done] = 1.0
            R[s, :] = 1.0
            continue
        for a in range(4):
            for b in (a - 1, a, a + 1):
                d_row, d_col = moves[b % 4]
                target = min(max(row + d_row, 0), rows - 1) * cols + min(max(col + d_col, 0), cols - 1)
                P[s, a, target] += 1.0 / 3.0
    start = next(r * cols + c for r in range(rows) for c in range(cols) if grid[r][c] == "S")
    return TabularMDP(P, R, 1.0, np.eye(n + 1)[start], terminal)


def expected_return(mdp: TabularMDP, policy: np.ndarray, horizon: int) -> float:
    """Exact expected return of a stationary ``policy[s, a]`` over ``horizon`` steps from ``mu0``."""
    v, _ = finite_horizon_values(mdp, horizon, policy)
    return float(v[0] @ mdp.mu0)


def uniform_data(mdp: TabularMDP, *, episodes: int, horizon: int, n_bins: int, max_return: float,
                 rng: np.random.Generator, future_steps: int | None = None) -> ReturnData:
    """``episodes`` episodes of the uniform behaviour policy, as :class:`ReturnData`."""
    uniform = np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)
    return ReturnData.from_episodes([sample_episode(mdp, uniform, horizon=horizon, rng=rng) for _ in range(episodes)],
                                    n_states=mdp.n_states, n_actions=mdp.n_actions, n_bins=n_bins,
                                    max_return=max_return, future_steps=future_steps)


LOTTERY_DT_MAX = 0.35  # DT "picks A": expected return at most this (A's is 0.3)
LOTTERY_DOC_MIN = 0.55  # DoC "picks B": expected return at least this (B's is 0.6)


def evaluate_problem(mdp: TabularMDP, *, horizon: int, episodes: int, n_bins: int, config: Config, seed: int
                     ) -> dict[str, float]:
    """Exact expected returns of the DoC (both inference rules), DT and BC policies learned from one uniform
    dataset drawn from ``seed``."""
    data_seed, torch_seed = np.random.SeedSequence(seed).spawn(2)
    data = uniform_data(mdp, episodes=episodes, horizon=horizon, n_bins=n_bins, max_return=1.0,
                        rng=np.random.default_rng(data_seed))
    generator = torch.Generator().manual_seed(int(torch_seed.generate_state(1)[0]))
    tables = train_doc(data, config=config, generator=generator)
    policies = {"doc": doc_policy(tables, data, min_prior_mass=config.min_prior_mass),
                "doc_top_bin": doc_policy(tables, data, min_prior_mass=config.min_prior_mass, rule="top_bin"),
                "dt": dt_policy(data), "bc": bc_policy(data)}
    return {name: expected_return(mdp, policy, horizon) for name, policy in policies.items()}


def demo(*, fast: bool, seed: int) -> DemoResult:
    """The lottery bandit and a 4x4 slippery FrozenLake from uniform behaviour data: DoC vs DT (and BC)."""
    n_seeds = 3 if fast else 8
    lottery_config, lake_config = (Config(steps=150), Config(steps=200)) if fast else \
        (Config(steps=600), Config(steps=1500))
    lottery_episodes, lake_horizon, lake_episodes = (500, 30, 500) if fast else (1000, 30, 3000)
    seeds = tuple(range(seed, seed + n_seeds))
    lottery, lake = lottery_bandit(), frozen_lake()
    per_seed: dict[str, list[float]] = {}
    for s in seeds:
        bandit_seed, lake_seed = (int(c.generate_state(1)[0]) for c in np.random.SeedSequence(s).spawn(2))
        for prefix, mdp, config, kwargs in (
                ("lottery", lottery, lottery_config,
                 dict(horizon=2, episodes=lottery_episodes, n_bins=3, seed=bandit_seed)),
                ("lake", lake, lake_config,
                 dict(horizon=lake_horizon, episodes=lake_episodes, n_bins=2, seed=lake_seed))):
            for name, value in evaluate_problem(mdp, config=config, **kwargs).items():
                per_seed.setdefault(f"{prefix}_{name}", []).append(value)
    m = {key: measure(values, unit="expected return") for key, values in per_seed.items()}
    lake_gain = measure(np.subtract(per_seed["lake_doc"], per_seed["lake_dt"]), unit="expected return, DoC - DT")
    lake_optimum = float(finite_horizon_values(lake, lake_horizon)[0][0] @ lake.mu0)
    lottery_holds = m["lottery_dt"].mean <= LOTTERY_DT_MAX and m["lottery_doc"].mean >= LOTTERY_DOC_MIN
    # "DoC exceeds DT": the paired per-seed difference's 95 % interval lies above 0.
    lake_holds = lake_gain.mean - lake_gain.half_width > 0
    verdict = "reproduced" if lottery_holds and lake_holds else "partly" if lottery_holds or lake_holds \
        else "not reproduced"
    why = (f"lottery: DT {m['lottery_dt'].mean:.2f}, DoC {m['lottery_doc'].mean:.2f} "
           f"({'as claimed' if lottery_holds else 'not as claimed'}; DoC with the tabular code's top-bin rule "
           f"{m['lottery_doc_top_bin'].mean:.2f}); FrozenLake: DoC {m['lake_doc'].mean:.3f} vs DT "
           f"{m['lake_dt'].mean:.3f}, BC {m['lake_bc'].mean:.3f}, optimum {lake_optimum:.3f} "
           f"(DoC - DT {lake_gain.text()}: {'DoC ahead' if lake_holds else 'DoC not ahead'}); energy_weight "
           f"{lake_config.energy_weight} (1, 2, 10 and 20 tried)")
    return DemoResult(
        name=ENTRY.name,
        claim=(f"From uniform behaviour data, on the lottery bandit DT conditioned on the top return picks the "
               f"gamble (expected return <= {LOTTERY_DT_MAX}) while DoC picks the sure 0.6 (>= {LOTTERY_DOC_MIN}); "
               f"on a 4x4 slippery FrozenLake DoC's expected return exceeds DT's (paired 95 % interval above 0)."),
        measured={"lottery return": m["lottery_doc"], "FrozenLake return": m["lake_doc"],
                  "lottery return (top-bin inference)": m["lottery_doc_top_bin"],
                  "FrozenLake gain over DT": lake_gain},
        baseline={"lottery return": m["lottery_dt"], "FrozenLake return": m["lake_dt"],
                  "lottery return (BC)": m["lottery_bc"], "FrozenLake return (BC)": m["lake_bc"]},
        verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings={"lottery": {"win_probability": 0.3, "sure_reward": 0.6, "n_bins": 3, "episodes": lottery_episodes,
                              "steps": lottery_config.steps},
                  "frozen_lake": {"map": list(FROZEN_LAKE_MAP), "horizon": lake_horizon, "episodes": lake_episodes,
                                  "n_bins": 2, "steps": lake_config.steps, "optimal_return": lake_optimum},
                  "behaviour": "uniform", "energy_weight": lake_config.energy_weight,
                  "energy_steps": lake_config.energy_steps, "learning_rate": lake_config.learning_rate,
                  "n_latents": "|A| * n_bins", "min_prior_mass": lake_config.min_prior_mass,
                  "returns": "exact, from finite_horizon_values"},
    )


ENTRY = SuiteEntry(
    name="dichotomy-of-control",
    title="Dichotomy of Control: Separating What You Can Control from What You Cannot",
    citation="Yang et al. 2023",
    family="offline_rl",
    module=__name__,
    rule=doc_losses,
    demo=demo,
)
