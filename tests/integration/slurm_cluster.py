"""A real one-node SLURM cluster (munged + slurmctld + slurmd) on 127.0.0.1, all state in one folder.

Started by the tests, stopped by the PIDs in its own pid files (never by name). Settings that mattered on a
2-core machine are in ../shared/FACTS.md: 8 CPUs declared, 1-minute limits, no scheduling delay.

A missing binary fails the test with a clear message, unless BIGOPS_ALLOW_MISSING_SERVICES=1 (then: skip).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests import procguard

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun")
PACKAGES = "slurm-wlm slurmctld slurmd slurm-client munge"


def require(binaries, packages: str) -> None:
    missing = [b for b in binaries if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
    if not missing:
        return
    message = (f"missing {', '.join(missing)}: install with `apt-get install -y --no-install-recommends {packages}` "
               f"(scripts/setup does it as root)")
    if os.environ.get("BIGOPS_ALLOW_MISSING_SERVICES") == "1":
        pytest.skip(message)
    pytest.fail(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    """munged + slurmctld + ``nodes`` slurmd on 127.0.0.1, stopped by PID. Two nodes are two slurmd on this host
    (SLURM's multiple-slurmd mode, each ``-N name`` on its own port), named by the two names this host resolves
    for itself (its hostname and ``localhost``): a job's first node name is its rendezvous address."""

    def __init__(self, root: Path, nodes: int = 1):
        self.root = root
        self.nodes = nodes
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        if nodes > 2 or (nodes == 2 and socket.gethostname() == "localhost"):
            raise ValueError("a test cluster has one node, or two named by this host's two names")
        self.node_names = [socket.gethostname(), "localhost"][:nodes]
        slurmd_pids = [root / "slurmd.pid"] if nodes == 1 else [root / f"slurmd-{n}.pid" for n in self.node_names]
        self.pid_files = [*slurmd_pids, root / "slurmctld.pid", root / "munge" / "munged.pid"]

    def write_config(self) -> None:
        root = self.root
        for d in ("munge", "state", "spool", "log"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "munge").chmod(0o700)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        host = socket.gethostname()
        per_node = "-%n" if self.nodes > 1 else ""
        if self.nodes == 1:
            node_lines = f"NodeName={host} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN"
        else:
            node_lines = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs=4 "
                                   f"State=UNKNOWN" for n in self.node_names)
        self.conf.write_text(f"""ClusterName=bigops
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool{per_node}
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd{per_node}.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd{per_node}.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
KillWait=5
OverTimeLimit=0
MinJobAge=300
ReturnToService=2
MpiDefault=none
{node_lines}
PartitionName=debug Nodes={",".join(self.node_names)} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> "SlurmCluster":
        require(BINARIES, PACKAGES)
        self.write_config()
        root = self.root
        subprocess.run([_binary("munged"), f"--socket={self.munge_socket}", f"--key-file={root}/munge/munge.key",
                        f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log",
                        f"--seed-file={root}/munge/munged.seed", "--force"], check=True, env=self.env)
        subprocess.run([_binary("slurmctld"), "-c", "-i"], check=True, env=self.env)
        for name in self.node_names:
            subprocess.run([_binary("slurmd"), "-c", *(["-N", name] if self.nodes > 1 else [])], check=True,
                           env=self.env)
        deadline = time.time() + 30
        while time.time() < deadline:
            out = self.run("sinfo", "--noheader", "--format=%T").stdout.strip()
            if out and set(out.split()) == {"idle"}:
                for pid_file in self.pid_files:  # live across the module's tests: stop() stops them
                    try:
                        procguard.own(int(pid_file.read_text().strip()))
                    except (OSError, ValueError):
                        pass
                return self
            time.sleep(0.2)
        raise AssertionError(f"SLURM nodes not idle after 30 s (sinfo: {out!r}); see {root}/log")

    def run(self, *args, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=self.env, timeout=60,
                              check=check)

    def stop(self) -> None:
        for pid_file in self.pid_files:
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.time() + 10
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
