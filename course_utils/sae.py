"""Sparse autoencoders (SAEs): a dictionary of directions, each used rarely, that rebuilds a model's
activations. Two kinds, each a config dataclass and a small module:

    ReLU-L1 (Bricken et al. 2023)        f = ReLU((x − b_dec) W_enc + b_enc)
                                          loss = ‖x − x̂‖² + λ Σ_i |f_i|
    TopK (Gao et al. 2024)               f = the k largest of ReLU((x − b_dec) W_enc + b_enc), the rest 0
                                          loss = ‖x − x̂‖²   (the sparsity is built in: no penalty)
    both decode                          x̂ = f Ŵ_dec + b_dec,  Ŵ_dec's rows scaled to unit norm

    sae = TopKSAE(TopKSAEConfig(d_in=256, d_sae=2048, k=32))
    x_hat, f = sae(x)                     # x [..., d_in] -> x_hat [..., d_in], f [..., d_sae]
    sae.losses(x)                         # {"mse": ..., "loss": ...}: what training minimises

Latent i's direction is row i of W_dec, `sae.W_dec[i]` [d_in] (a column of the decoder matrix
d_in × d_sae in the papers' notation). The decoder always uses the rows scaled to unit length, so a
latent's activation f_i *is* how much of its direction the reconstruction holds, and the L1 penalty
cannot be dodged by shrinking f and growing W_dec. b_dec is subtracted before encoding and added
back after decoding: the SAE explains activations relative to a learned centre.

The plain functions (`encode_relu`, `topk_relu`, `decode`, `relu_l1_losses`, `max_cosine_similarity`,
`resample_dead_latents`) are the maths on its own, the references the notebook's exercises are checked against. Training,
activation collection and metrics are in `sae_training`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


# ----------------------------------------------------------------------------- the maths, as plain functions

def encode_relu(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """f = ReLU((x − b_dec) W_enc + b_enc). x [..., d_in], W_enc [d_in, d_sae] -> f [..., d_sae]."""
    return torch.relu((x - b_dec) @ W_enc + b_enc)


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest pre-activations of each row (over the latent axis, the last), ReLU them,
    and zero the rest. pre [..., d_sae] -> [..., d_sae]."""
    values, indices = pre.topk(k, dim=-1)                                        # [..., k]
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def encode_topk(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor,
                k: int) -> torch.Tensor:
    """f = TopK(ReLU((x − b_dec) W_enc + b_enc)). x [..., d_in] -> f [..., d_sae]."""
    return topk_relu((x - b_dec) @ W_enc + b_enc, k)


def unit_rows(W: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """W [d_sae, d_in] with every row scaled to length 1 (a new tensor)."""
    return W / W.norm(dim=-1, keepdim=True).clamp_min(eps)


def decode(f: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """x̂ = f Ŵ_dec + b_dec, with Ŵ_dec = W_dec's rows at unit norm. f [..., d_sae] -> [..., d_in]."""
    return f @ unit_rows(W_dec) + b_dec


def relu_l1_losses(x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor, l1_coeff: float) -> dict[str, torch.Tensor]:
    """The ReLU-L1 SAE's loss, in named parts, each a mean over the batch (all leading axes):
    mse = Σ_d (x − x̂)², l1 = Σ_i |f_i|, loss = mse + l1_coeff · l1.
    x, x_hat [..., d_in], f [..., d_sae]."""
    mse = ((x - x_hat) ** 2).sum(-1).mean()
    l1 = f.abs().sum(-1).mean()
    return {"mse": mse, "l1": l1, "loss": mse + l1_coeff * l1}


def max_cosine_similarity(true_directions: torch.Tensor, learned_directions: torch.Tensor) -> torch.Tensor:
    """For each true direction, the best cosine similarity with any learned one.
    true_directions [n_true, d], learned_directions [n_learned, d] -> [n_true]."""
    cosines = unit_rows(true_directions) @ unit_rows(learned_directions).T      # [n_true, n_learned]
    return cosines.max(dim=-1).values


def resample_dead_latents(x: torch.Tensor, x_hat: torch.Tensor, dead: torch.Tensor, W_enc: torch.Tensor,
                          b_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor) -> dict[str, torch.Tensor]:
    """New weights for the dead latents (dead [d_sae] bool), after Bricken et al. 2023: the n dead
    latents, in index order, take the directions of the n inputs of x [batch, d_in] that x_hat
    reconstructs worst (largest squared error first), measured from b_dec. Each gets
        W_dec[i] = u,   W_enc[:, i] = 0.2 · (mean norm of the live latents' encoder columns) · u,   b_enc[i] = 0,
    u = (x − b_dec) / ‖x − b_dec‖. Live latents keep their weights. Needs batch ≥ the number dead.
    Returns {"W_enc", "b_enc", "W_dec"}, new tensors."""
    n_dead = int(dead.sum())
    W_enc, b_enc, W_dec = W_enc.clone(), b_enc.clone(), W_dec.clone()
    if n_dead == 0:
        return {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec}
    error = ((x - x_hat) ** 2).sum(-1)                                           # [batch]
    worst = error.topk(n_dead).indices                                           # largest first
    u = unit_rows(x[worst] - b_dec)                                              # [n_dead, d_in]
    live = W_enc[:, ~dead].norm(dim=0)
    scale = 0.2 * (live.mean() if live.numel() else torch.ones((), dtype=W_enc.dtype))
    W_dec[dead] = u
    W_enc[:, dead] = scale * u.T
    b_enc[dead] = 0.0
    return {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec}


# ----------------------------------------------------------------------------- the modules

@dataclass
class ReLUSAEConfig:
    d_in: int                 # width of the activations it reads (d_model for the residual stream)
    d_sae: int                # number of latents: the dictionary's size (8-16 × d_in is common)
    l1_coeff: float = 1.0     # λ, weight of the L1 penalty (activations are normalised in training: see sae_training)
    seed: int = 0             # for the initial weights


@dataclass
class TopKSAEConfig:
    d_in: int                 # width of the activations it reads
    d_sae: int                # number of latents
    k: int = 32               # latents active on every input (its L0)
    aux_k: int = 0            # dead latents the auxiliary loss uses to model the error (0: no auxiliary loss)
    aux_coeff: float = 1 / 32  # weight of the auxiliary loss (Gao et al.'s value)
    seed: int = 0             # for the initial weights


class SparseAutoencoder(nn.Module):
    """What both SAEs share: the weights, their initialisation, the decoder and the forward pass."""

    def __init__(self, cfg: ReLUSAEConfig | TopKSAEConfig):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        directions = unit_rows(torch.randn(cfg.d_sae, cfg.d_in, generator=gen))          # [d_sae, d_in]
        self.W_dec = nn.Parameter(directions)                                            # rows: latent directions
        self.W_enc = nn.Parameter(directions.T.clone())                                  # [d_in, d_sae], tied at first
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - each kind has its own
        raise NotImplementedError

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """x̂ = f Ŵ_dec + b_dec. f [..., d_sae] -> [..., d_in]."""
        return decode(f, self.W_dec, self.b_dec)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., d_in] -> (x_hat [..., d_in], f [..., d_sae])."""
        f = self.encode(x)
        return self.decode(f), f

    @property
    def directions(self) -> torch.Tensor:
        """The latents' unit directions in activation space, [d_sae, d_in] (detached)."""
        return unit_rows(self.W_dec.detach())

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Store W_dec's rows at unit norm (the decoder uses them so anyway; this keeps Adam's steps in scale)."""
        self.W_dec.copy_(unit_rows(self.W_dec))

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Turn an SAE trained on `scale * x` into the same SAE on x, latents divided by `scale`.
        Exact, because ReLU and TopK commute with multiplying by a positive number."""
        self.b_dec.div_(scale)
        self.b_enc.div_(scale)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self.cfg).items())


class ReLUSAE(SparseAutoencoder):
    """The ReLU-L1 SAE: sparsity from an L1 penalty on the latents."""

    cfg: ReLUSAEConfig

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """f = ReLU((x − b_dec) W_enc + b_enc). x [..., d_in] -> [..., d_sae]."""
        return encode_relu(x, self.W_enc, self.b_enc, self.b_dec)

    def losses(self, x: torch.Tensor, l1_coeff: float | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({"mse", "l1", "loss"}, each a mean over the batch; the latents f [batch, d_sae]).
        x [batch, d_in]. `l1_coeff` overrides cfg.l1_coeff (training ramps it up)."""
        x_hat, f = self(x)
        return relu_l1_losses(x, x_hat, f, self.cfg.l1_coeff if l1_coeff is None else l1_coeff), f


class TopKSAE(SparseAutoencoder):
    """The TopK SAE: exactly k latents active on every input, no penalty."""

    cfg: TopKSAEConfig

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """f = TopK(ReLU((x − b_dec) W_enc + b_enc)). x [..., d_in] -> [..., d_sae]."""
        return encode_topk(x, self.W_enc, self.b_enc, self.b_dec, self.cfg.k)

    def losses(self, x: torch.Tensor, dead: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({"mse", "loss"}, and "aux" when `dead` [d_sae] bool marks dead latents and cfg.aux_k > 0;
        the latents f [batch, d_sae]). x [batch, d_in].

        The auxiliary loss (Gao et al. 2024) asks the dead latents' top aux_k to reconstruct what the
        live ones missed, which gives them a gradient again and brings many back to life."""
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc                                 # [batch, d_sae]
        f = topk_relu(pre, self.cfg.k)
        x_hat = self.decode(f)
        mse = ((x - x_hat) ** 2).sum(-1).mean()
        out = {"mse": mse, "loss": mse}
        n_dead = 0 if dead is None else int(dead.sum())
        if self.cfg.aux_k > 0 and n_dead > 0:
            k_aux = min(self.cfg.aux_k, n_dead)
            f_dead = topk_relu(pre.masked_fill(~dead, float("-inf")), k_aux)             # only dead latents
            error = (x - x_hat).detach()
            aux = ((error - f_dead @ unit_rows(self.W_dec)) ** 2).sum(-1).mean()
            out["aux"] = aux
            out["loss"] = mse + self.cfg.aux_coeff * aux
        return out, f
