"""A small framework for exercise checks.

Every exercise in the course ends with a cell such as

    induction_score = check_induction_score(induction_score)

A check runs the learner's function on several inputs (edge cases included), compares each result
with the reference implementation or with properties the answer must have, and then

* passes: prints one line and returns the learner's function, so the notebook goes on with it;
* finds a difference: raises `CheckFailed`, whose message says exactly what differed (shape, dtype,
  first wrong element, expected vs got). Notebooks show only the message, not a stack trace;
* meets a stub that raises `NotImplementedError`: says in one line that the exercise is not done
  yet and returns the reference, so the rest of the notebook still runs.

The reference's source is never printed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


class CheckFailed(AssertionError):
    """An exercise's answer differs from what was expected. The message says how."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return ["\x1b[31mCheckFailed\x1b[0m: " + str(self)]


@dataclass
class Case:
    """One input to an exercise: positional and keyword arguments, and a label for messages."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:200]


def compare(got: Any, expected: Any, atol: float = 1e-5, rtol: float = 1e-4, where: str = "result") -> str | None:
    """Return a sentence saying how `got` differs from `expected`, or None when they agree."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{where} should be a tensor of shape {tuple(expected.shape)}, got {_describe(got)}"
        if got.shape != expected.shape:
            return f"{where} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if got.dtype.is_floating_point != expected.dtype.is_floating_point or (
                got.dtype == torch.bool) != (expected.dtype == torch.bool):
            return f"{where} has dtype {got.dtype}, expected {expected.dtype}"
        g, e = got.detach().cpu().double(), expected.detach().cpu().double()
        bad = ~torch.isclose(g, e, atol=atol, rtol=rtol, equal_nan=True)
        if bad.any():
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            n_bad = int(bad.sum())
            return (f"{where} differs at {n_bad} of {bad.numel()} elements; first at index {list(idx)}: "
                    f"expected {e[idx].item():.6g}, got {g[idx].item():.6g}")
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"{where} should be a {type(expected).__name__} of length {len(expected)}, got {_describe(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            msg = compare(g, e, atol, rtol, f"{where}[{i}]")
            if msg:
                return msg
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            return f"{where} should be a dict with keys {sorted(expected)}, got {_describe(got)}"
        for k in expected:
            msg = compare(got[k], expected[k], atol, rtol, f"{where}[{k!r}]")
            if msg:
                return msg
        return None
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return f"{where} should be a number, got {_describe(got)}"
        if not math.isclose(got, expected, abs_tol=atol, rel_tol=rtol):
            return f"{where} is {got:.6g}, expected {expected:.6g}"
        return None
    if got != expected:
        return f"{where} is {got!r}, expected {expected!r}"
    return None


def run_check(name: str, learner_fn: Callable, reference_fn: Callable, cases: list[Case], *,
              atol: float = 1e-5, rtol: float = 1e-4,
              properties: list[Callable[[Case, Any], str | None]] = (),
              compare_fn: Callable[[Any, Any], str | None] | None = None) -> Callable:
    """Check `learner_fn` against `reference_fn` on every case (and optional `properties`).

    `properties` are functions `(case, result) -> message or None`, for answers that are not unique
    (a sign, an order) or to give a more specific hint than a raw comparison. Returns the learner's
    function if every case passes, the reference if the exercise is not done yet.
    """
    if not callable(learner_fn):
        raise CheckFailed(f"{name}: pass the function itself, e.g. check_{name}({name}), not {_describe(learner_fn)}.")
    for i, case in enumerate(cases, 1):
        label = f"case {i} of {len(cases)}" + (f" ({case.label})" if case.label else "")
        try:
            got = learner_fn(*case.args, **case.kwargs)
        except NotImplementedError:
            print(f"⏭  {name}: not done yet. The notebook carries on with the reference implementation.")
            return reference_fn
        for prop in properties:
            msg = prop(case, got)
            if msg:
                raise CheckFailed(f"{name}, {label}: {msg}")
        expected = reference_fn(*case.args, **case.kwargs)
        msg = compare_fn(got, expected) if compare_fn else compare(got, expected, atol, rtol)
        if msg:
            raise CheckFailed(f"{name}, {label}: {msg}")
    print(f"✔  {name}: all {len(cases)} cases pass.")
    return learner_fn
