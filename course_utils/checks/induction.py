"""Checks for notebook 04 · Induction heads, and the references they compare with.

The attention-head scores and the repeated-token losses are those of `course_utils.model_facts`,
the same code that measures the bundled model's card, so the checks accept exactly what the card
reports. The rest of the references live here. Every check runs the learner's function on
synthetic inputs built so that each plausible mistake (a wrong diagonal, a forgotten start token,
the wrong axis) changes the answer, and names the mistake when it recognises one.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from course_utils import model_facts
from course_utils.checks import Case, compare, run_check
from course_utils.data import repeated_tokens
from course_utils.hooked_model import HookedModel

# ----------------------------------------------------------------------------- references

prev_token_scores = model_facts.prev_token_scores    # [layer, batch, head, q, k] -> [layer, head]
induction_scores = model_facts.induction_scores      # (patterns, seq_len) -> [layer, head]


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


def per_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Loss of predicting each next token: logits [batch, pos, d_vocab], tokens [batch, pos] -> [batch, pos - 1].
    Element i is -log p(tokens[:, i + 1] | tokens[:, :i + 1])."""
    logprobs = logits.float().log_softmax(-1)[:, :-1]                      # [batch, pos - 1, d_vocab]
    return -logprobs.gather(-1, tokens[:, 1:, None].to(logits.device))[..., 0]


def icl_score(token_losses: torch.Tensor, early: int | slice, late: int | slice) -> float:
    """Olsson et al.'s in-context learning score: the mean loss at position(s) `late` minus the mean
    loss at position(s) `early`. token_losses [batch, pos]; `early` and `late` index the pos axis."""
    return (token_losses[:, late].mean() - token_losses[:, early].mean()).item()


def ablate_head(z: torch.Tensor, head: int, mode: str = "zero") -> torch.Tensor:
    """z [batch, pos, head, d_head] with one head's output replaced by zeros ("zero") or by its mean
    over the batch and all positions ("mean")."""
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode should be 'zero' or 'mean', not {mode!r}.")
    z = z.clone()
    z[:, :, head] = 0.0 if mode == "zero" else z[:, :, head].mean((0, 1))
    return z


@torch.no_grad()
def effective_embedding(model: HookedModel, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """What `layer` reads for each token on its own: the residual entering `layer` at the last
    position of `[BOS, token]`. tokens [n] -> [n, d_model]."""
    tokens = torch.as_tensor(tokens).to(model.device)
    pairs = torch.stack([torch.full_like(tokens, model.bos_token_id), tokens], dim=1)   # [n, 2]
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = model.run_with_cache(pairs, names_filter=[name])
    return cache[name][:, -1]


def own_token_rank(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Rank of each row's own token among its logits, 0 = top: logits [n, d_vocab], tokens [n] -> [n]."""
    own = logits.gather(-1, tokens[:, None])                                  # [n, 1]
    return (logits > own).sum(-1)


def k_composition_score(W_OV: torch.Tensor, W_QK: torch.Tensor) -> torch.Tensor:
    """‖W_OV W_QKᵀ‖_F / (‖W_OV‖_F ‖W_QK‖_F), over the last two axes (leading axes broadcast).
    W_OV [..., d_model, d_model] of an earlier head; W_QK [..., d_model, d_model] of a later one."""
    norm = torch.linalg.matrix_norm
    return norm(W_OV @ W_QK.transpose(-1, -2)) / (norm(W_OV) * norm(W_QK))


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


@torch.no_grad()
def max_induction_score(model: HookedModel, seq_len: int = 20, batch: int = 4, seed: int = 0) -> float:
    """The highest induction score of any head, on `batch` random sequences `[BOS] A A`, |A| = seq_len."""
    tokens = repeated_tokens(batch, seq_len, model.cfg.d_vocab, bos_id=model.bos_token_id, seed=seed, low=1)
    return induction_scores(cache_patterns(model, tokens), seq_len).max().item()


# ----------------------------------------------------------------------------- helpers

def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _causal(shape: tuple[int, ...], seed: int, sharpness: float = 2.5) -> torch.Tensor:
    """Random attention patterns [..., n, n]: causal, rows summing to 1, far from uniform."""
    n = shape[-1]
    logits = torch.randn(shape, generator=_rng(seed)) * sharpness
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    return logits.masked_fill(future, float("-inf")).softmax(-1)


def _ideal_heads(n: int) -> torch.Tensor:
    """[1, 1, 4, n, n]: a previous-token, a current-token, a first-token and a uniform head."""
    prev = torch.zeros(n, n)
    prev[torch.arange(1, n), torch.arange(n - 1)] = 1.0
    prev[0, 0] = 1.0
    first = torch.zeros(n, n)
    first[:, 0] = 1.0
    uniform = torch.ones(n, n).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    return torch.stack([prev, torch.eye(n), first, uniform])[None, None]


def _ideal_induction(seq_len: int) -> torch.Tensor:
    """[1, 1, 2, 2n+1, 2n+1] over `[BOS] A A`: a perfect induction head, and a duplicate-token head."""
    n = 2 * seq_len + 1
    induction, duplicate = torch.zeros(n, n), torch.zeros(n, n)
    induction[:, 0] = duplicate[:, 0] = 1.0
    second = torch.arange(seq_len + 1, n)                  # queries of the second copy
    induction[second, 0] = duplicate[second, 0] = 0.0
    induction[second, second - seq_len + 1] = 1.0
    duplicate[second, second - seq_len] = 1.0
    return torch.stack([induction, duplicate])[None, None]


def _recognise(mistakes: dict[str, Callable], reference: Callable, atol: float = 1e-5) -> Callable[[Case, Any], str | None]:
    """A property that names a known mistake when the learner's answer matches it (and not the reference)."""
    def prop(case: Case, got: Any) -> str | None:
        if compare(got, reference(*case.args, **case.kwargs), atol=atol) is None:
            return None
        for message, wrong in mistakes.items():
            try:
                if compare(got, wrong(*case.args, **case.kwargs), atol=atol) is None:
                    return message
            except Exception:  # a mistake that cannot even run on this case is not this one
                continue
        return None
    return prop


def _shape(expected: Callable[[Case], tuple[int, ...]], hint: str) -> Callable[[Case, Any], str | None]:
    def prop(case: Case, got: Any) -> str | None:
        want = expected(case)
        if isinstance(got, torch.Tensor) and tuple(got.shape) != want:
            return f"expected shape {want}, got {tuple(got.shape)}. {hint}"
        return None
    return prop


def _layer_head(case: Case) -> tuple[int, int]:
    patterns = case.args[0]
    return patterns.shape[0], patterns.shape[2]


SCORE_SHAPE = _shape(_layer_head, "Average over the batch (axis 1) and the queries; keep layer and head.")


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
                "every layer holds the same pattern: cache blocks.{l}.attn.hook_pattern for each layer l":
                lambda m, t: cache_patterns(m, t)[:1].expand(L, *cache_patterns(m, t).shape[1:])}
    cases = [Case((model, tokens), label=f"{L} repeated sequences (batch = n_layers)"),
             Case((model, tokens[:1, :9]), label="one sequence"),
             Case((model, tokens[:, :2]), label="two positions")]
    return run_check("cache_patterns", fn, cache_patterns, cases, atol=1e-5, rtol=1e-3,
                     properties=[shape, _recognise(mistakes, cache_patterns)])


# ----------------------------------------------------------------------------- 4.2 head types by score

def _score_cases(seed: int) -> list[Case]:
    return [Case((_ideal_heads(8),), label="ideal previous-, current-, first-token and uniform heads"),
            Case((_causal((2, 3, 3, 7, 7), seed),), label="random patterns, batch = heads"),
            Case((_causal((2, 2, 4, 9, 9), seed + 1),), label="random patterns, batch = layers"),
            Case((_causal((3, 5, 2, 6, 6), seed + 2),), label="random patterns, 3 layers"),
            Case((_causal((1, 2, 3, 3, 3), seed + 3),), label="three positions")]


def _wrong_axes(score: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Callable]:
    """Mistakes of averaging: the reference per-(layer, batch, head) values averaged the wrong way."""
    return {"you averaged over the head axis instead of the batch axis (patterns are [layer, batch, head, q, k])":
            lambda p: score(p.transpose(1, 2)),
            "you averaged over the layer axis instead of the batch axis (patterns are [layer, batch, head, q, k])":
            lambda p: score(p.transpose(0, 1))}


def check_prev_token_scores(fn: Callable) -> Callable:
    """Mean attention from query q to key q - 1, over queries 2.. and the batch."""
    mistakes = {
        "this is attention to the *next* token (offset +1), which a causal pattern never gives; "
        "the previous token is the diagonal at offset -1": lambda p: p.diagonal(1, -2, -1).mean((1, -1)),
        "this is attention two tokens back: the previous token is the diagonal at offset -1":
        lambda p: p.diagonal(-2, -2, -1).mean((1, -1)),
        "include query 1 and the start token sneaks in: at query 1 the previous token *is* the start "
        "token. Average over queries 2 and later": lambda p: p.diagonal(-1, -2, -1).mean((1, -1)),
        "this is the current token (offset 0), not the previous one": current_token_scores,
        **_wrong_axes(prev_token_scores)}
    return run_check("prev_token_scores", fn, prev_token_scores, _score_cases(0),
                     properties=[_recognise(mistakes, prev_token_scores), SCORE_SHAPE])


def check_current_token_scores(fn: Callable) -> Callable:
    """Mean attention from query q to key q, over queries 1.. and the batch."""
    mistakes = {
        "include query 0 and you count the start token, where a head has no choice but to attend to "
        "itself. Average over queries 1 and later": lambda p: p.diagonal(0, -2, -1).mean((1, -1)),
        "this is the previous token (offset -1), not the current one": prev_token_scores,
        **_wrong_axes(current_token_scores)}
    return run_check("current_token_scores", fn, current_token_scores, _score_cases(10),
                     properties=[_recognise(mistakes, current_token_scores), SCORE_SHAPE])


def check_first_token_scores(fn: Callable) -> Callable:
    """Mean attention from query q to key 0, over queries 1.. and the batch."""
    mistakes = {
        "include query 0 and you count the start token attending to itself, which it must. "
        "Average over queries 1 and later": lambda p: p[..., :, 0].mean((1, -1)),
        "this is attention *from* position 0 (a row of the pattern), not *to* it (a column): "
        "patterns are [..., query, key]": lambda p: p[..., 0, 1:].mean((1, -1)),
        "this is attention to the last position, not the first": lambda p: p[..., 1:, -1].mean((1, -1)),
        **_wrong_axes(first_token_scores)}
    return run_check("first_token_scores", fn, first_token_scores, _score_cases(20),
                     properties=[_recognise(mistakes, first_token_scores), SCORE_SHAPE])


# ----------------------------------------------------------------------------- 4.3 in-context learning

def check_per_token_loss(fn: Callable) -> Callable:
    """-log p(next token) at every position but the last: [batch, pos - 1]."""
    g = _rng(30)

    def case(batch: int, pos: int, vocab: int, label: str) -> Case:
        return Case((torch.randn(batch, pos, vocab, generator=g) * 2, torch.randint(0, vocab, (batch, pos), generator=g)),
                    label=label)

    def predict_same(logits, tokens):
        return -logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, :-1, None])[..., 0]

    mistakes = {
        "off by one: the logits at position i predict token i + 1, so pair logits[:, :-1] with tokens[:, 1:]":
        lambda l, t: -l.log_softmax(-1)[:, 1:].gather(-1, t[:, :-1, None])[..., 0],
        "this is the loss of the token at the *same* position: the logits at position i predict token i + 1":
        predict_same,
        "take log_softmax of the logits first: a raw logit is not a log-probability":
        lambda l, t: -l[:, :-1].gather(-1, t[:, 1:, None])[..., 0],
        "the softmax must run over the vocabulary (the last axis), not over positions":
        lambda l, t: -l.log_softmax(1)[:, :-1].gather(-1, t[:, 1:, None])[..., 0],
        "the loss is minus the log-probability (it should be positive)":
        lambda l, t: l.log_softmax(-1)[:, :-1].gather(-1, t[:, 1:, None])[..., 0]}
    shape = _shape(lambda c: (c.args[1].shape[0], c.args[1].shape[1] - 1),
                   "Keep batch and position: one loss per predicted token, none for the last position.")
    cases = [case(2, 6, 11, "random"), case(3, 5, 5, "vocabulary as long as the sequence"),
             case(1, 2, 7, "one prediction"), case(4, 9, 13, "random, larger")]
    return run_check("per_token_loss", fn, per_token_loss, cases, atol=1e-4,
                     properties=[shape, _recognise(mistakes, per_token_loss, atol=1e-4)])


def check_icl_score(fn: Callable) -> Callable:
    """Mean loss at `late` minus mean loss at `early` (an index or a slice of positions)."""
    g = _rng(31)
    losses = torch.rand(6, 12, generator=g) * 5
    mistakes = {"the wrong sign: the score is the *late* loss minus the *early* loss (negative when the model "
                "gets better later)": lambda x, e, l: -icl_score(x, e, l),
                "index positions on the second axis: token_losses is [batch, position]":
                lambda x, e, l: (x[l].mean() - x[e].mean()).item()}
    cases = [Case((losses, 2, 4), label="single positions"), Case((losses, 1, 10), label="far apart"),
             Case((losses, slice(0, 3), slice(3, 5)), label="ranges of positions"),
             Case((losses, slice(1, 4), slice(6, None)), label="ranges of different lengths"),
             Case((losses[:2], 0, 5), label="batch of two"), Case((losses, 5, 2), label="late before early")]
    return run_check("icl_score", fn, icl_score, cases, atol=1e-4,
                     properties=[_recognise(mistakes, icl_score, atol=1e-4)])


# ----------------------------------------------------------------------------- 4.4 induction score

def check_induction_scores(fn: Callable) -> Callable:
    """Mean attention from each token of the second copy to the token after its first occurrence."""
    def case(shape, seq_len, seed, label):
        return Case((_causal((*shape, 2 * seq_len + 1, 2 * seq_len + 1), seed), seq_len), label=label)

    mistakes = {
        "this is attention to the *same* token in the first copy (a duplicate-token head): an induction "
        "head attends to the token *after* it, one further right (offset 1 - seq_len)":
        lambda p, n: p.diagonal(-n, -2, -1)[..., 1:].mean((1, -1)),
        "the first query you average over lies in the first copy (did you forget the start token at "
        "position 0?): the second copy is positions seq_len + 1 .. 2 seq_len":
        lambda p, n: p.diagonal(1 - n, -2, -1)[..., 1:-1].mean((1, -1)),
        "you averaged over the first copy's queries too: only the second copy (queries seq_len + 1 .. "
        "2 seq_len) can be predicted by induction": lambda p, n: p.diagonal(1 - n, -2, -1).mean((1, -1)),
        "this is two tokens after the first occurrence: the offset is 1 - seq_len":
        lambda p, n: p.diagonal(2 - n, -2, -1)[..., 3:].mean((1, -1)),
        "you averaged over the head axis instead of the batch axis (patterns are [layer, batch, head, q, k])":
        lambda p, n: induction_scores(p.transpose(1, 2), n),
        "you averaged over the layer axis instead of the batch axis (patterns are [layer, batch, head, q, k])":
        lambda p, n: induction_scores(p.transpose(0, 1), n)}
    cases = [Case((_ideal_induction(5), 5), label="an ideal induction head and a duplicate-token head"),
             case((2, 3, 3), 4, 40, "random, batch = heads"), case((2, 2, 3), 6, 41, "random, batch = layers"),
             case((3, 4, 2), 3, 42, "random, 3 layers"), case((1, 2, 2), 1, 43, "a sequence of one token")]
    return run_check("induction_scores", fn, induction_scores, cases,
                     properties=[_recognise(mistakes, induction_scores), SCORE_SHAPE])


# ----------------------------------------------------------------------------- 4.5 ablation

def check_ablate_head(fn: Callable) -> Callable:
    """z with one head's output zeroed, or replaced by its mean over the batch and all positions."""
    g = _rng(50)
    z = torch.randn(3, 5, 4, 2, generator=g) + torch.arange(5.0)[:, None, None]   # [batch, pos, head, d_head]
    square = torch.randn(2, 4, 4, 3, generator=g) + 1.0                             # pos = heads

    def replaced(z, index, value):
        z = z.clone()
        z[index] = value(z)
        return z

    def on_position(z, head, mode="zero"):
        return replaced(z, (slice(None), head), lambda z: 0.0 if mode == "zero" else z[:, head].mean(0))

    def per_position_mean(z, head, mode="zero"):
        return replaced(z, (slice(None), slice(None), head), lambda z: 0.0 if mode == "zero" else z[:, :, head].mean(0))

    def mean_of_all_heads(z, head, mode="zero"):
        return replaced(z, (slice(None), slice(None), head), lambda z: 0.0 if mode == "zero" else z.mean((0, 1, 2)))

    mistakes = {"you changed a position, not a head: z is [batch, pos, head, d_head], so the head is the third axis":
                on_position,
                "the mean should be over the batch *and* all positions, one vector per head, not one per position":
                per_position_mean,
                "the mean should be over the batch and positions of this head alone, not over all heads":
                mean_of_all_heads}

    def returned(case: Case, got: Any) -> str | None:
        return "return the new z: a hook that returns None leaves the activation as it was" if got is None else None

    def unchanged_elsewhere(case: Case, got: Any) -> str | None:
        z_in, head = case.args
        if isinstance(got, torch.Tensor) and got.shape == z_in.shape:
            others = [h for h in range(z_in.shape[2]) if h != head]
            if not torch.allclose(got[:, :, others], z_in[:, :, others]):
                return f"heads other than {head} should be left as they are"
        return None

    cases = [Case((z, 1), label="zero, head 1"), Case((z, 3), {"mode": "mean"}, label="mean, head 3"),
             Case((square, 0), {"mode": "mean"}, label="mean, as many positions as heads"),
             Case((square, 2), {"mode": "zero"}, label="zero, as many positions as heads")]
    return run_check("ablate_head", fn, ablate_head, cases,
                     properties=[returned, _recognise(mistakes, ablate_head), unchanged_elsewhere])


# ----------------------------------------------------------------------------- 4.6 reading the weights

def check_effective_embedding(fn: Callable, model: HookedModel) -> Callable:
    """The residual entering `layer` at the last position of `[BOS, token]`, for each token."""
    g = _rng(60)
    tokens = torch.randint(1, model.cfg.d_vocab, (7,), generator=g)
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
    shape = _shape(lambda c: (c.args[1].shape[0], model.cfg.d_model), "One residual vector per token: [n, d_model].")
    cases = [Case((model, tokens, L - 1), label=f"layer {L - 1}"), Case((model, tokens, 0), label="layer 0"),
             Case((model, tokens[:1], min(1, L - 1)), label="one token")]
    return run_check("effective_embedding", fn, effective_embedding, cases, atol=1e-4, rtol=1e-3,
                     properties=[shape, _recognise(mistakes, effective_embedding, atol=1e-4)])


def check_own_token_rank(fn: Callable) -> Callable:
    """How many logits in each row beat the row's own token's logit."""
    g = _rng(61)
    wide = torch.randn(6, 10, generator=g)
    square = torch.randn(7, 7, generator=g)
    top = torch.randn(4, 9, generator=g)
    top_tokens = torch.tensor([2, 0, 8, 5])
    top[torch.arange(4), top_tokens] = 10.0                                  # own token on top: rank 0
    mistakes = {
        "ranks start at 0 for the top logit: count the logits strictly greater than the token's own":
        lambda l, t: own_token_rank(l, t) + 1,
        "this ranks each token among the *rows* (the other inputs); rank it within its own row, over the vocabulary":
        lambda l, t: (l[:, t] > l.gather(-1, t[:, None]).T).sum(0),
        "argsort gives the token *at* each rank, not the rank *of* each token: count the logits above "
        "the token's own, or invert the permutation":
        lambda l, t: l.argsort(-1, descending=True).gather(-1, t[:, None])[:, 0],
        "rank 0 should be the *largest* logit, not the smallest": lambda l, t: (l < l.gather(-1, t[:, None])).sum(-1),
        "row i's own token is tokens[i], which is not i in general: index with the tokens, not the diagonal":
        lambda l, t: (l > l.diagonal()[:, None]).sum(-1)}
    cases = [Case((wide, torch.tensor([3, 9, 0, 3, 5, 1])), label="random, tokens not in order"),
             Case((square, torch.tensor([4, 0, 6, 2, 1, 5, 3])), label="square, tokens shuffled"),
             Case((square, torch.arange(7)), label="square, token i in row i"),
             Case((top, top_tokens), label="own token on top"), Case((wide[:1], torch.tensor([7])), label="one row")]
    return run_check("own_token_rank", fn, own_token_rank, cases,
                     properties=[_recognise(mistakes, own_token_rank)])


def check_k_composition_score(fn: Callable) -> Callable:
    """‖W_OV W_QKᵀ‖_F / (‖W_OV‖_F ‖W_QK‖_F) with leading axes broadcast."""
    g = _rng(62)

    def low_rank(*lead: int, d: int = 9, r: int = 3) -> torch.Tensor:
        return torch.randn(*lead, d, r, generator=g) @ torch.randn(*lead, r, d, generator=g)

    norm = torch.linalg.matrix_norm
    mistakes = {
        "this is Q-composition, ‖W_OV W_QK‖: for K-composition the earlier head writes into the *keys*, "
        "so transpose W_QK": lambda A, B: norm(A @ B) / (norm(A) * norm(B)),
        "this multiplies in the wrong order, ‖W_QKᵀ W_OV‖: the earlier head's output (x W_OV) is what "
        "the key side reads": lambda A, B: norm(B.transpose(-1, -2) @ A) / (norm(A) * norm(B)),
        "divide by the product of the two matrices' Frobenius norms":
        lambda A, B: norm(A @ B.transpose(-1, -2)),
        "use the Frobenius norm (the default of torch.linalg.matrix_norm), not the spectral norm":
        lambda A, B: norm(A @ B.transpose(-1, -2), 2) / (norm(A, 2) * norm(B, 2)),
        "take norms over the last two axes only (torch.linalg.matrix_norm), one score per pair of heads":
        lambda A, B: (A @ B.transpose(-1, -2)).norm() / (A.norm() * B.norm())}
    I = torch.eye(6)
    cases = [Case((torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)), label="random"),
             Case((low_rank(), low_rank()), label="low rank, as real heads are"),
             Case((low_rank(4), low_rank()), label="4 earlier heads against one later head"),
             Case((low_rank(2, 1), low_rank(1, 3)), label="2 × 3 pairs, broadcast"),
             Case((I, I), label="identities: 1 / sqrt(d)")]
    return run_check("k_composition_score", fn, k_composition_score, cases, atol=1e-5, rtol=1e-4,
                     properties=[_recognise(mistakes, k_composition_score)])


# ----------------------------------------------------------------------------- 4.7 skip-trigrams

def check_attn_only_logits(fn: Callable) -> Callable:
    """direct[tokens] + softmax(causal qk) @ ov[tokens]."""
    g = _rng(70)
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
    return run_check("attn_only_logits", fn, attn_only_logits, cases, atol=1e-5,
                     properties=[_recognise(mistakes, attn_only_logits)])


# ----------------------------------------------------------------------------- 4.8 formation

def check_max_induction_score(fn: Callable, model: HookedModel) -> Callable:
    """The best head's induction score on seeded repeated random tokens."""
    def score(m, seq_len=20, batch=4, seed=0, bos=True, reduce=torch.amax):
        tokens = repeated_tokens(batch, seq_len, m.cfg.d_vocab, bos_id=m.bos_token_id if bos else None, seed=seed, low=1)
        return reduce(induction_scores(cache_patterns(m, tokens), seq_len)).item()

    def mean_score(m, seq_len=20, batch=4, seed=0):
        return score(m, seq_len, batch, seed, reduce=torch.mean)

    def no_bos(m, seq_len=20, batch=4, seed=0):
        return score(m, seq_len, batch, seed, bos=False)

    mistakes = {"this is the average over heads; return the best head's score (the maximum)": mean_score,
                "start each sequence with the start token: repeated_tokens(..., bos_id=model.bos_token_id)": no_bos}
    cases = [Case((model,), {"seq_len": 10, "batch": 2, "seed": 1}, label="seq_len 10"),
             Case((model,), {"seq_len": 20, "batch": 4, "seed": 2}, label="seq_len 20"),
             Case((model,), {"seq_len": 15, "batch": 3, "seed": 3}, label="seq_len 15, another seed")]
    return run_check("max_induction_score", fn, max_induction_score, cases, atol=1e-4, rtol=1e-3,
                     properties=[_recognise(mistakes, max_induction_score, atol=1e-4)])
