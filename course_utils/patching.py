"""Activation patching and attribution patching: which activations carry the difference between a
clean and a corrupted prompt to the output.

Patching runs the *corrupted* prompt and writes one activation of the *clean* run into it (read from
a cache of the clean run): if the metric moves back toward its clean value, that activation carries
what the corruption removed. This is the "denoising" direction, as ARENA and Meng et al.'s causal
tracing use it. Every function here patches every prompt of a batch at once, so the prompts of a
batch must line up position by position (one template, one token changed).

    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    grid = resid_patching_grid(model, corrupted_tokens, clean_cache, metric)        # [n_layers, pos]
    heads = head_patching_grid(model, corrupted_tokens, clean_cache, metric)        # [n_layers, n_heads]

Attribution patching (Nanda 2023) estimates every patch at once from one forward and one backward
pass: the metric's gradient on the corrupted run, dotted with (clean - corrupted activation). It is
the first-order Taylor term of patching: exact for a model that is linear in the activation, wrong
where it is far from linear (a saturated softmax, a large change).

Path patching (Wang et al. 2022) follows one edge: a sender head's clean output reaching only the
query, key or value of one later head, every other path held at its corrupted value.

`metric` is any function of the logits [batch, pos, d_vocab] that returns one number as a 0-d tensor,
e.g. `lambda logits: logit_diff(logits, answers, wrongs).mean()`; attribution patching needs it to
keep its gradient (no `.item()` inside).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from tqdm.auto import tqdm

from course_utils.errors import CourseError

Metric = Callable[[torch.Tensor], torch.Tensor]


# ---- metrics -----------------------------------------------------------------------------------------
def logit_diff(logits: torch.Tensor, answers: torch.Tensor, wrongs: torch.Tensor) -> torch.Tensor:
    """The logit of the right answer minus the logit of the wrong one, at the last position of each prompt.
    logits [batch, pos, d_vocab]; answers, wrongs [batch] token ids -> [batch]."""
    last = logits[:, -1]                                                    # [batch, d_vocab]
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, answers.to(last.device)] - last[rows, wrongs.to(last.device)]


def normalized(value, clean: float, corrupted: float):
    """Rescale a metric so that the corrupted run scores 0 and the clean run 1 (tensors or numbers)."""
    if abs(float(clean) - float(corrupted)) < 1e-6:
        raise CourseError("The clean and corrupted runs give the same metric, so nothing can be restored; "
                          "pick prompts whose answers differ.")
    return (value - corrupted) / (clean - corrupted)


# ---- hooks (TransformerLens's form: fn(activation, hook)) ------------------------------------------------
def patch_resid_hook(activation: torch.Tensor, hook, pos: int, clean_cache) -> torch.Tensor:
    """Write the clean run's activation at position `pos` into the running one. Any activation shaped
    [batch, pos, ...]; bind `pos` and `clean_cache` with functools.partial."""
    activation[:, pos] = clean_cache[hook.name][:, pos]
    return activation


def patch_head_hook(z: torch.Tensor, hook, head: int, clean_cache) -> torch.Tensor:
    """For `attn.hook_z` [batch, pos, head, d_head]: write the clean run's output of one head, at every
    position, into the running one."""
    z[:, :, head] = clean_cache[hook.name][:, :, head]
    return z


# ---- activation patching ---------------------------------------------------------------------------------
def _check_aligned(corrupted_tokens: torch.Tensor, clean_cache, name: str) -> None:
    if name not in clean_cache:
        raise CourseError(f"The clean cache has no {name!r}: cache it, e.g. run_with_cache(clean_tokens) "
                          "with no names_filter, or with this name in it.")
    if tuple(clean_cache[name].shape[:2]) != tuple(corrupted_tokens.shape):
        raise CourseError(f"The clean run is {tuple(clean_cache[name].shape[:2])} (batch, pos) and the corrupted "
                          f"tokens are {tuple(corrupted_tokens.shape)}: patching needs prompts of the same length, "
                          "position by position.")


@torch.no_grad()
def resid_patching_grid(model, corrupted_tokens: torch.Tensor, clean_cache, metric: Metric,
                        activation: str = "resid_pre", progress: bool = False) -> torch.Tensor:
    """The metric after patching the clean `activation` ("resid_pre", "attn_out", "mlp_out",
    "resid_mid" or "resid_post") of one layer at one position into the corrupted run, for every layer
    and position. corrupted_tokens [batch, pos] -> [n_layers, pos] (float32)."""
    n_layers, n_pos = model.cfg.n_layers, corrupted_tokens.shape[1]
    grid = torch.zeros(n_layers, n_pos)
    cells = [(layer, pos) for layer in range(n_layers) for pos in range(n_pos)]
    for layer, pos in tqdm(cells, disable=not progress, desc=f"patching {activation}"):
        name = f"blocks.{layer}.hook_{activation}"
        _check_aligned(corrupted_tokens, clean_cache, name)
        hook = partial(patch_resid_hook, pos=pos, clean_cache=clean_cache)
        grid[layer, pos] = float(metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])))
    return grid


@torch.no_grad()
def head_patching_grid(model, corrupted_tokens: torch.Tensor, clean_cache, metric: Metric,
                       progress: bool = False) -> torch.Tensor:
    """The metric after patching one head's clean output (`attn.hook_z`, every position) into the
    corrupted run, for every head. corrupted_tokens [batch, pos] -> [n_layers, n_heads] (float32)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    grid = torch.zeros(n_layers, n_heads)
    cells = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    for layer, head in tqdm(cells, disable=not progress, desc="patching heads"):
        name = f"blocks.{layer}.attn.hook_z"
        _check_aligned(corrupted_tokens, clean_cache, name)
        hook = partial(patch_head_hook, head=head, clean_cache=clean_cache)
        grid[layer, head] = float(metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])))
    return grid


# ---- attribution patching ---------------------------------------------------------------------------------
def _deltas_and_grads(model, clean_tokens, corrupted_tokens, metric: Metric, names: list[str]):
    """Clean minus corrupted activations, and the metric's gradient on the corrupted run, by name."""
    if clean_tokens.shape != corrupted_tokens.shape:
        raise CourseError(f"Clean {tuple(clean_tokens.shape)} and corrupted {tuple(corrupted_tokens.shape)} "
                          "tokens must have the same shape.")
    _, clean = model.run_with_cache(clean_tokens, names_filter=names)
    with torch.enable_grad():  # notebooks often turn gradients off globally
        logits, corrupted = model.run_with_cache(corrupted_tokens, names_filter=names, grad=True)
        value = metric(logits)
        if not value.requires_grad:
            raise CourseError("The metric carries no gradient: compute it with torch operations on the logits "
                              "(no .item(), float() or numpy inside).")
        grads = torch.autograd.grad(value, [corrupted[n] for n in names])
    return {n: clean[n] - corrupted[n].detach() for n in names}, dict(zip(names, grads))


def attribution_patching_grid(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric: Metric,
                              activation: str = "resid_pre") -> torch.Tensor:
    """Attribution patching's estimate of `resid_patching_grid` minus the corrupted run's metric:
    (clean - corrupted activation) . d metric / d activation on the corrupted run, summed over the
    batch and d_model. tokens [batch, pos] -> [n_layers, pos] (float32)."""
    names = [f"blocks.{layer}.hook_{activation}" for layer in range(model.cfg.n_layers)]
    deltas, grads = _deltas_and_grads(model, clean_tokens, corrupted_tokens, metric, names)
    return torch.stack([(deltas[n] * grads[n]).sum((0, -1)) for n in names]).float()


def attribution_patching_heads(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor,
                               metric: Metric) -> torch.Tensor:
    """Attribution patching's estimate of `head_patching_grid` minus the corrupted run's metric: for each
    head, (clean z - corrupted z) . d metric / d z on the corrupted run, summed over the batch, positions
    and d_head. tokens [batch, pos] -> [n_layers, n_heads] (float32)."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    deltas, grads = _deltas_and_grads(model, clean_tokens, corrupted_tokens, metric, names)
    return torch.stack([(deltas[n] * grads[n]).sum((0, 1, 3)) for n in names]).float()


# ---- path patching ------------------------------------------------------------------------------------------
@torch.no_grad()
def path_patching_grid(model, corrupted_tokens: torch.Tensor, clean_cache, corrupted_cache, sender: tuple[int, int],
                       receiver_layer: int, metric: Metric) -> torch.Tensor:
    """The metric when the clean output of one `sender` head (layer, head) reaches only one input (query, key
    or value) of one head of `receiver_layer`, and nothing else (Wang et al. 2022). Two passes on the
    corrupted prompt: first with the sender patched and every other head and MLP in between frozen at its
    corrupted value, caching what the receivers read; then with one receiver's q, k or v taken from there.
    Models with one key and value per head (GPT-2). -> [3 (q, k, v), n_heads] (float32)."""
    sender_layer, sender_head = sender
    if not 0 <= sender_layer < receiver_layer < model.cfg.n_layers:
        raise CourseError(f"The receivers must come after the sender: sender layer {sender_layer}, receiver layer "
                          f"{receiver_layer}, in a model of {model.cfg.n_layers} layers.")
    freeze = lambda act, hook: corrupted_cache[hook.name]                               # noqa: E731
    hooks = [(f"blocks.{sender_layer}.attn.hook_z", partial(patch_head_hook, head=sender_head, clean_cache=clean_cache))]
    for layer in range(sender_layer, receiver_layer):
        hooks.append((f"blocks.{layer}.hook_mlp_out", freeze))
        if layer > sender_layer:
            hooks.append((f"blocks.{layer}.attn.hook_z", freeze))
    inputs = [f"blocks.{receiver_layer}.attn.hook_{x}" for x in "qkv"]
    with model.hooks(hooks):
        _, sent = model.run_with_cache(corrupted_tokens, names_filter=inputs)
    grid = torch.zeros(3, model.cfg.n_heads)
    for i, name in enumerate(inputs):
        for head in range(model.cfg.n_heads):
            hook = partial(patch_head_hook, head=head, clean_cache=sent)
            grid[i, head] = float(metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])))
    return grid


@torch.no_grad()
def path_patching_mlps(model, corrupted_tokens: torch.Tensor, clean_cache, corrupted_cache, sender: tuple[int, int],
                       metric: Metric) -> torch.Tensor:
    """The metric when the clean output of the `sender` head reaches only the input of one MLP (its norm's
    output, `ln2.hook_normalized`), every other path held at its corrupted value, for the MLP of every layer
    from the sender's on. -> [n_layers] (float32; NaN before the sender's layer)."""
    sender_layer, sender_head = sender
    freeze = lambda act, hook: corrupted_cache[hook.name]                               # noqa: E731
    send = (f"blocks.{sender_layer}.attn.hook_z", partial(patch_head_hook, head=sender_head, clean_cache=clean_cache))
    effects = torch.full((model.cfg.n_layers,), float("nan"))
    for receiver in range(sender_layer, model.cfg.n_layers):
        hooks = [send] + [(f"blocks.{layer}.hook_mlp_out", freeze) for layer in range(sender_layer, receiver)]
        hooks += [(f"blocks.{layer}.attn.hook_z", freeze) for layer in range(sender_layer + 1, receiver + 1)]
        name = f"blocks.{receiver}.ln2.hook_normalized"
        with model.hooks(hooks):
            _, sent = model.run_with_cache(corrupted_tokens, names_filter=[name])
        effects[receiver] = float(metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, lambda a, hook: sent[hook.name])])))
    return effects
