"""Reshape throughput on a real checkpoint, against ``cp -r`` (+ ``sync``) of the same files on the same disk
in the same run, and DeepSpeed's converter alone; peak RSS of the reshape against the largest file.

The checkpoint is made by training one step of a BLOOM at TP 2 x PP 2 (fp32, ZeRO-1, 4 CPU ranks; default
about 1 GB: weights and both Adam moments); ``--run-dir`` reuses one (a copy is reshaped, never it).
``bigops ckpt reshape`` to TP 1 x PP 2 x DP 2 is timed whole (re-hash of the source, the TP-duplicate check,
``ds_to_universal``, sealing), and ``python -m deepspeed.checkpoint.ds_to_universal`` alone on the same tag.
``python -m benchmarks.reshape [--hidden 768 --layers 6 --vocab 50304]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.cli import main_of
from benchmarks.surgery import _drop_caches, _run, make_checkpoint
from trainer.rundir import RunDir


def _bytes(path: Path) -> tuple[int, int, int]:
    """(total bytes, files, largest file) under ``path``."""
    sizes = [f.stat().st_size for f in path.rglob("*") if f.is_file()]
    return sum(sizes), len(sizes), max(sizes)


def run(run_dir: Path | None = None, hidden: int = 768, layers: int = 6, heads: int = 12,
        vocab: int = 50304) -> dict:
    base = Path(tempfile.mkdtemp(prefix="bigops-reshape-bench-"))
    try:
        if run_dir is None:
            run_dir = base / "made"
            make_checkpoint(run_dir, hidden, layers, heads, vocab, tp=2, pp=2, precision="fp32",
                            extra=("parallel.zero_stage=1",))
        work = base / "run"
        shutil.copytree(run_dir, work, symlinks=True)
        run = RunDir(work)
        tag = run.latest_tag()
        source = run.checkpoint(tag)
        total, files, largest = _bytes(source)
        cold = _drop_caches()
        cp_s, _ = _run(["cp", "-r", str(source), str(base / "copy")])
        sync_s, _ = _run(["sync"])  # the reshape fsyncs what it publishes: compare with a durable copy too
        shutil.rmtree(base / "copy")
        _drop_caches()
        env = {**os.environ, "DS_ACCELERATOR": "cpu"}
        convert_s, convert_rss = _run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                                       str(source), "--output_folder", str(base / "universal"),
                                       "--num_extract_workers", "1", "--num_merge_workers", "1"], env=env)
        written, written_files, _ = _bytes(base / "universal")
        shutil.rmtree(base / "universal")
        _drop_caches()
        reshape_s, reshape_rss = _run([sys.executable, "-m", "bigops.cli.main", "ckpt", "reshape", str(work),
                                       "--tp", "1", "--pp", "2", "--dp", "2", "--yes"], env=env)
        gb = total / 1e9
        return {
            "benchmark": "reshape",
            "checkpoint": {"bytes": total, "files": files, "largest_file_bytes": largest, "cold_cache": cold,
                           "universal_bytes": written, "universal_files": written_files},
            "seconds": {"cp_r": cp_s, "cp_r_then_sync": cp_s + sync_s, "ds_to_universal": convert_s,
                        "bigops_ckpt_reshape": reshape_s},
            "gb_per_s": {"cp_r": gb / cp_s, "cp_r_then_sync": gb / (cp_s + sync_s), "ds_to_universal": gb / convert_s,
                         "bigops_ckpt_reshape": gb / reshape_s},
            "ratio_reshape_vs_cp_then_sync": (cp_s + sync_s) / reshape_s,
            "ratio_reshape_vs_ds_to_universal": convert_s / reshape_s,
            "reshape_peak_rss_bytes": reshape_rss,
            "ds_to_universal_peak_rss_bytes": convert_rss,
            "ratio_peak_rss_vs_largest_file": reshape_rss / largest,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="reshape a copy of this run's latest checkpoint")
    for name, default in (("hidden", 768), ("layers", 6), ("heads", 12), ("vocab", 50304)):
        parser.add_argument(f"--{name}", type=int, default=default)
    return main_of(parser, run, report, argv)


def report(result: dict) -> None:
    c, s, g = result["checkpoint"], result["seconds"], result["gb_per_s"]
    print(f"reshape TP2xPP2xDP1 -> TP1xPP2xDP2 of a {c['bytes'] / 1e9:.2f} GB checkpoint ({c['files']} files, "
          f"largest {c['largest_file_bytes'] / 1e9:.2f} GB, {'cold' if c['cold_cache'] else 'warm'} page cache; "
          f"universal: {c['universal_bytes'] / 1e9:.2f} GB in {c['universal_files']} files)")
    for name in s:
        print(f"  {name:<24} {s[name]:8.2f} s  {g[name]:6.2f} GB/s")
    print(f"  reshape speed / (cp -r + sync): {result['ratio_reshape_vs_cp_then_sync']:.2f}; "
          f"/ ds_to_universal alone: {result['ratio_reshape_vs_ds_to_universal']:.2f}")
    print(f"  reshape peak RSS {result['reshape_peak_rss_bytes'] / 1e9:.2f} GB = "
          f"{result['ratio_peak_rss_vs_largest_file']:.2f} x the largest file (ds_to_universal alone: "
          f"{result['ds_to_universal_peak_rss_bytes'] / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
