"""Notebook 04, section 4.5 and the path ablations: the hook, the map of ablation effects and the
path ablation pass their references, skip stubs, and reject wrong hooks, in-place edits (of z and of
the resample cache), wrong dtypes and answers of any type, in one line."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from course_utils.checks import induction_ablation as checks
from course_utils.data import repeated_tokens
from course_utils.hook_points import HookPoint
from tests.check_helpers import ODD_RETURNS, float64, rejects, stub


# ----------------------------------------------------------------------------- references

def test_hook_leaves_its_input_and_other_heads_alone():
    z = torch.randn(2, 3, 4, 5)
    before = z.clone()
    hook = HookPoint("blocks.1.attn.hook_z")
    out = checks.head_ablation_hook(z, hook, 2, "mean")
    assert torch.equal(z, before) and torch.equal(out[:, :, [0, 1, 3]], z[:, :, [0, 1, 3]])
    assert torch.allclose(out[:, :, 2], z[:, :, 2].mean((0, 1)).expand(2, 3, 5))
    source = {"blocks.1.attn.hook_z": torch.randn(2, 3, 4, 5)}
    assert torch.equal(checks.head_ablation_hook(z, hook, 1, "resample", source)[:, :, 1], source[hook][:, :, 1])
    with pytest.raises(ValueError, match="mode"):
        checks.head_ablation_hook(z, hook, 0, "gaussian")


def test_ablation_effects_are_zero_for_a_hook_that_changes_nothing(model):
    tokens = repeated_tokens(2, 5, model.cfg.d_vocab, bos_id=model.bos_token_id, seed=0, low=1)
    effects = checks.ablation_effects(model, tokens, 5, hook_fn=lambda z, hook, head, mode, source: z)
    assert effects.shape == (model.cfg.n_layers, model.cfg.n_heads) and effects.abs().max() < 1e-5


def test_path_ablation_of_a_constant_head_changes_nothing(model):
    """If the sender's output were the same everywhere, its mean would equal it: mean-ablating changes nothing.
    And ablating into the keys must differ from ablating everywhere."""
    tokens = repeated_tokens(2, 6, model.cfg.d_vocab, bos_id=model.bos_token_id, seed=1, low=1)
    plain = model(tokens)
    k = checks.path_ablated_logits(model, tokens, (0, 1), (2, 3), "k")
    everywhere = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", partial(
        checks.head_ablation_hook, head=1, mode="mean"))])
    assert not torch.allclose(k, plain) and not torch.allclose(k, everywhere)
    assert torch.allclose(k[:, :1], plain[:, :1], atol=1e-5)   # position 0 sees only itself... and reads the same key
    with pytest.raises(ValueError):
        checks.path_ablated_logits(model, tokens, (2, 0), (1, 0), "k")


# ----------------------------------------------------------------------------- every check

def test_accept_references_and_skip_stubs(model, capsys):
    assert checks.check_head_ablation_hook(checks.head_ablation_hook) is checks.head_ablation_hook
    assert checks.check_head_ablation_hook(stub) is checks.head_ablation_hook
    for check, reference in [(checks.check_ablation_effects, checks.ablation_effects),
                             (checks.check_path_ablated_logits, checks.path_ablated_logits)]:
        assert check(reference, model) is reference
        assert check(stub, model) is reference
    out = capsys.readouterr().out
    assert out.count("cases pass") == 3 and out.count("not done yet") == 3


def test_accepts_other_correct_hooks():
    def where_style(z, hook, head, mode="zero", source=None):
        if mode == "resample":
            value = source["z", hook.layer()][:, :, head]           # TransformerLens-style cache index
        else:
            value = torch.zeros_like(z[:, :, head]) if mode == "zero" else z[:, :, head].mean((0, 1), keepdim=True)
        mask = torch.arange(z.shape[2])[None, None, :, None] == head
        return torch.where(mask, value[:, :, None] if value.dim() == 3 else value, z)

    def clone_then_edit(z, hook, head, mode="zero", source=None):
        z = z.clone()                                                 # editing a copy is fine
        z[:, :, head] = {"zero": lambda: 0.0, "mean": lambda: z[:, :, head].mean((0, 1)),
                         "resample": lambda: source[hook.name][:, :, head]}[mode]()
        return z
    checks.check_head_ablation_hook(where_style)
    checks.check_head_ablation_hook(clone_then_edit)


@pytest.mark.parametrize("kind", ODD_RETURNS)
def test_hook_any_return_type_fails_in_one_line(kind):
    rejects(checks.check_head_ablation_hook, ODD_RETURNS[kind])


@pytest.mark.parametrize("kind", ["None", "a list", "a numpy array", "NaNs", "an object"])
def test_model_checks_any_return_type(kind, model):
    rejects(checks.check_ablation_effects, ODD_RETURNS[kind], None, model)
    rejects(checks.check_path_ablated_logits, ODD_RETURNS[kind], None, model)


def test_float64_is_named(model):
    rejects(checks.check_head_ablation_hook, float64(checks.head_ablation_hook), "float64")
    rejects(checks.check_ablation_effects, float64(checks.ablation_effects), "float64", model)
    rejects(checks.check_path_ablated_logits, float64(checks.path_ablated_logits), "float64", model)


# ----------------------------------------------------------------------------- the hook

def edit(z, hook, head, mode="zero", source=None):
    """The TransformerLens habit: edit the activation in place and return it."""
    z[:, :, head] = checks.head_ablation_hook(z, hook, head, mode, source)[:, :, head]
    return z


def steal_source(z, hook, head, mode="zero", source=None):
    if mode != "resample":
        return checks.head_ablation_hook(z, hook, head, mode, source)
    src = source[hook.name]
    others = [h for h in range(z.shape[2]) if h != head]
    src[:, :, others] = z[:, :, others]                       # writes into the cache
    return src


def ablate(z, hook, head, mode="zero", source=None, *, index=None, mean=(0, 1), layer=None):
    z = z.clone()
    index = index or (slice(None), slice(None), head)
    if mode == "zero":
        z[index] = 0.0
    elif mode == "mean":
        z[index] = z[index].mean(mean, keepdim=True)
    else:
        z[index] = source[hook.name if layer is None else f"blocks.{layer}.attn.hook_z"][index]
    return z


WRONG_HOOKS = {
    "edits z in place": (edit, "changed its input `z` in place"),
    "edits the resample cache": (steal_source, "changed the source cache in place"),
    "returns nothing": (lambda z, hook, head, mode="zero", source=None: None, "return the new z"),
    "position axis": (lambda z, hook, head, mode="zero", source=None:
                      ablate(z, hook, head, mode, source, index=(slice(None), head), mean=0), "a position, not a head"),
    "per-position mean": (partial(ablate, mean=0), "one per position"),
    "per-sequence mean": (partial(ablate, mean=1), "one per sequence"),
    "mean over d_head too": (partial(ablate, mean=(0, 1, 2)), r"differs at .*\[batch 0, pos 0, head 3, d_head 0\]"),
    "resample from layer 0": (partial(ablate, layer=0), "layer 0's z"),
    "resample from the layer before": (lambda z, hook, head, mode="zero", source=None: ablate(
        z, hook, head, mode, source, layer=hook.layer() - 1), r"resample ablation of head 2 in layer 1"),
    "resample every head": (lambda z, hook, head, mode="zero", source=None:
                            source[hook.name].clone() if mode == "resample" else ablate(z, hook, head, mode),
                            "every head with the source"),
    "always zero": (lambda z, hook, head, mode="zero", source=None: ablate(z, hook, head, "zero"),
                    r"case 2 of 7 \(mean ablation of head 3"),
    "head - 1": (lambda z, hook, head, mode="zero", source=None: ablate(z, hook, head - 1, mode, source), "head 0 changed"),
    "mean of every head": (lambda z, hook, head, mode="zero", source=None: ablate(z, hook, head, mode, source)
                           if mode != "mean" else torch.where(torch.arange(z.shape[2])[:, None] == head,
                                                              z.mean((0, 1, 2)), z), "not over every head"),
    "resample with a batch shuffle instead of the source": (lambda z, hook, head, mode="zero", source=None: ablate(
        z, hook, head, mode, {hook.name: z.roll(1, 0)}) if mode == "resample" else ablate(z, hook, head, mode),
        r"resample ablation"),
}


@pytest.mark.parametrize("name", WRONG_HOOKS)
def test_hook_rejects(name):
    wrong, match = WRONG_HOOKS[name]
    rejects(checks.check_head_ablation_hook, wrong, match)


# ----------------------------------------------------------------------------- every head

def effects_with(loss_slice=None, sign=1, baseline=True, hook_name="blocks.{layer}.attn.hook_z"):
    def wrong(m, t, n, mode="mean", source=None):
        def loss(logits):
            per = checks.per_token_loss(logits, t)
            return (per[:, n + 1:] if loss_slice is None else per[:, loss_slice(n)]).mean()
        base = loss(m(t)) if baseline else 0.0
        out = torch.zeros(m.cfg.n_layers, m.cfg.n_heads)
        for layer in range(m.cfg.n_layers):
            for head in range(m.cfg.n_heads):
                hook = partial(checks.head_ablation_hook, head=head, mode=mode, source=source)
                logits = m.run_with_hooks(t, fwd_hooks=[(hook_name.format(layer=layer), hook)])
                out[layer, head] = sign * (loss(logits) - base)
        return out
    return wrong


WRONG_EFFECTS = {
    "no baseline": (effects_with(baseline=False), "subtract the loss of the unablated model"),
    "loss fall": (effects_with(sign=-1), "ablated minus unablated"),
    "whole sequence": (effects_with(loss_slice=lambda n: slice(None)), r"\[layer \d, head \d\]"),
    "second copy from its first token": (effects_with(loss_slice=lambda n: slice(n, None)), "differs"),
    "always layer 0": (effects_with(hook_name="blocks.0.attn.hook_z"), r"first at \[layer 1, head"),
    "ignores mode": (lambda m, t, n, mode="mean", source=None: checks.ablation_effects(m, t, n, "zero"),
                     r"case 2 of 3 \(mean ablation\)"),
    "transposed": (lambda *a, **k: checks.ablation_effects(*a, **k).T, "shape"),
}


@pytest.mark.parametrize("name", WRONG_EFFECTS)
def test_ablation_effects_rejects(name, model):
    wrong, match = WRONG_EFFECTS[name]
    rejects(checks.check_ablation_effects, wrong, match, model)


# ----------------------------------------------------------------------------- path ablation

def path_variant(**kwargs):
    return lambda m, t, s, r, path: checks._path_variant(m, t, s, r, path, **kwargs)


def edit_tokens(m, t, s, r, path):
    t[:, 0] = m.bos_token_id + 1                              # overwrites the caller's tokens
    return checks.path_ablated_logits(m, t, s, r, path)


WRONG_PATHS = {
    "zero ablation": (path_variant(zero=True), "zero ablation"),
    "every head of the receiver's layer": (path_variant(all_heads=True), "every head of the receiver"),
    "no ln1": (path_variant(norm=False), "ln1"),
    "no bias": (path_variant(bias=False), "bias"),
    "another path": (lambda m, t, s, r, path: checks._path_variant(m, t, s, r, path, which="v" if path != "v" else "q"),
                     r"case \d of 4"),
    "the sender everywhere": (lambda m, t, s, r, path: m.run_with_hooks(t, fwd_hooks=[(
        f"blocks.{s[0]}.attn.hook_z", partial(checks.head_ablation_hook, head=s[1], mode="mean"))]), "everywhere"),
    "nothing ablated": (lambda m, t, s, r, path: m(t), r"differs at .*\[batch \d, pos \d+, vocab \d+\]"),
    "edits the tokens": (edit_tokens, "changed its input `tokens` in place"),
}


@pytest.mark.parametrize("name", WRONG_PATHS)
def test_path_ablated_logits_rejects(name, model):
    wrong, match = WRONG_PATHS[name]
    rejects(checks.check_path_ablated_logits, wrong, match, model)


def test_path_ablation_must_not_change_the_weights(model):
    def scale_weights(m, t, s, r, path):
        m.W_O  # read: fine
        with torch.no_grad():
            m.model.transformer.h[0].attn.c_proj.weight.mul_(1.0)
        return checks.path_ablated_logits(m, t, s, r, path)
    rejects(checks.check_path_ablated_logits, scale_weights, "changed the model's weights", model)
