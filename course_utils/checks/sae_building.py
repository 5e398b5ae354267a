"""Checks for notebook 06 · Sparse autoencoders, sections 6.1-6.2: feature recovery and the SAE's
pieces (encoder, decoder, L1 loss, TopK); and the helper the other SAE check modules share.

The references are the functions of `course_utils.sae`, the same code that trains the notebook's
SAEs. A mistake is named only where the answer equals that mistake's result exactly (b_dec not
subtracted, the norm constraint forgotten, the L1 on x̂, TopK over the batch); otherwise the message
says what differed and where.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from course_utils import sae
from course_utils.checks import Case, run_check

Property = Callable[[Case, Any], "str | None"]


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(got: Any, value: torch.Tensor) -> bool:
    return (isinstance(got, torch.Tensor) and got.shape == value.shape and got.is_floating_point()
            and torch.allclose(got.detach().double(), value.detach().double(), atol=1e-5, rtol=1e-4))


def _named(reference: Callable, mistakes: dict[str, Callable[..., torch.Tensor]],
           pick: Callable[[Any], Any] = lambda got: got) -> Property:
    """A property that names a mistake when the answer equals that mistake's result and not the
    reference's (`pick` selects the part of the answer to look at)."""
    def prop(case: Case, got: Any) -> str | None:
        got = pick(got)
        try:
            if _same(got, pick(reference(*case.args, **case.kwargs))):
                return None
        except Exception:
            return None
        for message, wrong in mistakes.items():
            try:
                value = wrong(*case.args, **case.kwargs)
            except Exception:
                continue
            if _same(got, value):
                return message
        return None
    return prop


# ----------------------------------------------------------------------------- 6.1 feature recovery

def check_max_cosine_similarity(fn: Callable) -> Callable:
    """For each true direction, the best cosine with any learned one."""
    g = _rng(0)
    true = torch.randn(6, 4, generator=g) * torch.rand(6, 1, generator=g).add(0.5)          # uneven norms
    learned = torch.randn(9, 4, generator=g) * 3
    opposite = torch.cat([-true[:3] * 2, torch.randn(2, 4, generator=g)])                   # anti-parallel copies
    cases = [Case((true, learned), label="random, uneven norms"),
             Case((true[:3], opposite), label="learned directions pointing the opposite way"),
             Case((true, true * 0.1), label="learned = true, scaled: all cosines 1"),
             Case((true, learned[:1]), label="a single learned direction"),
             Case((torch.randn(5, 3, generator=g).double(), torch.randn(7, 3, generator=g).double()), label="float64")]
    unit = sae.unit_rows
    named = _named(sae.max_cosine_similarity, {
        "take the largest cosine, not the largest |cosine|: a direction pointing the opposite way is not a match":
            lambda t, l: (unit(t) @ unit(l).T).abs().max(-1).values,
        "divide by both norms: these are dot products of unnormalised directions, not cosines":
            lambda t, l: (t @ l.T).max(-1).values,
        "return one value per *true* direction (the max over the learned axis, dim=-1)":
            lambda t, l: (unit(t) @ unit(l).T).max(0).values,
    })
    return run_check("max_cosine_similarity", fn, sae.max_cosine_similarity, cases, properties=[named])


# ----------------------------------------------------------------------------- 6.2 the SAE

def _weights(seed: int, d_in: int = 6, d_sae: int = 10, batch: int = 8, grad: bool = True) -> dict[str, torch.Tensor]:
    g = _rng(seed)
    w = {"x": torch.randn(batch, d_in, generator=g) + 1.0,
         "W_enc": torch.randn(d_in, d_sae, generator=g) * 0.5,
         "b_enc": torch.randn(d_sae, generator=g) * 0.3,
         "W_dec": torch.randn(d_sae, d_in, generator=g) * (1 + torch.rand(d_sae, 1, generator=g)),  # rows not unit
         "b_dec": torch.randn(d_in, generator=g)}
    return {k: v.requires_grad_(grad) for k, v in w.items()}


def check_encode(fn: Callable) -> Callable:
    """f = ReLU((x − b_dec) W_enc + b_enc)."""
    def case(seed: int, label: str, **shape) -> Case:
        w = _weights(seed, **shape)
        return Case((w["x"], w["W_enc"], w["b_enc"], w["b_dec"]), label=label)

    three_d = _weights(3)
    cases = [case(0, "a batch of 8"), case(1, "d_sae < d_in", d_sae=4), case(2, "one example", batch=1),
             Case((three_d["x"].detach().view(2, 4, 6), three_d["W_enc"], three_d["b_enc"], three_d["b_dec"]),
                  label="leading axes [2, 4, d_in]")]
    named = _named(sae.encode_relu, {
        "subtract the pre-encoder bias b_dec from x before encoding: f = ReLU((x − b_dec) W_enc + b_enc)":
            lambda x, W, b, bd: torch.relu(x @ W + b),
        "b_enc goes inside the ReLU, added before it": lambda x, W, b, bd: torch.relu((x - bd) @ W) + b,
        "subtract b_dec from x before encoding (you added it)": lambda x, W, b, bd: torch.relu((x + bd) @ W + b),
        "a ReLU should follow the encoder: latents are never negative": lambda x, W, b, bd: (x - bd) @ W + b,
    })
    return run_check("encode", fn, sae.encode_relu, cases, properties=[named], grad=True,
                     dims=("batch", "latent"))


def check_decode(fn: Callable) -> Callable:
    """x̂ = f Ŵ_dec + b_dec, Ŵ_dec's rows at unit norm."""
    def case(seed: int, label: str, batch: int = 8, d_sae: int = 10) -> Case:
        w = _weights(seed, batch=batch, d_sae=d_sae)
        f = torch.relu(torch.randn(batch, d_sae, generator=_rng(seed + 10))).requires_grad_()
        return Case((f, w["W_dec"], w["b_dec"]), label=label)

    cases = [case(0, "rows of W_dec far from unit norm"), case(1, "one example", batch=1),
             case(2, "a single latent", d_sae=1)]
    named = _named(sae.decode, {
        "scale each latent's decoder row to unit norm before decoding (the norm constraint is missing)":
            lambda f, W, b: f @ W + b,
        "normalise each row of W_dec (one latent's direction, dim=-1), not each column":
            lambda f, W, b: f @ (W / W.norm(dim=0, keepdim=True)) + b,
        "add b_dec back after decoding": lambda f, W, b: f @ sae.unit_rows(W),
    })
    return run_check("decode", fn, sae.decode, cases, properties=[named], grad=True, dims=("batch", "d_in"))


def check_relu_l1_losses(fn: Callable) -> Callable:
    """{"mse": Σ_d (x − x̂)², "l1": Σ_i |f_i|, "loss": mse + λ·l1}, each a mean over the batch."""
    def case(seed: int, label: str, l1_coeff: float = 0.3, batch: int = 8) -> Case:
        g = _rng(seed)
        x = torch.randn(batch, 6, generator=g)
        x_hat = (x + 0.3 * torch.randn(batch, 6, generator=g)).requires_grad_()
        f = torch.relu(torch.randn(batch, 10, generator=g)).requires_grad_()
        return Case((x, x_hat, f, l1_coeff), label=label)

    cases = [case(0, "λ = 0.3"), case(1, "λ = 0: the loss is the MSE", l1_coeff=0.0),
             case(2, "λ = 2, one example", l1_coeff=2.0, batch=1)]

    def shape(case: Case, got: Any) -> str | None:
        if not isinstance(got, dict) or set(got) != {"mse", "l1", "loss"}:
            return f"return a dict with keys 'mse', 'l1' and 'loss'; got {type(got).__name__}" + (
                f" with keys {sorted(map(str, got))}" if isinstance(got, dict) else "")
        for key, value in got.items():
            if not isinstance(value, torch.Tensor) or value.dim() != 0:
                return (f"'{key}' should be one number, a 0-dim tensor (a mean over the batch); got "
                        + (f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__))
        if not got["loss"].requires_grad:
            return ("'loss' carries no gradient, so training cannot use it: keep every step a torch operation "
                    "(no .item(), float() or numpy)")
        return None

    x_hat_l1 = lambda x, xh, f, lam: xh.abs().sum(-1).mean()                        # noqa: E731
    named = _named(sae.relu_l1_losses, {
        "the L1 penalty is on the latents f, not on the reconstruction x̂": x_hat_l1,
        "the L1 penalty is on the latents f, not on the error x − x̂": lambda x, xh, f, lam: (x - xh).abs().sum(-1).mean(),
        "L1 is Σ|f_i|, not Σ f_i²": lambda x, xh, f, lam: (f ** 2).sum(-1).mean(),
        "sum the L1 over latents and average over the batch (you averaged over latents)":
            lambda x, xh, f, lam: f.abs().mean(),
    }, pick=lambda got: got.get("l1") if isinstance(got, dict) else None)
    named_mse = _named(sae.relu_l1_losses, {
        "sum the squared error over the d_in dimensions and average over the batch (you averaged over both)":
            lambda x, xh, f, lam: ((x - xh) ** 2).mean(),
    }, pick=lambda got: got.get("mse") if isinstance(got, dict) else None)
    return run_check("relu_l1_losses", fn, sae.relu_l1_losses, cases, properties=[shape, named, named_mse])


def check_topk_relu(fn: Callable) -> Callable:
    """Keep the k largest pre-activations of each row, ReLU them, zero the rest."""
    g = _rng(4)
    pre = torch.randn(6, 12, generator=g)
    negative = torch.randn(5, 8, generator=g) - 1.5                                  # most of the top-k negative
    cases = [Case((pre.clone().requires_grad_(), 3), label="k = 3 of 12"),
             Case((negative.requires_grad_(), 4), label="mostly negative: the ReLU matters"),
             Case((torch.randn(2, 3, 10, generator=g).requires_grad_(), 2), label="leading axes [2, 3, d_sae]"),
             Case((pre.clone().requires_grad_(), 1), label="k = 1"),
             Case((pre[:1].clone().requires_grad_(), 12), label="k = d_sae: a plain ReLU"),
             Case((torch.randn(12, 6, generator=g).requires_grad_(), 2), label="more rows than latents")]
    named = _named(sae.topk_relu, {
        "take the top k over the latent axis (the last, dim=-1), one set per example, not over the batch":
            lambda p, k: torch.zeros_like(p).scatter(0, p.topk(k, dim=0).indices, torch.relu(p.topk(k, dim=0).values)),
        "apply a ReLU to the k kept values: a negative pre-activation is not an active latent":
            lambda p, k: torch.zeros_like(p).scatter(-1, p.topk(k, -1).indices, p.topk(k, -1).values),
        "keep the k *largest* values, not the k largest in absolute value":
            lambda p, k: torch.zeros_like(p).scatter(-1, p.abs().topk(k, -1).indices,
                                                     torch.relu(p.gather(-1, p.abs().topk(k, -1).indices))),
    })
    return run_check("topk_relu", fn, sae.topk_relu, cases, properties=[named], grad=True)


