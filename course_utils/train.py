"""Grow the course's bundled model: a byte-level BPE tokenizer and a small GPT-2, trained on the
Python standard library's source.

    python -m course_utils.train                      # the 2-layer bundled model (about 40-60 min on 2 CPU cores)
    python -m course_utils.train --model course-4l    # the 4-layer one, with the 2-layer model's tokenizer
    python -m course_utils.train --resume             # carry on from the last checkpoint in --run-dir
    python -m course_utils.train --total-tokens 2e6   # a quick look

`--model` picks one of the course's recipes (PRESETS); any option given as well overrides it.

The run is deterministic given --seed (on the same machine and torch build), shows a progress bar,
saves a resumable checkpoint every few minutes, prints held-out loss and induction-head scores as
it goes, and writes the final model (fp16 safetensors) and a few snapshots taken along the way.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from course_utils.data import chunk_tokens, repeated_tokens, stdlib_corpus, tokenize_corpus

BUNDLED_DIR = Path(__file__).parent / "bundled_model"
SPECIAL = "<|endoftext|>"

# The course's bundled models: what differs from TrainConfig's defaults, where the model goes, and
# whose tokenizer it reuses (None: train a new one). The 4-layer model shares the 2-layer model's
# tokenizer, so token ids, corpora and vocabulary-sized tables are the same in every notebook.
PRESETS = {
    "course-2l": dict(overrides={}, out=BUNDLED_DIR, tokenizer=None, ship_snapshots=True),
    # Its snapshots stay in the run folder (measured in its card): shipping them would pass the
    # package's size budget.
    "course-4l": dict(overrides=dict(n_layer=4, snapshot_tokens=(2e6, 6e6, 12e6)),
                      out=Path(__file__).parent / "bundled_model_4l", tokenizer=BUNDLED_DIR, ship_snapshots=False),
}


@dataclass
class TrainConfig:
    seed: int = 0
    vocab_size: int = 4096        # BPE vocabulary, special token included
    n_layer: int = 2
    n_embd: int = 256             # d_model
    n_head: int = 8               # d_head = 32
    n_ctx: int = 256              # context length; every row starts with the start token
    batch_size: int = 8
    total_tokens: float = 18e6    # training budget in tokens
    lr: float = 2e-3
    min_lr_frac: float = 0.1      # cosine decay to this fraction of lr
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    repeat_frac: float = 0.10     # fraction of rows replaced by a random span repeated to fill the row
    repeat_span: tuple[int, int] = (10, 60)
    threads: int = 2
    bf16: bool = True             # bf16 autocast for the matmuls
    eval_every: int = 500         # steps between printed measurements
    ckpt_minutes: float = 5.0     # minutes between resumable checkpoints
    snapshot_tokens: tuple[float, ...] = (1e6, 4e6, 8e6, 12e6)  # models kept to show training


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2 style) with one special token, loadable by AutoTokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[SPECIAL],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=SPECIAL,
                                   eos_token=SPECIAL, unk_token=SPECIAL)


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """Save so that AutoTokenizer loads it in transformers 4.57 as well as 5.x (which would otherwise
    write its own class name, unknown to 4.x)."""
    tokenizer.save_pretrained(out_dir)
    path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("model_max_length", None)  # the model's context is in config.json; long files tokenise fine
    path.write_text(json.dumps(config, indent=2) + "\n")


def build_model(cfg: TrainConfig, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.n_ctx, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    config._attn_implementation = "eager"  # attention weights are needed by `measure`
    return GPT2LMHeadModel(config).to(torch.float32)


def make_batch(rows: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, bos_id: int) -> torch.Tensor:
    """Sample rows of real text; replace a few by `[BOS] span span span ...` of random tokens."""
    idx = torch.randint(0, len(rows), (cfg.batch_size,), generator=gen)
    batch = rows[idx].clone()  # [B, T]
    repeat = torch.rand(cfg.batch_size, generator=gen) < cfg.repeat_frac
    for b in torch.nonzero(repeat).flatten().tolist():
        span_len = int(torch.randint(cfg.repeat_span[0], cfg.repeat_span[1] + 1, (1,), generator=gen))
        span = torch.randint(1, cfg.vocab_size, (span_len,), generator=gen)
        n_rep = math.ceil((cfg.n_ctx - 1) / span_len)
        batch[b, 1:] = span.repeat(n_rep)[: cfg.n_ctx - 1]
        batch[b, 0] = bos_id
    return batch


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def measure(model, heldout_rows: torch.Tensor, bos_id: int, vocab_size: int) -> dict[str, float]:
    """Held-out loss, and the best induction and previous-token scores on repeated random tokens."""
    from course_utils.model_facts import induction_scores, prev_token_scores, repeat_losses

    model.eval()
    loss = model(heldout_rows[:32], labels=heldout_rows[:32]).loss.item()
    half = min(50, (model.config.n_positions - 1) // 2)
    tokens = repeated_tokens(16, half, vocab_size, bos_id=bos_id, seed=1234, low=1)  # [16, 1 + 2 * half]
    out = model(tokens, output_attentions=True)
    patterns = torch.stack(out.attentions)  # [layer, batch, head, q, k]
    first, second = repeat_losses(out.logits, tokens, half)
    model.train()
    return {"heldout_loss": loss, "induction": induction_scores(patterns, half).max().item(),
            "prev_token": prev_token_scores(patterns).max().item(), "repeat_loss_drop": first - second}


def save_model(model, tokenizer, out_dir: Path, extra: dict) -> None:
    """fp16 safetensors + tokenizer, in the Hugging Face layout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    half = type(model)(model.config)
    half.load_state_dict(model.state_dict())
    half = half.to(torch.float16)
    half.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(tokenizer, out_dir)
    (out_dir / "training_state.json").write_text(json.dumps(extra, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(PRESETS), default="course-2l",
                        help="which bundled model to grow (its architecture, output folder and tokenizer)")
    parser.add_argument("--out", type=Path, default=None, help="where the final model goes (default: the preset's)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="resumable checkpoints and the tokenizer in progress (default: runs/<model>)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="reuse the tokenizer saved in this folder instead of training one")
    parser.add_argument("--resume", action="store_true", help="carry on from --run-dir/checkpoint.pt")
    for field, default in asdict(TrainConfig()).items():
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=None,
                                help=f"default {default} (or the preset's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="save a checkpoint and stop after this many steps (carry on later with --resume)")
    parser.add_argument("--max-files", type=int, default=None, help="train on the first N files only (quick tests)")
    args = parser.parse_args(argv)
    preset = PRESETS[args.model]
    given = {k: getattr(args, k) for k in asdict(TrainConfig()) if getattr(args, k, None) is not None}
    cfg = TrainConfig(**{**preset["overrides"], **given})
    args.out = args.out or preset["out"]
    args.run_dir = args.run_dir or Path("runs") / args.model
    tokenizer_source = args.tokenizer or preset["tokenizer"]
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir: Path = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    train_corpus, held_corpus = stdlib_corpus("train"), stdlib_corpus("heldout")
    if args.max_files:
        train_corpus.texts, train_corpus.paths = train_corpus.texts[:args.max_files], train_corpus.paths[:args.max_files]
    tok_dir = run_dir / "tokenizer"
    if (args.resume and tok_dir.exists()) or tokenizer_source:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(tok_dir if args.resume and tok_dir.exists() else tokenizer_source)
        save_tokenizer(tokenizer, tok_dir)
        if len(tokenizer) != cfg.vocab_size:
            parser.error(f"the tokenizer in {tokenizer_source} has {len(tokenizer)} tokens, not --vocab-size {cfg.vocab_size}")
    else:
        tokenizer = train_tokenizer(train_corpus.texts, cfg.vocab_size)
        save_tokenizer(tokenizer, tok_dir)
    bos = tokenizer.bos_token_id
    train_rows = chunk_tokens(tokenize_corpus(train_corpus, tokenizer), cfg.n_ctx, bos)
    held_rows = chunk_tokens(tokenize_corpus(held_corpus, tokenizer), cfg.n_ctx, bos)
    print(f"corpus: {train_corpus} / held-out {len(held_corpus.texts)} files; "
          f"{train_rows.numel() / 1e6:.2f} M train tokens, {held_rows.numel() / 1e6:.2f} M held-out "
          f"({time.time() - t0:.0f} s)", flush=True)

    model = build_model(cfg, tokenizer).to(args.device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    tokens_per_step = cfg.batch_size * cfg.n_ctx
    total_steps = int(cfg.total_tokens // tokens_per_step)
    snapshot_steps = {int(t // tokens_per_step): t for t in cfg.snapshot_tokens}
    step, elapsed, history = 0, 0.0, []
    ckpt_path = run_dir / "checkpoint.pt"
    if args.resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        print(f"resumed at step {step}", flush=True)
    state_step = step

    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.2f} M parameters; {total_steps} steps of {tokens_per_step} tokens", flush=True)
    autocast = torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.bf16)
    last_ckpt, t_start = time.time(), time.time() - elapsed
    model.train()
    bar = tqdm(range(step, total_steps), initial=step, total=total_steps, desc="training", smoothing=0.05)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total_steps, cfg)
        batch = make_batch(train_rows, cfg, gen, bos).to(args.device)
        with autocast:
            loss = model(batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        done = step + 1
        if done % cfg.eval_every == 0 or done == total_steps or done in snapshot_steps:
            facts = measure(model, held_rows.to(args.device), bos, cfg.vocab_size)
            facts.update(step=done, tokens=done * tokens_per_step, minutes=(time.time() - t_start) / 60)
            history.append(facts)
            tqdm.write(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in facts.items()))
            if done in snapshot_steps:
                save_model(model, tokenizer, run_dir / "checkpoints" / f"step_{done:05d}", facts)
        stopping = args.stop_after is not None and done - state_step == args.stop_after
        if time.time() - last_ckpt > cfg.ckpt_minutes * 60 or done == total_steps or stopping:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                        "torch_rng": torch.get_rng_state(), "step": done, "history": history,
                        "elapsed": time.time() - t_start}, ckpt_path)
            last_ckpt = time.time()
        if stopping:
            print(f"stopped after step {done}; carry on with --resume", flush=True)
            return

    minutes = (time.time() - t_start) / 60
    record = {"config": asdict(cfg), "minutes": minutes, "machine": platform.processor() or platform.machine(),
              "device": args.device, "torch": torch.__version__, "python_corpus": train_corpus.python_version,
              "train_files": len(train_corpus.texts), "heldout_files": len(held_corpus.texts),
              "train_tokens": train_rows.numel(), "heldout_tokens": held_rows.numel(), "history": history}
    save_model(model, tokenizer, args.out, record)
    if preset["ship_snapshots"] and (run_dir / "checkpoints").exists():
        dest = args.out / "checkpoints"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(run_dir / "checkpoints", dest)
    print(f"saved {args.out} after {minutes:.1f} min", flush=True)


if __name__ == "__main__":
    main()
