"""Megatron indexed datasets: read what megatron-core's own builder writes (and Megatron-DeepSpeed's legacy
index), write what megatron-core's own reader reads, blends by weight as a pure function of position, and
text corpora (jsonl fields, no silent cap) streamed into the run's data."""

from __future__ import annotations

import json
import struct
from collections import Counter

import numpy as np
import pytest
import torch

from trainer import config as config_mod
from trainer.data import dataset
from trainer.data.blend import BLOCK, BlendError, BlendSchedule, parse_blend
from trainer.data.indexed import IndexedDatasetError, IndexedWriter, open_indexed
from trainer.data.source import prepare_data, sample_source
from trainer.rundir import RunDir

# megatron-core warns that it runs without Transformer Engine/Apex and about NumPy 2's copy keyword.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _documents(seed: int, count: int, low: int, high: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, size=int(rng.integers(5, 60))).astype(np.int64) for _ in range(count)]


def _megatron_write(prefix, documents, dtype=np.uint16) -> None:
    """megatron-core's own builder, as its preprocess_data.py uses it."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for doc in documents:
        builder.add_document(torch.from_numpy(doc), [len(doc)])
    builder.finalize(f"{prefix}.idx")


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_reads_what_megatron_cores_builder_writes(tmp_path, dtype):
    docs = _documents(1, 40, 0, 250_000 if dtype == np.int32 else 60_000)
    _megatron_write(tmp_path / "corpus_text_document", docs, dtype)
    data = open_indexed(tmp_path / "corpus_text_document")
    assert data.documents == 40 and data.tokens.dtype == dtype
    assert all(np.array_equal(data.document(i), doc) for i, doc in enumerate(docs))
    assert np.array_equal(data.tokens, np.concatenate(docs))
    assert open_indexed(tmp_path / "corpus_text_document.bin").documents == 40  # the prefix or either file


def test_megatron_cores_reader_reads_what_we_write(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    docs = _documents(2, 30, 0, 1000)
    with IndexedWriter(tmp_path / "ours") as writer:
        for doc in docs:
            writer.add_document(doc)
    theirs = IndexedDataset(str(tmp_path / "ours"))
    assert len(theirs) == 30 and len(theirs.document_indices) == 31
    assert all(np.array_equal(theirs[i], doc) for i, doc in enumerate(docs))


def test_a_failed_write_leaves_no_dataset(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedWriter(tmp_path / "half") as writer:
            writer.add_document([1, 2, 3])
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def _legacy_write(prefix, documents) -> None:
    """Megatron-DeepSpeed's ``--dataset-impl lazy`` index (its IndexedDatasetBuilder.finalize, from fairseq),
    spelled out here independently of our reader."""
    sizes = [len(d) for d in documents]
    data_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    with open(f"{prefix}.bin", "wb") as out:
        for doc in documents:
            out.write(doc.astype(np.int32).tobytes())
    with open(f"{prefix}.idx", "wb") as out:
        out.write(b"TNTIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<QQ", 4, 4))
        out.write(struct.pack("<QQ", len(documents), len(sizes)) + struct.pack("<Q", len(documents) + 1))
        out.write(np.arange(len(documents) + 1, dtype=np.int64).tobytes())  # dim offsets: 1-D items
        out.write(data_offsets.tobytes() + np.asarray(sizes, dtype=np.int64).tobytes())
        out.write(np.arange(len(documents) + 1, dtype=np.int64).tobytes())  # one item per document


def test_reads_megatron_deepspeeds_legacy_index(tmp_path):
    docs = _documents(3, 12, 0, 5000)
    _legacy_write(tmp_path / "old", docs)
    data = open_indexed(tmp_path / "old")
    assert data.documents == 12 and all(np.array_equal(data.document(i), d) for i, d in enumerate(docs))


def test_a_truncated_or_foreign_dataset_is_refused_in_one_line(tmp_path):
    _megatron_write(tmp_path / "d", _documents(4, 10, 0, 100))
    with open(tmp_path / "d.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(IndexedDatasetError, match="truncated copy"):
        open_indexed(tmp_path / "d")
    (tmp_path / "e.bin").write_bytes(b"")
    (tmp_path / "e.idx").write_bytes(b"PK\x03\x04 not an index")
    with pytest.raises(IndexedDatasetError, match="not a Megatron index"):
        open_indexed(tmp_path / "e")
    with pytest.raises(IndexedDatasetError, match="no indexed dataset here"):
        open_indexed(tmp_path / "missing")


def test_blend_parsing_as_megatrons_data_path():
    assert parse_blend("0.3 /a 0.7 /b") == [(0.3, "/a"), (0.7, "/b")]
    assert parse_blend("/only") == [(1.0, "/only")]
    with pytest.raises(BlendError, match="weight-path pairs"):
        parse_blend("0.3 /a /b")
    with pytest.raises(BlendError, match="not a weight"):
        parse_blend("a /a b /b")


def test_blend_schedule_meets_the_weights_and_is_a_bijection_per_dataset():
    schedule = BlendSchedule.of([3, 7])
    assert list(schedule.shares) == [3000, 7000]
    located = [schedule.locate(i) for i in range(3 * BLOCK)]
    counts = Counter(d for d, _ in located)
    assert counts == {0: 9000, 1: 21000}
    for d in (0, 1):  # each dataset's own positions 0, 1, 2, ... in order, none twice
        assert [own for dd, own in located if dd == d] == list(range(counts[d]))
    prefix = Counter(d for d, _ in located[:100])  # interleaved from the start, as Megatron's greedy rule
    assert prefix == {0: 30, 1: 70}
    assert schedule.locate(10**12 + 17) == BlendSchedule.of([3, 7]).locate(10**12 + 17)  # pure: any position


def _indexed_run(tmp_path, source: str) -> tuple[RunDir, config_mod.RunConfig]:
    cfg = config_mod.RunConfig()
    cfg.data.source, cfg.model.vocab_size, cfg.train.seq_length = source, 512, 16
    config_mod.validate(cfg)
    return RunDir(tmp_path / "run"), cfg


def test_training_on_a_blend_feeds_the_stored_ids_in_proportion(tmp_path):
    a, b = _documents(5, 200, 10, 100), _documents(6, 200, 100, 200)  # ids tell the datasets apart
    _megatron_write(tmp_path / "a", a)
    _megatron_write(tmp_path / "b", b)
    run, cfg = _indexed_run(tmp_path, f"0.3 {tmp_path / 'a'} 0.7 {tmp_path / 'b'}")
    facts = prepare_data(run, cfg)
    assert facts["documents"] == 400 and not run.data.exists()  # read in place: nothing copied
    sample = sample_source(run, cfg)
    stream_a, stream_b = np.concatenate(a), np.concatenate(b)
    which = Counter()
    for position in range(2000):
        window = sample(position).numpy()
        assert window.shape == (17,)
        source = stream_a if window[0] < 100 else stream_b
        which["a" if window[0] < 100 else "b"] += 1
        starts = np.flatnonzero(source[:len(source) - 16] == window[0])  # the window is a slice of the stored ids
        assert any(np.array_equal(source[s:s + 17], window) for s in starts)
    assert abs(which["a"] / 2000 - 0.3) < 0.01
    assert torch.equal(sample_source(run, cfg)(1234), sample(1234))  # another process: the same sample


def test_valid_split_is_the_last_documents_and_out_of_vocab_ids_are_refused(tmp_path):
    docs = _documents(7, 100, 0, 600)
    _megatron_write(tmp_path / "c", docs)
    run, cfg = _indexed_run(tmp_path, str(tmp_path / "c"))
    valid = sample_source(run, cfg, "valid")
    assert valid.tokens.size == sum(len(d) for d in docs[-1:])  # 1/valid_every of 100 documents: the last one
    with pytest.raises(dataset.DataError, match="outside model.vocab_size=512"):
        for position in range(200):
            sample_source(run, cfg)(position)


def test_a_blend_of_text_is_refused_naming_the_option(tmp_path):
    (tmp_path / "t.txt").write_text("some text")
    cfg = config_mod.RunConfig()
    cfg.data.source = f"0.5 {tmp_path / 't.txt'} 0.5 {tmp_path / 't.txt'}"
    with pytest.raises(config_mod.ConfigError, match="is not a Megatron indexed dataset"):
        config_mod.validate(cfg)


def test_jsonl_text_field_and_no_silent_cap(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = " ".join(f"w{i}" for i in range(1000))
    for part in range(3):  # 3 files of ~2 MB: over the 4 MB that once cut a user's corpus silently
        with open(corpus / f"part{part}.jsonl", "w") as out:
            for doc in range(340):
                out.write(json.dumps({"id": doc, "text": f"{part} {doc} {words}"}) + "\n")
    run, cfg = RunDir(tmp_path / "run"), config_mod.RunConfig()
    cfg.data.source, cfg.model.vocab_size = str(corpus), 512
    meta = prepare_data(run, cfg)
    assert meta["documents"] == 1020
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(run.tokenizer))
    first = open_indexed(run.tokens("valid")).document(0)
    assert tokenizer.decode(first[:-1].tolist()).startswith("0 0 w0 w1")  # the field, not the JSON
    assert first[-1] == tokenizer.token_to_id(dataset.EOS)

    (corpus / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    cfg.data.json_key = "text"
    with pytest.raises(dataset.DataError, match=r"bad.jsonl:2: no string field 'text' \(set data.json_key\)"):
        prepare_data(RunDir(tmp_path / "run2"), cfg)


def _tokenizer_folder(tmp_path, texts) -> "Path":
    folder = tmp_path / "tok"
    folder.mkdir()
    dataset.train_tokenizer(texts, 400).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return folder


def _corpus(tmp_path) -> "Path":
    corpus = tmp_path / "in"
    corpus.mkdir()
    with open(corpus / "a.jsonl", "w") as out:
        for i in range(700):  # several batches
            out.write(json.dumps({"text": f"document {i}: " + "lorem ipsum " * (i % 7 + 1)}) + "\n")
    (corpus / "b.txt").write_text("a plain text file, one document\n")
    return corpus


def test_data_prepare_writes_what_megatron_reads_in_input_order_with_any_workers(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer

    from trainer.data.corpus import file_documents
    from trainer.data.prepare import prepare_dataset

    corpus = _corpus(tmp_path)
    folder = _tokenizer_folder(tmp_path, list(file_documents([corpus])))
    one = prepare_dataset([str(corpus)], folder, tmp_path / "one")
    two = prepare_dataset([str(corpus)], folder, tmp_path / "two", workers=2)
    assert one.documents == two.documents == 701 and one.tokens == two.tokens
    assert (tmp_path / "one.bin").read_bytes() == (tmp_path / "two.bin").read_bytes()
    tokenizer, eod = Tokenizer.from_file(str(folder / "tokenizer.json")), 2
    theirs = IndexedDataset(str(tmp_path / "two"))
    for i, text in enumerate(file_documents([corpus])):
        assert theirs[i].tolist() == tokenizer.encode(text).ids + [eod]


def test_data_prepare_command_one_line_errors_and_plain_progress(tmp_path, capsys):
    from bigops.cli.main import main
    from trainer.data.corpus import file_documents

    corpus = _corpus(tmp_path)
    folder = _tokenizer_folder(tmp_path, list(file_documents([corpus])))
    assert main(["data", "prepare", str(corpus), "--tokenizer", str(folder), "--output", str(tmp_path / "d")]) == 0
    out = capsys.readouterr()
    assert "701 documents" in out.out and "tokenizing: 701 docs" in out.err  # not a terminal: plain lines
    assert open_indexed(tmp_path / "d").documents == 701
    (corpus / "bad.jsonl").write_text("{not json\n")
    assert main(["data", "prepare", str(corpus), "--tokenizer", str(folder), "--output", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1: not JSON" in err and "Traceback" not in err
    assert not list(tmp_path.glob("e.*")) and not list(tmp_path.glob(".e.*"))  # nothing half-written
    assert main(["data", "prepare", str(tmp_path / "nope"), "--tokenizer", str(folder),
                 "--output", str(tmp_path / "f")]) == 2


def test_a_launch_makes_every_blend_path_absolute_and_keeps_the_weights(tmp_path, monkeypatch):
    from launcher.plan import fresh_config

    for name in ("a", "b"):
        _megatron_write(tmp_path / name, _documents(8, 10, 0, 100))
    monkeypatch.chdir(tmp_path)
    cfg = fresh_config("tiny", None, ["data.source=0.25 a 0.75 b"])
    assert cfg.data.source == f"0.25 {tmp_path / 'a'} 0.75 {tmp_path / 'b'}"
    (tmp_path / "my corpus.txt").write_text("text with a space in its file name")
    assert fresh_config("tiny", None, ["data.source=my corpus.txt"]).data.source == str(tmp_path / "my corpus.txt")


def test_init_hf_trains_with_the_checkpoints_tokenizer_and_refuses_one_too_large(tmp_path):
    from launcher.plan import hf_tokenizer_override
    from trainer.data.corpus import file_documents

    hf = tmp_path / "hf"
    hf.mkdir()
    assert hf_tokenizer_override(hf, []) == []
    corpus = _corpus(tmp_path)
    dataset.train_tokenizer(list(file_documents([corpus])), 400).save(str(hf / "tokenizer.json"))
    assert hf_tokenizer_override(hf, []) == [f"data.tokenizer={hf / 'tokenizer.json'}"]
    assert hf_tokenizer_override(hf, ["data.tokenizer=/x.json"]) == []  # the user's choice wins
    run, cfg = RunDir(tmp_path / "run"), config_mod.RunConfig()
    cfg.data.source, cfg.data.tokenizer, cfg.model.vocab_size = str(corpus), str(hf / "tokenizer.json"), 256
    with pytest.raises(dataset.DataError, match="more than model.vocab_size=256"):
        prepare_data(run, cfg)


def test_a_tokenizer_folder_is_its_tokenizer_json_and_a_folder_without_one_is_refused(tmp_path):
    """data.tokenizer may name a Hugging Face tokenizer folder (BLOOM's is one): the run reads its
    tokenizer.json, and the end-of-document token its tokenizer_config.json names."""
    from launcher.plan import fresh_config
    from trainer.data.corpus import file_documents
    from trainer.data.prepare import end_of_document

    folder = tmp_path / "bloom-tokenizer"
    folder.mkdir()
    corpus = _corpus(tmp_path)
    tok = dataset.train_tokenizer(list(file_documents([corpus])), 300)
    tok.save(str(folder / "tokenizer.json"))
    cfg = fresh_config("tiny", None, [f"data.source={corpus}", f"data.tokenizer={folder}"])
    assert cfg.data.tokenizer == str(folder.resolve() / "tokenizer.json")
    eod = tok.get_vocab_size() - 1
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": tok.id_to_token(eod)}))
    assert end_of_document(tok, folder / "tokenizer.json") == eod
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(config_mod.ConfigError, match="a tokenizer folder holding one"):
        fresh_config("tiny", None, [f"data.source={corpus}", f"data.tokenizer={empty}"])


def test_a_users_tokenizer_ends_documents_with_its_declared_eos_and_the_run_keeps_its_roles(tmp_path):
    """A GPT-style tokenizer folder (``<|endoftext|>``, no ``</s>``) trains: its declared EOS ends every
    document, and RUN/data keeps the roles for the run's exports."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from trainer.data.corpus import file_documents
    from trainer.hf_tokenizer import special_tokens_of

    corpus = _corpus(tmp_path)
    folder = tmp_path / "gpt-tokenizer"
    folder.mkdir()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(file_documents([corpus]), trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|pad|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}))
    run, cfg = RunDir(tmp_path / "run"), config_mod.RunConfig()
    cfg.data.source, cfg.data.tokenizer, cfg.model.vocab_size = str(corpus), str(folder / "tokenizer.json"), 512
    prepare_data(run, cfg)
    document = open_indexed(run.tokens("train")).document(0)
    assert document[-1] == tokenizer.token_to_id("<|endoftext|>") == 0
    assert special_tokens_of(run.tokenizer).tokens["pad"] == "<|pad|>"
