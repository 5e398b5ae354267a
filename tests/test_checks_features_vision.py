"""Each check of notebook 01, part A, passes the reference, skips a stub, and rejects plausible wrong
answers: the conceptual mistakes, an input changed in place, a wrong dtype and a wrong shape."""

from __future__ import annotations

import math

import pytest
import torch

from course_utils import curve_detectors as cd
from course_utils import vision
from tests import check_helpers
from tests.check_helpers import stub
from course_utils.checks import features_vision as checks


def rejects(check, wrong, *args, match: str | None = None) -> None:
    """check_helpers.rejects with the check's extra arguments before `match`: fails in one line."""
    check_helpers.rejects(check, wrong, match, *args)


@pytest.fixture(scope="module")
def net():
    """A briefly trained network: enough structure for the vision checks, in a few seconds."""
    return vision.train_curve_net(seed=0, steps=120, n_train=1024, progress=False).net


def test_stubs_return_the_reference(capsys, net):
    assert checks.check_arc_distance(stub) is vision.arc_distance
    assert checks.check_tuning_curve(stub, net) is cd.tuning_curve
    assert checks.check_classify_units(stub) is cd.classify_units
    assert checks.check_feature_visualisation(stub, net) is cd.feature_visualisation
    assert checks.check_tangent_alignment(stub) is cd.tangent_alignment
    assert checks.check_best_matches(stub) is cd.best_matches
    assert capsys.readouterr().out.count("not done yet") == 6


def test_references_pass(net):
    assert checks.check_arc_distance(vision.arc_distance) is vision.arc_distance
    assert checks.check_tuning_curve(cd.tuning_curve, net) is cd.tuning_curve
    assert checks.check_classify_units(cd.classify_units) is cd.classify_units
    assert checks.check_feature_visualisation(cd.feature_visualisation, net) is cd.feature_visualisation
    assert checks.check_tangent_alignment(cd.tangent_alignment) is cd.tangent_alignment
    assert checks.check_best_matches(cd.best_matches) is cd.best_matches


# ----------------------------------------------------------------------------- arc_distance

def _arc(points, centre, radius, orientation, span, *, wrap=True, half=True, flip=False, ends=True):
    """The reference with one thing changed."""
    rel = points - centre[..., None, None, :]
    r = rel.norm(dim=-1)
    o = orientation + (math.pi if flip else 0.0)
    off = torch.atan2(rel[..., 1], rel[..., 0]) - o[..., None, None]
    if wrap:
        off = torch.remainder(off + math.pi, 2 * math.pi) - math.pi
    limit = span[..., None, None] / (2 if half else 1)
    ring = (r - radius[..., None, None]).abs()
    if not ends:
        return torch.where(off.abs() <= limit, ring, r)                     # distance to the centre past the ends
    tips = torch.stack([(rel - radius[..., None, None, None] * torch.stack([e.cos(), e.sin()], -1)[..., None, None, :])
                        .norm(dim=-1) for e in (o - span / 2, o + span / 2)]).amin(0)
    return torch.where(off.abs() <= limit, ring, tips)


WRONG_ARCS = {
    "no wrap-around": (lambda *a: _arc(*a, wrap=False), "wrap"),
    "±span instead of ±span/2": (lambda *a: _arc(*a, half=False), None),
    "bulging the wrong way": (lambda *a: _arc(*a, flip=True), "wrong way"),
    "ignores the span": (lambda p, c, r, o, s: _arc(p, c, r, o, torch.full_like(s, 2 * math.pi)), "nearer end"),
    "distance to the centre past the ends": (lambda *a: _arc(*a, ends=False), None),
    "orientation taken as degrees": (lambda p, c, r, o, s: _arc(p, c, r, o.rad2deg(), s), None),
    "squared distance": (lambda *a: _arc(*a) ** 2, None),
    "float64": (lambda *a: _arc(*a).double(), "dtype"),
    "no arc axis": (lambda *a: _arc(*a)[0], "shape"),
}


@pytest.mark.parametrize("name", WRONG_ARCS)
def test_arc_distance_rejects(name):
    wrong, match = WRONG_ARCS[name]
    rejects(checks.check_arc_distance, wrong, match=match)


def test_arc_distance_rejects_in_place_edit():
    def edits(points, centre, radius, orientation, span):
        centre -= 0.0
        orientation.remainder_(2 * math.pi)
        return vision.arc_distance(points, centre, radius, orientation, span)
    rejects(checks.check_arc_distance, edits, match="in place")


# ----------------------------------------------------------------------------- tuning_curve

def _tuning(net, layer, stimuli, *, key="", reduce="centre", blank=True, over="mean"):
    n, k = stimuli.shape[:2]
    images = torch.cat([stimuli.flatten(0, 1), torch.zeros_like(stimuli[:1, 0])])
    maps = net.activations(images)[f"conv{layer}{key}"]
    r = {"centre": cd.centre_max, "max": lambda m: m.amax((-2, -1)), "mean": lambda m: m.mean((-2, -1))}[reduce](maps)
    per = r[:-1].unflatten(0, (n, k))
    per = per.mean(1) if over == "mean" else per.amax(1)
    return per - r[-1:] if blank else per


WRONG_TUNING = {
    "no blank subtracted": (dict(blank=False), "blank"),
    "mean over positions": (dict(reduce="mean"), None),
    "max over the whole map": (dict(reduce="max"), None),
    "pre-ReLU maps": (dict(key="_pre"), None),
    "max over variants": (dict(over="max"), "average over the variants"),
}


@pytest.mark.parametrize("name", WRONG_TUNING)
def test_tuning_curve_rejects(net, name):
    kwargs, match = WRONG_TUNING[name]
    rejects(checks.check_tuning_curve, lambda n, l, s: _tuning(n, l, s, **kwargs), net, match=match)


def test_tuning_curve_rejects_transposed_and_float64(net):
    rejects(checks.check_tuning_curve, lambda *a: cd.tuning_curve(*a).T, net, match="shape")
    rejects(checks.check_tuning_curve, lambda *a: cd.tuning_curve(*a).double(), net, match="dtype")


def test_tuning_curve_rejects_changed_weights(net):
    def trains(n, layer, stimuli):
        with torch.no_grad():
            n.conv1.weight.mul_(1.0)
        return cd.tuning_curve(n, layer, stimuli)
    rejects(checks.check_tuning_curve, trains, net, match="weights in place")


# ----------------------------------------------------------------------------- classify_units

def _classify(arc, line, *, strict=False, no_min=False, line_bumps_over_360=False, ratio=0.5):
    best_arc, best_line = arc.amax(0), line.amax(0)
    arc_bumps, _ = cd.bumps(arc, 360 / len(arc))
    line_bumps, _ = cd.bumps(torch.cat([line, line]) if line_bumps_over_360 else line, 180 / len(line))
    responsive = torch.ones_like(best_arc, dtype=torch.bool) if no_min else best_arc >= 0.1 * best_arc.max()
    kinds = []
    for u in range(arc.shape[1]):
        weak = best_line[u] < ratio * best_arc[u] if strict else best_line[u] <= ratio * best_arc[u]
        if responsive[u] and arc_bumps[u] == 1 and weak:
            kinds.append("curve")
        elif responsive[u] and line_bumps[u] == 1 and not weak:
            kinds.append("line")
        else:
            kinds.append("other")
    return kinds


WRONG_CLASSES = {
    "< instead of <= at the ratio": dict(strict=True),
    "weak units not excluded": dict(no_min=True),
    "ratio 0.6": dict(ratio=0.6),
    "line bumps counted over 360°": dict(line_bumps_over_360=True),
}


@pytest.mark.parametrize("name", WRONG_CLASSES)
def test_classify_units_rejects(name):
    rejects(checks.check_classify_units, lambda a, l: _classify(a, l, **WRONG_CLASSES[name]))


def test_classify_units_rejects_other_forms():
    rejects(checks.check_classify_units, lambda a, l: tuple(cd.classify_units(a, l))[:-1], match="length")
    rejects(checks.check_classify_units, lambda a, l: ["curve"] * a.shape[1])
    rejects(checks.check_classify_units, lambda a, l: ["curve" if k == "line" else k for k in cd.classify_units(a, l)])


# ----------------------------------------------------------------------------- feature_visualisation

def _fv(net, layer, units, steps=150, lr=0.05, l2=0.01, jitter=2, seed=0, *, post=False, descend=False, keep_grad=False):
    units = torch.as_tensor(units).long()
    images = torch.zeros(len(units), 1, 32, 32).requires_grad_(True)
    opt = torch.optim.Adam([images], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            maps = net.activations(images * cd.soft_window(layer))[f"conv{layer}" + ("" if post else "_pre")]
            own = maps[torch.arange(len(units)), units, maps.shape[-2] // 2, maps.shape[-1] // 2].sum()
            loss = own if descend else -own
            opt.zero_grad()
            loss.backward()
            opt.step()
    out = images * cd.soft_window(layer)
    return out if keep_grad else out.detach()


WRONG_FVS = {
    "post-ReLU objective": (dict(post=True), "PRE-ReLU"),
    "gradient descent": (dict(descend=True), "PRE-ReLU"),
    "image not detached": (dict(keep_grad=True), "detached"),
}


@pytest.mark.parametrize("name", WRONG_FVS)
def test_feature_visualisation_rejects(net, name):
    kwargs, match = WRONG_FVS[name]
    rejects(checks.check_feature_visualisation, lambda *a, **k: _fv(*a, **k, **kwargs), net, match=match)


def test_feature_visualisation_accepts_a_plain_working_version(net):
    assert checks.check_feature_visualisation(_fv, net) is _fv


def test_feature_visualisation_rejects_shapes_and_dtypes(net):
    rejects(checks.check_feature_visualisation, lambda *a, **k: cd.feature_visualisation(*a, **k)[:, 0], net,
            match="shape")
    rejects(checks.check_feature_visualisation, lambda *a, **k: cd.feature_visualisation(*a, **k).double(), net,
            match="float32")
    rejects(checks.check_feature_visualisation, lambda *a, **k: cd.feature_visualisation(*a, **k)[:1], net,
            match="one image per unit")


# ----------------------------------------------------------------------------- tangent_alignment, best_matches

def _align(w, phi, tau, *, factor=2, positive=True, radians=True, normalise=True, absolute=False):
    diff = phi[:, None, None] - tau[None]
    c = torch.cos(factor * (diff.deg2rad() if radians else diff))
    weight = w.abs() if absolute else (w.clamp_min(0) if positive else w)
    s = (weight * c).sum()
    return s / weight.sum().clamp_min(1e-12) if normalise else s


WRONG_ALIGN = {
    "no angle doubling": (dict(factor=1), "180°"),
    "all weights": (dict(positive=False), "positive"),
    "|w|": (dict(absolute=True), None),
    "degrees in cos": (dict(radians=False), "radians"),
    "not normalised": (dict(normalise=False), "divide"),
}


@pytest.mark.parametrize("name", WRONG_ALIGN)
def test_tangent_alignment_rejects(name):
    kwargs, match = WRONG_ALIGN[name]
    rejects(checks.check_tangent_alignment, lambda *a: _align(*a, **kwargs), match=match)


def test_tangent_alignment_rejects_in_place_and_dtype():
    def clamps(w, phi, tau):
        w.clamp_(min=0)
        return cd.tangent_alignment(w, phi, tau)
    rejects(checks.check_tangent_alignment, clamps, match="in place")
    rejects(checks.check_tangent_alignment, lambda *a: cd.tangent_alignment(*a).double(), match="dtype")


WRONG_MATCHES = {
    "cosine, not correlation": (lambda a, b: checks._matches(a, b, centre=False), "mean"),
    "best over A's units": (lambda a, b: checks._matches(a, b, axis=0), "axis 1"),
    "values only": (lambda a, b: cd.best_matches(a, b)[0], None),
    "absolute correlation": (lambda a, b: _abs_matches(a, b), None),
    "covariance": (lambda a, b: _cov_matches(a, b), None),
    "index off by one": (lambda a, b: (cd.best_matches(a, b)[0], cd.best_matches(a, b)[1] + 1), None),
}


def _abs_matches(a, b):
    za, zb = a - a.mean(0), b - b.mean(0)
    corr = ((za / za.norm(dim=0).clamp_min(1e-8)).T @ (zb / zb.norm(dim=0).clamp_min(1e-8))).abs()
    best = corr.max(1)
    return best.values, best.indices


def _cov_matches(a, b):
    best = ((a - a.mean(0)).T @ (b - b.mean(0)) / len(a)).max(1)
    return best.values, best.indices


@pytest.mark.parametrize("name", WRONG_MATCHES)
def test_best_matches_rejects(name):
    wrong, match = WRONG_MATCHES[name]
    rejects(checks.check_best_matches, wrong, match=match)


def test_best_matches_rejects_in_place_centring():
    def centres(a, b):
        a -= a.mean(0)
        return cd.best_matches(a, b)
    rejects(checks.check_best_matches, centres, match="in place")
