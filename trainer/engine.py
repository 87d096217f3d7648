"""Assemble one rank's training engine: topology -> TP group -> pipeline stage -> DeepSpeed engine."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from trainer import safe_load
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
    provenance: dict = field(default_factory=dict)
    """What every save records besides the step (trainer.checkpoint: ``lineage``, ``skip_ranges``)."""

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
    """Megatron's groups: no weight decay on biases and LayerNorm parameters (found by module type: in
    Megatron-DeepSpeed's layout the final norm's parameters are named just ``weight`` / ``bias``)."""
    norms = {id(p) for m in module.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or id(param) in norms else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(ctx: RankContext, init_weights=None, load_universal: bool = False):
    """The DeepSpeed PipelineEngine of this rank. ``init_weights(pipe)`` may overwrite the fresh init (e.g.
    with imported HF weights) before DeepSpeed copies parameters into its optimizer. ``load_universal``: the
    resume will load a universal checkpoint (see ``trainer.ds_config``)."""
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
                                           config=deepspeed_config(ctx.cfg, load_universal),
                                           lr_scheduler=scheduler)
    safe_load.install(engine)  # every checkpoint file DeepSpeed loads: weights only, allow-listed classes
    return engine


def load_checkpoint(engine, checkpoints_dir: str, tag: str):
    """``engine.load_checkpoint`` through our weights-only checkpoint engine (trainer.safe_load: a crafted
    pickle is refused, never run), plus the one fix DeepSpeed 0.19 needs for bf16 with ZeRO stage 0.

    There the BF16_Optimizer saves its per-DP-rank state in ``bf16_zero_pp_rank_*`` files, but on load the
    engine hands it the single dict kept in ``mp_rank_*_model_states.pt``, which it indexes by DP rank
    (``KeyError: 0``): the run could never resume. We give the optimizer the list of per-rank states it expects.
    The engine also leaves ``load_from_fp32_weights`` at its default (False) there: the fp32 master weights
    would be rebuilt from the bf16 ones, losing their low bits (the resumed run drifts from an uninterrupted
    one from the second step on). We load the saved masters, as ZeRO-1 does.

    And a universal checkpoint (``bigops ckpt reshape``): the engine never tells the BF16_Optimizer where it is
    (it passes ``checkpoint_folder`` only to ZeRO), so the optimizer would load the engine file's state of the
    source layout; we hand it the folder, and it loads its fp32 masters, Adam moments and step from ``zero/``
    (``_load_universal_checkpoint``) as DeepSpeed does for ZeRO. The engine then copies them into the bf16
    weights (``update_lp_params``).
    """
    safe_load.install(engine)
    optimizer = getattr(engine, "optimizer", None)
    if engine.bfloat16_enabled() and not engine.zero_optimization() and optimizer is not None:
        original = optimizer.load_state_dict

        def load_state_dict(state_dict_list, *args, **kwargs):
            if engine.load_universal_checkpoint():
                return original(None, checkpoint_folder=os.path.join(checkpoints_dir, tag),
                                load_optimizer_states=kwargs.get("load_optimizer_states", True),
                                load_from_fp32_weights=True)
            if isinstance(state_dict_list, dict):
                state_dict_list = engine._get_all_zero_checkpoints(checkpoints_dir, tag)
                if state_dict_list is None:
                    raise RuntimeError(f"checkpoint {tag} has no bf16_zero_pp_rank_* optimizer files")
            kwargs.setdefault("load_from_fp32_weights", True)
            return original(state_dict_list, *args, **kwargs)

        optimizer.load_state_dict = load_state_dict
        try:
            return engine.load_checkpoint(checkpoints_dir, tag=tag)
        finally:
            optimizer.load_state_dict = original
    return engine.load_checkpoint(checkpoints_dir, tag=tag)


def checkpoint_client_state(engine, cfg: RunConfig, step: int, consumed_samples: int) -> dict:
    """What a save adds to DeepSpeed's engine files: Megatron-DeepSpeed's keys (``trainer.layout``) and ours.

    With bf16 at ZeRO stage 0 DeepSpeed 0.19 leaves ``param_shapes`` out (it writes them for ZeRO only), yet
    the BF16_Optimizer files are flat partitions that only those shapes cut back into parameters: the
    universal-checkpoint converter refuses the checkpoint without them. Megatron-DeepSpeed's BLOOM checkpoints
    (DeepSpeed of 2022, which counted bf16 as ZeRO state) have them, so we write them, in DeepSpeed's own form.
    """
    from trainer import config as config_mod
    from trainer import layout

    state = layout.engine_metadata(cfg, step, consumed_samples)
    if engine.bfloat16_enabled() and not engine.zero_optimization() and engine.optimizer is not None:
        state["param_shapes"] = engine._get_zero_param_shapes()
    state["bigops"] = {"step": step, "consumed_samples": consumed_samples, "config": config_mod.to_dict(cfg)}
    return state


def follow_configured_lr(engine, cfg: RunConfig) -> float:
    """After a resume, make the LR schedule the *current* config's (``train.lr``, ``min_lr``, warm-up, decay).

    A checkpoint carries the scheduler's ``base_lrs`` and the optimizer's last ``lr``; left alone they would
    silently override a changed ``train.lr`` (``bigops launch --set train.lr=...`` on a resumed run, or
    ``bigops surgery --set-lr``). The schedule's position (its step count) is kept. Returns the LR the next
    step applies.
    """
    scheduler = engine.lr_scheduler
    scheduler.base_lrs = [cfg.train.lr for _ in scheduler.base_lrs]
    lr = cfg.train.lr * (lr_at(cfg, scheduler.last_epoch) / cfg.train.lr)  # LambdaLR's arithmetic, bit for bit
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
        group["initial_lr"] = cfg.train.lr
    scheduler._last_lr = [lr for _ in scheduler.base_lrs]
    return lr
