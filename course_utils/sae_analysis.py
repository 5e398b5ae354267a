"""Reading a sparse autoencoder's latents: scoring them against exact token labels, their top
examples, their direct effect on the logits, what the model loses without them, and latents that
split in a larger SAE.

    f1 = f1_scores(acts > 0, windows.label_mask("comment").flatten())   # [units]: F1 of "fires" vs the label
    best_f1(acts, mask)                                                  # (best F1 over units and thresholds, unit)
    logit_effects(model, sae.directions[i])                             # [d_vocab]: what latent i pushes up
    top_examples_html(latent_acts, texts)                               # its top-activating tokens in context
"""

from __future__ import annotations

import html

import torch

from course_utils.sae import SparseAutoencoder


# ----------------------------------------------------------------------------- scoring against labels

def f1_scores(fires: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """F1 of each unit's firing as a detector of each label: 2 TP / (2 TP + FP + FN), 0 where that is 0/0.
    fires [tokens, units] bool, labels [tokens, n_labels] bool -> [n_labels, units] float32."""
    tp = labels.T.float() @ fires.float()                                        # [n_labels, units] both true
    fp = fires.sum(0).float() - tp                                               # unit fires, label absent
    fn = labels.sum(0).float()[:, None] - tp                                     # label present, unit silent
    return 2 * tp / (2 * tp + fp + fn).clamp_min(1)


def best_f1(acts: torch.Tensor, labels: torch.Tensor, n_thresholds: int = 10,
            f1=f1_scores) -> tuple[torch.Tensor, torch.Tensor]:
    """For each label, the best F1 of any single unit at any of the thresholds t · (the unit's max),
    t = 0, 1/n, ..., (n−1)/n: every unit gets the same chance, whatever its scale.
    acts [tokens, units], labels [tokens, n_labels] bool -> (best F1 [n_labels], its unit [n_labels])."""
    acts = acts.float()
    top = acts.max(0).values.clamp_min(0)                                        # [units]
    best = torch.zeros(labels.shape[1], acts.shape[1])                           # [n_labels, units]
    for t in torch.arange(n_thresholds) / n_thresholds:
        best = torch.maximum(best, f1(acts > t * top, labels).cpu())
    values, units = best.max(-1)
    return values, units


def pure_coverage(acts: torch.Tensor, labels: torch.Tensor, min_precision: float = 0.9, min_count: int = 10,
                  n_thresholds: int = 10) -> torch.Tensor:
    """How much of each label the *pure* units cover together: a unit is pure for a label when, at some
    threshold t · (its max), it fires at least `min_count` times and at least `min_precision` of those
    tokens carry the label. Returns, per label, the fraction of its tokens on which some pure unit fires.
    acts [tokens, units], labels [tokens, n_labels] bool -> [n_labels]."""
    acts = acts.float()
    top = acts.max(0).values.clamp_min(0)
    covered = torch.zeros_like(labels)                                            # [tokens, n_labels]
    for t in torch.arange(n_thresholds) / n_thresholds:
        fires = acts > t * top                                                     # [tokens, units]
        count = fires.sum(0).float()
        precision = (labels.T.float() @ fires.float()) / count.clamp_min(1)        # [n_labels, units]
        pure = (precision >= min_precision) & (count >= min_count)
        covered |= (fires.float() @ pure.T.float()) > 0                            # [tokens, n_labels]
    return (covered & labels).sum(0).float() / labels.sum(0).clamp_min(1)


# ----------------------------------------------------------------------------- what a latent does

def logit_effects(model, direction: torch.Tensor) -> torch.Tensor:
    """A residual-stream direction's direct effect on the logits, read through the final norm as a
    linear map: centre it (LayerNorm does; RMSNorm does not), multiply by the norm's weight, unembed.
    The norm's division by the residual's scale is left out. [d_model] -> [d_vocab]."""
    if model.cfg.normalization_type == "LN":
        direction = direction - direction.mean(-1, keepdim=True)
    return (direction * model.ln_final.weight) @ model.W_U


def ablated_losses(model, tokens: torch.Tensor, hook_name: str, sae: SparseAutoencoder, latent: int) -> torch.Tensor:
    """Per-token loss [batch, pos − 1] with one latent's contribution f_i · d_i taken out of the activation
    at `hook_name` (every position but the first). The rest, the SAE's error included, stays."""
    def ablate(activation: torch.Tensor, hook) -> torch.Tensor:
        f = sae.encode(activation[:, 1:].float())[..., latent]                   # [batch, pos - 1]
        out = activation.clone()
        out[:, 1:] -= (f[..., None] * sae.directions[latent]).to(activation.dtype)
        return out
    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, ablate)], return_type="loss", loss_per_token=True)


def split_children(parent: torch.Tensor, children: torch.Tensor, min_cosine: float = 0.5) -> list[list[int]]:
    """For each parent direction [n_parent, d], the child directions [n_child, d] within `min_cosine`
    of it, most similar first: how a smaller SAE's latents map onto a larger one's."""
    from course_utils.sae import unit_rows
    cosines = unit_rows(parent) @ unit_rows(children).T                            # [n_parent, n_child]
    out = []
    for row in cosines:
        idx = torch.nonzero(row >= min_cosine).flatten()
        out.append(idx[row[idx].argsort(descending=True)].tolist())
    return out


# ----------------------------------------------------------------------------- showing examples

def top_examples(acts: torch.Tensor, n: int = 8) -> list[tuple[int, int]]:
    """(row, position) of the n highest values of acts [rows, pos], highest first."""
    flat = acts.flatten().float().topk(min(n, acts.numel())).indices
    return [(int(i) // acts.shape[1], int(i) % acts.shape[1]) for i in flat]


def top_examples_html(acts: torch.Tensor, texts: list[list[str]], n: int = 8, context: int = 12) -> str:
    """The n top-activating tokens of one unit, each with `context` tokens before it and 3 after,
    shaded by the unit's activation (the top token boxed). acts [rows, pos], texts[row][pos] a token's text."""
    peak = acts.max().clamp_min(1e-6).item()
    lines = []
    for row, pos in top_examples(acts, n):
        if acts[row, pos] <= 0:
            break
        spans = []
        for j in range(max(0, pos - context), min(acts.shape[1], pos + 4)):
            a = max(0.0, acts[row, j].item() / peak)
            text = html.escape(texts[row][j]).replace("\n", "⏎").replace(" ", "&nbsp;")
            box = "outline:1px solid #c00;" if j == pos else ""
            spans.append(f'<span style="background:rgba(255,140,0,{a:.2f});{box}">{text}</span>')
        lines.append(f'<div style="font-family:monospace;white-space:nowrap">{acts[row, pos]:.2f}&nbsp;&nbsp;'
                     + "".join(spans) + "</div>")
    return "".join(lines) or "<i>never fires here</i>"
