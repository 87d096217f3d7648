"""Remote operation through paramiko against a real sshd on 127.0.0.1: host keys checked (never added),
hostile arguments stay data, and a SLURM chain driven over SSH (two links: hold, release, extend, cancel)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.remote import HostKeyError, SSHRunner
from launcher.slurm.runner import CommandError
from tests.integration import slurm_cluster
from tests.integration import sshd
from tests.integration.sshd import keygen
from trainer import exitcodes
from trainer.rundir import read_jsonl

slurm = slurm_cluster.slurm  # the module's fixtures
sshd_factory = sshd.sshd_factory

HOSTILE = ["a b", "it's", '"quoted"', "x; touch PWNED", "$(touch PWNED)", "`touch PWNED`", "line\nbreak",
           "back\\slash", "*", "--option", "", "$HOME", "a|b&c>d"]


@pytest.fixture(scope="module")
def server(sshd_factory, slurm):
    return sshd_factory(env={"SLURM_CONF": slurm.env["SLURM_CONF"]})


def runner(server, **kwargs):
    return SSHRunner.from_spec(server.host, key_file=str(server.user_key), known_hosts=str(server.known_hosts),
                               **kwargs)


def test_hostile_arguments_and_paths_are_data_over_ssh(server, tmp_path):
    r = runner(server)
    started = time.perf_counter()
    result = r.run(["printf", "%s\\n--\\n", *HOSTILE], env={"WEIRD": "$(touch PWNED) 'q'"})
    connect_and_run = time.perf_counter() - started
    assert result.ok, result.stderr
    assert result.stdout.split("\n--\n")[:-1] == HOSTILE
    assert r.run(["sh", "-c", 'printf %s "$WEIRD"'], env={"WEIRD": "$(touch PWNED) 'q'"}).stdout == \
        "$(touch PWNED) 'q'"
    folder = tmp_path / "dir $(touch PWNED) 'x'; y"
    r.mkdir(str(folder))
    r.write_text(str(folder / "f `id`.txt"), "hello\n")
    assert r.read_text(str(folder / "f `id`.txt")) == "hello\n" and r.listdir(str(folder)) == ["f `id`.txt"]
    assert r.read_text(str(folder / "missing")) is None
    assert not list(tmp_path.rglob("PWNED")) and not (server.root / "PWNED").exists()
    assert r.calls["printf"] == 1
    r.close()
    assert r.run(["true"]).ok  # reconnects after a close
    print(f"\nssh connect + first command: {connect_and_run:.2f} s")


def test_a_wrong_or_unknown_host_key_is_refused(server, tmp_path):
    other = keygen(tmp_path / "other_host_key")
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[127.0.0.1]:{server.port} {' '.join(other.split()[:2])}\n")
    with pytest.raises(HostKeyError, match="mismatch"):
        SSHRunner.from_spec(server.host, key_file=str(server.user_key), known_hosts=str(wrong)).run(["true"])
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    with pytest.raises(HostKeyError, match="not in"):
        SSHRunner.from_spec(server.host, key_file=str(server.user_key), known_hosts=str(empty)).run(["true"])
    assert empty.read_text() == ""  # never added


def bigops(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "bigops.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def wait_for(what, check, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_chain_driven_over_ssh(server, slurm, tmp_path):
    from tests.integration.slurm_cluster import free_port
    from tests.integration.test_slurm_chain import FAST, job_state, records, steps
    from tests.integration.test_slurm_chain import wait_for as wait_with_logs
    ssh = ["--host", server.host, "--ssh-key", server.user_key, "--known-hosts", server.known_hosts]
    run = tmp_path / "over ssh 'q' $(x)"
    done = bigops("launch", "--slurm", "--run-dir", run, *FAST, "--steps", 10, "--jobs", 2, *ssh,
                  "--set", "slurm.signal_before_s=0", "--set", f"slurm.master_port={free_port()}",
                  "--set", f"slurm.python={sys.executable}", "--set", f"slurm.workdir={slurm_cluster.Path.cwd()}",
                  "--set", "slurm.account=", "--set", "slurm.time_limit_min=3")  # a loaded machine starts slowly
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = json.loads((run / "slurm" / "chain.json").read_text())["submitted"]
    # hold only once the first link runs: a hold while it still waits for the scheduler (a slow CI box) holds
    # it too, as it should, and then nothing would run
    wait_with_logs("the first link to run", lambda: job_state(slurm, jobs[0]) == "RUNNING", cluster=slurm, run=run)
    assert bigops("chain", "hold", run, *ssh).returncode == 0
    wait_with_logs("step 4", lambda: steps(run) and steps(run)[-1] >= 4, cluster=slurm, run=run)
    assert slurm.run("scancel", "--signal=USR1", "--batch", jobs[0]).returncode == 0
    wait_with_logs("the first link to end", lambda: "code" in records(run).get(jobs[0], {}), cluster=slurm, run=run)
    status = bigops("chain", "status", run, "--format", "json", *ssh)
    queued = json.loads(status.stdout)["queued"]
    assert [(j["job_id"], j["state"]) for j in queued] == [(jobs[1], "PENDING")]  # held: it waits
    assert bigops("chain", "release", run, *ssh).returncode == 0
    wait_with_logs("the second link to finish", lambda: "code" in records(run).get(jobs[1], {}), cluster=slurm,
                   run=run)
    ended = records(run)
    assert [ended[j]["code"] for j in jobs] == [exitcodes.STOPPED_BY_SIGNAL, exitcodes.FINISHED]
    assert steps(run) == list(range(1, 11)) and len(read_jsonl(run / "telemetry" / "metrics.jsonl")) == 10
    extended = bigops("chain", "extend", run, "-n", "1", *ssh)
    assert extended.returncode == 0, extended.stderr
    bigops("chain", "hold", run, *ssh)
    cancelled = bigops("chain", "cancel", run, "--yes", *ssh)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    wait_for("an empty queue", lambda: not slurm.run("squeue", "--noheader").stdout.strip())


def _session_processes(listener_pid: int) -> list[int]:
    """sshd's per-connection processes: the listener's children (and theirs)."""
    children, frontier = [], [listener_pid]
    while frontier:
        parent = frontier.pop()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                pid = int(stat.parent.name)
                children.append(pid)
                frontier.append(pid)
    return children


def test_a_dropped_ssh_connection_is_reconnected_and_never_resends(server, tmp_path):
    """Fault: the server side of the SSH link dies. The next command reconnects (host key checked again);
    a command whose connection broke is reported, never re-sent (an sbatch sent twice submits twice)."""
    import signal

    r = runner(server)
    assert r.run(["true"]).ok
    listener = int(server.pid_file.read_text().strip())
    sessions = _session_processes(listener)
    assert sessions, "no sshd session process for the open connection"
    counter = tmp_path / "count"
    for pid in sessions:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    outcomes = []
    for _ in range(2):
        try:
            outcomes.append(r.run(["sh", "-c", 'echo x >> "$0"', str(counter)]).ok)
        except CommandError as exc:
            outcomes.append(str(exc))
    assert outcomes[-1] is True  # reconnected
    assert counter.read_text().count("x") == sum(1 for o in outcomes if o is True)  # nothing ran twice
    r.close()
