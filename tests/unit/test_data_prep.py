"""Real text: the stdlib corpus, the BPE tokenizer, memory-mapped tokens, per-epoch shuffling."""

import json

import numpy as np
import pytest

from trainer.data import dataset
from trainer.data.corpus import file_documents, stdlib_documents


def test_stdlib_corpus_is_prose_then_code_within_budget():
    docs = list(stdlib_documents(300_000))
    assert sum(map(len, docs)) <= 300_000 and len(docs) > 20
    assert any("Return" in d for d in docs)  # docstrings: English prose
    assert docs == list(stdlib_documents(300_000))  # deterministic


def test_prepare_trains_a_byte_level_bpe_and_memmaps_tokens(tmp_path):
    docs = list(stdlib_documents(200_000))
    meta = dataset.prepare(tmp_path / "data", docs, vocab_size=1024, valid_every=10, source="stdlib")
    assert meta["vocab_size"] <= 1024 and meta["dtype"] == "uint16"
    assert json.loads((tmp_path / "data" / "meta.json").read_text()) == meta
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tmp_path / "data" / "tokenizer.json"))
    assert [tok.token_to_id(t) for t in dataset.SPECIAL_TOKENS] == [0, 1, 2, 3]
    text = "def f(x):\n    return x  # ünïcode ✓"
    assert tok.decode(tok.encode(text).ids) == text  # byte-level: lossless on any text
    tokens = np.memmap(tmp_path / "data" / "train.bin", dtype=np.uint16, mode="r")
    assert tokens.size == meta["train_tokens"] and (tokens == 2).sum() > 0  # </s> between documents

    ds = dataset.TokenDataset(dataset.open_tokens(tmp_path / "data" / "train.bin", "uint16"), seq_length=32, seed=1)
    a = ds(5)
    assert a.shape == (33,) and a.equal(ds(5))
    epoch = [int(ds(i)[0]) for i in range(ds.samples_per_epoch)]
    again = [int(ds(ds.samples_per_epoch + i)[0]) for i in range(ds.samples_per_epoch)]
    assert sorted(epoch) == sorted(again) and epoch != again  # each epoch is a new permutation


def test_user_files_and_a_given_tokenizer(tmp_path):
    (tmp_path / "corpus").mkdir()
    for i in range(5):
        (tmp_path / "corpus" / f"{i}.txt").write_text(f"document {i} " * 50)
    docs = list(file_documents([tmp_path / "corpus"]))
    assert len(docs) == 5
    dataset.prepare(tmp_path / "a", docs, vocab_size=300, valid_every=2)
    meta = dataset.prepare(tmp_path / "b", docs, vocab_size=300, valid_every=2,
                           tokenizer_file=tmp_path / "a" / "tokenizer.json")
    assert meta["vocab_size"] == json.loads((tmp_path / "a" / "meta.json").read_text())["vocab_size"]
    with pytest.raises(dataset.DataError, match="more than model.vocab_size=100"):
        dataset.prepare(tmp_path / "c", docs, vocab_size=100, tokenizer_file=tmp_path / "a" / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(file_documents([tmp_path / "nope"]))
