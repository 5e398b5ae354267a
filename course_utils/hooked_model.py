"""`HookedModel`: a Hugging Face causal LM with TransformerLens's hook points, read and written with
PyTorch hooks on the model itself (nothing is re-implemented but the attention kernel; see
`attention.py` and `hook_points.py`).

    model = load_model()
    logits, cache = model.run_with_cache("def f(x):", names_filter=["blocks.0.attn.hook_pattern"])
    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head_3)])
    loss = model(tokens, return_type="loss")

A hook function is `fn(activation, hook)`, as in TransformerLens: `hook` is the hook point's name (a
`str`) with `hook.name` and `hook.layer()`. It returns a replacement tensor of the same shape, or None to
leave the activation as it is. Hooks live only inside `run_with_hooks`, `run_with_cache` or the
`hooks(...)` context manager, and are removed on the way out, also when a hook raises.

Hook points, in the order a forward pass meets them (resid_mid is absent in parallel-residual models):
    hook_embed, hook_pos_embed                          [batch, pos, d_model]
    blocks.{l}.hook_resid_pre                           [batch, pos, d_model]
    blocks.{l}.ln1.hook_scale, ln1.hook_normalized      [batch, pos, 1], [batch, pos, d_model]
    blocks.{l}.attn.hook_q, hook_k, hook_v              [batch, pos, head, d_head] (k, v: n_kv_heads heads)
    blocks.{l}.attn.hook_attn_scores, hook_pattern      [batch, head, query_pos, key_pos]
    blocks.{l}.attn.hook_z                              [batch, pos, head, d_head]
    blocks.{l}.hook_attn_out, hook_resid_mid            [batch, pos, d_model]
    blocks.{l}.ln2.hook_scale, ln2.hook_normalized      [batch, pos, 1], [batch, pos, d_model]
    blocks.{l}.mlp.hook_pre, blocks.{l}.mlp.hook_post   [batch, pos, d_mlp]
    blocks.{l}.hook_mlp_out, hook_resid_post            [batch, pos, d_model]
    ln_final.hook_scale, ln_final.hook_normalized       [batch, pos, 1], [batch, pos, d_model]
A norm's hook_normalized is its output after its weight and bias, so `normalized @ W_U + b_U` is the logits.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Callable, Iterable

import torch
from torch import nn

from course_utils import attention, hook_points
from course_utils.cache import ActivationCache
from course_utils.errors import CourseError
from course_utils.families import Family, check_layout, family_of, model_shape

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]
NameOrFilter = "str | Callable[[str], bool]"
RETURN_TYPES = ("logits", "loss", "both", None)


def use_course_attention(model: nn.Module) -> None:
    """Switch `model` to the course's eager kernel, which exposes attn_scores, pattern and z."""
    name = attention.register()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False) -> torch.Tensor:
    """Cross-entropy of predicting each next token: mean over batch and positions, or [batch, pos - 1]."""
    logprobs = logits.float().log_softmax(-1)[:, :-1]
    loss = -logprobs.gather(-1, tokens[:, 1:, None].to(logits.device))[..., 0]
    return loss if per_token else loss.mean()


class HookedModel:
    """A Hugging Face causal LM with hook points, a cache, per-head weights and tokenizer helpers."""

    def __init__(self, model: nn.Module, tokenizer, family: Family | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.family = family or family_of(model.config.model_type)
        check_layout(model, self.family)
        self.cfg = model_shape(model.config, self.family)
        self.cfg.device = self.device
        self.parallel_residual = self.family.parallel_residual(model.config)
        use_course_attention(model)
        self.hook_names = hook_points.hook_names(self.family, self.cfg.n_layers, self.parallel_residual)

    # ---- structure -------------------------------------------------------------------------------
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
        self.cfg.device = self.device
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
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 2 and tokens.shape[0] != 1:
            raise CourseError(f"to_str_tokens takes one sequence, got a batch of {tokens.shape[0]}; index one row first.")
        ids = torch.as_tensor(tokens).reshape(-1).tolist() if not isinstance(tokens, list) else tokens
        return [self.tokenizer.decode([i]) for i in ids]

    def to_single_token(self, text: str) -> int:
        """The id of the one token that spells `text` (e.g. " self")."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise CourseError(f"{text!r} is {len(ids)} tokens here ({[self.tokenizer.decode([i]) for i in ids]}), "
                              "not one; use model.to_tokens for longer text.")
        return ids[0]

    def to_string(self, tokens: torch.Tensor | list[int]) -> str | list[str]:
        """Token ids back to text: one string for [pos] (or a single id), a list for [batch, pos]."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 2:
            return [self.tokenizer.decode(row.tolist()) for row in tokens]
        return self.tokenizer.decode(tokens.reshape(-1).tolist())

    def tokens_to_residual_directions(self, tokens: str | int | torch.Tensor) -> torch.Tensor:
        """The unembedding column of each token: [d_model], or [*tokens.shape, d_model]. (Without the
        final norm's weight: `cache.apply_ln_to_stack` applies it; TransformerLens folds it into W_U.)"""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        return self.W_U.T[torch.as_tensor(tokens, device=self.device)]

    def _as_tokens(self, tokens: str | list[str] | torch.Tensor, prepend_bos: bool = True) -> torch.Tensor:
        if isinstance(tokens, (str, list)):
            return self.to_tokens(tokens, prepend_bos=prepend_bos)
        if not isinstance(tokens, torch.Tensor) or tokens.dim() not in (1, 2) or tokens.is_floating_point():
            raise CourseError("Pass text, a list of texts, or integer token ids shaped [pos] or [batch, pos].")
        tokens = tokens[None] if tokens.dim() == 1 else tokens
        n_ctx = self.cfg.n_ctx
        if n_ctx and tokens.shape[1] > n_ctx:
            raise CourseError(f"{tokens.shape[1]} tokens is longer than this model's context of {n_ctx}; "
                              f"cut the input, e.g. tokens[:, :{n_ctx}].")
        return tokens.to(self.device)

    # ---- forward passes --------------------------------------------------------------------------
    def __call__(self, input: str | list[str] | torch.Tensor, return_type: str | None = "logits",
                 loss_per_token: bool = False, prepend_bos: bool = True):
        """A forward pass. `return_type`: "logits" [batch, pos, d_vocab]; "loss", the mean next-token
        cross-entropy (or [batch, pos - 1] with `loss_per_token`); "both", (logits, loss); None, nothing."""
        if return_type not in RETURN_TYPES:
            raise CourseError(f"return_type must be one of {RETURN_TYPES}, not {return_type!r}.")
        tokens = self._as_tokens(input, prepend_bos)
        logits = self.model(input_ids=tokens, use_cache=False).logits
        if return_type in ("logits", None):
            return logits if return_type else None
        loss = next_token_loss(logits, tokens, loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def run_with_hooks(self, input, fwd_hooks: Iterable[tuple[NameOrFilter, HookFn]] = (), grad: bool = False,
                       **forward_kwargs):
        """A forward pass (see `__call__` for `return_type`) with `fwd_hooks` attached for this run only.
        Gradients are off unless `grad=True`."""
        _no_backward_hooks(forward_kwargs)
        with self.hooks(fwd_hooks), torch.set_grad_enabled(grad):
            return self(input, **forward_kwargs)

    def run_with_cache(self, input, names_filter: NameOrFilter | list[str] | None = None, grad: bool = False,
                       remove_batch_dim: bool = False, device: str | torch.device | None = None, **forward_kwargs):
        """The forward pass's output (logits by default) and the activations named by `names_filter`
        (all if None), detached unless `grad`. `remove_batch_dim` drops the batch axis of a batch of one."""
        _no_backward_hooks(forward_kwargs)
        store: dict[str, torch.Tensor] = {}

        def save(act: torch.Tensor, hook) -> None:
            act = act if grad else act.detach()
            store[hook.name] = act.to(device) if device is not None else act

        with self.hooks([(n, save) for n in self._select(names_filter)]), torch.set_grad_enabled(grad):
            out = self(input, **forward_kwargs)
        cache = ActivationCache(store, self)
        if remove_batch_dim:
            cache.remove_batch_dim()
        return out, cache

    def _select(self, names: NameOrFilter | list[str] | None) -> list[str]:
        """Hook names from a name, a list of names, a filter function of the name, or None (all)."""
        if names is None:
            return list(self.hook_names)
        if callable(names):
            return [n for n in self.hook_names if names(n)]
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            self._check_name(n)
        return names

    def _check_name(self, name) -> None:
        if not isinstance(name, str):
            raise CourseError(f"A hook is named by a string such as 'blocks.0.attn.hook_pattern' or by a filter "
                              f"function of the name, not a {type(name).__name__}.")
        if name not in self.hook_names:
            close = difflib.get_close_matches(name, self.hook_names, n=1)
            extra = " (this model has a parallel residual: no resid_mid)" if "resid_mid" in name and self.parallel_residual else ""
            hint = f" Did you mean {close[0]!r}?" if close and not extra else ""
            raise CourseError(f"{name!r} is not a hook point of this model{extra}.{hint} "
                              "See model.hook_names for the full list.")

    # ---- hooks -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NameOrFilter, HookFn]] = ()):
        """Attach `fwd_hooks`, (name or filter, function) pairs, for the duration of a `with` block;
        they are always removed on exit."""
        grouped: dict[str, list[HookFn]] = {}
        for name, fn in _pairs(fwd_hooks):
            if not (isinstance(name, str) or callable(name)):
                self._check_name(name)  # says what a name should be
            for n in self._select(name):
                grouped.setdefault(n, []).append(fn)
        handles = []
        try:
            for name in sorted(grouped, key=self.hook_names.index):  # forward order
                handles += hook_points.attach(self, name, grouped[name])
            yield self
        finally:
            for handle in handles:
                handle.remove()

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



def _pairs(fwd_hooks) -> list[tuple]:
    pairs = [fwd_hooks] if isinstance(fwd_hooks, tuple) and len(fwd_hooks) == 2 and callable(fwd_hooks[1]) else list(fwd_hooks)
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and callable(pair[1])):
            raise CourseError("fwd_hooks is a list of (name, hook function) pairs, e.g. "
                              "[('blocks.0.attn.hook_z', my_hook)].")
    return pairs


def _no_backward_hooks(kwargs: dict) -> None:
    if kwargs.pop("bwd_hooks", None):
        raise CourseError("Backward hooks are not supported; for gradients of activations use "
                          "run_with_cache(..., grad=True) and torch.autograd.grad.")
    if kwargs.pop("reset_hooks_end", True) is False:
        raise CourseError("Hooks here are always removed after the run; attach them again for the next one.")
    kwargs.pop("clear_contexts", None)
