"""Each check of notebook 02 passes the reference, skips a stub, and rejects plausible wrong answers."""

from __future__ import annotations

import functools

import pytest
import torch

from course_utils import HookedModel, lens, patching
from course_utils.checks import CheckFailed
from course_utils.checks import residual as checks
from tests.conftest import TinyTokenizer, build


def stub(*args, **kwargs):
    raise NotImplementedError


def rejects(check, wrong, match: str | None = None, *extra) -> None:
    with pytest.raises(CheckFailed, match=match):
        check(wrong, *extra)


@pytest.fixture(scope="module")
def model() -> HookedModel:
    """A tiny random GPT-2 (3 layers, 4 heads, vocabulary 97): the checks must not need the bundled model."""
    return HookedModel(build("gpt2"), TinyTokenizer())


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


def test_dla_adds_up_to_the_logit_difference(model):
    tokens = torch.randint(1, 97, (2, 7), generator=torch.Generator().manual_seed(3))
    logits, cache = model.run_with_cache(tokens)
    stack = checks.residual_parts(model, cache)[0][:, :, -1]
    answers, wrongs = torch.tensor([5, 9]), torch.tensor([8, 2])
    attrs = checks.direct_logit_attribution(model, cache, stack, answers, wrongs)
    constant = lens.logit_constant(model, answers) - lens.logit_constant(model, wrongs)
    assert torch.allclose(attrs.sum(0) + constant, checks.logit_diff(logits, answers, wrongs), atol=1e-4)


def test_ablate_head_z_modes():
    z, ref = torch.randn(2, 3, 4, 5), torch.randn(6, 3, 4, 5)
    before = z.clone()
    assert torch.equal(checks.ablate_head_z(z, 1, "zero", ref)[:, :, 1], torch.zeros(2, 3, 5))
    assert torch.allclose(checks.ablate_head_z(z, 1, "mean", ref)[:, :, 1], ref[:, :, 1].mean(0).expand(2, 3, 5))
    assert torch.equal(checks.ablate_head_z(z, 1, "resample", ref[:2])[:, :, 1], ref[:2, :, 1])
    assert torch.equal(z, before)
    with pytest.raises(ValueError, match="mode"):
        checks.ablate_head_z(z, 0, "gaussian", ref)


# ----------------------------------------------------------------------------- every check: reference and stub

PURE = {"logit_diff": (checks.check_logit_diff, checks.logit_diff),
        "ablate_head_z": (checks.check_ablate_head_z, checks.ablate_head_z),
        "patch_resid_hook": (checks.check_patch_resid_hook, checks.patch_resid_hook)}
WITH_MODEL = {
    "residual_parts": (checks.check_residual_parts, checks.residual_parts),
    "direct_path_logits": (checks.check_direct_path_logits, checks.direct_path_logits),
    "ov_table": (checks.check_ov_table, checks.ov_table),
    "qk_table": (checks.check_qk_table, checks.qk_table),
    "direct_logit_attribution": (checks.check_direct_logit_attribution, checks.direct_logit_attribution),
    "patch_resid_grid": (checks.check_patch_resid_grid, checks.patch_resid_grid),
    "patch_head_grid": (checks.check_patch_head_grid, checks.patch_head_grid),
    "attribution_patch_heads": (checks.check_attribution_patch_heads, checks.attribution_patch_heads),
    "path_patch": (checks.check_path_patch, checks.path_patch),
}


@pytest.mark.parametrize("name", PURE)
def test_accepts_reference_and_skips_stub(name, capsys):
    check, reference = PURE[name]
    assert check(reference) is reference
    assert check(stub) is reference
    out = capsys.readouterr().out
    assert "cases pass" in out and "not done yet" in out and out.count("\n") == 2


@pytest.mark.parametrize("name", WITH_MODEL)
def test_model_checks_accept_reference_and_skip_stub(name, model, capsys):
    check, reference = WITH_MODEL[name]
    assert check(reference, model) is reference
    assert check(stub, model) is reference
    out = capsys.readouterr().out
    assert "cases pass" in out and "not done yet" in out


def test_checks_pass_with_gradients_off(model, capsys):
    """The notebook turns gradients off globally; attribution patching must still work there."""
    with torch.no_grad():
        checks.check_attribution_patch_heads(checks.attribution_patch_heads, model)
        checks.check_logit_diff(checks.logit_diff)
    assert capsys.readouterr().out.count("cases pass") == 2


def test_accepts_other_correct_implementations(model):
    def parts_by_hand(m, cache):
        heads = [torch.einsum("bphd,hdm->hbpm", cache["z", l], m.W_O[l]) for l in range(m.cfg.n_layers)]
        mlps = [cache["mlp_out", l][None] for l in range(m.cfg.n_layers)]
        bias = m.b_O.sum(0).expand_as(cache["embed"])[None]
        labels = [f"L{l}H{h}" for l in range(m.cfg.n_layers) for h in range(m.cfg.n_heads)]
        labels += [f"{l}_mlp_out" for l in range(m.cfg.n_layers)] + ["embed", "pos_embed", "bias"]
        return torch.cat(heads + mlps + [cache["embed"][None], cache["pos_embed"][None], bias]), labels

    checks.check_residual_parts(parts_by_hand, model)
    checks.check_direct_path_logits(lambda m, t: m.ln_final(m.W_E[t]) @ m.W_U + m.b_U, model)
    checks.check_logit_diff(lambda l, a, w: l.log_softmax(-1)[torch.arange(len(a)), -1, a]
                            - l.log_softmax(-1)[torch.arange(len(a)), -1, w])   # log-probs differ by the same

    def patch_in_place_returning_none(activation, hook, pos, clean_cache):
        activation[:, pos, ...] = clean_cache[hook.name][:, pos, ...]

    checks.check_patch_resid_hook(patch_in_place_returning_none)

    def dla_by_hand(m, cache, stack, a, w):
        scale = cache["ln_final.hook_scale"][:, -1]                          # [batch, 1]
        centred = stack - stack.mean(-1, keepdim=True)
        return torch.einsum("nbd,bd->nb", centred / scale * m.ln_final.weight, m.W_U[:, a].T - m.W_U[:, w].T)

    checks.check_direct_logit_attribution(dla_by_hand, model)


# ----------------------------------------------------------------------------- wrong answers, each check

def _parts_without(label):
    def wrong(m, c):
        stack, labels = checks.residual_parts(m, c)
        keep = [i for i, name in enumerate(labels) if not name.endswith(label)]
        return stack[keep], [labels[i] for i in keep]
    return wrong


def _parts_edit(edit):
    def wrong(m, c):
        stack, labels = checks.residual_parts(m, c)
        return edit(stack, m, c), labels
    return wrong


def _edits_cache(m, c):
    c["blocks.0.hook_resid_pre"].zero_()
    return checks.residual_parts(m, c)


WRONG_PARTS = {
    "no biases": (_parts_without("bias"), "biases are missing"),
    "no MLPs": (_parts_without("mlp_out"), "MLP outputs are missing"),
    "no position embedding": (_parts_without("pos_embed"), "position embedding is missing"),
    "attention outputs, not heads": (lambda m, c: (torch.stack([c["attn_out", l] for l in range(m.cfg.n_layers)]),
                                                   [f"{l}_attn_out" for l in range(m.cfg.n_layers)]), None),
    "W_O of the next layer": (_parts_edit(lambda s, m, c: torch.cat([torch.einsum(
        "bphd,hdm->hbpm", c["z", l], m.W_O[(l + 1) % m.cfg.n_layers]) for l in range(m.cfg.n_layers)] + [s[m.cfg.n_layers * m.cfg.n_heads:]])),
        "do not sum"),
    "labels missing": (lambda m, c: (checks.residual_parts(m, c)[0], []), "labels"),
    "only the stack": (lambda m, c: checks.residual_parts(m, c)[0], "pair"),
    "float64": (_parts_edit(lambda s, m, c: s.double()), "float64"),
    "edits the cache": (_edits_cache, "in place"),
}


@pytest.mark.parametrize("name", WRONG_PARTS)
def test_residual_parts_rejects(name, model):
    wrong, match = WRONG_PARTS[name]
    rejects(checks.check_residual_parts, wrong, match, model)


WRONG_DIRECT = {
    "no final norm": (lambda m, t: m.W_E[t] @ m.W_U + m.b_U, "without the final norm"),
    "position 0 added": (lambda m, t: lens.logit_lens(m, m.W_E[t] + m.W_pos[0]), "position embedding"),
    "W_E @ W_E.T": (lambda m, t: lens.apply_ln_final(m, m.W_E[t]) @ m.W_E.T * 2, None),
    "transposed": (lambda m, t: checks.direct_path_logits(m, t).T, "shape"),
    "float64": (lambda m, t: checks.direct_path_logits(m, t).double(), "float64"),
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
    "value bias": (lambda m, l, h, x: checks._unembed_direction(m, (x @ m.W_V[l, h] + m.b_V[l, h]) @ m.W_O[l, h]), "b_V"),
    "next head": (lambda m, l, h, x: checks.ov_table(m, l, (h + 1) % m.cfg.n_heads, x), "another head"),
    "W_Q instead of W_V": (lambda m, l, h, x: checks._unembed_direction(m, x @ m.W_Q[l, h] @ m.W_O[l, h]), None),
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


def _at(pos):
    def wrong(l, a, w):
        rows = torch.arange(l.shape[0])
        return l[rows, pos, a] - l[rows, pos, w]
    return wrong


WRONG_LOGIT_DIFF = {
    "sign": (lambda l, a, w: -checks.logit_diff(l, a, w), "sign"),
    "first position": (_at(0), "first position"),
    "second-last position": (_at(-2), "second-last"),
    "probabilities": (lambda l, a, w: checks.logit_diff(l.softmax(-1), a, w), "probabilities"),
    "mean over batch": (lambda l, a, w: checks.logit_diff(l, a, w).mean(), "one difference per prompt"),
    "no gradient": (lambda l, a, w: checks.logit_diff(l, a, w).detach(), "gradient"),
    "through .item()": (lambda l, a, w: torch.tensor([checks.logit_diff(l, a, w)[i].item() for i in range(len(a))]),
                        "gradient"),
    "float64": (lambda l, a, w: checks.logit_diff(l, a, w).double(), "float64"),
    "edits logits": (lambda l, a, w: checks.logit_diff(l.detach().sub_(1), a, w), "in place"),
}


@pytest.mark.parametrize("name", WRONG_LOGIT_DIFF)
def test_logit_diff_rejects(name):
    wrong, match = WRONG_LOGIT_DIFF[name]
    rejects(checks.check_logit_diff, wrong, match)


def _direction(m, a, w):
    return m.W_U.T[a] - m.W_U.T[w]


WRONG_DLA = {
    "norm ignored": (lambda m, c, s, a, w: (s * _direction(m, a, w)).sum(-1), "final norm is ignored"),
    "own scale per part": (lambda m, c, s, a, w: (m.ln_final(s) * _direction(m, a, w)).sum(-1), "own scale"),
    "scale at position 0": (lambda m, c, s, a, w: ((s - s.mean(-1, keepdim=True)) / c["ln_final.hook_scale"][:, 0]
                                                   * m.ln_final.weight * _direction(m, a, w)).sum(-1), "first position"),
    "not centred": (lambda m, c, s, a, w: (s / c["ln_final.hook_scale"][:, -1] * m.ln_final.weight
                                           * _direction(m, a, w)).sum(-1), "not centred"),
    "no weight": (lambda m, c, s, a, w: ((s - s.mean(-1, keepdim=True)) / c["ln_final.hook_scale"][:, -1]
                                         * _direction(m, a, w)).sum(-1), "weight is missing"),
    "sign": (lambda m, c, s, a, w: -checks.direct_logit_attribution(m, c, s, a, w), "sign"),
    "summed over parts": (lambda m, c, s, a, w: checks.direct_logit_attribution(m, c, s, a, w).sum(0), "shape"),
    "bias included": (lambda m, c, s, a, w: checks.direct_logit_attribution(m, c, s, a, w)
                      + (m.ln_final.bias * _direction(m, a, w)).sum(-1), None),
}


@pytest.mark.parametrize("name", WRONG_DLA)
def test_direct_logit_attribution_rejects(name, model):
    wrong, match = WRONG_DLA[name]
    rejects(checks.check_direct_logit_attribution, wrong, match, model)


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


def _grid_at(activation):
    return lambda m, t, c, metric: patching.resid_patching_grid(m, t, c, metric, activation)


WRONG_GRID = {
    "resid_post": (_grid_at("resid_post"), "resid_post"),
    "resid_mid": (_grid_at("resid_mid"), "resid_mid"),
    "attn_out": (_grid_at("attn_out"), None),
    "transposed": (lambda m, t, c, metric: checks.patch_resid_grid(m, t, c, metric).T, "shape"),
    "normalised": (lambda m, t, c, metric: patching.normalized(checks.patch_resid_grid(m, t, c, metric),
                                                               float(metric(m(t))) + 1, float(metric(m(t)))), None),
    "float64": (lambda m, t, c, metric: checks.patch_resid_grid(m, t, c, metric).double(), "float64"),
}


@pytest.mark.parametrize("name", WRONG_GRID)
def test_patch_resid_grid_rejects(name, model):
    wrong, match = WRONG_GRID[name]
    rejects(checks.check_patch_resid_grid, wrong, match, model)


def _heads_with(hook_fn):
    def wrong(m, t, c, metric):
        grid = torch.zeros(m.cfg.n_layers, m.cfg.n_heads)
        for layer in range(m.cfg.n_layers):
            for head in range(m.cfg.n_heads):
                hook = functools.partial(hook_fn, head=head, c=c)
                grid[layer, head] = float(metric(m.run_with_hooks(t, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])))
        return grid
    return wrong


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


WRONG_HEADS = {
    "last position only": (_heads_with(_z_last), "only the last position"),
    "position axis": (_heads_with(_z_pos_axis), "patched a position"),
    "the next layer's clean z": (_heads_with(_z_next_layer), None),
    "transposed": (lambda m, t, c, metric: checks.patch_head_grid(m, t, c, metric).T, "shape"),
}


@pytest.mark.parametrize("name", WRONG_HEADS)
def test_patch_head_grid_rejects(name, model):
    wrong, match = WRONG_HEADS[name]
    rejects(checks.check_patch_head_grid, wrong, match, model)


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
    "gradient times clean activation": (lambda m, a, b, metric: checks.attribution_patch_heads(m, a, b, metric) * 0.5, None),
}


@pytest.mark.parametrize("name", WRONG_ATTRIBUTION)
def test_attribution_patch_heads_rejects(name, model):
    wrong, match = WRONG_ATTRIBUTION[name]
    rejects(checks.check_attribution_patch_heads, wrong, match, model)


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


def _ablate_edit(edit):
    def wrong(z, head, mode, reference):
        out = checks.ablate_head_z(z, head, mode, reference)
        return edit(out, z, head, mode, reference)
    return wrong


def _ablate_in_place(z, head, mode, reference):
    z[:, :, head] = 0.0 if mode == "zero" else reference[:, :, head].mean(0) if mode == "mean" else reference[:, :, head]
    return z


WRONG_ABLATE = {
    "mean over positions too": (_ablate_edit(lambda o, z, h, mode, r: checks.ablate_head_z(z, h, "zero", r) + r[:, :, h].mean(
        (0, 1))[None, None, None] * (torch.arange(z.shape[2]) == h)[None, None, :, None] if mode == "mean" else o),
        "not over positions too"),
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
