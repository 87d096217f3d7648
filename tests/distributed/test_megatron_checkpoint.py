"""bigops reads a checkpoint written by Megatron-DeepSpeed itself (tests/distributed/megatron_writer.py, which
shares nothing with our save code), in the shapes BigScience published BLOOM in: bf16 weights, the bf16
optimizer at ZeRO-0, Megatron's engine metadata, no bigops manifest nor run config.

How a user points bigops at one: a run directory whose ``checkpoints`` is Megatron-DeepSpeed's ``--save``
directory (``mkdir RUN && ln -s SAVE RUN/checkpoints``, or a copy). Every ``bigops ckpt`` command and
``bigops surgery`` then take ``RUN``; what they write (a surgery's new tag) goes beside the source tag,
never over it. Here the save directory is written straight into ``RUN/checkpoints``.
"""

import json

import pytest
import torch

from bigops.cli.main import main as bigops_main
from tests.distributed import megatron_writer as mw

pytestmark = pytest.mark.distributed

SHAPE = mw.Shape()
TAG = f"global_step{SHAPE.iteration}"


@pytest.fixture()
def megatron_run(tmp_path):
    """(run dir, the transformers model its weights came from)."""
    model = mw.reference_model(SHAPE)
    run = tmp_path / "run"
    mw.write_checkpoint(run / "checkpoints", model, SHAPE)
    return run, model


def _json(capsys, args: list[str]) -> tuple[int, dict]:
    capsys.readouterr()
    code = bigops_main(args)
    return code, json.loads(capsys.readouterr().out)


def test_file_naming_of_the_writer_and_a_bloom_176b_variant():
    assert mw.file_names(SHAPE)[:3] == ["bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                        "bf16_zero_pp_rank_0_mp_rank_01_optim_states.pt",
                                        "bf16_zero_pp_rank_0_mp_rank_02_optim_states.pt"]
    big = mw.file_names(mw.Shape(layers=70, tp=4, pp=12))
    assert "layer_01-model_03-model_states.pt" in big and "layer_72-model_00-model_states.pt" in big
    assert "layer_74-model_03-model_states.pt" in big and "mp_rank_47_model_states.pt" in big
    assert not any(n.startswith(("layer_00-", "layer_02-", "layer_73-", "layer_75-")) for n in big)


def test_file_names_are_the_ones_the_readers_expect_at_tp4_pp12():
    from trainer import megatron
    from trainer.config import ModelConfig, ParallelConfig, RunConfig
    cfg = RunConfig(model=ModelConfig(num_layers=70), parallel=ParallelConfig(tp=4, pp=12, dp=1))
    names = set(mw.file_names(mw.Shape(layers=70, tp=4, pp=12)))
    assert set(megatron.expected_files(cfg)) == {n for n in names if "optim" not in n}


def test_list_inspect_and_verify(megatron_run, capsys):
    run, _ = megatron_run
    code, listed = _json(capsys, ["ckpt", "list", str(run), "--format", "json"])
    assert code == 0 and listed["latest"] == TAG and listed["latest_problem"] is None
    (entry,) = listed["checkpoints"]
    assert entry["state"] == "complete" and entry["step"] == SHAPE.iteration and entry["problem"] is None

    code, report = _json(capsys, ["ckpt", "inspect", str(run), "--format", "json"])
    assert code == 0 and report["problems"] == []
    assert report["step"] == SHAPE.iteration and report["consumed_samples"] == 2 * SHAPE.iteration
    assert report["topology"] == {"tp": 2, "pp": 2, "dp": 1, "world_size": 4, "zero_stage": 0, "precision": "bf16"}
    assert report["model"] == {"hidden_size": 32, "num_layers": 2, "num_attention_heads": 4,
                               "vocab_size": mw.ORIGINAL_VOCAB, "padded_vocab_size": 256}
    assert [(layer["index"], layer["role"]) for layer in report["layers"]] == [
        (1, "embedding"), (3, "block 0"), (4, "block 1"), (6, "final layernorm")]
    qkv = next(p for p in report["layers"][1]["params"] if p["name"] == "h.0.self_attention.query_key_value.weight")
    assert qkv["shape"] == [96, 32] and qkv["shard_shape"] == [48, 32] and qkv["dtype"] == "bfloat16"
    n_hf = sum(p.numel() for p in torch.nn.ModuleList([_hf_body(megatron_run[1])]).parameters())
    assert report["num_parameters"] == n_hf
    assert len(report["optimizer"]) == 4 and all(o["zero_stage"] is None for o in report["optimizer"])
    assert report["engine"]["iteration"] == SHAPE.iteration and report["engine"]["checkpoint_version"] == 3.0

    code, verified = _json(capsys, ["ckpt", "verify", str(run), "--format", "json"])
    assert code == 0 and verified["ok"] and verified["bytes_hashed"] > 0


def _hf_body(model):
    return model.transformer


def test_verify_names_an_altered_and_a_missing_file(megatron_run, capsys):
    run, _ = megatron_run
    tag_dir = run / "checkpoints" / TAG
    victim = tag_dir / "layer_03-model_01-model_states.pt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside a tensor's bytes: only a CRC (or a hash) sees it
    victim.write_bytes(bytes(data))
    code, verified = _json(capsys, ["ckpt", "verify", str(run), "--format", "json"])
    assert code == 3 and not verified["ok"]
    assert any("layer_03-model_01-model_states.pt" in p for p in verified["results"][0]["problems"])

    (tag_dir / "layer_04-model_00-model_states.pt").unlink()
    code, listed = _json(capsys, ["ckpt", "list", str(run), "--format", "json"])
    assert listed["checkpoints"][0]["state"] == "incomplete"
    assert "layer_04-model_00-model_states.pt: missing" in listed["checkpoints"][0]["problem"]


def test_compare_tp_finds_a_planted_desync_and_surgery_fixes_it(megatron_run, capsys):
    run, _ = megatron_run
    code, clean = _json(capsys, ["ckpt", "compare-tp", str(run), "--format", "json"])
    assert code == 0 and clean["in_sync"]
    # the embedding norm (2), per block 4 norm tensors + 2 row-parallel biases, the final norm (2)
    assert clean["counts"]["weights"]["in_sync"] == 2 + 6 * SHAPE.layers + 2
    mw.plant_desync(run / "checkpoints" / TAG)
    code, bad = _json(capsys, ["ckpt", "compare-tp", str(run), "--format", "json"])
    assert code == 1 and not bad["in_sync"]
    found = {(c["kind"], c["where"], c["name"], tuple(c["differing_ranks"])) for c in bad["out_of_sync"]}
    assert found == {("weights", "layer 03", "input_layernorm.weight", (1,)),
                     ("fp32", "stage 0 dp 0 group 1", "3.input_layernorm.weight", (1,))}
    assert bad["max_abs_diff"]["weights"] == pytest.approx(0.0625, abs=2 ** -7)  # bf16 rounding near 1
    assert bad["max_abs_diff"]["fp32"] == pytest.approx(0.0625, abs=1e-6)

    capsys.readouterr()
    assert bigops_main(["surgery", str(run), "--sync-layernorm", "--yes"]) == 0
    new_tag = (run / "checkpoints" / "latest").read_text().strip()
    assert new_tag != TAG and new_tag.endswith(TAG)
    code, after = _json(capsys, ["ckpt", "compare-tp", str(run), "--format", "json"])
    assert code == 0 and after["in_sync"] and after["tag"] == new_tag
    code, before = _json(capsys, ["ckpt", "compare-tp", str(run), "--tag", TAG, "--format", "json"])
    assert code == 1  # the source tag is never modified
    code, verified = _json(capsys, ["ckpt", "verify", str(run), "--all", "--format", "json"])
    assert code == 0 and verified["ok"] and len(verified["results"]) == 2
    code, report = _json(capsys, ["ckpt", "inspect", str(run), "--format", "json"])
    assert report["step"] == SHAPE.iteration and report["topology"]["tp"] == 2 and report["problems"] == []


def test_export_hf_reproduces_the_transformers_model(megatron_run, tmp_path, capsys):
    """fp32 export of bf16-exact weights: the same numbers, so the exported model's logits equal the
    source model's up to fp32 summation order (both run transformers' BLOOM: measured 0; allowed 1e-5)."""
    from transformers import BloomForCausalLM
    run, model = megatron_run
    out = tmp_path / "hf"
    assert bigops_main(["ckpt", "export-hf", str(run), str(out), "--dtype", "fp32"]) == 0
    exported = BloomForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, mw.ORIGINAL_VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = model(ids).logits, exported(ids).logits
    assert got.shape == expected.shape == (2, 16, SHAPE.padded_vocab)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    for name, p in model.state_dict().items():
        assert torch.equal(exported.state_dict()[name], p), name


# ----------------------------------------------------------------------------------------- --init-megatron

def init_config(tp: int, pp: int):
    from trainer import config as config_mod
    cfg = config_mod.preset("tiny")
    cfg.model = config_mod.ModelConfig(hidden_size=SHAPE.hidden, num_layers=SHAPE.layers,
                                       num_attention_heads=SHAPE.heads, vocab_size=SHAPE.padded_vocab)
    cfg.parallel = config_mod.ParallelConfig(tp=tp, pp=pp, dp=1)
    cfg.train = config_mod.TrainConfig(seq_length=16, micro_batch_size=2, global_batch_size=4, train_steps=1,
                                       lr=1e-3, min_lr=1e-4, warmup_steps=1, precision="fp32", seed=5)
    cfg.data.source = "synthetic"
    return cfg


def transformers_loss(model, cfg) -> float:
    """The loss of the run's first global batch (positions 0..G-1 of the synthetic stream) under the
    transformers model: mean cross-entropy over every token, as the micro-batches' mean of means."""
    from trainer.data.synthetic import synthetic_sample
    tokens = torch.stack([synthetic_sample(i, cfg.train.seq_length, cfg.model.vocab_size, cfg.train.seed)
                          for i in range(cfg.train.global_batch_size)])
    with torch.no_grad():
        logits = model(tokens[:, :-1]).logits.float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1)).item()


def test_init_megatron_starts_a_run_from_the_checkpoint_at_another_layout(megatron_run, tmp_path):
    """From the TP 2 x PP 2 Megatron-DeepSpeed checkpoint into a TP 1 x PP 2 run: the first step's loss is
    the transformers model's on the same batch. fp32 on both sides with the same (bf16-exact) weights; they
    differ in summation order only (measured about 1e-7 relative); allowed 1e-5 relative."""
    from tests.distributed.ranks import run_ranks
    run, model = megatron_run
    cfg = init_config(tp=1, pp=2)
    records = run_ranks(tmp_path / "fresh", cfg, 2, ["--init-megatron", str(run / "checkpoints")], timeout=600)
    assert records[0]["step"] == 1 and records[0]["consumed_samples"] == cfg.train.global_batch_size
    expected = transformers_loss(model, cfg)
    assert records[0]["loss"] == pytest.approx(expected, rel=1e-5), (records[0]["loss"], expected)


def test_init_megatron_refuses_a_model_shape_that_does_not_fit(megatron_run, tmp_path):
    from launcher.plan import launch_plan
    from trainer.config import ConfigError
    from trainer.rundir import RunDir
    run, _ = megatron_run
    new = RunDir(tmp_path / "new")
    plan = launch_plan(new, "tiny", None, ["data.source=synthetic"], init_megatron=run / "checkpoints" / TAG)
    assert (plan.cfg.model.hidden_size, plan.cfg.model.num_layers, plan.cfg.model.num_attention_heads) == (32, 2, 4)
    with pytest.raises(ConfigError, match=r"^model.num_layers=3 but the Megatron-DeepSpeed checkpoint has 2: "
                                          r"set model.num_layers=2$"):
        launch_plan(new, "tiny", None, ["model.num_layers=3"], init_megatron=run / "checkpoints")
    from trainer.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="written by Megatron-DeepSpeed, not bigops: a run cannot resume "
                                              "from it; start a new run from its weights with --init-megatron"):
        launch_plan(RunDir(run), "tiny", None, [])


def test_launch_refuses_in_one_line(megatron_run, tmp_path, capsys):
    run, _ = megatron_run
    capsys.readouterr()
    code = bigops_main(["launch", "--run-dir", str(tmp_path / "new"), "--init-megatron", str(run / "checkpoints"),
                        "--set", "model.hidden_size=64"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "model.hidden_size=64 but the Megatron-DeepSpeed checkpoint has 32: set model.hidden_size=32" in err
    code = bigops_main(["launch", "--run-dir", str(tmp_path / "new2"), "--init-megatron", str(run / "checkpoints"),
                        "--init-hf", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--init-hf and --init-megatron: start from one checkpoint" in err
    (run / "checkpoints" / TAG / "layer_03-model_01-model_states.pt").unlink()
    code = bigops_main(["launch", "--run-dir", str(tmp_path / "new3"), "--init-megatron", str(run / "checkpoints")])
    err = capsys.readouterr().err.strip()
    assert code == 3 and "is incomplete or damaged: layer_03-model_01-model_states.pt: missing" in err
