"""Checks for notebook 02, sections 2.5 to 2.7: causal interventions. A hook that patches one position,
the layer x position and per-head patching grids, path patching, attribution patching for every head,
and zero, mean and resample ablation of one head; and their references (the library's `patching`
wherever it has one).

Hooks take TransformerLens's form `fn(activation, hook)`; the checks call the learner's hook with real
hook points, on a copy of the activation, as a forward pass would.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from course_utils import patching
from course_utils.cache import ActivationCache
from course_utils.checks import Case, run_check
from course_utils.checks.mistakes import expect_shape, recognise, returns_something, rng
from course_utils.checks.residual_attribution import cache_dict, cached, logit_diff, random_prompts, run_cached
from course_utils.hook_points import HookPoint
from course_utils.hooked_model import HookedModel

# ----------------------------------------------------------------------------- references

patch_resid_hook = patching.patch_resid_hook              # hook: clean activation at one position
patch_resid_grid = patching.resid_patching_grid           # -> [n_layers, pos]
patch_head_grid = patching.head_patching_grid             # -> [n_layers, n_heads]
attribution_patch_heads = patching.attribution_patching_heads   # -> [n_layers, n_heads]
path_patch = patching.path_patching_grid                  # -> [3 (q, k, v), n_heads]
MODES = ("zero", "mean", "resample")


def ablate_head_z(z: torch.Tensor, head: int, mode: str, reference: torch.Tensor) -> torch.Tensor:
    """z [batch, pos, head, d_head] with one head's output replaced: by zeros ("zero"), by its mean over the
    reference prompts at each position ("mean"), or by its value on the reference prompt of the same index
    ("resample"). reference [ref_batch, pos, head, d_head], the same positions (ref_batch = batch to resample)."""
    if mode not in MODES:
        raise ValueError(f"mode should be 'zero', 'mean' or 'resample', not {mode!r}.")
    z = z.clone()
    if mode == "zero":
        z[:, :, head] = 0.0
    elif mode == "mean":
        z[:, :, head] = reference[:, :, head].mean(0)                          # [pos, d_head] broadcasts
    else:
        z[:, :, head] = reference[:, :, head]
    return z


# ----------------------------------------------------------------------------- cases

def _pair(model: HookedModel, batch: int, pos: int, seed: int, changed: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean tokens and corrupted ones that differ at the positions `changed`."""
    clean = random_prompts(model, batch, pos, seed)
    corrupted = clean.clone()
    for p in changed:
        corrupted[:, p] = (clean[:, p] + 1 + torch.arange(batch, device=clean.device) * 7) % (model.cfg.d_vocab - 1) + 1
    return clean, corrupted


def _metric(model: HookedModel, batch: int, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    answers = torch.randint(1, model.cfg.d_vocab, (batch,), generator=rng(seed))
    wrongs = (answers + 3) % model.cfg.d_vocab
    return lambda logits: logit_diff(logits, answers, wrongs).mean()


def _patching_cases(model: HookedModel, seed: int) -> list[Case]:
    out = []
    for batch, pos, changed, label in [(2, 6, (3,), "one token changed"), (3, 5, (1, 4), "two tokens changed"),
                                       (1, 4, (3,), "the last token changed")]:
        clean, corrupted = _pair(model, batch, pos, seed + batch, changed)
        out.append(Case((model, corrupted, cache_dict(model, clean), _metric(model, batch, seed)), label=label))
    return out


def _grid_of(hook_fn: Callable) -> Callable:
    """A per-head patching grid made with `hook_fn(z, hook, head, c)`, c the clean cache: for wrong variants."""
    def grid(m, t, c, metric):
        out = torch.zeros(m.cfg.n_layers, m.cfg.n_heads)
        for layer in range(m.cfg.n_layers):
            for head in range(m.cfg.n_heads):
                hook = functools.partial(hook_fn, head=head, c=c)
                out[layer, head] = float(metric(m.run_with_hooks(t, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])))
        return out
    return grid


# ----------------------------------------------------------------------------- 2.5 activation patching

def _as_hook(fn: Callable) -> Callable:
    """Call a hook as a forward pass does: on an activation it may edit in place (so on a copy here), and
    take what it returns, or the edited activation if it returns None."""
    @functools.wraps(fn)
    def run(activation, hook, *rest):
        mine = activation.clone()
        out = fn(mine, HookPoint(hook), *rest)
        return mine if out is None else out
    return run


def check_patch_resid_hook(fn: Callable) -> Callable:
    """activation[:, pos] = clean_cache[hook.name][:, pos]; everything else as it was."""
    g = rng(60)
    names = ("blocks.1.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.1.attn.hook_z")
    store = {names[0]: torch.randn(2, 6, 8, generator=g), names[1]: torch.randn(2, 6, 8, generator=g),
             names[2]: torch.randn(3, 5, 4, 2, generator=g)}
    running = {n: torch.randn(v.shape, generator=g) for n, v in store.items()}

    def shifted(by: int) -> Callable:
        def wrong(a, h, pos, c):
            a = a.clone()
            a[:, pos + by] = c[h][:, pos + by]
            return a
        return wrong

    def other_name(a, h, pos, c):
        other = next(n for n in c if n != h and c[n].shape == a.shape)
        a = a.clone()
        a[:, pos] = c[other][:, pos]
        return a

    def batch_axis(a, h, pos, c):
        a = a.clone()
        a[pos] = c[h][pos]
        return a

    mistakes = {"every position was patched: write the clean activation at position `pos` only, activation[:, pos]":
                lambda a, h, pos, c: c[h].clone(),
                "off by one: patch position `pos` itself (activation[:, pos]), not pos + 1": shifted(1),
                "off by one: patch position `pos` itself (activation[:, pos]), not pos - 1": shifted(-1),
                "this reads another hook's clean activation: use clean_cache[hook.name]": other_name,
                "the position axis is the second one: activation[:, pos] (activation is [batch, pos, ...])": batch_axis}

    def returned_tensor(case: Case, got: Any) -> str | None:
        return None if isinstance(got, torch.Tensor) else f"return the patched activation, not {type(got).__name__}"

    cases = [Case((running[names[0]], names[0], 2, store), label="resid_pre, position 2"),
             Case((running[names[1]], names[1], 0, store), label="attn_out, position 0"),
             Case((running[names[0]], names[0], -1, store), label="the last position, as -1"),
             Case((running[names[2]], names[2], 3, store), label="a 4-d activation (hook_z)")]
    mine, ref = _as_hook(fn), _as_hook(patch_resid_hook)
    result = run_check("patch_resid_hook", mine, ref, cases,
                       properties=[returned_tensor, recognise(mistakes, ref, atol=1e-6)])
    return fn if result is mine else patch_resid_hook


def check_patch_resid_grid(fn: Callable, model: HookedModel) -> Callable:
    """The metric after patching blocks.{layer}.hook_resid_pre at one position, for every layer and position."""
    L = model.cfg.n_layers

    def every_position(m, t, c, metric):
        grid = torch.zeros(L, t.shape[1])
        for layer in range(L):
            name = f"blocks.{layer}.hook_resid_pre"
            grid[layer] = float(metric(m.run_with_hooks(t, fwd_hooks=[(name, lambda a, hook: c[hook.name])])))
        return grid

    mistakes = {"this patches resid_post (or resid_mid, the same thing here: the MLP works position by position), "
                "the stream *leaving* each layer: patch blocks.{layer}.hook_resid_pre, the stream entering it":
                lambda m, t, c, metric: patch_resid_grid(m, t, ActivationCache(c, m), metric, "resid_post"),
                "each run patched every position at once: patch one position per run": every_position}
    shape = expect_shape(lambda c: (L, c.args[1].shape[1]), "[n_layers, pos]")
    return run_cached("patch_resid_grid", fn, patch_resid_grid, model, 2, _patching_cases(model, 70), atol=1e-3,
                      rtol=1e-3, properties=[shape, recognise(mistakes, cached(patch_resid_grid, 2), atol=1e-3, rtol=1e-3)],
                      dims=("layer", "pos"))


def check_patch_head_grid(fn: Callable, model: HookedModel) -> Callable:
    """The metric after patching one head's z (every position), for every head."""
    def last_only(z, hook, head, c):
        z[:, -1, head] = c[hook.name][:, -1, head]
        return z

    def position_axis(z, hook, head, c):
        z[:, head] = c[hook.name][:, head]
        return z

    mistakes = {"only the last position was patched: patch the head at every position, z[:, :, head]": _grid_of(last_only),
                "this patched a position, not a head: z is [batch, pos, head, d_head], so the head is z[:, :, head]":
                _grid_of(position_axis)}
    shape = expect_shape(lambda c: (model.cfg.n_layers, model.cfg.n_heads), "[n_layers, n_heads]")
    return run_cached("patch_head_grid", fn, patch_head_grid, model, 2, _patching_cases(model, 80), atol=1e-3, rtol=1e-3,
                      properties=[shape, recognise(mistakes, cached(patch_head_grid, 2), atol=1e-3, rtol=1e-3)],
                      dims=("layer", "head"))


def check_path_patch(fn: Callable, model: HookedModel) -> Callable:
    """Pass 1: sender patched, MLPs and other heads in between frozen, cache the receivers' q, k, v. Pass 2: one
    receiver head's q, k or v from pass 1. -> [3, n_heads]."""
    L, H = model.cfg.n_layers, model.cfg.n_heads

    def one_pass(m, t, c, x, sender, r, metric, freeze_mlps=True, freeze_heads=True, order="qkv"):
        ls, hs = sender
        hooks = [(f"blocks.{ls}.attn.hook_z", functools.partial(patching.patch_head_hook, head=hs, clean_cache=c))]
        for layer in range(ls, r):
            if freeze_mlps:
                hooks.append((f"blocks.{layer}.hook_mlp_out", lambda a, hook: x[hook.name]))
            if freeze_heads and layer > ls:
                hooks.append((f"blocks.{layer}.attn.hook_z", lambda a, hook: x[hook.name]))
        names = [f"blocks.{r}.attn.hook_{i}" for i in order]
        with m.hooks(hooks):
            sent = m.run_with_cache(t, names_filter=names)[1]
        grid = torch.zeros(3, H)
        for i, name in enumerate(names):
            for h in range(H):
                hook = functools.partial(patching.patch_head_hook, head=h, clean_cache=sent)
                grid[i, h] = float(metric(m.run_with_hooks(t, fwd_hooks=[(name, hook)])))
        return grid

    mistakes = {"the MLPs between sender and receivers must keep their corrupted values (hook_mlp_out): only the "
                "direct path from the sender's output to the receiver's input counts":
                lambda *a: one_pass(*a, freeze_mlps=False),
                "the heads of the layers between sender and receivers must keep their corrupted values (their hook_z): "
                "only the direct path counts": lambda *a: one_pass(*a, freeze_heads=False),
                "the rows are in the wrong order: queries, then keys, then values": lambda *a: one_pass(*a, order="kqv")}
    cases = []
    for batch, pos, changed, sender, receiver, label in [
            (2, 6, (2,), (0, 1), L - 1, "sender in layer 0, receivers in the last layer"),
            (3, 5, (1, 3), (L - 2, H - 1), L - 1, "the last two layers"), (1, 4, (1,), (0, 0), 1, "one prompt")]:
        clean, corrupted = _pair(model, batch, pos, 110 + batch, changed)
        cases.append(Case((model, corrupted, cache_dict(model, clean), cache_dict(model, corrupted), sender, receiver,
                           _metric(model, batch, batch)), label=label))
    shape = expect_shape(lambda c: (3, H), "[3 (q, k, v), n_heads]")
    return run_cached("path_patch", fn, path_patch, model, (2, 3), cases, atol=1e-3, rtol=1e-3,
                      properties=[shape, recognise(mistakes, cached(path_patch, 2, 3), atol=1e-3, rtol=1e-3)],
                      dims=("input", "head"))


# ----------------------------------------------------------------------------- 2.6 attribution patching

def check_attribution_patch_heads(fn: Callable, model: HookedModel) -> Callable:
    """For each head: (clean z - corrupted z) . d metric / d z on the corrupted run, summed over batch, pos, d_head."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]

    def estimate(m, clean, corrupted, metric, grad_run: str = "corrupted", sign: float = 1.0):
        _, c = m.run_with_cache(clean, names_filter=names)
        _, x = m.run_with_cache(corrupted, names_filter=names)
        with torch.enable_grad():
            logits, run = m.run_with_cache(clean if grad_run == "clean" else corrupted, names_filter=names, grad=True)
            grads = torch.autograd.grad(metric(logits), [run[n] for n in names])
        return torch.stack([(sign * (c[n] - x[n]) * g).sum((0, 1, 3)) for n, g in zip(names, grads)])

    mistakes = {"the gradient is the clean run's: attribution patching takes the metric's gradient on the corrupted "
                "run, the point it extrapolates from": lambda m, a, b, metric: estimate(m, a, b, metric, "clean"),
                "the wrong sign: the change is clean minus corrupted (what patching writes in, minus what was there)":
                lambda m, a, b, metric: estimate(m, a, b, metric, sign=-1.0)}
    cases = []
    for batch, pos, changed, seed, label in [(2, 6, (3,), 90, "one token changed"), (3, 5, (1, 4), 91, "two tokens changed")]:
        clean, corrupted = _pair(model, batch, pos, seed, changed)
        cases.append(Case((model, clean, corrupted, _metric(model, batch, seed)), label=label))
    shape = expect_shape(lambda c: (model.cfg.n_layers, model.cfg.n_heads), "[n_layers, n_heads] (summed over the "
                         "batch, positions and d_head)")
    return run_check("attribution_patch_heads", fn, attribution_patch_heads, cases, atol=1e-3, rtol=1e-3,
                     properties=[shape, recognise(mistakes, attribution_patch_heads, atol=1e-3, rtol=1e-3)],
                     dims=("layer", "head"))


# ----------------------------------------------------------------------------- 2.7 ablation choices

def check_ablate_head_z(fn: Callable) -> Callable:
    """Zero, the reference prompts' mean at each position, or the reference prompt of the same index."""
    g = rng(100)
    z = torch.randn(3, 5, 4, 2, generator=g) + torch.arange(5.0)[:, None, None]          # [batch, pos, head, d_head]
    reference = torch.randn(3, 5, 4, 2, generator=g) * 2 - torch.arange(5.0)[:, None, None]
    big_reference = torch.randn(6, 5, 4, 2, generator=g) + 3.0

    def replaced(z, head, value):
        z = z.clone()
        z[:, :, head] = value
        return z

    def unless(mode: str, wrong: Callable) -> Callable:
        """The reference in every mode but `mode`, where it is `wrong`."""
        return lambda z, h, m, r: wrong(z, h, r) if m == mode else ablate_head_z(z, h, m, r)

    mistakes = {
        "the mean should be over the reference prompts only, one vector per position, not over positions too":
        unless("mean", lambda z, h, r: replaced(z, h, r[:, :, h].mean((0, 1)))),
        "the mean should come from the reference prompts, not from the prompts being ablated":
        unless("mean", lambda z, h, r: replaced(z, h, z[:, :, h].mean(0))),
        "resampling replaces the head's output with the reference prompts' output for the same head":
        unless("resample", lambda z, h, r: z.clone()),
        "this changed a position, not a head: z is [batch, pos, head, d_head], so the head is z[:, :, head]":
        unless("zero", lambda z, h, r: torch.cat([z[:, :h], torch.zeros_like(z[:, h:h + 1]), z[:, h + 1:]], 1))}

    def others_kept(case: Case, got: Any) -> str | None:
        z_in, head = case.args[0], case.args[1]
        if isinstance(got, torch.Tensor) and got.shape == z_in.shape and got.dtype == z_in.dtype:
            others = [h for h in range(z_in.shape[2]) if h != head]
            if not torch.allclose(got[:, :, others], z_in[:, :, others]):
                return f"heads other than {head} should be left as they are"
        return None

    cases = [Case((z, 1, "zero", reference), label="zero, head 1"), Case((z, 2, "mean", reference), label="mean, head 2"),
             Case((z, 0, "mean", big_reference), label="mean over 6 reference prompts"),
             Case((z, 3, "resample", reference), label="resample, head 3"),
             Case((z[:, :4, :4], 2, "zero", reference[:, :4]), label="zero, as many positions as heads")]
    returned = returns_something("return the new z: a hook that returns None leaves the activation as it was")
    return run_check("ablate_head_z", fn, ablate_head_z, cases,
                     properties=[returned, recognise(mistakes, ablate_head_z), others_kept])
