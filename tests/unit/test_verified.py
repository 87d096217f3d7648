"""Verify once, resume fast: the verified stamp, the watchdog's verifier, the supervisor's pre-launch check and
which rank hashes which file (the ranks' own check runs in tests/distributed/test_resume.py)."""

import json
import os

import pytest

from bigops.watchdog import verifier as verifier_mod
from bigops.watchdog.verifier import Verifier
from tests.unit.test_approve import events, supervisor_for
from trainer import checkpoint as ckpt
from trainer import exitcodes, verified
from trainer.resume_check import LAYER_RE, RNG_RE, RankShare, hashed_by
from trainer.rundir import RunDir, read_jsonl

WEIGHTS = "layer_01-model_00-model_states.pt"
ENGINE = "mp_rank_00_model_states.pt"


def publish(run: RunDir, step: int) -> None:
    partial = ckpt.partial_dir(run, ckpt.tag_for(step))
    partial.mkdir(parents=True)
    (partial / WEIGHTS).write_bytes(bytes([step % 256]) * (4096 + step))
    (partial / ENGINE).write_bytes(b"engine" * 100)
    ckpt.publish(run, partial, ckpt.tag_for(step), {"step": step, "lineage": "L1"})


@pytest.fixture
def hashes(monkeypatch):
    """Every file hashed, by name (the one hashing function: trainer.checkpoint.sha256_file)."""
    seen = []
    original = ckpt.sha256_file

    def counting(path, *args, **kwargs):
        seen.append(path.name)
        return original(path, *args, **kwargs)
    monkeypatch.setattr(ckpt, "sha256_file", counting)
    return seen


def flip(path, at: int = 7) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x04
    path.write_bytes(bytes(data))  # same size; the write moves the mtime


def age(path) -> None:
    """Move a file's mtime into the past (so that a rewrite is seen even on a coarse-clock filesystem)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))


def verify_latest(run: RunDir) -> Verifier:
    v = Verifier(run)
    assert v.poll() == run.latest_tag()
    v.wait(30)
    assert v.poll() is None  # once: the same manifest is not verified again
    return v


def test_the_verifier_stamps_a_new_checkpoint_once_and_a_resume_then_hashes_nothing(tmp_path, hashes):
    run = RunDir(tmp_path)
    publish(run, 5)
    hashes.clear()  # the publish hashed for the manifest
    verify_latest(run)
    assert sorted(hashes) == sorted([WEIGHTS, ENGINE])
    stamp = json.loads((run.checkpoint("global_step5") / "verified.json").read_text())
    assert stamp["result"] == "verified" and stamp["by"].startswith("watchdog pid ")
    assert set(stamp["files"]) == {WEIGHTS, ENGINE} and {"size", "mtime_ns", "ino"} <= set(stamp["files"][WEIGHTS])
    assert [r["kind"] for r in read_jsonl(run.checkpoint_log)] == ["verify"]
    hashes.clear()
    check = verified.check(run.checkpoint("global_step5"))
    assert check.fully_verified and sorted(check.verified) == sorted([ENGINE, WEIGHTS])
    found = ckpt.find_resumable(run, checker=lambda p: verified.check(p).problems)
    assert found.tag == "global_step5" and hashes == []
    assert "verified.json" not in ckpt.read_manifest(run.checkpoint("global_step5"))["files"]


def test_the_verifier_never_marks_a_damaged_checkpoint_verified(tmp_path):
    run = RunDir(tmp_path)
    publish(run, 5)
    flip(run.checkpoint("global_step5") / WEIGHTS)  # between the publish and the verification
    verify_latest(run)
    check = verified.check(run.checkpoint("global_step5"))
    assert check.problems == [f"{WEIGHTS}: sha256 differs (altered)"] and not check.fully_verified
    assert json.loads((run.checkpoint("global_step5") / "verified.json").read_text())["result"] == "damaged"
    assert read_jsonl(run.checkpoint_log)[-1]["ok"] is False


def test_a_file_changed_after_the_stamp_is_hashed_again_and_a_damaged_one_refused(tmp_path, hashes):
    run = RunDir(tmp_path)
    publish(run, 5)
    publish(run, 10)
    for step in (5, 10):
        for name in (WEIGHTS, ENGINE):
            age(run.checkpoint(ckpt.tag_for(step)) / name)
        verified.verify_and_stamp(run.checkpoint(ckpt.tag_for(step)), "test")
    hashes.clear()
    flip(run.checkpoint("global_step10") / WEIGHTS)
    check = verified.check(run.checkpoint("global_step10"))
    assert check.unverified == [WEIGHTS] and check.verified == [ENGINE] and not check.problems
    # the supervisor's pre-launch check: only the changed file is read, it is damaged, latest falls back
    found = ckpt.find_resumable(run, checker=Verifier(run).before_launch)
    assert hashes == [WEIGHTS]
    assert (found.tag, found.fell_back_from) == ("global_step5", "global_step10") and "sha256 differs" in found.reason
    # and the stamp now says so: nobody hashes it again to find out
    hashes.clear()
    assert verified.check(run.checkpoint("global_step10")).problems == [f"{WEIGHTS}: sha256 differs (altered)"]
    assert ckpt.find_resumable(run, checker=lambda p: verified.check(p).problems).tag == "global_step5"
    assert hashes == []


def test_an_intact_rewrite_after_the_stamp_is_hashed_again_and_trusted(tmp_path, hashes):
    run = RunDir(tmp_path)
    publish(run, 5)
    path = run.checkpoint("global_step5")
    age(path / WEIGHTS)
    verified.verify_and_stamp(path, "test")
    (path / WEIGHTS).write_bytes((path / WEIGHTS).read_bytes())  # same bytes, new mtime (a copy back, a touch)
    hashes.clear()
    assert verified.verify_and_stamp(path, "test", everything=False).fully_verified and hashes == [WEIGHTS]


def test_a_stamp_of_another_manifest_vouches_for_nothing(tmp_path):
    run = RunDir(tmp_path)
    publish(run, 5)
    path = run.checkpoint("global_step5")
    verified.verify_and_stamp(path, "test")
    manifest = ckpt.read_manifest(path)
    manifest["note"] = "rewritten"
    (path / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert verified.read(path) is None and sorted(verified.check(path).unverified) == sorted([ENGINE, WEIGHTS])


def test_a_file_that_changes_while_it_is_hashed_is_not_stamped(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    publish(run, 5)
    path = run.checkpoint("global_step5")
    original = ckpt.sha256_file

    def racing(file, *args, **kwargs):
        digest = original(file, *args, **kwargs)
        if file.name == WEIGHTS:
            age(file)  # its identity moves under the hash
        return digest
    monkeypatch.setattr(ckpt, "sha256_file", racing)
    results = verified.hash_files(path, ckpt.read_manifest(path), [WEIGHTS, ENGINE])
    assert results[WEIGHTS]["ok"] is None and results[ENGINE]["ok"] is True
    verified.record(path, results, "test")
    assert verified.check(path).unverified == [WEIGHTS]


def test_the_supervisor_does_not_hash_a_stamped_latest_before_launching(tmp_path, hashes):
    supervisor, spawned, _ = supervisor_for(tmp_path, [exitcodes.FINISHED])
    publish(supervisor.run, 5)
    verify_latest(supervisor.run)
    hashes.clear()
    assert supervisor.run_until_done() == exitcodes.FINISHED
    assert hashes == [] and spawned == [exitcodes.FINISHED]


def test_the_supervisor_leaves_a_large_unstamped_latest_to_the_ranks(tmp_path, hashes, monkeypatch):
    """Above PRELAUNCH_HASH_BYTES the pre-launch check is sizes and the stamp only: no second full read (a bit
    flip it cannot see is the ranks' to find: tests/distributed/test_resume.py)."""
    monkeypatch.setattr(verifier_mod, "PRELAUNCH_HASH_BYTES", 1000)
    supervisor, spawned, _ = supervisor_for(tmp_path, [exitcodes.FINISHED])
    run = supervisor.run
    publish(run, 5)
    publish(run, 10)
    (run.checkpoint("global_step10") / WEIGHTS).write_bytes(b"short")  # a size the manifest refutes: no hash needed
    hashes.clear()
    supervisor.set_aside_unusable()
    assert hashes == [] and run.latest_tag() == "global_step5"
    (event,) = [e for e in events(tmp_path, "action") if e["action"] == "rollback"]
    assert event["unusable"] == "global_step10"


def _names(tp: int, pp: int, dp: int, layers: int) -> list[str]:
    names = [f"layer_{layer:02d}-model_{t:02d}-model_states.pt" for layer in range(layers) for t in range(tp)]
    names += [f"mp_rank_{mp:02d}_model_states.pt" for mp in range(tp * pp)]
    names += [f"bf16_zero_pp_rank_{d}_mp_rank_{mp:02d}_optim_states.pt" for d in range(dp) for mp in range(tp * pp)]
    return names + [f"rng_state_rank{r:05d}.pt" for r in range(tp * pp * dp)] + ["universal/zero/x.pt"]


@pytest.mark.parametrize("tp,pp,dp", [(1, 1, 1), (2, 2, 1), (2, 2, 2), (1, 3, 4)])
def test_each_file_is_hashed_by_exactly_one_rank_that_loads_it(tp, pp, dp):
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
    layers = 7
    topo = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    bounds = [round(i * layers / pp) for i in range(pp + 1)]
    names = _names(tp, pp, dp, layers)
    owners: dict[str, list[int]] = {n: [] for n in names}
    for rank in range(tp * pp * dp):
        c = topo.get_coord(rank)
        share = RankShare(rank=rank, stage=c.pipe, dp_rank=c.data, tp_rank=c.model, tp=tp, dp=dp,
                          layers=range(bounds[c.pipe], bounds[c.pipe + 1]))
        for name in names:
            if not hashed_by(name, share):
                continue
            owners[name].append(rank)
            if m := LAYER_RE.match(name):  # a layer of its stage, on its TP rank
                assert int(m["layer"]) in share.layers and int(m["tp"]) == c.model, (name, rank)
            elif m := RNG_RE.match(name):
                assert int(m["rank"]) == rank
            else:  # engine and optimizer files: its model-parallel rank's
                assert f"mp_rank_{c.pipe * tp + c.model:02d}" in name, (name, rank)
    assert {n: o for n, o in owners.items() if len(o) != 1} == {"universal/zero/x.pt": []}  # that one: rank 0's


def test_bigops_watch_as_the_run_writer_stamps_a_new_checkpoint_in_the_background(tmp_path):
    from bigops.watchdog.daemon import watch_run
    run = RunDir(tmp_path)
    publish(run, 5)

    class Stamped(Exception):
        pass

    passes = []

    def on_pass(new, facts):
        passes.append(1)
        if verified.check(run.checkpoint("global_step5")).fully_verified:
            raise Stamped
        assert len(passes) < 1200, "no stamp after 1200 passes"
    with pytest.raises(Stamped):
        watch_run(run, interval=0.05, on_pass=on_pass, say=lambda line: None)
    assert json.loads((run.checkpoint("global_step5") / "verified.json").read_text())["by"].startswith("watchdog")


def test_bigops_ckpt_verify_writes_and_refreshes_the_stamp(tmp_path, capsys):
    from bigops.cli.main import main as bigops_main
    run = RunDir(tmp_path)
    publish(run, 5)
    path = run.checkpoint("global_step5")
    assert bigops_main(["ckpt", "verify", str(run.root)]) == 0
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("verifying global_step5")]
    files = len(json.loads((path / "manifest.json").read_text())["files"])
    assert progress and f"hashing {files}/{files}" in progress[-1]  # plain lines on stderr off a terminal
    assert verified.read(path)["by"].startswith("bigops ckpt verify") and verified.check(path).fully_verified
    good = (path / WEIGHTS).read_bytes()
    flip(path / WEIGHTS)
    assert bigops_main(["ckpt", "verify", str(run.root)]) == 3
    assert verified.read(path)["result"] == "damaged"
    (path / WEIGHTS).write_bytes(good)  # repaired: a full verify says so, whatever the stamp said
    assert bigops_main(["ckpt", "verify", str(run.root)]) == 0
    assert verified.read(path)["result"] == "verified" and verified.check(path).fully_verified
