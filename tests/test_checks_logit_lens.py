"""Each check of notebook 03 passes the reference, skips a stub, and rejects plausible wrong answers."""

from __future__ import annotations

import pytest
import torch

from course_utils import HookedModel, lens, tuned_lens
from course_utils.checks import CheckFailed
from course_utils.checks import logit_lens as checks
from tests.conftest import TinyTokenizer, build


def stub(*args, **kwargs):
    raise NotImplementedError


def rejects(check, wrong, match: str | None = None, *extra) -> None:
    with pytest.raises(CheckFailed, match=match):
        check(wrong, *extra)


@pytest.fixture(scope="module")
def model() -> HookedModel:
    """A tiny random GPT-2 (3 layers, vocabulary 97, random norm biases): the checks must not need the bundled model."""
    return HookedModel(build("gpt2"), TinyTokenizer())


def test_stubs_return_references(model, capsys):
    assert checks.check_logit_lens(stub, model) is lens.logit_lens
    assert checks.check_kl_from_final(stub) is tuned_lens.kl_from_final
    assert checks.check_decision_point(stub) is checks.decision_point
    assert checks.check_tuned_lens_loss(stub, model) is tuned_lens.tuned_lens_loss
    assert checks.check_patch_resid(stub, model) is checks.patch_resid
    assert capsys.readouterr().out.count("not done yet") == 5


# ----------------------------------------------------------------------------- the references themselves

def test_lens_logprobs_is_the_accumulated_resid_lens(model):
    tokens = checks._tokens(model, 2, 6, 0)
    _, cache = model.run_with_cache(tokens)
    stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    expected = (stack @ model.W_U + lens.logit_constant(model, torch.arange(model.cfg.d_vocab))).log_softmax(-1)
    assert labels == tuned_lens.read_point_labels(model)
    assert torch.allclose(checks.lens_logprobs(model, tokens), expected, atol=1e-4)


def test_lens_logit_from_dla_is_the_logit_lens(model):
    tokens = checks._tokens(model, 2, 6, 1)
    logits, cache = model.run_with_cache(tokens)
    ids = logits.argmax(-1)
    lens_logits = lens.logit_lens(model, cache.accumulated_resid())          # [n_points, batch, pos, d_vocab]
    expected = lens_logits.gather(-1, ids.expand(model.cfg.n_layers + 1, -1, -1)[..., None])[..., 0]
    assert torch.allclose(checks.lens_logit_from_dla(model, cache, ids), expected, atol=1e-4)


def test_decision_point_by_hand():
    ranks = torch.tensor([[0, 0, 0], [2, 0, 0], [0, 1, 0], [0, 0, 1]]).T  # [3 points, 4 positions]
    assert checks.decision_point(ranks).tolist() == [0, 1, 2, 3]


def test_patch_resid_at_the_last_point_sets_the_output(model):
    tokens = checks._tokens(model, 2, 5, 2)
    new = torch.randn(2, model.cfg.d_model)
    out = checks.patch_resid(model, tokens, tuned_lens.read_point_names(model)[-1], 4, new)
    assert torch.allclose(out[:, 4], lens.logit_lens(model, new), atol=1e-4)
    assert torch.allclose(out[:, :4], model(tokens)[:, :4], atol=1e-5)


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
}


def test_top1_agreement_accepts_reference():
    assert checks.check_top1_agreement(checks.top1_agreement) is checks.top1_agreement


@pytest.mark.parametrize("name", WRONG_AGREEMENTS)
def test_top1_agreement_rejects(name):
    wrong, match = WRONG_AGREEMENTS[name]
    rejects(checks.check_top1_agreement, wrong, match)


# ----------------------------------------------------------------------------- lens from DLA

def dla_variant(model, cache, tokens, rescale=True, constant=True, offset=0, invert=False):
    parts, labels = cache.decompose_resid(return_labels=True)
    n = model.cfg.n_layers
    ends = [len(labels) - 2 * n - 1 + 2 * l + offset for l in range(n + 1)]
    ends = [min(e, len(labels) - 1) for e in ends]
    running = cache.logit_attrs(parts, tokens).cumsum(0)[ends]
    ratio = cache["ln_final.hook_scale"][..., 0] / lens.norm_scale(model, parts.cumsum(0)[ends])[..., 0]
    ratio = 1 / ratio if invert else ratio
    out = running * ratio if rescale else running
    return out + lens.logit_constant(model, tokens) if constant else out


WRONG_DLAS = {
    "not rescaled": (dict(rescale=False), "own"),
    "no constant": (dict(constant=False), "logit_constant"),
    "read after each attention layer": (dict(offset=-1), None),
    "scale ratio inverted": (dict(invert=True), None),
}


def test_lens_logit_from_dla_accepts_reference(model):
    assert checks.check_lens_logit_from_dla(checks.lens_logit_from_dla, model) is checks.lens_logit_from_dla


@pytest.mark.parametrize("name", WRONG_DLAS)
def test_lens_logit_from_dla_rejects(model, name):
    kwargs, match = WRONG_DLAS[name]
    rejects(checks.check_lens_logit_from_dla, lambda m, c, t: dla_variant(m, c, t, **kwargs), match, model)


# ----------------------------------------------------------------------------- tuned lens loss

def loss_variant(model, resid, weight, bias, final, transpose=False, use_bias=True, reverse=False, detach=False):
    w = weight.transpose(-1, -2) if transpose else weight
    moved = resid @ w + (bias[:, None] if use_bias else 0)
    lens_logits = lens.logit_lens(model, moved.detach() if detach else moved)
    kl = tuned_lens.kl_from_final(final, lens_logits) if reverse else tuned_lens.kl_from_final(lens_logits, final)
    return kl.mean()


WRONG_LOSSES = {
    "reversed KL": (dict(reverse=True), "KL\\(final"),
    "weight transposed": (dict(transpose=True), None),
    "no bias": (dict(use_bias=False), None),
    "detached": (dict(detach=True), "gradient"),
}


def test_tuned_lens_loss_accepts_reference_and_einsum(model):
    assert checks.check_tuned_lens_loss(tuned_lens.tuned_lens_loss, model) is tuned_lens.tuned_lens_loss
    checks.check_tuned_lens_loss(lambda m, r, w, b, f: loss_variant(m, r, w, b, f), model)


@pytest.mark.parametrize("name", WRONG_LOSSES)
def test_tuned_lens_loss_rejects(model, name):
    kwargs, match = WRONG_LOSSES[name]
    rejects(checks.check_tuned_lens_loss, lambda *a: loss_variant(*a, **kwargs), match, model)


def test_tuned_lens_loss_names_norm_and_sums(model):
    def no_norm(m, r, w, b, f):
        return tuned_lens.kl_from_final(tuned_lens.translate(r, w, b) @ m.W_U + m.b_U, f).mean()

    def summed_layers(m, r, w, b, f):
        return tuned_lens.kl_from_final(lens.logit_lens(m, tuned_lens.translate(r, w, b)), f).mean(-1).sum()

    def summed_tokens(m, r, w, b, f):
        return tuned_lens.kl_from_final(lens.logit_lens(m, tuned_lens.translate(r, w, b)), f).sum(-1).mean()

    rejects(checks.check_tuned_lens_loss, no_norm, "final norm", model)
    rejects(checks.check_tuned_lens_loss, summed_layers, "layers", model)
    rejects(checks.check_tuned_lens_loss, summed_tokens, "tokens", model)
    rejects(checks.check_tuned_lens_loss, lambda *a: tuned_lens.tuned_lens_loss(*a).double(), "float64", model)


# ----------------------------------------------------------------------------- patching

def patch_variant(model, tokens, name, pos, new, onwards=False, shift=0, hook_name=None):
    def hook(resid, hook):
        if onwards:
            resid[:, pos:] = new[:, None]
        else:
            resid[:, min(pos + shift, resid.shape[1] - 1)] = new
        return resid
    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name(name) if hook_name else name, hook)])


def next_hook(name):
    if name.endswith("resid_pre"):
        return name.replace("resid_pre", "resid_post")
    return name


def in_place_patch(model, tokens, name, pos, new):
    new.mul_(1.0001)
    return checks.patch_resid(model, tokens, name, pos, new)


WRONG_PATCHES = {
    "every position from pos on": (lambda *a: patch_variant(*a, onwards=True), "every position"),
    "the next position": (lambda *a: patch_variant(*a, shift=1), None),
    "one layer later": (lambda *a: patch_variant(*a, hook_name=next_hook), None),
    "no patch": (lambda m, t, name, pos, new: m(t), None),
    "changes new_resid": (in_place_patch, "in place"),
}


def test_patch_resid_accepts_reference(model):
    assert checks.check_patch_resid(checks.patch_resid, model) is checks.patch_resid


@pytest.mark.parametrize("name", WRONG_PATCHES)
def test_patch_resid_rejects(model, name):
    wrong, match = WRONG_PATCHES[name]
    rejects(checks.check_patch_resid, wrong, match, model)
