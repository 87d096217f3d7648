"""Assemble one rank's training engine: topology -> TP group -> pipeline stage -> DeepSpeed engine."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.config import RunConfig, resolve_precision, validate
from trainer.ds_config import deepspeed_config, lr_at
from trainer.parallel.mappings import TPGroup
from trainer.parallel.topology import ParallelDims, RankCoords, coords_of, init_distributed, new_tp_group
from trainer.pipeline import build_pipeline_module


@dataclass
class RankContext:
    """What one rank knows about itself and its groups."""

    cfg: RunConfig
    dims: ParallelDims
    coords: RankCoords
    tp: TPGroup

    @property
    def is_logging_rank(self) -> bool:
        return self.coords.rank == 0


def setup_rank(cfg: RunConfig) -> RankContext:
    """Initialize torch.distributed, validate the config against the world size, build the TP group."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    init_distributed()
    world, rank = dist.get_world_size(), dist.get_rank()
    cfg = validate(resolve_precision(cfg, torch.cuda.is_available()), world_size=world)
    dims = ParallelDims(cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.dp).check(world)
    torch.manual_seed(cfg.train.seed)
    return RankContext(cfg=cfg, dims=dims, coords=coords_of(dims, rank), tp=new_tp_group(dims, rank))


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Megatron's groups: no weight decay on biases and LayerNorm parameters."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or "layernorm" in name or "ln_f" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(ctx: RankContext, init_weights=None):
    """The DeepSpeed PipelineEngine of this rank. ``init_weights(pipe)`` may overwrite the fresh init (e.g.
    with imported HF weights) before DeepSpeed copies parameters into its optimizer."""
    import deepspeed

    pipe = build_pipeline_module(ctx.cfg, ctx.dims.topology(), ctx.tp)
    if init_weights is not None:
        init_weights(pipe)
    optimizer_groups = _param_groups(pipe, ctx.cfg.train.weight_decay)
    base_lr = ctx.cfg.train.lr

    def scheduler(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(ctx.cfg, step) / base_lr)

    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    engine, _, _, _ = deepspeed.initialize(model=pipe, model_parameters=optimizer_groups,
                                           config=deepspeed_config(ctx.cfg), lr_scheduler=scheduler)
    return engine
