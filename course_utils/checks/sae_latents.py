"""Checks for notebook 06 · Sparse autoencoders, sections 6.4-6.6: scoring latents against token
labels (F1), a latent's logit effects, ablating one latent, and resampling dead latents.

The references are those of `course_utils.sae_analysis` and `course_utils.sae`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from course_utils import sae, sae_analysis
from course_utils.checks import Case, run_check
from course_utils.checks.sae_building import _named, _rng, _weights


# ----------------------------------------------------------------------------- 6.4 reading latents

def check_f1_scores(fn: Callable) -> Callable:
    """F1 [n_labels, units] of each unit's firing as a detector of each label, 0 where 0/0."""
    g = _rng(9)
    fires = torch.rand(60, 7, generator=g) < 0.3
    labels = torch.rand(60, 3, generator=g) < 0.25
    fires[:, 0] = labels[:, 1]                                                          # a perfect detector
    fires[:, 1] = False                                                                 # a unit that never fires
    empty = labels.clone()
    empty[:, 2] = False                                                                 # a label that never occurs
    cases = [Case((fires, labels), label="random, a perfect unit, a silent unit"),
             Case((fires, empty), label="a label that never occurs: F1 0, not NaN"),
             Case((torch.ones(5, 2, dtype=torch.bool), torch.ones(5, 1, dtype=torch.bool)), label="all true: 1")]

    def f1_from(tp, fp, fn_):
        return 2 * tp / (2 * tp + fp + fn_).clamp_min(1)

    def counts(f, y):
        tp = y.T.float() @ f.float()
        return tp, f.sum(0).float() - tp, y.sum(0).float()[:, None] - tp

    def no_nan(case: Case, got: Any) -> str | None:
        if isinstance(got, torch.Tensor) and got.is_floating_point() and got.isnan().any():
            return "F1 is NaN where a unit never fires and the label never occurs (0/0): make those 0"
        return None

    named = _named(sae_analysis.f1_scores, {
        "that is the precision TP / (TP + FP); F1 is 2 TP / (2 TP + FP + FN)":
            lambda f, y: (lambda tp, fp, fn_: tp / (tp + fp).clamp_min(1))(*counts(f, y)),
        "that is the recall TP / (TP + FN); F1 is 2 TP / (2 TP + FP + FN)":
            lambda f, y: (lambda tp, fp, fn_: tp / (tp + fn_).clamp_min(1))(*counts(f, y)),
        "return [n_labels, units]: one row per label": lambda f, y: f1_from(*counts(f, y)).T,
    })
    return run_check("f1_scores", fn, sae_analysis.f1_scores, cases, properties=[no_nan, named],
                     dims=("label", "unit"))


def check_logit_effects(fn: Callable, model) -> Callable:
    """A direction's direct effect on the logits through the final norm (centred, times its weight)."""
    g = _rng(10)
    d = model.cfg.d_model
    dtype = model.W_U.dtype
    cases = [Case((model, torch.randn(d, generator=g).to(model.device, dtype)), label="a random direction"),
             Case((model, (torch.randn(d, generator=g) + 3).to(model.device, dtype)), label="far from centred"),
             Case((model, model.W_E[model.bos_token_id].detach().clone()), label="an embedding")]
    layer_norm = model.cfg.normalization_type == "LN"
    named = _named(sae_analysis.logit_effects, {
        "LayerNorm subtracts the mean first: centre the direction before the norm's weight":
            lambda m, v: (v * m.ln_final.weight) @ m.W_U,
        "multiply by the final norm's weight (model.ln_final.weight) before unembedding":
            lambda m, v: (v - v.mean() if layer_norm else v) @ m.W_U,
        "the norm's bias adds the same to every direction: leave it out (and centre, and weight)":
            lambda m, v: ((v - v.mean() if layer_norm else v) * m.ln_final.weight + m.ln_final.bias) @ m.W_U,
    })
    return run_check("logit_effects", fn, sae_analysis.logit_effects, cases, properties=[named], atol=1e-4)


# ----------------------------------------------------------------------------- 6.5 using latents

def _check_sae(model, seed: int = 11) -> sae.TopKSAE:
    """A random TopK SAE for `model`'s residual stream, decoder rows deliberately not at unit norm."""
    d = model.cfg.d_model
    s = sae.TopKSAE(sae.TopKSAEConfig(d_in=d, d_sae=4 * d, k=8, seed=seed))
    with torch.no_grad():
        s.W_dec.mul_(1 + torch.rand(4 * d, 1, generator=_rng(seed)))
        s.b_enc.fill_(0.1)
    return s.to(model.device)


def check_ablated_losses(fn: Callable, model) -> Callable:
    """Per-token loss with one latent's contribution f_i · d_i removed from the activation (error term kept)."""
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 20), generator=_rng(12))
    tokens[:, 0] = model.bos_token_id
    tokens = tokens.to(model.device)
    check_sae = _check_sae(model)
    name = f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[name])
        f = check_sae.encode(cache[name].float())                                       # [batch, pos, d_sae]
    fires, at_start = (f[:, 1:] > 0).sum((0, 1)), (f[:, 0] > 0).any(0)
    busy = int((fires * at_start).argmax())                                             # busy, and on at the start token
    rare = int(torch.where(fires > 0, fires, fires.max() + 1).argmin())
    cases = [Case((model, tokens, name, check_sae, busy), label=f"latent {busy}, active on many tokens"),
             Case((model, tokens, "blocks.0.hook_resid_pre", check_sae, rare), label=f"latent {rare}, rarely active")]

    def run(hook_fn):
        def wrong(m, t, n, s, i):
            return m.run_with_hooks(t, fwd_hooks=[(n, lambda a, hook: hook_fn(a, s, i))], return_type="loss",
                                    loss_per_token=True)
        return wrong

    def contribution(a, s, i, raw=False):
        f = s.encode(a.float())[..., i:i + 1]
        return (f * (s.W_dec[i] if raw else s.directions[i])).to(a.dtype)

    def rest(a, s, i, change):
        out = a.clone()
        out[:, 1:] = change(a[:, 1:], s, i)
        return out

    named = _named(sae_analysis.ablated_losses, {
        "keep the SAE's error: subtract the latent's contribution from the activation itself, not from the "
        "reconstruction": run(lambda a, s, i: rest(a, s, i, lambda x, s, i: (s(x.float())[0] - contribution(x, s, i)).to(x.dtype))),
        "use the latent's unit direction (sae.directions[i]); the rows of sae.W_dec need not have unit norm":
            run(lambda a, s, i: rest(a, s, i, lambda x, s, i: x - contribution(x, s, i, raw=True))),
        "leave the start token (position 0) alone": run(lambda a, s, i: a - contribution(a, s, i)),
    })
    return run_check("ablated_losses", fn, sae_analysis.ablated_losses, cases, properties=[named],
                     dims=("batch", "position"))


# ----------------------------------------------------------------------------- 6.6 pathologies

def check_resample_dead_latents(fn: Callable) -> Callable:
    """Dead latents take the directions of the worst-reconstructed inputs (measured from b_dec)."""
    def case(seed: int, dead_idx: list[int], label: str, d_sae: int = 8) -> Case:
        g = _rng(seed)
        w = _weights(seed, d_in=5, d_sae=d_sae, batch=12, grad=False)
        x_hat = w["x"] + torch.randn(12, 5, generator=g) * torch.rand(12, 1, generator=g)   # uneven errors
        dead = torch.zeros(d_sae, dtype=torch.bool)
        dead[dead_idx] = True
        return Case((w["x"], x_hat, dead, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"]), label=label)

    cases = [case(0, [1, 4, 6], "three dead latents"), case(1, [], "none dead: nothing changes"),
             case(2, [0, 1, 2, 3, 4, 5, 7], "all but one dead")]

    def variant(**change):
        def wrong(x, x_hat, dead, W_enc, b_enc, W_dec, b_dec):
            n = int(dead.sum())
            err = ((x - x_hat) ** 2).sum(-1)
            pick = err.topk(n, largest=change.get("largest", True)).indices
            u = x[pick] - (0 if change.get("raw") else b_dec)
            u = u if change.get("no_unit") else sae.unit_rows(u)
            norms = W_enc[:, ~dead].norm(dim=0)
            W_enc, b_enc, W_dec = W_enc.clone(), b_enc.clone(), W_dec.clone()
            W_dec[dead], W_enc[:, dead], b_enc[dead] = u, 0.2 * norms.mean() * u.T, 0.0
            return W_dec
        return wrong

    named = _named(sae.resample_dead_latents, {
        "pick the inputs reconstructed *worst* (largest squared error), not best": variant(largest=False),
        "measure the new directions from b_dec: use x − b_dec": variant(raw=True),
        "scale each new decoder direction to unit norm": variant(no_unit=True),
    }, pick=lambda got: got.get("W_dec") if isinstance(got, dict) else None)
    def keys(case: Case, got: Any) -> str | None:
        if not isinstance(got, dict) or set(got) != {"W_enc", "b_enc", "W_dec"}:
            return "return a dict with keys 'W_enc', 'b_enc' and 'W_dec' (new tensors)"
        return None

    return run_check("resample_dead_latents", fn, sae.resample_dead_latents, cases,
                     properties=[keys, named])
