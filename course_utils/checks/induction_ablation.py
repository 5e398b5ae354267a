"""Checks for notebook 04, section 4.5 and the path ablations of 4.6: a hook that ablates one head
(zero, mean or resample), a map of every head's ablation effect, and the ablation of one head's
output along one path only (into another head's queries, keys or values); and their references.

Hooks take TransformerLens's form `fn(activation, hook)`, with `hook.name` and `hook.layer()`; the
checks call the learner's hook with real hook points, and a resample source as an ActivationCache.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Any, Callable

import torch

from course_utils.cache import ActivationCache
from course_utils.checks import Case, compare, run_check
from course_utils.checks.induction_scoring import per_token_loss
from course_utils.checks.mistakes import recognise, returns_something, rng
from course_utils.data import repeated_tokens
from course_utils.hook_points import HookPoint
from course_utils.hooked_model import HookedModel

MODES = ("zero", "mean", "resample")
PATHS = ("q", "k", "v")

# ----------------------------------------------------------------------------- references


def head_ablation_hook(z: torch.Tensor, hook, head: int, mode: str = "zero",
                       source: ActivationCache | None = None) -> torch.Tensor:
    """A hook on `blocks.{l}.attn.hook_z`: z [batch, pos, head, d_head] with head `head` replaced by
    zeros ("zero"), by its mean over the batch and all positions ("mean", one d_head vector), or by
    the same hook's z on other sequences, `source[hook.name]` ("resample"). Returns a new tensor."""
    if mode not in MODES:
        raise ValueError(f"mode should be one of {MODES}, not {mode!r}.")
    z = z.clone()
    if mode == "zero":
        z[:, :, head] = 0.0
    elif mode == "mean":
        z[:, :, head] = z[:, :, head].mean((0, 1))                  # [d_head] broadcasts
    else:
        z[:, :, head] = source[hook.name][:, :, head]
    return z


def second_copy_loss(logits: torch.Tensor, tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Mean loss of predicting tokens 2.. of the second copy of `[BOS] A A`: a 0-d tensor."""
    return per_token_loss(logits, tokens)[:, seq_len + 1:].mean()


def ablation_effects(model: HookedModel, tokens: torch.Tensor, seq_len: int, mode: str = "mean",
                     source: ActivationCache | None = None, hook_fn: Callable = head_ablation_hook) -> torch.Tensor:
    """For every head, the rise in second-copy loss on `tokens` ([BOS] A A, |A| = seq_len) when that
    head alone is ablated with `hook_fn`. -> [n_layers, n_heads]"""
    base = second_copy_loss(model(tokens), tokens, seq_len)
    effects = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            hook = partial(hook_fn, head=head, mode=mode, source=source)
            logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
            effects[layer, head] = second_copy_loss(logits, tokens, seq_len) - base
    return effects


def _path_weights(model: HookedModel, layer: int, head: int, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    W = {"q": model.W_Q, "k": model.W_K, "v": model.W_V}[path][layer, head]     # [d_model, d_head]
    b = {"q": model.b_Q, "k": model.b_K, "v": model.b_V}[path][layer, head]     # [d_head]
    return W, b


def path_ablated_logits(model: HookedModel, tokens: torch.Tensor, sender: tuple[int, int],
                        receiver: tuple[int, int], path: str) -> torch.Tensor:
    """Logits [batch, pos, d_vocab] with the sender head's output mean-ablated in one input of the
    receiver head only: its queries ("q"), keys ("k") or values ("v"). Every other reader of the
    residual stream, and the receiver's other inputs, see the sender as it was."""
    (s_layer, s_head), (r_layer, r_head) = sender, receiver
    if path not in PATHS or not s_layer < r_layer:
        raise ValueError(f"path should be one of {PATHS}, and the sender's layer before the receiver's.")
    ln1 = model.block(r_layer).get_submodule(model.family.ln1)
    W, b = _path_weights(model, r_layer, r_head, path)
    store = {}

    def save_output(z, hook):
        store["out"] = z[:, :, s_head] @ model.W_O[s_layer, s_head]              # [batch, pos, d_model]

    def save_resid(resid, hook):
        store["resid"] = resid                                                    # [batch, pos, d_model]

    def patch(act, hook):                                                         # [batch, pos, head, d_head]
        out = store["out"]
        resid = store["resid"] - out + out.mean((0, 1))
        act = act.clone()
        act[:, :, r_head] = ln1(resid) @ W + b
        return act

    return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{s_layer}.attn.hook_z", save_output),
                                                   (f"blocks.{r_layer}.hook_resid_pre", save_resid),
                                                   (f"blocks.{r_layer}.attn.hook_{path}", patch)])


# ----------------------------------------------------------------------------- 4.5 the ablation hook

def _source(shape: tuple[int, ...], n_layers: int, seed: int) -> ActivationCache:
    """A cache of z at every layer, as run_with_cache on other sequences would give."""
    g = rng(seed)
    store = {f"blocks.{l}.attn.hook_z": torch.randn(shape, generator=g) + 10 * (l + 1) for l in range(n_layers)}
    return ActivationCache(store, SimpleNamespace(cfg=SimpleNamespace(n_layers=n_layers)))


def _replaced(z, index, value):
    z = z.clone()
    z[index] = value
    return z


def _hook_mistakes() -> dict[str, Callable]:
    every = slice(None)

    def fill(z, hook, head, mode="zero", source=None, *, index=None, mean=(0, 1), layer=None, all_heads=False):
        index = index or (every, every, head)
        if mode == "zero":
            return _replaced(z, index, 0.0)
        if mode == "mean":
            return _replaced(z, index, z[index].mean(mean, keepdim=True))
        name = hook.name if layer is None else f"blocks.{layer}.attn.hook_z"
        return source[name].clone() if all_heads else _replaced(z, index, source[name][index])

    def mean_of_every_head(z, hook, head, mode="zero", source=None):
        if mode != "mean":
            raise ValueError("only a mistake of mean ablation")
        return _replaced(z, (every, every, head), z.mean((0, 1, 2)))

    return {
        "you replaced a position, not a head: z is [batch, pos, head, d_head], so the head is the third axis":
        lambda z, hook, head, mode="zero", source=None: fill(z, hook, head, mode, source, index=(every, head), mean=0),
        "the mean should be over the batch *and* all positions, one d_head vector for the head; yours is one "
        "per position (a mean over the batch only)": partial(fill, mean=0),
        "the mean should be over the batch *and* all positions, one d_head vector for the head; yours is one "
        "per sequence (a mean over positions only)": partial(fill, mean=1),
        "the mean should be over this head's batch and positions only, not over every head": mean_of_every_head,
        "you read layer 0's z from the source: read this hook's own layer, source[hook.name] "
        "(or source['z', hook.layer()])": partial(fill, layer=0),
        "you replaced every head with the source's z: only head `head` should be resampled":
        partial(fill, all_heads=True),
        "you kept only head `head` and zeroed the others: every other head should stay as it was":
        lambda z, hook, head, mode="zero", source=None: z - head_ablation_hook(z, hook, head, mode, source),
    }


def check_head_ablation_hook(fn: Callable) -> Callable:
    """The hook returns z with one head zeroed, mean-ablated or resampled, and nothing else changed."""
    g = rng(50)
    z = torch.randn(3, 5, 4, 2, generator=g) + torch.arange(5.0)[:, None, None]    # [batch, pos, head, d_head]
    square = torch.randn(2, 4, 4, 3, generator=g) + torch.arange(4.0)[:, None]     # pos = heads
    one = torch.randn(1, 6, 3, 2, generator=g) + 1.0
    hook1, hook2 = HookPoint("blocks.1.attn.hook_z"), HookPoint("blocks.2.attn.hook_z")
    cases = [
        Case((z, hook1), {"head": 1, "mode": "zero"}, "zero ablation of head 1, layer 1"),
        Case((z, hook1), {"head": 3, "mode": "mean"}, "mean ablation of head 3, layer 1"),
        Case((z, hook1), {"head": 2, "mode": "resample", "source": _source(z.shape, 3, 51)},
             "resample ablation of head 2 in layer 1, from a cache of three layers"),
        Case((square, hook2), {"head": 0, "mode": "mean"}, "mean ablation, as many positions as heads"),
        Case((square, hook2), {"head": 3, "mode": "resample", "source": _source(square.shape, 3, 52)},
             "resample ablation in layer 2, as many positions as heads"),
        Case((square, hook1), {"head": 2, "mode": "zero"}, "zero ablation, as many positions as heads"),
        Case((one, hook1), {"head": 0, "mode": "mean"}, "mean ablation, a batch of one sequence")]
    snapshots = {id(c): {k: v.clone() for k, v in c.kwargs["source"].items()} for c in cases if "source" in c.kwargs}

    def source_untouched(case: Case, got: Any) -> str | None:
        for name, before in snapshots.get(id(case), {}).items():
            if not torch.equal(case.kwargs["source"][name], before):
                return (f"your function changed the source cache in place ({name}); read it, never write it: the "
                        "cache is reused by every later run")
        return None

    def others_untouched(case: Case, got: Any) -> str | None:
        z_in, head = case.args[0], case.kwargs["head"]
        if isinstance(got, torch.Tensor) and got.shape == z_in.shape and got.dtype == z_in.dtype:
            for other in range(z_in.shape[2]):
                if other != head and compare(got[:, :, other], z_in[:, :, other]) is not None:
                    return f"head {other} changed, but only head {head} should be ablated; leave the others as they are"
        return None

    return run_check("head_ablation_hook", fn, head_ablation_hook, cases, dims=("batch", "pos", "head", "d_head"),
                     properties=[returns_something("a hook that returns None leaves the activation as it was: "
                                                   "return the new z"),
                                 source_untouched, recognise(_hook_mistakes(), head_ablation_hook), others_untouched])


# ----------------------------------------------------------------------------- 4.5 every head

def check_ablation_effects(fn: Callable, model: HookedModel) -> Callable:
    """Every head's ablation effect on the second-copy loss, [n_layers, n_heads], for each mode."""
    seq_len = 6
    tokens = repeated_tokens(2, seq_len, model.cfg.d_vocab, bos_id=model.bos_token_id, seed=60, low=1)
    other = repeated_tokens(2, seq_len, model.cfg.d_vocab, bos_id=model.bos_token_id, seed=61, low=1)
    _, source = model.run_with_cache(other, names_filter=lambda name: name.endswith("attn.hook_z"))
    base = lambda m, t, n, mode="mean", source=None: second_copy_loss(m(t), t, n)   # noqa: E731
    mistakes = {
        "these are the ablated losses themselves: subtract the loss of the unablated model, so that 0 means "
        "'no effect'": lambda m, t, n, mode="mean", source=None: ablation_effects(m, t, n, mode, source) + base(m, t, n),
        "the loss should be over the second copy only (positions seq_len + 1 on of per_token_loss), where "
        "induction can help": lambda m, t, n, mode="mean", source=None: ablation_effects(
            m, t, 0, mode, source),
        "this is the loss *fall*, unablated minus ablated; the effect is ablated minus unablated (positive "
        "when the head helps)": lambda m, t, n, mode="mean", source=None: -ablation_effects(m, t, n, mode, source)}
    cases = [Case((model, tokens, seq_len), {"mode": "zero"}, "zero ablation"),
             Case((model, tokens, seq_len), {"mode": "mean"}, "mean ablation"),
             Case((model, tokens, seq_len), {"mode": "resample", "source": source}, "resample ablation")]
    return run_check("ablation_effects", fn, ablation_effects, cases, atol=1e-4, rtol=1e-3, dims=("layer", "head"),
                     properties=[recognise(mistakes, ablation_effects, atol=1e-4, rtol=1e-3)])


# ----------------------------------------------------------------------------- 4.6 path ablation

def _path_variant(model, tokens, sender, receiver, path, *, zero=False, all_heads=False, norm=True, bias=True,
                  which=None):
    (s_layer, s_head), (r_layer, r_head) = sender, receiver
    which = which or path
    ln1 = model.block(r_layer).get_submodule(model.family.ln1) if norm else (lambda x: x)
    W, b = _path_weights(model, r_layer, r_head, which)
    store = {}

    def patch(act, hook):
        out = store["out"]
        resid = store["resid"] - out + (0 if zero else out.mean((0, 1)))
        act = act.clone()
        if all_heads:
            Ws, bs = {"q": (model.W_Q, model.b_Q), "k": (model.W_K, model.b_K), "v": (model.W_V, model.b_V)}[which]
            return torch.einsum("bpd,hde->bphe", ln1(resid), Ws[r_layer]) + bs[r_layer]
        act[:, :, r_head] = ln1(resid) @ W + (b if bias else 0)
        return act

    return model.run_with_hooks(tokens, fwd_hooks=[
        (f"blocks.{s_layer}.attn.hook_z", lambda z, hook: store.update(out=z[:, :, s_head] @ model.W_O[s_layer, s_head])),
        (f"blocks.{r_layer}.hook_resid_pre", lambda r, hook: store.update(resid=r)),
        (f"blocks.{r_layer}.attn.hook_{which}", patch)])


def check_path_ablated_logits(fn: Callable, model: HookedModel) -> Callable:
    """Logits with one head's output mean-ablated in one input (q, k or v) of one later head only."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    tokens = repeated_tokens(2, 8, model.cfg.d_vocab, bos_id=model.bos_token_id, seed=70, low=1)
    last = L - 1
    cases = [Case((model, tokens, (0, 0), (last, 1 % H), "k"), label=f"head 0.0 into the keys of head {last}.{1 % H}"),
             Case((model, tokens, (0, H - 1), (last, 0), "q"), label=f"head 0.{H - 1} into the queries of head {last}.0"),
             Case((model, tokens, (0, 1 % H), (last, H - 1), "v"), label=f"head 0.{1 % H} into the values of {last}.{H - 1}"),
             Case((model, tokens[:1], (max(last - 1, 0), 2 % H), (last, 2 % H), "k"), label="one sequence, adjacent layers")]

    def other_path(m, t, s, r, path):
        return _path_variant(m, t, s, r, path, which={"q": "k", "k": "v", "v": "q"}[path])

    mistakes = {
        "you removed the sender's output (zero ablation); replace it by its mean over the batch and positions":
        partial(_path_variant, zero=True),
        "you changed every head of the receiver's layer: only the receiver head's input should change":
        partial(_path_variant, all_heads=True),
        "the receiver reads its residual through its layer's LayerNorm: apply ln1 to the patched residual "
        "before W_Q/W_K/W_V": partial(_path_variant, norm=False),
        "add the receiver's bias (b_Q, b_K or b_V) after multiplying by its weight": partial(_path_variant, bias=False),
        "this changes another input of the receiver (the next of q, k, v), not the one named by `path`": other_path,
        "this mean-ablates the sender everywhere (every later reader sees it changed); only the receiver's one "
        "input should": lambda m, t, s, r, path: m.run_with_hooks(t, fwd_hooks=[(
            f"blocks.{s[0]}.attn.hook_z", partial(head_ablation_hook, head=s[1], mode="mean"))])}
    return run_check("path_ablated_logits", fn, path_ablated_logits, cases, atol=1e-4, rtol=1e-3,
                     dims=("batch", "pos", "vocab"),
                     properties=[recognise(mistakes, path_ablated_logits, atol=1e-4, rtol=1e-3)])
