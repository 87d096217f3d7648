"""`bigops ckpt inspect | list | verify | prune` on the checkpoints of a real TP=2 x PP=2 training run."""

import json
import shutil

import pytest
import torch

from bigops.cli.main import main as bigops_main
from tests.distributed.ranks import run_ranks
from tests.distributed.test_export_hf import small_config
from trainer import checkpoint as ckpt
from trainer.model.bloom import BloomForCausalLM
from trainer.rundir import RunDir, read_jsonl

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 4-rank run of 3 steps, saving after every step: global_step1..3."""
    cfg = small_config(2, 2)
    cfg.train.save_interval = 1
    run = tmp_path_factory.mktemp("ckpt-tools") / "run"
    run_ranks(run, cfg, 4)
    return run, cfg


def inspect_json(run, capsys, *extra) -> dict:
    assert bigops_main(["ckpt", "inspect", str(run), "--format", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_reports_topology_and_the_model_parameters(trained, capsys):
    run, cfg = trained
    report = inspect_json(run, capsys)
    assert report["tag"] == "global_step3" and report["step"] == 3 and report["problems"] == []
    assert report["topology"] == {"tp": 2, "pp": 2, "dp": 1, "world_size": 4, "zero_stage": cfg.parallel.zero_stage,
                                  "precision": "fp32"}
    with torch.device("meta"):
        model = BloomForCausalLM(cfg.model, cfg.padded_vocab_size)
    expected = {name: list(p.shape) for name, p in model.named_parameters()}
    found = {p["name"]: p["shape"] for layer in report["layers"] for p in layer["params"]}
    assert found == expected
    assert report["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert [layer["role"] for layer in report["layers"]] == ["embedding", "block 0", "block 1", "block 2",
                                                             "final layernorm"]
    assert [layer["index"] for layer in report["layers"]] == [1, 3, 4, 5, 7]  # Megatron-DeepSpeed's numbering
    assert all(layer["tp_files"] == 2 for layer in report["layers"])
    qkv = next(p for layer in report["layers"] for p in layer["params"]
               if p["name"] == "h.0.self_attention.query_key_value.weight")
    assert qkv["split_dim"] == 0 and qkv["shard_shape"] == [72, 48] and qkv["dtype"] == "float32"

    kinds = {}
    for f in report["files"]:
        kinds.setdefault(f["kind"], []).append(f)
    assert len(kinds["layer weights"]) == 10 and len(kinds["engine state"]) == 4
    assert len(kinds["optimizer state"]) == 4 and len(kinds["rng"]) == 4
    assert {(f["pp_stage"], f["tp_rank"]) for f in kinds["engine state"]} == {(0, 0), (0, 1), (1, 0), (1, 1)}

    # The optimizer's flat fp32 partitions hold every TP rank's part: TP-duplicated tensors once per TP rank,
    # and the tied embedding module (with its norm) a second time on the last stage. Adam's moments have the
    # partitions' shapes.
    tp = 2
    per_rank_copies = sum(p["numel"] * (1 if p["split_dim"] is not None else tp)
                          for layer in report["layers"] for p in layer["params"])
    embedding = expected["word_embeddings.weight"][0] * expected["word_embeddings.weight"][1] + tp * 2 * 48
    optim = report["optimizer"]
    assert sum(o["fp32_numel"] for o in optim) == per_rank_copies + embedding
    for o in optim:
        assert o["zero_stage"] == cfg.parallel.zero_stage and o["dp_rank"] == 0
        for g in o["groups"]:
            assert g["exp_avg"] == g["exp_avg_sq"] == g["fp32_partition"] and g["adam_step"] == 3


def test_inspect_text_and_an_older_tag(trained, capsys):
    run, _ = trained
    assert bigops_main(["ckpt", "inspect", str(run), "--tag", "global_step1", "--no-params"]) == 0
    out = capsys.readouterr().out
    assert "global_step1 step 1" in out and "TP=2 PP=2 DP=1" in out and "ZeRO stage 1" in out


def test_inspect_names_a_damaged_file(trained, tmp_path, capsys):
    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    victim = copy / "checkpoints" / "global_step3" / "layer_03-model_01-model_states.pt"
    victim.write_bytes(victim.read_bytes()[:100])
    report = inspect_json(copy, capsys)
    assert any("layer_03-model_01-model_states.pt" in p for p in report["problems"])


def test_list_verify_and_prune_a_real_run(trained, tmp_path, capsys):
    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert bigops_main(["ckpt", "list", str(copy), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(c["tag"], c["complete"], c["latest"]) for c in listed["checkpoints"]] == [
        ("global_step1", True, False), ("global_step2", True, False), ("global_step3", True, True)]

    assert bigops_main(["ckpt", "verify", str(copy), "--all", "--format", "json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    manifest = ckpt.read_manifest(copy / "checkpoints" / "global_step3")
    by_tag = {r["tag"]: r for r in verified["results"]}
    assert by_tag["global_step3"]["bytes_hashed"] == sum(m["size"] for m in manifest["files"].values())

    victim = copy / "checkpoints" / "global_step2" / "zero_pp_rank_0_mp_rank_03_optim_states.pt"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert bigops_main(["ckpt", "verify", str(copy), "--tag", "global_step2"]) == 3
    assert "zero_pp_rank_0_mp_rank_03_optim_states.pt: sha256 differs" in capsys.readouterr().out

    assert bigops_main(["ckpt", "prune", str(copy), "--keep-last", "1", "--keep-every", "2", "--yes"]) == 0
    capsys.readouterr()
    assert ckpt.complete_tags(RunDir(copy)) == ["global_step2", "global_step3"]
    assert read_jsonl(copy / "events.jsonl")[-1]["removed"] == ["global_step1"]
