"""Probes, their baselines and steering (course_utils.probing), on synthetic data with known answers."""

from __future__ import annotations

import torch

from course_utils import probing


def separable(n: int = 400, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points whose label is the sign of their projection on a hidden direction (plus an offset and scale)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=g)
    X = 3 * torch.randn(n, d, generator=g) + 5
    y = (X - 5) @ direction > 0
    return X, y, direction


def test_split_rows_is_a_partition():
    train, test = probing.split_rows(10, test_fraction=0.3)
    assert len(test) == 3 and sorted(torch.cat([train, test]).tolist()) == list(range(10))


def test_probe_data_is_balanced_and_skips_invalid_positions():
    acts = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    labels = torch.tensor([[True, True, False, False, False], [False, True, False, False, True]])
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[:, 0] = False                                                # the start token
    X, y = probing.probe_data(acts, labels, valid, torch.tensor([0, 1]))
    assert X.shape == (6, 3) and y.tolist() == [True] * 3 + [False] * 3
    assert not any(torch.equal(x, acts[r, 0]) for x in X for r in range(2))


def test_train_probe_finds_a_separable_concept_and_acts_on_raw_activations():
    X, y, direction = separable()
    w, b = probing.train_probe(X, y)
    assert probing.probe_accuracy(X, y, w, b) >= 0.97
    assert torch.cosine_similarity(w, direction, dim=0) > 0.9          # the direction, in the original space


def test_baselines_sit_near_chance_on_shuffled_labels():
    X, y, _ = separable(seed=1)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    assert abs(probing.random_direction_accuracy(X[:300], shuffled[:300], X[300:], shuffled[300:]) - 0.5) < 0.12


def test_direction_accuracy_of_the_true_direction_and_its_opposite():
    X, y, direction = separable(seed=2)
    assert probing.direction_accuracy(X[:300], y[:300], X[300:], y[300:], direction) >= 0.9
    assert probing.direction_accuracy(X[:300], y[:300], X[300:], y[300:], -direction) >= 0.9


def test_best_single_unit_accuracy_finds_the_informative_unit():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(300, 8, generator=g)
    y = torch.rand(300, generator=g) < 0.5
    X[:, 5] -= 4 * y.float()                                           # unit 5 reads the label, negatively
    acc, unit = probing.best_single_unit_accuracy(X[:200], y[:200], X[200:], y[200:])
    assert unit == 5 and acc >= 0.95


def test_steering_hook_adds_the_direction_everywhere():
    act = torch.zeros(2, 3, 4)
    out = probing.steering_hook(torch.tensor([1.0, 0, 0, 0]), 2.5)(act, None)
    assert torch.equal(out[..., 0], torch.full((2, 3), 2.5)) and out[..., 1:].abs().max() == 0


def test_token_rates_shrinks_rare_tokens_towards_the_overall_rate():
    tokens = torch.tensor([[0, 0, 0, 0, 1, 2]])
    mask = torch.tensor([[True, True, True, True, False, False]])
    rates = probing.token_rates(tokens, mask, d_vocab=4, prior=1.0)
    overall = 4 / 6
    assert torch.allclose(rates, torch.tensor([(4 + overall) / 5, overall / 2, overall / 2, overall]))
