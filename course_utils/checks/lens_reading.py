"""Checks for notebook 03, sections 3.1-3.3: the logit lens, every read point at once, the rank of a
token, the decision point, KL from the final distribution and top-1 agreement; and the references
they compare with.

The logit lens is `course_utils.lens.logit_lens` and the KL is `course_utils.tuned_lens.kl_from_final`,
the code that scores the lenses for the model card, so the checks accept exactly what the card
reports. Every check runs the learner's function on inputs built so that each plausible mistake (no
final norm, the norm twice, a read point off by one, KL the wrong way round, probabilities where
log-probabilities belong) changes the answer; a mistake is named only when the answer equals that
mistake and no other.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from course_utils import lens, tuned_lens
from course_utils.checks import Case, run_check
from course_utils.checks.mistakes import recognise, rng
from course_utils.hooked_model import HookedModel

# ----------------------------------------------------------------------------- references

logit_lens = lens.logit_lens                      # (model, resid [..., d_model]) -> [..., d_vocab]
kl_from_final = tuned_lens.kl_from_final          # (lens_logits [..., V], final_logits [..., V]) -> [...]

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


# ----------------------------------------------------------------------------- inputs

def random_tokens(model: HookedModel, batch: int, pos: int, seed: int) -> torch.Tensor:
    """[batch, pos] random token ids, the start token first."""
    body = torch.randint(1, model.cfg.d_vocab, (batch, pos - 1), generator=rng(seed))
    return torch.cat([torch.full((batch, 1), model.bos_token_id), body], 1).to(model.device)


@torch.no_grad()
def residuals(model: HookedModel, batch: int = 2, pos: int = 6, seed: int = 0) -> torch.Tensor:
    """Real residuals at every read point: [n_points, batch, pos, d_model]."""
    return tuned_lens.resid_stack(model, random_tokens(model, batch, pos, seed))[1].to(model.dtype)


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
    real = residuals(model)
    d = model.cfg.d_model
    cases = [Case((model, real), label="real residuals at every read point, [n_points, batch, pos, d_model]"),
             Case((model, 20 * torch.randn(3, d, generator=rng(1)) + 3),
                  label="random vectors off-centre, [3, d_model]"),
             Case((model, 1e-3 * torch.randn(2, 4, d, generator=rng(2))), label="tiny vectors, where eps matters"),
             Case((model, real[-1, 0, -1]), label="a single vector [d_model]")]
    unembed = lambda x: x @ model.W_U + model.b_U                              # noqa: E731
    mistakes = {
        "you unembedded the raw residual: apply the final norm first (centre, divide by the standard deviation, "
        "times its weight, plus its bias)": lambda m, x: unembed(x),
        "you applied the final norm twice": lambda m, x: unembed(model.ln_final(model.ln_final(x))),
        "use the biased variance, as LayerNorm does (unbiased=False, or the mean of the squared deviations)":
            lambda m, x: unembed(_ln_variant(model, x, unbiased=True)),
        "add the norm's eps to the variance, inside the square root": lambda m, x: unembed(
            _ln_variant(model, x, eps=False)),
        "you left out the norm's bias": lambda m, x: unembed(_ln_variant(model, x, bias=False)),
        "you left out the norm's weight": lambda m, x: unembed(_ln_variant(model, x, weight=False)),
    }
    return run_check("logit_lens", fn, logit_lens, cases, properties=[recognise(mistakes, logit_lens, atol=1e-4)],
                     atol=1e-4)


def check_lens_logprobs(fn: Callable, model: HookedModel) -> Callable:
    """Log-probabilities of the logit lens at all n_layers + 1 read points."""
    n = model.cfg.n_layers
    cases = [Case((model, random_tokens(model, 1, 9, 3)), label="one row"),
             Case((model, random_tokens(model, 3, 5, 4)), label="three rows")]

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
        "of every layer, then hook_resid_post of the last": lambda m, t: logit_lens(
            model, stacked(t, post + post[-1:])).log_softmax(-1),
        "return log-probabilities (log_softmax), not probabilities (softmax)":
            lambda m, t: lens_logprobs(model, t).exp(),
        "these are logits: normalise them with log_softmax":
            lambda m, t: logit_lens(model, stacked(t, pre + post[-1:])),
        "the final norm's bias is missing (accumulated_resid(apply_ln=True) leaves it out; add "
        "lens.logit_constant, or use the norm itself)": lambda m, t: (lens.apply_ln_to_stack(
            model, None, stacked(t, pre + post[-1:]), recompute_ln=True) @ model.W_U).log_softmax(-1),
    }
    return run_check("lens_logprobs", fn, lens_logprobs, cases, properties=[count, recognise(mistakes, lens_logprobs, atol=1e-4)],
                     atol=1e-4, dims=("point", "batch", "pos", "token"))


# ----------------------------------------------------------------------------- 3.2 where predictions form

def check_rank_of(fn: Callable) -> Callable:
    """Rank 0 = most likely; ties do not count against the token."""
    g = rng(5)
    logprobs = torch.randn(3, 2, 4, 10, generator=g).log_softmax(-1)
    ids = torch.randint(0, 10, (2, 4), generator=g)
    top = logprobs[-1].argmax(-1)
    cases = [Case((logprobs, ids), label="random tokens"),
             Case((logprobs, top), label="the last point's top token: rank 0 there"),
             Case((logprobs, logprobs[0].argmin(-1)), label="the least likely token at the first point"),
             Case((logprobs[:, 0, 0], ids[0, 0]), label="one position, no batch axes")]
    mistakes = {"ranks should start at 0 for the top token: count only the tokens strictly more likely":
                lambda lp, ids: rank_of(lp, ids) + 1,
                "rank 0 is the *most* likely token, not the least": lambda lp, ids: rank_of(-lp, ids)}
    return run_check("rank_of", fn, rank_of, cases, properties=[recognise(mistakes, rank_of)])


def check_decision_point(fn: Callable) -> Callable:
    """The earliest point from which the token stays top-1; n_points if it never settles."""
    patterns = torch.tensor([[0, 0, 0, 0], [3, 0, 0, 0], [0, 2, 0, 0], [1, 1, 0, 0], [4, 0, 1, 0],
                             [0, 0, 0, 5], [2, 2, 2, 2], [0, 3, 1, 0]]).T        # [4 points, 8 positions]
    random = torch.randint(0, 3, (5, 3, 7), generator=rng(6))
    random[-1, :, :5] = 0
    cases = [Case((patterns,), label="hand-made rank sequences, one per column"),
             Case((random,), label="random ranks, [5 points, 3, 7]"),
             Case((patterns[:, 2:4],), label="top-1 early, lost, then regained")]
    mistakes = {"that is the first point where the token is top-1; it is decided only from the point after which "
                "it stays top-1 at every later point":
                lambda r: torch.where((r == 0).any(0), (r == 0).int().argmax(0), r.shape[0]),
                "a token that is not top-1 even at the last point was never decided: give it n_points":
                lambda r: torch.where(r[-1] == 0, decision_point(r), -1)}
    return run_check("decision_point", fn, decision_point, cases, properties=[recognise(mistakes, decision_point)])


# ----------------------------------------------------------------------------- 3.3 KL and agreement

def check_kl_from_final(fn: Callable) -> Callable:
    """KL(final ‖ lens) per position, from logits."""
    g = rng(7)
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
            lambda q, p: (logp(q).exp() * (logp(q) - logp(p))).sum(-1),
        "those are probabilities (softmax) where log-probabilities (log_softmax) belong": lambda q, p: (
            p.softmax(-1) * (p.softmax(-1) - q.softmax(-1))).sum(-1),
        "sum over the vocabulary, not mean": lambda q, p: kl_from_final(q, p) / q.shape[-1],
        "the logits must be turned into log-probabilities first (log_softmax)": lambda q, p: (
            p.softmax(-1) * (p - q)).sum(-1),
    }
    def finite(case: Case, got: Any) -> str | None:
        if isinstance(got, torch.Tensor) and got.is_floating_point() and not torch.isfinite(got).all():
            return ("your KL has inf or nan for a very confident lens: log(softmax(x)) underflows to log(0); "
                    "use log_softmax, which stays finite")
        return None
    return run_check("kl_from_final", fn, kl_from_final, cases, properties=[finite, recognise(mistakes, kl_from_final, atol=1e-4)],
                     atol=1e-4)


def check_top1_agreement(fn: Callable) -> Callable:
    g = rng(8)
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


