"""Checks for notebook 06 · Sparse autoencoders, section 6.3: the standard metrics (L0 and dead
latents, fraction of variance explained) and the splice of an SAE into the forward pass.

The references are those of `course_utils.sae_training`, the code that reports the notebook's numbers.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from course_utils import sae_training
from course_utils.checks import Case, _as_number, compare, run_check
from course_utils.checks.sae_building import _named, _rng


# ----------------------------------------------------------------------------- 6.3 metrics

def _number_compare(got: Any, expected: Any) -> str | None:
    """Numbers may come back as Python or numpy numbers or 0-dim tensors."""
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"return a tuple of {len(expected)} numbers, got {type(got).__name__}"
        for i, (g, e) in enumerate(zip(got, expected)):
            msg = _number_compare(g, e)
            if msg:
                return f"item {i}: {msg}"
        return None
    value = _as_number(got)
    if value is None:
        return f"should be one number, got {type(got).__name__}" + (
            f" of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else "")
    return compare(value, float(expected), atol=1e-5, rtol=1e-4)


def check_l0_and_dead(fn: Callable) -> Callable:
    """(mean number of active latents per token, fraction of latents never active)."""
    g = _rng(5)
    f = torch.relu(torch.randn(50, 12, generator=g)) * (torch.rand(50, 12, generator=g) < 0.3)
    f[:, [2, 7]] = 0.0                                                                  # two dead latents
    cases = [Case((f,), label="two dead latents"),
             Case((torch.zeros(4, 5),), label="all zero: L0 0, every latent dead"),
             Case((torch.rand(10, 6, generator=g) + 0.1,), label="all active")]
    named = _named(sae_training.l0_and_dead, {
        "L0 counts active latents per token, averaged over tokens (you averaged over latents)":
            lambda f: (f > 0).float().mean(),
    }, pick=lambda got: got[0] if isinstance(got, (tuple, list)) and got else None)
    named_dead = _named(sae_training.l0_and_dead, {
        "a dead latent is inactive on *every* token; you counted latents inactive on average":
            lambda f: ((f > 0).float().mean(0) < 0.5).float().mean(),
    }, pick=lambda got: got[1] if isinstance(got, (tuple, list)) and len(got) > 1 else None)
    return run_check("l0_and_dead", fn, sae_training.l0_and_dead, cases, properties=[named, named_dead],
                     compare_fn=_number_compare)


def check_fraction_variance_explained(fn: Callable) -> Callable:
    """1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²."""
    g = _rng(6)
    x = torch.randn(40, 5, generator=g) * torch.tensor([3.0, 1, 1, 0.5, 0.1]) + 4.0       # far from the origin
    cases = [Case((x, x + 0.3 * torch.randn(40, 5, generator=g)), label="x far from the origin"),
             Case((x, x.clone()), label="perfect reconstruction: 1"),
             Case((x, x.mean(0).expand_as(x).clone()), label="the mean: 0"),
             Case((x, torch.zeros_like(x)), label="zeros: below 0")]
    named = _named(sae_training.fraction_variance_explained, {
        "measure the variance around the mean x̄, not around zero: Σ‖x − x̄‖² in the denominator":
            lambda x, xh: 1 - ((x - xh) ** 2).sum() / (x ** 2).sum(),
        "divide the total squared error by the total variance (you averaged per-dimension ratios)":
            lambda x, xh: (1 - ((x - xh) ** 2).sum(0) / ((x - x.mean(0)) ** 2).sum(0)).mean(),
    })
    return run_check("fraction_variance_explained", fn, sae_training.fraction_variance_explained, cases,
                     properties=[named], compare_fn=_number_compare)


def check_spliced_loss(fn: Callable, model) -> Callable:
    """The mean loss with the activation replaced by replace(activation) at every position but the first."""
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 24), generator=_rng(7))
    tokens[:, 0] = model.bos_token_id
    tokens = tokens.to(model.device)
    mid, last = model.cfg.n_layers // 2, model.cfg.n_layers - 1
    d = model.cfg.d_model
    shift = torch.randn(d, generator=_rng(8)).to(model.device)
    cases = [Case((model, tokens, f"blocks.{mid}.hook_resid_pre", torch.zeros_like), label="zero ablation"),
             Case((model, tokens, f"blocks.{last}.hook_resid_post", lambda a: a - 2 * shift),
                  label="shift the last residual"),
             Case((model, tokens, "blocks.0.hook_resid_pre", lambda a: a + shift), label="add a direction")]

    def with_start(m, t, name, replace):
        return model.run_with_hooks(t, fwd_hooks=[(name, lambda a, hook: replace(a))], return_type="loss")

    def prop(case: Case, got: Any) -> str | None:
        value = _as_number(got)
        if value is None:
            return f"return the loss, one number; got {type(got).__name__}"
        if abs(value - sae_training.spliced_loss(*case.args).item()) < 1e-5:
            return None
        if abs(value - model(case.args[1], return_type="loss").item()) < 1e-6:
            return ("the loss equals the clean loss: the activation was not replaced. The hook must return the new "
                    "tensor, and run_with_hooks needs fwd_hooks=[(hook_name, your_hook)]")
        if abs(value - with_start(*case.args).item()) < 1e-5:
            return "leave the start token (position 0) alone: replace positions 1 onwards only"
        return None

    return run_check("spliced_loss", fn, sae_training.spliced_loss, cases, properties=[prop],
                     compare_fn=lambda got, expected: _number_compare(got, expected.item()))
