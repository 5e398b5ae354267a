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


def test_badges_and_install_lines_agree_with_the_repository_setting():
    from tools.build_notebooks import BADGE, INSTALL, badge, install_spec, repository

    url, branch = repository()
    for folder in ("solutions", "notebooks"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            cells = json.loads(path.read_text())["cells"]
            text = {kind: ["".join(c["source"]) for c in cells if c["cell_type"] == kind] for kind in ("markdown", "code")}
            badges = [m.group(0) for t in text["markdown"] for m in BADGE.finditer(t)]
            installs = [m.group(0) for t in text["code"] for m in INSTALL.finditer(t)]
            assert badges == [badge(url, branch, f"notebooks/{path.name}")], f"{folder}/{path.name}: {badges}"
            assert installs and set(installs) == {install_spec(url)}, f"{folder}/{path.name}: {installs}"
            assert any('"google.colab" in sys.modules' in t for t in text["code"]), path.name  # installs on Colab only


def test_the_repository_is_set_in_one_place():
    """No other tracked file spells out the repository's address."""
    from tools.build_notebooks import repository

    url, _ = repository()
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    holders = [f for f in files if not f.endswith(".ipynb") and (ROOT / f).is_file()
               and url.removeprefix("https://") in (ROOT / f).read_text(errors="ignore")]
    assert holders == ["pyproject.toml"], holders
