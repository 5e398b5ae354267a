"""The checks of notebook 06, sections 6.4-6.6, pass the reference, skip a stub, and reject plausible wrong answers."""

from __future__ import annotations

import pytest
import torch

from course_utils import load_model, sae, sae_analysis
from course_utils.checks import sae_latents as checks
from tests.check_helpers import rejects, stub

unit = sae.unit_rows


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")


def test_stubs_return_the_reference(capsys):
    assert checks.check_resample_dead_latents(stub) is sae.resample_dead_latents
    assert capsys.readouterr().out.count("not done yet") == 1


# ----------------------------------------------------------------------------- 6.4 reading latents

def _counts(f, y):
    tp = y.T.float() @ f.float()
    return tp, f.sum(0).float() - tp, y.sum(0).float()[:, None] - tp


WRONG_F1 = {
    "precision": (lambda f, y: (lambda tp, fp, fn: tp / (tp + fp).clamp_min(1))(*_counts(f, y)), "precision"),
    "recall": (lambda f, y: (lambda tp, fp, fn: tp / (tp + fn).clamp_min(1))(*_counts(f, y)), "recall"),
    "NaN at 0/0": (lambda f, y: (lambda tp, fp, fn: 2 * tp / (2 * tp + fp + fn))(*_counts(f, y)), "NaN"),
    "transposed": (lambda f, y: sae_analysis.f1_scores(f, y).T, "one row per label"),
    "accuracy": (lambda f, y: (f[:, None, :] == y[:, :, None]).float().mean(0), None),
    "float64": (lambda f, y: sae_analysis.f1_scores(f, y).double(), "dtype"),
    "F1 without the 2": (lambda f, y: (lambda tp, fp, fn: tp / (tp + fp + fn).clamp_min(1))(*_counts(f, y)), None),
}


def _f1_in_place(f, y):
    f &= y[:, :1]
    return sae_analysis.f1_scores(f, y)


WRONG_F1["in place"] = (_f1_in_place, "in place")


def test_f1_accepts_reference():
    assert checks.check_f1_scores(sae_analysis.f1_scores) is sae_analysis.f1_scores


@pytest.mark.parametrize("name", WRONG_F1)
def test_f1_rejects(name):
    wrong, match = WRONG_F1[name]
    rejects(checks.check_f1_scores, wrong, match)


WRONG_LOGITS = {
    "not centred": (lambda m, v: (v * m.ln_final.weight) @ m.W_U, "centre"),
    "no norm weight": (lambda m, v: (v - v.mean()) @ m.W_U, "weight"),
    "with the norm's bias": (lambda m, v: ((v - v.mean()) * m.ln_final.weight + m.ln_final.bias) @ m.W_U, "bias"),
    "the full norm applied": (lambda m, v: m.ln_final(v) @ m.W_U, None),
    "W_U transposed": (lambda m, v: m.W_U @ v, None),
    "changes the weight in place": (lambda m, v: ((v - v.mean()) * m.ln_final.weight.mul_(1.01)) @ m.W_U,
                                    "in place"),
}


def test_logit_effects_accepts_reference(model):
    assert checks.check_logit_effects(sae_analysis.logit_effects, model) is sae_analysis.logit_effects


@pytest.mark.parametrize("name", WRONG_LOGITS)
def test_logit_effects_rejects(name, model):
    wrong, match = WRONG_LOGITS[name]
    state = {k: v.clone() for k, v in model.model.state_dict().items()}
    try:
        rejects(checks.check_logit_effects, wrong, match, model)
    finally:
        model.model.load_state_dict(state)


# ----------------------------------------------------------------------------- 6.5 ablation

def _ablate(change):
    def fn(m, t, n, s, i):
        return m.run_with_hooks(t, fwd_hooks=[(n, lambda a, hook: change(a, s, i))], return_type="loss",
                                loss_per_token=True)
    return fn


def _minus(a, s, i, direction=None, positions=slice(1, None)):
    out = a.clone()
    f = s.encode(a[:, positions].float())[..., i:i + 1]
    out[:, positions] = a[:, positions] - f * (s.directions[i] if direction is None else direction)
    return out


WRONG_ABLATIONS = {
    "reconstruction minus the latent": (_ablate(lambda a, s, i: torch.cat(
        [a[:, :1], s(a[:, 1:])[0] - s.encode(a[:, 1:])[..., i:i + 1] * s.directions[i]], 1)), "error"),
    "raw decoder row": (_ablate(lambda a, s, i: _minus(a, s, i, direction=s.W_dec[i])), "unit direction"),
    "start token too": (_ablate(lambda a, s, i: _minus(a, s, i, positions=slice(None))), "start token"),
    "latent zeroed in the reconstruction only": (_ablate(lambda a, s, i: torch.cat([a[:, :1], s.decode(
        s.encode(a[:, 1:]) * (torch.arange(s.cfg.d_sae) != i))], 1)), None),
    "the direction added": (_ablate(lambda a, s, i: 2 * a - _minus(a, s, i)), None),
    "the mean loss": (lambda m, t, n, s, i: _ablate(lambda a, s, i: _minus(a, s, i))(m, t, n, s, i).mean(), "shape"),
}


def test_ablated_losses_accepts_reference(model):
    assert checks.check_ablated_losses(sae_analysis.ablated_losses, model) is sae_analysis.ablated_losses


@pytest.mark.parametrize("name", WRONG_ABLATIONS)
def test_ablated_losses_rejects(name, model):
    wrong, match = WRONG_ABLATIONS[name]
    rejects(checks.check_ablated_losses, wrong, match, model)


def test_ablation_check_rejects_changing_the_sae(model):
    def edits(m, t, n, s, i):
        with torch.no_grad():
            s.W_dec[i] = 0.0
        return sae_analysis.ablated_losses(m, t, n, s, i)
    rejects(checks.check_ablated_losses, edits, "in place", model)


# ----------------------------------------------------------------------------- 6.6 resampling

def _resample(largest=True, from_b_dec=True, normalise=True, live_only=True, scale=0.2):
    def fn(x, x_hat, dead, W_enc, b_enc, W_dec, b_dec):
        W_enc, b_enc, W_dec = W_enc.clone(), b_enc.clone(), W_dec.clone()
        n = int(dead.sum())
        if n:
            pick = ((x - x_hat) ** 2).sum(-1).topk(n, largest=largest).indices
            u = x[pick] - (b_dec if from_b_dec else 0)
            u = unit(u) if normalise else u
            norms = W_enc[:, ~dead].norm(dim=0) if live_only else W_enc.norm(dim=0)
            W_dec[dead], W_enc[:, dead], b_enc[dead] = u, scale * norms.mean() * u.T, 0.0
        return {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec}
    return fn


def _resample_in_place(x, x_hat, dead, W_enc, b_enc, W_dec, b_dec):
    new = sae.resample_dead_latents(x, x_hat, dead, W_enc, b_enc, W_dec, b_dec)
    W_dec[dead] = new["W_dec"][dead]
    return {"W_enc": new["W_enc"], "b_enc": new["b_enc"], "W_dec": W_dec}


WRONG_RESAMPLES = {
    "best reconstructed": (_resample(largest=False), "worst"),
    "not from b_dec": (_resample(from_b_dec=False), "b_dec"),
    "not unit": (_resample(normalise=False), "unit norm"),
    "all encoder norms": (_resample(live_only=False), "W_enc"),
    "encoder not scaled down": (_resample(scale=1.0), "W_enc"),
    "in place": (_resample_in_place, "in place"),
    "a tuple": (lambda *a: tuple(sae.resample_dead_latents(*a).values()), "dict"),
    "every latent resampled": (lambda x, xh, dead, *w: sae.resample_dead_latents(x, xh, torch.ones_like(dead), *w),
                               None),
}


def test_resample_accepts_reference():
    f = sae.resample_dead_latents
    assert checks.check_resample_dead_latents(f) is f


@pytest.mark.parametrize("name", WRONG_RESAMPLES)
def test_resample_rejects(name):
    wrong, match = WRONG_RESAMPLES[name]
    rejects(checks.check_resample_dead_latents, wrong, match)
