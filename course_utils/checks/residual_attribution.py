"""Checks for notebook 02, sections 2.1 and 2.4: the residual stream split into its parts, the logit
difference between two tokens, and direct logit attribution with the final norm's scale frozen; and
their references (the library's `lens` wherever it has one).

Also the plumbing that every notebook-02 check taking a cache shares: a learner's function that takes
a cache is checked with a fresh `ActivationCache` around a copied dict (`run_cached`), so an answer
that writes into the cache is caught like any other in-place edit.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from course_utils import lens, patching
from course_utils.cache import ActivationCache
from course_utils.checks import Case, run_check
from course_utils.checks.mistakes import expect_shape, recognise, rng
from course_utils.hooked_model import HookedModel

# ----------------------------------------------------------------------------- references

logit_diff = patching.logit_diff                          # logits [batch, pos, d_vocab] -> [batch]


def residual_parts(model: HookedModel, cache: ActivationCache) -> tuple[torch.Tensor, list[str]]:
    """The final residual stream [batch, pos, d_model] as a stack of parts [n_parts, batch, pos, d_model]:
    every head (z @ W_O), every MLP, the token and position embeddings, and the attention output biases,
    with labels "L0H0", ..., "0_mlp_out", ..., "embed", "pos_embed", "bias"."""
    return lens.full_resid_decomposition(model, cache, expand_neurons=False)


def direct_logit_attribution(model: HookedModel, cache: ActivationCache, stack: torch.Tensor,
                             answers: torch.Tensor, wrongs: torch.Tensor) -> torch.Tensor:
    """Each part's direct effect on the logit difference answers - wrongs at the last position, through the
    final norm with its scale frozen at the whole residual's. stack [n_parts, batch, d_model] -> [n_parts, batch]."""
    return lens.logit_attrs(model, cache, stack, answers, wrongs, pos_slice=-1)


# ----------------------------------------------------------------------------- shared by the checks that take a cache

def random_prompts(model: HookedModel, batch: int, pos: int, seed: int) -> torch.Tensor:
    """Random tokens [batch, pos], the start token first."""
    body = torch.randint(1, model.cfg.d_vocab, (batch, pos - 1), generator=rng(seed))
    return torch.cat([torch.full((batch, 1), model.bos_token_id), body], 1).to(model.device)


def cache_dict(model: HookedModel, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every activation of a run as a plain dict, which run_check copies and watches for in-place edits."""
    _, cache = model.run_with_cache(tokens)
    return dict(cache.cache_dict)


def _cache_arg(fn: Callable, model: HookedModel, index: int | tuple[int, ...]) -> Callable:
    """`fn` with its argument(s) `index` (dicts of activations) wrapped in an ActivationCache, as the notebook
    passes them."""
    indices = (index,) if isinstance(index, int) else index

    @functools.wraps(fn)
    def wrapped(*args):
        args = [ActivationCache(a, model) if i in indices else a for i, a in enumerate(args)]
        return fn(*args)
    return wrapped


def run_cached(name: str, fn: Callable, reference: Callable, model: HookedModel, index: int | tuple[int, ...],
               cases: list[Case], **kw) -> Callable:
    """run_check for functions whose argument(s) `index` are caches: the cases hold dicts, each call gets an
    ActivationCache around its own copy. Returns `fn` or `reference`, as run_check does."""
    mine, ref = _cache_arg(fn, model, index), _cache_arg(reference, model, index)
    result = run_check(name, mine, ref, cases, **kw)
    return fn if result is mine else reference


def cached(reference: Callable, *indices: int) -> Callable:
    """`reference` taking dicts at the positions `indices` (as the cases hold them): for `recognise`."""
    def call(*args):
        model = args[0]
        return reference(*[ActivationCache(a, model) if i in indices else a for i, a in enumerate(args)])
    return call


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
        if not isinstance(labels, (list, tuple)) or len(labels) != stack.shape[0]:
            return f"{stack.shape[0]} parts but {len(labels) if hasattr(labels, '__len__') else 'no'} labels: one label per part"
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
    cases = [Case((model, cache_dict(model, random_prompts(model, 2, 7, 1))), label="two random prompts"),
             Case((model, cache_dict(model, random_prompts(model, 1, 3, 2))), label="one short prompt")]
    return run_cached("residual_parts", fn, residual_parts, model, 1, cases, atol=1e-4, rtol=1e-3,
                      properties=[recognise(mistakes, cached(residual_parts, 1), atol=1e-4, rtol=1e-3), sums],
                      dims=("part", "batch", "pos", "d_model"))


# ----------------------------------------------------------------------------- 2.4 direct logit attribution

def check_logit_diff(fn: Callable) -> Callable:
    """logits[b, -1, answers[b]] - logits[b, -1, wrongs[b]]; it must keep its gradient."""
    g = rng(50)

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
                     properties=[per_prompt, recognise(mistakes, logit_diff)], dims=("batch",))


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
        lambda m, c, s, a, w: -cached(direct_logit_attribution, 1)(m, c, s, a, w)}

    def case(batch: int, pos: int, seed: int, label: str, random_stack: bool = False) -> Case:
        store = cache_dict(model, random_prompts(model, batch, pos, seed))
        stack = (torch.randn(5, batch, model.cfg.d_model, generator=rng(seed)) * 3 if random_stack
                 else residual_parts(model, ActivationCache(store, model))[0][:, :, -1].detach())
        answers = torch.randint(0, model.cfg.d_vocab, (batch,), generator=rng(seed + 1))
        keep = {k: store[k] for k in ("ln_final.hook_scale", f"blocks.{L - 1}.hook_resid_post")}
        return Case((model, keep, stack.to(model.device), answers, (answers + 5) % model.cfg.d_vocab), label=label)

    cases = [case(2, 6, 51, "every part of two prompts"), case(3, 4, 52, "random parts", random_stack=True),
             case(1, 8, 53, "one prompt")]
    shape = expect_shape(lambda c: tuple(c.args[2].shape[:2]), "[n_parts, batch]")
    return run_cached("direct_logit_attribution", fn, direct_logit_attribution, model, 1, cases, atol=1e-3, rtol=1e-3,
                      properties=[shape, recognise(mistakes, cached(direct_logit_attribution, 1), atol=1e-3, rtol=1e-3)],
                      dims=("part", "batch"))
