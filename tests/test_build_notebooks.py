"""The learner notebooks are exactly what the build writes from solutions/, and carry no outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.build_notebooks import STUB, strip_solution

ROOT = Path(__file__).resolve().parent.parent


def test_notebooks_are_current():
    result = subprocess.run([sys.executable, "tools/build_notebooks.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_solution_has_a_learner_version_and_no_outputs():
    solutions = sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb"))
    assert solutions and solutions == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    for path in list((ROOT / "solutions").glob("*.ipynb")) + list((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, path.name


def test_learner_versions_hide_solutions():
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        text = path.read_text()
        assert "BEGIN SOLUTION" not in text and STUB.split("(")[0] in text, path.name


def test_strip_solution_keeps_indentation_and_rejects_bad_markers():
    src = "def f(x):\n    '''doc'''\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n"
    assert strip_solution(src, "t") == f"def f(x):\n    '''doc'''\n    {STUB}"
    for bad in ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION",  # top level: would raise at once
                "def f():\n    ### BEGIN SOLUTION\n    pass",       # never closed
                "def f():\n    ### END SOLUTION"):
        with pytest.raises(ValueError):
            strip_solution(bad, "t")
