"""What is inside a checkpoint: topology, every file, parameters per pipeline layer, optimizer partitions.

One file is loaded at a time (``weights_only=True``, memory-mapped, with ``dsfiles.load``: DeepSpeed's few
pickled classes and Megatron's ``args`` allow-listed, nothing else) and only shapes and dtypes are kept, so
inspecting a 176B checkpoint needs the memory of its largest file's metadata, not of the model.

Works on our checkpoints and on ones Megatron-DeepSpeed wrote itself (no manifest, no bigops run config:
the topology and model come from its ``args``, ``trainer.megatron``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bigops.checkpoint import dsfiles
from trainer import checkpoint as ckpt

KIND_LAYER = "layer weights"
KIND_ENGINE = "engine state"
KIND_OPTIM = "optimizer state"
KIND_RNG = "rng"
KIND_MANIFEST = "manifest"
KIND_MARKER = "keep marker"
KIND_OTHER = "other"

# The file names, declared once (bigops.checkpoint.dsfiles); positional groups as below.
_LAYER, _ENGINE, _OPTIM, _RNG = dsfiles.LAYER_RE, dsfiles.ENGINE_RE, dsfiles.OPTIM_RE, dsfiles.RNG_RE


@dataclass(frozen=True)
class FileInfo:
    name: str
    kind: str
    size: int
    layer: int | None = None        # pipeline layer index (layer files)
    tp_rank: int | None = None
    pp_stage: int | None = None     # engine / optimizer files: mp rank = pp_stage * tp + tp_rank
    mp_rank: int | None = None
    dp_rank: int | None = None
    rank: int | None = None         # global rank (rng files)


def classify(name: str, size: int = 0, tp: int | None = None) -> FileInfo:
    """The kind and coordinates a DeepSpeed/bigops file name encodes (pure)."""
    def stage_tp(mp: int) -> dict:
        return {"mp_rank": mp, "pp_stage": mp // tp if tp else None, "tp_rank": mp % tp if tp else None}
    if m := _LAYER.match(name):
        return FileInfo(name, KIND_LAYER, size, layer=int(m.group(1)), tp_rank=int(m.group(2)))
    if m := _ENGINE.match(name):
        return FileInfo(name, KIND_ENGINE, size, **stage_tp(int(m.group(1))))
    if m := _OPTIM.match(name):
        return FileInfo(name, KIND_OPTIM, size, dp_rank=int(m.group(2)), **stage_tp(int(m.group(3))))
    if m := _RNG.match(name):
        return FileInfo(name, KIND_RNG, size, rank=int(m.group(1)))
    if name == ckpt.MANIFEST:
        return FileInfo(name, KIND_MANIFEST, size)
    if name == "KEEP":
        return FileInfo(name, KIND_MARKER, size)
    return FileInfo(name, KIND_OTHER, size)


def load(path: Path) -> Any:
    """One checkpoint file, with the one safe loader (``dsfiles.load``: weights only, memory-mapped, the
    allow-list of ``trainer.safe_load``)."""
    return dsfiles.load(path)


def _state(obj: Any) -> dict:
    return obj if isinstance(obj, dict) else {}


# ---------------------------------------------------------------------------------------------- summaries
@dataclass
class Param:
    name: str                       # HF name without ``transformer.``
    dtype: str
    shard_shape: list[int]          # one TP rank's part
    shape: list[int]                # the full tensor (merged over TP ranks)
    split_dim: int | None           # None: every TP rank holds a full copy

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Layer:
    index: int
    role: str
    tp_files: int
    params: list[Param] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.params)


@dataclass
class OptimFile:
    name: str
    dp_rank: int | None
    mp_rank: int | None
    pp_stage: int | None
    tp_rank: int | None
    zero_stage: int | None
    groups: list[dict]              # per param group: fp32 partition numel, moments, lr, weight decay, params
    loss_scale: float | None
    fp32_numel: int                 # elements of this file's flattened fp32 master partitions
    moments_numel: int              # elements of Adam's exp_avg + exp_avg_sq


@dataclass
class Report:
    tag: str
    path: str
    step: int | None
    consumed_samples: int | None
    topology: dict                  # tp, pp, dp, world_size, zero_stage, precision
    model: dict                     # hidden_size, num_layers, heads, vocab (padded)
    engine: dict                    # from mp_rank_00: ds_version, global_steps, global_samples, lr
    files: list[FileInfo]
    layers: list[Layer]
    optimizer: list[OptimFile]
    problems: list[str]             # sizes-only check against the manifest, unreadable files

    @property
    def num_parameters(self) -> int:
        """Unique parameters (the tied LM head is the word embedding, counted once)."""
        return sum(layer.numel for layer in self.layers)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["num_parameters"] = self.num_parameters
        for layer, d in zip(self.layers, out["layers"]):
            d["numel"] = layer.numel
            for p, pd in zip(layer.params, d["params"]):
                pd["numel"] = p.numel
        return out


def summarize_layer(index: int, shards: list[tuple[int, dict]], num_layers: int | None) -> Layer:
    """Full shapes of one pipeline layer from its TP shards' ``{name: shape/dtype}`` (pure); parameters are
    named by their HF names where the layout (``trainer.layout``) knows them, else by their keys."""
    from trainer import layout
    from trainer.parallel.plan import shard_dim

    layer = Layer(index=index, role=layout.role(num_layers, index), tp_files=len(shards))
    first = shards[0][1]
    for key, (shape, dtype) in first.items():
        try:
            name = layout.hf_name(num_layers, index, key) if num_layers is not None else key
        except ValueError:
            name = key
        dim = shard_dim(name) if len(shards) > 1 else None
        full = list(shape)
        if dim is not None and dim < len(full):
            full[dim] = sum(s[key][0][dim] for _, s in shards if key in s)
        layer.params.append(Param(name=name, dtype=dtype, shard_shape=list(shape), shape=full, split_dim=dim))
    return layer


def _shapes(state: dict) -> dict:
    import torch
    return {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def summarize_optim(info: FileInfo, state: dict) -> OptimFile:
    import torch

    osd = _state(state.get("optimizer_state_dict", state))
    base = _state(osd.get("base_optimizer_state"))
    per_param = base.get("state") if isinstance(base.get("state"), dict) else {}
    groups_meta = base.get("param_groups") if isinstance(base.get("param_groups"), list) else []
    partitions = osd.get("single_partition_of_fp32_groups") or osd.get("fp32_flat_groups") or []
    mappings = osd.get("param_slice_mappings") or []
    groups, fp32, moments = [], 0, 0
    for g, meta in enumerate(groups_meta):
        part = partitions[g] if g < len(partitions) and isinstance(partitions[g], torch.Tensor) else None
        entry: dict = {"group": g, "fp32_partition": list(part.shape) if part is not None else None,
                       "lr": meta.get("lr"), "weight_decay": meta.get("weight_decay")}
        for pid in meta.get("params", []):
            st = per_param.get(pid, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if isinstance(st.get(key), torch.Tensor):
                    entry[key] = list(st[key].shape)
                    moments += st[key].numel()
            if isinstance(st.get("step"), torch.Tensor):
                entry["adam_step"] = int(st["step"].item())
        if g < len(mappings) and isinstance(mappings[g], dict):
            entry["params"] = len(mappings[g])
        fp32 += part.numel() if part is not None else 0
        groups.append(entry)
    scale = getattr(osd.get("loss_scaler"), "cur_scale", None)  # DeepSpeed's LossScaler (ZeRO-1 files)
    zero = osd.get("zero_stage")  # a ZeroStageEnum (an int)
    return OptimFile(name=info.name, dp_rank=info.dp_rank, mp_rank=info.mp_rank, pp_stage=info.pp_stage,
                     tp_rank=info.tp_rank, zero_stage=int(zero) if isinstance(zero, int) else None, groups=groups,
                     loss_scale=float(scale) if isinstance(scale, (int, float)) else None, fp32_numel=fp32,
                     moments_numel=moments)


@dataclass
class _Engine:
    """What ``mp_rank_00_model_states.pt`` says, kept without its tensors."""

    cfg: Any = None                 # trainer.config.RunConfig: ours, or derived from Megatron's args
    ours: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    dims: dict = field(default_factory=dict)
    ds_config: dict = field(default_factory=dict)
    dp_world_size: Any = None
    step: Any = None
    consumed_samples: Any = None


ENGINE_KEYS = ("ds_version", "global_steps", "global_samples", "skipped_steps", "mp_world_size", "dp_world_size",
               "iteration", "checkpoint_version")


def read_engine(path: Path, problems: list[str]) -> _Engine:
    """The run config, step counters and LR of the first engine file (problems appended, never raised)."""
    from bigops.errors import CheckpointError
    from trainer import megatron
    from trainer.checkpoint import CheckpointError as BadCheckpoint

    engine0 = path / "mp_rank_00_model_states.pt"
    if not engine0.is_file():
        return _Engine()
    try:
        state = load(engine0)
    except CheckpointError as exc:
        problems.append(str(exc))
        return _Engine()
    out = _Engine(ours=_state(state.get("bigops")), dims=_state(state.get("checkpoint_parallel_dimensions")),
                  ds_config=_state(state.get("ds_config")), dp_world_size=state.get("dp_world_size"),
                  step=megatron.step_of(state), consumed_samples=megatron.consumed_samples_of(state))
    if megatron.written_by_bigops(state) or state.get("args") is not None:
        try:
            out.cfg = megatron.run_config(state, engine0)
        except BadCheckpoint as exc:
            problems.append(str(exc))
    out.summary = {k: state[k] for k in ENGINE_KEYS if k in state}
    lrs = _state(state.get("lr_scheduler")).get("_last_lr")
    if lrs:
        out.summary["lr"] = lrs[0]
    return out


def topology_of(engine: _Engine, manifest: dict, problems: list[str]) -> dict:
    """TP/PP/DP, ZeRO stage and precision: the run config's, else the manifest's or DeepSpeed's."""
    cfg, topo, dims = engine.cfg, _state(manifest.get("topology")), engine.dims
    tp = cfg.parallel.tp if cfg else topo.get("tp", dims.get("tp_degree"))
    pp = cfg.parallel.pp if cfg else topo.get("pp", dims.get("pp_degree"))
    dp = cfg.parallel.dp if cfg else topo.get("dp", engine.dp_world_size)
    if topo and cfg and (topo.get("tp"), topo.get("pp"), topo.get("dp")) != (tp, pp, dp):
        problems.append(f"manifest topology {topo} differs from the run config's TP={tp} PP={pp} DP={dp}")
    return {"tp": tp, "pp": pp, "dp": dp,
            "world_size": tp * pp * dp if all(isinstance(x, int) for x in (tp, pp, dp)) else None,
            "zero_stage": cfg.parallel.zero_stage if cfg else _state(engine.ds_config.get("zero_optimization")).get(
                "stage"),
            "precision": cfg.train.precision if cfg else manifest.get("precision")}


def model_of(cfg) -> dict:
    if cfg is None:
        return {}
    m = cfg.model
    return {"hidden_size": m.hidden_size, "num_layers": m.num_layers, "num_attention_heads": m.num_attention_heads,
            "vocab_size": m.vocab_size, "padded_vocab_size": cfg.padded_vocab_size}


def read_layers(path: Path, files: list[FileInfo], tp, num_layers: int | None, problems: list[str]) -> list[Layer]:
    """The parameters of every pipeline layer, from its TP files' shapes (one file loaded at a time)."""
    from bigops.errors import CheckpointError

    by_layer: dict[int, list[FileInfo]] = {}
    for f in files:
        if f.kind == KIND_LAYER:
            by_layer.setdefault(f.layer, []).append(f)
    layers = []
    for index in sorted(by_layer):
        shards = []
        for f in sorted(by_layer[index], key=lambda f: f.tp_rank):
            try:
                shards.append((f.tp_rank, _shapes(load(path / f.name))))
            except CheckpointError as exc:
                problems.append(str(exc))
        if isinstance(tp, int) and len(by_layer[index]) != tp:
            problems.append(f"layer {index:02d} has {len(by_layer[index])} TP files, expected {tp}")
        if shards:
            layers.append(summarize_layer(index, shards, num_layers))
    return layers


def read_optimizer(path: Path, files: list[FileInfo], problems: list[str]) -> list[OptimFile]:
    from bigops.errors import CheckpointError

    optimizer = []
    for f in files:
        if f.kind == KIND_OPTIM:
            try:
                optimizer.append(summarize_optim(f, load(path / f.name)))
            except CheckpointError as exc:
                problems.append(str(exc))
    return optimizer


def inspect_checkpoint(path: Path, tag: str, load_optimizer: bool = True) -> Report:
    """Read a checkpoint directory one file at a time (see the module docstring)."""
    from trainer import megatron

    problems = megatron.problems(path, hashes=False)  # ours: against the manifest; Megatron's: by the layout
    try:
        manifest = ckpt.read_manifest(path)
    except ckpt.CheckpointError:
        manifest = {}
    engine = read_engine(path, problems)
    topology = topology_of(engine, manifest, problems)
    tp = topology["tp"]
    files = [classify(p.name, p.stat().st_size, tp if isinstance(tp, int) else None)
             for p in sorted(path.iterdir()) if p.is_file()]
    num_layers = engine.cfg.model.num_layers if engine.cfg else None
    layers = read_layers(path, files, tp, num_layers, problems)
    optimizer = read_optimizer(path, files, problems) if load_optimizer else []
    step = manifest.get("step") if isinstance(manifest.get("step"), int) else engine.step
    return Report(tag=tag, path=str(path), step=step,
                  consumed_samples=manifest.get("consumed_samples", engine.consumed_samples),
                  topology=topology, model=model_of(engine.cfg), engine=engine.summary, files=files, layers=layers,
                  optimizer=optimizer, problems=sorted(set(problems), key=problems.index))
