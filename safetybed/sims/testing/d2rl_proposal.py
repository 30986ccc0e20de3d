"""The D2RL testing proposal at inference: the trained epsilon policy and NADE's importance component.

Feng et al. (2023), *Nature* 615:620-627 (D2RL); training lives in :mod:`safetybed.evaluate.d2rl`. At every
critical step the policy gives the defensive weight ``epsilon`` in [0.001, 0.999] of the mixture
``q = (1 - epsilon) q~ + epsilon p``, ``q~`` being NADE's criticality-based component. Policies are stored as
safetensors with their shape in the metadata: nothing is unpickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from safetybed.sims.testing.critical import CriticalContext, Decision
from safetybed.sims.testing.nade import NadeProposal

EPS_MIN, EPS_MAX = 0.001, 0.999  # D2RL's range of the defensive weight


def epsilon_from_logit(z: torch.Tensor) -> torch.Tensor:
    return EPS_MIN + (EPS_MAX - EPS_MIN) * torch.sigmoid(z)


class EpsilonPolicy(nn.Module):
    """Gaussian policy over ``logit(epsilon)`` and a value head, both 2 x ``hidden`` tanh MLPs."""

    def __init__(self, feature_dim: int, *, hidden: int = 64, initial_epsilon: float = 0.1,
                 generator: torch.Generator | None = None):
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # construction must not advance the global torch RNG
            self.actor = nn.Sequential(nn.Linear(feature_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                       nn.Linear(hidden, 1))
            self.critic = nn.Sequential(nn.Linear(feature_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                        nn.Tanh(), nn.Linear(hidden, 1))
        if generator is not None:  # re-draw every layer from the caller's generator (PyTorch's default bounds)
            with torch.no_grad():
                for layer in [*self.actor, *self.critic]:
                    if isinstance(layer, nn.Linear):
                        bound = 1.0 / math.sqrt(layer.in_features)
                        nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
                        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
        fraction = (initial_epsilon - EPS_MIN) / (EPS_MAX - EPS_MIN)
        with torch.no_grad():  # start at NADE's epsilon: zero last layer, bias = logit of the initial value
            self.actor[-1].weight.zero_()
            self.actor[-1].bias.fill_(math.log(fraction / (1.0 - fraction)))
        self.log_std = nn.Parameter(torch.tensor([-0.5]))

    def mean_logit(self, features: torch.Tensor) -> torch.Tensor:
        return self.actor(features).squeeze(-1)

    def value(self, features: torch.Tensor) -> torch.Tensor:
        return self.critic(features).squeeze(-1)

    def epsilon(self, features: np.ndarray) -> np.ndarray:
        """Deployed (mean) epsilon for a batch of feature vectors."""
        with torch.no_grad():
            z = self.mean_logit(torch.as_tensor(np.asarray(features, dtype=np.float32)))
            return epsilon_from_logit(z).double().numpy()


@dataclass
class D2RLProposal:
    """NADE's importance component with the D2RL agent's epsilon (see the module docstring)."""

    policy: EpsilonPolicy
    base: NadeProposal = NadeProposal()
    name: str = "d2rl"

    def criticality(self, context: CriticalContext) -> float:
        return self.base.criticality(context)

    def decide(self, context: CriticalContext) -> Decision:
        q_tilde = self.base.decide(context).q_tilde
        return Decision(q_tilde=q_tilde, epsilon=float(self.policy.epsilon(context.features[None, :])[0]))

    def evaluate_batch(self, contexts: list[CriticalContext]):
        """Criticality, q~ and epsilon of many contexts at once (one network call)."""
        n_actions = contexts[0].p.shape[0]
        crit = np.array([self.base.criticality(c) for c in contexts])
        q_tilde = np.zeros((len(contexts), n_actions))
        for i in np.flatnonzero(crit > 0):
            q_tilde[i] = self.base.decide(contexts[i]).q_tilde
        eps = self.policy.epsilon(np.stack([c.features for c in contexts]))
        return crit, q_tilde, np.where(crit > 0, eps, 1.0)


def save_policy(policy: EpsilonPolicy, path, *, base: NadeProposal = NadeProposal()) -> None:
    """Write the epsilon policy as safetensors (weights) with its shape and NADE base in the metadata."""
    from safetensors.torch import save_file

    feature_dim = policy.actor[0].in_features
    hidden = policy.actor[0].out_features
    metadata = {"format": "safetybed-d2rl-1", "feature_dim": str(feature_dim), "hidden": str(hidden),
                "base_epsilon": repr(base.epsilon), "base_surrogate": str(base.surrogate),
                "base_threshold": repr(base.threshold)}
    tensors = {name: tensor.detach().contiguous() for name, tensor in policy.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)


def load_proposal(path) -> D2RLProposal:
    """Read a policy written by :func:`save_policy` (safetensors only: nothing is unpickled)."""
    from pathlib import Path

    from safetensors import safe_open

    from safetybed.errors import InputError

    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: D2RL policy file not found")
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open API)
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise InputError(f"{file}: not a readable safetensors file ({error})") from error
    if metadata.get("format") != "safetybed-d2rl-1":
        raise InputError(f"{file}: metadata.format: expected 'safetybed-d2rl-1', got {metadata.get('format')!r}")
    policy = EpsilonPolicy(int(metadata["feature_dim"]), hidden=int(metadata["hidden"]))
    try:
        policy.load_state_dict(tensors)
    except RuntimeError as error:
        raise InputError(f"{file}: tensors do not match the policy shape ({error})") from error
    base = NadeProposal(epsilon=float(metadata["base_epsilon"]), surrogate=int(metadata["base_surrogate"]),
                        threshold=float(metadata["base_threshold"]))
    return D2RLProposal(policy=policy.eval(), base=base)
