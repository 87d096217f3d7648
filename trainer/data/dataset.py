"""Tokens stored once in memory-mapped files, and samples read from them by position.

``RUN/data/`` holds ``tokenizer.json`` (BLOOM-style byte-level BPE, trained with ``tokenizers`` or
copied from the user's), ``train.bin`` / ``valid.bin`` (token ids, uint16 or uint32) and ``meta.json``
(written last: its presence means the data is complete). Every file is written to a temp name and
renamed. Ranks only read: ``np.memmap`` shares the pages between them.

Sample ``i`` of an epoch is the window ``tokens[j*T : j*T + T + 1]`` with ``j`` the ``i``-th entry of a
permutation seeded by (seed, epoch): a pure function of the position, so any layout and any resume reads
the same tokens for the same position.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from trainer.rundir import DATA_META, TOKENIZER, atomic_write, atomic_write_text, tokens_name

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # BLOOM's ids 0..3
EOS = "</s>"
META = DATA_META


class DataError(Exception):
    """Data that cannot be prepared or read; one line."""


def train_tokenizer(documents: list[str], vocab_size: int):
    """A byte-level BPE like BLOOM's (no normalization, byte fallback through the byte alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return tokenizer


def _encode(tokenizer, documents: Iterable[str], eos_id: int) -> np.ndarray:
    ids: list[int] = []
    batch = list(documents)
    for encoding in tokenizer.encode_batch(batch):
        ids.extend(encoding.ids)
        ids.append(eos_id)
    dtype = np.uint16 if tokenizer.get_vocab_size() <= np.iinfo(np.uint16).max + 1 else np.uint32
    return np.asarray(ids, dtype=dtype)


def prepare(data_dir: Path, documents: list[str], vocab_size: int, tokenizer_file: Path | None = None,
            valid_every: int = 100, source: str = "") -> dict:
    """Tokenize ``documents`` once into ``data_dir`` (every ``valid_every``-th document held out)."""
    from tokenizers import Tokenizer

    data_dir.mkdir(parents=True, exist_ok=True)
    if len(documents) < 2:
        raise DataError(f"the corpus ({source}) holds {len(documents)} document(s): need at least 2")
    if tokenizer_file is not None:
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises its own exception types
            raise DataError(f"{tokenizer_file} is not a tokenizer.json ({exc})") from None
    else:
        tokenizer = train_tokenizer(documents, vocab_size)
    if tokenizer.get_vocab_size() > vocab_size:
        raise DataError(f"the tokenizer has {tokenizer.get_vocab_size()} tokens, more than model.vocab_size="
                        f"{vocab_size}: set model.vocab_size={tokenizer.get_vocab_size()}")
    eos_id = tokenizer.token_to_id(EOS)
    if eos_id is None:
        raise DataError(f"the tokenizer has no {EOS} token")
    valid_docs = documents[::valid_every] if len(documents) >= valid_every else documents[-1:]
    train_docs = [d for i, d in enumerate(documents) if i % valid_every] if len(documents) >= valid_every \
        else documents[:-1]
    train, valid = _encode(tokenizer, train_docs, eos_id), _encode(tokenizer, valid_docs, eos_id)
    atomic_write_text(data_dir / TOKENIZER, tokenizer.to_str())
    atomic_write(data_dir / tokens_name("train"), train.tofile)
    atomic_write(data_dir / tokens_name("valid"), valid.tofile)
    meta = {"source": source, "documents": len(documents), "vocab_size": tokenizer.get_vocab_size(),
            "dtype": str(train.dtype), "train_tokens": int(train.size), "valid_tokens": int(valid.size)}
    atomic_write_text(data_dir / META, json.dumps(meta, indent=1) + "\n")  # last: the data is complete
    return meta


def read_meta(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / META).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{data_dir / META} is unreadable ({exc}): remove {data_dir} to rebuild it") from None


class TokenDataset:
    """Windows of ``seq_length + 1`` tokens by sample position, shuffled per epoch, from a memmap."""

    def __init__(self, path: Path, dtype: str, seq_length: int, seed: int):
        self.tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
        self.seq_length, self.seed = seq_length, seed
        self.samples_per_epoch = (self.tokens.size - 1) // seq_length
        if self.samples_per_epoch < 1:
            raise DataError(f"{path} holds {self.tokens.size} tokens: fewer than one sample of "
                            f"train.seq_length={seq_length}")
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.samples_per_epoch, generator=gen)
        return self._perm

    def __call__(self, position: int) -> torch.Tensor:
        epoch, index = divmod(position, self.samples_per_epoch)
        start = int(self._permutation(epoch)[index]) * self.seq_length
        window = self.tokens[start:start + self.seq_length + 1].astype(np.int64)
        return torch.from_numpy(window)  # (T+1,)
