"""A run stopped at a checkpoint and resumed trains exactly as an uninterrupted one (TP 2 x PP 2, fp32)."""

import pytest

from tests.distributed.ranks import run_ranks
from tests.distributed.test_export_hf import small_config
from trainer.ds_config import lr_at

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no-dropout", "dropout"])
def test_resume_is_bit_exact(tmp_path, dropout):
    """With dropout, this also needs every rank's RNG state back (DeepSpeed does not save it)."""
    cfg = small_config(2, 2)
    cfg.model.hidden_dropout = cfg.model.attention_dropout = dropout
    cfg.train.train_steps = cfg.train.lr_decay_steps = 6
    straight = run_ranks(tmp_path / "straight", cfg, 4)

    cfg.train.train_steps = 3
    run_ranks(tmp_path / "resumed", cfg, 4)
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text().strip() == "global_step3"
    cfg.train.train_steps = 6
    resumed = run_ranks(tmp_path / "resumed", cfg, 4)

    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert straight[0]["lr"] == lr_at(cfg, 0) and straight[-1]["lr"] == lr_at(cfg, 5)  # the LR each step applied
    for a, b in zip(straight, resumed):
        assert (a["loss"], a["grad_norm"], a["lr"], a["consumed_samples"]) == \
               (b["loss"], b["grad_norm"], b["lr"], b["consumed_samples"]), a["step"]
