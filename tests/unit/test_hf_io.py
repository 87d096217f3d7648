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
