"""The run's sample source: map a sample position to its tokens.

Three kinds of ``data.source``: ``synthetic`` (computed), text (the stdlib corpus, files, folders, jsonl:
tokenized once into ``RUN/data`` by ``prepare_data``), and Megatron indexed datasets, one or a weighted blend,
read in place (nothing copied; ``prepare_data`` only checks them and stores the tokenizer). Every kind is a
pure function of the position (trainer/data/sampler.py relies on it for resume and skip ranges).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from trainer.config import RunConfig
from trainer.data import dataset
from trainer.data.blend import BlendError, blended, parse_blend
from trainer.data.indexed import IndexedDataset, IndexedDatasetError, is_indexed, open_indexed
from trainer.data.synthetic import synthetic_sample
from trainer.rundir import RunDir

SPLITS = ("train", "valid")


def data_dir(run: RunDir) -> Path:
    return run.data


def indexed_blend(cfg: RunConfig) -> list[tuple[float, str]] | None:
    """The (weight, prefix) pairs when ``data.source`` names Megatron indexed datasets, else None."""
    if cfg.data.source in ("stdlib", "synthetic"):
        return None
    try:
        blend = parse_blend(cfg.data.source)
    except BlendError as exc:
        raise dataset.DataError(str(exc)) from None
    if len(blend) == 1 and not is_indexed(blend[0][1]):
        return None  # one file or folder of text
    return blend


def prepare_data(run: RunDir, cfg: RunConfig) -> dict | None:
    """Make the data ready for the ranks (idempotent; one process only). Text is tokenized into ``RUN/data``
    unless it is there; indexed datasets are checked in place. None for synthetic data."""
    if cfg.data.source == "synthetic":
        return None
    blend = indexed_blend(cfg)
    if blend is not None:
        return _check_indexed(run, cfg, blend)
    meta = dataset.read_meta(data_dir(run))
    if meta is not None:
        if meta["vocab_size"] > cfg.model.vocab_size:
            raise dataset.DataError(f"{data_dir(run)} was tokenized with {meta['vocab_size']} tokens, more than "
                                    f"model.vocab_size={cfg.model.vocab_size}")
        return meta
    from trainer.data.corpus import CorpusError, file_documents, stdlib_documents
    if cfg.data.source == "stdlib":
        documents = lambda: stdlib_documents(cfg.data.max_corpus_bytes)  # noqa: E731
    else:
        if not Path(cfg.data.source).exists():
            raise dataset.DataError(f"data path {cfg.data.source} does not exist")
        documents = lambda: file_documents([cfg.data.source], cfg.data.json_key)  # noqa: E731
    tokenizer = Path(cfg.data.tokenizer) if cfg.data.tokenizer else None
    try:
        return dataset.prepare(data_dir(run), documents, cfg.model.vocab_size, tokenizer_file=tokenizer,
                               valid_every=cfg.data.valid_every, source=cfg.data.source)
    except CorpusError as exc:
        raise dataset.DataError(str(exc)) from None


def _open(prefix: str) -> IndexedDataset:
    try:
        return open_indexed(prefix)
    except IndexedDatasetError as exc:
        raise dataset.DataError(str(exc)) from None


def _check_indexed(run: RunDir, cfg: RunConfig, blend: list[tuple[float, str]]) -> dict:
    """Every dataset of the blend opens, has a document for each split and a sample's worth of tokens; the
    tokenizer named (if any) fits the model and is kept in ``RUN/data`` (the run's tokenizer, for exports)."""
    facts = {"source": cfg.data.source, "documents": 0, "train_tokens": 0, "valid_tokens": 0,
             "vocab_size": cfg.model.vocab_size}
    for _, prefix in blend:
        opened = _open(prefix)
        facts["documents"] += opened.documents
        for split in SPLITS:
            facts[f"{split}_tokens"] += int(split_source(opened, split, cfg, 0).tokens.size)
    if cfg.data.tokenizer:
        from tokenizers import Tokenizer
        try:
            facts["vocab_size"] = Tokenizer.from_file(cfg.data.tokenizer).get_vocab_size()
        except Exception as exc:  # tokenizers raises its own exception types
            raise dataset.DataError(f"{cfg.data.tokenizer} is not a tokenizer.json ({exc})") from None
        if facts["vocab_size"] > cfg.model.vocab_size:
            raise dataset.DataError(f"data.tokenizer has {facts['vocab_size']} tokens, more than "
                                    f"model.vocab_size={cfg.model.vocab_size}: set model.vocab_size="
                                    f"{facts['vocab_size']}")
        from trainer.hf_tokenizer import keep_tokenizer
        keep_tokenizer(Path(cfg.data.tokenizer), data_dir(run))
    return facts


def split_source(data: IndexedDataset, split: str, cfg: RunConfig, seed: int,
                 shuffle_cache: Path | None = None) -> dataset.TokenDataset:
    """The train or valid part of an indexed dataset: the last ``1 / data.valid_every`` of its documents (at
    least one) are the validation split, the rest the training split, as Megatron's contiguous ``--split``."""
    if data.documents < 2:
        raise dataset.DataError(f"{data.prefix} holds {data.documents} document(s): need at least 2 "
                                f"(one for each split)")
    held_out = max(1, data.documents // cfg.data.valid_every)
    boundary = int(data.document_starts[data.documents - held_out])
    tokens = data.tokens[:boundary] if split == "train" else data.tokens[boundary:]
    return dataset.TokenDataset(tokens, cfg.train.seq_length, seed, name=f"{data.prefix} ({split} split)",
                                vocab_size=cfg.model.vocab_size, shuffle_cache=shuffle_cache)


def sample_source(run: RunDir, cfg: RunConfig, split: str = "train") -> Callable[[int], torch.Tensor]:
    """position -> (seq_length + 1) token ids."""
    seq, seed = cfg.train.seq_length, cfg.train.seed
    if cfg.data.source == "synthetic":
        offset = 0 if split == "train" else 1 << 40  # validation samples never seen in training
        return lambda i: synthetic_sample(offset + i, seq, cfg.model.vocab_size, seed)
    blend = indexed_blend(cfg)
    if blend is not None:
        # Each dataset its own shuffle: seeds apart by the dataset's place in the blend.
        sources = [split_source(_open(prefix), split, cfg, seed * 1_000 + k, data_dir(run))
                   for k, (_, prefix) in enumerate(blend)]
        return blended(sources, [weight for weight, _ in blend])
    meta = dataset.read_meta(data_dir(run))
    if meta is None:
        raise dataset.DataError(f"{data_dir(run)} is not prepared (no {dataset.META})")
    tokens = dataset.open_tokens(run.tokens(split), meta["dtype"])
    return dataset.TokenDataset(tokens, seq, seed, name=str(run.tokens(split)), vocab_size=cfg.model.vocab_size,
                                shuffle_cache=data_dir(run))
