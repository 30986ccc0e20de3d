"""Tests for the federated-curriculum suite entry (Vahidian et al. 2023)."""

from __future__ import annotations

import numpy as np
import pytest

from safetybed.suite.optim import fl_curriculum as flc
from safetybed.suite.registry import VERDICTS, DemoResult


def test_pacing_function_hand_values() -> None:
    # linear g(t) = min(1, b + (1 - b) t / (a T)) with T = 10, a = 0.8, b = 0.2: hand-computed
    assert flc.pacing_fraction(0, rounds=10, kind="linear", a=0.8, b=0.2) == pytest.approx(0.2)
    assert flc.pacing_fraction(4, rounds=10, kind="linear", a=0.8, b=0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    assert flc.pacing_fraction(8, rounds=10, kind="linear", a=0.8, b=0.2) == pytest.approx(1.0)
    assert flc.pacing_fraction(9, rounds=10, kind="linear", a=0.8, b=0.2) == pytest.approx(1.0)
    assert flc.pacing_fraction(4, rounds=10, kind="quadratic", a=0.8, b=0.2) == pytest.approx(0.2 + 0.8 * 0.25)
    assert flc.pacing_fraction(3, rounds=10, kind="step", a=0.8, b=0.2, steps=4) == pytest.approx(0.2 + 0.8 * 0.25)
    with pytest.raises(ValueError, match="kind"):
        flc.pacing_fraction(0, rounds=10, kind="cosine")


def test_ordering_and_paced_subset_on_hand_scores() -> None:
    scores = np.array([0.3, 0.1, 0.5, 0.2, 0.4])
    assert flc.order_samples(scores, ordering="curriculum").tolist() == [1, 3, 0, 4, 2]
    assert flc.order_samples(scores, ordering="anti").tolist() == [2, 4, 0, 3, 1]
    assert flc.order_samples(scores, ordering="vanilla").tolist() == [0, 1, 2, 3, 4]
    # ceil(0.5 * 5) = 3 easiest / hardest samples
    assert flc.paced_subset(scores, ordering="curriculum", fraction=0.5).tolist() == [1, 3, 0]
    assert flc.paced_subset(scores, ordering="anti", fraction=0.5).tolist() == [2, 4, 0]
    assert len(flc.paced_subset(scores, ordering="vanilla", fraction=0.2)) == 5
    permutation = flc.order_samples(scores, ordering="random", generator=np.random.default_rng(0))
    assert sorted(permutation.tolist()) == [0, 1, 2, 3, 4]


def test_fedavg_aggregate_is_the_data_weighted_mean() -> None:
    rng = np.random.default_rng(3)
    models = [rng.normal(size=(4, 3)) for _ in range(3)]
    sizes = [10, 30, 60]
    expected = (10 * models[0] + 30 * models[1] + 60 * models[2]) / 100
    np.testing.assert_allclose(flc.fedavg_aggregate(models, sizes), expected, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="client_sizes"):
        flc.fedavg_aggregate(models, [1, 0, 2])


def _hand_softmax_gradient(weights: np.ndarray, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    inputs = np.hstack([features, np.ones((len(features), 1))])
    logits = inputs @ weights
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    one_hot = np.eye(weights.shape[1])[labels]
    return inputs.T @ (probabilities - one_hot) / len(labels)


def test_softmax_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(1)
    weights, features, labels = rng.normal(size=(4, 3)), rng.normal(size=(7, 3)), rng.integers(3, size=7)
    gradient = flc.softmax_loss_and_gradient(weights, features, labels)["gradient"]
    numeric = np.zeros_like(weights)
    for index in np.ndindex(weights.shape):
        step = np.zeros_like(weights)
        step[index] = 1e-6
        numeric[index] = (flc.softmax_loss_and_gradient(weights + step, features, labels)["loss"]
                          - flc.softmax_loss_and_gradient(weights - step, features, labels)["loss"]) / 2e-6
    np.testing.assert_allclose(gradient, numeric, atol=1e-7)


def test_one_client_vanilla_fedavg_equals_centralised_sgd() -> None:
    config = flc.Config(rounds=3, local_epochs=2, batch_size=4, learning_rate=0.3, classes=3, dimensions=2)
    rng = np.random.default_rng(5)
    features, labels = rng.normal(size=(10, 2)), rng.integers(3, size=10)
    federated = flc.federated_curriculum([(features, labels)], ordering="vanilla", config=config,
                                         generator=np.random.default_rng(11))
    # Centralised SGD written out by hand, drawing the same shuffles from the same generator: the rule's
    # generator first draws one permutation per client for the random ordering, then one per epoch.
    generator = np.random.default_rng(11)
    generator.permutation(10)
    weights = np.zeros((3, 3))
    for _ in range(config.rounds * config.local_epochs):
        shuffle = generator.permutation(10)
        for start in range(0, 10, 4):
            batch = shuffle[start:start + 4]
            weights = weights - 0.3 * _hand_softmax_gradient(weights, features[batch], labels[batch])
    np.testing.assert_allclose(federated, weights, rtol=0, atol=1e-12)


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="pacing_b"):
        flc.Config(pacing_b=0.0)
    with pytest.raises(ValueError, match="pacing"):
        flc.Config(pacing="cosine")


def test_fast_demo_direction() -> None:
    result = flc.demo(fast=True, seed=0)
    assert isinstance(result, DemoResult)
    assert result.verdict in VERDICTS
    assert result.seeds == (0, 1, 2)
    for label in ("accuracy, alpha=100", "accuracy, alpha=0.1"):
        assert label in result.measured and label in result.baseline
    # direction: curriculum is not worse than vanilla by more than 1 accuracy point at either alpha
    for alpha in ("100", "0.1"):
        assert result.measured[f"gain curriculum - vanilla, alpha={alpha}"].mean >= -0.01
    # non-IIDness costs accuracy: vanilla at alpha=0.1 is below vanilla at alpha=100
    assert result.baseline["accuracy, alpha=0.1"].mean < result.baseline["accuracy, alpha=100"].mean
