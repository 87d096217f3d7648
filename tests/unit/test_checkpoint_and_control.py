"""Manifests, verification, fall-back to an older checkpoint, and the control-file parsing."""

import pytest

from trainer import checkpoint as ckpt
from trainer.control import ControlState, parse_skip_ranges, poll_local
from trainer.rundir import RunDir


def make_checkpoint(run: RunDir, step: int, publish: bool = True, weights: bytes = b"weights", **info) -> None:
    tag = ckpt.tag_for(step)
    partial = ckpt.partial_dir(run, tag)
    partial.mkdir(parents=True)
    (partial / "layer_01-model_00-model_states.pt").write_bytes(weights * step)
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"engine")
    if publish:
        ckpt.publish(run, partial, tag, {"lineage": "L1", **info, "step": step,
                                         "topology": {"tp": 1, "pp": 1, "dp": 1}})


def test_publish_writes_manifest_renames_then_latest(tmp_path):
    run = RunDir(tmp_path)
    make_checkpoint(run, 5)
    assert run.latest_tag() == "global_step5" and not ckpt.partial_dir(run, "global_step5").exists()
    manifest = ckpt.read_manifest(run.checkpoint("global_step5"))
    assert set(manifest["files"]) == {"layer_01-model_00-model_states.pt", "mp_rank_00_model_states.pt"}
    assert manifest["step"] == 5 and ckpt.verify(run.checkpoint("global_step5")) == []


def test_a_partial_save_never_becomes_latest(tmp_path):
    run = RunDir(tmp_path)
    make_checkpoint(run, 5)
    make_checkpoint(run, 10, publish=False)  # a crash before the manifest
    assert run.latest_tag() == "global_step5"
    assert ckpt.find_resumable(run).tag == "global_step5"
    assert ckpt.complete_tags(run) == ["global_step5"]


@pytest.mark.parametrize("damage,problem", [
    (lambda p: p.unlink(), "missing"),
    (lambda p: p.write_bytes(p.read_bytes()[:-3]), "truncated"),
    (lambda p: p.write_bytes(b"X" + p.read_bytes()[1:]), "sha256 differs"),
])
def test_damaged_latest_falls_back_to_the_previous_good_one(tmp_path, damage, problem):
    run = RunDir(tmp_path)
    make_checkpoint(run, 5)
    make_checkpoint(run, 10)
    damage(run.checkpoint("global_step10") / "layer_01-model_00-model_states.pt")
    assert any(problem in p for p in ckpt.verify(run.checkpoint("global_step10")))
    found = ckpt.find_resumable(run)
    assert (found.tag, found.fell_back_from) == ("global_step5", "global_step10") and problem in found.reason


def test_corrupt_latest_file_and_nothing_usable(tmp_path):
    run = RunDir(tmp_path)
    assert ckpt.find_resumable(run) is None
    make_checkpoint(run, 5)
    run.latest.write_bytes(b"\x00\xff garbage")
    with pytest.raises(ckpt.CheckpointError, match="latest is corrupt"):
        ckpt.find_resumable(run)
    run.latest.write_text("../../etc\n")
    with pytest.raises(ckpt.CheckpointError, match="latest is corrupt"):
        ckpt.find_resumable(run)
    run.latest.write_text("global_step5\n")
    (run.checkpoint("global_step5") / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(ckpt.CheckpointError, match="no older one verifies"):
        ckpt.find_resumable(run)


def test_skip_ranges_parsing():
    assert parse_skip_ranges("100-200\n# after the spike at step 1234\n150-300\n500-600") == [(100, 300), (500, 600)]
    assert parse_skip_ranges("[[1, 2], [2, 5]]") == [(1, 5)]
    assert parse_skip_ranges("  ") == []
    for bad in ("100", "5-3", "a-b", "[[1]]", "-1-4"):
        with pytest.raises(ValueError):
            parse_skip_ranges(bad)


def test_poll_reads_switches_and_flags_a_bad_skip_file(tmp_path):
    state = ControlState(tmp_path, exit_duration_s=None)
    assert poll_local(state, is_rank0=True) == [0, 0, 0, 0, 0, 0]
    (tmp_path / "save-switch").touch()
    (tmp_path / "kill-switch").touch()
    (tmp_path / "skip-ranges").write_text("10-20\n")
    assert poll_local(state, is_rank0=True) == [1, 1, 0, 1, 0, 0] and state.skip_ranges == [(10, 20)]
    assert poll_local(state, is_rank0=False) == [0, 0, 0, 0, 0, 0]  # only rank 0 reads files
    (tmp_path / "skip-ranges").write_text("garbage")
    import os
    os.utime(tmp_path / "skip-ranges", (1, 1))
    flags = poll_local(state, is_rank0=True)
    assert flags[3] == 0 and flags[5] == 1 and state.skip_ranges == [(10, 20)]  # kept, and the run stops
    assert "skip-ranges: line 1: expected START-END" in state.skip_error and "\n" not in state.skip_error
    (tmp_path / "skip-ranges").write_text("10-20\n")  # fixed: the error clears
    assert poll_local(state, is_rank0=True)[5] == 0 and state.skip_error is None
    state.signal_received = 10
    assert poll_local(state, is_rank0=False)[2] == 1
    timed = ControlState(tmp_path, exit_duration_s=0.0)
    assert poll_local(timed, is_rank0=True)[2] == 1


def test_sync_layernorm_request_is_polled_and_consumed(tmp_path):
    from trainer.control import take_sync_request
    state = ControlState(tmp_path, exit_duration_s=None)
    (tmp_path / "sync-layernorm").write_text('{"event": "abc"}\n')
    assert poll_local(state, is_rank0=True)[4] == 1
    assert poll_local(state, is_rank0=False)[4] == 0
    assert take_sync_request(state) == '{"event": "abc"}'
    assert not (tmp_path / "sync-layernorm").exists()
    assert poll_local(state, is_rank0=True)[4] == 0


def test_exit_record_keeps_the_first_rank_of_a_launch(tmp_path, monkeypatch):
    from trainer import exitcodes
    path = tmp_path / "telemetry" / "exit.json"
    monkeypatch.setenv("MASTER_PORT", "1111")
    exitcodes.record(path, exitcodes.FAILED, "rank 2: OSError: No space left on device", 2)
    exitcodes.record(path, exitcodes.FAILED, "rank 0: gloo connection reset", 0)  # a consequence, not the cause
    assert exitcodes.read(path, 1) == (exitcodes.FAILED, "rank 2: OSError: No space left on device")
    monkeypatch.setenv("MASTER_PORT", "2222")  # the next launch replaces the old record
    exitcodes.record(path, exitcodes.FINISHED, "done", 0)
    assert exitcodes.read(path, 0)[0] == exitcodes.FINISHED
    assert [p.name for p in path.parent.iterdir()] == ["exit.json"]  # no temp file left behind


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_resaving_a_step_replaces_a_damaged_copy_and_keeps_it_aside(tmp_path, damage):
    run = RunDir(tmp_path)
    make_checkpoint(run, 5)
    weights = run.checkpoint("global_step5") / "layer_01-model_00-model_states.pt"
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[3] ^= 0x10
    else:
        data = data[:-2]
    weights.write_bytes(bytes(data))
    make_checkpoint(run, 5)  # the same step saved again (a replay after a crash)
    assert run.latest_tag() == "global_step5" and ckpt.verify(run.checkpoint("global_step5")) == []
    aside = list((run.checkpoints / ckpt.SUPERSEDED).iterdir())
    assert len(aside) == 1 and (aside[0] / "layer_01-model_00-model_states.pt").read_bytes() == bytes(data)
    assert ckpt.complete_tags(run) == ["global_step5"]  # the damaged copy is not a resumable tag


def test_resaving_an_intact_step_keeps_the_existing_copy(tmp_path):
    run = RunDir(tmp_path)
    make_checkpoint(run, 5)
    before = ckpt.read_manifest(run.checkpoint("global_step5"))["created"]
    make_checkpoint(run, 5)
    assert ckpt.read_manifest(run.checkpoint("global_step5"))["created"] == before
    assert not (run.checkpoints / ckpt.SUPERSEDED).exists()


def test_control_files_must_be_small_regular_files(tmp_path, capsys):
    import os
    state = ControlState(tmp_path, exit_duration_s=None)
    (tmp_path / "skip-ranges").symlink_to("/dev/zero")  # would never end if read
    assert poll_local(state, is_rank0=True)[3:6:2] == [0, 1] and state.skip_ranges == []
    (tmp_path / "skip-ranges").unlink()
    os.mkfifo(tmp_path / "skip-ranges")
    assert poll_local(state, is_rank0=True)[3:6:2] == [0, 1]
    assert "not a regular file" in state.skip_error


def test_atomic_write_fsyncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    """Without it a replaced ``latest`` can revert to the old tag after a power loss."""
    import os
    from trainer.rundir import atomic_write_text
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    target = tmp_path / "checkpoints" / "latest"
    atomic_write_text(target, "global_step5\n")
    assert target.read_text() == "global_step5\n"
    assert events.index(("replace", str(target))) < events.index(("fsync", str(target.parent)))


# --------------------------------------------------------------------------- lineage and re-saved steps
def test_a_resave_of_another_lineage_sets_the_old_copy_aside_and_publishes_the_new(tmp_path):
    """The defect: after a half-done rollback, global_step110 kept the post-spike weights, the new save was
    deleted."""
    from trainer.rundir import read_jsonl
    run = RunDir(tmp_path)
    make_checkpoint(run, 110, weights=b"post-spike", lineage="L1")
    make_checkpoint(run, 110, weights=b"replayed", lineage="L2")
    path = run.checkpoint("global_step110")
    assert (path / "layer_01-model_00-model_states.pt").read_bytes() == b"replayed" * 110
    assert ckpt.read_manifest(path)["lineage"] == "L2" and ckpt.verify(path) == []
    aside = list((run.checkpoints / ckpt.SUPERSEDED).iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("global_step110-")
    assert (aside[0] / "layer_01-model_00-model_states.pt").read_bytes() == b"post-spike" * 110
    record = read_jsonl(run.telemetry / "checkpoints.jsonl")[-1]
    assert record["kind"] == "superseded" and "another lineage" in record["why"]
    assert ckpt.complete_tags(run) == ["global_step110"] and run.latest_tag() == "global_step110"


def test_a_resave_without_a_recorded_lineage_replaces_it(tmp_path):
    run = RunDir(tmp_path)
    make_checkpoint(run, 5, lineage=None)
    make_checkpoint(run, 5, weights=b"other", lineage="L1")
    assert ckpt.read_manifest(run.checkpoint("global_step5"))["lineage"] == "L1"
    assert len(list((run.checkpoints / ckpt.SUPERSEDED).iterdir())) == 1


def _resumable(run, tag):
    path = run.checkpoint(tag)
    return ckpt.Resumable(tag, path, ckpt.read_manifest(path))


def test_lineage_continues_only_when_a_resume_replays_nothing(tmp_path):
    run = RunDir(tmp_path)
    fresh = ckpt.provenance_at_start(run, None, [])
    assert fresh["lineage_history"][0]["why"] == "fresh start"
    assert ckpt.provenance_at_start(run, None, [])["lineage"] != fresh["lineage"]
    for step in (100, 110):
        make_checkpoint(run, step, **fresh)
    # the newest checkpoint, the same skip ranges: the same trajectory goes on
    assert ckpt.provenance_at_start(run, _resumable(run, "global_step110"), [])["lineage"] == fresh["lineage"]
    # a rollback (110 left in place: half-done, or by hand) with a new skip range: a fork
    forked = ckpt.provenance_at_start(run, _resumable(run, "global_step100"), [(800, 880)])
    assert forked["lineage"] != fresh["lineage"] and forked["skip_ranges"] == [[800, 880]]
    why = forked["lineage_history"][-1]["why"]
    assert "rewinds past global_step110" in why and "skip ranges changed" in why
    assert ckpt.provenance_at_start(run, _resumable(run, "global_step100"), [(800, 880)]) == forked  # deterministic
    # a rewind alone forks too (the replay may differ: other config, nondeterminism)
    assert ckpt.provenance_at_start(run, _resumable(run, "global_step100"), [])["lineage"] != fresh["lineage"]
    # and so do changed skip ranges on the newest checkpoint, and a surgery copy
    assert ckpt.provenance_at_start(run, _resumable(run, "global_step110"), [(5, 9)])["lineage"] != fresh["lineage"]
    import shutil
    shutil.copytree(run.checkpoint("global_step110"), run.checkpoint("sync-layernorm-global_step110"))
    copy = ckpt.provenance_at_start(run, _resumable(run, "sync-layernorm-global_step110"), [])
    assert "not a trainer save" in copy["lineage_history"][-1]["why"]
    later = ckpt.provenance_after_skip_change(fresh, 115, [(0, 8)])
    assert later["lineage"] != fresh["lineage"] and later["skip_ranges"] == [[0, 8]]
    assert len(later["lineage_history"]) == 2


def test_the_half_done_rollback_replay_replaces_the_post_spike_step(tmp_path):
    """End to end through the functions the trainer calls: resume from 100 with the rollback's range, save
    110 again: the new weights are published, the post-spike ones set aside."""
    run = RunDir(tmp_path)
    first = ckpt.provenance_at_start(run, None, [])
    make_checkpoint(run, 100, **first)
    make_checkpoint(run, 110, weights=b"post-spike", **first)
    run.latest.write_text("global_step100\n")  # the rollback pointed latest back, then died
    resumed = ckpt.provenance_at_start(run, ckpt.find_resumable(run), [(800, 880)])
    make_checkpoint(run, 110, weights=b"replayed", **resumed)
    path = run.checkpoint("global_step110")
    assert (path / "layer_01-model_00-model_states.pt").read_bytes() == b"replayed" * 110
    assert ckpt.read_manifest(path)["skip_ranges"] == [[800, 880]]
    assert ckpt.skip_ranges_of(ckpt.read_manifest(path)) == [(800, 880)]


def test_manifest_skip_ranges_and_consumed_samples_are_checked(tmp_path):
    run = RunDir(tmp_path)
    make_checkpoint(run, 5, consumed_samples=40, skip_ranges=[[0, 8]])
    assert ckpt.consumed_samples_of(run.checkpoint("global_step5")) == 40
    assert ckpt.consumed_samples_of(tmp_path / "nowhere") is None
    assert ckpt.skip_ranges_of({"tag": "t"}) == []
    for bad in ([[1]], [["a", 2]], [[5, 1]], "0-8", [[True, 3]]):
        with pytest.raises(ckpt.CheckpointError, match="skip_ranges"):
            ckpt.skip_ranges_of({"tag": "t", "skip_ranges": bad})


def test_a_resume_applies_the_checkpoint_ranges_when_the_file_lost_them(tmp_path):
    from trainer.control import ControlState, read_skip_ranges
    from trainer.train import _skip_ranges_at_start
    run = RunDir(tmp_path)
    make_checkpoint(run, 5, skip_ranges=[[0, 8]])  # the file was lost since (e.g. a copied run directory)
    ranges, provenance = _skip_ranges_at_start(ControlState(run.root / "control"), run, ckpt.find_resumable(run))
    assert ranges == [(0, 8)] and provenance["skip_ranges"] == [[0, 8]] and provenance["lineage"] == "L1"
    assert read_skip_ranges(run.root) == [(0, 8)]
    (run.root / "control" / "skip-ranges").write_text("[[0, 8]]\n9-12  # appended by an old rollback\n")
    from trainer.config import ConfigError
    with pytest.raises(ConfigError, match="refusing to train"):
        _skip_ranges_at_start(ControlState(run.root / "control"), run, ckpt.find_resumable(run))
