"""trainer.megatron: the run config of a checkpoint Megatron-DeepSpeed wrote (from its ``args``), and the
completeness and integrity checks of a checkpoint without our manifest."""

import pytest
import torch

from tests.distributed import megatron_writer as mw
from trainer import megatron
from trainer.checkpoint import CheckpointError

pytestmark = pytest.mark.unit


def engine(**changes) -> dict:
    args = mw.megatron_args(mw.Shape())
    for key, value in changes.items():
        setattr(args, key, value)
    return {"args": args, "checkpoint_info": {"padded_vocab_size": 256, "original_vocab_size": 250},
            "ds_config": {"zero_optimization": {"stage": 0}}, "iteration": 7}


def test_config_from_megatron_args(tmp_path):
    cfg = megatron.run_config(engine(), tmp_path)
    m, p, t = cfg.model, cfg.parallel, cfg.train
    assert (m.hidden_size, m.num_layers, m.num_attention_heads, m.vocab_size) == (32, 2, 4, 250)
    assert cfg.padded_vocab_size == 256 and m.init_std == 0.0048
    assert (p.tp, p.pp, p.dp, p.zero_stage) == (2, 2, 1, 0)
    assert (t.precision, t.seq_length, t.global_batch_size, t.lr) == ("bf16", 16, 2, 6e-5)
    assert megatron.step_of(engine()) == 7
    assert megatron.consumed_samples_of(engine()) == 2000


@pytest.mark.parametrize("changes,message", [
    ({"embed_layernorm": False}, "not a BLOOM checkpoint"),
    ({"position_embedding_type": "absolute"}, "not a BLOOM checkpoint"),
    ({"hidden_size": None}, "args lack hidden_size"),
])
def test_a_checkpoint_that_is_not_bloom_is_refused_in_one_line(tmp_path, changes, message):
    with pytest.raises(CheckpointError, match=message) as caught:
        megatron.run_config(engine(**changes), tmp_path)
    assert "\n" not in str(caught.value)
    with pytest.raises(CheckpointError, match="neither a bigops run config nor Megatron-DeepSpeed's args"):
        megatron.run_config({"module": None}, tmp_path)


def test_zip_crc_finds_a_flipped_byte_and_a_truncated_file(tmp_path):
    path = tmp_path / "layer_01-model_00-model_states.pt"
    torch.save({"w": torch.arange(4096, dtype=torch.float32)}, path)
    assert megatron.zip_problem(path) is None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    assert "CRC" in megatron.zip_problem(path)
    path.write_bytes(bytes(data[: len(data) // 2]))
    assert "not a readable torch file" in megatron.zip_problem(path)


def test_expected_files_follow_the_layout():
    from trainer.config import ModelConfig, ParallelConfig, RunConfig
    cfg = RunConfig(model=ModelConfig(num_layers=2), parallel=ParallelConfig(tp=2, pp=2, dp=1))
    assert megatron.expected_files(cfg) == sorted(n for n in mw.file_names(mw.Shape()) if "optim" not in n)
