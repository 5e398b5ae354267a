"""`ActivationCache`: the activations one forward pass recorded, by hook name.

    cache["blocks.1.attn.hook_pattern"]   # the full name
    cache["pattern", 1]                   # the same tensor, TransformerLens's shorthand
    cache["embed"]                        # layer-less names: hook_embed, hook_pos_embed
    cache.stack("resid_post")             # [n_layers, batch, pos, d_model]
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator

import torch

from course_utils.errors import CourseError


def full_name(key: str | tuple[str, int]) -> str:
    """("pattern", 1) -> "blocks.1.attn.hook_pattern"; "embed" -> "hook_embed"; full names pass through."""
    if isinstance(key, tuple):
        short, layer = key
        short = short.removeprefix("hook_")
        if short in ("pattern", "z", "q", "k", "v"):
            return f"blocks.{layer}.attn.hook_{short}"
        if short in ("pre", "post"):
            return f"blocks.{layer}.mlp.hook_{short}"
        return f"blocks.{layer}.hook_{short}"
    if "." in key or key.startswith("hook_"):
        return key
    if key in ("normalized", "ln_final"):
        return "ln_final.hook_normalized"
    return f"hook_{key}"


class ActivationCache:
    """A read-only mapping from hook names to tensors, shaped as the hook names document."""

    def __init__(self, store: dict[str, torch.Tensor], n_layers: int):
        self._store = store
        self.n_layers = n_layers

    def __getitem__(self, key: str | tuple[str, int]) -> torch.Tensor:
        name = full_name(key)
        if name not in self._store:
            close = difflib.get_close_matches(name, list(self._store), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise CourseError(f"{name!r} is not in this cache.{hint} Cache it with "
                              f"run_with_cache(tokens, names_filter=[{name!r}]), or list what is here with cache.keys().")
        return self._store[name]

    def stack(self, short: str) -> torch.Tensor:
        """The activation `short` of every layer, stacked: [n_layers, *shape]."""
        return torch.stack([self[short, layer] for layer in range(self.n_layers)])

    def keys(self) -> list[str]:
        return list(self._store)

    def items(self):
        return self._store.items()

    def __contains__(self, key) -> bool:
        return full_name(key) in self._store

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def to(self, device: str | torch.device) -> "ActivationCache":
        return ActivationCache({k: v.to(device) for k, v in self._store.items()}, self.n_layers)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._store.values())

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations, {self.nbytes() / 2**20:.1f} MiB)"
