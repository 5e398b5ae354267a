"""Checks for notebook 01 · Features, part B (sections 1.6-1.9): neuron activations from the cache,
top activations, precision and recall, the probe's loss and steering with a hook.

The references are those of `course_utils.neurons` and `course_utils.probing`, and `steer` below:
the same code the notebook runs on. Inputs are built so that each plausible mistake (the start
token, precision and recall swapped, a missing square, the wrong hook point) changes the answer, and
a mistake is named where the answer equals it exactly.
"""

from __future__ import annotations

from typing import Callable

import torch

from course_utils import neurons, probing
from course_utils.checks import Case, run_check
from course_utils.checks.mistakes import recognise as _recognise
from course_utils.checks.mistakes import rng as _rng

# ----------------------------------------------------------------------------- 1.6 - 1.9 the language model

def check_mlp_activations(fn: Callable, model) -> Callable:
    """The cached MLP activations after the nonlinearity, `cache["post", layer]`."""
    g = _rng(4)
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 10), generator=g)
    tokens[:, 0] = model.bos_token_id
    T = neurons.mlp_activations
    last = model.cfg.n_layers - 1

    def hook(name):
        return lambda m, t, l: m.run_with_cache(t, names_filter=name.format(l))[1][name.format(l)]

    mistakes = {"that is the MLP's input to the nonlinearity (hook_pre); the neurons' activations are hook_post":
                    hook("blocks.{}.mlp.hook_pre"),
                "that is the MLP's output in the residual stream (hook_mlp_out); the neurons' activations are "
                "mlp.hook_post": hook("blocks.{}.hook_mlp_out")}
    cases = [Case((model, tokens, 0), label="layer 0"), Case((model, tokens[:1, :4], last), label=f"layer {last}")]
    return run_check("mlp_activations", fn, T, cases, atol=1e-4, properties=[_recognise(mistakes, T, atol=1e-4)],
                     dims=("batch", "pos", "neuron"))


def check_top_activations(fn: Callable) -> Callable:
    """The k largest activations of a neuron, position 0 excluded, with their rows and positions."""
    g = _rng(5)
    acts = torch.randn(6, 9, 4, generator=g)
    acts[:, 0] += 10.0                                                  # the start token: huge, and never text
    T = neurons.top_activations
    mistakes = {"leave out position 0, the start token (acts[:, 1:]), and add 1 back to the positions":
                    _top_with_bos,
                "after skipping position 0, add 1 to the positions so they index the original tokens":
                    lambda a, n, k: (lambda v, r, p: (v, r, p - 1))(*T(a, n, k))}
    cases = [Case((acts, 2, 5), label="6 rows of 9 positions, neuron 2, k = 5"),
             Case((acts[:1], 0, 3), label="one row"),
             Case((torch.randn(3, 4, 7, generator=g), 6, 9), label="k = every position but the start token")]
    return run_check("top_activations", fn, T, cases, properties=[_recognise(mistakes, T)])


def _top_with_bos(acts, neuron, k):
    values, flat = acts[..., neuron].flatten().topk(k)
    return values, flat // acts.shape[1], flat % acts.shape[1]


def check_precision_recall(fn: Callable) -> Callable:
    """precision[u, c] = P(concept c | unit u fires), recall[u, c] = P(u fires | c); 0 instead of 0 / 0."""
    g = _rng(6)
    labels = torch.randint(0, 3, (50,), generator=g)
    concepts = torch.stack([labels == 0, labels == 1, labels == 2, torch.zeros(50, dtype=torch.bool),
                            (labels == 1) & (torch.rand(50, generator=g) < 0.5)], 1)   # an absent and a nested concept
    fires = torch.rand(50, 5, generator=g) < 0.3
    fires[:, 4] = False                                                 # a unit that never fires
    T = neurons.precision_recall
    mistakes = {"precision and recall are swapped: precision divides by how often the unit fires":
                    lambda f, c: T(f, c)[::-1],
                "a unit that never fires (or a concept that never occurs) should get 0, not 0 / 0 = nan": _pr_nan}
    cases = [Case((fires, concepts), label="50 tokens, 5 units, 5 concepts (one absent, one inside another), unit 4 silent"),
             Case((fires[:, :2], concepts[:, :3]), label="two units, three concepts"),
             Case((torch.ones(6, 1, dtype=torch.bool), torch.tensor([[1, 0], [1, 0], [0, 1], [1, 1], [0, 1], [0, 1]]).bool()),
                  label="a unit that always fires")]
    return run_check("precision_recall", fn, T, cases, properties=[_recognise(mistakes, T)], dims=("unit", "concept"))


def _pr_nan(fires, concepts):
    hits = fires.float().T @ concepts.float()
    return hits / fires.sum(0)[:, None], hits / concepts.float().sum(0)


def check_probe_loss(fn: Callable) -> Callable:
    """Mean binary cross-entropy of X @ w + b, plus weight_decay · ‖w‖²; gradients must flow to w and b."""
    g = _rng(7)

    def case(n, d, wd, label):
        X, y = torch.randn(n, d, generator=g), torch.rand(n, generator=g) < 0.5
        w = torch.randn(d, generator=g).requires_grad_(True)
        b = torch.randn((), generator=g).requires_grad_(True)
        return Case((X, y, w, b), {"weight_decay": wd}, label)

    T = probing.probe_loss
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    mistakes = {"penalise only the weights, not the bias: weight_decay * (w ** 2).sum()":
                    lambda X, y, w, b, weight_decay: T(X, y, w, b, weight_decay) + weight_decay * b ** 2,
                "average the cross-entropy over examples (mean), don't sum it":
                    lambda X, y, w, b, weight_decay: bce(X @ w + b, y.float(), reduction="sum") + weight_decay * (w ** 2).sum(),
                "add the weight decay term weight_decay * (w ** 2).sum()":
                    lambda X, y, w, b, weight_decay: bce(X @ w + b, y.float()),
                "the logits are X @ w + b: the bias is missing":
                    lambda X, y, w, b, weight_decay: T(X, y, w, torch.zeros_like(b), weight_decay)}
    cases = [case(16, 5, 1e-3, "16 examples, 5 features"), case(7, 3, 0.5, "large weight decay"),
             case(1, 4, 0.0, "one example, no weight decay")]
    return run_check("probe_loss", fn, T, cases, grad=True, atol=1e-5, properties=[_recognise(mistakes, T)])


def steer(model, tokens: torch.Tensor, layer: int, direction: torch.Tensor, scale: float) -> torch.Tensor:
    """Logits [batch, pos, d_vocab] with scale · direction added to the residual stream entering `layer`
    (blocks.{layer}.hook_resid_pre) at every position."""
    return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre",
                                                    probing.steering_hook(direction, scale))])


def check_steer(fn: Callable, model) -> Callable:
    """Logits with scale · direction added at blocks.{layer}.hook_resid_pre, every position."""
    g = _rng(8)
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 8), generator=g)
    tokens[:, 0] = model.bos_token_id
    d = model.cfg.d_model
    unit = torch.randn(d, generator=g)
    unit = unit / unit.norm()

    mistakes = {"add to the residual stream *entering* the layer, blocks.{layer}.hook_resid_pre, not resid_post":
                    _steer_variant("blocks.{}.hook_resid_post"),
                "add scale * direction, not subtract it": _steer_variant(sign=-1.0),
                "add the direction at every position, not only the last": _steer_variant(last_only=True),
                "add the direction as given (do not normalise it): the scale is yours to set":
                    lambda m, t, l, dvec, s: steer(m, t, l, dvec / dvec.norm(), s)}
    cases = [Case((model, tokens, 0, unit, 4.0), label="layer 0, a unit direction"),
             Case((model, tokens[:1], model.cfg.n_layers - 1, 3 * unit, -2.0), label="last layer, a longer direction, "
                  "negative scale"),
             Case((model, tokens, 0, unit, 0.0), label="scale 0 changes nothing")]
    return run_check("steer", fn, steer, cases, atol=1e-3, rtol=1e-3, properties=[_recognise(mistakes, steer, atol=1e-3)])


def _steer_variant(name: str = "blocks.{}.hook_resid_pre", sign: float = 1.0, last_only: bool = False) -> Callable:
    """`steer` with one thing changed, to recognise a mistake by."""
    def run(model, tokens, layer, direction, scale):
        def hook(act, hook):
            add = sign * scale * direction.to(act)
            if not last_only:
                return act + add
            out = act.clone()
            out[:, -1] += add
            return out
        return model.run_with_hooks(tokens, fwd_hooks=[(name.format(layer), hook)])
    return run
