"""The check framework: passes right answers, names what differs in wrong ones, hands back the
reference for unfinished exercises, never shows the reference's source."""

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
