"""A straggler in a real run: DP 2 (2 gloo ranks), one rank slowed in its forward by
BIGOPS_FAULT_SLOW_RANK; its heartbeat's forward timing makes `bigops watch` name it."""

import json
import os
import subprocess
import sys

import pytest

from tests.distributed.test_training_run import FAST, bigops

pytestmark = pytest.mark.distributed


def test_slow_rank_is_named_by_the_straggler_detector(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "BIGOPS_FAULT_SLOW_RANK": "1:0.1"}  # 2 micro-batches per step: +0.2 s on rank 1
    proc = subprocess.run([sys.executable, "-m", "bigops.cli.main", "launch", "--run-dir", str(run), *FAST,
                           "--tp", "1", "--pp", "1", "--dp", "2", "--steps", "12", "--save-interval", "0"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    beats = {b["rank"]: b for b in (json.loads(p.read_text()) for p in (run / "telemetry" / "heartbeat").glob("*.json"))}
    assert [(b["stage"], b["dp_rank"], b["tp"]) for _, b in sorted(beats.items())] == [(0, 0, 1), (0, 1, 1)]
    assert beats[1]["forward_calls"] == 2 and beats[1]["forward_s"] >= 0.2 > beats[0]["forward_s"]
    watch = bigops("watch", run, "--once", "--format", "json")
    assert watch.returncode == 0, watch.stdout + watch.stderr
    found = [f for f in map(json.loads, watch.stdout.splitlines()) if f["kind"] == "Straggler"]
    assert len(found) == 1 and found[0]["evidence"]["rank"] == 1, watch.stdout
    assert found[0]["evidence"]["pid"] == beats[1]["pid"] and found[0]["evidence"]["peers"] == [0]
    assert "rank 1 on" in found[0]["summary"]
    assert [e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines())
            if e.get("kind") == "Straggler"][0]["runbook"] == "runbooks/Straggler.md"
