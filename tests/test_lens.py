"""The residual stream's decompositions add back to the residual; norms applied to a stack add back to
the norm's output; DLA adds up to the logit; the logit lens is exact at the last layer. All families."""

import pytest
import torch

from course_utils import CourseError
from course_utils.lens import (apply_ln_final, decomposition_hooks, logit_constant, logit_lens, norm_scale)

ATOL = 1e-4


def close(a, b, atol=ATOL):
    return torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4)


def norm_bias(norm):
    return norm.bias if getattr(norm, "bias", None) is not None else torch.zeros_like(norm.weight)


@pytest.fixture
def run(family_case):
    family, model, tokens, _ = family_case
    logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache


def test_decompose_resid_by_layer(run):
    model, _, _, cache = run
    n = model.cfg.n_layers
    stack, labels = cache.decompose_resid(return_labels=True)
    assert stack.shape[0] == len(labels) == 1 + bool(model.family.pos_embed) + 2 * n
    assert labels[0] == "embed" and labels[-2:] == [f"{n - 1}_attn_out", f"{n - 1}_mlp_out"]
    assert close(stack.sum(0), cache["resid_post", -1])
    assert close(cache.decompose_resid(layer=1).sum(0), cache["resid_pre", 1])
    attn = cache.decompose_resid(mode="attn", incl_embeds=False)
    assert torch.equal(attn, cache.stack_activation("attn_out"))
    if not model.parallel_residual:
        assert close(cache.decompose_resid(layer=1, mlp_input=True).sum(0), cache["resid_mid", 1])


def test_stack_head_results(run):
    model, _, _, cache = run
    heads, labels = cache.stack_head_results(layer=2, return_labels=True)
    assert heads.shape == (2 * model.cfg.n_heads, 2, 12, model.cfg.d_model) and labels[model.cfg.n_heads] == "L1H0"
    per_layer = heads.unflatten(0, (2, model.cfg.n_heads)).sum(1) + model.b_O[:2, None, None]
    assert close(per_layer, cache.stack_activation("attn_out", 2))
    with_rest = cache.stack_head_results(incl_remainder=True)
    assert close(with_rest.sum(0), cache["resid_post", -1])
    assert cache.stack_head_results(layer=0).shape == (0, 2, 12, model.cfg.d_model)


@pytest.mark.parametrize("expand_neurons", [False, True])
def test_full_decomposition_sums_to_the_residual(run, expand_neurons):
    model, _, _, cache = run
    stack, labels = cache.get_full_resid_decomposition(expand_neurons=expand_neurons, return_labels=True)
    n, h, d_mlp = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_mlp
    mlp_rows = n * d_mlp if expand_neurons else n
    assert stack.shape[0] == len(labels) == n * h + mlp_rows + 2 + bool(model.family.pos_embed)
    assert labels[-1] == "bias" and "L0H1" in labels and ("L1N3" in labels) == expand_neurons
    assert close(stack.sum(0), cache["resid_post", -1])
    assert close(cache.get_full_resid_decomposition(layer=1, expand_neurons=expand_neurons).sum(0), cache["resid_pre", 1])
    if not model.parallel_residual:
        mid = cache.get_full_resid_decomposition(layer=1, mlp_input=True, expand_neurons=expand_neurons)
        assert close(mid.sum(0), cache["resid_mid", 1])


def test_decomposition_needs_only_its_hooks(family_case):
    _, model, tokens, _ = family_case
    _, full = model.run_with_cache(tokens)
    _, small = model.run_with_cache(tokens, names_filter=decomposition_hooks(model))
    a, b = full.get_full_resid_decomposition(apply_ln=True), small.get_full_resid_decomposition(apply_ln=True)
    assert close(a, b)


def test_apply_ln_to_stack_adds_up_to_the_norms_output(run):
    """Frozen scale and weight: the normalised parts sum to the norm's output less its bias."""
    model, _, _, cache = run
    stack = cache.get_full_resid_decomposition(expand_neurons=False)
    scaled = cache.apply_ln_to_stack(stack)
    assert close(scaled.sum(0) + norm_bias(model.ln_final), cache["ln_final.hook_normalized"])
    ln1 = model.block(1).get_submodule(model.family.ln1)
    scaled1 = cache.apply_ln_to_stack(cache.decompose_resid(layer=1), layer=1)
    assert close(scaled1.sum(0) + norm_bias(ln1), cache["normalized", 1, "ln1"])
    last = cache.apply_ln_to_stack(stack[:, :, -1], pos_slice=-1)  # one position: the scale is sliced to match
    assert close(last, scaled[:, :, -1])
    picked = cache.apply_ln_to_stack(stack[:, :, [2, 5]], pos_slice=[2, 5])
    assert close(picked, scaled[:, :, [2, 5]])
    one_seq = cache.apply_ln_to_stack(stack, batch_slice=1)
    assert close(one_seq, scaled[:, 1])


def test_apply_ln_to_stack_computes_a_missing_scale_or_says_what_to_cache(family_case):
    _, model, tokens, _ = family_case
    _, full = model.run_with_cache(tokens)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    _, no_scale = model.run_with_cache(tokens, names_filter=[last])
    stack = full.decompose_resid()
    assert close(no_scale.apply_ln_to_stack(stack), full.apply_ln_to_stack(stack))
    _, bare = model.run_with_cache(tokens, names_filter=["hook_embed"])
    with pytest.raises(CourseError, match="ln_final.hook_scale"):
        bare.apply_ln_to_stack(stack)


def test_accumulated_resid_and_the_logit_lens(run):
    model, _, logits, cache = run
    n = model.cfg.n_layers
    stack, labels = cache.accumulated_resid(return_labels=True)
    assert labels == [f"{l}_pre" for l in range(n)] + ["final_post"] and torch.equal(stack[0], cache["resid_pre", 0])
    lens, _ = cache.accumulated_resid(apply_ln=True, return_labels=True)
    for l in range(n):  # each point normalised by its own scale: the logit lens, less the norm's bias
        assert close(lens[l] + norm_bias(model.ln_final), apply_ln_final(model, cache["resid_pre", l]))
    assert close(lens[-1] @ model.W_U + model.b_U + norm_bias(model.ln_final) @ model.W_U, logits)
    if model.parallel_residual:
        with pytest.raises(CourseError, match="parallel residual: no resid_mid"):
            cache.accumulated_resid(layer=2, incl_mid=True)
    else:
        mids, mid_labels = cache.accumulated_resid(layer=2, incl_mid=True, return_labels=True)
        assert mid_labels == ["0_pre", "0_mid", "1_pre", "1_mid", "2_pre"] and torch.equal(mids[1], cache["resid_mid", 0])
    last = cache.accumulated_resid(pos_slice=-1, apply_ln=True)
    assert close(last, lens[:, :, -1])


def test_logit_attrs_sum_to_the_logit_and_the_difference(run):
    model, tokens, logits, cache = run
    stack = cache.get_full_resid_decomposition(expand_neurons=False, pos_slice=(0, -1))
    target = tokens[:, 1:]
    attrs = cache.logit_attrs(stack, target, pos_slice=(0, -1))
    expected = logits[:, :-1].gather(-1, target[..., None])[..., 0]
    assert close(attrs.sum(0) + logit_constant(model, target), expected)
    wrong = (target + 1) % model.cfg.d_vocab
    diff = cache.logit_attrs(stack, target, incorrect_tokens=wrong, pos_slice=(0, -1))
    expected_diff = expected - logits[:, :-1].gather(-1, wrong[..., None])[..., 0]
    assert close(diff.sum(0) + logit_constant(model, target) - logit_constant(model, wrong), expected_diff)
    with pytest.raises(CourseError, match="same shape"):
        cache.logit_attrs(stack, target, incorrect_tokens=wrong[:, :3], pos_slice=(0, -1))


def test_dla_is_not_plain_unembedding(run):
    """Forgetting the norm (a classic mistake) gives a different answer."""
    model, tokens, _, cache = run
    stack = cache.get_full_resid_decomposition(expand_neurons=False)
    dla = cache.logit_attrs(stack, tokens)
    naive = (stack * model.W_U.T[tokens]).sum(-1)
    assert not torch.allclose(dla, naive, atol=1e-3)
    final = cache["resid_post", -1]
    assert norm_scale(model, final).shape == (*final.shape[:-1], 1)


def test_methods_work_without_a_batch_dim(family_case):
    _, model, tokens, _ = family_case
    _, batch = model.run_with_cache(tokens)
    _, one = model.run_with_cache(tokens[1:], remove_batch_dim=True)
    stack_b, stack_1 = batch.get_full_resid_decomposition(), one.get_full_resid_decomposition()
    assert close(stack_1, stack_b[:, 1])
    assert close(one.apply_ln_to_stack(stack_1), batch.apply_ln_to_stack(stack_b)[:, 1])
    assert close(one.logit_attrs(stack_1, tokens[1]), batch.logit_attrs(stack_b, tokens)[:, 1])
    assert close(one.accumulated_resid(apply_ln=True), batch.accumulated_resid(apply_ln=True)[:, 1])


def test_logit_lens_is_exact_at_the_last_layer(run):
    model, _, logits, cache = run
    final = cache["resid_post", -1]
    assert close(logit_lens(model, final), logits)
    assert close(apply_ln_final(model, final), cache["ln_final.hook_normalized"], atol=1e-5)
    early = logit_lens(model, cache["resid_pre", 1])
    assert early.shape == logits.shape and not torch.allclose(early, logits, atol=1e-2)
