"""The SLURM chain on a real one-node cluster (munged + slurmctld + slurmd on 127.0.0.1): tiny runs, 4 ranks.

- three links, each ended by SLURM's USR1 (``scancel --signal=USR1 --batch``: at once, at a chosen step),
  resuming from ``latest``: every step trained once, the loss curve identical to an uninterrupted run;
- SLURM's own ``--signal=B:USR1@N`` with a 1-minute limit: the job saves and exits before the limit;
- a rank crash: the next job resumes, the watchdog's chain keeper counts the crash.

Prints the overhead per link (end of one job -> first step of the next) and the SLURM calls per tick.
"""

import json
import os
import subprocess
import sys
import time


from bigops.watchdog.daemon import state_path, tick
from bigops.watchdog.state import WatchState
from tests import procguard
from tests.integration import slurm_cluster
from trainer import exitcodes
from trainer.rundir import RunDir, read_jsonl

slurm = slurm_cluster.slurm  # the module's cluster fixture

FAST = ["--set", "data.source=synthetic", "--set", "model.vocab_size=512", "--set", "train.seq_length=32",
        "--set", "train.global_batch_size=8", "--set", "train.micro_batch_size=2",
        "--set", "train.eval_interval=0", "--set", "slurm.time_limit_min=3", "--set", "slurm.exit_margin_min=0.05"]
# 3 minutes a link: a link that starts on a loaded box (imports and DeepSpeed's start-up took ~50 s at half
# speed) still ends by its signal or the target, never by SLURM's SIGTERM at the limit (1 min did, once)


def bigops(cluster, *args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "bigops.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**cluster.env, **(env or {})})


def launch(cluster, run, *args, env=None):
    from tests.integration.slurm_cluster import free_port
    done = bigops(cluster, "launch", "--slurm", "--run-dir", run, *FAST, "--set", f"slurm.master_port={free_port()}",
                  *args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((run / "slurm" / "chain.json").read_text())["submitted"]


def wait_for(what, check, timeout=150, cluster=None, run=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    logs = "".join(p.read_text()[-3000:] for p in sorted((run / "logs").glob("slurm-*.out"))) if run else ""
    queue = cluster.run("squeue").stdout if cluster else ""
    raise AssertionError(f"timed out waiting for {what}\n{queue}\n{logs}")


def records(run):
    return {p.stem: json.loads(p.read_text()) for p in (run / "slurm" / "jobs").glob("*.json")}


def steps(run):
    return [r["step"] for r in read_jsonl(run / "telemetry" / "metrics.jsonl")]


def job_state(cluster, job):
    return cluster.run("squeue", "--noheader", "--format=%T", f"--jobs={job}").stdout.strip()


def drain(cluster, run):
    wait_for("the chain to leave the queue", lambda: not cluster.run("squeue", "--noheader").stdout.strip(),
             cluster=cluster, run=run)


def test_a_chain_of_three_links_each_stopped_by_slurm_resumes_and_reaches_the_target(slurm, tmp_path):
    run = tmp_path / "chain"
    jobs = launch(slurm, run, "--steps", 24, "--jobs", 4, "--set", "slurm.signal_before_s=0")
    assert len(jobs) == 4
    for job, at_step in ((jobs[0], 8), (jobs[1], 16)):
        wait_for(f"job {job} to reach step {at_step}", lambda: steps(run) and steps(run)[-1] >= at_step,
                 cluster=slurm, run=run)
        assert job_state(slurm, job) == "RUNNING"
        assert slurm.run("scancel", "--signal=USR1", "--batch", job).returncode == 0
        wait_for(f"job {job} to end", lambda: "code" in records(run).get(job, {}), cluster=slurm, run=run)
    wait_for("the last link to finish", lambda: "code" in records(run).get(jobs[2], {}), cluster=slurm, run=run)
    drain(slurm, run)

    ended = records(run)
    assert [ended[j]["code"] for j in jobs[:3]] == [exitcodes.STOPPED_BY_SIGNAL, exitcodes.STOPPED_BY_SIGNAL,
                                                    exitcodes.FINISHED]
    assert jobs[3] not in ended and ended[jobs[2]]["cancelled_rest"]  # the spare job never started
    assert ended[jobs[1]]["from_step"] == ended[jobs[0]]["to_step"] >= 8
    assert ended[jobs[2]]["from_step"] == ended[jobs[1]]["to_step"] >= 16
    # each job knows when SLURM accepted it (the first job's queue wait; chained ones were submitted up front)
    assert all(ended[j]["submitted"] <= ended[j]["start"] + 1 for j in jobs[:3])
    assert steps(run) == list(range(1, 25))  # no step trained twice, none missing
    assert RunDir(run).latest_tag() == "global_step24"

    # Continuous loss curve: the same losses as one uninterrupted local run of the same config.
    straight = tmp_path / "straight"
    local = bigops(slurm, "launch", "--run-dir", straight, *FAST[:12], "--steps", 24, timeout=300)
    assert local.returncode == 0, local.stdout + local.stderr
    chained = {r["step"]: r["loss"] for r in read_jsonl(run / "telemetry" / "metrics.jsonl")}
    reference = {r["step"]: r["loss"] for r in read_jsonl(straight / "telemetry" / "metrics.jsonl")}
    assert chained.keys() == reference.keys()
    assert all(abs(chained[s] - reference[s]) <= 1e-5 * max(1.0, abs(reference[s])) for s in reference), \
        [(s, chained[s], reference[s]) for s in reference if chained[s] != reference[s]][:5]

    metrics = read_jsonl(run / "telemetry" / "metrics.jsonl")
    overheads = []
    for prev, nxt in ((jobs[0], jobs[1]), (jobs[1], jobs[2])):
        first = next(r for r in metrics if r["step"] == ended[prev]["to_step"] + 1)
        overheads.append(first["time"] - first.get("step_seconds", 0.0) - ended[prev]["end"])
    print(f"\nchain link overhead (end of job -> first step of the next): "
          f"{', '.join(f'{o:.1f} s' for o in overheads)}")

    # Goodput: two planned relaunches, nothing lost; the time between the links is queue (job end -> next start)
    # and restart (-> first step), charged to no incident; every second once.
    out = bigops(slurm, "goodput", run, "--format", "json", timeout=120)
    assert out.returncode == 0, out.stderr
    goodput = json.loads(out.stdout)
    assert goodput["relaunches"] == 2 and goodput["steps_lost"] == 0 and goodput["steps_productive"] == 24
    assert abs(sum(goodput["seconds"].values()) - goodput["wall_s"]) < 1e-6
    assert [c["cause"] for c in goodput["charges"]] == ["exit"] and goodput["interval"]["failures"] == 0
    assert goodput["seconds"]["queue"] > 0
    assert goodput["seconds"]["queue"] + goodput["seconds"]["restart"] >= sum(overheads)
    print("goodput of the chain: " + ", ".join(f"{k} {v:.1f} s" for k, v in goodput["seconds"].items()))

    # The watchdog sees a clean end: the chain is done, nothing submitted; one squeue per tick.
    state = WatchState.load(state_path(RunDir(run)))
    env_before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = slurm.env["SLURM_CONF"]
    try:
        _, facts = tick(RunDir(run), state)
    finally:
        if env_before is None:
            os.environ.pop("SLURM_CONF")
        else:
            os.environ["SLURM_CONF"] = env_before
    assert facts["chain"]["done"] == "finished" and facts["chain"]["calls"] == {"squeue": 1}
    assert state.restarts == []
    print(f"watchdog tick on a finished chain: {facts['chain']['calls']}")


def test_slurm_signal_before_the_time_limit_saves_and_ends_the_job(slurm, tmp_path):
    run = tmp_path / "limit"
    jobs = launch(slurm, run, "--steps", 100000, "--jobs", 1, "--set", "slurm.time_limit_min=1",
                  "--set", "slurm.signal_before_s=30", "--set", "slurm.exit_margin_min=0")  # no exit duration worth the name: only the signal stops it
    wait_for("the job to end", lambda: "code" in records(run).get(jobs[0], {}), timeout=120, cluster=slurm, run=run)
    ended = records(run)[jobs[0]]
    assert ended["code"] == exitcodes.STOPPED_BY_SIGNAL, ended
    assert ended["end"] - ended["start"] < 60  # before the 1-minute limit
    assert ended["to_step"] == steps(run)[-1] >= 1
    assert "SIGUSR1: the ranks save and exit" in (run / "logs" / f"slurm-{jobs[0]}.out").read_text()
    drain(slurm, run)


def test_a_rank_crash_is_counted_and_the_next_job_resumes_from_latest(slurm, tmp_path):
    run = tmp_path / "crash"
    env = {"BIGOPS_FAULT_CRASH_AT_STEP": "7", "BIGOPS_FAULT_CRASH_ONCE": str(tmp_path / "crashed")}
    jobs = launch(slurm, run, "--steps", 10, "--jobs", 2, "--save-interval", 3, "--set", "slurm.signal_before_s=0",
                  env=env)
    wait_for("both jobs to end", lambda: all("code" in records(run).get(j, {}) for j in jobs), cluster=slurm, run=run)
    drain(slurm, run)
    ended = records(run)
    assert ended[jobs[0]]["code"] == exitcodes.FAILED and ended[jobs[0]]["to_step"] == 6
    assert ended[jobs[1]]["from_step"] == 6 and ended[jobs[1]]["code"] == exitcodes.FINISHED
    assert steps(run)[-4:] == [7, 8, 9, 10]

    state = WatchState.load(state_path(RunDir(run)))
    os.environ["SLURM_CONF"] = slurm.env["SLURM_CONF"]
    try:
        new, facts = tick(RunDir(run), state)
        again, facts2 = tick(RunDir(run), state)
    finally:
        os.environ.pop("SLURM_CONF")
    assert [f.kind for f in new if f.kind.startswith("Chain")] == ["ChainJobFailed"]
    assert len(state.restarts) == 1 and state.restarts[0]["from_step"] == 6
    assert facts["chain"]["done"] == "finished" and facts["chain"]["calls"] == {"squeue": 1}
    assert facts2["chain"] == {"chain_done": "finished", "calls": {}}  # done: no SLURM call at all
    print(f"\nwatchdog ticks: {facts['chain']['calls']} then {facts2['chain']['calls']}")


def _slurm_env(cluster):
    """The watchdog process reads SLURM_CONF from its environment."""
    class Scoped:
        def __enter__(self):
            self.before = os.environ.get("SLURM_CONF")
            os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]

        def __exit__(self, *exc):
            if self.before is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = self.before
    return Scoped()


def test_the_chain_survives_a_slurm_controller_restart(slurm, tmp_path):
    """Fault: slurmctld dies mid-run. The running job goes on (slurmd runs it), the watchdog warns and backs
    off instead of failing, and once the controller is back (state recovered, not cleaned) the chain goes on.
    This chain is an array (``--array=0-1%1``), the other chain mode, so both run on the real cluster."""
    import signal

    run = tmp_path / "ctld"
    slow = {"BIGOPS_FAULT_SLOW_RANK": "0:0.15"}  # ~0.6 s a step: the first job outlives the outage
    # 40 steps: job 0 is still training when the controller is back, however slow the box (it is stopped
    # then, at whatever step it reached, and job 1 does the rest)
    jobs = launch(slurm, run, "--steps", 40, "--jobs", 2, "--set", "slurm.signal_before_s=0",
                  "--set", "slurm.chain_mode=array", env=slow)
    wait_for("the first job to train", lambda: steps(run) and steps(run)[-1] >= 3, cluster=slurm, run=run)
    pid = int((slurm.root / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    wait_for("slurmctld to stop", lambda: not os.path.exists(f"/proc/{pid}"), timeout=30)
    state = WatchState.load(state_path(RunDir(run)))
    with _slurm_env(slurm):
        new, facts = tick(RunDir(run), state)
    assert [f.kind for f in new if f.kind.startswith("Slurm")] == ["SlurmUnreachable"]
    assert state.restarts == []  # an unreachable controller is not a crash
    before = steps(run)[-1]
    wait_for("training to go on without the controller", lambda: steps(run)[-1] > before + 1, timeout=60)

    subprocess.run([slurm_cluster._binary("slurmctld"), "-i"], check=True, env=slurm.env)  # recover, no -c
    wait_for("the controller to answer", lambda: slurm.run("squeue").returncode == 0, timeout=30)
    procguard.own(int((slurm.root / "slurmctld.pid").read_text()))  # the cluster's again: its stop() stops it
    assert not records(run).get(jobs[0], {}).get("code"), "job 0 ended before the controller was back"
    assert slurm.run("scancel", "--signal=USR1", "--batch", jobs[0]).returncode == 0
    wait_for("both jobs to end", lambda: all("code" in records(run).get(j, {}) for j in jobs), cluster=slurm, run=run)
    drain(slurm, run)
    ended = records(run)
    assert [ended[j]["code"] for j in jobs] == [exitcodes.STOPPED_BY_SIGNAL, exitcodes.FINISHED]
    assert steps(run) == list(range(1, 41))  # every step once
    with _slurm_env(slurm):
        tick(RunDir(run), state, now=time.time() + 3600)  # past the back-off
    assert state.restarts == []


def test_a_hung_job_has_its_stacks_dumped_on_every_node_once(slurm, tmp_path):
    """Hang forensics on SLURM: ``bigops stacks RUN`` and the watchdog's pass reach the ranks through
    ``srun --overlap`` into the running job; a SIGSTOPped rank opens a hang incident whose stacks are dumped
    once (the next pass does not dump again), the stopped rank read as it stands."""
    import signal

    from trainer.rundir import read_heartbeats

    run = tmp_path / "hung"
    jobs = launch(slurm, run, "--steps", 100_000, "--jobs", 1, "--set", "slurm.signal_before_s=0",
                  "--set", "slurm.min_queued=1", "--set", "watchdog.hang_min_timeout_s=4")
    stopped = None
    try:
        wait_for("step 3", lambda: steps(run) and steps(run)[-1] >= 3, cluster=slurm, run=run)
        on_demand = bigops(slurm, "stacks", run)
        assert on_demand.returncode == 0, on_demand.stdout + on_demand.stderr
        assert "stacks of 4 rank(s)" in on_demand.stdout, on_demand.stdout
        (folder,) = RunDir(run).stacks.iterdir()
        dumped = [json.loads((folder / f"rank-{r}.json").read_text()) for r in range(4)]
        assert all(d.get("threads") and d.get("host") for d in dumped), dumped  # through the nodes' own step

        stopped = {int(b["rank"]): b["pid"] for b in read_heartbeats(RunDir(run)).values()}[1]
        os.kill(stopped, signal.SIGSTOP)
        state = WatchState.load(state_path(RunDir(run)))

        def stacks_actions():
            return [e for e in read_jsonl(run / "events.jsonl") if e.get("type") == "action"
                    and e.get("action") == "stacks"]

        def pass_until_dumped():
            with _slurm_env(slurm):
                tick(RunDir(run), state)
            return stacks_actions()

        (action,) = wait_for("the hang's stacks", pass_until_dumped, cluster=slurm, run=run)
        with _slurm_env(slurm):
            tick(RunDir(run), state)
        assert len(stacks_actions()) == 1  # once per incident
        assert action["outcome"].startswith("stacks of 4 rank(s)") and action["incident"], action
        hung = run / action["folder"]
        assert json.loads((hung / "rank-1.json").read_text())["threads"]  # the stopped rank, as it stands
        assert state.incidents[action["incident"]]["kind"] == "TrainingHang"
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        slurm.run("scancel", *jobs)
        drain(slurm, run)
