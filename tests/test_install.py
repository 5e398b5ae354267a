"""The installer notices a half-made or copied .venv, says what to do when venv creation fails, and
JupyterLab is served on the learner's folder only."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import install, lab

ROOT = Path(__file__).resolve().parent.parent


def test_a_half_made_venv_is_detected(tmp_path):
    venv = tmp_path / ".venv"
    assert install.venv_problem(venv) is None  # none yet: fine
    (venv / "bin").mkdir(parents=True)
    assert "no Python" in install.venv_problem(venv)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert "no pip" in install.venv_problem(venv)


def test_a_copied_venv_is_detected(tmp_path):
    venv = tmp_path / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / "bin" / "pip").write_text("#!/home/someone/else/.venv/bin/python3\nimport pip\n")
    problem = install.venv_problem(venv) or ""
    assert "no pip" in problem or "copied" in problem  # --without-pip: the first problem found wins


def test_a_failing_venv_module_gives_one_sentence_and_leaves_nothing(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text(f"#!/bin/sh\nmkdir -p {tmp_path}/.venv/bin && touch {tmp_path}/.venv/bin/python\n"
                    "echo 'ensurepip is not available' >&2; exit 1\n")
    fake.chmod(0o755)
    with pytest.raises(install.InstallError, match="apt install python3-venv"):
        install.make_venv(tmp_path / ".venv", str(fake))
    assert not (tmp_path / ".venv").exists()


def test_offline_install_needs_a_filled_wheelhouse(tmp_path):
    (tmp_path / "wheelhouse").mkdir()
    venv = tmp_path / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    with pytest.raises(install.InstallError, match="make wheelhouse"):
        install.install(venv, sys.executable, "default", tmp_path / "wheelhouse")


def test_lab_serves_the_learners_folder_only(tmp_path):
    cmd = lab.command(tmp_path, port=8899, token="t", open_browser=False)
    assert f"--ServerApp.root_dir={tmp_path}" in cmd
    assert not any(str(ROOT / "notebooks") in c or str(ROOT / "solutions") in c for c in cmd)
    assert any(c.startswith("--LabApp.app_settings_dir=") for c in cmd)
    if os.name == "posix":
        assert "--KernelManager.transport=ipc" in cmd  # no "running over TCP without encryption" warning
    (tmp_path / "UPDATES.md").write_text("x")
    assert "--LabApp.default_url=/lab/tree/UPDATES.md" in lab.command(tmp_path)
    assert "MPLBACKEND" not in lab.environment()


def test_doctor_reports_each_check_with_a_fix(tmp_path):
    """`make doctor` outside any course venv: says so, says how to fix it, and exits 1."""
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "doctor.py"), "--venv", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=120)
    out = result.stdout
    for what in ("Python", "environment", "GPU", "disk", "network"):
        assert f"] {what}" in out, out
    assert "[FIX ] environment" in out and "-> run `make lab`" in out and result.returncode == 1
