"""Decide what a launch runs: a fresh run's config, or a resumed run's stored config plus what may change.

``fresh_config`` and ``resumed_config`` are pure functions of the stored and requested configs;
``launch_plan`` applies the resume rules to a run directory (reading its checkpoints and run.toml).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from trainer import config as config_mod

# What a resumed run may not change: the checkpoint's shapes and shards depend on the model and the layout,
# and its consumed_samples on the data (RUN/data is tokenized once).
FROZEN_ON_RESUME = ("model", "parallel", "data")


def fresh_config(preset: str, config_file, overrides: list[str], hf_config: dict | None = None,
                 cuda_available: bool = False, source: str = "the Hugging Face checkpoint") -> config_mod.RunConfig:
    """Preset + file (+ the model shape of a HF checkpoint to start from) + overrides, validated.

    The world size is tp x pp x dp (dp defaults to 1 locally); ``train.precision = "auto"`` is resolved
    for this machine. An override that contradicts the HF checkpoint's shape is an error naming it.
    """
    cfg = config_mod.resolve(preset, config_file, [])
    if hf_config is not None:
        from trainer.hf import check_compatible, model_config_from_hf
        cfg.model = model_config_from_hf(hf_config, base=cfg.model)
    cfg = config_mod.apply_overrides(cfg, overrides)
    if hf_config is not None:
        check_compatible(cfg.model, hf_config, source)
    cfg = config_mod.resolve_precision(cfg, cuda_available)
    if cfg.data.source not in ("stdlib", "synthetic"):  # the ranks may run elsewhere: absolute paths
        from trainer.data.blend import absolute_paths
        cfg.data.source = absolute_paths(cfg.data.source)
    if cfg.data.tokenizer:  # a folder is its tokenizer.json (the ranks read one file; its config beside it)
        tokenizer = Path(cfg.data.tokenizer).resolve()
        from trainer.rundir import TOKENIZER
        cfg.data.tokenizer = str(tokenizer / TOKENIZER if tokenizer.is_dir() else tokenizer)
    # fix the schedule now: a later --steps must not change it (one in samples has its own length)
    if cfg.train.lr_decay_steps is None and cfg.train.lr_decay_samples is None:
        cfg.train.lr_decay_steps = cfg.train.train_steps
    return config_mod.validate(cfg, world_size=config_mod.world_size_of(cfg))


def hf_tokenizer_override(init_hf: Path, overrides: list[str]) -> list[str]:
    """``--init-hf DIR``: train with the checkpoint's own tokenizer (``DIR/tokenizer.json``), so that the
    pretrained embeddings see the ids they were trained on, unless ``data.tokenizer`` is set explicitly. Its
    vocabulary must fit the embedding (checked where the data is prepared: trainer/data)."""
    from trainer.rundir import TOKENIZER
    if any(o.split("=", 1)[0].strip() == "data.tokenizer" for o in overrides):
        return []
    return [f"data.tokenizer={init_hf / TOKENIZER}"] if (init_hf / TOKENIZER).is_file() else []


class LayoutChange(config_mod.ConfigError):
    """A resume asked for another TP x PP x DP and nothing else frozen: the checkpoint must be reshaped first
    (``bigops ckpt reshape``; ``bigops launch`` offers it on a terminal). ``target`` is (tp, pp, dp)."""

    def __init__(self, message: str, target: tuple[int, int, int]):
        super().__init__(message)
        self.target = target


LAYOUT_FIELDS = ("tp", "pp", "dp")


def resumed_config(stored: config_mod.RunConfig, overrides: list[str], run_name: str = "RUN") -> config_mod.RunConfig:
    """The stored run config with ``overrides`` applied; refuses a change to the model, the data or the layout
    (a layout change alone is a :class:`LayoutChange` that names the reshape command)."""
    cfg = config_mod.apply_overrides(stored, overrides)
    changed = []
    for section in FROZEN_ON_RESUME:
        before, after = getattr(stored, section), getattr(cfg, section)
        for f in dataclasses.fields(before):
            old, new = getattr(before, f.name), getattr(after, f.name)
            if old != new and not (section == "parallel" and f.name == "dp" and new is None):
                changed.append((section, f.name, old, new))
    if changed and all(section == "parallel" and name in LAYOUT_FIELDS for section, name, _, _ in changed):
        target = tuple(getattr(cfg.parallel, n) or getattr(stored.parallel, n) for n in LAYOUT_FIELDS)
        old = tuple(getattr(stored.parallel, n) for n in LAYOUT_FIELDS)
        raise LayoutChange(f"the run is at TP {old[0]} x PP {old[1]} x DP {old[2]}, asked for TP {target[0]} x PP "
                           f"{target[1]} x DP {target[2]}: reshape its checkpoint first: bigops ckpt reshape "
                           f"{run_name} --tp {target[0]} --pp {target[1]} --dp {target[2]}", target)
    if changed:
        section, name, old, new = changed[0]
        raise config_mod.ConfigError(
            f"{section}.{name}={new} differs from the run's {section}.{name}={old}: a resumed run keeps "
            f"its model, layout and data (start a new --run-dir, or convert the checkpoint)")
    return config_mod.validate(cfg, world_size=config_mod.world_size_of(stored))


def file_overrides(path: Path) -> list[str]:
    """A ``--config`` file as ``section.key=value`` overrides (on a resume: applied to the stored config)."""
    import tomllib
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise config_mod.ConfigError(f"config file {path} cannot be read: {exc}") from None
    return [f"{s}.{k}={v}" for s, values in data.items() if isinstance(values, dict) for k, v in values.items()]


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """What a local launch runs: the config, whether it resumes, and from which checkpoint."""

    cfg: config_mod.RunConfig
    resume: bool
    resumable: object | None
    """``trainer.checkpoint.Resumable``: the checkpoint found (sizes checked; the ranks verify hashes)."""


def launch_plan(run, preset: str, config_file: Path | None, overrides: list[str], init_hf: Path | None = None,
                resume: bool | None = None, init_megatron: Path | None = None) -> LaunchPlan:
    """The resume rules of ``bigops launch``: a run with a checkpoint resumes (``resume=None``: when it has
    one), a run without one cannot, a new run never overwrites checkpoints, and ``--init-hf`` only starts a
    new run. A resumed run's config is its run.toml plus the overrides (``resumed_config``); a new one is
    built from the preset (``fresh_config``), for this machine's precision."""
    from trainer.checkpoint import find_resumable
    resumable = find_resumable(run, hashes=False)  # sizes only here; the ranks verify the hashes
    has_checkpoint = resumable is not None
    if resume is None:
        resume = has_checkpoint
    if resume and not has_checkpoint:
        raise config_mod.ConfigError(f"--resume: {run.root} has no checkpoint to resume from")
    if not resume and has_checkpoint:
        raise config_mod.ConfigError(f"{run.root} already holds checkpoints: resume it (the default) or choose a "
                                     f"new --run-dir; bigops never overwrites a run")
    if init_hf is not None and init_megatron is not None:
        raise config_mod.ConfigError("--init-hf and --init-megatron: start from one checkpoint")
    for option, given in (("--init-hf", init_hf), ("--init-megatron", init_megatron)):
        if given is not None and resume:
            raise config_mod.ConfigError(f"{option} only applies to a new run: this one resumes from its checkpoint")
    if resume:
        if config_file is not None:
            overrides = [*file_overrides(config_file), *overrides]
        from trainer.rundir import load_run_config
        return LaunchPlan(resumed_config(load_run_config(run), overrides, str(run.root)), True, resumable)
    hf_config, source = None, "the Hugging Face checkpoint"
    if init_hf is not None:
        from trainer.hf import read_hf_config
        hf_config = read_hf_config(init_hf)
        overrides = [*hf_tokenizer_override(Path(init_hf), overrides), *overrides]
    if init_megatron is not None:  # its shape, as a HF config.json would give it
        from trainer import megatron
        hf_config, source = megatron.hf_shape(megatron.open_tag(init_megatron)[1]), megatron.SOURCE
    import torch
    cfg = fresh_config(preset, config_file, overrides, hf_config=hf_config, cuda_available=torch.cuda.is_available(),
                       source=source)
    return LaunchPlan(cfg, False, resumable)


def check_launch_options(*, slurm: bool, watch: bool, metrics_port: int, init_hf: Path | None, host: str | None,
                         profile: str | None, print_script: bool, init_megatron: Path | None = None) -> None:
    """The combinations ``bigops launch`` refuses, each a ConfigError naming the options: the metrics server
    runs inside the watchdog, and --watch / --init-hf / --init-megatron are local while --host / --profile /
    --print-script are SLURM's."""
    if metrics_port and not watch:
        raise config_mod.ConfigError("--metrics-port goes with --watch (or run `bigops watch RUN --metrics-port P` "
                                     "beside the launch)")
    if not (slurm or host or profile or print_script):
        return
    if not slurm:
        raise config_mod.ConfigError("--host, --profile and --print-script go with --slurm")
    if watch or init_hf is not None or init_megatron is not None:
        raise config_mod.ConfigError("--watch, --init-hf and --init-megatron are local options: with --slurm, "
                                     "run `bigops watch RUN` beside the chain (it keeps the queue full)")
