"""TP, PP, DP and TP x PP x DP training runs compute the same losses and grad norms as one rank.

Every layout starts from the same weights (a random HF BLOOM imported at its own layout), reads the same
samples (the sampler is layout-independent) and trains 6 steps in fp32 with Adam and clipping.

Tolerance: the layouts differ only in the order of fp32 sums (TP splits the matmul reductions and adds
partial results with an all-reduce; DP averages gradients over ranks; TP sums per-rank partial grad norms).
Each reordering changes a result by a few ulps. Measured on this machine over 6 steps: at most 1.7e-7
relative on the loss and 1.1e-7 on the grad norm (``pytest -s`` prints them). We allow 1e-5 relative, 60x
the measured drift; a real bug moves them by 1e-2 or more (an untagged TP parameter in the grad norm, the
trap this test caught once, moved it by 2.4e-2; a missing all-reduce or a wrong shard changes the loss).
"""

import math

import pytest

from tests.distributed.ranks import run_ranks
from trainer import config as config_mod

pytestmark = pytest.mark.distributed

STEPS = 6


def equivalence_config(tp: int, pp: int, dp: int, checkpointing: bool = False) -> config_mod.RunConfig:
    cfg = config_mod.preset("tiny")
    cfg.model = config_mod.ModelConfig(hidden_size=64, num_layers=4, num_attention_heads=4, vocab_size=512)
    cfg.parallel = config_mod.ParallelConfig(tp=tp, pp=pp, dp=dp, activation_checkpointing=checkpointing)
    cfg.train = config_mod.TrainConfig(seq_length=32, micro_batch_size=2, global_batch_size=8,
                                       train_steps=STEPS, lr=1e-3, min_lr=1e-4, warmup_steps=2,
                                       precision="fp32", seed=7)
    cfg.data.source = "synthetic"
    return cfg


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory):
    import torch
    from transformers import BloomForCausalLM

    from tests.conftest import tiny_hf_config
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("hf") / "init"
    BloomForCausalLM(tiny_hf_config(num_heads=4, hidden=64, layers=4, vocab=512)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def single_rank(reference_weights, tmp_path_factory):
    return run_ranks(tmp_path_factory.mktemp("single"), equivalence_config(1, 1, 1), 1,
                     ["--init-hf", str(reference_weights)])


def assert_same_trajectory(got: list[dict], expected: list[dict]) -> None:
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for g, e in zip(got, expected):
        assert math.isclose(g["loss"], e["loss"], rel_tol=1e-5), (g["step"], g["loss"], e["loss"])
        assert math.isclose(g["grad_norm"], e["grad_norm"], rel_tol=1e-5), (g["step"], g["grad_norm"], e["grad_norm"])
        assert g["consumed_samples"] == e["consumed_samples"]
    print("max relative loss / grad-norm difference:",
          max(abs(g["loss"] - e["loss"]) / e["loss"] for g, e in zip(got, expected)),
          max(abs(g["grad_norm"] - e["grad_norm"]) / e["grad_norm"] for g, e in zip(got, expected)))


@pytest.mark.parametrize("tp,pp,dp,checkpointing", [(2, 1, 1, False), (1, 2, 1, False), (1, 1, 2, False),
                                                    (2, 2, 2, False), (2, 2, 1, True)],
                         ids=["tp2", "pp2", "dp2", "tp2-pp2-dp2", "tp2-pp2-activation-checkpointing"])
def test_layout_matches_single_rank(tp, pp, dp, checkpointing, reference_weights, single_rank, tmp_path):
    got = run_ranks(tmp_path / "run", equivalence_config(tp, pp, dp, checkpointing), tp * pp * dp,
                    ["--init-hf", str(reference_weights)])
    assert_same_trajectory(got, single_rank)
