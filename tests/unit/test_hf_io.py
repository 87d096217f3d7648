"""HF checkpoint reading (safetensors and .bin) and writing (sharded, atomic, never overwriting)."""

import json

import pytest
import torch

from trainer.config import ConfigError, ModelConfig
from trainer.hf import (HFCheckpointError, check_compatible, model_config_from_hf, open_hf_tensors,
                        read_hf_config, write_hf_directory)


def test_bin_and_safetensors_read_the_same(hf_model_dir, tmp_path):
    from transformers import BloomForCausalLM
    safe = hf_model_dir()
    model = BloomForCausalLM.from_pretrained(safe)
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    a, b = open_hf_tensors(safe), open_hf_tensors(tmp_path / "bin")
    for name in ("word_embeddings.weight", "h.1.self_attention.query_key_value.bias", "ln_f.weight"):
        assert torch.equal(a(name), b(name))
    with pytest.raises(HFCheckpointError, match="has no tensor transformer.h.9.ln"):
        a("h.9.ln")


def test_config_mapping_and_compatibility(hf_model_dir):
    hf = read_hf_config(hf_model_dir(num_heads=6, hidden=48, layers=3))
    cfg = model_config_from_hf(hf)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_attention_heads, cfg.vocab_size) == (48, 3, 6, 512)
    with pytest.raises(ConfigError, match="model.num_layers=4 but the Hugging Face checkpoint has 3: "
                                                "set model.num_layers=3"):
        check_compatible(ModelConfig(hidden_size=48, num_layers=4, num_attention_heads=6, vocab_size=512), hf)


def test_not_a_bloom_directory(tmp_path):
    with pytest.raises(HFCheckpointError, match="has no config.json"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(HFCheckpointError, match="not 'bloom'"):
        read_hf_config(tmp_path)
    with pytest.raises(HFCheckpointError, match="holds no"):
        open_hf_tensors(tmp_path)


def test_sharded_write_with_index(tmp_path):
    tensors = [(f"h.{i}.w", torch.full((256,), float(i))) for i in range(5)]  # 1 KiB each
    files = write_hf_directory(tmp_path / "out", {"model_type": "bloom"}, iter(tensors), max_shard_bytes=2048)
    assert [f.name for f in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["transformer.h.4.w"] == "model-00003-of-00003.safetensors"
    assert index["metadata"]["total_size"] == 5 * 1024
    assert open_hf_tensors(tmp_path / "out")("h.3.w")[0] == 3.0


def test_write_never_overwrites_and_cleans_up(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        write_hf_directory(tmp_path / "out", {}, iter([]))

    def failing():
        yield "a", torch.zeros(2)
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        write_hf_directory(tmp_path / "new", {}, failing())
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.*"))


def test_written_files_are_readable_as_the_umask_allows_not_0600(tmp_path):
    import os
    previous = os.umask(0o027)
    try:
        write_hf_directory(tmp_path / "out", {"model_type": "bloom"}, iter([("w", torch.zeros(4))]),
                           extra=lambda folder: (folder / "extra.json").write_text("{}"))
    finally:
        os.umask(previous)
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in (tmp_path / "out").iterdir()}
    assert modes == {"model.safetensors": "0o640", "config.json": "0o640", "extra.json": "0o640"}
    assert oct((tmp_path / "out").stat().st_mode & 0o777) == "0o750"


def _bpe(special: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(["some text to learn from"] * 4, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=special, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tokenizer


def test_special_tokens_are_found_by_name_and_fall_back_to_eos():
    from trainer.hf_tokenizer import find_special_tokens

    bloom = find_special_tokens(_bpe(["<unk>", "<s>", "</s>", "<pad>"]))
    assert bloom.tokens == {"eos": "</s>", "bos": "<s>", "pad": "<pad>", "unk": "<unk>"}
    assert bloom.config_ids() == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
    gpt2 = find_special_tokens(_bpe(["<|endoftext|>"]))  # GPT-2's one special token plays every role
    assert gpt2.tokens == dict.fromkeys(("eos", "bos", "pad", "unk"), "<|endoftext|>")
    assert gpt2.config_ids() == {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    none = find_special_tokens(_bpe(["<mask>"]))
    assert none.eos is None and none.config_ids() == {}


def test_tokenizer_files_load_in_auto_tokenizer_with_their_roles(tmp_path):
    from transformers import AutoTokenizer

    from trainer.hf_tokenizer import write_generation_config, write_hf_tokenizer
    source = tmp_path / "tokenizer.json"
    _bpe(["<|endoftext|>"]).save(str(source))
    (tmp_path / "out").mkdir()
    special = write_hf_tokenizer(source, tmp_path / "out")
    write_generation_config(tmp_path / "out", special.config_ids())
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["padding_side"] == "left"
    assert json.loads((tmp_path / "out" / "special_tokens_map.json").read_text())["pad_token"] == "<|endoftext|>"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.padding_side) == ("<|endoftext|>", 0, "left")
    batch = tokenizer(["text", "some text to learn"], padding=True)
    assert batch["attention_mask"][0][0] == 0 and batch["input_ids"][0][0] == 0  # padded on the left
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (0, 0)


def test_declared_roles_win_over_names_and_travel_with_the_run(tmp_path):
    """A tokenizer folder that declares its roles (``tokenizer_config.json``, transformers' AddedToken form
    too; ``special_tokens_map.json`` for the rest) is believed over the usual names: the run keeps them beside
    its tokenizer, and what it exports declares the same."""
    from transformers import AutoTokenizer

    from trainer.hf_tokenizer import declared_roles, keep_tokenizer, special_tokens_of, write_hf_tokenizer

    folder = tmp_path / "chat-tokenizer"
    folder.mkdir()
    _bpe(["</s>", "<|endoftext|>", "<|pad|>", "<s>"]).save(str(folder / "tokenizer.json"))
    assert special_tokens_of(folder / "tokenizer.json").tokens["eos"] == "</s>"  # by name, nothing declared
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": "<|endoftext|>", "special": True}, "bos_token": None, "model_max_length": 8}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<|pad|>", "eos_token": "</s>"}))
    assert declared_roles(folder / "tokenizer.json") == {"eos": "<|endoftext|>", "pad": "<|pad|>"}
    special = special_tokens_of(folder / "tokenizer.json")
    assert special.tokens == {"eos": "<|endoftext|>", "bos": "<s>", "pad": "<|pad|>", "unk": "<|endoftext|>"}

    data = tmp_path / "run" / "data"
    keep_tokenizer(folder / "tokenizer.json", data)
    assert special_tokens_of(data / "tokenizer.json").tokens == special.tokens  # the run's copy says the same
    (tmp_path / "export").mkdir()
    write_hf_tokenizer(data / "tokenizer.json", tmp_path / "export")
    exported = AutoTokenizer.from_pretrained(tmp_path / "export")
    assert (exported.eos_token, exported.pad_token) == ("<|endoftext|>", "<|pad|>")

    keep_tokenizer(None, data, (folder / "tokenizer.json").read_text())  # re-prepared without a folder: by name
    assert special_tokens_of(data / "tokenizer.json").tokens["eos"] == "</s>"
    (folder / "tokenizer_config.json").write_text("{not json")
    assert declared_roles(folder / "tokenizer.json") == {"eos": "</s>", "pad": "<|pad|>"}  # the map still speaks
