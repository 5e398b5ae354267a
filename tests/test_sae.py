"""The sparse autoencoders, their training and their metrics: shapes, exact identities, and that
training recovers known features."""

from __future__ import annotations

import pytest
import torch

from course_utils import CourseError, load_model, sae, sae_analysis, sae_training
from course_utils import toy_models as tm


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")


def _relu(d_in=6, d_sae=12, **kw):
    return sae.ReLUSAE(sae.ReLUSAEConfig(d_in=d_in, d_sae=d_sae, **kw))


def _topk(d_in=6, d_sae=12, k=3, **kw):
    return sae.TopKSAE(sae.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, **kw))


def test_modules_match_the_functions_and_shapes():
    x = torch.randn(2, 5, 6)
    for s in (_relu(), _topk()):
        with torch.no_grad():
            s.W_dec.mul_(torch.rand(12, 1) + 0.5)           # rows off unit norm: the decoder must not care
            s.b_enc.normal_(), s.b_dec.normal_()
        x_hat, f = s(x)
        assert x_hat.shape == (2, 5, 6) and f.shape == (2, 5, 12) and (f >= 0).all()
        assert torch.allclose(x_hat, sae.decode(f, s.W_dec, s.b_dec))
        assert torch.allclose(s.directions.norm(dim=-1), torch.ones(12))
    assert torch.equal(_relu().encode(x), sae.encode_relu(x, *[getattr(_relu(), n) for n in ("W_enc", "b_enc", "b_dec")]))
    assert ((_topk(k=3).encode(x) > 0).sum(-1) <= 3).all()


def test_init_is_seeded_and_tied():
    a, b, c = _topk(seed=1), _topk(seed=1), _topk(seed=2)
    assert torch.equal(a.W_dec, b.W_dec) and not torch.equal(a.W_dec, c.W_dec)
    assert torch.equal(a.W_enc, a.W_dec.T)


def test_topk_relu_keeps_k_largest_on_the_last_axis():
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-3.0, -2.0, -1.0, 4.0]])
    out = sae.topk_relu(pre, 2)
    assert torch.equal(out, torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 4.0]]))


def test_folding_the_input_scale_is_exact():
    x = torch.randn(20, 6)
    for s in (_relu(), _topk()):
        with torch.no_grad():
            s.b_enc.normal_(), s.b_dec.normal_()
        x_hat_scaled, f_scaled = s(3.0 * x)
        s.fold_input_scale_(3.0)
        x_hat, f = s(x)
        assert torch.allclose(x_hat * 3.0, x_hat_scaled, atol=1e-5) and torch.allclose(f * 3.0, f_scaled, atol=1e-5)


def test_losses_are_named_and_aux_needs_dead_latents():
    x = torch.randn(16, 6)
    losses, f = _relu(l1_coeff=0.5).losses(x)
    assert set(losses) == {"mse", "l1", "loss"} and f.shape == (16, 12)
    assert torch.allclose(losses["loss"], losses["mse"] + 0.5 * losses["l1"])
    s = _topk(aux_k=4)
    assert set(s.losses(x)[0]) == {"mse", "loss"}
    dead = torch.zeros(12, dtype=torch.bool)
    dead[:5] = True
    with_aux, _ = s.losses(x, dead=dead)
    assert set(with_aux) == {"mse", "aux", "loss"} and with_aux["loss"] > with_aux["mse"]
    with_aux["loss"].backward()
    assert s.W_enc.grad[:, :5].abs().sum() > 0                  # the dead latents get a gradient


def test_max_cosine_similarity():
    true = torch.eye(3)
    learned = torch.tensor([[2.0, 0, 0], [0, -1.0, 0], [0, 1.0, 1.0]])
    assert torch.allclose(sae.max_cosine_similarity(true, learned), torch.tensor([1.0, 2 ** -0.5, 2 ** -0.5]))


def test_resample_dead_latents_reference():
    x, x_hat = torch.randn(8, 4), torch.zeros(8, 4)
    x_hat[:] = x
    x_hat[5] = 0.0                                                # input 5 is reconstructed worst
    s = _relu(d_in=4, d_sae=6)
    dead = torch.tensor([False, False, True, False, False, False])
    new = sae.resample_dead_latents(x, x_hat, dead, s.W_enc, s.b_enc, s.W_dec, s.b_dec)
    assert torch.allclose(new["W_dec"][2], sae.unit_rows(x[5] - s.b_dec))
    assert torch.equal(new["W_dec"][~dead], s.W_dec[~dead]) and new["b_enc"][2] == 0
    live = s.W_enc[:, ~dead].norm(dim=0).mean()
    assert torch.allclose(new["W_enc"][:, 2].norm(), 0.2 * live)


def _toy_hidden(n: int, seed: int = 0):
    """Hidden vectors of 20 sparse features in 5 dimensions, and the features' true directions."""
    toy = tm.train_toy_model(20, 5, [0.03], 1.0, n_instances=1, steps=1_000, batch_size=256, progress=False)
    x = tm.generate_batch(n, 20, torch.tensor([0.03]), torch.Generator().manual_seed(seed))[:, 0]
    return x @ toy.W[0].T, toy.W[0].T                              # [n, 5], [20, 5]


def test_training_recovers_toy_features():
    h, true = _toy_hidden(200_000)
    s = _topk(5, 40, k=2)
    history = sae_training.train_sae(s, h, n_tokens=512 * 600, batch_size=512, lr=1e-2, progress=False)
    assert history["loss"][-1] < history["loss"][0] and {"step", "l0", "dead_fraction", "mse"} <= set(history)
    assert (sae.max_cosine_similarity(true, s.directions) > 0.9).float().mean() >= 0.9
    assert sae_training.evaluate(s, h[:20_000])["fve"] > 0.8


def test_training_works_with_gradients_switched_off_outside():
    h, _ = _toy_hidden(20_000)
    s = _relu(5, 40, l1_coeff=1.0)
    with torch.no_grad():                                          # as in a notebook that only reads models
        history = sae_training.train_sae(s, h, n_tokens=512 * 20, batch_size=512, lr=1e-2, progress=False)
        assert not torch.is_grad_enabled()                         # the caller's setting is restored
    assert history["mse"][-1] < history["mse"][0]


def test_a_stronger_l1_penalty_gives_sparser_latents():
    h, _ = _toy_hidden(100_000)
    l0 = []
    for l1_coeff in (0.3, 10.0):
        s = _relu(5, 40, l1_coeff=l1_coeff)
        history = sae_training.train_sae(s, h, n_tokens=512 * 300, batch_size=512, lr=1e-2, progress=False)
        assert history["mse"][-1] < history["mse"][0]
        l0.append(sae_training.evaluate(s, h[:20_000])["l0"])
    assert l0[1] < 0.5 * l0[0]


def test_resampling_revives_killed_latents():
    h, _ = _toy_hidden(50_000)
    s = _relu(5, 40, l1_coeff=1.0)
    with torch.no_grad():
        s.b_enc[10:] = -100.0                                    # 30 latents that can never fire
    sae_training.train_sae(s, h, n_tokens=512 * 200, batch_size=512, lr=1e-2, dead_after=512 * 10,
                           resample_every=50, progress=False)
    assert (s.b_enc[10:] > -50).all()
    assert sae_training.evaluate(s, h)["dead_fraction"] < 0.5


def test_collect_activations_matches_the_cache(model):
    tokens = sae_training.corpus_rows(model, n_tokens=600, seq_len=64)
    assert tokens.shape[1] == 64 and (tokens[:, 0] == model.bos_token_id).all() and tokens.numel() >= 600
    name = "blocks.1.hook_resid_pre"
    acts = sae_training.collect_activations(model, name, tokens[:5], batch_size=2, progress=False)
    _, cache = model.run_with_cache(tokens[:5], names_filter=[name])
    assert acts.shape == (5 * 63, model.cfg.d_model) and acts.dtype == torch.float16
    assert torch.allclose(acts.float(), cache[name][:, 1:].flatten(0, 1), atol=1e-2, rtol=1e-3)
    assert sae_training.collect_activations(model, name, tokens[:2], skip_bos=False, progress=False).shape[0] == 128


def test_metrics(model):
    x = torch.randn(50, 4)
    assert sae_training.fraction_variance_explained(x, x) == 1
    assert abs(sae_training.fraction_variance_explained(x, x.mean(0).expand_as(x))) < 1e-6
    f = torch.tensor([[1.0, 0, 0], [2.0, 3.0, 0]])
    l0, dead = sae_training.l0_and_dead(f)
    assert l0 == 1.5 and abs(dead - 1 / 3) < 1e-6
    assert sae_training.ce_loss_recovered(2.0, 2.5, 7.0) == 0.9
    with pytest.raises(CourseError):
        sae_training.ce_loss_recovered(2.0, 2.5, 1.0)
    tokens = sae_training.corpus_rows(model, n_tokens=300, seq_len=32, split="heldout")[:4]
    name = "blocks.1.hook_resid_pre"
    clean = model(tokens, return_type="loss")
    assert torch.allclose(sae_training.spliced_loss(model, tokens, name, lambda a: a), clean)
    s = _topk(model.cfg.d_model, 64, k=4)
    losses = sae_training.splice_losses(model, s, tokens, name, torch.zeros(model.cfg.d_model), batch_size=2)
    assert set(losses) == {"clean", "sae", "zero", "mean"} and abs(losses["clean"] - clean.item()) < 1e-4
    assert abs(losses["zero"] - losses["mean"]) < 1e-5            # the "mean" given was zero


def test_f1_scores_and_best_f1():
    fires = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=torch.bool)
    labels = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 0]], dtype=torch.bool)
    f1 = sae_analysis.f1_scores(fires, labels)
    assert torch.allclose(f1, torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    acts = torch.tensor([[0.9, 0.1], [0.8, 0.1], [0.2, 0.1], [0.0, 0.1]])
    best, unit = sae_analysis.best_f1(acts, labels[:, :1])
    assert best.tolist() == [1.0] and unit.tolist() == [0]           # unit 0 at a threshold above 0.2


def test_pure_coverage():
    labels = torch.tensor([[1, 0]] * 20 + [[0, 1]] * 20, dtype=torch.bool)
    acts = torch.zeros(40, 3)
    acts[:10, 0] = 1.0                                             # pure for label 0, covers half of it
    acts[:, 1] = 1.0                                               # fires everywhere: pure for nothing
    acts[20:40:2, 2] = 1.0                                         # pure for label 1, covers half
    assert torch.allclose(sae_analysis.pure_coverage(acts, labels), torch.tensor([0.5, 0.5]))


def test_logit_effects_follow_the_final_norm(model):
    v = torch.randn(model.cfg.d_model)
    effects = sae_analysis.logit_effects(model, v)
    assert effects.shape == (model.cfg.d_vocab,)
    shifted = sae_analysis.logit_effects(model, v + 5.0)            # LayerNorm ignores a constant shift
    assert torch.allclose(effects, shifted, atol=1e-3)


def test_ablating_a_silent_latent_changes_nothing(model):
    tokens = sae_training.corpus_rows(model, n_tokens=200, seq_len=32, split="heldout")[:2]
    s = _topk(model.cfg.d_model, 64, k=4)
    with torch.no_grad():
        s.b_enc[7] = -1e4                                         # latent 7 never fires
    clean = model(tokens, return_type="loss", loss_per_token=True)
    assert torch.allclose(sae_analysis.ablated_losses(model, tokens, "blocks.1.hook_resid_pre", s, 7), clean)


def test_split_children_and_examples():
    parent = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    children = torch.tensor([[1.0, 0.2, 0.0], [0.2, 1.0, 0.0], [0.0, 0.0, -1.0]])
    assert sae_analysis.split_children(parent, children, 0.5) == [[0, 1], []]
    acts = torch.tensor([[0.0, 2.0, 0.5], [1.0, 0.0, 0.0]])
    assert sae_analysis.top_examples(acts, 2) == [(0, 1), (1, 0)]
    html = sae_analysis.top_examples_html(acts, [["", "a<b", "c"], ["", "d", "\n"]], n=2)
    assert "a&lt;b" in html and html.count("<div") == 2 and "⏎" in html
