"""``bigops ckpt reshape``: a TP2 x PP2 x DP1 run moves to TP1 x PP2 x DP2 and to TP2 x PP1 x DP2 through
DeepSpeed's universal checkpoint, resumes there with DeepSpeed's universal loading, trains, and moves back.

Against the source run continued on its own layout (a resume is bit-exact: test_resume), in fp32:

- the first step after the reshape has the source's loss on the same batch, to a relative 1e-5 (only the
  order of the TP/DP reductions differs);
- the next steps follow it, to a relative 1e-4 (those differences, through two Adam updates), and so do three
  more after reshaping back to TP2 x PP2 x DP1 from the new layout's own next checkpoint;
- consumed samples carry over (the same batches are read), and the next save is an ordinary checkpoint of
  the new layout;
- a source whose TP-duplicated tensors differ is refused, in one line naming the surgery to run.
"""

import shutil

import pytest

from bigops import exitcodes
from bigops.cli.main import main as bigops_main
from tests.distributed.ranks import run_ranks
from tests.distributed.test_export_hf import small_config
from tests.distributed.test_layernorm_surgery import desync_on_tp_rank1
from trainer import checkpoint as ckpt
from trainer.rundir import RunDir, load_run_config

pytestmark = pytest.mark.distributed

SOURCE_STEPS, MORE_STEPS, BACK_STEPS = 3, 6, 9
FIRST_STEP_RTOL = 1e-5
CURVE_RTOL = 1e-4


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 3-step TP=2 x PP=2 x DP=1 fp32 ZeRO-1 run (its one checkpoint: global_step3)."""
    cfg = small_config(2, 2)
    cfg.parallel.zero_stage = 1
    cfg.train.train_steps = SOURCE_STEPS
    cfg.train.lr_decay_steps = BACK_STEPS  # one LR schedule whatever step each continuation stops at
    run = tmp_path_factory.mktemp("source") / "run"
    run_ranks(run, cfg, 4, timeout=900)
    return run


@pytest.fixture(scope="module")
def uninterrupted(source, tmp_path_factory):
    """The source continued on its own layout to step 9: {step: metrics record}."""
    run = tmp_path_factory.mktemp("reference") / "run"
    shutil.copytree(source, run)
    return {r["step"]: r for r in _continue(run, BACK_STEPS) if r["step"] > SOURCE_STEPS}


def _continue(run, steps: int = MORE_STEPS) -> list[dict]:
    cfg = load_run_config(RunDir(run))
    cfg.train.train_steps = steps
    p = cfg.parallel
    return run_ranks(run, cfg, p.tp * p.pp * p.dp, timeout=900)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("tp,pp,dp", [(1, 2, 2), (2, 1, 2)])
def test_reshape_resumes_with_the_source_loss(source, uninterrupted, tmp_path, tp, pp, dp):
    run = tmp_path / "run"
    shutil.copytree(source, run)
    rd = RunDir(run)
    src = rd.checkpoint("global_step3")
    source_files = ckpt.read_manifest(src)["files"]

    assert bigops_main(["ckpt", "reshape", str(run), "--tp", str(tp), "--pp", str(pp), "--dp", str(dp),
                        "--yes"]) == 0
    new_tag = rd.latest_tag()
    assert new_tag == "universal-global_step3" and ckpt.step_of(new_tag) == SOURCE_STEPS
    new = rd.checkpoint(new_tag)
    assert not ckpt.verify(new, hashes=True) and (new / "zero").is_dir()
    manifest = ckpt.read_manifest(new)
    checked = manifest["universal"]["loss_check"]  # the tool's own check: the converted model's loss
    assert checked["relative_diff"] <= FIRST_STEP_RTOL and checked["tokens"] > 0
    assert checked["target_loss"] == pytest.approx(checked["source_loss"], rel=FIRST_STEP_RTOL)
    assert manifest["topology"] == {"tp": tp, "pp": pp, "dp": dp}
    assert manifest["universal"]["source_topology"] == {"tp": 2, "pp": 2, "dp": 1}
    assert manifest["universal"]["rng"] == "carried"  # 4 ranks before and after
    assert manifest["consumed_samples"] == ckpt.read_manifest(src)["consumed_samples"] == 12
    assert not ckpt.verify(src, hashes=True) and ckpt.read_manifest(src)["files"] == source_files  # untouched
    p = load_run_config(rd).parallel
    assert (p.tp, p.pp, p.dp) == (tp, pp, dp)
    assert rd.run_toml_before(new_tag).is_file()

    records = {r["step"]: r for r in _continue(run) if r["step"] > SOURCE_STEPS}
    assert sorted(records) == [4, 5, 6]
    first = records[SOURCE_STEPS + 1]
    assert _rel(first["loss"], uninterrupted[SOURCE_STEPS + 1]["loss"]) < FIRST_STEP_RTOL, (first, uninterrupted)
    for step in (5, 6):
        assert _rel(records[step]["loss"], uninterrupted[step]["loss"]) < CURVE_RTOL, (step, records, uninterrupted)
        assert records[step]["lr"] == pytest.approx(uninterrupted[step]["lr"], rel=1e-12)
    assert [records[s]["consumed_samples"] for s in records] == [uninterrupted[s]["consumed_samples"]
                                                                 for s in records]
    saved = rd.checkpoint(ckpt.tag_for(MORE_STEPS))  # the next save: an ordinary checkpoint of the new layout
    after = ckpt.read_manifest(saved)
    assert "universal" not in after and not (saved / "zero").exists()
    assert after["topology"] == {"tp": tp, "pp": pp, "dp": dp} and after["consumed_samples"] == 24
    assert after["skip_ranges"] == manifest["skip_ranges"]

    # and back to the source's layout from that ordinary checkpoint: the curve still follows the reference
    assert bigops_main(["ckpt", "reshape", str(run), "--tp", "2", "--pp", "2", "--dp", "1", "--yes"]) == 0
    assert rd.latest_tag() == "universal-global_step6"
    back = {r["step"]: r for r in _continue(run, BACK_STEPS) if r["step"] > MORE_STEPS}
    assert sorted(back) == [7, 8, 9]
    for step in back:
        assert _rel(back[step]["loss"], uninterrupted[step]["loss"]) < CURVE_RTOL, (step, back, uninterrupted)
        assert back[step]["consumed_samples"] == uninterrupted[step]["consumed_samples"]
    assert ckpt.read_manifest(rd.checkpoint(ckpt.tag_for(BACK_STEPS)))["topology"] == {"tp": 2, "pp": 2, "dp": 1}


BF16_RTOL = 2e-2
"""bf16 arithmetic: another TP degree sums its matmuls in another order, in 8-bit mantissas."""


def test_bloom_like_bf16_zero0_reshapes_with_its_optimizer_state(tmp_path):
    """BLOOM-176B's own setup (bf16 with the BF16_Optimizer at ZeRO stage 0), TP2 x PP2 x DP1 -> TP2 x PP1 x
    DP2: DeepSpeed's engine does not hand that optimizer the universal folder; bigops does, so the fp32
    masters, Adam moments and step come from zero/, and the curve follows the run continued on its layout."""
    from bigops.checkpoint import dsfiles

    cfg = small_config(2, 2, precision="bf16")
    cfg.parallel.zero_stage = 0
    cfg.train.train_steps = SOURCE_STEPS
    cfg.train.lr_decay_steps = MORE_STEPS
    run = tmp_path / "run"
    run_ranks(run, cfg, 4, timeout=900)
    reference = tmp_path / "reference"
    shutil.copytree(run, reference)
    expected = {r["step"]: r for r in _continue(reference) if r["step"] > SOURCE_STEPS}

    assert bigops_main(["ckpt", "reshape", str(run), "--tp", "2", "--pp", "1", "--dp", "2", "--yes"]) == 0
    rd = RunDir(run)
    checked = ckpt.read_manifest(rd.checkpoint(rd.latest_tag()))["universal"]["loss_check"]
    assert checked["relative_diff"] <= FIRST_STEP_RTOL and checked["max_logit_diff"] == 0  # bf16(masters) == weights
    records = {r["step"]: r for r in _continue(run) if r["step"] > SOURCE_STEPS}
    assert sorted(records) == sorted(expected) == [4, 5, 6]
    for step in records:
        assert _rel(records[step]["loss"], expected[step]["loss"]) < BF16_RTOL, (step, records, expected)
    saved = dsfiles.scan(rd.checkpoint(ckpt.tag_for(MORE_STEPS)), 2, 1, 2)
    for files in saved.optim_files.values():
        for f in files:
            state = dsfiles.optimizer_state(dsfiles.load(f, mmap=False), f)["base_optimizer_state"]["state"]
            assert {int(s["step"]) for s in state.values()} == {MORE_STEPS}  # Adam's step went on from 3


def test_a_desynced_source_is_refused_with_the_surgery_to_run(source, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(source, run)
    rd = RunDir(run)
    desync_on_tp_rank1(rd.checkpoint("global_step3"))
    toml_before = rd.run_toml.read_text()
    capsys.readouterr()

    code = bigops_main(["ckpt", "reshape", str(run), "--tp", "1", "--pp", "2", "--dp", "2", "--yes"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == exitcodes.CHECKPOINT
    assert f"bigops surgery {run} --sync-layernorm" in err[-1] and "differ across TP ranks" in err[-1]
    assert rd.latest_tag() == "global_step3" and rd.run_toml.read_text() == toml_before
    assert ckpt.complete_tags(rd) == ["global_step3"]
    assert not any(p.name.startswith(ckpt.PARTIAL_PREFIX) for p in rd.checkpoints.iterdir())


def test_a_conversion_that_changes_the_model_is_refused_and_nothing_is_published(source, tmp_path, capsys,
                                                                                 monkeypatch):
    """The converter's output is read back before it is published: the final norm's weight scaled by 1 + 1e-3
    in the universal checkpoint (a converter bug) is refused with the two losses and the logit difference."""
    import torch

    from bigops.checkpoint import reshape as reshape_mod
    from trainer import layout

    real_convert = reshape_mod.convert

    def convert_then_damage(source_dir, out_dir, *args, **kwargs):
        real_convert(source_dir, out_dir, *args, **kwargs)
        name = layout.pipe_param_name(layout.final_norm_layer(load_run_config(RunDir(run)).model.num_layers),
                                      "weight")
        path = out_dir / "zero" / name / "fp32.pt"
        state = torch.load(path, weights_only=True)
        state["param"] = state["param"].detach().clone()
        state["param"] *= 1 + 1e-3
        torch.save(state, path)

    run = tmp_path / "run"
    shutil.copytree(source, run)
    rd = RunDir(run)
    toml_before = rd.run_toml.read_text()
    monkeypatch.setattr(reshape_mod, "convert", convert_then_damage)
    capsys.readouterr()
    code = bigops_main(["ckpt", "reshape", str(run), "--tp", "1", "--pp", "2", "--dp", "2", "--yes"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == exitcodes.CHECKPOINT, err[-3:]
    assert "does not hold global_step3's model" in err[-1] and "max |logit difference|" in err[-1], err
    assert rd.latest_tag() == "global_step3" and rd.run_toml.read_text() == toml_before
    assert ckpt.complete_tags(rd) == ["global_step3"]
    assert not any(p.name.startswith(ckpt.PARTIAL_PREFIX) for p in rd.checkpoints.iterdir())


def test_a_launch_on_another_layout_names_the_reshape_and_changes_nothing(source, tmp_path):
    """Off a terminal (a script, CI) `bigops launch` does not reshape on its own: one line with the command."""
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(source, run)
    rd = RunDir(run)
    toml_before = rd.run_toml.read_text()
    proc = subprocess.run([sys.executable, "-m", "bigops.cli.main", "launch", "--run-dir", str(run), "--tp", "1",
                           "--dp", "2", "--steps", str(MORE_STEPS)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == exitcodes.USAGE, proc.stdout + proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert f"bigops ckpt reshape {run} --tp 1 --pp 2 --dp 2" in proc.stderr
    assert rd.latest_tag() == "global_step3" and rd.run_toml.read_text() == toml_before
    assert ckpt.complete_tags(rd) == ["global_step3"]
    assert not list(rd.checkpoints.glob("universal-*"))


class Killed(BaseException):
    """The watchdog dies here (not an Exception: nothing on the way may catch it)."""


@pytest.mark.parametrize("dies_at", [("convert", "applied"), ("switch", "before"), ("switch", "applied")])
def test_a_shrink_killed_at_any_step_completes_once_after_a_restart(source, tmp_path, dies_at):
    """The watchdog's shrink (journaled: convert, switch, record) killed after the universal tag is published,
    before or after run.toml and latest follow it: the next watchdog's roll-forward finishes it, with one
    universal tag and one action event."""
    from bigops.watchdog.decide import Shrink
    from bigops.watchdog.executor import Executor
    from bigops.watchdog.state import WatchState
    from bigops.watchdog.daemon import state_path
    from trainer.rundir import read_jsonl

    run = tmp_path / "run"
    shutil.copytree(source, run)
    rd = RunDir(run)

    def hook(intent, step, when):
        if (step, when) == dies_at:
            raise Killed()

    first = Executor(rd, WatchState.load(state_path(rd)), hook=hook)
    with pytest.raises(Killed):
        first.execute(Shrink("inc1", "GPU 3 lost", (2, 1, 2), 1), source_tag="global_step3")
    lines = Executor(rd, WatchState.load(state_path(rd))).roll_forward()
    assert len(lines) == 1 and "universal-global_step3" in lines[0]
    assert [t for t in ckpt.complete_tags(rd) if t.startswith("universal")] == ["universal-global_step3"]
    assert rd.latest_tag() == "universal-global_step3"
    p = load_run_config(rd).parallel
    assert (p.tp, p.pp, p.dp) == (2, 1, 2)
    assert len([e for e in read_jsonl(run / "events.jsonl") if e.get("action") == "shrink"]) == 1
    assert Executor(rd, WatchState.load(state_path(rd))).roll_forward() == []  # nothing left in flight
