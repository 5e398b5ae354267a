"""`HookedModel`: a Hugging Face causal LM with TransformerLens's hook points, read and written with
PyTorch hooks on the model itself (nothing is re-implemented but the attention kernel; see
`attention.py`).

    model = load_model()
    logits, cache = model.run_with_cache("def f(x):", names_filter=["blocks.0.attn.hook_pattern"])
    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head_3)])

A hook function is `fn(activation, hook_name)`; it returns a replacement tensor of the same shape,
or None to leave the activation as it is. Hooks live only inside `run_with_hooks` or the `hooks(...)`
context manager, and are removed on the way out, also when a hook raises.

Hook points, in the order a forward pass meets them (resid_mid is absent in parallel-residual models):
    hook_embed, hook_pos_embed                        [batch, pos, d_model]
    blocks.{l}.hook_resid_pre                         [batch, pos, d_model]
    blocks.{l}.attn.hook_pattern                      [batch, head, query_pos, key_pos]
    blocks.{l}.attn.hook_z                            [batch, pos, head, d_head]
    blocks.{l}.hook_attn_out, hook_resid_mid          [batch, pos, d_model]
    blocks.{l}.mlp.hook_pre, blocks.{l}.mlp.hook_post [batch, pos, d_mlp]
    blocks.{l}.hook_mlp_out, hook_resid_post          [batch, pos, d_model]
    ln_final.hook_normalized                          [batch, pos, d_model]
"""

from __future__ import annotations

import contextlib
import difflib
import re
from typing import Callable, Iterable

import torch
from torch import nn

from course_utils import attention
from course_utils.cache import ActivationCache
from course_utils.errors import CourseError
from course_utils.families import Family, check_layout, family_of, model_shape

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class _KernelHandle:
    """Adds one hook on the attention kernel (pattern or z) of one module; `remove` takes it away."""

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


def use_course_attention(model: nn.Module) -> None:
    """Switch `model` to the course's eager kernel, which exposes hook_pattern and hook_z."""
    name = attention.register()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


class HookedModel:
    """A Hugging Face causal LM with hook points, a cache, per-head weights and tokenizer helpers."""

    def __init__(self, model: nn.Module, tokenizer, family: Family | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.family = family or family_of(model.config.model_type)
        check_layout(model, self.family)
        self.cfg = model_shape(model.config)
        self.parallel_residual = self.family.parallel_residual(model.config)
        use_course_attention(model)
        self.hook_names = self._list_hook_names()

    # ---- structure -------------------------------------------------------------------------------
    def _list_hook_names(self) -> list[str]:
        names = ["hook_embed"] + (["hook_pos_embed"] if self.family.pos_embed else [])
        for l in range(self.cfg.n_layers):
            names += [f"blocks.{l}.{p}" for p in ("hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "hook_attn_out")]
            names += [] if self.parallel_residual else [f"blocks.{l}.hook_resid_mid"]
            names += [f"blocks.{l}.{p}" for p in ("mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")]
        return names + ["ln_final.hook_normalized"]

    def block(self, layer: int) -> nn.Module:
        return self.model.get_submodule(f"{self.family.blocks}.{layer}")

    def _sub(self, layer: int, path: str) -> nn.Module:
        return self.block(layer).get_submodule(path)

    @property
    def ln_final(self) -> nn.Module:
        return self.model.get_submodule(self.family.ln_final)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "HookedModel":
        self.model.to(device=device, dtype=dtype)
        return self

    # ---- tokens ----------------------------------------------------------------------------------
    @property
    def bos_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def to_tokens(self, text: str | list[str], prepend_bos: bool = True) -> torch.Tensor:
        """Text -> token ids [batch, pos], with the start token first unless `prepend_bos=False`.
        A list of texts of different lengths is padded on the right with the pad (or end) token."""
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        if prepend_bos:
            ids = [[self.bos_token_id] + row for row in ids]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.bos_token_id
        width = max(len(row) for row in ids)
        ids = [row + [pad] * (width - len(row)) for row in ids]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def to_str_tokens(self, tokens: str | torch.Tensor | list[int], prepend_bos: bool = True) -> list[str]:
        """One string per token, as it appears in the text (one sequence only)."""
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens, prepend_bos=prepend_bos)
        ids = torch.as_tensor(tokens).reshape(-1).tolist() if not isinstance(tokens, list) else tokens
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 2 and tokens.shape[0] != 1:
            raise CourseError(f"to_str_tokens takes one sequence, got a batch of {tokens.shape[0]}; index one row first.")
        return [self.tokenizer.decode([i]) for i in ids]

    def _as_tokens(self, tokens: str | list[str] | torch.Tensor) -> torch.Tensor:
        if isinstance(tokens, (str, list)):
            return self.to_tokens(tokens)
        if not isinstance(tokens, torch.Tensor) or tokens.dim() not in (1, 2) or tokens.is_floating_point():
            raise CourseError("Pass text, a list of texts, or integer token ids shaped [pos] or [batch, pos].")
        tokens = tokens[None] if tokens.dim() == 1 else tokens
        n_ctx = getattr(self.model.config, "n_positions", None) or getattr(self.model.config, "max_position_embeddings", None)
        if n_ctx and tokens.shape[1] > n_ctx:
            raise CourseError(f"{tokens.shape[1]} tokens is longer than this model's context of {n_ctx}; "
                              f"cut the input, e.g. tokens[:, :{n_ctx}].")
        return tokens.to(self.device)

    # ---- forward passes --------------------------------------------------------------------------
    def __call__(self, tokens: str | list[str] | torch.Tensor) -> torch.Tensor:
        """Logits [batch, pos, d_vocab]."""
        return self.model(input_ids=self._as_tokens(tokens), use_cache=False).logits

    def run_with_hooks(self, tokens, fwd_hooks: Iterable[tuple[str, HookFn]], grad: bool = False) -> torch.Tensor:
        """Logits [batch, pos, d_vocab] of a forward pass with `fwd_hooks` attached."""
        with self.hooks(fwd_hooks), torch.set_grad_enabled(grad):
            return self(tokens)

    def run_with_cache(self, tokens, names_filter: str | list[str] | Callable[[str], bool] | None = None,
                       grad: bool = False) -> tuple[torch.Tensor, ActivationCache]:
        """Logits and the activations named by `names_filter` (all if None), detached unless `grad`."""
        names = self._select(names_filter)
        store: dict[str, torch.Tensor] = {}

        def save(act: torch.Tensor, name: str) -> None:
            store[name] = act if grad else act.detach()

        with self.hooks([(n, save) for n in names]), torch.set_grad_enabled(grad):
            logits = self(tokens)
        return logits, ActivationCache(store, self.cfg.n_layers)

    def _select(self, names_filter) -> list[str]:
        if names_filter is None:
            return list(self.hook_names)
        if callable(names_filter):
            return [n for n in self.hook_names if names_filter(n)]
        names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
        for n in names:
            self._check_name(n)
        return names

    def _check_name(self, name: str) -> None:
        if name not in self.hook_names:
            close = difflib.get_close_matches(name, self.hook_names, n=1)
            extra = " (this model has a parallel residual: no resid_mid)" if "resid_mid" in name and self.parallel_residual else ""
            hint = f" Did you mean {close[0]!r}?" if close and not extra else ""
            raise CourseError(f"{name!r} is not a hook point of this model{extra}.{hint} "
                              "See model.hook_names for the full list.")

    # ---- hooks -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, HookFn]]):
        """Attach `fwd_hooks` for the duration of a `with` block; always removed on exit."""
        grouped: dict[str, list[HookFn]] = {}
        for name, fn in fwd_hooks:
            self._check_name(name)
            grouped.setdefault(name, []).append(fn)
        handles = []
        try:
            for name in sorted(grouped, key=self.hook_names.index):  # forward order
                handles += self._attach(name, grouped[name])
            yield self
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def _apply(name: str, fns: list[HookFn], act: torch.Tensor) -> torch.Tensor:
        for fn in fns:
            out = fn(act, name)
            if out is None:
                continue
            if not isinstance(out, torch.Tensor):
                raise CourseError(f"The hook on {name} returned a {type(out).__name__}; return a tensor "
                                  "shaped like its input, or None to leave the activation unchanged.")
            if out.shape != act.shape:
                raise CourseError(f"The hook on {name} returned shape {tuple(out.shape)}, but the activation "
                                  f"has shape {tuple(act.shape)}; return a tensor of the same shape.")
            act = out.to(device=act.device, dtype=act.dtype)
        return act

    def _attach(self, name: str, fns: list[HookFn]) -> list:
        run = lambda act: self._apply(name, fns, act)  # noqa: E731
        fam = self.family
        if name == "hook_embed":
            return [_on_output(self.model.get_submodule(fam.embed), run)]
        if name == "hook_pos_embed":
            return [_on_output(self.model.get_submodule(fam.pos_embed), run)]
        if name == "ln_final.hook_normalized":
            return [_on_output(self.ln_final, run)]
        layer, point = re.fullmatch(r"blocks\.(\d+)\.(.+)", name).groups()
        layer = int(layer)
        if point in ("attn.hook_pattern", "attn.hook_z"):
            return [_KernelHandle(self._sub(layer, fam.attn), point.removeprefix("attn.hook_"), run)]
        if point == "hook_resid_mid":
            return self._attach_resid_mid(layer, run)
        where = {"hook_resid_pre": (fam.blocks, "input"), "hook_attn_out": (fam.attn, "output"),
                 "mlp.hook_pre": (fam.mlp_in, "output"), "mlp.hook_post": (fam.mlp_out, "input"),
                 "hook_mlp_out": (fam.mlp, "output"), "hook_resid_post": (fam.blocks, "output")}[point]
        module = self.block(layer) if where[0] == fam.blocks else self._sub(layer, where[0])
        return [_on_input(module, run) if where[1] == "input" else _on_output(module, run)]

    def _attach_resid_mid(self, layer: int, run: Callable) -> list:
        """resid_mid = resid_pre + attn_out. To replace it, the attention output becomes new - resid_pre."""
        stash: dict[str, torch.Tensor] = {}

        def keep_input(module, args, kwargs):
            stash["resid_pre"] = args[0] if args else kwargs["hidden_states"]

        def on_attn(module, args, output):
            attn_out = output[0] if isinstance(output, tuple) else output
            mid = stash["resid_pre"] + attn_out
            new_mid = run(mid)
            if new_mid is mid:
                return None
            new_out = new_mid - stash["resid_pre"]
            return (new_out,) + tuple(output[1:]) if isinstance(output, tuple) else new_out

        return [self.block(layer).register_forward_pre_hook(keep_input, with_kwargs=True),
                self._sub(layer, self.family.attn).register_forward_hook(on_attn)]

    # ---- weights (TransformerLens names and shapes) -------------------------------------------------
    def _attn_weights(self, key: str) -> torch.Tensor:
        return torch.stack([self.family.attn_weights(self.block(l), self.cfg)[key] for l in range(self.cfg.n_layers)])

    W_Q = property(lambda self: self._attn_weights("W_Q"), doc="[n_layers, n_heads, d_model, d_head]")
    W_K = property(lambda self: self._attn_weights("W_K"), doc="[n_layers, n_heads, d_model, d_head]")
    W_V = property(lambda self: self._attn_weights("W_V"), doc="[n_layers, n_heads, d_model, d_head]")
    W_O = property(lambda self: self._attn_weights("W_O"), doc="[n_layers, n_heads, d_head, d_model]")
    b_Q = property(lambda self: self._attn_weights("b_Q"), doc="[n_layers, n_heads, d_head]")
    b_K = property(lambda self: self._attn_weights("b_K"), doc="[n_layers, n_heads, d_head]")
    b_V = property(lambda self: self._attn_weights("b_V"), doc="[n_layers, n_heads, d_head]")
    b_O = property(lambda self: self._attn_weights("b_O"), doc="[n_layers, d_model]")

    def _mlp_weight(self, path: str, bias: bool = False) -> torch.Tensor:
        def one(layer: int) -> torch.Tensor:
            mod = self._sub(layer, path)
            weight = mod.weight.T if isinstance(mod, nn.Linear) else mod.weight  # GPT-2's Conv1D is [in, out]
            if not bias:
                return weight
            return mod.bias if mod.bias is not None else weight.new_zeros(weight.shape[1])
        return torch.stack([one(l) for l in range(self.cfg.n_layers)])

    W_in = property(lambda self: self._mlp_weight(self.family.mlp_up or self.family.mlp_in),
                    doc="[n_layers, d_model, d_mlp] (the up projection in gated MLPs)")
    W_gate = property(lambda self: self._mlp_weight(self.family.mlp_in) if self.family.mlp_up else None,
                      doc="[n_layers, d_model, d_mlp], gated MLPs only")
    W_out = property(lambda self: self._mlp_weight(self.family.mlp_out), doc="[n_layers, d_mlp, d_model]")
    b_in = property(lambda self: self._mlp_weight(self.family.mlp_up or self.family.mlp_in, bias=True),
                    doc="[n_layers, d_mlp]")
    b_out = property(lambda self: self._mlp_weight(self.family.mlp_out, bias=True), doc="[n_layers, d_model]")
    W_E = property(lambda self: self.model.get_submodule(self.family.embed).weight, doc="[d_vocab, d_model]")
    W_pos = property(lambda self: self.model.get_submodule(self.family.pos_embed).weight
                     if self.family.pos_embed else None, doc="[n_ctx, d_model], learned positions only")
    W_U = property(lambda self: self.model.get_output_embeddings().weight.T, doc="[d_model, d_vocab]")

    @property
    def b_U(self) -> torch.Tensor:
        """[d_vocab]"""
        bias = self.model.get_output_embeddings().bias
        return bias if bias is not None else torch.zeros(self.cfg.d_vocab, device=self.device, dtype=self.dtype)

    def __repr__(self) -> str:
        c = self.cfg
        return (f"HookedModel({self.family.name}: {c.n_layers} layers, {c.n_heads} heads, d_model={c.d_model}, "
                f"d_head={c.d_head}, d_mlp={c.d_mlp}, d_vocab={c.d_vocab}; on {self.device}, {self.dtype})")


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
