"""The shipped model meets its card: induction and previous-token heads, the logit lens, readable
neurons; stored as small fp16 safetensors with its training snapshots."""

import json

import pytest
import torch
from safetensors import safe_open

from course_utils import BUNDLED_MODEL, bundled_checkpoints, load_model
from course_utils import model_facts


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def heldout(model):
    return model_facts.heldout_windows(model, max_tokens=30_000)


def test_stored_as_fp16_safetensors_of_a_few_mb():
    path = BUNDLED_MODEL / "model.safetensors"
    assert path.stat().st_size < 8e6
    with safe_open(path, "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    assert (BUNDLED_MODEL / "tokenizer.json").exists() and (BUNDLED_MODEL / "MODEL_CARD.md").exists()
    state = json.loads((BUNDLED_MODEL / "training_state.json").read_text())
    assert state["config"]["seed"] == 0 and state["minutes"] > 0


def test_induction_and_previous_token_heads(model):
    facts = model_facts.induction_facts(model)
    assert facts["induction_score"] >= 0.4
    assert facts["loss_drop"] >= 3.0
    assert facts["prev_token_score"] >= 0.35
    assert int(facts["prev_token_head"].split(".")[0]) < int(facts["induction_head"].split(".")[0])


def test_logit_lens_kl_falls_with_depth_to_zero(model, heldout):
    lens = model_facts.logit_lens_stats(model, heldout[0][:32])
    kl, top1 = lens["kl"], lens["top1"]
    assert all(a > b for a, b in zip(kl, kl[1:])) and abs(kl[-1]) < 1e-4
    assert all(a < b for a, b in zip(top1, top1[1:])) and top1[-1] == 1.0


def test_three_readable_neurons(model, heldout):
    neurons = model_facts.readable_neurons(model, *heldout)
    readable = [c for c, r in neurons.items() if r["fraction"] >= 0.8]
    assert len(readable) >= 3, neurons


def test_heldout_loss_is_far_below_chance(model, heldout):
    assert model_facts.heldout_loss(model, heldout[0][:32]) < 0.5 * torch.log(torch.tensor(4096.0)).item()


def test_snapshots_show_induction_forming():
    snaps = bundled_checkpoints()
    assert 3 <= len(snaps) <= 6
    first = model_facts.induction_facts(load_model(snaps[0], device="cpu"), batch=8)
    assert first["induction_score"] < 0.2
