"""The checks of notebook 06, sections 6.1-6.2, pass the reference, skip a stub, and reject plausible wrong answers."""

from __future__ import annotations

import pytest
import torch

from course_utils import sae
from course_utils.checks import sae_building as checks
from tests.check_helpers import rejects, stub

unit = sae.unit_rows


def test_stubs_return_the_reference(capsys):
    assert checks.check_encode(stub) is sae.encode_relu
    assert checks.check_topk_relu(stub) is sae.topk_relu
    assert capsys.readouterr().out.count("not done yet") == 2


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
