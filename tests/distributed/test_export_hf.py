"""Export round trip: a TP=2 x PP=2 run's checkpoint, exported by `bigops ckpt export-hf`, loads in
transformers and reproduces the logits the distributed model computes from the same checkpoint; the export
is what the HF ecosystem loads as is: AutoTokenizer with the run's tokenizer and its special tokens,
pipeline("text-generation") on a left-padded batch, generation_config.json, files 0644."""

import json
import os
import subprocess
import sys

import pytest
import torch

from bigops.cli.main import main as bigops_main
from launcher.local import free_port, rank_env
from tests.distributed.ranks import run_ranks
from trainer import config as config_mod

pytestmark = pytest.mark.distributed


def small_config(tp: int, pp: int, precision: str = "fp32") -> config_mod.RunConfig:
    cfg = config_mod.preset("tiny")
    cfg.model = config_mod.ModelConfig(hidden_size=48, num_layers=3, num_attention_heads=6, vocab_size=500)
    cfg.parallel = config_mod.ParallelConfig(tp=tp, pp=pp, dp=1)
    cfg.train = config_mod.TrainConfig(seq_length=16, micro_batch_size=2, global_batch_size=4, train_steps=3,
                                       lr=1e-2, warmup_steps=0, precision=precision)
    cfg.data.source = "synthetic"
    return cfg


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A TP 2 x PP 2 run on real text: its own byte-level BPE (``<unk> <s> </s> <pad>``) in RUN/data."""
    run = tmp_path_factory.mktemp("tp2pp2") / "run"
    cfg = small_config(2, 2)
    cfg.data.source, cfg.data.max_corpus_bytes = "stdlib", 200_000
    run_ranks(run, cfg, 4)
    return run


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """``bigops ckpt export-hf`` of the run under umask 022, and what it said on stderr."""
    import contextlib
    import io
    out = tmp_path_factory.mktemp("export") / "hf"
    previous, err = os.umask(0o022), io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            assert bigops_main(["ckpt", "export-hf", str(trained_run), str(out)]) == 0
    finally:
        os.umask(previous)
    return out, err.getvalue()


def test_export_round_trip_reproduces_distributed_logits(trained_run, exported, tmp_path):
    from transformers import BloomForCausalLM

    out, _ = exported
    ids = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(5))
    torch.save(ids, tmp_path / "ids.pt")
    script = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=4", "--master-addr=127.0.0.1",
              f"--master-port={free_port()}", "tests/distributed/eval_logits.py", str(trained_run),
              str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")]
    proc = subprocess.run(script, env=rank_env(4), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    distributed = torch.load(tmp_path / "logits.pt", weights_only=True)

    model = BloomForCausalLM.from_pretrained(out).eval()
    assert model.config.vocab_size == 512  # 500 padded to a multiple of 128 x TP 2 = 256
    with torch.no_grad():
        reference = model(ids).logits
    assert reference.shape == distributed.shape == (2, 16, 512)
    rel = ((reference - distributed).abs().max() / reference.abs().max()).item()
    assert rel <= 1e-5, f"max relative error {rel:.2e}"


def test_the_export_holds_the_tokenizer_and_generation_config_all_readable(exported):
    out, err = exported
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in out.iterdir()}
    assert modes == dict.fromkeys(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                   "special_tokens_map.json", "generation_config.json"], "0o644")
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    assert "exporting: layer 5/5" in err, err  # the progress line's last state (not a terminal: plain lines)
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    for ids in (config, generation):
        assert (ids["bos_token_id"], ids["eos_token_id"], ids["pad_token_id"]) == (1, 2, 3)


def test_auto_tokenizer_round_trips_the_special_tokens(exported):
    from transformers import AutoTokenizer

    out, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(out)
    roles = ("bos_token", "eos_token", "pad_token", "unk_token")
    assert [getattr(tokenizer, r) for r in roles] == ["<s>", "</s>", "<pad>", "<unk>"]
    assert [getattr(tokenizer, f"{r}_id") for r in roles] == [1, 2, 3, 0]
    assert tokenizer.padding_side == "left"
    ids = tokenizer("import json</s>")["input_ids"]
    assert ids[-1] == 2 and tokenizer.decode(ids) == "import json</s>"  # one token each way
    assert tokenizer.decode(ids, skip_special_tokens=True) == "import json"
    tokenizer.save_pretrained(out.parent / "saved-again")
    assert AutoTokenizer.from_pretrained(out.parent / "saved-again").pad_token_id == 3


def test_pipeline_generates_for_a_left_padded_batch(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    out, _ = exported
    prompts = ["def", "The json module encodes and decodes"]  # of different lengths: one is padded
    generator = pipeline("text-generation", model=str(out))
    results = generator(prompts, batch_size=2, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                        return_full_text=False)
    texts = [r[0]["generated_text"] for r in results]
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts), texts

    # The padding is right, not just accepted: the last position of each padded row gives the logits the
    # prompt gives alone.
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out).eval()
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["input_ids"][0, 0] == tokenizer.pad_token_id
    with torch.no_grad():
        padded = model(**batch).logits[:, -1]
        alone = torch.stack([model(**tokenizer(p, return_tensors="pt")).logits[0, -1] for p in prompts])
    assert torch.allclose(padded, alone, atol=1e-4, rtol=1e-4), (padded - alone).abs().max()


def test_export_refuses_existing_directory(trained_run, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert bigops_main(["ckpt", "export-hf", str(trained_run), str(out)]) == 4
    assert (out / "keep.txt").read_text() == "mine"
    assert "already exists" in capsys.readouterr().err


def test_export_names_a_missing_shard(trained_run, tmp_path, capsys):
    import shutil
    damaged = tmp_path / "damaged"
    shutil.copytree(trained_run, damaged)
    tag = (damaged / "checkpoints" / "latest").read_text().strip()
    (damaged / "checkpoints" / tag / "layer_03-model_01-model_states.pt").unlink()
    assert bigops_main(["ckpt", "export-hf", str(damaged), str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert "layer_03-model_01-model_states.pt: missing" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))  # no partial export left


def test_export_bf16_checkpoint_keeps_its_dtype(tmp_path, capsys):
    """Also a run without a tokenizer (synthetic data): the weights are exported, with a warning."""
    from safetensors import safe_open
    run = tmp_path / "bf16"
    run_ranks(run, small_config(2, 1, precision="bf16"), 2)
    assert bigops_main(["ckpt", "export-hf", str(run), str(tmp_path / "hf")]) == 0
    assert "warning: the run has no tokenizer" in capsys.readouterr().err
    assert sorted(f.name for f in (tmp_path / "hf").iterdir()) == ["config.json", "generation_config.json",
                                                                   "model.safetensors"]
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("transformer.h.0.input_layernorm.weight").dtype == torch.bfloat16
