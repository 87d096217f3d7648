"""Our BLOOM at TP=PP=1 computes what transformers.BloomForCausalLM computes."""

import pytest
import torch

from trainer.config import ModelConfig
from trainer.hf import model_config_from_hf, open_hf_tensors, read_hf_config
from trainer.model.bloom import BloomForCausalLM, alibi_slopes


def load_ours(directory) -> BloomForCausalLM:
    cfg = model_config_from_hf(read_hf_config(directory))
    model = BloomForCausalLM(cfg, padded_vocab_size=cfg.vocab_size)
    get = open_hf_tensors(directory)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(get(name))
    return model.eval()


@pytest.mark.parametrize("num_heads", [1, 2, 4, 6, 12, 112])
def test_alibi_slopes_match_transformers(num_heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    mask = torch.ones(1, 5)
    reference = build_alibi_tensor(mask, num_heads, torch.float32)[:, 0, 1]  # slope * position 1
    torch.testing.assert_close(alibi_slopes(num_heads), reference, rtol=0, atol=0)


def test_alibi_slopes_for_power_of_two_are_geometric():
    slopes = alibi_slopes(8)
    assert slopes[0] == 0.5 and torch.allclose(slopes[1:] / slopes[:-1], torch.full((7,), 0.5))


@pytest.mark.parametrize("num_heads,hidden", [(4, 64), (6, 48), (3, 48)])
def test_logits_match_transformers(hf_model_dir, num_heads, hidden):
    from transformers import BloomForCausalLM as HFBloom
    directory = hf_model_dir(num_heads=num_heads, hidden=hidden, layers=3)
    reference = HFBloom.from_pretrained(directory).eval()
    ours = load_ours(directory)
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids).logits
        got = ours(ids)
    rel = ((got - expected).abs().max() / expected.abs().max()).item()
    assert rel <= 1e-5, f"max relative error {rel:.2e}"


def test_gradients_match_transformers(hf_model_dir):
    from transformers import BloomForCausalLM as HFBloom
    directory = hf_model_dir(num_heads=4, layers=2)
    reference = HFBloom.from_pretrained(directory).train()
    ours = load_ours(directory).train()
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(2))
    ref_loss = reference(ids, labels=ids).loss
    logits = ours(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    ref_loss.backward()
    loss.backward()
    ref_grads = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads["transformer." + name].grad, rtol=1e-4, atol=1e-6)


def test_init_follows_bloom():
    cfg = ModelConfig(hidden_size=256, num_layers=8, num_attention_heads=8, vocab_size=1000)
    model = BloomForCausalLM(cfg)
    from trainer.model.bloom import init_parameters
    init_parameters(model, cfg, seed=3)
    std = (0.3333 / 256) ** 0.5
    assert model.word_embeddings.weight.shape[0] == 1024  # padded to a multiple of 128
    assert abs(model.h[0].mlp.dense_h_to_4h.weight.std().item() - std) < 0.05 * std
    scaled = std / (2 * 8) ** 0.5  # Megatron's output-layer init
    assert abs(model.h[0].mlp.dense_4h_to_h.weight.std().item() - scaled) < 0.05 * scaled
    assert torch.all(model.h[0].input_layernorm.weight == 1) and torch.all(model.h[0].mlp.dense_h_to_4h.bias == 0)


def test_dropout_is_settable_and_off_in_eval():
    cfg = ModelConfig(hidden_size=32, num_layers=1, num_attention_heads=2, vocab_size=128,
                      hidden_dropout=0.5, attention_dropout=0.5)
    model = BloomForCausalLM(cfg)
    ids = torch.randint(0, 128, (1, 8))
    model.train()
    assert not torch.equal(model(ids), model(ids))
    model.eval()
    assert torch.equal(model(ids), model(ids))
