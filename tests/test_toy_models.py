"""The toy models of superposition: shapes, determinism, and the paper's results in miniature."""

from __future__ import annotations

import math

import pytest
import torch

from course_utils import toy_models as tm


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    yield
    torch.set_num_threads(threads)


def test_shapes_and_best_seed():
    model = tm.train_toy_model(6, 3, [1.0, 0.1], tm.importance_decay(6, 0.9), n_instances=3, steps=20,
                               batch_size=64, progress=False)
    assert model.W.shape == (2, 3, 6) and model.b.shape == (2, 6)
    assert model.losses.shape == (2, 3)
    assert model.importance.shape == (2, 6) and model.feature_probability.tolist() == pytest.approx([1.0, 0.1])


def test_deterministic_given_seed():
    def run(seed):
        return tm.train_toy_model(5, 2, [0.5, 0.1], 1.0, seed=seed, n_instances=2, steps=30, batch_size=64,
                                  progress=False)
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.W, b.W) and torch.equal(a.b, b.b) and torch.equal(a.losses, b.losses)
    assert not torch.equal(a.W, c.W)


def test_per_setting_importance():
    imp = torch.stack([tm.importance_decay(4, 1.0), tm.importance_decay(4, 0.5)])     # (2, 4)
    model = tm.train_toy_model(4, 2, 0.3, imp, n_instances=1, steps=5, batch_size=16, progress=False)
    assert model.W.shape == (2, 2, 4) and torch.equal(model.importance, imp)


@pytest.mark.parametrize("kwargs, match", [
    (dict(feature_probability=0.0), "feature_probability"),
    (dict(feature_probability=1.5), "feature_probability"),
    (dict(feature_probability=0.5, importance=torch.ones(3)), "importance"),
    (dict(feature_probability=[0.5, 0.1, 0.2], importance=torch.ones(2, 5)), "settings"),
])
def test_mistakes_are_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tm.train_toy_model(5, 2, steps=1, progress=False, **kwargs)


def test_linear_model_keeps_the_most_important_features():
    model = tm.train_toy_model(6, 2, 0.1, tm.importance_decay(6, 0.7), n_instances=1, steps=400,
                               batch_size=256, lr=3e-2, forward=tm.linear_forward, progress=False)
    norms = tm.feature_norms(model.W[0])
    assert norms[:2].tolist() == pytest.approx([1, 1], abs=0.05)
    assert norms[2:].max() < 0.05


def test_pentagon_at_high_sparsity():
    model = tm.train_toy_model(5, 2, 0.05, 1.0, n_instances=3, steps=600, batch_size=256, lr=3e-2,
                               progress=False)
    gaps = tm.neighbour_angles(model.W[0])
    assert len(gaps) == 5
    assert (gaps - 72).abs().max() < 6
    assert tm.feature_dimensionality(model.W[0]).tolist() == pytest.approx([0.4] * 5, abs=0.03)


def test_generate_batch_statistics():
    x = tm.generate_batch(50_000, 4, torch.tensor([1.0, 0.2]), torch.Generator().manual_seed(0))
    assert x.shape == (50_000, 2, 4)
    assert (x[:, 0] > 0).float().mean() == pytest.approx(1.0, abs=1e-3)
    assert (x[:, 1] > 0).float().mean() == pytest.approx(0.2, abs=0.01)
    assert x[x > 0].mean() == pytest.approx(0.5, abs=0.01)


def test_importance_loss_by_hand():
    x = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])                 # (B=2, I=1, n=2)
    assert tm.importance_loss(x, torch.zeros_like(x), torch.tensor([[2.0, 0.5]])).tolist() == [1.25]


def test_forwards_agree_with_the_formula():
    g = torch.Generator().manual_seed(0)
    x, W, b = torch.rand(3, 2, 5, generator=g), torch.randn(2, 2, 5, generator=g), torch.randn(2, 5, generator=g)
    for i in range(2):
        pre = x[:, i] @ W[i].T @ W[i] + b[i]                            # (B, n) = (Wᵀ W x + b)ᵀ
        assert torch.allclose(tm.linear_forward(x, W, b)[:, i], pre, atol=1e-6)
        assert torch.allclose(tm.toy_forward(x, W, b)[:, i], pre.relu(), atol=1e-6)
        h = (x[:, i] @ W[i].T).relu()
        assert torch.allclose(tm.hidden_relu_forward(x, W, b)[:, i], (h @ W[i] + b[i]).relu(), atol=1e-6)


def test_measures_on_known_geometries():
    angles = 2 * math.pi * torch.arange(5) / 5
    pentagon = torch.stack([angles.cos(), angles.sin()])                # (2, 5)
    pairs = torch.cat([torch.eye(2), -torch.eye(2), torch.zeros(2, 1)], 1)  # (2, 5)
    assert tm.feature_dimensionality(pentagon).tolist() == pytest.approx([0.4] * 5)
    assert tm.feature_dimensionality(pairs).tolist() == pytest.approx([0.5] * 4 + [0.0])
    assert tm.feature_dimensionality(torch.eye(3)).tolist() == pytest.approx([1.0] * 3)
    assert tm.dimensions_per_feature(pentagon).item() == pytest.approx(0.4)
    assert tm.feature_interference(pairs).tolist() == pytest.approx([1.0] * 4 + [0.0])
    assert tm.neighbour_angles(pentagon).tolist() == pytest.approx([72.0] * 5, abs=1e-4)
    assert tm.neighbour_angles(pairs).tolist() == pytest.approx([90.0] * 4, abs=1e-4)
    assert tm.neighbour_angles(torch.zeros(2, 3)).numel() == 0
