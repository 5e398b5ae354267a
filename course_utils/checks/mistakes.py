"""Properties that checks share: naming a known mistake only when the diagnosis is certain, and
saying what shape was expected.

A check may know the plausible wrong answers to its exercise (the wrong axis, an off-by-one
position). `recognise` names one only when the learner's answer equals exactly that wrong variant
*and no other*: when two mistakes give the same numbers on a case, or a mistake gives the right
numbers, the check says what differed instead, never a guess.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from course_utils.checks import Case, compare, describe

Property = Callable[[Case, Any], "str | None"]


def recognise(mistakes: dict[str, Callable], reference: Callable, atol: float = 1e-5,
              rtol: float = 1e-4) -> Property:
    """A property that returns a mistake's message when the answer matches that mistake alone.

    `mistakes` maps a message to a function with the reference's signature that computes the wrong
    answer. Variants that fail on a case, or that agree with the reference there, are not evidence.
    """
    def prop(case: Case, got: Any) -> str | None:
        expected = reference(*case.args, **case.kwargs)
        if compare(got, expected, atol=atol, rtol=rtol) is None:
            return None
        matches = []
        for message, wrong in mistakes.items():
            try:
                value = wrong(*case.args, **case.kwargs)
            except Exception:  # a mistake that cannot even run on this case is not this one
                continue
            if compare(value, expected, atol=atol, rtol=rtol) is None:
                continue       # this mistake is invisible on this case
            if compare(got, value, atol=atol, rtol=rtol) is None:
                matches.append(message)
        return matches[0] if len(matches) == 1 else None
    return prop


def expect_shape(expected: Callable[[Case], tuple[int, ...]], what: str) -> Property:
    """A property that names the expected shape (and its axes, in `what`) of a tensor answer."""
    def prop(case: Case, got: Any) -> str | None:
        want = tuple(expected(case))
        if isinstance(got, torch.Tensor) and tuple(got.shape) != want:
            return f"expected shape {what} = {want}, got {tuple(got.shape)}"
        return None
    return prop


def returns_something(hint: str) -> Property:
    """A property for functions that must return a value (hooks often forget to)."""
    def prop(case: Case, got: Any) -> str | None:
        return f"your function returned None; {hint}" if got is None else None
    return prop


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def per_key(references: dict[str, Callable], mistakes: dict[str, dict[str, Callable]] | None = None,
            shapes: dict[str, Property] | None = None, dims: tuple[str, ...] | None = None,
            atol: float = 1e-5, rtol: float = 1e-4) -> Property:
    """A property for answers that are a dict of tensors (one per key): says which key is missing or
    differs, with that key's own known mistakes. `references[key]` computes the key's expected value
    from the case's arguments."""
    mistakes, shapes = mistakes or {}, shapes or {}

    def prop(case: Case, got: Any) -> str | None:
        keys = list(references)
        if not isinstance(got, dict):
            return f"return a dict with the keys {keys}; got {describe(got)}"
        if set(got) != set(keys):
            missing, extra = [k for k in keys if k not in got], [k for k in got if k not in references]
            return (f"the dict's keys should be {keys}" + (f"; {missing} missing" if missing else "")
                    + (f"; {extra} not expected" if extra else ""))
        for key, reference in references.items():
            where = f"the {key!r} entry"
            msg = shapes[key](case, got[key]) if key in shapes else None
            msg = msg or recognise(mistakes.get(key, {}), reference, atol, rtol)(case, got[key])
            if msg:
                return f"{where}: {msg}"
            msg = compare(got[key], reference(*case.args, **case.kwargs), atol, rtol, where=where, dims=dims)
            if msg:
                return msg
        return None
    return prop
