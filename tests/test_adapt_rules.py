"""Cluster Entropy, the Centaur update and TENT against hand-computable cases (issue 15's unit tests)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from safetybed.control.planner import (
    CentaurAdapter,
    TentAdapter,
    cluster_entropy,
    direction_clusters,
    full_entropy,
)

K = 40
ENDPOINTS_M = torch.linspace(-4.0, 4.0, K, dtype=torch.float64)  # lateral endpoints of a toy vocabulary [m]
CLUSTER_IDS = direction_clusters(ENDPOINTS_M)


def test_direction_clusters_bin_the_lateral_endpoint():
    ids = direction_clusters(torch.tensor([-4.0, -2.5, -1.0, 0.0, 0.75, 1.0, 3.0]))
    assert ids.tolist() == [0, 1, 1, 2, 3, 3, 4]  # an edge belongs to the cluster on its right
    with pytest.raises(ValueError, match="thresholds_m"):
        direction_clusters(ENDPOINTS_M, thresholds_m=(1.0, 0.0, 2.0, 3.0))


def test_entropy_is_maximal_for_equal_cluster_scores_and_zero_for_one_hot():
    equal = torch.zeros(K)
    assert float(cluster_entropy(equal, CLUSTER_IDS, m=K)) == pytest.approx(math.log(5), abs=1e-6)
    one_hot = torch.where(CLUSTER_IDS == 2, 1e4, 0.0).float()
    assert float(cluster_entropy(one_hot, CLUSTER_IDS, m=K)) == pytest.approx(0.0, abs=1e-6)
    # Means, not sums: clusters of different sizes with the same mean score weigh the same.
    uneven = torch.tensor([0] * 2 + [1] * 4 + [2] * 10 + [3] * 4 + [4] * 2)  # summing would favour "forward"
    assert float(cluster_entropy(torch.ones(22), uneven, m=22)) == pytest.approx(math.log(5), abs=1e-6)
    # Hand-computed: cluster means (0, 0, 1, 0, 0) -> p = e / (e + 4) for forward.
    p = math.e / (math.e + 4)
    expected = -(p * math.log(p) + 4 * ((1 - p) / 4) * math.log((1 - p) / 4))
    forward = torch.where(CLUSTER_IDS == 2, 1.0, 0.0)
    assert float(cluster_entropy(forward, CLUSTER_IDS, m=K)) == pytest.approx(expected, rel=1e-6)
    # The top-m subset drops clusters with no sampled member: only "forward" and "right" remain -> log 2 when equal.
    two = torch.where((CLUSTER_IDS == 2) | (CLUSTER_IDS == 4), 5.0, 0.0)
    m = int(((CLUSTER_IDS == 2) | (CLUSTER_IDS == 4)).sum())
    assert float(cluster_entropy(two, CLUSTER_IDS, m=m)) == pytest.approx(math.log(2), abs=1e-6)
    assert float(full_entropy(torch.zeros(K))) == pytest.approx(math.log(K), abs=1e-5)


class Scorer(nn.Module):
    """A toy planner: a frozen trunk, a normalisation layer and a scoring head over K trajectories."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.trunk = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, K)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.7)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.norm(self.trunk(obs))))


def _frames(n: int, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(6, generator=generator) for _ in range(n)]


ENTROPY = partial(cluster_entropy, clusters=CLUSTER_IDS, m=20)


@pytest.mark.parametrize("lr", [1e-4, 1e-2])
def test_one_centaur_step_lowers_the_entropy_on_the_frames_it_used(lr):
    model = Scorer().double()
    adapter = CentaurAdapter(model, head="head", entropy_fn=ENTROPY, lr=lr, frames=4)
    frames = [frame.double() for frame in _frames(5)]
    before = [float(adapter.record(frame)) for frame in frames[:4]]
    _, terms = adapter.scores(frames[4])
    assert terms["updated"]
    with torch.no_grad():
        after = [float(ENTROPY(adapter._call(adapter.current, frame))) for frame in frames[:4]]
    assert sum(after) < sum(before)  # one plain gradient step on their mean entropy, first order
    # The step is -lr times the mean of the buffered gradients, on the head only.
    for name in adapter.names:
        manual = torch.stack([grads[name] for grads in adapter._grads]).mean(dim=0)
        torch.testing.assert_close(adapter.current[name], adapter.trained[name] - lr * manual)
    assert set(adapter.names) == {"head.weight", "head.bias"}


def test_non_cumulative_mode_leaves_the_stored_weights_unchanged_and_restarts_from_them():
    model = Scorer()
    stored = {name: value.clone() for name, value in model.state_dict().items()}
    adapter = CentaurAdapter(model, head="head", entropy_fn=ENTROPY, lr=1e-2, frames=2)
    one_step = 0.0
    for index, frame in enumerate(_frames(8)):
        _, terms = adapter.scores(frame)
        assert terms["updated"] == (index > 0)
        if index:  # theta_0 minus ONE step over the buffered frames, never a drift of many steps
            expected = stored["head.weight"] - 1e-2 * torch.stack([g["head.weight"] for g in adapter._grads]).mean(0)
            torch.testing.assert_close(adapter.current["head.weight"], expected)
            one_step = max(one_step, float((adapter.current["head.weight"] - stored["head.weight"]).norm()))
        adapter.record(frame)
    for name, value in model.state_dict().items():
        assert torch.equal(value, stored[name]), name
    cumulative = CentaurAdapter(Scorer(), head="head", entropy_fn=ENTROPY, lr=1e-2, frames=2, cumulative=True)
    drift = []
    for frame in _frames(8):
        cumulative.scores(frame)
        cumulative.record(frame)
        drift.append(float((cumulative.current["head.weight"] - stored["head.weight"]).norm()))
    assert drift[-1] > 3 * one_step  # cumulative steps add up
    cumulative.reset()
    assert torch.equal(cumulative.reference["head.weight"], stored["head.weight"])


def test_selective_update_and_first_frame():
    adapter = CentaurAdapter(Scorer(), head="head", entropy_fn=ENTROPY, entropy_threshold=10.0)
    frame = _frames(1)[0]
    assert adapter.scores(frame)[1]["updated"] is False  # nothing buffered yet
    adapter.record(frame)
    _, terms = adapter.scores(frame)
    assert terms["updated"] is False and terms["entropy_before"] < 10.0  # log 5 < 10: never uncertain enough
    with pytest.raises(ValueError, match="head"):
        CentaurAdapter(Scorer(), head="decoder", entropy_fn=ENTROPY)


def test_tent_adapts_only_normalisation_affine_parameters_and_lowers_full_entropy():
    model = Scorer()
    stored = {name: value.clone() for name, value in model.state_dict().items()}
    adapter = TentAdapter(model, lr=1e-2)
    batch = torch.stack(_frames(16))
    with torch.no_grad():
        before = float(full_entropy(model(batch)).mean())
    for _ in range(5):
        outputs, terms = adapter.scores(batch)
    with torch.no_grad():
        after = float(full_entropy(model(batch)).mean())
    assert after < before
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, stored[name])}
    assert changed == {"norm.weight", "norm.bias"}
    assert all(p.requires_grad for p in model.parameters())  # restored after each step
    adapter.reset()
    assert all(torch.equal(value, stored[name]) for name, value in model.state_dict().items())


def test_vocabulary_covers_the_five_direction_clusters():
    from safetybed.control.planner.vocabulary import Vocabulary

    vocabulary = Vocabulary()
    assert len(vocabulary) == 80 >= 64
    clusters = direction_clusters(torch.as_tensor(vocabulary.lateral_endpoints_m()))
    assert torch.bincount(clusters, minlength=5).tolist() == [16, 16, 16, 16, 16]
    actions = vocabulary.first_actions()
    assert actions.shape == (80, 2) and set(actions[:, 1].tolist()) == {-1.0, 0.0, 1.0}
    assert sorted(set(actions[:, 0].tolist())) == pytest.approx([-1.0, -0.4, 0.0, 0.4])
    plans = vocabulary.action_plans(step_s=1.0)  # 4 steps: a1 for steps 0-1, a2 for 2-3
    late_left = vocabulary.names.index("late-left +0/+2 m/s^2")
    assert plans[late_left, :, 1].tolist() == [0.0, 0.0, 0.0, -1.0]  # requested 3 s in
    assert plans[late_left, :, 0].tolist() == pytest.approx([0.0, 0.0, 0.4, 0.4])
    with pytest.raises(ValueError, match="accelerations_mps2"):
        Vocabulary(accelerations_mps2=(-8.0, 0.0))
    with pytest.raises(ValueError, match="step_s"):
        vocabulary.action_plans(step_s=0.3)


def test_scorer_phi_is_the_hydra_combination_and_centaur_adapts_its_head_only():
    from safetybed.control.planner.scorer import TrajectoryScorer

    torch.manual_seed(0)  # the toy network's initial weights only
    model = TrajectoryScorer(6, K, hidden=16)
    obs = torch.stack(_frames(3))
    terms = model.sub_scores(obs)
    w_im, w_nc, w_dac, w = model.weights
    manual = (w_im * terms["log_imitation"] + w_nc * torch.log(terms["nc"]) + w_dac * torch.log(terms["dac"])
              + w * torch.log(5 * terms["ttc"] + 2 * terms["c"] + 5 * terms["ep"]))
    torch.testing.assert_close(terms["phi"], manual)
    assert model(obs).shape == (3, K)
    adapter = CentaurAdapter(model, head="scorer", entropy_fn=ENTROPY, lr=1e-2)
    adapter.record(obs[0])
    adapter.scores(obs[1])
    assert set(adapter.names) == {"scorer.weight", "scorer.bias"}
    assert not torch.equal(adapter.current["scorer.weight"], model.scorer.weight)


def test_planner_collects_trains_and_acts_reproducibly():
    import numpy as np

    from safetybed.control.planner.controller import PlannerController
    from safetybed.control.planner.training import collect, train_scorer
    from safetybed.control.planner.vocabulary import Vocabulary
    from safetybed.sims.highway import make_highway_env
    from safetybed.sims.highway_obs import observation_bounds
    from safetybed.spec.catalogue import load_scenario_arg

    spec, _ = load_scenario_arg("highway/cut_in")
    spec = spec.model_copy(update={"episode_steps": 3})
    vocabulary = Vocabulary()
    data = collect(spec, vocabulary, seeds=[1, 2, 3], generator=np.random.default_rng(0))
    assert len(data) == 9 and data.labels["pdm"].shape == (9, len(vocabulary))
    low, high = observation_bounds(spec.highway)
    scale = torch.as_tensor(np.maximum(np.abs(low), np.abs(high)), dtype=torch.float32)
    model, history = train_scorer(data, vocabulary, scale=scale, epochs=3, hidden=16)
    again, _ = train_scorer(data, vocabulary, scale=scale, epochs=3, hidden=16)
    assert set(history[-1]) == {"imitation", "nc", "dac", "ttc", "c", "ep", "loss"}
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                 strict=True))
    env = make_highway_env(spec)
    controller = PlannerController(env.observation_space, env.action_space, model=model, vocabulary=vocabulary)
    actions = np.concatenate([controller.act(row[None]) for row in data.obs[:4].numpy()])
    assert actions.shape == (4, 2) and np.all(np.abs(actions) <= 1)
    assert {tuple(row) for row in actions} <= {tuple(row) for row in vocabulary.first_actions()}
