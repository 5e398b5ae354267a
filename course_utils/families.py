"""One adapter per model family: where each part lives inside the Hugging Face model, and how to
read its attention weights per head.

Everything that differs between GPT-2, GPT-NeoX/Pythia and Llama/Qwen2 is in this file. The rest
of `course_utils` asks a `Family` for module paths and weights and never checks the architecture.
Weight shapes follow TransformerLens: W_Q, W_K, W_V [head, d_model, d_head], W_O [head, d_head, d_model].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from course_utils.errors import CourseError

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.model_type values served by this adapter
    embed: str                    # token embedding, from the top-level model (the unembedding is
                                  # model.get_output_embeddings(), whose name varies across versions)
    pos_embed: str | None         # learned position embedding, if any
    blocks: str                   # the list of transformer blocks
    ln_final: str
    # inside each block:
    ln1: str
    attn: str
    ln2: str
    mlp: str
    mlp_in: str                   # the MLP's first projection (the gate in gated MLPs): mlp.hook_pre
    mlp_out: str                  # the MLP's last projection, whose input is mlp.hook_post
    norm: str                     # "layernorm" or "rmsnorm"
    mlp_up: str | None            # gated MLPs: the linear branch multiplied by act(gate); W_in
    attn_weights: Callable[[nn.Module, "ModelShape"], Weights]  # W_Q.. b_O of one block's attention
    qkv: tuple[str, str, str]     # the modules whose outputs hold q, k and v (one fused module, or three)
    qkv_layout: str               # "fused": [q | k | v] (GPT-2); "per_head": [head, (q k v), d_head] (NeoX);
                                  # "separate": one module each (Llama, Qwen2)
    act_fn: Callable[[object], str]  # the MLP's activation, in TransformerLens's spelling
    parallel_residual: Callable[[object], bool] = lambda config: False


@dataclass
class ModelShape:
    """The model's dimensions and settings, named as TransformerLens's `cfg` names them."""

    n_layers: int
    n_heads: int
    n_kv_heads: int               # key/value heads: fewer than n_heads in grouped-query attention
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int                    # the longest input the model takes
    act_fn: str                   # the MLP's activation, e.g. "gelu_new", "silu"
    normalization_type: str       # "LN" (LayerNorm) or "RMS" (RMSNorm)
    positional_embedding_type: str  # "standard" (learned) or "rotary"
    model_name: str
    device: torch.device | None = None  # kept up to date by HookedModel

    @property
    def n_key_value_heads(self) -> int:
        """TransformerLens's name for n_kv_heads."""
        return self.n_kv_heads


def _zeros(shape: ModelShape, *dims: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(*dims, dtype=like.dtype, device=like.device)


def _gpt2_attn(block: nn.Module, s: ModelShape) -> Weights:
    # Conv1D stores weight as [in, out]: q, k, v side by side in c_attn, heads contiguous in each.
    w, b = block.attn.c_attn.weight, block.attn.c_attn.bias  # [d_model, 3*d_model], [3*d_model]
    W_Q, W_K, W_V = (m.reshape(s.d_model, s.n_heads, s.d_head).permute(1, 0, 2) for m in w.split(s.d_model, dim=1))
    b_Q, b_K, b_V = (v.reshape(s.n_heads, s.d_head) for v in b.split(s.d_model))
    W_O = block.attn.c_proj.weight.reshape(s.n_heads, s.d_head, s.d_model)
    return dict(W_Q=W_Q, W_K=W_K, W_V=W_V, b_Q=b_Q, b_K=b_K, b_V=b_V, W_O=W_O, b_O=block.attn.c_proj.bias)


def _neox_attn(block: nn.Module, s: ModelShape) -> Weights:
    # query_key_value's output is laid out per head as [q | k | v] (interleaved across heads).
    lin = block.attention.query_key_value
    w = lin.weight.reshape(s.n_heads, 3, s.d_head, s.d_model)  # [head, qkv, d_head, d_model]
    W_Q, W_K, W_V = (w[:, i].transpose(-1, -2) for i in range(3))
    if lin.bias is not None:
        b_Q, b_K, b_V = lin.bias.reshape(s.n_heads, 3, s.d_head).unbind(1)
    else:
        b_Q = b_K = b_V = _zeros(s, s.n_heads, s.d_head, like=w)
    dense = block.attention.dense
    W_O = dense.weight.T.reshape(s.n_heads, s.d_head, s.d_model)
    b_O = dense.bias if dense.bias is not None else _zeros(s, s.d_model, like=w)
    return dict(W_Q=W_Q, W_K=W_K, W_V=W_V, b_Q=b_Q, b_K=b_K, b_V=b_V, W_O=W_O, b_O=b_O)


def _llama_attn(block: nn.Module, s: ModelShape) -> Weights:
    # Separate q/k/v projections; k and v have n_kv_heads, shared by groups of query heads (GQA).
    att, rep = block.self_attn, s.n_heads // s.n_kv_heads

    def per_head(lin: nn.Linear, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        W = lin.weight.reshape(n, s.d_head, s.d_model).transpose(-1, -2)  # [n, d_model, d_head]
        b = lin.bias.reshape(n, s.d_head) if lin.bias is not None else _zeros(s, n, s.d_head, like=W)
        return W.repeat_interleave(s.n_heads // n, dim=0), b.repeat_interleave(s.n_heads // n, dim=0)

    (W_Q, b_Q), (W_K, b_K), (W_V, b_V) = per_head(att.q_proj, s.n_heads), *(
        per_head(p, s.n_heads // rep) for p in (att.k_proj, att.v_proj))
    W_O = att.o_proj.weight.T.reshape(s.n_heads, s.d_head, s.d_model)
    b_O = att.o_proj.bias if att.o_proj.bias is not None else _zeros(s, s.d_model, like=W_O)
    return dict(W_Q=W_Q, W_K=W_K, W_V=W_V, b_Q=b_Q, b_K=b_K, b_V=b_V, W_O=W_O, b_O=b_O)


FAMILIES = [
    Family("GPT-2", ("gpt2",), embed="transformer.wte", pos_embed="transformer.wpe", blocks="transformer.h",
           ln_final="transformer.ln_f", ln1="ln_1", attn="attn", ln2="ln_2", mlp="mlp",
           mlp_in="mlp.c_fc", mlp_out="mlp.c_proj", norm="layernorm", mlp_up=None, attn_weights=_gpt2_attn,
           qkv=("attn.c_attn",) * 3, qkv_layout="fused", act_fn=lambda c: c.activation_function),
    Family("GPT-NeoX/Pythia", ("gpt_neox",), embed="gpt_neox.embed_in", pos_embed=None, blocks="gpt_neox.layers",
           ln_final="gpt_neox.final_layer_norm", ln1="input_layernorm", attn="attention",
           ln2="post_attention_layernorm", mlp="mlp", mlp_in="mlp.dense_h_to_4h", mlp_out="mlp.dense_4h_to_h",
           norm="layernorm", mlp_up=None, attn_weights=_neox_attn,
           qkv=("attention.query_key_value",) * 3, qkv_layout="per_head", act_fn=lambda c: c.hidden_act,
           parallel_residual=lambda config: bool(getattr(config, "use_parallel_residual", True))),
    Family("Llama/Qwen2", ("llama", "qwen2"), embed="model.embed_tokens", pos_embed=None, blocks="model.layers",
           ln_final="model.norm", ln1="input_layernorm", attn="self_attn",
           ln2="post_attention_layernorm", mlp="mlp", mlp_in="mlp.gate_proj", mlp_out="mlp.down_proj",
           norm="rmsnorm", mlp_up="mlp.up_proj", attn_weights=_llama_attn,
           qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), qkv_layout="separate",
           act_fn=lambda c: c.hidden_act),
]
SUPPORTED = ", ".join(f.name for f in FAMILIES)


def family_of(model_type: str) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise CourseError(f"Models of type {model_type!r} are not supported; the course supports {SUPPORTED} "
                      "(for example 'gpt2', 'EleutherAI/pythia-70m', 'Qwen/Qwen2-0.5B').")


def model_shape(config, family: Family) -> ModelShape:
    """Read the TransformerLens-style dimensions off a Hugging Face config."""
    n_heads = config.num_attention_heads
    d_model = config.hidden_size
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    d_mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d_model
    n_ctx = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    return ModelShape(n_layers=config.num_hidden_layers, n_heads=n_heads,
                      n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
                      d_model=d_model, d_head=d_head, d_mlp=d_mlp, d_vocab=config.vocab_size, n_ctx=n_ctx,
                      act_fn=family.act_fn(config), normalization_type="LN" if family.norm == "layernorm" else "RMS",
                      positional_embedding_type="standard" if family.pos_embed else "rotary",
                      model_name=getattr(config, "_name_or_path", "") or config.model_type)


def qkv_view(family: Family, output: torch.Tensor, which: int, s: ModelShape) -> torch.Tensor:
    """q (which=0), k (1) or v (2) as a view [batch, pos, head, d_head] of its projection's output."""
    if family.qkv_layout == "separate":
        return output.unflatten(-1, (-1, s.d_head))
    if family.qkv_layout == "fused":
        return output.split(s.n_heads * s.d_head, dim=-1)[which].unflatten(-1, (s.n_heads, s.d_head))
    return output.unflatten(-1, (s.n_heads, 3, s.d_head))[..., which, :]


def qkv_write(family: Family, output: torch.Tensor, which: int, new: torch.Tensor, s: ModelShape) -> torch.Tensor:
    """The projection's output with q, k or v replaced by `new` [batch, pos, head, d_head]."""
    if family.qkv_layout == "separate":
        return new.flatten(-2)
    if family.qkv_layout == "fused":
        parts = list(output.split(s.n_heads * s.d_head, dim=-1))
        parts[which] = new.flatten(-2)
        return torch.cat(parts, dim=-1)
    out = output.unflatten(-1, (s.n_heads, 3, s.d_head)).clone()
    out[..., which, :] = new
    return out.flatten(-3)


def check_layout(model: nn.Module, family: Family) -> None:
    """Confirm every path of the adapter exists in this model, so a mismatch fails at load time."""
    paths = [family.embed, family.blocks, family.ln_final] + ([family.pos_embed] if family.pos_embed else [])
    block0 = f"{family.blocks}.0"
    paths += [f"{block0}.{p}" for p in (family.ln1, family.attn, family.ln2, family.mlp, family.mlp_in, family.mlp_out,
                                         *family.qkv)]
    for path in paths:
        try:
            model.get_submodule(path)
        except AttributeError:
            raise CourseError(f"This {family.name} model has no module {path!r}; its layout differs from the "
                              "one the course expects. Try a standard checkpoint of that family.") from None
