"""Checks for notebook 01 · Features, part A (sections 1.1-1.5): drawing an arc, tuning curves,
classifying units, feature visualisation, reading the circuit and matching units across networks.

The references are the functions of `course_utils.vision` and `course_utils.curve_detectors`: the
same code the notebook's measurements use, so a check accepts exactly what they do. Inputs are built
so that each plausible mistake (a forgotten wrap-around, the post-ReLU map, a missing normalisation)
changes the answer, and a mistake is named where the answer equals it exactly.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from course_utils import curve_detectors as cd
from course_utils import vision
from course_utils.checks import Case, run_check
from course_utils.checks.mistakes import recognise as _recognise
from course_utils.checks.mistakes import rng as _rng


# ----------------------------------------------------------------------------- 1.1 drawing an arc

def check_arc_distance(fn: Callable) -> Callable:
    """Distance to an arc: the circle within ±span/2 of the orientation, else the nearer end."""
    grid = vision.pixel_grid(20)
    g = _rng(0)
    n = 5
    random = (6 + 8 * torch.rand(n, 2, generator=g), 2 + 5 * torch.rand(n, generator=g),
              2 * math.pi * torch.rand(n, generator=g) - math.pi, 0.5 + 5 * torch.rand(n, generator=g))
    t = torch.tensor
    cases = [Case((grid, t([[10.0, 10.0]]), t([6.0]), t([0.0]), t([math.pi / 2])), label="bulging right, 90°"),
             Case((grid, t([[10.0, 10.0]]), t([5.0]), t([3.0]), t([1.5])), label="centred near 180°, across atan2's ±π cut"),
             Case((grid, t([[9.0, 11.0], [12.0, 8.0]]), t([4.0, 7.0]), t([-2.0, 1.0]), t([2 * math.pi, 0.3])),
                  label="a whole circle and a short arc"),
             Case((grid, *random), label="five random arcs")]
    T = vision.arc_distance
    mistakes = {
        "the angle difference must wrap round: take it modulo 2π into [-π, π) before comparing with span/2":
            lambda p, c, r, o, s: _arc_no_wrap(p, c, r, o, s),
        "points beyond the ends are as far as the nearer end, not as far as the rest of the circle":
            lambda p, c, r, o, s: T(p, c, r, o, torch.full_like(s, 2 * math.pi)),
        "the arc covers ±span/2 around the orientation, not ±span": lambda p, c, r, o, s: T(p, c, r, o, 2 * s),
        "the arc bulges the wrong way: `orientation` points from the centre to the arc's midpoint":
            lambda p, c, r, o, s: T(p, c, r, o + math.pi, s)}
    return run_check("arc_distance", fn, T, cases, atol=1e-4, properties=[_recognise(mistakes, T, atol=1e-4)],
                     dims=("arc", "y", "x"))


def _arc_no_wrap(points, centre, radius, orientation, span):
    """The reference without the wrap-around of the angle difference."""
    rel = points - centre[..., None, None, :]
    off = torch.atan2(rel[..., 1], rel[..., 0]) - orientation[..., None, None]
    ring = vision.arc_distance(points, centre, radius, orientation, torch.full_like(span, 2 * math.pi))
    ends = [orientation + k * span / 2 for k in (-1, 1)]
    tips = torch.stack([(rel - radius[..., None, None, None] * torch.stack([e.cos(), e.sin()], -1)[..., None, None, :])
                        .norm(dim=-1) for e in ends]).amin(0)
    return torch.where(off.abs() <= span[..., None, None] / 2, ring, tips)


# ----------------------------------------------------------------------------- 1.2 tuning curves

def check_tuning_curve(fn: Callable, net: vision.CurveNet) -> Callable:
    """Mean over variants of each unit's spatial max (after the ReLU), minus its blank-image response."""
    arcs = vision.arc_sweep(torch.tensor([0.0, 100.0, 200.0]), radii=(8.0,), shifts=vision.SHIFTS[::3])
    lines = vision.line_sweep(torch.tensor([30.0, 120.0]), shifts=vision.SHIFTS[:2])
    T = cd.tuning_curve

    def variant(key="", reduce=cd.centre_max, blank=True, over="mean"):
        def wrong(net, layer, stim):
            n, k = stim.shape[:2]
            maps = net.activations(torch.cat([stim.flatten(0, 1), torch.zeros_like(stim[:1, 0])]))[f"conv{layer}{key}"]
            r = reduce(maps)
            per = r[:-1].unflatten(0, (n, k))
            per = per.mean(1) if over == "mean" else per.amax(1)
            return per - r[-1:] if blank else per
        return wrong

    mistakes = {"subtract each unit's response to a blank image (torch.zeros_like one stimulus)": variant(blank=False),
                "measure each map at the image centre (cd.centre_max), not its mean over positions":
                    variant(reduce=lambda m: m.mean((-2, -1))),
                "measure each map at the image centre (cd.centre_max), not its maximum over all positions":
                    variant(reduce=lambda m: m.amax((-2, -1))),
                "use the maps after the ReLU (acts['convN']), not before it": variant(key="_pre"),
                "average over the variants of a condition (axis 1), not the maximum": variant(over="max")}
    cases = [Case((net, 3, arcs), label="layer 3, three arcs in 3 variants"),
             Case((net, 2, lines), label="layer 2, two lines in 2 variants"),
             Case((net, 3, arcs[:, :1]), label="one variant per condition")]
    return run_check("tuning_curve", fn, T, cases, atol=1e-4, properties=[_recognise(mistakes, T, atol=1e-4)],
                     dims=("condition", "unit"))


def check_classify_units(fn: Callable) -> Callable:
    """Curve, line or other, by the rules of the exercise (thresholds included)."""
    x = torch.arange(0, 360, 10.0).deg2rad()
    bump, double = torch.exp(3 * torch.cos(x - 1.0)), torch.exp(3 * torch.cos(2 * x))
    bump, double = bump / bump.max(), double / double.max()                       # peaks of 1
    y = torch.arange(0, 180, 10.0).deg2rad()
    line_one, line_two = torch.exp(3 * torch.cos(2 * y)), torch.exp(3 * torch.cos(4 * y))
    line_one, line_two = line_one / line_one.max(), line_two / line_two.max()
    units = [(bump, 0.3 * line_one), (double, 0.9 * line_one), (bump, 0.7 * line_one), (0.05 * bump, 0.01 * line_one),
             (bump, 0.5 * line_one), (bump, 0.5001 * line_one), (bump, 0.9 * line_two), (0.1 * bump, 0.02 * line_one),
             (double, 0.2 * line_one), (torch.zeros_like(x), torch.zeros_like(y))]
    arc = torch.stack([a for a, _ in units], 1)
    line = torch.stack([b for _, b in units], 1)
    order = torch.randperm(len(units), generator=_rng(1))
    cases = [Case((arc, line), label="ten hand-made units: a clean curve, a segment, borderline ratios, weak and flat"),
             Case((arc[:, order], line[:, order]), label="the same units shuffled"),
             Case((arc[:, :3] * 4.0, line[:, :3] * 4.0), label="three units, scaled")]
    return run_check("classify_units", fn, cd.classify_units, cases)


# ----------------------------------------------------------------------------- 1.3 feature visualisation

def check_feature_visualisation(fn: Callable, net: vision.CurveNet, layer: int = 3, steps: int = 60) -> Callable:
    """Any images that drive their units at least half as far as the reference's do pass."""
    blank_image = torch.zeros(1, 1, vision.SIZE, vision.SIZE)
    start = net.activations(blank_image)[f"conv{layer}_pre"][0]                # [units, h, w]
    candidates = start[:, start.shape[1] // 2, start.shape[2] // 2].argsort()[:3]   # off at the start
    blank = cd.unit_responses(net, layer, blank_image)[0]
    images = cd.feature_visualisation(net, layer, candidates, steps=steps)
    reached = cd.unit_responses(net, layer, images)[torch.arange(3), candidates] - blank[candidates]
    units = candidates[reached.argsort(descending=True)[:2]].tolist()
    target = dict(zip(candidates.tolist(), reached.tolist()))

    def drives(case: Case, got: Any) -> str | None:
        units = case.args[2]
        want = (len(units), 1, vision.SIZE, vision.SIZE)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != want:
            return f"return one image per unit, a tensor of shape {want}; got " + (
                f"shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else type(got).__name__)
        if got.dtype != torch.float32 or not torch.isfinite(got).all():
            return f"the images should be finite float32 values, got dtype {got.dtype}"
        if got.requires_grad:
            return "return the images detached (images.detach()), so they can be plotted and measured"
        mine = cd.unit_responses(net, layer, got)[torch.arange(len(units)), units] - blank[units]
        for i, u in enumerate(units):
            if mine[i] < 0.5 * target[u]:
                return (f"unit {u} responds {mine[i]:.3g} above a blank image to image {i}, less than half of the "
                        f"{target[u]:.3g} a working visualisation reaches. Maximise each image's own unit's PRE-ReLU "
                        "value at the map's centre (from zero, a ReLU passes no gradient), by gradient ascent")
        return None

    cases = [Case((net, layer, units), {"steps": steps}, label=f"layer {layer}, units {units}"),
             Case((net, layer, units[1:]), {"steps": steps}, label=f"layer {layer}, one unit")]
    return run_check("feature_visualisation", fn, cd.feature_visualisation, cases, properties=[drives],
                     compare_fn=lambda got, expected: None)


# ----------------------------------------------------------------------------- 1.4 circuits, 1.5 universality

def check_tangent_alignment(fn: Callable) -> Callable:
    """Σ w⁺ cos 2(φ − τ) / Σ w⁺, with orientations in degrees and a period of 180°."""
    g = _rng(2)
    w = torch.randn(6, 3, 3, generator=g)
    phi, tau = 180 * torch.rand(6, generator=g), 180 * torch.rand(3, 3, generator=g)
    aligned = torch.zeros(2, 3, 3)
    aligned[0] = 1.0
    aligned[1] = -1.0
    cases = [Case((w, phi, tau), label="random weights of both signs"),
             Case((w.abs(), phi, tau), label="positive weights"),
             Case((aligned, torch.tensor([5.0, 95.0]), torch.full((3, 3), 175.0)),
                  label="orientations 5° and 175° are 10° apart (a line has no direction)"),
             Case((-w.abs(), phi, tau), label="no positive weight: alignment 0"),
             Case((torch.randn(4, 3, 3, generator=g) * 3, 180 * torch.rand(4, generator=g), cd.arc_tangents(60.0)),
                  label="an arc's tangents")]
    T = cd.tangent_alignment
    mistakes = {
        "orientations repeat every 180°: use cos(2(φ − τ)), not cos(φ − τ)":
            lambda w, p, t: _alignment(w, p, t, factor=1),
        "keep only the positive weights (w.clamp(min=0)), in the sum and in the normalisation":
            lambda w, p, t: _alignment(w, p, t, weight=lambda w: w),
        "convert degrees to radians before the cosine": lambda w, p, t: _alignment(w, p, t, radians=False),
        "divide by the sum of the positive weights": lambda w, p, t: _alignment(w, p, t, normalise=False)}
    return run_check("tangent_alignment", fn, T, cases, atol=1e-5, properties=[_recognise(mistakes, T)])


def _alignment(w, phi, tau, factor=2, weight=lambda w: w.clamp_min(0), radians=True, normalise=True):
    diff = phi[:, None, None] - tau[None]
    c = torch.cos(factor * (diff.deg2rad() if radians else diff))
    s = (weight(w) * c).sum()
    return s / weight(w).sum().clamp_min(1e-12) if normalise else s


def check_best_matches(fn: Callable) -> Callable:
    """Pearson correlation over images; for each unit of A the best unit of B (value and index)."""
    g = _rng(3)
    a = torch.rand(40, 5, generator=g)
    b = torch.cat([a[:, [2, 0]] * 3 + 1 + 0.1 * torch.rand(40, 2, generator=g), torch.rand(40, 4, generator=g)], 1)
    shifted = a + torch.tensor([0.0, 50.0, 0.0, 0.0, 0.0])                   # a large offset: correlation ignores it
    flat = torch.cat([b, torch.ones(40, 1)], 1)
    cases = [Case((a, b), label="two units of A copied into B, rescaled"),
             Case((shifted, b), label="a unit of A with a large offset"),
             Case((a, flat), label="a unit of B that never varies correlates 0"),
             Case((torch.rand(30, 3, generator=g), torch.rand(30, 7, generator=g)), label="random")]
    T = cd.best_matches
    mistakes = {"subtract each unit's mean over images before the cosine (that is the correlation)":
                    lambda a, b: _matches(a, b, centre=False),
                "for each unit of A take the best over B's units (max over axis 1 of the [units_a, units_b] matrix)":
                    lambda a, b: _matches(a, b, axis=0)}
    return run_check("best_matches", fn, T, cases, atol=1e-4, properties=[_recognise(mistakes, T, atol=1e-4)])


def _matches(a, b, centre=True, axis=1):
    za, zb = (a - a.mean(0), b - b.mean(0)) if centre else (a, b)
    corr = (za / za.norm(dim=0).clamp_min(1e-8)).T @ (zb / zb.norm(dim=0).clamp_min(1e-8))
    best = corr.max(axis)
    return best.values, best.indices
