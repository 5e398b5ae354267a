"""A small framework for exercise checks.

Every exercise in the course ends with a cell such as

    induction_score = check_induction_score(induction_score)

A check runs the learner's function on several inputs (edge cases included), compares each result
with the reference implementation or with properties the answer must have, and then

* passes: prints one line and returns the learner's function, so the notebook goes on with it;
* finds a difference: raises `CheckFailed`, whose message says exactly what differed (shape, dtype,
  device, which element, expected vs got). Notebooks show only the message, not a stack trace;
* meets a stub that raises `NotImplementedError`: says in one line that the exercise is not done
  yet and returns the reference, so the rest of the notebook still runs.

What every check does, whatever the exercise (so no check can be fooled in these ways):
* the learner's function gets *copies* of the inputs, and the reference other copies; afterwards the
  learner's copies are compared with the originals, and an input changed in place is named (tensors,
  and the weights of any model passed in);
* dtypes must match exactly (float64 where float32 is expected is reported), and devices too;
* with `grad=True` (forward passes, losses) the result must carry a gradient back to every input the
  reference's does: a value computed through `.item()`, numpy or `torch.no_grad()` is reported;
* a number may be a Python, numpy or one-element tensor number;
* nothing but `CheckFailed` ever leaves a check, whatever the learner returns or raises.
The reference's source is never printed.
"""

from __future__ import annotations

import inspect
import math
import numbers
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

PASS, SKIP = "✔", "○"  # glyphs every common font has


class CheckFailed(AssertionError):
    """An exercise's answer differs from what was expected. The message says how."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return ["\x1b[31mCheckFailed\x1b[0m: " + str(self)]


@dataclass
class Case:
    """One input to an exercise: positional and keyword arguments, and a label that says what the
    case tests (it is shown in every message about the case)."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    label: str = ""


def describe(x: Any) -> str:
    """A short description of any value, for messages."""
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}, dtype {x.dtype}" + ("" if x.device.type == "cpu" else f", on {x.device}")
    if isinstance(x, np.ndarray):
        return f"a numpy array of shape {x.shape}, dtype {x.dtype} (return a torch tensor)"
    try:
        text = " ".join(repr(x).split())  # one line, whatever the value
    except Exception:
        text = "?"
    return f"{type(x).__name__} {text[:80]}"


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _as_number(x: Any) -> float | None:
    """A Python, numpy or one-element tensor number as a float; None for anything else."""
    if _is_number(x):
        return float(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1 and x.dtype != torch.bool:
        return float(x.item())
    if isinstance(x, np.ndarray) and x.size == 1 and x.dtype != np.bool_:
        return float(x.item())
    return None


def _where(index: tuple[int, ...], dims: tuple[str, ...] | None) -> str:
    if dims and len(dims) == len(index):
        return "[" + ", ".join(f"{d} {i}" for d, i in zip(dims, index)) + "]"
    return f"index {list(index)}"


def _dtype_message(where: str, got: torch.dtype, expected: torch.dtype) -> str:
    hint = ""
    if got == torch.float64 and expected in (torch.float32, torch.float16, torch.bfloat16):
        hint = " (float64 usually comes from numpy or from torch.tensor of a float64 array; convert with .float())"
    elif expected.is_floating_point and not got.is_floating_point:
        hint = " (integer or boolean results come from comparisons or integer inputs; convert with .float())"
    return f"{where} has dtype {got}, expected {expected}{hint}"


def compare(got: Any, expected: Any, atol: float = 1e-5, rtol: float = 1e-4, where: str = "result",
            dims: tuple[str, ...] | None = None) -> str | None:
    """Return a sentence saying how `got` differs from `expected`, or None when they agree.
    `dims` names the axes of a tensor result, so a wrong element is named by them."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{where} should be a tensor of shape {tuple(expected.shape)}, got {describe(got)}"
        if got.shape != expected.shape:
            return f"{where} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if got.dtype != expected.dtype:
            return _dtype_message(where, got.dtype, expected.dtype)
        if got.device != expected.device:
            return f"{where} is on {got.device}, expected {expected.device} (create new tensors with device=x.device)"
        if got.dtype == torch.bool or not got.dtype.is_floating_point:
            bad = got.cpu() != expected.cpu()
        else:
            g, e = got.detach().cpu().double(), expected.detach().cpu().double()
            bad = ~torch.isclose(g, e, atol=atol, rtol=rtol, equal_nan=True)
        if bad.any():
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            e_val, g_val = expected.detach().cpu()[idx].item(), got.detach().cpu()[idx].item()
            return (f"{where} differs at {int(bad.sum())} of {bad.numel()} elements; first at {_where(idx, dims)}: "
                    f"expected {e_val:.6g}, got {g_val:.6g}")
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"{where} should be a {type(expected).__name__} of length {len(expected)}, got {describe(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            msg = compare(g, e, atol, rtol, f"{where}[{i}]", dims)
            if msg:
                return msg
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            return f"{where} should be a dict with keys {sorted(map(str, expected))}, got {describe(got)}"
        for k in expected:
            msg = compare(got[k], expected[k], atol, rtol, f"{where}[{k!r}]", dims)
            if msg:
                return msg
        return None
    if _is_number(expected):
        value = _as_number(got)
        if value is None:
            return f"{where} should be a number, got {describe(got)}"
        if not math.isclose(value, float(expected), abs_tol=atol, rel_tol=rtol):
            return f"{where} is {value:.6g}, expected {float(expected):.6g}"
        return None
    if got != expected:
        return f"{where} is {got!r}, expected {expected!r}"
    return None


# ---- copies of the inputs, and what the learner changed -----------------------------------------------------
def clone_inputs(x: Any) -> Any:
    """Tensors (also inside lists, tuples and dicts) copied, keeping requires_grad; anything else shared."""
    if isinstance(x, torch.Tensor):
        copy = x.detach().clone()
        return copy.requires_grad_(x.requires_grad) if x.requires_grad else copy
    if isinstance(x, list):
        return [clone_inputs(v) for v in x]
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(clone_inputs(v) for v in x)
    if isinstance(x, dict):
        return {k: clone_inputs(v) for k, v in x.items()}
    return x


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.detach(), b.detach()
    return bool(((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b).all())


def _changed_parts(original: Any, copy: Any, name: str) -> list[str]:
    if isinstance(original, torch.Tensor):
        return [] if isinstance(copy, torch.Tensor) and _same(original, copy) else [name]
    if isinstance(original, (list, tuple)) and isinstance(copy, (list, tuple)):
        if len(original) != len(copy):
            return [name]
        return [p for i, (o, c) in enumerate(zip(original, copy)) for p in _changed_parts(o, c, f"{name}[{i}]")]
    if isinstance(original, dict) and isinstance(copy, dict):
        if set(original) != set(copy):
            return [name]
        return [p for k in original for p in _changed_parts(original[k], copy[k], f"{name}[{k!r}]")]
    return []


def _modules(x: Any) -> list[torch.nn.Module]:
    if isinstance(x, torch.nn.Module):
        return [x]
    if isinstance(getattr(x, "model", None), torch.nn.Module):  # a HookedModel
        return [x.model]
    if isinstance(x, (list, tuple)):
        return [m for v in x for m in _modules(v)]
    if isinstance(x, dict):
        return [m for v in x.values() for m in _modules(v)]
    return []


def _weight_versions(case: Case) -> list[tuple[str, torch.Tensor, int]]:
    found = []
    for module in _modules(list(case.args) + list(case.kwargs.values())):
        found += [(n, p, p._version) for n, p in module.named_parameters()]
    return found


def _arg_names(fn: Callable, case: Case) -> list[str]:
    """A name for each positional argument (the reference's parameter names), then the keywords."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    names = [f"`{params[i]}`" if i < len(params) else f"argument {i + 1}" for i in range(len(case.args))]
    return names + [f"`{k}`" for k in case.kwargs]


# ---- gradients ---------------------------------------------------------------------------------------------
def _grad_inputs(args: tuple, kwargs: dict, names: list[str]) -> list[tuple[str, torch.Tensor]]:
    values = list(args) + list(kwargs.values())
    return [(n, v) for n, v in zip(names, values) if isinstance(v, torch.Tensor) and v.requires_grad]


def _grad_message(got: Any, expected: Any, learner_inputs, reference_inputs) -> str | None:
    """Does the learner's result carry gradients back to the inputs the reference's does?"""
    if not isinstance(expected, torch.Tensor) or not expected.requires_grad:
        return None
    if not isinstance(got, torch.Tensor) or not got.requires_grad:
        return ("carries no gradient, so backward() cannot train anything through it; it was computed "
                "outside autograd (.item(), float(), numpy, torch.no_grad(), .detach(), or a new tensor built "
                "from values). Keep every step a torch operation on the inputs")
    weight = torch.randn(expected.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref_grads = torch.autograd.grad((expected.double() * weight).sum(), [t for _, t in reference_inputs],
                                    allow_unused=True)
    got_grads = torch.autograd.grad((got.double() * weight).sum(), [t for _, t in learner_inputs],
                                    allow_unused=True)
    for (name, _), r, g in zip(learner_inputs, ref_grads, got_grads):
        if r is not None and r.abs().sum() > 0 and (g is None or g.abs().sum() == 0):
            return (f"carries no gradient back to {name}; a step between {name} and the result left autograd "
                    "(.item(), numpy, .detach(), torch.no_grad() or a tensor rebuilt from values)")
        if r is not None and g is not None and not torch.allclose(g.double(), r.double(), atol=1e-4, rtol=1e-3):
            return f"has the right values, but its gradient with respect to {name} differs from the reference's"
    return None


def _your_line(err: BaseException) -> str:
    """Where in the learner's own code an exception was raised (not in torch or course_utils)."""
    here = Path(__file__).resolve().parents[1]
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not Path(f.filename).resolve().is_relative_to(here) and "site-packages" not in f.filename]
    if not frames or not frames[-1].line:
        return ""
    return f" (in your code, at `{frames[-1].line.strip()[:120]}`)"


# ---- the check ----------------------------------------------------------------------------------------------------
def run_check(name: str, learner_fn: Callable, reference_fn: Callable, cases: list[Case], *,
              atol: float = 1e-5, rtol: float = 1e-4,
              properties: list[Callable[[Case, Any], str | None]] = (),
              compare_fn: Callable[[Any, Any], str | None] | None = None,
              grad: bool = False, dims: tuple[str, ...] | None = None) -> Callable:
    """Check `learner_fn` against `reference_fn` on every case (and optional `properties`).

    `properties` are functions `(case, result) -> message or None`, run before the comparison, for
    answers that are not unique (a sign, an order) or to name a mistake whose diagnosis is certain.
    `grad=True`: the result must pass gradients to the inputs that require them, as the reference's
    does (give such cases inputs with requires_grad=True). `dims` names the result's axes for messages.
    Returns the learner's function if every case passes, the reference if the exercise is not done yet.
    """
    if not callable(learner_fn):
        raise CheckFailed(f"{name}: pass the function itself, e.g. check_{name}({name}), not {describe(learner_fn)}.")
    for i, case in enumerate(cases, 1):
        label = f"case {i} of {len(cases)}" + (f" ({case.label})" if case.label else "")
        names = _arg_names(reference_fn, case)
        mine_args, mine_kwargs = clone_inputs(case.args), clone_inputs(case.kwargs)
        weights = _weight_versions(case)
        try:
            got = learner_fn(*mine_args, **mine_kwargs)
        except NotImplementedError:
            print(f"{SKIP}  {name}: not done yet. The notebook carries on with the reference implementation.")
            return reference_fn
        except CheckFailed:
            raise
        except Exception as err:  # the learner's own error, said in one line
            raise CheckFailed(f"{name}, {label}: your function raised {type(err).__name__}: "
                              f"{str(err)[:300]}{_your_line(err)}") from None
        msg = _check_one(case, got, mine_args, mine_kwargs, names, weights, reference_fn, properties, compare_fn,
                         atol, rtol, grad, dims)
        if msg:
            raise CheckFailed(f"{name}, {label}: {msg}")
    print(f"{PASS}  {name}: all {len(cases)} cases pass.")
    return learner_fn


def _check_one(case, got, mine_args, mine_kwargs, names, weights, reference_fn, properties, compare_fn,
               atol, rtol, grad, dims) -> str | None:
    changed = _changed_parts(list(case.args) + list(case.kwargs.values()),
                             list(mine_args) + list(mine_kwargs.values()), "inputs")
    if changed:
        index = int(changed[0].split("]")[0].removeprefix("inputs["))
        return (f"your function changed its input {names[index]} in place; leave inputs as they are (use "
                "out-of-place operations such as x * 2 rather than x *= 2 or x.mul_(2), or work on x.clone())")
    moved = [n for n, p, version in weights if p._version != version]
    if moved:
        return f"your function changed the model's weights in place ({moved[0]}); read them, never write them"
    try:
        for prop in properties:
            msg = prop(case, got)
            if msg:
                return msg
        ref_args, ref_kwargs = clone_inputs(case.args), clone_inputs(case.kwargs)
        expected = reference_fn(*ref_args, **ref_kwargs)
        msg = compare_fn(got, expected) if compare_fn else compare(got, expected, atol, rtol, dims=dims)
        if msg or not grad:
            return msg
        return _grad_message(got, expected, _grad_inputs(mine_args, mine_kwargs, names),
                             _grad_inputs(ref_args, ref_kwargs, names))
    except CheckFailed as err:
        return str(err)
    except Exception:  # the learner returned something no comparison could read
        return f"your function returned {describe(got)}, which could not be compared with the expected result"
