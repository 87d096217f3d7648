"""``bigops data prepare``: tokenize jsonl/text into a Megatron indexed dataset, as Megatron's
``tools/preprocess_data.py`` does, streamed.

Documents are read one at a time (trainer/data/corpus.py), encoded in batches by worker processes and written
in input order (trainer/data/indexed.py's ``IndexedWriter``, end-of-document token appended). At most
``2 x workers`` batches are in flight, so peak memory depends on the batch size and the number of workers,
not on the corpus. The result is readable by Megatron's own reader and trained on in place by
``data.source = PREFIX``.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from trainer.data.corpus import CorpusError, file_documents
from trainer.data.dataset import batches, token_dtype
from trainer.data.indexed import IndexedWriter
from trainer.hf_tokenizer import ROLE_NAMES, TOKENIZER_CONFIG, special_tokens_of
from trainer.rundir import TOKENIZER

BATCH = 256
"""Documents per task sent to a worker."""
class PrepareError(ValueError):
    """Input or tokenizer that cannot be prepared; one line."""


@dataclass
class Progress:
    """What has been written so far (the progress bar's fields)."""

    documents: int = 0
    tokens: int = 0
    bytes_in: int = 0
    started: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / max(time.monotonic() - self.started, 1e-9)


def tokenizer_file(path: str | Path) -> Path:
    """A ``tokenizer.json``, or a tokenizer folder holding one (BLOOM's Hugging Face folder is one)."""
    path = Path(path)
    found = path / TOKENIZER if path.is_dir() else path  # Hugging Face's file name, which RUN/data uses too
    if not found.is_file():
        raise PrepareError(f"--tokenizer {path}: no tokenizer.json there")
    return found


def end_of_document(tokenizer, path: Path) -> int:
    """The end-of-document id: the tokenizer's EOS as its folder declares it (``tokenizer_config.json``'s
    ``eos_token``), else a usual name (``trainer.hf_tokenizer``: the roles the run's exports get too)."""
    eos = special_tokens_of(path, tokenizer).ids.get("eos")
    if eos is not None:
        return eos
    raise PrepareError(f"{path}: no end-of-document token (none declared in {TOKENIZER_CONFIG}, none of "
                       f"{', '.join(ROLE_NAMES['eos'])})")


_WORKER_TOKENIZER = None


def _worker_init(path: str) -> None:
    global _WORKER_TOKENIZER
    from tokenizers import Tokenizer
    _WORKER_TOKENIZER = Tokenizer.from_file(path)


def _encode(batch: list[str]) -> list[list[int]]:
    return [encoding.ids for encoding in _WORKER_TOKENIZER.encode_batch(batch)]


def _encoded(work: Iterator[list[str]], path: Path, workers: int) -> Iterator[tuple[list[str], list[list[int]]]]:
    """(batch, its ids) in input order; ``workers`` processes with a window of ``2 x workers`` batches."""
    if workers <= 1:
        _worker_init(str(path))
        for batch in work:
            yield batch, _encode(batch)
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker: no oversubscription
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(str(path),)) as pool:
        window: deque[tuple[list[str], Future]] = deque()
        for batch in work:
            window.append((batch, pool.submit(_encode, batch)))
            if len(window) >= 2 * workers:
                done, future = window.popleft()
                yield done, future.result()
        while window:
            done, future = window.popleft()
            yield done, future.result()


def prepare_dataset(inputs: list[str], tokenizer: str | Path, output: str | Path, *, json_key: str = "text",
                    workers: int = 1, append_eod: bool = True,
                    on_progress: Callable[[Progress], None] = lambda p: None) -> Progress:
    """Tokenize ``inputs`` (files or folders of text/jsonl) into the indexed dataset ``output``
    (``output.bin`` + ``output.idx``). Returns the totals."""
    from tokenizers import Tokenizer

    path = tokenizer_file(tokenizer)
    try:
        loaded = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own exception types
        raise PrepareError(f"{path} is not a tokenizer.json ({exc})") from None
    eod = end_of_document(loaded, path) if append_eod else None
    for item in inputs:
        if not Path(item).exists():
            raise PrepareError(f"input {item} does not exist")
    progress = Progress(started=time.monotonic())
    with IndexedWriter(output, token_dtype(loaded.get_vocab_size())) as writer:  # nothing left on an error
        try:
            for batch, ids in _encoded(batches(file_documents(inputs, json_key), BATCH), path, workers):
                for text, document in zip(batch, ids):
                    writer.add_document(np.asarray(document + ([eod] if eod is not None else []), dtype=np.int64))
                    progress.bytes_in += len(text.encode("utf-8"))
                progress.documents += len(batch)
                progress.tokens = writer.tokens
                on_progress(progress)
        except CorpusError as exc:
            raise PrepareError(str(exc)) from None
        if progress.documents == 0:
            raise PrepareError(f"no documents in {', '.join(inputs)}")
    return progress
