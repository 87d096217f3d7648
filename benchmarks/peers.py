"""How the recovery benchmark starts the same DeepSpeed run under each peer: ``bigops launch --watch``, torchrun
``--max-restarts 1`` and NVIDIA's fault-tolerance launcher (nvidia-resiliency-ext's ``ft_launcher``), and how it
stops what each left running.

NVRx is not a dependency of bigops (its wheel requires the deprecated ``pynvml`` shim, which makes torch warn on
every import; the project uses nvidia-ml-py): :func:`ensure_nvrx` installs the pinned wheel with ``--no-deps``
into a cache folder outside the repository (its other requirements are bigops' own), and only the ft_launcher
processes get that folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.local import free_port, rank_env
from trainer import config as config_mod
from trainer.peer_heartbeat import ENV as NVRX_HEARTBEATS

NVRX_VERSION = "0.4.1"
PEERS = ("bigops", "torchrun", "nvrx")
STARTUP_TIMEOUT_S = 900.0
"""How long a rank may take to its first step, for the peers that time it (bigops' default)."""


def cache_dir() -> Path:
    """Where benchmark-only tools are installed: ``$BIGOPS_BENCH_CACHE`` or ``~/.cache/bigops-bench``."""
    return Path(os.environ.get("BIGOPS_BENCH_CACHE") or "~/.cache/bigops-bench").expanduser()


def ensure_nvrx(target: Path | None = None) -> Path:
    """The folder holding nvidia-resiliency-ext (installed there, without its dependencies, on first use).
    RuntimeError with pip's last line when it cannot be installed (no network, no wheel for this Python)."""
    target = target or cache_dir() / "nvrx"
    if (target / f"nvidia_resiliency_ext-{NVRX_VERSION}.dist-info").is_dir():
        return target
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-deps", "--target", str(target), f"nvidia-resiliency-ext=={NVRX_VERSION}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"pip exited {done.returncode}"]
        raise RuntimeError(f"cannot install nvidia-resiliency-ext {NVRX_VERSION}: {lines[-1]}")
    return target


def write_run_config(run_dir: Path, sets: list[str]) -> None:
    """``RUN/run.toml`` as ``bigops launch`` would resolve it, for the launchers that are not bigops."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = config_mod.validate(config_mod.resolve("tiny", overrides=sets), world_size=4)
    cfg = config_mod.resolve_precision(cfg, False)
    (run_dir / "run.toml").write_text(config_mod.dumps_toml(cfg))


def start(peer: str, run_dir: Path, sets: list[str], hang_timeout_s: float, check_interval_s: float = 0.5
          ) -> subprocess.Popen:
    """Start the 4-rank run in ``run_dir`` under ``peer``, in a session of its own; its output goes to
    ``run_dir/<peer>.log``. Both hang detectors get the same timeout and the same check interval."""
    if peer == "bigops":
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "bigops.cli.main", "launch", str(run_dir), "--watch",
                   "--set", f"watchdog.interval_s={check_interval_s}",
                   "--set", f"watchdog.hang_min_timeout_s={hang_timeout_s}", *[a for s in sets for a in ("--set", s)]]
        env = dict(os.environ)
    else:
        write_run_config(run_dir, sets)
        # both as their docs set up a fault-tolerant single-node job: c10d rendezvous on a free port
        rendezvous = ["--nproc-per-node=4", "--max-restarts=1", "--rdzv-backend=c10d",
                      f"--rdzv-endpoint=127.0.0.1:{free_port()}"]
        entry = ["-m", "trainer.train", "--run-dir", str(run_dir)]
        env = rank_env(4)
        if peer == "torchrun":
            command = [sys.executable, "-m", "torch.distributed.run", *rendezvous, *entry]
        elif peer == "nvrx":
            nvrx = ensure_nvrx()
            env["PYTHONPATH"] = os.pathsep.join([str(nvrx), os.getcwd(), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            env[NVRX_HEARTBEATS] = "1"  # the ranks send NVRx heartbeats (trainer.peer_heartbeat)
            env["TMPDIR"] = str(_nvrx_tmp(run_dir))  # its monitors' sockets, removed with the run
            command = [sys.executable, "-m", "nvidia_resiliency_ext.fault_tolerance.launcher", *rendezvous,
                       f"--ft-rank-heartbeat-timeout={hang_timeout_s}",
                       f"--ft-initial-rank-heartbeat-timeout={STARTUP_TIMEOUT_S}",
                       f"--ft-workload-check-interval={check_interval_s}", "--ft-enable-nic-monitor=false", *entry]
        else:
            raise ValueError(f"unknown peer {peer!r}: choose among {', '.join(PEERS)}")
    log = open(run_dir.parent / f"{run_dir.name}.log", "wb")
    try:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def _nvrx_tmp(run_dir: Path) -> Path:
    path = run_dir.parent / f"{run_dir.name}-tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


def stop(proc: subprocess.Popen, run_dir: Path) -> None:
    """Kill the launcher's session and every rank of ``run_dir`` still alive (torchrun and ft_launcher start
    each worker in a session of its own, which killing the launcher's group leaves running)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    needle = str(run_dir).encode()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if (b"trainer.train" in cmdline or b"trainer.spare" in cmdline) and needle in cmdline:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until(predicate, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()
