"""``bigops.checkpoint.surgery``'s orchestration, without a checkpoint: the request's validation, the stop-run
protocol (kill switch pulled, waited on, removed), the run.toml LR rewrite and the skip-range write."""

import pytest

from bigops.checkpoint import surgery as lib
from bigops.errors import ConfigError, RunInUseError
from trainer import config as config_mod
from trainer.control import read_skip_ranges
from trainer.rundir import RunDir


@pytest.fixture
def run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.run_toml.write_text(config_mod.dumps_toml(config_mod.resolve("tiny", overrides=["train.min_lr=1e-5"])))
    return run


@pytest.mark.parametrize("request_, message", [
    (lib.Request(), "nothing to do"),
    (lib.Request(set_min_lr=1e-5), "--set-min-lr needs --set-lr"),
    (lib.Request(set_lr=1e-6), "--set-lr 1e-06 is below train.min_lr=1e-05"),
    (lib.Request(sync_layernorm=True, method="median"), "--method 'median'"),
    (lib.Request(set_consumed_samples=-1), "--set-consumed-samples -1"),
])
def test_a_bad_request_is_one_line_naming_the_flag(run, request_, message):
    with pytest.raises((ConfigError, lib.BigopsError), match=message):
        request_.edits(run)


def test_edits_come_in_order_and_skip_ranges_alone_need_no_edit(run, tmp_path):
    edits = lib.Request(reset_optimizer=True, sync_layernorm=True, set_lr=1e-3).edits(run)
    assert [e.name for e in edits] == ["sync-layernorm", "reset-optimizer", "set-lr"]
    assert lib.Request(skip_ranges=[(0, 10)]).edits(run) == []
    with pytest.raises(ConfigError, match="is not a run directory"):
        lib.Request(skip_ranges=[(0, 10)]).edits(RunDir(tmp_path / "nowhere"))


def test_skip_range_arguments_are_parsed_and_written(run):
    assert lib.parse_skip_range_args(["10-20", "30-40"]) == [(10, 20), (30, 40)]
    with pytest.raises(ConfigError, match="--skip-range 'x'"):
        lib.parse_skip_range_args(["x"])
    assert lib.add_skip_ranges(run, [(10, 20)]) is True
    assert lib.add_skip_ranges(run, [(10, 20)]) is False  # already there
    assert read_skip_ranges(run.root) == [(10, 20)]


def test_lr_rewrite_keeps_the_previous_run_toml(run):
    before_text = run.run_toml.read_text()
    kept = lib.update_run_toml_lr(run, "set-lr-global_step4", 3e-4, 3e-5)
    assert kept == run.run_toml_before("set-lr-global_step4") and kept.read_text() == before_text
    cfg = config_mod.load_toml(run.run_toml, base=config_mod.RunConfig())
    assert (cfg.train.lr, cfg.train.min_lr) == (3e-4, 3e-5)


def test_a_running_run_is_refused_naming_a_rank():
    with pytest.raises(RunInUseError, match="rank 3 pid 42 on n1 at step 7"):
        lib.refuse_if_running([{"rank": 3, "pid": 42, "host": "n1", "step": 7}])
    lib.refuse_if_running([])


def test_stop_run_pulls_the_kill_switch_waits_and_removes_it(run, monkeypatch):
    alive = [[{"rank": 0}], [{"rank": 0}], []]  # still training for two polls, then stopped
    monkeypatch.setattr(lib, "running_ranks", lambda r: alive.pop(0) if alive else [])
    monkeypatch.setattr(lib.time, "sleep", lambda s: None)
    switch = run.kill_switch
    said = []
    with lib.stopped_run(run, [{"rank": 0}], timeout_s=60, say=said.append):
        assert switch.exists() and not alive  # operated only once every rank had gone
    assert not switch.exists() and len(said) == 2


def test_stop_run_leaves_a_kill_switch_it_did_not_pull_and_one_that_timed_out(run, monkeypatch):
    monkeypatch.setattr(lib, "running_ranks", lambda r: [])
    switch = run.kill_switch
    switch.parent.mkdir()
    switch.write_text("operator\n")
    with lib.stopped_run(run, [{"rank": 0}], timeout_s=60):
        pass
    assert switch.read_text() == "operator\n"
    switch.unlink()
    monkeypatch.setattr(lib, "running_ranks", lambda r: [{"rank": 0}])
    with pytest.raises(RunInUseError, match="did not stop within 0 s"):
        with lib.stopped_run(run, [{"rank": 0}], timeout_s=0):
            pytest.fail("operated on a run that had not stopped")
    assert switch.exists()  # the run still stops; nobody operates on it half-stopped


def test_no_running_ranks_means_no_kill_switch(run):
    with lib.stopped_run(run, [], timeout_s=60):
        pass
    assert not (run.kill_switch).exists()
