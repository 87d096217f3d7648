"""What is inside a checkpoint: topology, every file, parameters per pipeline layer, optimizer partitions.

One file is loaded at a time (``weights_only=True``, memory-mapped) and only shapes and dtypes are kept,
so inspecting a 176B checkpoint needs the memory of its largest file's metadata, not of the model.

DeepSpeed pickles a few of its own objects into the optimizer files (``LossScaler``, ``fragment_address``,
``ZeroStageEnum``). They are read as inert stand-ins that only record their arguments and state: nothing
from the checkpoint is ever called, and DeepSpeed need not be importable.
"""

from __future__ import annotations

import math
import pickletools
import zipfile
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


# ------------------------------------------------------------------------------------------- safe loading
class _Inert:
    """Stand-in for a class pickled by DeepSpeed: records what it was built from, runs nothing."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.args or self.state})"


_STUBS: dict[str, type] = {}


def _pickled_globals(path: Path) -> set[str]:
    """``module.name`` of every class/function the pickle inside a torch zip file refers to."""
    with zipfile.ZipFile(path) as archive:
        pkl = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
        data = archive.read(pkl)
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.add(f"{strings[-2]}.{strings[-1]}")
        if isinstance(arg, str):
            strings.append(arg)
    return names


def load(path: Path) -> Any:
    """``torch.load`` of one checkpoint file, weights only, memory-mapped; DeepSpeed objects become inert, and
    Megatron's ``args`` (an ``argparse.Namespace`` of plain values) is allowed as it is."""
    import torch

    from bigops.errors import CheckpointError
    from trainer.safe_load import MEGATRON_GLOBALS, resolve
    try:
        foreign = sorted(g for g in _pickled_globals(path) if g.startswith("deepspeed."))
        stubs = [(_STUBS.setdefault(g, type(g.rsplit(".", 1)[1], (_Inert,), {"__module__": __name__})), g)
                 for g in foreign]
        with torch.serialization.safe_globals([*stubs, *resolve(MEGATRON_GLOBALS)]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated, corrupt or foreign: one line, never a traceback
        raise CheckpointError(f"{path} cannot be loaded ({type(exc).__name__}): the file is damaged or "
                              f"not a torch checkpoint") from None


def _state(obj: Any) -> dict:
    if isinstance(obj, _Inert):
        return obj.state if isinstance(obj.state, dict) else {}
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
    scaler = _state(osd.get("loss_scaler"))
    zero = osd.get("zero_stage")
    if isinstance(zero, _Inert):
        zero = zero.args[0] if zero.args else None
    return OptimFile(name=info.name, dp_rank=info.dp_rank, mp_rank=info.mp_rank, pp_stage=info.pp_stage,
                     tp_rank=info.tp_rank, zero_stage=zero if isinstance(zero, int) else None, groups=groups,
                     loss_scale=scaler.get("cur_scale"), fp32_numel=fp32, moments_numel=moments)


def inspect_checkpoint(path: Path, tag: str, load_optimizer: bool = True) -> Report:
    """Read a checkpoint directory one file at a time (see the module docstring)."""
    from bigops.errors import CheckpointError
    from trainer import config as config_mod

    problems = ckpt.verify(path, hashes=False)
    try:
        manifest = ckpt.read_manifest(path)
    except ckpt.CheckpointError:
        manifest = {}
    names = sorted(p.name for p in path.iterdir() if p.is_file())
    engine_state: dict = {}
    cfg = None
    engine0 = path / "mp_rank_00_model_states.pt"
    if engine0.is_file():
        try:
            engine_state = load(engine0)
        except CheckpointError as exc:
            problems.append(str(exc))
    ours = engine_state.get("bigops") if isinstance(engine_state.get("bigops"), dict) else {}
    if isinstance(ours.get("config"), dict):
        try:
            cfg = config_mod.from_dict(ours["config"])
        except config_mod.ConfigError as exc:
            problems.append(f"{engine0.name}: its run config is invalid: {exc}")
    topo = manifest.get("topology") if isinstance(manifest.get("topology"), dict) else {}
    dims = engine_state.get("checkpoint_parallel_dimensions") or {}
    ds_config = engine_state.get("ds_config") if isinstance(engine_state.get("ds_config"), dict) else {}
    tp = cfg.parallel.tp if cfg else topo.get("tp", dims.get("tp_degree"))
    pp = cfg.parallel.pp if cfg else topo.get("pp", dims.get("pp_degree"))
    dp = cfg.parallel.dp if cfg else topo.get("dp", engine_state.get("dp_world_size"))
    topology = {"tp": tp, "pp": pp, "dp": dp,
                "world_size": tp * pp * dp if all(isinstance(x, int) for x in (tp, pp, dp)) else None,
                "zero_stage": cfg.parallel.zero_stage if cfg
                else (ds_config.get("zero_optimization") or {}).get("stage"),
                "precision": cfg.train.precision if cfg else manifest.get("precision")}
    if topo and cfg and (topo.get("tp"), topo.get("pp"), topo.get("dp")) != (tp, pp, dp):
        problems.append(f"manifest topology {topo} differs from the run config's TP={tp} PP={pp} DP={dp}")
    model = {}
    if cfg:
        m = cfg.model
        model = {"hidden_size": m.hidden_size, "num_layers": m.num_layers, "num_attention_heads": m.num_attention_heads,
                 "vocab_size": m.vocab_size, "padded_vocab_size": cfg.padded_vocab_size}
    lrs = (engine_state.get("lr_scheduler") or {}).get("_last_lr") if isinstance(
        engine_state.get("lr_scheduler"), dict) else None
    engine = {k: engine_state.get(k) for k in ("ds_version", "global_steps", "global_samples", "skipped_steps",
                                               "mp_world_size", "dp_world_size", "iteration", "checkpoint_version")
              if k in engine_state}
    megatron_layers = getattr(engine_state.get("args"), "num_layers", None)  # Megatron's args, without our config
    if lrs:
        engine["lr"] = lrs[0]
    engine_state = {}  # drop it before reading the next file

    files = [classify(n, (path / n).stat().st_size, tp if isinstance(tp, int) else None) for n in names]
    num_layers = cfg.model.num_layers if cfg else megatron_layers if isinstance(megatron_layers, int) else None
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
    optimizer = []
    if load_optimizer:
        for f in files:
            if f.kind == KIND_OPTIM:
                try:
                    optimizer.append(summarize_optim(f, load(path / f.name)))
                except CheckpointError as exc:
                    problems.append(str(exc))
    step = manifest.get("step") if isinstance(manifest.get("step"), int) else ours.get("step")
    return Report(tag=tag, path=str(path), step=step,
                  consumed_samples=manifest.get("consumed_samples", ours.get("consumed_samples")),
                  topology=topology, model=model, engine=engine, files=files, layers=layers,
                  optimizer=optimizer, problems=problems)
