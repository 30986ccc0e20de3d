"""Policy and value networks shared by the training algorithms, the checkpoints and the bundles.

Every network is described by a JSON-able :class:`PolicyArch` so a checkpoint can rebuild it from its
manifest without unpickling anything. Defaults follow the source papers where the algorithm file
says so (e.g. DSAC-T: 3x256 GELU, log-std in [-20, 0.5]; Duan et al. 2025, ``research/centaur_dsac.md`` §2.1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

Activation = Literal["relu", "tanh", "gelu", "elu"]
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU}


def mlp(in_dim: int, out_dim: int, *, hidden: tuple[int, ...], activation: Activation) -> nn.Sequential:
    """A plain MLP ``in -> hidden... -> out`` with ``activation`` between layers and a linear output."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    sizes = (in_dim, *hidden)
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), _ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], out_dim))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class PolicyArch:
    """Architecture of a policy network, stored in checkpoint manifests.

    ``kind``: ``"tanh_gaussian"`` (SAC, DSAC-T, MDPO-off: squashed Gaussian scaled to the action bounds),
    ``"gaussian"`` (PPO, MDPO-on: diagonal Gaussian with a state-independent log-std, clipped to the
    bounds when acting) or ``"categorical"`` (discrete actions).
    """

    kind: Literal["tanh_gaussian", "gaussian", "categorical"]
    obs_dim: int
    act_dim: int
    hidden: tuple[int, ...] = (256, 256)
    activation: Activation = "relu"
    action_low: tuple[float, ...] = field(default_factory=tuple)
    action_high: tuple[float, ...] = field(default_factory=tuple)
    log_std_min: float = -20.0
    log_std_max: float = 2.0

    def to_json(self) -> dict:
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        data["action_low"] = list(self.action_low)
        data["action_high"] = list(self.action_high)
        return data

    @classmethod
    def from_json(cls, data: dict) -> PolicyArch:
        data = dict(data)
        for key in ("hidden", "action_low", "action_high"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


class Policy(nn.Module):
    """A stochastic policy with a deterministic mode; ``forward`` returns the deterministic action.

    ``forward`` is what deployment bundles run (rebuilt from their JSON description and safetensors weights):
    the deterministic action for a batch of (already normalised) observations.
    """

    def __init__(self, arch: PolicyArch):
        super().__init__()
        self.arch = arch
        if arch.kind == "categorical":
            self.net = mlp(arch.obs_dim, arch.act_dim, hidden=arch.hidden, activation=arch.activation)
            self.log_std = None
        elif arch.kind == "tanh_gaussian":
            self.net = mlp(arch.obs_dim, 2 * arch.act_dim, hidden=arch.hidden, activation=arch.activation)
            self.log_std = None
        elif arch.kind == "gaussian":
            self.net = mlp(arch.obs_dim, arch.act_dim, hidden=arch.hidden, activation=arch.activation)
            self.log_std = nn.Parameter(torch.zeros(arch.act_dim))
        else:
            raise ValueError(f"kind: expected tanh_gaussian|gaussian|categorical, got {arch.kind!r}")
        if arch.kind != "categorical":
            if len(arch.action_low) != arch.act_dim or len(arch.action_high) != arch.act_dim:
                raise ValueError(f"action bounds: expected {arch.act_dim} values each, got "
                                 f"{len(arch.action_low)} / {len(arch.action_high)}")
            low = torch.tensor(arch.action_low, dtype=torch.float32)
            high = torch.tensor(arch.action_high, dtype=torch.float32)
        else:
            low = high = torch.zeros(0)
        self.register_buffer("action_scale", (high - low) / 2.0, persistent=False)
        self.register_buffer("action_bias", (high + low) / 2.0, persistent=False)

    # -- distributions -----------------------------------------------------------------------------------
    def mean_log_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-squash mean and log-std (Gaussian kinds)."""
        out = self.net(obs)
        if self.arch.kind == "tanh_gaussian":
            mean, log_std = out.chunk(2, dim=-1)
        else:
            mean, log_std = out, self.log_std.expand_as(out)
        return mean, log_std.clamp(self.arch.log_std_min, self.arch.log_std_max)

    def sample(self, obs: torch.Tensor, *, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action sample and its log-probability (per batch row).

        For ``tanh_gaussian`` the log-probability includes the tanh Jacobian and the scale to the
        action bounds (Haarnoja et al. 2018, SAC, appendix C; eps = 1e-6 as in the DSAC-T code).
        """
        if self.arch.kind == "categorical":
            logits = self.net(obs)
            probs = torch.softmax(logits, dim=-1)
            action = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            log_prob = torch.log_softmax(logits, dim=-1).gather(-1, action[:, None]).squeeze(-1)
            return action, log_prob
        mean, log_std = self.mean_log_std(obs)
        std = log_std.exp()
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        pre = mean + std * noise
        gaussian_log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        if self.arch.kind == "gaussian":
            return pre, gaussian_log_prob
        squashed = torch.tanh(pre)
        log_prob = gaussian_log_prob - torch.log(self.action_scale * (1 - squashed.pow(2)) + 1e-6).sum(-1)
        return squashed * self.action_scale + self.action_bias, log_prob

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Log-probability of given actions (``gaussian`` and ``categorical`` kinds; used by on-policy methods)."""
        if self.arch.kind == "categorical":
            return torch.log_softmax(self.net(obs), dim=-1).gather(-1, action.long()[:, None]).squeeze(-1)
        if self.arch.kind != "gaussian":
            raise ValueError("log_prob of given actions is only defined for gaussian and categorical policies")
        mean, log_std = self.mean_log_std(obs)
        return (-0.5 * ((action - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action: argmax / squashed mean / mean clipped to the bounds."""
        if self.arch.kind == "categorical":
            return self.net(obs).argmax(dim=-1)
        mean, _ = self.mean_log_std(obs)
        if self.arch.kind == "tanh_gaussian":
            return torch.tanh(mean) * self.action_scale + self.action_bias
        return torch.maximum(torch.minimum(mean, self.action_bias + self.action_scale),
                             self.action_bias - self.action_scale)

    def act_stochastic(self, obs: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """A sampled action inside the bounds (Gaussian samples are clipped)."""
        action, _ = self.sample(obs, generator=generator)
        if self.arch.kind == "gaussian":
            action = torch.maximum(torch.minimum(action, self.action_bias + self.action_scale),
                                   self.action_bias - self.action_scale)
        return action


class ObsNormalizer(nn.Module):
    """Running mean / variance of observations (parallel Welford update), clipped z-scores.

    The statistics are buffers, so they travel in the checkpoint's safetensors file and in bundles.
    ``update`` is only called during training; acting uses the frozen statistics.

    ``std_floor`` (raw observation units, >= 0): the z-score divides by ``max(std, std_floor)``. A feature that was
    (near) constant in the training data has std ~ 0, so without a floor any noise on it at test time (a smoothing
    sigma, a sensor error) is multiplied by ~1e4 and saturates at the clip; with ``std_floor = f`` noise of size
    ``e`` moves that z-score by at most ``e / f``. 0 keeps the plain running std (the checkpoints before the
    floor, which load with 0).
    """

    def __init__(self, dim: int, *, clip: float = 10.0, enabled: bool = True, std_floor: float = 0.0):
        super().__init__()
        if not (std_floor >= 0 and math.isfinite(std_floor)):
            raise ValueError(f"std_floor: expected a finite number >= 0 (raw observation units), got {std_floor!r}")
        self.enabled = enabled
        self.clip = clip
        self.std_floor = float(std_floor)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.tensor(1e-4))

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        if not self.enabled:
            return
        batch = batch.reshape(-1, self.mean.shape[0]).to(self.mean)
        n = torch.tensor(float(batch.shape[0]), device=self.mean.device)
        batch_mean = batch.mean(0)
        batch_var = batch.var(0, unbiased=False)
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total) / total
        self.count = total

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return obs
        var = self.var if self.std_floor == 0.0 else torch.clamp(self.var, min=self.std_floor ** 2)
        return ((obs - self.mean) / torch.sqrt(var + 1e-8)).clamp(-self.clip, self.clip)


class QNetwork(nn.Module):
    """``Q(s, a)`` with ``outputs`` heads (1 for SAC; 2 = mean and raw std for the DSAC-T critic)."""

    def __init__(self, obs_dim: int, act_dim: int, *, hidden: tuple[int, ...], activation: Activation,
                 outputs: int = 1):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, outputs, hidden=hidden, activation=activation)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1))


class TwinQNetwork(nn.Module):
    """Two :class:`QNetwork` critics evaluated together: one batched matmul per layer for both.

    Layer ``l`` holds ``weight_l`` ``[2, in, out]`` and ``bias_l`` ``[2, 1, out]``; member ``i`` is critic ``i``.
    ``forward(obs, action)`` returns ``[2, batch, outputs]``. The arithmetic is that of two separate critics
    (``x W_i^T + b_i`` per layer), so :meth:`from_pair` of two critics gives the same outputs up to float
    rounding, while a GPU launches one kernel per layer instead of two (Adam, Polyak averaging and the
    optimiser's bookkeeping likewise see half as many tensors).
    """

    def __init__(self, obs_dim: int, act_dim: int, *, hidden: tuple[int, ...], activation: Activation,
                 outputs: int = 1):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        sizes = (obs_dim + act_dim, *hidden, outputs)
        self.weights = nn.ParameterList(nn.Parameter(torch.zeros(2, a, b)) for a, b in zip(sizes[:-1], sizes[1:],
                                                                                             strict=True))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(2, 1, b)) for b in sizes[1:])
        self.activation = _ACTIVATIONS[activation]()

    @classmethod
    def from_pair(cls, first: QNetwork, second: QNetwork, *, activation: Activation) -> TwinQNetwork:
        """The twin whose members are copies of ``first`` and ``second`` (both built with ``activation``; same
        architecture, dtype and device)."""
        linears = [[layer for layer in critic.net if isinstance(layer, nn.Linear)] for critic in (first, second)]
        sizes = [layer.in_features for layer in linears[0]] + [linears[0][-1].out_features]
        twin = cls(sizes[0], 0, hidden=tuple(sizes[1:-1]), activation=activation, outputs=sizes[-1])
        reference = linears[0][0].weight
        twin.to(device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            for index, (weight, bias) in enumerate(zip(twin.weights, twin.biases, strict=True)):
                for member in (0, 1):
                    weight[member].copy_(linears[member][index].weight.T)
                    bias[member, 0].copy_(linears[member][index].bias)
        return twin

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        features = torch.cat([obs, action], dim=-1)
        if features.dim() != 2:
            raise ValueError(f"obs, action: expected [batch, dim] tensors, got {tuple(features.shape)}")
        x = features.expand(2, *features.shape)
        last = len(self.weights) - 1
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(bias, x, weight)  # both members in one batched matmul
            if index < last:
                x = self.activation(x)
        return x


class ValueNetwork(nn.Module):
    """``V(s)``."""

    def __init__(self, obs_dim: int, *, hidden: tuple[int, ...], activation: Activation):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden=hidden, activation=activation)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)
