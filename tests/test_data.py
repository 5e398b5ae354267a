"""The standard-library corpus and the repeated-token generator."""

import torch

from course_utils.data import chunk_tokens, repeated_tokens, stdlib_corpus


def test_corpus_split_is_disjoint_deterministic_and_skips_tests():
    train, held = stdlib_corpus("train"), stdlib_corpus("heldout")
    assert len(train.texts) > 200 and 10 < len(held.texts) < len(train.texts) / 5
    assert not set(train.paths) & set(held.paths)
    assert stdlib_corpus("heldout").paths == held.paths
    assert set(stdlib_corpus("all").paths) == set(train.paths) | set(held.paths)
    for path in train.paths + held.paths:
        parts = path.split("/")
        assert "test" not in parts[:-1] and "tests" not in parts[:-1] and not parts[-1].startswith("test_")
    assert "pydoc_data/topics.py" not in train.paths
    assert train.n_chars > 5e6 and "standard library" in repr(train)


def test_repeated_tokens_repeat_and_are_seeded():
    toks = repeated_tokens(batch=3, seq_len=10, d_vocab=50, bos_id=0, seed=7, low=1)
    assert toks.shape == (3, 21)
    assert (toks[:, 0] == 0).all() and torch.equal(toks[:, 1:11], toks[:, 11:])
    assert toks[:, 1:].min() >= 1 and toks.max() < 50
    assert torch.equal(toks, repeated_tokens(3, 10, 50, bos_id=0, seed=7, low=1))
    assert not torch.equal(toks, repeated_tokens(3, 10, 50, bos_id=0, seed=8, low=1))
    assert repeated_tokens(2, 5, 50).shape == (2, 10)


def test_chunk_tokens_starts_rows_with_bos():
    rows = chunk_tokens(torch.arange(1, 20), seq_len=5, bos_id=0)
    assert rows.shape == (4, 5) and (rows[:, 0] == 0).all()
    assert rows[:, 1:].flatten().tolist() == list(range(1, 17))
