"""The restart's checkpoint check, before and after "verify once" (issue 18): seconds from "the ranks are to be
relaunched" to "the checkpoint is trusted", on a checkpoint of the tiny run's layout (TP 2 x PP 2, 4 ranks) at
the tiny run's 18 MB and at a larger synthetic size. ``python -m benchmarks.resume_check [--sizes-mb 18 400]``.

- ``before``: what a restart did until now: the supervisor hashes every file (``find_resumable``), then rank 0
  hashes every file again (the same call), one process each time;
- ``after_stamped``: the watchdog's verifier stamped the checkpoint after its save: the supervisor's pre-launch
  check (sizes and the stamp) and every rank's check of its files (``stat`` only);
- ``after_unstamped``: no stamp yet (a crash right after the save, or no watchdog): the supervisor checks sizes
  (and hashes the whole checkpoint only below ``PRELAUNCH_HASH_BYTES``), then the 4 ranks hash their own files at
  once, 4 processes as in a real resume (``trainer.resume_check``; the gloo gathers around it are left out).

Files are in the page cache (written just before), so the figures are hashing speed, not the disk's: a cluster
filesystem makes ``before`` slower still (two full reads over the network) and leaves ``after_stamped`` as is.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.cli import main_of
from trainer import checkpoint as ckpt
from trainer import verified
from trainer.resume_check import RankShare, check_share, hashed_by
from trainer.rundir import RunDir

TP, PP, DP, LAYERS = 2, 2, 1, 6
"""The tiny run's layout: pipeline layers 0..5 (embedding, blocks, final norm) over 2 stages."""


def _files(total_bytes: int) -> dict[str, int]:
    """File name -> size, shared out as a DeepSpeed TP x PP checkpoint is: weights, engine files, optimizer
    shards (about 3x the weights: fp32 masters and two Adam moments) and RNG states."""
    names = {f"layer_{layer:02d}-model_{t:02d}-model_states.pt": 4 for layer in range(LAYERS) for t in range(TP)}
    names.update({f"zero_pp_rank_{d}_mp_rank_{mp:02d}_optim_states.pt": 3 * LAYERS * TP // (TP * PP) * 4
                  for d in range(DP) for mp in range(TP * PP)})
    weight = total_bytes / sum(names.values())
    sizes = {name: int(weight * parts) for name, parts in names.items()}
    sizes.update({f"mp_rank_{mp:02d}_model_states.pt": 8192 for mp in range(TP * PP)})
    sizes.update({f"rng_state_rank{r:05d}.pt": 2048 for r in range(TP * PP * DP)})
    return sizes


def make_checkpoint(run: RunDir, total_bytes: int) -> Path:
    tag = ckpt.tag_for(10)
    partial = ckpt.partial_dir(run, tag)
    partial.mkdir(parents=True)
    for name, size in _files(total_bytes).items():
        with open(partial / name, "wb") as handle:
            left = size
            while left:
                block = os.urandom(min(left, 8 << 20))
                handle.write(block)
                left -= len(block)
    return ckpt.publish(run, partial, tag, {"step": 10, "topology": {"tp": TP, "pp": PP, "dp": DP}})


def _shares() -> list[RankShare]:
    """Every rank's share, as DeepSpeed's pipe x data x model grid numbers the ranks."""
    per = LAYERS // PP
    return [RankShare(rank=(stage * DP + d) * TP + t, stage=stage, dp_rank=d, tp_rank=t, tp=TP, dp=DP,
                      layers=range(stage * per, (stage + 1) * per))
            for stage in range(PP) for d in range(DP) for t in range(TP)]


def _rank_check(args) -> int:
    """One rank's part of a resume check (the hashing; what ``check_loaded_files`` does between its gathers)."""
    path, share, claimed = args
    manifest = ckpt.read_manifest(path)
    unverified = verified.check(path, manifest).unverified
    results = check_share(path, manifest, unverified, share, share.rank == 0, claimed)
    return sum(r.get("size", 0) for r in results.values())


def _ranks_check(path: Path, pool) -> int:
    shares = _shares()
    names = list(ckpt.read_manifest(path)["files"])
    claimed = {n for s in shares if s.rank != 0 for n in names if hashed_by(n, s)}
    return sum(pool.map(_rank_check, [(path, s, claimed) for s in shares]))


def _timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def measure(size_mb: float, base: Path, pool) -> dict:
    from bigops.watchdog.verifier import Verifier
    run = RunDir(base / f"run-{size_mb:g}mb")
    path = make_checkpoint(run, int(size_mb * 1e6))
    total = sum(m["size"] for m in ckpt.read_manifest(path)["files"].values())
    # before: the supervisor's full hash, then rank 0's
    before, _ = _timed(lambda: (ckpt.find_resumable(run), ckpt.find_resumable(run)))
    # after, no stamp yet: the supervisor's pre-launch check, then the ranks' shares at once
    # (below PRELAUNCH_HASH_BYTES the supervisor hashes and stamps it, and the ranks then find nothing to hash)
    supervisor_s, _ = _timed(lambda: ckpt.find_resumable(run, checker=Verifier(run).before_launch))
    ranks_s, hashed = _timed(lambda: _ranks_check(path, pool))
    # the watchdog's verifier (off the training path, once per save)
    (path / verified.STAMP).unlink(missing_ok=True)
    verifier = Verifier(run)
    verify_s, _ = _timed(lambda: (verifier.poll(), verifier.wait()))
    # after, stamped: the supervisor's check and the ranks' (each a stat of its files)
    stamped_s, _ = _timed(lambda: (ckpt.find_resumable(run, checker=Verifier(run).before_launch),
                                   _ranks_check(path, pool)))
    shutil.rmtree(run.root)
    return {"size_bytes": total, "before_s": before, "after_unstamped_s": supervisor_s + ranks_s,
            "after_unstamped_supervisor_s": supervisor_s, "after_unstamped_ranks_s": ranks_s,
            "after_unstamped_bytes_hashed_by_ranks": hashed, "after_stamped_s": stamped_s,
            "verifier_s": verify_s, "ratio_before_vs_after_stamped": before / stamped_s if stamped_s else None,
            "ratio_before_vs_after_unstamped": before / (supervisor_s + ranks_s)}


def run(sizes_mb: list[float]) -> dict:
    base = Path(tempfile.mkdtemp(prefix="bigops-resume-check-"))
    try:
        with multiprocessing.get_context("fork").Pool(TP * PP * DP) as pool:
            rows = [measure(size, base, pool) for size in sizes_mb]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"benchmark": "resume_check", "layout": {"tp": TP, "pp": PP, "dp": DP}, "cores": os.cpu_count(),
            "rows": rows}


def report(result: dict) -> None:
    print(f"restart checkpoint check, before / after verify-once (TP {TP} x PP {PP}, {TP * PP * DP} ranks, "
          f"{result['cores']} cores, page cache warm):")
    for r in result["rows"]:
        print(f"  {r['size_bytes'] / 1e6:7.1f} MB: before {r['before_s']:.3f} s (2 full hashes); after, stamped "
              f"{r['after_stamped_s']:.4f} s ({r['ratio_before_vs_after_stamped']:.0f}x); after, no stamp "
              f"{r['after_unstamped_s']:.3f} s (supervisor {r['after_unstamped_supervisor_s']:.3f} + ranks "
              f"{r['after_unstamped_ranks_s']:.3f}, {r['ratio_before_vs_after_unstamped']:.1f}x); the verifier's "
              f"one hash, off the training path: {r['verifier_s']:.3f} s")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", dest="sizes_mb", type=float, nargs="+", default=[18, 400])
    return main_of(parser, run, report, argv)


if __name__ == "__main__":
    main()
