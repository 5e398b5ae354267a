"""Computation in superposition (Elhage et al. 2022, "Computation in Superposition"): a toy model
that must *compute* something, not only store it.

Each of n sparse features is 0 with probability 1 − p and otherwise uniform on [−1, 1]; the model
has a hidden layer of m ReLU neurons and must output |x|:

    h  = ReLU(W1 x)              # (m,)   W1 is (m, n)
    y  = ReLU(W2 h + b)          # (n,)   W2 is (n, m)
    L  = Σ_i I_i (|x_i| − y_i)²

|x| = ReLU(x) + ReLU(−x) needs two neurons per feature when many features can be active at once; with
sparse features the model can get away with fewer, in superposition. Many instances train at once,
as in `course_utils.toy_models`.

    model = train_abs_model(n_features=8, n_hidden=6, feature_probability=[1.0, 0.05])
    model.W1    # (2, 6, 8): for each feature probability, the lowest-loss of 4 seeds
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from course_utils.toy_models import _as_settings, importance_loss


def signed_batch(batch_size: int, n_features: int, feature_probability: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Sparse signed features: each is 0 with probability 1 − p, else uniform on [−1, 1].
    feature_probability: (n_instances,). Returns (batch_size, n_instances, n_features)."""
    p = torch.as_tensor(feature_probability, dtype=torch.float32)
    shape = (batch_size, p.shape[0], n_features)
    values = 2 * torch.rand(shape, generator=generator, device=p.device) - 1
    active = torch.rand(shape, generator=generator, device=p.device) < p[:, None]
    return torch.where(active, values, torch.zeros_like(values))


def abs_forward(x: torch.Tensor, W1: torch.Tensor, W2: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y = ReLU(W2 ReLU(W1 x) + b) for every instance at once.

    x: (batch, n_instances, n), W1: (n_instances, m, n), W2: (n_instances, n, m), b: (n_instances, n).
    Returns (batch, n_instances, n).
    """
    h = torch.relu(torch.einsum("bif,ihf->bih", x, W1))                  # (B, I, m) neuron activations
    return torch.relu(torch.einsum("bih,ifh->bif", h, W2) + b)           # (B, I, n)


def abs_loss(x: torch.Tensor, W1: torch.Tensor, W2: torch.Tensor, b: torch.Tensor,
             importance: torch.Tensor) -> torch.Tensor:
    """Σ_i I_i (|x_i| − y_i)², averaged over the batch: (n_instances,)."""
    return importance_loss(x.abs(), abs_forward(x, W1, W2, b), importance)


def neurons_per_feature(W1: torch.Tensor, W2: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """How each feature is computed: for feature i, the number of neurons that read +x_i (W1[j, i] >
    threshold) and of those that read −x_i (W1[j, i] < −threshold), counting only neurons that write
    back to output i (W2[i, j] > threshold). W1 (..., m, n), W2 (..., n, m) -> (..., n, 2) [+, −]."""
    writes = W2.transpose(-1, -2) > threshold                                  # (..., m, n) neuron j → output i
    positive = ((W1 > threshold) & writes).sum(-2)
    negative = ((W1 < -threshold) & writes).sum(-2)
    return torch.stack([positive, negative], dim=-1)


@dataclass
class AbsModel:
    """For each setting, the lowest-loss of `n_instances` seeds, and every seed's held-out loss."""

    W1: torch.Tensor                   # (n_settings, n_hidden, n_features)
    W2: torch.Tensor                   # (n_settings, n_features, n_hidden)
    b: torch.Tensor                    # (n_settings, n_features)
    feature_probability: torch.Tensor  # (n_settings,)
    importance: torch.Tensor           # (n_settings, n_features)
    losses: torch.Tensor               # (n_settings, n_instances)


def train_abs_model(n_features: int, n_hidden: int,
                    feature_probability: float | Sequence[float] | torch.Tensor,
                    importance: float | Sequence[float] | torch.Tensor = 1.0,
                    seed: int = 0, n_instances: int = 4, steps: int = 2_000, lr: float = 1e-2,
                    batch_size: int = 1_024, device: str = "cpu", progress: bool = True) -> AbsModel:
    """Train `n_instances` seeds of the |x| model for every setting in one loop (AdamW, cosine decay
    to 0), and keep each setting's lowest held-out-loss seed. Deterministic given `seed`."""
    p, imp = _as_settings(feature_probability, importance, n_features)      # (S,), (S, n)
    n_settings, n_total = p.numel(), p.numel() * n_instances
    p_all = p.repeat_interleave(n_instances).to(device)
    imp_all = imp.repeat_interleave(n_instances, dim=0).to(device)

    gen = torch.Generator(device).manual_seed(seed)
    std = math.sqrt(2 / (n_hidden + n_features))
    W1 = (torch.randn(n_total, n_hidden, n_features, generator=gen, device=device) * std).requires_grad_()
    W2 = (torch.randn(n_total, n_features, n_hidden, generator=gen, device=device) * std).requires_grad_()
    b = torch.zeros(n_total, n_features, device=device, requires_grad=True)
    opt = torch.optim.AdamW([W1, W2, b], lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))

    for _ in tqdm(range(steps), desc="training |x| models", disable=not progress, mininterval=0.5):
        x = signed_batch(batch_size, n_features, p_all, gen)
        loss = abs_loss(x, W1, W2, b, imp_all).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()

    with torch.no_grad():
        x = signed_batch(8 * batch_size, n_features, p.to(device), gen).repeat_interleave(n_instances, dim=1)
        losses = abs_loss(x, W1, W2, b, imp_all).view(n_settings, n_instances)
        best = losses.argmin(1) + torch.arange(n_settings, device=device) * n_instances
        return AbsModel(W1=W1[best].detach().cpu(), W2=W2[best].detach().cpu(), b=b[best].detach().cpu(),
                        feature_probability=p, importance=imp, losses=losses.cpu())


def abs_weights(n_features: int, n_hidden: int, n_instances: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights that compute |x| exactly, by hand: |x_i| = ReLU(x_i) + ReLU(−x_i), so neuron i reads +x_i,
    neuron n + i reads −x_i, and output i adds the two (needs n_hidden ≥ 2 n_features; the rest stay 0).
    Returns W1 (n_instances, n_hidden, n), W2 (n_instances, n, n_hidden), b (n_instances, n)."""
    eye = torch.eye(n_features)
    W1 = torch.zeros(n_hidden, n_features)
    W1[:2 * n_features] = torch.cat([eye, -eye])                                # (m, n)
    W2 = W1.abs().T.clone()                                                      # (n, m)
    return (W1.expand(n_instances, -1, -1).clone(), W2.expand(n_instances, -1, -1).clone(),
            torch.zeros(n_instances, n_features))
