"""The notebooks as Colab runs them: the course's wheel installed (not editable) next to Colab's torch
and transformers, every notebook run from a folder outside the repository.

    make test-colab          # Python 3.12, torch 2.11.0 and transformers 5.23.0 unless told otherwise

Steps: build the course's wheel; make a fresh venv; install the wheel with Colab's torch and
transformers (from PyPI, so torch comes with its CUDA libraries, as on Colab); copy notebooks/ and
solutions/ to a temporary folder; run every notebook there with nbval, with the repository nowhere
on the path; print the time of each (from nbval's per-cell times); print the venv's size; delete the venv (it is several GB).
What this does not test: Colab itself (its first cell installs from the repository's URL, which
needs the published repository) and a GPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    print(f"[colab] {text}", flush=True)


def check(cmd: list[str], **kw) -> None:
    say(" ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def folder_size(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-colab")
    parser.add_argument("--torch", default="2.11.0")
    parser.add_argument("--transformers", default="5.23.0")
    parser.add_argument("--keep", action="store_true", help="keep the venv afterwards")
    args = parser.parse_args()
    venv = args.venv.resolve()
    py = venv / "bin" / "python"

    start = time.time()
    shutil.rmtree(venv, ignore_errors=True)
    check([args.python, "-m", "venv", str(venv)])
    dist = Path(tempfile.mkdtemp(prefix="course-wheel-"))
    check([str(py), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)])
    wheel = next(dist.glob("interp_course-*.whl"))
    check([str(py), "-m", "pip", "install", "--no-cache-dir", "--progress-bar", "off", "-q",
           f"torch=={args.torch}", f"transformers=={args.transformers}", str(wheel),
           "ipykernel", "pytest", "nbval"])
    installed = time.time() - start
    size = folder_size(venv)
    say(f"venv ready in {installed:.0f} s: {size:.1f} GB with torch {args.torch} (PyPI's CUDA build) "
        f"and transformers {args.transformers}")

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    outside = Path(tempfile.mkdtemp(prefix="course-colab-"))
    where = subprocess.run([str(py), "-c", "import course_utils, torch, transformers, sys; "
                            "print(course_utils.__file__, torch.__version__, transformers.__version__, sys.version.split()[0])"],
                           cwd=outside, env=env, capture_output=True, text=True, check=True).stdout.split()
    say(f"course_utils from {where[0]}; torch {where[1]}, transformers {where[2]}, Python {where[3]}")
    if not where[0].startswith(str(venv)):
        say("FAILED: course_utils was not imported from the installed wheel")
        return 1

    for folder in ("notebooks", "solutions"):
        shutil.copytree(ROOT / folder, outside / folder)
    notebooks = [str(p.relative_to(outside)) for folder in ("notebooks", "solutions")
                 for p in sorted((outside / folder).glob("*.ipynb"))]
    t0 = time.time()
    proc = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *notebooks, "--nbval-lax",
                           "--nbval-current-env", "--nbval-cell-timeout=600", "--junitxml", str(outside / "junit.xml")],
                          cwd=outside, env=env, capture_output=True, text=True)
    say(f"nbval on {len(notebooks)} notebooks: {time.time() - t0:.0f} s in all")
    seconds: dict[str, float] = {}
    failed_in: set[str] = set()
    for case in ET.parse(outside / "junit.xml").iter("testcase"):
        name = next((n for n in notebooks if n.replace("/", ".") == case.get("classname")), case.get("classname"))
        seconds[name] = seconds.get(name, 0.0) + float(case.get("time", 0))
        if case.find("failure") is not None or case.find("error") is not None:
            failed_in.add(name)
    results = [(n, seconds.get(n, float("nan")), n in seconds and n not in failed_in) for n in notebooks]
    for name, sec, ok in results:
        say(f"{name:40s} {sec:6.1f} s  {'ok' if ok else 'FAILED'}")
    if proc.returncode:
        print(proc.stdout[-6000:], proc.stderr[-2000:])
    shutil.rmtree(outside, ignore_errors=True)
    shutil.rmtree(dist, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(venv, ignore_errors=True)
    failed = sum(not ok for *_, ok in results)
    say(f"total {time.time() - start:.0f} s (install {installed:.0f} s, venv {size:.1f} GB"
        f"{', kept' if args.keep else ', deleted'})")
    print(f"colab: {len(results) - failed} passed, {failed} failed")
    return 1 if failed or proc.returncode or not results else 0


if __name__ == "__main__":
    sys.exit(main())
