"""Notebook 02, sections 2.2 and 2.3: the direct path and one head's OV and QK tables pass their
references, skip stubs, and reject the named wrong answers (the final norm left out or applied with its
own scale, a bias too many or too few, another head, queries and keys swapped), in-place edits, wrong
dtypes and answers of any type, in one line."""

from __future__ import annotations

import pytest
import torch

from course_utils import lens
from course_utils.checks import residual_paths as checks
from tests.check_helpers import ODD_RETURNS, accepts_reference_and_skips_stub, float64, rejects


# ----------------------------------------------------------------------------- references

def test_qk_table_is_what_attention_computes(model):
    tokens = torch.randint(1, 97, (1, 6), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    x = cache["normalized", 1, "ln1"][0]                                     # what layer 1 reads
    scores = checks.qk_table(model, 1, 2, x, x)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.allclose(scores[causal], cache["attn_scores", 1][0, 2][causal], atol=1e-4)


def test_ov_table_is_the_head_read_through_the_final_norm(model):
    """Through the final norm with its scale frozen (as DLA reads every part), a head's output moves the
    logits by its OV table's row divided by that scale."""
    tokens = torch.randint(1, 97, (1, 5), generator=torch.Generator().manual_seed(2))
    _, cache = model.run_with_cache(tokens)
    x = torch.randn(5, model.cfg.d_model)
    out = (x @ model.W_V[0, 1] @ model.W_O[0, 1])[None]                         # [batch 1, pos 5, d_model]
    read = cache.apply_ln_to_stack(out[None])[0] @ model.W_U                     # [1, 5, d_vocab]
    expected = checks.ov_table(model, 0, 1, x) / cache["ln_final.hook_scale"][0]
    assert torch.allclose(read[0], expected, atol=1e-4)


# ----------------------------------------------------------------------------- every check: reference, stub, odd answers

CHECKS = {"direct_path_logits": (checks.check_direct_path_logits, checks.direct_path_logits),
          "ov_table": (checks.check_ov_table, checks.ov_table),
          "qk_table": (checks.check_qk_table, checks.qk_table)}


@pytest.mark.parametrize("name", CHECKS)
def test_accepts_reference_and_skips_stub(name, model, capsys):
    accepts_reference_and_skips_stub(*CHECKS[name], capsys, model)


@pytest.mark.parametrize("name", CHECKS)
@pytest.mark.parametrize("kind", ODD_RETURNS)
def test_any_return_type_fails_in_one_line(name, kind, model):
    rejects(CHECKS[name][0], ODD_RETURNS[kind], None, model)


@pytest.mark.parametrize("name", CHECKS)
def test_float64_is_named(name, model):
    check, reference = CHECKS[name]
    rejects(check, float64(reference), "float64", model)


def test_accepts_other_correct_implementations(model):
    checks.check_direct_path_logits(lambda m, t: m.ln_final(m.W_E[t]) @ m.W_U + m.b_U, model)
    def ov_by_matrices(m, l, h, x):
        d = m.cfg.d_model
        centre = torch.eye(d) - torch.full((d, d), 1 / d)                 # LayerNorm's centring as a matrix
        return torch.einsum("nd,de,ef,fv->nv", x, m.W_V[l, h], m.W_O[l, h], centre @ torch.diag(m.ln_final.weight) @ m.W_U)

    checks.check_ov_table(ov_by_matrices, model)
    checks.check_qk_table(lambda m, l, h, a, b: torch.einsum(
        "qe,ke->qk", a @ m.W_Q[l, h] + m.b_Q[l, h], b @ m.W_K[l, h] + m.b_K[l, h]) * m.cfg.d_head ** -0.5, model)


# ----------------------------------------------------------------------------- wrong answers

WRONG_DIRECT = {
    "no final norm": (lambda m, t: m.W_E[t] @ m.W_U + m.b_U, "without the final norm"),
    "position 0 added": (lambda m, t: lens.logit_lens(m, m.W_E[t] + m.W_pos[0]), "position embedding"),
    "W_E @ W_E.T": (lambda m, t: lens.apply_ln_final(m, m.W_E[t]) @ m.W_E.T * 2, None),
    "transposed": (lambda m, t: checks.direct_path_logits(m, t).T, "shape"),
}


@pytest.mark.parametrize("name", WRONG_DIRECT)
def test_direct_path_logits_rejects(name, model):
    wrong, match = WRONG_DIRECT[name]
    rejects(checks.check_direct_path_logits, wrong, match, model)


def _ov(m, l, h, x):
    return x @ m.W_V[l, h] @ m.W_O[l, h]


def _scale_in_place(m, l, h, x):
    x.mul_(2)
    return checks.ov_table(m, l, h, x / 2)


WRONG_OV = {
    "not centred": (lambda m, l, h, x: (_ov(m, l, h, x) * m.ln_final.weight) @ m.W_U, "centre"),
    "no norm weight": (lambda m, l, h, x: (_ov(m, l, h, x) - _ov(m, l, h, x).mean(-1, keepdim=True)) @ m.W_U, "weight"),
    "own scale": (lambda m, l, h, x: lens.apply_ln_final(m, _ov(m, l, h, x)) @ m.W_U, "own norm scale"),
    "value bias": (lambda m, l, h, x: checks.unembed_direction(m, (x @ m.W_V[l, h] + m.b_V[l, h]) @ m.W_O[l, h]), "b_V"),
    "next head": (lambda m, l, h, x: checks.ov_table(m, l, (h + 1) % m.cfg.n_heads, x), "another head"),
    "W_Q instead of W_V": (lambda m, l, h, x: checks.unembed_direction(m, x @ m.W_Q[l, h] @ m.W_O[l, h]), None),
    "in place": (_scale_in_place, "in place"),
}


@pytest.mark.parametrize("name", WRONG_OV)
def test_ov_table_rejects(name, model):
    wrong, match = WRONG_OV[name]
    rejects(checks.check_ov_table, wrong, match, model)


WRONG_QK = {
    "no scaling": (lambda m, l, h, a, b: (a @ m.W_Q[l, h] + m.b_Q[l, h]) @ (b @ m.W_K[l, h] + m.b_K[l, h]).T, "sqrt"),
    "divided by d_head": (lambda m, l, h, a, b: checks.qk_table(m, l, h, a, b) * m.cfg.d_head ** 0.5 / m.cfg.d_head,
                          "not by d_head"),
    "no biases": (lambda m, l, h, a, b: (a @ m.W_Q[l, h]) @ (b @ m.W_K[l, h]).T / m.cfg.d_head ** 0.5, "biases"),
    "swapped": (lambda m, l, h, a, b: checks.qk_table(m, l, h, b, a).T, "swapped"),
    "transposed": (lambda m, l, h, a, b: checks.qk_table(m, l, h, a, b).T, None),
    "softmaxed": (lambda m, l, h, a, b: checks.qk_table(m, l, h, a, b).softmax(-1), None),
}


@pytest.mark.parametrize("name", WRONG_QK)
def test_qk_table_rejects(name, model):
    wrong, match = WRONG_QK[name]
    rejects(checks.check_qk_table, wrong, match, model)
