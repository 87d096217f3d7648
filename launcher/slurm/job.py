"""What every job of a chain runs before and after its ranks (called by the rendered batch script).

``python -m launcher.slurm.job start RUN``: record the job's start (and when it was submitted: the first job's
wait in the queue) in ``RUN/slurm/jobs/<job id>.json``,
drop the previous job's ``telemetry/exit.json``, and tokenize the data if no job did yet.

``python -m launcher.slurm.job end RUN --srun-rc RC``: add the trainer's exit code to the record; when the
run finished or was stopped on request, cancel the chain's pending jobs (nothing left to resume). Exits with
the trainer's code, so SLURM's own state agrees with ``trainer.exitcodes``.

The records are how the chain keeper tells a clean end from a time-out from a crash without ``sacct``: a
job that left SLURM's queue with a start record and no end record was killed (scancel, node failure, limit).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from trainer import exitcodes
from trainer.rundir import RunDir, atomic_write_text

END_CHAIN = (exitcodes.FINISHED, exitcodes.STOPPED_ON_REQUEST)


def jobs_dir(run: RunDir) -> Path:
    return run.slurm_jobs


def checkpoint_step(run: RunDir) -> int | None:
    """The step of ``checkpoints/latest`` from its tag (``global_stepN``), None without one."""
    tag = run.latest_tag()
    match = re.search(r"(\d+)$", tag or "")
    return int(match.group(1)) if match else None


def job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", f"local-{os.getpid()}")


def _record_path(run: RunDir) -> Path:
    return run.slurm_job(job_id())


def submitted_at(slurm_job_id: str | None) -> float | None:
    """When SLURM accepted the job (``squeue -o %V``, the controller's local time), as unix time; None when
    SLURM cannot say (no job id, squeue missing or failing: the record is written without it)."""
    if not slurm_job_id:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", slurm_job_id, "-o", "%V"], capture_output=True, text=True,
                             timeout=30)
        return time.mktime(time.strptime(out.stdout.strip().splitlines()[0], "%Y-%m-%dT%H:%M:%S"))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError, OverflowError):
        return None


def start(run: RunDir) -> None:
    started = time.time()
    record = {"job_id": job_id(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
              "name": os.environ.get("SLURM_JOB_NAME"), "nodes": os.environ.get("SLURM_JOB_NODELIST"),
              "start": started, "submitted": submitted_at(os.environ.get("SLURM_JOB_ID")),
              "from_step": checkpoint_step(run)}
    atomic_write_text(_record_path(run), json.dumps(record) + "\n")
    run.exit_record.unlink(missing_ok=True)
    from trainer.rundir import make_dir
    make_dir(run.logs, tighten=True)
    from trainer.rundir import load_run_config
    cfg = load_run_config(run)
    if cfg.data.source != "synthetic":
        from trainer.data.source import prepare_data
        prepare_data(run, cfg)


def end(run: RunDir, srun_rc: int) -> int:
    code, message = exitcodes.read(run.exit_record, srun_rc)
    path = _record_path(run)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {"job_id": job_id()}
    record.update(end=time.time(), srun_rc=srun_rc, code=code, reason=exitcodes.describe(code), message=message,
                  to_step=checkpoint_step(run))
    name = os.environ.get("SLURM_JOB_NAME")
    if code in END_CHAIN and name:
        # Nothing left to resume: the pending jobs would only start, see the end, and exit.
        done = subprocess.run(["scancel", "--state=PENDING", f"--name={name}", f"--user={getpass.getuser()}"],
                              capture_output=True, text=True, timeout=60)
        record["cancelled_rest"] = done.returncode == 0
    atomic_write_text(path, json.dumps(record) + "\n")
    print(f"bigops: job {record['job_id']} ended: {exitcodes.describe(code)} (checkpoint step {record['to_step']})",
          flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bigops SLURM job hooks")
    parser.add_argument("what", choices=("start", "end"))
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--srun-rc", type=int, default=0)
    args = parser.parse_args(argv)
    run = RunDir(args.run_dir)
    if args.what == "start":
        start(run)
        return 0
    return end(run, args.srun_rc)


if __name__ == "__main__":
    sys.exit(main())
