"""The procedural images are what they claim to be, the network's two forward paths agree, training
learns, and the measurements of curve_detectors give known answers on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from course_utils import curve_detectors as cd
from course_utils import vision


def test_segment_distance_known_points():
    points = torch.tensor([[[[0.0, 0.0], [5.0, 3.0], [12.0, 0.0]]]])              # [1, 1, 3, 2]
    d = vision.segment_distance(points, torch.tensor([0.0, 0.0]), torch.tensor([10.0, 0.0]))
    assert torch.allclose(d, torch.tensor([[[0.0, 3.0, 2.0]]]))


def test_arc_distance_on_off_and_past_the_ends():
    centre, radius = torch.tensor([0.0, 0.0]), torch.tensor(5.0)
    orientation, span = torch.tensor(0.0), torch.tensor(math.pi / 2)           # bulges right, ±45°
    points = torch.tensor([[[5.0, 0.0], [7.0, 0.0], [0.0, 0.0], [-5.0, 0.0]]])[None]   # [1, 1, 4, 2]
    d = vision.arc_distance(points, centre, radius, orientation, span)[0, 0]
    end = 5 * torch.tensor([math.cos(math.pi / 4), math.sin(math.pi / 4)])
    assert torch.allclose(d[:3], torch.tensor([0.0, 2.0, 5.0]), atol=1e-5)
    assert torch.isclose(d[3], (torch.tensor([-5.0, 0.0]) - end).norm())      # behind the arc: nearest end


def test_arc_wraps_round_pi():
    """An arc centred on 180° must cover both sides of the ±π cut of atan2."""
    points = torch.tensor([[[-5.0, 0.1], [-5.0, -0.1]]])[None]
    d = vision.arc_distance(points, torch.zeros(2), torch.tensor(5.0), torch.tensor(math.pi), torch.tensor(1.0))
    assert (d < 0.01).all()


def test_full_circle_is_a_ring():
    d = vision.arc_distance(vision.pixel_grid(), torch.full((1, 2), 16.0), torch.tensor([6.0]), torch.tensor([1.0]),
                            torch.tensor([2 * math.pi]))
    r = (vision.pixel_grid() - 16).norm(dim=-1)
    assert torch.allclose(d[0], (r - 6).abs(), atol=1e-5)


def test_stimuli_shapes_and_orientation():
    arcs = vision.arc_images(torch.tensor([0.0, 90.0]))
    assert arcs.shape == (2, 1, 32, 32) and arcs.max() <= 1 and arcs.min() >= 0
    # an arc bulging right (0°) has its ink to the left of its midpoint's column, and its midpoint lit
    ink = arcs[0, 0]
    assert ink[16, 16] > 0.5 or ink[15, 15] > 0.5 or ink[15, 16] > 0.5 or ink[16, 15] > 0.5
    assert ink[:, :14].sum() > ink[:, 18:].sum()
    assert torch.allclose(arcs[1, 0], arcs[0, 0].T, atol=1e-5)                # 90° is 0° mirrored in the diagonal
    lines = vision.line_images(torch.tensor([0.0, 180.0]))
    assert torch.allclose(lines[0], lines[1], atol=1e-5)                      # a line turned by 180° is the same
    assert vision.arc_sweep(torch.tensor([0.0, 45.0]), radii=(5.0, 7.0)).shape == (2, 2 * 9, 1, 32, 32)
    assert vision.line_sweep(torch.tensor([0.0])).shape == (1, 9, 1, 32, 32)


def test_dataset_balanced_deterministic_in_range():
    images, labels = vision.make_dataset(120, seed=3)
    again, _ = vision.make_dataset(120, seed=3)
    assert images.shape == (120, 1, 32, 32) and torch.equal(images, again)
    assert torch.bincount(labels, minlength=6).tolist() == [20] * 6
    assert images.min() >= 0 and images.max() <= 1
    lit = (images > 0.25).flatten(1).float().mean(1)
    assert (lit > 0.005).all() and (lit < 0.35).all()                         # a stroke, never an empty or full image


def test_forward_equals_activations_logits():
    torch.manual_seed(0)
    net = vision.CurveNet().eval()
    images = torch.rand(4, 1, 32, 32)
    acts = net.activations(images)
    assert torch.allclose(net(images), acts["logits"], atol=1e-5)
    assert acts["conv1"].shape == (4, 16, 32, 32) and acts["conv2"].shape == (4, 16, 16, 16)
    assert acts["conv3"].shape == (4, 32, 8, 8) and torch.equal(acts["conv3"], acts["conv3_pre"].relu())


def test_short_training_learns():
    result = vision.train_curve_net(seed=0, steps=60, n_train=512, progress=False)
    assert result.test_accuracy > 0.35                                        # chance is 1/6
    assert result.losses[-1] < result.losses[0]
    assert not any(p.requires_grad for p in result.net.parameters())


# ----------------------------------------------------------------------------- measurements

def test_bumps_counts_runs_round_the_circle():
    curves = torch.zeros(12, 4)
    curves[[0, 1, 11], 0] = 1.0              # one bump across the wrap
    curves[[2, 3], 1] = 1.0
    curves[[8], 1] = 1.0                     # two bumps
    curves[:, 3] = 1.0                       # flat: no bump
    curves[5, 2] = 1.0
    count, width = cd.bumps(curves, step_deg=30)
    assert count.tolist() == [1, 2, 1, 0] and width.tolist()[:3] == [90, 90, 30]


def test_classify_units_rules():
    x = torch.arange(0, 360, 10.0).deg2rad()
    bump = torch.exp(torch.cos(x - 1.0) * 3)                                 # one bump over 360°
    double = torch.exp(torch.cos(2 * x) * 3)                                # two bumps
    arc = torch.stack([bump, double, bump, bump * 0.01, double], 1)
    line_bump = torch.exp(torch.cos(2 * torch.arange(0, 180, 10.0).deg2rad()) * 3)   # one bump over 180°
    line = torch.stack([0.3 * line_bump.max() / bump.max() * line_bump, line_bump * double.max() / line_bump.max(),
                        0.7 * bump.max() / line_bump.max() * line_bump, line_bump * 0,
                        0.3 * double.max() / line_bump.max() * line_bump], 1)
    # a curve; a segment detector (two arc bumps, strong on lines); one arc bump but strong on lines: a line
    # unit too; too weak to count; two arc bumps and weak on lines: neither
    assert cd.classify_units(arc, line) == ["curve", "line", "line", "other", "other"]


def test_tangents_and_alignment():
    t = cd.arc_tangents(0.0)                      # bulging right: vertical tangent at the centre
    assert abs(t[1, 1] - 90) < 1e-4 and abs(t[0, 1] - t[2, 1]) > 10          # turning above and below
    weights = torch.zeros(2, 3, 3)
    weights[0] = 1.0
    assert torch.isclose(cd.tangent_alignment(weights, torch.tensor([90.0, 0.0]), torch.full((3, 3), 90.0)), torch.tensor(1.0))
    assert torch.isclose(cd.tangent_alignment(weights, torch.tensor([0.0, 90.0]), torch.full((3, 3), 90.0)), torch.tensor(-1.0))
    null = cd.shuffled_alignments(torch.rand(8, 3, 3), torch.rand(8) * 180, t, n=50)
    assert null.shape == (50,) and null.abs().max() <= 1


def test_best_matches_finds_a_permuted_copy():
    a = torch.randn(50, 6)
    b = a[:, [3, 0, 5, 1, 4, 2]] * 2 + 1
    corr, idx = cd.best_matches(a, b)
    assert torch.allclose(corr, torch.ones(6), atol=1e-5) and idx.tolist() == [1, 3, 5, 0, 4, 2]


def test_feature_visualisation_beats_the_start():
    torch.manual_seed(0)
    net = vision.CurveNet().eval().requires_grad_(False)
    image = cd.feature_visualisation(net, 3, [0], steps=40)
    pre = net.activations(image)["conv3_pre"][0, 0]
    start = net.activations(torch.zeros_like(image))["conv3_pre"][0, 0]
    assert image.shape == (1, 1, 32, 32) and not image.requires_grad
    assert pre[4, 4] > start[4, 4]


@pytest.mark.parametrize("orientation", [0.0, 135.0, 250.0])
def test_image_orientation_reads_arcs(orientation):
    image = vision.arc_images(torch.tensor([orientation]), offset=(2.0, -1.0))
    assert cd.angle_difference(cd.image_orientation(image)[0], orientation) <= 10
