"""``bigops data prepare`` throughput on this machine's cores, against ``tokenizers``' own batch encoding of the
same documents in one process (the peer: Megatron's ``tools/preprocess_data.py`` is not in the megatron-core
package, and it encodes with the same Rust tokenizer), in the same run; peak RSS of each, against the corpus size.

The corpus is a jsonl file of the Python standard library's sources (``--mb`` MB, documents repeated
with a counter so no two are equal), the tokenizer a byte-level BPE of ``--vocab`` trained on its first MB.
``python -m benchmarks.data_prepare [--mb 64 --workers 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.cli import main_of
from benchmarks.surgery import _run

BASELINE = """
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
batch, tokens = [], 0
with open(sys.argv[2]) as f:
    for line in f:
        batch.append(json.loads(line)["text"])
        if len(batch) == 256:
            tokens += sum(len(e.ids) + 1 for e in tok.encode_batch(batch))
            batch = []
tokens += sum(len(e.ids) + 1 for e in tok.encode_batch(batch))
print(tokens)
"""


def make_corpus(path: Path, mb: int) -> int:
    """A jsonl of ``mb`` MB; returns its documents."""
    from trainer.data.corpus import stdlib_documents
    docs = list(stdlib_documents(8_000_000))
    written, n = 0, 0
    with open(path, "w") as out:
        while written < mb * 1_000_000:
            doc = docs[n % len(docs)] + f"\n# copy {n // len(docs)}\n"
            line = json.dumps({"text": doc}) + "\n"
            out.write(line)
            written += len(line)
            n += 1
    return n


def run(mb: int = 64, workers: int = 2, vocab: int = 32000) -> dict:
    from trainer.data import dataset
    from trainer.data.corpus import stdlib_documents
    base = Path(tempfile.mkdtemp(prefix="bigops-prepare-bench-"))
    try:
        corpus = base / "corpus.jsonl"
        documents = make_corpus(corpus, mb)
        tokenizer = base / "tokenizer.json"
        dataset.train_tokenizer(list(stdlib_documents(1_000_000)), vocab).save(str(tokenizer))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        peer_s, peer_rss = _run([sys.executable, "-c", BASELINE, str(tokenizer), str(corpus)], env=env)
        peer_tokens = int(subprocess.run([sys.executable, "-c", BASELINE, str(tokenizer), str(corpus)],
                                         capture_output=True, text=True, check=True).stdout)
        ours_s, ours_rss = _run([sys.executable, "-m", "bigops.cli.main", "data", "prepare", str(corpus),
                                 "--tokenizer", str(tokenizer), "--output", str(base / "out"),
                                 "--workers", str(workers)], env=env)
        import numpy as np

        from trainer.data.dataset import token_dtype
        ours_tokens = (base / "out.bin").stat().st_size // np.dtype(token_dtype(vocab)).itemsize
        corpus_bytes = corpus.stat().st_size
        return {
            "benchmark": "data_prepare", "corpus_bytes": corpus_bytes, "documents": documents, "workers": workers,
            "cores": os.cpu_count(), "tokens": ours_tokens, "peer_tokens": peer_tokens,
            "seconds": {"bigops_data_prepare": ours_s, "tokenizers_encode_batch": peer_s},
            "tokens_per_s": {"bigops_data_prepare": ours_tokens / ours_s, "tokenizers_encode_batch": peer_tokens / peer_s},
            "ratio_ours_vs_tokenizers": (ours_tokens / ours_s) / (peer_tokens / peer_s),
            "peak_rss_bytes": {"bigops_data_prepare": ours_rss, "tokenizers_encode_batch": peer_rss},
            "ratio_peak_rss_vs_corpus": ours_rss / corpus_bytes,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32000)
    return main_of(parser, run, report, argv)


def report(result: dict) -> None:
    s, t, r = result["seconds"], result["tokens_per_s"], result["peak_rss_bytes"]
    print(f"data prepare of a {result['corpus_bytes'] / 1e6:.0f} MB jsonl ({result['documents']:,} documents, "
          f"{result['tokens']:,} tokens; {result['workers']} workers on {result['cores']} cores)")
    for name in s:
        print(f"  {name:<26} {s[name]:8.2f} s  {t[name] / 1e6:6.2f} M tokens/s  peak RSS {r[name] / 1e6:7.0f} MB")
    print(f"  ours / tokenizers' batch encoding: {result['ratio_ours_vs_tokenizers']:.2f}; peak RSS "
          f"{result['ratio_peak_rss_vs_corpus']:.2f} x the corpus")


if __name__ == "__main__":
    main()
