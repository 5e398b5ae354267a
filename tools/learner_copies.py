"""Give the learner their own copy of each notebook, in my_work/ (ignored by git).

A copy is made only when my_work/ has none, so rebuilding the course or pulling updates never
touches what a learner wrote. When the course's version of a notebook changes after it was copied,
this says so, and says how to get the new one without losing the old.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sync(root: Path = ROOT) -> list[str]:
    """Copy missing notebooks into my_work/; return one line for each notebook that was updated upstream."""
    work = root / "my_work"
    work.mkdir(exist_ok=True)
    record_path = work / ".copied_from.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    notes = []
    for src in sorted((root / "notebooks").glob("*.ipynb")):
        dest = work / src.name
        if not dest.exists():
            shutil.copy2(src, dest)
            record[src.name] = digest(src)
        elif record.get(src.name) != digest(src):
            notes.append(f"notebooks/{src.name} has changed since you copied it. Your my_work/{src.name} is "
                         f"untouched; to get the new version, rename yours and run `make lab` again.")
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return notes


if __name__ == "__main__":
    for line in sync():
        print(line)
    print("Your notebooks are in my_work/.")
