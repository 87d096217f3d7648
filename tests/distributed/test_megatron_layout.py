"""Our checkpoints are Megatron-DeepSpeed's BLOOM checkpoints: DeepSpeed's own tools read a real TP=2 x PP=2
run's checkpoint (fp32 with ZeRO-1, and bf16 with DeepSpeed's bf16 optimizer at ZeRO-0) without help.

- ``python -m deepspeed.checkpoint.ds_to_universal`` converts it without ``--inject_missing_state``, and the
  fp32 parameters it writes are exactly ``bigops ckpt export-hf``'s weights;
- ``deepspeed.checkpoint.DeepSpeedCheckpoint`` reports its iteration, degrees, args and layer map.
"""

import subprocess
import sys

import pytest
import torch

from bigops.cli.main import main as bigops_main
from tests.distributed.ranks import run_ranks
from tests.distributed.test_export_hf import small_config
from trainer import layout

pytestmark = pytest.mark.distributed

PRECISIONS = {"fp32-zero1": ("fp32", 1), "bf16-zero0": ("bf16", 0)}


@pytest.fixture(scope="module", params=sorted(PRECISIONS))
def trained(request, tmp_path_factory):
    """A 3-step TP=2 x PP=2 run of each precision: (run dir, config, tag directory)."""
    precision, zero_stage = PRECISIONS[request.param]
    cfg = small_config(2, 2, precision=precision)
    cfg.parallel.zero_stage = zero_stage
    run = tmp_path_factory.mktemp(request.param) / "run"
    run_ranks(run, cfg, 4, timeout=900)
    return run, cfg, run / "checkpoints" / "global_step3"


def _safetensors(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_ds_to_universal_converts_it_into_export_hf_weights(trained, tmp_path):
    run, cfg, tag_dir = trained
    out = tmp_path / "universal"
    proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                           str(tag_dir), "--output_folder", str(out), "--num_extract_workers", "1",
                           "--num_merge_workers", "1"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert bigops_main(["ckpt", "export-hf", str(run), str(tmp_path / "hf")]) == 0
    exported = _safetensors(tmp_path / "hf")

    L = cfg.model.num_layers
    expected_dirs = set()
    for hf_key, weight in exported.items():
        name = hf_key.removeprefix("transformer.")
        pipe_name = layout.pipe_param_name(*layout.locate(L, name))
        expected_dirs.add(pipe_name)
        universal = torch.load(out / "zero" / pipe_name / "fp32.pt", weights_only=False)["param"]
        assert universal.dtype == torch.float32
        if name == "word_embeddings.weight":  # vocabulary-parallel: the converter strips our padding rows
            assert universal.shape == (cfg.model.vocab_size, cfg.model.hidden_size)
            weight = weight[:cfg.model.vocab_size]
        assert universal.shape == weight.shape, name
        # fp32: the masters are the weights; bf16: the weights are the masters rounded to bf16
        assert torch.equal(universal.to(weight.dtype), weight), name
    assert len(exported) == 3 + 12 * L + 2  # every parameter once: nothing left out of the comparison
    written = {p.name for p in (out / "zero").iterdir() if p.is_dir()}
    assert written == expected_dirs  # the last stage's copy of the tied embedding is not a second parameter
    for norm in (f"{layout.FIRST_BLOCK_LAYER}.input_layernorm.weight", f"{layout.final_norm_layer(L)}.bias"):
        for state in ("fp32", "exp_avg", "exp_avg_sq"):  # replicated: one TP copy, not the two concatenated
            tensor = torch.load(out / "zero" / norm / f"{state}.pt", weights_only=False)["param"]
            assert tensor.shape == (cfg.model.hidden_size,), (norm, state)


def test_deepspeed_checkpoint_reads_iteration_degrees_args_and_layer_map(trained):
    from deepspeed.checkpoint import DeepSpeedCheckpoint

    _, cfg, tag_dir = trained
    L = cfg.model.num_layers
    ds = DeepSpeedCheckpoint(str(tag_dir))
    assert ds.get_iteration() == 3
    assert (ds.tp_degree, ds.pp_degree, ds.dp_degree) == (2, 2, 1)
    args = ds.get_args()
    assert (args.num_layers, args.hidden_size, args.num_attention_heads) == (L, 48, 6)
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (2, 2)
    assert args.padded_vocab_size == cfg.padded_vocab_size == 512 and args.iteration == 3
    assert args.bf16 == (cfg.train.precision == "bf16")
    assert ds.get_checkpoint_info() == {"original_vocab_size": 500, "padded_vocab_size": 512}
    assert ds.layer_keys == [f"layer_{i:02d}" for i in layout.saved_layers(L)]
    assert ds.get_embedding_layer_id() == "layer_01" and ds.get_final_norm_layer_id() == f"layer_{L + 4:02d}"
    assert sorted(ds.get_embedding_state(0)) == sorted(layout.EMBEDDING_KEYS)
    assert sorted(ds.get_final_norm_state(1)) == ["bias", "weight"]
    blocks = [k for stage in range(2) for k in ds.get_pp_transformer_map(stage)]
    assert blocks == [f"layer_{layout.FIRST_BLOCK_LAYER + i:02d}" for i in range(L - L % 2)]  # its even split
    # TP-merged by its own rules (row-parallel on dim 1, duplicated taken once): the full block shapes
    block = ds.get_transformer_state(tp_index=0, pp_index=0)[0]
    assert tuple(block["self_attention.query_key_value.weight"].shape) == (72, 48)  # TP rank 0's half of 144
    engine = torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False)
    assert engine["checkpoint_version"] == 3.0 and engine["bigops"]["step"] == 3  # ours stays alongside


def test_an_earlier_bigops_layout_is_refused_with_the_fix(trained, tmp_path, capsys):
    import shutil
    run, _, tag_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    legacy = copy / "checkpoints" / tag_dir.name
    (legacy / "layer_01-model_00-model_states.pt").rename(legacy / layout.LEGACY_FIRST_FILE)
    assert bigops_main(["ckpt", "export-hf", str(copy), str(tmp_path / "hf")]) == 3
    err = capsys.readouterr().err
    assert "--init-hf" in err and layout.LEGACY_FIRST_FILE in err and err.count("\n") == 1
