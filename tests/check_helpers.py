"""What every test of an exercise check needs: a stub, a way to say "this answer is rejected", and
the answers of every other type a learner might return."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from course_utils.checks import CheckFailed


def stub(*args, **kwargs):
    raise NotImplementedError


def accepts_reference_and_skips_stub(check, reference, capsys, *extra) -> None:
    """The reference passes and a stub is skipped, each reported in one line, and both return the reference."""
    assert check(reference, *extra) is reference
    assert check(stub, *extra) is reference
    out = capsys.readouterr().out
    assert "cases pass" in out and "not done yet" in out and out.count("\n") == 2, out


def rejects(check, wrong, match: str | None = None, *extra) -> str:
    """Assert that `check(wrong, *extra)` fails with one line matching `match`; return the message."""
    with pytest.raises(CheckFailed, match=match) as info:
        check(wrong, *extra)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# Answers of every type a check may meet: none of them may crash a check with anything but CheckFailed.
ODD_RETURNS = {
    "None": lambda *a, **k: None,
    "a string": lambda *a, **k: "scores",
    "a list": lambda *a, **k: [0.1, 0.2],
    "a numpy array": lambda *a, **k: np.zeros((2, 3), dtype=np.float32),
    "a float64 tensor": lambda *a, **k: torch.zeros(2, 3, dtype=torch.float64),
    "an integer tensor": lambda *a, **k: torch.zeros(2, 3, dtype=torch.long),
    "NaNs": lambda *a, **k: torch.full((2, 3), float("nan")),
    "a 0-d tensor": lambda *a, **k: torch.tensor(0.5),
    "a dict of junk": lambda *a, **k: {"Q": None, "K": "x"},
    "an object": lambda *a, **k: object(),
}


def float64(fn):
    """The reference with its tensor result (or each tensor in a dict) turned into float64."""
    def wrong(*args, **kwargs):
        out = fn(*args, **kwargs)
        if isinstance(out, dict):
            return {k: v.double() for k, v in out.items()}
        return out.double()
    return wrong
