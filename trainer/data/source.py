"""The run's sample source: prepare ``RUN/data`` once, then map a sample position to its tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from trainer.config import RunConfig
from trainer.data import dataset
from trainer.data.synthetic import synthetic_sample
from trainer.rundir import RunDir


def data_dir(run: RunDir) -> Path:
    return run.data


def prepare_data(run: RunDir, cfg: RunConfig) -> dict | None:
    """Build the token files unless they exist (idempotent; one process only). None for synthetic data."""
    if cfg.data.source == "synthetic":
        return None
    meta = dataset.read_meta(data_dir(run))
    if meta is not None:
        if meta["vocab_size"] > cfg.model.vocab_size:
            raise dataset.DataError(f"{data_dir(run)} was tokenized with {meta['vocab_size']} tokens, more than "
                                    f"model.vocab_size={cfg.model.vocab_size}")
        return meta
    from trainer.data.corpus import file_documents, stdlib_documents
    if cfg.data.source == "stdlib":
        documents = list(stdlib_documents(cfg.data.max_corpus_bytes))
    else:
        try:
            documents = list(file_documents([cfg.data.source], cfg.data.max_corpus_bytes))
        except FileNotFoundError as exc:
            raise dataset.DataError(str(exc)) from None
    tokenizer = Path(cfg.data.tokenizer) if cfg.data.tokenizer else None
    return dataset.prepare(data_dir(run), documents, cfg.model.vocab_size, tokenizer_file=tokenizer,
                           valid_every=cfg.data.valid_every, source=cfg.data.source)


def sample_source(run: RunDir, cfg: RunConfig, split: str = "train") -> Callable[[int], torch.Tensor]:
    """position -> (seq_length + 1) token ids."""
    seq, seed = cfg.train.seq_length, cfg.train.seed
    if cfg.data.source == "synthetic":
        offset = 0 if split == "train" else 1 << 40  # validation samples never seen in training
        return lambda i: synthetic_sample(offset + i, seq, cfg.model.vocab_size, seed)
    meta = dataset.read_meta(data_dir(run))
    if meta is None:
        raise dataset.DataError(f"{data_dir(run)} is not prepared (no {dataset.META})")
    return dataset.TokenDataset(run.tokens(split), meta["dtype"], seq, seed)
