"""Exact labels for every token of Python source, from Python's own `tokenize` module, so that "what
does this neuron (direction, latent) fire for?" is scored against ground truth, not eyeballed.

    windows = code_windows(model, max_tokens=20_000)   # held-out stdlib files cut into model inputs
    windows.tokens           # [n, 256] token ids, each row starting with the start token
    windows.labels           # [n, 256] index into LABELS (-1 for the start token)
    windows.texts[0][5]      # the text of token 5 of row 0

A model token can straddle Python tokens (" =", "\\n    "). It takes the label of its first
non-blank character; a token of blanks alone is "indentation" if it indents a line, "newline" if it
ends one, and "space" otherwise.
"""

from __future__ import annotations

import io
import keyword
import tokenize
from dataclasses import dataclass

import torch

from course_utils.data import stdlib_corpus

LABELS = ("string", "comment", "keyword", "name", "number", "operator", "indentation", "newline", "space")
_KIND = {tokenize.STRING: "string", tokenize.COMMENT: "comment", tokenize.NUMBER: "number", tokenize.OP: "operator"}
for _name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END", "TSTRING_START", "TSTRING_MIDDLE", "TSTRING_END"):
    if hasattr(tokenize, _name):  # Python 3.12+ splits f-strings into parts
        _KIND[getattr(tokenize, _name)] = "string"


def _line_starts(source: str) -> list[int]:
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def char_labels(source: str) -> list[str | None]:
    """The Python token kind of every character of `source` (None for blanks between tokens)."""
    labels: list[str | None] = [None] * len(source)
    starts = _line_starts(source)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            kind = _KIND.get(tok.type)
            if tok.type == tokenize.NAME:
                kind = "keyword" if keyword.iskeyword(tok.string) else "name"
            if kind is None:
                continue
            a = starts[tok.start[0] - 1] + tok.start[1]
            b = starts[tok.end[0] - 1] + tok.end[1]
            labels[a:b] = [kind] * (b - a)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass  # the rest of the file stays unlabelled
    return labels


def label_tokens(source: str, spans: list[tuple[int, int]]) -> list[str | None]:
    """One label from LABELS for each (start, end) character span of `source` (None where Python's
    tokenizer gave up, e.g. after a syntax error)."""
    chars = char_labels(source)
    out = []
    for a, b in spans:
        text = source[a:b]
        first = next((i for i, c in enumerate(text) if not c.isspace()), None)
        if first is not None:
            out.append(chars[a + first])
        elif any(c in " \t" and _at_line_start(source, a + i) for i, c in enumerate(text)):
            out.append("indentation")
        else:
            out.append("newline" if "\n" in text else "space")
    return out


def _at_line_start(source: str, i: int) -> bool:
    """Is character i among the blanks that begin its line?"""
    line_start = source.rfind("\n", 0, i) + 1
    return source[line_start:i].strip(" \t") == ""


def string_insides(source: str) -> list[tuple[int, int]]:
    """Character spans of the insides of string literals (quotes and prefixes excluded)."""
    starts = _line_starts(source)
    spans = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.STRING:
                a = starts[tok.start[0] - 1] + tok.start[1]
                b = starts[tok.end[0] - 1] + tok.end[1]
                prefix = len(tok.string) - len(tok.string.lstrip("rbuRBUfF"))
                quote = 3 if tok.string[prefix:prefix + 3] in ('"""', "'''") else 1
                spans.append((a + prefix + quote, b - quote))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    return spans


@dataclass
class CodeWindows:
    """Held-out source cut into model inputs, with each token's text and label."""

    tokens: torch.Tensor      # [n, window] token ids; column 0 is the start token
    texts: list[list[str]]    # texts[i][j]: the source text of tokens[i, j] ("" for the start token)
    labels: torch.Tensor      # [n, window] index into LABELS; -1 for the start token (and the unlabelled)
    in_string: torch.Tensor   # [n, window] bool: inside a string literal (quotes excluded)

    def label_mask(self, label: str) -> torch.Tensor:
        """[n, window] bool: tokens with this label."""
        return self.labels == LABELS.index(label)


def code_windows(model, max_tokens: int = 60_000, window: int = 256, split: str = "heldout") -> CodeWindows:
    """Files of the stdlib `split` cut into rows `[BOS] + window - 1 tokens`, until `max_tokens`.
    Deterministic; the same on every machine with the same Python version."""
    rows, texts, labels, in_string = [], [], [], []
    for source in stdlib_corpus(split).texts:
        enc = model.tokenizer(source, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = enc["input_ids"], enc["offset_mapping"]
        kinds = [-1 if k is None else LABELS.index(k) for k in label_tokens(source, spans)]
        insides = string_insides(source)
        for start in range(0, len(ids) - window + 1, window - 1):
            chunk = slice(start, start + window - 1)
            rows.append([model.bos_token_id] + ids[chunk])
            texts.append([""] + [source[a:b] for a, b in spans[chunk]])
            labels.append([-1] + kinds[chunk])
            in_string.append([False] + [any(s <= a and b <= e for s, e in insides) for a, b in spans[chunk]])
            if len(rows) * window >= max_tokens:
                break
        if len(rows) * window >= max_tokens:
            break
    return CodeWindows(torch.tensor(rows), texts, torch.tensor(labels), torch.tensor(in_string))
