"""Each check of notebook 05 passes the reference, skips a stub, and rejects plausible wrong answers."""

from __future__ import annotations

import math

import pytest
import torch

from course_utils import toy_models as tm
from course_utils.checks import CheckFailed
from course_utils.checks import superposition as checks


def stub(*args, **kwargs):
    raise NotImplementedError


def rejects(check, wrong, match: str | None = None) -> None:
    with pytest.raises(CheckFailed, match=match):
        check(wrong)


# ----------------------------------------------------------------------------- generate_batch

def _batch(batch, n_features, p, generator=None, *, active_p=None, mask_shape=None, values=None, shape=None):
    """The reference with one thing changed, to build wrong answers from."""
    p = torch.as_tensor(p)
    full = (batch, p.numel(), n_features)
    u = torch.rand(full, generator=generator) if values is None else values(full, generator)
    mask_p = p if active_p is None else active_p(p)
    active = torch.rand(mask_shape(full) if mask_shape else full, generator=generator) < mask_p[:, None]
    x = torch.where(active, u, torch.zeros_like(u))
    return x.permute(*shape) if shape else x


WRONG_BATCHES = {
    "sparsity inverted": (dict(active_p=lambda p: 1 - p), "inverted"),
    "one mask per row": (dict(mask_shape=lambda s: (s[0], s[1], 1)), "independently"),
    "values squared": (dict(values=lambda s, g: torch.rand(s, generator=g) ** 2), "uniform"),
    "values all one": (dict(values=lambda s, g: torch.ones(s)), "uniform"),
    "gaussian values": (dict(values=lambda s, g: torch.randn(s, generator=g).abs()), r"\[0, 1\]"),
    "instances and features swapped": (dict(shape=(0, 2, 1)), "shape"),
}


def test_generate_batch_accepts_reference(capsys):
    assert checks.check_generate_batch(tm.generate_batch) is tm.generate_batch
    assert "all 3 cases pass" in capsys.readouterr().out


@pytest.mark.parametrize("name", WRONG_BATCHES)
def test_generate_batch_rejects(name):
    kwargs, match = WRONG_BATCHES[name]
    rejects(checks.check_generate_batch, lambda *a, **k: _batch(*a, **k, **kwargs), match)


def test_generate_batch_rejects_global_rng():
    def ignores_generator(batch, n_features, p, generator=None):
        return tm.generate_batch(batch, n_features, p)
    rejects(checks.check_generate_batch, ignores_generator, "generator")


def test_stub_returns_reference(capsys):
    assert checks.check_generate_batch(stub) is tm.generate_batch
    assert checks.check_toy_forward(stub) is tm.toy_forward
    assert checks.check_feature_dimensionality(stub) is tm.feature_dimensionality
    assert capsys.readouterr().out.count("not done yet") == 3


# ----------------------------------------------------------------------------- forward passes

def hidden(x, W):
    return torch.einsum("bif,ihf->bih", x, W)


def readout(h, W):
    return torch.einsum("bih,ihf->bif", h, W)


WRONG_FORWARDS = {
    "no ReLU": lambda x, W, b: readout(hidden(x, W), W) + b,
    "W Wᵀ instead of Wᵀ W": lambda x, W, b: torch.relu(
        torch.einsum("bih,ifh->bif", torch.einsum("bif,ifh->bih", x, W), W) + b),
    "bias after the ReLU": lambda x, W, b: torch.relu(readout(hidden(x, W), W)) + b,
    "no bias": lambda x, W, b: torch.relu(readout(hidden(x, W), W)),
    "ReLU on the hidden layer too": tm.hidden_relu_forward,
    "first instance's W for all": lambda x, W, b: torch.relu(readout(hidden(x, W[:1].expand_as(W)), W[:1].expand_as(W)) + b),
    "bias subtracted": lambda x, W, b: torch.relu(readout(hidden(x, W), W) - b),
}


def test_toy_forward_accepts_reference():
    assert checks.check_toy_forward(tm.toy_forward) is tm.toy_forward


@pytest.mark.parametrize("name", WRONG_FORWARDS)
def test_toy_forward_rejects(name):
    rejects(checks.check_toy_forward, WRONG_FORWARDS[name])


WRONG_HIDDEN_RELU = {
    "no hidden ReLU": tm.toy_forward,
    "no output ReLU": lambda x, W, b: readout(torch.relu(hidden(x, W)), W) + b,
    "bias in the hidden layer": lambda x, W, b: torch.relu(readout(torch.relu(hidden(x, W)), W)) + b,
    "ReLU only on the hidden layer": lambda x, W, b: readout(torch.relu(hidden(x, W)), W) + torch.relu(b),
    "W Wᵀ instead of Wᵀ W": lambda x, W, b: torch.relu(
        torch.einsum("bih,ifh->bif", torch.relu(torch.einsum("bif,ifh->bih", x, W)), W) + b),
}


def test_hidden_relu_forward_accepts_reference():
    assert checks.check_hidden_relu_forward(tm.hidden_relu_forward) is tm.hidden_relu_forward


@pytest.mark.parametrize("name", WRONG_HIDDEN_RELU)
def test_hidden_relu_forward_rejects(name):
    rejects(checks.check_hidden_relu_forward, WRONG_HIDDEN_RELU[name])


def test_forward_message_says_what_differs():
    with pytest.raises(CheckFailed, match="ReLU after adding b"):
        checks.check_toy_forward(WRONG_FORWARDS["no ReLU"])


# ----------------------------------------------------------------------------- importance_loss

WRONG_LOSSES = {
    "importance not applied": lambda x, y, imp: ((x - y) ** 2).sum(-1).mean(0),
    "importance inside the square": lambda x, y, imp: ((imp * (x - y)) ** 2).sum(-1).mean(0),
    "mean over features": lambda x, y, imp: (imp * (x - y) ** 2).mean(-1).mean(0),
    "sum over the batch": lambda x, y, imp: (imp * (x - y) ** 2).sum(-1).sum(0),
    "one number for all instances": lambda x, y, imp: (imp * (x - y) ** 2).sum(-1).mean(),
    "absolute error": lambda x, y, imp: (imp * (x - y).abs()).sum(-1).mean(0),
    "mean over instances, not batch": lambda x, y, imp: (imp * (x - y) ** 2).sum(-1).mean(1),
    "importance reversed": lambda x, y, imp: (imp.flip(-1) * (x - y) ** 2).sum(-1).mean(0),
}


def test_importance_loss_accepts_reference():
    assert checks.check_importance_loss(tm.importance_loss) is tm.importance_loss


@pytest.mark.parametrize("name", WRONG_LOSSES)
def test_importance_loss_rejects(name):
    rejects(checks.check_importance_loss, WRONG_LOSSES[name])


# ----------------------------------------------------------------------------- geometry

def unit(W):
    return W / W.norm(dim=-2, keepdim=True).clamp_min(1e-8)


def overlaps(W):  # (Ŵ_i · W_j)²: (..., n, n)
    return (unit(W).transpose(-1, -2) @ W) ** 2


WRONG_INTERFERENCE = {
    "not normalised": lambda W: ((W.transpose(-1, -2) @ W) ** 2).sum(-1) - ((W ** 2).sum(-2)) ** 2,
    "j = i included": lambda W: overlaps(W).sum(-1),
    "rows instead of columns": lambda W: (((W / W.norm(dim=-1, keepdim=True)) @ W.transpose(-1, -2)) ** 2).sum(-1) - 1,
    "not squared": lambda W: (unit(W).transpose(-1, -2) @ W).sum(-1) - W.norm(dim=-2),
    "cosines (W_j normalised too)": lambda W: ((unit(W).transpose(-1, -2) @ unit(W)) ** 2).sum(-1) - 1,
    "NaN for a dropped feature": lambda W: (((W / W.norm(dim=-2, keepdim=True)).transpose(-1, -2) @ W) ** 2).sum(-1)
    - (W ** 2).sum(-2),
    "sum over the wrong index": lambda W: overlaps(W).sum(-2) - overlaps(W).diagonal(dim1=-2, dim2=-1),
}


def test_feature_interference_accepts_reference():
    assert checks.check_feature_interference(tm.feature_interference) is tm.feature_interference


@pytest.mark.parametrize("name", WRONG_INTERFERENCE)
def test_feature_interference_rejects(name):
    rejects(checks.check_feature_interference, WRONG_INTERFERENCE[name])


WRONG_DIMENSIONALITY = {
    "not normalised": lambda W: (W ** 2).sum(-2) / ((W.transpose(-1, -2) @ W) ** 2).sum(-1).clamp_min(1e-12),
    "not squared": lambda W: (W ** 2).sum(-2) / (unit(W).transpose(-1, -2) @ W).abs().sum(-1).clamp_min(1e-12),
    "norm not squared": lambda W: W.norm(dim=-2) / overlaps(W).sum(-1).clamp_min(1e-12),
    "rows instead of columns": lambda W: tm.feature_dimensionality(W.transpose(-1, -2)),
    "j = i left out": lambda W: (W ** 2).sum(-2) / tm.feature_interference(W).clamp_min(1e-12),
    "cosines (W_j normalised too)": lambda W: (W ** 2).sum(-2) / ((unit(W).transpose(-1, -2) @ unit(W)) ** 2).sum(-1),
    "NaN for a dropped feature": lambda W: (W ** 2).sum(-2) / (
        ((W / W.norm(dim=-2, keepdim=True)).transpose(-1, -2) @ W) ** 2).sum(-1),
    "reciprocal": lambda W: overlaps(W).sum(-1) / (W ** 2).sum(-2).clamp_min(1e-12),
}


def test_feature_dimensionality_accepts_reference():
    assert checks.check_feature_dimensionality(tm.feature_dimensionality) is tm.feature_dimensionality


@pytest.mark.parametrize("name", WRONG_DIMENSIONALITY)
def test_feature_dimensionality_rejects(name):
    rejects(checks.check_feature_dimensionality, WRONG_DIMENSIONALITY[name])


def _gaps(W, threshold=0.5, *, degrees=True, wrap=True, filter_=True, sort_angles=True, atan2=True):
    keep = W.norm(dim=0) > threshold if filter_ else torch.ones(W.shape[1], dtype=torch.bool)
    x, y = W[0, keep], W[1, keep]
    angles = torch.atan2(y, x) if atan2 else torch.atan(y / x)
    angles = angles.sort().values if sort_angles else angles
    gaps = torch.diff(angles, append=angles[:1] + 2 * math.pi) if wrap else torch.diff(angles)
    gaps = gaps.rad2deg() if degrees else gaps
    return gaps.sort().values


WRONG_GAPS = {
    "radians": dict(degrees=False),
    "no wrap-around": dict(wrap=False),
    "no threshold": dict(filter_=False),
    "in feature order, not angle order": dict(sort_angles=False),
    "atan instead of atan2": dict(atan2=False),
}


def test_neighbour_angles_accepts_reference_in_any_order():
    assert checks.check_neighbour_angles(tm.neighbour_angles) is tm.neighbour_angles
    checks.check_neighbour_angles(lambda W, threshold=0.5: tm.neighbour_angles(W, threshold).flip(0))


@pytest.mark.parametrize("name", WRONG_GAPS)
def test_neighbour_angles_rejects(name):
    rejects(checks.check_neighbour_angles, lambda W, threshold=0.5: _gaps(W, threshold, **WRONG_GAPS[name]))


def test_neighbour_angles_rejects_ignored_threshold():
    rejects(checks.check_neighbour_angles, lambda W, threshold=0.5: tm.neighbour_angles(W))
