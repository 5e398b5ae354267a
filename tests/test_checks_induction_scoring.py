"""Notebook 04, sections 4.1-4.4: each check passes the reference, skips a stub, and rejects plausible
wrong answers, in-place edits, wrong dtypes and answers of any type, in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_utils import model_facts
from course_utils.checks import induction_scoring as checks
from tests.check_helpers import ODD_RETURNS, accepts_reference_and_skips_stub, float64, rejects, stub


PURE = {
    "head_scores": (checks.check_head_scores, checks.head_scores),
    "per_token_loss": (checks.check_per_token_loss, checks.per_token_loss),
    "icl_score": (checks.check_icl_score, checks.icl_score),
    "induction_scores": (checks.check_induction_scores, checks.induction_scores),
}


# ----------------------------------------------------------------------------- references

def test_reuses_model_facts():
    assert checks.prev_token_scores is model_facts.prev_token_scores
    assert checks.induction_scores is model_facts.induction_scores


def test_ideal_heads_score_one_on_their_own_type():
    scores = checks.head_scores(checks.ideal_heads(8))
    assert torch.allclose(scores["previous-token"][0, :3], torch.tensor([1.0, 0, 0]))
    assert torch.allclose(scores["current-token"][0, :3], torch.tensor([0.0, 1, 0]))
    assert torch.allclose(scores["first-token"][0, :3], torch.tensor([1 / 7, 0, 1]))
    assert torch.allclose(checks.induction_scores(checks.ideal_induction(5), 5)[0], torch.tensor([1.0, 0]))


def test_per_token_loss_matches_cross_entropy():
    logits, tokens = torch.randn(2, 7, 11), torch.randint(0, 11, (2, 7))
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    assert torch.allclose(checks.per_token_loss(logits, tokens), expected, atol=1e-5)


# ----------------------------------------------------------------------------- every check

@pytest.mark.parametrize("name", PURE)
def test_accepts_reference_and_skips_stub(name, capsys):
    accepts_reference_and_skips_stub(*PURE[name], capsys)


def test_cache_patterns_accepts_reference_and_skips_stub(model, capsys):
    assert checks.check_cache_patterns(checks.cache_patterns, model) is checks.cache_patterns
    assert checks.check_cache_patterns(stub, model) is checks.cache_patterns
    assert "not done yet" in capsys.readouterr().out


def test_accepts_other_correct_implementations(model):
    def loops(p):
        n = p.shape[-1]
        return {"previous-token": torch.stack([p[..., q, q - 1] for q in range(2, n)], -1).mean((1, -1)),
                "current-token": torch.einsum("lbhqq->lbhq", p)[..., 1:].mean((1, 3)),
                "first-token": p[:, :, :, 1:, 0].mean(-1).mean(1)}
    checks.check_head_scores(loops)
    checks.check_per_token_loss(lambda l, t: torch.nn.functional.cross_entropy(
        l[:, :-1].transpose(1, 2), t[:, 1:], reduction="none"))
    checks.check_icl_score(lambda x, e, l: x[:, l].mean() - x[:, e].mean())                 # a 0-d tensor
    checks.check_icl_score(lambda x, e, l: np.float32((x[:, l].mean() - x[:, e].mean()).item()))   # numpy float32
    checks.check_induction_scores(lambda p, n: torch.stack(
        [p[..., q, q - n + 1] for q in range(n + 1, 2 * n + 1)], -1).mean((1, -1)))
    checks.check_cache_patterns(lambda m, t: torch.stack(
        [m.run_with_cache(t)[1]["pattern", l] for l in range(m.cfg.n_layers)]), model)


@pytest.mark.parametrize("kind", ODD_RETURNS)
@pytest.mark.parametrize("name", PURE)
def test_any_return_type_fails_in_one_line(name, kind):
    rejects(PURE[name][0], ODD_RETURNS[kind])


@pytest.mark.parametrize("kind", ["None", "a numpy array", "NaNs", "an object"])
def test_cache_patterns_any_return_type(kind, model):
    rejects(checks.check_cache_patterns, ODD_RETURNS[kind], None, model)


@pytest.mark.parametrize("name", ["head_scores", "per_token_loss", "induction_scores"])
def test_float64_is_named(name):
    check, reference = PURE[name]
    rejects(check, float64(reference), "float64")


def test_in_place_edits_are_named():
    def zero_first_key(p):
        p[..., 0] = 0.0                       # edits the patterns it was given
        return checks.head_scores(p)
    rejects(checks.check_head_scores, zero_first_key, "changed its input `patterns` in place")

    def shift_tokens(l, t):
        t[:, :-1] = t[:, 1:].clone()          # shifts the caller's tokens
        return -l.log_softmax(-1)[:, :-1].gather(-1, t[:, :-1, None])[..., 0]
    rejects(checks.check_per_token_loss, shift_tokens, "changed its input `tokens` in place")

    def sort_losses(x, e, l):
        x.copy_(x.sort(-1).values)
        return checks.icl_score(x, e, l)
    rejects(checks.check_icl_score, sort_losses, "in place")


def test_per_token_loss_needs_a_gradient():
    def through_numpy(l, t):
        return torch.from_numpy(checks.per_token_loss(l, t).detach().numpy())
    rejects(checks.check_per_token_loss, through_numpy, "no gradient")


# ----------------------------------------------------------------------------- 4.1 cache_patterns

WRONG_CACHE = {
    "batch first": (lambda m, t: checks.cache_patterns(m, t).transpose(0, 1), "layer axis first"),
    "last layer only": (lambda m, t: checks.cache_patterns(m, t)[-1], "new first axis"),
    "layer 0 repeated": (lambda m, t: checks.cache_patterns(m, t)[:1].repeat(m.cfg.n_layers, 1, 1, 1, 1),
                         "layer 0's pattern"),
    "heads and batch swapped": (lambda m, t: checks.cache_patterns(m, t).transpose(1, 2), None),
    "query and key swapped": (lambda m, t: checks.cache_patterns(m, t).transpose(-1, -2), None),
    "concatenated, not stacked": (lambda m, t: checks.cache_patterns(m, t).flatten(0, 1), "new first axis"),
}


@pytest.mark.parametrize("name", WRONG_CACHE)
def test_cache_patterns_rejects(name, model):
    wrong, match = WRONG_CACHE[name]
    rejects(checks.check_cache_patterns, wrong, match, model)


# ----------------------------------------------------------------------------- 4.2 head scores

def diag_mean(p, offset, first_query, dims=(1, -1)):
    d = p.diagonal(offset, -2, -1)
    return d[..., first_query + min(offset, 0):].mean(dims)


def with_score(key, wrong):
    """The reference dict with one score replaced by a wrong one."""
    return lambda p: {**checks.head_scores(p), key: wrong(p)}


WRONG_SCORES = {
    "prev: offset +1": (with_score("previous-token", lambda p: p.diagonal(1, -2, -1).mean((1, -1))), "offset \\+1"),
    "prev: offset -2": (with_score("previous-token", lambda p: diag_mean(p, -2, 2)), "two tokens back"),
    "prev: query 1 included": (with_score("previous-token", lambda p: diag_mean(p, -1, 1)), "query 1"),
    "prev: current token": (with_score("previous-token", lambda p: diag_mean(p, 0, 1)), "current token"),
    "prev: mean over heads": (with_score("previous-token", lambda p: diag_mean(p, -1, 2, dims=(2, -1))), "head axis"),
    "prev: sum over queries": (with_score("previous-token", lambda p: p.diagonal(-1, -2, -1)[..., 1:].sum(-1).mean(1)),
                               r"'previous-token' entry differs at .*\[layer \d, head \d\]"),
    "prev: no batch average": (with_score("previous-token", lambda p: p.diagonal(-1, -2, -1)[..., 1:].mean(-1)),
                               r"'previous-token' entry: expected shape"),
    "current: query 0 included": (with_score("current-token", lambda p: diag_mean(p, 0, 0)), "query 0"),
    "current: previous token": (with_score("current-token", lambda p: diag_mean(p, -1, 2)), "previous token"),
    "current: max instead of mean": (with_score("current-token", lambda p: p.diagonal(0, -2, -1)[..., 1:].amax(-1)
                                                .mean(1)), "'current-token' entry differs"),
    "first: query 0 included": (with_score("first-token", lambda p: p[..., :, 0].mean((1, -1))), "query 0"),
    "first: row instead of column": (with_score("first-token", lambda p: p[..., 0, 1:].mean((1, -1))), "a row"),
    "first: last key": (with_score("first-token", lambda p: p[..., 1:, -1].mean((1, -1))), "last position"),
    "first: mean over layers": (with_score("first-token", lambda p: p[..., 1:, 0].mean((0, -1))),
                                r"'first-token' entry: expected shape \[n_layers, n_heads\] \(average over the batch"),
    "a tuple, not a dict": (lambda p: tuple(checks.head_scores(p).values()), "return a dict"),
    "other key names": (lambda p: {"prev": checks.prev_token_scores(p), **{k: v for k, v in checks.head_scores(p)
                                                                          .items() if k != "previous-token"}},
                        r"\['previous-token'\] missing; \['prev'\] not expected"),
}


@pytest.mark.parametrize("name", WRONG_SCORES)
def test_head_scores_rejects(name):
    wrong, match = WRONG_SCORES[name]
    rejects(checks.check_head_scores, wrong, match)


# ----------------------------------------------------------------------------- 4.3 losses

def logp(logits):
    return logits.log_softmax(-1)


WRONG_LOSS = {
    "logits shifted the wrong way": (lambda l, t: -logp(l)[:, 1:].gather(-1, t[:, :-1, None])[..., 0], "off by one"),
    "same position": (lambda l, t: -logp(l)[:, :-1].gather(-1, t[:, :-1, None])[..., 0], "same"),
    "raw logits": (lambda l, t: -l[:, :-1].gather(-1, t[:, 1:, None])[..., 0], "log_softmax"),
    "softmax over positions": (lambda l, t: -l.log_softmax(1)[:, :-1].gather(-1, t[:, 1:, None])[..., 0], "vocabulary"),
    "sign": (lambda l, t: logp(l)[:, :-1].gather(-1, t[:, 1:, None])[..., 0], "minus"),
    "probability, not log": (lambda l, t: -l.softmax(-1)[:, :-1].gather(-1, t[:, 1:, None])[..., 0],
                             r"differs at .* first at \[batch 0, position 0\]"),
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
    "early minus late": (lambda x, e, l: x[:, e].mean() - x[:, l].mean(), "minus the expected"),
    "absolute value": (lambda x, e, l: (x[:, l].mean() - x[:, e].mean()).abs(), "absolute value"),
    "rows instead of positions": (lambda x, e, l: x[l].mean() - x[e].mean(), None),
    "ratio": (lambda x, e, l: x[:, l].mean() / x[:, e].mean(), "is .*, expected"),
    "positions counted from 1": (lambda x, e, l: x[:, shift(l, -1)].mean() - x[:, shift(e, -1)].mean(), None),
    "only the first index of a range": (lambda x, e, l: (x[:, l if isinstance(l, int) else l.start].mean()
                                                         - x[:, e if isinstance(e, int) else e.start].mean()),
                                        r"case 3 of 6 \(ranges of positions\)"),
}


@pytest.mark.parametrize("name", WRONG_ICL)
def test_icl_score_rejects(name):
    wrong, match = WRONG_ICL[name]
    rejects(checks.check_icl_score, wrong, match)


def test_absolute_value_is_not_called_a_flipped_sign():
    """|late - early| agrees on the first case (late above early); on a later case it is minus the answer,
    and the message names both ways of getting there rather than guessing one."""
    message = rejects(checks.check_icl_score, lambda x, e, l: abs(checks.icl_score(x, e, l)))
    assert "case 1 of" not in message and "swap them, or take an absolute value" in message


# ----------------------------------------------------------------------------- 4.4 induction scores

WRONG_INDUCTION = {
    "duplicate token (offset -seq_len)": (lambda p, n: p.diagonal(-n, -2, -1)[..., 1:].mean((1, -1)), "duplicate"),
    "start token forgotten": (lambda p, n: p.diagonal(1 - n, -2, -1)[..., 1:-1].mean((1, -1)), None),
    "one query early": (lambda p, n: p.diagonal(1 - n, -2, -1)[..., 1:].mean((1, -1)), "one position early"),
    "first copy included": (lambda p, n: p.diagonal(1 - n, -2, -1).mean((1, -1)), "first copy"),
    "offset 2 - seq_len": (lambda p, n: p.diagonal(2 - n, -2, -1)[..., 3:].mean((1, -1)), "two tokens after"),
    "flipped offset (upper triangle)": (lambda p, n: p.diagonal(n - 1, -2, -1).mean((1, -1)), "upper triangle"),
    "mean over heads": (lambda p, n: p.diagonal(1 - n, -2, -1)[..., 2:].mean((2, -1)), "head axis"),
    "mean over layers": (lambda p, n: p.diagonal(1 - n, -2, -1)[..., 2:].mean((0, -1)), "expected shape"),
    "previous-token score": (lambda p, n: model_facts.prev_token_scores(p), r"\[layer \d, head \d\]"),
    "last query only": (lambda p, n: p[..., -1, n].mean(1), None),
    "second copy assumed to start at seq_len": (lambda p, n: p.diagonal(1 - n, -2, -1)[..., 1:n + 1].mean((1, -1)),
                                                None),
}


@pytest.mark.parametrize("name", WRONG_INDUCTION)
def test_induction_scores_rejects(name):
    wrong, match = WRONG_INDUCTION[name]
    rejects(checks.check_induction_scores, wrong, match)


def test_messages_name_the_case():
    rejects(checks.check_induction_scores, WRONG_INDUCTION["offset 2 - seq_len"][0], r"induction_scores, case 1 of 5 \(")
