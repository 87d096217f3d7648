"""``bigops surgery --skip-iterations`` on a trained run: the iterations become the sample range recorded
in control/skip-ranges, and the resumed ranks skip exactly those batches (step A reads what step B+1 would
have)."""

import pytest

from bigops.cli.main import main as bigops_main
from tests.distributed.ranks import run_ranks
from trainer import config as config_mod
from trainer.control import read_skip_ranges
from trainer.rundir import RunDir

pytestmark = pytest.mark.distributed


def test_skipped_iterations_are_the_batches_the_resumed_steps_skip(tmp_path, capsys):
    cfg = config_mod.preset("tiny")
    cfg.model = config_mod.ModelConfig(hidden_size=32, num_layers=2, num_attention_heads=4, vocab_size=256)
    cfg.parallel = config_mod.ParallelConfig(tp=1, pp=1, dp=2)
    cfg.train = config_mod.TrainConfig(seq_length=8, micro_batch_size=1, global_batch_size=4, train_steps=2,
                                       lr=1e-3, warmup_steps=0, precision="fp32")
    cfg.data.source = "synthetic"
    run = RunDir(tmp_path / "run")
    run_ranks(run.root, cfg, 2)
    assert run.latest_tag() == "global_step2"

    assert bigops_main(["surgery", str(run.root), "--skip-iterations", "2-3", "--yes"]) == 2
    assert "the run resumes after step 2" in capsys.readouterr().err
    # Resuming at sample 8: step 3 reads 8..11, steps 4-5 would read 12..19.
    assert bigops_main(["surgery", str(run.root), "--skip-iterations", "4-5", "--yes"]) == 0
    assert "iterations 4-5 = samples 12-20" in capsys.readouterr().out
    assert read_skip_ranges(run.root) == [(12, 20)]

    cfg.train.train_steps = 5
    records = run_ranks(run.root, cfg, 2)
    consumed = {r["step"]: r["consumed_samples"] for r in records}
    assert (consumed[3], consumed[4], consumed[5]) == (12, 24, 28)  # step 4 read 20..23, as step 6 would have
