"""Every notebook carries one plausible wrong answer (cell metadata `course.wrong_answer`), which the
browser test types into JupyterLab. Here, without a browser: each notebook has exactly one, the same in
both versions, and the check that follows its exercise rejects it in one line."""
import ast
import importlib
import json
import pkgutil
from pathlib import Path

import pytest
import torch

import course_utils.checks
from course_utils import lens, load_model
from tests.check_helpers import rejects

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb"))


def _check_function(name: str):
    for info in pkgutil.iter_modules(course_utils.checks.__path__):
        module = importlib.import_module(f"course_utils.checks.{info.name}")
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"no check named {name} in course_utils.checks")


def _marked(version: str, notebook: str) -> tuple[str, list[str], dict]:
    cells = json.loads((ROOT / version / notebook).read_text())["cells"]
    marked = [i for i, c in enumerate(cells) if "wrong_answer" in c.get("metadata", {}).get("course", {})]
    assert len(marked) == 1, f"{version}/{notebook}: {len(marked)} cells carry a wrong answer (one expected)"
    i = marked[0]
    check_cell = next(c for c in cells[i + 1:] if c["cell_type"] == "code")
    return cells[i]["metadata"]["course"]["wrong_answer"], cells[i]["source"], check_cell


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_one_wrong_answer_the_same_in_both_versions(notebook):
    assert _marked("solutions", notebook)[0] == _marked("notebooks", notebook)[0]


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_check_rejects_the_wrong_answer_in_one_line(notebook):
    wrong, _, check_cell = _marked("solutions", notebook)
    # The check cell reads `name = check_name(name, model, ...)`: find the check and its arguments.
    call = ast.parse("".join(check_cell["source"])).body[0].value
    assert isinstance(call, ast.Call) and call.func.id.startswith("check_"), "the cell after the exercise is its check"
    namespace = {"torch": torch, "lens": lens}
    exec(wrong, namespace)
    answer = namespace[call.args[0].id]
    extra = []
    for arg in call.args[1:]:
        assert isinstance(arg, ast.Name) and arg.id == "model", f"an argument the test cannot supply: {ast.dump(arg)}"
        extra.append(load_model())  # checks work on any model; the 2-layer one is the fastest
    message = rejects(_check_function(call.func.id), answer, None, *extra)
    assert "Traceback" not in message
