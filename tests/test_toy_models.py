"""The toy models of superposition: shapes, determinism, and the paper's results in miniature."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from course_utils import toy_computation as tc
from course_utils import toy_models as tm
from course_utils.errors import CourseError


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


# ----------------------------------------------------------------------------- correlated features

@pytest.mark.parametrize("mode", ["correlated", "anticorrelated"])
def test_correlated_batch_statistics(mode):
    p = torch.tensor([0.3, 0.1])
    x = tm.correlated_batch(40_000, 4, p, torch.Generator().manual_seed(0), mode=mode)
    on = x != 0
    assert x.shape == (40_000, 2, 4) and x.dtype == torch.float32
    assert torch.allclose(on.float().mean(0), p[:, None].expand(2, 4), atol=0.01)        # every marginal is p
    both = (on[..., 0::2] & on[..., 1::2]).float().mean(0)
    expected = p[:, None].expand(2, 2) if mode == "correlated" else torch.zeros(2, 2)
    assert torch.allclose(both, expected, atol=0.01)
    pair_on = on[..., 0::2] | on[..., 1::2]
    assert torch.allclose((pair_on[..., 0] & pair_on[..., 1]).float().mean(0),                  # pairs independent
                          pair_on[..., 0].float().mean(0) * pair_on[..., 1].float().mean(0), atol=0.01)


@pytest.mark.parametrize("kwargs", [dict(n_features=3), dict(mode="mixed"), dict(p=0.6, mode="anticorrelated")])
def test_correlated_batch_explains_bad_settings(kwargs):
    args = dict(n_features=4, p=0.2, mode="correlated") | kwargs
    with pytest.raises(CourseError):
        tm.correlated_batch(10, args["n_features"], torch.tensor([args["p"]]), mode=args["mode"])


def test_anticorrelated_pairs_become_antipodal():
    model = tm.train_toy_model(4, 2, 0.1, 1.0, n_instances=2, steps=500, batch_size=256, lr=2e-2, progress=False,
                               generate=partial(tm.correlated_batch, mode="anticorrelated"))
    W = model.W[0] / model.W[0].norm(dim=0)
    assert (W[:, 0] @ W[:, 1]).item() == pytest.approx(-1, abs=0.05)
    assert (W[:, 2] @ W[:, 3]).item() == pytest.approx(-1, abs=0.05)


# ----------------------------------------------------------------------------- the hidden basis

def test_random_rotation_is_orthogonal_and_uniform():
    g = torch.Generator().manual_seed(0)
    R = tm.random_rotation(5, g)
    assert torch.allclose(R @ R.T, torch.eye(5), atol=1e-5)
    firsts = torch.stack([tm.random_rotation(3, g)[0, 0] for _ in range(2000)])
    assert abs(firsts.mean()) < 0.05      # without the sign fix, QR's Q[0, 0] leans to one sign


def test_rotating_the_hidden_space_matters_only_with_a_hidden_relu():
    g = torch.Generator().manual_seed(1)
    x, W, b = torch.rand(64, 2, 6, generator=g), torch.randn(2, 3, 6, generator=g), torch.randn(2, 6, generator=g)
    R, imp = tm.random_rotation(3, g), torch.ones(6)
    for forward in (tm.toy_forward, tm.linear_forward):
        plain = tm.importance_loss(x, forward(x, W, b), imp)
        assert torch.allclose(tm.rotated_loss(forward, W, b, R, x, imp), plain, atol=1e-5)
    plain = tm.importance_loss(x, tm.hidden_relu_forward(x, W, b), imp)
    assert not torch.allclose(tm.rotated_loss(tm.hidden_relu_forward, W, b, R, x, imp), plain, atol=1e-3)


# ----------------------------------------------------------------------------- computing |x|

def test_abs_weights_compute_abs_exactly():
    W1, W2, b = tc.abs_weights(4, 9, 2)
    x = 2 * torch.rand(100, 2, 4, generator=torch.Generator().manual_seed(0)) - 1
    assert W1.shape == (2, 9, 4) and W2.shape == (2, 4, 9) and b.shape == (2, 4)
    assert torch.allclose(tc.abs_forward(x, W1, W2, b), x.abs(), atol=1e-6)
    assert tc.neurons_per_feature(W1, W2).tolist() == [[[1, 1]] * 4] * 2


def test_abs_forward_agrees_with_the_formula():
    g = torch.Generator().manual_seed(2)
    x, W1, W2, b = (torch.randn(5, 2, 3, generator=g), torch.randn(2, 4, 3, generator=g),
                    torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, generator=g))
    for i in range(2):
        expected = ((x[:, i] @ W1[i].T).relu() @ W2[i].T + b[i]).relu()
        assert torch.allclose(tc.abs_forward(x, W1, W2, b)[:, i], expected, atol=1e-6)


def test_signed_batch_statistics():
    x = tc.signed_batch(40_000, 3, torch.tensor([1.0, 0.2]), torch.Generator().manual_seed(0))
    assert x.shape == (40_000, 2, 3) and x.min() >= -1 and x.max() <= 1
    assert (x[:, 1] != 0).float().mean() == pytest.approx(0.2, abs=0.01)
    assert x[x != 0].mean() == pytest.approx(0.0, abs=0.02)


def test_train_abs_model_learns_the_two_neuron_construction_when_dense():
    model = tc.train_abs_model(2, 4, 1.0, 1.0, n_instances=2, steps=600, batch_size=256, lr=2e-2, progress=False)
    again = tc.train_abs_model(2, 4, 1.0, 1.0, n_instances=2, steps=600, batch_size=256, lr=2e-2, progress=False)
    assert torch.equal(model.W1, again.W1)                                      # deterministic
    assert model.W1.shape == (1, 4, 2) and model.W2.shape == (1, 2, 4) and model.losses.shape == (1, 2)
    assert model.losses.min() < 1e-3
    assert tc.neurons_per_feature(model.W1[0], model.W2[0]).tolist() == [[1, 1], [1, 1]]
