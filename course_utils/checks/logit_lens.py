"""Checks for notebook 03 · The logit lens and the tuned lens, and the references they compare with.

The logit lens is `course_utils.lens.logit_lens`, and the KL and the tuned lens's loss are those of
`course_utils.tuned_lens`, the code that trains and scores the tuned lens the model card quotes. The
rest of the references live here. Every check runs the learner's function on inputs built so that
each plausible mistake (no final norm, the norm twice, a read point off by one, KL the wrong way
round, probabilities where log-probabilities belong) changes the answer, and names the mistake when
the answer is exactly that mistake.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from course_utils import lens, tuned_lens
from course_utils.checks import Case, clone_inputs, run_check
from course_utils.hooked_model import HookedModel

# ----------------------------------------------------------------------------- references

logit_lens = lens.logit_lens                      # (model, resid [..., d_model]) -> [..., d_vocab]
kl_from_final = tuned_lens.kl_from_final          # (lens_logits [..., V], final_logits [..., V]) -> [...]
tuned_lens_loss = tuned_lens.tuned_lens_loss      # (model, resid, weight, bias, final_logits) -> scalar


def lens_logprobs(model: HookedModel, tokens: torch.Tensor) -> torch.Tensor:
    """The logit lens's log-probabilities at every read point (the stream entering each layer, then the
    stream leaving the last): tokens [batch, pos] -> [n_layers + 1, batch, pos, d_vocab]."""
    names = tuned_lens.read_point_names(model)
    _, cache = model.run_with_cache(tokens, names_filter=names)
    stack = torch.stack([cache[name] for name in names])                  # [n_points, batch, pos, d_model]
    return logit_lens(model, stack).log_softmax(-1)


def rank_of(logprobs: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Rank of `token_ids` [...] in each distribution (0 = most likely): logprobs [n_points, ..., d_vocab]
    -> [n_points, ...] (int64): how many tokens are strictly more likely."""
    own = logprobs.gather(-1, token_ids.expand(logprobs.shape[:-1])[..., None])   # [n_points, ..., 1]
    return (logprobs > own).sum(-1)


def decision_point(ranks: torch.Tensor) -> torch.Tensor:
    """The earliest read point from which the token is top-1 (rank 0) at every later point:
    ranks [n_points, ...] -> [...] (int64); n_points where it is not top-1 even at the last point."""
    stays = (ranks == 0).flip(0).cumprod(0).flip(0)                       # top-1 here and at every later point
    return ranks.shape[0] - stays.sum(0)


def top1_agreement(lens_logits: torch.Tensor, final_logits: torch.Tensor) -> torch.Tensor:
    """Share of positions where the lens's top token is the final one: [n_points, ..., V], [..., V] -> [n_points]."""
    agree = lens_logits.argmax(-1) == final_logits.argmax(-1)             # [n_points, ...]
    return agree.flatten(1).float().mean(1)


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


# ----------------------------------------------------------------------------- helpers

def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tokens(model: HookedModel, batch: int, pos: int, seed: int) -> torch.Tensor:
    body = torch.randint(1, model.cfg.d_vocab, (batch, pos - 1), generator=_rng(seed))
    return torch.cat([torch.full((batch, 1), model.bos_token_id), body], 1).to(model.device)


@torch.no_grad()
def _residuals(model: HookedModel, batch: int = 2, pos: int = 6, seed: int = 0) -> torch.Tensor:
    """Real residuals at every read point: [n_points, batch, pos, d_model]."""
    return tuned_lens.resid_stack(model, _tokens(model, batch, pos, seed))[1].to(model.dtype)


def _close(got: Any, expected: torch.Tensor, atol: float = 1e-4) -> bool:
    """Same shape and values (exactly, for an integer `expected`), whatever the dtype."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return False
    got, expected = got.detach().cpu(), expected.detach().cpu()
    if not expected.is_floating_point():
        return bool((got == expected).all())
    return bool(torch.allclose(got.double(), expected.double(), atol=atol, rtol=1e-4))


def _named(reference: Callable, wrong: dict[str, Callable[[Case], torch.Tensor]], atol: float = 1e-4):
    """A property naming a mistake when the answer equals that mistake's result (and the mistake's
    result differs from the right one on this case, so a right answer is never named)."""
    def prop(case: Case, got: Any) -> str | None:
        if not isinstance(got, torch.Tensor):
            return None
        with torch.no_grad():
            right = reference(*clone_inputs(case.args))
            for message, make in wrong.items():
                try:
                    expected = make(case)
                except Exception:
                    continue
                if _close(got, expected, atol) and not _close(right, expected, atol):
                    return message
        return None
    return prop


def _ln_variant(model: HookedModel, resid: torch.Tensor, unbiased: bool = False, weight: bool = True,
                bias: bool = True, eps: bool = True) -> torch.Tensor:
    norm = model.ln_final
    x = resid - resid.mean(-1, keepdim=True)
    x = x / (x.var(-1, keepdim=True, unbiased=unbiased) + (norm.eps if eps else 0.0)).sqrt()
    x = x * norm.weight if weight else x
    return x + norm.bias if bias and getattr(norm, "bias", None) is not None else x


# ----------------------------------------------------------------------------- 3.1 the logit lens

def check_logit_lens(fn: Callable, model: HookedModel) -> Callable:
    """unembed(final_norm(resid)) on any [..., d_model]."""
    real = _residuals(model)
    d = model.cfg.d_model
    cases = [Case((model, real), label="real residuals at every read point, [n_points, batch, pos, d_model]"),
             Case((model, 20 * torch.randn(3, d, generator=_rng(1)) + 3),
                  label="random vectors off-centre, [3, d_model]"),
             Case((model, 1e-3 * torch.randn(2, 4, d, generator=_rng(2))), label="tiny vectors, where eps matters"),
             Case((model, real[-1, 0, -1]), label="a single vector [d_model]")]
    unembed = lambda x: x @ model.W_U + model.b_U                              # noqa: E731
    mistakes = {
        "you unembedded the raw residual: apply the final norm first (centre, divide by the standard deviation, "
        "times its weight, plus its bias)": lambda c: unembed(c.args[1]),
        "you applied the final norm twice": lambda c: unembed(model.ln_final(model.ln_final(c.args[1]))),
        "use the biased variance, as LayerNorm does (unbiased=False, or the mean of the squared deviations)":
            lambda c: unembed(_ln_variant(model, c.args[1], unbiased=True)),
        "add the norm's eps to the variance, inside the square root": lambda c: unembed(
            _ln_variant(model, c.args[1], eps=False)),
        "you left out the norm's bias": lambda c: unembed(_ln_variant(model, c.args[1], bias=False)),
        "you left out the norm's weight": lambda c: unembed(_ln_variant(model, c.args[1], weight=False)),
    }
    return run_check("logit_lens", fn, logit_lens, cases, properties=[_named(logit_lens, mistakes)], atol=1e-4)


def check_lens_logprobs(fn: Callable, model: HookedModel) -> Callable:
    """Log-probabilities of the logit lens at all n_layers + 1 read points."""
    n = model.cfg.n_layers
    cases = [Case((model, _tokens(model, 1, 9, 3)), label="one row"),
             Case((model, _tokens(model, 3, 5, 4)), label="three rows")]

    def stacked(tokens: torch.Tensor, names: list[str]) -> torch.Tensor:
        _, cache = model.run_with_cache(tokens, names_filter=names)
        return torch.stack([cache[name] for name in names])

    pre = [f"blocks.{l}.hook_resid_pre" for l in range(n)]
    post = [f"blocks.{l}.hook_resid_post" for l in range(n)]
    def count(case: Case, got: Any) -> str | None:
        if isinstance(got, torch.Tensor) and got.dim() == 4 and got.shape[0] == n:
            return (f"you returned {n} read points; there are {n + 1}: the stream entering each of the {n} layers, "
                    "and the stream leaving the last")
        return None
    mistakes = {
        "these are the streams *leaving* each layer, with the start (the embeddings) missing: read hook_resid_pre "
        "of every layer, then hook_resid_post of the last": lambda c: logit_lens(
            model, stacked(c.args[1], post + post[-1:])).log_softmax(-1),
        "return log-probabilities (log_softmax), not probabilities (softmax)":
            lambda c: lens_logprobs(model, c.args[1]).exp(),
        "these are logits: normalise them with log_softmax":
            lambda c: logit_lens(model, stacked(c.args[1], pre + post[-1:])),
        "the final norm's bias is missing (accumulated_resid(apply_ln=True) leaves it out; add "
        "lens.logit_constant, or use the norm itself)": lambda c: (lens.apply_ln_to_stack(
            model, None, stacked(c.args[1], pre + post[-1:]), recompute_ln=True) @ model.W_U).log_softmax(-1),
    }
    return run_check("lens_logprobs", fn, lens_logprobs, cases, properties=[count, _named(lens_logprobs, mistakes)],
                     atol=1e-4, dims=("point", "batch", "pos", "token"))


# ----------------------------------------------------------------------------- 3.2 where predictions form

def check_rank_of(fn: Callable) -> Callable:
    """Rank 0 = most likely; ties do not count against the token."""
    g = _rng(5)
    logprobs = torch.randn(3, 2, 4, 10, generator=g).log_softmax(-1)
    ids = torch.randint(0, 10, (2, 4), generator=g)
    top = logprobs[-1].argmax(-1)
    cases = [Case((logprobs, ids), label="random tokens"),
             Case((logprobs, top), label="the last point's top token: rank 0 there"),
             Case((logprobs, logprobs[0].argmin(-1)), label="the least likely token at the first point"),
             Case((logprobs[:, 0, 0], ids[0, 0]), label="one position, no batch axes")]
    mistakes = {"ranks should start at 0 for the top token: count only the tokens strictly more likely":
                lambda c: rank_of(*c.args) + 1,
                "rank 0 is the *most* likely token, not the least": lambda c: rank_of(-c.args[0], c.args[1])}
    return run_check("rank_of", fn, rank_of, cases, properties=[_named(rank_of, mistakes)])


def check_decision_point(fn: Callable) -> Callable:
    """The earliest point from which the token stays top-1; n_points if it never settles."""
    patterns = torch.tensor([[0, 0, 0, 0], [3, 0, 0, 0], [0, 2, 0, 0], [1, 1, 0, 0], [4, 0, 1, 0],
                             [0, 0, 0, 5], [2, 2, 2, 2], [0, 3, 1, 0]]).T        # [4 points, 8 positions]
    random = torch.randint(0, 3, (5, 3, 7), generator=_rng(6))
    random[-1, :, :5] = 0
    cases = [Case((patterns,), label="hand-made rank sequences, one per column"),
             Case((random,), label="random ranks, [5 points, 3, 7]"),
             Case((patterns[:, 2:4],), label="top-1 early, lost, then regained")]
    mistakes = {"that is the first point where the token is top-1; it is decided only from the point after which "
                "it stays top-1 at every later point":
                lambda c: torch.where((c.args[0] == 0).any(0), (c.args[0] == 0).int().argmax(0), c.args[0].shape[0]),
                "a token that is not top-1 even at the last point was never decided: give it n_points":
                lambda c: torch.where(c.args[0][-1] == 0, decision_point(c.args[0]), -1)}
    return run_check("decision_point", fn, decision_point, cases, properties=[_named(decision_point, mistakes)])


# ----------------------------------------------------------------------------- 3.3 KL and agreement

def check_kl_from_final(fn: Callable) -> Callable:
    """KL(final ‖ lens) per position, from logits."""
    g = _rng(7)
    lens_logits = 3 * torch.randn(3, 2, 5, 12, generator=g)
    final = 3 * torch.randn(2, 5, 12, generator=g)
    confident = torch.randn(2, 4, 12, generator=g) * 300                  # probabilities underflow to 0
    cases = [Case((lens_logits, final), label="random, [3 points, 2, 5, 12] against [2, 5, 12]"),
             Case((final[None].expand(2, -1, -1, -1), final), label="the lens equals the final: KL 0"),
             Case((lens_logits[:, 0] + 7.0, final[0]), label="lens logits shifted by a constant (the same distribution)"),
             Case((confident, 3 * torch.randn(2, 4, 12, generator=g)), label="a very confident lens")]
    logp = lambda x: x.log_softmax(-1)                                     # noqa: E731
    mistakes = {
        "that is KL(lens ‖ final): the direction is the other way round, weighted by the final distribution":
            lambda c: (logp(c.args[0]).exp() * (logp(c.args[0]) - logp(c.args[1]))).sum(-1),
        "those are probabilities (softmax) where log-probabilities (log_softmax) belong": lambda c: (
            c.args[1].softmax(-1) * (c.args[1].softmax(-1) - c.args[0].softmax(-1))).sum(-1),
        "sum over the vocabulary, not mean": lambda c: kl_from_final(*c.args) / c.args[0].shape[-1],
        "the logits must be turned into log-probabilities first (log_softmax)": lambda c: (
            c.args[1].softmax(-1) * (c.args[1] - c.args[0])).sum(-1),
    }
    def finite(case: Case, got: Any) -> str | None:
        if isinstance(got, torch.Tensor) and got.is_floating_point() and not torch.isfinite(got).all():
            return ("your KL has inf or nan for a very confident lens: log(softmax(x)) underflows to log(0); "
                    "use log_softmax, which stays finite")
        return None
    return run_check("kl_from_final", fn, kl_from_final, cases, properties=[finite, _named(kl_from_final, mistakes)],
                     atol=1e-4)


def check_top1_agreement(fn: Callable) -> Callable:
    g = _rng(8)
    final = torch.randn(4, 6, 9, generator=g)
    lens_logits = torch.randn(3, 4, 6, 9, generator=g)
    lens_logits[-1] = final
    lens_logits[1, :2] = final[:2]
    cases = [Case((lens_logits, final), label="random, the last point equal to the final"),
             Case((lens_logits[:, 0], final[0]), label="one row")]
    def share(case: Case, got: Any) -> str | None:
        if isinstance(got, torch.Tensor) and got.numel() and got.is_floating_point() and got.max() > 1:
            return "return the share of positions (between 0 and 1), not a count"
        return None
    return run_check("top1_agreement", fn, top1_agreement, cases, properties=[share])


# ----------------------------------------------------------------------------- 3.4 the lens as running DLA

def check_lens_logit_from_dla(fn: Callable, model: HookedModel) -> Callable:
    """Rebuilt from a cache that holds the parts of the stream and the final scale, not the stream itself."""
    n = model.cfg.n_layers
    names = ["hook_embed", "hook_pos_embed", "ln_final.hook_scale"] + [
        f"blocks.{l}.hook_{kind}_out" for l in range(n) for kind in ("attn", "mlp")]
    cases = []
    for seed, (batch, pos) in enumerate([(1, 7), (2, 5)]):
        tokens = _tokens(model, batch, pos, 10 + seed)
        logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
        for label, ids in (("the final top-1 tokens", logits.argmax(-1)),
                           ("random tokens", torch.randint(0, model.cfg.d_vocab, (batch, pos), generator=_rng(seed)))):
            cases.append(Case((model, cache, ids), label=f"{batch} x {pos} tokens, {label}"))
    def direct(case: Case) -> torch.Tensor:
        cache = case.args[1]
        parts, labels = cache.decompose_resid(return_labels=True)
        ends = [len(labels) - 2 * n - 1 + 2 * l for l in range(n + 1)]
        return cache.logit_attrs(parts, case.args[2]).cumsum(0)[ends]
    mistakes = {
        "the running DLA uses the final norm's scale; the logit lens divides each read point by its own: "
        "multiply by scale_final / scale_at_that_point": lambda c: direct(c) + lens.logit_constant(model, c.args[2]),
        "add the part of the logit no component writes, lens.logit_constant(model, tokens)":
            lambda c: lens_logit_from_dla(model, *c.args[1:]) - lens.logit_constant(model, c.args[2]),
    }
    return run_check("lens_logit_from_dla", fn, lens_logit_from_dla, cases,
                     properties=[_named(lens_logit_from_dla, mistakes, 1e-3)], atol=1e-3, dims=("point", "batch", "pos"))


# ----------------------------------------------------------------------------- 3.5 the tuned lens

def check_tuned_lens_loss(fn: Callable, model: HookedModel) -> Callable:
    """KL(final ‖ tuned lens), averaged over tokens and layers, with gradients to weight and bias."""
    n, d = model.cfg.n_layers, model.cfg.d_model
    cases = []
    for seed, tokens in enumerate((8, 5)):
        stack = _residuals(model, 1, tokens + 1, 20 + seed)[:, 0, 1:]            # [n + 1, tokens, d_model]
        g = _rng(seed)
        weight = (torch.eye(d) + 0.05 * torch.randn(n, d, d, generator=g)).requires_grad_()
        bias = (0.1 * torch.randn(n, d, generator=g)).requires_grad_()
        final = logit_lens(model, stack[n]).detach()
        cases.append(Case((model, stack[:n], weight, bias, final), label=f"{tokens} tokens, perturbed translators"))
    eye = torch.eye(d).repeat(n, 1, 1)
    cases.append(Case((model, cases[0].args[1], eye.requires_grad_(), torch.zeros(n, d, requires_grad=True),
                       cases[0].args[4]),
                      label="identity translators: the logit lens's KL"))
    def kl(case: Case, reverse: bool = False, norm: bool = True) -> torch.Tensor:
        model_, resid, weight, bias, final = case.args
        moved = tuned_lens.translate(resid, weight, bias)
        lens_logits = logit_lens(model, moved) if norm else moved @ model.W_U + model.b_U
        return kl_from_final(final, lens_logits) if reverse else kl_from_final(lens_logits, final)
    mistakes = {"that is KL(lens ‖ final): the tuned lens is trained on KL(final ‖ lens)":
                lambda c: kl(c, True).mean(),
                "the translated residual goes through the final norm before the unembedding":
                lambda c: kl(c, norm=False).mean(),
                "average over the layers too, not sum": lambda c: kl(c).mean(-1).sum(),
                "average over the tokens, not sum": lambda c: kl(c).sum(-1).mean()}
    return run_check("tuned_lens_loss", fn, tuned_lens_loss, cases, properties=[_named(tuned_lens_loss, mistakes)],
                     atol=1e-4, grad=True)


# ----------------------------------------------------------------------------- 3.6 patching

def check_patch_resid(fn: Callable, model: HookedModel) -> Callable:
    n = model.cfg.n_layers
    tokens = _tokens(model, 2, 7, 30)
    new = 5 * torch.randn(2, model.cfg.d_model, generator=_rng(31))
    names = tuned_lens.read_point_names(model)
    cases = [Case((model, tokens, names[0], 3, new), label="before layer 0, position 3"),
             Case((model, tokens, names[n - 1], 6, new), label=f"before layer {n - 1}, the last position"),
             Case((model, tokens, names[n], 1, new), label="after the last layer, position 1"),
             Case((model, tokens[:1], names[1 % n], 0, new[:1]), label="one row, position 0")]
    mistakes = {"only position `pos` is patched; you patched every position from `pos` on":
                lambda c: model.run_with_hooks(c.args[1], fwd_hooks=[(c.args[2], _fill_onwards(c.args[3], c.args[4]))])}
    return run_check("patch_resid", fn, patch_resid, cases, properties=[_named(patch_resid, mistakes)], atol=1e-4,
                     dims=("batch", "pos", "token"))


def _fill_onwards(pos: int, new: torch.Tensor):
    """A wrong patch: every position from `pos` on."""
    def hook(resid: torch.Tensor, hook) -> torch.Tensor:
        resid[:, pos:] = new[:, None]
        return resid
    return hook
