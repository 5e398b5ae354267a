"""Training sparse autoencoders on a language model: its activations, the training loop, and the
standard metrics.

    tokens = corpus_rows(model, n_tokens=200_000)                       # [rows, seq] from the training files
    acts = collect_activations(model, "blocks.1.hook_resid_pre", tokens)  # [tokens, d_model] float16
    sae = TopKSAE(TopKSAEConfig(d_in=acts.shape[1], d_sae=2048, k=32))
    history = train_sae(sae, acts, n_tokens=400_000)                     # {"mse": [...], "loss": [...], ...}
    evaluate(sae, held_out_acts)                                         # L0, FVE, dead latents

Activations are normalised during training by one number, so that their mean norm is √d_in: the
same L1 coefficient and learning rate then suit any model and layer. The scale is folded back into
the SAE's biases when training ends, so the trained SAE reads raw activations.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from course_utils.data import chunk_tokens, stdlib_corpus
from course_utils.errors import CourseError
from course_utils.sae import SparseAutoencoder, TopKSAE, resample_dead_latents


# ----------------------------------------------------------------------------- activations

def corpus_rows(model, n_tokens: int, split: str = "train", seq_len: int = 256, seed: int = 0) -> torch.Tensor:
    """Rows `[BOS] + seq_len − 1 tokens` of standard-library source, from files taken in a seeded
    random order until about `n_tokens` tokens. Returns [n_rows, seq_len] (long)."""
    seq_len = min(seq_len, model.cfg.n_ctx)
    texts = stdlib_corpus(split).texts
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    ids: list[int] = []
    for i in order:
        ids += model.tokenizer(texts[i], add_special_tokens=False)["input_ids"] + [model.tokenizer.eos_token_id]
        if len(ids) >= n_tokens * seq_len / (seq_len - 1):
            break
    return chunk_tokens(torch.tensor(ids), seq_len, bos_id=model.bos_token_id)


class _Enough(Exception):
    """Raised by a hook to end a forward pass once the activation we want has been read."""


@torch.no_grad()
def collect_activations(model, hook_name: str, tokens: torch.Tensor, batch_size: int = 32,
                        dtype: torch.dtype = torch.float16, skip_bos: bool = True,
                        progress: bool = True) -> torch.Tensor:
    """The activations at `hook_name` for every token of `tokens` [rows, seq], as one tensor
    [rows · (seq − 1), d] (or [rows · seq, d] with skip_bos=False) in `dtype`, on the model's device.

    Memory is bounded and known in advance: the result is allocated once (rows · seq · d · 2 bytes in
    float16), and each forward pass stops at the hook, so later layers cost nothing."""
    first = 1 if skip_bos else 0
    n_rows, seq = tokens.shape
    out, filled = None, 0

    def grab(activation: torch.Tensor, hook) -> None:
        nonlocal out, filled
        acts = activation[:, first:].reshape(-1, activation.shape[-1])                  # [batch · pos, d]
        if out is None:
            out = torch.empty(n_rows * (seq - first), acts.shape[-1], dtype=dtype, device=acts.device)
        out[filled:filled + len(acts)] = acts.to(dtype)
        filled += len(acts)
        raise _Enough

    for i in tqdm(range(0, n_rows, batch_size), desc=f"collecting {hook_name}", disable=not progress,
                  mininterval=0.5):
        try:
            model.run_with_hooks(tokens[i:i + batch_size], fwd_hooks=[(hook_name, grab)], return_type=None)
        except _Enough:
            pass
    return out


# ----------------------------------------------------------------------------- training

def input_scale(activations: torch.Tensor, n_sample: int = 20_000) -> float:
    """The number that brings the activations' mean norm to √d_in."""
    sample = activations[:n_sample].float()
    return math.sqrt(activations.shape[-1]) / sample.norm(dim=-1).mean().item()


@torch.enable_grad()
def train_sae(sae: SparseAutoencoder, activations: torch.Tensor, n_tokens: int, batch_size: int = 2048,
              lr: float = 2e-3, l1_warmup: float = 0.05, dead_after: int = 100_000, resample_every: int = 0,
              log_every: int = 10, seed: int = 0, progress: bool = True) -> dict[str, list[float]]:
    """Train `sae` (in place) on `n_tokens` tokens drawn from `activations` [N, d_in], in batches.

    Adam; the learning rate decays linearly to 0 over the last 20% of steps. For a ReLU SAE the L1
    coefficient rises from 0 over the first `l1_warmup` of steps (fewer latents die early on). A latent
    that has not fired for `dead_after` tokens counts as dead: a TopK SAE with aux_k gives those the
    auxiliary loss; with `resample_every` > 0 they are resampled every that many steps (see
    `resample_dead_latents_`). Returns the named losses, L0 and dead fraction every `log_every` steps.
    """
    device = sae.W_dec.device
    n_steps = max(1, n_tokens // batch_size)
    scale = input_scale(activations)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_dec.copy_(activations[:20_000].float().mean(0).to(device) * scale)        # start at the data's centre
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    decay_from = int(0.8 * n_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (n_steps - s) / max(1, n_steps - decay_from)))
    since_fired = torch.zeros(sae.cfg.d_sae, device=device)                            # tokens since each latent fired
    history: dict[str, list[float]] = {"step": [], "l0": [], "dead_fraction": []}

    for step in tqdm(range(n_steps), desc=f"training {type(sae).__name__}", disable=not progress, mininterval=0.5):
        rows = torch.randint(0, len(activations), (batch_size,), generator=gen)
        x = activations[rows.to(activations.device)].to(device, torch.float32) * scale  # [batch, d_in]
        dead = since_fired > dead_after
        if isinstance(sae, TopKSAE):
            losses, f = sae.losses(x, dead=dead)
        else:                                            # the L1 penalty rises from 0 over the warm-up
            ramp = min(1.0, step / (l1_warmup * n_steps)) if l1_warmup > 0 else 1.0
            losses, f = sae.losses(x, l1_coeff=ramp * sae.cfg.l1_coeff)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        schedule.step()
        sae.normalize_decoder_()
        fired = (f > 0).detach()                                                        # [batch, d_sae]
        since_fired = torch.where(fired.any(0), 0.0, since_fired + batch_size)
        if resample_every and (step + 1) % resample_every == 0 and step < decay_from:
            revived = resample_dead_latents_(sae, x, since_fired > dead_after, optimizer)
            since_fired[revived] = 0
        if step % log_every == 0 or step == n_steps - 1:
            history["step"].append(step)
            history["l0"].append(fired.float().sum(-1).mean().item())
            history["dead_fraction"].append((since_fired > dead_after).float().mean().item())
            for name, value in losses.items():
                history.setdefault(name, []).append(value.item())
    sae.fold_input_scale_(scale)
    return history


@torch.no_grad()
def resample_dead_latents_(sae: SparseAutoencoder, x: torch.Tensor, dead: torch.Tensor,
                           optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
    """Resample the dead latents of `sae` in place (see `sae.resample_dead_latents`) from the batch
    x [batch, d_in] (at most one latent per input), and clear the optimizer's memory of them.
    Returns which latents were resampled, [d_sae] bool."""
    n_dead = min(int(dead.sum()), len(x))
    dead = dead & (dead.cumsum(0) <= n_dead)                                          # at most one per input
    new = resample_dead_latents(x, sae(x)[0], dead, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    for name, value in new.items():
        getattr(sae, name).copy_(value)
    if optimizer is not None:
        for p, columns in ((sae.W_dec, False), (sae.W_enc, True), (sae.b_enc, False)):
            for moment in optimizer.state.get(p, {}).values():
                if isinstance(moment, torch.Tensor) and moment.shape == p.shape:
                    if columns:
                        moment[:, dead] = 0.0
                    else:
                        moment[dead] = 0.0
    return dead


# ----------------------------------------------------------------------------- metrics

def l0_and_dead(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L0, the mean number of active latents per token, and the fraction of latents active on no
    token. f [tokens, d_sae] -> (a number, a number), as 0-dim float tensors."""
    active = f > 0
    return active.sum(-1).float().mean(), (~active.any(0)).float().mean()



def fraction_variance_explained(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the mean over the batch. x, x_hat [batch, d] -> a number."""
    return 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


@torch.no_grad()
def evaluate(sae: SparseAutoencoder, activations: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """L0 (latents active per token), FVE, and the fraction of latents that never fire on these
    activations [N, d_in] (dead), with each latent's firing frequency [d_sae]."""
    device = sae.W_dec.device
    l0, fires, err, total = 0.0, torch.zeros(sae.cfg.d_sae, device=device), 0.0, 0.0
    mean = activations.float().mean(0).to(device)
    for i in range(0, len(activations), batch_size):
        x = activations[i:i + batch_size].to(device, torch.float32)
        x_hat, f = sae(x)
        l0 += (f > 0).float().sum().item()
        fires += (f > 0).float().sum(0)
        err += ((x - x_hat) ** 2).sum().item()
        total += ((x - mean) ** 2).sum().item()
    n = len(activations)
    return {"l0": l0 / n, "fve": 1 - err / total, "dead_fraction": (fires == 0).float().mean().item(),
            "frequency": (fires / n).cpu()}


def spliced_loss(model, tokens: torch.Tensor, hook_name: str,
                 replace: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The model's mean next-token loss with the activation at `hook_name` replaced by
    `replace(activation)` at every position but the first (the start token is left alone)."""
    def splice(activation: torch.Tensor, hook) -> torch.Tensor:
        out = activation.clone()
        out[:, 1:] = replace(activation[:, 1:]).to(activation.dtype)
        return out
    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, splice)], return_type="loss")


def ce_loss_recovered(clean: float, spliced: float, ablated: float) -> float:
    """(L_ablated − L_spliced) / (L_ablated − L_clean): 1 when splicing the SAE in costs nothing,
    0 when it is as bad as the ablation."""
    if ablated - clean <= 0:
        raise CourseError("The ablation does not raise the loss, so 'recovered' has no meaning; "
                          "ablate a point the model uses, or compare with a different ablation.")
    return (ablated - spliced) / (ablated - clean)


@torch.no_grad()
def splice_losses(model, sae: SparseAutoencoder, tokens: torch.Tensor, hook_name: str, mean: torch.Tensor,
                  batch_size: int = 16) -> dict[str, float]:
    """Mean next-token loss over `tokens` [rows, seq]: clean, with the SAE spliced in, with the
    activation zeroed and with it replaced by `mean` [d]."""
    device = sae.W_dec.device
    replacements = {"sae": lambda a: sae(a.float())[0], "zero": torch.zeros_like,
                    "mean": lambda a: mean.to(a.device, a.dtype).expand_as(a)}
    totals = dict.fromkeys(["clean", *replacements], 0.0)
    batches = range(0, len(tokens), batch_size)
    for i in batches:
        rows = tokens[i:i + batch_size].to(device)
        totals["clean"] += model(rows, return_type="loss").item()
        for name, replace in replacements.items():
            totals[name] += spliced_loss(model, rows, hook_name, replace).item()
    return {name: total / len(batches) for name, total in totals.items()}
