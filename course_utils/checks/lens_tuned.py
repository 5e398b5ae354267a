"""Checks for notebook 03, sections 3.4-3.6: the lens as a running sum of direct logit attributions,
the tuned lens's loss, and patching one position's residual; and the references they compare with.

The tuned lens's loss is `course_utils.tuned_lens.tuned_lens_loss`, the loss that trains the lens the
model card quotes. As in `lens_reading`, a mistake (the scale not rescaled, KL the wrong way round, a
sum where a mean belongs, every position patched) is named only when the answer equals that mistake
and no other; otherwise the check says what differed and where.
"""

from __future__ import annotations

from typing import Callable

import torch

from course_utils import lens, tuned_lens
from course_utils.checks import Case, run_check
from course_utils.checks.lens_reading import kl_from_final, logit_lens, random_tokens, residuals
from course_utils.checks.mistakes import recognise, rng
from course_utils.hooked_model import HookedModel

# ----------------------------------------------------------------------------- references

tuned_lens_loss = tuned_lens.tuned_lens_loss      # (model, resid, weight, bias, final_logits) -> scalar


def lens_logit_from_dla(model: HookedModel, cache, tokens: torch.Tensor) -> torch.Tensor:
    """The logit lens's logit for `tokens` [batch, pos] at every read point, [n_layers + 1, batch, pos],
    from the direct logit attributions of the stream's parts: their running sum, rescaled from the final
    norm's scale to the read point's own, plus the part of the logit that no component writes."""
    parts, labels = cache.decompose_resid(return_labels=True)             # embeddings, then each layer's attn, mlp
    first = len(labels) - 2 * model.cfg.n_layers - 1                      # the last embedding part
    ends = [first + 2 * layer for layer in range(model.cfg.n_layers + 1)]
    running_resid = parts.cumsum(0)[ends]                                 # [n_points, batch, pos, d_model]
    running_dla = cache.logit_attrs(parts, tokens).cumsum(0)[ends]        # [n_points, batch, pos]
    rescale = cache["ln_final.hook_scale"][..., 0] / lens.norm_scale(model, running_resid)[..., 0]
    return running_dla * rescale + lens.logit_constant(model, tokens)


def patch_resid(model: HookedModel, tokens: torch.Tensor, hook_name: str, pos: int,
                new_resid: torch.Tensor) -> torch.Tensor:
    """Logits [batch, pos, d_vocab] of `tokens` run with the residual stream at `hook_name`, position
    `pos` (only) replaced by `new_resid` [batch, d_model]."""
    def patch(resid: torch.Tensor, hook) -> torch.Tensor:
        resid[:, pos] = new_resid
        return resid
    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, patch)])


# ----------------------------------------------------------------------------- 3.4 the lens as running DLA

def check_lens_logit_from_dla(fn: Callable, model: HookedModel) -> Callable:
    """Rebuilt from a cache that holds the parts of the stream and the final scale, not the stream itself."""
    n = model.cfg.n_layers
    names = ["hook_embed", "hook_pos_embed", "ln_final.hook_scale"] + [
        f"blocks.{l}.hook_{kind}_out" for l in range(n) for kind in ("attn", "mlp")]
    cases = []
    for seed, (batch, pos) in enumerate([(1, 7), (2, 5)]):
        tokens = random_tokens(model, batch, pos, 10 + seed)
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
        for label, ids in (("the final top-1 tokens", logits.argmax(-1)),
                           ("random tokens", torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=rng(seed)))):
            cases.append(Case((model, cache, ids), label=f"{batch} x {pos} tokens, {label}"))
    def direct(cache, ids: torch.Tensor) -> torch.Tensor:
        parts, labels = cache.decompose_resid(return_labels=True)
        ends = [len(labels) - 2 * n - 1 + 2 * l for l in range(n + 1)]
        return cache.logit_attrs(parts, ids).cumsum(0)[ends]
    mistakes = {
        "the running DLA uses the final norm's scale; the logit lens divides each read point by its own: "
        "multiply by scale_final / scale_at_that_point":
            lambda m, cache, ids: direct(cache, ids) + lens.logit_constant(model, ids),
        "add the part of the logit no component writes, lens.logit_constant(model, tokens)":
            lambda m, cache, ids: lens_logit_from_dla(model, cache, ids) - lens.logit_constant(model, ids),
    }
    return run_check("lens_logit_from_dla", fn, lens_logit_from_dla, cases,
                     properties=[recognise(mistakes, lens_logit_from_dla, atol=1e-3)], atol=1e-3, dims=("point", "batch", "pos"))


# ----------------------------------------------------------------------------- 3.5 the tuned lens

def check_tuned_lens_loss(fn: Callable, model: HookedModel) -> Callable:
    """KL(final ‖ tuned lens), averaged over tokens and layers, with gradients to weight and bias."""
    n, d = model.cfg.n_layers, model.cfg.d_model
    cases = []
    for seed, tokens in enumerate((8, 5)):
        stack = residuals(model, 1, tokens + 1, 20 + seed)[:, 0, 1:]            # [n + 1, tokens, d_model]
        g = rng(seed)
        weight = (torch.eye(d) + 0.05 * torch.randn(n, d, d, generator=g)).requires_grad_()
        bias = (0.1 * torch.randn(n, d, generator=g)).requires_grad_()
        final = logit_lens(model, stack[n]).detach()
        cases.append(Case((model, stack[:n], weight, bias, final), label=f"{tokens} tokens, perturbed translators"))
    eye = torch.eye(d).repeat(n, 1, 1)
    cases.append(Case((model, cases[0].args[1], eye.requires_grad_(), torch.zeros(n, d, requires_grad=True),
                       cases[0].args[4]),
                      label="identity translators: the logit lens's KL"))
    def kl(resid, weight, bias, final, reverse: bool = False, norm: bool = True) -> torch.Tensor:
        moved = tuned_lens.translate(resid, weight, bias)
        lens_logits = logit_lens(model, moved) if norm else moved @ model.W_U + model.b_U
        return kl_from_final(final, lens_logits) if reverse else kl_from_final(lens_logits, final)
    mistakes = {"that is KL(lens ‖ final): the tuned lens is trained on KL(final ‖ lens)":
                lambda m, *a: kl(*a, reverse=True).mean(),
                "the translated residual goes through the final norm before the unembedding":
                lambda m, *a: kl(*a, norm=False).mean(),
                "average over the layers too, not sum": lambda m, *a: kl(*a).mean(-1).sum(),
                "average over the tokens, not sum": lambda m, *a: kl(*a).sum(-1).mean()}
    return run_check("tuned_lens_loss", fn, tuned_lens_loss, cases, properties=[recognise(mistakes, tuned_lens_loss, atol=1e-4)],
                     atol=1e-4, grad=True)


# ----------------------------------------------------------------------------- 3.6 patching

def check_patch_resid(fn: Callable, model: HookedModel) -> Callable:
    n = model.cfg.n_layers
    tokens = random_tokens(model, 2, 7, 30)
    new = 5 * torch.randn(2, model.cfg.d_model, generator=rng(31))
    names = tuned_lens.read_point_names(model)
    cases = [Case((model, tokens, names[0], 3, new), label="before layer 0, position 3"),
             Case((model, tokens, names[n - 1], 6, new), label=f"before layer {n - 1}, the last position"),
             Case((model, tokens, names[n], 1, new), label="after the last layer, position 1"),
             Case((model, tokens[:1], names[1 % n], 0, new[:1]), label="one row, position 0")]
    mistakes = {"only position `pos` is patched; you patched every position from `pos` on":
                lambda m, tokens, name, pos, new: m.run_with_hooks(tokens, fwd_hooks=[(name, _fill_onwards(pos, new))])}
    return run_check("patch_resid", fn, patch_resid, cases, properties=[recognise(mistakes, patch_resid, atol=1e-4)], atol=1e-4,
                     dims=("batch", "pos", "token"))


def _fill_onwards(pos: int, new: torch.Tensor):
    """A wrong patch: every position from `pos` on."""
    def hook(resid: torch.Tensor, hook) -> torch.Tensor:
        resid[:, pos:] = new[:, None]
        return resid
    return hook
