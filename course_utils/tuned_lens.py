"""The tuned lens (Belrose et al. 2023): one learned affine "translator" per layer, so that an early
residual stream can be read in the final layer's basis before the final norm and unembedding.

    rows = training_rows(model, n_rows=96)                # [n, pos] token ids from the training files
    tuned = train_tuned_lens(model, rows)                  # a few seconds on a CPU, with a progress bar
    report = compare_lenses(model, tuned, heldout_rows)    # per read point: KL and top-1 agreement
    report["logit_kl"], report["tuned_kl"]                 # KL(final ‖ lens) in nats, one per read point

The read points are the residual stream entering each layer ("0_pre" ... ) and leaving the last one
("final_post"), as `cache.accumulated_resid()` labels them: `n_layers + 1` points. The logit lens reads
point l as `unembed(ln_final(resid_l))`; the tuned lens reads `unembed(ln_final(resid_l @ A_l + b_l))`.
A_l starts at the identity and b_l at zero, so before training the tuned lens *is* the logit lens; the
final point has no translator (it would be the identity). The loss is KL(final ‖ lens), the model's own
output distribution against the lens's, averaged over tokens and read points. The start token's
position is left out of training and evaluation: every row starts with it, and it predicts nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from course_utils.data import chunk_tokens, stdlib_corpus
from course_utils.errors import CourseError
from course_utils.hooked_model import HookedModel
from course_utils.lens import logit_lens

LossFn = Callable[[HookedModel, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ---- where the lenses read ------------------------------------------------------------------------------
def read_point_names(model: HookedModel) -> list[str]:
    """The hook names of the n_layers + 1 read points: resid_pre of every layer, then the last resid_post."""
    n = model.cfg.n_layers
    return [f"blocks.{l}.hook_resid_pre" for l in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]


def read_point_labels(model: HookedModel) -> list[str]:
    """Labels as `accumulated_resid` gives them: "0_pre", "1_pre", ..., "final_post"."""
    return [f"{l}_pre" for l in range(model.cfg.n_layers)] + ["final_post"]


@torch.no_grad()
def resid_stack(model: HookedModel, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: the logits [batch, pos, d_vocab] and the residual stream at every read point,
    [n_layers + 1, batch, pos, d_model] (float32)."""
    names = read_point_names(model)
    logits, cache = model.run_with_cache(tokens, names_filter=names)
    return logits.float(), torch.stack([cache[name].float() for name in names])


# ---- the lens itself ---------------------------------------------------------------------------------------
class TunedLens(torch.nn.Module):
    """One affine translator per layer: resid_l -> resid_l @ weight[l] + bias[l], for l < n_layers."""

    def __init__(self, n_layers: int, d_model: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(d_model).repeat(n_layers, 1, 1))  # [n_layers, d_model, d_model]
        self.bias = torch.nn.Parameter(torch.zeros(n_layers, d_model))              # [n_layers, d_model]

    @property
    def n_layers(self) -> int:
        return self.weight.shape[0]

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """Translate a stack of residuals [n_points, ..., d_model], n_points = n_layers or n_layers + 1
        (the final point is passed through unchanged). Returns the same shape."""
        n = self.n_layers
        if stack.shape[0] not in (n, n + 1):
            raise CourseError(f"The tuned lens has {n} translators: give it a stack of {n} or {n + 1} residuals "
                              f"(one per read point), not {stack.shape[0]}.")
        weight, bias = self.weight.to(stack.dtype), self.bias.to(stack.dtype)
        translated = translate(stack[:n], weight, bias)
        return torch.cat([translated, stack[n:]]) if stack.shape[0] > n else translated

    def logits(self, model: HookedModel, stack: torch.Tensor) -> torch.Tensor:
        """The tuned lens's logits at every read point: [n_points, ..., d_model] -> [n_points, ..., d_vocab]."""
        return logit_lens(model, self(stack.to(model.dtype)))


def translate(resid: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """resid [n_layers, ..., d_model] @ weight [n_layers, d_model, d_model] + bias [n_layers, d_model]."""
    flat = resid.reshape(resid.shape[0], -1, resid.shape[-1])                  # [n_layers, tokens, d_model]
    out = torch.bmm(flat, weight) + bias[:, None]
    return out.reshape(resid.shape)


def kl_from_final(lens_logits: torch.Tensor, final_logits: torch.Tensor) -> torch.Tensor:
    """KL(final ‖ lens) in nats for each token: [..., d_vocab] and [..., d_vocab] (broadcast) -> [...]."""
    final = final_logits.float().log_softmax(-1)
    return (final.exp() * (final - lens_logits.float().log_softmax(-1))).sum(-1)


def tuned_lens_loss(model: HookedModel, resid: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    final_logits: torch.Tensor) -> torch.Tensor:
    """The tuned lens's training loss: KL(final ‖ lens) averaged over tokens and layers, a scalar.

    resid [n_layers, tokens, d_model] (the read points before each layer), weight [n_layers, d_model,
    d_model], bias [n_layers, d_model], final_logits [tokens, d_vocab] (the model's own output).
    """
    lens_logits = logit_lens(model, translate(resid, weight, bias))           # [n_layers, tokens, d_vocab]
    return kl_from_final(lens_logits, final_logits).mean()


# ---- data -------------------------------------------------------------------------------------------------
def training_rows(model: HookedModel, n_rows: int = 96, window: int = 256, rows_per_file: int = 2,
                  seed: int = 0) -> torch.Tensor:
    """Rows `[BOS] + window - 1 tokens` from the standard library's *training* files, at most
    `rows_per_file` from each file (files in a seeded random order), so the rows are varied. [n_rows, window]"""
    corpus = stdlib_corpus("train")
    order = list(range(len(corpus.texts)))
    random.Random(seed).shuffle(order)
    rows: list[torch.Tensor] = []
    for i in order:
        ids = torch.tensor(model.tokenizer(corpus.texts[i], add_special_tokens=False)["input_ids"], dtype=torch.long)
        rows += list(chunk_tokens(ids, window, model.bos_token_id)[:rows_per_file])
        if len(rows) >= n_rows:
            return torch.stack(rows[:n_rows])
    raise CourseError(f"The training files hold fewer than {n_rows} rows of {window} tokens; ask for fewer rows.")


@contextmanager
def frozen(model: HookedModel) -> Iterator[HookedModel]:
    """The model's weights with requires_grad off inside the block (no gradient is spent on them)."""
    params = [p for p in model.model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


def _batches(rows: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(rows), batch):
        yield rows[i:i + batch]


# ---- training ------------------------------------------------------------------------------------------------
def train_tuned_lens(model: HookedModel, rows: torch.Tensor, *, steps: int = 150, batch_tokens: int = 256,
                     lr: float = 5e-3, loss_fn: LossFn | None = None, seed: int = 0, progress: bool = True,
                     row_batch: int = 16) -> TunedLens:
    """Train one translator per layer on the token rows [n, pos] (start token first in every row).

    The residuals at every read point are computed once (no gradients through the model); each step
    draws `batch_tokens` random tokens, and Adam (learning rate `lr`, decaying linearly to 0) lowers
    `loss_fn(model, resid, weight, bias, final_logits)` (default `tuned_lens_loss`). Returns the lens
    in eval mode, on the model's device.
    """
    loss_fn = loss_fn or tuned_lens_loss
    n, d = model.cfg.n_layers, model.cfg.d_model
    with torch.no_grad():
        stack = torch.cat([resid_stack(model, r.to(model.device))[1][:, :, 1:].flatten(1, 2)
                           for r in _batches(rows, row_batch)], 1)              # [n + 1, tokens, d_model]
    lens = TunedLens(n, d).to(model.device)
    opt = torch.optim.Adam(lens.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / steps)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="training the tuned lens", disable=not progress, mininterval=0.5)
    with frozen(model), torch.enable_grad():
        for _ in bar:
            pick = torch.randint(0, stack.shape[1], (batch_tokens,), generator=gen).to(stack.device)
            batch = stack[:, pick]                                               # [n + 1, batch_tokens, d_model]
            with torch.no_grad():
                final_logits = logit_lens(model, batch[n].to(model.dtype)).float()
            loss = loss_fn(model, batch[:n].to(model.dtype), lens.weight, lens.bias, final_logits)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.requires_grad:
                raise CourseError("The loss function must return a scalar tensor that carries a gradient to the "
                                  "weight and bias; check it with its check cell first.")
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            bar.set_postfix(kl=f"{loss.item():.3f}", refresh=False)
    return lens.eval()


# ---- evaluation -----------------------------------------------------------------------------------------------
@torch.no_grad()
def lens_scores(model: HookedModel, lens: TunedLens | None, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token scores of one batch: KL(final ‖ lens) and whether the lens's top-1 token is the model's,
    each [n_points, batch, pos - 1] (the start token's position left out). `lens=None`: the logit lens."""
    logits, stack = resid_stack(model, tokens.to(model.device))
    stack = stack[:, :, 1:]
    lens_logits = logit_lens(model, stack) if lens is None else lens.logits(model, stack)
    final = logits[:, 1:]
    return {"kl": kl_from_final(lens_logits, final).cpu(),
            "top1": (lens_logits.argmax(-1) == final.argmax(-1)).cpu()}


@torch.no_grad()
def compare_lenses(model: HookedModel, tuned: TunedLens, rows: torch.Tensor, row_batch: int = 4) -> dict:
    """The logit lens and the tuned lens on the token rows [n, pos]: for each read point, the mean
    KL(final ‖ lens) in nats and the share of tokens whose top-1 token is the model's own.

    Returns {"labels", "logit_kl", "tuned_kl", "logit_top1", "tuned_top1"} (lists, one entry per read
    point) and "tokens" (how many were scored)."""
    totals = {key: torch.zeros(model.cfg.n_layers + 1, dtype=torch.float64)
              for key in ("logit_kl", "tuned_kl", "logit_top1", "tuned_top1")}
    count = 0
    for batch in _batches(rows, row_batch):
        for name, lens in (("logit", None), ("tuned", tuned)):
            scores = lens_scores(model, lens, batch)
            totals[f"{name}_kl"] += scores["kl"].double().sum((1, 2))
            totals[f"{name}_top1"] += scores["top1"].double().sum((1, 2))
        count += batch.shape[0] * (batch.shape[1] - 1)
    report = {"labels": read_point_labels(model)}
    report.update({key: (value / count).tolist() for key, value in totals.items()})
    report["tokens"] = count
    return report


def main() -> None:
    import argparse
    import time

    from course_utils.loading import load_model
    from course_utils.token_labels import code_windows

    parser = argparse.ArgumentParser(description="Train the tuned lens and compare it with the logit lens "
                                                 "on held-out code.")
    parser.add_argument("--model", default=None, help="hub id or folder (default: the bundled model)")
    parser.add_argument("--heldout-tokens", type=int, default=32 * 256)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model, device="cpu")
    rows = training_rows(model)
    start = time.perf_counter()
    tuned = train_tuned_lens(model, rows)
    seconds = time.perf_counter() - start
    report = compare_lenses(model, tuned, code_windows(model, max_tokens=args.heldout_tokens).tokens)
    print(f"tuned lens trained in {seconds:.1f} s on {rows.numel()} tokens; scored on {report['tokens']} "
          "held-out tokens")
    print(f"{'read point':>12} {'KL logit':>9} {'KL tuned':>9} {'top-1 logit':>12} {'top-1 tuned':>12}")
    for i, label in enumerate(report["labels"]):
        print(f"{label:>12} {report['logit_kl'][i]:9.3f} {report['tuned_kl'][i]:9.3f} "
              f"{report['logit_top1'][i]:12.1%} {report['tuned_top1'][i]:12.1%}")


if __name__ == "__main__":
    main()
