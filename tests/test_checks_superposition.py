"""Each check of notebook 05 passes the reference, skips a stub, and rejects plausible wrong answers."""

from __future__ import annotations

import math
import re

import pytest
import torch

from course_utils import toy_computation as tc
from course_utils import toy_models as tm
from course_utils.checks import CheckFailed
from course_utils.checks import superposition as checks
from tests.check_helpers import ODD_RETURNS, float64, rejects, stub


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


def _gaps(W, threshold=0.5, *, degrees=True, wrap=True, filter_=True, sort_angles=True, atan2=True, final_sort=True):
    keep = W.norm(dim=0) > threshold if filter_ else torch.ones(W.shape[1], dtype=torch.bool)
    x, y = W[0, keep], W[1, keep]
    angles = torch.atan2(y, x) if atan2 else torch.atan(y / x)
    angles = angles.sort().values if sort_angles else angles
    gaps = torch.diff(angles, append=angles[:1] + 2 * math.pi) if wrap else torch.diff(angles)
    gaps = gaps.rad2deg() if degrees else gaps
    return gaps.sort().values if final_sort else gaps


WRONG_GAPS = {
    "radians": dict(degrees=False),
    "no wrap-around": dict(wrap=False),
    "no threshold": dict(filter_=False),
    "in feature order, not angle order": dict(sort_angles=False),
    "atan instead of atan2": dict(atan2=False),
}


def test_neighbour_angles_accepts_reference():
    assert checks.check_neighbour_angles(tm.neighbour_angles) is tm.neighbour_angles


def test_neighbour_angles_does_not_sort_for_the_learner():
    """The exercise asks for the gaps sorted; the check must not sort them itself."""
    for unsorted in (lambda W, threshold=0.5: tm.neighbour_angles(W, threshold).flip(0),
                     lambda W, threshold=0.5: _gaps(W, threshold, final_sort=False)):
        rejects(checks.check_neighbour_angles, unsorted, "sorted from smallest to largest")


@pytest.mark.parametrize("norm, match", [
    (lambda W: (W ** 2).sum(0), r"norms 0.6, 1, 0.45"),             # squared norm against the threshold
    (lambda W: W.abs().sum(0), r"norms 0.6, 1, 0.45"),              # L1 norm
    (lambda W: W.abs().amax(0), r"norms 0.6, 1, 0.45"),             # largest coordinate
])
def test_neighbour_angles_separates_near_threshold_norms(norm, match):
    def wrong(W, threshold=0.5):
        keep = norm(W) > threshold
        angles = torch.atan2(W[1, keep], W[0, keep]).rad2deg().sort().values
        return torch.diff(angles, append=angles[:1] + 360).sort().values
    message = rejects(checks.check_neighbour_angles, wrong, "expected 4 gaps")
    assert re.search(match, message)


@pytest.mark.parametrize("name", WRONG_GAPS)
def test_neighbour_angles_rejects(name):
    rejects(checks.check_neighbour_angles, lambda W, threshold=0.5: _gaps(W, threshold, **WRONG_GAPS[name]))


def test_neighbour_angles_rejects_ignored_threshold():
    rejects(checks.check_neighbour_angles, lambda W, threshold=0.5: tm.neighbour_angles(W))


# ----------------------------------------------------------------------------- every check, every kind of answer

ALL = {
    "generate_batch": (checks.check_generate_batch, tm.generate_batch),
    "toy_forward": (checks.check_toy_forward, tm.toy_forward),
    "importance_loss": (checks.check_importance_loss, tm.importance_loss),
    "feature_interference": (checks.check_feature_interference, tm.feature_interference),
    "neighbour_angles": (checks.check_neighbour_angles, tm.neighbour_angles),
    "feature_dimensionality": (checks.check_feature_dimensionality, tm.feature_dimensionality),
    "correlated_batch": (checks.check_correlated_batch, tm.correlated_batch),
    "hidden_relu_forward": (checks.check_hidden_relu_forward, tm.hidden_relu_forward),
    "abs_weights": (checks.check_abs_weights, tc.abs_weights),
}


@pytest.mark.parametrize("name", ALL)
def test_every_check_accepts_its_reference_and_skips_a_stub(name, capsys):
    check, reference = ALL[name]
    assert check(reference) is reference and check(stub) is reference
    out = capsys.readouterr().out
    assert "cases pass" in out and "not done yet" in out


@pytest.mark.parametrize("kind", ODD_RETURNS)
@pytest.mark.parametrize("name", ALL)
def test_any_return_type_fails_in_one_line(name, kind):
    rejects(ALL[name][0], ODD_RETURNS[kind])


@pytest.mark.parametrize("name", ["generate_batch", "toy_forward", "importance_loss", "feature_interference",
                                  "neighbour_angles", "feature_dimensionality", "correlated_batch",
                                  "hidden_relu_forward"])
def test_float64_is_named(name):
    check, reference = ALL[name]
    rejects(check, float64(reference), "float64")


def through_numpy(fn):
    """The right values, computed outside autograd: training would fail two cells later."""
    def wrong(*args, **kwargs):
        return torch.from_numpy(fn(*args, **kwargs).detach().numpy().copy())
    return wrong


@pytest.mark.parametrize("name", ["toy_forward", "importance_loss", "hidden_relu_forward"])
def test_no_gradient_is_named(name):
    check, reference = ALL[name]
    rejects(check, through_numpy(reference), "no gradient")
    rejects(check, lambda *a: reference(*a).detach(), "no gradient")


def test_in_place_edits_are_named():
    def clamp_x(x, W, b):
        return tm.toy_forward(x.clamp_(max=0.5), W, b)
    rejects(checks.check_toy_forward, clamp_x, "changed its input `x` in place")

    def normalise(W):
        W /= W.norm(dim=-2, keepdim=True).clamp_min(1e-8)
        return tm.feature_dimensionality(W)
    rejects(checks.check_feature_dimensionality, normalise, "changed its input `W` in place")

    def weigh(x, x_hat, importance):
        importance.clamp_(max=0.5)
        return tm.importance_loss(x, x_hat, importance)
    rejects(checks.check_importance_loss, weigh, "changed its input `importance` in place")


# ----------------------------------------------------------------------------- correlated features

def pairs(batch, n_features, p, generator=None, mode="correlated", *, pair_prob=None, off_second=False,
          same_value=False, one_draw=False):
    """The reference idea with one thing changed, to build wrong answers from."""
    p = torch.as_tensor(p, dtype=torch.float32)
    k, I = n_features // 2, p.numel()
    values = torch.rand(batch, I, n_features, generator=generator)
    if same_value:
        values = values[..., 0::2].repeat_interleave(2, -1)
    draw = torch.rand(batch, I, 1 if one_draw else k, generator=generator).expand(batch, I, k)
    if mode == "correlated":
        active = (draw < p[:, None]).repeat_interleave(2, -1)
    elif off_second:
        a = torch.rand(batch, I, n_features, generator=generator) < p[:, None]
        a[..., 1::2] &= ~a[..., 0::2]
        active = a
    else:
        on = draw < (pair_prob or (lambda p: 2 * p))(p)[:, None]
        first = torch.rand(batch, I, k, generator=generator) < 0.5
        active = torch.stack([on & first, on & ~first], -1).flatten(-2)
    return torch.where(active, values, torch.zeros_like(values))


WRONG_CORRELATED = {
    "independent features": (lambda b, n, p, generator=None, mode="correlated": tm.generate_batch(b, n, p, generator),
                             "without the other"),
    "second switched off when the first is on": (lambda *a, **k: pairs(*a, **k, off_second=True), "p\(1 − p\)"),
    "pair active with probability p, not 2p": (lambda *a, **k: pairs(*a, **k, pair_prob=lambda p: p),
                                               "should be active with probability p"),
    "same value for both": (lambda *a, **k: pairs(*a, **k, same_value=True), "same value"),
    "one draw for every pair": (lambda *a, **k: pairs(*a, **k, one_draw=True), "one random number per pair"),
    "mode ignored": (lambda b, n, p, generator=None, mode="correlated": pairs(b, n, p, generator, "correlated"),
                     "without the other|both features of a pair are on together"),
    "ignores the generator": (lambda b, n, p, generator=None, mode="correlated": tm.correlated_batch(b, n, p, None, mode),
                              "generator"),
    "values in [-1, 1]": (lambda *a, **k: 2 * tm.correlated_batch(*a, **k) - (tm.correlated_batch(*a, **k) != 0).float(),
                          r"\[0, 1\]"),
    "instances and features swapped": (lambda *a, **k: tm.correlated_batch(*a, **k).transpose(1, 2), "shape"),
}


@pytest.mark.parametrize("name", WRONG_CORRELATED)
def test_correlated_batch_rejects(name):
    wrong, match = WRONG_CORRELATED[name]
    rejects(checks.check_correlated_batch, wrong, match)


# ----------------------------------------------------------------------------- computing |x|

def abs_by(W1_rows, W2_from_W1, b=0.0):
    def weights(n, m, k):
        eye = torch.eye(n)
        W1 = torch.zeros(m, n)
        rows = W1_rows(eye)
        W1[:len(rows)] = rows
        W2 = W2_from_W1(W1)
        return W1.expand(k, m, n).clone(), W2.expand(k, n, m).clone(), torch.full((k, n), b)
    return weights


WRONG_ABS = {
    "computes x, not |x|": (abs_by(lambda e: torch.cat([e, -e]), lambda W1: W1.T.clone()), "negative|-0.40"),
    "only the positive part": (abs_by(lambda e: e, lambda W1: W1.T.abs().clone()), "at -0.40"),
    "a bias of -0.1": (abs_by(lambda e: torch.cat([e, -e]), lambda W1: W1.T.abs().clone(), -0.1), "expected"),
    "W2 of the wrong shape": (lambda n, m, k: (tc.abs_weights(n, m, k)[0], tc.abs_weights(n, m, k)[0],
                                               tc.abs_weights(n, m, k)[2]), "W2 should be"),
    "float64": (lambda n, m, k: tuple(t.double() for t in tc.abs_weights(n, m, k)), "float32"),
    "a dict": (lambda n, m, k: dict(zip("W1 W2 b".split(), tc.abs_weights(n, m, k))), "tuple"),
    "ignores n_instances": (lambda n, m, k: tc.abs_weights(n, m, 1), "shape"),
    "halved": (lambda n, m, k: (tc.abs_weights(n, m, k)[0] * 0.5, tc.abs_weights(n, m, k)[1],
                                tc.abs_weights(n, m, k)[2]), "expected \|x\| = 0.7"),
}


@pytest.mark.parametrize("name", WRONG_ABS)
def test_abs_weights_rejects(name):
    wrong, match = WRONG_ABS[name]
    rejects(checks.check_abs_weights, wrong, match)


def test_abs_weights_accepts_other_constructions():
    def shuffled(n, m, k):                      # neurons in another order, spare neurons with junk that never fires
        W1, W2, b = tc.abs_weights(n, m, k)
        perm = torch.randperm(m, generator=torch.Generator().manual_seed(0))
        W1, W2 = W1[:, perm], W2[:, :, perm]
        return W1, W2, b
    checks.check_abs_weights(shuffled)
