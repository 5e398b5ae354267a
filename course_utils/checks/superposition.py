"""Checks for notebook 05 · Superposition.

The references are the functions of `course_utils.toy_models`, the same code that trains the
notebook's models, so what the checks accept is exactly what the training uses.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from course_utils import toy_computation, toy_models
from course_utils.checks import Case, compare, describe, run_check


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
        msg = _batch_basics(got, (batch, p.numel(), n_features))
        if msg:
            return msg
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


def _batch_basics(got: Any, shape: tuple[int, ...], low: float = 0.0) -> str | None:
    """A batch of features: a float32 tensor of the right shape, with values in [low, 1]."""
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != shape:
        return (f"expected a tensor of shape (batch, n_instances, n_features) = {shape}, got "
                + (f"shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else describe(got)))
    if got.dtype != torch.float32:
        return (f"features should be float32 (the dtype of the model's weights), got {got.dtype}"
                + (" (torch.rand gives float32; float64 usually comes from numpy)" if got.dtype == torch.float64 else ""))
    if not torch.isfinite(got).all() or got.min() < low or got.max() > 1:
        return f"features should lie in [{low:g}, 1]; found values from {got.min():.3g} to {got.max():.3g}"
    return None


def _forward_cases(seed: int) -> list[Case]:
    g = _rng(seed)

    def case(batch: int, n_instances: int, m: int, n: int, label: str, zero_x: bool = False) -> Case:
        x = torch.zeros(batch, n_instances, n) if zero_x else torch.rand(batch, n_instances, n, generator=g)
        W = torch.randn(n_instances, m, n, generator=g).requires_grad_()      # trained next: gradients must flow
        b = (torch.randn(n_instances, n, generator=g) * 0.5).requires_grad_()
        return Case((x, W, b), label=label)

    return [case(8, 2, 4, 4, "as many hidden dimensions as features"),
            case(16, 3, 2, 5, "3 instances, 5 features in 2 dimensions"),
            case(4, 1, 3, 7, "a single instance"),
            case(5, 2, 2, 3, "x = 0: the output is ReLU(b)", zero_x=True)]


def check_toy_forward(fn: Callable) -> Callable:
    """x' = ReLU(Wᵀ W x + b) for every instance at once."""
    return run_check("toy_forward", fn, toy_models.toy_forward, _forward_cases(0), properties=[_negative("x'")],
                     grad=True, dims=("batch", "instance", "feature"))


def check_importance_loss(fn: Callable) -> Callable:
    """One loss per instance: Σ_i I_i (x_i − x'_i)², averaged over the batch."""
    g = _rng(1)
    x, x_hat = torch.rand(32, 3, 6, generator=g), torch.rand(32, 3, 6, generator=g).requires_grad_()
    importance = torch.rand(3, 6, generator=g) + 0.1

    def shape(case: Case, got: Any) -> str | None:
        n_instances = case.args[0].shape[1]
        if isinstance(got, torch.Tensor) and tuple(got.shape) != (n_instances,):
            return (f"return one loss per instance, shape ({n_instances},); got shape {tuple(got.shape)}. "
                    "Sum over features, average over the batch, keep the instance axis.")
        return None

    cases = [Case((x, x_hat, importance), label="random, importance per instance"),
             Case((x, x_hat, 0.9 ** torch.arange(6.0)), label="importance of shape (n_features,)"),
             Case((x, x.clone().requires_grad_(), importance), label="perfect reconstruction: loss 0"),
             Case((x[:1], torch.zeros_like(x[:1]), importance), label="batch of one, x' = 0")]
    return run_check("importance_loss", fn, toy_models.importance_loss, cases, properties=[shape], grad=True,
                     dims=("instance",))


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
    """Gaps between neighbouring represented features round the circle, in degrees, sorted ascending."""
    g = _rng(4)
    pairs = torch.cat([torch.eye(2), -torch.eye(2), 0.01 * torch.ones(2, 1)], dim=1)     # (2, 5)
    degrees = torch.tensor([10.0, 100, 170, 200, 330]).deg2rad()
    uneven = torch.stack([degrees.cos(), degrees.sin()]) * 0.9
    random = torch.randn(2, 6, generator=g)
    random = random / random.norm(dim=0) * (0.6 + torch.rand(6, generator=g))
    # norms 0.6 and 0.65 count (their squared norms and largest coordinates do not); 0.45 and 0.49 do not (their L1 norms would)
    near = _polygon(6, turn=math.pi / 4) * torch.tensor([0.6, 1.0, 0.45, 0.65, 1.2, 0.49])
    cases = [Case((_polygon(5, radius=1.13),), label="a regular pentagon"),
             Case((pairs,), label="two antipodal pairs, a fifth feature too short to count"),
             Case((uneven[:, [3, 0, 4, 1, 2]],), label="features not in angular order"),
             Case((near,), label="norms 0.6, 1, 0.45, 0.65, 1.2, 0.49 against the threshold 0.5"),
             Case((random,), label="random, all represented"),
             Case((near,), {"threshold": 0.62}, label="threshold 0.62: between the norms 0.6 and 0.65"),
             Case((uneven,), {"threshold": 1.0}, label="threshold above every norm: no gaps"),
             Case((uneven[:, :1],), label="a single feature: one gap of 360°")]

    def order(case: Case, got: Any) -> str | None:
        expected = toy_models.neighbour_angles(*case.args, **case.kwargs)
        if (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype
                and compare(got, expected, atol=1e-3) is not None and compare(got.sort().values, expected, atol=1e-3) is None):
            return ("these are the right gaps in another order: return them sorted from smallest to largest "
                    "(.sort().values), as the exercise asks")
        return None

    def count(case: Case, got: Any) -> str | None:
        expected = toy_models.neighbour_angles(*case.args, **case.kwargs)
        if isinstance(got, torch.Tensor) and got.dim() == 1 and len(got) != len(expected):
            threshold = case.kwargs.get("threshold", 0.5)
            norms = ", ".join(f"{v:.2f}" for v in case.args[0].norm(dim=0).tolist())
            return (f"expected {len(expected)} gaps (one per feature with norm ‖W_i‖ > {threshold:g}; the norms are "
                    f"{norms}), got {len(got)}")
        return None

    return run_check("neighbour_angles", fn, toy_models.neighbour_angles, cases, atol=1e-3, rtol=1e-4,
                     properties=[count, order])


# ----------------------------------------------------------------------------- 5.5 neurons

def check_hidden_relu_forward(fn: Callable) -> Callable:
    """h = ReLU(W x), x' = ReLU(Wᵀ h + b) for every instance at once."""
    return run_check("hidden_relu_forward", fn, toy_models.hidden_relu_forward, _forward_cases(5),
                     properties=[_negative("x'")], grad=True, dims=("batch", "instance", "feature"))


# ----------------------------------------------------------------------------- 5.5 correlated features

def check_correlated_batch(fn: Callable) -> Callable:
    """Pairs of features, correlated or anticorrelated, each feature active with probability p: checked
    by its statistics, since any random draw is a right answer."""
    tol = 0.015                                                     # 20,000 rows: a few standard errors

    def stats(case: Case, got: Any) -> str | None:
        batch, n_features, p = case.args
        mode = case.kwargs["mode"]
        msg = _batch_basics(got, (batch, p.numel(), n_features))
        if msg:
            return msg
        on = got != 0                                                # (B, I, F)
        first, second = on[..., 0::2], on[..., 1::2]                 # (B, I, pairs)
        for i, p_i in enumerate(p.tolist()):
            for f in range(n_features):
                frac = on[:, i, f].float().mean().item()
                if abs(frac - p_i) > tol:
                    hint = (f" ({p_i * (1 - p_i):.3g} is p(1 − p): did you switch the second feature off when the first "
                            "is on? Then it is on less often than p)") if abs(frac - p_i * (1 - p_i)) < tol else ""
                    return (f"{mode}, instance {i}: feature {f} is active in a fraction {frac:.3f} of rows; every feature "
                            f"should be active with probability p = {p_i:g}{hint}")
            both = (first[:, i] & second[:, i]).float().mean().item()
            either = (first[:, i] ^ second[:, i]).float().mean().item()
            if mode == "anticorrelated" and both > 0:
                return (f"anticorrelated, instance {i}: both features of a pair are on together in a fraction {both:.4f} "
                        "of rows; they must never be")
            if mode == "correlated" and either > 0:
                return (f"correlated, instance {i}: in a fraction {either:.3f} of rows one feature of a pair is on "
                        "without the other; a pair is on together or not at all")
            pair_on = first[:, i] | second[:, i]                     # (B, pairs)
            if pair_on.shape[-1] > 1:
                joint = (pair_on[:, 0] & pair_on[:, 1]).float().mean().item()
                alone = pair_on[:, 0].float().mean().item() * pair_on[:, 1].float().mean().item()
                if abs(joint - alone) > tol:
                    return (f"{mode}, instance {i}: pairs 0 and 1 are both on in a fraction {joint:.3f} of rows, but "
                            f"independent pairs would be in {alone:.3f}; draw one random number per pair, not per row")
        together = on[..., 0::2] & on[..., 1::2]
        if together.any():
            same = (got[..., 0::2] == got[..., 1::2])[together].float().mean().item()
            if same > 0.01:
                return (f"{mode}: when both features of a pair are on they have the same value in a fraction {same:.2f} "
                        "of rows; draw each feature's value independently, uniform on [0, 1]")
        values = got[on]
        if values.numel() and (abs(values.mean() - 0.5) > 0.02 or abs((values < 0.25).float().mean() - 0.25) > 0.02):
            return (f"{mode}: active features should be uniform on [0, 1] (mean 0.5, a quarter below 0.25); yours have "
                    f"mean {values.mean():.3f} and {(values < 0.25).float().mean():.3f} below 0.25")
        again = [fn(batch, n_features, p, generator=_rng(seed), mode=mode) for seed in (7, 7, 8)]
        if not all(isinstance(a, torch.Tensor) for a in again) or not torch.equal(again[0], again[1]) \
                or torch.equal(again[0], again[2]):
            return "draw every random number from `generator`, so that the same seed gives the same batch"
        return None

    cases = [Case((20_000, 4, torch.tensor([0.2, 0.05])), {"generator": _rng(0), "mode": "correlated"},
                  "correlated, 2 pairs, p = 0.2 and 0.05"),
             Case((20_000, 6, torch.tensor([0.3, 0.1])), {"generator": _rng(1), "mode": "anticorrelated"},
                  "anticorrelated, 3 pairs, p = 0.3 and 0.1"),
             Case((20_000, 2, torch.tensor([0.5])), {"generator": _rng(2), "mode": "anticorrelated"},
                  "anticorrelated, p = 0.5: exactly one of the pair is always on"),
             Case((20_000, 4, torch.tensor([1.0, 0.4])), {"generator": _rng(3), "mode": "correlated"},
                  "correlated, p = 1 and 0.4")]
    return run_check("correlated_batch", fn, toy_models.correlated_batch, cases, properties=[stats],
                     compare_fn=lambda got, expected: None)


# ----------------------------------------------------------------------------- 5.7 computing |x|

def check_abs_weights(fn: Callable) -> Callable:
    """Weights (W1, W2, b) with which ReLU(W2 ReLU(W1 x) + b) = |x| for every x in [-1, 1]^n."""
    def exact(case: Case, got: Any) -> str | None:
        n, m, k = case.args
        shapes = {"W1": (k, m, n), "W2": (k, n, m), "b": (k, n)}
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            return f"return a tuple (W1, W2, b); got {describe(got)}"
        for (name, shape), t in zip(shapes.items(), got):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != torch.float32:
                return f"{name} should be a float32 tensor of shape {shape}; got {describe(t)}"
        W1, W2, b = got
        g = _rng(n * 100 + m)
        probes = {f"only feature {f} active, at {v:+.2f}": torch.zeros(n).index_fill(0, torch.tensor([f]), v)
                  for f in range(n) for v in (0.7, -0.4)}
        probes["every feature active at once"] = 2 * torch.rand(n, generator=g) - 1
        probes["every feature negative"] = -torch.rand(n, generator=g)
        probes["x = 0"] = torch.zeros(n)
        for name, x in probes.items():
            y = toy_computation.abs_forward(x.expand(1, k, n), W1, W2, b)[0]           # (k, n)
            bad = (y - x.abs()).abs() > 1e-4
            if bad.any():
                i, f = (int(v) for v in bad.nonzero()[0])
                return (f"with {name}, instance {i} outputs {y[i, f].item():.3g} for feature {f}, expected |x| = "
                        f"{x[f].abs().item():.3g}")
        return None

    cases = [Case((3, 6, 1), label="3 features, 6 neurons"), Case((4, 8, 2), label="4 features, 8 neurons, 2 instances"),
             Case((2, 7, 3), label="2 features, 7 neurons (more than needed), 3 instances"),
             Case((1, 2, 1), label="one feature, two neurons")]
    return run_check("abs_weights", fn, toy_computation.abs_weights, cases, properties=[exact],
                     compare_fn=lambda got, expected: None)
