"""Checks for notebook 04, sections 4.1-4.4: attention patterns, head scores, per-token loss, the
in-context learning score and the induction score; and the references they compare with.

The previous-token and induction scores are those of `course_utils.model_facts`, the code that
measures the bundled model's card, so the checks accept exactly what the card reports. The checks
run the learner's function on synthetic patterns built so that each plausible mistake (a wrong
diagonal, a forgotten start token, the wrong axis) changes the answer; a mistake is named only when
the answer equals that mistake and no other.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from course_utils import model_facts
from course_utils.checks import Case, _as_number, run_check
from course_utils.checks.mistakes import expect_shape, per_key, recognise, rng
from course_utils.data import repeated_tokens
from course_utils.hooked_model import HookedModel

# ----------------------------------------------------------------------------- references

prev_token_scores = model_facts.prev_token_scores    # [layer, batch, head, q, k] -> [layer, head]
induction_scores = model_facts.induction_scores      # (patterns, seq_len) -> [layer, head]
SCORE_NAMES = ("previous-token", "current-token", "first-token")


def cache_patterns(model: HookedModel, tokens: torch.Tensor) -> torch.Tensor:
    """Every layer's attention pattern on `tokens` [batch, pos]: [n_layers, batch, head, q, k]."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_pattern"))
    return cache.stack_activation("pattern")


def current_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    """Mean attention from each query to itself, queries 1.. (query 0 has no choice). -> [layer, head]"""
    return patterns.diagonal(dim1=-2, dim2=-1)[..., 1:].mean((1, -1))


def first_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    """Mean attention from each query to position 0, queries 1.. (query 0 has no choice). -> [layer, head]"""
    return patterns[..., 1:, 0].mean((1, -1))


def head_scores(patterns: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three head-type scores of patterns [layer, batch, head, q, k], each [layer, head]."""
    return {"previous-token": prev_token_scores(patterns), "current-token": current_token_scores(patterns),
            "first-token": first_token_scores(patterns)}


def per_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Loss of predicting each next token: logits [batch, pos, d_vocab], tokens [batch, pos] -> [batch, pos - 1].
    Element i is -log p(tokens[:, i + 1] | tokens[:, :i + 1])."""
    logprobs = logits.float().log_softmax(-1)[:, :-1]                      # [batch, pos - 1, d_vocab]
    return -logprobs.gather(-1, tokens[:, 1:, None].to(logits.device))[..., 0]


def icl_score(token_losses: torch.Tensor, early: int | slice, late: int | slice) -> float:
    """Olsson et al.'s in-context learning score: the mean loss at position(s) `late` minus the mean
    loss at position(s) `early`. token_losses [batch, pos]; `early` and `late` index the pos axis."""
    return (token_losses[:, late].mean() - token_losses[:, early].mean()).item()


# ----------------------------------------------------------------------------- synthetic patterns

def causal_patterns(shape: tuple[int, ...], seed: int, sharpness: float = 2.5) -> torch.Tensor:
    """Random attention patterns [..., n, n]: causal, rows summing to 1, far from uniform."""
    n = shape[-1]
    logits = torch.randn(shape, generator=rng(seed)) * sharpness
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    return logits.masked_fill(future, float("-inf")).softmax(-1)


def ideal_heads(n: int) -> torch.Tensor:
    """[1, 1, 4, n, n]: a previous-token, a current-token, a first-token and a uniform head."""
    prev = torch.zeros(n, n)
    prev[torch.arange(1, n), torch.arange(n - 1)] = 1.0
    prev[0, 0] = 1.0
    first = torch.zeros(n, n)
    first[:, 0] = 1.0
    uniform = torch.ones(n, n).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    return torch.stack([prev, torch.eye(n), first, uniform])[None, None]


def ideal_induction(seq_len: int) -> torch.Tensor:
    """[1, 1, 2, 2n+1, 2n+1] over `[BOS] A A`: a perfect induction head, and a duplicate-token head."""
    n = 2 * seq_len + 1
    induction, duplicate = torch.zeros(n, n), torch.zeros(n, n)
    induction[:, 0] = duplicate[:, 0] = 1.0
    second = torch.arange(seq_len + 1, n)                  # queries of the second copy
    induction[second, 0] = duplicate[second, 0] = 0.0
    induction[second, second - seq_len + 1] = 1.0
    duplicate[second, second - seq_len] = 1.0
    return torch.stack([induction, duplicate])[None, None]


def _score_shape(case: Case) -> tuple[int, int]:
    patterns = case.args[0]
    return patterns.shape[0], patterns.shape[2]


SCORE_SHAPE = expect_shape(_score_shape, "[n_layers, n_heads] (average over the batch, axis 1, and the queries)")
LAYER_HEAD = ("layer", "head")


# ----------------------------------------------------------------------------- 4.1 looking

def check_cache_patterns(fn: Callable, model: HookedModel) -> Callable:
    """Every layer's pattern, stacked as [n_layers, batch, head, q, k]."""
    L = model.cfg.n_layers
    tokens = repeated_tokens(L, 6, model.cfg.d_vocab, bos_id=model.bos_token_id, seed=1, low=1)

    def shape(case: Case, got: Any) -> str | None:
        _, toks = case.args
        want = (L, toks.shape[0], model.cfg.n_heads, toks.shape[1], toks.shape[1])
        if isinstance(got, torch.Tensor) and tuple(got.shape) != want:
            return (f"expected [n_layers, batch, head, query_pos, key_pos] = {want}, got {tuple(got.shape)}. "
                    "Stack the layers along a new first axis: cache.stack_activation('pattern') or torch.stack([...]).")
        return None

    mistakes = {"layers and batch are swapped: put the layer axis first, [n_layers, batch, head, q, k]":
                lambda m, t: cache_patterns(m, t).transpose(0, 1),
                "every layer holds layer 0's pattern: cache blocks.{l}.attn.hook_pattern for each layer l":
                lambda m, t: cache_patterns(m, t)[:1].expand(L, *cache_patterns(m, t).shape[1:])}
    cases = [Case((model, tokens), label=f"{L} repeated sequences (batch = n_layers)"),
             Case((model, tokens[:1, :9]), label="one sequence"),
             Case((model, tokens[:, :2]), label="two positions")]
    return run_check("cache_patterns", fn, cache_patterns, cases, atol=1e-5, rtol=1e-3,
                     properties=[shape, recognise(mistakes, cache_patterns)])


# ----------------------------------------------------------------------------- 4.2 head types by score

def _score_cases(seed: int) -> list[Case]:
    return [Case((causal_patterns((2, 3, 3, 7, 7), seed),), label="random patterns, batch = heads"),
            Case((ideal_heads(8),), label="ideal previous-, current-, first-token and uniform heads"),
            Case((causal_patterns((2, 2, 4, 9, 9), seed + 1),), label="random patterns, batch = layers"),
            Case((causal_patterns((3, 5, 2, 6, 6), seed + 2),), label="random patterns, 3 layers"),
            Case((causal_patterns((1, 2, 3, 3, 3), seed + 3),), label="three positions")]


def _wrong_axes(score: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Callable]:
    return {"you averaged over the head axis instead of the batch axis (patterns are [layer, batch, head, q, k])":
            lambda p: score(p.transpose(1, 2)),
            "you averaged over the layer axis instead of the batch axis (patterns are [layer, batch, head, q, k])":
            lambda p: score(p.transpose(0, 1))}


SCORE_MISTAKES = {
    "previous-token": {
        "your scores are those of the diagonal at offset +1 (the *next* token), which a causal pattern never "
        "attends to; the previous token is the diagonal at offset -1": lambda p: p.diagonal(1, -2, -1).mean((1, -1)),
        "this is attention two tokens back: the previous token is the diagonal at offset -1":
        lambda p: p.diagonal(-2, -2, -1).mean((1, -1)),
        "you included query 1, whose previous token is the start token: average over queries 2 and later":
        lambda p: p.diagonal(-1, -2, -1).mean((1, -1)),
        "this is the current token (offset 0), not the previous one (offset -1)": current_token_scores,
        **_wrong_axes(prev_token_scores)},
    "current-token": {
        "you included query 0, which can only attend to itself: average over queries 1 and later":
        lambda p: p.diagonal(0, -2, -1).mean((1, -1)),
        "this is the previous token (offset -1), not the current one (offset 0)": prev_token_scores,
        **_wrong_axes(current_token_scores)},
    "first-token": {
        "you included query 0, which can only attend to itself: average over queries 1 and later":
        lambda p: p[..., :, 0].mean((1, -1)),
        "this is attention *from* position 0 (a row of the pattern), not *to* it (a column): "
        "patterns are [..., query, key]": lambda p: p[..., 0, 1:].mean((1, -1)),
        "this is attention to the last position, not the first": lambda p: p[..., 1:, -1].mean((1, -1)),
        **_wrong_axes(first_token_scores)},
}


def check_head_scores(fn: Callable) -> Callable:
    """A dict of the previous-, current- and first-token scores, each [n_layers, n_heads]."""
    references = {"previous-token": prev_token_scores, "current-token": current_token_scores,
                  "first-token": first_token_scores}
    prop = per_key(references, SCORE_MISTAKES, {k: SCORE_SHAPE for k in references}, dims=LAYER_HEAD)
    return run_check("head_scores", fn, head_scores, _score_cases(0), properties=[prop])


# ----------------------------------------------------------------------------- 4.3 in-context learning

def check_per_token_loss(fn: Callable) -> Callable:
    """-log p(next token) at every position but the last: [batch, pos - 1]."""
    g = rng(30)

    def case(batch: int, pos: int, vocab: int, label: str) -> Case:
        logits = (torch.randn(batch, pos, vocab, generator=g) * 2).requires_grad_()   # a loss: keep the gradient
        return Case((logits, torch.randint(0, vocab, (batch, pos), generator=g)), label=label)

    mistakes = {
        "off by one: the logits at position i predict token i + 1, so pair logits[:, :-1] with tokens[:, 1:]":
        lambda l, t: -l.log_softmax(-1)[:, 1:].gather(-1, t[:, :-1, None])[..., 0],
        "this is the loss of the token at the *same* position: the logits at position i predict token i + 1":
        lambda l, t: -l.log_softmax(-1)[:, :-1].gather(-1, t[:, :-1, None])[..., 0],
        "take log_softmax of the logits first: a raw logit is not a log-probability":
        lambda l, t: -l[:, :-1].gather(-1, t[:, 1:, None])[..., 0],
        "the softmax must run over the vocabulary (the last axis), not over positions":
        lambda l, t: -l.log_softmax(1)[:, :-1].gather(-1, t[:, 1:, None])[..., 0],
        "the loss is minus the log-probability (it should be positive)":
        lambda l, t: l.log_softmax(-1)[:, :-1].gather(-1, t[:, 1:, None])[..., 0]}
    shape = expect_shape(lambda c: (c.args[1].shape[0], c.args[1].shape[1] - 1),
                         "[batch, pos - 1] (one loss per predicted token, none for the last position)")
    cases = [case(2, 6, 11, "random"), case(3, 5, 5, "vocabulary as long as the sequence"),
             case(1, 2, 7, "one prediction"), case(4, 9, 13, "random, larger")]
    return run_check("per_token_loss", fn, per_token_loss, cases, atol=1e-4, dims=("batch", "position"), grad=True,
                     properties=[shape, recognise(mistakes, per_token_loss, atol=1e-4)])


def check_icl_score(fn: Callable) -> Callable:
    """Mean loss at `late` minus mean loss at `early` (an index or a slice of positions)."""
    losses = torch.rand(6, 12, generator=rng(31)) * 5
    losses[:, 4] += 5.0            # case 1 has late above early: there a flipped sign and an absolute value differ

    def signed(case: Case, got: Any) -> str | None:
        expected = icl_score(*case.args)
        value = _as_number(got)
        if value is not None and abs(expected) > 1e-3 and abs(value + expected) < 1e-4:
            return (f"you got {value:.4g}, minus the expected {expected:.4g}: the score is the late loss minus the "
                    "early loss, with its sign (negative when later tokens are easier). Did you swap them, or take "
                    "an absolute value?")
        return None

    cases = [Case((losses, 2, 4), label="single positions, late loss above early"),
             Case((losses, 1, 10), label="single positions, far apart"),
             Case((losses, slice(0, 3), slice(3, 5)), label="ranges of positions"),
             Case((losses, slice(1, 4), slice(6, None)), label="ranges of different lengths"),
             Case((losses[:2], 0, 5), label="batch of two"), Case((losses, 5, 2), label="late before early")]
    mistakes = {"index positions on the second axis: token_losses is [batch, position]":
                lambda x, e, l: (x[l].mean() - x[e].mean()).item()}
    return run_check("icl_score", fn, icl_score, cases, atol=1e-4,
                     properties=[signed, recognise(mistakes, icl_score, atol=1e-4)])


# ----------------------------------------------------------------------------- 4.4 induction score

def check_induction_scores(fn: Callable) -> Callable:
    """Mean attention from each token of the second copy to the token after its first occurrence."""
    def case(shape, seq_len, seed, label):
        return Case((causal_patterns((*shape, 2 * seq_len + 1, 2 * seq_len + 1), seed), seq_len), label=label)

    mistakes = {
        "this is attention to the *same* token in the first copy (a duplicate-token head): an induction "
        "head attends to the token *after* it, one further right (offset 1 - seq_len)":
        lambda p, n: p.diagonal(-n, -2, -1)[..., 1:].mean((1, -1)),
        "the queries you average over start one position early, in the first copy: the second copy is "
        "positions seq_len + 1 .. 2 seq_len (position 0 holds the start token)":
        lambda p, n: p.diagonal(1 - n, -2, -1)[..., 1:].mean((1, -1)),
        "you averaged over queries of the first copy too: only the second copy (queries seq_len + 1 .. "
        "2 seq_len) can be predicted by induction": lambda p, n: p.diagonal(1 - n, -2, -1).mean((1, -1)),
        "this is attention two tokens after the first occurrence (offset 2 - seq_len): the token after "
        "it is at offset 1 - seq_len": lambda p, n: p.diagonal(2 - n, -2, -1)[..., 3:].mean((1, -1)),
        "this reads the upper triangle of the pattern (offset seq_len - 1, always 0 in a causal pattern): "
        "the earlier occurrence lies *below* the diagonal, offset 1 - seq_len":
        lambda p, n: p.diagonal(n - 1, -2, -1).mean((1, -1)),
        "you averaged over the head axis instead of the batch axis (patterns are [layer, batch, head, q, k])":
        lambda p, n: induction_scores(p.transpose(1, 2), n),
        "you averaged over the layer axis instead of the batch axis (patterns are [layer, batch, head, q, k])":
        lambda p, n: induction_scores(p.transpose(0, 1), n)}
    cases = [case((2, 3, 3), 4, 40, "random, batch = heads"),
             Case((ideal_induction(5), 5), label="an ideal induction head and a duplicate-token head"),
             case((2, 2, 3), 6, 41, "random, batch = layers"), case((3, 4, 2), 3, 42, "random, 3 layers"),
             case((1, 2, 2), 1, 43, "a sequence of one token, repeated")]
    return run_check("induction_scores", fn, induction_scores, cases, dims=LAYER_HEAD,
                     properties=[SCORE_SHAPE, recognise(mistakes, induction_scores)])
