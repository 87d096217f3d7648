"""The shared shuffle (trainer/data/shuffle.py): the same order as the in-memory one it replaces, computed
once (the next reader maps the file), one file under concurrent first use, a bad file replaced."""

import multiprocessing

import numpy as np
import pytest
import torch

from trainer.data import dataset, shuffle

pytestmark = pytest.mark.unit


def test_the_order_is_the_randperm_runs_in_progress_were_reading():
    n, seed, epoch = 10_000, 7, 3
    before = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).numpy()
    order = shuffle.permutation(n, seed, epoch)
    assert order.dtype == np.int32 and np.array_equal(order, before)


def test_a_large_datasets_order_is_computed_once_and_memory_mapped(tmp_path, monkeypatch):
    n = shuffle.CACHE_MIN_SAMPLES
    tokens = np.zeros(n * 4 + 1, dtype=np.uint16)
    first = dataset.TokenDataset(tokens, 4, seed=1, name="corpus (train split)", shuffle_cache=tmp_path)
    first(5)
    (cached,) = tmp_path.glob("shuffle-*-0.npy")
    assert cached.stat().st_size < n * 4 + 1024  # int32

    expected = shuffle.permutation(n, 1, 0)

    def no_randperm(*args, **kwargs):
        raise AssertionError("computed again")
    monkeypatch.setattr(torch, "randperm", no_randperm)
    again = dataset.TokenDataset(tokens, 4, seed=1, name="corpus (train split)", shuffle_cache=tmp_path)
    again(5)
    assert isinstance(again._perm, np.memmap) and np.array_equal(again._perm, expected)  # shared pages


def _first_use(args):
    cache, n = args
    return int(shuffle.shared_permutation(cache, "d", n, 3, 0)[:5].sum())


def test_ranks_starting_together_write_one_file_and_read_the_same_order(tmp_path):
    n = 200_000
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        sums = pool.map(_first_use, [(tmp_path, n)] * 4, chunksize=1)
    assert len(set(sums)) == 1 and len(list(tmp_path.glob("shuffle-*.npy"))) == 1
    assert sums[0] == int(shuffle.permutation(n, 3, 0)[:5].sum())


def test_a_damaged_file_is_replaced_and_old_epochs_are_dropped(tmp_path):
    n = 50_000
    path = shuffle.cache_path(tmp_path, "d", n, 3, 0)
    path.write_bytes(b"\x93NUMPY cut short")
    assert np.array_equal(shuffle.shared_permutation(tmp_path, "d", n, 3, 0), shuffle.permutation(n, 3, 0))
    for epoch in (1, 2, 3):
        shuffle.shared_permutation(tmp_path, "d", n, 3, epoch)
    assert sorted(p.name.rsplit("-", 1)[1] for p in tmp_path.glob("shuffle-*.npy")) == ["2.npy", "3.npy"]
    other = shuffle.cache_path(tmp_path, "d", n + 1, 3, 0)
    np.save(other, np.arange(n, dtype=np.int32))  # another length under this name: not trusted
    assert shuffle.shared_permutation(tmp_path, "d", n + 1, 3, 0).shape == (n + 1,)
