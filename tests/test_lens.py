"""The residual decomposition adds back to the residual; DLA adds up to the logit; the lens is exact
at the last layer."""

import torch

from course_utils.lens import (apply_ln_final, decompose_resid, decomposition_hooks, direct_logit_attribution,
                               logit_lens, norm_scale)


def test_decomposition_sums_to_residual(family_case):
    _, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens)
    comps, labels = decompose_resid(model, cache)
    n_heads, n_layers = model.cfg.n_heads, model.cfg.n_layers
    assert comps.shape[0] == len(labels) == 1 + bool(model.family.pos_embed) + n_layers * (n_heads + 2)
    assert torch.allclose(comps.sum(0), cache["resid_post", n_layers - 1], atol=1e-4)
    comps1, labels1 = decompose_resid(model, cache, layer=1)
    assert torch.allclose(comps1.sum(0), cache["resid_pre", 1], atol=1e-5)
    assert labels1[-1] == "L0 mlp" and "L0H3" in labels1


def test_decomposition_needs_only_its_hooks(family_case):
    _, model, tokens, _ = family_case
    _, full = model.run_with_cache(tokens)
    _, small = model.run_with_cache(tokens, names_filter=decomposition_hooks(model))
    assert torch.allclose(decompose_resid(model, small)[0], decompose_resid(model, full)[0])


def test_dla_sums_to_logit(family_case):
    _, model, tokens, _ = family_case
    logits, cache = model.run_with_cache(tokens)
    comps, _ = decompose_resid(model, cache)
    final = cache["resid_post", model.cfg.n_layers - 1]
    target = tokens[:, 1:]
    dla, const = direct_logit_attribution(model, comps[:, :, :-1], final[:, :-1], target)
    expected = logits[:, :-1].gather(-1, target[..., None])[..., 0]
    assert torch.allclose(dla.sum(0) + const, expected, atol=1e-4)
    assert dla.abs().sum(0).gt(1e-3).all(), "every position has some attribution"


def test_dla_is_not_plain_unembedding(family_case):
    """Forgetting the norm's scale (a classic mistake) gives a different answer."""
    _, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens)
    comps, _ = decompose_resid(model, cache)
    final = cache["resid_post", model.cfg.n_layers - 1]
    dla, _ = direct_logit_attribution(model, comps, final, tokens)
    naive = (comps * model.W_U.T[tokens]).sum(-1)
    assert not torch.allclose(dla, naive, atol=1e-3)
    assert norm_scale(model, final).shape == (*final.shape[:-1], 1)


def test_logit_lens_is_exact_at_the_last_layer(family_case):
    _, model, tokens, _ = family_case
    logits, cache = model.run_with_cache(tokens)
    final = cache["resid_post", model.cfg.n_layers - 1]
    assert torch.allclose(logit_lens(model, final), logits, atol=1e-4)
    assert torch.allclose(apply_ln_final(model, final), cache["ln_final.hook_normalized"], atol=1e-5)
    early = logit_lens(model, cache["resid_pre", 1])
    assert early.shape == logits.shape and not torch.allclose(early, logits, atol=1e-2)
