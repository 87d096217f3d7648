"""Run real ranks of ``trainer.train`` under torchrun (gloo) for a test, and read what they wrote."""

from __future__ import annotations

import subprocess
from pathlib import Path

from launcher.local import free_port, rank_command, rank_env
from trainer import config as config_mod
from trainer.rundir import RunDir, read_jsonl


def run_ranks(run_dir: Path, cfg: config_mod.RunConfig, nproc: int, trainer_args: list[str] = (),
              timeout: float = 300) -> list[dict]:
    """Write ``run.toml``, run ``nproc`` ranks to completion, return the metrics records."""
    run = RunDir(run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    run.run_toml.write_text(config_mod.dumps_toml(cfg))
    proc = subprocess.run(rank_command(run_dir, nproc, free_port(), list(trainer_args)), env=rank_env(nproc),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"ranks failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return read_jsonl(run.metrics)
