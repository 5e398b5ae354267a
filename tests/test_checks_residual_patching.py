"""Notebook 02, sections 2.5 to 2.7: the patching hook, the patching grids, path patching, attribution
patching and the three ablations pass their references, skip stubs, and reject the named wrong answers
(off-by-one positions, the wrong axis, the wrong layer's stream, the wrong sign or run for the gradient,
paths not held), in-place edits (of activations and of caches), wrong dtypes and answers of any type,
in one line."""

from __future__ import annotations

import functools

import pytest
import torch

from course_utils import patching
from course_utils.checks import residual_patching as checks
from tests.check_helpers import ODD_RETURNS, accepts_reference_and_skips_stub, float64, rejects


# ----------------------------------------------------------------------------- references

def test_ablate_head_z_modes():
    z, ref = torch.randn(2, 3, 4, 5), torch.randn(6, 3, 4, 5)
    before = z.clone()
    assert torch.equal(checks.ablate_head_z(z, 1, "zero", ref)[:, :, 1], torch.zeros(2, 3, 5))
    assert torch.allclose(checks.ablate_head_z(z, 1, "mean", ref)[:, :, 1], ref[:, :, 1].mean(0).expand(2, 3, 5))
    assert torch.equal(checks.ablate_head_z(z, 1, "resample", ref[:2])[:, :, 1], ref[:2, :, 1])
    assert torch.equal(z, before)
    with pytest.raises(ValueError, match="mode"):
        checks.ablate_head_z(z, 0, "gaussian", ref)


# ----------------------------------------------------------------------------- every check: reference, stub, odd answers

PURE = {"ablate_head_z": (checks.check_ablate_head_z, checks.ablate_head_z),
        "patch_resid_hook": (checks.check_patch_resid_hook, checks.patch_resid_hook)}
WITH_MODEL = {
    "patch_resid_grid": (checks.check_patch_resid_grid, checks.patch_resid_grid),
    "patch_head_grid": (checks.check_patch_head_grid, checks.patch_head_grid),
    "attribution_patch_heads": (checks.check_attribution_patch_heads, checks.attribution_patch_heads),
    "path_patch": (checks.check_path_patch, checks.path_patch),
}


@pytest.mark.parametrize("name", PURE)
def test_accepts_reference_and_skips_stub(name, capsys):
    accepts_reference_and_skips_stub(*PURE[name], capsys)


@pytest.mark.parametrize("name", WITH_MODEL)
def test_model_checks_accept_reference_and_skip_stub(name, model, capsys):
    accepts_reference_and_skips_stub(*WITH_MODEL[name], capsys, model)


@pytest.mark.parametrize("name", PURE)
@pytest.mark.parametrize("kind", ODD_RETURNS)
def test_any_return_type_fails_in_one_line(name, kind):
    rejects(PURE[name][0], ODD_RETURNS[kind])


@pytest.mark.parametrize("name", WITH_MODEL)
@pytest.mark.parametrize("kind", ["None", "a list", "a numpy array", "an integer tensor", "NaNs", "an object"])
def test_model_checks_any_return_type(name, kind, model):
    rejects(WITH_MODEL[name][0], ODD_RETURNS[kind], None, model)


def test_float64_is_named(model):
    for check, reference in PURE.values():
        rejects(check, float64(reference), "float64")
    for check, reference in WITH_MODEL.values():
        rejects(check, float64(reference), "float64", model)


def test_checks_pass_with_gradients_off(model, capsys):
    """The notebook turns gradients off globally; attribution patching must still work there."""
    with torch.no_grad():
        checks.check_attribution_patch_heads(checks.attribution_patch_heads, model)
    assert capsys.readouterr().out.count("cases pass") == 1


def test_accepts_other_correct_implementations():
    def patch_in_place_returning_none(activation, hook, pos, clean_cache):
        activation[:, pos, ...] = clean_cache[hook.name][:, pos, ...]

    checks.check_patch_resid_hook(patch_in_place_returning_none)

    def ablate_with_where(z, head, mode, reference):
        mask = (torch.arange(z.shape[2]) == head)[None, None, :, None]
        value = {"zero": torch.zeros_like(z), "mean": reference.mean(0, keepdim=True).expand_as(z),
                 "resample": reference}[mode]
        return torch.where(mask, value, z)

    checks.check_ablate_head_z(ablate_with_where)


# ----------------------------------------------------------------------------- 2.5 the hook

def _hook_at(shift=0, batch_axis=False):
    def wrong(activation, hook, pos, clean_cache):
        if batch_axis:
            activation[pos] = clean_cache[hook.name][pos]
        else:
            activation[:, pos + shift] = clean_cache[hook.name][:, pos + shift]
        return activation
    return wrong


def _hook_reversed(activation, hook, pos, clean_cache):
    clean_cache[hook.name][:, pos] = activation[:, pos]
    return activation


WRONG_HOOK = {
    "every position": (lambda a, hook, pos, c: c[hook.name], "every position"),
    "pos + 1": (_hook_at(1), "not pos \\+ 1"),
    "pos - 1": (_hook_at(-1), "not pos - 1"),
    "batch axis": (_hook_at(batch_axis=True), None),
    "reversed direction (writes into the clean cache)": (_hook_reversed, "clean_cache"),
    "fixed name": (lambda a, hook, pos, c: _hook_at()(a, "blocks.1.hook_resid_pre", pos, c), None),
    "returns nothing useful": (lambda a, hook, pos, c: 0, "return the patched activation"),
}


@pytest.mark.parametrize("name", WRONG_HOOK)
def test_patch_resid_hook_rejects(name):
    wrong, match = WRONG_HOOK[name]
    rejects(checks.check_patch_resid_hook, wrong, match)


# ----------------------------------------------------------------------------- 2.5 the grids

def _grid_at(activation):
    return lambda m, t, c, metric: patching.resid_patching_grid(m, t, c, metric, activation)


WRONG_GRID = {
    "resid_post": (_grid_at("resid_post"), "resid_post"),
    "resid_mid": (_grid_at("resid_mid"), "resid_mid"),
    "attn_out": (_grid_at("attn_out"), None),
    "transposed": (lambda m, t, c, metric: checks.patch_resid_grid(m, t, c, metric).T, "shape"),
    "normalised": (lambda m, t, c, metric: patching.normalized(checks.patch_resid_grid(m, t, c, metric),
                                                               float(metric(m(t)).detach()) + 1,
                                                               float(metric(m(t)).detach())), None),
}


@pytest.mark.parametrize("name", WRONG_GRID)
def test_patch_resid_grid_rejects(name, model):
    wrong, match = WRONG_GRID[name]
    rejects(checks.check_patch_resid_grid, wrong, match, model)


def _z_last(z, hook, head, c):
    z[:, -1, head] = c[hook.name][:, -1, head]
    return z


def _z_pos_axis(z, hook, head, c):
    z[:, head] = c[hook.name][:, head]
    return z


def _z_next_layer(z, hook, head, c):
    name = f"blocks.{(hook.layer() + 1) % 3}.attn.hook_z"
    z[:, :, head] = c[name][:, :, head]
    return z


def _heads_edit_clean_cache(m, t, c, metric):
    c["blocks.0.attn.hook_z"].zero_()
    return checks.patch_head_grid(m, t, c, metric)


WRONG_HEADS = {
    "last position only": (checks._grid_of(_z_last), "only the last position"),
    "position axis": (checks._grid_of(_z_pos_axis), "patched a position"),
    "the next layer's clean z": (checks._grid_of(_z_next_layer), None),
    "transposed": (lambda m, t, c, metric: checks.patch_head_grid(m, t, c, metric).T, "shape"),
    "edits the clean cache": (_heads_edit_clean_cache, "in place"),
}


@pytest.mark.parametrize("name", WRONG_HEADS)
def test_patch_head_grid_rejects(name, model):
    wrong, match = WRONG_HEADS[name]
    rejects(checks.check_patch_head_grid, wrong, match, model)


# ----------------------------------------------------------------------------- 2.5 path patching

def _path(freeze_mlps=True, freeze_heads=True, order="qkv", patch_output=False):
    def wrong(m, t, c, x, sender, r, metric):
        (ls, hs), H = sender, m.cfg.n_heads
        send = functools.partial(patching.patch_head_hook, head=hs, clean_cache=c)
        hooks = [(f"blocks.{ls}.attn.hook_z", send)]
        for layer in range(ls, r):
            if freeze_mlps:
                hooks.append((f"blocks.{layer}.hook_mlp_out", lambda a, hook: x[hook.name]))
            if freeze_heads and layer > ls:
                hooks.append((f"blocks.{layer}.attn.hook_z", lambda a, hook: x[hook.name]))
        names = [f"blocks.{r}.attn.hook_{i}" for i in ("zzz" if patch_output else order)]
        with m.hooks(hooks):
            sent = m.run_with_cache(t, names_filter=sorted(set(names)))[1]
        grid = torch.zeros(3, H)
        for i, name in enumerate(names):
            for h in range(H):
                hook = functools.partial(patching.patch_head_hook, head=h, clean_cache=sent)
                grid[i, h] = float(metric(m.run_with_hooks(t, fwd_hooks=[(name, hook)])))
        return grid
    return wrong


def _path_edits_cache(m, t, c, x, sender, r, metric):
    x[f"blocks.{sender[0]}.attn.hook_z"].zero_()
    return checks.path_patch(m, t, c, x, sender, r, metric)


WRONG_PATH = {
    "MLPs not frozen": (_path(freeze_mlps=False), "MLPs between"),
    "heads between not frozen": (_path(freeze_heads=False), "heads of the layers between"),
    "k, q, v": (_path(order="kqv"), "wrong order"),
    "the receiver's output patched": (_path(patch_output=True), None),
    "transposed": (lambda *a: checks.path_patch(*a).T, "shape"),
    "edits the corrupted cache": (_path_edits_cache, "in place"),
}


@pytest.mark.parametrize("name", WRONG_PATH)
def test_path_patch_rejects(name, model):
    wrong, match = WRONG_PATH[name]
    rejects(checks.check_path_patch, wrong, match, model)


# ----------------------------------------------------------------------------- 2.6 attribution patching

def _attribution(grad_on="corrupted", sign=1.0, sum_dims=(0, 1, 3), detach_metric=False):
    def wrong(m, clean, corrupted, metric):
        names = [f"blocks.{l}.attn.hook_z" for l in range(m.cfg.n_layers)]
        _, c = m.run_with_cache(clean, names_filter=names)
        _, x = m.run_with_cache(corrupted, names_filter=names)
        with torch.enable_grad():
            logits, run = m.run_with_cache(clean if grad_on == "clean" else corrupted, names_filter=names, grad=True)
            value = metric(logits)
            value = value.detach() if detach_metric else value
            grads = torch.autograd.grad(value, [run[n] for n in names])
        return torch.stack([(sign * (c[n] - x[n]) * g).sum(sum_dims) for n, g in zip(names, grads)])
    return wrong


WRONG_ATTRIBUTION = {
    "gradient on the clean run": (_attribution("clean"), "clean run"),
    "corrupted minus clean": (_attribution(sign=-1.0), "sign"),
    "positions not summed": (_attribution(sum_dims=(0, 3)), "shape"),
    "metric detached": (_attribution(detach_metric=True), "raised RuntimeError"),
    "half the estimate": (lambda m, a, b, metric: checks.attribution_patch_heads(m, a, b, metric) * 0.5, None),
}


@pytest.mark.parametrize("name", WRONG_ATTRIBUTION)
def test_attribution_patch_heads_rejects(name, model):
    wrong, match = WRONG_ATTRIBUTION[name]
    rejects(checks.check_attribution_patch_heads, wrong, match, model)


# ----------------------------------------------------------------------------- 2.7 ablation

def _ablate_edit(edit):
    def wrong(z, head, mode, reference):
        out = checks.ablate_head_z(z, head, mode, reference)
        return edit(out, z, head, mode, reference)
    return wrong


def _ablate_in_place(z, head, mode, reference):
    z[:, :, head] = 0.0 if mode == "zero" else reference[:, :, head].mean(0) if mode == "mean" else reference[:, :, head]
    return z


def _mean_over_positions(out, z, h, mode, r):
    if mode != "mean":
        return out
    out = out.clone()
    out[:, :, h] = r[:, :, h].mean((0, 1))
    return out


WRONG_ABLATE = {
    "mean over positions too": (_ablate_edit(_mean_over_positions), "not over positions too"),
    "mean of the ablated prompts": (_ablate_edit(lambda o, z, h, mode, r: checks.ablate_head_z(z, h, "mean", z)
                                                 if mode == "mean" else o), "reference prompts, not from the prompts"),
    "resample does nothing": (_ablate_edit(lambda o, z, h, mode, r: z.clone() if mode == "resample" else o), "resampling"),
    "other heads changed": (_ablate_edit(lambda o, z, h, mode, r: o * 1.5), "other than"),
    "in place": (_ablate_in_place, "in place"),
    "returns None": (lambda z, h, mode, r: None, "return the new z"),
}


@pytest.mark.parametrize("name", WRONG_ABLATE)
def test_ablate_head_z_rejects(name):
    wrong, match = WRONG_ABLATE[name]
    rejects(checks.check_ablate_head_z, wrong, match)
