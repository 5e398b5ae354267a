"""Each check of notebook 04 passes the reference, skips a stub, and rejects plausible wrong answers."""

from __future__ import annotations

import pytest
import torch

from course_utils import HookedModel, model_facts
from course_utils.checks import CheckFailed
from course_utils.checks import induction as checks
from course_utils.data import repeated_tokens
from tests.conftest import TinyTokenizer, build


def stub(*args, **kwargs):
    raise NotImplementedError


def rejects(check, wrong, match: str | None = None, *extra) -> None:
    with pytest.raises(CheckFailed, match=match):
        check(wrong, *extra)


@pytest.fixture(scope="module")
def model() -> HookedModel:
    """A tiny random GPT-2 (3 layers, 4 heads, vocabulary 97): the checks must not need the bundled model."""
    return HookedModel(build("gpt2"), TinyTokenizer())


# ----------------------------------------------------------------------------- references

def test_reuses_model_facts():
    assert checks.prev_token_scores is model_facts.prev_token_scores
    assert checks.induction_scores is model_facts.induction_scores


def test_ideal_heads_score_one_on_their_own_type():
    ideal = checks._ideal_heads(8)   # previous, current, first, uniform
    assert torch.allclose(checks.prev_token_scores(ideal)[0, :3], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(checks.current_token_scores(ideal)[0, :3], torch.tensor([0.0, 1, 0]))
    assert torch.allclose(checks.first_token_scores(ideal)[0, :3], torch.tensor([1 / 7, 0, 1]))  # query 1's previous token is the first
    assert torch.allclose(checks.induction_scores(checks._ideal_induction(5), 5)[0], torch.tensor([1.0, 0]))


def test_per_token_loss_matches_cross_entropy():
    logits, tokens = torch.randn(2, 7, 11), torch.randint(0, 11, (2, 7))
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    assert torch.allclose(checks.per_token_loss(logits, tokens), expected, atol=1e-5)


def test_ablate_head_leaves_input_and_other_heads_alone():
    z = torch.randn(2, 3, 4, 5)
    before = z.clone()
    out = checks.ablate_head(z, 2, "mean")
    assert torch.equal(z, before) and torch.equal(out[:, :, [0, 1, 3]], z[:, :, [0, 1, 3]])
    assert torch.allclose(out[:, :, 2], z[:, :, 2].mean((0, 1)).expand(2, 3, 5))
    with pytest.raises(ValueError, match="mode"):
        checks.ablate_head(z, 0, "resample")


def test_k_composition_of_identities():
    d = 16
    assert abs(checks.k_composition_score(torch.eye(d), torch.eye(d)).item() - d ** -0.5) < 1e-6


def test_effective_embedding_at_layer_0_is_embedding_plus_position(model):
    tokens = torch.tensor([5, 9, 40])
    expected = model.W_E[tokens] + model.W_pos[1]
    assert torch.allclose(checks.effective_embedding(model, tokens, 0), expected, atol=1e-6)


# ----------------------------------------------------------------------------- every check: reference and stub

PURE = {
    "prev_token_scores": (checks.check_prev_token_scores, checks.prev_token_scores),
    "current_token_scores": (checks.check_current_token_scores, checks.current_token_scores),
    "first_token_scores": (checks.check_first_token_scores, checks.first_token_scores),
    "per_token_loss": (checks.check_per_token_loss, checks.per_token_loss),
    "icl_score": (checks.check_icl_score, checks.icl_score),
    "induction_scores": (checks.check_induction_scores, checks.induction_scores),
    "ablate_head": (checks.check_ablate_head, checks.ablate_head),
    "own_token_rank": (checks.check_own_token_rank, checks.own_token_rank),
    "k_composition_score": (checks.check_k_composition_score, checks.k_composition_score),
    "attn_only_logits": (checks.check_attn_only_logits, checks.attn_only_logits),
}
WITH_MODEL = {
    "cache_patterns": (checks.check_cache_patterns, checks.cache_patterns),
    "effective_embedding": (checks.check_effective_embedding, checks.effective_embedding),
    "max_induction_score": (checks.check_max_induction_score, checks.max_induction_score),
}


@pytest.mark.parametrize("name", PURE)
def test_accepts_reference(name, capsys):
    check, reference = PURE[name]
    assert check(reference) is reference
    assert "cases pass" in capsys.readouterr().out


@pytest.mark.parametrize("name", PURE)
def test_stub_returns_reference(name, capsys):
    check, reference = PURE[name]
    assert check(stub) is reference
    out = capsys.readouterr().out
    assert "not done yet" in out and out.count("\n") == 1


@pytest.mark.parametrize("name", WITH_MODEL)
def test_model_checks_accept_reference_and_skip_stub(name, model, capsys):
    check, reference = WITH_MODEL[name]
    assert check(reference, model) is reference
    assert check(stub, model) is reference
    out = capsys.readouterr().out
    assert "cases pass" in out and "not done yet" in out


def test_accepts_other_correct_implementations(model):
    def prev_loop(p):  # explicit loops over queries
        n = p.shape[-1]
        return torch.stack([p[..., q, q - 1] for q in range(2, n)], -1).mean((1, -1))

    checks.check_prev_token_scores(prev_loop)
    checks.check_current_token_scores(lambda p: torch.einsum("lbhqq->lbhq", p)[..., 1:].mean((1, 3)))
    checks.check_per_token_loss(lambda l, t: torch.nn.functional.cross_entropy(
        l[:, :-1].transpose(1, 2), t[:, 1:], reduction="none"))
    checks.check_icl_score(lambda x, e, l: x[:, l].mean() - x[:, e].mean())   # a 0-d tensor is fine
    checks.check_own_token_rank(lambda l, t: (l.argsort(-1, descending=True) == t[:, None]).float().argmax(-1))
    checks.check_k_composition_score(lambda A, B: checks.k_composition_score(B, A))   # same norm, transposed product
    checks.check_ablate_head(lambda z, h, mode="zero": torch.where(
        torch.arange(z.shape[2])[:, None] == h, 0.0 if mode == "zero" else z[:, :, h].mean((0, 1)), z))
    checks.check_cache_patterns(lambda m, t: torch.stack(
        [m.run_with_cache(t)[1]["pattern", l] for l in range(m.cfg.n_layers)]), model)


# ----------------------------------------------------------------------------- 4.1 cache_patterns

WRONG_CACHE = {
    "batch first": (lambda m, t: checks.cache_patterns(m, t).transpose(0, 1), "layer axis first"),
    "last layer only": (lambda m, t: checks.cache_patterns(m, t)[-1], "new first axis"),
    "layer 0 repeated": (lambda m, t: checks.cache_patterns(m, t)[:1].repeat(m.cfg.n_layers, 1, 1, 1, 1),
                         "same pattern"),
    "heads and batch swapped": (lambda m, t: checks.cache_patterns(m, t).transpose(1, 2), None),
    "query and key swapped": (lambda m, t: checks.cache_patterns(m, t).transpose(-1, -2), None),
    "concatenated, not stacked": (lambda m, t: checks.cache_patterns(m, t).flatten(0, 1), "new first axis"),
}


@pytest.mark.parametrize("name", WRONG_CACHE)
def test_cache_patterns_rejects(name, model):
    wrong, match = WRONG_CACHE[name]
    rejects(checks.check_cache_patterns, wrong, match, model)


# ----------------------------------------------------------------------------- 4.2 head-type scores

def diag_mean(p, offset, first_query, dims=(1, -1)):
    """Mean of the pattern's diagonal at `offset`, from query `first_query` on."""
    d = p.diagonal(offset, -2, -1)
    return d[..., first_query + min(offset, 0):].mean(dims)


WRONG_PREV = {
    "offset +1": (lambda p: p.diagonal(1, -2, -1).mean((1, -1)), "next"),
    "offset -2": (lambda p: diag_mean(p, -2, 2), "two tokens back"),
    "query 1 included (start token)": (lambda p: diag_mean(p, -1, 1), "start token"),
    "current token": (lambda p: diag_mean(p, 0, 1), "current"),
    "mean over heads": (lambda p: diag_mean(p, -1, 2, dims=(2, -1)), "head axis"),
    "mean over layers": (lambda p: diag_mean(p, -1, 2, dims=(0, -1)), "layer axis"),
    "sum over queries": (lambda p: p.diagonal(-1, -2, -1)[..., 1:].sum(-1).mean(1), None),
    "first batch element only": (lambda p: p[:, 0].diagonal(-1, -2, -1)[..., 1:].mean(-1), None),
    "key and query swapped": (lambda p: p.transpose(-1, -2).diagonal(-1, -2, -1)[..., 1:].mean((1, -1)), None),
    "dims of diagonal swapped": (lambda p: p.diagonal(-1, -1, -2)[..., 1:].mean((1, -1)), None),
    "no batch averaging": (lambda p: p.diagonal(-1, -2, -1)[..., 1:].mean(-1), "shape"),
}


@pytest.mark.parametrize("name", WRONG_PREV)
def test_prev_token_scores_rejects(name):
    wrong, match = WRONG_PREV[name]
    rejects(checks.check_prev_token_scores, wrong, match)


WRONG_CURRENT = {
    "query 0 included (start token)": (lambda p: diag_mean(p, 0, 0), "query 0"),
    "previous token": (lambda p: diag_mean(p, -1, 2), "previous"),
    "mean over heads": (lambda p: diag_mean(p, 0, 1, dims=(2, -1)), "head axis"),
    "mean over layers": (lambda p: diag_mean(p, 0, 1, dims=(0, -1)), "layer axis"),
    "max instead of mean": (lambda p: p.diagonal(0, -2, -1)[..., 1:].amax(-1).mean(1), None),
    "trace over all positions / n": (lambda p: p.diagonal(0, -2, -1).sum(-1).mean(1) / p.shape[-1], None),
}


@pytest.mark.parametrize("name", WRONG_CURRENT)
def test_current_token_scores_rejects(name):
    wrong, match = WRONG_CURRENT[name]
    rejects(checks.check_current_token_scores, wrong, match)


WRONG_FIRST = {
    "query 0 included (start token)": (lambda p: p[..., :, 0].mean((1, -1)), "query 0"),
    "row instead of column": (lambda p: p[..., 0, 1:].mean((1, -1)), "row"),
    "last key": (lambda p: p[..., 1:, -1].mean((1, -1)), "last position"),
    "mean over heads": (lambda p: p[..., 1:, 0].mean((2, -1)), "head axis"),
    "mean over layers": (lambda p: p[..., 1:, 0].mean((0, -1)), "layer axis"),
    "key 1, not key 0": (lambda p: p[..., 2:, 1].mean((1, -1)), None),
}


@pytest.mark.parametrize("name", WRONG_FIRST)
def test_first_token_scores_rejects(name):
    wrong, match = WRONG_FIRST[name]
    rejects(checks.check_first_token_scores, wrong, match)


# ----------------------------------------------------------------------------- 4.3 losses

def logp(logits):
    return logits.log_softmax(-1)


WRONG_LOSS = {
    "logits shifted the wrong way": (lambda l, t: -logp(l)[:, 1:].gather(-1, t[:, :-1, None])[..., 0], "off by one"),
    "same position": (lambda l, t: -logp(l)[:, :-1].gather(-1, t[:, :-1, None])[..., 0], "same"),
    "raw logits": (lambda l, t: -l[:, :-1].gather(-1, t[:, 1:, None])[..., 0], "log_softmax"),
    "softmax over positions": (lambda l, t: -l.log_softmax(1)[:, :-1].gather(-1, t[:, 1:, None])[..., 0], "vocabulary"),
    "sign": (lambda l, t: logp(l)[:, :-1].gather(-1, t[:, 1:, None])[..., 0], "minus"),
    "probability, not log": (lambda l, t: -l.softmax(-1)[:, :-1].gather(-1, t[:, 1:, None])[..., 0], None),
    "averaged over the batch": (lambda l, t: -logp(l)[:, :-1].gather(-1, t[:, 1:, None])[..., 0].mean(0), "shape"),
    "every position, last included": (lambda l, t: -logp(l).gather(-1, t[..., None])[..., 0], "shape"),
    "one number": (lambda l, t: torch.nn.functional.cross_entropy(l[:, :-1].transpose(1, 2), t[:, 1:]), None),
}


@pytest.mark.parametrize("name", WRONG_LOSS)
def test_per_token_loss_rejects(name):
    wrong, match = WRONG_LOSS[name]
    rejects(checks.check_per_token_loss, wrong, match)


def shift(index, by):
    return index + by if isinstance(index, int) else slice(index.start + by, None if index.stop is None else
                                                           index.stop + by)


WRONG_ICL = {
    "early minus late": (lambda x, e, l: x[:, e].mean() - x[:, l].mean(), "sign"),
    "rows instead of positions": (lambda x, e, l: x[l].mean() - x[e].mean(), "second axis"),
    "ratio": (lambda x, e, l: x[:, l].mean() / x[:, e].mean(), None),
    "one score per sequence": (lambda x, e, l: x[:, l].reshape(len(x), -1).mean(-1) - x[:, e].reshape(len(x), -1).mean(-1),
                               None),
    "positions counted from 1": (lambda x, e, l: x[:, shift(l, -1)].mean() - x[:, shift(e, -1)].mean(), None),
    "only the first index of a range": (lambda x, e, l: (x[:, l if isinstance(l, int) else l.start].mean()
                                                         - x[:, e if isinstance(e, int) else e.start].mean()), None),
}


@pytest.mark.parametrize("name", WRONG_ICL)
def test_icl_score_rejects(name):
    wrong, match = WRONG_ICL[name]
    rejects(checks.check_icl_score, wrong, match)


# ----------------------------------------------------------------------------- 4.4 induction scores

WRONG_INDUCTION = {
    "duplicate token (offset -seq_len)": (lambda p, n: p.diagonal(-n, -2, -1)[..., 1:].mean((1, -1)), "duplicate"),
    "start token forgotten": (lambda p, n: p.diagonal(1 - n, -2, -1)[..., 1:-1].mean((1, -1)), "start token"),
    "first copy included": (lambda p, n: p.diagonal(1 - n, -2, -1).mean((1, -1)), "first copy"),
    "offset 2 - seq_len": (lambda p, n: p.diagonal(2 - n, -2, -1)[..., 3:].mean((1, -1)), "two tokens after"),
    "mean over heads": (lambda p, n: p.diagonal(1 - n, -2, -1)[..., 2:].mean((2, -1)), "head axis"),
    "mean over layers": (lambda p, n: p.diagonal(1 - n, -2, -1)[..., 2:].mean((0, -1)), "layer axis"),
    "previous-token score": (lambda p, n: model_facts.prev_token_scores(p), None),
    "last query only": (lambda p, n: p[..., -1, n].mean(1), None),
    "offset 1 + seq_len (upper triangle)": (lambda p, n: p.diagonal(n - 1, -2, -1).mean((1, -1)), None),
    "second copy assumed to start at seq_len": (lambda p, n: p.diagonal(1 - n, -2, -1)[..., 1:n + 1].mean((1, -1)),
                                                None),
}


@pytest.mark.parametrize("name", WRONG_INDUCTION)
def test_induction_scores_rejects(name):
    wrong, match = WRONG_INDUCTION[name]
    rejects(checks.check_induction_scores, wrong, match)


# ----------------------------------------------------------------------------- 4.5 ablation

def ablate(z, head, mode="zero", *, axis=2, mean_dims=(0, 1), value=None):
    z = z.clone()
    index = [slice(None)] * z.dim()
    index[axis] = head
    if value is not None:
        z[tuple(index)] = value(z)
    else:
        z[tuple(index)] = 0.0 if mode == "zero" else z[tuple(index)].mean(mean_dims)
    return z


WRONG_ABLATION = {
    "position axis": (lambda z, h, mode="zero": ablate(z, h, mode, axis=1, mean_dims=0), "position"),
    "batch axis": (lambda z, h, mode="zero": ablate(z, h, mode, axis=0, mean_dims=0), None),
    "per-position mean": (lambda z, h, mode="zero": ablate(z, h, mode, mean_dims=0), "one per position"),
    "mean over all heads": (lambda z, h, mode="zero": ablate(z, h, mode, value=lambda z: 0.0 if mode == "zero"
                                                               else z.mean((0, 1, 2))), "all heads"),
    "mean over d_head": (lambda z, h, mode="zero": ablate(z, h, mode, value=lambda z: 0.0 if mode == "zero"
                                                            else z[:, :, h].mean(-1, keepdim=True)), None),
    "always zero": (lambda z, h, mode="zero": ablate(z, h, "zero"), None),
    "keeps only the head": (lambda z, h, mode="zero": z - ablate(z, h, mode), "other than"),
    "forgets to return": (lambda z, h, mode="zero": None, "return the new z"),
    "head - 1": (lambda z, h, mode="zero": ablate(z, h - 1, mode), None),
}


@pytest.mark.parametrize("name", WRONG_ABLATION)
def test_ablate_head_rejects(name):
    wrong, match = WRONG_ABLATION[name]
    rejects(checks.check_ablate_head, wrong, match)


# ----------------------------------------------------------------------------- 4.6 weights

def resid(m, toks, name, pos):
    return m.run_with_cache(toks, names_filter=[name])[1][name][:, pos]


def with_bos(m, t):
    return torch.stack([torch.full_like(t, m.bos_token_id), t], 1)


WRONG_EFFECTIVE = {
    "no start token": (lambda m, t, l: resid(m, t[:, None], f"blocks.{l}.hook_resid_pre", 0), "position 0"),
    "start token's position": (lambda m, t, l: resid(m, with_bos(m, t), f"blocks.{l}.hook_resid_pre", 0), "start token"),
    "resid_post": (lambda m, t, l: resid(m, with_bos(m, t), f"blocks.{l}.hook_resid_post", -1), "leaving"),
    "raw embedding": (lambda m, t, l: m.W_E[t], "raw token embedding"),
    "embedding + position, no layers": (lambda m, t, l: m.W_E[t] + m.W_pos[1], None),
    "ln_1 applied": (lambda m, t, l: m.block(l).ln_1(checks.effective_embedding(m, t, l)), None),
    "layer before": (lambda m, t, l: resid(m, with_bos(m, t), f"blocks.{max(l - 1, 0)}.hook_resid_pre", -1), None),
    "start token twice": (lambda m, t, l: resid(m, torch.cat([with_bos(m, t)[:, :1], with_bos(m, t)], 1),
                                                f"blocks.{l}.hook_resid_pre", -1), None),
}


@pytest.mark.parametrize("name", WRONG_EFFECTIVE)
def test_effective_embedding_rejects(name, model):
    wrong, match = WRONG_EFFECTIVE[name]
    rejects(checks.check_effective_embedding, wrong, match, model)


def own(l, t):
    return l.gather(-1, t[:, None])


WRONG_RANK = {
    "1-based": (lambda l, t: (l >= own(l, t)).sum(-1), "start at 0"),
    "ranked among rows": (lambda l, t: (l[:, t] > own(l, t).T).sum(0), "rows"),
    "argsort index": (lambda l, t: l.argsort(-1, descending=True).gather(-1, t[:, None])[:, 0], "argsort"),
    "ascending": (lambda l, t: (l < own(l, t)).sum(-1), "largest"),
    "diagonal": (lambda l, t: (l > l.diagonal()[:, None]).sum(-1), "diagonal"),
    "fraction, not count": (lambda l, t: (l > own(l, t)).float().mean(-1), None),
    "argmax == token": (lambda l, t: (l.argmax(-1) != t).long(), None),
}


@pytest.mark.parametrize("name", WRONG_RANK)
def test_own_token_rank_rejects(name):
    wrong, match = WRONG_RANK[name]
    rejects(checks.check_own_token_rank, wrong, match)


def fro(x):
    return torch.linalg.matrix_norm(x)


WRONG_KCOMP = {
    "Q-composition": (lambda A, B: fro(A @ B) / (fro(A) * fro(B)), "Q-composition"),
    "wrong order": (lambda A, B: fro(B.transpose(-1, -2) @ A) / (fro(A) * fro(B)), "wrong order"),
    "not normalised": (lambda A, B: fro(A @ B.transpose(-1, -2)), "divide"),
    "spectral norm": (lambda A, B: torch.linalg.matrix_norm(A @ B.transpose(-1, -2), 2)
                      / (torch.linalg.matrix_norm(A, 2) * torch.linalg.matrix_norm(B, 2)), "spectral"),
    "norm over the whole batch": (lambda A, B: (A @ B.transpose(-1, -2)).norm() / (A.norm() * B.norm()), "last two"),
    "squared norms": (lambda A, B: fro(A @ B.transpose(-1, -2)) ** 2 / (fro(A) ** 2 * fro(B) ** 2), None),
    "V-composition order (W_OV W_OV-like)": (lambda A, B: fro(B @ A) / (fro(A) * fro(B)), None),
    "elementwise product": (lambda A, B: fro(A * B) / (fro(A) * fro(B)), None),
}


@pytest.mark.parametrize("name", WRONG_KCOMP)
def test_k_composition_score_rejects(name):
    wrong, match = WRONG_KCOMP[name]
    rejects(checks.check_k_composition_score, wrong, match)


# ----------------------------------------------------------------------------- 4.7 one-layer model

def attn(t, qk, ov, d, *, mask=True, dim=-1, transpose_qk=False, from_query=False, direct=True, strict=False):
    s = (qk.T if transpose_qk else qk)[t][:, t]
    if mask:
        s = s.masked_fill(~torch.ones_like(s, dtype=torch.bool).tril(-1 if strict else 0), float("-inf"))
    out = ov[t] if from_query else s.softmax(dim) @ ov[t]
    return out + d[t] if direct else out


WRONG_ONE_LAYER = {
    "no causal mask": (lambda *a: attn(*a, mask=False), "causal"),
    "softmax over queries": (lambda *a: attn(*a, dim=0), "over keys"),
    "qk transposed": (lambda *a: attn(*a, transpose_qk=True), "transposed"),
    "OV of the query token": (lambda *a: attn(*a, from_query=True), "source"),
    "no direct path": (lambda *a: attn(*a, direct=False), "direct path"),
    "may not attend to itself": (lambda *a: attn(*a, strict=True), None),
    "ov transposed": (lambda t, qk, ov, d: attn(t, qk, ov.T, d), None),
}


@pytest.mark.parametrize("name", WRONG_ONE_LAYER)
def test_attn_only_logits_rejects(name):
    wrong, match = WRONG_ONE_LAYER[name]
    rejects(checks.check_attn_only_logits, wrong, match)


# ----------------------------------------------------------------------------- 4.8 formation

def best(m, seq_len, batch, seed, *, bos=True, reduce=torch.amax):
    tokens = repeated_tokens(batch, seq_len, m.cfg.d_vocab, bos_id=m.bos_token_id if bos else None, seed=seed, low=1)
    return reduce(model_facts.induction_scores(checks.cache_patterns(m, tokens), seq_len)).item()


WRONG_MAX = {
    "mean over heads": (lambda m, seq_len=20, batch=4, seed=0: best(m, seq_len, batch, seed, reduce=torch.mean),
                        "average"),
    "no start token": (lambda m, seq_len=20, batch=4, seed=0: best(m, seq_len, batch, seed, bos=False), "start token"),
    "ignores the seed": (lambda m, seq_len=20, batch=4, seed=0: best(m, seq_len, batch, 0), None),
    "ignores seq_len": (lambda m, seq_len=20, batch=4, seed=0: best(m, 20, batch, seed), None),
    "min instead of max": (lambda m, seq_len=20, batch=4, seed=0: best(m, seq_len, batch, seed, reduce=torch.amin),
                           None),
}


@pytest.mark.parametrize("name", WRONG_MAX)
def test_max_induction_score_rejects(name, model):
    wrong, match = WRONG_MAX[name]
    rejects(checks.check_max_induction_score, wrong, match, model)


def test_messages_name_the_case():
    with pytest.raises(CheckFailed, match=r"prev_token_scores, case \d of 5 \("):
        checks.check_prev_token_scores(WRONG_PREV["offset -2"][0])
