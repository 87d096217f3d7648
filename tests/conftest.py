"""Shared fixtures: tiny configs, HF reference models, and the check that no test leaves a process of ours
running (``tests/procguard.py``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from tests import procguard  # noqa: E402  (after the path: the tests import the project from ROOT)

SESSION = procguard.session_marker()  # every process the suite starts inherits it


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Fail the test that leaves a trainer, torchrun, bigops CLI or test service process running (each is
    SIGKILLed by its pid first); what longer-lived fixtures own (``procguard.own``) is theirs to stop."""
    since = procguard.now_ticks()
    yield
    left = procguard.reap(since, SESSION)
    if left:
        pytest.fail(f"left running (killed): {'; '.join(f'pid {pid}: {cmd}' for pid, cmd in sorted(left.items()))}",
                    pytrace=False)


TIERS = ("unit", "distributed", "integration", "faults", "sim")
"""The test tiers, one folder each under tests/ (markers registered in pyproject.toml): ``unit`` CPU only,
no gloo ranks; ``distributed`` real gloo ranks under torchrun; ``integration`` real services (Prometheus, SLURM,
sshd); ``faults`` injected faults under a supervised run; ``sim`` the simulated long run."""


def pytest_collection_modifyitems(config, items):
    """Mark each test with its tier, the folder it is in, so ``pytest -m unit`` runs the unit tier alone."""
    tests = Path(__file__).resolve().parent
    for item in items:
        path = Path(item.path).resolve()
        parts = path.relative_to(tests).parts if path.is_relative_to(tests) else ()
        if parts and parts[0] in TIERS:
            item.add_marker(parts[0])


def tiny_hf_config(num_heads: int = 4, hidden: int = 64, layers: int = 2, vocab: int = 512):
    from transformers import BloomConfig
    return BloomConfig(vocab_size=vocab, hidden_size=hidden, n_layer=layers, n_head=num_heads,
                       hidden_dropout=0.0, attention_dropout=0.0, initializer_range=0.05)


@pytest.fixture
def hf_model_dir(tmp_path):
    """A random tiny HF BLOOM saved as safetensors (the reference's own format)."""
    import torch
    from transformers import BloomForCausalLM

    def make(num_heads: int = 4, hidden: int = 64, layers: int = 2, vocab: int = 512, seed: int = 0) -> Path:
        torch.manual_seed(seed)
        model = BloomForCausalLM(tiny_hf_config(num_heads, hidden, layers, vocab)).eval()
        out = tmp_path / f"hf-{num_heads}-{hidden}-{layers}-{vocab}-{seed}"
        model.save_pretrained(out)
        return out
    return make
