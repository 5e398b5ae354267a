"""`ActivationCache`: the activations one forward pass recorded, by hook name, and TransformerLens's
analysis methods on them.

    cache["blocks.1.attn.hook_pattern"]   # the full name
    cache["pattern", 1]                   # the same tensor, TransformerLens's shorthand
    cache["resid_post", -1]               # negative layers count from the end
    cache["normalized", 0, "ln1"]         # three parts: blocks.0.ln1.hook_normalized
    cache["embed"]                        # layer-less names: hook_embed, hook_pos_embed
    cache.stack_activation("resid_post")  # [n_layers, batch, pos, d_model]
    cache.accumulated_resid(apply_ln=True, return_labels=True)   # the logit lens, see `lens.py`

The analysis methods (`accumulated_resid`, `decompose_resid`, `stack_head_results`,
`get_full_resid_decomposition`, `apply_ln_to_stack`, `logit_attrs`) take TransformerLens's
arguments and return what it returns; each one is a function of `lens.py`, where the maths is.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator

import torch

from course_utils import lens
from course_utils.errors import CourseError

ATTN_NAMES = ("q", "k", "v", "z", "pattern", "attn_scores", "result", "rot_q", "rot_k")
MLP_NAMES = ("pre", "post", "mid", "pre_linear")
NORM_NAMES = ("scale", "normalized")
ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
           "mlp_pre": "pre", "mlp_post": "post"}
LAYER_TYPES = {"a": "attn", "attention": "attn", "m": "mlp", "b": "", "block": "", "blocks": ""}


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """A hook's full name from TransformerLens's shorthand:
    ("pattern", 1) -> "blocks.1.attn.hook_pattern"; ("normalized", 0, "ln1") -> "blocks.0.ln1.hook_normalized";
    "embed" -> "hook_embed"; "scale" -> "ln_final.hook_scale"; full names pass through."""
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    name = name.removeprefix("hook_")
    name = ALIASES.get(name, name)
    if name in ATTN_NAMES:
        layer_type = "attn"
    elif name in MLP_NAMES:
        layer_type = "mlp"
    else:
        layer_type = LAYER_TYPES.get(layer_type, layer_type)
    if layer is None:
        return f"ln_final.hook_{name}" if name in NORM_NAMES else f"hook_{name}"
    return f"blocks.{layer}." + (f"{layer_type}." if layer_type else "") + f"hook_{name}"


class ActivationCache:
    """A mapping from hook names to tensors, shaped as the hook names document, and the model they came from."""

    def __init__(self, store: dict[str, torch.Tensor], model, has_batch_dim: bool = True):
        self.cache_dict = store
        self.model = model
        self.has_batch_dim = has_batch_dim

    @property
    def n_layers(self) -> int:
        return self.model.cfg.n_layers

    # ---- lookup ----------------------------------------------------------------------------------
    def full_name(self, key: str | tuple) -> str:
        """The hook name a key stands for; negative layers count from the last layer."""
        if isinstance(key, str):
            return get_act_name(key)
        if not isinstance(key, tuple) or not 1 <= len(key) <= 3 or not isinstance(key[0], str):
            raise CourseError(f"Index the cache by a hook name or a tuple such as ('pattern', 1) or "
                              f"('normalized', 0, 'ln1'), not {key!r}.")
        short, layer, *layer_type = key + (None,) * (2 - len(key))
        if layer is not None:
            n = self.n_layers
            if not isinstance(layer, int) or not -n <= layer < n:
                raise CourseError(f"Layer {layer!r} does not exist: this model has {n} layers (0 to {n - 1}, "
                                  f"or -1 for the last).")
            layer %= n
        return get_act_name(short, layer, *layer_type)

    def __getitem__(self, key: str | tuple) -> torch.Tensor:
        name = self.full_name(key)
        if name not in self.cache_dict:
            self.model._check_name(name)  # not a hook point of this model at all: says so
            close = difflib.get_close_matches(name, list(self.cache_dict), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise CourseError(f"{name!r} is not in this cache.{hint} Cache it with "
                              f"run_with_cache(tokens, names_filter=[{name!r}]), or list what is here with cache.keys().")
        return self.cache_dict[name]

    def __contains__(self, key) -> bool:
        try:
            return self.full_name(key) in self.cache_dict
        except CourseError:
            return False

    def keys(self):
        return self.cache_dict.keys()

    def values(self):
        return self.cache_dict.values()

    def items(self):
        return self.cache_dict.items()

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    # ---- whole-cache operations -----------------------------------------------------------------------
    def remove_batch_dim(self) -> "ActivationCache":
        """Drop the batch axis of a cache of one sequence (in place, like TransformerLens); returns the cache."""
        if not self.has_batch_dim:
            return self
        sizes = {t.shape[0] for t in self.cache_dict.values()}
        if sizes - {1}:
            raise CourseError(f"remove_batch_dim needs a batch of one sequence, but this cache holds a batch of "
                              f"{max(sizes)}; index one sequence, e.g. run_with_cache(tokens[:1]).")
        self.cache_dict = {k: v[0] for k, v in self.cache_dict.items()}
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice) -> "ActivationCache":
        """A new cache holding only some sequences of the batch (an int drops the batch axis)."""
        index = lens.as_index(batch_slice)
        store = {k: v[index] for k, v in self.cache_dict.items()}
        return ActivationCache(store, self.model, has_batch_dim=self.has_batch_dim and not isinstance(index, int))

    def to(self, device: str | torch.device) -> "ActivationCache":
        return ActivationCache({k: v.to(device) for k, v in self.cache_dict.items()}, self.model, self.has_batch_dim)

    def nbytes(self) -> int:
        """Memory the cached tensors take (tensors that share memory, like broadcast views, counted once)."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in self.cache_dict.values()}
        return sum(storages.values())

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations, {self.nbytes() / 2**20:.1f} MiB)"

    # ---- TransformerLens's analysis methods (the maths is in lens.py) ------------------------------------
    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: str | None = None) -> torch.Tensor:
        """`activation_name` of every layer before `layer` (-1 or None: all), stacked: [layers, *shape]."""
        stop = self.n_layers if layer in (-1, None) else layer
        return torch.stack([self[(activation_name, l, sublayer_type)] for l in range(stop)])

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice=None, mlp_input: bool = False, return_labels: bool = False):
        out = lens.accumulated_resid(self.model, self, layer, incl_mid, apply_ln, pos_slice, mlp_input)
        return out if return_labels else out[0]

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice=None, incl_embeds: bool = True, return_labels: bool = False):
        out = lens.decompose_resid(self.model, self, layer, mlp_input, mode, apply_ln, pos_slice, incl_embeds)
        return out if return_labels else out[0]

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice=None, apply_ln: bool = False):
        out = lens.stack_head_results(self.model, self, layer, pos_slice, incl_remainder, apply_ln)
        return out if return_labels else out[0]

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False, pos_slice=None,
                                     return_labels: bool = False):
        out = lens.full_resid_decomposition(self.model, self, layer, mlp_input, expand_neurons, apply_ln, pos_slice)
        return out if return_labels else out[0]

    def apply_ln_to_stack(self, residual_stack: torch.Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice=None, batch_slice=None, has_batch_dim: bool = True,
                          recompute_ln: bool = False) -> torch.Tensor:
        return lens.apply_ln_to_stack(self.model, self, residual_stack, layer, mlp_input, pos_slice, batch_slice,
                                      has_batch_dim, recompute_ln)

    def logit_attrs(self, residual_stack: torch.Tensor, tokens, incorrect_tokens=None, pos_slice=None,
                    batch_slice=None, has_batch_dim: bool = True) -> torch.Tensor:
        return lens.logit_attrs(self.model, self, residual_stack, tokens, incorrect_tokens, pos_slice, batch_slice,
                                has_batch_dim)
