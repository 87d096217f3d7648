"""Data and checkpoint safety through `bigops launch` (one rank, synthetic data): a crafted pickle in a copied
run directory is refused and never runs; an unparsable skip-ranges file stops the run instead of being read
as "no ranges"."""

import json
import shutil

import pytest
import torch

from bigops.checkpoint import dsfiles
from tests.distributed.test_training_run import FAST, _one_line_error, bigops, start, wait_for_step
from trainer import checkpoint as ckpt
from trainer import exitcodes
from trainer.rundir import RunDir, atomic_write_text, read_jsonl

pytestmark = pytest.mark.distributed

ONE = [*FAST, "--set", "parallel.tp=1", "--set", "parallel.pp=1"]


class CreatesAFile:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # unpickling runs open(marker, "w")
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_in_a_copied_run_is_refused_and_nothing_runs(tmp_path):
    source = tmp_path / "source"
    assert bigops("launch", "--run-dir", source, *ONE, "--steps", 2).returncode == 0
    run = tmp_path / "copied"
    shutil.copytree(source, run)
    tagdir = run / "checkpoints" / "global_step2"
    engine_file = tagdir / "mp_rank_00_model_states.pt"
    real = dsfiles.load(engine_file, mmap=False)  # holds Megatron's args (argparse.Namespace), allow-listed
    marker = tmp_path / "pwned"
    torch.save({**real, "payload": CreatesAFile(marker)}, engine_file)
    manifest = ckpt.read_manifest(tagdir)  # whoever crafted the file rewrites the manifest too: it verifies
    ckpt.write_manifest(tagdir, "global_step2", {k: v for k, v in manifest.items()
                                                 if k not in ("files", "tag", "created", "format")})
    assert ckpt.verify(tagdir) == []
    proc = bigops("launch", "--run-dir", run, "--steps", 4)
    _one_line_error(proc, exitcodes.CHECKPOINT_ERROR, "mp_rank_00_model_states.pt was refused")
    assert not marker.exists()
    assert max(r["step"] for r in read_jsonl(run / "telemetry" / "metrics.jsonl")) == 2  # no step trained

    # A legacy-format pickle cannot be pre-scanned: DeepSpeed's load, through our engine, refuses it.
    torch.save({**real, "payload": CreatesAFile(marker)}, engine_file, _use_new_zipfile_serialization=False)
    ckpt.write_manifest(tagdir, "global_step2", {k: v for k, v in manifest.items()
                                                 if k not in ("files", "tag", "created", "format")})
    proc = bigops("launch", "--run-dir", run, "--steps", 4)
    _one_line_error(proc, exitcodes.CHECKPOINT_ERROR, "mp_rank_00_model_states.pt was refused: it pickles io.open")
    assert not marker.exists()


def test_an_unparsable_skip_ranges_file_refuses_to_train_at_start_and_stops_mid_run(tmp_path):
    run = tmp_path / "run"
    (run / "control").mkdir(parents=True)
    # what the old rollback left: a JSON list with a line appended
    (run / "control" / "skip-ranges").write_text("[[0, 8]]\n16-24  # rollback ev1 to global_step0\n")
    proc = bigops("launch", "--run-dir", run, *ONE, "--steps", 3)
    _one_line_error(proc, exitcodes.CONFIG_ERROR, "refusing to train without its skip ranges")
    assert not read_jsonl(run / "telemetry" / "metrics.jsonl")

    (run / "control" / "skip-ranges").write_text("0-8  # the first global batch\n")
    proc = start("launch", "--run-dir", run, *ONE, "--steps", 100000)
    wait_for_step(run, 2, proc)
    # atomically, as an editor's save or `bigops surgery` writes it: a truncate-then-write can be read empty
    atomic_write_text(run / "control" / "skip-ranges", "0-8\n24-x  # a typo\n")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == exitcodes.CONFIG_ERROR, out + err
    assert "refusing to train on without its skip ranges" in json.loads((run / "telemetry" / "exit.json")
                                                                         .read_text())["message"]
    records = read_jsonl(run / "telemetry" / "metrics.jsonl")
    saved = RunDir(run).latest_tag()
    assert saved == ckpt.tag_for(records[-1]["step"])  # stopped cleanly: the last step trained is saved
    manifest = ckpt.read_manifest(RunDir(run).checkpoint(saved))
    assert manifest["skip_ranges"] == [[0, 8]] and isinstance(manifest["lineage"], str)
    assert records[0]["consumed_samples"] == 16  # the range applied from the first step


def test_bf16_zero0_resume_through_the_weights_only_engine_is_bit_exact(tmp_path):
    """The BF16_Optimizer's per-rank files and its engine file load through trainer.safe_load's allow-list."""
    from tests.distributed.test_training_run import losses
    common = [*ONE, "--precision", "bf16", "--set", "parallel.zero_stage=0"]
    assert bigops("launch", "--run-dir", tmp_path / "straight", *common, "--steps", 6).returncode == 0
    run = tmp_path / "resumed"
    assert bigops("launch", "--run-dir", run, *common, "--steps", 3).returncode == 0
    assert list((run / "checkpoints" / "global_step3").glob("bf16_zero_pp_rank_*_optim_states.pt"))
    proc = bigops("launch", "--run-dir", run, "--steps", 6)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert losses(run) == losses(tmp_path / "straight")
    manifest = ckpt.read_manifest(RunDir(run).checkpoint("global_step6"))
    first = ckpt.read_manifest(RunDir(run).checkpoint("global_step3"))
    assert manifest["lineage"] == first["lineage"]  # a plain resume continues the lineage
