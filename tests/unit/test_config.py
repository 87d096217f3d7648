"""The config tree: presets, overrides, TOML, validation errors that name the option."""

import pytest

from trainer import config as c


def test_presets_resolve_and_validate():
    for name in c.PRESETS:
        cfg = c.preset(name)
        c.validate(cfg, world_size=c.world_size_of(cfg))


def test_bloom_176b_is_as_trained():
    cfg = c.preset("bloom-176b")
    m, p, t = cfg.model, cfg.parallel, cfg.train
    assert (m.num_layers, m.hidden_size, m.num_attention_heads) == (70, 14336, 112)
    assert (t.seq_length, t.global_batch_size, p.tp, p.pp) == (2048, 2048, 4, 12)
    assert cfg.padded_vocab_size == 250880  # 250680 padded to a multiple of 128 x TP 4
    c.validate(cfg, world_size=384)
    assert cfg.parallel.dp == 8
    assert c.gradient_accumulation_steps(cfg) == 2048 // (2 * 8)
    assert [c.batch_size_at(cfg, n) for n in (0, 84_187, 9_765_626)] == [192, 208, 2048]  # tr11's ramp-up


@pytest.mark.parametrize("name,params", [("bloom-560m", 559_214_592), ("bloom-1b7", 1_722_408_960),
                                         ("bloom-7b1", 7_069_016_064), ("bloom-176b", 176_247_271_424)])
def test_presets_have_the_released_parameter_counts(name, params):
    import torch

    from trainer.model.bloom import BloomForCausalLM
    cfg = c.preset(name)
    with torch.device("meta"):  # shapes only: no memory
        model = BloomForCausalLM(cfg.model, padded_vocab_size=cfg.padded_vocab_size)
    assert sum(p.numel() for p in model.parameters()) == params


def test_default_init_std_is_blooms():
    assert c.preset("bloom-176b").model.resolved_init_std == 0.0048
    assert abs(c.preset("bloom-7b1").model.resolved_init_std - (0.3333 / 4096) ** 0.5) < 1e-12


@pytest.mark.parametrize("vocab,tp,padded", [(250680, 4, 250880), (250680, 1, 250752), (500, 2, 512), (512, 1, 512)])
def test_vocab_padding(vocab, tp, padded):
    assert c.ModelConfig(vocab_size=vocab).padded_vocab_size(tp) == padded


def test_overrides_by_dotted_keys_are_typed():
    cfg = c.resolve("tiny", overrides=["model.hidden_size=96", "model.num_layers=3", "model.num_attention_heads=6",
                                       "train.seq_length=32", "train.micro_batch_size=2", "train.global_batch_size=8",
                                       "train.lr=3e-4", "train.seed=9", "parallel.activation_checkpointing=true",
                                       "model.init_std=none"])
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_attention_heads) == (96, 3, 6)
    assert (cfg.train.seq_length, cfg.train.micro_batch_size, cfg.train.global_batch_size) == (32, 2, 8)
    assert cfg.train.lr == 3e-4 and cfg.train.seed == 9 and cfg.parallel.activation_checkpointing is True
    assert cfg.model.init_std is None
    assert c.preset("tiny").model.hidden_size == 64  # presets are never mutated


def test_toml_file_then_overrides(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('preset = "bloom-560m"\n[model]\nnum_layers = 2\n[train]\nlr = 0.5\n')
    cfg = c.resolve("tiny", f, ["train.lr=0.25"])
    assert cfg.model.hidden_size == 1024 and cfg.model.num_layers == 2 and cfg.train.lr == 0.25


def test_toml_round_trip(tmp_path):
    cfg = c.preset("bloom-176b")
    (tmp_path / "run.toml").write_text(c.dumps_toml(cfg))
    assert c.load_toml(tmp_path / "run.toml", base=c.RunConfig()) == cfg
    assert c.from_dict(c.to_dict(cfg)) == cfg


@pytest.mark.parametrize("overrides,world,message", [
    (["model.num_attention_heads=6", "model.hidden_size=48", "parallel.tp=4"], 4,
     "parallel.tp=4 does not divide model.num_attention_heads=6: choose parallel.tp among 1, 2, 3, 6"),
    (["parallel.tp=2", "parallel.pp=2"], 6, "parallel.tp=2 x parallel.pp=2 = 4 does not divide the world size 6"),
    (["parallel.tp=2", "parallel.pp=2", "parallel.dp=2"], 4,
     "parallel.tp=2 x parallel.pp=2 x parallel.dp=2 = 8 != world size 4"),
    (["model.hidden_size=50"], 4, "model.hidden_size=50 is not divisible by model.num_attention_heads=4"),
    (["train.global_batch_size=10"], 4, "train.global_batch_size=10 is not a multiple of train.micro_batch_size=4"),
    (["parallel.pp=7"], 14, "parallel.pp=7 is more than the 6 pipeline layers"),
    (["train.precision=fp16"], 4, "train.precision='fp16' is not supported: use auto, fp32 or bf16"),
    (["parallel.zero_stage=3"], 4, "parallel.zero_stage=3 is not supported"),
    (["model.hidden_dropout=1.5"], 4, "model.hidden_dropout=1.5: must be a finite number >= 0 and < 1"),
    (["model.pad_vocab_size_to=8000"], 4, "model.pad_vocab_size_to=8000 must be >= model.vocab_size=8192"),
])
def test_invalid_combinations_name_the_options(overrides, world, message):
    cfg = c.resolve("tiny", overrides=overrides)
    with pytest.raises(c.ConfigError) as exc:
        c.validate(cfg, world_size=world)
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("item,message", [
    ("model.hidden=3", "unknown option 'model.hidden'"),
    ("modle.hidden_size=3", "unknown option 'modle.hidden_size'"),
    ("model.hidden_size", "is not of the form section.key=value"),
    ("model.hidden_size=1.5", "model.hidden_size='1.5' is not a valid int"),
    ("parallel.activation_checkpointing=maybe", "is not a valid bool"),
])
def test_bad_overrides(item, message):
    with pytest.raises(c.ConfigError) as exc:
        c.apply_overrides(c.preset("tiny"), [item])
    assert message in str(exc.value)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(c.ConfigError, match="unknown preset 'bloom-3b': choose one of tiny"):
        c.preset("bloom-3b")
    with pytest.raises(c.ConfigError, match="does not exist"):
        c.load_toml(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(c.ConfigError, match="is not valid TOML"):
        c.load_toml(tmp_path / "bad.toml")
    (tmp_path / "typed.toml").write_text("[model]\nhidden_size = true\n")
    with pytest.raises(c.ConfigError, match="model.hidden_size=True is not a valid int"):
        c.load_toml(tmp_path / "typed.toml")


def test_auto_precision_is_bf16_on_gpu_fp32_on_cpu():
    cfg = c.preset("tiny")
    assert cfg.train.precision == "auto"
    assert c.resolve_precision(cfg, cuda_available=True).train.precision == "bf16"
    assert c.resolve_precision(cfg, cuda_available=False).train.precision == "fp32"
    assert c.resolve_precision(c.preset("bloom-560m"), cuda_available=False).train.precision == "bf16"


@pytest.mark.parametrize("key,value,option", [
    ("on_desync", "reboot", "watchdog.on_desync"),
    ("desync_threshold", -1.0, "watchdog.desync_threshold"),
    ("straggler_factor", 0.5, "watchdog.straggler_factor"),
])
def test_watchdog_desync_and_straggler_options_are_checked(key, value, option):
    cfg = c.preset("tiny")
    setattr(cfg.watchdog, key, value)
    with pytest.raises(c.ConfigError, match=option):
        c.validate(cfg, world_size=4)
