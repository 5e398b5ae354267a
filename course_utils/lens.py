"""Reading the residual stream: the logit lens, the residual stream as a sum of parts, and direct
logit attribution (DLA). The `ActivationCache` methods of the same names call these functions.

The residual stream at any point is a plain sum: embeddings, plus each attention head's output
(z @ W_O), plus each attention layer's output bias, plus each MLP's output. The decompositions here
return those pieces; they add back to the cached residual exactly.

A norm is *not* linear: LayerNorm subtracts the mean and divides by a scale computed from the whole
residual. `apply_ln_to_stack` freezes that scale at its value on the full residual (read from the
cache), which makes every piece's contribution linear, so the pieces' logit attributions add up to
the logit (less `logit_constant`, the part no piece writes).

One convention to know: `apply_ln_to_stack` also multiplies by the norm's weight, so its output can
be multiplied by this model's own `W_U` (or `W_Q`...). TransformerLens folds that weight into `W_U`
instead; the products are the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from course_utils.errors import CourseError
from course_utils.hook_points import norm_eps, norm_scale_of

if TYPE_CHECKING:
    from course_utils.cache import ActivationCache
    from course_utils.hooked_model import HookedModel


# ---- the logit lens ------------------------------------------------------------------------------------
def apply_ln_final(model: HookedModel, resid: torch.Tensor) -> torch.Tensor:
    """The model's own final norm, applied to any residual-stream tensor [..., d_model]."""
    return model.ln_final(resid)


def logit_lens(model: HookedModel, resid: torch.Tensor) -> torch.Tensor:
    """Read logits off an intermediate residual stream: unembed(ln_final(resid)). [..., d_vocab]"""
    return apply_ln_final(model, resid) @ model.W_U + model.b_U


def norm_scale(model: HookedModel, resid: torch.Tensor) -> torch.Tensor:
    """The final norm's divisor for `resid` [..., d_model] -> [..., 1] (float32)."""
    return norm_scale_of(resid, model.family.norm, norm_eps(model.ln_final))


def logit_constant(model: HookedModel, tokens: torch.Tensor) -> torch.Tensor:
    """The part of the logit of `tokens` that no residual component writes: the unembedding's bias
    plus the final norm's bias read through W_U. Shaped like `tokens`."""
    tokens = torch.as_tensor(tokens, device=model.device)
    constant = model.b_U[tokens].float()
    bias = getattr(model.ln_final, "bias", None)
    if bias is not None:
        constant = constant + model.W_U.T[tokens].float() @ bias.float()
    return constant


# ---- slicing as TransformerLens slices -------------------------------------------------------------------
def as_index(pos_slice) -> int | slice | torch.Tensor:
    """TransformerLens's slice argument as an index: None -> all; an int (drops the axis); a tuple
    (start, stop[, step]); a list, array or tensor of positions."""
    if pos_slice is None:
        return slice(None)
    if isinstance(pos_slice, (int, slice)):
        return pos_slice
    if isinstance(pos_slice, tuple):
        return slice(*pos_slice)
    if isinstance(pos_slice, (list, np.ndarray, torch.Tensor)):
        return torch.as_tensor(pos_slice, dtype=torch.long)
    raise CourseError(f"pos_slice must be None, an int, a tuple (start, stop), or a list of positions, not {pos_slice!r}.")


def _take(t: torch.Tensor, index, dim: int) -> torch.Tensor:
    where = [slice(None)] * t.dim()
    where[dim] = index.to(t.device) if isinstance(index, torch.Tensor) else index
    return t[tuple(where)]


def _final(model: HookedModel, layer: int | None) -> int:
    n = model.cfg.n_layers
    layer = n if layer is None or layer == -1 else layer
    if not 0 <= layer <= n:
        raise CourseError(f"layer must be between 0 and {n} (or -1/None for the whole stream), not {layer}.")
    return layer


# ---- norms applied to stacks of components ------------------------------------------------------------------
def _norm_at(model: HookedModel, layer: int, mlp_input: bool):
    """The norm that reads the residual stream entering `layer` (its attention, or its MLP), its cached
    scale's name, and the residual it reads (to compute the scale if that was not cached)."""
    if layer == model.cfg.n_layers:
        return model.ln_final, "ln_final.hook_scale", f"blocks.{layer - 1}.hook_resid_post"
    block = model.block(layer)
    if mlp_input:
        resid = "hook_resid_pre" if model.parallel_residual else "hook_resid_mid"
        return block.get_submodule(model.family.ln2), f"blocks.{layer}.ln2.hook_scale", f"blocks.{layer}.{resid}"
    return block.get_submodule(model.family.ln1), f"blocks.{layer}.ln1.hook_scale", f"blocks.{layer}.hook_resid_pre"


def _cached_scale(model: HookedModel, cache: ActivationCache, layer: int, mlp_input: bool) -> torch.Tensor:
    norm, scale_name, resid_name = _norm_at(model, layer, mlp_input)
    if scale_name in cache:
        return cache[scale_name]
    if resid_name in cache:
        return norm_scale_of(cache[resid_name], model.family.norm, norm_eps(norm))
    raise CourseError(f"This needs the norm's scale: cache {scale_name!r} (or {resid_name!r}), e.g. "
                      f"run_with_cache(tokens, names_filter=[{scale_name!r}, ...]).")


def apply_ln_to_stack(model: HookedModel, cache: ActivationCache, stack: torch.Tensor, layer: int | None = None,
                      mlp_input: bool = False, pos_slice=None, batch_slice=None, has_batch_dim: bool = True,
                      recompute_ln: bool = False) -> torch.Tensor:
    """Each component of `stack` [n, *batch_and_pos, d_model] as the norm entering `layer` (None or -1:
    the final norm) treats it: centred (LayerNorm), divided by the scale cached on the *whole* residual,
    times the norm's weight. No bias: it belongs to no component (see `logit_constant`).

    `pos_slice` and `batch_slice` say which positions and sequences `stack` holds (it is assumed sliced
    already; the cached scale is sliced to match). `recompute_ln` (final norm only): normalise each
    component by its own scale, as the logit lens does.
    """
    layer = _final(model, layer)
    norm, _, _ = _norm_at(model, layer, mlp_input)
    if has_batch_dim and batch_slice is not None:
        stack = _take(stack, as_index(batch_slice), 1)
    x = stack.float()
    if model.family.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    if recompute_ln and layer == model.cfg.n_layers:
        scale = norm_scale_of(stack, model.family.norm, norm_eps(norm))
    else:
        scale = _take(_cached_scale(model, cache, layer, mlp_input).float(), as_index(pos_slice), -2)
        if batch_slice is not None and cache.has_batch_dim:
            scale = _take(scale, as_index(batch_slice), 0)
    return (x / scale * norm.weight.float()).to(stack.dtype)


# ---- the residual stream as a stack ----------------------------------------------------------------------------
def accumulated_resid(model: HookedModel, cache: ActivationCache, layer: int | None = None, incl_mid: bool = False,
                      apply_ln: bool = False, pos_slice=None, mlp_input: bool = False) -> tuple[torch.Tensor, list[str]]:
    """The residual stream entering each layer up to `layer` (None: all, then the final stream):
    [n_points, *batch_and_pos, d_model], labels "0_pre", "0_mid", ..., "final_post".
    With `apply_ln` it is ready for W_U: the logit lens (each point normalised by its own scale when
    reading the final stream, by the cached scale of `layer`'s norm otherwise)."""
    layer = _final(model, layer)
    parts, labels = [], []
    for l in range(layer + 1):
        if l == model.cfg.n_layers:
            parts.append(cache["resid_post", l - 1])
            labels.append("final_post")
            continue
        parts.append(cache["resid_pre", l])
        labels.append(f"{l}_pre")
        if (incl_mid and l < layer) or (mlp_input and l == layer):
            parts.append(cache["resid_mid", l])
            labels.append(f"{l}_mid")
    stack = torch.stack([_take(p, as_index(pos_slice), -2) for p in parts])
    if apply_ln:
        stack = apply_ln_to_stack(model, cache, stack, layer, mlp_input, pos_slice,
                                  recompute_ln=layer == model.cfg.n_layers)
    return stack, labels


def decompose_resid(model: HookedModel, cache: ActivationCache, layer: int | None = None, mlp_input: bool = False,
                    mode: str = "all", apply_ln: bool = False, pos_slice=None,
                    incl_embeds: bool = True) -> tuple[torch.Tensor, list[str]]:
    """The residual stream entering `layer` split by layer: embeddings, then each layer's attention and
    MLP output ("0_attn_out", "0_mlp_out", ...). `mode`: "all", "attn" or "mlp". They sum to resid_pre."""
    if mode not in ("all", "attn", "mlp"):
        raise CourseError(f"mode must be 'all', 'attn' or 'mlp', not {mode!r}.")
    layer = _final(model, layer)
    parts, labels = [], []
    if incl_embeds:
        parts.append(cache["embed"])
        labels.append("embed")
        if "hook_pos_embed" in cache:
            parts.append(cache["pos_embed"])
            labels.append("pos_embed")
    for l in range(layer):
        for kind in ("attn", "mlp"):
            if mode in ("all", kind):
                parts.append(cache[f"{kind}_out", l])
                labels.append(f"{l}_{kind}_out")
    if mlp_input and mode != "mlp" and not model.parallel_residual:
        parts.append(cache["attn_out", layer])
        labels.append(f"{layer}_attn_out")
    stack = torch.stack([_take(p, as_index(pos_slice), -2) for p in parts])
    if apply_ln:
        stack = apply_ln_to_stack(model, cache, stack, layer, mlp_input, pos_slice)
    return stack, labels


def stack_head_results(model: HookedModel, cache: ActivationCache, layer: int = -1, pos_slice=None,
                       incl_remainder: bool = False, apply_ln: bool = False) -> tuple[torch.Tensor, list[str]]:
    """What each head of the layers before `layer` writes to the residual stream, z @ W_O:
    [layer * n_heads, *batch_and_pos, d_model], labels "L0H0", "L0H1", ... `incl_remainder` adds
    "remainder": everything else in the stream (embeddings, biases, MLPs)."""
    layer = _final(model, layer)
    W_O = model.W_O  # [n_layers, head, d_head, d_model]
    parts, labels = [], []
    for l in range(layer):
        z = _take(cache["z", l], as_index(pos_slice), -3)  # [*batch_and_pos, head, d_head]
        parts.append(torch.einsum("...hd,hdm->h...m", z, W_O[l].to(z.dtype)))
        labels += [f"L{l}H{h}" for h in range(model.cfg.n_heads)]
    like = _take(cache["embed"], as_index(pos_slice), -2)
    stack = torch.cat(parts) if parts else like.new_zeros((0, *like.shape))
    if incl_remainder:
        resid = _take(cache["resid_post", layer - 1], as_index(pos_slice), -2) if layer > 0 else like
        stack = torch.cat([stack, (resid - stack.sum(0))[None]])
        labels.append("remainder")
    if apply_ln:
        stack = apply_ln_to_stack(model, cache, stack, layer, pos_slice=pos_slice)
    return stack, labels


def full_resid_decomposition(model: HookedModel, cache: ActivationCache, layer: int | None = None,
                             mlp_input: bool = False, expand_neurons: bool = True, apply_ln: bool = False,
                             pos_slice=None) -> tuple[torch.Tensor, list[str]]:
    """The residual stream entering `layer` split as finely as it goes: every head ("L0H3"), every
    MLP ("0_mlp_out") or, with `expand_neurons`, every neuron ("L0N5"), "embed", "pos_embed", and
    "bias" (the attention output biases, plus the MLP output biases when neurons are expanded).
    The parts sum to the residual stream exactly."""
    layer = _final(model, layer)
    heads, labels = stack_head_results(model, cache, layer + (mlp_input and not model.parallel_residual), pos_slice)
    parts, bias = [heads], 0
    n_attn = layer + (mlp_input and not model.parallel_residual)
    for l in range(n_attn):
        bias = bias + model.b_O[l]
    for l in range(layer):
        if expand_neurons:
            post = _take(cache["post", l], as_index(pos_slice), -2)  # [*batch_and_pos, d_mlp]
            parts.append(torch.einsum("...n,nm->n...m", post, model.W_out[l].to(post.dtype)))
            labels += [f"L{l}N{n}" for n in range(model.cfg.d_mlp)]
            bias = bias + model.b_out[l]
        else:
            parts.append(_take(cache["mlp_out", l], as_index(pos_slice), -2)[None])
            labels.append(f"{l}_mlp_out")
    embed = _take(cache["embed"], as_index(pos_slice), -2)
    parts.append(embed[None])
    labels.append("embed")
    if "hook_pos_embed" in cache:
        parts.append(_take(cache["pos_embed"], as_index(pos_slice), -2)[None])
        labels.append("pos_embed")
    parts.append((torch.zeros_like(embed) + bias)[None])
    labels.append("bias")
    stack = torch.cat([p.to(embed.dtype) for p in parts])
    if apply_ln:
        stack = apply_ln_to_stack(model, cache, stack, layer, mlp_input, pos_slice)
    return stack, labels


# ---- direct logit attribution ----------------------------------------------------------------------------------------
def logit_attrs(model: HookedModel, cache: ActivationCache, stack: torch.Tensor, tokens, incorrect_tokens=None,
                pos_slice=None, batch_slice=None, has_batch_dim: bool = True) -> torch.Tensor:
    """Each component's direct contribution to the logit of `tokens` (or to the logit difference
    `tokens` minus `incorrect_tokens`), through the final norm with its scale frozen:
    stack [n, *batch_and_pos, d_model] -> [n, *batch_and_pos]."""
    directions = model.tokens_to_residual_directions(tokens)
    if incorrect_tokens is not None:
        wrong = model.tokens_to_residual_directions(incorrect_tokens)
        if wrong.shape != directions.shape:
            raise CourseError(f"tokens and incorrect_tokens must have the same shape, not "
                              f"{tuple(directions.shape[:-1])} and {tuple(wrong.shape[:-1])}.")
        directions = directions - wrong
    scaled = apply_ln_to_stack(model, cache, stack, None, False, pos_slice, batch_slice, has_batch_dim)
    return (scaled * directions.to(scaled.dtype)).sum(-1)


def decomposition_hooks(model: HookedModel, layer: int | None = None) -> list[str]:
    """The hook names the decompositions and DLA of the stream entering `layer` need; pass them to
    `run_with_cache` as `names_filter` to cache no more than that."""
    layer = _final(model, layer)
    names = ["hook_embed"] + (["hook_pos_embed"] if model.family.pos_embed else [])
    for l in range(layer):
        names += [f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_attn_out", f"blocks.{l}.mlp.hook_post",
                  f"blocks.{l}.hook_mlp_out", f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_resid_post"]
    return names + (["ln_final.hook_scale"] if layer == model.cfg.n_layers else [f"blocks.{layer}.ln1.hook_scale"])
