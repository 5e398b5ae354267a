"""The figures the notebooks share: interactive attention patterns and coloured tokens (circuitsvis),
and layer × head heatmaps and per-layer lines (matplotlib). All of them work headless.

circuitsvis normally probes the internet each time a figure is displayed (waiting up to a second on
a silent network) to choose between its online and its bundled JavaScript. Here the choice is fixed:
the bundled copy by default, which works offline; set `COURSE_CIRCUITSVIS=cdn` for the online copy,
which makes saved notebooks much smaller.
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib.pyplot as plt
import torch


class HTMLFigure:
    """A circuitsvis figure whose JavaScript source (bundled or online) is chosen without probing."""

    def __init__(self, rendered):
        self._rendered = rendered

    def _repr_html_(self) -> str:
        use_cdn = os.environ.get("COURSE_CIRCUITSVIS", "local").lower() == "cdn"
        return self._rendered.cdn_src if use_cdn else self._rendered.local_src

    def __html__(self) -> str:
        return self._repr_html_()


def _as_list(x, decimals: int = 4) -> list:
    """Plain lists for circuitsvis, rounded: the numbers are saved in the notebook as text, and 17
    digits per attention weight would make a saved notebook twice the size for no visible change."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().round(decimals=decimals).tolist()
    return [round(float(v), decimals) for v in x]


def attention_patterns(str_tokens: Sequence[str], pattern: torch.Tensor,
                       head_names: Sequence[str] | None = None) -> HTMLFigure:
    """Every head's attention pattern, interactive. pattern [head, query_pos, key_pos]."""
    import circuitsvis as cv

    if pattern.dim() != 3 or pattern.shape[-1] != len(str_tokens):
        raise ValueError(f"pattern should be [head, query_pos, key_pos] with {len(str_tokens)} positions, "
                         f"got shape {tuple(pattern.shape)}; index one batch element first, e.g. cache['pattern', 0][0].")
    names = list(head_names) if head_names else [f"H{h}" for h in range(pattern.shape[0])]
    return HTMLFigure(cv.attention.attention_heads(attention=_as_list(pattern), tokens=list(str_tokens),
                                                   attention_head_names=names))


def colored_tokens(str_tokens: Sequence[str], values: torch.Tensor | Sequence[float]) -> HTMLFigure:
    """Tokens shaded by one value each (say, a neuron's activation). values [pos]."""
    import circuitsvis as cv

    values = _as_list(values)
    if len(values) != len(str_tokens):
        raise ValueError(f"{len(str_tokens)} tokens but {len(values)} values; give one value per token.")
    return HTMLFigure(cv.tokens.colored_tokens(tokens=list(str_tokens), values=values))


def layer_head_heatmap(scores: torch.Tensor, title: str = "", label: str = "score",
                       vmin: float | None = None, vmax: float | None = None, ax=None):
    """A layer × head heatmap of scores [n_layers, n_heads], each cell annotated when there are few."""
    scores = scores.detach().float().cpu()
    n_layers, n_heads = scores.shape
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4, 0.5 * n_heads + 2), max(2.2, 0.45 * n_layers + 1.2)))
    im = ax.imshow(scores, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_title(title)
    plt.colorbar(im, ax=ax, label=label)
    if n_layers * n_heads <= 64:
        for l in range(n_layers):
            for h in range(n_heads):
                ax.text(h, l, f"{scores[l, h]:.2f}", ha="center", va="center", color="w", fontsize=8)
    return ax


def per_layer_lines(series: dict[str, Sequence[float]], title: str = "", ylabel: str = "",
                    xlabel: str = "layer", ax=None):
    """One line per named series, plotted against layer (or whatever `xlabel` says)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in series.items():
        values = _as_list(values)
        ax.plot(range(len(values)), values, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    return ax
