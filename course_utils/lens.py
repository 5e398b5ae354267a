"""Reading the residual stream: the logit lens, the residual stream as a sum of components, and
direct logit attribution (DLA).

The residual stream at any point is a plain sum: embeddings, plus each attention head's output
(z @ W_O), plus each attention layer's output bias, plus each MLP's output. `decompose_resid`
returns those pieces; they add back to the cached residual exactly.

The final norm is *not* linear: LayerNorm subtracts the mean and divides by a scale computed from
the whole residual. DLA freezes that scale at its value on the full residual, which makes every
piece's contribution linear, so the contributions (plus one constant for the norm's bias and the
unembedding bias) add up to the logit exactly.
"""

from __future__ import annotations

import torch

from course_utils.cache import ActivationCache
from course_utils.hooked_model import HookedModel


def apply_ln_final(model: HookedModel, resid: torch.Tensor) -> torch.Tensor:
    """The model's own final norm, applied to any residual-stream tensor [..., d_model]."""
    return model.ln_final(resid)


def logit_lens(model: HookedModel, resid: torch.Tensor) -> torch.Tensor:
    """Read logits off an intermediate residual stream: unembed(ln_final(resid)). [..., d_vocab]"""
    return apply_ln_final(model, resid) @ model.W_U + model.b_U


def norm_scale(model: HookedModel, resid: torch.Tensor) -> torch.Tensor:
    """The final norm's divisor for `resid` [..., d_model] -> [..., 1]."""
    ln, x = model.ln_final, resid.float()
    eps = getattr(ln, "eps", None) or getattr(ln, "variance_epsilon")
    if model.family.norm == "layernorm":
        return (x.var(-1, keepdim=True, unbiased=False) + eps).sqrt()
    return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def decomposition_hooks(model: HookedModel, layer: int | None = None) -> list[str]:
    """The hook names `decompose_resid` needs; pass them to `run_with_cache` as `names_filter`."""
    n = model.cfg.n_layers if layer is None else layer
    names = ["hook_embed"] + (["hook_pos_embed"] if model.family.pos_embed else [])
    for l in range(n):
        names += [f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_mlp_out"]
    return names


def decompose_resid(model: HookedModel, cache: ActivationCache,
                    layer: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Split the residual stream entering `layer` (None: after the last layer) into its pieces.

    Returns components [n_components, batch, pos, d_model] and their labels: "embed", "pos_embed",
    "L{l}H{h}" for each head, "L{l} attn bias", "L{l} mlp". They sum to `resid_pre` of `layer`.
    """
    n = model.cfg.n_layers if layer is None else layer
    parts, labels = [cache["embed"]], ["embed"]
    if model.family.pos_embed:
        parts.append(cache["pos_embed"].expand_as(cache["embed"]))
        labels.append("pos_embed")
    W_O, b_O = model.W_O, model.b_O  # [n_layers, head, d_head, d_model], [n_layers, d_model]
    for l in range(n):
        heads = torch.einsum("bphd,hdm->hbpm", cache["z", l], W_O[l].to(cache["z", l].dtype))  # [head, b, p, d_model]
        parts += list(heads) + [b_O[l].to(heads.dtype).expand_as(heads[0]), cache["mlp_out", l]]
        labels += [f"L{l}H{h}" for h in range(model.cfg.n_heads)] + [f"L{l} attn bias", f"L{l} mlp"]
    return torch.stack(parts), labels


def direct_logit_attribution(model: HookedModel, components: torch.Tensor, final_resid: torch.Tensor,
                             target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each component's direct contribution to the logit of `target`, through the frozen final norm.

    components [n, batch, pos, d_model]; final_resid [batch, pos, d_model] (the residual the norm
    sees, which sets its scale); target [batch, pos] token ids. Returns (dla [n, batch, pos],
    constant [batch, pos]), where the constant is the norm's bias and the unembedding's bias.
    When the components sum to `final_resid`, dla.sum(0) + constant equals the model's logit.
    """
    ln = model.ln_final
    comps = components.float()
    if model.family.norm == "layernorm":
        comps = comps - comps.mean(-1, keepdim=True)
    scaled = comps / norm_scale(model, final_resid) * ln.weight.float()  # [n, b, p, d_model]
    directions = model.W_U.T[target].float()  # [b, p, d_model]
    dla = (scaled * directions).sum(-1)  # [n, b, p]
    constant = model.b_U[target].float()
    if getattr(ln, "bias", None) is not None:
        constant = constant + (directions * ln.bias.float()).sum(-1)
    return dla, constant
