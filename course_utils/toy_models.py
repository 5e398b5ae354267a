"""Toy Models of Superposition (Elhage et al. 2022), small enough to read in one sitting.

n sparse features x ∈ [0, 1]^n are squeezed into m < n hidden dimensions and read back out:

    h  = W x                     # (m,)   W is (m, n): column W_i is feature i's direction
    x' = ReLU(Wᵀ h + b)          # (n,)   the "ReLU output model"

and trained to minimise the importance-weighted reconstruction error Σ_i I_i (x_i − x'_i)².
Each feature is 0 with probability S (the sparsity) and otherwise uniform on [0, 1].

Many small models ("instances") train at once, in one vectorised loop: every tensor carries an
instance axis, so a sweep over sparsities and seeds costs one training run.

    model = train_toy_model(n_features=5, n_hidden=2, feature_probability=[1.0, 0.2, 0.05],
                            importance=1.0, n_instances=8)
    model.W        # (3, 2, 5): for each feature probability, the lowest-loss of 8 seeds
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from course_utils.errors import CourseError

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Generate = Callable[[int, int, torch.Tensor, "torch.Generator | None"], torch.Tensor]
CORRELATIONS = ("correlated", "anticorrelated")


# ----------------------------------------------------------------------------- data and model

def generate_batch(batch_size: int, n_features: int, feature_probability: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Sparse features: each is 0 with probability 1 − p, else uniform on [0, 1].

    feature_probability: (n_instances,), p = 1 − S for each instance.
    Returns (batch_size, n_instances, n_features).
    """
    p = torch.as_tensor(feature_probability, dtype=torch.float32)
    shape = (batch_size, p.shape[0], n_features)
    values = torch.rand(shape, generator=generator, device=p.device)   # (B, I, F)
    active = torch.rand(shape, generator=generator, device=p.device) < p[:, None]
    return torch.where(active, values, torch.zeros_like(values))


def correlated_batch(batch_size: int, n_features: int, feature_probability: torch.Tensor,
                     generator: torch.Generator | None = None, mode: str = "correlated") -> torch.Tensor:
    """Features in pairs (0, 1), (2, 3), ...: each feature is active with probability p and then
    uniform on [0, 1], as in `generate_batch`, but the two features of a pair are tied:

    * "correlated": a pair is active together or not at all (one draw per pair);
    * "anticorrelated": never both at once; one of the two is active with probability 2p, each
      equally likely (so p ≤ 1/2).
    Values stay independent, and different pairs are independent of each other.
    Returns (batch_size, n_instances, n_features).
    """
    p = torch.as_tensor(feature_probability, dtype=torch.float32)
    if n_features % 2 or mode not in CORRELATIONS:
        raise CourseError(f"correlated_batch needs an even n_features (pairs) and mode in {CORRELATIONS}; "
                          f"got n_features={n_features}, mode={mode!r}.")
    if mode == "anticorrelated" and (p > 0.5).any():
        raise CourseError("Anticorrelated pairs need feature_probability ≤ 0.5: one of the two is on with probability 2p.")
    n_pairs, n_instances = n_features // 2, p.shape[0]
    values = torch.rand((batch_size, n_instances, n_features), generator=generator, device=p.device)
    pair_draw = torch.rand((batch_size, n_instances, n_pairs), generator=generator, device=p.device)
    if mode == "correlated":
        active = (pair_draw < p[:, None]).repeat_interleave(2, dim=-1)                  # (B, I, F)
    else:
        on = pair_draw < 2 * p[:, None]                                                 # (B, I, pairs)
        first = torch.rand((batch_size, n_instances, n_pairs), generator=generator, device=p.device) < 0.5
        active = torch.stack([on & first, on & ~first], dim=-1).flatten(-2)            # (B, I, F)
    return torch.where(active, values, torch.zeros_like(values))


def toy_forward(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The ReLU output model x' = ReLU(Wᵀ W x + b), for every instance at once.

    x: (batch, n_instances, n_features), W: (n_instances, n_hidden, n_features),
    b: (n_instances, n_features). Returns (batch, n_instances, n_features).
    """
    h = torch.einsum("bif,ihf->bih", x, W)                # (B, I, m)   h = W x
    return torch.relu(torch.einsum("bih,ihf->bif", h, W) + b)   # (B, I, n)   ReLU(Wᵀ h + b)


def linear_forward(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The linear model x' = Wᵀ W x + b (no ReLU: it cannot filter out interference)."""
    h = torch.einsum("bif,ihf->bih", x, W)                # (B, I, m)
    return torch.einsum("bih,ihf->bif", h, W) + b         # (B, I, n)


def hidden_relu_forward(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A ReLU on the hidden layer too: h = ReLU(W x), x' = ReLU(Wᵀ h + b).

    The ReLU gives the hidden dimensions a privileged basis: they are neurons.
    """
    h = torch.relu(torch.einsum("bif,ihf->bih", x, W))    # (B, I, m)   neuron activations
    return torch.relu(torch.einsum("bih,ihf->bif", h, W) + b)   # (B, I, n)


def importance_loss(x: torch.Tensor, x_hat: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """Σ_i I_i (x_i − x'_i)², averaged over the batch: one loss per instance.

    x, x_hat: (batch, n_instances, n_features); importance: (n_instances, n_features) or
    (n_features,). Returns (n_instances,).
    """
    return (importance * (x - x_hat) ** 2).sum(-1).mean(0)


def importance_decay(n_features: int, decay: float) -> torch.Tensor:
    """Importance I_i = decay ** i: feature 0 matters most. Returns (n_features,)."""
    return decay ** torch.arange(n_features, dtype=torch.float32)


# ----------------------------------------------------------------------------- training

@dataclass
class ToyModel:
    """The trained models: for each setting (a feature probability and an importance), the
    lowest-loss of `n_instances` seeds, and the losses of all of them."""

    W: torch.Tensor                    # (n_settings, n_hidden, n_features)
    b: torch.Tensor                    # (n_settings, n_features)
    feature_probability: torch.Tensor  # (n_settings,)
    importance: torch.Tensor           # (n_settings, n_features)
    losses: torch.Tensor               # (n_settings, n_instances) held-out loss of every seed


def _as_settings(feature_probability: float | Sequence[float] | torch.Tensor,
                 importance: float | Sequence[float] | torch.Tensor,
                 n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast p to (S,) and importance to (S, n_features); explain shape mistakes."""
    p = torch.as_tensor(feature_probability, dtype=torch.float32).reshape(-1)         # (S,)
    imp = torch.as_tensor(importance, dtype=torch.float32)
    if imp.ndim == 0:
        imp = imp.expand(n_features)
    if imp.shape[-1] != n_features or imp.ndim > 2:
        raise ValueError(f"importance should be a number, ({n_features},) or (n_settings, {n_features}); "
                         f"got shape {tuple(imp.shape)}")
    if imp.ndim == 2 and p.numel() == 1:
        p = p.expand(imp.shape[0])
    if imp.ndim == 2 and imp.shape[0] != p.numel():
        raise ValueError(f"importance has {imp.shape[0]} settings but feature_probability has {p.numel()}")
    imp = imp.expand(p.numel(), n_features)                                           # (S, n)
    if not ((p > 0) & (p <= 1)).all():
        raise ValueError("feature_probability is 1 − S, the chance a feature is active: keep it in (0, 1]")
    return p.contiguous(), imp.contiguous()


def train_toy_model(n_features: int, n_hidden: int,
                    feature_probability: float | Sequence[float] | torch.Tensor,
                    importance: float | Sequence[float] | torch.Tensor = 1.0,
                    seed: int = 0, n_instances: int = 4, steps: int = 2_000, lr: float = 1e-2,
                    batch_size: int = 1_024, device: str = "cpu", forward: Forward = toy_forward,
                    progress: bool = True, generate: Generate = generate_batch) -> ToyModel:
    """Train `n_instances` seeds of the toy model for every setting, all in one loop.

    feature_probability: a number or (S,) values of p = 1 − S, one setting each.
    importance: a number, (n_features,), or (S, n_features) for a different importance per setting.
    forward: `toy_forward`, `linear_forward` or `hidden_relu_forward` (or your own, same shapes).
    generate: the data, `generate_batch` or another function of the same signature (for instance
    `functools.partial(correlated_batch, mode="anticorrelated")`).
    The learning rate decays with a cosine to 0, which settles the geometry cleanly. The run is
    deterministic given `seed`. Returns the lowest held-out-loss seed of each setting.
    """
    p, imp = _as_settings(feature_probability, importance, n_features)      # (S,), (S, n)
    n_settings, n_total = p.numel(), p.numel() * n_instances
    p_all = p.repeat_interleave(n_instances).to(device)                       # (I,) I = S * n_instances
    imp_all = imp.repeat_interleave(n_instances, dim=0).to(device)            # (I, n)

    gen = torch.Generator(device).manual_seed(seed)
    std = math.sqrt(2 / (n_hidden + n_features))                               # Xavier normal
    W = (torch.randn(n_total, n_hidden, n_features, generator=gen, device=device) * std).requires_grad_()
    b = torch.zeros(n_total, n_features, device=device, requires_grad=True)
    opt = torch.optim.AdamW([W, b], lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))

    for _ in tqdm(range(steps), desc="training toy models", disable=not progress, mininterval=0.5):
        x = generate(batch_size, n_features, p_all, gen)                     # (B, I, n)
        loss = importance_loss(x, forward(x, W, b), imp_all).sum()           # instances are independent
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()

    with torch.no_grad():  # pick each setting's best seed on one shared held-out batch
        x = generate(8 * batch_size, n_features, p.to(device), gen)          # (8B, S, n)
        x = x.repeat_interleave(n_instances, dim=1)                           # (8B, I, n)
        losses = importance_loss(x, forward(x, W, b), imp_all).view(n_settings, n_instances)
        best = losses.argmin(1) + torch.arange(n_settings, device=device) * n_instances   # (S,)
        return ToyModel(W=W[best].detach().cpu(), b=b[best].detach().cpu(), feature_probability=p,
                        importance=imp, losses=losses.cpu())


# ----------------------------------------------------------------------------- measuring superposition

def feature_norms(W: torch.Tensor) -> torch.Tensor:
    """‖W_i‖, how strongly each feature is represented. W: (..., m, n) → (..., n)."""
    return W.norm(dim=-2)


def feature_interference(W: torch.Tensor) -> torch.Tensor:
    """Σ_{j≠i} (Ŵ_i · W_j)²: how much the other features project onto feature i's direction.

    W: (..., m, n) → (..., n). A feature with W_i = 0 has interference 0.
    """
    W_hat = W / W.norm(dim=-2, keepdim=True).clamp_min(1e-8)                 # (..., m, n) unit columns
    overlaps = (W_hat.transpose(-1, -2) @ W) ** 2                             # (..., n, n) (Ŵ_i · W_j)²
    return overlaps.sum(-1) - overlaps.diagonal(dim1=-2, dim2=-1)             # drop j = i


def dimensions_per_feature(W: torch.Tensor) -> torch.Tensor:
    """m / ‖W‖²_F: hidden dimensions per represented feature. W: (..., m, n) → (...)."""
    return W.shape[-2] / (W ** 2).sum((-2, -1))


def feature_dimensionality(W: torch.Tensor) -> torch.Tensor:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²: the fraction of a dimension feature i owns.

    W: (..., m, n) → (..., n). 1 for a feature with a dimension to itself, 1/2 for an antipodal
    pair, 2/5 in a pentagon, 0 for a feature that is not represented.
    """
    W_hat = W / W.norm(dim=-2, keepdim=True).clamp_min(1e-8)                 # (..., m, n)
    denominator = ((W_hat.transpose(-1, -2) @ W) ** 2).sum(-1)               # (..., n)
    return (W ** 2).sum(-2) / denominator.clamp_min(1e-12)


def neighbour_angles(W: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Angles (degrees) between neighbouring feature directions in a 2-d hidden space.

    W: (2, n). Only features with ‖W_i‖ > threshold count. Going round the circle, returns the
    gap from each represented feature to the next, sorted ascending: (n_represented,), summing
    to 360 (empty if no feature is represented).
    """
    keep = W.norm(dim=0) > threshold                                          # (n,)
    angles = torch.atan2(W[1, keep], W[0, keep]).rad2deg().sort().values      # (k,)
    gaps = torch.diff(angles, append=angles[:1] + 360)                         # (k,) wraps around
    return gaps.sort().values


# ----------------------------------------------------------------------------- the hidden basis

def random_rotation(m: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random orthogonal matrix (m, m): the QR decomposition of a Gaussian matrix, with
    the signs of R's diagonal moved into Q (without that step Q is not uniformly distributed)."""
    Q, R = torch.linalg.qr(torch.randn(m, m, generator=generator))
    return Q * R.diagonal().sign()                                             # flips columns of Q


def rotated_loss(forward: Forward, W: torch.Tensor, b: torch.Tensor, R: torch.Tensor, x: torch.Tensor,
                 importance: torch.Tensor) -> torch.Tensor:
    """The loss of each instance after rotating its hidden space by R (m, m): W → R W.
    W: (n_instances, m, n), x: (batch, n_instances, n). Returns (n_instances,)."""
    return importance_loss(x, forward(x, R @ W, b), importance)
