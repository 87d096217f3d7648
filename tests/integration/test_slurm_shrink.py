"""A node of a SLURM chain dies and no spare is left: with ``watchdog.on_node_lost = "shrink"`` the chain keeper
reshapes the newest checkpoint to fewer data-parallel replicas (DeepSpeed's universal checkpoint), rewrites
run.toml and the job script for the nodes left, resubmits the queue, and the run trains on to its target.

A real two-node cluster (two slurmd on this host); TP2 x PP1 x DP2 on 2 nodes x 2 ranks -> DP1 on 1 node.
"""

import json
import sys

import pytest

from bigops.watchdog.daemon import state_path, tick
from bigops.watchdog.state import WatchState
from tests.integration.slurm_cluster import SlurmCluster
from tests.integration.test_slurm_chain import FAST, _slurm_env, bigops, drain, records, steps, wait_for
from trainer import checkpoint as ckpt
from trainer import exitcodes
from trainer.rundir import RunDir, load_run_config, read_jsonl


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm2"), nodes=2)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def shrink_actions(run):
    return [e for e in read_jsonl(run / "events.jsonl") if e.get("type") == "action" and e.get("action") ==
            "chain-shrink"]


def test_a_dead_node_without_a_spare_shrinks_the_chain_and_it_trains_on(two_nodes, tmp_path):
    from tests.integration.slurm_cluster import free_port
    slurm = two_nodes
    run = tmp_path / "run"
    done = bigops(slurm, "launch", "--slurm", "--run-dir", run, *FAST, "--steps", 24, "--jobs", 2,
                  "--save-interval", 4, "--set", "slurm.signal_before_s=0", "--set", f"slurm.master_port={free_port()}",
                  "--set", "slurm.nodes=2", "--set", "parallel.tp=2", "--set", "parallel.pp=1",
                  "--set", "parallel.dp=2", "--set", "slurm.min_queued=1", "--set", "watchdog.on_node_lost=shrink",
                  "--set", f"slurm.python={sys.executable}")
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = json.loads((run / "slurm" / "chain.json").read_text())["submitted"]
    lost = slurm.node_names[1]
    try:
        wait_for("step 6 on two nodes", lambda: steps(run) and steps(run)[-1] >= 6, cluster=slurm, run=run)
        # drained (never allocated again: a DOWN node would return to service when its slurmd re-registers),
        # then down: SLURM kills the job that runs on it, as when a node dies
        for state in ("DRAIN", "DOWN"):
            assert slurm.run("scontrol", "update", f"NodeName={lost}", f"State={state}", "Reason=lost").returncode == 0
        wait_for("the job on the dead node to end", lambda: jobs[0] not in slurm.run(
            "squeue", "--noheader", "--format=%i").stdout.split(), cluster=slurm, run=run)
        state = WatchState.load(state_path(RunDir(run)))

        def pass_until_shrunk():
            with _slurm_env(slurm):
                tick(RunDir(run), state)
            return shrink_actions(run)

        (shrunk,) = wait_for("the shrink", pass_until_shrunk, cluster=slurm, run=run)
        with _slurm_env(slurm):
            tick(RunDir(run), state)  # once: the next pass finds enough nodes for the new jobs
        assert len(shrink_actions(run)) == 1, shrunk
        cfg = load_run_config(RunDir(run))
        assert (cfg.slurm.nodes, cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.dp) == (1, 2, 1, 1)
        source = shrunk["outcome"].split()[1]
        assert ckpt.step_of(source) >= 4 and f"universal-{source}" in shrunk["outcome"], shrunk
        assert "--nodes=1" in (run / "slurm" / "job.sbatch").read_text()
        chain = json.loads((run / "slurm" / "chain.json").read_text())
        assert "--nodes=1" in chain["options"] and jobs[1] in shrunk["outcome"]  # the old pending job went
        new_jobs = chain["submitted"][len(jobs):]
        assert new_jobs, chain

        wait_for("the shrunk chain to finish", lambda: any(records(run).get(j, {}).get("code") == exitcodes.FINISHED
                                                           for j in new_jobs), cluster=slurm, run=run)
        ended = records(run)
        last = next(j for j in new_jobs if ended.get(j, {}).get("code") == exitcodes.FINISHED)
        assert ended[last]["from_step"] == ckpt.step_of(source)
        trained = steps(run)
        assert trained[-1] == 24 and trained[-(24 - ckpt.step_of(source)):] == list(range(ckpt.step_of(source) + 1,
                                                                                           25))
        manifest = ckpt.read_manifest(RunDir(run).checkpoint(RunDir(run).latest_tag()))
        assert manifest["topology"] == {"tp": 2, "pp": 1, "dp": 1}
    finally:
        slurm.run("scontrol", "update", f"NodeName={lost}", "State=RESUME")
        queued = slurm.run("squeue", "--noheader", "--format=%i").stdout.split()
        if queued:
            slurm.run("scancel", *queued)
        drain(slurm, run)
