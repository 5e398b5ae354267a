"""`make lab` copies notebooks once and never overwrites a learner's work."""

import shutil

from tools.learner_copies import sync


def test_copies_once_and_never_overwrites(tmp_path):
    (tmp_path / "notebooks").mkdir()
    nb = tmp_path / "notebooks" / "01_features.ipynb"
    nb.write_text('{"v": 1}')
    assert sync(tmp_path) == []
    mine = tmp_path / "my_work" / "01_features.ipynb"
    assert mine.read_text() == '{"v": 1}'
    mine.write_text('{"learner": "my answers"}')
    nb.write_text('{"v": 2}')
    notes = sync(tmp_path)
    assert mine.read_text() == '{"learner": "my answers"}'
    assert len(notes) == 1 and "untouched" in notes[0]
    shutil.move(mine, tmp_path / "my_work" / "old.ipynb")
    assert sync(tmp_path) == [] and mine.read_text() == '{"v": 2}'
