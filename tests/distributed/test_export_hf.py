"""Export round trip: a TP=2 x PP=2 run's checkpoint, exported by `bigops ckpt export-hf`, loads in
transformers and reproduces the logits the distributed model computes from the same checkpoint."""

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
    run = tmp_path_factory.mktemp("tp2pp2") / "run"
    run_ranks(run, small_config(2, 2), 4)
    return run


def test_export_round_trip_reproduces_distributed_logits(trained_run, tmp_path):
    from transformers import BloomForCausalLM

    out = tmp_path / "hf"
    assert bigops_main(["ckpt", "export-hf", str(trained_run), str(out)]) == 0
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


def test_export_bf16_checkpoint_keeps_its_dtype(tmp_path):
    from safetensors import safe_open
    run = tmp_path / "bf16"
    run_ranks(run, small_config(2, 1, precision="bf16"), 2)
    assert bigops_main(["ckpt", "export-hf", str(run), str(tmp_path / "hf")]) == 0
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("transformer.h.0.input_layernorm.weight").dtype == torch.bfloat16
