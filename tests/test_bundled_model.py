"""The shipped models meet their cards: induction and previous-token heads, the logit lens (and, for the
4-layer model, a tuned lens that beats it), readable neurons, held-out loss; stored as small fp16
safetensors, with the package as a whole under 45 MB."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import course_utils
from course_utils import BUNDLED_MODELS, bundled_checkpoints, load_model
from course_utils import model_facts

NAMES = list(BUNDLED_MODELS)


@pytest.fixture(scope="module", params=NAMES)
def name(request):
    return request.param


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {n: load_model(n, device="cpu") for n in NAMES}


@pytest.fixture(scope="module")
def heldout(models):
    """The same held-out windows for every model (they share the tokenizer)."""
    return model_facts.heldout_windows(models["course-2l"], max_tokens=30_000)


def test_models_share_one_tokenizer(models):
    a, b = (models[n].tokenizer for n in NAMES)
    assert a.get_vocab() == b.get_vocab() and a.bos_token_id == b.bos_token_id


def test_stored_as_fp16_safetensors_with_a_card(name):
    folder = BUNDLED_MODELS[name]
    path = folder / "model.safetensors"
    assert path.stat().st_size < 10e6
    with safe_open(path, "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    assert (folder / "tokenizer.json").exists() and (folder / "MODEL_CARD.md").exists()
    state = json.loads((folder / "training_state.json").read_text())
    assert state["config"]["seed"] == 0 and state["minutes"] > 0


def test_package_with_its_models_stays_under_45_mb():
    root = Path(course_utils.__file__).parent
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert size < 45e6, f"course_utils is {size / 1e6:.1f} MB"


def test_depths(models):
    assert models["course-2l"].cfg.n_layers == 2 and models["course-4l"].cfg.n_layers == 4


def test_induction_and_previous_token_heads(models, name):
    facts = model_facts.induction_facts(models[name])
    assert facts["induction_score"] >= 0.4
    assert facts["loss_drop"] >= 3.0
    assert facts["prev_token_score"] >= 0.35
    assert int(facts["prev_token_head"].split(".")[0]) < int(facts["induction_head"].split(".")[0])


def test_logit_lens_sharpens_at_every_read_point(models, name, heldout):
    lens = model_facts.logit_lens_stats(models[name], heldout[0][:32])
    kl, top1 = lens["kl"], lens["top1"]
    assert len(kl) == models[name].cfg.n_layers + 1
    assert all(a > b for a, b in zip(kl, kl[1:])) and abs(kl[-1]) < 1e-4
    assert all(a < b for a, b in zip(top1, top1[1:])) and top1[-1] == 1.0


@pytest.mark.slow
def test_tuned_lens_beats_the_logit_lens_by_a_fifth_somewhere_in_the_deeper_model(models, heldout):
    stats = model_facts.tuned_lens_stats(models["course-4l"], heldout[0][:32])
    gains = [1 - t / l for t, l in zip(stats["tuned_kl"][:-1], stats["logit_kl"][:-1])]
    assert max(gains) >= 0.2, gains


def test_three_readable_neurons(models, name, heldout):
    neurons = model_facts.readable_neurons(models[name], *heldout)
    readable = [c for c, r in neurons.items() if r["fraction"] >= 0.8]
    assert len(readable) >= 3, neurons


def test_heldout_loss_far_below_chance_and_lower_for_the_deeper_model(models, heldout):
    loss = {n: model_facts.heldout_loss(models[n], heldout[0][:64]) for n in NAMES}
    assert loss["course-2l"] < 0.5 * torch.log(torch.tensor(4096.0)).item()
    assert loss["course-4l"] < loss["course-2l"], loss


def test_snapshots_show_induction_forming():
    snaps = bundled_checkpoints()
    assert 3 <= len(snaps) <= 6
    first = model_facts.induction_facts(load_model(snaps[0], device="cpu"), batch=8)
    assert first["induction_score"] < 0.2
