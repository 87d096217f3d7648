"""control/skip-ranges: one written format, merged safely, never silently read as "no ranges"."""

import multiprocessing
import os

import pytest

from trainer.control import (ControlState, add_skip_range, parse_skip_entries, poll_local, read_skip_ranges,
                             start_skip_ranges)


def skip_file(root):
    return root / "control" / "skip-ranges"


def test_a_rollback_into_a_legacy_json_file_keeps_every_range(tmp_path):
    """The defect: a rollback appended `A-B # ...` to a JSON-list file, which then parsed as nothing."""
    skip_file(tmp_path).parent.mkdir()
    skip_file(tmp_path).write_text("[[0, 8], [40, 48]]\n")
    assert add_skip_range(tmp_path, 100, 200, "rollback ev1 to global_step5") is True
    assert read_skip_ranges(tmp_path) == [(0, 8), (40, 48), (100, 200)]
    text = skip_file(tmp_path).read_text()
    assert "100-200  # rollback ev1 to global_step5\n" in text and not text.lstrip().startswith("[")
    assert [(a, b) for a, b, _ in parse_skip_entries(text)] == [(0, 8), (40, 48), (100, 200)]


def test_adding_keeps_existing_lines_and_notes_and_is_idempotent(tmp_path):
    skip_file(tmp_path).parent.mkdir()
    skip_file(tmp_path).write_text("# hand-written\n10-20  # the bad shard\n30-40")  # no final newline
    assert add_skip_range(tmp_path, 50, 60, "rollback ev2") is True
    text = skip_file(tmp_path).read_text()
    assert text == "# hand-written\n10-20  # the bad shard\n30-40\n50-60  # rollback ev2\n"
    before = os.stat(skip_file(tmp_path))
    assert add_skip_range(tmp_path, 50, 60, "rollback ev2") is False   # the same range again
    assert add_skip_range(tmp_path, 12, 18, "inside") is False          # covered already
    after = os.stat(skip_file(tmp_path))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert skip_file(tmp_path).read_text() == text
    assert add_skip_range(tmp_path, 15, 35) is True  # overlapping: recorded, merged when read
    assert read_skip_ranges(tmp_path) == [(10, 40), (50, 60)]


def test_a_new_file_has_the_documented_header_and_notes_stay_one_line(tmp_path):
    assert read_skip_ranges(tmp_path) == []
    assert add_skip_range(tmp_path, 0, 8, "spike # at step 3\nsecond line") is True
    lines = skip_file(tmp_path).read_text().splitlines()
    assert lines[0].startswith("# sample ranges the trainer skips") and lines[1] == "0-8  # spike at step 3 second line"


@pytest.mark.parametrize("start,end", [(5, 5), (9, 3), (-1, 4), (True, 3), (1.5, 3), ("a", 3)])
def test_bad_ranges_are_refused(tmp_path, start, end):
    with pytest.raises(ValueError):
        add_skip_range(tmp_path, start, end)
    assert not skip_file(tmp_path).exists()


def test_an_unparsable_file_is_an_error_never_no_ranges(tmp_path):
    skip_file(tmp_path).parent.mkdir()
    broken = "[[0, 8]]\n100-200  # rollback ev1 to global_step5\n"  # what the old rollback left behind
    skip_file(tmp_path).write_text(broken)
    with pytest.raises(ValueError, match="skip-ranges: a JSON skip-ranges file") as err:
        read_skip_ranges(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="fix the file first"):
        add_skip_range(tmp_path, 300, 400)
    assert skip_file(tmp_path).read_text() == broken  # nothing dropped, nothing added
    state = ControlState(tmp_path / "control")
    with pytest.raises(ValueError, match="refusing to train without its skip ranges") as err:
        start_skip_ranges(state, tmp_path)
    assert "\n" not in str(err.value)
    assert poll_local(state, True)[5] == 1 and "refusing to train on" in state.skip_error


def _add_many(root, offset):
    for i in range(30):
        add_skip_range(root, offset + 10 * i, offset + 10 * i + 5, f"writer {offset}")


def test_concurrent_writers_lose_nothing(tmp_path):
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_add_many, args=(tmp_path, offset)) for offset in (0, 1000, 2000)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(30)
        assert w.exitcode == 0
    assert len(read_skip_ranges(tmp_path)) == 90


def test_start_unites_the_file_with_the_checkpoint_ranges_and_restores_what_it_lost(tmp_path, capsys):
    add_skip_range(tmp_path, 100, 200, "rollback ev1")
    state = ControlState(tmp_path / "control")
    assert start_skip_ranges(state, tmp_path, inherited=[(0, 8), (100, 150)], source="global_step5") == \
        [(0, 8), (100, 200)]
    assert read_skip_ranges(tmp_path) == [(0, 8), (100, 200)]
    assert "0-8  # restored from checkpoint global_step5" in skip_file(tmp_path).read_text()
    assert "lacked 0-8" in capsys.readouterr().err
    assert poll_local(state, True)[3] == 0  # the write-back is not a change
    skip_file(tmp_path).write_text("100-200\n")  # edited mid-run: the checkpoint's range still applies
    os.utime(skip_file(tmp_path), ns=(1, 1))
    assert poll_local(state, True)[3] == 0 and state.skip_ranges == [(0, 8), (100, 200)]
    skip_file(tmp_path).write_text("100-200\n300-400\n")
    assert poll_local(state, True)[3] == 1 and state.skip_ranges == [(0, 8), (100, 200), (300, 400)]
