"""Create (or repair) the course's virtual environment and install the pinned packages into it.

    python3 tools/install.py                          # .venv from PyPI (what `make setup` / `make lab` run)
    python3 tools/install.py --torch cpu              # the CPU-only build of torch (no CUDA libraries)
    python3 tools/install.py --wheelhouse wheelhouse  # offline, from a folder `make wheelhouse` filled
    python3 tools/install.py --download wheelhouse    # fill that folder (online), for offline classrooms

It says what it is about to download and how big it is, lets pip show its progress, and leaves a
stamp (.venv/.installed) only when everything is in. A half-made .venv (one whose Python is missing,
broken, or has no pip, as an interrupted `python3 -m venv` leaves) is detected and rebuilt. Standard
library only, so that it runs on a bare `python3`.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# What a first install downloads and occupies on Linux x86-64, as measured: the CPU-only build with
# `make wheelhouse` (0.33 GB of wheels) and its venv (1.4 GB); the CUDA build with torch 2.11 from
# PyPI on Python 3.12 (2.9 GB of wheels, 5.3 GB venv; `make test-colab` prints it again).
SIZES = {"cpu": "about 0.35 GB to download, 1.5 GB installed",
         "cuda": "about 3 GB to download (torch's CUDA libraries are most of it), 5.5 GB installed"}


class InstallError(Exception):
    """Something the person installing can fix; the message says how."""


def say(text: str) -> None:
    print(f"[course setup] {text}", flush=True)


def run(cmd: list[str], what: str) -> None:
    say(f"{what}: {' '.join(cmd)}")
    if subprocess.run(cmd).returncode != 0:
        raise InstallError(f"{what} failed (pip's message is above).")


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def venv_problem(venv: Path) -> str | None:
    """Why an existing venv folder cannot be used, or None if it can (or does not exist)."""
    if not venv.exists():
        return None
    py = venv_python(venv)
    if not py.exists():
        return "it has no Python in it"
    try:
        probe = subprocess.run([str(py), "-c", "import pip"], capture_output=True,
                               text=True, timeout=120)
    except OSError as e:  # a venv copied from another machine points at a Python that is not here
        return f"its Python does not start ({e.strerror})"
    if probe.returncode != 0:
        return "its Python has no pip (an earlier `python3 -m venv` stopped half-way)" \
            if "No module named" in probe.stderr and "pip" in probe.stderr else "its Python does not start"
    pip_script = venv / "bin" / "pip"
    if pip_script.exists():  # scripts carry the absolute path of the folder the venv was made in
        head = "\n".join(pip_script.read_text(errors="replace").splitlines()[:3])
        made_in = re.search(r"""["']?(/[^"'\s]*?)/bin/python""", head)
        if made_in and Path(made_in.group(1)).resolve() != venv.resolve():
            return "it was made in another folder or machine and copied here (its scripts point there)"
    return None


def make_venv(venv: Path, python: str) -> None:
    problem = venv_problem(venv)
    if problem:
        say(f"{venv} is unusable: {problem}. Removing it and making a new one.")
        shutil.rmtree(venv)
    if venv.exists():
        return
    say(f"Creating the virtual environment {venv} with {python} ...")
    result = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True)
    if result.returncode != 0 or venv_problem(venv):
        shutil.rmtree(venv, ignore_errors=True)
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise InstallError(f"`{python} -m venv` failed ({detail[0]}). Install Python's venv module "
                           "(Debian/Ubuntu: `sudo apt install python3-venv`), then run `make lab` again.")


def nvidia_gpu() -> bool:
    return Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi") is not None


def torch_pin() -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip().startswith("torch=="):
            return line.split("#")[0].strip()
    raise InstallError("requirements.txt has no torch pin.")


def pip(py: Path | str, *args: str) -> list[str]:
    return [str(py), "-m", "pip", "--disable-pip-version-check", *args]


def install(venv: Path, python: str, torch: str, wheelhouse: Path | None) -> None:
    make_venv(venv, python)
    py = venv_python(venv)
    if wheelhouse:
        if not any(wheelhouse.glob("torch-*.whl")):
            raise InstallError(f"{wheelhouse} has no torch wheel: fill it with `make wheelhouse` on a machine "
                               "with internet, then copy it here.")
        say(f"Installing offline from {wheelhouse} (pip looks nowhere else).")
        offline = ["--isolated", "--no-index", "--find-links", str(wheelhouse)]
        run(pip(py, "install", *offline, "-r", str(ROOT / "requirements.txt"), "setuptools>=77"),
            "Installing the pinned packages")
        run(pip(py, "install", *offline, "--no-build-isolation", "--no-deps", "-e", str(ROOT)),
            "Installing the course itself (editable)")
    else:
        build = "cpu" if torch == "cpu" or platform.system() == "Darwin" else "cuda"
        say(f"First-time install into {venv}: {SIZES[build]}. This runs once; pip shows its progress below.")
        if platform.system() == "Linux" and torch != "cpu" and not nvidia_gpu():
            say("No NVIDIA GPU found. `make lab TORCH=cpu` installs the CPU-only torch instead (0.35 GB "
                "to download in all, rather than 3 GB with the CUDA libraries).")
            if sys.stdin.isatty():
                say("Continuing with the CUDA build in 10 s; press Ctrl+C to stop here.")
                time.sleep(10)
        if torch == "cpu":
            try:
                run(pip(py, "install", torch_pin(), "--index-url", CPU_INDEX), "Installing torch (CPU-only build)")
            except InstallError:
                raise InstallError(f"Could not install torch from {CPU_INDEX} (is it reachable from here?). "
                                   "Run `make lab` without TORCH=cpu to take torch from PyPI instead.") from None
        run(pip(py, "install", "-r", str(ROOT / "requirements.txt")), "Installing the pinned packages")
        run(pip(py, "install", "--no-deps", "-e", str(ROOT)), "Installing the course itself (editable)")
    (venv / ".installed").write_text(f"torch={torch} wheelhouse={wheelhouse or ''}\n")
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink()) / 1e9
    say(f"Done: {venv} holds {size:.1f} GB. From now on `make lab` needs no internet.")


def download(dest: Path, python: str, torch: str) -> None:
    """Fill `dest` with every pinned package, setuptools (to install the course offline) and the
    course's own wheel, for machines like this one (same OS, processor and Python version)."""
    dest.mkdir(parents=True, exist_ok=True)
    say(f"Downloading every pinned package into {dest}/ for Python {platform.python_version()} on "
        f"{platform.system()} {platform.machine()}: classroom machines need the same.")
    if torch == "cpu":
        run(pip(python, "download", "-d", str(dest), "--no-deps", torch_pin(), "--index-url", CPU_INDEX),
            "Downloading torch (CPU-only build)")
    run(pip(python, "download", "-d", str(dest), "-r", str(ROOT / "requirements.txt"), "setuptools>=77"),
        "Downloading the pinned packages and their dependencies")
    run(pip(python, "wheel", "--no-deps", "-w", str(dest), str(ROOT)), "Building the course's own wheel")
    files = list(dest.iterdir())
    size = sum(f.stat().st_size for f in files) / 1e9
    say(f"{dest}/ holds {len(files)} files, {size:.2f} GB. Copy the course folder with it to each machine; "
        "there `make lab` installs from it with no network.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--python", default=sys.executable, help="the Python that makes the venv")
    parser.add_argument("--torch", choices=["default", "cpu"], default="default",
                        help="cpu: the CPU-only build of torch, from PyTorch's own index")
    parser.add_argument("--wheelhouse", type=Path, default=None, help="install offline from this folder")
    parser.add_argument("--download", type=Path, metavar="DIR", help="fill DIR for offline installs instead")
    args = parser.parse_args()
    try:
        if sys.version_info < (3, 10):
            raise InstallError(f"The course needs Python 3.10 or later; this is {platform.python_version()}. "
                               "Install a newer Python and run `make lab PYTHON=python3.12` (say).")
        if args.download:
            download(args.download.resolve(), args.python, args.torch)
        else:
            install(args.venv.resolve(), args.python, args.torch,
                    args.wheelhouse.resolve() if args.wheelhouse else None)
    except InstallError as e:
        say(f"ERROR: {e}")
        return 1
    except KeyboardInterrupt:
        say("Stopped. Nothing is broken: `make lab` picks up where this left off.")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
