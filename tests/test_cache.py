"""The cache's keys (shorthand, negative layers, three parts), batch handling and shapes, on all families."""

import pytest
import torch

from course_utils import CourseError
from course_utils.cache import get_act_name


def test_get_act_name_follows_transformer_lens():
    assert get_act_name("pattern", 1) == "blocks.1.attn.hook_pattern"
    assert get_act_name("k", 6, "a") == "blocks.6.attn.hook_k"
    assert get_act_name("pre", 2) == "blocks.2.mlp.hook_pre"
    assert get_act_name("embed") == "hook_embed"
    assert get_act_name("normalized", 27, "ln2") == "blocks.27.ln2.hook_normalized"
    assert get_act_name("scale") == "ln_final.hook_scale"
    assert get_act_name("resid_post", 0) == "blocks.0.hook_resid_post"
    assert get_act_name("attn", 0) == "blocks.0.attn.hook_pattern"
    assert get_act_name("blocks.0.hook_resid_pre") == "blocks.0.hook_resid_pre"


def test_keys_negative_layers_and_three_parts(family_case):
    _, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens)
    last = model.cfg.n_layers - 1
    assert cache["resid_post", -1] is cache[f"blocks.{last}.hook_resid_post"]
    assert cache["z", -model.cfg.n_layers] is cache["z", 0]
    assert cache["normalized", 0, "ln1"] is cache["blocks.0.ln1.hook_normalized"]
    assert cache["scale", -1, "ln2"] is cache[f"blocks.{last}.ln2.hook_scale"]
    assert ("resid_post", -1) in cache and ("resid_post", 99) not in cache
    with pytest.raises(CourseError, match=f"this model has {model.cfg.n_layers} layers"):
        cache["resid_post", model.cfg.n_layers]
    with pytest.raises(CourseError, match="Index the cache"):
        cache[0]


def test_missing_key_hint_names_the_right_layer(family_case):
    _, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_post"])
    with pytest.raises(CourseError) as err:
        cache["resid_post", -1]
    assert f"'blocks.{model.cfg.n_layers - 1}.hook_resid_post' is not in this cache" in str(err.value)


def test_pos_embed_is_broadcast_to_the_batch_as_a_view(family_case):
    _, model, tokens, _ = family_case
    if not model.family.pos_embed:
        pytest.skip("rotary positions: no hook_pos_embed")
    _, cache = model.run_with_cache(tokens)
    pos = cache["pos_embed"]
    assert pos.shape == cache["embed"].shape == (2, 12, model.cfg.d_model)
    assert pos.stride(0) == 0, "a view, not a copy"
    assert torch.equal(pos[1], model.W_pos[:12])
    assert torch.allclose(cache["embed"] + pos, cache["resid_pre", 0])


def test_remove_batch_dim(family_case):
    _, model, tokens, _ = family_case
    _, one = model.run_with_cache(tokens[:1], remove_batch_dim=True)
    assert not one.has_batch_dim and one["pattern", 0].shape == (model.cfg.n_heads, 12, 12)
    assert one["resid_pre", 0].shape == (12, model.cfg.d_model) and one["q", 0].dim() == 3
    _, batch = model.run_with_cache(tokens)
    with pytest.raises(CourseError, match="batch of one"):
        batch.remove_batch_dim()
    sliced = batch.apply_slice_to_batch_dim(1)
    assert not sliced.has_batch_dim and torch.equal(sliced["z", 0], batch["z", 0][1])
    assert batch.apply_slice_to_batch_dim((0, 1))["z", 0].shape[0] == 1


def test_stack_activation_and_memory(family_case):
    _, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens)
    n = model.cfg.n_layers
    assert cache.stack_activation("resid_post").shape == (n, 2, 12, model.cfg.d_model)
    assert torch.equal(cache.stack_activation("scale", 2, "ln1")[1], cache["scale", 1, "ln1"])
    resid = cache.stack_activation("resid_pre")
    assert resid.shape[0] == n
    _, resid_only = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pre"])
    assert resid_only.nbytes() == 2 * 12 * model.cfg.d_model * 4
    if model.family.pos_embed:  # a broadcast view counts once
        _, pos_only = model.run_with_cache(tokens, names_filter=["hook_pos_embed"])
        assert pos_only.nbytes() == 12 * model.cfg.d_model * 4
    moved = cache.to("cpu")
    assert moved.model is model and moved.keys() == cache.keys()
