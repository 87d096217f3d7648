"""A batch-size ramp-up run on real DeepSpeed (4 gloo ranks, PP 2 x DP 2, micro-batch 1): every step's global batch
is Megatron's ``--rampup-batch-size`` formula at the samples consumed before it, the consumed samples add up, the
LR (in samples, as BLOOM's) follows them, TensorBoard's ``batch-size/batch-size`` follows, and a run stopped
mid-ramp resumes bit-exactly on the same batches."""

import pytest

from bigops.plot.sources import read_scalars
from tests.distributed.ranks import run_ranks
from tests.distributed.test_export_hf import small_config
from trainer import config as config_mod
from trainer.ds_config import lr_at, lr_at_samples
from trainer.rundir import RunDir

pytestmark = pytest.mark.distributed

# global 8 from 2 in steps of 2 over 12 samples: 3 increments, one every 12 / 3 = 4.0 consumed samples
RAMP = [2, 2, 12]
# consumed before each step: 0, 2, 4, 8, 14, 22 -> int(c / 4.0) increments (past 12 samples: the global batch)
BATCHES = [2, 2, 4, 6, 8, 8]


def ramp_config(steps: int) -> config_mod.RunConfig:
    cfg = small_config(1, 2)
    cfg.parallel.dp = 2
    cfg.train.micro_batch_size, cfg.train.global_batch_size, cfg.train.rampup_batch_size = 1, 8, list(RAMP)
    cfg.train.train_steps = steps
    cfg.train.lr_warmup_samples, cfg.train.lr_decay_samples = 6, 40  # the LR follows the samples, as BLOOM's
    cfg.train.eval_interval = 2  # validation on the full global batch while the training batch ramps
    return cfg


def test_a_ramp_up_run_follows_the_formula_and_resumes_bit_exactly_mid_ramp(tmp_path):
    cfg = ramp_config(6)
    straight = run_ranks(tmp_path / "straight", cfg, 4)

    assert [r["batch_size"] for r in straight] == BATCHES
    consumed = [0] + [r["consumed_samples"] for r in straight]
    assert [b - a for a, b in zip(consumed, consumed[1:])] == BATCHES  # the data position moves by the actual batch
    assert [config_mod.batch_size_at(cfg, c) for c in consumed[:-1]] == BATCHES
    # 0, 2/6, 4/6 of the peak, then the decay: the LR of the samples trained (LambdaLR rounds base x factor)
    assert [r["lr"] for r in straight] == pytest.approx([lr_at_samples(cfg, c) for c in consumed[:-1]], rel=1e-12)
    assert [lr_at(cfg, k) for k in range(6)] == [lr_at_samples(cfg, c) for c in consumed[:-1]]
    tb = dict(read_scalars(RunDir(tmp_path / "straight").tensorboard)["batch-size/batch-size"])
    assert tb == {step: batch for step, batch in enumerate(BATCHES, start=1)}

    run_ranks(tmp_path / "resumed", ramp_config(3), 4)  # stops after step 3: 8 samples in, the next batch is 6
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text().strip() == "global_step3"
    resumed = run_ranks(tmp_path / "resumed", cfg, 4)

    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(straight, resumed):
        keys = ("batch_size", "consumed_samples", "loss", "grad_norm", "lr", "val_loss")
        assert [a.get(k) for k in keys] == [b.get(k) for k in keys], a["step"]
    assert all(isinstance(r["val_loss"], float) for r in straight if r["step"] % 2 == 0)


def test_a_ramp_step_trains_as_a_run_of_that_global_batch(tmp_path):
    """The engine built for the global batch 8 and set to 2 by the ramp trains its first two steps (samples 0-1,
    2-3) exactly as an engine built for 2: the micro-batch count and the loss scaling follow the batch."""
    ramped = run_ranks(tmp_path / "ramped", ramp_config(2), 4)
    cfg = ramp_config(2)
    cfg.train.global_batch_size, cfg.train.rampup_batch_size = 2, None
    plain = run_ranks(tmp_path / "plain", cfg, 4)
    assert [(r["loss"], r["grad_norm"], r["consumed_samples"]) for r in ramped] == \
           [(r["loss"], r["grad_norm"], r["consumed_samples"]) for r in plain]


def test_skip_ranges_mid_ramp_move_the_ramp_as_the_schedule_counts(tmp_path):
    """A skip range in force (``control/skip-ranges``, samples 5-8) inside the ramp: each step still takes
    :func:`batch_size_at` of its stream position, past the range, as ``trainer.data.schedule`` counts it for
    ``--skip-iterations`` and rollbacks (the skipped samples count as consumed, as Megatron's do)."""
    from trainer.control import add_skip_range
    from trainer.data.schedule import consumed_after
    cfg = ramp_config(4)
    cfg.train.eval_interval = 0
    run = tmp_path / "run"
    run.mkdir()
    add_skip_range(run, 5, 9, "a test")
    records = run_ranks(run, cfg, 4)
    # 0: 2 -> [0, 1]; 2: 2 -> [2, 3]; 4: 4 -> [4, 9, 10, 11]; 12 (not past the ramp's 12): 8 -> [12..19]
    assert [(r["batch_size"], r["consumed_samples"]) for r in records] == [(2, 2), (2, 4), (4, 12), (8, 20)]
    assert [r["consumed_samples"] for r in records] == [consumed_after(0, n, 8, RAMP, [(5, 9)]) for n in (1, 2, 3, 4)]
