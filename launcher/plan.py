"""Decide what a launch runs: a fresh run's config, or a resumed run's stored config plus what may change.

Pure functions of the stored and requested configs; the CLI does the file I/O.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from trainer import config as config_mod

# What a resumed run may not change: the checkpoint's shapes and shards depend on the model and the layout,
# and its consumed_samples on the data (RUN/data is tokenized once).
FROZEN_ON_RESUME = ("model", "parallel", "data")


def fresh_config(preset: str, config_file, overrides: list[str], hf_config: dict | None = None,
                 cuda_available: bool = False) -> config_mod.RunConfig:
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
        check_compatible(cfg.model, hf_config)
    cfg = config_mod.resolve_precision(cfg, cuda_available)
    if cfg.data.source not in ("stdlib", "synthetic"):  # the ranks may run elsewhere: absolute paths
        cfg.data.source = str(Path(cfg.data.source).resolve())
    if cfg.data.tokenizer:
        cfg.data.tokenizer = str(Path(cfg.data.tokenizer).resolve())
    if cfg.train.lr_decay_steps is None:  # fix the schedule now: a later --steps must not change it
        cfg.train.lr_decay_steps = cfg.train.train_steps
    return config_mod.validate(cfg, world_size=config_mod.world_size_of(cfg))


def resumed_config(stored: config_mod.RunConfig, overrides: list[str]) -> config_mod.RunConfig:
    """The stored run config with ``overrides`` applied; refuses a change to the model or the layout."""
    cfg = config_mod.apply_overrides(stored, overrides)
    for section in FROZEN_ON_RESUME:
        before, after = getattr(stored, section), getattr(cfg, section)
        for f in dataclasses.fields(before):
            old, new = getattr(before, f.name), getattr(after, f.name)
            if old != new and not (section == "parallel" and f.name == "dp" and new is None):
                raise config_mod.ConfigError(
                    f"{section}.{f.name}={new} differs from the run's {section}.{f.name}={old}: a resumed run keeps "
                    f"its model, layout and data (start a new --run-dir, or convert the checkpoint)")
    return config_mod.validate(cfg, world_size=config_mod.world_size_of(stored))
