"""Figures render headless and offline, without probing the network."""

import urllib.request

import matplotlib.pyplot as plt
import pytest
import torch

from course_utils import plotting


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a figure tried to reach the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_attention_patterns_render_offline(no_network, monkeypatch):
    pattern = torch.rand(2, 3, 3).tril()
    fig = plotting.attention_patterns(["a", "b", "c"], pattern)
    html = fig._repr_html_()
    assert "unpkg.com" not in html and len(html) > 100_000  # the bundled JavaScript, inline
    monkeypatch.setenv("COURSE_CIRCUITSVIS", "cdn")
    assert "unpkg.com" in fig._repr_html_()


def test_colored_tokens_and_shape_errors(no_network):
    assert "<div" in plotting.colored_tokens(["x", "y"], torch.tensor([0.1, 0.9]))._repr_html_()
    with pytest.raises(ValueError, match="one value per token"):
        plotting.colored_tokens(["x", "y"], [1.0])
    with pytest.raises(ValueError, match="index one batch element"):
        plotting.attention_patterns(["a", "b"], torch.rand(1, 2, 2, 2))


def test_matplotlib_figures_headless(tmp_path):
    ax = plotting.layer_head_heatmap(torch.rand(2, 8), title="scores")
    assert len(ax.texts) == 16 and ax.get_xlabel() == "head"
    ax2 = plotting.per_layer_lines({"a": [1, 2, 3], "b": torch.tensor([3.0, 2.0, 1.0])}, ylabel="KL")
    assert len(ax2.lines) == 2
    ax2.figure.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
    plt.close("all")


def test_saved_figures_hold_rounded_numbers(no_network):
    """The numbers go into the saved notebook as text: 4 decimals, not 17 digits."""
    pattern = torch.softmax(torch.randn(8, 40, 40), -1)
    html = plotting.attention_patterns([f"t{i}" for i in range(40)], pattern)._repr_html_()
    assert "0.1234567" not in html and max(len(n) for n in html.split("[[[")[1].split("]]]")[0].replace("[", "").replace("]", "").split(",")) <= 8
