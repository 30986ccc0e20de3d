"""Automate-CoT: exemplar selection by a variance-reduced black-box policy gradient over slot categoricals.

Paper: KaShun Shum, Shizhe Diao, Tong Zhang (2023), "Automatic Prompt Augmentation and Selection with
Chain-of-Thought from Labeled Data" (Findings of EMNLP 2023; official code SHUMKASHUN/Automate-CoT,
``src/example_selection.py``). After augmenting and pruning rationale chains, the prompt is ``K`` slots; slot ``k``
picks one exemplar from its own sub-pool with a categorical ``p_k`` whose probabilities are the parameters (§3.3).
The variance-reduced policy gradient (§3.3, the paper's gradient equation, taken from Diao et al. 2022's black-box
prompt learning) samples ``I`` prompt sets ``S_i ~ prod_k p_k``, evaluates each loss ``L_i`` on a batch and uses

    g = 1 / (I - 1) * sum_i (L_i - mean_i L_i) * d_i,

then clips the gradient norm to 3, takes an Adam step and projects each ``p_k`` back onto the simplex
(:func:`vr_policy_gradient`, :func:`project_to_simplex`, :func:`selection_step`). The loss per query is
``-log p_LLM(answer)`` when correct and ``-log 0.05`` when wrong.

Checked against the official code (``training_step``): the "derivative" ``d_i`` is ``+1 / p_kj`` at each slot's
sampled index ``j`` and ``-1 / p_kj`` at every other index (``derivative = -1 / sample_probs``, then ``*= -1`` at the
sample). This is not the score ``d log P / d p`` (that is ``1 / p`` at the sample and 0 elsewhere), but with the
leave-mean-out baseline its expectation is ``2 (G_kj - E[L])`` where ``G_kj = E[L | slot k = j]`` is the exact
gradient of ``E[L]`` in ``p_kj`` (``E[L]`` is multilinear in the ``p_k``): twice the exact gradient plus a
per-slot constant, which the simplex projection ignores. :func:`vr_policy_gradient` implements the official
derivative (``derivative="official"``) and, as an option, the plain score (``derivative="score"``, expectation
``G_kj - E[L]``); the math test checks both expectations by enumeration. The official projection
(``constrain_score_by_whole_exact``) bisects for a shift ``v`` with ``sum clamp(p - v, 1e-4, 1) = 1`` (30 steps,
tolerance 1e-3); here it is the exact Euclidean projection onto ``{p >= floor, sum p = 1}`` (the sort rule of
Duchi et al. 2008) with the same floor 1e-4, which keeps ``1 / p`` finite.

Demo (:func:`demo`, suite.md §1.14(c)): a pool of 40 exemplars with hidden quality ``q_j ~ U[0, 1]``, 4 slots of 10
(slot ``k`` owns exemplars ``10k .. 10k + 9``, the official code's reshaping of the pool), and a simulated LLM that
answers a query correctly with probability ``sigma(sum_{chosen} q_j - c)``. Vanilla PG (``I = 1``, no baseline:
``g = L_1 d_1``) against VR-PG (``I = 10``). Measured: the total variance of one step's gradient estimate at the
uniform start (over repeated draws), and the accuracy of the argmax set (the official validation step's choice)
after training, against the best feasible set (the top exemplar of each slot's sub-pool) and the global top-4.

Choices where the paper is silent:

* The simulated LLM's answer probability on a correct answer is its success probability ``sigma(.)``, so the loss
  of a correct query is ``-log sigma(.)``; a wrong one costs ``-log 0.05`` (official code). The official
  ``FACTOR = 1e7`` loss scale is dropped: with it the clip at 3 would bind on every step; here the losses are
  O(1) nats and the gradient's norm at the start is a few units, comparable to the clip.
* ``c = 2.5`` so a random set answers about 38 % of queries and the best about 80 %.
* Adam learning rate 0.02 (the official default 1e-3 moves ``p`` by about 1e-3 per step and needs thousands of
  API calls; on the toy 0.02 converges in a few hundred steps), no cosine schedule.
* Vanilla PG uses the same official derivative without a baseline (``I = 1`` has no leave-mean-out); its gradient
  is clipped, stepped and projected the same way.
* The oracle is the best feasible set (the best exemplar of each sub-pool); the global top-4 may not be feasible
  and is reported as an extra number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import special

from safetybed.suite.registry import DemoResult, SuiteEntry, measure

__all__ = ["Config", "ENTRY", "demo", "project_to_simplex", "selection_step", "vr_policy_gradient"]

#: The loss of a wrong answer, ``-log 0.05`` (official code, ``forward``).
WRONG_ANSWER_LOSS = -np.log(0.05)
DERIVATIVES = ("official", "score")


def project_to_simplex(values: np.ndarray, *, floor: float = 1e-4) -> np.ndarray:
    """Euclidean projection of each row of ``values`` onto ``{p : p >= floor, sum p = 1}`` (Shum et al. 2023 §3.3
    project back after each step; exact sort rule of Duchi et al. 2008 applied to ``p - floor``)."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    n = values.shape[1]
    if not 0 <= floor * n < 1:
        raise ValueError(f"floor: expected 0 <= floor < 1 / {n}, got {floor}")
    mass = 1.0 - floor * n  # what is left above the floor
    shifted = values - floor
    ordered = -np.sort(-shifted, axis=1)
    cumulative = np.cumsum(ordered, axis=1) - mass
    ranks = np.arange(1, n + 1)
    active = ordered - cumulative / ranks > 0
    last = n - 1 - np.argmax(active[:, ::-1], axis=1)  # largest rank with a positive entry
    threshold = cumulative[np.arange(len(values)), last] / (last + 1)
    return floor + np.maximum(shifted - threshold[:, None], 0.0)


def vr_policy_gradient(losses: np.ndarray, indices: np.ndarray, probabilities: np.ndarray, *,
                       derivative: str = "official") -> np.ndarray:
    """The variance-reduced black-box policy gradient (Shum et al. 2023 §3.3; Diao et al. 2022).

    ``losses`` ``[I]`` are the losses of ``I`` sampled prompt sets, ``indices`` ``[I, K]`` each set's choice per slot,
    ``probabilities`` ``[K, N]`` the slot categoricals. ``I >= 2``: leave-mean-out ``1 / (I - 1) sum_i (L_i - Lbar)
    d_i``; ``I = 1``: vanilla ``L_1 d_1`` (no baseline). ``derivative="official"``: ``d = +1/p`` at the sampled
    index and ``-1/p`` elsewhere (official ``training_step``); ``"score"``: ``1/p`` at the sample, 0 elsewhere."""
    if derivative not in DERIVATIVES:
        raise ValueError(f"derivative: expected one of {DERIVATIVES}, got {derivative!r}")
    losses = np.asarray(losses, dtype=float)
    indices = np.asarray(indices)
    n_samples, n_slots = indices.shape
    if losses.shape != (n_samples,) or probabilities.shape[0] != n_slots:
        raise ValueError(f"losses [I]={losses.shape}, indices [I, K]={indices.shape} and probabilities "
                         f"[K, N]={probabilities.shape} do not agree")
    chosen = np.zeros((n_samples, *probabilities.shape))
    chosen[np.arange(n_samples)[:, None], np.arange(n_slots)[None, :], indices] = 1.0
    if derivative == "official":
        derivatives = (2.0 * chosen - 1.0) / probabilities  # -1/p everywhere, sign flipped at the sample
    else:
        derivatives = chosen / probabilities
    if n_samples == 1:
        return losses[0] * derivatives[0]
    weights = (losses - losses.mean()) / (n_samples - 1)  # leave-mean-out baseline, paper's VR-PG equation
    return np.tensordot(weights, derivatives, axes=1)


@dataclass(frozen=True)
class Config:
    """The demo's pool, solver and optimiser."""

    pool_size: int = 40
    """Exemplars in the pool (suite.md §1.14(c))."""
    n_slots: int = 4
    """Prompt slots ``K`` (suite.md §1.14(c)); each owns ``pool_size / n_slots`` exemplars (official reshaping)."""
    offset: float = 2.5
    """``c`` in the solver's ``sigma(sum q - c)``: a random set answers ~38 %, the best ~80 %."""
    queries_per_loss: int = 10
    """Training queries per loss evaluation (official ``batch_size`` 10)."""
    samples: int = 10
    """VR-PG's ``I`` (official ``pge_avg_samples`` 10)."""
    clip_norm: float = 3.0
    """Gradient-norm clip (official ``clip_grad_norm_(..., 3)``)."""
    learning_rate: float = 0.02
    """Adam step (official default 1e-3; larger here, see the module docstring)."""
    floor: float = 1e-4
    """Probability floor of the projection (official ``clamp_(0.0001, 1)``)."""
    steps: int = 300
    """Optimisation steps per run."""
    variance_draws: int = 400
    """Repeated gradient draws at the uniform start for the variance measure."""
    n_seeds: int = 5
    """Seeds ``seed, seed + 1, ...``."""

    def __post_init__(self) -> None:
        for name in ("pool_size", "n_slots", "queries_per_loss", "steps", "n_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.pool_size % self.n_slots:
            raise ValueError(f"pool_size: expected a multiple of n_slots={self.n_slots}, got {self.pool_size}")
        if self.samples < 2 or self.variance_draws < 2:
            raise ValueError(f"samples and variance_draws: expected >= 2, got {self.samples}, {self.variance_draws}")
        if self.clip_norm <= 0 or self.learning_rate <= 0:
            raise ValueError(f"clip_norm, learning_rate: expected > 0, got {self.clip_norm}, {self.learning_rate}")


def _success(quality: np.ndarray, sets: np.ndarray, config: Config) -> np.ndarray:
    """The simulated LLM's success probability ``sigma(sum_{chosen} q - c)`` for ``sets`` ``[..., K]``."""
    per_slot = config.pool_size // config.n_slots
    global_index = sets + per_slot * np.arange(config.n_slots)
    return special.expit(quality[global_index].sum(axis=-1) - config.offset)


def _losses(quality: np.ndarray, sets: np.ndarray, config: Config, rng: np.random.Generator) -> np.ndarray:
    """Mean query loss of each set: ``-log sigma`` when the sampled answer is right, ``-log 0.05`` when wrong."""
    success = _success(quality, sets, config)
    correct = rng.random((len(sets), config.queries_per_loss)) < success[:, None]
    return np.where(correct, -np.log(success)[:, None], WRONG_ANSWER_LOSS).mean(axis=1)


def _sample_sets(probabilities: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    cumulative = np.cumsum(probabilities, axis=1)
    uniforms = rng.random((n, probabilities.shape[0], 1))
    return np.minimum((uniforms > cumulative[None]).sum(axis=2), probabilities.shape[1] - 1)


@dataclass
class _Adam:
    learning_rate: float
    first: np.ndarray
    second: np.ndarray
    steps: int = 0

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam defaults (official optimiser)
        self.steps += 1
        self.first = beta1 * self.first + (1 - beta1) * grad
        self.second = beta2 * self.second + (1 - beta2) * grad**2
        first = self.first / (1 - beta1**self.steps)
        second = self.second / (1 - beta2**self.steps)
        return params - self.learning_rate * first / (np.sqrt(second) + eps)


def selection_step(probabilities: np.ndarray, losses: np.ndarray, indices: np.ndarray, optimiser: _Adam, *,
                   clip_norm: float, floor: float) -> dict[str, np.ndarray]:
    """One Automate-CoT update: VR-PG gradient, norm clip, Adam step, simplex projection (official
    ``training_step``). Returns the named terms: ``probabilities`` (new), ``gradient`` (before the clip),
    ``loss_mean``."""
    gradient = vr_policy_gradient(losses, indices, probabilities)
    norm = float(np.linalg.norm(gradient))
    clipped = gradient * min(1.0, clip_norm / (norm + 1e-6))  # torch clip_grad_norm_ rule
    updated = project_to_simplex(optimiser.step(probabilities, clipped), floor=floor)
    return {"probabilities": updated, "gradient": gradient, "loss_mean": np.asarray(losses.mean())}


def _gradient_variance(quality: np.ndarray, samples: int, config: Config, rng: np.random.Generator) -> float:
    """Total variance (trace of the covariance) of one gradient estimate at the uniform start."""
    per_slot = config.pool_size // config.n_slots
    uniform = np.full((config.n_slots, per_slot), 1.0 / per_slot)
    draws = []
    for _ in range(config.variance_draws):
        sets = _sample_sets(uniform, samples, rng)
        draws.append(vr_policy_gradient(_losses(quality, sets, config, rng), sets, uniform).ravel())
    return float(np.var(np.array(draws), axis=0, ddof=1).sum())


def _train(quality: np.ndarray, samples: int, config: Config, rng: np.random.Generator) -> float:
    """Train the slot categoricals; the accuracy of the argmax set at the end."""
    per_slot = config.pool_size // config.n_slots
    probabilities = np.full((config.n_slots, per_slot), 1.0 / per_slot)
    optimiser = _Adam(config.learning_rate, np.zeros_like(probabilities), np.zeros_like(probabilities))
    for _ in range(config.steps):
        sets = _sample_sets(probabilities, samples, rng)
        terms = selection_step(probabilities, _losses(quality, sets, config, rng), sets, optimiser,
                               clip_norm=config.clip_norm, floor=config.floor)
        probabilities = terms["probabilities"]
    return float(_success(quality, probabilities.argmax(axis=1), config))


def demo(*, fast: bool, seed: int) -> DemoResult:
    """Gradient variance at the start and final accuracy of vanilla PG (I = 1) and VR-PG (I = 10)."""
    config = Config(steps=150, variance_draws=200, n_seeds=3) if fast else Config()
    seeds = tuple(range(seed, seed + config.n_seeds))
    per_slot = config.pool_size // config.n_slots
    values: dict[str, list[float]] = {k: [] for k in ("var_vr", "var_vanilla", "acc_vr", "acc_vanilla", "oracle",
                                                      "top4", "random", "gap_vr", "gap_vanilla", "ratio")}
    for run_seed in seeds:
        pool_seq, var_vr, var_vanilla, train_vr, train_vanilla = np.random.SeedSequence(run_seed).spawn(5)
        quality = np.random.default_rng(pool_seq).random(config.pool_size)
        oracle = float(_success(quality, quality.reshape(config.n_slots, per_slot).argmax(axis=1), config))
        top4 = float(special.expit(np.sort(quality)[-config.n_slots:].sum() - config.offset))
        values["oracle"].append(oracle)
        values["top4"].append(top4)
        values["random"].append(float(special.expit(config.n_slots * quality.mean() - config.offset)))
        values["var_vr"].append(_gradient_variance(quality, config.samples, config, np.random.default_rng(var_vr)))
        values["var_vanilla"].append(_gradient_variance(quality, 1, config, np.random.default_rng(var_vanilla)))
        values["ratio"].append(values["var_vanilla"][-1] / values["var_vr"][-1])
        for label, samples, seq in (("vr", config.samples, train_vr), ("vanilla", 1, train_vanilla)):
            accuracy = _train(quality, samples, config, np.random.default_rng(seq))
            values[f"acc_{label}"].append(accuracy)
            values[f"gap_{label}"].append(oracle - accuracy)

    variance_unit, accuracy_unit = "trace of gradient covariance", "fraction of queries answered"
    measured = {"gradient_variance": measure(values["var_vr"], unit=variance_unit),
                "variance_reduction_factor": measure(values["ratio"], unit="vanilla / VR variance"),
                "accuracy": measure(values["acc_vr"], unit=accuracy_unit),
                "gap_to_oracle": measure(values["gap_vr"], unit=accuracy_unit),
                "oracle_accuracy": measure(values["oracle"], unit=accuracy_unit),
                "global_top4_accuracy": measure(values["top4"], unit=accuracy_unit)}
    baseline = {"gradient_variance": measure(values["var_vanilla"], unit=variance_unit),
                "accuracy": measure(values["acc_vanilla"], unit=accuracy_unit),
                "gap_to_oracle": measure(values["gap_vanilla"], unit=accuracy_unit),
                "random_set_accuracy": measure(values["random"], unit=accuracy_unit)}
    variance_ok = measured["variance_reduction_factor"].mean >= 3.0
    accuracy_ok = measured["gap_to_oracle"].mean <= 0.02
    verdict = "reproduced" if variance_ok and accuracy_ok else ("partly" if variance_ok or accuracy_ok
                                                                else "not reproduced")
    why = (f"VR-PG variance {measured['variance_reduction_factor'].mean:.3g}x lower than vanilla (need >= 3: "
           f"{'held' if variance_ok else 'missed'}); after {config.steps} steps VR-PG's set is "
           f"{measured['gap_to_oracle'].mean:.3f} below the oracle (need <= 0.02: "
           f"{'held' if accuracy_ok else 'missed'}), vanilla's {baseline['gap_to_oracle'].mean:.3f}")
    return DemoResult(
        name="automate-cot",
        claim=("On a 40-exemplar pool with 4 slots, VR-PG (I = 10) has >= 3x lower gradient variance than vanilla PG "
               "(I = 1) and its selected set's accuracy is within 0.02 of the oracle set's."),
        measured=measured, baseline=baseline, verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings=asdict(config),
    )


ENTRY = SuiteEntry(
    name="automate-cot",
    title="Automatic Prompt Augmentation and Selection with Chain-of-Thought from Labeled Data",
    citation="Shum et al. 2023",
    family="prompt_opt",
    module=__name__,
    rule=vr_policy_gradient,
    demo=demo,
)
