"""The batch-size ramp-up (``train.rampup_batch_size``, Megatron's ``--rampup-batch-size``): the global batch at
each consumed-sample count as Megatron-DeepSpeed's ``RampupBatchsizeNumMicroBatches`` computes it, the schedule
functions that count steps and samples through it, and the config's checks of it (one line naming the option)."""

import random

import pytest

from trainer import config as c
from trainer.data.sampler import batch_positions
from trainer.data.schedule import (batch_size_at, consumed_after, iteration_sample_range, samples_before_step,
                                   train_iters_for_samples)

BLOOM = [192, 16, 9_765_625]  # tr11-176B-ml: --rampup-batch-size 192 16 9_765_625, GLOBAL_BATCH_SIZE=2048


@pytest.mark.parametrize("consumed, batch", [
    # 116 increments of 16 from 192 to 2048, one every 9_765_625 / 116 = 84186.42... samples
    (0, 192), (84_186, 192), (84_187, 208), (168_372, 208), (168_373, 224),
    (9_681_438, 2016), (9_681_439, 2032), (9_765_625, 2048), (9_765_626, 2048), (10 ** 9, 2048),
])
def test_blooms_ramp(consumed, batch):
    assert batch_size_at(consumed, 2048, BLOOM) == batch


def test_the_increments_are_a_float_division_truncated_as_megatron():
    """Ramp 9 samples, 7 increments: 9 / (9 / 7) is 6.999... in floating point, so at exactly 9 consumed samples
    (not yet *more* than the ramp) Megatron's int() leaves the batch one increment short; an exact integer
    division would give the global batch there."""
    assert 9 / (9 / 7) < 7
    assert [batch_size_at(n, 16, [2, 2, 9]) for n in (0, 1, 2, 3, 8, 9, 10)] == [2, 2, 4, 6, 14, 14, 16]


def test_no_ramp_is_the_global_batch():
    assert {batch_size_at(n, 64) for n in (0, 1, 10 ** 6)} == {64}
    cfg = c.preset("tiny")
    assert c.batch_size_at(cfg, 0) == cfg.train.global_batch_size


def _trainer_steps(steps: int, gbs: int, ramp, ranges, consumed: int = 0) -> tuple[list[list[int]], int]:
    """What the trainer reads, step by step (``trainer.train.train_step``): the reference for the schedule."""
    read = []
    for _ in range(steps):
        positions, consumed = batch_positions(consumed, batch_size_at(consumed, gbs, ramp), ranges)
        read.append(positions)
    return read, consumed


def test_the_schedule_counts_what_the_trainer_reads_through_ramp_and_skip_ranges():
    rng = random.Random(17)
    for _ in range(40):
        gbs, ramp = 24, [4, 4, rng.randint(1, 200)]
        ranges = sorted({(a, a + rng.randint(1, 30)) for a in rng.sample(range(0, 400), 3)})
        ranges = [r for i, r in enumerate(ranges) if i == 0 or r[0] >= ranges[i - 1][1]]  # disjoint, as the file
        start = rng.choice([0, 0, 7, 50])
        read, _ = _trainer_steps(30, gbs, ramp, ranges, consumed=start)
        for steps in (0, 1, 5, 29):
            assert consumed_after(start, steps, gbs, ramp, ranges) == _trainer_steps(steps, gbs, ramp, ranges,
                                                                                     start)[1]
        for first, last in ((1, 1), (2, 6), (9, 29)):
            got = iteration_sample_range(first, last, global_batch_size=gbs, resume_consumed=start,
                                         skip_ranges=ranges, rampup=ramp)
            assert got == (read[first - 1][0], read[last - 1][-1] + 1), (ramp, ranges, first, last)


def test_samples_in_steps_through_the_ramp():
    """The samples the first N steps train on (a schedule in samples), tabled once, as the step-by-step count;
    ``--train-samples`` in iterations as Megatron's ``update_train_iters`` (the whole ramp, then full batches, a
    partial last one thrown away)."""
    for steps in (0, 1, 438, 439, 440, 910, 12_657, 12_658, 12_659, 100_000):
        assert samples_before_step(steps, 2048, BLOOM) == consumed_after(0, steps, 2048, BLOOM), steps
    assert samples_before_step(439, 2048, BLOOM) == 439 * 192 and samples_before_step(5, 8) == 40
    ramp_steps = 12_658  # the first step whose start is past the ramp's 9_765_625 samples
    assert consumed_after(0, ramp_steps - 1, 2048, BLOOM) <= 9_765_625 < consumed_after(0, ramp_steps, 2048, BLOOM)
    assert consumed_after(0, ramp_steps, 2048, BLOOM) == 9_765_808
    assert train_iters_for_samples(220_000_000, 2048, BLOOM) == ramp_steps + (220_000_000 - 9_765_808) // 2048
    assert train_iters_for_samples(220_000_000, 2048) == 220_000_000 // 2048


def test_the_option_reads_a_toml_array_or_megatrons_argument():
    assert c.resolve("tiny", overrides=["train.rampup_batch_size=192 16 9_765_625"]).train.rampup_batch_size == BLOOM
    assert c.resolve("tiny", overrides=["train.rampup_batch_size=4,4,100"]).train.rampup_batch_size == [4, 4, 100]
    assert c.resolve("tiny", overrides=["train.rampup_batch_size=[4, 4, 100]"]).train.rampup_batch_size == [4, 4, 100]
    assert c.resolve("tiny", overrides=["train.rampup_batch_size=none"]).train.rampup_batch_size is None
    cfg = c.resolve("tiny", overrides=["train.rampup_batch_size=4,4,100"])
    assert c.from_dict(c.to_dict(cfg)) == cfg and "rampup_batch_size = [\n    4," in c.dumps_toml(cfg)
    with pytest.raises(c.ConfigError, match=r"^train.rampup_batch_size='4,x,100' is not a list of int$"):
        c.resolve("tiny", overrides=["train.rampup_batch_size=4,x,100"])


@pytest.mark.parametrize("ramp, message", [
    ("4,4", "train.rampup_batch_size=[4, 4]: must be [start, increment, ramp samples] (Megatron's "
            "--rampup-batch-size)"),
    ("4,0,100", "train.rampup_batch_size=[4, 0, 100]: start, increment and ramp samples must each be >= 1"),
    ("16,4,100", "train.rampup_batch_size=[16, 4, 100]: the start batch 16 must be less than "
                 "train.global_batch_size=16"),
    ("4,8,100", "train.rampup_batch_size=[4, 8, 100]: train.global_batch_size=16 - start 4 = 12 is not divisible "
                "by the increment 8"),
    ("2,2,100", "train.rampup_batch_size=[2, 2, 100]: the start 2 is not a multiple of train.micro_batch_size=2 x "
                "parallel.dp=2"),
    ("4,6,100", "train.rampup_batch_size=[4, 6, 100]: the increment 6 is not a multiple of "
                "train.micro_batch_size=2 x parallel.dp=2"),
])
def test_a_bad_ramp_is_one_line_naming_the_option(ramp, message):
    cfg = c.resolve("tiny", overrides=["train.global_batch_size=16", "train.micro_batch_size=2", "parallel.tp=1",
                                       "parallel.pp=1", f"train.rampup_batch_size={ramp}"])
    with pytest.raises(c.ConfigError) as err:
        c.validate(cfg, world_size=2)
    assert str(err.value) == message


def test_a_good_ramp_validates():
    cfg = c.resolve("tiny", overrides=["train.global_batch_size=16", "train.micro_batch_size=2", "parallel.tp=1",
                                       "parallel.pp=1", "train.rampup_batch_size=4,4,100"])
    assert c.validate(cfg, world_size=2).parallel.dp == 2


def test_megatron_args_carry_the_ramp_as_argparse_does(tmp_path):
    """A checkpoint's ``args`` hold ``--rampup-batch-size`` as the strings given (BLOOM's ``9_765_625``); ours are
    written that way and either is read back as three integers."""
    from tests.distributed import megatron_writer as mw
    from trainer import layout, megatron
    args = mw.megatron_args(mw.Shape())
    args.rampup_batch_size = ["192", "16", "9_765_625"]
    engine = {"args": args, "checkpoint_info": {"padded_vocab_size": 256, "original_vocab_size": 250}}
    assert megatron.run_config(engine, tmp_path).train.rampup_batch_size == BLOOM
    bloom = c.validate(c.preset("bloom-176b"), world_size=384)
    assert layout.megatron_args(bloom, 0, 0).rampup_batch_size == ["192", "16", "9765625"]
    assert layout.megatron_args(c.validate(c.preset("tiny"), world_size=4), 0, 0).rampup_batch_size is None
    args.rampup_batch_size = ["192", "x", "1"]
    with pytest.raises(megatron.CheckpointError, match="rampup_batch_size=.*not three integers"):
        megatron.run_config(engine, tmp_path)


def test_a_rollback_mid_ramp_skips_the_batches_the_spike_steps_read():
    """The watchdog's rollback (``bigops.watchdog.decide``) during a ramp-up: the skip starts where the trainer
    reads the spike's first step and covers the ramp's (smaller) batches, not the global batch's."""
    from bigops.watchdog.decide import Checkpoint, Policy, Rollback, StateView, decide
    ramp, gbs = (2, 2, 1000), 8
    _, at_80 = _trainer_steps(80, gbs, ramp, [])
    view = StateView(now=1000.0, checkpoints=(Checkpoint("global_step80", 80, at_80),), checkpoint_step=80)
    incident = {"id": "i1", "key": "LossSpike:i1", "kind": "LossSpike", "severity": "critical", "status": "open",
                "step": None, "summary": "spike", "evidence": {"start_step": 86}, "opened": 1.0}
    policy = Policy(global_batch_size=gbs, rampup_batch_size=ramp, rollback_skip_batches=10)
    (rollback,) = [a for a in decide([incident], view, policy) if isinstance(a, Rollback)]
    read, _ = _trainer_steps(15, gbs, ramp, [], consumed=at_80)  # steps 81..95
    assert rollback.skip_range == (read[5][0], read[14][-1] + 1)  # steps 86..95: the spike's first and 9 after
    assert rollback.skip_range[1] - rollback.skip_range[0] < 10 * gbs
    assert Policy.of(c.preset("bloom-176b")).rampup_batch_size == (192, 16, 9_765_625)


def test_a_shrink_keeps_the_ramps_batches_whole():
    """Losing devices, the watchdog picks the largest DP that still divides the ramp's start and increment into
    micro-batches (the reshaped run must pass the config's check), not only the global batch."""
    from bigops.watchdog.decide import shrink_target
    assert shrink_target((1, 1, 8), 1, 64, 1) == (1, 1, 4)  # 7 devices left: DP 4 divides 64
    assert shrink_target((1, 1, 8), 1, 64, 1, (24, 8, 100)) == (1, 1, 4)
    assert shrink_target((1, 1, 8), 1, 64, 1, (6, 2, 100)) == (1, 1, 2)  # 6 is no multiple of 4 (nor 64 of 3)
    assert "train.rampup_batch_size's start and increment" in shrink_target((1, 1, 8), 1, 64, 2, (3, 1, 100))


def test_a_config_file_sets_the_ramp_on_a_new_run_and_on_a_resume(tmp_path):
    """``--config FILE``: read as a tree on a new run, as ``section.key=value`` overrides on a resume."""
    from launcher.plan import file_overrides
    path = tmp_path / "ramp.toml"
    path.write_text("[train]\nrampup_batch_size = [4, 4, 100]\n")
    assert c.resolve("tiny", path).train.rampup_batch_size == [4, 4, 100]
    assert c.apply_overrides(c.preset("tiny"), file_overrides(path)).train.rampup_batch_size == [4, 4, 100]


def test_an_lr_schedule_in_samples_is_megatrons_annealing_lr():
    """``train.lr_decay_samples`` (BLOOM's ``--lr-warmup-samples 183_105 --lr-decay-samples 200_000_000``): Megatron's
    AnnealingLR on the samples trained so far, which under the ramp-up are the ramp's batches."""
    from trainer.ds_config import lr_at, lr_at_samples
    cfg = c.preset("bloom-176b")
    assert lr_at_samples(cfg, 0) == 0.0  # Megatron's first step trains at LR 0
    assert lr_at_samples(cfg, 183_105) == 6e-5 and lr_at_samples(cfg, 91_552) == 6e-5 * 91_552 / 183_105
    assert lr_at_samples(cfg, 200_000_000) == pytest.approx(6e-6, abs=1e-20) and lr_at_samples(cfg, 2 * 10 ** 8 + 1) == 6e-6
    assert lr_at_samples(cfg, (183_105 + 200_000_000) // 2) == pytest.approx((6e-5 + 6e-6) / 2, rel=1e-6)
    assert [lr_at(cfg, k) for k in (0, 1, 2)] == [0.0, 6e-5 * 192 / 183_105, 6e-5 * 384 / 183_105]
    at_ramp_end = consumed_after(0, 12_658, 2048, BLOOM)
    assert lr_at(cfg, 12_658) == lr_at_samples(cfg, at_ramp_end) and lr_at(cfg, 12_659) == \
        lr_at_samples(cfg, at_ramp_end + 2048)
    cfg.train.lr_decay_style = "linear"
    assert lr_at_samples(cfg, 183_105 + (200_000_000 - 183_105) // 4) == pytest.approx(6e-6 + 0.75 * 5.4e-5)
    cfg.train.lr_decay_style = "constant"
    assert lr_at_samples(cfg, 10 ** 9) == 6e-5


@pytest.mark.parametrize("overrides, message", [
    (["train.lr_warmup_samples=100"], "train.lr_warmup_samples=100 counts the LR schedule in samples: set "
                                      "train.lr_decay_samples too (or warm up in train.warmup_steps)"),
    (["train.lr_warmup_samples=100", "train.lr_decay_samples=100"],
     "train.lr_warmup_samples=100 must be less than train.lr_decay_samples=100"),
    (["train.lr_decay_samples=0"], "train.lr_decay_samples=0: must be an integer >= 1"),
])
def test_a_bad_schedule_in_samples_is_one_line(overrides, message):
    with pytest.raises(c.ConfigError) as err:
        c.validate(c.resolve("tiny", overrides=overrides), world_size=4)
    assert str(err.value) == message


def test_megatron_args_carry_a_schedule_in_samples(tmp_path):
    from tests.distributed import megatron_writer as mw
    from trainer import layout, megatron
    args = layout.megatron_args(c.validate(c.preset("bloom-176b"), world_size=384), 0, 0)
    assert (args.lr_warmup_samples, args.lr_decay_samples, args.lr_decay_iters) == (183_105, 200_000_000, None)
    engine = {"args": mw.megatron_args(mw.Shape()), "checkpoint_info": {"padded_vocab_size": 256}}
    engine["args"].lr_decay_samples = 200_000_000
    train = megatron.run_config(engine, tmp_path).train
    assert (train.lr_warmup_samples, train.lr_decay_samples) == (216_320, 200_000_000)  # the writer's warm-up
