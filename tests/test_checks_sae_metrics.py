"""The checks of notebook 06, section 6.3, pass the reference, skip a stub, and reject plausible wrong answers."""

from __future__ import annotations

import pytest
import torch

from course_utils import load_model, sae, sae_training
from course_utils.checks import sae_metrics as checks
from tests.check_helpers import rejects, stub

unit = sae.unit_rows


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")


def test_stubs_return_the_reference(capsys, model):
    assert checks.check_spliced_loss(stub, model) is sae_training.spliced_loss
    assert capsys.readouterr().out.count("not done yet") == 1


# ----------------------------------------------------------------------------- 6.3 metrics

WRONG_L0 = {
    "L0 averaged over latents": (lambda f: ((f > 0).float().mean(), (~(f > 0).any(0)).float().mean()), "per token"),
    "dead on average": (lambda f: ((f > 0).sum(-1).float().mean(), ((f > 0).float().mean(0) < 0.5).float().mean()),
                        "every"),
    "dead counted, not a fraction": (lambda f: ((f > 0).sum(-1).float().mean(), (~(f > 0).any(0)).sum()), "item 1"),
    "alive fraction": (lambda f: ((f > 0).sum(-1).float().mean(), (f > 0).any(0).float().mean()), "item 1"),
    "one number": (lambda f: (f > 0).sum(-1).float().mean(), "tuple"),
}


def test_l0_and_dead_accepts_reference_and_numbers():
    assert checks.check_l0_and_dead(sae_training.l0_and_dead) is sae_training.l0_and_dead

    def numbers(f):
        return (f > 0).sum(-1).float().mean().item(), float((~(f > 0).any(0)).float().mean())
    assert checks.check_l0_and_dead(numbers) is numbers


@pytest.mark.parametrize("name", WRONG_L0)
def test_l0_and_dead_rejects(name):
    wrong, match = WRONG_L0[name]
    rejects(checks.check_l0_and_dead, wrong, match)


WRONG_FVE = {
    "no mean subtracted": (lambda x, xh: 1 - ((x - xh) ** 2).sum() / (x ** 2).sum(), "around the mean"),
    "per-dimension average": (lambda x, xh: (1 - ((x - xh) ** 2).sum(0) / ((x - x.mean(0)) ** 2).sum(0)).mean(),
                              "per-dimension"),
    "ratio, not 1 - ratio": (lambda x, xh: ((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), None),
    "per example": (lambda x, xh: 1 - ((x - xh) ** 2).sum(-1) / ((x - x.mean(0)) ** 2).sum(-1), "one number"),
    "variance of x_hat": (lambda x, xh: 1 - ((x - xh) ** 2).sum() / ((xh - xh.mean(0)) ** 2).sum().clamp_min(1e-9), None),
}


def _fve_in_place(x, xh):
    x -= x.mean(0)
    return 1 - ((x - xh + xh.mean(0)) ** 2).sum() / (x ** 2).sum()


WRONG_FVE["in place"] = (_fve_in_place, "in place")


def test_fve_accepts_reference():
    f = sae_training.fraction_variance_explained
    assert checks.check_fraction_variance_explained(f) is f


@pytest.mark.parametrize("name", WRONG_FVE)
def test_fve_rejects(name):
    wrong, match = WRONG_FVE[name]
    rejects(checks.check_fraction_variance_explained, wrong, match)


def _splice(model, tokens, name, replace, hook_fn):
    return model.run_with_hooks(tokens, fwd_hooks=[(name, lambda a, hook: hook_fn(a, replace))], return_type="loss")


def _in_place_splice(a, replace):
    a[:, 1:] = replace(a[:, 1:])


WRONG_SPLICE = {
    "start token spliced too": (lambda m, t, n, r: _splice(m, t, n, r, lambda a, r: r(a)), "start token"),
    "hook returns nothing": (lambda m, t, n, r: _splice(m, t, n, r, lambda a, r: None), "clean loss"),
    "only the last position": (lambda m, t, n, r: _splice(m, t, n, r, lambda a, r: torch.cat([a[:, :-1], r(a[:, -1:])], 1)),
                               None),
    "a per-token loss": (lambda m, t, n, r: m.run_with_hooks(
        t, fwd_hooks=[(n, lambda a, hook: torch.cat([a[:, :1], r(a[:, 1:])], 1))], return_type="loss",
        loss_per_token=True), "one number"),
}


def test_spliced_loss_accepts_reference_and_in_place_edits(model):
    assert checks.check_spliced_loss(sae_training.spliced_loss, model) is sae_training.spliced_loss

    def editing(m, t, n, replace):  # editing the activation in place and returning None works too
        return _splice(m, t, n, replace, _in_place_splice)
    assert checks.check_spliced_loss(editing, model) is editing


@pytest.mark.parametrize("name", WRONG_SPLICE)
def test_spliced_loss_rejects(name, model):
    wrong, match = WRONG_SPLICE[name]
    rejects(checks.check_spliced_loss, wrong, match, model)
