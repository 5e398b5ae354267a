"""Code under MIT, the notebooks' text and figures under CC BY 4.0, and every bundled model's card
names its training text's licence (the Python standard library: PSF)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_licence_files_and_metadata():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "Attribution 4.0 International" in (ROOT / "LICENSE-CC-BY-4.0.txt").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]


def test_every_model_card_states_the_training_texts_licence():
    cards = sorted((ROOT / "course_utils").glob("**/MODEL_CARD.md"))
    assert cards
    for card in cards:
        text = card.read_text()
        assert "Python standard library" in text and "PSF" in text, card
