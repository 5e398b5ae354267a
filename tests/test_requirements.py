"""requirements.txt (exact pins), environment.yml and pyproject.toml (ranges) agree."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def pins(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip().lstrip("- ").strip()
        if "==" in line:
            name, version = line.split("==")
            out[name.lower()] = version
    return out


def test_environment_yml_matches_requirements():
    req = pins((ROOT / "requirements.txt").read_text().splitlines())
    env_text = (ROOT / "environment.yml").read_text()
    env = pins(env_text.split("- pip:")[1].splitlines())
    assert req == env


def test_pins_satisfy_pyproject_ranges():
    req = pins((ROOT / "requirements.txt").read_text().splitlines())
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges = deps["dependencies"] + sum(deps["optional-dependencies"].values(), [])
    for spec in ranges:
        r = Requirement(spec)
        assert r.name.lower() in req, f"{r.name} has a range in pyproject.toml but no pin in requirements.txt"
        assert r.specifier.contains(req[r.name.lower()]), f"{r.name}=={req[r.name.lower()]} is outside {r.specifier}"


def test_supported_ranges_cover_colab():
    deps = {Requirement(s).name: Requirement(s).specifier
            for s in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert deps["torch"].contains("2.11.0") and deps["torch"].contains("2.4.0")
    assert deps["transformers"].contains("4.57.0") and deps["transformers"].contains("5.0.0")
    assert not deps["transformers"].contains("6.0.0")
