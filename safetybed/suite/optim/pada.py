"""PA&DA: importance sampling of paths and data by gradient norm for weight-sharing NAS.

Paper: Shun Lu, Yu Hu, Longxing Yang, Zihao Sun, Jilin Mei, Jianchao Tan, Chengru Song (2023, CVPR), "PA&DA: Jointly
Sampling PAth and DAta for Consistent NAS". Official code: ShunLu91/PA-DA, ``nasbench201/train_panda_201.py``.

The rule. One-shot NAS trains a supernet by sampling a path (one op per edge) and a minibatch per step. The paper
writes the stochastic gradient's variance as a function of the two sampling distributions and finds that the
variance-minimising distribution is proportional to the gradient norm of each path / each training sample. For an
estimate ``(1/B) sum_b w_b g_{i_b}`` of the mean ``gbar = (1/N) sum_i g_i`` with ``i ~ p`` and ``w_i = 1 / (N p_i)``,

    Var = (1/B) (sum_i ||g_i||^2 / (N^2 p_i) - ||gbar||^2),   minimised by   p_i = ||g_i|| / sum_j ||g_j||

(:func:`estimator_variance`, :func:`optimal_probabilities`). PA&DA uses cheap proxies for the norms and anneals from
uniform (:func:`pada_probabilities`):

* data: ``g_i = ||softmax(logits_i) - onehot(y_i)||`` (the gradient of the cross-entropy w.r.t. the logits),
  ``p_i = tau g_i / sum g + (1 - tau) / N``; the epoch's indices are resampled from ``p`` (with replacement);
* paths: per op, the norm of its parameters' gradients (weight norm + bias norm, averaged over the edges where it
  was used), ``p_op = tau normalize(norm) + (1 - tau) / K``, every edge draws its op from ``p_op``;
* ``tau = epoch / epochs`` for both.

Checked against the official code (``train_panda_201.py``: ``sample_prob_with_grads_norm``,
``operatio_gradient_norm_prob`` and the resampling at the end of ``train``): the mixing, the schedule and the
proxies above are what it does. Parameter-free ops get importance 0 (only the uniform share). A sample's or an op's
norm is a running pairwise mean ``(old + new) / 2``; unseen samples keep 0. **The official code does not
reweight the loss** (``loss_per_sample.mean()``), so it trains on a distribution tilted towards large-gradient
samples and paths, a biased estimate of the uniform objective. This module's default (``Config.reweight=True``)
multiplies each sample's loss by ``1 / (N p_i)`` and the path's by ``prod_e 1 / (K p_op[a_e])``
(:func:`importance_weights`), which makes the step an unbiased estimate of the uniform supernet gradient; the
official behaviour is ``reweight=False`` and the demo reports it too.

Demo (:func:`demo`): a tiny residual supernet on a synthetic 4-class Gaussian-mixture problem (10 features):
input layer, 3 edges ``h <- h + op(h)`` with ops {zero (skip), relu-linear, tanh-linear}, so 27 architectures, and a
linear head. Stand-alone test accuracy of all 27 (trained from scratch, full-batch Adam) is the ground truth.
Supernets are trained with uniform sampling (the paper's baseline, SPOS), PA&DA with reweighting and PA&DA as in the
official code; the claims: PA&DA's minibatch-gradient variance is lower (uniform / PA&DA >= 1.3, measured at the
end of training under each run's own sampler, Monte-Carlo over minibatch and path draws), and the Kendall tau between
the supernet ranking (inherited weights, test accuracy) and the stand-alone ranking is higher (>= +0.1).

What the demo showed while building (fast seed 0; full seeds 0-2): the unbiased version's gradient variance is
mostly higher than uniform's (per seed 3.3x, 0.27x, 312x in the full run; about 3000x on the first fast setting);
only on seed 1 is it lower. The official code gives parameter-free ops (here "zero") importance 0, so their
probability is ``(1 - tau) / K``, about ``1 / (3 epochs)`` near the end, and the path weight ``1 / (K p)`` on every edge
that draws one is large. Without reweighting (official), the variance is also higher than uniform's, because the
data are tilted towards large-gradient samples. Kendall tau to the stand-alone ranking is near 0 for every method on
this toy (the 27 stand-alone accuracies differ little), so the ranking claim is not testable here at this size.
Not tried for lack of time: a floor on the op probabilities, an importance for parameter-free ops, a harder task.

Choices where the paper is silent: the toy problem and sizes; one path per minibatch (as the official code);
momentum SGD lr 0.05 and gradient clipping at 5 (official values), constant lr (the official uses cosine);
tau-b (ties counted) for Kendall tau (the official ``rank_func.py`` uses ``scipy.stats.kendalltau``, also tau-b);
the variance is measured with per-step gradients of all shared weights (the paper does not say which parameters).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from safetybed.control.algorithms.common import build_module
from safetybed.suite.registry import DemoResult, SuiteEntry, measure

OPS = ("zero", "relu_linear", "tanh_linear")


# --------------------------------------------------------------------------------------------------- the rule


def pada_probabilities(importance: np.ndarray, *, tau: float) -> np.ndarray:
    """PA&DA's sampling distribution (Lu et al. 2023, Sec. 3, Eqs. for the optimal path / data probabilities with
    the annealing of Sec. 3.3): ``tau * g / sum(g) + (1 - tau) / N``; all-zero importance gives uniform."""
    importance = np.asarray(importance, dtype=float)
    if importance.ndim != 1 or importance.size == 0 or np.any(importance < 0) or not np.all(np.isfinite(importance)):
        raise ValueError(f"importance must be a non-empty 1-D array of finite values >= 0, got {importance!r}")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    uniform = np.full(importance.size, 1.0 / importance.size)
    total = importance.sum()
    if total <= 0.0:
        return uniform
    return tau * importance / total + (1.0 - tau) * uniform  # normalized gradient norm mixed with uniform


def importance_weights(probabilities: np.ndarray) -> np.ndarray:
    """The weights ``1 / (N p_i)`` that make a draw ``i ~ p`` of ``w_i g_i`` an unbiased estimate of
    ``(1/N) sum_i g_i`` (the reweighting the official PA&DA code omits)."""
    probabilities = np.asarray(probabilities, dtype=float)
    return 1.0 / (probabilities.size * probabilities)


def optimal_probabilities(gradient_norms: np.ndarray) -> np.ndarray:
    """The variance-minimising distribution ``p_i = ||g_i|| / sum_j ||g_j||`` (the paper's derivation, tau = 1)."""
    return pada_probabilities(gradient_norms, tau=1.0)


def estimator_variance(gradients: np.ndarray, probabilities: np.ndarray) -> float:
    """Exact variance (trace of the covariance) of one importance-weighted draw ``g_i / (N p_i)``, ``i ~ p``."""
    gradients = np.asarray(gradients, dtype=float)
    weighted = gradients * importance_weights(probabilities)[:, None]
    mean = probabilities @ weighted
    return float(probabilities @ np.sum(weighted**2, axis=1) - mean @ mean)


def data_importance(logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Per-sample gradient norm of the cross-entropy w.r.t. the logits, ``||softmax - onehot||`` (official code)."""
    probs = torch.softmax(logits.detach(), dim=1)
    onehot = nn.functional.one_hot(targets, num_classes=logits.shape[1]).to(probs.dtype)
    return torch.linalg.vector_norm(probs - onehot, dim=1).numpy()


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b between two score vectors (ties in either count as neither concordant nor discordant)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"need two 1-D arrays of equal length >= 2, got shapes {a.shape} and {b.shape}")
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(a.size, k=1)
    da, db = da[upper], db[upper]
    denominator = np.sqrt(np.count_nonzero(da) * np.count_nonzero(db))
    return float(np.sum(da * db) / denominator) if denominator > 0 else float("nan")


# --------------------------------------------------------------------------------------------------- the demo


@dataclass(frozen=True)
class Config:
    """Demo settings."""

    n_features: int = 10
    """Input dimension of the synthetic Gaussian mixture (toy choice)."""
    n_classes: int = 4
    """Classes (toy choice)."""
    n_train: int = 300
    """Training samples (toy choice, small so that data importance matters)."""
    n_test: int = 600
    """Held-out samples for the rankings (toy choice)."""
    hidden: int = 16
    """Width of the supernet (toy choice)."""
    edges: int = 3
    """Edges of the supernet; 3 ** edges architectures."""
    epochs: int = 40
    """Supernet epochs; tau = epoch / epochs as in the official code."""
    batch_size: int = 32
    """Minibatch size (toy choice)."""
    lr: float = 0.05
    """SGD learning rate (official default 0.05, momentum 0.9)."""
    standalone_steps: int = 150
    """Full-batch Adam steps per stand-alone architecture (toy choice)."""
    variance_draws: int = 48
    """Monte-Carlo draws of (minibatch, path) for the gradient variance (toy choice)."""
    reweight: bool = True
    """Importance-reweight the loss (unbiased; the issue's default). False is the official code's behaviour."""
    n_seeds: int = 5
    """Seeds the demo is run over."""

    def __post_init__(self) -> None:
        for name in ("n_features", "n_classes", "n_train", "n_test", "hidden", "edges", "epochs", "batch_size",
                     "standalone_steps", "variance_draws", "n_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def _make_data(config: Config, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    # Per class two Gaussian blobs of unequal spread, so that some samples are hard (large gradient) and most easy.
    centres = rng.normal(0.0, 1.6, size=(config.n_classes, 2, config.n_features))
    spreads = np.array([0.6, 1.6])

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = rng.integers(0, config.n_classes, size=n)
        blob = rng.integers(0, 2, size=n)
        x = centres[labels, blob] + spreads[blob][:, None] * rng.normal(size=(n, config.n_features))
        return torch.tensor(x, dtype=torch.float32), torch.tensor(labels)

    return (*draw(config.n_train), *draw(config.n_test))


class Supernet(nn.Module):
    """Input layer, ``edges`` residual edges ``h <- h + op(h)`` with ops :data:`OPS`, linear head."""

    def __init__(self, config: Config):
        super().__init__()
        self.stem = nn.Linear(config.n_features, config.hidden)
        self.edge_ops = nn.ModuleList(
            nn.ModuleDict({op: nn.Linear(config.hidden, config.hidden) for op in OPS[1:]})
            for _ in range(config.edges))
        self.head = nn.Linear(config.hidden, config.n_classes)

    def forward(self, x: torch.Tensor, arch: tuple[int, ...]) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        for ops, op_index in zip(self.edge_ops, arch, strict=True):
            name = OPS[op_index]
            if name == "relu_linear":
                h = h + torch.relu(ops[name](h))
            elif name == "tanh_linear":
                h = h + torch.tanh(ops[name](h))
        return self.head(h)

    def op_gradient_norms(self, arch: tuple[int, ...]) -> np.ndarray:
        """Per op, weight-grad norm + bias-grad norm averaged over the edges that used it (official code)."""
        norms = np.zeros(len(OPS))
        for ops, op_index in zip(self.edge_ops, arch, strict=True):
            if OPS[op_index] in ops:
                layer = ops[OPS[op_index]]
                norms[op_index] += float(layer.weight.grad.norm() + layer.bias.grad.norm())
        counts = np.bincount(arch, minlength=len(OPS))
        return np.where(counts > 0, norms / np.maximum(counts, 1), 0.0)


def _accuracy(model: Supernet, arch: tuple[int, ...], x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x, arch).argmax(dim=1) == y).float().mean())


def _standalone_accuracies(config: Config, data, archs, generator: torch.Generator) -> np.ndarray:
    x, y, x_test, y_test = data
    accuracies = []
    for arch in archs:
        model = build_module(lambda: Supernet(config), device=torch.device("cpu"), generator=generator)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(config.standalone_steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x, arch), y).backward()
            optimizer.step()
        accuracies.append(_accuracy(model, arch, x_test, y_test))
    return np.array(accuracies)


def _weighted_loss(model, arch, x, y, sample_weights, path_weight):
    per_sample = nn.functional.cross_entropy(logits := model(x, arch), y, reduction="none")
    return (path_weight * sample_weights * per_sample).mean(), logits


def train_supernet(config: Config, data, *, method: str, seed: int) -> tuple[dict[str, float], Supernet]:
    """Train one supernet with ``method`` in {"uniform", "pada", "pada_official"}; return its final state's
    minibatch-gradient variance under its own final sampler and the trained supernet."""
    x, y, _, _ = data
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    generator = torch.Generator().manual_seed(seed)
    model = build_module(lambda: Supernet(config), device=torch.device("cpu"), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    use_pada = method != "uniform"
    reweight = method == "pada"
    n = config.n_train
    sample_norms, op_norms = np.zeros(n), np.zeros(len(OPS))
    data_probs, op_probs = np.full(n, 1.0 / n), np.full(len(OPS), 1.0 / len(OPS))
    for epoch in range(config.epochs):
        tau = epoch / config.epochs
        if use_pada and epoch > 0:
            data_probs = pada_probabilities(sample_norms, tau=tau)
            op_probs = pada_probabilities(op_norms, tau=tau)
        order = rng.choice(n, size=n, replace=True, p=data_probs) if use_pada else rng.permutation(n)
        data_weights = importance_weights(data_probs) if reweight else np.ones(n)
        epoch_op_norms = np.zeros(len(OPS))
        for start in range(0, n, config.batch_size):
            batch = order[start:start + config.batch_size]
            arch = tuple(int(a) for a in rng.choice(len(OPS), size=config.edges, p=op_probs))
            path_weight = float(np.prod(importance_weights(op_probs)[list(arch)])) if reweight else 1.0
            optimizer.zero_grad()
            loss, logits = _weighted_loss(model, arch, x[batch], y[batch],
                                          torch.tensor(data_weights[batch], dtype=torch.float32), path_weight)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # official value
            optimizer.step()
            # Running pairwise means, as in the official code (unseen entries stay 0).
            seen = data_importance(logits, y[batch])
            for index, value in zip(batch, seen, strict=True):
                sample_norms[index] = value if sample_norms[index] == 0 else 0.5 * (sample_norms[index] + value)
            step_norms = model.op_gradient_norms(arch)
            epoch_op_norms = np.where(step_norms > 0, np.where(epoch_op_norms > 0,
                                                               0.5 * (epoch_op_norms + step_norms), step_norms),
                                      epoch_op_norms)
        op_norms = epoch_op_norms
    variance = _gradient_variance(config, model, x, y, data_probs, op_probs, reweight=reweight, rng=rng)
    return {"variance": variance}, model


def _gradient_variance(config, model, x, y, data_probs, op_probs, *, reweight, rng) -> float:
    """Trace of the covariance of the training step's gradient (all shared weights), Monte Carlo over draws."""
    n = config.n_train
    data_weights = importance_weights(data_probs) if reweight else np.ones(n)
    gradients = []
    for _ in range(config.variance_draws):
        batch = rng.choice(n, size=config.batch_size, replace=True, p=data_probs)
        arch = tuple(int(a) for a in rng.choice(len(OPS), size=config.edges, p=op_probs))
        path_weight = float(np.prod(importance_weights(op_probs)[list(arch)])) if reweight else 1.0
        model.zero_grad()
        loss, _ = _weighted_loss(model, arch, x[batch], y[batch],
                                 torch.tensor(data_weights[batch], dtype=torch.float32), path_weight)
        loss.backward()
        gradients.append(torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.flatten()
                                    for p in model.parameters()]).numpy().copy())
    gradients = np.array(gradients)
    return float(np.sum(gradients.var(axis=0, ddof=1)))


METHODS = ("uniform", "pada", "pada_official")


def demo(*, fast: bool, seed: int) -> DemoResult:
    """Gradient variance and ranking consistency (Kendall tau) of uniform vs PA&DA supernet training."""
    config = (Config(epochs=15, n_seeds=1, standalone_steps=60, variance_draws=24) if fast
              else Config(n_seeds=3))
    seeds = tuple(range(seed, seed + config.n_seeds))
    archs = list(itertools.product(range(len(OPS)), repeat=config.edges))
    results = {method: {"variance": [], "kendall_tau": []} for method in METHODS}
    for s in seeds:
        data = _make_data(config, np.random.default_rng(np.random.SeedSequence([s, 1])))
        truth = _standalone_accuracies(config, data, archs, torch.Generator().manual_seed(s + 1000))
        for method in METHODS:
            numbers, model = train_supernet(config, data, method=method, seed=s)
            inherited = np.array([_accuracy(model, arch, data[2], data[3]) for arch in archs])
            results[method]["variance"].append(numbers["variance"])
            results[method]["kendall_tau"].append(kendall_tau(inherited, truth))
    measured = {"grad_variance": measure(results["pada"]["variance"]),
                "kendall_tau": measure(results["pada"]["kendall_tau"]),
                "official_grad_variance": measure(results["pada_official"]["variance"]),
                "official_kendall_tau": measure(results["pada_official"]["kendall_tau"])}
    baseline = {"grad_variance": measure(results["uniform"]["variance"]),
                "kendall_tau": measure(results["uniform"]["kendall_tau"])}
    variance_ratio = baseline["grad_variance"].mean / measured["grad_variance"].mean
    tau_gain = measured["kendall_tau"].mean - baseline["kendall_tau"].mean
    official_ratio = baseline["grad_variance"].mean / measured["official_grad_variance"].mean
    official_gain = measured["official_kendall_tau"].mean - baseline["kendall_tau"].mean
    held = [variance_ratio >= 1.3, tau_gain >= 0.1]
    verdict = "reproduced" if all(held) else "partly" if any(held) else "not reproduced"
    why = (f"variance uniform/PA&DA = {variance_ratio:.2f} (needs >= 1.3), Kendall tau gain {tau_gain:+.3f} "
           f"(needs >= +0.1); official (no reweighting): ratio {official_ratio:.2f}, gain {official_gain:+.3f}; "
           f"27-arch residual MLP supernet on a 4-class Gaussian mixture")
    return DemoResult(
        name="pada",
        claim=("PA&DA (unbiased, reweighted) lowers the supernet's minibatch-gradient variance >= 1.3x vs uniform "
               "sampling and raises Kendall tau to the stand-alone ranking by >= +0.1."),
        measured=measured, baseline=baseline, verdict=verdict, why=why, fast=fast, seeds=seeds,
        settings=asdict(config) | {"ops": list(OPS), "architectures": len(archs)},
    )


ENTRY = SuiteEntry(
    name="pada",
    title="PA&DA: Jointly Sampling PAth and DAta for Consistent NAS",
    citation="Lu et al. 2023",
    family="optim",
    module=__name__,
    rule=pada_probabilities,
    demo=demo,
)
