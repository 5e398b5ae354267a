"""The hook points TransformerLens code relies on (q, k, v, attention scores, norm scales and outputs),
the hook object passed to hook functions, filters, and return types, on all four families."""

import functools

import pytest
import torch

from course_utils import CourseError
from course_utils.hook_points import HookPoint

ATOL = 1e-5


def close(a, b, atol=ATOL):
    return torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4)


def projections(model, cache, layer):
    """q, k, v [batch, pos, head, d_head] from the cached ln1 output and the per-head weights."""
    x = cache["normalized", layer, "ln1"]
    return [torch.einsum("bpm,hmd->bphd", x, W[layer]) + b[layer]
            for W, b in ((model.W_Q, model.b_Q), (model.W_K, model.b_K), (model.W_V, model.b_V))]


def test_q_k_v_come_from_the_weights_before_rotary(family_case):
    family, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens)
    group = model.cfg.n_heads // model.cfg.n_kv_heads
    for l in range(model.cfg.n_layers):
        q, k, v = projections(model, cache, l)
        assert cache["q", l].shape == (2, 12, model.cfg.n_heads, model.cfg.d_head)
        # grouped-query attention: k and v hold n_key_value_heads heads, as in TransformerLens;
        # query head h reads key/value head h // (n_heads // n_key_value_heads)
        assert cache["k", l].shape == cache["v", l].shape == (2, 12, model.cfg.n_kv_heads, model.cfg.d_head)
        assert close(cache["q", l], q)
        assert close(cache["k", l], k[:, :, ::group]) and close(cache["v", l], v[:, :, ::group])


def test_q_times_k_gives_the_scores_and_softmax_the_pattern(family_case):
    family, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens)
    group = model.cfg.n_heads // model.cfg.n_kv_heads
    future = torch.ones(12, 12, dtype=torch.bool).triu(1)
    for l in range(model.cfg.n_layers):
        scores = cache["attn_scores", l]
        assert scores.shape == (2, model.cfg.n_heads, 12, 12)
        assert torch.isneginf(scores[..., future]).all() and torch.isfinite(scores[..., ~future]).all()
        assert close(scores.softmax(-1), cache["pattern", l])
        if family == "gpt2":  # no rotary: the scores are q . k / sqrt(d_head)
            k = cache["k", l].repeat_interleave(group, dim=2)
            direct = torch.einsum("bqhd,bkhd->bhqk", cache["q", l], k) / model.cfg.d_head ** 0.5
            assert close(scores[..., ~future], direct[..., ~future], atol=1e-4)


def test_norm_scale_and_normalized(family_case):
    _, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens)
    layernorm = model.family.norm == "layernorm"
    for l in range(model.cfg.n_layers):
        for ln, resid in (("ln1", cache["resid_pre", l]),
                          ("ln2", cache["resid_pre", l] if model.parallel_residual else cache["resid_mid", l])):
            norm = model.block(l).get_submodule(getattr(model.family, ln))
            x = resid - resid.mean(-1, keepdim=True) if layernorm else resid
            scale = cache["scale", l, ln]
            assert scale.shape == (2, 12, 1)
            expected = (x.pow(2).mean(-1, keepdim=True) + (norm.eps if layernorm else norm.variance_epsilon)).sqrt()
            assert close(scale, expected)
            assert close(cache["normalized", l, ln], norm(resid))
    final = cache["resid_post", -1]
    assert close(cache["ln_final.hook_normalized"], model.ln_final(final))
    assert cache["scale"] is cache["ln_final.hook_scale"]


def test_a_second_hook_on_a_scale_sees_the_first_ones_write(family_case):
    _, model, tokens, _ = family_case
    with model.hooks([("blocks.0.ln2.hook_scale", lambda s, hook: s * 2)]):
        _, patched = model.run_with_cache(tokens, names_filter=["blocks.0.ln2.hook_scale", "blocks.0.ln2.hook_normalized"])
    _, clean = model.run_with_cache(tokens)
    assert close(patched["scale", 0, "ln2"], clean["scale", 0, "ln2"] * 2)
    norm = model.block(0).get_submodule(model.family.ln2)
    bias = norm.bias if getattr(norm, "bias", None) is not None else 0
    assert close(patched["normalized", 0, "ln2"] - bias, (clean["normalized", 0, "ln2"] - bias) / 2)


def test_hook_point_is_the_name_and_has_transformer_lens_attributes():
    hook = HookPoint("blocks.3.attn.hook_z")
    assert hook == "blocks.3.attn.hook_z" and hook.name == "blocks.3.attn.hook_z" and type(hook.name) is str
    assert hook.layer() == 3 and {hook: 1}["blocks.3.attn.hook_z"] == 1 and hook.startswith("blocks.3")
    assert f"{hook}" == "blocks.3.attn.hook_z" and hook.endswith("hook_z") and hook.ctx == {}
    with pytest.raises(CourseError, match="no block"):
        HookPoint("hook_embed").layer()


def test_hook_functions_in_transformer_lens_form(family_case):
    _, model, tokens, _ = family_case
    seen = {}

    def record(act, hook):  # ARENA's form: hook.name, hook.layer(), hook.ctx
        seen[hook.name] = hook.layer()
        hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1
        assert isinstance(hook, str)

    model.run_with_hooks(tokens, fwd_hooks=[(lambda name: name.endswith("hook_pattern"), record)])
    assert seen == {f"blocks.{l}.attn.hook_pattern": l for l in range(model.cfg.n_layers)}

    def ablate(z, head, hook):  # `hook` not second: called by keyword, as TransformerLens does
        z[:, :, head] = 0.0
        return z

    _, cache = model.run_with_cache(tokens)
    with model.hooks([("blocks.0.attn.hook_z", functools.partial(ablate, head=1))]):
        _, patched = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_z")
    assert (patched["z", 0][:, :, 1] == 0).all() and close(patched["z", 0][:, :, 0], cache["z", 0][:, :, 0])


def test_ablating_v_through_its_hook_zeroes_z(family_case):
    _, model, tokens, _ = family_case

    def zero_v(v, hook):
        v[:, :, 0] = 0.0  # key/value head 0 (shared by a group of query heads under GQA)
        return v

    with model.hooks([("blocks.1.attn.hook_v", zero_v)]):
        _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_z"])
    group = model.cfg.n_heads // model.cfg.n_kv_heads
    assert (cache["z", 1][:, :, :group] == 0).all() and (cache["z", 1][:, :, group:] != 0).any()


def test_return_types_and_loss(family_case):
    _, model, tokens, ref = family_case
    hf_loss = model.model(tokens, labels=tokens).loss
    assert close(model(tokens, return_type="loss"), hf_loss)
    logits, loss = model(tokens, return_type="both")
    assert close(logits, ref.logits) and close(loss, hf_loss)
    per_token = model(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, 11) and close(per_token.mean(), hf_loss)
    assert model(tokens, return_type=None) is None
    assert model.run_with_hooks(tokens, fwd_hooks=[], return_type=None) is None
    loss, cache = model.run_with_cache(tokens, return_type="loss", names_filter="blocks.0.hook_resid_pre")
    assert close(loss, hf_loss) and len(cache) == 1
    with pytest.raises(CourseError, match="return_type must be one of"):
        model(tokens, return_type="logit")


def test_helpful_errors_for_hook_lists(family_case):
    _, model, tokens, _ = family_case
    with pytest.raises(CourseError, match="pairs"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_z",)])
    with pytest.raises(CourseError, match="not a hook point"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_z", lambda a, hook: None)])
    with pytest.raises(CourseError, match="Backward hooks"):
        model.run_with_hooks(tokens, fwd_hooks=[], bwd_hooks=[("hook_embed", lambda g, hook: None)])
    with pytest.raises(CourseError, match="not a int"):
        model.run_with_hooks(tokens, fwd_hooks=[(3, lambda a, hook: None)])
    # a single pair, not in a list, is accepted
    logits = model.run_with_hooks(tokens, fwd_hooks=("blocks.0.hook_resid_pre", lambda a, hook: None))
    assert logits.shape[:2] == tokens.shape


def test_cfg_and_token_helpers(family_case):
    _, model, _, _ = family_case
    cfg = model.cfg
    assert cfg.n_ctx == 64 and cfg.device == torch.device("cpu") and cfg.n_key_value_heads == cfg.n_kv_heads
    assert cfg.normalization_type == ("LN" if model.family.norm == "layernorm" else "RMS")
    assert isinstance(cfg.act_fn, str) and cfg.act_fn
    assert model.to_single_token("a") == model.to_tokens("a", prepend_bos=False).item()
    with pytest.raises(CourseError, match="is 2 tokens"):
        model.to_single_token("ab")
    tokens = model.to_tokens(["ab", "cd"], prepend_bos=False)
    assert model.to_string(tokens[0]) == "".join(chr(int(t)) for t in tokens[0]) and len(model.to_string(tokens)) == 2
    assert close(model.tokens_to_residual_directions(tokens), model.W_U.T[tokens])
    assert model.tokens_to_residual_directions(5).shape == (cfg.d_model,)


def test_no_hook_leaves_a_trace_in_a_plain_forward(family_case):
    _, model, tokens, ref = family_case
    model.run_with_cache(tokens)
    counts = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.model.modules()]
    with model.hooks([(n, lambda a, hook: None) for n in model.hook_names]):
        pass
    assert counts == [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.model.modules()]
    assert close(model(tokens), ref.logits)
