"""Each check of notebook 06 passes the reference, skips a stub, and rejects plausible wrong answers."""

from __future__ import annotations

import pytest
import torch

from course_utils import load_model, sae, sae_analysis, sae_training
from course_utils.checks import CheckFailed
from course_utils.checks import sae as checks

unit = sae.unit_rows


def stub(*args, **kwargs):
    raise NotImplementedError


def rejects(check, wrong, match: str | None = None, *extra) -> None:
    with pytest.raises(CheckFailed, match=match):
        check(wrong, *extra)


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")


def test_stubs_return_the_reference(capsys, model):
    assert checks.check_encode(stub) is sae.encode_relu
    assert checks.check_topk_relu(stub) is sae.topk_relu
    assert checks.check_spliced_loss(stub, model) is sae_training.spliced_loss
    assert checks.check_resample_dead_latents(stub) is sae.resample_dead_latents
    assert capsys.readouterr().out.count("not done yet") == 4


# ----------------------------------------------------------------------------- 6.1 recovery

WRONG_MAX_COS = {
    "|cosine|": (lambda t, l: (unit(t) @ unit(l).T).abs().max(-1).values, "opposite way"),
    "dot products": (lambda t, l: (t @ l.T).max(-1).values, "norms"),
    "max over the true axis": (lambda t, l: (unit(t) @ unit(l).T).max(0).values, "true"),
    "mean, not max": (lambda t, l: (unit(t) @ unit(l).T).mean(-1), None),
    "only the learned normalised": (lambda t, l: (t @ unit(l).T).max(-1).values, None),
    "float64 always": (lambda t, l: sae.max_cosine_similarity(t, l).double(), "dtype"),
    "returns the argmax": (lambda t, l: (unit(t) @ unit(l).T).max(-1).indices, None),
    "normalises in place": (lambda t, l: sae.max_cosine_similarity(t.div_(t.norm(dim=-1, keepdim=True)), l),
                            "in place"),
}


def test_max_cosine_accepts_reference():
    assert checks.check_max_cosine_similarity(sae.max_cosine_similarity) is sae.max_cosine_similarity


@pytest.mark.parametrize("name", WRONG_MAX_COS)
def test_max_cosine_rejects(name):
    wrong, match = WRONG_MAX_COS[name]
    rejects(checks.check_max_cosine_similarity, wrong, match)


# ----------------------------------------------------------------------------- 6.2 the SAE

def _in_place_encode(x, W, b, bd):
    x -= bd
    return torch.relu(x @ W + b)


WRONG_ENCODE = {
    "no pre-encoder bias": (lambda x, W, b, bd: torch.relu(x @ W + b), "subtract the pre-encoder bias"),
    "b_enc after the ReLU": (lambda x, W, b, bd: torch.relu((x - bd) @ W) + b, "inside the ReLU"),
    "b_dec added": (lambda x, W, b, bd: torch.relu((x + bd) @ W + b), "you added it"),
    "no ReLU": (lambda x, W, b, bd: (x - bd) @ W + b, "ReLU"),
    "b_dec subtracted after encoding": (lambda x, W, b, bd: torch.relu(x @ W - bd @ W.detach() + b), "gradient"),
    "in place": (_in_place_encode, "in-place"),
    "no gradient": (lambda x, W, b, bd: sae.encode_relu(x, W, b, bd).detach(), "no gradient"),
    "float64": (lambda x, W, b, bd: sae.encode_relu(x.double(), W.double(), b.double(), bd.double()), "dtype"),
    "transposed W_enc": (lambda x, W, b, bd: torch.relu((x - bd) @ W.T + b), None),
}


def test_encode_accepts_reference():
    assert checks.check_encode(sae.encode_relu) is sae.encode_relu


@pytest.mark.parametrize("name", WRONG_ENCODE)
def test_encode_rejects(name):
    wrong, match = WRONG_ENCODE[name]
    rejects(checks.check_encode, wrong, match)


def _in_place_decode(f, W, b):
    W /= W.norm(dim=-1, keepdim=True)
    return f @ W + b


WRONG_DECODE = {
    "norm constraint forgotten": (lambda f, W, b: f @ W + b, "unit norm"),
    "columns normalised": (lambda f, W, b: f @ (W / W.norm(dim=0, keepdim=True)) + b, "not each column"),
    "no b_dec": (lambda f, W, b: f @ unit(W), "add b_dec"),
    "normalised in place": (_in_place_decode, "in-place"),
    "norm detached": (lambda f, W, b: f @ (W / W.norm(dim=-1, keepdim=True).detach()) + b, "gradient"),
    "no gradient": (lambda f, W, b: sae.decode(f, W, b).detach(), "no gradient"),
    "b_dec subtracted": (lambda f, W, b: f @ unit(W) - b, None),
    "wrong shape": (lambda f, W, b: (f @ unit(W) + b).T, "shape"),
}


def test_decode_accepts_reference():
    assert checks.check_decode(sae.decode) is sae.decode


@pytest.mark.parametrize("name", WRONG_DECODE)
def test_decode_rejects(name):
    wrong, match = WRONG_DECODE[name]
    rejects(checks.check_decode, wrong, match)


def _losses(mse, l1, lam):
    return {"mse": mse, "l1": l1, "loss": mse + lam * l1}


WRONG_LOSSES = {
    "L1 on x_hat": (lambda x, xh, f, lam: _losses(((x - xh) ** 2).sum(-1).mean(), xh.abs().sum(-1).mean(), lam),
                    "not on the reconstruction"),
    "L1 on the error": (lambda x, xh, f, lam: _losses(((x - xh) ** 2).sum(-1).mean(), (x - xh).abs().sum(-1).mean(), lam),
                        "not on the error"),
    "L2 penalty": (lambda x, xh, f, lam: _losses(((x - xh) ** 2).sum(-1).mean(), (f ** 2).sum(-1).mean(), lam), "f_i²"),
    "L1 averaged over latents": (lambda x, xh, f, lam: _losses(((x - xh) ** 2).sum(-1).mean(), f.abs().mean(), lam),
                                 "averaged over latents"),
    "MSE averaged over dims": (lambda x, xh, f, lam: _losses(((x - xh) ** 2).mean(), f.abs().sum(-1).mean(), lam),
                               "averaged over both"),
    "no coefficient": (lambda x, xh, f, lam: {**sae.relu_l1_losses(x, xh, f, lam),
                                              "loss": ((x - xh) ** 2).sum(-1).mean() + f.abs().sum(-1).mean()}, "loss"),
    "per-example losses": (lambda x, xh, f, lam: {"mse": ((x - xh) ** 2).sum(-1), "l1": f.abs().sum(-1),
                                                  "loss": ((x - xh) ** 2).sum(-1) + lam * f.abs().sum(-1)}, "0-dim"),
    "numbers, no gradient": (lambda x, xh, f, lam: {k: torch.tensor(v.item()) for k, v in
                                                    sae.relu_l1_losses(x, xh, f, lam).items()}, "no gradient"),
    "a tuple": (lambda x, xh, f, lam: tuple(sae.relu_l1_losses(x, xh, f, lam).values()), "dict"),
    "float64": (lambda x, xh, f, lam: {k: v.double() for k, v in sae.relu_l1_losses(x, xh, f, lam).items()}, "dtype"),
}


def test_losses_accept_reference():
    assert checks.check_relu_l1_losses(sae.relu_l1_losses) is sae.relu_l1_losses


@pytest.mark.parametrize("name", WRONG_LOSSES)
def test_losses_reject(name):
    wrong, match = WRONG_LOSSES[name]
    rejects(checks.check_relu_l1_losses, wrong, match)


def _topk_in_place(pre, k):
    kth = pre.topk(k, -1).values[..., -1:]
    pre[pre < kth] = 0
    return torch.relu(pre)


WRONG_TOPK = {
    "over the batch": (lambda p, k: torch.zeros_like(p).scatter(0, p.topk(k, 0).indices, torch.relu(p.topk(k, 0).values)),
                       "over the batch"),
    "no ReLU": (lambda p, k: torch.zeros_like(p).scatter(-1, p.topk(k, -1).indices, p.topk(k, -1).values), "ReLU"),
    "abs top-k": (lambda p, k: torch.zeros_like(p).scatter(-1, p.abs().topk(k, -1).indices,
                                                            torch.relu(p.gather(-1, p.abs().topk(k, -1).indices))),
                  "absolute"),
    "only the values": (lambda p, k: torch.relu(p.topk(k, -1).values), "shape"),
    "k + 1 kept": (lambda p, k: sae.topk_relu(p, min(k + 1, p.shape[-1])), None),
    "mask with no gradient": (lambda p, k: (p >= p.topk(k, -1).values[..., -1:]).float() * torch.relu(p).detach(),
                              "gradient"),
    "in place": (_topk_in_place, "in-place"),
    "float64": (lambda p, k: sae.topk_relu(p, k).double(), "dtype"),
}


def test_topk_accepts_reference_and_a_mask_version():
    assert checks.check_topk_relu(sae.topk_relu) is sae.topk_relu

    def masked(pre, k):
        kth = pre.topk(k, dim=-1).values[..., -1:]
        return torch.where(pre >= kth, torch.relu(pre), torch.zeros_like(pre))
    assert checks.check_topk_relu(masked) is masked


@pytest.mark.parametrize("name", WRONG_TOPK)
def test_topk_rejects(name):
    wrong, match = WRONG_TOPK[name]
    rejects(checks.check_topk_relu, wrong, match)


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
