"""The attention kernel the course runs models with: plain eager attention with two hook points.

Hugging Face models compute attention in a swappable function (their "attention interface"). The
course registers this one under the name "course_eager". It is the textbook computation, and it
lets `HookedModel` read or replace the attention pattern and the per-head outputs `z`:

    pattern = softmax(q @ k.T * scale + mask)  # blocks.{l}.attn.hook_pattern [batch, head, q, k]
    z = pattern @ v                            # blocks.{l}.attn.hook_z       [batch, pos, head, d_head]

Grouped-query attention (Llama, Qwen2) shares each key/value head among several query heads.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch

NAME = "course_eager"

# attention module -> {"attn_scores": [fn, ...], "pattern": [...], "z": [...]}; filled only while hooks
# are active. Each fn takes the activation and returns it, replaced or not.
ACTIVE_HOOKS: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, list[Callable]]]" = weakref.WeakKeyDictionary()


def _run(hooks: dict | None, point: str, act: torch.Tensor) -> torch.Tensor:
    for fn in (hooks or {}).get(point, ()):
        act = fn(act)
    return act


def course_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """query [batch, head, q, d_head]; key, value [batch, kv_head, k, d_head] -> (z, pattern)."""
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # GQA: query head h reads key/value head h // n_rep
        key, value = key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = (query @ key.transpose(-1, -2)) * scale  # [batch, head, q, k]
    q_len, k_len = scores.shape[-2:]
    hooks = ACTIVE_HOOKS.get(module)
    show_scores = bool(hooks) and "attn_scores" in hooks
    min_value = torch.finfo(scores.dtype).min
    blocked = float("-inf") if show_scores else min_value  # what a masked score is
    if attention_mask is None:  # causal: query i sees keys up to i (offset by any cached keys)
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).triu(k_len - q_len + 1)
        scores = scores.masked_fill(mask, blocked)
    elif attention_mask.dtype == torch.bool:  # True = may attend
        mask = ~attention_mask[..., :k_len]
        scores = scores.masked_fill(mask, blocked)
    else:  # additive float mask, causal part included
        additive = attention_mask[..., :k_len].to(scores.dtype)
        mask = additive <= min_value / 2
        scores = scores + (additive.masked_fill(mask, blocked) if show_scores else additive)
    if show_scores:
        scores = _run(hooks, "attn_scores", scores)
        if mask.all(-1).any():  # a query that may attend to nothing (padding): keep its row finite
            scores = scores.clamp(min=min_value)
    pattern = scores.float().softmax(dim=-1).to(value.dtype)
    pattern = _run(hooks, "pattern", pattern)
    if dropout > 0.0 and module.training:
        pattern = torch.nn.functional.dropout(pattern, p=dropout)
    z = (pattern @ value).transpose(1, 2)  # [batch, q, head, d_head]
    z = _run(hooks, "z", z)
    return z.contiguous(), pattern


def register() -> str:
    """Make "course_eager" a valid `attn_implementation` (idempotent); return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, course_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    return NAME
