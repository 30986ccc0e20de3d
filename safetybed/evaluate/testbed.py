"""A known-answer cut-in testbed: three random variables, exact crash probability by exhaustive simulation.

Every estimator in :mod:`safetybed.evaluate` must be shown *valid* (its confidence interval covers the true crash
probability at its nominal rate), which needs a problem whose answer is known. This testbed is the
low-dimensional cut-in of ``research/cav_eval.md`` §6.5, extended by one decision so that a dangerous maneuver
*adds* a critical step (the pitfall of §2.3):

* at t = 0 a background vehicle (BV) has just cut in ahead of the ego: bumper gap ``r0`` [m] (random, on a 1 m
  grid with a discretised log-normal pmf), BV speed ``bv_speed_mps``, ego speed ``ego_speed_mps``;
* the BV decides its acceleration at t = 0 s (``a0``) and t = 1 s (``a1``), each one of 31 values on the NADE
  grid -4, -3.8, ..., 2 m/s^2, from the naturalistic pmf ``p(a | s) = (1 - eta) N(a_IDM(v), sigma^2) + eta U``
  (NADE's stochastic IDM, ``research/cav_eval.md`` §4.1, plus a uniform tail of mass ``eta`` so that emergency
  braking is rare but possible); from t = 2 s it keeps its speed;
* the ego under test is an IDM driver (Treiber et al. 2000; D2RL's AV parameters) that reacts to what it saw
  ``reaction_s`` ago and brakes at most ``max_brake_mps2``; a crash is a bumper gap <= 0 within ``horizon_s``.

The three random variables (r0, a0, a1) live on a finite grid (78 x 31 x 31 = 74,958 scenarios), so every
scenario is simulated once (vectorised, ``dt_s`` steps) and the exact crash probability is the pmf-weighted sum.
The same exhaustive simulation gives each *surrogate* ego's crash table, hence the exact maneuver challenge used
by NADE (``c_j(s0, a0) = sum_a1 p(a1 | s1) crash_j``, ``c_j(s1, a1) = crash_j``) and the true target
``c*(s, u)`` that AdaTE's dense RL estimates. A "test" samples (r0, a0, a1) and looks the outcome up: identical
to simulating it (checked in the tests), and fast enough for hundreds of thousands of tests per second, so
coverage can be measured over many repetitions.

Which decisions a test logs (``critical_set``):

* ``"adaptive"`` (``testbed:cut_in``, the default) — a decision is logged when the proposal finds it critical, as
  NADE does on the highway. Whether the second decision is critical depends on the first maneuver, so the number
  of critical steps ``K`` is *endogenous*: the case in which the stratified SCV estimator is biased.
* ``"fixed"`` (``testbed:cut_in_fixed``) — a test's critical set is decided by its gap alone: when the first
  decision is critical, the second is logged too, and where the proposal finds it non-critical it is drawn from
  ``p`` and logged with ``q~ = p`` (likelihood ratio 1, control-variate feature ``r = 1``). ``K`` is then
  *exogenous* (a function of ``r0``, which is never importance-sampled), so ``E_q[r_j | K = k] = 1`` and the
  stratum-wise SCV fit is unbiased. The sampled tests and their weights are exactly those of ``"adaptive"``;
  only the logs differ.

This is a standalone kinematic model (not highway-env); the highway scenarios are in
:mod:`safetybed.evaluate.highway`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safetybed.evaluate.records import TestRecord
from safetybed.sims.idm import IDMParams, free_road_acceleration, idm_acceleration
from safetybed.sims.testing.critical import CriticalContext, Proposal

ACCEL_GRID_MPS2 = np.round(np.linspace(-4.0, 2.0, 31), 10)  #: NADE's acceleration grid [m/s^2]
CRITICAL_SETS = ("adaptive", "fixed")  #: see the module docstring


@dataclass(frozen=True)
class EgoModel:
    """An IDM ego with a reaction delay and a braking limit (also used for surrogate egos)."""

    name: str
    max_accel_mps2: float = 1.5  # IDM a
    comfort_decel_mps2: float = 2.0  # IDM b
    min_gap_m: float = 2.0  # IDM s0
    time_headway_s: float = 1.2  # IDM T
    desired_speed_mps: float = 33.33  # IDM v0
    delta: float = 4.0
    reaction_s: float = 0.6  # the ego acts on the state it saw this long ago [s]
    max_brake_mps2: float = 6.0  # [m/s^2]

    @property
    def idm(self) -> IDMParams:
        """Its IDM parameters (the desired speed is passed separately, see :mod:`safetybed.sims.idm`)."""
        return IDMParams(max_accel_mps2=self.max_accel_mps2, comfort_decel_mps2=self.comfort_decel_mps2,
                         min_gap_m=self.min_gap_m, time_headway_s=self.time_headway_s, delta=self.delta)


#: The ego under test: D2RL's IDM AV (research/cav_eval.md §4.1) with a 0.8 s reaction delay.
EGO_UNDER_TEST = EgoModel(name="ego", reaction_s=0.8)
#: Surrogate egos (AdaTE's m = 3 models; row 0 is NADE's surrogate): a slow and cautious driver (pessimistic:
#: it crashes wherever the ego under test does and more), a quick one and a hard-braking one (both optimistic).
SURROGATES = (
    EgoModel(name="slow", reaction_s=1.0, time_headway_s=1.5),
    EgoModel(name="quick", reaction_s=0.6),
    EgoModel(name="hard-braking", reaction_s=0.8, max_brake_mps2=8.0, time_headway_s=1.0),
)


@dataclass(frozen=True)
class CutInTestbed:
    """The testbed's parameters; :meth:`build` runs the exhaustive simulation (a :class:`CutInTables`)."""

    gap_grid_m: tuple[float, ...] = tuple(float(g) for g in range(3, 81))
    gap_median_m: float = 20.0  # median of the log-normal pmf of r0 [m]
    gap_log_sigma: float = 0.3  # std of log r0 [-]
    ego_speed_mps: float = 25.0
    bv_speed_mps: float = 20.0
    bv_idm_max_accel_mps2: float = 2.0  # BV IDM (D2RL BV parameters)
    bv_desired_speed_mps: float = 35.0
    bv_idm_delta: float = 4.0  # BV IDM acceleration exponent [-]
    accel_sigma_mps2: float = 0.3  # NADE stochastic IDM std
    tail_mass: float = 0.02  # eta: uniform tail of the acceleration pmf
    prune_below: float = 1e-10
    horizon_s: float = 8.0
    dt_s: float = 0.05
    ego: EgoModel = EGO_UNDER_TEST
    surrogates: tuple[EgoModel, ...] = SURROGATES
    critical_set: str = "adaptive"  # "adaptive" | "fixed": which decisions a test logs (module docstring)

    def __post_init__(self) -> None:
        if self.critical_set not in CRITICAL_SETS:
            raise ValueError(f"critical_set: expected one of {', '.join(CRITICAL_SETS)}, got {self.critical_set!r}")

    def build(self) -> CutInTables:
        return CutInTables(self)


def bv_pmf(speed_mps: np.ndarray, bed: CutInTestbed) -> np.ndarray:
    """Naturalistic BV acceleration pmf at BV speed(s) ``speed_mps``: shape ``speed.shape + (31,)``.

    NADE ``stochastic_IDM`` (Gaussian around the free-road IDM acceleration, pruned and renormalised), mixed with a
    uniform tail of mass ``tail_mass``.
    """
    speed = np.asarray(speed_mps, dtype=np.float64)[..., None]
    a_idm = free_road_acceleration(speed_mps=speed, desired_speed_mps=bed.bv_desired_speed_mps,
                                   max_accel_mps2=bed.bv_idm_max_accel_mps2, delta=bed.bv_idm_delta)
    log_weight = -0.5 * ((ACCEL_GRID_MPS2 - a_idm) / bed.accel_sigma_mps2) ** 2
    weight = np.exp(log_weight - log_weight.max(axis=-1, keepdims=True))
    gauss = weight / weight.sum(axis=-1, keepdims=True)
    gauss = np.where(gauss < bed.prune_below, 0.0, gauss)
    gauss /= gauss.sum(axis=-1, keepdims=True)
    return (1.0 - bed.tail_mass) * gauss + bed.tail_mass / ACCEL_GRID_MPS2.size


def simulate_crashes(bed: CutInTestbed, ego: EgoModel, gap_m: np.ndarray, a0_mps2: np.ndarray,
                     a1_mps2: np.ndarray) -> np.ndarray:
    """Simulate each (r0, a0, a1) scenario (1-D arrays of equal length); return the crash flags (bool array)."""
    steps = int(round(bed.horizon_s / bed.dt_s))
    delay = int(round(ego.reaction_s / bed.dt_s))
    n = gap_m.shape[0]
    gap = gap_m.astype(np.float64).copy()
    v_ego = np.full(n, bed.ego_speed_mps)
    v_bv = np.full(n, bed.bv_speed_mps)
    crashed = gap <= 0.0
    idm = ego.idm
    # Before the cut-in the road ahead was free: the ego's first command is its free-road IDM acceleration.
    free_accel = idm_acceleration(idm, speed_mps=bed.ego_speed_mps, desired_speed_mps=ego.desired_speed_mps)
    history: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for step in range(steps):
        t = step * bed.dt_s
        history.append((gap.copy(), v_ego.copy(), v_bv.copy()))
        if step >= delay:
            seen_gap, seen_v, seen_bv = history[step - delay]
            accel = idm_acceleration(idm, speed_mps=seen_v, desired_speed_mps=ego.desired_speed_mps, gap_m=seen_gap,
                                     closing_speed_mps=seen_v - seen_bv)
            accel = np.clip(accel, -ego.max_brake_mps2, ego.max_accel_mps2)
        else:
            accel = np.full(n, free_accel)
        bv_accel = a0_mps2 if t < 1.0 - 1e-9 else (a1_mps2 if t < 2.0 - 1e-9 else np.zeros(n))
        # Semi-implicit Euler with speeds clipped at 0 (no reversing); distance from the average speed.
        new_v_ego = np.maximum(v_ego + accel * bed.dt_s, 0.0)
        new_v_bv = np.maximum(v_bv + bv_accel * bed.dt_s, 0.0)
        gap = gap + 0.5 * ((new_v_bv + v_bv) - (new_v_ego + v_ego)) * bed.dt_s
        v_ego, v_bv = new_v_ego, new_v_bv
        crashed |= gap <= 0.0
    return crashed


@dataclass
class ProposalTable:
    """A proposal tabulated on every decision state of the testbed.

    Step 0 has one state per gap index ``g``; step 1 one per ``(g, a0)``. ``crit*`` is the criticality (0 = not
    critical), ``qt*`` the importance component over the 31 actions, ``eps*`` the defensive weight.
    """

    crit0: np.ndarray  # (G,)
    qt0: np.ndarray  # (G, 31)
    eps0: np.ndarray  # (G,)
    crit1: np.ndarray  # (G, 31)
    qt1: np.ndarray  # (G, 31, 31)
    eps1: np.ndarray  # (G, 31)


@dataclass
class TestBatch:
    """``n`` tests: sampled indices, crash flags and per-test critical-step logs (at most 2 critical steps)."""

    __test__ = False

    gap_index: np.ndarray
    a0_index: np.ndarray
    a1_index: np.ndarray
    crashed: np.ndarray
    critical: np.ndarray  # (n, 2) bool
    p: np.ndarray  # (n, 2) probability of the sampled action under p (NaN where not critical)
    q_tilde: np.ndarray  # (n, 2)
    epsilon: np.ndarray  # (n, 2)
    criticality: np.ndarray  # (n, 2) the proposal's criticality of each step (0 where not critical)
    state: np.ndarray  # (n, 2, 4) (step, gap, range rate, BV speed) as in CutInTables.features, before the draw

    @property
    def n(self) -> int:
        return int(self.crashed.shape[0])

    def log_weight(self) -> np.ndarray:
        """log W per test (sum over critical steps of log p/q)."""
        q = (1.0 - self.epsilon) * self.q_tilde + self.epsilon * self.p
        ratio = np.where(self.critical, np.log(np.where(self.critical, self.p, 1.0))
                         - np.log(np.where(self.critical, q, 1.0)), 0.0)
        return ratio.sum(axis=1)

    def values(self) -> np.ndarray:
        """Y = 1{crash} W per test."""
        return self.crashed * np.exp(self.log_weight())

    def records(self) -> list[TestRecord]:
        out = []
        for i in range(self.n):
            mask = self.critical[i]
            out.append(TestRecord(crashed=bool(self.crashed[i]), p=tuple(self.p[i, mask].tolist()),
                                  q_tilde=tuple(self.q_tilde[i, mask].tolist()),
                                  epsilon=tuple(self.epsilon[i, mask].tolist()),
                                  criticality=tuple(self.criticality[i, mask].tolist()),
                                  state=tuple(tuple(row) for row in self.state[i, mask].tolist())))
        return out

    @staticmethod
    def concatenate(batches: list[TestBatch]) -> TestBatch:
        fields = ("gap_index", "a0_index", "a1_index", "crashed", "critical", "p", "q_tilde", "epsilon",
                  "criticality", "state")
        return TestBatch(**{name: np.concatenate([getattr(b, name) for b in batches]) for name in fields})


class CutInTables:
    """The exhaustive simulation of a :class:`CutInTestbed` and everything derived from it."""

    def __init__(self, bed: CutInTestbed):
        self.bed = bed
        gaps = np.asarray(bed.gap_grid_m, dtype=np.float64)
        if gaps.ndim != 1 or gaps.size < 2 or np.any(gaps <= 0):
            raise ValueError(f"gap_grid_m: expected at least 2 positive gaps [m], got {bed.gap_grid_m!r}")
        self.gaps_m = gaps
        log_density = -0.5 * ((np.log(gaps) - np.log(bed.gap_median_m)) / bed.gap_log_sigma) ** 2 - np.log(gaps)
        density = np.exp(log_density - log_density.max())
        self.gap_pmf = density / density.sum()  # p(r0) on the grid (discretised log-normal)
        n_gap, n_acc = gaps.size, ACCEL_GRID_MPS2.size
        self.p0 = bv_pmf(np.full(n_gap, bed.bv_speed_mps), bed)  # (G, 31): the BV pmf does not depend on r0
        bv_speed_1 = np.maximum(bed.bv_speed_mps + ACCEL_GRID_MPS2, 0.0)  # BV speed at t = 1 s after a0
        self.p1 = np.broadcast_to(bv_pmf(bv_speed_1, bed)[None, :, :], (n_gap, n_acc, n_acc)).copy()
        g, a0, a1 = np.meshgrid(np.arange(n_gap), np.arange(n_acc), np.arange(n_acc), indexing="ij")
        g, a0, a1 = g.ravel(), a0.ravel(), a1.ravel()

        def table(ego: EgoModel) -> np.ndarray:
            flags = simulate_crashes(bed, ego, gaps[g], ACCEL_GRID_MPS2[a0], ACCEL_GRID_MPS2[a1])
            return flags.reshape(n_gap, n_acc, n_acc).astype(np.float64)

        self.crash = table(bed.ego)  # (G, 31, 31) crash flags of the ego under test
        self.surrogate_crash = np.stack([table(model) for model in bed.surrogates])  # (m, G, 31, 31)
        # Exact maneuver challenges: step 1 is the crash flag itself, step 0 averages a1 under the naturalistic p1.
        self.challenge0 = np.einsum("mgab,gab->mga", self.surrogate_crash, self.p1)  # (m, G, 31)
        self.challenge1 = self.surrogate_crash  # (m, G, 31, 31)
        self.target0 = np.einsum("gab,gab->ga", self.crash, self.p1)  # c*(s0, a0) of the real ego
        self.target1 = self.crash  # c*(s1, a1)

    # -- the answer ------------------------------------------------------------------------------------------
    @property
    def exact_crash_probability(self) -> float:
        """mu = sum_{r0, a0, a1} p(r0) p(a0 | s0) p(a1 | s1) 1{crash} (exhaustive enumeration of the grid)."""
        return float(np.einsum("g,ga,gab,gab->", self.gap_pmf, self.p0, self.p1, self.crash))

    def surrogate_crash_probability(self, j: int) -> float:
        return float(np.einsum("g,ga,gab,gab->", self.gap_pmf, self.p0, self.p1, self.surrogate_crash[j]))

    # -- contexts for proposals --------------------------------------------------------------------------------
    def features(self, step: int, gap_index: np.ndarray, a0_index: np.ndarray | None, log_weight: np.ndarray,
                 criticality: np.ndarray) -> np.ndarray:
        """The D2RL observation of decision states: (step, gap, range rate, BV speed, log10 W, log10 criticality)."""
        bed = self.bed
        gap = self.gaps_m[gap_index]
        bv_speed = np.full(gap.shape, bed.bv_speed_mps)
        if step == 1:
            # State at t = 1 s from a constant-acceleration second for the BV (the ego's part is approximated by
            # its speed, which is all the observation needs to be informative).
            a0 = ACCEL_GRID_MPS2[a0_index]
            bv_speed = np.maximum(bed.bv_speed_mps + a0, 0.0)
            gap = gap + 0.5 * (bv_speed + bed.bv_speed_mps) - bed.ego_speed_mps
        range_rate = bv_speed - bed.ego_speed_mps
        return np.stack([np.full(gap.shape, float(step)), gap / 40.0 - 1.0, range_rate / 10.0, bv_speed / 30.0 - 0.5,
                         log_weight / (5.0 * np.log(10.0)),
                         np.log10(np.maximum(criticality, 1e-30)) / 10.0], axis=-1)

    def contexts(self, step: int, *, log_weight: np.ndarray | None = None) -> list[CriticalContext]:
        """Every decision state of ``step`` as a :class:`CriticalContext` (step 0: G states; step 1: G*31)."""
        n_gap = self.gaps_m.size
        if step == 0:
            keys = [(0, g) for g in range(n_gap)]
            ps = self.p0
            challenges = np.moveaxis(self.challenge0, 0, 1)  # (G, m, 31)
            a0 = None
            gap_index = np.arange(n_gap)
        elif step == 1:
            keys = [(1, g, a) for g in range(n_gap) for a in range(ACCEL_GRID_MPS2.size)]
            ps = self.p1.reshape(-1, ACCEL_GRID_MPS2.size)
            challenges = np.moveaxis(self.challenge1, 0, 2).reshape(-1, len(self.bed.surrogates), ACCEL_GRID_MPS2.size)
            gap_index, a0 = np.divmod(np.arange(n_gap * ACCEL_GRID_MPS2.size), ACCEL_GRID_MPS2.size)
        else:
            raise ValueError(f"step: expected 0 or 1, got {step!r}")
        weights = np.zeros(len(keys)) if log_weight is None else np.asarray(log_weight, dtype=np.float64)
        nade_crit = (ps * challenges[:, 0, :]).sum(axis=1)
        feats = self.features(step, gap_index, a0, weights, nade_crit)
        return [CriticalContext(p=ps[i], challenge=challenges[i], features=feats[i], state_key=keys[i],
                                log_weight_so_far=float(weights[i])) for i in range(len(keys))]

    def tabulate(self, proposal: Proposal) -> ProposalTable:
        """Evaluate ``proposal`` on every decision state (step 1 states see the log weight of their path)."""
        n_gap, n_acc = self.gaps_m.size, ACCEL_GRID_MPS2.size
        crit0, qt0, eps0 = _evaluate(proposal, self.contexts(0), n_acc)
        q0 = (1.0 - eps0[:, None]) * qt0 + eps0[:, None] * self.p0
        log_w0 = np.where(crit0[:, None] > 0, np.log(self.p0) - np.log(np.where(q0 > 0, q0, 1.0)), 0.0)  # (G, 31)
        crit1, qt1, eps1 = _evaluate(proposal, self.contexts(1, log_weight=log_w0.ravel()), n_acc)
        return ProposalTable(crit0=crit0, qt0=qt0, eps0=eps0, crit1=crit1.reshape(n_gap, n_acc),
                             qt1=qt1.reshape(n_gap, n_acc, n_acc), eps1=eps1.reshape(n_gap, n_acc))

    # -- running tests ---------------------------------------------------------------------------------------
    def run(self, n: int, *, rng: np.random.Generator, table: ProposalTable | None = None) -> TestBatch:
        """``n`` independent tests: naturalistic (``table=None``, crude MC) or under a tabulated proposal."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n: expected a positive number of tests, got {n!r}")
        u = rng.random((n, 3))
        gap_index = _inverse_cdf(np.broadcast_to(self.gap_pmf, (n, self.gap_pmf.size)), u[:, 0])
        critical = np.zeros((n, 2), dtype=bool)
        p_taken = np.full((n, 2), np.nan)
        qt_taken = np.full((n, 2), np.nan)
        eps_taken = np.full((n, 2), np.nan)
        criticality = np.zeros((n, 2))
        # step 0
        p0 = self.p0[gap_index]
        if table is None:
            a0 = _inverse_cdf(p0, u[:, 1])
        else:
            crit = table.crit0[gap_index] > 0
            eps = table.eps0[gap_index]
            q = np.where(crit[:, None], (1 - eps[:, None]) * table.qt0[gap_index] + eps[:, None] * p0, p0)
            a0 = _inverse_cdf(q, u[:, 1])
            critical[:, 0] = crit
            criticality[:, 0] = table.crit0[gap_index]
            p_taken[:, 0] = np.where(crit, p0[np.arange(n), a0], np.nan)
            qt_taken[:, 0] = np.where(crit, table.qt0[gap_index, a0], np.nan)
            eps_taken[:, 0] = np.where(crit, eps, np.nan)
        # step 1
        p1 = self.p1[gap_index, a0]
        if table is None:
            a1 = _inverse_cdf(p1, u[:, 2])
        else:
            crit = table.crit1[gap_index, a0] > 0
            eps = table.eps1[gap_index, a0]
            qt = table.qt1[gap_index, a0]
            q = np.where(crit[:, None], (1 - eps[:, None]) * qt + eps[:, None] * p1, p1)
            a1 = _inverse_cdf(q, u[:, 2])
            # "fixed": the second decision is logged whenever the first was (drawn from p where not critical).
            logged = (crit | critical[:, 0]) if self.bed.critical_set == "fixed" else crit
            taken = np.arange(n), a1
            critical[:, 1] = logged
            criticality[:, 1] = table.crit1[gap_index, a0]
            p_taken[:, 1] = np.where(logged, p1[taken], np.nan)
            qt_taken[:, 1] = np.where(crit, qt[taken], np.where(logged, p1[taken], np.nan))
            eps_taken[:, 1] = np.where(crit, eps, np.where(logged, 1.0, np.nan))
        crashed = self.crash[gap_index, a0, a1] > 0
        zeros = np.zeros(n)
        state = np.stack([self.features(0, gap_index, None, zeros, zeros)[:, :4],
                          self.features(1, gap_index, a0, zeros, zeros)[:, :4]], axis=1)
        return TestBatch(gap_index=gap_index, a0_index=a0, a1_index=a1, crashed=crashed, critical=critical,
                         p=p_taken, q_tilde=qt_taken, epsilon=eps_taken, criticality=criticality, state=state)


def _evaluate(proposal: Proposal, contexts: list[CriticalContext], n_acc: int):
    batch = getattr(proposal, "evaluate_batch", None)
    if batch is not None:  # vectorised proposals (D2RL's network) tabulate all states at once
        return batch(contexts)
    crit = np.zeros(len(contexts))
    qt = np.zeros((len(contexts), n_acc))
    eps = np.ones(len(contexts))
    for i, context in enumerate(contexts):
        crit[i] = proposal.criticality(context)
        if crit[i] > 0:
            decision = proposal.decide(context)
            qt[i], eps[i] = decision.q_tilde, decision.epsilon
    return crit, qt, eps


def _inverse_cdf(pmf: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Row-wise inverse-cdf sampling of indices from ``pmf`` (n, K) with uniforms (n,)."""
    cumulative = np.cumsum(pmf, axis=1)
    index = (cumulative < (uniform * cumulative[:, -1])[:, None]).sum(axis=1)
    first_positive = np.argmax(pmf > 0, axis=1)
    last_positive = pmf.shape[1] - 1 - np.argmax(pmf[:, ::-1] > 0, axis=1)
    return np.clip(index, first_positive, last_positive)


def exact_moments(tables: CutInTables, table: ProposalTable | None) -> tuple[float, float]:
    """Exact ``(E_q[Y], E_q[Y^2])`` of one test under a tabulated proposal (``None``: naturalistic, Y = 1{crash}).

    Enumerates the grid under the *sampling* distribution ``q(x) = p(r0) s0(a0) s1(a1)``, where each step's
    ``s`` is the defensive mixture at critical steps and ``p`` elsewhere, with ``Y = 1{crash} p(x) / q(x)``.
    ``E_q[Y] = mu`` holds only if the mixture and the weights are right (and ``q > 0`` wherever a crash has
    ``p > 0``); ``E_q[Y^2] / mu^2 - 1`` is the relative variance per test, so ``30 * that`` tests reach RHW 0.3.
    """
    p_joint = tables.gap_pmf[:, None, None] * tables.p0[:, :, None] * tables.p1  # (G, 31, 31)
    if table is None:
        q_joint = p_joint
    else:
        q0 = (1 - table.eps0[:, None]) * table.qt0 + table.eps0[:, None] * tables.p0
        q1 = (1 - table.eps1[:, :, None]) * table.qt1 + table.eps1[:, :, None] * tables.p1
        s0 = np.where(table.crit0[:, None] > 0, q0, tables.p0)
        s1 = np.where(table.crit1[:, :, None] > 0, q1, tables.p1)
        q_joint = tables.gap_pmf[:, None, None] * s0[:, :, None] * s1
    y = np.where(q_joint > 0, tables.crash * p_joint / np.where(q_joint > 0, q_joint, 1.0), 0.0)
    return float((q_joint * y).sum()), float((q_joint * y * y).sum())


LOG_WEIGHT_FEATURE = 4  #: column of :meth:`CutInTables.features` holding log W so far / (5 ln 10)


def crash_episodes(tables: CutInTables, batch: TestBatch):
    """The critical steps of the crash tests in ``batch``, as D2RL's dense training data."""
    from safetybed.evaluate.d2rl import CrashEpisode

    log_w = batch.log_weight()
    nade_crit0 = (tables.p0 * tables.challenge0[0]).sum(axis=1)  # (G,)
    nade_crit1 = (tables.p1 * tables.challenge1[0]).sum(axis=2)  # (G, 31)
    out = []
    for i in np.flatnonzero(batch.crashed):
        g, a0 = int(batch.gap_index[i]), int(batch.a0_index[i])
        rows, ps, qts = [], [], []
        for step in (0, 1):
            if not batch.critical[i, step]:
                continue
            crit = nade_crit0[g] if step == 0 else nade_crit1[g, a0]
            rows.append(tables.features(step, np.array([g]), None if step == 0 else np.array([a0]),
                                        np.zeros(1), np.array([crit]))[0])
            ps.append(batch.p[i, step])
            qts.append(batch.q_tilde[i, step])
        if rows:
            out.append(CrashEpisode(features=np.stack(rows), p=np.array(ps), q_tilde=np.array(qts),
                                    log_weight_b=float(log_w[i])))
    return out


def adate_batch_runner(tables: CutInTables, *, rng: np.random.Generator, sink: list[TestBatch] | None = None):
    """``run_batch`` for :func:`safetybed.evaluate.adate.run_adate` on the testbed (appends batches to ``sink``)."""
    from safetybed.evaluate.adate import StepLog

    def run_batch(proposal, n: int):
        batch = tables.run(n, rng=rng, table=tables.tabulate(proposal))
        if sink is not None:
            sink.append(batch)
        q = (1.0 - batch.epsilon) * batch.q_tilde + batch.epsilon * batch.p
        out = []
        for i in range(batch.n):
            g, a0, a1 = int(batch.gap_index[i]), int(batch.a0_index[i]), int(batch.a1_index[i])
            steps = []
            if batch.critical[i, 0]:
                steps.append(StepLog(state_key=(0, g), action=a0, p=float(batch.p[i, 0]), q=float(q[i, 0]),
                                     challenge=tables.challenge0[:, g, a0]))
            if batch.critical[i, 1]:
                steps.append(StepLog(state_key=(1, g, a0), action=a1, p=float(batch.p[i, 1]), q=float(q[i, 1]),
                                     challenge=tables.challenge1[:, g, a0, a1]))
            out.append((bool(batch.crashed[i]), steps))
        return out

    return run_batch
