"""Shared fixtures: tiny randomly initialised models of every supported family, built from configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

from course_utils import HookedModel

torch.set_num_threads(1)  # the models here are tiny: one thread is fastest and leaves the other core free

VOCAB = 97


class TinyTokenizer:
    """Just enough of a tokenizer for HookedModel on random-token tests."""

    bos_token_id = eos_token_id = pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (ord(c) % (VOCAB - 3)) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


CONFIGS = {
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=3, n_head=4,
                               bos_token_id=0, eos_token_id=0),
    "neox": lambda: GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, rotary_pct=0.5, max_position_embeddings=64,
                                  use_parallel_residual=True, bos_token_id=0, eos_token_id=0),
    "llama": lambda: LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                                 bos_token_id=0, eos_token_id=0, pad_token_id=0),
    "qwen2": lambda: Qwen2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                                 bos_token_id=0, eos_token_id=0, pad_token_id=0),
}


def build(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    config.initializer_range = 0.15  # larger than default, so attention patterns are far from uniform
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random biases and norm weights, so that no term can hide behind a zero
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module", params=list(CONFIGS))
def family_case(request):
    """(family, HookedModel, tokens, reference outputs from Hugging Face's own eager attention)."""
    model = build(request.param)
    tokens = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(tokens, output_hidden_states=True, output_attentions=True)
    return request.param, HookedModel(model, TinyTokenizer()), tokens, ref


@pytest.fixture(scope="module")
def model() -> HookedModel:
    """A tiny random GPT-2 (3 layers, 4 heads, vocabulary 97, random norm biases): the checks and helpers must
    not need a bundled model. A test file that needs a bundled model defines its own `model` fixture."""
    return HookedModel(build("gpt2"), TinyTokenizer())
