"""Checks for notebook 06 · Sparse autoencoders.

The references are the functions of `course_utils.sae`, `sae_training` and `sae_analysis`, the same
code that trains and reads the notebook's SAEs. A mistake is named only where the answer equals that
mistake's result exactly (b_dec not subtracted, the norm constraint forgotten, the L1 on x̂, TopK over
the batch, the start token spliced); otherwise the message says what differed and where.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from course_utils import sae, sae_analysis, sae_training
from course_utils.checks import Case, _as_number, compare, run_check

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


# ----------------------------------------------------------------------------- 6.4 reading latents

def check_f1_scores(fn: Callable) -> Callable:
    """F1 [n_labels, units] of each unit's firing as a detector of each label, 0 where 0/0."""
    g = _rng(9)
    fires = torch.rand(60, 7, generator=g) < 0.3
    labels = torch.rand(60, 3, generator=g) < 0.25
    fires[:, 0] = labels[:, 1]                                                          # a perfect detector
    fires[:, 1] = False                                                                 # a unit that never fires
    empty = labels.clone()
    empty[:, 2] = False                                                                 # a label that never occurs
    cases = [Case((fires, labels), label="random, a perfect unit, a silent unit"),
             Case((fires, empty), label="a label that never occurs: F1 0, not NaN"),
             Case((torch.ones(5, 2, dtype=torch.bool), torch.ones(5, 1, dtype=torch.bool)), label="all true: 1")]

    def f1_from(tp, fp, fn_):
        return 2 * tp / (2 * tp + fp + fn_).clamp_min(1)

    def counts(f, y):
        tp = y.T.float() @ f.float()
        return tp, f.sum(0).float() - tp, y.sum(0).float()[:, None] - tp

    def no_nan(case: Case, got: Any) -> str | None:
        if isinstance(got, torch.Tensor) and got.is_floating_point() and got.isnan().any():
            return "F1 is NaN where a unit never fires and the label never occurs (0/0): make those 0"
        return None

    named = _named(sae_analysis.f1_scores, {
        "that is the precision TP / (TP + FP); F1 is 2 TP / (2 TP + FP + FN)":
            lambda f, y: (lambda tp, fp, fn_: tp / (tp + fp).clamp_min(1))(*counts(f, y)),
        "that is the recall TP / (TP + FN); F1 is 2 TP / (2 TP + FP + FN)":
            lambda f, y: (lambda tp, fp, fn_: tp / (tp + fn_).clamp_min(1))(*counts(f, y)),
        "return [n_labels, units]: one row per label": lambda f, y: f1_from(*counts(f, y)).T,
    })
    return run_check("f1_scores", fn, sae_analysis.f1_scores, cases, properties=[no_nan, named],
                     dims=("label", "unit"))


def check_logit_effects(fn: Callable, model) -> Callable:
    """A direction's direct effect on the logits through the final norm (centred, times its weight)."""
    g = _rng(10)
    d = model.cfg.d_model
    dtype = model.W_U.dtype
    cases = [Case((model, torch.randn(d, generator=g).to(model.device, dtype)), label="a random direction"),
             Case((model, (torch.randn(d, generator=g) + 3).to(model.device, dtype)), label="far from centred"),
             Case((model, model.W_E[model.bos_token_id].detach().clone()), label="an embedding")]
    layer_norm = model.cfg.normalization_type == "LN"
    named = _named(sae_analysis.logit_effects, {
        "LayerNorm subtracts the mean first: centre the direction before the norm's weight":
            lambda m, v: (v * m.ln_final.weight) @ m.W_U,
        "multiply by the final norm's weight (model.ln_final.weight) before unembedding":
            lambda m, v: (v - v.mean() if layer_norm else v) @ m.W_U,
        "the norm's bias adds the same to every direction: leave it out (and centre, and weight)":
            lambda m, v: ((v - v.mean() if layer_norm else v) * m.ln_final.weight + m.ln_final.bias) @ m.W_U,
    })
    return run_check("logit_effects", fn, sae_analysis.logit_effects, cases, properties=[named], atol=1e-4)


# ----------------------------------------------------------------------------- 6.5 using latents

def _check_sae(model, seed: int = 11) -> sae.TopKSAE:
    """A random TopK SAE for `model`'s residual stream, decoder rows deliberately not at unit norm."""
    d = model.cfg.d_model
    s = sae.TopKSAE(sae.TopKSAEConfig(d_in=d, d_sae=4 * d, k=8, seed=seed))
    with torch.no_grad():
        s.W_dec.mul_(1 + torch.rand(4 * d, 1, generator=_rng(seed)))
        s.b_enc.fill_(0.1)
    return s.to(model.device)


def check_ablated_losses(fn: Callable, model) -> Callable:
    """Per-token loss with one latent's contribution f_i · d_i removed from the activation (error term kept)."""
    tokens = torch.randint(1, model.cfg.d_vocab, (2, 20), generator=_rng(12))
    tokens[:, 0] = model.bos_token_id
    tokens = tokens.to(model.device)
    check_sae = _check_sae(model)
    name = f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[name])
        f = check_sae.encode(cache[name].float())                                       # [batch, pos, d_sae]
    fires, at_start = (f[:, 1:] > 0).sum((0, 1)), (f[:, 0] > 0).any(0)
    busy = int((fires * at_start).argmax())                                             # busy, and on at the start token
    rare = int(torch.where(fires > 0, fires, fires.max() + 1).argmin())
    cases = [Case((model, tokens, name, check_sae, busy), label=f"latent {busy}, active on many tokens"),
             Case((model, tokens, "blocks.0.hook_resid_pre", check_sae, rare), label=f"latent {rare}, rarely active")]

    def run(hook_fn):
        def wrong(m, t, n, s, i):
            return m.run_with_hooks(t, fwd_hooks=[(n, lambda a, hook: hook_fn(a, s, i))], return_type="loss",
                                    loss_per_token=True)
        return wrong

    def contribution(a, s, i, raw=False):
        f = s.encode(a.float())[..., i:i + 1]
        return (f * (s.W_dec[i] if raw else s.directions[i])).to(a.dtype)

    def rest(a, s, i, change):
        out = a.clone()
        out[:, 1:] = change(a[:, 1:], s, i)
        return out

    named = _named(sae_analysis.ablated_losses, {
        "keep the SAE's error: subtract the latent's contribution from the activation itself, not from the "
        "reconstruction": run(lambda a, s, i: rest(a, s, i, lambda x, s, i: (s(x.float())[0] - contribution(x, s, i)).to(x.dtype))),
        "use the latent's unit direction (sae.directions[i]); the rows of sae.W_dec need not have unit norm":
            run(lambda a, s, i: rest(a, s, i, lambda x, s, i: x - contribution(x, s, i, raw=True))),
        "leave the start token (position 0) alone": run(lambda a, s, i: a - contribution(a, s, i)),
    })
    return run_check("ablated_losses", fn, sae_analysis.ablated_losses, cases, properties=[named],
                     dims=("batch", "position"))


# ----------------------------------------------------------------------------- 6.6 pathologies

def check_resample_dead_latents(fn: Callable) -> Callable:
    """Dead latents take the directions of the worst-reconstructed inputs (measured from b_dec)."""
    def case(seed: int, dead_idx: list[int], label: str, d_sae: int = 8) -> Case:
        g = _rng(seed)
        w = _weights(seed, d_in=5, d_sae=d_sae, batch=12, grad=False)
        x_hat = w["x"] + torch.randn(12, 5, generator=g) * torch.rand(12, 1, generator=g)   # uneven errors
        dead = torch.zeros(d_sae, dtype=torch.bool)
        dead[dead_idx] = True
        return Case((w["x"], x_hat, dead, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"]), label=label)

    cases = [case(0, [1, 4, 6], "three dead latents"), case(1, [], "none dead: nothing changes"),
             case(2, [0, 1, 2, 3, 4, 5, 7], "all but one dead")]

    def variant(**change):
        def wrong(x, x_hat, dead, W_enc, b_enc, W_dec, b_dec):
            n = int(dead.sum())
            err = ((x - x_hat) ** 2).sum(-1)
            pick = err.topk(n, largest=change.get("largest", True)).indices
            u = x[pick] - (0 if change.get("raw") else b_dec)
            u = u if change.get("no_unit") else sae.unit_rows(u)
            norms = W_enc[:, ~dead].norm(dim=0)
            W_enc, b_enc, W_dec = W_enc.clone(), b_enc.clone(), W_dec.clone()
            W_dec[dead], W_enc[:, dead], b_enc[dead] = u, 0.2 * norms.mean() * u.T, 0.0
            return W_dec
        return wrong

    named = _named(sae.resample_dead_latents, {
        "pick the inputs reconstructed *worst* (largest squared error), not best": variant(largest=False),
        "measure the new directions from b_dec: use x − b_dec": variant(raw=True),
        "scale each new decoder direction to unit norm": variant(no_unit=True),
    }, pick=lambda got: got.get("W_dec") if isinstance(got, dict) else None)
    def keys(case: Case, got: Any) -> str | None:
        if not isinstance(got, dict) or set(got) != {"W_enc", "b_enc", "W_dec"}:
            return "return a dict with keys 'W_enc', 'b_enc' and 'W_dec' (new tensors)"
        return None

    return run_check("resample_dead_latents", fn, sae.resample_dead_latents, cases,
                     properties=[keys, named])
