"""The resume's hash check on real ranks (TP 2 x PP 2, gloo): a stamped checkpoint is not read to be trusted, an
unstamped one is hashed by the ranks, each its own files, and a bit flip in a file only one rank loads is found
by that rank, refused on every rank, and the run falls back to the checkpoint before."""

import json
import subprocess

import pytest

from bigops.watchdog.verifier import Verifier
from launcher.local import free_port, rank_command, rank_env
from tests.distributed.test_export_hf import small_config
from trainer import checkpoint as ckpt
from trainer import config as config_mod
from trainer import verified
from trainer.rundir import RunDir, read_jsonl

pytestmark = pytest.mark.distributed

ONLY_RANK_3 = "zero_pp_rank_0_mp_rank_03_optim_states.pt"
"""The optimizer shard of model-parallel rank 3 (stage 1, TP rank 1) at DP 1: global rank 3 alone loads it."""


def launch(run: RunDir, cfg: config_mod.RunConfig) -> subprocess.CompletedProcess:
    run.root.mkdir(parents=True, exist_ok=True)
    run.run_toml.write_text(config_mod.dumps_toml(cfg))
    proc = subprocess.run(rank_command(run.root, 4, free_port()), env=rank_env(4), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"ranks failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_stamped_is_trusted_unstamped_is_hashed_by_the_ranks_and_a_flip_only_rank_3_loads_falls_back(tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = small_config(2, 2)
    cfg.train.save_interval, cfg.train.train_steps = 1, 2
    launch(run, cfg)
    assert ckpt.complete_tags(run) == ["global_step1", "global_step2"]
    step1, step2 = run.checkpoint("global_step1"), run.checkpoint("global_step2")
    # global_step1 is stamped by the watchdog's verifier; global_step2 is not (as if the watchdog had no time)
    stamper = Verifier(run)
    stamper.run.latest.write_text("global_step1\n")
    stamper.poll()
    stamper.wait(60)
    run.latest.write_text("global_step2\n")
    assert verified.check(step1).fully_verified and verified.read(step2) is None
    files2 = ckpt.read_manifest(step2)["files"]
    victim = step2 / ONLY_RANK_3
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x20
    victim.write_bytes(bytes(data))

    cfg.train.train_steps = 3
    proc = launch(run, cfg)
    assert f"checkpoint global_step2 is unusable (rank 3: {ONLY_RANK_3}: sha256 differs (altered)); resuming from " \
           f"global_step1" in proc.stderr
    records = read_jsonl(run.checkpoint_log)
    checks = [r for r in records if r["kind"] == "check"]
    first, second = checks[-2], checks[-1]
    # the unstamped one: every file hashed once, over the ranks; only rank 3 saw the damage
    assert first["tag"] == "global_step2" and first["files_hashed"] == len(files2)
    assert first["bytes_hashed"] == sum(m["size"] for m in files2.values())
    assert first["problems"] == [f"rank 3: {ONLY_RANK_3}: sha256 differs (altered)"]
    # the stamped one: not a byte read to trust it
    assert (second["tag"], second["files_hashed"], second["bytes_hashed"], second["problems"]) == \
           ("global_step1", 0, 0, [])
    assert [r["tag"] for r in records if r["kind"] == "load"][-1] == "global_step1"
    assert [r["step"] for r in read_jsonl(run.metrics)][-2:] == [2, 3]  # steps 2 and 3 trained again from step 1
    # what the ranks found went into the damaged copy's stamp, so the re-save of step 2 set it aside without
    # hashing it again (and a restart before that would have refused it the same way)
    (aside,) = (run.checkpoints / ckpt.SUPERSEDED).iterdir()
    stamp = json.loads((aside / "verified.json").read_text())
    assert stamp["result"] == "damaged" and stamp["files"][ONLY_RANK_3]["ok"] is False
    assert verified.check(aside).problems == [f"{ONLY_RANK_3}: sha256 differs (altered)"]
    assert ckpt.verify(step2) == []  # the new save of step 2
