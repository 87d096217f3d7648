"""The main job end to end: `bigops launch` (the README's command) with HF weights, TP 2 x PP 2 on 4 ranks.

The first step's loss is computed before any update, so it must equal the loss of the imported
`transformers` model on the same global batch: this checks the import into a TP x PP layout, the sampler
and the vocab-parallel loss through the real CLI.
"""

import json
import subprocess
import sys

import pytest
import torch

from trainer.data.synthetic import synthetic_sample

pytestmark = pytest.mark.distributed


def test_launch_with_hf_weights_trains_checkpoints_and_resumes(hf_model_dir, tmp_path):
    from transformers import BloomForCausalLM
    hf_dir = hf_model_dir(num_heads=4, hidden=64, layers=2, vocab=512)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "bigops.cli.main", "launch", "--run-dir", str(run), "--steps", "3",
           "--init-hf", str(hf_dir), "--set", "train.lr=1e-3", "--set", "data.source=synthetic"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TP 2 x PP 2 x DP 1 = 4 ranks" in proc.stdout and "trained steps 1..3" in proc.stdout
    assert (run / "checkpoints" / "latest").read_text().strip() == "global_step3"
    records = [json.loads(line) for line in (run / "telemetry" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]

    model = BloomForCausalLM.from_pretrained(hf_dir).eval()
    tokens = torch.stack([synthetic_sample(i, 64, 512, seed=42) for i in range(16)])  # tiny: seq 64, batch 16
    with torch.no_grad():
        logits = model(tokens[:, :-1]).logits
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), tokens[:, 1:].reshape(-1)).item()
    assert records[0]["loss"] == pytest.approx(expected, rel=1e-5)

    again = subprocess.run(cmd[:-6] + ["--steps", "4"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming from global_step3" in again.stdout and "trained steps 4..4" in again.stdout
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--init-hf only applies to a new run" in refused.stderr
