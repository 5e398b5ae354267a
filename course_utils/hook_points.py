"""Hook points: where each TransformerLens-named activation lives inside a Hugging Face model, and how
a hook function is attached there and taken away again.

A hook function is `fn(activation, hook)`. It returns a replacement tensor of the same shape, or None
to leave the activation as it is (or as it edited it in place). `hook` is a `HookPoint`: the hook's name as a plain string (so
`fn(act, name)` code works too) that also has TransformerLens's `hook.name`, `hook.layer()` and
`hook.ctx`.

Most points are PyTorch forward hooks on the model's own modules (a module's input or output). Three
live inside the course's attention kernel (`attention.py`): attn_scores, pattern and z. Three are
derived where they are used:
  * q, k, v are views into the output of the query/key/value projection, before rotary embeddings;
  * a norm's scale is computed from the norm's input; a hook that replaces it makes the norm's output
    use the new scale;
  * resid_mid = resid_pre + attn_out; a hook that replaces it rewrites the attention output.
Nothing here runs unless a hook is attached, so a plain forward pass costs what it costs in transformers.
"""

from __future__ import annotations

import inspect
import re
import weakref
from typing import Callable

import torch
from torch import nn

from course_utils import attention
from course_utils.errors import CourseError
from course_utils.families import Family, qkv_view, qkv_write

# Points of one block, in the order a forward pass meets them.
BLOCK_POINTS = ("hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
                "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
                "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post",
                "hook_mlp_out", "hook_resid_post")
KERNEL_POINTS = ("attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z")


class HookPoint(str):
    """The name of a hook point, passed to hook functions as their second argument.

    It is a `str` (`==`, dict keys, `startswith` and f-strings all see the name) with TransformerLens's
    everyday attributes: `hook.name`, `hook.layer()`, and `hook.ctx`, a dict that lives as long as the
    hooks are attached (one `run_with_hooks` call, or one `with model.hooks(...)` block).
    """

    ctx: dict

    def __new__(cls, name: str) -> "HookPoint":
        point = super().__new__(cls, name)
        point.ctx = {}
        return point

    @property
    def name(self) -> str:
        return str(self)

    def layer(self) -> int:
        """The block this point belongs to: 1 for 'blocks.1.attn.hook_z'."""
        match = re.match(r"blocks\.(\d+)\.", self)
        if match is None:
            raise CourseError(f"{str(self)!r} belongs to no block, so it has no layer.")
        return int(match.group(1))


def hook_names(family: Family, n_layers: int, parallel_residual: bool) -> list[str]:
    """Every hook point of a model, in forward order."""
    names = ["hook_embed"] + (["hook_pos_embed"] if family.pos_embed else [])
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{p}" for p in BLOCK_POINTS if not (parallel_residual and p == "hook_resid_mid")]
    return names + ["ln_final.hook_scale", "ln_final.hook_normalized"]


def caller(fn: Callable) -> Callable[[torch.Tensor, HookPoint], object]:
    """Call `fn` as TransformerLens would: `hook` by keyword when `fn` names it anywhere but second
    (e.g. `partial(f, head=3)` of `f(z, head, hook)`), else positionally (so `fn(act, name)` works)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fn
    for i, p in enumerate(params):
        if p.name == "hook" and (i != 1 or p.kind is p.KEYWORD_ONLY):
            return lambda act, point: fn(act, hook=point)
    return fn


def run_hooks(point: HookPoint, fns: list[Callable], act: torch.Tensor) -> torch.Tensor:
    """Pass `act` through the hook functions in turn; each may replace it (same shape) or return None."""
    for fn in fns:
        out = fn(act, point)
        if out is None:
            continue
        if not isinstance(out, torch.Tensor):
            raise CourseError(f"The hook on {point} returned a {type(out).__name__}; return a tensor shaped like "
                              "its input, or None to leave the activation unchanged.")
        if out.shape != act.shape:
            raise CourseError(f"The hook on {point} returned shape {tuple(out.shape)}, but the activation has shape "
                              f"{tuple(act.shape)}; return a tensor of the same shape.")
        act = out.to(device=act.device, dtype=act.dtype)
    return act


def attach(model, name: str, fns: list[Callable]) -> list:
    """Attach hook functions to the point `name` of a HookedModel; returns handles with `.remove()`."""
    point = HookPoint(name)
    fns = [caller(fn) for fn in fns]
    run = lambda act: run_hooks(point, fns, act)  # noqa: E731
    fam: Family = model.family
    if name == "hook_embed":
        return [_on_output(model.model.get_submodule(fam.embed), run)]
    if name == "hook_pos_embed":
        return _attach_pos_embed(model, run)
    if name.startswith("ln_final."):
        return [_attach_norm(model.ln_final, name.removeprefix("ln_final."), fam.norm, run)]
    layer, where = re.fullmatch(r"blocks\.(\d+)\.(.+)", name).groups()
    block = model.block(int(layer))
    if where in KERNEL_POINTS:
        return [_KernelHandle(block.get_submodule(fam.attn), where.removeprefix("attn.hook_"), run)]
    if where in ("attn.hook_q", "attn.hook_k", "attn.hook_v"):
        which = "qkv".index(where[-1])
        return [_attach_qkv(block.get_submodule(fam.qkv[which]), fam, which, model.cfg, run)]
    if where.startswith(("ln1.", "ln2.")):
        norm = block.get_submodule(fam.ln1 if where.startswith("ln1.") else fam.ln2)
        return [_attach_norm(norm, where[4:], fam.norm, run)]
    if where == "hook_resid_mid":
        return _attach_resid_mid(block, block.get_submodule(fam.attn), run)
    module, side = {"hook_resid_pre": ("", "input"), "hook_attn_out": (fam.attn, "output"),
                    "mlp.hook_pre": (fam.mlp_in, "output"), "mlp.hook_post": (fam.mlp_out, "input"),
                    "hook_mlp_out": (fam.mlp, "output"), "hook_resid_post": ("", "output")}[where]
    module = block.get_submodule(module)
    return [_on_input(module, run) if side == "input" else _on_output(module, run)]


# ---- the ways of attaching ----------------------------------------------------------------------------
def _on_output(module: nn.Module, run: Callable):
    def hook(mod, args, output):
        if isinstance(output, tuple):
            return (run(output[0]),) + tuple(output[1:])
        return run(output)
    return module.register_forward_hook(hook)


def _on_input(module: nn.Module, run: Callable):
    def hook(mod, args, kwargs):
        if args:
            return (run(args[0]),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": run(kwargs["hidden_states"])}
    return module.register_forward_pre_hook(hook, with_kwargs=True)


class _KernelHandle:
    """One hook inside the attention kernel (attn_scores, pattern or z) of one attention module."""

    def __init__(self, module: nn.Module, point: str, fn: Callable):
        self.module, self.point, self.fn = module, point, fn
        attention.ACTIVE_HOOKS.setdefault(module, {}).setdefault(point, []).append(fn)

    def remove(self) -> None:
        hooks = attention.ACTIVE_HOOKS.get(self.module, {})
        fns = hooks.get(self.point, [])
        if self.fn in fns:
            fns.remove(self.fn)
        if not fns:
            hooks.pop(self.point, None)
        if not hooks:
            attention.ACTIVE_HOOKS.pop(self.module, None)


def _attach_pos_embed(model, run: Callable) -> list:
    """Position embeddings are computed once for the whole batch ([1, pos, d_model]); the hook sees
    them broadcast to [batch, pos, d_model] (a view, no copy), the shape TransformerLens shows. To
    change them, return a new tensor: a broadcast view cannot be edited in place."""
    batch: dict[str, int] = {}

    def note_batch(mod, args, output):
        batch["size"] = output.shape[0]

    def on_pos(mod, args, output):
        seen = output.expand(batch.get("size", output.shape[0]), *output.shape[1:])
        new = run(seen)
        return None if new is seen else new

    return [model.model.get_submodule(model.family.embed).register_forward_hook(note_batch),
            model.model.get_submodule(model.family.pos_embed).register_forward_hook(on_pos)]


def _attach_qkv(projection: nn.Module, family: Family, which: int, shape, run: Callable):
    """q, k or v [batch, pos, head, d_head] as a view into the projection's output (before rotary).
    Grouped-query models have n_key_value_heads heads in k and v, as in TransformerLens."""
    def hook(mod, args, output):
        part = qkv_view(family, output, which, shape)
        new = run(part)
        return None if new is part else qkv_write(family, output, which, new, shape)
    return projection.register_forward_hook(hook)


def norm_scale_of(x: torch.Tensor, norm_type: str, eps: float) -> torch.Tensor:
    """The divisor a LayerNorm or RMSNorm uses for `x` [..., d_model] -> [..., 1], in float32."""
    x = x.float()
    if norm_type == "layernorm":
        return (x.var(-1, keepdim=True, unbiased=False) + eps).sqrt()
    return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def norm_eps(norm: nn.Module) -> float:
    return getattr(norm, "eps", None) or getattr(norm, "variance_epsilon")


# norm module -> (its input in the current forward pass, the scale hooks have made of it so far), so
# that a second hook on the same scale (a cache inside a patch, say) sees what the first one wrote.
_SCALES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _attach_norm(norm: nn.Module, point: str, norm_type: str, run: Callable):
    """hook_normalized is the norm's output (after its weight and bias); hook_scale [batch, pos, 1] is
    its divisor. A replaced scale is used to compute the norm's output again, by the same formula."""
    if point == "hook_normalized":
        return _on_output(norm, run)

    def hook(mod, args, output):
        x = args[0]
        seen = _SCALES.get(norm)
        if seen is not None and seen[0]() is x:
            scale = seen[1]
        else:
            scale = norm_scale_of(x, norm_type, norm_eps(norm)).to(x.dtype)
        version = scale._version
        new = run(scale)
        _SCALES[norm] = (weakref.ref(x), new)
        if new is scale and scale._version == version:  # neither replaced nor edited in place
            return None
        centred = x.float() - x.float().mean(-1, keepdim=True) if norm_type == "layernorm" else x.float()
        out = (centred / new.float()).to(x.dtype) * norm.weight
        return out + norm.bias if getattr(norm, "bias", None) is not None else out
    return norm.register_forward_hook(hook)


def _attach_resid_mid(block: nn.Module, attn: nn.Module, run: Callable) -> list:
    """resid_mid = resid_pre + attn_out. To replace it, the attention output becomes new - resid_pre."""
    stash: dict[str, torch.Tensor] = {}

    def keep_input(module, args, kwargs):
        stash["resid_pre"] = args[0] if args else kwargs["hidden_states"]

    def on_attn(module, args, output):
        attn_out = output[0] if isinstance(output, tuple) else output
        mid = stash["resid_pre"] + attn_out
        version = mid._version
        new_mid = run(mid)
        if new_mid is mid and mid._version == version:  # neither replaced nor edited in place
            return None
        new_out = new_mid - stash["resid_pre"]
        return (new_out,) + tuple(output[1:]) if isinstance(output, tuple) else new_out

    return [block.register_forward_pre_hook(keep_input, with_kwargs=True), attn.register_forward_hook(on_attn)]
