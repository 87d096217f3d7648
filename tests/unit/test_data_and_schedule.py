"""The sampler covers each global batch exactly once whatever the layout; the LR schedule."""

import pytest

from trainer import config as c
import torch

from trainer.data.sampler import batch_positions, rank_micro_batches
from trainer.data.synthetic import synthetic_sample
from trainer.ds_config import deepspeed_config, lr_at


@pytest.mark.parametrize("dp,mb", [(1, 8), (1, 2), (2, 2), (4, 1), (2, 4)])
def test_every_layout_reads_the_same_global_batch(dp, mb):
    sample = lambda i: torch.tensor([i, i + 1])  # noqa: E731  position -> (T+1,) with T = 1
    positions, consumed = batch_positions(16, 8)
    assert positions == list(range(16, 24)) and consumed == 24
    seen = sorted(int(x) for d in range(dp)
                  for inputs, _ in rank_micro_batches(positions, d, micro_batch=mb, dp=dp, sample=sample)
                  for x in inputs[:, 0])
    assert seen == positions


def test_skip_ranges_are_jumped_over():
    positions, consumed = batch_positions(0, 6, [(2, 4), (5, 7)])
    assert positions == [0, 1, 4, 7, 8, 9] and consumed == 10
    assert batch_positions(3, 2, [(0, 10)]) == ([10, 11], 12)
    assert batch_positions(0, 3, []) == ([0, 1, 2], 3)


def test_resume_continues_with_the_next_batch():
    sample = lambda i: synthetic_sample(i, 8, 100, seed=1)  # noqa: E731
    first, consumed = batch_positions(0, 4)
    second, _ = batch_positions(consumed, 4)
    x, y = next(rank_micro_batches(second, 0, micro_batch=2, dp=1, sample=sample))
    assert x[0].equal(sample(4)[:-1]) and y[0].equal(sample(4)[1:])


def test_synthetic_samples_are_deterministic_and_in_vocab():
    a = synthetic_sample(7, 32, 50, seed=3)
    assert a.equal(synthetic_sample(7, 32, 50, seed=3)) and not a.equal(synthetic_sample(8, 32, 50, seed=3))
    assert a.shape == (33,) and int(a.min()) >= 0 and int(a.max()) < 50


def test_lr_warmup_then_cosine_to_min():
    cfg = c.resolve("tiny", overrides=["train.lr=1.0", "train.min_lr=0.1", "train.warmup_steps=10",
                                       "train.train_steps=110"])
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 60) == pytest.approx(0.55)
    assert lr_at(cfg, 110) == pytest.approx(0.1) and lr_at(cfg, 500) == pytest.approx(0.1)


def test_deepspeed_config_avoids_jit_ops_and_matches_batch_sizes():
    cfg = c.validate(c.preset("bloom-176b"), world_size=384)
    ds = deepspeed_config(cfg)
    assert ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["train_batch_size"] == 2048 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 128
    assert ds["bf16"]["enabled"] and ds["data_types"]["grad_accum_dtype"] == "fp32"
