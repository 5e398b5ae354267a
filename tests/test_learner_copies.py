"""`make lab` copies notebooks once, never overwrites a learner's work, and says inside JupyterLab
(my_work/UPDATES.md) when a notebook has a newer version; `make take` swaps it in, keeping theirs."""

import shutil

from tools.learner_copies import UPDATES, copy_solutions, sync, take


def course(tmp_path):
    for folder in ("notebooks", "solutions"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "01_features.ipynb").write_text(f'{{"{folder}": 1}}')
    return tmp_path


def test_copies_once_and_never_overwrites(tmp_path):
    course(tmp_path)
    nb = tmp_path / "notebooks" / "01_features.ipynb"
    assert sync(tmp_path) == []
    mine = tmp_path / "my_work" / "01_features.ipynb"
    assert mine.read_text() == nb.read_text() and not (tmp_path / "my_work" / UPDATES).exists()
    mine.write_text('{"learner": "my answers"}')
    nb.write_text('{"v": 2}')
    notes = sync(tmp_path)
    assert mine.read_text() == '{"learner": "my answers"}'
    assert len(notes) == 1 and "untouched" in notes[0] and "make take NB=01" in notes[0]
    shutil.move(mine, tmp_path / "my_work" / "old.ipynb")
    assert sync(tmp_path) == [] and mine.read_text() == '{"v": 2}'


def test_updates_are_listed_inside_the_learners_folder(tmp_path):
    course(tmp_path)
    sync(tmp_path)
    (tmp_path / "notebooks" / "01_features.ipynb").write_text('{"v": 2}')
    sync(tmp_path)
    updates = (tmp_path / "my_work" / UPDATES).read_text()
    assert "01_features.ipynb" in updates and "make take NB=01" in updates


def test_take_keeps_the_learners_copy_and_clears_the_notice(tmp_path):
    course(tmp_path)
    sync(tmp_path)
    mine = tmp_path / "my_work" / "01_features.ipynb"
    mine.write_text('{"learner": "my answers"}')
    (tmp_path / "notebooks" / "01_features.ipynb").write_text('{"v": 2}')
    sync(tmp_path)
    message = take("01", tmp_path)
    assert mine.read_text() == '{"v": 2}' and "01_features_mine_" in message
    kept = list((tmp_path / "my_work").glob("01_features_mine_*.ipynb"))
    assert len(kept) == 1 and kept[0].read_text() == '{"learner": "my answers"}'
    assert not (tmp_path / "my_work" / UPDATES).exists()


def test_solutions_are_copies_made_on_demand(tmp_path):
    course(tmp_path)
    sync(tmp_path)
    assert not (tmp_path / "my_work" / "solutions").exists()
    folder = copy_solutions(tmp_path)
    assert (folder / "01_features.ipynb").read_text() == '{"solutions": 1}'
    (tmp_path / "solutions" / "01_features.ipynb").write_text('{"solutions": 2}')
    assert "SOLUTION=1" in sync(tmp_path)[0]
    take("1", tmp_path, solution=True)
    assert (folder / "01_features.ipynb").read_text() == '{"solutions": 2}'
