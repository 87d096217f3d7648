"""``bigops ckpt reshape``'s rules without a checkpoint: which layouts and runs it refuses, the DeepSpeed config
of a universal resume, and the deterministic re-seed of a rank that has no RNG stream to continue."""

from pathlib import Path

import pytest
import torch

from bigops.checkpoint import reshape as lib
from bigops.checkpoint.surgery import Source
from bigops.errors import BigopsError, ConfigError
from trainer import checkpoint as ckpt
from trainer import config as config_mod
from trainer.ds_config import deepspeed_config
from trainer.train import reseed_rng


def _cfg(tp=2, pp=2, dp=1, zero_stage=1) -> config_mod.RunConfig:
    cfg = config_mod.preset("tiny")
    cfg.model = config_mod.ModelConfig(hidden_size=48, num_layers=3, num_attention_heads=6, vocab_size=500)
    cfg.parallel = config_mod.ParallelConfig(tp=tp, pp=pp, dp=dp, zero_stage=zero_stage)
    cfg.train = config_mod.TrainConfig(seq_length=16, micro_batch_size=2, global_batch_size=4, train_steps=3,
                                       precision="fp32")
    return cfg


def _source(cfg) -> Source:
    return Source(run=None, tag="global_step3", path=Path("/nonexistent"), manifest={}, config=cfg, layout=None)


def test_the_same_layout_and_zero0_without_bf16_are_refused_in_one_line():
    with pytest.raises(BigopsError, match="already TP2 x PP2 x DP1"):
        lib.refuse_unsupported(_source(_cfg()), lib.Layout(2, 2, 1))
    with pytest.raises(BigopsError, match="ZeRO stage 0 in fp32") as err:
        lib.refuse_unsupported(_source(_cfg(zero_stage=0)), lib.Layout(1, 2, 2))
    assert "\n" not in str(err.value)
    lib.refuse_unsupported(_source(_cfg()), lib.Layout(1, 2, 2))  # ZeRO-1 to another layout: fine
    bloom_like = _cfg(zero_stage=0)
    bloom_like.train.precision = "bf16"
    lib.refuse_unsupported(_source(bloom_like), lib.Layout(1, 2, 2))  # BLOOM's ZeRO-0 + bf16 optimizer: fine


def test_a_layout_the_model_does_not_fit_is_a_config_error():
    with pytest.raises(ConfigError):
        lib.target_config(_cfg(), lib.Layout(4, 1, 1))  # 6 heads are not divisible by TP 4
    with pytest.raises(ConfigError):
        lib.target_config(_cfg(), lib.Layout(1, 1, 3))  # a global batch of 4 over 3 replicas
    new = lib.target_config(_cfg(), lib.Layout(1, 2, 2))
    assert (new.parallel.tp, new.parallel.pp, new.parallel.dp) == (1, 2, 2)


def test_only_a_universal_resume_asks_deepspeed_for_universal_loading():
    cfg = config_mod.validate(_cfg(), world_size=4)
    assert "checkpoint" not in deepspeed_config(cfg)
    assert deepspeed_config(cfg, load_universal=True)["checkpoint"] == {"load_universal": True}
    plain = ckpt.Resumable("global_step3", Path("x"), {"step": 3})
    universal = ckpt.Resumable("universal-global_step3", Path("x"), {"step": 3, ckpt.UNIVERSAL: {"rng": "carried"}})
    assert not ckpt.is_universal(plain) and not ckpt.is_universal(None) and ckpt.is_universal(universal)


def test_reseeding_is_a_function_of_seed_step_and_rank():
    def draw(seed, step, rank):
        reseed_rng(seed, step, rank)
        return torch.rand(4)

    assert torch.equal(draw(1234, 3, 1), draw(1234, 3, 1))
    assert not torch.equal(draw(1234, 3, 1), draw(1234, 3, 2))
    assert not torch.equal(draw(1234, 3, 1), draw(1234, 4, 1))


# ds_to_universal's own output (DeepSpeed 0.19, tqdm's carriage returns read as line ends)
CONVERTER_OUTPUT = """\
args = Namespace(input_folder='/r/checkpoints/.partial-universal-global_step3.input', num_extract_workers=1)
Convert DeepSpeed Checkpoint to Universal Checkpoint
*** 1. Extracting ZeRO fragments
  0%|          | 0/4 [00:00<?, ?it/s]
100%|\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588| 4/4 [00:00<00:00, 77.41it/s]
*** 2. Merging slices .....
 78%|\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u258a  | 32/41 [00:00<00:00, 313.14it/s]
    No AutoEP layers found, skipping
*** 3. Saving common optimizer states
*** Done!
"""


def test_the_converters_phases_and_counters_are_read_from_its_output():
    parsed = [lib.parse_converter_line(line) for line in CONVERTER_OUTPUT.splitlines()]
    phases = [p for p, _ in parsed if p]
    counters = [c for _, c in parsed if c]
    assert phases == ["1. Extracting ZeRO fragments", "2. Merging slices", "3. Saving common optimizer states"]
    assert counters == [(0, 4), (4, 4), (32, 41)]
    assert lib.parse_converter_line("Convert DeepSpeed Checkpoint to Universal Checkpoint") == (None, None)
    assert lib.parse_converter_line("*** Done!") == (None, None)


def test_progress_off_a_terminal_is_plain_lines_one_per_phase_and_the_last():
    import io

    from rich.console import Console

    from bigops.cli.progress import bar_reporter
    out = io.StringIO()
    with bar_reporter(Console(file=out, force_terminal=False, width=200), "converting", every_s=3600) as bar:
        bar("1. Extracting", 0, 4, "0 B written")
        bar("1. Extracting", 4, 4, "2 MiB written")
        bar("2. Merging", 10, 41, "3 MiB written")
        bar("2. Merging", 41, 41, "4 MiB written")
    assert out.getvalue().splitlines() == ["converting: 1. Extracting 0/4 0 B written",
                                           "converting: 2. Merging 10/41 3 MiB written",
                                           "converting: 2. Merging 41/41 4 MiB written"]
