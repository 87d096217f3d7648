"""A CI-sized fault-injection run: one real tiny run under `bigops launch --watch` (4 gloo ranks), seeded
faults of several kinds, every invariant of tests.faults.harness checked. The table is printed (pytest -s).

The full set of kinds (hangs, whole-job kills, kills inside a save, loss spikes...) runs in the soak:
``python -m tests.faults.soak --hours 0.25``."""

import os

import pytest

from tests.faults.harness import Harness, plan_faults

pytestmark = pytest.mark.distributed

CI_KINDS = ["nan_loss", "ckpt_corrupt", "receiver_down", "disk_full", "watchdog_kill"]


def test_plan_is_seeded_and_leaves_a_checkpoint_between_faults():
    a, target = plan_faults(CI_KINDS + ["loss_spike", "kill_in_save"], seed=3)
    b, _ = plan_faults(CI_KINDS + ["loss_spike", "kill_in_save"], seed=3)
    assert [(f.kind, f.step) for f in a] == [(f.kind, f.step) for f in b]
    steps = [f.step for f in a]
    assert all(later - earlier >= 8 for earlier, later in zip(steps, steps[1:])) and target > steps[-1]
    assert all(f.step % 5 == 0 for f in a if f.kind in ("ckpt_corrupt", "disk_full", "kill_in_save"))
    assert next(f for f in a if f.kind == "loss_spike").step >= 60


def test_faults_ci_run(tmp_path):
    seed = int(os.environ.get("BIGOPS_FAULTS_SEED", "1"))
    harness = Harness(tmp_path, CI_KINDS, seed=seed, timeout_s=600)
    report = harness.execute()
    print("\n" + report.table())
    problems = report.violations()
    assert not problems, "\n".join(problems) + f"\n(run dir {harness.run})"
