"""TensorBoard under Megatron-DeepSpeed's tag names (written by the trainer's real ``SummaryWriter``, read back
with TensorBoard's own ``EventAccumulator``) and ``bigops plot``: the figure data of a run with a rollback, the
PNG it writes (opened with matplotlib), another run's TensorBoard log overlaid."""

from __future__ import annotations

import json
import math

import pytest

from bigops import exitcodes
from bigops.cli.main import main
from bigops.plot.data import figure_data, run_curves, scalar_curves
from bigops.plot.sources import read_scalars, read_source
from trainer import tbtags
from trainer.rundir import RunDir, append_jsonl
from trainer.telemetry import MetricsSink

SEQ, BATCH = 16, 8


def record(step: int, loss: float, t: float, **extra) -> dict:
    return {"step": step, "time": t, "loss": loss, "grad_norm": 1.0 + step / 10, "lr": 1e-4 * step,
            "step_seconds": 0.5, "tokens_per_second": BATCH * SEQ / 0.5, "tflops_per_gpu": 0.0,
            "consumed_samples": step * BATCH, "skipped": False, **extra}


def write_tensorboard(root, records) -> RunDir:
    run = RunDir(root)
    sink = MetricsSink(run, seq_length=SEQ, batch_size=BATCH)
    for r in records:
        sink.write(r)
    sink.close()
    return run


# ------------------------------------------------------------------------------------------ TensorBoard tags
def test_tensorboard_has_megatron_deepspeeds_tags_with_their_steps(tmp_path):
    records = [record(1, 5.0, 1.0), record(2, 4.5, 2.0, skipped=True, grad_norm=math.inf),
               record(3, 4.0, 3.0, val_loss=4.2), record(4, 3.9, 4.0, grad_norm=None)]
    run = write_tensorboard(tmp_path / "run", records)
    scalars = read_scalars(run.tensorboard)

    def points(tag):
        return [(s, pytest.approx(v)) for s, v in scalars[tag]]

    assert points("lm-loss-training/lm loss") == [(1, 5.0), (2, 4.5), (3, 4.0), (4, 3.9)]
    assert points("lm-loss-training/lm loss vs samples") == [(8, 5.0), (16, 4.5), (24, 4.0), (32, 3.9)]
    assert points("lm-loss-training/lm loss vs tokens") == [(8 * SEQ, 5.0), (16 * SEQ, 4.5), (24 * SEQ, 4.0),
                                                            (32 * SEQ, 3.9)]
    # no grad norm at step 4 (DeepSpeed gave none): left out, as Megatron does; the Inf of a skipped step kept
    assert [s for s, _ in scalars["grad-norm/grad-norm"]] == [1, 2, 3]
    assert math.isinf(scalars["grad-norm/grad-norm vs tokens"][1][1])
    assert points("grad-norm/grad-norm vs samples")[0] == (8, 1.1)
    assert points("learning-rate/learning-rate") == [(1, 1e-4), (2, 2e-4), (3, 3e-4), (4, 4e-4)]
    assert points("learning-rate/learning-rate vs samples")[-1] == (32, 4e-4)
    assert points("batch-size/batch-size") == [(i, BATCH) for i in (1, 2, 3, 4)]
    assert points("batch-size/batch-size vs samples")[1] == (16, BATCH)
    assert points("iteration-time/iteration-time vs tokens")[0] == (8 * SEQ, 0.5)
    assert points("skipped/skipped") == [(1, 0), (2, 1), (3, 0), (4, 0)]
    assert points("lm-loss-validation/lm loss validation") == [(3, 4.2)]
    assert points("lm-loss-validation/lm loss validation vs tokens") == [(24 * SEQ, 4.2)]
    assert points("lm-loss-validation/lm loss validation ppl") == [(3, math.exp(4.2))]
    assert points("steps-vs-tokens/y=tokens,x=steps")[-1] == (4, 32 * SEQ)
    assert "train/loss" in scalars  # the older tags stay


def test_a_diverged_validation_loss_has_megatrons_capped_perplexity():
    tags = dict((t, v) for t, v, _ in tbtags.scalars(record(1, 9.0, 1.0, val_loss=50.0), SEQ, BATCH))
    assert tags[tbtags.VAL_PPL] == pytest.approx(math.exp(20.0))


# ------------------------------------------------------------------------------------------ the figure data
def rolled_back_run():
    """Steps 1-6, a loss spike at 5 (an incident), a rollback to step 3 after step 6, steps 4-8 again; a restart."""
    first = [record(s, 5.0 - 0.1 * s, float(s)) for s in range(1, 7)]
    first[4]["loss"] = 9.0
    again = [record(s, 4.8 - 0.1 * s, 10.0 + s) for s in range(4, 9)]
    again[2]["val_loss"] = 4.4
    events = [{"time": 5.1, "type": "finding", "notice": "open", "kind": "LossSpike", "step": 5},
              {"time": 5.2, "type": "finding", "notice": "remind", "kind": "LossSpike", "step": 5},
              {"time": 6.5, "type": "action", "action": "rollback", "target": "global_step3", "outcome": "ok"},
              {"time": 15.5, "type": "action", "action": "restart", "checkpoint_step": 4, "outcome": "ok"},
              {"time": 16.0, "type": "action", "action": "notify", "outcome": "ok"}]
    return first + again, events


def test_figure_data_keeps_the_surviving_trajectory_and_marks_incidents_and_actions():
    records, events = rolled_back_run()
    curves = run_curves(records, events, "a")
    loss = curves.panels["loss"]
    assert [s.label for s in loss] == ["a", "a (rolled back)", "a validation"]
    assert loss[0].steps == (1, 2, 3, 4, 5, 6, 7, 8)
    assert loss[0].values[3:6] == pytest.approx((4.4, 4.3, 4.2))  # the second pass over steps 4-6
    assert loss[1].faint and loss[1].steps == (4, 5, 6) and loss[1].values[1] == 9.0  # the spike stays visible
    assert loss[2].steps == (6,) and loss[2].values == (4.4,) and loss[2].kind == "validation"
    assert [(m.step, m.kind, m.label) for m in curves.markers] == [
        (5, "incident", "LossSpike"), (6, "rollback", "rollback to global_step3"), (5, "restart", "restart")]
    data = figure_data(curves, run_curves(records[:2], [], "b"))
    assert list(data.panels) == ["loss", "grad_norm", "lr", "tokens_per_second"]
    assert [(s.label, s.source) for s in data.panels["lr"]] == [("a", 0), ("a (rolled back)", 0), ("b", 1)]
    assert data.title == "a vs b" and data.markers == curves.markers
    assert data.panels["tokens_per_second"][0].values[0] == pytest.approx(BATCH * SEQ / 0.5)


def test_blooms_logs_without_a_rate_get_tokens_per_second_from_tokens_and_iteration_time():
    """BLOOM's logs have ``steps-vs-tokens`` and ``iteration-time`` (logged every 10 iterations), no tokens/s."""
    scalars = {tbtags.LOSS: [(10, 3.0), (20, 2.9)], tbtags.STEPS_VS_TOKENS[1]: [(10, 10 * 4096.0), (20, 20 * 4096.0)],
               tbtags.ITERATION_TIME: [(10, 2.0), (20, 2.0)]}
    curves = scalar_curves(scalars, "bloom")
    rate = curves.panels["tokens_per_second"][0]
    assert rate.steps == (20,) and rate.values[0] == pytest.approx(4096 / 2.0)
    assert "grad_norm" not in curves.panels and curves.steps == 2


# --------------------------------------------------------------------------------------------- bigops plot
def test_plot_writes_a_png_that_opens_with_a_tensorboard_log_overlaid(tmp_path, capsys):
    from matplotlib.image import imread

    run = tmp_path / "run"
    records, events = rolled_back_run()
    for r in records:
        append_jsonl(RunDir(run).metrics, r)
    for e in events:
        append_jsonl(RunDir(run).events, e)
    other = write_tensorboard(tmp_path / "other", [record(s, 6.0 - 0.2 * s, float(s)) for s in range(1, 11)])
    out = tmp_path / "pictures" / "run.png"
    assert main(["plot", str(run), "--compare", str(other.tensorboard), "--output", str(out), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["steps"] == 8 and doc["markers"] == 3 and doc["compare"] == {"label": "tensorboard", "steps": 10}
    assert doc["panels"]["loss"] == ["run", "run (rolled back)", "run validation", "tensorboard"]
    assert doc["panels"]["lr"] == ["run", "run (rolled back)", "tensorboard"]
    image = imread(out)
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 800
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank page

    assert main(["plot", str(run), "--output", str(out)]) == exitcodes.OUTPUT_EXISTS
    assert "exists: pass --force" in capsys.readouterr().err
    assert main(["plot", str(run), "--output", str(out), "--force", "--compare", str(run)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (8 steps, 3 markers; compared with run (8 steps))")


def test_plot_of_a_run_directory_compares_by_its_records_and_refuses_a_folder_that_is_neither(tmp_path, capsys):
    run = tmp_path / "run"
    append_jsonl(RunDir(run).metrics, record(1, 5.0, 1.0))
    assert read_source(run).panels["loss"][0].steps == (1,)
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(run), "--compare", str(tmp_path / "empty")]) == exitcodes.USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "neither a run directory" in err
    assert not (run / "plot.png").exists()
    assert main(["plot", str(tmp_path / "missing")]) == exitcodes.USAGE
