"""Megatron's indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``), read in place and written streaming.

The format BLOOM's ROOTS corpus was stored in, and what every Megatron(-DeepSpeed) user's data already is.
``PREFIX.bin`` is the token ids of every document, back to back; ``PREFIX.idx`` says where each sequence and
document starts. Two index versions exist, both read here:

- ``MMIDIDX`` (megatron-core's ``IndexedDataset``, Megatron-DeepSpeed's ``--dataset-impl mmap``): header
  ``b"MMIDIDX\\x00\\x00"``, version ``<Q`` = 1, dtype code ``<B``, sequence count ``<Q``, document-index count
  ``<Q``; then the sequence lengths (int32), their byte offsets into ``.bin`` (int64) and the document index
  (int64: the first sequence of each document, then the sequence count). Multimodal files append one int8
  mode per sequence, which text training ignores.
- ``TNTIDX`` (Megatron-DeepSpeed's ``--dataset-impl lazy|cached``, from fairseq): header
  ``b"TNTIDX\\x00\\x00"``, version ``<Q`` = 1, ``<QQ`` dtype code and element size, ``<QQ`` sequence count and
  size count, ``<Q`` document-index count; then dim offsets, data offsets (in elements), sizes and the document
  index, all int64.

Reading memory-maps ``.bin`` (no copy: the ranks share the pages) and checks that it is as long as the index
says, so a truncated copy is refused instead of read past. Writing streams documents to ``.bin`` and keeps
only the per-document lengths in memory (8 bytes a document), then writes ``.idx``; both land under their final
names only when complete (temp + fsync + rename), so a reader never sees half a dataset.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.rundir import fsync_dir

MMAP_MAGIC = b"MMIDIDX\x00\x00"
LEGACY_MAGIC = b"TNTIDX\x00\x00"
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
          8: np.uint16}
"""Megatron's dtype codes (megatron-core's ``DType``; Megatron-DeepSpeed's table has the same integers)."""
TOKEN_DTYPES = (np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16)


class IndexedDatasetError(Exception):
    """An indexed dataset that is missing, truncated or not in either index format; one line."""


def paths(prefix: str | Path) -> tuple[Path, Path]:
    """``PREFIX`` (also given as ``PREFIX.bin`` or ``PREFIX.idx``) -> (``PREFIX.bin``, ``PREFIX.idx``)."""
    prefix = str(prefix)
    if prefix.endswith((".bin", ".idx")):
        prefix = prefix[:-4]
    return Path(prefix + ".bin"), Path(prefix + ".idx")


def is_indexed(prefix: str | Path) -> bool:
    """Whether ``prefix`` names an indexed dataset (both files exist)."""
    bin_path, idx_path = paths(prefix)
    return bin_path.is_file() and idx_path.is_file()


@dataclass(frozen=True)
class IndexedDataset:
    """One indexed dataset, memory-mapped: ``tokens`` is every token id in ``.bin`` order (documents back to
    back, each ending with the end-of-document token when the writer appended one), ``document_starts`` the
    token offset where each document begins, plus the end (n_documents + 1 entries)."""

    prefix: str
    tokens: np.ndarray          # (n_tokens,) memmap of .bin
    document_starts: np.ndarray  # (n_documents + 1,) int64 token offsets

    @property
    def documents(self) -> int:
        return len(self.document_starts) - 1

    def document(self, index: int) -> np.ndarray:
        """The token ids of document ``index`` (a view, no copy)."""
        return self.tokens[self.document_starts[index]:self.document_starts[index + 1]]


def open_indexed(prefix: str | Path) -> IndexedDataset:
    """Memory-map the dataset at ``prefix``, in either index version (module docstring)."""
    bin_path, idx_path = paths(prefix)
    name = str(bin_path)[:-4]
    if not (bin_path.is_file() and idx_path.is_file()):
        raise IndexedDatasetError(f"{name}: no indexed dataset here (need {bin_path.name} and {idx_path.name})")
    try:
        with open(idx_path, "rb") as stream:
            magic = stream.read(9)
        if magic == MMAP_MAGIC:
            dtype, token_offsets = _read_mmap_index(idx_path)
        elif magic[:8] == LEGACY_MAGIC:
            dtype, token_offsets = _read_legacy_index(idx_path)
        else:
            raise IndexedDatasetError(f"{idx_path}: not a Megatron index (header {magic[:8]!r})")
    except (struct.error, ValueError, KeyError) as exc:
        raise IndexedDatasetError(f"{idx_path}: damaged index ({exc})") from None
    expected = int(token_offsets[-1]) * np.dtype(dtype).itemsize if len(token_offsets) else 0
    size = bin_path.stat().st_size
    if size < expected:
        raise IndexedDatasetError(f"{bin_path}: {size} bytes, the index needs {expected}: truncated copy?")
    tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(expected // np.dtype(dtype).itemsize,)) \
        if expected else np.zeros(0, dtype=dtype)
    return IndexedDataset(name, tokens, token_offsets)


def _dtype(code: int, idx_path: Path):
    dtype = DTYPES.get(code)
    if dtype is None:
        raise IndexedDatasetError(f"{idx_path}: unknown dtype code {code}")
    if dtype not in TOKEN_DTYPES:
        raise IndexedDatasetError(f"{idx_path}: holds {np.dtype(dtype).name} values, not token ids")
    return dtype


def _document_starts(doc_index: np.ndarray, sequence_starts: np.ndarray, idx_path: Path) -> np.ndarray:
    """Token offsets of the documents from the document index (first sequence of each, then the count) and
    the token offset of every sequence plus the end."""
    if len(doc_index) == 0 or doc_index[0] != 0 or np.any(np.diff(doc_index) < 0) \
            or doc_index[-1] > len(sequence_starts) - 1:
        raise IndexedDatasetError(f"{idx_path}: damaged document index")
    return sequence_starts[doc_index].astype(np.int64)


def _read_mmap_index(idx_path: Path):
    buffer = np.memmap(idx_path, mode="r", dtype=np.uint8)
    version, = struct.unpack_from("<Q", buffer, 9)
    if version != 1:
        raise IndexedDatasetError(f"{idx_path}: MMIDIDX version {version}, only 1 exists")
    code, = struct.unpack_from("<B", buffer, 17)
    dtype = _dtype(code, idx_path)
    sequences, doc_count = struct.unpack_from("<QQ", buffer, 18)
    offset = 34
    lengths = np.frombuffer(buffer, dtype=np.int32, count=sequences, offset=offset)
    pointers = np.frombuffer(buffer, dtype=np.int64, count=sequences, offset=offset + 4 * sequences)
    doc_index = np.frombuffer(buffer, dtype=np.int64, count=doc_count, offset=offset + 12 * sequences)
    itemsize = np.dtype(dtype).itemsize
    starts = np.empty(sequences + 1, dtype=np.int64)
    starts[:-1] = pointers // itemsize
    starts[-1] = (int(pointers[-1]) // itemsize + int(lengths[-1])) if sequences else 0
    if sequences and np.any(starts[1:-1] != starts[:-2] + lengths[:-1]):
        raise IndexedDatasetError(f"{idx_path}: sequences are not back to back in .bin")
    return dtype, _document_starts(doc_index, starts, idx_path)


def _read_legacy_index(idx_path: Path):
    with open(idx_path, "rb") as stream:
        stream.read(8)
        version, = struct.unpack("<Q", stream.read(8))
        if version != 1:
            raise IndexedDatasetError(f"{idx_path}: TNTIDX version {version}, only 1 exists")
        code, _element_size = struct.unpack("<QQ", stream.read(16))
        sequences, _size_count = struct.unpack("<QQ", stream.read(16))
        doc_count, = struct.unpack("<Q", stream.read(8))
        stream.seek(8 * (sequences + 1), os.SEEK_CUR)  # dim offsets: one dimension per sequence for text
        data_offsets = np.fromfile(stream, dtype=np.int64, count=sequences + 1)  # in elements
        stream.seek(8 * _size_count, os.SEEK_CUR)
        doc_index = np.fromfile(stream, dtype=np.int64, count=doc_count)
    if len(data_offsets) != sequences + 1 or len(doc_index) != doc_count:
        raise IndexedDatasetError(f"{idx_path}: shorter than its header says")
    return _dtype(code, idx_path), _document_starts(doc_index, data_offsets, idx_path)


class IndexedWriter:
    """Write an MMIDIDX dataset one document at a time (one sequence per document, as Megatron's
    ``preprocess_data.py`` does without sentence splitting). Memory: 4 bytes a document.

    Use as a context manager; the dataset appears under ``PREFIX.bin``/``PREFIX.idx`` only on a clean exit."""

    def __init__(self, prefix: str | Path, dtype=np.uint16):
        self.bin_path, self.idx_path = paths(prefix)
        self.dtype = np.dtype(dtype)
        self._lengths: list[int] = []
        self.tokens = 0
        self._tmp_bin = self.bin_path.with_name(f".{self.bin_path.name}.tmp{os.getpid()}")
        self._file = None

    def __enter__(self) -> "IndexedWriter":
        self.bin_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp_bin, "wb")
        return self

    def add_document(self, ids) -> None:
        array = np.asarray(ids, dtype=self.dtype)
        self._file.write(array.tobytes(order="C"))
        self._lengths.append(int(array.size))
        self.tokens += int(array.size)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if exc_type is not None:
            self._tmp_bin.unlink(missing_ok=True)
            return
        code = next(c for c, d in DTYPES.items() if np.dtype(d) == self.dtype)
        lengths = np.asarray(self._lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths):
            pointers[1:] = np.cumsum(lengths[:-1], dtype=np.int64) * self.dtype.itemsize
        doc_index = np.arange(len(lengths) + 1, dtype=np.int64)
        tmp_idx = self.idx_path.with_name(f".{self.idx_path.name}.tmp{os.getpid()}")
        with open(tmp_idx, "wb") as out:
            out.write(MMAP_MAGIC + struct.pack("<Q", 1) + struct.pack("<B", code))
            out.write(struct.pack("<QQ", len(lengths), len(doc_index)))
            out.write(lengths.tobytes() + pointers.tobytes() + doc_index.tobytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(self._tmp_bin, self.bin_path)  # .bin first: an .idx never points at a missing .bin
        os.replace(tmp_idx, self.idx_path)
        fsync_dir(self.idx_path.parent)
