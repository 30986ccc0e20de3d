"""Generalized Gaussian TD error: fit the TD error with a learned-shape GGD, weight the batch by inverse error variance.

Paper: Seyeon Kim, Joonhun Lee, Namhoon Cho, Sungjun Han, Seungeon Baek (2025; arXiv 2408.02295, 2024),
"Generalized Gaussian Temporal Difference Error for Uncertainty-aware Reinforcement Learning" (authors from the
official repository's citation). Official code: ait-lab/ggtde (``losses/mle.py``:
``ggd_nll_loss``; ``losses/weighted.py``: ``biev_loss``, ``optimal_xi``; ``algos/{sac,ppo,dqn}``), read for this
module. The paper's text was not available here: the formulas are those of the research notes (suite.md §2.12)
checked against the official code, and cited by name rather than by equation number.

The rule (:func:`ggtd_loss`):

* the TD error ``delta = V(s) - (r + gamma V(s'))`` is modelled as generalised Gaussian,
  ``p(delta) = beta / (2 alpha Gamma(1/beta)) exp(-(|delta| / alpha)^beta)`` (:func:`ggd_nll`), with a learned shape
  ``beta = softplus(head)``; the loss is its negative log likelihood ``(|delta|/alpha)^beta - log beta +
  log Gamma(1/beta)`` (+ ``log 2 alpha``, a constant when ``alpha = 1`` as in the paper);
* aleatoric variance ``alpha^2 Gamma(3/beta) / Gamma(1/beta)`` (:func:`ggd_variance`), decreasing in ``beta``;
* risk-averse ensemble weighting: member ``i``'s NLL is weighted by ``beta_i / sum_j beta_j`` (as ``ggd_nll_loss``);
* batch inverse error-variance (BIEV) weights (:func:`biev_weights`) for the epistemic part:
  ``w_j ∝ 1 / (Var_ens(delta_j) / (kurt_j / E + (E + 1) / (E - 1)) + xi)`` with ``xi >= 0`` the smallest value for
  which the effective batch size ``1 / sum_j w_j^2`` reaches ``min_effective_batch``; the BIEV term is the
  ``w``-weighted mean absolute TD error (``loss_type="mae"`` in the official algorithms), added with a temperature.

Checks against the official code (ait-lab/ggtde, read 2026-12-03):

* ``ggd_nll_loss`` computes ``|delta| * beta - log beta + lgamma(1/beta)``, i.e. ``|delta| * beta`` where the GGD
  has ``|delta|^beta``. That is not a GGD likelihood: it is not normalised and its minimiser over ``beta`` does
  not recover the shape (on unit Laplace errors, ``alpha = 1``, it gives ``beta ≈ 0.77``; on Gaussian ones with
  ``alpha = sqrt(2) sigma = 1`` about 0.92 instead of 2; the test file checks the Laplace number). This module
  implements the paper form.
* The code's BIEV variance uses ``np.var(ddof=0)`` over the ensemble and ``scipy.stats.kurtosis(bias=False)`` (excess
  kurtosis); the same here. The code finds ``xi`` by Nelder-Mead on ``|ESS(xi) - min|`` with ``fatol = 1`` (so
  the ESS may end up to 1 below the minimum); here ``xi`` is found by bisection on the monotone ESS, so the
  constraint ``ESS >= min(min_effective_batch, B - 1)`` holds exactly (the code's ``min(B - 1, .)`` kept).
* The code's weighted loss multiplies per-sample losses by the weights and then takes the *mean* over the batch (an
  extra factor ``1 / B``); here the BIEV term is the weighted mean ``sum_j w_j |delta_j|`` (weights summing to 1),
  so ``biev_temperature`` is not divided by the batch size.

Demo (:func:`demo`): a deterministic 20-state chain (``s -> s + 1``, the last state ends the episode), discount
0.9, random true values ``V* ~ N(0, 1)`` per state and mean reward ``r(s) = V*(s) - gamma V*(s + 1)``. The reward
noise has a per-state scale (log-uniform on [0.2, 2], drawn per seed) and one of three families: Laplace (GGD beta
= 1), Student-t with 3 degrees of freedom (heavy tailed, not a GGD), Gaussian (beta = 2). Each method fits an
ensemble of ``E = 5`` tabular value functions by semi-gradient TD(0) on a fixed dataset (50 noisy transitions per
state), each member on its own Poisson(1) bootstrap of the data, with minibatch Adam (1500 steps, batch 64, step
size decaying linearly to 0); the prediction is the ensemble mean. Methods differ only in the loss: MSE, Gaussian
NLL (a learned per-state ``log sigma``), GGD NLL (a learned per-state ``log alpha`` and one shape ``beta =
softplus(head)`` per member), GGD NLL + BIEV. Measured per family over 6 seeds: the value RMSE against ``V*``, its
reduction against MSE (per seed, ``1 - RMSE_GGD+BIEV / RMSE_MSE``), and the learned ``beta`` (GGD run).
The fast variant (500 steps, 2 seeds) is too short for the robust losses to settle: it checks the shapes, and its
RMSE comparison is not the claim's.

Choices where the paper is silent:

* ``alpha`` is learned (a per-state table) instead of fixed to 1: with ``alpha = 1`` the fitted ``beta`` mixes the
  noise's shape with its scale (the shape of Laplace errors is recovered only when ``b = 1``), so it could not
  track the noise family at the demo's per-state scales. With ``alpha`` learned the NLL gains ``log alpha``.
* One shape per member for all states (the noise family is the same everywhere), a per-state scale (the scale is
  not): the paper's networks have state-dependent heads.
* Tabular values. A first try with values linear in 5 features (true ``V*`` in their span) made the weighted losses
  (Gaussian NLL, GGD) worse than MSE on Gaussian noise: re-weighting states changes the state distribution that
  linear semi-gradient TD sees (an off-policy-like weighting), which slowed or destabilised it. Tabular values
  keep the comparison about the loss's shape.
* Ensemble disagreement, which BIEV needs, comes from per-member bootstrap weights on the fixed dataset (the
  official code's members see the same minibatch and differ by initialisation, which on a fixed dataset would
  converge to one solution). Every method uses the same bootstrap ensemble, so the BIEV term is the only
  difference between "GGD" and "GGD + BIEV".
* Deterministic transitions: with stochastic ``s'`` the TD target's noise would be asymmetric and a robust
  (median-like) loss would have a biased fixed point; the chain keeps the comparison about the reward noise.
* ``biev_temperature = 0.1`` and ``min_effective_batch = 16`` are the official SAC defaults
  (``uncertainty_temperature``, ``min_batch_size``).
* 50 transitions per state: with 30, the many per-state scales biased the fitted Gaussian shape up (about 2.6 on
  one seed); 50 is the setting used, not tuned further.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["Config", "ENTRY", "biev_weights", "demo", "effective_batch_size", "ggd_log_density", "ggd_nll",
           "ggd_variance", "ggtd_loss"]

#: Floor on ``|delta|`` inside ``|delta|^beta``: the gradient of ``|x|^beta`` is infinite at 0 for ``beta < 1``.
_ABS_FLOOR = 1e-12
#: Floor on the ensemble error variance (the official code's ``EPS`` clip).
_VARIANCE_FLOOR = 1e-8


def ggd_nll(td_error: torch.Tensor, beta: torch.Tensor, *, alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Per-element negative log likelihood of ``td_error`` under a zero-mean generalised Gaussian (Kim et al.
    2025, the GGD TD-error model): ``(|delta| / alpha)^beta - log beta + log Gamma(1 / beta) + log(2 alpha)``.

    ``beta > 0`` is the shape (1 Laplace, 2 Gaussian), ``alpha > 0`` the scale (the paper fixes it to 1, when the
    last term is the constant ``log 2``). Paper form ``|delta|^beta``, not the official code's ``|delta| * beta``."""
    alpha = torch.as_tensor(alpha, dtype=td_error.dtype)
    scaled = td_error.abs().clamp_min(_ABS_FLOOR) / alpha
    return scaled.pow(beta) - beta.log() + torch.lgamma(1.0 / beta) + torch.log(2.0 * alpha)


def ggd_log_density(x: np.ndarray, *, alpha: float, beta: float) -> np.ndarray:
    """``log p(x)`` of the zero-mean GGD, ``p(x) = beta / (2 alpha Gamma(1/beta)) exp(-(|x|/alpha)^beta)``."""
    x = np.asarray(x, dtype=float)
    return math.log(beta) - math.log(2 * alpha) - math.lgamma(1 / beta) - (np.abs(x) / alpha) ** beta


def ggd_variance(alpha: torch.Tensor | float, beta: torch.Tensor | float) -> torch.Tensor:
    """Aleatoric variance of the GGD (Kim et al. 2025, closed form): ``alpha^2 Gamma(3/beta) / Gamma(1/beta)``."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64 if isinstance(alpha, float) else None)
    beta = torch.as_tensor(beta, dtype=alpha.dtype)
    return alpha.pow(2) * torch.exp(torch.lgamma(3.0 / beta) - torch.lgamma(1.0 / beta))


def _excess_kurtosis(samples: np.ndarray) -> np.ndarray:
    """Bias-corrected excess kurtosis along axis 1 (``scipy.stats.kurtosis(bias=False)``, written out because the
    scipy call dominated a training step); where all members agree (zero variance) g2 is taken as 0."""
    n = samples.shape[1]
    centred = samples - samples.mean(axis=1, keepdims=True)
    m2 = np.mean(centred**2, axis=1)
    m4 = np.mean(centred**4, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        g2 = np.where(m2 > 0, m4 / m2**2 - 3.0, 0.0)
    return ((n + 1) * g2 + 6.0) * (n - 1) / ((n - 2) * (n - 3))


def effective_batch_size(weights: np.ndarray) -> float:
    """``1 / sum w^2`` of normalised weights (Kish's effective sample size)."""
    weights = np.asarray(weights, dtype=float)
    weights = weights / weights.sum()
    return float(1.0 / np.sum(weights**2))


def biev_weights(td_errors: np.ndarray, *, min_effective_batch: int) -> tuple[np.ndarray, float]:
    """Batch inverse error-variance weights (Kim et al. 2025, BIEV; official ``losses/weighted.py``).

    ``td_errors`` is ``[B, E]`` (a batch of ``B`` transitions, one TD error per ensemble member). Returns the
    weights ``w`` (``[B]``, summing to 1) and ``xi``: ``w_j ∝ 1 / (v_j + xi)`` with ``v_j = Var_ens(delta_j) /
    (kurt_j / E + (E + 1) / (E - 1))`` (population variance, unbiased excess kurtosis, as the code) and ``xi >= 0``
    the smallest shift with ``1 / sum w^2 >= min(min_effective_batch, B - 1)``."""
    td_errors = np.asarray(td_errors, dtype=float)
    if td_errors.ndim != 2 or td_errors.shape[1] < 4:
        raise ValueError(f"td_errors: expected shape [batch, ensemble >= 4] (the kurtosis needs 4 members), "
                         f"got {td_errors.shape}")
    batch, members = td_errors.shape
    if min_effective_batch < 1:
        raise ValueError(f"min_effective_batch: expected >= 1, got {min_effective_batch}")
    variance = np.var(td_errors, axis=1)  # population variance over members (ddof = 0, as the code)
    variance = variance / (_excess_kurtosis(td_errors) / members + (members + 1) / (members - 1))
    variance = variance.clip(_VARIANCE_FLOOR)
    target = min(min_effective_batch, batch - 1)

    def ess(xi: float) -> float:
        return effective_batch_size(1.0 / (variance + xi))

    xi = 0.0
    if ess(0.0) < target:
        # The ESS rises monotonically to B as xi grows (the weights flatten); bisect, keeping the feasible end.
        low, high = 0.0, float(variance.max())
        while ess(high) < target:
            high *= 2.0
        for _ in range(40):
            middle = 0.5 * (low + high)
            low, high = (low, middle) if ess(middle) >= target else (middle, high)
        xi = high
    inverse = 1.0 / (variance + xi)
    return inverse / inverse.sum(), xi


def ggtd_loss(values: torch.Tensor, targets: torch.Tensor, beta: torch.Tensor, *,
              alpha: torch.Tensor | float = 1.0, sample_weights: torch.Tensor | None = None,
              biev_temperature: float = 0.1, min_effective_batch: int = 16) -> dict[str, torch.Tensor]:
    """The GGTD value loss (Kim et al. 2025): risk-averse-weighted GGD NLL of the TD error plus the BIEV term.

    ``values``, ``targets`` (detached TD targets), ``beta`` and ``alpha`` are ``[B, E]`` (``E`` ensemble members;
    ``alpha`` may be a float). ``sample_weights`` (``[B, E]``, e.g. bootstrap counts) scale each member's per-sample
    losses. ``biev_temperature = 0`` turns BIEV off (and allows ``E < 4``). Returns ``loss_value`` (the total),
    ``loss_ggd_nll``, ``loss_biev``, ``beta_mean``, ``xi`` and ``effective_batch``."""
    if values.shape != targets.shape or values.shape != beta.shape or values.ndim != 2:
        raise ValueError(f"values, targets, beta: expected one shape [batch, ensemble], got {tuple(values.shape)}, "
                         f"{tuple(targets.shape)}, {tuple(beta.shape)}")
    weights = torch.ones_like(values) if sample_weights is None else sample_weights
    td_error = values - targets
    # Risk-averse ensemble weighting beta_i / sum_j beta_j (official ggd_nll_loss), a weight, not a gradient path.
    member_weight = (beta / beta.sum(dim=1, keepdim=True)).detach()
    nll = ggd_nll(td_error, beta, alpha=alpha)
    loss_ggd = (nll * member_weight * weights).sum(dim=1).mean()
    zero = torch.zeros((), dtype=values.dtype)
    loss_biev, xi, ess = zero, 0.0, float(values.shape[0])
    if biev_temperature > 0:
        batch_weights, xi = biev_weights(td_error.detach().cpu().numpy(), min_effective_batch=min_effective_batch)
        ess = effective_batch_size(batch_weights)
        w = torch.as_tensor(batch_weights, dtype=values.dtype)[:, None]
        loss_biev = (w * td_error.abs() * weights).sum()  # BIEV-weighted mean absolute error, summed over members
    total = loss_ggd + biev_temperature * loss_biev
    return {"loss_value": total, "loss_ggd_nll": loss_ggd.detach(), "loss_biev": loss_biev.detach(),
            "beta_mean": beta.detach().mean(), "xi": torch.tensor(xi), "effective_batch": torch.tensor(ess)}


@dataclass(frozen=True)
class Config:
    """The demo's problem and training settings."""

    n_states: int = 20
    """Chain length (deterministic ``s -> s + 1``; the last state ends the episode)."""
    gamma: float = 0.9
    """Discount: horizon ~10, so bootstrapping matters but the chain is short."""
    samples_per_state: int = 50
    """Noisy transitions per state in the fixed dataset (small enough that estimator efficiency shows; with 30 the
    per-state scales biased the fitted Gaussian shape up to about 2.6)."""
    noise_scale_range: tuple[float, float] = (0.2, 2.0)
    """Per-state noise scale, log-uniform on this range (the GGD ``alpha`` for Laplace: ``b``; Gaussian: ``sigma``;
    Student-t: the multiplier of a unit t); heteroscedastic so weighting can help."""
    ensemble_size: int = 5
    """Ensemble members (official default ``ensemble_size = 5``)."""
    steps: int = 1500
    """Minibatch Adam steps per fit (the learning rate decays linearly to 0 so robust losses settle)."""
    batch_size: int = 64
    """Minibatch size (official PPO-scale batch)."""
    learning_rate: float = 0.05
    """Adam step size at the start (a common choice for a table, not tuned; all methods share it)."""
    biev_temperature: float = 0.1
    """Weight of the BIEV term (official SAC default ``uncertainty_temperature = 0.1``)."""
    min_effective_batch: int = 16
    """Minimum BIEV effective batch size (official default ``min_batch_size = 16``)."""
    n_seeds: int = 6
    """Seeds ``seed, seed + 1, ...``."""

    def __post_init__(self) -> None:
        for name in ("n_states", "samples_per_state", "steps", "batch_size", "min_effective_batch", "n_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.ensemble_size < 4:
            raise ValueError(f"ensemble_size: expected >= 4 (BIEV's kurtosis), got {self.ensemble_size}")
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma: expected in (0, 1), got {self.gamma}")
        low, high = self.noise_scale_range
        if not 0 < low <= high:
            raise ValueError(f"noise_scale_range: expected 0 < low <= high, got {self.noise_scale_range}")
        if self.learning_rate <= 0 or self.biev_temperature < 0:
            raise ValueError(f"learning_rate > 0 and biev_temperature >= 0 expected, got {self.learning_rate}, "
                             f"{self.biev_temperature}")


#: The noise families of the demo and the GGD shape that each one is (None: not a GGD).
NOISE_FAMILIES: dict[str, float | None] = {"laplace": 1.0, "student_t3": None, "gaussian": 2.0}
#: The losses compared.
METHODS = ("mse", "gaussian_nll", "ggd", "ggd_biev")


def _noise(family: str, scale: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if family == "laplace":
        return rng.laplace(0.0, scale)
    if family == "gaussian":
        return rng.normal(0.0, scale)
    return scale * rng.standard_t(3.0, size=scale.shape)


@dataclass(frozen=True)
class _Problem:
    true_values: np.ndarray  # [S]
    states: np.ndarray  # [N] dataset states
    rewards: np.ndarray  # [N] noisy rewards
    bootstrap: np.ndarray  # [N, E] Poisson(1) counts


def _problem(config: Config, family: str, rng: np.random.Generator) -> _Problem:
    true_values = rng.normal(0.0, 1.0, config.n_states)
    next_values = np.append(true_values[1:], 0.0)  # the last state ends the episode
    mean_reward = true_values - config.gamma * next_values
    low, high = config.noise_scale_range
    scale = np.exp(rng.uniform(math.log(low), math.log(high), config.n_states))
    states = np.repeat(np.arange(config.n_states), config.samples_per_state)
    rewards = mean_reward[states] + _noise(family, scale[states], rng)
    bootstrap = rng.poisson(1.0, (states.size, config.ensemble_size)).astype(float)
    return _Problem(true_values, states, rewards, bootstrap)


def _fit(problem: _Problem, method: str, config: Config, generator: torch.Generator) -> tuple[float, float]:
    """Fit the ensemble with ``method``'s loss; returns (value RMSE against ``V*``, the mean learned ``beta``)."""
    dtype = torch.float64
    n_states, members = problem.true_values.size, config.ensemble_size
    states = torch.as_tensor(problem.states)
    rewards = torch.as_tensor(problem.rewards, dtype=dtype)
    bootstrap = torch.as_tensor(problem.bootstrap, dtype=dtype)
    # Tabular values with a zero row for the terminal successor (kept at 0: only rows < n_states get gradients).
    values_table = torch.zeros(n_states + 1, members, dtype=dtype)
    values_table[:n_states] = 0.1 * torch.randn(n_states, members, generator=generator, dtype=dtype)
    values_table.requires_grad_()
    # Per-state log-scale table (Gaussian: log sigma; GGD: log alpha) and one shape per member, started at beta = 2.
    log_scale = torch.zeros(n_states, members, dtype=dtype, requires_grad=True)
    shape_head = torch.full((members,), math.log(math.expm1(2.0)), dtype=dtype, requires_grad=True)
    optimiser = torch.optim.Adam([values_table, log_scale, shape_head], lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0 - step / config.steps)
    for _ in range(config.steps):
        index = torch.randint(0, states.numel(), (config.batch_size,), generator=generator)
        s = states[index]
        values = values_table[s]
        targets = (rewards[index, None] + config.gamma * values_table[s + 1]).detach()  # semi-gradient TD
        weights = bootstrap[index]
        if method == "mse":
            loss = (weights * (values - targets) ** 2).sum(dim=1).mean()
        elif method == "gaussian_nll":
            log_sigma = log_scale[s]
            loss = (weights * (log_sigma + 0.5 * ((values - targets) / log_sigma.exp()) ** 2)).sum(dim=1).mean()
        else:
            beta = torch.nn.functional.softplus(shape_head).expand_as(values)
            loss = ggtd_loss(values, targets, beta, alpha=log_scale[s].exp(), sample_weights=weights,
                             biev_temperature=config.biev_temperature if method == "ggd_biev" else 0.0,
                             min_effective_batch=config.min_effective_batch)["loss_value"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        predicted = values_table[:n_states].mean(dim=1).numpy()
        beta_mean = float(torch.nn.functional.softplus(shape_head).mean())
    rmse = float(np.sqrt(np.mean((predicted - problem.true_values) ** 2)))
    return rmse, beta_mean


def demo(*, fast: bool, seed: int) -> DemoResult:
    """Value RMSE of MSE, Gaussian NLL, GGD and GGD + BIEV TD learning on a chain with heavy-tailed reward noise,
    and the learned GGD shape per noise family, over ``n_seeds`` seeds."""
    config = Config(steps=500, n_seeds=2) if fast else Config()
    seeds = tuple(range(seed, seed + config.n_seeds))
    rmse = {(family, method): [] for family in NOISE_FAMILIES for method in METHODS}
    shape = {family: [] for family in NOISE_FAMILIES}
    for run_seed in seeds:
        for family_index, family in enumerate(NOISE_FAMILIES):
            problem_seq, *method_seqs = np.random.SeedSequence(run_seed, spawn_key=(family_index,)).spawn(
                1 + len(METHODS))
            problem = _problem(config, family, np.random.default_rng(problem_seq))
            for method, method_seq in zip(METHODS, method_seqs, strict=True):
                generator = torch.Generator().manual_seed(int(method_seq.generate_state(1)[0]))
                error, beta_mean = _fit(problem, method, config, generator)
                rmse[family, method].append(error)
                if method == "ggd":
                    shape[family].append(beta_mean)

    def reduction(family: str) -> list[float]:
        return [1.0 - g / m for g, m in zip(rmse[family, "ggd_biev"], rmse[family, "mse"], strict=True)]

    measured = {f"rmse_{family}": measure(rmse[family, "ggd_biev"], unit="value RMSE") for family in NOISE_FAMILIES}
    measured |= {f"rmse_{family}_ggd_only": measure(rmse[family, "ggd"], unit="value RMSE")
                 for family in NOISE_FAMILIES}
    measured |= {f"beta_{family}": measure(shape[family], unit="GGD shape") for family in NOISE_FAMILIES}
    measured |= {f"rmse_reduction_{family}": measure(reduction(family), unit="fraction of MSE's RMSE")
                 for family in NOISE_FAMILIES}
    baseline = {f"rmse_{family}": measure(rmse[family, "mse"], unit="value RMSE") for family in NOISE_FAMILIES}
    baseline |= {f"rmse_{family}_gaussian_nll": measure(rmse[family, "gaussian_nll"], unit="value RMSE")
                 for family in NOISE_FAMILIES}

    beta_laplace, beta_gauss = measured["beta_laplace"].mean, measured["beta_gaussian"].mean
    shape_ok = abs(beta_laplace - 1.0) <= 0.3 and abs(beta_gauss - 2.0) <= 0.3
    heavy = [measured[f"rmse_reduction_{family}"].mean for family in ("laplace", "student_t3")]
    rmse_ok = all(r >= 0.2 for r in heavy)
    verdict = "reproduced" if shape_ok and rmse_ok else ("partly" if shape_ok or rmse_ok or max(heavy) >= 0.2
                                                          else "not reproduced")
    why = (f"beta: Laplace {beta_laplace:.2f}, Gaussian {beta_gauss:.2f} (need 1 ± 0.3, 2 ± 0.3: "
           f"{'held' if shape_ok else 'missed'}); GGD+BIEV RMSE below MSE by {heavy[0]:.0%} (Laplace), "
           f"{heavy[1]:.0%} (t3), {measured['rmse_reduction_gaussian'].mean:.0%} (Gaussian) (need >= 20 % on heavy "
           f"tails: {'held' if rmse_ok else 'missed'}); GGD alone vs +BIEV in the *_ggd_only rows")
    return DemoResult(
        name="ggtd",
        claim=("The learned GGD shape tracks the TD-noise family (beta 1 ± 0.3 on Laplace, 2 ± 0.3 on Gaussian "
               "noise) and GGD-NLL + BIEV lowers the value RMSE by >= 20 % against MSE under heavy-tailed (Laplace, "
               "Student-t3) reward noise."),
        measured=measured, baseline=baseline, verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings=asdict(config) | {"methods": list(METHODS), "noise_families": list(NOISE_FAMILIES)},
    )


ENTRY = SuiteEntry(
    name="ggtd",
    title="Generalized Gaussian Temporal Difference Error for Uncertainty-aware Reinforcement Learning",
    citation="Kim et al. 2025",
    family="value_learning",
    module=__name__,
    rule=ggtd_loss,
    demo=demo,
)
