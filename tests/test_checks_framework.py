"""The check framework: passes right answers, names what differs in wrong ones, hands back the
reference for unfinished exercises, never shows the reference's source."""

import numpy as np
import pytest
import torch

from course_utils.checks import Case, CheckFailed, compare, run_check


def ref_softmax(x):
    return x.softmax(-1)


CASES = [Case((torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),), label="random"),
         Case((torch.zeros(1, 1),), label="one element")]


def test_passes_and_returns_learner_function(capsys):
    mine = lambda x: torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)  # noqa: E731
    assert run_check("softmax", mine, ref_softmax, CASES) is mine
    assert "all 2 cases pass" in capsys.readouterr().out


def test_not_done_yet_hands_back_reference(capsys):
    def stub(x):
        raise NotImplementedError

    assert run_check("softmax", stub, ref_softmax, CASES) is ref_softmax
    out = capsys.readouterr().out
    assert "not done yet" in out and out.count("\n") == 1


@pytest.mark.parametrize("wrong, message", [
    (lambda x: x.softmax(0), "differs at"),                 # wrong axis
    (lambda x: x.softmax(-1).T, "has shape"),              # wrong shape
    (lambda x: (x > 0), "dtype"),                           # wrong dtype
    (lambda x: x.softmax(-1).tolist(), "should be a tensor"),
])
def test_rejects_wrong_answers_with_a_precise_message(wrong, message):
    with pytest.raises(CheckFailed, match=message) as info:
        run_check("softmax", wrong, ref_softmax, CASES)
    assert "softmax, case 1 of 2 (random)" in str(info.value)
    assert "def ref_softmax" not in str(info.value) and "x.softmax" not in str(info.value)


def test_first_wrong_element_is_named():
    msg = compare(torch.tensor([1.0, 2.0, 3.5]), torch.tensor([1.0, 2.0, 3.0]))
    assert "1 of 3 elements" in msg and "index [2]" in msg and "expected 3" in msg and "got 3.5" in msg


def test_compare_numbers_sequences_dicts():
    assert compare(1.0, 1.0) is None
    assert "expected 2" in compare(1.0, 2.0)
    assert "length 2" in compare((1,), (1, 2))
    assert "[1]" in compare([1.0, 5.0], [1.0, 2.0])
    assert "keys" in compare({"a": 1}, {"b": 1})
    assert compare(torch.tensor(2.0), 2.0) is None


def test_properties_run_before_comparison():
    def must_be_positive(case, result):
        return None if (result >= 0).all() else "all probabilities must be non-negative"

    with pytest.raises(CheckFailed, match="non-negative"):
        run_check("softmax", lambda x: -x.softmax(-1), ref_softmax, CASES, properties=[must_be_positive])


def test_passing_the_wrong_object_is_explained():
    with pytest.raises(CheckFailed, match="pass the function itself"):
        run_check("softmax", torch.zeros(3), ref_softmax, CASES)


def test_notebook_shows_message_without_traceback():
    err = CheckFailed("softmax, case 1: result has shape (4, 3), expected (3, 4)")
    assert err._render_traceback_() == ["\x1b[31mCheckFailed\x1b[0m: " + str(err)]


# ---- hardening: copies, in-place edits, dtypes, gradients, any return value --------------------------------------
def ref_scale(x, factor):
    return x * factor


SCALE_CASES = [Case((torch.arange(6.0).reshape(2, 3), 2.0), label="a small matrix")]


@pytest.mark.parametrize("wrong, named", [
    (lambda x, factor: x.mul_(factor), "`x`"),                                 # edits x, returns it
    (lambda x, factor: (x.add_(0.5) - 0.5) * factor, "`x`"),                  # right value, input left changed
])
def test_an_input_changed_in_place_is_named(wrong, named):
    with pytest.raises(CheckFailed, match=f"changed its input {named} in place"):
        run_check("scale", wrong, ref_scale, SCALE_CASES)


def test_inputs_in_lists_and_keywords_and_model_weights_are_watched():
    def ref_total(xs, weight=None):
        return sum(xs) * weight

    def edits_list(xs, weight=None):
        xs[1].zero_()
        return ref_total(xs, weight)

    def edits_keyword(xs, weight=None):
        weight.add_(1)
        return sum(xs) * (weight - 1)

    cases = [Case(([torch.ones(2), torch.ones(2)],), {"weight": torch.tensor(2.0)}, label="two vectors")]
    with pytest.raises(CheckFailed, match="changed its input `xs` in place"):
        run_check("total", edits_list, ref_total, cases)
    with pytest.raises(CheckFailed, match="changed its input `weight` in place"):
        run_check("total", edits_keyword, ref_total, cases)

    layer = torch.nn.Linear(3, 2)

    def ref_apply(module, x):
        return module(x)

    def edits_weights(module, x):
        with torch.no_grad():
            module.weight.zero_()
        return module(x)

    with pytest.raises(CheckFailed, match="changed the model's weights in place"):
        run_check("apply", edits_weights, ref_apply, [Case((layer, torch.ones(1, 3)))])


def test_the_reference_sees_untouched_inputs():
    """A learner that edits its input first cannot make the reference agree with a wrong value."""
    seen = []

    def ref(x, factor):
        seen.append(x.clone())
        return x * factor

    with pytest.raises(CheckFailed):
        run_check("scale", lambda x, factor: x.mul_(0), ref, SCALE_CASES)
    assert not seen or torch.equal(seen[0], SCALE_CASES[0].args[0])


def test_dtype_must_match_and_float64_is_explained():
    with pytest.raises(CheckFailed, match="dtype torch.float64, expected torch.float32.*float64 usually"):
        run_check("scale", lambda x, factor: (x * factor).double(), ref_scale, SCALE_CASES)
    with pytest.raises(CheckFailed, match="dtype torch.int64, expected torch.float32"):
        run_check("scale", lambda x, factor: (x * factor).long(), ref_scale, SCALE_CASES)


def ref_loss(w, x):
    return ((x @ w) ** 2).mean()


GRAD_CASES = [Case((torch.randn(3, 2, generator=torch.Generator().manual_seed(0), requires_grad=True),
                    torch.randn(5, 3, generator=torch.Generator().manual_seed(1))), label="a linear map")]


@pytest.mark.parametrize("wrong, message", [
    (lambda w, x: torch.tensor(((x @ w) ** 2).mean().item()), "carries no gradient"),
    (lambda w, x: torch.as_tensor(((x.numpy() @ w.detach().numpy()) ** 2).mean()), "carries no gradient"),
    (lambda w, x: ((x @ w.detach()) ** 2).mean() + 0 * w.sum(), "no gradient back to `w`"),
    (lambda w, x: ((x @ w) ** 2).mean().item(), "should be a tensor"),
])
def test_results_without_gradients_are_rejected(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        run_check("loss", wrong, ref_loss, GRAD_CASES, grad=True)


def test_a_right_differentiable_answer_passes_the_gradient_check():
    mine = lambda w, x: (x @ w).pow(2).sum() / (x.shape[0] * w.shape[1])  # noqa: E731
    assert run_check("loss", mine, ref_loss, GRAD_CASES, grad=True) is mine


def test_numbers_may_be_python_numpy_or_one_element_tensors():
    ref = lambda x: 2.0  # noqa: E731
    for answer in (2.0, 2, np.float32(2.0), np.float64(2.0), torch.tensor(2.0), torch.tensor([2.0]), np.array(2.0)):
        run_check("number", lambda x, a=answer: a, ref, [Case((1,))])
    with pytest.raises(CheckFailed, match="should be a number"):
        run_check("number", lambda x: True, ref, [Case((1,))])


def test_the_learners_own_error_is_one_line_with_its_place():
    def broken(x, factor):
        y = x.reshape(5, 5)
        return y

    with pytest.raises(CheckFailed, match=r"raised RuntimeError: .*shape.*at `y = x.reshape\(5, 5\)`"):
        run_check("scale", broken, ref_scale, SCALE_CASES)


class Weird:
    def __repr__(self):
        raise ValueError("no repr")

    def __eq__(self, other):
        raise ValueError("no comparison")

    def __len__(self):
        raise ValueError("no length")


WEIRD_ANSWERS = [None, "text", 3, 2.5, float("nan"), True, [1, 2], (torch.zeros(1),), {"a": 1}, Weird(),
                 np.zeros((2, 3)), torch.zeros(()), torch.zeros(2, 3, dtype=torch.complex64), torch.full((2, 3), float("nan")),
                 torch.zeros(2, 3, dtype=torch.bool), torch.zeros(0), torch.zeros(2, 3, 1), lambda: 0, object()]
EXPECTED_KINDS = {"tensor": lambda *a: torch.ones(2, 3), "number": lambda *a: 1.5,
                  "tuple": lambda *a: (torch.ones(2), 3.0), "dict": lambda *a: {"loss": torch.tensor(1.0)}}


@pytest.mark.parametrize("kind", list(EXPECTED_KINDS))
@pytest.mark.parametrize("answer", WEIRD_ANSWERS, ids=lambda a: type(a).__name__)
def test_only_check_failed_ever_leaves_a_check(kind, answer):
    def prop(case, got):  # a property that trips over odd results must not crash the check either
        return None if got.shape else None

    try:
        run_check("anything", lambda x: answer, EXPECTED_KINDS[kind], [Case((torch.ones(1),))], properties=[prop])
    except CheckFailed as err:
        assert str(err).startswith("anything, case 1 of 1")


def test_axes_are_named_in_messages():
    wrong = torch.zeros(2, 3)
    wrong[1, 2] = 1.0
    with pytest.raises(CheckFailed, match=r"first at \[head 1, position 2\]"):
        run_check("grid", lambda x: wrong, lambda x: torch.zeros(2, 3), [Case((1,))], dims=("head", "position"))
