"""The observation normaliser's std floor (issue 14, item 1): noise on a feature constant in training stays bounded."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from safetybed.control.checkpoint import MANIFEST, load_checkpoint, save_checkpoint
from safetybed.control.networks import ObsNormalizer, Policy, PolicyArch


def _trained(floor: float) -> ObsNormalizer:
    """Statistics of a lane-width-like constant feature (4 m) next to a unit-variance one."""
    norm = ObsNormalizer(2, std_floor=floor)
    generator = torch.Generator().manual_seed(0)
    data = torch.stack([torch.full((5000,), 4.0), torch.randn(5000, generator=generator)], dim=1)
    norm.update(data)
    return norm.eval()


def test_sigma_noise_on_a_constant_feature_stays_bounded_with_the_floor():
    sigma = 0.1
    generator = torch.Generator().manual_seed(1)
    clean = torch.tensor([[4.0, 0.5]]).repeat(2000, 1)
    noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
    without, with_floor = _trained(0.0)(noisy), _trained(sigma)(noisy)
    # no floor: std ~ 0 on the constant feature, so the noise drives nearly every z-score to the clip (10)
    assert float((without[:, 0].abs() >= 9.99).float().mean()) > 0.95
    # floor = sigma: the z-score is the noise in units of sigma (|z| < 5 for 2,000 Gaussian draws)
    assert float(with_floor[:, 0].abs().max()) < 5.0
    # the unit-variance feature is normalised the same either way (its std is far above the floor)
    assert torch.equal(without[:, 1], with_floor[:, 1])


def test_no_floor_is_the_previous_formula_bit_for_bit():
    norm = _trained(0.0)
    obs = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    expected = ((obs - norm.mean) / torch.sqrt(norm.var + 1e-8)).clamp(-10.0, 10.0)
    assert torch.equal(norm(obs), expected)
    with pytest.raises(ValueError, match="std_floor"):
        ObsNormalizer(2, std_floor=-1.0)


def test_checkpoint_keeps_the_floor_and_old_manifests_load_without_one(tmp_path):
    arch = PolicyArch(kind="gaussian", obs_dim=2, act_dim=1, action_low=(-1.0,), action_high=(1.0,),
                      hidden=(8,), activation="tanh")
    spaces = {"observation_space": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
              "action_space": gym.spaces.Box(-1.0, 1.0, (1,), np.float32)}
    folder = save_checkpoint(tmp_path / "ckpt", policy=Policy(arch), obs_norm=_trained(0.25), algorithm="test",
                             config={}, **spaces)
    assert load_checkpoint(folder).obs_norm.std_floor == 0.25
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["normalizer"]["std_floor"]  # a checkpoint written before the floor existed
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert load_checkpoint(folder).obs_norm.std_floor == 0.0
