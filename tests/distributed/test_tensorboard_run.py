"""A real training run's TensorBoard log (4 gloo ranks, TP 2 x PP 2) read with TensorBoard's own reader: the
Megatron-DeepSpeed tags carry metrics.jsonl's values at the iteration, the consumed samples and the consumed
tokens; then ``bigops plot`` of that run, its own TensorBoard log overlaid."""

import json
import subprocess
import sys

import pytest

from bigops.plot.sources import read_scalars
from tests.distributed.test_training_run import FAST
from trainer.rundir import RunDir, read_jsonl

pytestmark = pytest.mark.distributed

SEQ, BATCH = 32, 8  # FAST's train.seq_length and train.global_batch_size


def bigops(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bigops.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_a_real_runs_tensorboard_has_megatron_tags_and_plots(tmp_path):
    run = RunDir(tmp_path / "run")
    proc = bigops("launch", run.root, *FAST, "--steps", 4, "--set", "train.eval_interval=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = read_jsonl(run.metrics)
    scalars = read_scalars(run.tensorboard)

    def at(tag):
        return {step: value for step, value in scalars[tag]}

    assert at("lm-loss-training/lm loss") == {r["step"]: pytest.approx(r["loss"], rel=1e-6) for r in records}
    assert at("lm-loss-training/lm loss vs samples") == {8 * s: pytest.approx(at("lm-loss-training/lm loss")[s])
                                                          for s in (1, 2, 3, 4)}
    assert sorted(at("grad-norm/grad-norm vs tokens")) == [BATCH * SEQ * s for s in (1, 2, 3, 4)]
    assert at("learning-rate/learning-rate") == {r["step"]: pytest.approx(r["lr"], rel=1e-6) for r in records}
    assert at("batch-size/batch-size") == {s: BATCH for s in (1, 2, 3, 4)}
    assert at("skipped/skipped") == {s: 0 for s in (1, 2, 3, 4)}
    assert sorted(at("lm-loss-validation/lm loss validation")) == [2, 4]
    assert sorted(at("lm-loss-validation/lm loss validation vs tokens")) == [2 * BATCH * SEQ, 4 * BATCH * SEQ]
    assert sorted(at("iteration-time/iteration-time vs samples")) == [8, 16, 24, 32]

    out = tmp_path / "run.png"
    done = bigops("plot", run.root, "--compare", run.tensorboard, "--output", out, "--format", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["steps"] == 4 and doc["compare"] == {"label": "tensorboard", "steps": 4}
    assert doc["panels"]["loss"] == ["run", "run validation", "tensorboard", "tensorboard validation"]
    from matplotlib.image import imread
    assert imread(out).ndim == 3
