"""TP layer-norm desync, found and repaired: offline (`bigops ckpt compare-tp`, `bigops surgery
--sync-layernorm`) on real TP=2 x PP=2 bf16 checkpoints (ZeRO-1 and the ZeRO-0 BF16 optimizer), and live
(`control/sync-layernorm`) on a running 4-rank job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bigops.checkpoint import dsfiles
from bigops.cli.main import main as bigops_main
from launcher.local import free_port, rank_command, rank_env
from tests.distributed.ranks import run_ranks
from trainer import checkpoint as ckpt
from trainer import config as config_mod
from trainer.rundir import RunDir, read_jsonl

pytestmark = pytest.mark.distributed

# What the test knocks out of sync on TP rank 1: (layer file, key) in the weights, and the optimizer name
# (pipeline layer index + key) of the same tensors in the fp32 master and moments.
# Megatron-DeepSpeed's numbering (trainer.layout): block 0 is layer 3, block 2 layer 5, the final norm (keyed
# just weight / bias) layer 7 of this 3-block model.
DESYNCED_WEIGHTS = {(3, "input_layernorm.weight"), (5, "self_attention.dense.bias"), (7, "bias")}
DESYNCED_OPTIM = {"3.input_layernorm.weight", "5.self_attention.dense.bias", "7.bias"}


def small_config(zero_stage: int, steps: int) -> config_mod.RunConfig:
    cfg = config_mod.preset("tiny")
    cfg.model = config_mod.ModelConfig(hidden_size=48, num_layers=3, num_attention_heads=6, vocab_size=500)
    cfg.parallel = config_mod.ParallelConfig(tp=2, pp=2, dp=1, zero_stage=zero_stage)
    cfg.train = config_mod.TrainConfig(seq_length=16, micro_batch_size=2, global_batch_size=4, train_steps=steps,
                                       lr=1e-2, warmup_steps=0, precision="bf16", save_interval=0,
                                       ln_desync_interval=1)
    cfg.data.source = "synthetic"
    return cfg


@torch.no_grad()
def desync_on_tp_rank1(path) -> None:
    """Edit a complete checkpoint as a drifted run would have saved it, and re-seal its manifest."""
    layout = dsfiles.scan(path, 2, 2, 1)
    for layer, key in DESYNCED_WEIGHTS:
        f = layout.layer_files[layer][1]
        sd = dsfiles.load(f, mmap=False)
        sd[key] += 0.02
        torch.save(sd, f)
    for files in layout.optim_files.values():
        sd = dsfiles.load(files[1], mmap=False)
        osd = sd["optimizer_state_dict"]
        for group, mapping in enumerate(osd["param_slice_mappings"]):
            for name, address in mapping.items():
                if name in DESYNCED_OPTIM:
                    osd["single_partition_of_fp32_groups"][group].narrow(0, address.start, address.numel).add_(0.02)
                    state = osd["base_optimizer_state"]["state"][group]
                    state["exp_avg"].narrow(0, address.start, address.numel).mul_(2.0)
                    state["exp_avg_sq"].narrow(0, address.start, address.numel).mul_(3.0)
        torch.save(sd, files[1])
    manifest = ckpt.read_manifest(path)
    ckpt.write_manifest(path, manifest["tag"], {k: v for k, v in manifest.items()
                                                 if k not in ("files", "tag", "created", "format")})


def compare_tp_json(run, capsys, tag=None) -> tuple[int, dict]:
    capsys.readouterr()
    code = bigops_main(["ckpt", "compare-tp", str(run), "--format", "json", *(["--tag", tag] if tag else [])])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def flat_tensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, by file and key (optimizer partitions included)."""
    out = {}
    for f in sorted(path.glob("*.pt")):
        if f.name.startswith("rng_state"):
            continue
        sd = dsfiles.load(f, mmap=False)
        if "optimizer_state_dict" in sd:
            osd = sd["optimizer_state_dict"]
            for g, flat in enumerate(osd["single_partition_of_fp32_groups"]):
                out[f"{f.name}:fp32:{g}"] = flat.detach()
                for k in ("exp_avg", "exp_avg_sq"):
                    out[f"{f.name}:{k}:{g}"] = osd["base_optimizer_state"]["state"][g][k]
        else:
            for k, v in sd.items():
                if torch.is_tensor(v):
                    out[f"{f.name}:{k}"] = v
    return out


@pytest.mark.parametrize("zero_stage", [1, 0])
def test_compare_tp_and_sync_layernorm_surgery(tmp_path, capsys, zero_stage):
    run = tmp_path / "run"
    run_ranks(run, small_config(zero_stage, steps=3), 4)
    source = RunDir(run).checkpoint("global_step3")
    code, report = compare_tp_json(run, capsys)
    assert code == 0 and report["in_sync"], report

    desync_on_tp_rank1(source)
    code, report = compare_tp_json(run, capsys)
    assert code == 1
    found = {(c["kind"], c["name"]) for c in report["out_of_sync"]}
    expected = {("weights", k) for _, k in DESYNCED_WEIGHTS} | {
        (kind, n) for n in DESYNCED_OPTIM for kind in ("fp32", "exp_avg", "exp_avg_sq")}
    assert found == expected
    assert all(c["differing_ranks"] == [1] for c in report["out_of_sync"])
    hashes_before = {f: m["sha256"] for f, m in ckpt.read_manifest(source)["files"].items()}
    before = flat_tensors(source)

    assert bigops_main(["surgery", str(run), "--sync-layernorm", "--dry-run"]) == 0
    assert RunDir(run).latest_tag() == "global_step3"
    assert bigops_main(["surgery", str(run), "--sync-layernorm", "--yes"]) == 0
    new_tag = RunDir(run).latest_tag()
    assert new_tag == "sync-layernorm-global_step3"
    code, report = compare_tp_json(run, capsys)
    assert code == 0 and report["in_sync"] and sum(c["in_sync"] for c in report["counts"].values()) > 0

    # The source is untouched, byte for byte; the new tag differs only in the desynced tensors.
    assert not ckpt.verify(source, hashes=True)
    assert {f: m["sha256"] for f, m in ckpt.read_manifest(source)["files"].items()} == hashes_before
    after = flat_tensors(RunDir(run).checkpoint(new_tag))
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(("layer_03" in k and "input_layernorm.weight" in k)
                           or ("layer_05" in k and "dense.bias" in k) or ("layer_07" in k and k.endswith("bias"))
                           or ("optim_states" in k and ":fp32:1" in k or ":exp_avg" in k) for k in changed), changed
    for key in changed:  # inside an optimizer partition, only the desynced fragments moved
        if "optim_states" in key:
            differs = (before[key] != after[key]).nonzero().flatten()
            assert differs.numel() <= 3 * 48, key
    events = [e for e in read_jsonl(run / "events.jsonl") if e.get("action") == "surgery"]
    assert events and events[-1]["new_tag"] == new_tag and events[-1]["latest_moved"]

    # Training resumes from the repaired tag and the duplicated parameters stay in sync.
    records = run_ranks(run, small_config(zero_stage, steps=5), 4)
    resumed = [r for r in records if r["step"] > 3]
    assert [r["step"] for r in resumed] == [4, 5]
    assert all(r["ln_desync"] == 0.0 for r in resumed), resumed


def test_surgery_refuses_bad_input_and_survives_sigkill(tmp_path, capsys):
    run = tmp_path / "run"
    run_ranks(run, small_config(1, steps=2), 4)
    rd = RunDir(run)
    source = rd.checkpoint("global_step2")
    desync_on_tp_rank1(source)
    hashes = {f: m["sha256"] for f, m in ckpt.read_manifest(source)["files"].items()}

    # One line, an exit code, nothing written.
    assert bigops_main(["surgery", str(run)]) != 0
    assert bigops_main(["surgery", str(run), "--sync-layernorm", "--yes", "--tag", "../../etc"]) == 3
    assert bigops_main(["surgery", str(run), "--sync-layernorm", "--yes", "--tag", "global_step9"]) == 3
    assert bigops_main(["surgery", str(tmp_path / "nope"), "--sync-layernorm", "--yes"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "does not exist" in err

    # SIGKILL in the middle: the source and latest stay as they were, and the next surgery succeeds.
    env = {**rank_env(1), faults_env(): "0.5"}
    proc = subprocess.Popen([sys.executable, "-m", "bigops.cli.main", "surgery", str(run), "--sync-layernorm",
                             "--yes"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    partial = ckpt.partial_dir(rd, "sync-layernorm-global_step2")
    deadline = time.monotonic() + 60
    while not (partial.is_dir() and any(partial.glob("*.pt"))):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rd.latest_tag() == "global_step2"
    assert not ckpt.verify(source, hashes=True)
    assert {f: m["sha256"] for f, m in ckpt.read_manifest(source)["files"].items()} == hashes
    assert ckpt.find_resumable(rd).tag == "global_step2"
    assert not rd.checkpoint("sync-layernorm-global_step2").exists()

    assert bigops_main(["surgery", str(run), "--sync-layernorm", "--yes"]) == 0
    assert rd.latest_tag() == "sync-layernorm-global_step2" and not partial.exists()

    # Override the LR: checkpoint and run.toml agree, and the resumed steps follow the new schedule.
    assert bigops_main(["surgery", str(run), "--set-lr", "0.003", "--set-min-lr", "0.0001", "--yes"]) == 0
    assert rd.latest_tag() == "set-lr-sync-layernorm-global_step2"
    assert (run / "run.toml.before-set-lr-sync-layernorm-global_step2").exists()
    cfg = config_mod.load_toml(rd.run_toml, base=config_mod.RunConfig())
    assert (cfg.train.lr, cfg.train.min_lr) == (0.003, 0.0001)
    cfg.train.train_steps = 3
    rd.run_toml.write_text(config_mod.dumps_toml(cfg))
    from trainer.ds_config import lr_at
    records = run_ranks(run, cfg, 4)
    assert records[-1]["step"] == 3 and records[-1]["lr"] == pytest.approx(lr_at(cfg, 2), rel=1e-9)

    # A running job is refused (a live local pid in a fresh heartbeat).
    beat = run / "telemetry" / "heartbeat" / "rank-00000.json"
    beat.write_text(json.dumps({"rank": 0, "host": os.uname().nodename, "pid": os.getpid(), "step": 2,
                                "time": time.time(), "phase": "step"}))
    capsys.readouterr()
    assert bigops_main(["surgery", str(run), "--reset-optimizer", "--yes"]) == 5
    assert "--stop-run" in capsys.readouterr().err


def faults_env() -> str:
    from trainer.faults import SURGERY_PAUSE
    return SURGERY_PAUSE


def test_live_sync_layernorm_on_a_running_job(tmp_path):
    """A 4-rank job drifts (fault at step 3); the watchdog's request file brings ln_desync back to 0 in place."""
    run = tmp_path / "run"
    rd = RunDir(run)
    run.mkdir()
    rd.run_toml.write_text(config_mod.dumps_toml(small_config(1, steps=40)))
    env = {**rank_env(4), "BIGOPS_FAULT_DESYNC_AT_STEP": "3"}
    proc = subprocess.Popen(rank_command(run, 4, free_port()), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            records = read_jsonl(rd.metrics) if rd.metrics.exists() else []
            drifted = [r for r in records if r.get("ln_desync", 0) > 0]
            if drifted:
                break
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before drifting"
            time.sleep(0.1)
        (run / "control").mkdir(exist_ok=True)
        (run / "control" / "sync-layernorm").write_text('{"event": "test"}\n')
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    records = read_jsonl(rd.metrics)
    events = [e for e in read_jsonl(run / "events.jsonl") if e.get("action") == "sync-layernorm"]
    assert len(events) == 1 and events[0]["ln_desync_after"] == 0.0 and events[0]["request"] == '{"event": "test"}'
    synced_at = events[0]["step"]
    assert 3 < synced_at < 40
    assert all(r["ln_desync"] > 0 for r in records if 3 < r["step"] <= synced_at)  # drifted after step 3
    after = [r for r in records if r["step"] > synced_at]
    assert after and all(r["ln_desync"] == 0.0 for r in after), after
    assert [r["step"] for r in records] == list(range(1, 41))  # no restart: every step once
    assert not (run / "control" / "sync-layernorm").exists()


def test_sync_every_step_keeps_tp_duplicates_equal(tmp_path):
    """``train.sync_tp_duplicated``: the same drift (fault after step 2) never shows in ln_desync."""
    cfg = small_config(1, steps=5)
    cfg.train.sync_tp_duplicated = True
    run = tmp_path / "run"
    env_before = os.environ.get("BIGOPS_FAULT_DESYNC_AT_STEP")
    os.environ["BIGOPS_FAULT_DESYNC_AT_STEP"] = "2"
    try:
        records = run_ranks(run, cfg, 4)
    finally:
        if env_before is None:
            os.environ.pop("BIGOPS_FAULT_DESYNC_AT_STEP")
        else:
            os.environ["BIGOPS_FAULT_DESYNC_AT_STEP"] = env_before
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert all(r["ln_desync"] == 0.0 for r in records), records


def test_surgery_stop_run_pauses_a_running_job_then_repairs(tmp_path, capsys):
    """`--stop-run`: kill switch, wait for the save and exit, operate, remove the switch; the run resumes."""
    run = tmp_path / "run"
    rd = RunDir(run)
    run.mkdir()
    rd.run_toml.write_text(config_mod.dumps_toml(small_config(1, steps=400)))
    env = {**rank_env(4), "BIGOPS_FAULT_DESYNC_AT_STEP": "2"}
    proc = subprocess.Popen(rank_command(run, 4, free_port()), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (rd.metrics.exists() and any(r["step"] >= 4 for r in read_jsonl(rd.metrics))):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert bigops_main(["surgery", str(run), "--sync-layernorm", "--yes"]) == 5  # refused while it trains
        assert bigops_main(["surgery", str(run), "--sync-layernorm", "--yes", "--stop-run",
                            "--stop-timeout", "120"]) == 0
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    from trainer import exitcodes
    assert exitcodes.read(rd.exit_record, proc.returncode)[0] == exitcodes.STOPPED_ON_REQUEST
    assert not (run / "control" / "kill-switch").exists()
    stopped_at = read_jsonl(rd.metrics)[-1]["step"]
    assert rd.latest_tag() == f"sync-layernorm-global_step{stopped_at}"
    code, report = compare_tp_json(run, capsys)
    assert code == 0 and report["in_sync"]
    cfg = small_config(1, steps=stopped_at + 2)
    records = run_ranks(run, cfg, 4)
    assert [r["step"] for r in records][-2:] == [stopped_at + 1, stopped_at + 2]
    assert records[-1]["ln_desync"] == 0.0
