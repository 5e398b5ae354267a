"""Write the learner notebooks in `notebooks/` from the single source in `solutions/`.

    python tools/build_notebooks.py          # (re)write notebooks/
    python tools/build_notebooks.py --check  # exit 1 if notebooks/ is not what the build would write

In a solution notebook, the code between `### BEGIN SOLUTION` and `### END SOLUTION` is the
learner's to write. The learner version keeps everything else and puts in its place

    raise NotImplementedError("Exercise: write this, then run the check below.")

indented like the markers. A cell whose first line is `### SOLUTION CELL` is dropped entirely.
Outputs and execution counts are stripped from both versions. Generated notebooks say so in their
metadata: edit `solutions/`, never `notebooks/`.

The repository's URL lives in one place, `[project.urls] Repository` in pyproject.toml (with the
branch in `[tool.course] branch`). The build writes it into every notebook's Colab badge (which
opens the learner version on Colab, from either version) and into the Colab install line of its setup cell, in both
versions; `--check` reports a notebook where they disagree.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END, WHOLE = "### BEGIN SOLUTION", "### END SOLUTION", "### SOLUTION CELL"
STUB = 'raise NotImplementedError("Exercise: write this, then run the check below.")'
NAME = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE = re.compile(r"\[!\[Open In Colab\]\(" + re.escape(BADGE_IMAGE) + r"\)\]\([^)]*\)")
INSTALL = re.compile(r'"interp-course @ git\+[^"]*"')


def repository(root: Path = ROOT) -> tuple[str, str]:
    """The repository URL and branch from pyproject.toml: the one place they are set."""
    text = (root / "pyproject.toml").read_text()
    try:
        import tomllib
        data = tomllib.loads(text)
        url, branch = data["project"]["urls"]["Repository"], data["tool"]["course"]["branch"]
    except ImportError:  # Python 3.10
        url = re.search(r'^Repository\s*=\s*"([^"]+)"', text, re.M).group(1)
        branch = re.search(r'^branch\s*=\s*"([^"]+)"', text, re.M).group(1)
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(f"pyproject.toml: Repository = {url!r}; Colab opens notebooks from "
                         "https://github.com/OWNER/NAME only")
    return url, branch


def badge(url: str, branch: str, path: str) -> str:
    """The Colab badge that opens `path` (e.g. notebooks/04_x.ipynb) from the repository."""
    github = url.removeprefix("https://github.com/")
    return f"[![Open In Colab]({BADGE_IMAGE})](https://colab.research.google.com/github/{github}/blob/{branch}/{path})"


def install_spec(url: str) -> str:
    return f'"interp-course @ git+{url}"'


def set_repository(nb: dict, path: str, root: Path = ROOT) -> dict:
    """Write the repository's URL into the notebook's badge and Colab install line (in place)."""
    url, branch = repository(root)
    for cell in nb["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown":
            source = BADGE.sub(lambda m: badge(url, branch, path), source)
        elif cell["cell_type"] == "code":
            source = INSTALL.sub(lambda m: install_spec(url), source)
        cell["source"] = source
    return nb


def strip_solution(source: str, where: str) -> str:
    """Replace each marked block with a stub; raise ValueError on unbalanced markers."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}: nested {BEGIN}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            if not indent:
                raise ValueError(f"{where}: put {BEGIN} inside a function, so the learner's stub "
                                 "raises only when the check calls it")
            out.append(indent + STUB)
        elif stripped == END:
            if not inside:
                raise ValueError(f"{where}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN} without {END}")
    return "\n".join(out)


def clean(nb: dict) -> dict:
    """Drop outputs, execution counts and per-run metadata."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        for key in ("execution", "collapsed", "scrolled"):
            cell.get("metadata", {}).pop(key, None)
    nb["metadata"].pop("widgets", None)
    return nb


def learner_version(nb: dict, where: str) -> dict:
    nb = clean(nb)
    cells = []
    for i, cell in enumerate(nb["cells"]):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "code":
            if source.lstrip().startswith(WHOLE):
                continue
            source = strip_solution(source, f"{where}, cell {i}")
        cell["source"] = source
        cells.append(cell)
    nb["cells"] = cells
    nb["metadata"]["course"] = {"generated_from": f"solutions/{where}", "do_not_edit": True}
    return nb


def dumps(nb: dict) -> str:
    for cell in nb["cells"]:  # store sources as lists of lines, as Jupyter does
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        cell["source"] = src.splitlines(keepends=True)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def build(check: bool = False, root: Path = ROOT) -> list[str]:
    """Build every notebook; with `check`, return the names that are out of date instead."""
    stale = []
    for src in sorted((root / "solutions").glob("*.ipynb")):
        if not NAME.match(src.name):
            raise ValueError(f"{src.name}: notebooks are named NN_snake_case.ipynb")
        raw = src.read_text()
        nb = json.loads(raw)
        cleaned = dumps(set_repository(clean(nb), f"notebooks/{src.name}", root))  # the learner version, on Colab too
        text = dumps(set_repository(learner_version(nb, src.name), f"notebooks/{src.name}", root))
        dest = root / "notebooks" / src.name
        if check:
            if not dest.exists() or dest.read_text() != text:
                stale.append(src.name)
            if raw != cleaned:
                stale.append(f"solutions/{src.name} (has outputs, or an old repository URL; `make notebooks` fixes it)")
        else:
            if raw != cleaned:
                src.write_text(cleaned)
            dest.parent.mkdir(exist_ok=True)
            dest.write_text(text)
    if check:
        known = {p.name for p in (root / "solutions").glob("*.ipynb")}
        stale += [p.name + " (no source)" for p in (root / "notebooks").glob("*.ipynb") if p.name not in known]
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only say whether notebooks/ is current")
    args = parser.parse_args()
    stale = build(check=args.check)
    if args.check and stale:
        print("notebooks/ is out of date; run `make notebooks`: " + ", ".join(stale))
        sys.exit(1)
    print("notebooks/ is current." if args.check else "notebooks/ written from solutions/.")


if __name__ == "__main__":
    main()
