"""What a language model's MLP neurons fire for: activations from the cache, the top contexts of a
neuron (never the start token), and precision and recall against exact token labels.

    acts = mlp_activations(model, windows.tokens, layer=1)            # [batch, pos, d_mlp]
    values, rows, positions = top_activations(acts, neuron=913, k=20)
    precision, recall = precision_recall(acts[valid] > threshold, concepts)   # concepts [n_tokens, n_concepts]
"""

from __future__ import annotations

import torch


def mlp_activations(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The MLP neurons' activations (after the nonlinearity) at `layer`: tokens [batch, pos] ->
    [batch, pos, d_mlp]. Caches only that one hook point."""
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.mlp.hook_post")
    return cache["post", layer]


def top_activations(acts: torch.Tensor, neuron: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k largest activations of one neuron over every row and position but position 0 (the start
    token, which no text follows). acts [batch, pos, d_mlp] -> (values [k] descending, rows [k], positions [k])."""
    a = acts[:, 1:, neuron]                                            # [batch, pos - 1]
    values, flat = a.flatten().topk(k)
    return values, flat // a.shape[1], flat % a.shape[1] + 1           # + 1: position 0 was skipped


def precision_recall(fires: torch.Tensor, concepts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every unit and concept: precision P(concept | fires) and recall P(fires | concept).

    fires [n_tokens, n_units] bool, concepts [n_tokens, n_concepts] bool (a token may belong to several).
    Returns (precision, recall), each [n_units, n_concepts] float32; 0 where a unit never fires or a
    concept never occurs (rather than 0 / 0)."""
    hits = fires.float().T @ concepts.float()                          # [n_units, n_concepts]: fires and belongs
    precision = hits / fires.sum(0).clamp_min(1)[:, None]
    recall = hits / concepts.sum(0).clamp_min(1)
    return precision, recall


def context(texts: list[list[str]], row: int, pos: int, before: int = 12, after: int = 3) -> str:
    """The text around token `pos` of row `row`, that token marked ⟦like this⟧, newlines shown as ⏎."""
    def show(pieces: list[str]) -> str:
        return "".join(pieces).replace("\n", "⏎")
    line = texts[row]
    return show(line[max(0, pos - before):pos]) + "⟦" + show([line[pos]]) + "⟧" + show(line[pos + 1:pos + 1 + after])
