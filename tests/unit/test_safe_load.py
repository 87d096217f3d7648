"""Resume loads every checkpoint file weights-only through our checkpoint engine: a crafted pickle is refused
and nothing in it runs."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from trainer import checkpoint as ckpt
from trainer import safe_load


class CreatesAFile:
    """What an attacker pickles: unpickling it calls ``open(marker, "w")`` (creates the file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class RunsAShell:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted(path: Path, marker: Path, kind=CreatesAFile) -> Path:
    """A ``mp_rank_00_model_states.pt`` that looks like DeepSpeed's but carries a payload."""
    torch.save({"module": None, "global_steps": 5, "buffer_names": [], "payload": kind(marker)}, path)
    return path


@pytest.mark.parametrize("kind", [CreatesAFile, RunsAShell], ids=["open", "os.system"])
def test_a_crafted_engine_file_is_refused_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    evil = crafted(tmp_path / "mp_rank_00_model_states.pt", marker, kind)
    for load in (lambda: safe_load.load(evil), lambda: safe_load.load(evil, map_location=lambda s, loc: s),
                 lambda: safe_load.preflight(tmp_path)):
        with pytest.raises(ckpt.CheckpointError, match="was refused") as err:
            load()
        assert "\n" not in str(err.value) and str(evil) in str(err.value)
    assert not marker.exists()
    # the file is a real threat: DeepSpeed's own engine (weights_only=False) runs it
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    TorchCheckpointEngine().load(str(evil))
    assert marker.exists()


def test_our_engine_replaces_deepspeeds_for_loads_and_keeps_its_saves(tmp_path):
    from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class Engine:
        checkpoint_engine = TorchCheckpointEngine()

    engine = Engine()
    safe_load.install(engine)
    safe_load.install(engine)  # idempotent: wrapped once
    wrapped = engine.checkpoint_engine
    assert isinstance(wrapped, CheckpointEngine) and isinstance(wrapped.inner, TorchCheckpointEngine)
    assert wrapped.is_data_parallel_writer(0) and wrapped.preserves_storage_sharing()
    good = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    from deepspeed.runtime.zero.config import ZeroStageEnum
    wrapped.save({"w": torch.ones(3), "stage": ZeroStageEnum.optimizer_states}, str(good))  # DeepSpeed's save
    loaded = wrapped.load(str(good), map_location=torch.device("cpu"))
    assert torch.equal(loaded["w"], torch.ones(3)) and loaded["stage"] == ZeroStageEnum.optimizer_states
    marker = tmp_path / "pwned"
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        wrapped.load(str(crafted(tmp_path / "mp_rank_00_model_states.pt", marker)))
    assert not marker.exists()


def test_rng_state_files_load_weights_only_and_a_crafted_one_is_refused(tmp_path):
    import random

    import numpy as np
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    torch.save(state, tmp_path / "rng_state_rank00000.pt")
    safe_load.preflight(tmp_path)
    back = safe_load.load_rng_state(tmp_path / "rng_state_rank00000.pt")
    assert back["python"] == state["python"] and (back["numpy"][1] == state["numpy"][1]).all()
    marker = tmp_path / "pwned"
    torch.save({"torch": torch.get_rng_state(), "numpy": CreatesAFile(marker)}, tmp_path / "rng_state_rank00001.pt")
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        safe_load.load_rng_state(tmp_path / "rng_state_rank00001.pt")
    with pytest.raises(ckpt.CheckpointError, match="rng_state_rank00001.pt was refused"):
        safe_load.preflight(tmp_path)
    assert not marker.exists()


def test_damaged_and_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="is missing"):
        safe_load.load(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ckpt.CheckpointError, match="cannot be loaded"):
        safe_load.load(tmp_path / "bad.pt")


def test_the_allow_list_lives_in_the_trainer_and_bigops_uses_it():
    from bigops.checkpoint import dsfiles
    assert {f"{g.__module__}.{g.__qualname__}" for g in dsfiles._deepspeed_safe_globals()} == \
        set(safe_load.ENGINE_GLOBALS)
    source = (Path(safe_load.__file__).parent).rglob("*.py")
    assert not [p for p in source if "import bigops" in p.read_text() or "from bigops" in p.read_text()]


def test_the_trainer_refuses_a_crafted_checkpoint_before_any_rank_loads_it(tmp_path):
    """The hook rank 0 runs on the resume point (the checkpoint verifies: whoever crafted the file could
    rewrite the manifest too)."""
    from trainer.rundir import RunDir
    from trainer.train import _checked
    run = RunDir(tmp_path / "run")
    partial = ckpt.partial_dir(run, "global_step5")
    partial.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, partial / "layer_01-model_00-model_states.pt")
    marker = tmp_path / "pwned"
    crafted(partial / "mp_rank_00_model_states.pt", marker)
    ckpt.publish(run, partial, "global_step5", {"step": 5})
    found = ckpt.find_resumable(run)
    assert found.tag == "global_step5"
    with pytest.raises(ckpt.CheckpointError, match="mp_rank_00_model_states.pt was refused"):
        _checked(found)
    assert not marker.exists()
    shutil.rmtree(run.root)


def test_a_universal_checkpoints_zero_tree_is_checked_before_deepspeed_unpickles_it(tmp_path):
    """DeepSpeed's universal loading reads ``zero/`` with ``torch.load(weights_only=False)``: the preflight
    refuses a crafted file there, and one it cannot scan, before any rank loads anything."""
    param = tmp_path / "zero" / "3.input_layernorm.weight"
    param.mkdir(parents=True)
    torch.save({"param": torch.ones(4), "cat_dim": 0}, param / "fp32.pt")
    torch.save({"param_groups": [{"lr": 1e-3, "params": [0]}], "state": {}}, tmp_path / "zero" / "optimizer_state.pt")
    safe_load.preflight(tmp_path)  # what the converter writes passes
    marker = tmp_path / "pwned"
    torch.save({"param": torch.ones(4), "payload": CreatesAFile(marker)}, param / "exp_avg.pt")
    with pytest.raises(ckpt.CheckpointError, match="exp_avg.pt was refused: it pickles"):
        safe_load.preflight(tmp_path)
    (param / "exp_avg.pt").unlink()
    torch.save({"param": torch.ones(4), "payload": CreatesAFile(marker)}, param / "exp_avg_sq.pt",
               _use_new_zipfile_serialization=False)  # the legacy format: the scanner cannot read it
    with pytest.raises(ckpt.CheckpointError, match="not a readable torch zip file"):
        safe_load.preflight(tmp_path)
    assert not marker.exists()
