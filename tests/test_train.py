"""The training script: a tiny run is deterministic, and stopping then resuming gives the same model."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from course_utils import load_model

TINY = ["--max-files", "40", "--vocab-size", "300", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
        "--n-ctx", "64", "--batch-size", "4", "--total-tokens", "2560", "--eval-every", "5", "--threads", "1"]


def train(tmp_path, name, *extra):
    out = tmp_path / name
    result = subprocess.run([sys.executable, "-m", "course_utils.train", "--out", str(out), "--run-dir",
                             str(tmp_path / f"run_{name}"), *TINY, *extra], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


@pytest.mark.slow
def test_tiny_run_is_deterministic_resumable_and_loadable(tmp_path):
    full, log = train(tmp_path, "a")
    assert "induction=" in log and "saved" in log
    _, log_b = train(tmp_path, "b", "--stop-after", "4")
    assert "stopped after step 4" in log_b
    resumed, log_c = train(tmp_path, "b", "--resume")
    assert "resumed at step 4" in log_c
    a, c = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
    assert all(t.dtype == torch.float16 for t in a.values())
    model = load_model(full, device="cpu")
    assert model.cfg.n_layers == 1 and model.cfg.d_vocab == 300
    assert model.to_str_tokens("def f(): pass")[0] == "<|endoftext|>"
