"""Tokens stored once in memory-mapped files, and samples read from them by position.

``RUN/data/`` holds ``tokenizer.json`` (BLOOM-style byte-level BPE, trained with ``tokenizers`` or
copied from the user's), ``train`` / ``valid`` as Megatron indexed datasets (``.bin`` token ids, uint16 or
int32, and ``.idx``: trainer/data/indexed.py) and ``meta.json`` (written last: its presence means the data
is complete). Every file is written to a temp name and renamed. Ranks only read: ``np.memmap`` shares the
pages between them. A user's Megatron indexed datasets are read in place (trainer/data/source.py).

Sample ``i`` of an epoch is the window ``tokens[j*T : j*T + T + 1]`` with ``j`` the ``i``-th entry of a
permutation seeded by (seed, epoch): a pure function of the position, so any layout and any resume reads
the same tokens for the same position.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from trainer.data import shuffle
from trainer.data.indexed import IndexedWriter, open_indexed, paths
from trainer.hf_tokenizer import keep_tokenizer
from trainer.rundir import DATA_META, atomic_write_text, tokens_name

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # BLOOM's ids 0..3
EOS = "</s>"
META = DATA_META


class DataError(Exception):
    """Data that cannot be prepared or read; one line."""


def train_tokenizer(documents: Iterable[str], vocab_size: int):
    """A byte-level BPE like BLOOM's (no normalization, byte fallback through the byte alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return tokenizer


DocumentStream = Callable[[], Iterable[str]]
"""A corpus that can be read more than once (the tokenizer pass, then the encoding pass), streamed."""
BATCH_DOCUMENTS = 1024


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while the ids fit (as Megatron's ``best_fitting_dtype``), else int32."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


def batches(documents: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of ``size`` documents (the last one shorter), read lazily."""
    batch: list[str] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _tokenizer(documents: DocumentStream, vocab_size: int, tokenizer_file: Path | None):
    """(tokenizer, number of documents): the given ``tokenizer.json`` or a BPE trained on one pass."""
    from tokenizers import Tokenizer

    count = 0

    def counted() -> Iterator[str]:
        nonlocal count
        for document in documents():
            count += 1
            yield document

    if tokenizer_file is not None:
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises its own exception types
            raise DataError(f"{tokenizer_file} is not a tokenizer.json ({exc})") from None
        for _ in counted():
            pass
    else:
        tokenizer = train_tokenizer(counted(), vocab_size)
    return tokenizer, count


def end_of_document_id(tokenizer, tokenizer_file: Path | None) -> int:
    """The id appended to every document: the given tokenizer's EOS as its folder declares it (or by name:
    ``trainer.hf_tokenizer``), ``</s>`` for the BPE trained here."""
    from trainer.hf_tokenizer import ROLE_NAMES, special_tokens_of

    if tokenizer_file is None:
        return tokenizer.token_to_id(EOS)
    eos = special_tokens_of(tokenizer_file, tokenizer).ids.get("eos")
    if eos is None:
        raise DataError(f"{tokenizer_file} has no end-of-document token (none declared beside it, none of "
                        f"{', '.join(ROLE_NAMES['eos'])})")
    return eos


def held_out(index: int, count: int, valid_every: int) -> bool:
    """Whether document ``index`` of ``count`` is a validation document: every ``valid_every``-th, or the
    last one of a corpus smaller than that."""
    return index % valid_every == 0 if count >= valid_every else index == count - 1


def prepare(data_dir: Path, documents: DocumentStream | list[str], vocab_size: int,
            tokenizer_file: Path | None = None, valid_every: int = 100, source: str = "") -> dict:
    """Tokenize the corpus once into ``data_dir`` (every ``valid_every``-th document held out): two streamed
    passes, ``BATCH_DOCUMENTS`` documents in memory at a time, the token ids written as Megatron indexed
    datasets ``train``/``valid`` (readable by Megatron's own reader) with ``</s>`` after each document."""
    stream: DocumentStream = documents if callable(documents) else (lambda: iter(documents))
    data_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, count = _tokenizer(stream, vocab_size, tokenizer_file)
    if count < 2:
        raise DataError(f"the corpus ({source}) holds {count} document(s): need at least 2")
    if tokenizer.get_vocab_size() > vocab_size:
        raise DataError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens, more than model.vocab_size="
                        f"{vocab_size}: set model.vocab_size={tokenizer.get_vocab_size()}")
    eos_id = end_of_document_id(tokenizer, tokenizer_file)
    dtype = token_dtype(tokenizer.get_vocab_size())
    index = 0
    with IndexedWriter(data_dir / tokens_name("train"), dtype) as train, \
            IndexedWriter(data_dir / tokens_name("valid"), dtype) as valid:
        for batch in batches(stream(), BATCH_DOCUMENTS):
            for encoding in tokenizer.encode_batch(batch):
                (valid if held_out(index, count, valid_every) else train).add_document(encoding.ids + [eos_id])
                index += 1
    keep_tokenizer(tokenizer_file, data_dir, tokenizer.to_str())
    meta = {"source": source, "documents": count, "vocab_size": tokenizer.get_vocab_size(),
            "dtype": dtype.name, "train_tokens": train.tokens, "valid_tokens": valid.tokens}
    atomic_write_text(data_dir / META, json.dumps(meta, indent=1) + "\n")  # last: the data is complete
    return meta


def read_meta(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / META).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{data_dir / META} is unreadable ({exc}): remove {data_dir} to rebuild it") from None


def open_tokens(path: Path, dtype: str) -> np.ndarray:
    """The token ids of a prepared split: an indexed dataset, or (data prepared by bigops before it wrote
    them) a bare ``.bin`` of ``dtype``."""
    if paths(path)[1].is_file():
        return open_indexed(path).tokens
    return np.memmap(path, dtype=np.dtype(dtype), mode="r")


class TokenDataset:
    """Windows of ``seq_length + 1`` tokens by sample position, shuffled per epoch, from token ids in memory
    or memory-mapped (one stream: documents back to back, separated by their end-of-document token).
    ``vocab_size``: refuse a window holding an id the model has no embedding for, naming the data."""

    def __init__(self, tokens: np.ndarray, seq_length: int, seed: int, name: str = "the data",
                 vocab_size: int | None = None, shuffle_cache: Path | None = None):
        self.tokens, self.name, self.vocab_size = tokens, name, vocab_size
        self.shuffle_cache = shuffle_cache
        self.seq_length, self.seed = seq_length, seed
        self.samples_per_epoch = (self.tokens.size - 1) // seq_length
        if self.samples_per_epoch < 1:
            raise DataError(f"{name} holds {self.tokens.size} tokens: fewer than one sample of "
                            f"train.seq_length={seq_length}")
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        """The epoch's order: shared through ``shuffle_cache`` for a large dataset (trainer/data/shuffle.py)."""
        if epoch != self._epoch:
            n = self.samples_per_epoch
            if self.shuffle_cache is not None and n >= shuffle.CACHE_MIN_SAMPLES:
                order = shuffle.shared_permutation(self.shuffle_cache, self.name, n, self.seed, epoch)
            else:
                order = shuffle.permutation(n, self.seed, epoch)
            self._epoch, self._perm = epoch, order
        return self._perm

    def __call__(self, position: int) -> torch.Tensor:
        epoch, index = divmod(position, self.samples_per_epoch)
        start = int(self._permutation(epoch)[index]) * self.seq_length
        window = self.tokens[start:start + self.seq_length + 1].astype(np.int64)
        if self.vocab_size is not None and (window.min() < 0 or window.max() >= self.vocab_size):
            raise DataError(f"{self.name} holds token id {int(window.max())} (or a negative one), outside "
                            f"model.vocab_size={self.vocab_size}: was it tokenized with another tokenizer?")
        return torch.from_numpy(window)  # (T+1,)
