"""Activation patching and attribution patching (course_utils.patching) on a tiny random GPT-2."""

from __future__ import annotations

import pytest
import torch

from course_utils import CourseError, patching


@pytest.fixture(scope="module")
def task(model):
    """Two prompts whose clean and corrupted versions differ at position 3 only, and a logit-difference metric."""
    clean = torch.randint(1, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    corrupted = clean.clone()
    corrupted[:, 3] = (clean[:, 3] + 11) % 96 + 1
    answers, wrongs = torch.tensor([4, 50]), torch.tensor([9, 61])
    metric = lambda logits: patching.logit_diff(logits, answers, wrongs).mean()   # noqa: E731
    _, cache = model.run_with_cache(clean)
    with torch.no_grad():
        return clean, corrupted, cache, metric, float(metric(model(clean))), float(metric(model(corrupted)))


def test_logit_diff_reads_the_last_position():
    logits = torch.zeros(2, 3, 5)
    logits[0, -1, 1], logits[1, -1, 4], logits[1, 0, 4] = 2.0, -1.0, 9.0
    assert torch.equal(patching.logit_diff(logits, torch.tensor([1, 4]), torch.tensor([0, 0])), torch.tensor([2.0, -1.0]))


def test_normalized():
    assert patching.normalized(3.0, clean=5.0, corrupted=1.0) == 0.5
    with pytest.raises(CourseError, match="same metric"):
        patching.normalized(1.0, 2.0, 2.0)


def test_patch_hooks_write_only_their_slice():
    act, clean = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    out = patching.patch_resid_hook(act, type("H", (), {"name": "x"})(), 2, {"x": clean})
    assert out[:, 2].eq(1).all() and out[:, [0, 1, 3]].eq(0).all()
    z, clean_z = torch.zeros(2, 4, 3, 5), torch.ones(2, 4, 3, 5)
    out = patching.patch_head_hook(z, type("H", (), {"name": "z"})(), 1, {"z": clean_z})
    assert out[:, :, 1].eq(1).all() and out[:, :, [0, 2]].eq(0).all()


def test_resid_grid_at_the_start_restores_exactly_where_the_prompts_differ(model, task):
    clean, corrupted, cache, metric, clean_value, corrupted_value = task
    grid = patching.resid_patching_grid(model, corrupted, cache, metric)
    assert grid.shape == (model.cfg.n_layers, 7) and grid.dtype == torch.float32
    assert abs(grid[0, 3] - clean_value) < 1e-4                        # the whole clean input
    others = [p for p in range(7) if p != 3]
    assert torch.allclose(grid[0, others], torch.tensor(corrupted_value), atol=1e-4)   # nothing differs there
    assert torch.allclose(grid[:, :3], torch.tensor(corrupted_value), atol=1e-4)       # before the change, causally


def test_head_grid_matches_patching_by_hand(model, task):
    clean, corrupted, cache, metric, _, _ = task
    grid = patching.head_patching_grid(model, corrupted, cache, metric)
    layer, head = model.cfg.n_layers - 1, 2

    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = cache[hook.name][:, :, head]
        return z

    with torch.no_grad():
        by_hand = metric(model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)]))
    assert grid.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert abs(grid[layer, head] - by_hand) < 1e-5


def test_patching_needs_aligned_prompts(model, task):
    _, corrupted, cache, metric, _, _ = task
    with pytest.raises(CourseError, match="same length"):
        patching.resid_patching_grid(model, corrupted[:, :5], cache, metric)
    with pytest.raises(CourseError, match="has no"):
        patching.head_patching_grid(model, corrupted, {}, metric)


def _scaled_patch(model, corrupted, cache, metric, layer, head, eps):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = z[:, :, head] + eps * (cache[hook.name][:, :, head] - z[:, :, head])
        return z
    with torch.no_grad():
        return float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])))


def test_attribution_is_the_derivative_of_patching(model, task):
    """Attribution patching is the first-order term: a small step toward the clean activation moves the
    metric by step size times the attribution."""
    clean, corrupted, cache, metric, _, corrupted_value = task
    with torch.no_grad():   # as in a notebook that turned gradients off
        heads = patching.attribution_patching_heads(model, clean, corrupted, metric)
    eps = 1e-3
    for layer, head in [(0, 0), (1, 3), (model.cfg.n_layers - 1, 1)]:
        step = (_scaled_patch(model, corrupted, cache, metric, layer, head, eps) - corrupted_value) / eps
        assert abs(step - heads[layer, head]) < 2e-2 * max(1.0, abs(float(heads[layer, head])))


def test_attribution_grid_is_zero_where_nothing_differs(model, task):
    clean, corrupted, _, metric, clean_value, corrupted_value = task
    grid = patching.attribution_patching_grid(model, clean, corrupted, metric)
    assert grid.shape == (model.cfg.n_layers, 7)
    assert grid[:, :3].abs().max() < 1e-6                             # clean and corrupted agree before position 3
    assert grid[0].abs().sum() > 0


def test_attribution_needs_a_metric_with_gradient(model, task):
    clean, corrupted, _, metric, _, _ = task
    with pytest.raises(CourseError, match="no gradient"):
        patching.attribution_patching_heads(model, clean, corrupted, lambda logits: metric(logits).detach())
    with pytest.raises(CourseError, match="same shape"):
        patching.attribution_patching_grid(model, clean, corrupted[:1], metric)


def test_path_patching_by_hand(model, task):
    """Sender 0.1 -> the query of head 2.3: recompute that query from the corrupted stream plus the sender's
    change alone (the MLPs and heads in between held at their corrupted values) and run with it."""
    clean, corrupted, cache, metric, _, corrupted_value = task
    _, corrupted_cache = model.run_with_cache(corrupted)
    grid = patching.path_patching_grid(model, corrupted, cache, corrupted_cache, (0, 1), 2, metric)
    assert grid.shape == (3, model.cfg.n_heads)
    delta = torch.einsum("bpd,dm->bpm", cache["z", 0][:, :, 1] - corrupted_cache["z", 0][:, :, 1], model.W_O[0, 1])
    with torch.no_grad():
        x = model.block(2).ln_1(corrupted_cache["resid_pre", 2] + delta)
        query = x @ model.W_Q[2, 3] + model.b_Q[2, 3]                              # [batch, pos, d_head]

        def hook(q, hook):
            q = q.clone()
            q[:, :, 3] = query
            return q
        by_hand = float(metric(model.run_with_hooks(corrupted, fwd_hooks=[("blocks.2.attn.hook_q", hook)])))
    assert abs(grid[0, 3] - by_hand) < 1e-4
    assert abs(grid[1, 3] - corrupted_value) > 1e-6 or abs(grid[2, 3] - corrupted_value) > 1e-6


def test_path_patching_with_nothing_to_send(model, task):
    _, corrupted, _, metric, _, corrupted_value = task
    _, corrupted_cache = model.run_with_cache(corrupted)
    grid = patching.path_patching_grid(model, corrupted, corrupted_cache, corrupted_cache, (1, 0), 2, metric)
    assert torch.allclose(grid, torch.tensor(corrupted_value), atol=1e-5)
    with pytest.raises(CourseError, match="after the sender"):
        patching.path_patching_grid(model, corrupted, corrupted_cache, corrupted_cache, (1, 0), 1, metric)


def test_path_patching_into_an_mlp_by_hand(model, task):
    """Sender 0.2 -> the MLP of layer 1: its input recomputed from the corrupted stream plus the sender's change
    alone (layer 1's heads and MLP 0 held at their corrupted values)."""
    clean, corrupted, cache, metric, _, _ = task
    _, corrupted_cache = model.run_with_cache(corrupted)
    effects = patching.path_patching_mlps(model, corrupted, cache, corrupted_cache, (0, 2), metric)
    assert effects.shape == (model.cfg.n_layers,) and not effects.isnan().any()
    delta = torch.einsum("bpd,dm->bpm", cache["z", 0][:, :, 2] - corrupted_cache["z", 0][:, :, 2], model.W_O[0, 2])
    with torch.no_grad():
        x = model.block(1).ln_2(corrupted_cache["resid_mid", 1] + delta)
        by_hand = float(metric(model.run_with_hooks(corrupted, fwd_hooks=[("blocks.1.ln2.hook_normalized", lambda a, hook: x)])))
    assert abs(effects[1] - by_hand) < 1e-4
    later = patching.path_patching_mlps(model, corrupted, cache, corrupted_cache, (1, 0), metric)
    assert later[0].isnan() and not later[1:].isnan().any()
