"""Token labels come from Python's own tokenizer and follow the documented rule for straddling tokens."""

import sys

import torch

from course_utils import load_model
from course_utils.token_labels import LABELS, code_windows, label_tokens, string_insides

SOURCE = 'def f(x):\n    # add one\n    return x + 1  # done\n\ns = f"{x}!" if True else \'a\'\n'


def spans_of(source, pieces):
    spans, at = [], 0
    for piece in pieces:
        at = source.index(piece, at)
        spans.append((at, at + len(piece)))
        at += len(piece)
    return spans


def test_each_kind_is_labelled():
    pieces = ["def", " f", "(", "x", "):", "\n    ", "# add", " one", "\n    ", "return", " x", " +", " 1",
              "  ", "# done", "\n\n", "s", ' f"{', "x", '}!"', " if", " True", " else", " 'a'", "\n"]
    labels = label_tokens(SOURCE, spans_of(SOURCE, pieces))
    # Python 3.12 splits an f-string into parts: the name inside the braces is a name there
    f_string = ["string", "name", "operator"] if sys.version_info >= (3, 12) else ["string"] * 3
    assert labels == ["keyword", "name", "operator", "name", "operator", "indentation", "comment", "comment",
                      "indentation", "keyword", "name", "operator", "number", "space", "comment", "newline", "name",
                      *f_string, "keyword", "keyword", "keyword", "string", "newline"]
    assert set(labels) <= set(LABELS)


def test_string_insides_exclude_quotes_and_prefixes():
    source = 'a = "hi"\nb = rb"""doc"""\n'
    assert [source[a:b] for a, b in string_insides(source)] == ["hi", "doc"]


def test_code_windows_are_labelled_and_deterministic():
    model = load_model(device="cpu")
    w = code_windows(model, max_tokens=2_000)
    assert w.tokens.shape == w.labels.shape == w.in_string.shape and w.tokens.shape[1] == 256
    assert (w.labels[:, 0] == -1).all() and (w.tokens[:, 0] == model.bos_token_id).all()
    assert len(w.texts) == len(w.tokens) and w.texts[0][0] == ""
    counts = torch.bincount(w.labels[:, 1:].flatten().clamp(min=0), minlength=len(LABELS))
    assert (counts[[LABELS.index(k) for k in ("name", "operator", "keyword", "indentation")]] > 0).all()
    inside = w.in_string & w.label_mask("string").logical_not()
    assert inside.float().mean() < 0.01, "text inside a string literal is labelled 'string'"
    assert torch.equal(code_windows(model, max_tokens=2_000).labels, w.labels)
