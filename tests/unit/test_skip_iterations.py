"""``--skip-iterations A-B``: iterations converted to the sample range steps A..B read (Megatron's
``--skip-train-iteration-range``), by the pure schedule function and through ``bigops surgery``."""

import pytest

from bigops.checkpoint.skip_iterations import parse_iteration_args
from bigops.cli.main import main as bigops_main
from bigops.errors import ConfigError
from trainer import config as config_mod
from trainer.control import add_skip_range, parse_skip_entries, read_skip_ranges
from trainer.data.sampler import batch_positions
from trainer.data.schedule import iteration_sample_range
from trainer.rundir import RunDir


def _steps_read(steps: int, gbs: int, ranges, consumed: int = 0) -> list[list[int]]:
    """What the trainer's sampler reads, step by step: the reference the conversion must agree with."""
    read = []
    for _ in range(steps):
        positions, consumed = batch_positions(consumed, gbs, ranges)
        read.append(positions)
    return read


def test_iterations_are_the_batches_those_steps_read():
    assert iteration_sample_range(1, 1, global_batch_size=4) == (0, 4)
    assert iteration_sample_range(3, 5, global_batch_size=4) == (8, 20)  # steps 3, 4, 5: samples 8..19
    ranges = [(6, 9), (13, 14), (30, 40)]
    read = _steps_read(12, 4, ranges)
    for first in range(1, 10):
        for last in range(first, 12):
            start, end = iteration_sample_range(first, last, global_batch_size=4, skip_ranges=ranges)
            assert (start, end - 1) == (read[first - 1][0], read[last - 1][-1]), (first, last)


def test_counted_from_the_resume_point():
    """A run resuming after step 10 at sample 52 (earlier skips moved it): step 11 reads from 52 on."""
    ranges = [(60, 70)]
    start, end = iteration_sample_range(12, 13, global_batch_size=8, resume_step=10, resume_consumed=52,
                                        skip_ranges=ranges)
    read = _steps_read(3, 8, ranges, consumed=52)
    assert (start, end) == (read[1][0], read[2][-1] + 1) == (70, 86)


def test_skipping_them_makes_step_a_read_what_step_b_plus_1_would_have():
    start, end = iteration_sample_range(3, 4, global_batch_size=4)
    before = _steps_read(5, 4, [])
    after = _steps_read(3, 4, [(start, end)])
    assert after[:2] == before[:2] and after[2] == before[4]


@pytest.mark.parametrize("first, last, message", [(0, 2, "need 1 <= A <= B"), (5, 4, "need 1 <= A <= B"),
                                                  (10, 12, "resumes after step 10")])
def test_impossible_iterations_are_refused(first, last, message):
    with pytest.raises(ValueError, match=message):
        iteration_sample_range(first, last, global_batch_size=4, resume_step=10, resume_consumed=40)


def test_argument_syntax():
    assert parse_iteration_args(["3-5", "7", " 9-9 "]) == [(3, 5), (7, 7), (9, 9)]
    for bad, message in (("x", "expected A-B"), ("5-3", "need 1 <= A <= B"), ("0-2", "need 1 <= A <= B"),
                         ("3-", "expected A-B")):
        with pytest.raises(ConfigError, match=f"--skip-iterations '{bad}': {message}"):
            parse_iteration_args([bad])


def test_surgery_records_iterations_as_samples(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.run_toml.write_text(config_mod.dumps_toml(config_mod.resolve("tiny")))  # global batch 16, no checkpoint
    add_skip_range(run.root, 40, 50, "an earlier rollback")
    assert bigops_main(["surgery", str(run.root), "--skip-iterations", "3-4", "--yes"]) == 0
    out = capsys.readouterr().out
    # Steps 3-4 read 32 samples from 32 on, past 40-50: 32..39 and 50..73.
    assert "will skip iterations 3-4: samples 32-74" in out and "samples 32-74: added to" in out, out
    entries = parse_skip_entries(run.skip_ranges.read_text())
    assert entries[-1] == (32, 74, "bigops surgery --skip-iterations 3-4")
    assert read_skip_ranges(run.root) == [(32, 74)]
    assert bigops_main(["surgery", str(run.root), "--skip-iterations", "0-1", "--yes"]) == 2
    assert "--skip-iterations '0-1': need 1 <= A <= B" in capsys.readouterr().err


def test_surgery_counts_iterations_through_a_ramp_up(tmp_path, capsys):
    """With ``train.rampup_batch_size`` the steps read the ramp's batches: global 16 from 4 in steps of 4 over 48
    samples (one increment every 16): steps 1-5 read 4, 4, 4, 4, 8 (at 16 consumed); steps 3-5 are samples 8-24."""
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    cfg = config_mod.resolve("tiny", overrides=["train.rampup_batch_size=4,4,48"])
    run.run_toml.write_text(config_mod.dumps_toml(cfg))
    assert bigops_main(["surgery", str(run.root), "--skip-iterations", "3-5", "--yes"]) == 0
    assert "will skip iterations 3-5: samples 8-24" in capsys.readouterr().out
    assert read_skip_ranges(run.root) == [(8, 24)]
