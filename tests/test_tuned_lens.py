"""The tuned lens: it starts as the logit lens, training lowers its KL at every layer, it leaves the
model alone, and the evaluation's numbers mean what they say."""

from __future__ import annotations

import pytest
import torch

from course_utils import CourseError, lens, tuned_lens
from course_utils.data import Corpus
from tests.conftest import VOCAB


@pytest.fixture(scope="module")
def rows() -> torch.Tensor:
    body = torch.randint(1, VOCAB, (24, 15), generator=torch.Generator().manual_seed(0))
    return torch.cat([torch.zeros(24, 1, dtype=torch.long), body], 1)       # [24, 16], start token first


@pytest.fixture(scope="module")
def trained(model, rows) -> tuned_lens.TunedLens:
    return tuned_lens.train_tuned_lens(model, rows[:16], steps=60, batch_tokens=64, lr=1e-2, progress=False)


def test_read_points_match_accumulated_resid(model, rows):
    logits, stack = tuned_lens.resid_stack(model, rows[:2])
    _, cache = model.run_with_cache(rows[:2])
    expected, labels = cache.accumulated_resid(return_labels=True)
    assert labels == tuned_lens.read_point_labels(model) and len(tuned_lens.read_point_names(model)) == 4
    assert torch.allclose(stack, expected) and torch.allclose(logits, model(rows[:2]), atol=1e-5)


def test_untrained_tuned_lens_is_the_logit_lens(model, rows):
    _, stack = tuned_lens.resid_stack(model, rows[:2])
    fresh = tuned_lens.TunedLens(model.cfg.n_layers, model.cfg.d_model)
    assert torch.allclose(fresh.logits(model, stack), lens.logit_lens(model, stack), atol=1e-5)
    assert fresh(stack[:-1]).shape == stack[:-1].shape
    with pytest.raises(CourseError, match="translators"):
        fresh(stack[:2])


def test_kl_from_final_matches_kl_div():
    q, p = torch.randn(3, 4, 10), torch.randn(4, 10)
    expected = torch.nn.functional.kl_div(q.log_softmax(-1), p.log_softmax(-1).expand(3, 4, 10), log_target=True,
                                          reduction="none").sum(-1)
    assert torch.allclose(tuned_lens.kl_from_final(q, p), expected, atol=1e-6)
    assert torch.allclose(tuned_lens.kl_from_final(p + 3.0, p), torch.zeros(4), atol=1e-6)


def test_loss_at_identity_is_the_logit_lens_kl(model, rows):
    logits, stack = tuned_lens.resid_stack(model, rows[:2])
    n, d = model.cfg.n_layers, model.cfg.d_model
    loss = tuned_lens.tuned_lens_loss(model, stack[:n], torch.eye(d).repeat(n, 1, 1), torch.zeros(n, d), logits)
    assert torch.allclose(loss, tuned_lens.kl_from_final(lens.logit_lens(model, stack[:n]), logits).mean(), atol=1e-5)


def test_training_lowers_kl_at_every_layer_on_held_out_rows(model, rows, trained):
    report = tuned_lens.compare_lenses(model, trained, rows[16:], row_batch=3)
    n = model.cfg.n_layers
    assert report["labels"] == tuned_lens.read_point_labels(model) and report["tokens"] == 8 * 15
    for key in ("logit_kl", "tuned_kl", "logit_top1", "tuned_top1"):
        assert len(report[key]) == n + 1
    assert all(t < l for t, l in zip(report["tuned_kl"][:n], report["logit_kl"][:n]))
    assert report["logit_kl"][n] == pytest.approx(0, abs=1e-5) and report["tuned_kl"][n] == pytest.approx(0, abs=1e-5)
    assert report["logit_top1"][n] == report["tuned_top1"][n] == 1.0


def test_training_leaves_the_model_alone(model, rows):
    before = {name: p.detach().clone() for name, p in model.model.named_parameters()}
    flags = {name: p.requires_grad for name, p in model.model.named_parameters()}
    tuned_lens.train_tuned_lens(model, rows[:4], steps=3, batch_tokens=16, progress=False)
    for name, p in model.model.named_parameters():
        assert torch.equal(p, before[name]) and p.requires_grad == flags[name]


def test_training_uses_the_given_loss_and_rejects_one_without_gradient(model, rows):
    calls = []

    def loss_fn(*args):
        calls.append(args[1].shape)
        return tuned_lens.tuned_lens_loss(*args)

    tuned_lens.train_tuned_lens(model, rows[:4], steps=2, batch_tokens=16, progress=False, loss_fn=loss_fn)
    assert calls == [(model.cfg.n_layers, 16, model.cfg.d_model)] * 2
    with pytest.raises(CourseError, match="gradient"):
        tuned_lens.train_tuned_lens(model, rows[:4], steps=1, batch_tokens=16, progress=False,
                                    loss_fn=lambda *a: tuned_lens.tuned_lens_loss(*a).detach())


def test_training_is_deterministic(model, rows):
    a = tuned_lens.train_tuned_lens(model, rows[:4], steps=3, batch_tokens=16, progress=False)
    b = tuned_lens.train_tuned_lens(model, rows[:4], steps=3, batch_tokens=16, progress=False)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_training_rows_come_from_training_files(model):
    rows = tuned_lens.training_rows(model, n_rows=5, window=32, rows_per_file=1)
    assert rows.shape == (5, 32) and (rows[:, 0] == model.bos_token_id).all()


def test_training_rows_take_a_few_rows_per_file(model, monkeypatch):
    files = ["a" * 100, "b" * 100, "c" * 10]
    monkeypatch.setattr(tuned_lens, "stdlib_corpus", lambda split: Corpus(files, ["a", "b", "c"], "3"))
    rows = tuned_lens.training_rows(model, n_rows=4, window=21, rows_per_file=2)
    assert rows.shape == (4, 21) and sorted(len(set(r[1:].tolist())) for r in rows) == [1, 1, 1, 1]
    assert len({r[1].item() for r in rows}) == 2                          # two rows from each of two files
    with pytest.raises(CourseError, match="fewer"):
        tuned_lens.training_rows(model, n_rows=5, window=21, rows_per_file=2)


@pytest.mark.slow
def test_on_the_bundled_4_layer_model_the_tuned_lens_beats_the_logit_lens():
    from course_utils.loading import load_model
    from course_utils.token_labels import code_windows

    model = load_model("course-4l", device="cpu")
    lens_ = tuned_lens.train_tuned_lens(model, tuned_lens.training_rows(model, n_rows=32), steps=60, progress=False)
    report = tuned_lens.compare_lenses(model, lens_, code_windows(model, max_tokens=4 * 256).tokens)
    n = model.cfg.n_layers
    assert len(report["logit_kl"]) == n + 1 == 5
    assert all(a > b for a, b in zip(report["logit_kl"], report["logit_kl"][1:])), "the logit lens's KL falls"
    assert report["logit_kl"][n] == pytest.approx(0, abs=1e-4)
    assert all(t < l for t, l in zip(report["tuned_kl"][:n], report["logit_kl"][:n]))
