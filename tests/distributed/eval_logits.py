"""Under torchrun: load a run's latest checkpoint into its own TP/PP layout and write the full logits of
the token ids in IDS_FILE to OUT_FILE (gathered over TP ranks on the last pipeline stage).

    torchrun --nproc-per-node N tests/distributed/eval_logits.py RUN_DIR IDS_FILE OUT_FILE
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer import config as config_mod  # noqa: E402
from trainer.engine import build_engine, setup_rank  # noqa: E402
from trainer.parallel.mappings import gather_from_tensor_model_parallel_region  # noqa: E402
from trainer.rundir import RunDir  # noqa: E402


def main(run_dir: str, ids_file: str, out_file: str) -> None:
    run = RunDir(Path(run_dir))
    ctx = setup_rank(config_mod.load_toml(run.run_toml, base=config_mod.RunConfig()))
    engine = build_engine(ctx)
    engine.load_checkpoint(str(run.checkpoints), tag=run.latest_tag())
    ids = torch.load(ids_file, weights_only=True)  # (mb, T)
    _, logits = engine.eval_batch(iter([(ids, ids)]), return_logits=True, num_micro_batches=1)
    if engine.is_last_stage():
        full = gather_from_tensor_model_parallel_region(logits, ctx.tp)  # (mb, T, V)
        if ctx.tp.rank == 0 and ctx.coords.dp_rank == 0:
            torch.save(full, out_file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
