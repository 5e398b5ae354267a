"""The checks of notebook 03, sections 3.1-3.3, pass the reference, skip a stub, and reject plausible
wrong answers (and answers of every other type) in one line."""

from __future__ import annotations

import pytest
import torch

from course_utils import lens, tuned_lens
from course_utils.checks import lens_reading as checks
from tests.check_helpers import ODD_RETURNS, rejects, stub


def test_stubs_return_references(model, capsys):
    assert checks.check_logit_lens(stub, model) is lens.logit_lens
    assert checks.check_lens_logprobs(stub, model) is checks.lens_logprobs
    assert checks.check_rank_of(stub) is checks.rank_of
    assert checks.check_kl_from_final(stub) is tuned_lens.kl_from_final
    assert checks.check_decision_point(stub) is checks.decision_point
    assert checks.check_top1_agreement(stub) is checks.top1_agreement
    assert capsys.readouterr().out.count("not done yet") == 6


# ----------------------------------------------------------------------------- the references themselves

def test_lens_logprobs_is_the_accumulated_resid_lens(model):
    tokens = checks.random_tokens(model, 2, 6, 0)
    _, cache = model.run_with_cache(tokens)
    stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    expected = (stack @ model.W_U + lens.logit_constant(model, torch.arange(model.cfg.d_vocab))).log_softmax(-1)
    assert labels == tuned_lens.read_point_labels(model)
    assert torch.allclose(checks.lens_logprobs(model, tokens), expected, atol=1e-4)



def test_decision_point_by_hand():
    ranks = torch.tensor([[0, 0, 0], [2, 0, 0], [0, 1, 0], [0, 0, 1]]).T  # [3 points, 4 positions]
    assert checks.decision_point(ranks).tolist() == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- 3.1 logit lens

def by_hand(model, resid, unbiased=False, eps=True, weight=True, bias=True, centre=True):
    norm = model.ln_final
    x = resid - resid.mean(-1, keepdim=True) if centre else resid
    var = (x ** 2).mean(-1, keepdim=True) if not unbiased else x.var(-1, keepdim=True)
    x = x / (var + (norm.eps if eps else 0)).sqrt()
    x = x * norm.weight if weight else x
    x = x + norm.bias if bias else x
    return x @ model.W_U + model.b_U


def in_place_lens(model, resid):
    resid -= resid.mean(-1, keepdim=True)
    return lens.logit_lens(model, resid)


WRONG_LENSES = {
    "forgot the norm": (lambda m, r: r @ m.W_U + m.b_U, "raw residual"),
    "norm twice": (lambda m, r: lens.logit_lens(m, m.ln_final(r)), "twice"),
    "unbiased variance": (lambda m, r: by_hand(m, r, unbiased=True), "biased variance"),
    "no eps": (lambda m, r: by_hand(m, r, eps=False), "eps"),
    "no norm bias": (lambda m, r: by_hand(m, r, bias=False), "bias"),
    "no norm weight": (lambda m, r: by_hand(m, r, weight=False), "weight"),
    "RMS, not centred": (lambda m, r: by_hand(m, r, centre=False), None),
    "changes its input": (in_place_lens, "in place"),
    "float64": (lambda m, r: by_hand(m, r).double(), "float64"),
    "flattened": (lambda m, r: lens.logit_lens(m, r).flatten(), "shape"),
}


def test_logit_lens_accepts_reference_and_hand_written_norm(model):
    assert checks.check_logit_lens(lens.logit_lens, model) is lens.logit_lens
    checks.check_logit_lens(lambda m, r: by_hand(m, r), model)


@pytest.mark.parametrize("name", WRONG_LENSES)
def test_logit_lens_rejects(model, name):
    wrong, match = WRONG_LENSES[name]
    rejects(checks.check_logit_lens, wrong, match, model)


# ----------------------------------------------------------------------------- lens_logprobs

def stacked(model, tokens, names):
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return torch.stack([cache[name] for name in names])


def pre(model):
    return [f"blocks.{l}.hook_resid_pre" for l in range(model.cfg.n_layers)]


def post(model):
    return [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]


WRONG_LOGPROBS = {
    "resid_post of every layer": (lambda m, t: lens.logit_lens(m, stacked(m, t, post(m) + post(m)[-1:])).log_softmax(-1), "leaving"),
    "only n_layers points": (lambda m, t: lens.logit_lens(m, stacked(m, t, pre(m))).log_softmax(-1), "read points"),
    "embeddings twice, last layer missing": (lambda m, t: lens.logit_lens(
        m, stacked(m, t, pre(m)[:1] + pre(m))).log_softmax(-1), None),
    "softmax": (lambda m, t: checks.lens_logprobs(m, t).exp(), "softmax"),
    "logits": (lambda m, t: lens.logit_lens(m, stacked(m, t, pre(m) + post(m)[-1:])), "log_softmax"),
    "accumulated_resid without the bias": (lambda m, t: (m.run_with_cache(t)[1].accumulated_resid(apply_ln=True)
                                                        @ m.W_U).log_softmax(-1), "bias"),
    "no norm": (lambda m, t: (stacked(m, t, pre(m) + post(m)[-1:]) @ m.W_U).log_softmax(-1), None),
    "float64": (lambda m, t: checks.lens_logprobs(m, t).double(), "float64"),
}


def test_lens_logprobs_accepts_reference(model):
    assert checks.check_lens_logprobs(checks.lens_logprobs, model) is checks.lens_logprobs


@pytest.mark.parametrize("name", WRONG_LOGPROBS)
def test_lens_logprobs_rejects(model, name):
    wrong, match = WRONG_LOGPROBS[name]
    rejects(checks.check_lens_logprobs, wrong, match, model)


# ----------------------------------------------------------------------------- rank and decision point

def in_place_rank(logprobs, ids):
    logprobs -= logprobs.gather(-1, ids.expand(logprobs.shape[:-1])[..., None])
    return (logprobs > 0).sum(-1)


WRONG_RANKS = {
    "one-based": (lambda lp, ids: checks.rank_of(lp, ids) + 1, "strictly"),
    "greater or equal": (lambda lp, ids: (lp >= lp.gather(-1, ids.expand(lp.shape[:-1])[..., None])).sum(-1), "strictly"),
    "least likely first": (lambda lp, ids: checks.rank_of(-lp, ids), "most"),
    "float": (lambda lp, ids: checks.rank_of(lp, ids).float(), "dtype"),
    "changes its input": (in_place_rank, "in place"),
    "rank at the first point only": (lambda lp, ids: checks.rank_of(lp, ids)[:1].expand(lp.shape[0], *ids.shape), None),
}


def test_rank_of_accepts_reference_and_argsort():
    checks.check_rank_of(checks.rank_of)
    checks.check_rank_of(lambda lp, ids: lp.argsort(-1, descending=True).argsort(-1).gather(
        -1, ids.expand(lp.shape[:-1])[..., None])[..., 0])


@pytest.mark.parametrize("name", WRONG_RANKS)
def test_rank_of_rejects(name):
    wrong, match = WRONG_RANKS[name]
    rejects(checks.check_rank_of, wrong, match)


WRONG_DECISIONS = {
    "first top-1": (lambda r: torch.where((r == 0).any(0), (r == 0).int().argmax(0), r.shape[0]), "stays top-1"),
    "never decided is -1": (lambda r: torch.where(r[-1] == 0, checks.decision_point(r), -1), "n_points"),
    "never decided is the last point": (lambda r: checks.decision_point(r).clamp(max=r.shape[0] - 1), None),
    "one too late": (lambda r: checks.decision_point(r) + 1, None),
    "float": (lambda r: checks.decision_point(r).float(), "dtype"),
    "last point where it is not top-1": (lambda r: r.shape[0] - 1 - (r != 0).flip(0).int().argmax(0), None),
    "changes its input": (lambda r: checks.decision_point(r.clamp_(max=1)), "in place"),
}


def test_decision_point_accepts_reference():
    assert checks.check_decision_point(checks.decision_point) is checks.decision_point


@pytest.mark.parametrize("name", WRONG_DECISIONS)
def test_decision_point_rejects(name):
    wrong, match = WRONG_DECISIONS[name]
    rejects(checks.check_decision_point, wrong, match)


# ----------------------------------------------------------------------------- KL and agreement

def logp(x):
    return x.log_softmax(-1)


def in_place_kl(lens_logits, final_logits):
    final_logits -= final_logits.logsumexp(-1, keepdim=True)
    return tuned_lens.kl_from_final(lens_logits, final_logits)


WRONG_KLS = {
    "reversed": (lambda q, p: (logp(q).exp() * (logp(q) - logp(p))).sum(-1), "other way round"),
    "probabilities for log-probabilities": (lambda q, p: (p.softmax(-1) * (p.softmax(-1) - q.softmax(-1))).sum(-1), "softmax"),
    "log of softmax": (lambda q, p: (p.softmax(-1) * (p.softmax(-1).log() - q.softmax(-1).log())).sum(-1), "underflows"),
    "mean over the vocabulary": (lambda q, p: (logp(p).exp() * (logp(p) - logp(q))).mean(-1), "sum over"),
    "raw logits": (lambda q, p: (p.softmax(-1) * (p - q)).sum(-1), "log_softmax"),
    "kl_div arguments swapped": (lambda q, p: torch.nn.functional.kl_div(
        logp(p), logp(q).expand(*q.shape), log_target=True, reduction="none").sum(-1), "other way round"),
    "changes its input": (in_place_kl, "in place"),
    "float64": (lambda q, p: tuned_lens.kl_from_final(q, p).double(), "float64"),
    "averaged over positions": (lambda q, p: tuned_lens.kl_from_final(q, p).mean(-1), "shape"),
}


def test_kl_accepts_reference_and_kl_div():
    assert checks.check_kl_from_final(tuned_lens.kl_from_final) is tuned_lens.kl_from_final
    checks.check_kl_from_final(lambda q, p: torch.nn.functional.kl_div(
        logp(q), logp(p).expand(*q.shape), log_target=True, reduction="none").sum(-1))


@pytest.mark.parametrize("name", WRONG_KLS)
def test_kl_rejects(name):
    wrong, match = WRONG_KLS[name]
    rejects(checks.check_kl_from_final, wrong, match)


WRONG_AGREEMENTS = {
    "count": (lambda q, p: (q.argmax(-1) == p.argmax(-1)).flatten(1).sum(1).float(), "share"),
    "bool per position": (lambda q, p: q.argmax(-1) == p.argmax(-1), None),
    "disagreement": (lambda q, p: (q.argmax(-1) != p.argmax(-1)).flatten(1).float().mean(1), None),
    "argmax over the wrong axis": (lambda q, p: (q.argmax(1) == p.argmax(0)).flatten(1).float().mean(1), None),
    "float64": (lambda q, p: checks.top1_agreement(q, p).double(), "float64"),
}


def test_top1_agreement_accepts_reference():
    assert checks.check_top1_agreement(checks.top1_agreement) is checks.top1_agreement


@pytest.mark.parametrize("name", WRONG_AGREEMENTS)
def test_top1_agreement_rejects(name):
    wrong, match = WRONG_AGREEMENTS[name]


# ----------------------------------------------------------------------------- answers of every other type

CHECKS = {"logit_lens": (checks.check_logit_lens, True), "lens_logprobs": (checks.check_lens_logprobs, True),
          "rank_of": (checks.check_rank_of, False), "decision_point": (checks.check_decision_point, False),
          "kl_from_final": (checks.check_kl_from_final, False), "top1_agreement": (checks.check_top1_agreement, False)}


@pytest.mark.parametrize("odd", ODD_RETURNS)
@pytest.mark.parametrize("name", CHECKS)
def test_odd_returns_fail_in_one_line(model, name, odd):
    check, needs_model = CHECKS[name]
    rejects(check, ODD_RETURNS[odd], None, *((model,) if needs_model else ()))
