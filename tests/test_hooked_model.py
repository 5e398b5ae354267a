"""HookedModel on all four families: hook points agree with Hugging Face's own outputs and with the
per-head weights, patches take effect (and only when they change something), hooks never linger."""

import sys

import pytest
import torch

from course_utils import CourseError, attention
from course_utils.lens import apply_ln_final

ATOL = 1e-5


def close(a, b, atol=ATOL):
    return torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4)


def test_cached_logits_equal_plain_logits(family_case):
    _, model, tokens, ref = family_case
    logits, cache = model.run_with_cache(tokens)
    assert close(logits, ref.logits)
    assert len(cache) == len(model.hook_names)


def test_resid_stream_chains_and_matches_hidden_states(family_case):
    _, model, tokens, ref = family_case
    _, cache = model.run_with_cache(tokens)
    assert close(cache["resid_pre", 0], ref.hidden_states[0])
    for l in range(model.cfg.n_layers - 1):
        assert torch.equal(cache["resid_post", l], cache["resid_pre", l + 1])
        assert close(cache["resid_post", l], ref.hidden_states[l + 1])


def test_patterns_match_output_attentions_and_rows_sum_to_one(family_case):
    _, model, tokens, ref = family_case
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    for l in range(model.cfg.n_layers):
        pattern = cache["pattern", l]
        assert pattern.shape == (2, model.cfg.n_heads, 12, 12)
        assert close(pattern, ref.attentions[l])
        assert close(pattern.sum(-1), torch.ones(2, model.cfg.n_heads, 12))
        assert (pattern.triu(1) == 0).all(), "a query attended to a later key"


def test_residual_additions(family_case):
    family, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens)
    for l in range(model.cfg.n_layers):
        pre, attn, mlp, post = (cache[k, l] for k in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
        if model.parallel_residual:
            assert family == "neox" and ("resid_mid", l) not in cache
            assert close(post, pre + attn + mlp)
        else:
            assert close(cache["resid_mid", l], pre + attn)
            assert close(post, cache["resid_mid", l] + mlp)


def test_heads_times_W_O_sum_to_attn_out(family_case):
    _, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens)
    for l in range(model.cfg.n_layers):
        per_head = torch.einsum("bphd,hdm->bpm", cache["z", l], model.W_O[l])
        assert close(per_head + model.b_O[l], cache["attn_out", l])


def _rotate(model, q, k, positions):
    """Apply the family's own rotary embedding to q, k [batch, head, pos, d_head]."""
    base = model.model.base_model
    if not hasattr(base, "rotary_emb"):
        return q, k
    cos, sin = base.rotary_emb(q, positions)
    apply = sys.modules[type(model.model).__module__].apply_rotary_pos_emb
    return apply(q, k, cos, sin)


def test_patterns_and_z_recomputed_from_weights(family_case):
    _, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens)
    positions = torch.arange(tokens.shape[1])[None]
    for l in range(model.cfg.n_layers):
        x = model.block(l).get_submodule(model.family.ln1)(cache["resid_pre", l])  # [b, p, d_model]
        q, k, v = (torch.einsum("bpm,hmd->bhpd", x, W) + b[None, :, None]
                   for W, b in ((model.W_Q[l], model.b_Q[l]), (model.W_K[l], model.b_K[l]), (model.W_V[l], model.b_V[l])))
        q, k = _rotate(model, q, k, positions)
        scores = q @ k.transpose(-1, -2) / model.cfg.d_head ** 0.5
        scores = scores.masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf"))
        pattern = scores.softmax(-1)
        assert close(pattern, cache["pattern", l])
        assert close((pattern @ v).transpose(1, 2), cache["z", l])


def test_gqa_heads_share_keys_and_values(family_case):
    family, model, _, _ = family_case
    if family in ("llama", "qwen2"):
        W_K = model.W_K
        assert torch.equal(W_K[:, 0], W_K[:, 1]) and not torch.equal(W_K[:, 1], W_K[:, 2])


def test_final_norm_then_unembed_gives_logits(family_case):
    _, model, tokens, _ = family_case
    logits, cache = model.run_with_cache(tokens)
    final = cache["resid_post", model.cfg.n_layers - 1]
    assert close(apply_ln_final(model, final) @ model.W_U + model.b_U, logits, atol=1e-4)
    assert close(cache["ln_final.hook_normalized"] @ model.W_U + model.b_U, logits, atol=1e-4)


def test_patching_with_itself_changes_nothing_at_every_hook(family_case):
    _, model, tokens, ref = family_case
    hooks = [(name, lambda act, name: act.clone()) for name in model.hook_names]
    assert close(model.run_with_hooks(tokens, hooks), ref.logits, atol=1e-4)


POINTS = ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
          "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
          "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post"]


def test_hook_names_are_every_point_in_forward_order(family_case):
    _, model, _, _ = family_case
    per_block = [p for p in POINTS if not (model.parallel_residual and p == "hook_resid_mid")]
    expected = ["hook_embed"] + (["hook_pos_embed"] if model.family.pos_embed else [])
    expected += [f"blocks.{l}.{p}" for l in range(model.cfg.n_layers) for p in per_block]
    assert model.hook_names == expected + ["ln_final.hook_scale", "ln_final.hook_normalized"]


@pytest.mark.parametrize("point", POINTS)
def test_every_patch_takes_effect(family_case, point):
    _, model, tokens, ref = family_case
    name = f"blocks.1.{point}"
    if name not in model.hook_names:
        pytest.skip("parallel residual: no resid_mid")
    if point == "attn.hook_pattern":  # all attention on the first token
        fn = lambda act, name: torch.zeros_like(act).index_fill(-1, torch.tensor([0]), 1.0)
    elif point.endswith("hook_scale"):  # a scale of zero would divide by zero
        fn = lambda act, name: act * 3
    else:
        fn = lambda act, name: torch.zeros_like(act)
    _, cache = model.run_with_cache(tokens)
    with model.hooks([(name, fn)]):
        patched_logits, patched = model.run_with_cache(tokens)
    assert (patched_logits - ref.logits).abs().max() > 1e-3
    assert close(patched[name], fn(cache[name], name)), "the cache should see the patched value"
    if point == "hook_resid_mid":  # the block's own residual add must carry the patch
        assert close(patched["resid_post", 1], patched["mlp_out", 1])


@pytest.mark.parametrize("point", POINTS)
def test_in_place_edits_take_effect(family_case, point):
    """ARENA's hooks often edit the activation in place and return nothing (or the same tensor)."""
    _, model, tokens, ref = family_case
    name = f"blocks.1.{point}"
    if name not in model.hook_names:
        pytest.skip("parallel residual: no resid_mid")

    def edit(act, hook):
        if point == "attn.hook_pattern":
            act.zero_()
            act[..., 0] = 1.0
        elif point.endswith("hook_scale"):
            act.mul_(3)
        else:
            act[:, 2:] = 0.0

    def replace(act, hook):
        new = act.clone()
        edit(new, hook)
        return new

    in_place = model.run_with_hooks(tokens, [(name, edit)])
    assert (in_place - ref.logits).abs().max() > 1e-3
    assert close(in_place, model.run_with_hooks(tokens, [(name, replace)]))


def test_hook_gets_its_name_and_runs_in_forward_order(family_case):
    _, model, tokens, _ = family_case
    seen = []
    model.run_with_hooks(tokens, [(n, lambda act, name: seen.append(name)) for n in reversed(model.hook_names)])
    assert seen == model.hook_names


def test_hooks_are_removed_even_when_one_raises(family_case):
    _, model, tokens, ref = family_case

    def boom(act, name):
        raise RuntimeError("boom")

    def counts():  # transformers keeps hooks of its own; ours must all be gone
        return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.model.modules()]

    before = counts()

    for name in ("blocks.0.attn.hook_pattern", "blocks.0.hook_resid_pre", "hook_embed"):
        with pytest.raises(RuntimeError, match="boom"):
            model.run_with_hooks(tokens, [(name, boom)])
    assert close(model(tokens), ref.logits)
    assert not attention.ACTIVE_HOOKS
    assert counts() == before


def test_patch_in_bf16_model(family_case):
    family, model, tokens, _ = family_case
    from tests.conftest import TinyTokenizer, build

    from course_utils import HookedModel

    bf16 = HookedModel(build(family).to(torch.bfloat16), TinyTokenizer())
    seen = {}

    def ablate(act, name):  # returns float32 on purpose: the model must convert it
        seen["dtype"] = act.dtype
        return torch.zeros(act.shape, dtype=torch.float32)

    logits = bf16.run_with_hooks(tokens, [("blocks.0.attn.hook_z", ablate), ("blocks.1.hook_resid_pre", lambda a, n: a.float())])
    assert seen["dtype"] == torch.bfloat16 and logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_helpful_errors(family_case):
    _, model, tokens, _ = family_case
    with pytest.raises(CourseError, match="Did you mean 'blocks.0.attn.hook_pattern'"):
        model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_patern")
    with pytest.raises(CourseError, match="same shape"):
        model.run_with_hooks(tokens, [("blocks.0.hook_attn_out", lambda a, n: a[:, :1])])
    with pytest.raises(CourseError, match="returned a float"):
        model.run_with_hooks(tokens, [("blocks.0.hook_attn_out", lambda a, n: 0.0)])
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pre"])
    with pytest.raises(CourseError, match="not in this cache"):
        cache["pattern", 0]
    with pytest.raises(CourseError, match="token ids"):
        model(torch.randn(2, 3))
    with pytest.raises(CourseError, match="longer than this model's context of 64"):
        model(torch.ones(1, 65, dtype=torch.long))


def test_cache_shorthand_and_stack(family_case):
    _, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens)
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["pre", 0] is cache["blocks.0.mlp.hook_pre"]
    assert cache["embed"] is cache["hook_embed"]
    assert cache.stack_activation("resid_post").shape == (model.cfg.n_layers, 2, 12, model.cfg.d_model)
    assert cache["z", 0].shape == (2, 12, model.cfg.n_heads, model.cfg.d_head)
    assert cache["pre", 0].shape == (2, 12, model.cfg.d_mlp)
    assert not cache["resid_pre", 0].requires_grad


def test_grad_flows_when_asked(family_case):
    _, model, tokens, _ = family_case
    logits, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_post"], grad=True)
    logits[0, -1, 0].backward()
    assert cache["resid_post", 0].requires_grad
    assert model.W_E.grad is not None
    model.model.zero_grad(set_to_none=True)


def test_mlp_weights_reproduce_the_mlp(family_case):
    _, model, tokens, _ = family_case
    _, cache = model.run_with_cache(tokens)
    for l in range(model.cfg.n_layers):
        mlp_input = cache["resid_pre", l] if model.parallel_residual else cache["resid_mid", l]
        x = model.block(l).get_submodule(model.family.ln2)(mlp_input)
        if model.W_gate is not None:  # gated: hook_pre is the gate's pre-activation
            assert close(x @ model.W_gate[l], cache["pre", l])
        else:
            assert close(x @ model.W_in[l] + model.b_in[l], cache["pre", l])
        assert model.W_in.shape == (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_mlp)
        assert close(cache["post", l] @ model.W_out[l] + model.b_out[l], cache["mlp_out", l])
