"""Each check of notebook 01, part B, passes the reference, skips a stub, and rejects plausible wrong
answers: the conceptual mistakes, an input changed in place, a wrong dtype, a wrong shape, and no gradient."""

from __future__ import annotations

import pytest
import torch

from course_utils import load_model, neurons, probing
from tests import check_helpers
from tests.check_helpers import stub
from course_utils.checks import features_language as checks


def rejects(check, wrong, *args, match: str | None = None) -> None:
    """check_helpers.rejects with the check's extra arguments before `match`: fails in one line."""
    check_helpers.rejects(check, wrong, match, *args)


@pytest.fixture(scope="module")
def model():
    return load_model()


def test_stubs_return_the_reference(capsys, model):
    assert checks.check_mlp_activations(stub, model) is neurons.mlp_activations
    assert checks.check_top_activations(stub) is neurons.top_activations
    assert checks.check_precision_recall(stub) is neurons.precision_recall
    assert checks.check_probe_loss(stub) is probing.probe_loss
    assert checks.check_steer(stub, model) is checks.steer
    assert capsys.readouterr().out.count("not done yet") == 5


def test_references_pass(model):
    assert checks.check_mlp_activations(neurons.mlp_activations, model) is neurons.mlp_activations
    assert checks.check_top_activations(neurons.top_activations) is neurons.top_activations
    assert checks.check_precision_recall(neurons.precision_recall) is neurons.precision_recall
    assert checks.check_probe_loss(probing.probe_loss) is probing.probe_loss
    assert checks.check_steer(checks.steer, model) is checks.steer


# ----------------------------------------------------------------------------- the language model

def test_mlp_activations_rejects(model):
    def grab(name):
        return lambda m, t, l: m.run_with_cache(t, names_filter=name.format(l))[1][name.format(l)]
    rejects(checks.check_mlp_activations, grab("blocks.{}.mlp.hook_pre"), model, match="hook_pre")
    rejects(checks.check_mlp_activations, grab("blocks.{}.hook_mlp_out"), model, match="hook_mlp_out")
    rejects(checks.check_mlp_activations, grab("blocks.{}.hook_resid_post"), model, match="shape")
    rejects(checks.check_mlp_activations, lambda m, t, l: neurons.mlp_activations(m, t, 0), model)
    rejects(checks.check_mlp_activations, lambda m, t, l: neurons.mlp_activations(m, t, l)[0], model, match="shape")
    rejects(checks.check_mlp_activations, lambda m, t, l: neurons.mlp_activations(m, t, l).double(), model,
            match="dtype")


def _top(acts, neuron, k, *, bos=False, shift=True, ascending=False):
    a = acts[..., neuron] if bos else acts[:, 1:, neuron]
    values, flat = a.flatten().topk(k, largest=not ascending)
    pos = flat % a.shape[1] + (1 if shift and not bos else 0)
    return values, flat // a.shape[1], pos


WRONG_TOPS = {
    "start token included": (dict(bos=True), "start token"),
    "positions not shifted back": (dict(shift=False), "add 1"),
    "smallest instead of largest": (dict(ascending=True), None),
}


@pytest.mark.parametrize("name", WRONG_TOPS)
def test_top_activations_rejects(name):
    kwargs, match = WRONG_TOPS[name]
    rejects(checks.check_top_activations, lambda *a: _top(*a, **kwargs), match=match)


def test_top_activations_rejects_rows_and_positions_swapped():
    rejects(checks.check_top_activations, lambda *a: (lambda v, r, p: (v, p, r))(*neurons.top_activations(*a)))


WRONG_PRS = {
    "swapped": (lambda f, c: neurons.precision_recall(f, c)[::-1], "swapped"),
    "nan for 0 / 0": (checks._pr_nan, "0 / 0"),
    "counts, not rates": (lambda f, c: (lambda h: (h, h))(f.float().T @ c.float()), None),
    "transposed": (lambda f, c: tuple(x.T for x in neurons.precision_recall(f, c)), "differs|shape"),
    "float64": (lambda f, c: tuple(x.double() for x in neurons.precision_recall(f, c)), "dtype"),
    "recall over all tokens": (lambda f, c: (neurons.precision_recall(f, c)[0], (f.float().T @ c.float()) / len(f)), None),
}


@pytest.mark.parametrize("name", WRONG_PRS)
def test_precision_recall_rejects(name):
    wrong, match = WRONG_PRS[name]
    rejects(checks.check_precision_recall, wrong, match=match)


def test_precision_recall_rejects_in_place():
    def flips(fires, concepts):
        fires[:, 0] = ~fires[:, 0]                 # changes the input...
        restored = fires.clone()
        restored[:, 0] = ~restored[:, 0]           # ...and computes on the original values
        return neurons.precision_recall(restored, concepts)
    rejects(checks.check_precision_recall, flips, match="in place")


bce = torch.nn.functional.binary_cross_entropy_with_logits
WRONG_LOSSES = {
    "decay on the bias": (lambda X, y, w, b, weight_decay: probing.probe_loss(X, y, w, b, weight_decay) + weight_decay * b ** 2,
                          "only the weights"),
    "sum over examples": (lambda X, y, w, b, weight_decay: bce(X @ w + b, y.float(), reduction="sum")
                          + weight_decay * (w ** 2).sum(), "mean"),
    "no decay": (lambda X, y, w, b, weight_decay: bce(X @ w + b, y.float()), "weight decay"),
    "no bias": (lambda X, y, w, b, weight_decay: bce(X @ w, y.float()) + weight_decay * (w ** 2).sum(), "bias"),
    "squared error on sigmoid": (lambda X, y, w, b, weight_decay: ((X @ w + b).sigmoid() - y.float()).pow(2).mean()
                                 + weight_decay * (w ** 2).sum(), None),
    "L1 decay": (lambda X, y, w, b, weight_decay: bce(X @ w + b, y.float()) + weight_decay * w.abs().sum(), None),
    "labels flipped": (lambda X, y, w, b, weight_decay: probing.probe_loss(X, ~y, w, b, weight_decay), None),
    "no gradient": (lambda *a, **k: torch.tensor(probing.probe_loss(*a, **k).item()), "gradient"),
    "float64": (lambda *a, **k: probing.probe_loss(*a, **k).double(), "dtype"),
    "per-example losses": (lambda X, y, w, b, weight_decay: bce(X @ w + b, y.float(), reduction="none")
                           + weight_decay * (w ** 2).sum(), "shape"),
}


@pytest.mark.parametrize("name", WRONG_LOSSES)
def test_probe_loss_rejects(name):
    wrong, match = WRONG_LOSSES[name]
    rejects(checks.check_probe_loss, wrong, match=match)


def test_probe_loss_rejects_in_place():
    def scales(X, y, w, b, weight_decay=1e-3):
        X.mul_(2.0)
        return probing.probe_loss(X / 2, y, w, b, weight_decay)
    rejects(checks.check_probe_loss, scales, match="in place")


WRONG_STEERS = {
    "resid_post": (checks._steer_variant("blocks.{}.hook_resid_post"), "resid_pre"),
    "subtracted": (checks._steer_variant(sign=-1.0), "subtract"),
    "last position only": (checks._steer_variant(last_only=True), "every position"),
    "normalised": (lambda m, t, l, d, s: checks.steer(m, t, l, d / d.norm(), s), "as given"),
    "no scale": (lambda m, t, l, d, s: checks.steer(m, t, l, d, 1.0), None),
    "mlp_out": (checks._steer_variant("blocks.{}.hook_mlp_out"), None),
    "probabilities": (lambda *a: checks.steer(*a).softmax(-1), None),
}


@pytest.mark.parametrize("name", WRONG_STEERS)
def test_steer_rejects(model, name):
    wrong, match = WRONG_STEERS[name]
    rejects(checks.check_steer, wrong, model, match=match)


def test_steer_rejects_in_place_direction(model):
    def scales(m, t, layer, direction, scale):
        direction *= scale
        return checks.steer(m, t, layer, direction, 1.0)
    rejects(checks.check_steer, scales, model, match="in place")


def test_steer_accepts_an_in_place_hook(model):
    """Editing the activation inside the hook, as TransformerLens code often does, is fine."""
    def steer(m, tokens, layer, direction, scale):
        def hook(act, hook):
            act += scale * direction
            return act
        return m.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook)])
    assert checks.check_steer(steer, model) is steer
