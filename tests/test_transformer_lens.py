"""Code in ARENA's and TransformerLens's style runs unchanged on the course's model and gives the same
numbers as TransformerLens's own HookedTransformer holding the same weights.

Needs transformer_lens 3.x (HookedTransformer), which the course does not depend on: `make test-tl`
runs this file in a separate environment; elsewhere it is skipped.

TransformerLens is loaded with fold_ln=True (its default, so `tokens_to_residual_directions` and
`apply_ln_to_stack` mean what ARENA's code expects), center_writing_weights=False (so residual
streams are the same tensors) and center_unembed=False (so single logits, not only differences,
agree) and fold_value_biases=False (so v and z keep their biases).
"""

from functools import partial
from importlib.metadata import version

import pytest
import torch

pytest.importorskip("transformer_lens")
if not version("transformer_lens").startswith("3."):
    pytest.skip("these tests compare with TransformerLens 3.x's HookedTransformer", allow_module_level=True)

from course_utils import get_act_name, load_model  # noqa: E402
from course_utils.data import repeated_tokens  # noqa: E402

ATOL = 2e-4


def close(a, b, atol=ATOL):
    return torch.allclose(torch.as_tensor(a).float(), torch.as_tensor(b).float(), atol=atol, rtol=1e-3)


@pytest.fixture(scope="module")
def models():
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    torch.set_grad_enabled(False)
    ours = load_model(device="cpu")
    c = ours.model.config
    cfg = HookedTransformerConfig(n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
                                  d_mlp=4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions,
                                  act_fn=c.activation_function, normalization_type="LN", eps=c.layer_norm_epsilon,
                                  original_architecture="GPT2LMHeadModel", default_prepend_bos=True)
    theirs = HookedTransformer(cfg, tokenizer=ours.tokenizer)
    theirs.load_and_process_state_dict(convert_gpt2_weights(ours.model, cfg), fold_ln=True,
                                       center_writing_weights=False, center_unembed=False,
                                       fold_value_biases=False)
    yield ours, theirs
    torch.set_grad_enabled(True)


@pytest.fixture(scope="module")
def rep_tokens(models):
    ours, _ = models
    return repeated_tokens(4, 20, ours.cfg.d_vocab, bos_id=ours.bos_token_id, seed=0, low=1)


CODE = "def area(width, height):\n    return width * height\n\nprint(area(3, 4))\n"


# ---- snippets written as ARENA writes them ----------------------------------------------------------------
def induction_scores(model, rep_tokens, seq_len):
    scores = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, device=model.cfg.device)

    def induction_score_hook(pattern, hook):
        stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
        scores[hook.layer(), :] = stripe.mean((0, -1))

    model.run_with_hooks(rep_tokens, return_type=None,
                         fwd_hooks=[(lambda name: name.endswith("pattern"), induction_score_hook)])
    return scores


def head_ablation_losses(model, tokens, hook_kind):
    def zero_head(act, hook, head_index_to_ablate):
        act[:, :, head_index_to_ablate, :] = 0.0

    losses = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            fn = partial(zero_head, head_index_to_ablate=head)
            losses[layer, head] = model.run_with_hooks(tokens, return_type="loss",
                                                       fwd_hooks=[(get_act_name(hook_kind, layer), fn)])
    return losses


def patch_resid_pre(model, clean_tokens, corrupted_tokens, answer, wrong):
    _, clean_cache = model.run_with_cache(clean_tokens)

    def patch(resid, hook, pos):
        resid[:, pos, :] = clean_cache[hook.name][:, pos, :]
        return resid

    grid = torch.zeros(model.cfg.n_layers, clean_tokens.shape[1])
    for layer in range(model.cfg.n_layers):
        for pos in range(clean_tokens.shape[1]):
            logits = model.run_with_hooks(corrupted_tokens,
                                          fwd_hooks=[(get_act_name("resid_pre", layer), partial(patch, pos=pos))])
            grid[layer, pos] = logits[0, -1, answer] - logits[0, -1, wrong]
    return grid


def logit_diff_attributions(model, tokens, answer, wrong):
    _, cache = model.run_with_cache(tokens)
    direction = model.tokens_to_residual_directions(answer) - model.tokens_to_residual_directions(wrong)
    accumulated, labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, apply_ln=True,
                                                  return_labels=True)
    per_layer, layer_labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    per_head = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=False)
    return {
        "labels": labels + layer_labels,
        "accumulated": accumulated @ direction,
        "layers": cache.apply_ln_to_stack(per_layer, layer=-1, pos_slice=-1) @ direction,
        "heads": cache.apply_ln_to_stack(per_head, layer=-1, pos_slice=-1) @ direction,
        "logit_attrs": cache.logit_attrs(per_head, answer, incorrect_tokens=wrong, pos_slice=-1),
        "remainder": cache.stack_head_results(layer=-1, incl_remainder=True, pos_slice=-1, apply_ln=True) @ direction,
    }


def head_detectors(model, text):
    _, cache = model.run_with_cache(text, remove_batch_dim=True)
    found = {}
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer]  # [head, query, key]
        found[layer] = {"current": pattern.diagonal(dim1=-2, dim2=-1).mean(-1),
                        "previous": pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1),
                        "first": pattern[:, :, 0].mean(-1)}
    return found


# ---- the comparisons -----------------------------------------------------------------------------------------
def test_every_shared_hook_reads_the_same(models):
    ours, theirs = models
    tokens = ours.to_tokens(CODE)
    ours_logits, ours_cache = ours.run_with_cache(tokens)
    their_logits, their_cache = theirs.run_with_cache(tokens)
    assert close(ours_logits, their_logits)
    shared = [n for n in ours.hook_names if n in their_cache.cache_dict]
    assert len(shared) >= len(ours.hook_names) - 2 * ours.cfg.n_layers - 1
    for name in shared:
        if name.endswith("hook_normalized"):
            continue  # folded norms: TransformerLens's output lacks the weight and bias (see the README)
        a, b = ours_cache[name], their_cache[name]
        assert a.shape == b.shape, name
        if name.endswith("attn_scores"):
            assert torch.equal(torch.isinf(a), torch.isinf(b)), name
            a, b = a.masked_fill(torch.isinf(a), 0), b.masked_fill(torch.isinf(b), 0)
        assert close(a, b), name


def test_induction_scores(models, rep_tokens):
    ours, theirs = models
    assert close(induction_scores(ours, rep_tokens, 20), induction_scores(theirs, rep_tokens, 20))


@pytest.mark.parametrize("hook_kind", ["z", "v"])
def test_head_ablation(models, rep_tokens, hook_kind):
    ours, theirs = models
    assert close(ours(rep_tokens, return_type="loss"), theirs(rep_tokens, return_type="loss"))
    assert close(head_ablation_losses(ours, rep_tokens[:2], hook_kind),
                 head_ablation_losses(theirs, rep_tokens[:2], hook_kind))


def test_activation_patching_with_clean_cache_of_hook_name(models):
    ours, _ = models
    clean = ours.to_tokens("count = 0\nfor item in items:\n    count += item\nprint(count")
    corrupted = ours.to_tokens("count = 0\nfor item in items:\n    count += item\nprint(item")
    assert clean.shape == corrupted.shape
    answer, wrong = ours.to_single_token(")"), ours.to_single_token(",")
    a = patch_resid_pre(ours, clean, corrupted, answer, wrong)
    b = patch_resid_pre(models[1], clean, corrupted, answer, wrong)
    assert close(a, b, atol=1e-3)


def test_logit_attribution(models):
    ours, theirs = models
    tokens = ours.to_tokens(CODE)
    answer, wrong = ours.to_single_token("\n"), ours.to_single_token(")")
    a, b = logit_diff_attributions(ours, tokens, answer, wrong), logit_diff_attributions(theirs, tokens, answer, wrong)
    assert a["labels"] == b["labels"]
    for key in ("accumulated", "layers", "heads", "logit_attrs", "remainder"):
        assert close(a[key], b[key], atol=1e-3), key


def test_remove_batch_dim_detectors(models):
    ours, theirs = models
    a, b = head_detectors(ours, CODE), head_detectors(theirs, CODE)
    for layer in a:
        for kind in a[layer]:
            assert close(a[layer][kind], b[layer][kind]), (layer, kind)


def test_cfg_and_tokens(models):
    ours, theirs = models
    for field in ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab", "n_ctx", "act_fn"):
        assert getattr(ours.cfg, field) == getattr(theirs.cfg, field), field
    assert ours.cfg.normalization_type == "LN" and theirs.cfg.normalization_type == "LNPre"  # folded there
    assert ours.to_single_token(" self") == theirs.to_single_token(" self")
    tokens = ours.to_tokens(CODE)
    assert torch.equal(tokens, theirs.to_tokens(CODE))
    assert ours.to_str_tokens(CODE) == theirs.to_str_tokens(CODE)
    assert ours.to_string(tokens[0, 1:]) == theirs.to_string(tokens[0, 1:])


def test_grouped_query_attention_hooks_match():
    """q, k, v, scores, patterns and RMSNorm scales of a random Llama with 2 key/value heads for 4 query heads."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights
    from transformers import AutoModelForCausalLM, LlamaConfig

    from course_utils import HookedModel
    from tests.conftest import TinyTokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64, rope_theta=10000.0)
    config.initializer_range = 0.15
    hf = AutoModelForCausalLM.from_config(config).eval()
    ours = HookedModel(hf, TinyTokenizer())
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=96, d_vocab=97, n_ctx=64,
                                  n_key_value_heads=2, act_fn="silu", normalization_type="RMS", eps=config.rms_norm_eps,
                                  positional_embedding_type="rotary", rotary_dim=16, rotary_base=10000,
                                  rotary_adjacent_pairs=False, gated_mlp=True, final_rms=True,
                                  original_architecture="LlamaForCausalLM")
    theirs = HookedTransformer(cfg)
    theirs.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                       center_unembed=False, fold_value_biases=False)
    tokens = torch.randint(1, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    ours_logits, ours_cache = ours.run_with_cache(tokens)
    their_logits, their_cache = theirs.run_with_cache(tokens)
    assert close(ours_logits, their_logits)
    for name in ("blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v", "blocks.1.attn.hook_pattern",
                 "blocks.1.attn.hook_z", "blocks.1.ln1.hook_scale", "blocks.1.ln2.hook_normalized",
                 "ln_final.hook_scale", "blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post"):
        assert ours_cache[name].shape == their_cache[name].shape, name
        assert close(ours_cache[name], their_cache[name]), name
