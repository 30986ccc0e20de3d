"""Light helpers shared by checkpoints and the deployment runtime (no torch networks, no training code).

Spaces are stored in manifests as JSON (``inf`` bounds as the strings ``"inf"`` / ``"-inf"``), and files
are identified by their sha256.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _bound(values: np.ndarray) -> list[float | str]:
    return [float(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf") for v in np.ravel(values)]


def space_to_json(space: gym.Space) -> dict[str, Any]:
    if isinstance(space, gym.spaces.Box):
        return {"type": "box", "shape": list(space.shape), "low": _bound(space.low), "high": _bound(space.high)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "start": int(space.start)}
    raise TypeError(f"expected a Box or Discrete space, got {space}")


def space_from_json(data: dict[str, Any]) -> gym.Space:
    if data["type"] == "box":
        shape = tuple(data["shape"])
        low = np.array([float(v) for v in data["low"]], dtype=np.float32).reshape(shape)
        high = np.array([float(v) for v in data["high"]], dtype=np.float32).reshape(shape)
        return gym.spaces.Box(low, high, shape=shape, dtype=np.float32)
    if data["type"] == "discrete":
        return gym.spaces.Discrete(int(data["n"]), start=int(data.get("start", 0)))
    raise ValueError(f"space type: expected box|discrete, got {data['type']!r}")
