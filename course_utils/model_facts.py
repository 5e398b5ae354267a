"""Measure what the bundled models' cards claim: induction heads, a previous-token head, the
logit lens and a tuned lens, readable neurons, held-out loss and load time.

    python -m course_utils.model_facts                      # every bundled model
    python -m course_utils.model_facts --model course-4l    # one of them
    python -m course_utils.model_facts --model gpt2         # any supported model (online)

Every measurement is a small function that takes a `HookedModel`, so notebooks and tests reuse them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from course_utils.data import repeated_tokens
from course_utils.hooked_model import HookedModel
from course_utils.token_labels import code_windows
from course_utils.tuned_lens import compare_lenses, lens_scores, train_tuned_lens, training_rows


# ---- attention-head scores ------------------------------------------------------------------------
def prev_token_scores(patterns: torch.Tensor) -> torch.Tensor:
    """Mean attention from each position to the one before it. patterns [layer, batch, head, q, k] -> [layer, head]."""
    return patterns.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].mean((1, -1))


def induction_scores(patterns: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Mean attention from each token of the second copy to the token after its first occurrence.

    patterns [layer, batch, head, q, k] over `[BOS] A A` with |A| = seq_len -> [layer, head].
    Token i of the second copy sits at seq_len + i; the token after its first occurrence at i + 1:
    a fixed offset of 1 - seq_len between key and query.
    """
    diag = patterns.diagonal(offset=1 - seq_len, dim1=-2, dim2=-1)  # element j: query seq_len - 1 + j
    return diag[..., 2:].mean((1, -1))  # queries seq_len + 1 .. 2 * seq_len: the whole second copy


def repeat_losses(logits: torch.Tensor, tokens: torch.Tensor, seq_len: int) -> tuple[float, float]:
    """Mean next-token loss on the first and on the second copy of `[BOS] A A` (tokens 2..seq_len of each)."""
    logprobs = logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, pos-1]
    first = -logprobs[:, 1:seq_len].mean().item()
    second = -logprobs[:, seq_len + 1:].mean().item()
    return first, second


def induction_facts(model: HookedModel, seq_len: int = 50, batch: int = 32, seed: int = 0) -> dict:
    tokens = repeated_tokens(batch, seq_len, model.cfg.d_vocab, bos_id=model.bos_token_id, seed=seed, low=1)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    patterns = cache.stack_activation("pattern")
    ind, prev = induction_scores(patterns, seq_len), prev_token_scores(patterns)
    first, second = repeat_losses(logits, tokens.to(logits.device), seq_len)
    il, ih = divmod(int(ind.argmax()), model.cfg.n_heads)
    pl, ph = divmod(int(prev[:il].argmax()), model.cfg.n_heads) if il > 0 else (None, None)
    return {"induction_head": f"{il}.{ih}", "induction_score": ind.max().item(),
            "prev_token_head": None if pl is None else f"{pl}.{ph}",
            "prev_token_score": None if pl is None else prev[pl, ph].item(),
            "loss_first_copy": first, "loss_second_copy": second, "loss_drop": first - second,
            "induction_scores": ind.tolist(), "prev_token_scores": prev.tolist()}


# ---- held-out text -----------------------------------------------------------------------------------
def heldout_windows(model: HookedModel, max_tokens: int = 60_000, window: int = 256):
    """Held-out source files cut into windows `[BOS] + window-1 tokens`: (tokens, texts, in_string).
    See `token_labels.code_windows`, which also labels every token."""
    w = code_windows(model, max_tokens=max_tokens, window=window)
    return w.tokens, w.texts, w.in_string


@torch.no_grad()
def heldout_loss(model: HookedModel, rows: torch.Tensor, batch: int = 32) -> float:
    losses = []
    for i in range(0, len(rows), batch):
        toks = rows[i:i + batch].to(model.device)
        logits = model(toks)
        losses.append(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), toks[:, 1:].flatten()))
    return torch.stack(losses).mean().item()


@torch.no_grad()
def logit_lens_stats(model: HookedModel, rows: torch.Tensor, batch: int = 16) -> dict[str, list[float]]:
    """The logit lens read before each layer and after the last, on held-out rows: KL(final ‖ lens) in
    nats and the share of tokens whose lens top-1 is the model's final top-1, averaged over tokens (the
    start token's position left out). Computed by `tuned_lens.lens_scores`, the notebooks' own code."""
    kl, top1 = [], []
    for i in range(0, len(rows), batch):
        scores = lens_scores(model, None, rows[i:i + batch])
        kl.append(scores["kl"].flatten(1))
        top1.append(scores["top1"].flatten(1))
    return {"kl": torch.cat(kl, 1).double().mean(1).tolist(), "top1": torch.cat(top1, 1).double().mean(1).tolist()}


def tuned_lens_stats(model: HookedModel, rows: torch.Tensor, seed: int = 0) -> dict:
    """Train a tuned lens on the training files (`tuned_lens.train_tuned_lens`, its defaults) and compare it
    with the logit lens on the held-out rows: `compare_lenses`'s report plus the training time in seconds."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    tuned = train_tuned_lens(model, training_rows(model, seed=seed), seed=seed, progress=False)
    seconds = time.perf_counter() - start
    return {**compare_lenses(model, tuned, rows), "train_seconds": seconds}


# ---- readable neurons -------------------------------------------------------------------------------
CONCEPTS = {
    "inside a string": lambda text, prev, in_str: in_str,
    "line-start indentation": lambda text, prev, in_str: text.strip(" \t") in ("", "\n") and text.count(" ") >= 4
    and (text.startswith("\n") or prev.endswith("\n")),
    "name after def": lambda text, prev, in_str: prev.strip() == "def",
    "self": lambda text, prev, in_str: text.strip() == "self",
}


@torch.no_grad()
def readable_neurons(model: HookedModel, rows: torch.Tensor, texts: list[list[str]], in_string: torch.Tensor,
                     top_k: int = 100, batch: int = 16) -> dict[str, dict]:
    """For each concept, the MLP neuron whose top-k activations on held-out text are most often that concept."""
    n_l, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    names = [f"blocks.{l}.mlp.hook_post" for l in range(n_l)]
    acts = []  # [tokens, n_layers * d_mlp], kept in fp16 to stay small
    for i in range(0, len(rows), batch):
        _, cache = model.run_with_cache(rows[i:i + batch], names_filter=names)
        acts.append(torch.cat([cache[n][:, 1:] for n in names], -1).flatten(0, 1).half().cpu())
    acts = torch.cat(acts)
    labels = {}
    flat_text = [t for row in texts for t in row[1:]]
    flat_prev = [p for row in texts for p in row[:-1]]
    flat_str = in_string[:, 1:].flatten().tolist()
    for concept, test in CONCEPTS.items():
        labels[concept] = torch.tensor([test(t, p, s) for t, p, s in zip(flat_text, flat_prev, flat_str)])
    top = acts.float().topk(top_k, dim=0).indices  # [top_k, neurons]
    result = {}
    for concept, mask in labels.items():
        frac = mask[top].float().mean(0)  # [neurons]
        best = int(frac.argmax())
        result[concept] = {"neuron": f"L{best // d_mlp}N{best % d_mlp}", "fraction": frac[best].item(),
                           "base_rate": mask.float().mean().item()}
    return result


def measure(model: HookedModel, max_tokens: int = 60_000) -> dict:
    rows, texts, in_string = heldout_windows(model, max_tokens=max_tokens)
    facts = {"induction": induction_facts(model)}
    facts["heldout_loss"] = heldout_loss(model, rows)
    facts["logit_lens"] = logit_lens_stats(model, rows)
    facts["tuned_lens"] = tuned_lens_stats(model, rows[:64])
    facts["neurons"] = readable_neurons(model, rows, texts, in_string)
    facts["heldout_tokens_measured"] = int(rows.numel())
    return facts


def report(name: str, facts: dict) -> None:
    ind, lens = facts["induction"], facts["logit_lens"]
    print(f"\n== {name} ==\nload_model: {facts['load_seconds']:.2f} s (imports done)")
    print(f"induction head {ind['induction_head']}: score {ind['induction_score']:.3f}; previous-token head "
          f"{ind['prev_token_head']}: {ind['prev_token_score']:.3f}")
    print(f"repeated random tokens: loss {ind['loss_first_copy']:.2f} on the first copy, "
          f"{ind['loss_second_copy']:.2f} on the second (drop {ind['loss_drop']:.2f} nats)")
    print(f"held-out loss: {facts['heldout_loss']:.3f} nats/token over {facts['heldout_tokens_measured']} tokens")
    print("logit lens, read before each layer and after the last:")
    print("  KL(final || lens): " + ", ".join(f"{k:.3f}" for k in lens["kl"]))
    print("  top-1 agreement:   " + ", ".join(f"{a:.3f}" for a in lens["top1"]))
    tuned = facts["tuned_lens"]
    gain = [1 - t / l if l > 0 else 0.0 for t, l in zip(tuned["tuned_kl"][:-1], tuned["logit_kl"][:-1])]
    print(f"tuned lens (trained in {tuned['train_seconds']:.0f} s), on {tuned['tokens']} held-out tokens:")
    print("  KL logit lens:     " + ", ".join(f"{k:.3f}" for k in tuned["logit_kl"]))
    print("  KL tuned lens:     " + ", ".join(f"{k:.3f}" for k in tuned["tuned_kl"]))
    print("  KL lower by:       " + ", ".join(f"{g:.0%}" for g in gain))
    print("  top-1 tuned lens:  " + ", ".join(f"{a:.3f}" for a in tuned["tuned_top1"]))
    for concept, r in facts["neurons"].items():
        print(f"neuron {r['neuron']:>8} for {concept!r}: {r['fraction']:.0%} of its top 100 (base rate {r['base_rate']:.1%})")


def main() -> None:
    from course_utils.loading import BUNDLED_MODELS, load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None,
                        help="a bundled model's name, a hub id or a folder (repeatable; default: every bundled model)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    names = args.model or [n for n, path in BUNDLED_MODELS.items() if (path / "config.json").exists()]
    load_model(names[0], device="cpu")  # imports and first-load work, so the timings below are the load alone
    every = {}
    for name in names:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = load_model(name, device="cpu")
        load_s = time.perf_counter() - t0
        facts = measure(model)
        facts["load_seconds"] = load_s
        report(name, facts)
        every[name] = facts
    if args.json:
        with open(args.json, "w") as f:
            json.dump(every, f, indent=1)


if __name__ == "__main__":
    main()
