"""Martingale policy evaluation in continuous time: the martingale loss, martingale orthogonality (TD) and the
mean-square TD error it warns against.

Jia & Zhou 2022, "Policy Evaluation and Temporal-Difference Learning in Continuous Time and Space: A Martingale
Approach" (JMLR 23). No official code was found (research report §2.13).

**The rule.** For a diffusion ``dX = b(X) dt + sigma(X) dW`` with running reward ``r(X)`` and discount rate
``beta``, ``J`` is the value function of the (fixed) policy if and only if ``M_t = e^{-beta t} J(X_t) + int_0^t
e^{-beta s} r(X_s) ds`` is a martingale (the paper's characterisation of policy evaluation). With a parametric
``J^theta`` and data on a grid of mesh ``Delta`` (``t_i = i Delta``), this module implements the three estimators
the paper compares, for linear features ``J^theta(x) = phi(x) . theta``:

- **martingale loss (ML)**: ``ML(theta) = 1/2 E int_0^T |G_t - J^theta(X_t)|^2 dt`` with the discounted return
  ``G_t = int_t^inf e^{-beta (s - t)} r(X_s) ds``; its minimiser is the L2-best approximation of ``J`` (gradient
  Monte Carlo). Discretised: ``1/2 sum_i |G_i - phi_i . theta|^2 Delta`` with ``G_i = sum_{j >= i} e^{-beta (j -
  i) Delta} r_j Delta``, a least-squares problem on returns.
- **martingale orthogonality (MO)**: ``E int_0^T xi_t dM_t^theta = 0`` for test functions ``xi``; with ``xi_t =
  dJ^theta / dtheta (X_t) = phi(X_t)`` and the increment ``dM ~ e^{-beta Delta} J^theta(X_{i+1}) - J^theta(X_i) +
  r_i Delta`` this is ``sum_i phi_i (e^{-beta Delta} phi_{i+1} - phi_i) . theta + phi_i r_i Delta = 0``, the
  fixed point of TD(0) (solved here directly, i.e. LSTD; TD(0)'s stochastic iteration converges to it).
- **mean-square TD error (MSTDE)**: ``sum_i |(e^{-beta Delta} J^theta(X_{i+1}) - J^theta(X_i)) / Delta + r_i|^2
  Delta``, minimised (the residual-gradient objective). The increment of ``J^theta(X)`` over a step is
  ``sigma J^theta' dW`` plus ``O(Delta)``, so as ``Delta -> 0`` ``Delta * MSTDE -> int sigma^2 |J^theta'(X_t)|^2
  dt``, the quadratic variation of ``J^theta(X)`` (the tests check this at ``Delta = 0.001``): its minimiser
  flattens ``J`` instead of evaluating the policy (the paper's negative result).

:func:`martingale_losses` evaluates the three objectives at a ``theta``; :func:`fit_estimators` solves all three in
closed form from accumulated moment sums (:class:`MomentSums`), so many paths fit in memory chunk by chunk.

**The demo** (§2.13(c)). An Ornstein-Uhlenbeck process ``dX = -kappa X dt + sigma dW`` with reward ``r(x) = -x^2``
and discount rate ``beta``; ``J(x) = -x^2 / (beta + 2 kappa) - sigma^2 / (beta (beta + 2 kappa))`` (from the HJB
equation ``beta J = r - kappa x J' + sigma^2 J'' / 2``; the tests check it against the moment ODE and Monte Carlo),
so ``J`` lies in the span of ``[1, x, x^2]`` and every estimator's error is estimation error, not approximation
error. Paths are simulated with the exact OU transition on the finest grid (``Delta = 0.001`` s) and subsampled for
the coarser meshes (0.01, 0.1 s), so the three meshes see the *same* Brownian paths and the differences between
them are discretisation, not sampling noise. The error is the RMS of ``J^theta - J`` over ``x`` on a grid of
``[-2, 2]``, over seeds.

**What came out** (full demo, 5 seeds x 1,000 paths of 10 s, ``docs/suite/results/martingale-pe.json``):
reproduced. Value RMSE at ``Delta`` = 0.1 / 0.01 / 0.001 s: ML 0.103 / 0.016 / 0.012, MO/TD(0) 0.104 / 0.018 /
0.015, MSTDE 0.351 / 0.475 / 0.487 (40x ML's and 32x MO's error at 0.001 s). ML's and MO's ``x^2`` coefficient
goes -0.388 / -0.340 / -0.336 (true -1/3): an ``O(Delta)`` discretisation bias; below 0.01 s their error is at the
sampling-noise floor of the paths (the step 0.01 -> 0.001 is within the seeds' spread). MSTDE's ``x^2`` coefficient
goes -0.083 / -0.0081 / -0.0008, i.e. to 0 like ``Delta``: the flat function that minimises the quadratic variation.

**Choices where the paper is silent:**
- the infinite-horizon discounted form (the paper's main development is finite horizon); ML's returns are
  truncated at the end of the simulated path, which runs ``tail_s`` beyond the last time used, so the truncation
  bias is below ``e^{-beta tail_s}`` of a return (``3.4e-4`` at the defaults);
- ML's time weight ``dt`` (no ``e^{-beta t}``): with ``J`` in the feature span the minimiser is the same;
- left-point (Euler) Riemann sums for the reward integral, ``e^{-beta Delta}`` for the discount over one step;
- MO solved as the linear system (LSTD) rather than by TD(0) iterations, so no learning rate enters the comparison;
- initial states uniform on ``[-2, 2]`` (where the error is measured), ``kappa = sigma = beta = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.signal import lfilter

from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["ENTRY", "ESTIMATORS", "Config", "MomentSums", "OUProblem", "demo", "features", "fit_estimators",
           "martingale_losses", "simulate_ou_paths"]

#: The three estimators, in the order of the paper's discussion.
ESTIMATORS = ("martingale_loss", "martingale_orthogonality", "mstde")


@dataclass(frozen=True)
class OUProblem:
    """``dX = -kappa X dt + sigma dW``, reward rate ``r(x) = -x^2``, discount rate ``beta``."""

    mean_reversion_per_s: float = 1.0
    """``kappa`` [1/s]."""
    volatility: float = 1.0
    """``sigma`` [state units / sqrt(s)]."""
    discount_rate_per_s: float = 1.0
    """``beta`` [1/s]."""

    def __post_init__(self) -> None:
        for name in ("mean_reversion_per_s", "volatility", "discount_rate_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected > 0, got {getattr(self, name)}")

    @staticmethod
    def reward(x: np.ndarray) -> np.ndarray:
        """Running reward ``r(x) = -x^2`` [reward units / s]."""
        return -np.square(x)

    @property
    def value_coefficients(self) -> np.ndarray:
        """``theta*`` with ``J(x) = [1, x, x^2] . theta*``: ``[-sigma^2 / (beta (beta + 2 kappa)), 0, -1 / (beta +
        2 kappa)]`` (the quadratic ansatz in the HJB equation ``beta J = -x^2 - kappa x J' + sigma^2 J'' / 2``)."""
        kappa, sigma, beta = self.mean_reversion_per_s, self.volatility, self.discount_rate_per_s
        quadratic = -1.0 / (beta + 2 * kappa)
        return np.array([sigma ** 2 * quadratic / beta, 0.0, quadratic])

    def value(self, x: np.ndarray) -> np.ndarray:
        """The analytic value ``J(x) = E int_0^inf e^{-beta t} r(X_t) dt`` from ``X_0 = x``."""
        return features(x) @ self.value_coefficients


def features(x: np.ndarray) -> np.ndarray:
    """``phi(x) = [1, x, x^2]`` (last axis)."""
    x = np.asarray(x, dtype=float)
    return np.stack([np.ones_like(x), x, x * x], axis=-1)


def simulate_ou_paths(problem: OUProblem, initial_states: np.ndarray, *, step_s: float, n_steps: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Paths ``[n_paths, n_steps + 1]`` on the grid ``i * step_s`` with the exact OU transition ``X_{i+1} = c X_i +
    s Z``, ``c = e^{-kappa step}``, ``s^2 = sigma^2 (1 - c^2) / (2 kappa)`` (no Euler error: the only
    discretisation in the demo is the estimators')."""
    kappa, sigma = problem.mean_reversion_per_s, problem.volatility
    decay = math.exp(-kappa * step_s)
    spread = sigma * math.sqrt((1 - decay ** 2) / (2 * kappa))
    drive = spread * rng.standard_normal((len(initial_states), n_steps + 1))
    drive[:, 0] = initial_states
    # the AR(1) recursion X_i = decay X_{i-1} + drive_i, run as a linear filter along time
    return lfilter([1.0], [1.0, -decay], drive, axis=1)


def _discounted_returns(rewards: np.ndarray, *, step_s: float, discount_rate_per_s: float) -> np.ndarray:
    """``G_i = sum_{j >= i} e^{-beta (j - i) step} r_j step`` along the last axis (left-point Riemann sum of the
    discounted reward integral, truncated at the path's end)."""
    discount = math.exp(-discount_rate_per_s * step_s)
    reversed_returns = lfilter([step_s], [1.0, -discount], rewards[..., ::-1], axis=-1)
    return reversed_returns[..., ::-1]


def martingale_losses(theta: np.ndarray, paths: np.ndarray, *, problem: OUProblem, step_s: float,
                      used_steps: int) -> dict[str, float]:
    """The three objectives at ``theta`` on ``paths`` ``[n_paths, n_steps + 1]`` (grid ``step_s``), over the first
    ``used_steps`` times of each path (the rest only completes the returns), averaged over paths (Jia & Zhou 2022):

    - ``loss_ml``: the martingale loss ``1/2 sum_i |G_i - J^theta(X_i)|^2 Delta``;
    - ``orthogonality``: the martingale orthogonality residual with test function ``xi = dJ^theta / dtheta``,
      ``sum_i phi_i (e^{-beta Delta} J^theta(X_{i+1}) - J^theta(X_i) + r_i Delta)`` (a vector; zero at TD(0)'s
      fixed point), and ``orthogonality_norm``, its Euclidean norm;
    - ``loss_mstde``: the mean-square TD error ``sum_i |(e^{-beta Delta} J^theta(X_{i+1}) - J^theta(X_i)) / Delta +
      r_i|^2 Delta``.
    """
    if not 0 < used_steps < paths.shape[1]:
        raise ValueError(f"used_steps: expected in (0, {paths.shape[1]}), got {used_steps}")
    beta = problem.discount_rate_per_s
    rewards = problem.reward(paths)
    values = features(paths) @ np.asarray(theta, dtype=float)
    returns = _discounted_returns(rewards, step_s=step_s, discount_rate_per_s=beta)[:, :used_steps]
    # dM^theta over one step: e^{-beta Delta} J(X_{i+1}) - J(X_i) + r_i Delta
    increments = math.exp(-beta * step_s) * values[:, 1:used_steps + 1] - values[:, :used_steps] \
        + rewards[:, :used_steps] * step_s
    test_functions = features(paths[:, :used_steps])
    orthogonality = np.einsum("nik,ni->k", test_functions, increments) / len(paths)
    return {
        "loss_ml": float(0.5 * np.sum((returns - values[:, :used_steps]) ** 2) * step_s / len(paths)),
        "orthogonality": orthogonality,
        "orthogonality_norm": float(np.linalg.norm(orthogonality)),
        "loss_mstde": float(np.sum((increments / step_s) ** 2) * step_s / len(paths)),
    }


@dataclass
class MomentSums:
    """The normal equations of the three estimators, summed over paths (so paths can come in chunks):
    ML ``(sum phi phi^T Delta) theta = sum phi G Delta``; MO ``(sum phi (phi - e^{-beta Delta} phi')^T) theta =
    sum phi r Delta``; MSTDE ``(sum psi psi^T / Delta) theta = -sum psi r`` with ``psi = e^{-beta Delta} phi' -
    phi``."""

    matrices: dict[str, np.ndarray] = field(default_factory=lambda: {k: np.zeros((3, 3)) for k in ESTIMATORS})
    vectors: dict[str, np.ndarray] = field(default_factory=lambda: {k: np.zeros(3) for k in ESTIMATORS})

    def add(self, paths: np.ndarray, *, problem: OUProblem, step_s: float, used_steps: int) -> None:
        """Accumulate ``paths`` ``[n_paths, n_steps + 1]`` on the grid ``step_s``, times ``0..used_steps - 1``."""
        if not 0 < used_steps < paths.shape[1]:
            raise ValueError(f"used_steps: expected in (0, {paths.shape[1]}), got {used_steps}")
        beta = problem.discount_rate_per_s
        rewards = problem.reward(paths)
        returns = _discounted_returns(rewards, step_s=step_s, discount_rate_per_s=beta)[:, :used_steps]
        phi = features(paths[:, :used_steps + 1])
        now, after, reward_now = phi[:, :-1], phi[:, 1:], rewards[:, :used_steps]
        # ML: least squares of the returns on phi, time weight Delta (the integral over t)
        self.matrices["martingale_loss"] += np.einsum("nik,nil->kl", now, now) * step_s
        self.vectors["martingale_loss"] += np.einsum("nik,ni->k", now, returns) * step_s
        # MO with xi = phi: sum phi (e^{-beta Delta} phi' - phi) . theta + phi r Delta = 0
        td_direction = math.exp(-beta * step_s) * after - now
        self.matrices["martingale_orthogonality"] += -np.einsum("nik,nil->kl", now, td_direction)
        self.vectors["martingale_orthogonality"] += np.einsum("nik,ni->k", now, reward_now) * step_s
        # MSTDE: minimise sum |psi . theta / Delta + r|^2 Delta  ->  (sum psi psi^T / Delta) theta = -sum psi r
        self.matrices["mstde"] += np.einsum("nik,nil->kl", td_direction, td_direction) / step_s
        self.vectors["mstde"] += -np.einsum("nik,ni->k", td_direction, reward_now)


def fit_estimators(sums: MomentSums) -> dict[str, np.ndarray]:
    """``theta`` of each estimator from its accumulated normal equations (a 3 x 3 linear solve each)."""
    return {name: np.linalg.solve(sums.matrices[name], sums.vectors[name]) for name in ESTIMATORS}


# -- the demo -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """The demo's settings (§2.13(c) gives the process, the reward, the features and the meshes)."""

    meshes_s: tuple[float, ...] = (0.1, 0.01, 0.001)
    """The time steps ``Delta`` [s] (§2.13(c)); each must divide the finest one's grid."""
    n_paths: int = 1000
    """Paths per seed (uniform starts on ``[-2, 2]``); sets the sampling-noise floor the errors shrink to."""
    used_duration_s: float = 10.0
    """Times ``[0, used_duration_s)`` of each path enter the estimators [s]."""
    tail_s: float = 8.0
    """Extra simulated time that completes ML's returns [s] (truncation bias below ``e^{-beta tail_s}``)."""
    chunk_paths: int = 50
    """Paths simulated at once (memory: ``chunk_paths * (used + tail) / Delta_min`` floats)."""
    n_seeds: int = 5
    """Seeds ``seed, seed + 1, ...``."""
    mstde_ratio: float = 10.0
    """§2.13(c): MSTDE's error at the finest mesh is at least this multiple of ML's and MO's."""

    def __post_init__(self) -> None:
        if not self.meshes_s or any(not m > 0 for m in self.meshes_s):
            raise ValueError(f"meshes_s: expected positive steps, got {self.meshes_s}")
        finest = min(self.meshes_s)
        for mesh in self.meshes_s:
            if abs(mesh / finest - round(mesh / finest)) > 1e-9:
                raise ValueError(f"meshes_s: each must be a multiple of the finest {finest}, got {mesh}")
        for name in ("n_paths", "chunk_paths", "n_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("used_duration_s", "tail_s", "mstde_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected > 0, got {getattr(self, name)}")


#: Where the value error is measured: a grid of the initial-state range [state units].
ERROR_GRID = np.linspace(-2.0, 2.0, 41)


def _value_rmse(problem: OUProblem, theta: np.ndarray) -> float:
    return float(np.sqrt(np.mean((features(ERROR_GRID) @ theta - problem.value(ERROR_GRID)) ** 2)))


def _fit_one_seed(problem: OUProblem, config: Config, rng: np.random.Generator) -> dict[float, dict[str, np.ndarray]]:
    """``{mesh: {estimator: theta}}`` from ``config.n_paths`` paths, the same paths for every mesh."""
    finest = min(config.meshes_s)
    n_fine_steps = round((config.used_duration_s + config.tail_s) / finest)
    sums = {mesh: MomentSums() for mesh in config.meshes_s}
    done = 0
    while done < config.n_paths:
        count = min(config.chunk_paths, config.n_paths - done)
        starts = rng.uniform(ERROR_GRID[0], ERROR_GRID[-1], size=count)
        fine = simulate_ou_paths(problem, starts, step_s=finest, n_steps=n_fine_steps, rng=rng)
        for mesh in config.meshes_s:
            stride = round(mesh / finest)
            sums[mesh].add(fine[:, ::stride], problem=problem, step_s=mesh,
                           used_steps=round(config.used_duration_s / mesh))
        done += count
    return {mesh: fit_estimators(s) for mesh, s in sums.items()}


def demo(*, fast: bool, seed: int) -> DemoResult:
    """ML, MO/TD(0) and MSTDE on the discounted OU problem at three meshes, the same paths for every mesh."""
    config = Config(n_paths=120, n_seeds=3, chunk_paths=40) if fast else Config()
    problem = OUProblem()
    seeds = tuple(range(seed, seed + config.n_seeds))
    fits = [_fit_one_seed(problem, config, np.random.default_rng(np.random.SeedSequence(s))) for s in seeds]
    errors = {(name, mesh): [_value_rmse(problem, fit[mesh][name]) for fit in fits]
              for name in ESTIMATORS for mesh in config.meshes_s}
    coefficient = {(name, mesh): [float(fit[mesh][name][2]) for fit in fits]
                   for name in ESTIMATORS for mesh in config.meshes_s}

    def numbers(names: tuple[str, ...]) -> dict:
        out = {}
        for name in names:
            for mesh in config.meshes_s:
                out[f"{name}: value RMSE at Delta={mesh:g} s"] = measure(errors[name, mesh], unit="value units")
                out[f"{name}: x^2 coefficient at Delta={mesh:g} s"] = measure(coefficient[name, mesh],
                                                                             unit="value units / x^2")
        return out

    coarse, finest = max(config.meshes_s), min(config.meshes_s)
    mean = {key: float(np.mean(values)) for key, values in errors.items()}
    shrinks = {name: mean[name, finest] < mean[name, coarse] for name in ESTIMATORS[:2]}
    mstde_stays = mean["mstde", finest] >= mean["mstde", coarse]
    ratios = {name: mean["mstde", finest] / mean[name, finest] for name in ESTIMATORS[:2]}
    mstde_worse = all(r >= config.mstde_ratio for r in ratios.values())
    held = [all(shrinks.values()), mstde_stays, mstde_worse]
    verdict = "reproduced" if all(held) else "partly" if any(held) else "not reproduced"
    meshes = ", ".join(f"{m:g}" for m in config.meshes_s)
    why = (f"value RMSE at Delta = {meshes} s: ML " + " / ".join(f"{mean['martingale_loss', m]:.3g}"
                                                               for m in config.meshes_s)
           + ", MO/TD(0) " + " / ".join(f"{mean['martingale_orthogonality', m]:.3g}" for m in config.meshes_s)
           + ", MSTDE " + " / ".join(f"{mean['mstde', m]:.3g}" for m in config.meshes_s)
           + f"; at {finest:g} s MSTDE is {ratios['martingale_loss']:.0f}x ML's and "
             f"{ratios['martingale_orthogonality']:.0f}x MO's error (threshold {config.mstde_ratio:g}x); true x^2 "
             f"coefficient {problem.value_coefficients[2]:.3f}, MSTDE's {np.mean(coefficient['mstde', finest]):.3f}"
             f"; the same Brownian paths at every mesh")
    return DemoResult(
        name="martingale-pe",
        claim=(f"as Delta goes {coarse:g} -> {finest:g} s the value errors of the martingale loss and of "
               f"martingale orthogonality / TD(0) shrink, while the mean-square TD error's does not and is >= "
               f"{config.mstde_ratio:g}x theirs at Delta = {finest:g} s"),
        measured=numbers(ESTIMATORS[:2]), baseline=numbers(("mstde",)), verdict=verdict, why=why, fast=fast,
        seeds=seeds,
        settings={**{name: getattr(config, name) for name in config.__dataclass_fields__},
                  "problem": {"kappa_per_s": problem.mean_reversion_per_s, "sigma": problem.volatility,
                              "beta_per_s": problem.discount_rate_per_s, "reward": "-x^2",
                              "true_coefficients": problem.value_coefficients.tolist()},
                  "error_grid": [float(ERROR_GRID[0]), float(ERROR_GRID[-1]), len(ERROR_GRID)],
                  "fitted_coefficients": {f"{name} @ {mesh:g} s": np.mean([f[mesh][name] for f in fits],
                                                                           axis=0).round(5).tolist()
                                          for name in ESTIMATORS for mesh in config.meshes_s}},
    )


ENTRY = SuiteEntry(
    name="martingale-pe",
    title="Policy Evaluation and Temporal-Difference Learning in Continuous Time and Space: A Martingale Approach",
    citation="Jia & Zhou 2022",
    family="value_learning",
    module=__name__,
    rule=martingale_losses,
    demo=demo,
)
