"""reshape's loss check (bigops.checkpoint.loss_check): the streamed forward is the model's, the target is read
as its ranks will hold it, a changed tensor fails the check and a changed padded vocabulary is reported."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bigops.checkpoint import loss_check
from trainer import config as config_mod
from trainer.model.bloom import BloomForCausalLM

pytestmark = pytest.mark.unit


def tiny(tp: int = 1, precision: str = "fp32") -> config_mod.RunConfig:
    cfg = config_mod.preset("tiny")
    cfg.model = config_mod.ModelConfig(hidden_size=32, num_layers=2, num_attention_heads=4, vocab_size=300)
    cfg.parallel = config_mod.ParallelConfig(tp=tp, pp=1, dp=1)
    cfg.train = config_mod.TrainConfig(seq_length=16, micro_batch_size=2, global_batch_size=2, precision=precision)
    return cfg


def model_and_reader(cfg, seed: int = 0):
    torch.manual_seed(seed)
    model = BloomForCausalLM(cfg.model, cfg.padded_vocab_size).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)  # random layer norms and biases too: a mix-up of any two tensors shows
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model, tensors.__getitem__


def test_the_streamed_loss_is_the_models_loss():
    cfg = tiny()
    model, read = model_and_reader(cfg)
    ids = loss_check.fixed_batch(cfg)
    assert ids.shape == (loss_check.BATCH_SIZE, cfg.train.seq_length + 1) and int(ids.max()) < cfg.model.vocab_size
    assert torch.equal(ids, loss_check.fixed_batch(cfg))  # fixed: the same batch every time
    with torch.no_grad():
        logits = model(ids[:, :-1])
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss, streamed = loss_check.streamed_loss(read, cfg, ids)
    assert loss == pytest.approx(float(expected), rel=1e-6)
    assert torch.allclose(streamed, logits, atol=1e-5)


def test_the_same_model_passes_and_one_changed_tensor_fails():
    cfg = tiny()
    _, read = model_and_reader(cfg)
    rows = cfg.padded_vocab_size
    same = loss_check.compare(read, read, cfg, cfg, rows)
    assert same.ok and same.relative_diff == 0 and same.max_logit_diff == 0 and same.vocabulary_effect == 0

    def off_by_a_little(name):
        t = read(name)
        return t + 1e-2 if name == "h.1.post_attention_layernorm.weight" else t
    wrong = loss_check.compare(read, off_by_a_little, cfg, cfg, rows)
    assert not wrong.ok and wrong.relative_diff > loss_check.LOSS_RTOL and wrong.max_logit_diff > 1e-4
    assert "tolerance 1e-05" in wrong.summary()

    def one_value_off(name):  # too small for the loss to show: the logits do
        t = read(name).clone()
        if name == "ln_f.weight":
            t[0] += 1e-4
        return t
    slight = loss_check.compare(read, one_value_off, cfg, cfg, rows)
    assert slight.relative_diff <= loss_check.LOSS_RTOL and not slight.ok

    swapped = loss_check.compare(read, lambda n: read(n.replace("h.0.", "h.9.").replace("h.1.", "h.0.")
                                                      .replace("h.9.", "h.1.")), cfg, cfg, rows)
    assert not swapped.ok  # blocks in the wrong order


def test_bf16_targets_are_compared_after_the_rounding_deepspeed_does():
    cfg = tiny(precision="bf16")
    _, read = model_and_reader(cfg)
    masters = lambda n: read(n).to(torch.bfloat16).float() * (1 + 2 ** -12)  # noqa: E731 - a hair off bf16
    check = loss_check.compare(lambda n: read(n).to(torch.bfloat16), masters, cfg, cfg, cfg.padded_vocab_size)
    assert check.ok and check.max_logit_diff == 0


def test_a_changed_padded_vocabulary_is_fitted_and_reported():
    source_cfg = tiny(tp=1)
    target_cfg = copy.deepcopy(source_cfg)
    target_cfg.model.make_vocab_size_divisible_by = 512
    assert target_cfg.padded_vocab_size > source_cfg.padded_vocab_size
    _, read = model_and_reader(source_cfg)
    keep = source_cfg.padded_vocab_size
    check = loss_check.compare(read, read, source_cfg, target_cfg, keep)
    assert check.ok and check.rows == (keep, keep, target_cfg.padded_vocab_size)
    assert check.vocabulary_effect > 0  # zero rows join the softmax
    assert "padded vocabulary goes from" in check.summary()
    fitted = loss_check.as_loaded(read, "fp32", target_cfg.padded_vocab_size, keep)(loss_check.EMBEDDING)
    assert fitted.shape[0] == target_cfg.padded_vocab_size and not fitted[keep:].any()
    assert torch.equal(fitted[:keep], read(loss_check.EMBEDDING))
