"""`make doctor`: is this machine ready for the course? Each line is a check; a problem comes with its fix.

Checks Python, the virtual environment, torch (and which build), transformers, the GPU, memory,
disk, and whether the course works offline (the bundled model loads with the hub switched off;
whether a wheelhouse is at hand). Exit status 1 when something must be fixed. Standard library
only at the top, so that it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OK, WARN, BAD = "ok  ", "note", "FIX "
problems = 0


def report(status: str, what: str, detail: str, fix: str = "") -> None:
    global problems
    problems += status == BAD
    print(f"[{status}] {what:13s} {detail}")
    if fix and status != OK:
        print(f"{'':21s}-> {fix}")


def memory_gb() -> tuple[float, float] | None:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return int(info["MemTotal"].split()[0]) / 2**20, int(info["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return None


def pin(name: str) -> str | None:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==")[1].strip()
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    args = parser.parse_args()
    venv = args.venv if args.venv.is_absolute() else ROOT / args.venv

    v = sys.version_info
    report(OK if v >= (3, 10) else BAD, "Python", f"{platform.python_version()} ({sys.executable})",
           "the course needs Python 3.10 or later: install one and run `make lab PYTHON=python3.12`")
    in_venv = Path(sys.prefix).resolve() == venv.resolve()
    if not in_venv:
        report(BAD, "environment", f"{venv} is not installed yet (or not usable)",
               "run `make lab` (online), or `make lab WHEELHOUSE=path/to/wheelhouse` (offline)")
    elif not (venv / ".installed").exists():
        report(BAD, "environment", f"{venv} exists but its install did not finish", "run `make setup` again")
    else:
        report(OK, "environment", f"{venv}")

    torch = None
    if importlib.util.find_spec("torch"):
        import torch
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
        wanted = pin("torch")
        report(OK if torch.__version__.split("+")[0] == wanted else WARN, "torch",
               f"{torch.__version__} ({build} build)",
               f"the course is tested with {wanted}; `rm -rf .venv && make lab` installs it")
        if torch.version.cuda and not torch.cuda.is_available():
            report(WARN, "torch build", "the CUDA build is installed but there is no usable GPU",
                   "it works, but takes ~3 GB more disk: `rm -rf .venv && make lab TORCH=cpu` for the CPU-only build")
    elif in_venv:
        report(BAD, "torch", "not installed", "run `make setup`")
    if importlib.util.find_spec("transformers"):
        import transformers
        major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
        report(OK if (4, 57) <= major_minor < (6, 0) else BAD, "transformers", transformers.__version__,
               "the course supports transformers 4.57 to 5.x: `rm -rf .venv && make lab`")

    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report(OK, "GPU", f"{props.name}, {props.total_memory / 2**30:.0f} GB (CUDA); notebooks use it")
    elif torch is not None and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        report(OK, "GPU", "Apple MPS; notebooks use it")
    else:
        report(OK, "GPU", "none (not needed: every notebook runs on the CPU in about a minute)")

    mem = memory_gb()
    if mem:
        total, available = mem
        report(OK if available >= 3 else WARN, "memory", f"{available:.1f} GB free of {total:.1f} GB",
               "a notebook needs up to 3 GB: close other programs, or run one notebook at a time")
    free = shutil.disk_usage(ROOT).free / 1e9
    need = 0.5 if in_venv else 6
    report(OK if free >= need else BAD, "disk", f"{free:.0f} GB free here",
           f"the install needs about {need} GB (1.5 GB with TORCH=cpu): free some space")

    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if in_venv and torch is not None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            sys.path.insert(0, str(ROOT))
            from course_utils import load_model
            model = load_model(device="cpu")
            report(OK, "offline", f"the bundled model loads with the hub off ({model.cfg.n_layers} layers); "
                   f"HF_HUB_OFFLINE={'1' if offline else 'unset (make sets it)'}")
        except Exception as e:  # noqa: BLE001 (any failure here is the thing to report)
            report(BAD, "offline", f"the bundled model does not load: {type(e).__name__}: {str(e)[:120]}",
                   "reinstall: `rm -rf .venv && make lab`")
    wheelhouse = ROOT / "wheelhouse"
    if wheelhouse.is_dir():
        report(OK, "wheelhouse", f"{wheelhouse} ({len(list(wheelhouse.glob('*.whl')))} wheels): `make lab` installs from it offline")
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        report(OK, "network", "PyPI is reachable (only the first install needs it)")
    except OSError:
        report(OK if in_venv else BAD, "network", "PyPI is not reachable",
               "fine once installed; to install offline, copy a wheelhouse/ from `make wheelhouse` into the course folder")
    print("All good." if not problems else f"{problems} thing(s) to fix, above.")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
