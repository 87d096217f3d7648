"""`bigops ckpt list | verify | prune | mark` on checkpoint directories built like the trainer builds them
(files in .partial-<tag>, manifest, rename, latest), a rollback's set-aside copies included."""

import json

import pytest

from bigops.checkpoint import inventory
from bigops.checkpoint.inventory import scan
from bigops.checkpoint.prune import Policy, apply_prune, plan_prune
from bigops.checkpoint.rollback import apply_rollback
from bigops.cli.main import main as bigops_main
from bigops.checkpoint.rollback import RollbackPlan
from trainer import checkpoint as ckpt
from trainer.rundir import RunDir, read_jsonl


def make_checkpoint(run: RunDir, step: int, publish: bool = True) -> str:
    tag = ckpt.tag_for(step)
    partial = ckpt.partial_dir(run, tag)
    partial.mkdir(parents=True)
    (partial / "layer_01-model_00-model_states.pt").write_bytes(b"weights" * (step + 1))
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"engine" * 50)
    if publish:
        ckpt.publish(run, partial, tag, {"step": step, "topology": {"tp": 1, "pp": 1, "dp": 1}})
    return tag


@pytest.fixture
def run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    return run


def steps(run: RunDir, *numbers: int) -> None:
    for n in numbers:
        make_checkpoint(run, n)


def live_tags(run: RunDir) -> list[str]:
    return ckpt.complete_tags(run)


# ------------------------------------------------------------------------------------------------- list
def test_list_shows_partial_set_aside_and_latest(run, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: one table row per line
    steps(run, 100, 200, 300, 400)
    apply_rollback(run, RollbackPlan("global_step200", 200, ["global_step300", "global_step400"], (10, 20)), "ev1")
    make_checkpoint(run, 250, publish=False)  # a save in flight (or crashed)
    inv = scan(run)
    by_tag = {(e.tag, e.aside): e for e in inv.entries}
    assert inv.latest == "global_step200" and inv.latest_problem is None
    assert by_tag[("global_step200", None)].latest and by_tag[("global_step200", None)].complete
    assert by_tag[("global_step250", None)].state == inventory.PARTIAL
    assert by_tag[("global_step300", "ev1")].complete and by_tag[("global_step300", "ev1")].path == \
        ".rolled-back/ev1/global_step300"
    assert by_tag[("global_step100", None)].step == 100 and by_tag[("global_step100", None)].files == 3

    assert bigops_main(["ckpt", "list", str(run.root), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    rows = {(c["tag"], c["aside"]): c for c in listed["checkpoints"]}
    assert listed["latest"] == "global_step200"
    assert rows[("global_step250", None)]["label"] == "partial (being written or crashed)"
    assert rows[("global_step400", "ev1")]["state"] == "complete"
    assert rows[("global_step100", None)]["size"] > 0 and rows[("global_step100", None)]["created"] > 0

    assert bigops_main(["ckpt", "list", str(run.root)]) == 0
    text = capsys.readouterr().out
    assert "partial (being written or crashed)" in text and "set aside by rollback ev1" in text
    row = next(line for line in text.splitlines() if "global_step200" in line)
    assert "latest" in row and "complete" in row


def test_list_flags_an_incomplete_tag_and_a_latest_that_names_nothing(run, capsys):
    steps(run, 1, 2)
    (run.checkpoint("global_step1") / "layer_01-model_00-model_states.pt").write_bytes(b"x")  # truncated
    run.latest.write_text("global_step9\n")
    inv = scan(run)
    e1 = next(e for e in inv.entries if e.tag == "global_step1")
    assert e1.state == inventory.INCOMPLETE and "size" in e1.problem
    assert "global_step9" in inv.latest_problem


def test_complete_tags_skips_deleting_and_partial_dirs(run):
    steps(run, 1)
    (run.checkpoints / ".deleting-global_step0").mkdir()
    make_checkpoint(run, 2, publish=False)
    assert ckpt.complete_tags(run) == ["global_step1"]


# ----------------------------------------------------------------------------------------------- verify
def test_verify_names_a_flipped_byte_and_a_truncated_file(run, capsys):
    steps(run, 1, 2)
    assert bigops_main(["ckpt", "verify", str(run.root), "--all"]) == 0
    out = capsys.readouterr().out
    assert "global_step1: ok" in out and "hashed in" in out and "/s)" in out

    tag = run.checkpoint("global_step2")
    weights = tag / "layer_01-model_00-model_states.pt"
    data = bytearray(weights.read_bytes())
    data[3] ^= 0x01  # same size: only the hash can tell
    weights.write_bytes(bytes(data))
    engine = tag / "mp_rank_00_model_states.pt"
    engine.write_bytes(engine.read_bytes()[:-7])
    assert bigops_main(["ckpt", "verify", str(run.root)]) == 3
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert any("layer_01-model_00-model_states.pt: sha256 differs" in line for line in lines)
    assert any("mp_rank_00_model_states.pt: size" in line and "truncated" in line for line in lines)
    errors = [line for line in captured.err.splitlines() if not line.startswith("verifying ")]  # progress
    assert len(errors) == 1 and "global_step2" in errors[0] and errors[0].startswith("error: ")

    assert bigops_main(["ckpt", "verify", str(run.root), "--all", "--format", "json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"]
    by_tag = {r["tag"]: r for r in report["results"]}
    assert by_tag["global_step1"]["ok"] and by_tag["global_step1"]["bytes_hashed"] > 0
    assert len(by_tag["global_step2"]["problems"]) == 2


def test_verify_names_a_missing_file_in_a_set_aside_checkpoint(run, capsys):
    steps(run, 1, 2)
    apply_rollback(run, RollbackPlan("global_step1", 1, ["global_step2"], (0, 4)), "ev7")
    (run.checkpoints / ".rolled-back" / "ev7" / "global_step2" / "layer_01-model_00-model_states.pt").unlink()
    assert bigops_main(["ckpt", "verify", str(run.root), "--tag", "global_step2"]) == 3
    out = capsys.readouterr().out
    assert "rollback ev7" in out and "layer_01-model_00-model_states.pt: missing" in out


# ------------------------------------------------------------------------------------------------ prune
def test_prune_plan_keeps_last_every_marked_latest_and_evidence(run):
    steps(run, *range(100, 1100, 100))  # 100 ... 1000
    apply_rollback(run, RollbackPlan("global_step800", 800, ["global_step900", "global_step1000"], (0, 8)), "ev1")
    make_checkpoint(run, 850, publish=False)
    (run.checkpoint("global_step200") / "KEEP").write_text("paper figure\n")
    plan = plan_prune(scan(run), Policy(keep_last=2, keep_every=500, keep=("global_step300",)))
    assert [e.tag for e in plan.remove] == ["global_step100", "global_step400", "global_step600"]
    assert plan.keep == {"global_step200": ["KEEP marker"], "global_step300": ["--keep"],
                         "global_step500": ["step % 500 == 0"], "global_step700": ["last 2"],
                         "global_step800": ["latest", "last 2", "newest intact (hashes verified)"]}
    untouched = {e.path for e, _ in plan.untouched}
    assert untouched == {".partial-global_step850", ".rolled-back/ev1/global_step900",
                         ".rolled-back/ev1/global_step1000"}


def test_prune_never_removes_latest_even_when_it_is_older(run):
    steps(run, 1, 2, 3, 4)
    run.latest.write_text("global_step1\n")  # e.g. pointed back by hand
    plan = plan_prune(scan(run), Policy(keep_last=1))
    assert plan.keep["global_step1"] == ["latest"] and [e.tag for e in plan.remove] == ["global_step2",
                                                                                          "global_step3"]


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_prune_keeps_the_newest_checkpoint_that_verifies_with_hashes(run, capsys):
    """The defect: sizes said the bit-flipped latest was complete, so --keep-last 1 removed the only intact one."""
    steps(run, 1, 2, 3)
    flip_a_byte(run.checkpoint("global_step3") / "layer_01-model_00-model_states.pt")
    assert bigops_main(["ckpt", "prune", str(run.root), "--keep-last", "1", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "keep    global_step2: newest intact (hashes verified; global_step3 fails them)" in out
    assert "keep    global_step3: latest (fails its hashes: layer_01-model_00-model_states.pt: sha256 differs" in out
    assert live_tags(run) == ["global_step2", "global_step3"]
    assert ckpt.find_resumable(run).tag == "global_step2"  # what a resume falls back to is still there


def test_prune_never_removes_the_only_intact_checkpoint_and_refuses_when_none_verifies(run, capsys):
    steps(run, 1, 2, 3, 4)
    for n in (2, 3, 4):
        flip_a_byte(run.checkpoint(f"global_step{n}") / "mp_rank_00_model_states.pt")
    plan = plan_prune(scan(run), Policy(keep_last=2))
    assert [e.tag for e in plan.remove] == ["global_step2"] and "newest intact" in plan.keep["global_step1"][0]
    flip_a_byte(run.checkpoint("global_step1") / "mp_rank_00_model_states.pt")
    assert bigops_main(["ckpt", "prune", str(run.root), "--keep-last", "1", "--yes"]) == 3
    err = capsys.readouterr().err
    assert "no checkpoint verifies with its hashes (4 checked" in err and err.strip().count("\n") == 0
    assert live_tags(run) == ["global_step1", "global_step2", "global_step3", "global_step4"]


def test_superseded_copies_are_listed_and_never_pruned(run):
    steps(run, 1, 2)
    partial = ckpt.partial_dir(run, "global_step2")
    partial.mkdir()
    (partial / "layer_01-model_00-model_states.pt").write_bytes(b"replayed")
    ckpt.publish(run, partial, "global_step2", {"step": 2, "lineage": "another"})
    inv = scan(run)
    aside = [e for e in inv.entries if e.aside == inventory.SUPERSEDED_ASIDE]
    assert [e.tag for e in aside] == ["global_step2"] and aside[0].path.startswith(".superseded/global_step2-")
    plan = plan_prune(inv, Policy(keep_last=1))
    assert [e.tag for e in plan.remove] == ["global_step1"]
    assert any("superseded by a save of the same step" in why for _, why in plan.untouched)
    apply_prune(run, plan)
    assert (run.checkpoints / aside[0].path / ckpt.MANIFEST).is_file()


def test_prune_keeps_the_rollback_target_of_an_open_spike(run, capsys):
    """A suspected spike from step 35 is watched (watchdog.spike_patience) while saves go on: the newest
    checkpoint before it is what a rollback would need, so prune keeps it until the incident is over."""
    steps(run, 10, 20, 30, 40, 50)
    run.watchdog_state.parent.mkdir(parents=True)
    run.watchdog_state.write_text(json.dumps({"incidents": {
        "i-1": {"id": "i-1", "key": "LossSpike:0:35", "kind": "LossSpike", "status": "open", "step": 35,
                "evidence": {"start_step": 35}},
        "i-0": {"id": "i-0", "key": "LossSpike:0:15", "kind": "LossSpike", "status": "resolved", "step": 15}}}))
    assert bigops_main(["ckpt", "prune", str(run.root), "--keep-last", "1", "--yes"]) == 0
    assert "rollback target of open incident i-1 (spike from step 35)" in capsys.readouterr().out
    assert live_tags(run) == ["global_step30", "global_step50"]
    run.watchdog_state.write_text("{not json")  # damaged: nothing protected, nothing breaks
    assert bigops_main(["ckpt", "prune", str(run.root), "--keep-last", "1", "--yes"]) == 0
    assert live_tags(run) == ["global_step50"]


def test_prune_refuses_when_latest_cannot_be_trusted(run, capsys):
    steps(run, 1, 2, 3)
    run.latest.write_bytes(b"\xff\xfe")
    assert bigops_main(["ckpt", "prune", str(run.root), "--keep-last", "1", "--yes"]) == 3
    assert "latest" in capsys.readouterr().err
    assert live_tags(run) == ["global_step1", "global_step2", "global_step3"]


def test_prune_removes_through_a_rename_records_the_event_and_leaves_evidence(run, capsys):
    steps(run, 10, 20, 30, 40, 50)
    apply_rollback(run, RollbackPlan("global_step40", 40, ["global_step50"], (0, 8)), "ev2")
    make_checkpoint(run, 45, publish=False)
    (run.checkpoints / ".deleting-global_step5").mkdir()  # a crash during an earlier prune
    (run.checkpoints / ".deleting-global_step5" / "x.pt").write_bytes(b"x")

    assert bigops_main(["ckpt", "prune", str(run.root), "--keep-last", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "remove  global_step10" in out and "dry run" in out
    assert live_tags(run) == ["global_step10", "global_step20", "global_step30", "global_step40"]

    assert bigops_main(["ckpt", "prune", str(run.root), "--keep-last", "2", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "keep    global_step40: latest, last 2" in out and "set aside by rollback ev2" in out
    assert live_tags(run) == ["global_step30", "global_step40"]
    assert (run.checkpoints / ".rolled-back" / "ev2" / "global_step50" / ckpt.MANIFEST).is_file()
    assert ckpt.partial_dir(run, "global_step45").is_dir()
    assert not list(run.checkpoints.glob(".deleting-*"))
    event = read_jsonl(run.root / "events.jsonl")[-1]
    assert event["type"] == "action" and event["action"] == "prune" and isinstance(event["time"], float)
    assert event["removed"] == ["global_step10", "global_step20"]
    assert event["kept"] == ["global_step30", "global_step40"]


def test_prune_rechecks_latest_and_markers_before_each_removal(run):
    steps(run, 1, 2, 3)
    inv = scan(run)
    plan = plan_prune(inv, Policy(keep_last=1))
    assert [e.tag for e in plan.remove] == ["global_step1", "global_step2"]
    run.latest.write_text("global_step2\n")  # moved after the plan was made
    (run.checkpoint("global_step1") / "KEEP").write_text("")
    outcome = apply_prune(run, plan)
    assert outcome.removed == [] and {t for t, _ in outcome.skipped} == {"global_step1", "global_step2"}
    assert live_tags(run) == ["global_step1", "global_step2", "global_step3"]


def test_an_interrupted_removal_never_looks_like_a_checkpoint(run, monkeypatch):
    import shutil

    from bigops.checkpoint import prune
    steps(run, 1, 2)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(OSError("power cut")))
    with pytest.raises(OSError):
        prune.remove_checkpoint(run, "global_step1")
    monkeypatch.undo()
    assert live_tags(run) == ["global_step2"] and (run.checkpoints / ".deleting-global_step1").is_dir()
    assert ckpt.find_resumable(run).tag == "global_step2"
    assert [e.state for e in scan(run).entries if e.tag == "global_step1"] == [inventory.DELETING]
    outcome = apply_prune(run, plan_prune(scan(run), Policy(keep_last=1)))
    assert outcome.finished == [".deleting-global_step1"] and not (run.checkpoints / ".deleting-global_step1").exists()


def test_prune_needs_yes_when_not_interactive(run, capsys, monkeypatch):
    import io
    steps(run, 1, 2, 3)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert bigops_main(["ckpt", "prune", str(run.root), "--keep-last", "1"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert len(live_tags(run)) == 3


def test_mark_command_protects_a_checkpoint(run, capsys):
    steps(run, 1, 2, 3)
    assert bigops_main(["ckpt", "mark", str(run.root), "global_step1", "--note", "eval baseline"]) == 0
    assert "eval baseline" in (run.checkpoint("global_step1") / "KEEP").read_text()
    assert bigops_main(["ckpt", "verify", str(run.root), "--tag", "global_step1"]) == 0  # the marker is no damage
    assert bigops_main(["ckpt", "prune", str(run.root), "--keep-last", "1", "--yes"]) == 0
    assert live_tags(run) == ["global_step1", "global_step3"]
    assert bigops_main(["ckpt", "mark", str(run.root), "global_step1", "--remove"]) == 0
    assert not (run.checkpoint("global_step1") / "KEEP").exists()


@pytest.mark.parametrize("args", [["--keep-last", "0"], ["--keep-last", "1", "--keep-every", "0"],
                                  ["--keep-last", "1", "--keep", "../x"]])
def test_prune_rejects_bad_policies(run, args, capsys):
    steps(run, 1, 2)
    assert bigops_main(["ckpt", "prune", str(run.root), *args, "--yes"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert len(live_tags(run)) == 2


# -------------------------------------------------------------------------------------------- bad input
COMMANDS = [["list"], ["inspect"], ["verify"], ["prune", "--keep-last", "1", "--yes"], ["mark", "global_step1"]]


CASES = ("no-run-dir", "bad-tag", "no-checkpoint")


@pytest.mark.parametrize("command,case", [(c, case) for c in COMMANDS for case in CASES
                                          if not (c[0] == "list" and case == "bad-tag")])  # list takes no tag
def test_bad_input_is_one_line_and_an_exit_code(tmp_path, capsys, command, case):
    run = tmp_path / "run"
    if case != "no-run-dir":
        run.mkdir()
    args = ["ckpt", command[0], str(run), *command[1:]]
    if case == "bad-tag":
        make_checkpoint(RunDir(run), 1)
        if command[0] == "mark":
            args[-1] = "../../etc"
        elif command[0] in ("inspect", "verify"):
            args += ["--tag", "../../etc"]
        else:
            args += ["--keep", "../../etc"]
    code = bigops_main(args)
    err = capsys.readouterr().err
    assert code in (2, 3), err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    if case == "bad-tag":
        assert "invalid checkpoint tag" in err
    assert (tmp_path / "etc").exists() is False


def test_unknown_tag_and_a_partial_only_run(run, capsys):
    make_checkpoint(run, 5, publish=False)
    assert bigops_main(["ckpt", "verify", str(run.root), "--tag", "global_step5"]) == 3
    assert "partial" in capsys.readouterr().err
    steps(run, 1)
    assert bigops_main(["ckpt", "inspect", str(run.root), "--tag", "global_step7"]) == 3
    assert "does not exist" in capsys.readouterr().err
