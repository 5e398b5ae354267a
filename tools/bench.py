"""Benchmarks: what hooks and caching cost, and how long each notebook takes.

    python tools/bench.py                 # everything (make bench)
    python tools/bench.py --skip-notebooks

Timings interleave the variants round by round and report the fastest round (the least disturbed
by other work on the machine) and the median. Notebook figures are wall time and peak resident
memory of the whole process tree (nbconvert and its kernel), one run each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_utils import BUNDLED_MODELS, load_model  # noqa: E402


def time_variants(variants: dict, rounds: int) -> dict[str, list[float]]:
    times = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def bench_load(rounds: int) -> None:
    """load_model() of each bundled model in this process (imports done), and of the default model in a
    fresh interpreter (imports included)."""
    for name in BUNDLED_MODELS:
        load_model(name, device="cpu")
        warm = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            load_model(name, device="cpu")
            warm.append(time.perf_counter() - t0)
        print(f"load_model({name!r}) on CPU, imports done: {min(warm):.3f} s fastest, {statistics.median(warm):.3f} s median")
    cold = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from course_utils import load_model; load_model(device='cpu')"],
                       check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        cold.append(time.perf_counter() - t0)
    print(f"load_model() in a fresh interpreter, imports included: {min(cold):.2f} s fastest, "
          f"{statistics.median(cold):.2f} s median")


def bench_hooks(batch: int, pos: int, rounds: int) -> None:
    model = load_model(device="cpu")
    tokens = torch.randint(1, model.cfg.d_vocab, (batch, pos), generator=torch.Generator().manual_seed(0))
    resid = [n for n in model.hook_names if "resid" in n]
    caches = {}

    def cache_all():
        caches["all"] = model.run_with_cache(tokens)[1]

    def cache_resid():
        caches["resid"] = model.run_with_cache(tokens, names_filter=resid)[1]

    def hf_outputs():
        with torch.no_grad():
            model.model(input_ids=tokens, output_hidden_states=True, output_attentions=True, use_cache=False)

    def plain():
        with torch.no_grad():
            model(tokens)

    from transformers import AutoModelForCausalLM

    from course_utils import BUNDLED_MODEL
    hf_models = {impl: AutoModelForCausalLM.from_pretrained(BUNDLED_MODEL, dtype=torch.float32, attn_implementation=impl).eval()
                 for impl in ("eager", "sdpa")}

    def hf_plain(impl):
        def run():
            with torch.no_grad():
                hf_models[impl](input_ids=tokens, use_cache=False)
        return run

    variants = {"plain forward": plain, "transformers alone (eager attention)": hf_plain("eager"),
                "transformers alone (sdpa attention)": hf_plain("sdpa"),
                "run_with_cache (residual stream only)": cache_resid,
                "run_with_cache (every hook)": cache_all, "transformers hidden_states + attentions": hf_outputs}
    times = time_variants(variants, rounds)
    base = min(times["plain forward"])
    print(f"\nHooks and cache: bundled model, batch {batch} x {pos} tokens, {torch.get_num_threads()} threads, "
          f"{rounds} interleaved rounds")
    print(f"{'variant':42} {'fastest ms':>11} {'median ms':>10} {'vs plain':>9}")
    for name, ts in times.items():
        print(f"{name:42} {min(ts) * 1e3:11.1f} {statistics.median(ts) * 1e3:10.1f} {min(ts) / base:8.2f}x")
    print(f"cache memory: every hook {caches['all'].nbytes() / 2**20:.1f} MiB "
          f"({len(caches['all'])} tensors); residual stream only {caches['resid'].nbytes() / 2**20:.1f} MiB")


def bench_notebook(path: Path) -> tuple[float, float]:
    """(seconds, peak MiB) of executing one notebook in a fresh kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
               "--ExecutePreprocessor.timeout=900", "--output-dir", tmp, str(path)]
        t0 = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = 0
        while proc.poll() is None:
            try:
                tree = [proc] + proc.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"{path.name} failed:\n{proc.stderr.read().decode()[-2000:]}")
        return seconds, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pos", type=int, default=256)
    parser.add_argument("--skip-notebooks", action="store_true")
    parser.add_argument("--notebooks", nargs="*", default=None, help="only these notebook names (e.g. 03_logit_lens)")
    args = parser.parse_args()
    bench_load(5)
    bench_hooks(args.batch, args.pos, args.rounds)
    if not args.skip_notebooks:
        print("\nNotebooks (targets: 90 s and 3 GB on 2 CPU cores)")
        print(f"{'notebook':40} {'seconds':>8} {'peak MiB':>9}")
        for folder in ("solutions", "notebooks"):
            for path in sorted((ROOT / folder).glob("*.ipynb")):
                if args.notebooks and path.stem not in args.notebooks:
                    continue
                seconds, mib = bench_notebook(path)
                print(f"{folder + '/' + path.name:40} {seconds:8.1f} {mib:9.0f}")


if __name__ == "__main__":
    main()
