"""Surgery and verify throughput on a real multi-GB checkpoint, against ``cp -r`` and ``sha256sum`` of the
same files on the same disk, in the same run; peak RSS of the surgery against the largest file.

The checkpoint is made by training one step of a BLOOM at TP 2 (bf16, ZeRO-1) on this machine's CPUs
(default about 2.4 GB: weights, fp32 master weights and both Adam moments); ``--run-dir`` reuses one.
``python -m benchmarks.surgery [--hidden 1024 --layers 10 --vocab 50304]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.cli import main_of
from trainer.rundir import RunDir


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}... failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


def _drop_caches() -> bool:
    """Cold reads where we may (root); otherwise both sides read from the page cache alike."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def make_checkpoint(run_dir: Path, hidden: int, layers: int, heads: int, vocab: int, tp: int = 2, pp: int = 1,
                    precision: str = "bf16", extra: tuple[str, ...] = ()) -> None:
    """One trained step of a BLOOM of this shape and layout (CPU ranks): its checkpoint is the benchmark's input."""
    sets = [f"model.hidden_size={hidden}", f"model.num_layers={layers}", f"model.num_attention_heads={heads}",
            f"model.vocab_size={vocab}", "data.source=synthetic", "train.seq_length=64", "train.global_batch_size=2",
            "train.micro_batch_size=1", "train.train_steps=1", "train.eval_interval=0", f"train.precision={precision}",
            "train.save_interval=0", *extra]
    cmd = [sys.executable, "-m", "bigops.cli.main", "launch", "--run-dir", str(run_dir), "--tp", str(tp), "--pp",
           str(pp), "--dp", "1", *[a for s in sets for a in ("--set", s)]]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def run(run_dir: Path | None = None, hidden: int = 1024, layers: int = 10, heads: int = 16,
        vocab: int = 50304) -> dict:
    base = Path(tempfile.mkdtemp(prefix="bigops-surgery-bench-"))
    try:
        if run_dir is None:
            run_dir = base / "run"
            make_checkpoint(run_dir, hidden, layers, heads, vocab)
        run = RunDir(run_dir)
        tag = run.latest_tag()
        source = run.checkpoint(tag)
        files = sorted(p for p in source.iterdir() if p.is_file())
        total = sum(f.stat().st_size for f in files)
        largest = max(f.stat().st_size for f in files)
        cold = _drop_caches()
        cp_s, _ = _run(["cp", "-r", str(source), str(base / "copy")])
        sync_s, _ = _run(["sync"])  # surgery fsyncs every file it writes: compare durable copies too
        shutil.rmtree(base / "copy")
        _drop_caches()
        sha_s, _ = _run(["sha256sum", *map(str, files)])
        _drop_caches()
        verify_s, _ = _run([sys.executable, "-m", "bigops.cli.main", "ckpt", "verify", str(run_dir), "--tag", tag])
        _drop_caches()
        surgery_s, surgery_rss = _run([sys.executable, "-m", "bigops.cli.main", "surgery", str(run_dir),
                                       "--tag", tag, "--sync-layernorm", "--yes", "--keep-latest"])
        gb = total / 1e9
        return {
            "benchmark": "surgery",
            "checkpoint": {"bytes": total, "files": len(files), "largest_file_bytes": largest, "cold_cache": cold},
            "seconds": {"cp_r": cp_s, "cp_r_then_sync": cp_s + sync_s, "sha256sum": sha_s, "bigops_ckpt_verify": verify_s,
                        "bigops_surgery_sync_layernorm": surgery_s},
            "gb_per_s": {"cp_r": gb / cp_s, "cp_r_then_sync": gb / (cp_s + sync_s), "sha256sum": gb / sha_s, "bigops_ckpt_verify": gb / verify_s,
                         "bigops_surgery_sync_layernorm": gb / surgery_s},
            "ratio_surgery_vs_cp": cp_s / surgery_s,
            "ratio_surgery_vs_cp_then_sync": (cp_s + sync_s) / surgery_s,
            "ratio_verify_vs_sha256sum": sha_s / verify_s,
            "surgery_peak_rss_bytes": surgery_rss,
            "ratio_peak_rss_vs_largest_file": surgery_rss / largest,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="use this run's latest checkpoint")
    for name, default in (("hidden", 1024), ("layers", 10), ("heads", 16), ("vocab", 50304)):
        parser.add_argument(f"--{name}", type=int, default=default)
    return main_of(parser, run, report, argv)


def report(result: dict) -> None:
    c, s, g = result["checkpoint"], result["seconds"], result["gb_per_s"]
    print(f"surgery / verify on a {c['bytes'] / 1e9:.2f} GB checkpoint ({c['files']} files, largest "
          f"{c['largest_file_bytes'] / 1e9:.2f} GB, {'cold' if c['cold_cache'] else 'warm'} page cache)")
    for name in s:
        print(f"  {name:<32} {s[name]:8.2f} s  {g[name]:6.2f} GB/s")
    print(f"  surgery speed / cp -r: {result['ratio_surgery_vs_cp']:.2f} (/ cp -r + sync: "
          f"{result['ratio_surgery_vs_cp_then_sync']:.2f}); verify speed / sha256sum: "
          f"{result['ratio_verify_vs_sha256sum']:.2f}")
    print(f"  surgery peak RSS {result['surgery_peak_rss_bytes'] / 1e9:.2f} GB = "
          f"{result['ratio_peak_rss_vs_largest_file']:.2f} x the largest file")


if __name__ == "__main__":
    main()
