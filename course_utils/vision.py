"""A small vision network grown in seconds, and the procedural images it learns from.

Images are 32 × 32 grayscale, white strokes on black, drawn from **distance fields**: for every
pixel, the distance to the shape's outline; a pixel closer than half the stroke width is lit. Six
classes of outline (circle, arc, line, corner, triangle, square), each at a random position, size
and rotation, with random stroke width, contrast and Gaussian noise.

    images, labels = make_dataset(8192, seed=0)            # [8192, 1, 32, 32], [8192]
    net = train_curve_net(seed=0)                          # ~20 s on one CPU core, with a progress bar
    acts = net.activations(images[:4])                     # {"conv1": [4, 16, 32, 32], ..., "conv3_pre": ...}

Every shape is an angle in radians internally; functions that learners call take degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

SIZE = 32                                                   # images are SIZE × SIZE
CLASSES = ("circle", "arc", "line", "corner", "triangle", "square")
ARC_RADIUS, ARC_SPAN = 8.0, 120.0                           # the arc used to measure units (pixels, degrees)
LINE_LENGTH = ARC_RADIUS * math.radians(ARC_SPAN)           # a line with as much ink as that arc (16.8 px)


# ----------------------------------------------------------------------------- distance fields

def pixel_grid(size: int = SIZE, device: torch.device | str | None = None) -> torch.Tensor:
    """Pixel centres as (x, y) coordinates: [size, size, 2], x to the right, y downwards."""
    coords = torch.arange(size, dtype=torch.float32, device=device) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return torch.stack([x, y], dim=-1)


def segment_distance(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from each point to the segment a–b. points [..., H, W, 2]; a, b [..., 2] -> [..., H, W]."""
    a, b = a[..., None, None, :], b[..., None, None, :]
    ab, ap = b - a, points - a
    t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)).clamp(0, 1)    # projection onto the segment
    return (ap - t[..., None] * ab).norm(dim=-1)


def arc_distance(points: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor, orientation: torch.Tensor,
                 span: torch.Tensor) -> torch.Tensor:
    """Distance from each point to an arc of a circle.

    The arc is the part of the circle (centre [..., 2], radius [...]) within ±span/2 of the direction
    `orientation` (radians, [...]; the direction from the centre to the arc's midpoint, i.e. the way the
    arc bulges). points [..., H, W, 2] -> [..., H, W]. span 2π gives the whole circle.
    """
    rel = points - centre[..., None, None, :]                                  # [..., H, W, 2]
    r = rel.norm(dim=-1)
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    off = torch.remainder(angle - orientation[..., None, None] + math.pi, 2 * math.pi) - math.pi   # in [-π, π)
    on_arc = off.abs() <= span[..., None, None] / 2
    ends = [orientation + s * span / 2 for s in (-1, 1)]
    end_dist = torch.stack([(rel - radius[..., None, None, None] * torch.stack([e.cos(), e.sin()], -1)[..., None, None, :])
                            .norm(dim=-1) for e in ends]).amin(0)
    return torch.where(on_arc, (r - radius[..., None, None]).abs(), end_dist)


def polyline_distance(points: torch.Tensor, vertices: torch.Tensor, closed: bool) -> torch.Tensor:
    """Distance to a chain of segments through vertices [..., k, 2] (closed: back to the first too)."""
    k = vertices.shape[-2]
    pairs = [(i, i + 1) for i in range(k - 1)] + ([(k - 1, 0)] if closed else [])
    return torch.stack([segment_distance(points, vertices[..., i, :], vertices[..., j, :]) for i, j in pairs]).amin(0)


def render(distance: torch.Tensor, width: float | torch.Tensor = 1.5, contrast: float | torch.Tensor = 1.0) -> torch.Tensor:
    """A stroke from a distance field: lit within width/2 of the outline, with a one-pixel soft edge.
    distance [..., H, W] -> image [..., H, W] in [0, contrast]."""
    width, contrast = torch.as_tensor(width), torch.as_tensor(contrast)
    while width.dim() < distance.dim():
        width, contrast = width[..., None], contrast[..., None]
    return contrast * (width / 2 + 0.5 - distance).clamp(0, 1)


# ----------------------------------------------------------------------------- stimuli for measuring units

def _offset(offset: tuple[float, float]) -> torch.Tensor:
    return SIZE / 2 + torch.tensor(offset, dtype=torch.float32)


def arc_images(orientations_deg: torch.Tensor, radius: float = ARC_RADIUS, span_deg: float = ARC_SPAN, width: float = 1.5,
               offset: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Arcs whose midpoint sits at the image centre (moved by `offset` pixels), bulging towards each
    orientation (degrees; 0 is to the right, 90 is down). [n] -> images [n, 1, SIZE, SIZE]."""
    theta = torch.as_tensor(orientations_deg, dtype=torch.float32).deg2rad()
    direction = torch.stack([theta.cos(), theta.sin()], -1)                     # [n, 2]
    full = torch.ones_like(theta)
    d = arc_distance(pixel_grid(), _offset(offset) - radius * direction, radius * full, theta,
                     math.radians(span_deg) * full)
    return render(d, width)[:, None]


def line_images(orientations_deg: torch.Tensor, length: float = LINE_LENGTH, width: float = 1.5,
                offset: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Straight segments centred on the image centre (moved by `offset`), at each orientation (degrees).
    [n] -> [n, 1, SIZE, SIZE]."""
    theta = torch.as_tensor(orientations_deg, dtype=torch.float32).deg2rad()
    half = length / 2 * torch.stack([theta.cos(), theta.sin()], -1)            # [n, 2]
    d = segment_distance(pixel_grid(), _offset(offset) - half, _offset(offset) + half)
    return render(d, width)[:, None]


def corner_images(orientations_deg: torch.Tensor, opening_deg: float = 90.0, arm: float = 9.0, width: float = 1.5,
                  offset: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Corners with their apex at the image centre, pointing towards each orientation (degrees).
    [n] -> [n, 1, SIZE, SIZE]."""
    theta = torch.as_tensor(orientations_deg, dtype=torch.float32).deg2rad() + math.pi   # the arms point back
    apex = _offset(offset).expand(len(theta), 2)
    legs = [theta + s * math.radians(opening_deg) / 2 for s in (-1, 1)]
    verts = torch.stack([apex + arm * torch.stack([legs[0].cos(), legs[0].sin()], -1), apex,
                         apex + arm * torch.stack([legs[1].cos(), legs[1].sin()], -1)], 1)
    return render(polyline_distance(pixel_grid(), verts, closed=False), width)[:, None]


SHIFTS = tuple((dx, dy) for dx in (-1.5, 0.0, 1.5) for dy in (-1.5, 0.0, 1.5))


def arc_sweep(orientations_deg: torch.Tensor, radii: tuple[float, ...] = (ARC_RADIUS,),
              shifts: tuple[tuple[float, float], ...] = SHIFTS, span_deg: float = ARC_SPAN) -> torch.Tensor:
    """Each orientation drawn as several variants (every radius at every shift of up to 1.5 pixels), so
    that a tuning curve averages out where the stroke falls on the pixel grid.
    [n] -> [n, n_variants, 1, SIZE, SIZE]."""
    variants = [arc_images(orientations_deg, r, span_deg, offset=s) for r in radii for s in shifts]
    return torch.stack(variants, 1)


def line_sweep(orientations_deg: torch.Tensor, lengths: tuple[float, ...] = (LINE_LENGTH,),
               shifts: tuple[tuple[float, float], ...] = SHIFTS) -> torch.Tensor:
    """Lines at each orientation, in variants as `arc_sweep`. [n] -> [n, n_variants, 1, SIZE, SIZE]."""
    return torch.stack([line_images(orientations_deg, n, offset=s) for n in lengths for s in shifts], 1)


# ----------------------------------------------------------------------------- the training set

def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _shape_distances(cls: int, n: int, g: torch.Generator) -> torch.Tensor:
    """Distance fields of n random shapes of one class: [n, SIZE, SIZE]."""
    grid = pixel_grid()
    rot = _uniform(n, 0, 2 * math.pi, g)
    if CLASSES[cls] in ("circle", "arc"):
        radius = _uniform(n, 4, 11, g)
        span = torch.full((n,), 2 * math.pi) if CLASSES[cls] == "circle" else _uniform(n, math.radians(60), math.radians(240), g)
        centre = SIZE / 2 + (torch.rand(n, 2, generator=g) - 0.5) * 2 * (SIZE / 2 - radius[:, None] - 2)
        return arc_distance(grid, centre, radius, rot, span)
    if CLASSES[cls] == "line":
        length = _uniform(n, 8, 26, g)
        mid = SIZE / 2 + (torch.rand(n, 2, generator=g) - 0.5) * 12
        half = length[:, None] / 2 * torch.stack([rot.cos(), rot.sin()], -1)
        return segment_distance(grid, mid - half, mid + half)
    if CLASSES[cls] == "corner":
        arm = _uniform(n, 7, 14, g)
        opening = _uniform(n, math.radians(50), math.radians(130), g)
        apex = SIZE / 2 + (torch.rand(n, 2, generator=g) - 0.5) * 10
        legs = [rot - opening / 2, rot + opening / 2]
        verts = torch.stack([apex + arm[:, None] * torch.stack([legs[0].cos(), legs[0].sin()], -1), apex,
                             apex + arm[:, None] * torch.stack([legs[1].cos(), legs[1].sin()], -1)], 1)
        return polyline_distance(grid, verts, closed=False)
    k = 3 if CLASSES[cls] == "triangle" else 4
    radius = _uniform(n, 6, 12, g)
    centre = SIZE / 2 + (torch.rand(n, 2, generator=g) - 0.5) * 2 * (SIZE / 2 - radius[:, None] - 2)
    angles = rot[:, None] + 2 * math.pi * torch.arange(k) / k                    # [n, k]
    verts = centre[:, None] + radius[:, None, None] * torch.stack([angles.cos(), angles.sin()], -1)
    return polyline_distance(grid, verts, closed=True)


def make_dataset(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n noiseless images, classes balanced and shuffled: images [n, 1, SIZE, SIZE], labels [n] (into CLASSES).
    Stroke width 1-2.5 px and contrast 0.5-1; noise is added per batch by `augment`."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.zeros(n, SIZE, SIZE)
    for cls in range(len(CLASSES)):
        idx = (labels == cls).nonzero()[:, 0]
        for chunk in idx.split(1024):
            images[chunk] = render(_shape_distances(cls, len(chunk), g), _uniform(len(chunk), 1.0, 2.5, g),
                                   _uniform(len(chunk), 0.5, 1.0, g))
    return images[:, None], labels


def augment(images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    """Random flips and transposes (the classes are symmetric) and fresh Gaussian noise, σ 0.05-0.2 per image."""
    if torch.rand((), generator=g) < 0.5:
        images = images.transpose(-1, -2)
    flips = [d for d in (-1, -2) if torch.rand((), generator=g) < 0.5]
    if flips:
        images = images.flip(flips)
    sigma = 0.05 + 0.15 * torch.rand(len(images), 1, 1, 1, generator=g)
    return images + sigma * torch.randn(images.shape, generator=g)


# ----------------------------------------------------------------------------- the network

class CurveNet(nn.Module):
    """conv5×5 → ReLU → maxpool → conv5×5 → ReLU → maxpool → conv3×3 → ReLU → global max → linear.

    A unit is a channel; its activation on an image is the maximum of its map over positions (what the
    linear read-out sees), so units are measured wherever the stimulus lies.
    """

    def __init__(self, channels: tuple[int, int, int] = (16, 16, 32), n_classes: int = len(CLASSES)):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(1, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.head = nn.Linear(c3, n_classes)

    def activations(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every layer's maps. images [batch, 1, H, W] -> {"conv1": [batch, c1, H, W] (after ReLU),
        "conv2": [batch, c2, H/2, W/2], "conv3": [batch, c3, H/4, W/4], the same with "_pre" (before
        ReLU), and "logits": [batch, n_classes]}."""
        acts = {}
        x = images
        for i, conv in enumerate((self.conv1, self.conv2, self.conv3), 1):
            if i > 1:
                x = nn.functional.max_pool2d(x, 2)
            acts[f"conv{i}_pre"] = conv(x)
            x = acts[f"conv{i}"] = torch.relu(acts[f"conv{i}_pre"])
        acts["logits"] = self.head(x.amax((-2, -1)))
        return acts

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [batch, 1, H, W] -> logits [batch, n_classes]. The same function as `activations`, but
        pooling before each ReLU (they commute), which makes training a third faster on a CPU."""
        x = torch.relu(nn.functional.max_pool2d(self.conv1(images), 2))
        x = torch.relu(nn.functional.max_pool2d(self.conv2(x), 2))
        return self.head(torch.relu(self.conv3(x).amax((-2, -1))))


@dataclass
class TrainResult:
    net: CurveNet
    test_accuracy: float
    losses: list[float]


def train_curve_net(seed: int = 0, steps: int = 700, n_train: int = 8192, batch_size: int = 128, lr: float = 3e-3,
                    weight_decay: float = 0.05, progress: bool = True) -> TrainResult:
    """Train a CurveNet to tell the six classes apart: AdamW, one-cycle learning rate, fresh noise and
    flips every batch. The seed fixes the initialisation, the training images and their order."""
    torch.manual_seed(seed)
    net = CurveNet().to(memory_format=torch.channels_last)     # channels last: faster convolutions on a CPU
    images, labels = make_dataset(n_train, seed=seed)
    test_images, test_labels = make_dataset(1024, seed=10_000 + seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    losses = []
    with torch.enable_grad():                                   # also where a notebook switched gradients off
        for _ in tqdm(range(steps), desc=f"training CurveNet (seed {seed})", disable=not progress, mininterval=1):
            idx = torch.randint(n_train, (batch_size,), generator=g)
            batch = augment(images[idx], g).contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(net(batch), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    net = net.to(memory_format=torch.contiguous_format).eval().requires_grad_(False)
    with torch.no_grad():
        noisy = augment(test_images, torch.Generator().manual_seed(1))
        accuracy = (net(noisy).argmax(-1) == test_labels).float().mean().item()
    return TrainResult(net, accuracy, losses)
