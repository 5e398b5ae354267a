"""Checks for notebook 04, sections 4.6-4.7: reading the induction circuit from the weights (the
effective embedding, the full OV circuit, the positional QK circuit, Q-, K- and V-composition) and
the one-layer attention-only model of skip-trigrams; and the references they compare with.

Every weight-reading answer here goes through the model's own norms, as the model does: a head
reads `ln1(resid)`, and logits are read through the final norm.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from course_utils import lens
from course_utils.checks import Case, run_check
from course_utils.checks.mistakes import expect_shape, per_key, recognise, rng
from course_utils.hooked_model import HookedModel

# ----------------------------------------------------------------------------- references


@torch.no_grad()
def effective_embedding(model: HookedModel, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """What `layer` reads for each token on its own: the residual entering `layer` at the last
    position of `[BOS, token]`. tokens [n] -> [n, d_model]."""
    tokens = torch.as_tensor(tokens).to(model.device)
    pairs = torch.stack([torch.full_like(tokens, model.bos_token_id), tokens], dim=1)   # [n, 2]
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = model.run_with_cache(pairs, names_filter=[name])
    return cache[name][:, -1]


def ov_circuit(model: HookedModel, resid: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """The logits head `layer.head` adds when it attends fully to a token whose residual is `resid`
    [n, d_model]: the logit lens of ln1(resid) W_V W_O (biases left out). -> [n, d_vocab]"""
    ln1 = model.block(layer).get_submodule(model.family.ln1)
    written = ln1(resid) @ model.W_V[layer, head] @ model.W_O[layer, head]        # [n, d_model]
    return lens.logit_lens(model, written)


def positional_pattern(model: HookedModel, layer: int, head: int, n_pos: int) -> torch.Tensor:
    """The attention pattern head `layer.head` would make from the positional embeddings alone:
    x = ln1(W_pos[:n_pos]); softmax over keys of the causally masked (x W_Q + b_Q)(x W_K + b_K)ᵀ / √d_head.
    -> [n_pos (query), n_pos (key)]"""
    x = model.block(layer).get_submodule(model.family.ln1)(model.W_pos[:n_pos])    # [n_pos, d_model]
    q = x @ model.W_Q[layer, head] + model.b_Q[layer, head]                        # [n_pos, d_head]
    k = x @ model.W_K[layer, head] + model.b_K[layer, head]
    scores = q @ k.T / model.cfg.d_head ** 0.5                                      # [q, k]
    future = torch.ones(n_pos, n_pos, dtype=torch.bool, device=scores.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def fold_ln(W: torch.Tensor, ln_weight: torch.Tensor) -> torch.Tensor:
    """Weights [..., d_model, x] that read the residual through a LayerNorm, with the norm's gain and
    its centring folded in: C diag(ln_weight) W, C = I - 11ᵀ/d_model (the scale and the bias stay out)."""
    W = ln_weight[:, None] * W
    return W - W.mean(-2, keepdim=True)


def composition_score(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """‖A B‖_F / (‖A‖_F ‖B‖_F) over the last two axes; leading axes broadcast."""
    norm = torch.linalg.matrix_norm
    return norm(A @ B) / (norm(A) * norm(B))


def composition_scores(W_OV: torch.Tensor, W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor,
                       W_O: torch.Tensor, ln_weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Q-, K- and V-composition of earlier heads (W_OV [n_early, d_model, d_model]) with the heads of a
    later layer (W_Q, W_K, W_V [n_late, d_model, d_head], W_O [n_late, d_head, d_model], read through
    a LayerNorm of weight ln_weight [d_model]). -> {"Q", "K", "V"}: each [n_early, n_late]."""
    Q, K, V = (fold_ln(W, ln_weight) for W in (W_Q, W_K, W_V))
    W_QK, W_OV_late = Q @ K.mT, V @ W_O                                            # [n_late, d_model, d_model]
    early = W_OV[:, None]                                                           # [n_early, 1, d, d]
    return {"Q": composition_score(early, W_QK), "K": composition_score(early, W_QK.mT),
            "V": composition_score(early, W_OV_late)}


def attn_only_logits(tokens: torch.Tensor, qk: torch.Tensor, ov: torch.Tensor, direct: torch.Tensor) -> torch.Tensor:
    """A one-layer, one-head, attention-only model written as token tables.

    tokens [pos]; qk [d_vocab (query), d_vocab (key)] attention scores; ov [d_vocab (source),
    d_vocab (output)] what attending to a token adds to the logits; direct [d_vocab, d_vocab] the
    path that skips attention. Returns logits [pos, d_vocab].
    """
    n = tokens.shape[0]
    scores = qk[tokens][:, tokens]                                             # [q, k]
    causal = torch.ones(n, n, dtype=torch.bool, device=qk.device).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)           # [q, k]
    return direct[tokens] + pattern @ ov[tokens]


# ----------------------------------------------------------------------------- 4.6 the OV circuit

def check_effective_embedding(fn: Callable, model: HookedModel) -> Callable:
    """The residual entering `layer` at the last position of `[BOS, token]`, for each token."""
    tokens = torch.randint(1, model.cfg.d_vocab, (7,), generator=rng(60))
    L = model.cfg.n_layers

    def read(m, t, point, bos=True, pos=-1):
        toks = torch.stack([torch.full_like(t, m.bos_token_id), t], 1) if bos else t[:, None]
        return m.run_with_cache(toks, names_filter=[point])[1][point][:, pos]

    mistakes = {
        "this is the token on its own at position 0: put the start token first, [BOS, token], as the "
        "model always sees it, and read position 1":
        lambda m, t, layer: read(m, t, f"blocks.{layer}.hook_resid_pre", bos=False),
        "this is the start token's residual: read the last position of [BOS, token]":
        lambda m, t, layer: read(m, t, f"blocks.{layer}.hook_resid_pre", pos=0),
        "this is the residual *leaving* the layer (resid_post); the layer reads the one entering it, "
        "blocks.{layer}.hook_resid_pre": lambda m, t, layer: read(m, t, f"blocks.{layer}.hook_resid_post"),
        "this is the raw token embedding: the layer reads the full residual stream, positional "
        "embedding and earlier layers included": lambda m, t, layer: m.W_E[t]}
    shape = expect_shape(lambda c: (c.args[1].shape[0], model.cfg.d_model), "[n, d_model] (one residual per token)")
    cases = [Case((model, tokens, L - 1), label=f"layer {L - 1}"), Case((model, tokens, 0), label="layer 0"),
             Case((model, tokens[:1], min(1, L - 1)), label="one token")]
    return run_check("effective_embedding", fn, effective_embedding, cases, atol=1e-4, rtol=1e-3,
                     dims=("token", "d_model"), properties=[shape, recognise(mistakes, effective_embedding, atol=1e-4)])


def check_ov_circuit(fn: Callable, model: HookedModel) -> Callable:
    """The logit lens of ln1(resid) W_V W_O for one head."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    g = rng(62)
    resid = torch.randn(5, model.cfg.d_model, generator=g) * 3 + torch.randn(model.cfg.d_model, generator=g)

    def variant(m, r, layer, head, *, ln_in=True, ln_out=True, v_head=None):
        ln1 = m.block(layer).get_submodule(m.family.ln1)
        written = (ln1(r) if ln_in else r) @ m.W_V[layer, head if v_head is None else v_head] @ m.W_O[layer, head]
        return lens.logit_lens(m, written) if ln_out else written @ m.W_U + m.b_U

    mistakes = {
        "the head reads its input through its layer's LayerNorm: apply ln1 "
        "(model.block(layer).get_submodule(model.family.ln1)) to resid before W_V": partial(variant, ln_in=False),
        "logits are read through the final LayerNorm: apply model.ln_final (lens.logit_lens does) before W_U":
        partial(variant, ln_out=False),
        "both LayerNorms are missing: ln1 before W_V, and the final norm before W_U":
        partial(variant, ln_in=False, ln_out=False)}
    shape = expect_shape(lambda c: (c.args[1].shape[0], model.cfg.d_vocab), "[n, d_vocab] (logits for each token)")
    cases = [Case((model, resid, L - 1, H - 1), label=f"head {L - 1}.{H - 1}"),
             Case((model, resid[:2], 0, 1 % H), label=f"head 0.{1 % H}, two residuals"),
             Case((model, resid * 0.1, L - 1, 0), label="small residuals (the norms rescale them)")]
    return run_check("ov_circuit", fn, ov_circuit, cases, atol=1e-4, rtol=1e-3, dims=("token", "vocab"),
                     properties=[shape, recognise(mistakes, ov_circuit, atol=1e-4, rtol=1e-3)])


def check_positional_pattern(fn: Callable, model: HookedModel) -> Callable:
    """The causal attention pattern of one head from ln1(W_pos) alone."""
    L, H = model.cfg.n_layers, model.cfg.n_heads

    def variant(m, layer, head, n_pos, *, norm=True, scale=True, mask=True, dim=-1, bias=True, swap=False):
        x = m.W_pos[:n_pos]
        x = m.block(layer).get_submodule(m.family.ln1)(x) if norm else x
        q = x @ m.W_Q[layer, head] + (m.b_Q[layer, head] if bias else 0)
        k = x @ m.W_K[layer, head] + (m.b_K[layer, head] if bias else 0)
        s = (k @ q.T if swap else q @ k.T) / (m.cfg.d_head ** 0.5 if scale else 1)
        if mask:
            s = s.masked_fill(torch.ones(n_pos, n_pos, dtype=torch.bool).triu(1), float("-inf"))
        return s.softmax(dim)

    mistakes = {
        "the head reads ln1 of its input: apply its layer's LayerNorm to W_pos first (raw positional embeddings "
        "are small, so the pattern comes out almost uniform)": partial(variant, norm=False),
        "divide the scores by √d_head before the softmax, as the model does": partial(variant, scale=False),
        "mask the future: a query may attend only to itself and earlier positions": partial(variant, mask=False),
        "softmax over keys (the last axis): each query's attention sums to 1": partial(variant, dim=0),
        "add the biases b_Q and b_K to the queries and keys": partial(variant, bias=False),
        "queries and keys are swapped: scores are q @ k.T, rows are queries": partial(variant, swap=True)}
    shape = expect_shape(lambda c: (c.args[3], c.args[3]), "[n_pos (query), n_pos (key)]")
    cases = [Case((model, 0, 0, 12), label="head 0.0, 12 positions"),
             Case((model, L - 1, H - 1, 7), label=f"head {L - 1}.{H - 1}, 7 positions"),
             Case((model, 0, 1 % H, 2), label="two positions")]
    return run_check("positional_pattern", fn, positional_pattern, cases, atol=1e-5, rtol=1e-3, dims=("query", "key"),
                     properties=[shape, recognise(mistakes, positional_pattern, rtol=1e-3)])


# ----------------------------------------------------------------------------- 4.6 composition

def _composition_case(n_early: int, n_late: int, d: int, d_head: int, seed: int, label: str) -> Case:
    g = rng(seed)
    W_V = torch.randn(n_early, d, d_head, generator=g)
    W_O = torch.randn(n_early, d_head, d, generator=g) + torch.randn(n_early, d_head, 1, generator=g)  # uncentred outputs
    late = [torch.randn(n_late, d, d_head, generator=g) for _ in range(3)]
    W_O_late = torch.randn(n_late, d_head, d, generator=g)
    ln_weight = torch.rand(d, generator=g) * 1.5 + 0.25
    return Case((W_V @ W_O, *late, W_O_late, ln_weight), label=label)


def _composition_mistakes() -> dict[str, dict[str, Callable]]:
    def scores(W_OV, W_Q, W_K, W_V, W_O, ln_weight, *, fold=fold_ln, norm=None):
        Q, K, V = (fold(W, ln_weight) for W in (W_Q, W_K, W_V))
        W_QK, late = Q @ K.mT, V @ W_O
        early = W_OV[:, None]
        score = composition_score if norm is None else norm
        return {"Q": score(early, W_QK), "K": score(early, W_QK.mT), "V": score(early, late),
                "K as Q": score(early, W_QK), "Q as K": score(early, W_QK.mT), "V reversed": score(late, early)}

    def pick(key, **kwargs):
        return lambda *args: scores(*args, **kwargs)[key]

    unfolded = lambda W, g: W                                                    # noqa: E731
    gain_only = lambda W, g: g[:, None] * W                                      # noqa: E731
    centred_only = lambda W, g: W - W.mean(-2, keepdim=True)                     # noqa: E731
    spectral = lambda A, B: (torch.linalg.matrix_norm(A @ B, 2)                  # noqa: E731
                             / (torch.linalg.matrix_norm(A, 2) * torch.linalg.matrix_norm(B, 2)))
    raw = lambda A, B: torch.linalg.matrix_norm(A @ B)                           # noqa: E731
    common = {
        "the later heads read the residual through their LayerNorm: fold its weight and its centring into "
        "W_Q, W_K and W_V first (multiply row i by ln_weight[i], then subtract each column's mean over d_model)":
        dict(fold=unfolded),
        "you folded in the LayerNorm's weight but not its centring: after scaling the rows, subtract each "
        "column's mean over d_model (LayerNorm removes the mean of the residual)": dict(fold=gain_only),
        "you centred the weights but left out the LayerNorm's weight: multiply row i by ln_weight[i] too":
        dict(fold=centred_only),
        "use the Frobenius norm (torch.linalg.matrix_norm's default), not the spectral norm": dict(norm=spectral),
        "divide by the product of the two matrices' Frobenius norms": dict(norm=raw)}
    out = {key: {msg: pick(key, **kw) for msg, kw in common.items()} for key in "QKV"}
    out["Q"]["this is K-composition (the earlier head writes into the later head's keys, W_QKᵀ); for "
             "Q-composition it writes into the queries: W_OV W_QK"] = pick("Q as K")
    out["K"]["this is Q-composition, W_OV W_QK: for K-composition the earlier head writes into the keys, "
             "so use W_QKᵀ (W_QK = W_Q W_Kᵀ)"] = pick("K as Q")
    out["V"]["the product is the wrong way round: the earlier head's output is what the later head's values "
             "read, so W_OV(early) @ W_OV(late)"] = pick("V reversed")
    return out


def check_composition_scores(fn: Callable) -> Callable:
    """Q-, K- and V-composition of every earlier head with every later head, LayerNorm folded in."""
    cases = [_composition_case(4, 3, 12, 3, 80, "4 earlier heads, 3 later heads"),
             _composition_case(3, 3, 10, 2, 81, "3 earlier heads, 3 later heads (square: rows are earlier heads)"),
             _composition_case(1, 2, 8, 4, 82, "one earlier head"),
             _composition_case(5, 1, 16, 4, 83, "one later head")]
    shape = expect_shape(lambda c: (c.args[0].shape[0], c.args[1].shape[0]), "[n_early, n_late]")
    references = {key: (lambda k: lambda *args: composition_scores(*args)[k])(key) for key in "QKV"}
    prop = per_key(references, _composition_mistakes(), {k: shape for k in "QKV"}, dims=("early head", "late head"))
    return run_check("composition_scores", fn, composition_scores, cases, properties=[prop])


# ----------------------------------------------------------------------------- 4.7 skip-trigrams

def check_attn_only_logits(fn: Callable) -> Callable:
    """direct[tokens] + softmax(causal qk) @ ov[tokens]."""
    g = rng(70)
    V = 6
    qk, ov, direct = (torch.randn(V, V, generator=g) * 2 for _ in range(3))

    def pattern(t, qk, mask=True, dim=-1):
        s = qk[t][:, t]
        if mask:
            s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).tril().logical_not(), float("-inf"))
        return s.softmax(dim)

    mistakes = {
        "the pattern must be causal: a query may attend only to itself and earlier positions":
        lambda t, qk, ov, d: d[t] + pattern(t, qk, mask=False) @ ov[t],
        "softmax over keys (the last axis): each query's attention sums to 1":
        lambda t, qk, ov, d: d[t] + pattern(t, qk, dim=0) @ ov[t],
        "qk is indexed [query token, key token]; you transposed it":
        lambda t, qk, ov, d: d[t] + pattern(t, qk.T) @ ov[t],
        "the OV output comes from the *attended* (source) tokens, mixed by the pattern, not from the query token":
        lambda t, qk, ov, d: d[t] + ov[t],
        "add the direct path (the residual stream skips the attention layer)":
        lambda t, qk, ov, d: pattern(t, qk) @ ov[t]}
    cases = [Case((torch.tensor([0, 3, 1, 5, 2]), qk, ov, direct), label="random tables"),
             Case((torch.tensor([2, 2, 4, 2]), qk, ov, direct), label="a repeated token"),
             Case((torch.tensor([4]), qk, ov, direct), label="one token"),
             Case((torch.tensor([1, 0, 5, 3, 3, 4, 0]), qk * 3, ov, direct * 0.5), label="sharper attention")]
    return run_check("attn_only_logits", fn, attn_only_logits, cases, atol=1e-5, dims=("position", "vocab"),
                     properties=[recognise(mistakes, attn_only_logits)])
