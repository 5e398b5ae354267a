"""The learner's own folder, my_work/ (ignored by git): JupyterLab opens there and nowhere else.

    python tools/learner_copies.py                 # copy new notebooks in; list updated ones in UPDATES.md
    python tools/learner_copies.py --solutions     # also copy the complete notebooks into my_work/solutions/
    python tools/learner_copies.py --take 04       # take the course's new version of notebook 04

A copy is made only when my_work/ has none, so rebuilding the course or pulling updates never
touches what a learner wrote. When the course's version of a notebook changes after it was copied,
this says so in the terminal and in my_work/UPDATES.md (which JupyterLab opens first), and
`--take` swaps the new version in after renaming the learner's copy, so nothing is lost.
Nothing here ever writes outside my_work/, and JupyterLab cannot see outside it: no save can touch
a tracked file.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPDATES = "UPDATES.md"
RECORD = ".copied_from.json"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(record_path: Path) -> dict:
    return json.loads(record_path.read_text()) if record_path.exists() else {}


def _copy_folder(src_dir: Path, work: Path) -> list[str]:
    """Copy each notebook of src_dir that work/ lacks; return the names whose source changed since."""
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / RECORD
    record = _load(record_path)
    changed = []
    for src in sorted(src_dir.glob("*.ipynb")):
        dest = work / src.name
        if not dest.exists():
            shutil.copy2(src, dest)
            record[src.name] = digest(src)
        elif record.get(src.name) != digest(src):
            changed.append(src.name)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return changed


def _write_updates(work: Path, changed: list[str]) -> None:
    path = work / UPDATES
    if not changed:
        path.unlink(missing_ok=True)
        return
    lines = ["# Newer versions of your notebooks", "",
             "The course has a newer version than the copy in this folder of:", ""]
    for name in changed:
        solution = " SOLUTION=1" if name.startswith("solutions/") else ""
        lines.append(f"- `{name}`: take it with `make take NB={Path(name).name[:2]}{solution}`")
    lines += ["", "Your copies are untouched. Run the command in a terminal in the course folder: it renames "
              "your copy (to `..._mine_<date>.ipynb`, which you can keep, compare or delete) and puts the new "
              "version in its place. This file disappears once every notebook is current."]
    path.write_text("\n".join(lines) + "\n")


def sync(root: Path = ROOT, work: Path | None = None) -> list[str]:
    """Copy missing notebooks into work/ (default root/my_work); return one line per updated notebook.

    Also writes work/UPDATES.md when a notebook (or a solution copied earlier) has a newer version,
    and removes it when none has.
    """
    work = work or root / "my_work"
    changed = _copy_folder(root / "notebooks", work)
    solutions = work / "solutions"
    changed_solutions = _copy_folder(root / "solutions", solutions) if solutions.is_dir() else []
    _write_updates(work, changed + [f"solutions/{n}" for n in changed_solutions])
    return [f"notebooks/{name} has changed since you copied it. Your my_work/{name} is untouched; "
            f"`make take NB={name[:2]}` takes the new version (yours is kept, renamed)." for name in changed] + \
           [f"solutions/{name} has changed: `make take NB={name[:2]} SOLUTION=1` takes it." for name in changed_solutions]


def copy_solutions(root: Path = ROOT, work: Path | None = None) -> Path:
    """Copy the complete notebooks into work/solutions/ (only those not there yet); return the folder."""
    work = work or root / "my_work"
    _copy_folder(root / "solutions", work / "solutions")
    sync(root, work)  # refresh UPDATES.md
    return work / "solutions"


def take(number: str, root: Path = ROOT, work: Path | None = None, solution: bool = False) -> str:
    """Replace the learner's copy of notebook `number` by the course's version, keeping theirs renamed."""
    work = work or root / "my_work"
    src_dir, dest_dir = (root / "solutions", work / "solutions") if solution else (root / "notebooks", work)
    matches = sorted(src_dir.glob(f"{int(number):02d}_*.ipynb")) if str(number).isdigit() else []
    if not matches:
        known = ", ".join(p.name[:2] for p in sorted(src_dir.glob("*.ipynb")))
        raise SystemExit(f"No notebook {number!r}; the course has {known}. Use the two-digit number, e.g. NB=04.")
    src = matches[0]
    dest = dest_dir / src.name
    kept = ""
    if dest.exists():
        stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
        old = dest.with_name(f"{dest.stem}_mine_{stamp}.ipynb")
        dest.rename(old)
        kept = f" Yours is now {old.relative_to(work)}."
    dest_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    record_path = dest_dir / RECORD
    record = _load(record_path)
    record[src.name] = digest(src)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    sync(root, work)  # refresh UPDATES.md
    return f"{dest.relative_to(work)} is the course's current version.{kept}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="the learner's folder (default: my_work/)")
    parser.add_argument("--solutions", action="store_true", help="copy the complete notebooks into my_work/solutions/")
    parser.add_argument("--take", metavar="NN", help="take the course's new version of notebook NN")
    parser.add_argument("--solution", action="store_true", help="with --take: the solution notebook")
    args = parser.parse_args()
    if args.take:
        print(take(args.take, work=args.work, solution=args.solution))
        return
    if args.solutions:
        print(f"The complete notebooks are in {copy_solutions(work=args.work).relative_to(ROOT) if args.work is None else args.work / 'solutions'}/.")
    for line in sync(work=args.work):
        print(line)
    print("Your notebooks are in my_work/." if args.work is None else f"Your notebooks are in {args.work}/.")


if __name__ == "__main__":
    main()
