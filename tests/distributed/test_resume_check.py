"""The resume's hash check on real ranks (TP 2 x PP 2, gloo): a stamped checkpoint is not read to be trusted, a
file rewritten since its stamp is hashed again (alone), an unstamped checkpoint is hashed by the ranks, each its
own files, and a bit flip in a file only one rank loads is found by that rank, refused on every rank, and the run
falls back to the checkpoint before."""

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
ONLY_RANK_1 = "mp_rank_01_model_states.pt"
"""The engine file of model-parallel rank 1 (stage 0, TP rank 1): global rank 1 alone loads it."""


def launch(run: RunDir, cfg: config_mod.RunConfig) -> subprocess.CompletedProcess:
    run.root.mkdir(parents=True, exist_ok=True)
    run.run_toml.write_text(config_mod.dumps_toml(cfg))
    proc = subprocess.run(rank_command(run.root, 4, free_port()), env=rank_env(4), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"ranks failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def stamp(run: RunDir, tag: str) -> None:
    """What the watchdog's verifier does after a save (here for a tag that is not ``latest`` any more)."""
    latest = run.latest.read_text()
    run.latest.write_text(tag + "\n")
    verifier = Verifier(run)
    verifier.poll()
    verifier.wait(60)
    run.latest.write_text(latest)
    assert verified.check(run.checkpoint(tag)).fully_verified


def flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))


def test_the_ranks_hash_only_what_the_stamp_does_not_vouch_for_and_a_flip_is_found_by_the_rank_that_loads_it(
        tmp_path):
    run = RunDir(tmp_path / "run")
    cfg = small_config(2, 2)
    cfg.train.save_interval, cfg.train.train_steps = 1, 3
    launch(run, cfg)
    assert ckpt.complete_tags(run) == ["global_step1", "global_step2", "global_step3"]
    step2, step3 = run.checkpoint("global_step2"), run.checkpoint("global_step3")
    files2 = ckpt.read_manifest(step2)["files"]
    # global_step1 and global_step3 are stamped by the watchdog's verifier; global_step2 is not (no time for it)
    stamp(run, "global_step1")
    stamp(run, "global_step3")
    flip(step3 / ONLY_RANK_1)  # after its stamp: its mtime moves
    flip(step2 / ONLY_RANK_3)  # no stamp: only a hash finds it

    cfg.train.train_steps = 4
    proc = launch(run, cfg)
    assert f"checkpoint global_step3 is unusable (rank 1: {ONLY_RANK_1}: sha256 differs (altered)); resuming from " \
           f"global_step1" in proc.stderr
    checks = [r for r in read_jsonl(run.checkpoint_log) if r["kind"] == "check"][-3:]
    # global_step3: only the file changed since the stamp is hashed, by the one rank that loads it
    assert (checks[0]["tag"], checks[0]["files_hashed"]) == ("global_step3", 1)
    assert checks[0]["problems"] == [f"rank 1: {ONLY_RANK_1}: sha256 differs (altered)"]
    # global_step2, unstamped: every file hashed once, over the ranks; only rank 3 saw the damage
    assert checks[1]["tag"] == "global_step2" and checks[1]["files_hashed"] == len(files2)
    assert checks[1]["bytes_hashed"] == sum(m["size"] for m in files2.values())
    assert checks[1]["problems"] == [f"rank 3: {ONLY_RANK_3}: sha256 differs (altered)"]
    # global_step1, stamped: not a byte read to trust it
    assert (checks[2]["tag"], checks[2]["files_hashed"], checks[2]["bytes_hashed"], checks[2]["problems"]) == \
           ("global_step1", 0, 0, [])
    assert [r["tag"] for r in read_jsonl(run.checkpoint_log) if r["kind"] == "load"][-1] == "global_step1"
    assert [r["step"] for r in read_jsonl(run.metrics)][-3:] == [2, 3, 4]  # trained again from step 1
    # what the ranks found went into the damaged copies' stamps, so the re-saves of steps 2 and 3 set them aside
    # without hashing them again (a restart before that would have refused them the same way)
    aside = sorted((run.checkpoints / ckpt.SUPERSEDED).iterdir())
    assert [p.name.rsplit("-", 1)[0] for p in aside] == ["global_step2", "global_step3"]
    for copy, name in zip(aside, (ONLY_RANK_3, ONLY_RANK_1)):
        assert json.loads((copy / "verified.json").read_text())["result"] == "damaged"
        assert verified.check(copy).problems == [f"{name}: sha256 differs (altered)"]
    assert ckpt.verify(step2) == [] and ckpt.verify(step3) == []  # the new saves
