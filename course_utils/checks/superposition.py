"""Checks for notebook 05 · Superposition.

The references are the functions of `course_utils.toy_models`, the same code that trains the
notebook's models, so what the checks accept is exactly what the training uses.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from course_utils import toy_models
from course_utils.checks import Case, compare, run_check


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _polygon(k: int, radius: float = 1.0, turn: float = 0.3) -> torch.Tensor:
    """k feature directions evenly spaced round a circle: (2, k)."""
    angles = turn + 2 * math.pi * torch.arange(k) / k
    return radius * torch.stack([angles.cos(), angles.sin()])


def _negative(name: str) -> Callable[[Case, Any], str | None]:
    def prop(case: Case, got: Any) -> str | None:
        if isinstance(got, torch.Tensor) and got.is_floating_point() and (got < 0).any():
            return (f"{name} has negative entries ({got.min().item():.3g}); the output should go through a ReLU "
                    "after adding b")
        return None
    return prop


# ----------------------------------------------------------------------------- 5.1 the toy model

def check_generate_batch(fn: Callable) -> Callable:
    """Sparse uniform features: checked by their statistics, since any random draw is a right answer."""
    def stats(case: Case, got: Any) -> str | None:
        batch, n_features, p = case.args
        shape = (batch, p.numel(), n_features)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != shape:
            return f"expected a tensor of shape (batch, n_instances, n_features) = {shape}, got " + (
                f"shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else type(got).__name__)
        if not got.is_floating_point():
            return f"features should be floats, got {got.dtype}"
        if got.min() < 0 or got.max() > 1:
            return f"features should lie in [0, 1]; found values from {got.min():.3g} to {got.max():.3g}"
        active = got != 0                                                    # (B, I, F)
        for i, p_i in enumerate(p.tolist()):
            frac = active[:, i].float().mean().item()
            if abs(frac - p_i) > 0.02:
                hint = " Is the sparsity inverted (active with probability S instead of 1 − S)?" if abs(
                    frac - (1 - p_i)) < 0.02 else ""
                return (f"instance {i} has feature_probability {p_i:g}, so a fraction {p_i:g} of its features "
                        f"should be non-zero; {frac:.3f} are.{hint}")
        values = got[active]
        if values.numel() and (abs(values.mean() - 0.5) > 0.02 or abs((values < 0.25).float().mean() - 0.25) > 0.02):
            return (f"active features should be uniform on [0, 1] (mean 0.5, a quarter below 0.25); "
                    f"yours have mean {values.mean():.3f} and {(values < 0.25).float().mean():.3f} below 0.25")
        for i, p_i in enumerate(p.tolist()):
            all_off = (~active[:, i]).all(-1).float().mean().item()
            if abs(all_off - (1 - p_i) ** n_features) > 0.02:
                return (f"features should switch on independently: with p = {p_i:g} a whole row of instance {i} is "
                        f"zero with probability {(1 - p_i) ** n_features:.3f}, but {all_off:.3f} of rows are. "
                        "Draw one random number per feature, not one per row.")
        again = [fn(batch, n_features, p, generator=_rng(seed)) for seed in (7, 7, 8)]
        if not torch.equal(again[0], again[1]) or torch.equal(again[0], again[2]):
            return "draw every random number from `generator`, so the same seed gives the same batch"
        return None

    p = torch.tensor([1.0, 0.5, 0.1, 0.02])
    cases = [Case((20_000, 5, p), {"generator": _rng(0)}, "p = 1, 0.5, 0.1, 0.02"),
             Case((20_000, 3, torch.tensor([0.0, 0.3])), {"generator": _rng(1)}, "p = 0 gives all zeros"),
             Case((20_000, 1, torch.tensor([0.75])), {"generator": _rng(2)}, "one feature")]
    return run_check("generate_batch", fn, toy_models.generate_batch, cases, properties=[stats],
                     compare_fn=lambda got, expected: None)


def _forward_cases(seed: int) -> list[Case]:
    g = _rng(seed)

    def case(batch: int, n_instances: int, m: int, n: int, label: str, zero_x: bool = False) -> Case:
        x = torch.zeros(batch, n_instances, n) if zero_x else torch.rand(batch, n_instances, n, generator=g)
        W = torch.randn(n_instances, m, n, generator=g)
        b = torch.randn(n_instances, n, generator=g) * 0.5
        return Case((x, W, b), label=label)

    return [case(8, 2, 4, 4, "as many hidden dimensions as features"),
            case(16, 3, 2, 5, "3 instances, 5 features in 2 dimensions"),
            case(4, 1, 3, 7, "a single instance"),
            case(5, 2, 2, 3, "x = 0: the output is ReLU(b)", zero_x=True)]


def check_toy_forward(fn: Callable) -> Callable:
    """x' = ReLU(Wᵀ W x + b) for every instance at once."""
    return run_check("toy_forward", fn, toy_models.toy_forward, _forward_cases(0), properties=[_negative("x'")])


def check_importance_loss(fn: Callable) -> Callable:
    """One loss per instance: Σ_i I_i (x_i − x'_i)², averaged over the batch."""
    g = _rng(1)
    x, x_hat = torch.rand(32, 3, 6, generator=g), torch.rand(32, 3, 6, generator=g)
    importance = torch.rand(3, 6, generator=g) + 0.1

    def shape(case: Case, got: Any) -> str | None:
        n_instances = case.args[0].shape[1]
        if isinstance(got, torch.Tensor) and tuple(got.shape) != (n_instances,):
            return (f"return one loss per instance, shape ({n_instances},); got shape {tuple(got.shape)}. "
                    "Sum over features, average over the batch, keep the instance axis.")
        return None

    cases = [Case((x, x_hat, importance), label="random, importance per instance"),
             Case((x, x_hat, 0.9 ** torch.arange(6.0)), label="importance of shape (n_features,)"),
             Case((x, x, importance), label="perfect reconstruction: loss 0"),
             Case((x[:1], torch.zeros_like(x[:1]), importance), label="batch of one, x' = 0")]
    return run_check("importance_loss", fn, toy_models.importance_loss, cases, properties=[shape])


# ----------------------------------------------------------------------------- 5.2 - 5.4 measuring

def _geometry_cases(seed: int) -> list[Case]:
    """Weights (..., m, n) with known answers, and random ones with uneven norms."""
    g = _rng(seed)
    tetrahedron = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]).T / math.sqrt(3)   # (3, 4)
    pairs = torch.cat([torch.eye(2), -torch.eye(2), torch.zeros(2, 1)], dim=1)                          # (2, 5)
    return [Case((torch.eye(3, 5),), label="3 orthogonal features and 2 dropped"),
            Case((pairs,), label="two antipodal pairs and a dropped feature"),
            Case((_polygon(5, radius=1.13),), label="a regular pentagon"),
            Case((_polygon(3, radius=0.8),), label="a triangle"),
            Case((tetrahedron * 1.2,), label="a tetrahedron in 3 dimensions"),
            Case((torch.randn(4, 4, generator=g) * torch.rand(4, generator=g) * 2,), label="random, square"),
            Case((torch.randn(3, 2, 6, generator=g) * torch.rand(3, 1, 6, generator=g) * 2,),
                 label="random, 3 instances")]


def check_feature_interference(fn: Callable) -> Callable:
    """Σ_{j≠i} (Ŵ_i · W_j)² for each feature, over columns of W."""
    return run_check("feature_interference", fn, toy_models.feature_interference, _geometry_cases(2))


def check_feature_dimensionality(fn: Callable) -> Callable:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)², with 0 for a feature that is not represented."""
    return run_check("feature_dimensionality", fn, toy_models.feature_dimensionality, _geometry_cases(3))


def check_neighbour_angles(fn: Callable) -> Callable:
    """Gaps between neighbouring represented features round the circle, in degrees (any order)."""
    g = _rng(4)
    pairs = torch.cat([torch.eye(2), -torch.eye(2), 0.01 * torch.ones(2, 1)], dim=1)     # (2, 5)
    uneven = torch.stack([torch.tensor([10.0, 100, 170, 200, 330]).deg2rad().cos(),
                          torch.tensor([10.0, 100, 170, 200, 330]).deg2rad().sin()]) * 0.9
    random = torch.randn(2, 6, generator=g)
    random = random / random.norm(dim=0) * (0.6 + torch.rand(6, generator=g))
    cases = [Case((_polygon(5, radius=1.13),), label="a regular pentagon"),
             Case((pairs,), label="two antipodal pairs, a fifth feature too short to count"),
             Case((uneven[:, [3, 0, 4, 1, 2]],), label="features not in angular order"),
             Case((random,), label="random, all represented"),
             Case((uneven,), {"threshold": 1.0}, label="threshold above every norm: no gaps"),
             Case((uneven[:, :1],), label="a single feature: one gap of 360°")]

    def in_order(got: Any, expected: torch.Tensor) -> str | None:
        if isinstance(got, torch.Tensor) and got.ndim == 1 and got.shape == expected.shape:
            got = got.sort().values
        return compare(got, expected, atol=1e-3, rtol=1e-4, where="gaps (sorted)")

    return run_check("neighbour_angles", fn, toy_models.neighbour_angles, cases, compare_fn=in_order)


# ----------------------------------------------------------------------------- 5.5 neurons

def check_hidden_relu_forward(fn: Callable) -> Callable:
    """h = ReLU(W x), x' = ReLU(Wᵀ h + b) for every instance at once."""
    return run_check("hidden_relu_forward", fn, toy_models.hidden_relu_forward, _forward_cases(5),
                     properties=[_negative("x'")])
