"""Checks for notebook 02 · The residual stream, and the references they compare with.

The references are the library's own functions wherever it has one: `lens` for the decomposition,
the logit lens and direct logit attribution, `patching` for the metric, the hooks, the patching grids
and attribution patching. The rest (the token tables of one head, ablations) live here. Functions that
take a cache are checked with a fresh `ActivationCache` around a copied dict, so an answer that
writes into the cache is caught like any other in-place edit.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from course_utils import lens, patching
from course_utils.cache import ActivationCache
from course_utils.checks import Case, compare, run_check
from course_utils.hook_points import HookPoint
from course_utils.hooked_model import HookedModel

# ----------------------------------------------------------------------------- references

logit_diff = patching.logit_diff                          # logits [batch, pos, d_vocab] -> [batch]
patch_resid_hook = patching.patch_resid_hook              # hook: clean activation at one position
patch_resid_grid = patching.resid_patching_grid           # -> [n_layers, pos]
patch_head_grid = patching.head_patching_grid             # -> [n_layers, n_heads]
attribution_patch_heads = patching.attribution_patching_heads   # -> [n_layers, n_heads]
path_patch = patching.path_patching_grid                  # -> [3 (q, k, v), n_heads]


def residual_parts(model: HookedModel, cache: ActivationCache) -> tuple[torch.Tensor, list[str]]:
    """The final residual stream [batch, pos, d_model] as a stack of parts [n_parts, batch, pos, d_model]:
    every head (z @ W_O), every MLP, the token and position embeddings, and the attention output biases,
    with labels "L0H0", ..., "0_mlp_out", ..., "embed", "pos_embed", "bias"."""
    return lens.full_resid_decomposition(model, cache, expand_neurons=False)


def direct_path_logits(model: HookedModel, tokens: torch.Tensor) -> torch.Tensor:
    """The direct path, token -> W_E -> final norm -> W_U (+ b_U), as logits. tokens [n] -> [n, d_vocab]."""
    return lens.logit_lens(model, model.W_E[tokens])


def _unembed_direction(model: HookedModel, out: torch.Tensor) -> torch.Tensor:
    """What a vector written to the final residual does to the logits, the final norm's scale left out:
    centred (LayerNorm), times the norm's weight, times W_U. [..., d_model] -> [..., d_vocab]"""
    if model.cfg.normalization_type == "LN":
        out = out - out.mean(-1, keepdim=True)
    return (out * model.ln_final.weight) @ model.W_U


def ov_table(model: HookedModel, layer: int, head: int, x: torch.Tensor) -> torch.Tensor:
    """One head's OV circuit as a token table: what attending to each source adds to the logits, up to the
    final norm's scale. x [n, d_model] (the sources as the head reads them, after its norm) -> [n, d_vocab]."""
    return _unembed_direction(model, x @ model.W_V[layer, head] @ model.W_O[layer, head])


def qk_table(model: HookedModel, layer: int, head: int, x_q: torch.Tensor, x_k: torch.Tensor) -> torch.Tensor:
    """One head's QK circuit as a table of attention scores (before the softmax and the causal mask):
    x_q [n_q, d_model], x_k [n_k, d_model] (as the head reads them) -> [n_q, n_k]."""
    q = x_q @ model.W_Q[layer, head] + model.b_Q[layer, head]                  # [n_q, d_head]
    k = x_k @ model.W_K[layer, head] + model.b_K[layer, head]                  # [n_k, d_head]
    return q @ k.T / model.cfg.d_head ** 0.5


def direct_logit_attribution(model: HookedModel, cache: ActivationCache, stack: torch.Tensor,
                             answers: torch.Tensor, wrongs: torch.Tensor) -> torch.Tensor:
    """Each part's direct effect on the logit difference answers - wrongs at the last position, through the
    final norm with its scale frozen at the whole residual's. stack [n_parts, batch, d_model] -> [n_parts, batch]."""
    return lens.logit_attrs(model, cache, stack, answers, wrongs, pos_slice=-1)


def ablate_head_z(z: torch.Tensor, head: int, mode: str, reference: torch.Tensor) -> torch.Tensor:
    """z [batch, pos, head, d_head] with one head's output replaced: by zeros ("zero"), by its mean over the
    reference prompts at each position ("mean"), or by its value on the reference prompt of the same index
    ("resample"). reference [ref_batch, pos, head, d_head], the same positions (ref_batch = batch to resample)."""
    if mode not in ("zero", "mean", "resample"):
        raise ValueError(f"mode should be 'zero', 'mean' or 'resample', not {mode!r}.")
    z = z.clone()
    if mode == "zero":
        z[:, :, head] = 0.0
    elif mode == "mean":
        z[:, :, head] = reference[:, :, head].mean(0)                          # [pos, d_head] broadcasts
    else:
        z[:, :, head] = reference[:, :, head]
    return z


# ----------------------------------------------------------------------------- helpers

def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _recognise(mistakes: dict[str, Callable], reference: Callable, atol: float = 1e-4) -> Callable:
    """A property that names a known mistake when the learner's answer matches it (and not the reference)."""
    def prop(case: Case, got: Any) -> str | None:
        if compare(got, reference(*case.args, **case.kwargs), atol=atol, rtol=1e-3) is None:
            return None
        for message, wrong in mistakes.items():
            try:
                if compare(got, wrong(*case.args, **case.kwargs), atol=atol, rtol=1e-3) is None:
                    return message
            except Exception:  # a mistake that cannot run on this case is not this one
                continue
        return None
    return prop


def _shape(want: Callable[[Case], tuple[int, ...]], hint: str) -> Callable:
    def prop(case: Case, got: Any) -> str | None:
        if isinstance(got, torch.Tensor) and tuple(got.shape) != want(case):
            return f"expected shape {want(case)}, got {tuple(got.shape)}. {hint}"
        return None
    return prop


def _cache_arg(fn: Callable, model: HookedModel, index: int | tuple[int, ...]) -> Callable:
    """`fn` with its argument(s) `index` (dicts of activations, which run_check copies and watches) wrapped
    in an ActivationCache, as the notebook passes them."""
    indices = (index,) if isinstance(index, int) else index

    @functools.wraps(fn)
    def wrapped(*args):
        args = [ActivationCache(a, model) if i in indices else a for i, a in enumerate(args)]
        return fn(*args)
    return wrapped


def _run_cached(name: str, fn: Callable, reference: Callable, model: HookedModel, index: int | tuple[int, ...], cases,
                **kw) -> Callable:
    mine, ref = _cache_arg(fn, model, index), _cache_arg(reference, model, index)
    result = run_check(name, mine, ref, cases, **kw)
    return fn if result is mine else reference


def _tokens(model: HookedModel, batch: int, pos: int, seed: int) -> torch.Tensor:
    body = torch.randint(1, model.cfg.d_vocab, (batch, pos - 1), generator=_rng(seed))
    return torch.cat([torch.full((batch, 1), model.bos_token_id), body], 1).to(model.device)


def _cache_dict(model: HookedModel, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    _, cache = model.run_with_cache(tokens)
    return dict(cache.cache_dict)


def _pair(model: HookedModel, batch: int, pos: int, seed: int, changed: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean tokens and corrupted ones that differ at the positions `changed`."""
    clean = _tokens(model, batch, pos, seed)
    corrupted = clean.clone()
    for p in changed:
        corrupted[:, p] = (clean[:, p] + 1 + torch.arange(batch, device=clean.device) * 7) % (model.cfg.d_vocab - 1) + 1
    return clean, corrupted


def _metric(answers: torch.Tensor, wrongs: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda logits: logit_diff(logits, answers, wrongs).mean()


# ----------------------------------------------------------------------------- 2.1 the residual stream is a sum

def check_residual_parts(fn: Callable, model: HookedModel) -> Callable:
    """The final residual stream split into heads, MLPs, embeddings and biases, as TransformerLens orders them."""
    L = model.cfg.n_layers

    def without(*names: str) -> Callable:
        def wrong(m, c):
            stack, labels = residual_parts(m, ActivationCache(c, m))
            keep = [i for i, label in enumerate(labels) if not label.endswith(names)]
            return stack[keep], [labels[i] for i in keep]
        return wrong

    def sums(case: Case, got: Any) -> str | None:
        m, c = case.args
        if not (isinstance(got, (tuple, list)) and len(got) == 2 and isinstance(got[0], torch.Tensor)):
            return f"return a pair (stack, labels), not {type(got).__name__}"
        stack, labels = got
        if len(labels) != stack.shape[0]:
            return f"{stack.shape[0]} parts but {len(labels)} labels: one label per part"
        resid = c[f"blocks.{L - 1}.hook_resid_post"]
        if stack.shape[1:] == resid.shape and not torch.allclose(stack.sum(0).to(resid.dtype), resid, atol=1e-3, rtol=1e-3):
            return (f"the parts do not sum to the final resid_post: they differ by up to "
                    f"{(resid - stack.sum(0)).abs().max():.3g}. Every head, every MLP, both embeddings and the "
                    "attention biases must be there, each once")
        return None

    mistakes = {"the attention output biases are missing (z @ W_O leaves b_O out): add model.b_O summed over "
                "layers as one part, 'bias', broadcast to [batch, pos, d_model]": without("bias"),
                "the MLP outputs are missing: add cache['mlp_out', l] for every layer": without("mlp_out"),
                "the position embedding is missing: add cache['pos_embed']": without("pos_embed")}
    cases = [Case((model, _cache_dict(model, _tokens(model, 2, 7, 1))), label="two random prompts"),
             Case((model, _cache_dict(model, _tokens(model, 1, 3, 2))), label="one short prompt")]
    return _run_cached("residual_parts", fn, residual_parts, model, 1, cases, atol=1e-4, rtol=1e-3,
                       properties=[_recognise(mistakes, lambda m, c: residual_parts(m, ActivationCache(c, m))), sums],
                       dims=("part", "batch", "pos", "d_model"))


# ----------------------------------------------------------------------------- 2.2 the direct path

def check_direct_path_logits(fn: Callable, model: HookedModel) -> Callable:
    """ln_final(W_E[tokens]) @ W_U + b_U."""
    mistakes = {"this is W_E @ W_U without the final norm: apply it first (lens.apply_ln_final, or model.ln_final), "
                "as the model does before every unembedding": lambda m, t: m.W_E[t] @ m.W_U + m.b_U,
                "the unembedding's bias b_U is missing": lambda m, t: lens.apply_ln_final(m, m.W_E[t]) @ m.W_U,
                "leave the position embedding out: the direct path of a token is its embedding alone":
                lambda m, t: lens.logit_lens(m, m.W_E[t] + m.W_pos[0])}
    g = _rng(20)
    cases = [Case((model, torch.randint(0, model.cfg.d_vocab, (5,), generator=g)), label="five tokens"),
             Case((model, torch.tensor([model.bos_token_id])), label="the start token alone"),
             Case((model, torch.randint(0, model.cfg.d_vocab, (12,), generator=g)), label="twelve tokens")]
    shape = _shape(lambda c: (len(c.args[1]), model.cfg.d_vocab), "One row of logits per token: [n, d_vocab].")
    return run_check("direct_path_logits", fn, direct_path_logits, cases, atol=1e-3, rtol=1e-3,
                     properties=[shape, _recognise(mistakes, direct_path_logits, atol=1e-3)], dims=("token", "vocab"))


# ----------------------------------------------------------------------------- 2.3 one-head paths

def _reads(model: HookedModel, n: int, seed: int) -> torch.Tensor:
    """Random inputs shaped like a norm's output: centred, unit scale, times a weight."""
    x = torch.randn(n, model.cfg.d_model, generator=_rng(seed))
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
        lambda m, l, h, x: _unembed_direction(m, (x @ m.W_V[l, h] + m.b_V[l, h]) @ m.W_O[l, h]),
        "this is another head's table: index the weights as W_V[layer, head] and W_O[layer, head]":
        lambda m, l, h, x: ov_table(m, l, (h + 1) % H, x)}
    cases = [Case((model, 0, 0, _reads(model, 4, 30)), label="layer 0, head 0"),
             Case((model, L - 1, H - 1, _reads(model, 3, 31)), label="the last head"),
             Case((model, 0, H // 2, _reads(model, 1, 32)), label="one source")]
    shape = _shape(lambda c: (c.args[3].shape[0], model.cfg.d_vocab), "One row of logits per source: [n, d_vocab].")
    return run_check("ov_table", fn, ov_table, cases, atol=1e-3, rtol=1e-3,
                     properties=[shape, _recognise(mistakes, ov_table, atol=1e-3)], dims=("source", "vocab"))


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
    shape = _shape(lambda c: (c.args[3].shape[0], c.args[4].shape[0]), "Rows are queries, columns keys: [n_q, n_k].")
    return run_check("qk_table", fn, qk_table, cases, atol=1e-3, rtol=1e-3,
                     properties=[shape, _recognise(mistakes, qk_table, atol=1e-3)], dims=("query", "key"))


# ----------------------------------------------------------------------------- 2.4 direct logit attribution

def check_logit_diff(fn: Callable) -> Callable:
    """logits[b, -1, answers[b]] - logits[b, -1, wrongs[b]]; it must keep its gradient."""
    g = _rng(50)

    def case(batch: int, pos: int, vocab: int, label: str) -> Case:
        logits = (torch.randn(batch, pos, vocab, generator=g) * 3).requires_grad_()
        answers = torch.randint(0, vocab, (batch,), generator=g)
        wrongs = (answers + 1 + torch.randint(0, vocab - 1, (batch,), generator=g)) % vocab
        return Case((logits, answers, wrongs), label=label)

    def at(pos: int) -> Callable:
        def wrong(l, a, w):
            rows = torch.arange(l.shape[0])
            return l[rows, pos, a] - l[rows, pos, w]
        return wrong

    mistakes = {"the wrong sign: the right answer's logit minus the wrong one's": lambda l, a, w: -logit_diff(l, a, w),
                "this reads the first position: the prediction for the next token is at the last position, -1": at(0),
                "this reads the second-last position: the logits at the last position (-1) predict the next token": at(-2),
                "this is a difference of probabilities: use the logits themselves":
                lambda l, a, w: logit_diff(l.softmax(-1), a, w)}

    def per_prompt(case: Case, got: Any) -> str | None:
        if isinstance(got, torch.Tensor) and got.dim() == 0:
            return "return one difference per prompt, [batch], not their mean"
        return None

    cases = [case(3, 5, 11, "random"), case(1, 1, 4, "one position, one prompt"), case(4, 6, 6, "as many positions as tokens"),
             case(2, 3, 50, "larger vocabulary")]
    return run_check("logit_diff", fn, logit_diff, cases, grad=True,
                     properties=[per_prompt, _recognise(mistakes, logit_diff)], dims=("batch",))


def check_direct_logit_attribution(fn: Callable, model: HookedModel) -> Callable:
    """Centre, divide by the whole residual's cached final-norm scale, times the weight, dot (W_U[:, a] - W_U[:, w])."""
    L = model.cfg.n_layers
    direction = lambda m, a, w: m.W_U.T[a] - m.W_U.T[w]                          # noqa: E731  [batch, d_model]

    def centred(s):
        return s - s.mean(-1, keepdim=True) if model.cfg.normalization_type == "LN" else s

    def frozen(c, s, pos=-1):
        return centred(s) / c["ln_final.hook_scale"][:, pos] * model.ln_final.weight

    mistakes = {
        "the final norm is ignored: this is stack @ (W_U[:, answer] - W_U[:, wrong]). Centre each part, divide by "
        "the scale the norm used (cache['ln_final.hook_scale']) and multiply by its weight first":
        lambda m, c, s, a, w: (s * direction(m, a, w)).sum(-1),
        "each part is normalised by its own scale (the logit lens of each part on its own): freeze the scale of the "
        "whole residual, cache['ln_final.hook_scale'], so that the parts add up":
        lambda m, c, s, a, w: (lens.apply_ln_final(m, s) * direction(m, a, w)).sum(-1),
        "this uses the norm's scale at the first position: the parts are at the last position, so use "
        "cache['ln_final.hook_scale'][:, -1]": lambda m, c, s, a, w: (frozen(c, s, 0) * direction(m, a, w)).sum(-1),
        "the parts are not centred: LayerNorm subtracts each vector's mean before dividing by the scale":
        lambda m, c, s, a, w: (s / c["ln_final.hook_scale"][:, -1] * m.ln_final.weight * direction(m, a, w)).sum(-1),
        "the final norm's weight is missing: W_U here does not include it":
        lambda m, c, s, a, w: (centred(s) / c["ln_final.hook_scale"][:, -1] * direction(m, a, w)).sum(-1),
        "the wrong sign: attribute the right answer's logit minus the wrong one's":
        lambda m, c, s, a, w: -direct_logit_attribution(m, ActivationCache(c, m), s, a, w)}

    def case(batch: int, pos: int, seed: int, label: str, random_stack: bool = False) -> Case:
        tokens = _tokens(model, batch, pos, seed)
        store = _cache_dict(model, tokens)
        c = ActivationCache(store, model)
        stack = (torch.randn(5, batch, model.cfg.d_model, generator=_rng(seed)) * 3 if random_stack
                 else residual_parts(model, c)[0][:, :, -1])
        answers = torch.randint(0, model.cfg.d_vocab, (batch,), generator=_rng(seed + 1))
        keep = {k: store[k] for k in ("ln_final.hook_scale", f"blocks.{L - 1}.hook_resid_post")}
        return Case((model, keep, stack.to(model.device), answers, (answers + 5) % model.cfg.d_vocab), label=label)

    cases = [case(2, 6, 51, "every part of two prompts"), case(3, 4, 52, "random parts", random_stack=True),
             case(1, 8, 53, "one prompt")]
    shape = _shape(lambda c: tuple(c.args[2].shape[:2]), "One number per part and prompt: [n_parts, batch].")
    return _run_cached("direct_logit_attribution", fn, direct_logit_attribution, model, 1, cases, atol=1e-3, rtol=1e-3,
                       properties=[shape, _recognise(mistakes, lambda m, c, s, a, w: direct_logit_attribution(
                           m, ActivationCache(c, m), s, a, w), atol=1e-3)], dims=("part", "batch"))


# ----------------------------------------------------------------------------- 2.5 activation patching

def _as_hook(fn: Callable) -> Callable:
    """Call a hook as a forward pass does: on an activation it may edit in place (so on a copy here), and
    take what it returns, or the edited activation if it returns None."""
    @functools.wraps(fn)
    def run(activation, hook, *rest):
        mine = activation.clone()
        out = fn(mine, HookPoint(hook), *rest)
        return mine if out is None else out
    return run


def check_patch_resid_hook(fn: Callable) -> Callable:
    """activation[:, pos] = clean_cache[hook.name][:, pos]; everything else as it was."""
    g = _rng(60)
    names = ("blocks.1.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.1.attn.hook_z")
    store = {names[0]: torch.randn(2, 6, 8, generator=g), names[1]: torch.randn(2, 6, 8, generator=g),
             names[2]: torch.randn(3, 5, 4, 2, generator=g)}
    running = {n: torch.randn(v.shape, generator=g) for n, v in store.items()}

    def everywhere(a, h, pos, c):
        return c[h][:, :].clone()

    def shifted(by: int) -> Callable:
        def wrong(a, h, pos, c):
            a = a.clone()
            a[:, pos + by] = c[h][:, pos + by]
            return a
        return wrong

    def other_name(a, h, pos, c):
        other = next(n for n in c if n != h and c[n].shape == a.shape)
        a = a.clone()
        a[:, pos] = c[other][:, pos]
        return a

    def batch_axis(a, h, pos, c):
        a = a.clone()
        a[pos] = c[h][pos]
        return a

    mistakes = {"every position was patched: write the clean activation at position `pos` only, activation[:, pos]":
                everywhere, "off by one: patch position `pos` itself (activation[:, pos]), not pos + 1": shifted(1),
                "off by one: patch position `pos` itself (activation[:, pos]), not pos - 1": shifted(-1),
                "this reads another hook's clean activation: use clean_cache[hook.name]": other_name,
                "the position axis is the second one: activation[:, pos] (activation is [batch, pos, ...])": batch_axis}

    def returned_something(case: Case, got: Any) -> str | None:
        return None if isinstance(got, torch.Tensor) else f"return the patched activation, not {type(got).__name__}"

    cases = [Case((running[names[0]], names[0], 2, store), label="resid_pre, position 2"),
             Case((running[names[1]], names[1], 0, store), label="attn_out, position 0"),
             Case((running[names[0]], names[0], -1, store), label="the last position, as -1"),
             Case((running[names[2]], names[2], 3, store), label="a 4-d activation (hook_z)")]
    mine, ref = _as_hook(fn), _as_hook(patch_resid_hook)
    result = run_check("patch_resid_hook", mine, ref, cases,
                       properties=[returned_something, _recognise(mistakes, ref, atol=1e-6)])
    return fn if result is mine else patch_resid_hook


def _patching_cases(model: HookedModel, seed: int) -> list[Case]:
    out = []
    for batch, pos, changed, label in [(2, 6, (3,), "one token changed"), (3, 5, (1, 4), "two tokens changed"),
                                       (1, 4, (3,), "the last token changed")]:
        clean, corrupted = _pair(model, batch, pos, seed + batch, changed)
        answers = torch.randint(1, model.cfg.d_vocab, (batch,), generator=_rng(seed))
        out.append(Case((model, corrupted, _cache_dict(model, clean), _metric(answers, (answers + 3) % model.cfg.d_vocab)),
                        label=label))
    return out


def check_patch_resid_grid(fn: Callable, model: HookedModel) -> Callable:
    """The metric after patching blocks.{layer}.hook_resid_pre at one position, for every layer and position."""
    L = model.cfg.n_layers

    def patched_at(activation: str) -> Callable:
        return lambda m, t, c, metric: patch_resid_grid(m, t, ActivationCache(c, m), metric, activation)

    def every_position(m, t, c, metric):
        grid = torch.zeros(L, t.shape[1])
        for layer in range(L):
            name = f"blocks.{layer}.hook_resid_pre"
            value = float(metric(m.run_with_hooks(t, fwd_hooks=[(name, lambda a, hook: c[hook.name])])))
            grid[layer] = value
        return grid

    mistakes = {"this patches resid_post (or resid_mid, the same thing here: the MLP works position by position), "
                "the stream *leaving* each layer: patch blocks.{layer}.hook_resid_pre, the stream entering it":
                patched_at("resid_post"),
                "each run patched every position at once: patch one position per run": every_position}
    shape = _shape(lambda c: (L, c.args[1].shape[1]), "One value per layer and position: [n_layers, pos].")
    return _run_cached("patch_resid_grid", fn, patch_resid_grid, model, 2, _patching_cases(model, 70), atol=1e-3,
                       rtol=1e-3, properties=[shape, _recognise(mistakes, lambda m, t, c, metric: patch_resid_grid(
                           m, t, ActivationCache(c, m), metric), atol=1e-3)], dims=("layer", "pos"))


def check_patch_head_grid(fn: Callable, model: HookedModel) -> Callable:
    """The metric after patching one head's z (every position), for every head."""
    L, H = model.cfg.n_layers, model.cfg.n_heads

    def grid_of(hook_fn: Callable) -> Callable:
        def wrong(m, t, c, metric):
            grid = torch.zeros(L, H)
            for layer in range(L):
                for head in range(H):
                    hook = functools.partial(hook_fn, head=head, c=c)
                    grid[layer, head] = float(metric(m.run_with_hooks(t, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])))
            return grid
        return wrong

    def last_only(z, hook, head, c):
        z[:, -1, head] = c[hook.name][:, -1, head]
        return z

    def position_axis(z, hook, head, c):
        z[:, head] = c[hook.name][:, head]
        return z

    mistakes = {"only the last position was patched: patch the head at every position, z[:, :, head]": grid_of(last_only),
                "this patched a position, not a head: z is [batch, pos, head, d_head], so the head is z[:, :, head]":
                grid_of(position_axis)}
    shape = _shape(lambda c: (L, H), "One value per head: [n_layers, n_heads].")
    return _run_cached("patch_head_grid", fn, patch_head_grid, model, 2, _patching_cases(model, 80), atol=1e-3, rtol=1e-3,
                       properties=[shape, _recognise(mistakes, lambda m, t, c, metric: patch_head_grid(
                           m, t, ActivationCache(c, m), metric), atol=1e-3)], dims=("layer", "head"))


# ----------------------------------------------------------------------------- 2.6 attribution patching

def check_attribution_patch_heads(fn: Callable, model: HookedModel) -> Callable:
    """For each head: (clean z - corrupted z) . d metric / d z on the corrupted run, summed over batch, pos, d_head."""
    L = model.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(L)]

    def estimate(m, clean, corrupted, metric, grad_run: str = "corrupted", sign: float = 1.0):
        _, c = m.run_with_cache(clean, names_filter=names)
        _, x = m.run_with_cache(corrupted, names_filter=names)
        with torch.enable_grad():
            logits, run = m.run_with_cache(clean if grad_run == "clean" else corrupted, names_filter=names, grad=True)
            grads = torch.autograd.grad(metric(logits), [run[n] for n in names])
        return torch.stack([(sign * (c[n] - x[n]) * g).sum((0, 1, 3)) for n, g in zip(names, grads)])

    mistakes = {"the gradient is the clean run's: attribution patching takes the metric's gradient on the corrupted "
                "run, the point it extrapolates from": lambda m, a, b, metric: estimate(m, a, b, metric, "clean"),
                "the wrong sign: the change is clean minus corrupted (what patching writes in, minus what was there)":
                lambda m, a, b, metric: estimate(m, a, b, metric, sign=-1.0)}
    cases = []
    for batch, pos, changed, seed, label in [(2, 6, (3,), 90, "one token changed"), (3, 5, (1, 4), 91, "two tokens changed")]:
        clean, corrupted = _pair(model, batch, pos, seed, changed)
        answers = torch.randint(1, model.cfg.d_vocab, (batch,), generator=_rng(seed))
        cases.append(Case((model, clean, corrupted, _metric(answers, (answers + 3) % model.cfg.d_vocab)), label=label))
    shape = _shape(lambda c: (L, model.cfg.n_heads), "One estimate per head: [n_layers, n_heads], summed over the "
                   "batch, positions and d_head.")
    return run_check("attribution_patch_heads", fn, attribution_patch_heads, cases, atol=1e-3, rtol=1e-3,
                     properties=[shape, _recognise(mistakes, attribution_patch_heads, atol=1e-3)], dims=("layer", "head"))


def check_path_patch(fn: Callable, model: HookedModel) -> Callable:
    """Pass 1: sender patched, MLPs and other heads in between frozen, cache the receivers' q, k, v. Pass 2: one
    receiver head's q, k or v from pass 1. -> [3, n_heads]."""
    L, H = model.cfg.n_layers, model.cfg.n_heads

    def one_pass(m, t, c, x, sender, r, metric, freeze_mlps=True, freeze_heads=True, order="qkv"):
        ls, hs = sender
        hooks = [(f"blocks.{ls}.attn.hook_z", functools.partial(patching.patch_head_hook, head=hs, clean_cache=c))]
        for layer in range(ls, r):
            if freeze_mlps:
                hooks.append((f"blocks.{layer}.hook_mlp_out", lambda a, hook: x[hook.name]))
            if freeze_heads and layer > ls:
                hooks.append((f"blocks.{layer}.attn.hook_z", lambda a, hook: x[hook.name]))
        names = [f"blocks.{r}.attn.hook_{i}" for i in order]
        with m.hooks(hooks):
            sent = m.run_with_cache(t, names_filter=names)[1]
        grid = torch.zeros(3, H)
        for i, name in enumerate(names):
            for h in range(H):
                hook = functools.partial(patching.patch_head_hook, head=h, clean_cache=sent)
                grid[i, h] = float(metric(m.run_with_hooks(t, fwd_hooks=[(name, hook)])))
        return grid

    mistakes = {"the MLPs between sender and receivers must keep their corrupted values (hook_mlp_out): only the "
                "direct path from the sender's output to the receiver's input counts":
                lambda *a: one_pass(*a, freeze_mlps=False),
                "the heads of the layers between sender and receivers must keep their corrupted values (their hook_z): "
                "only the direct path counts": lambda *a: one_pass(*a, freeze_heads=False),
                "the rows are in the wrong order: queries, then keys, then values": lambda *a: one_pass(*a, order="kqv")}
    cases = []
    for batch, pos, changed, sender, receiver, label in [
            (2, 6, (2,), (0, 1), L - 1, "sender in layer 0, receivers in the last layer"),
            (3, 5, (1, 3), (L - 2, H - 1), L - 1, "the last two layers"), (1, 4, (1,), (0, 0), 1, "one prompt")]:
        clean, corrupted = _pair(model, batch, pos, 110 + batch, changed)
        answers = torch.randint(1, model.cfg.d_vocab, (batch,), generator=_rng(batch))
        metric = _metric(answers, (answers + 3) % model.cfg.d_vocab)
        cases.append(Case((model, corrupted, _cache_dict(model, clean), _cache_dict(model, corrupted), sender, receiver,
                           metric), label=label))
    shape = _shape(lambda c: (3, H), "One row per receiver input (q, k, v), one column per receiver head: [3, n_heads].")
    return _run_cached("path_patch", fn, path_patch, model, (2, 3), cases, atol=1e-3, rtol=1e-3,
                       properties=[shape, _recognise(mistakes, lambda m, t, c, x, s, r, metric: path_patch(
                           m, t, ActivationCache(c, m), ActivationCache(x, m), s, r, metric), atol=1e-3)],
                       dims=("input", "head"))


# ----------------------------------------------------------------------------- 2.7 ablation choices

def check_ablate_head_z(fn: Callable) -> Callable:
    """Zero, the reference prompts' mean at each position, or the reference prompt of the same index."""
    g = _rng(100)
    z = torch.randn(3, 5, 4, 2, generator=g) + torch.arange(5.0)[:, None, None]          # [batch, pos, head, d_head]
    reference = torch.randn(3, 5, 4, 2, generator=g) * 2 - torch.arange(5.0)[:, None, None]
    big_reference = torch.randn(6, 5, 4, 2, generator=g) + 3.0

    def replaced(z, head, value):
        z = z.clone()
        z[:, :, head] = value
        return z

    mistakes = {
        "the mean should be over the reference prompts only, one vector per position, not over positions too":
        lambda z, h, mode, r: replaced(z, h, r[:, :, h].mean((0, 1))) if mode == "mean" else ablate_head_z(z, h, mode, r),
        "the mean should come from the reference prompts, not from the prompts being ablated":
        lambda z, h, mode, r: replaced(z, h, z[:, :, h].mean(0)) if mode == "mean" else ablate_head_z(z, h, mode, r),
        "resampling replaces the head's output with the reference prompts' output for the same head":
        lambda z, h, mode, r: z.clone() if mode == "resample" else ablate_head_z(z, h, mode, r),
        "this changed a position, not a head: z is [batch, pos, head, d_head], so the head is z[:, :, head]":
        lambda z, h, mode, r: torch.cat([z[:, :h], torch.zeros_like(z[:, h:h + 1]), z[:, h + 1:]], 1)
        if mode == "zero" else ablate_head_z(z, h, mode, r)}

    def returned(case: Case, got: Any) -> str | None:
        return "return the new z: a hook that returns None leaves the activation as it was" if got is None else None

    def others_kept(case: Case, got: Any) -> str | None:
        z_in, head = case.args[0], case.args[1]
        if isinstance(got, torch.Tensor) and got.shape == z_in.shape:
            others = [h for h in range(z_in.shape[2]) if h != head]
            if not torch.allclose(got[:, :, others], z_in[:, :, others]):
                return f"heads other than {head} should be left as they are"
        return None

    cases = [Case((z, 1, "zero", reference), label="zero, head 1"), Case((z, 2, "mean", reference), label="mean, head 2"),
             Case((z, 0, "mean", big_reference), label="mean over 6 reference prompts"),
             Case((z, 3, "resample", reference), label="resample, head 3"),
             Case((z[:, :4, :4], 2, "zero", reference[:, :4]), label="zero, as many positions as heads")]
    return run_check("ablate_head_z", fn, ablate_head_z, cases, properties=[returned, _recognise(mistakes, ablate_head_z),
                                                                             others_kept])
