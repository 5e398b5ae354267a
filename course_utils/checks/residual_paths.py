"""Checks for notebook 02, sections 2.2 and 2.3: paths through the model read off its weights. The
direct path (token -> W_E -> final norm -> W_U) as logits, and one head's OV and QK circuits as token
tables; and their references.
"""

from __future__ import annotations

from typing import Callable

import torch

from course_utils import lens
from course_utils.checks import Case, run_check
from course_utils.checks.mistakes import expect_shape, recognise, rng
from course_utils.hooked_model import HookedModel

# ----------------------------------------------------------------------------- references


def direct_path_logits(model: HookedModel, tokens: torch.Tensor) -> torch.Tensor:
    """The direct path, token -> W_E -> final norm -> W_U (+ b_U), as logits. tokens [n] -> [n, d_vocab]."""
    return lens.logit_lens(model, model.W_E[tokens])


def unembed_direction(model: HookedModel, out: torch.Tensor) -> torch.Tensor:
    """What a vector written to the final residual does to the logits, the final norm's scale left out:
    centred (LayerNorm), times the norm's weight, times W_U. [..., d_model] -> [..., d_vocab]"""
    if model.cfg.normalization_type == "LN":
        out = out - out.mean(-1, keepdim=True)
    return (out * model.ln_final.weight) @ model.W_U


def ov_table(model: HookedModel, layer: int, head: int, x: torch.Tensor) -> torch.Tensor:
    """One head's OV circuit as a token table: what attending to each source adds to the logits, up to the
    final norm's scale. x [n, d_model] (the sources as the head reads them, after its norm) -> [n, d_vocab]."""
    return unembed_direction(model, x @ model.W_V[layer, head] @ model.W_O[layer, head])


def qk_table(model: HookedModel, layer: int, head: int, x_q: torch.Tensor, x_k: torch.Tensor) -> torch.Tensor:
    """One head's QK circuit as a table of attention scores (before the softmax and the causal mask):
    x_q [n_q, d_model], x_k [n_k, d_model] (as the head reads them) -> [n_q, n_k]."""
    q = x_q @ model.W_Q[layer, head] + model.b_Q[layer, head]                  # [n_q, d_head]
    k = x_k @ model.W_K[layer, head] + model.b_K[layer, head]                  # [n_k, d_head]
    return q @ k.T / model.cfg.d_head ** 0.5


# ----------------------------------------------------------------------------- 2.2 the direct path

def check_direct_path_logits(fn: Callable, model: HookedModel) -> Callable:
    """ln_final(W_E[tokens]) @ W_U + b_U."""
    mistakes = {"this is W_E @ W_U without the final norm: apply it first (lens.apply_ln_final, or model.ln_final), "
                "as the model does before every unembedding": lambda m, t: m.W_E[t] @ m.W_U + m.b_U,
                "the unembedding's bias b_U is missing": lambda m, t: lens.apply_ln_final(m, m.W_E[t]) @ m.W_U,
                "leave the position embedding out: the direct path of a token is its embedding alone":
                lambda m, t: lens.logit_lens(m, m.W_E[t] + m.W_pos[0])}
    g = rng(20)
    cases = [Case((model, torch.randint(0, model.cfg.d_vocab, (5,), generator=g)), label="five tokens"),
             Case((model, torch.tensor([model.bos_token_id])), label="the start token alone"),
             Case((model, torch.randint(0, model.cfg.d_vocab, (12,), generator=g)), label="twelve tokens")]
    shape = expect_shape(lambda c: (len(c.args[1]), model.cfg.d_vocab), "[n tokens, d_vocab]")
    return run_check("direct_path_logits", fn, direct_path_logits, cases, atol=1e-3, rtol=1e-3,
                     properties=[shape, recognise(mistakes, direct_path_logits, atol=1e-3, rtol=1e-3)],
                     dims=("token", "vocab"))


# ----------------------------------------------------------------------------- 2.3 one-head paths

def _reads(model: HookedModel, n: int, seed: int) -> torch.Tensor:
    """Random inputs shaped like a norm's output: centred, unit scale."""
    x = torch.randn(n, model.cfg.d_model, generator=rng(seed))
    return ((x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)).to(model.device)


def check_ov_table(fn: Callable, model: HookedModel) -> Callable:
    """x @ W_V @ W_O, read through the final norm's centring and weight (its scale left out), then W_U."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    ov = lambda m, l, h, x: x @ m.W_V[l, h] @ m.W_O[l, h]                              # noqa: E731
    mistakes = {
        "centre the output first: the final LayerNorm subtracts the mean before anything else":
        lambda m, l, h, x: (ov(m, l, h, x) * m.ln_final.weight) @ m.W_U,
        "the final norm's weight is missing: multiply by model.ln_final.weight before W_U (W_U does not hold it)":
        lambda m, l, h, x: (ov(m, l, h, x) - ov(m, l, h, x).mean(-1, keepdim=True)) @ m.W_U,
        "this divides each row by its own norm scale (the full final norm): leave the scale out, since it is set "
        "by the whole residual stream, not by this head's part": lambda m, l, h, x: lens.apply_ln_final(m, ov(m, l, h, x)) @ m.W_U,
        "leave the value bias b_V out: it adds the same vector whatever the source token":
        lambda m, l, h, x: unembed_direction(m, (x @ m.W_V[l, h] + m.b_V[l, h]) @ m.W_O[l, h]),
        "this is another head's table: index the weights as W_V[layer, head] and W_O[layer, head]":
        lambda m, l, h, x: ov_table(m, l, (h + 1) % H, x)}
    cases = [Case((model, 0, 0, _reads(model, 4, 30)), label="layer 0, head 0"),
             Case((model, L - 1, H - 1, _reads(model, 3, 31)), label="the last head"),
             Case((model, 0, H // 2, _reads(model, 1, 32)), label="one source")]
    shape = expect_shape(lambda c: (c.args[3].shape[0], model.cfg.d_vocab), "[n sources, d_vocab]")
    return run_check("ov_table", fn, ov_table, cases, atol=1e-3, rtol=1e-3,
                     properties=[shape, recognise(mistakes, ov_table, atol=1e-3, rtol=1e-3)], dims=("source", "vocab"))


def check_qk_table(fn: Callable, model: HookedModel) -> Callable:
    """(x_q W_Q + b_Q)(x_k W_K + b_K)^T / sqrt(d_head)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    q = lambda m, l, h, x: x @ m.W_Q[l, h] + m.b_Q[l, h]                             # noqa: E731
    k = lambda m, l, h, x: x @ m.W_K[l, h] + m.b_K[l, h]                             # noqa: E731
    mistakes = {
        "divide by sqrt(d_head), as attention does before its softmax":
        lambda m, l, h, a, b: q(m, l, h, a) @ k(m, l, h, b).T,
        "divide by sqrt(d_head), not by d_head": lambda m, l, h, a, b: q(m, l, h, a) @ k(m, l, h, b).T / m.cfg.d_head,
        "the biases b_Q and b_K are missing: a query is x @ W_Q + b_Q, a key x @ W_K + b_K":
        lambda m, l, h, a, b: (a @ m.W_Q[l, h]) @ (b @ m.W_K[l, h]).T / m.cfg.d_head ** 0.5,
        "queries and keys are swapped: rows are queries (x_q @ W_Q), columns are keys (x_k @ W_K)":
        lambda m, l, h, a, b: qk_table(m, l, h, b, a).T}
    cases = [Case((model, 0, 1, _reads(model, 3, 40), _reads(model, 5, 41)), label="3 queries, 5 keys"),
             Case((model, L - 1, 0, _reads(model, 4, 42), _reads(model, 4, 43)), label="as many queries as keys"),
             Case((model, 0, H - 1, _reads(model, 2, 44), _reads(model, 1, 45)), label="one key")]
    shape = expect_shape(lambda c: (c.args[3].shape[0], c.args[4].shape[0]), "[n_q (queries), n_k (keys)]")
    return run_check("qk_table", fn, qk_table, cases, atol=1e-3, rtol=1e-3,
                     properties=[shape, recognise(mistakes, qk_table, atol=1e-3, rtol=1e-3)], dims=("query", "key"))
