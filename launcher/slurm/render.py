"""The sbatch script and options of a run's jobs: pure functions of the run config and its cluster profile.

Every job of a chain runs the same script: it resumes from ``checkpoints/latest`` and saves before its time
limit, either when ``train.exit_duration_in_mins`` runs out (derived from ``slurm.time_limit_min``) or when
SLURM's ``--signal=B:USR1@N`` reaches the batch shell, which hands it to the ranks through srun and torchrun.

The options travel as sbatch's arguments, and the same options stand as ``#SBATCH`` lines at the top of the
script, so that a bare ``sbatch RUN/slurm/job.sbatch`` gets the job's resources too (every value was checked
to be one line: none can escape its comment line into the script; one with a blank or a quote, which sbatch's
directive parser would split, stays on the command line only). Inside the script every value comes from
the config through :func:`shlex.quote`; only ``slurm.setup`` is shell code, on purpose.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

from trainer.config import ConfigError, RunConfig, SlurmConfig, world_size_of
from trainer.rundir import RELATIVE, RunDir
from trainer.startup import LAUNCH_TIME_ENV

q = shlex.quote

# What BLOOM learned it needed: crash on a hung or failed collective instead of hanging for hours, and logs
# that name the faulty node. Set on every rank.
NCCL_ENV = {
    "NCCL_ASYNC_ERROR_HANDLING": "1",        # torch < 2.2 name
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # torch >= 2.2 name
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
    "NCCL_DEBUG": "WARN",
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",      # Megatron: keeps TP communication ordered with compute
}

# srun: after the first task ends, wait this long before killing the others (BLOOM's --wait=60): a node whose
# ranks failed first is the one its log names, and the others get to write their errors.
SRUN_WAIT_S = 60

# torchrun forwards only these to the ranks; SIGUSR1 is the pre-timeout "save and exit" signal.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def slots(cfg: RunConfig) -> int | None:
    """The ranks the allocation has room for: nodes x GPUs per node (None on CPU nodes)."""
    return cfg.slurm.nodes * cfg.slurm.gpus_per_node or None


def world_size(cfg: RunConfig) -> int:
    """tp x pp x dp, an unset dp filled from the nodes' GPUs (the config's one world-size rule)."""
    return world_size_of(cfg, slots(cfg))


def ranks_per_node(cfg: RunConfig) -> int:
    world, nodes = world_size(cfg), cfg.slurm.nodes
    if world % nodes:
        raise ConfigError(f"slurm.nodes={nodes} does not divide the world size {world} (parallel.tp x parallel.pp "
                          f"x parallel.dp): choose slurm.nodes among the divisors of {world}")
    per_node = world // nodes
    gpus = cfg.slurm.gpus_per_node
    if gpus and per_node != gpus:
        raise ConfigError(f"{per_node} ranks per node != slurm.gpus_per_node={gpus}: set parallel.dp so that "
                          f"tp x pp x dp = slurm.nodes x slurm.gpus_per_node = {cfg.slurm.nodes * gpus}")
    return per_node


def exit_duration_min(s: SlurmConfig) -> float:
    """``train.exit_duration_in_mins`` for a job of ``s.time_limit_min``: leave ``exit_margin_min`` to save."""
    return round(s.time_limit_min - s.exit_margin_min, 3)


def default_job_name(run_dir: str) -> str:
    return f"bigops-{PurePosixPath(run_dir).name or 'run'}"


def _time(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    return (f"{days}-" if days else "") + f"{rest // 60:02d}:{rest % 60:02d}:00"


def _check_one_line(name: str, value: str) -> None:
    if any(c in value for c in "\n\r\0"):
        raise ConfigError(f"{name}={value!r} contains a line break or NUL: give a single-line value")


def sbatch_options(cfg: RunConfig, run_dir: str, job_name: str) -> list[str]:
    """The options every job of the chain shares (the per-job ones are added by :func:`submit_argv`)."""
    s = cfg.slurm
    for name in ("partition", "account", "qos", "constraint", "exclude", "hint"):
        _check_one_line(f"slurm.{name}", getattr(s, name))
    _check_one_line("slurm.job_name", job_name)
    _check_one_line("--run-dir", run_dir)
    options = [f"--job-name={job_name}", f"--nodes={s.nodes}", "--ntasks-per-node=1"]
    if s.cpus_per_task:
        options.append(f"--cpus-per-task={s.cpus_per_task}")
    if s.gpus_per_node:
        options.append(f"--gres=gpu:{s.gpus_per_node}")
    for name in ("partition", "account", "qos", "constraint", "hint"):
        if getattr(s, name):
            options.append(f"--{name}={getattr(s, name)}")
    options.append(f"--time={_time(s.time_limit_min)}")
    if s.signal_before_s:
        options.append(f"--signal=B:USR1@{s.signal_before_s}")
    options += [f"--output={RunDir(run_dir).slurm_output}", "--open-mode=append", "--no-requeue",
                "--kill-on-invalid-dep=yes"]
    return options


def sbatch_directives(options: list[str]) -> list[str]:
    """``#SBATCH`` lines for the options whose value sbatch's directive parser reads as one word (it splits a
    line on blanks); one with a blank or a quote stays on the command line only, and a comment says so."""
    out = []
    for option in options:
        if any(c.isspace() or c in "\"'\\" for c in option):
            out.append(f"# ({option.split('=', 1)[0]} is given on sbatch's command line: its value has a blank "
                       f"or a quote)")
        else:
            out.append(f"#SBATCH {option}")
    return out


def submit_argv(options: list[str], script_path: str, *, dependency: str | None = "singleton",
                exclude: str = "", array: str | None = None) -> list[str]:
    """One sbatch command line (an argument list: quoted by whoever hands it to a shell)."""
    argv = ["sbatch", "--parsable", *options]
    if dependency:
        argv.append(f"--dependency={dependency}")
    if exclude:
        _check_one_line("--exclude", exclude)
        argv.append(f"--exclude={exclude}")
    if array:
        argv.append(f"--array={array}")
    return [*argv, script_path]


def render_script(cfg: RunConfig, run_dir: str, *, job_name: str, workdir: str) -> str:
    """The batch script of every job of the chain: its header and environment, the job's start record, the
    ranks under srun with the signal relay, and the job's end record."""
    s = cfg.slurm
    cpus = s.cpus_per_task or None
    lines = [*_script_header(cfg, run_dir, job_name=job_name, workdir=workdir), *_script_env(cfg, cpus)]
    # sbatch reads #SBATCH lines only before the first command: right after the shebang
    lines[1:1] = sbatch_directives(sbatch_options(cfg, run_dir, job_name))
    lines += [
        "",
        "# Record this job's start (and tokenize the data once, if no job did yet).",
        '"$PYTHON" -m launcher.slurm.job start "$RUN_DIR" || exit 2',
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "",
        *_script_ranks(cfg, cpus),
        "",
        "# Record the trainer's exit code; when the run finished or was stopped on request, cancel the rest",
        "# of the chain. The job exits with the trainer's code (trainer.exitcodes).",
        '"$PYTHON" -m launcher.slurm.job end "$RUN_DIR" --srun-rc "$RC"',
        "",
    ]
    return "\n".join(lines)


def _script_header(cfg: RunConfig, run_dir: str, *, job_name: str, workdir: str) -> list[str]:
    """What the job is, where it runs and with which Python; the cluster's modules and setup lines."""
    s = cfg.slurm
    modules = [m.strip() for m in s.modules.split(",") if m.strip()]
    lines = [
        "#!/bin/bash",
        f"# bigops: one job of the SLURM chain {job_name!r} (rendered by launcher.slurm.render: relaunch, do not edit).",
        f"# It resumes from checkpoints/latest and saves before its {s.time_limit_min}-minute limit: SLURM sends",
        f"# SIGUSR1 {s.signal_before_s} s before it, and run.toml sets train.exit_duration_in_mins.",
        "set -uo pipefail",
        f"RUN_DIR={q(run_dir)}",
        f"PYTHON={q(s.python or 'python3')}",
        f"cd {q(workdir)} || exit 2",
        f"export PYTHONPATH={q(workdir)}${{PYTHONPATH:+:$PYTHONPATH}}",
    ]
    if s.setup.strip():
        lines += ["# slurm.setup (verbatim)", *s.setup.strip().splitlines()]
    if modules:  # after the setup: a start script may `module purge`
        lines.append("module load " + " ".join(q(m) for m in modules))
    return lines


def _script_env(cfg: RunConfig, cpus: int | None) -> list[str]:
    """NCCL's fail-fast settings, the threads per rank, and the CPU accelerator on GPU-less nodes."""
    per_node = ranks_per_node(cfg)
    lines = ["", "# NCCL: crash on a hung collective instead of hanging; name the node in the logs."]
    lines += [f"export {k}={q(v)}" for k, v in NCCL_ENV.items()]
    threads = max(1, (cpus or 1) // per_node) if cpus else 1
    lines += [f"export OMP_NUM_THREADS={threads}", "export PYTHONUNBUFFERED=1"]
    # torchrun's agent writes the first failing worker's error here (one file per node and job), not N copies
    lines.append('export TORCHELASTIC_ERROR_FILE="${TMPDIR:-/tmp}/bigops-torchelastic-${SLURM_JOB_ID:-0}.json"')
    extra = profile_env(cfg.slurm)
    if extra:
        lines += ["# slurm.env", *[f"export {k}={q(v)}" for k, v in extra.items()]]
    if not cfg.slurm.gpus_per_node:
        lines.append("export DS_ACCELERATOR=cpu")
    return lines


def profile_env(s: SlurmConfig) -> dict[str, str]:
    """``slurm.env`` as {NAME: VALUE}; a ConfigError names a malformed entry."""
    out = {}
    for item in filter(None, (i.strip() for i in s.env.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier() or any(c in value for c in "\n\r\0"):
            raise ConfigError(f"slurm.env: {item!r} is not NAME=VALUE (names are letters, digits and _)")
        out[name] = value
    return out


def _script_ranks(cfg: RunConfig, cpus: int | None) -> list[str]:
    """srun (one task per node) running torchrun, in the background, and the loop that relays SLURM's
    early-warning signal to it once the job has trained a step; ends with the trainer's code in ``$RC``."""
    s = cfg.slurm
    script_run = RunDir("$RUN_DIR")  # the script's paths, spelled by the contract against its $RUN_DIR
    return [
        f"# The ranks' start-up budget ({RELATIVE.startup_log}) counts from here.",
        f'export {LAUNCH_TIME_ENV}="$(date +%s.%N)"',
        "# One srun task per node; torch's elastic launcher starts its ranks, rendezvous on the first node.",
        " ".join([
            "srun", "--kill-on-bad-exit=1", f"--wait={SRUN_WAIT_S}", f"--nodes={s.nodes}", "--ntasks-per-node=1",
            *([f"--cpus-per-task={cpus}"] if cpus else []),
            '"$PYTHON"', "-m", "torch.distributed.run", f"--nnodes={s.nodes}",
            f"--nproc-per-node={ranks_per_node(cfg)}",
            "--rdzv-backend=c10d", f'--rdzv-endpoint="$MASTER_ADDR:{s.master_port}"', '--rdzv-id="$SLURM_JOB_ID"',
            f"--signals-to-handle={FORWARDED_SIGNALS}", f"--shutdown-timeout={max(30, s.signal_before_s)}",
            "--max-restarts=0", "-m", "trainer.train", '--run-dir "$RUN_DIR"', "&",
        ]),
        "SRUN_PID=$!",
        "# SIGUSR1 reaches this shell (--signal=B:...); srun forwards it to torchrun, torchrun to the ranks, which",
        "# save and exit. SLURM may send it up to 60 s early: it is held until this job has trained a step (every",
        "# rank's handler is installed by then; torchrun or a rank without one would die of it).",
        "SIGNALLED=",
        "trap 'SIGNALLED=1' USR1",
        'JOB_KEY=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID:-}}',
        f'JOB_RECORD="{script_run.slurm_job("${JOB_KEY:-$SLURM_JOB_ID}")}"',
        'while kill -0 "$SRUN_PID" 2>/dev/null; do',
        f'    if [ -n "$SIGNALLED" ] && [ "{script_run.metrics}" -nt "$JOB_RECORD" ]; then',
        '        echo "bigops: SIGUSR1: the ranks save and exit"; kill -USR1 "$SRUN_PID"; SIGNALLED=',
        "    fi",
        "    sleep 1 & wait $!",
        "done",
        'wait "$SRUN_PID"; RC=$?',
    ]
