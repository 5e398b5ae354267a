"""Measuring the units of a `vision.CurveNet`, as *Zoom In* (Olah et al., 2020) measured curve detectors:
tuning curves over synthetic stimuli, a classification of units by their tuning, feature
visualisation, the circuit read from the weights, and matching units across networks.

    arcs = vision.arc_sweep(torch.arange(0, 360, 5.0))        # [72, 9, 1, 32, 32]: 9 shifted copies of each
    arc_tuning = tuning_curve(net, 3, arcs)                     # [72, 32]: response above a blank image
    kinds = classify_units(arc_tuning, tuning_curve(net, 3, vision.line_sweep(torch.arange(0, 180, 5.0))))

A unit is a channel; its response to an image is its value after the ReLU where the stimuli are
drawn, at the image centre: the maximum over the central 2 × 2 positions of its map (a map of even
size has no single centre). Measured over the whole map instead, a unit's response to a stroke in its
receptive field mixes with whatever the rest of the image (or the zero padding at the border) does.
"""

from __future__ import annotations

import math

import torch

from course_utils import vision


def centre_max(maps: torch.Tensor) -> torch.Tensor:
    """The maximum of each map over its central 2 × 2 positions, whose receptive fields are centred
    within 2 pixels of the image centre. maps [..., h, w] -> [...]."""
    h, w = maps.shape[-2:]
    return maps[..., h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1].amax((-2, -1))


def unit_responses(net: vision.CurveNet, layer: int, images: torch.Tensor) -> torch.Tensor:
    """images [n, 1, H, W] -> [n, n_units]: each unit's map at `layer` (1, 2 or 3) after the ReLU, at
    the centre of the image (`centre_max`)."""
    with torch.no_grad():
        return centre_max(net.activations(images)[f"conv{layer}"])


def tuning_curve(net: vision.CurveNet, layer: int, stimuli: torch.Tensor) -> torch.Tensor:
    """stimuli [n_conditions, n_variants, 1, H, W] -> [n_conditions, n_units]: each unit's response,
    averaged over the variants of a condition, minus its response to a blank image."""
    n, k = stimuli.shape[:2]
    responses = unit_responses(net, layer, stimuli.flatten(0, 1)).unflatten(0, (n, k)).mean(1)
    blank = unit_responses(net, layer, torch.zeros_like(stimuli[:1, 0]))        # [1, n_units]
    return responses - blank


def bumps(curves: torch.Tensor, step_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bumps of circular tuning curves [n_conditions, n_units] sampled every `step_deg` degrees.

    A bump is a run of neighbouring conditions at or above half height, min + (max - min) / 2 (the
    curve wraps round). Returns (number of bumps [n_units] long, total width above half height in
    degrees [n_units]). A flat curve has 0 bumps."""
    lifted = curves - curves.amin(0)
    above = (lifted >= lifted.amax(0) / 2) & (lifted.amax(0) > 1e-6)          # [n_conditions, n_units]
    starts = above & ~above.roll(1, dims=0)                                    # a run begins here
    count = starts.sum(0)
    count = torch.where(above.all(0), torch.ones_like(count), count)
    return count, above.sum(0) * step_deg


def classify_units(arc_tuning: torch.Tensor, line_tuning: torch.Tensor, line_ratio: float = 0.5,
                   min_response: float = 0.1) -> list[str]:
    """"curve", "line" or "other" for each unit, from tuning over arc orientations (all round the circle)
    and line orientations (half of it, since a line turned by 180° is the same line).

    arc_tuning [n_arc, n_units], line_tuning [n_line, n_units], both above a blank image.
    * a unit whose best arc response is below `min_response` × the layer's best is "other" (it barely responds);
    * "curve": one bump over arc orientations, and its best line at most `line_ratio` × its best arc;
    * "line": one bump over line orientations, and its best line above `line_ratio` × its best arc;
    * anything else is "other"."""
    best_arc, best_line = arc_tuning.amax(0), line_tuning.amax(0)
    arc_bumps, _ = bumps(arc_tuning, 360 / len(arc_tuning))
    line_bumps, _ = bumps(line_tuning, 180 / len(line_tuning))
    responsive = best_arc >= min_response * best_arc.max()
    kinds = []
    for u in range(arc_tuning.shape[1]):
        weak_on_lines = best_line[u] <= line_ratio * best_arc[u]
        if responsive[u] and arc_bumps[u] == 1 and weak_on_lines:
            kinds.append("curve")
        elif responsive[u] and line_bumps[u] == 1 and not weak_on_lines:
            kinds.append("line")
        else:
            kinds.append("other")
    return kinds


def preferred_orientation(tuning: torch.Tensor, period_deg: float = 360.0) -> torch.Tensor:
    """Orientation at each unit's peak, in degrees. tuning [n_conditions, n_units] over [0, period)."""
    return tuning.argmax(0).float() * period_deg / len(tuning)


# ----------------------------------------------------------------------------- feature visualisation

def receptive_field_centre(layer: int, position: int) -> float:
    """Pixel coordinate of the centre of map position `position` at `layer` (stride 1, 2, 4 px)."""
    stride = 2 ** (layer - 1)
    return stride * position + stride / 2


def soft_window(layer: int, size: int = vision.SIZE, sigma: float | None = None) -> torch.Tensor:
    """A Gaussian window [size, size] on the receptive field of the map's centre position."""
    centre = receptive_field_centre(layer, size // 2 ** (layer - 1) // 2)
    sigma = sigma or {1: 2.0, 2: 4.0, 3: 7.0}[layer]
    grid = vision.pixel_grid(size)
    return torch.exp(-((grid - centre) ** 2).sum(-1) / (2 * sigma ** 2))


def blur(image: torch.Tensor) -> torch.Tensor:
    """A light 3×3 Gaussian blur of images [n, 1, H, W]."""
    k = torch.tensor([1.0, 2.0, 1.0])
    kernel = (k[:, None] * k[None, :] / 16).to(image)[None, None]
    return torch.nn.functional.conv2d(image, kernel, padding=1)


def feature_visualisation(net: vision.CurveNet, layer: int, units: list[int] | torch.Tensor, steps: int = 150,
                          lr: float = 0.05, l2: float = 0.01, jitter: int = 2, seed: int = 0) -> torch.Tensor:
    """Images [len(units), 1, H, W], one per unit, that drive each unit at the centre of its map, by
    gradient ascent on the **pre-ReLU** value (from a zero activation a ReLU passes no gradient).
    Regularised as in Olah et al. (2017): a random shift of up to `jitter` pixels each step, a light
    blur every 4 steps, an L2 penalty, and a soft window on the receptive field; pixels kept in
    [-0.2, 1]. All units are optimised at once, each in its own image of the batch."""
    units = torch.as_tensor(units).long()
    g = torch.Generator().manual_seed(seed)
    window = soft_window(layer)
    images = (0.01 * torch.randn(len(units), 1, vision.SIZE, vision.SIZE, generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([images], lr=lr)
    with torch.enable_grad():
        for step in range(steps):
            dx, dy = torch.randint(-jitter, jitter + 1, (2,), generator=g).tolist()
            shown = (images * window).roll((dy, dx), dims=(-2, -1))
            pre = net.activations(shown)[f"conv{layer}_pre"]                        # [n, units, h, w]
            h, w = pre.shape[-2:]
            own = pre[torch.arange(len(units)), units, h // 2, w // 2]               # [n]: each image's own unit
            objective = own.sum() - l2 * (images ** 2).sum()
            opt.zero_grad()
            (-objective).backward()
            opt.step()
            with torch.no_grad():
                if step % 4 == 0:
                    images.copy_(blur(images))
                images.clamp_(-0.2, 1.0)
    return (images * window).detach()


def image_orientation(images: torch.Tensor, step_deg: float = 5.0, radius: float = vision.ARC_RADIUS) -> torch.Tensor:
    """The arc orientation each image [n, 1, H, W] matches best (degrees), by correlating it with
    arc templates at every orientation and every position. Returns [n]."""
    orientations = torch.arange(0, 360, step_deg)
    templates = vision.arc_images(orientations, radius)[..., 8:25, 8:25]            # [k, 1, 17, 17]
    templates = templates - templates.mean((-2, -1), keepdim=True)
    match = torch.nn.functional.conv2d(images, templates)                       # [n, k, h, w]
    return orientations[match.amax((-2, -1)).argmax(-1)]


def angle_difference(a: torch.Tensor, b: torch.Tensor, period: float = 360.0) -> torch.Tensor:
    """|a - b| on a circle of `period` degrees, in [0, period / 2]."""
    d = torch.remainder(torch.as_tensor(a) - torch.as_tensor(b), period)
    return torch.minimum(d, period - d)


# ----------------------------------------------------------------------------- circuits

def arc_tangents(orientation_deg: float, radius: float = vision.ARC_RADIUS, stride: float = 4.0, kernel: int = 3) -> torch.Tensor:
    """The tangent orientation (degrees in [0, 180)) of an arc bulging towards `orientation_deg`, whose
    midpoint is the kernel's centre, at each kernel position [kernel, kernel] (rows: y, columns: x), the
    positions `stride` pixels apart: the tangent of the circle where it passes nearest each position."""
    theta = math.radians(orientation_deg)
    centre = -radius * torch.tensor([math.cos(theta), math.sin(theta)])       # the circle's centre, (x, y)
    offsets = (torch.arange(kernel) - kernel // 2) * stride
    y, x = torch.meshgrid(offsets.float(), offsets.float(), indexing="ij")
    rel = torch.stack([x, y], -1) - centre                                     # [k, k, 2]
    normal = torch.atan2(rel[..., 1], rel[..., 0]).rad2deg()
    return torch.remainder(normal + 90, 180)


def tangent_alignment(weights: torch.Tensor, channel_orientations: torch.Tensor, tangents: torch.Tensor) -> torch.Tensor:
    """How well a unit's positive weights follow the tangent: Σ w⁺ cos 2(φ_c − τ_pos) / Σ w⁺.

    weights [in_channels, k, k] (one unit's kernel), channel_orientations [in_channels] (degrees, each
    input channel's preferred line), tangents [k, k] (degrees). Returns a scalar in [-1, 1]: 1 when all
    positive weight sits on channels tuned to the tangent, 0 for no relation, -1 for perpendicular."""
    positive = weights.clamp_min(0)
    diff = (channel_orientations[:, None, None] - tangents[None]).deg2rad()
    return (positive * torch.cos(2 * diff)).sum() / positive.sum().clamp_min(1e-12)


def shuffled_alignments(weights: torch.Tensor, channel_orientations: torch.Tensor, tangents: torch.Tensor,
                        n: int = 1000, seed: int = 0) -> torch.Tensor:
    """The alignment with the channels' orientations shuffled, n times: the null distribution [n]."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([tangent_alignment(weights, channel_orientations[torch.randperm(len(channel_orientations),
                                                                                         generator=g)], tangents)
                        for _ in range(n)])


# ----------------------------------------------------------------------------- universality

def probe_images() -> torch.Tensor:
    """A fixed set of centred stimuli for comparing units across networks [n, 1, H, W]: arcs of three
    radii and two spans at 36 orientations, lines of two lengths at 18, corners at 36, and rings."""
    orientations = torch.arange(0, 360, 10.0)
    arcs = [vision.arc_images(orientations, r, span) for r in (5.0, 8.0, 11.0) for span in (90.0, 180.0)]
    lines = [vision.line_images(orientations[:18], length) for length in (8.0, 16.0)]
    rings = [vision.arc_images(torch.zeros(1), r, 360.0) for r in torch.arange(3.0, 12.0).tolist()]
    return torch.cat(arcs + lines + [vision.corner_images(orientations)] + rings)


def correlations(responses_a: torch.Tensor, responses_b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation over images of every unit of A with every unit of B.
    responses_a [n_images, units_a], responses_b [n_images, units_b] -> [units_a, units_b]; a unit
    that never varies correlates 0 with everything."""
    za = responses_a - responses_a.mean(0)
    zb = responses_b - responses_b.mean(0)
    return (za / za.norm(dim=0).clamp_min(1e-8)).T @ (zb / zb.norm(dim=0).clamp_min(1e-8))


def best_matches(responses_a: torch.Tensor, responses_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each unit of network A, the unit of network B whose responses correlate best with it.
    responses_a [n_images, units_a], responses_b [n_images, units_b] -> (correlation [units_a], index [units_a])."""
    best = correlations(responses_a, responses_b).max(1)
    return best.values, best.indices
