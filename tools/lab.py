"""Open JupyterLab on the learner's folder, my_work/, and nowhere else (`make lab` runs this).

    python tools/lab.py                     # copy new notebooks into my_work/, then serve it
    python tools/lab.py --solutions         # also put the complete notebooks in my_work/solutions/

JupyterLab is rooted at my_work/, so the tracked notebooks in notebooks/ and solutions/ are out of
its reach: no save, manual or automatic, can change a file git tracks. The settings the course
needs live in tools/lab_settings/overrides.json (a notebook's kernel stops when its tab closes;
Markdown opens as a preview; no news fetched from the internet). Kernels talk to the server over
local IPC sockets where the system has them, so ipykernel has no reason to warn about unencrypted
TCP. The browser test (tools/browser_test.py) starts the server through `command()` below, so it
tests what learners get.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learner_copies  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ROOT / "tools" / "lab_settings"


def command(work: Path, port: int | None = None, token: str | None = None, open_browser: bool = True,
            python: str = sys.executable) -> list[str]:
    """The `jupyter lab` command line that serves `work` with the course's settings."""
    start = learner_copies.UPDATES if (work / learner_copies.UPDATES).exists() else ""
    cmd = [python, "-m", "jupyterlab",
           f"--ServerApp.root_dir={work}",
           f"--LabApp.default_url=/lab/tree/{start}",
           f"--LabApp.app_settings_dir={SETTINGS}"]
    if os.name == "posix":
        cmd.append("--KernelManager.transport=ipc")
    if port is not None:
        cmd.append(f"--ServerApp.port={port}")
    if token is not None:
        cmd += [f"--IdentityProvider.token={token}", "--ServerApp.password="]
    if not open_browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers run as root
    return cmd


def environment() -> dict[str, str]:
    """The server's environment: figures inline (not the headless Agg some shells set), offline hub."""
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "my_work", help="the learner's folder")
    parser.add_argument("--solutions", action="store_true", help="copy the complete notebooks into WORK/solutions/")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    args = parser.parse_args()
    if args.solutions:
        learner_copies.copy_solutions(work=args.work)
    notes = learner_copies.sync(work=args.work)
    for line in notes:
        print(line)
    if notes:
        print(f"(JupyterLab opens {learner_copies.UPDATES} first: it lists these too.)")
    print(f"Your notebooks are in {args.work}; JupyterLab shows that folder only.", flush=True)
    cmd = command(args.work)
    if args.dry_run:
        print(" ".join(cmd))
        return
    os.execve(cmd[0], cmd, environment())


if __name__ == "__main__":
    main()
