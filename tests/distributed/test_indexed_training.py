"""Training on a blend of two Megatron indexed datasets written by megatron-core's own builder, on 2 DP ranks:
a run stopped at a checkpoint and resumed trains bit-exactly as an uninterrupted one, skip range included
(the blend is a pure function of the sample position; tests/unit/test_indexed_data.py checks the ids fed and
the mixture)."""

import numpy as np
import pytest
import torch

from tests.distributed.ranks import run_ranks
from tests.distributed.test_export_hf import small_config
from trainer.control import add_skip_range
from trainer.rundir import RunDir

pytestmark = [pytest.mark.distributed, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")]


def _write(prefix, seed: int, low: int, high: int) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for _ in range(300):
        doc = rng.integers(low, high, size=int(rng.integers(8, 40)))
        builder.add_document(torch.from_numpy(doc), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def test_resume_on_a_blend_with_a_skip_range_is_bit_exact(tmp_path):
    _write(tmp_path / "a_text_document", 1, 5, 250)
    _write(tmp_path / "b_text_document", 2, 250, 500)
    cfg = small_config(1, 1)
    cfg.parallel.dp = 2
    cfg.data.source = f"0.3 {tmp_path / 'a_text_document'} 0.7 {tmp_path / 'b_text_document'}"
    cfg.train.train_steps = cfg.train.lr_decay_steps = 6

    def runs(name: str) -> RunDir:
        run = RunDir(tmp_path / name)
        run.control.mkdir(parents=True)
        add_skip_range(run.root, 8, 16, "test: skip two batches")
        return run

    straight = run_ranks(runs("straight").root, cfg, 2)
    resumed_run = runs("resumed")
    cfg.train.train_steps = 3
    run_ranks(resumed_run.root, cfg, 2)
    cfg.train.train_steps = 6
    resumed = run_ranks(resumed_run.root, cfg, 2)

    assert [r["consumed_samples"] for r in straight] == [4, 8, 20, 24, 28, 32]  # 8..16 skipped
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(straight, resumed):
        assert (a["loss"], a["grad_norm"], a["consumed_samples"]) == (b["loss"], b["grad_norm"],
                                                                      b["consumed_samples"]), a["step"]
