"""The checks of notebook 03, sections 3.4-3.6, pass the reference, skip a stub, and reject plausible
wrong answers (and answers of every other type) in one line."""

from __future__ import annotations

import pytest
import torch

from course_utils import lens, tuned_lens
from course_utils.checks import lens_tuned as checks
from course_utils.checks.lens_reading import random_tokens
from tests.check_helpers import ODD_RETURNS, rejects, stub


def test_stubs_return_references(model, capsys):
    assert checks.check_lens_logit_from_dla(stub, model) is checks.lens_logit_from_dla
    assert checks.check_tuned_lens_loss(stub, model) is tuned_lens.tuned_lens_loss
    assert checks.check_patch_resid(stub, model) is checks.patch_resid
    assert capsys.readouterr().out.count("not done yet") == 3


# ----------------------------------------------------------------------------- the references themselves

def test_lens_logit_from_dla_is_the_logit_lens(model):
    tokens = random_tokens(model, 2, 6, 1)
    logits, cache = model.run_with_cache(tokens)
    ids = logits.argmax(-1)
    lens_logits = lens.logit_lens(model, cache.accumulated_resid())          # [n_points, batch, pos, d_vocab]
    expected = lens_logits.gather(-1, ids.expand(model.cfg.n_layers + 1, -1, -1)[..., None])[..., 0]
    assert torch.allclose(checks.lens_logit_from_dla(model, cache, ids), expected, atol=1e-4)



def test_patch_resid_at_the_last_point_sets_the_output(model):
    tokens = random_tokens(model, 2, 5, 2)
    new = torch.randn(2, model.cfg.d_model)
    out = checks.patch_resid(model, tokens, tuned_lens.read_point_names(model)[-1], 4, new)
    assert torch.allclose(out[:, 4], lens.logit_lens(model, new), atol=1e-4)
    assert torch.allclose(out[:, :4], model(tokens)[:, :4], atol=1e-5)



# ----------------------------------------------------------------------------- lens from DLA

def dla_variant(model, cache, tokens, rescale=True, constant=True, offset=0, invert=False, double=False):
    parts, labels = cache.decompose_resid(return_labels=True)
    n = model.cfg.n_layers
    ends = [len(labels) - 2 * n - 1 + 2 * l + offset for l in range(n + 1)]
    ends = [min(e, len(labels) - 1) for e in ends]
    running = cache.logit_attrs(parts, tokens).cumsum(0)[ends]
    ratio = cache["ln_final.hook_scale"][..., 0] / lens.norm_scale(model, parts.cumsum(0)[ends])[..., 0]
    ratio = 1 / ratio if invert else ratio
    out = running * ratio if rescale else running
    out = out + lens.logit_constant(model, tokens) if constant else out
    return out.double() if double else out


WRONG_DLAS = {
    "not rescaled": (dict(rescale=False), "own"),
    "no constant": (dict(constant=False), "logit_constant"),
    "read after each attention layer": (dict(offset=-1), None),
    "scale ratio inverted": (dict(invert=True), None),
    "float64": (dict(double=True), "float64"),
}


def test_lens_logit_from_dla_rejects_an_answer_that_edits_the_tokens(model):
    def edits(m, cache, tokens):
        out = checks.lens_logit_from_dla(m, cache, tokens)
        tokens[:] = 0
        return out
    rejects(checks.check_lens_logit_from_dla, edits, "in place", model)


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
    "float64": (lambda *a: checks.patch_resid(*a).double(), "float64"),
}


def test_patch_resid_accepts_reference(model):
    assert checks.check_patch_resid(checks.patch_resid, model) is checks.patch_resid


@pytest.mark.parametrize("name", WRONG_PATCHES)
def test_patch_resid_rejects(model, name):
    wrong, match = WRONG_PATCHES[name]
    rejects(checks.check_patch_resid, wrong, match, model)


# ----------------------------------------------------------------------------- answers of every other type

CHECKS = {"lens_logit_from_dla": checks.check_lens_logit_from_dla, "tuned_lens_loss": checks.check_tuned_lens_loss,
          "patch_resid": checks.check_patch_resid}


@pytest.mark.parametrize("odd", ODD_RETURNS)
@pytest.mark.parametrize("name", CHECKS)
def test_odd_returns_fail_in_one_line(model, name, odd):
    rejects(CHECKS[name], ODD_RETURNS[odd], None, model)
