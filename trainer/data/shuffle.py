"""A dataset's shuffle for one epoch, computed once and shared: a ``.npy`` file in the run's data folder that
every rank memory-maps, as Megatron keeps its ``shuffle_idx`` beside its dataset.

At BLOOM's scale (350 B tokens of 2048: 171 M samples) ``torch.randperm`` takes 1.4 GB and about 18 s on
this machine per call: computed by every rank at every start, that is 11 GB per 8-GPU node and a restart
cost that grows with the corpus. Here the first rank to need an epoch's order computes it (the others wait
on the same ``flock``), writes it atomically (temp, fsync, rename) as int32 when the sample count allows,
and everyone after reads the shared pages. The order is exactly ``torch.randperm(n, generator seeded
(seed, epoch))``, the one the dataset used before: runs in progress read the same samples after an upgrade.

A cache file that is not what its name says (cut short, another length) is replaced, never trusted. Orders
of fewer than ``CACHE_MIN_SAMPLES`` samples stay in memory (milliseconds to compute, and a small corpus
goes through many epochs); of a cached dataset, the current and the previous epoch's files are kept.
"""

from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path

import numpy as np
import torch

from trainer.rundir import atomic_write


CACHE_MIN_SAMPLES = 1_000_000
"""Below this an epoch's order is computed in memory (8 MB, about 10 ms), never written."""


def generator_seed(seed: int, epoch: int) -> int:
    """The generator seed of an epoch's order (kept from the in-memory shuffle this replaces)."""
    return seed * 1_000_003 + epoch


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's order of ``n`` samples, in memory (int32 when it fits, else int64)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(generator_seed(seed, epoch)))
    return order.numpy().astype(np.int32 if n <= np.iinfo(np.int32).max else np.int64, copy=False)


def cache_path(cache_dir: Path, name: str, n: int, seed: int, epoch: int) -> Path:
    """``shuffle-<dataset digest>-<n>-<seed>-<epoch>.npy``: one file per dataset, length, seed and epoch."""
    return Path(cache_dir) / f"{_stem(name, n, seed)}-{epoch}.npy"


def _stem(name: str, n: int, seed: int) -> str:
    return f"shuffle-{hashlib.sha1(name.encode()).hexdigest()[:12]}-{n}-{seed}"


def _load(path: Path, n: int) -> np.ndarray | None:
    try:
        order = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return order if order.shape == (n,) and order.dtype.kind == "i" else None


def _drop_older_epochs(cache_dir: Path, stem: str, epoch: int) -> None:
    """The dataset's orders before ``epoch - 1`` (a rank that still maps one keeps its pages)."""
    for old in cache_dir.glob(f"{stem}-*.npy"):
        suffix = old.stem[len(stem) + 1:]
        if suffix.isdigit() and int(suffix) < epoch - 1:
            old.unlink(missing_ok=True)


def shared_permutation(cache_dir: Path, name: str, n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's order, memory-mapped from the cache (computed and written by the first rank to ask)."""
    path = cache_path(cache_dir, name, n, seed, epoch)
    order = _load(path, n)
    if order is not None:
        return order
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one rank computes; the others find its file when they get the lock
        try:
            order = _load(path, n)
            if order is None:
                computed = permutation(n, seed, epoch)
                atomic_write(path, lambda handle: np.save(handle, computed, allow_pickle=False))
                order = _load(path, n)
                _drop_older_epochs(Path(cache_dir), _stem(name, n, seed), epoch)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if order is None:  # written but unreadable (a full disk mid-rename cannot do this; a foreign writer could)
        raise OSError(f"{path}: the shuffle just written cannot be read back")
    return order
