"""Notebook 04, sections 4.6-4.7: the weight-reading checks (effective embedding, OV circuit,
positional pattern, composition scores) and the one-layer model pass their references, skip stubs,
and reject forgotten norms, swapped products, in-place edits, wrong dtypes and answers of any type."""

from __future__ import annotations

import pytest
import torch

from course_utils import lens
from course_utils.checks import induction_circuits as checks
from tests.check_helpers import ODD_RETURNS, accepts_reference_and_skips_stub, float64, rejects


WITH_MODEL = {
    "effective_embedding": (checks.check_effective_embedding, checks.effective_embedding),
    "ov_circuit": (checks.check_ov_circuit, checks.ov_circuit),
    "positional_pattern": (checks.check_positional_pattern, checks.positional_pattern),
}
PURE = {
    "composition_scores": (checks.check_composition_scores, checks.composition_scores),
    "attn_only_logits": (checks.check_attn_only_logits, checks.attn_only_logits),
}


# ----------------------------------------------------------------------------- references

def test_effective_embedding_at_layer_0_is_embedding_plus_position(model):
    tokens = torch.tensor([5, 9, 40])
    expected = model.W_E[tokens] + model.W_pos[1]
    assert torch.allclose(checks.effective_embedding(model, tokens, 0), expected, atol=1e-6)


def test_folded_weights_give_the_norms_own_reading(model):
    """x C diag(g) W equals (LayerNorm(x) - bias) W times the norm's scale: folding loses nothing but the scale."""
    ln1 = model.block(1).get_submodule(model.family.ln1)
    x = torch.randn(4, model.cfg.d_model)
    W = model.W_Q[1, 0]
    scale = (x.var(-1, unbiased=False, keepdim=True) + ln1.eps).sqrt()
    assert torch.allclose(x @ checks.fold_ln(W, ln1.weight) / scale, (ln1(x) - ln1.bias) @ W, atol=1e-4)


def test_composition_of_identities_is_one_over_root_d():
    d = 16
    assert abs(checks.composition_score(torch.eye(d), torch.eye(d)).item() - d ** -0.5) < 1e-6


def test_random_heads_compose_at_about_one_over_root_d():
    g = torch.Generator().manual_seed(0)
    d, r, n = 64, 8, 6
    W_OV = torch.randn(n, d, r, generator=g) @ torch.randn(n, r, d, generator=g)
    late = [torch.randn(n, d, r, generator=g) for _ in range(3)] + [torch.randn(n, r, d, generator=g)]
    scores = checks.composition_scores(W_OV, *late, torch.ones(d))
    for key in "QKV":
        assert abs(scores[key].mean() - d ** -0.5) < 0.02, key


def test_positional_pattern_rows_are_causal_distributions(model):
    p = checks.positional_pattern(model, 0, 1, 9)
    assert torch.allclose(p.sum(-1), torch.ones(9)) and (p.triu(1) == 0).all()


def test_ov_circuit_is_the_logit_lens_of_what_the_head_writes(model):
    resid = torch.randn(3, model.cfg.d_model)
    ln1 = model.block(2).get_submodule(model.family.ln1)
    expected = lens.logit_lens(model, ln1(resid) @ model.W_V[2, 1] @ model.W_O[2, 1])
    assert torch.allclose(checks.ov_circuit(model, resid, 2, 1), expected)


# ----------------------------------------------------------------------------- every check

@pytest.mark.parametrize("name", WITH_MODEL)
def test_model_checks_accept_reference_and_skip_stub(name, model, capsys):
    accepts_reference_and_skips_stub(*WITH_MODEL[name], capsys, model)


@pytest.mark.parametrize("name", PURE)
def test_accepts_reference_and_skips_stub(name, capsys):
    accepts_reference_and_skips_stub(*PURE[name], capsys)


def test_accepts_other_correct_implementations(model):
    def composition_loops(W_OV, W_Q, W_K, W_V, W_O, g):
        d = g.shape[0]
        C = torch.eye(d) - torch.ones(d, d) / d
        fold = lambda W: C @ torch.diag(g) @ W                                   # noqa: E731
        out = {k: torch.zeros(W_OV.shape[0], W_Q.shape[0]) for k in "QKV"}
        for i, A in enumerate(W_OV):
            for j in range(W_Q.shape[0]):
                QK = fold(W_Q[j]) @ fold(W_K[j]).T
                for k, B in {"Q": QK, "K": QK.T, "V": fold(W_V[j]) @ W_O[j]}.items():
                    out[k][i, j] = torch.linalg.norm(A @ B) / (torch.linalg.norm(A) * torch.linalg.norm(B))
        return out
    checks.check_composition_scores(composition_loops)

    def pattern_with_where(m, layer, head, n_pos):
        x = m.block(layer).get_submodule(m.family.ln1)(m.W_pos[:n_pos])
        s = torch.einsum("qd,kd->qk", x @ m.W_Q[layer, head] + m.b_Q[layer, head], x @ m.W_K[layer, head]
                         + m.b_K[layer, head]) * m.cfg.d_head ** -0.5
        s = torch.where(torch.ones(n_pos, n_pos, dtype=torch.bool).tril(), s, torch.tensor(-1e9))
        return s.softmax(-1)
    checks.check_positional_pattern(pattern_with_where, model)


@pytest.mark.parametrize("kind", ODD_RETURNS)
@pytest.mark.parametrize("name", PURE)
def test_any_return_type_fails_in_one_line(name, kind):
    rejects(PURE[name][0], ODD_RETURNS[kind])


@pytest.mark.parametrize("kind", ["None", "a list", "a numpy array", "NaNs", "an object"])
@pytest.mark.parametrize("name", WITH_MODEL)
def test_model_checks_any_return_type(name, kind, model):
    rejects(WITH_MODEL[name][0], ODD_RETURNS[kind], None, model)


def test_float64_is_named(model):
    for name, (check, reference) in WITH_MODEL.items():
        rejects(check, float64(reference), "float64", model)
    for name, (check, reference) in PURE.items():
        rejects(check, float64(reference), "float64")


# ----------------------------------------------------------------------------- the OV circuit

def resid(m, toks, name, pos):
    return m.run_with_cache(toks, names_filter=[name])[1][name][:, pos]


def with_bos(m, t):
    return torch.stack([torch.full_like(t, m.bos_token_id), t], 1)


WRONG_EFFECTIVE = {
    "no start token": (lambda m, t, l: resid(m, t[:, None], f"blocks.{l}.hook_resid_pre", 0), "position 0"),
    "start token's position": (lambda m, t, l: resid(m, with_bos(m, t), f"blocks.{l}.hook_resid_pre", 0), "start token"),
    "resid_post": (lambda m, t, l: resid(m, with_bos(m, t), f"blocks.{l}.hook_resid_post", -1), "leaving"),
    "raw embedding": (lambda m, t, l: m.W_E[t], "raw token embedding"),
    "embedding + position, no layers": (lambda m, t, l: m.W_E[t] + m.W_pos[1], r"first at \[token 0, d_model"),
    "ln_1 applied": (lambda m, t, l: m.block(l).ln_1(checks.effective_embedding(m, t, l)), None),
    "start token twice": (lambda m, t, l: resid(m, torch.cat([with_bos(m, t)[:, :1], with_bos(m, t)], 1),
                                                f"blocks.{l}.hook_resid_pre", -1), None),
    "tokens edited in place": (lambda m, t, l: checks.effective_embedding(m, t.clamp_(max=5), l), "in place"),
}


@pytest.mark.parametrize("name", WRONG_EFFECTIVE)
def test_effective_embedding_rejects(name, model):
    wrong, match = WRONG_EFFECTIVE[name]
    rejects(checks.check_effective_embedding, wrong, match, model)


def ov(m, r, layer, head, *, ln_in=True, ln_out=True, V=None, O=None, transpose=False):
    ln1 = m.block(layer).get_submodule(m.family.ln1)
    W_V = m.W_V[layer, head] if V is None else V(m, layer, head)
    W_O = m.W_O[layer, head] if O is None else O(m, layer, head)
    written = (ln1(r) if ln_in else r) @ W_V @ W_O
    return lens.logit_lens(m, written) if ln_out else written @ m.W_U


WRONG_OV = {
    "no ln1": (lambda *a: ov(*a, ln_in=False), "ln1"),
    "no final norm": (lambda *a: ov(*a, ln_out=False), "final LayerNorm"),
    "no norms": (lambda *a: ov(*a, ln_in=False, ln_out=False), "both LayerNorms"),
    "W_Q for W_V": (lambda *a: ov(*a, V=lambda m, l, h: m.W_Q[l, h]), r"first at \[token 0, vocab"),
    "head 0's W_O": (lambda *a: ov(*a, O=lambda m, l, h: m.W_O[l, 0]), r"head \d\.\d"),
    "the earlier layer's ln1": (lambda m, r, l, h: lens.logit_lens(m, m.block(0).get_submodule(m.family.ln1)(r)
                                                                    @ m.W_V[l, h] @ m.W_O[l, h]), None),
    "resid normalised in place": (lambda m, r, l, h: checks.ov_circuit(m, r.div_(r.norm(dim=-1, keepdim=True)), l, h),
                                  "changed its input `resid` in place"),
}


@pytest.mark.parametrize("name", WRONG_OV)
def test_ov_circuit_rejects(name, model):
    wrong, match = WRONG_OV[name]
    rejects(checks.check_ov_circuit, wrong, match, model)


def positional(m, layer, head, n_pos, *, norm=True, scale=True, mask=True, dim=-1, bias=True, swap=False,
               d=None, strict=False):
    x = m.W_pos[:n_pos]
    x = m.block(layer).get_submodule(m.family.ln1)(x) if norm else x
    q = x @ m.W_Q[layer, head] + (m.b_Q[layer, head] if bias else 0)
    k = x @ m.W_K[layer, head] + (m.b_K[layer, head] if bias else 0)
    s = (k @ q.T if swap else q @ k.T) / ((d or m.cfg.d_head) ** 0.5 if scale else 1)
    if mask:
        s = s.masked_fill(torch.ones(n_pos, n_pos, dtype=torch.bool).triu(0 if strict else 1), float("-inf"))
    return s.softmax(dim)


WRONG_POSITIONAL = {
    "no ln1": (lambda *a: positional(*a, norm=False), "LayerNorm to W_pos"),
    "no scaling": (lambda *a: positional(*a, scale=False), "√d_head"),
    "scaled by d_model": (lambda m, l, h, n: positional(m, l, h, n, d=m.cfg.d_model), r"first at \[query 1, key 0\]"),
    "no mask": (lambda *a: positional(*a, mask=False), "mask the future"),
    "softmax over queries": (lambda *a: positional(*a, dim=0), "over keys"),
    "no biases": (lambda *a: positional(*a, bias=False), "biases"),
    "q and k swapped": (lambda *a: positional(*a, swap=True), "swapped"),
    "raw scores, no softmax": (lambda m, l, h, n: positional(m, l, h, n).log(), None),
}


@pytest.mark.parametrize("name", WRONG_POSITIONAL)
def test_positional_pattern_rejects(name, model):
    wrong, match = WRONG_POSITIONAL[name]
    rejects(checks.check_positional_pattern, wrong, match, model)


# ----------------------------------------------------------------------------- composition

def composition(W_OV, W_Q, W_K, W_V, W_O, g, *, fold=checks.fold_ln, score=checks.composition_score, swap_qk=False,
                k_plain=False, v_reversed=False, transposed=False):
    Q, K, V = (fold(W, g) for W in (W_Q, W_K, W_V))
    W_QK, late, early = Q @ K.mT, V @ W_O, W_OV[:, None]
    out = {"Q": score(early, W_QK.mT if swap_qk else W_QK),
           "K": score(early, W_QK if swap_qk or k_plain else W_QK.mT),
           "V": score(late, early) if v_reversed else score(early, late)}
    return {k: v.T for k, v in out.items()} if transposed else out


def fro(x):
    return torch.linalg.matrix_norm(x)


WRONG_COMPOSITION = {
    "LayerNorm not folded": (lambda *a: composition(*a, fold=lambda W, g: W), "fold its weight and its centring"),
    "gain only": (lambda *a: composition(*a, fold=lambda W, g: g[:, None] * W), "but not its centring"),
    "centring only": (lambda *a: composition(*a, fold=lambda W, g: W - W.mean(-2, keepdim=True)),
                      "left out the LayerNorm's weight"),
    "gain on the wrong side (columns)": (lambda *a: composition(
        *a, fold=lambda W, g: (W * g[:W.shape[-1]]) - (W * g[:W.shape[-1]]).mean(-2, keepdim=True)), None),
    "Q and K swapped": (lambda *a: composition(*a, swap_qk=True), "'Q' entry: this is K-composition"),
    "K without the transpose": (lambda *a: composition(*a, k_plain=True), "'K' entry: this is Q-composition"),
    "V the wrong way round": (lambda *a: composition(*a, v_reversed=True), "'V' entry: the product is the wrong way"),
    "spectral norm": (lambda *a: composition(*a, score=lambda A, B: torch.linalg.matrix_norm(A @ B, 2) / (
        torch.linalg.matrix_norm(A, 2) * torch.linalg.matrix_norm(B, 2))), "spectral"),
    "not normalised": (lambda *a: composition(*a, score=lambda A, B: fro(A @ B)), "divide by the product"),
    "squared": (lambda *a: composition(*a, score=lambda A, B: (fro(A @ B) / (fro(A) * fro(B))) ** 2),
                r"'Q' entry differs at .*\[early head 0, late head 0\]"),
    "later heads as rows": (lambda *a: composition(*a, transposed=True), r"'Q' entry: expected shape \[n_early, n_late\]"),
    "lower-case keys": (lambda *a: {k.lower(): v for k, v in checks.composition_scores(*a).items()}, "keys should be"),
    "ln_weight scaled in place": (lambda W_OV, W_Q, W_K, W_V, W_O, g: checks.composition_scores(
        W_OV, W_Q, W_K, W_V, W_O, g.clamp_(min=0.5)), "changed its input `ln_weight` in place"),
}


@pytest.mark.parametrize("name", WRONG_COMPOSITION)
def test_composition_scores_rejects(name):
    wrong, match = WRONG_COMPOSITION[name]
    rejects(checks.check_composition_scores, wrong, match)


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
    "may not attend to itself": (lambda *a: attn(*a, strict=True), r"\[position \d, vocab \d\]"),
    "ov transposed": (lambda t, qk, ov, d: attn(t, qk, ov.T, d), None),
}


@pytest.mark.parametrize("name", WRONG_ONE_LAYER)
def test_attn_only_logits_rejects(name):
    wrong, match = WRONG_ONE_LAYER[name]
    rejects(checks.check_attn_only_logits, wrong, match)
