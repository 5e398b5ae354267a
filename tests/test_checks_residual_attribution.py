"""Notebook 02, sections 2.1 and 2.4: the residual stream's parts, the logit difference and direct logit
attribution pass their references, skip stubs, and reject the named wrong answers (parts left out, the
norm ignored or applied per part, the wrong position or sign), in-place edits, wrong dtypes and answers
of any type, in one line."""

from __future__ import annotations

import pytest
import torch

from course_utils import lens
from course_utils.checks import residual_attribution as checks
from tests.check_helpers import ODD_RETURNS, float64, rejects, stub


# ----------------------------------------------------------------------------- references

def test_dla_adds_up_to_the_logit_difference(model):
    tokens = torch.randint(1, 97, (2, 7), generator=torch.Generator().manual_seed(3))
    logits, cache = model.run_with_cache(tokens)
    stack = checks.residual_parts(model, cache)[0][:, :, -1]
    answers, wrongs = torch.tensor([5, 9]), torch.tensor([8, 2])
    attrs = checks.direct_logit_attribution(model, cache, stack, answers, wrongs)
    constant = lens.logit_constant(model, answers) - lens.logit_constant(model, wrongs)
    assert torch.allclose(attrs.sum(0) + constant, checks.logit_diff(logits, answers, wrongs), atol=1e-4)


def test_parts_add_up_to_the_final_stream(model):
    _, cache = model.run_with_cache(checks.random_prompts(model, 2, 5, 0))
    stack, labels = checks.residual_parts(model, cache)
    assert len(labels) == stack.shape[0] == 3 * 4 + 3 + 3
    assert torch.allclose(stack.sum(0), cache["resid_post", -1], atol=1e-4)


# ----------------------------------------------------------------------------- every check: reference, stub, odd answers

CHECKS = {"residual_parts": (checks.check_residual_parts, checks.residual_parts, True),
          "logit_diff": (checks.check_logit_diff, checks.logit_diff, False),
          "direct_logit_attribution": (checks.check_direct_logit_attribution, checks.direct_logit_attribution, True)}


def _call(name, fn, model):
    check, _, needs_model = CHECKS[name]
    return check(fn, model) if needs_model else check(fn)


@pytest.mark.parametrize("name", CHECKS)
def test_accepts_reference_and_skips_stub(name, model, capsys):
    reference = CHECKS[name][1]
    assert _call(name, reference, model) is reference
    assert _call(name, stub, model) is reference
    out = capsys.readouterr().out
    assert "cases pass" in out and "not done yet" in out and out.count("\n") == 2


@pytest.mark.parametrize("name", CHECKS)
@pytest.mark.parametrize("kind", ODD_RETURNS)
def test_any_return_type_fails_in_one_line(name, kind, model):
    check, _, needs_model = CHECKS[name]
    rejects(check, ODD_RETURNS[kind], None, *([model] if needs_model else []))


def test_float64_is_named(model):
    rejects(checks.check_logit_diff, float64(checks.logit_diff), "float64")
    rejects(checks.check_direct_logit_attribution, float64(checks.direct_logit_attribution), "float64", model)


def test_accepts_other_correct_implementations(model):
    def parts_by_hand(m, cache):
        heads = [torch.einsum("bphd,hdm->hbpm", cache["z", l], m.W_O[l]) for l in range(m.cfg.n_layers)]
        mlps = [cache["mlp_out", l][None] for l in range(m.cfg.n_layers)]
        bias = m.b_O.sum(0).expand_as(cache["embed"])[None]
        labels = [f"L{l}H{h}" for l in range(m.cfg.n_layers) for h in range(m.cfg.n_heads)]
        labels += [f"{l}_mlp_out" for l in range(m.cfg.n_layers)] + ["embed", "pos_embed", "bias"]
        return torch.cat(heads + mlps + [cache["embed"][None], cache["pos_embed"][None], bias]), labels

    checks.check_residual_parts(parts_by_hand, model)
    checks.check_logit_diff(lambda l, a, w: l.log_softmax(-1)[torch.arange(len(a)), -1, a]
                            - l.log_softmax(-1)[torch.arange(len(a)), -1, w])   # log-probs differ by the same

    def dla_by_hand(m, cache, stack, a, w):
        scale = cache["ln_final.hook_scale"][:, -1]                          # [batch, 1]
        centred = stack - stack.mean(-1, keepdim=True)
        return torch.einsum("nbd,bd->nb", centred / scale * m.ln_final.weight, m.W_U[:, a].T - m.W_U[:, w].T)

    checks.check_direct_logit_attribution(dla_by_hand, model)


# ----------------------------------------------------------------------------- 2.1 wrong answers

def _parts_without(label):
    def wrong(m, c):
        stack, labels = checks.residual_parts(m, c)
        keep = [i for i, name in enumerate(labels) if not name.endswith(label)]
        return stack[keep], [labels[i] for i in keep]
    return wrong


def _parts_edit(edit):
    def wrong(m, c):
        stack, labels = checks.residual_parts(m, c)
        return edit(stack, m, c), labels
    return wrong


def _edits_cache(m, c):
    c["blocks.0.hook_resid_pre"].zero_()
    return checks.residual_parts(m, c)


WRONG_PARTS = {
    "no biases": (_parts_without("bias"), "biases are missing"),
    "no MLPs": (_parts_without("mlp_out"), "MLP outputs are missing"),
    "no position embedding": (_parts_without("pos_embed"), "position embedding is missing"),
    "attention outputs, not heads": (lambda m, c: (torch.stack([c["attn_out", l] for l in range(m.cfg.n_layers)]),
                                                   [f"{l}_attn_out" for l in range(m.cfg.n_layers)]), None),
    "W_O of the next layer": (_parts_edit(lambda s, m, c: torch.cat([torch.einsum(
        "bphd,hdm->hbpm", c["z", l], m.W_O[(l + 1) % m.cfg.n_layers]) for l in range(m.cfg.n_layers)] + [s[m.cfg.n_layers * m.cfg.n_heads:]])),
        "do not sum"),
    "labels missing": (lambda m, c: (checks.residual_parts(m, c)[0], []), "labels"),
    "labels not a list": (lambda m, c: (checks.residual_parts(m, c)[0], None), "labels"),
    "only the stack": (lambda m, c: checks.residual_parts(m, c)[0], "pair"),
    "float64": (_parts_edit(lambda s, m, c: s.double()), "float64"),
    "edits the cache": (_edits_cache, "in place"),
}


@pytest.mark.parametrize("name", WRONG_PARTS)
def test_residual_parts_rejects(name, model):
    wrong, match = WRONG_PARTS[name]
    rejects(checks.check_residual_parts, wrong, match, model)


# ----------------------------------------------------------------------------- 2.4 wrong answers

def _at(pos):
    def wrong(l, a, w):
        rows = torch.arange(l.shape[0])
        return l[rows, pos, a] - l[rows, pos, w]
    return wrong


WRONG_LOGIT_DIFF = {
    "sign": (lambda l, a, w: -checks.logit_diff(l, a, w), "sign"),
    "first position": (_at(0), "first position"),
    "second-last position": (_at(-2), "second-last"),
    "probabilities": (lambda l, a, w: checks.logit_diff(l.softmax(-1), a, w), "probabilities"),
    "mean over batch": (lambda l, a, w: checks.logit_diff(l, a, w).mean(), "one difference per prompt"),
    "no gradient": (lambda l, a, w: checks.logit_diff(l, a, w).detach(), "gradient"),
    "through .item()": (lambda l, a, w: torch.tensor([checks.logit_diff(l, a, w)[i].item() for i in range(len(a))]),
                        "gradient"),
    "edits logits": (lambda l, a, w: checks.logit_diff(l.detach().sub_(1), a, w), "in place"),
}


@pytest.mark.parametrize("name", WRONG_LOGIT_DIFF)
def test_logit_diff_rejects(name):
    wrong, match = WRONG_LOGIT_DIFF[name]
    rejects(checks.check_logit_diff, wrong, match)


def _direction(m, a, w):
    return m.W_U.T[a] - m.W_U.T[w]


def _dla_edits_stack(m, c, s, a, w):
    out = checks.direct_logit_attribution(m, c, s, a, w)
    s.zero_()
    return out


WRONG_DLA = {
    "norm ignored": (lambda m, c, s, a, w: (s * _direction(m, a, w)).sum(-1), "final norm is ignored"),
    "own scale per part": (lambda m, c, s, a, w: (m.ln_final(s) * _direction(m, a, w)).sum(-1), "own scale"),
    "scale at position 0": (lambda m, c, s, a, w: ((s - s.mean(-1, keepdim=True)) / c["ln_final.hook_scale"][:, 0]
                                                   * m.ln_final.weight * _direction(m, a, w)).sum(-1), "first position"),
    "not centred": (lambda m, c, s, a, w: (s / c["ln_final.hook_scale"][:, -1] * m.ln_final.weight
                                           * _direction(m, a, w)).sum(-1), "not centred"),
    "no weight": (lambda m, c, s, a, w: ((s - s.mean(-1, keepdim=True)) / c["ln_final.hook_scale"][:, -1]
                                         * _direction(m, a, w)).sum(-1), "weight is missing"),
    "sign": (lambda m, c, s, a, w: -checks.direct_logit_attribution(m, c, s, a, w), "sign"),
    "summed over parts": (lambda m, c, s, a, w: checks.direct_logit_attribution(m, c, s, a, w).sum(0), "shape"),
    "bias included": (lambda m, c, s, a, w: checks.direct_logit_attribution(m, c, s, a, w)
                      + (m.ln_final.bias * _direction(m, a, w)).sum(-1), None),
    "edits the stack": (_dla_edits_stack, "in place"),
}


@pytest.mark.parametrize("name", WRONG_DLA)
def test_direct_logit_attribution_rejects(name, model):
    wrong, match = WRONG_DLA[name]
    rejects(checks.check_direct_logit_attribution, wrong, match, model)
