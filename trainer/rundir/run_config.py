"""``run.toml``: the resolved run config, read in one place. ``load_run_config`` for those that need it
(trainer, launcher, CLI: a bad file is a ``ConfigError``), ``read_run_config`` for those that only look
(the watchdog's pass, the metrics exporter: a missing or bad file is "not known")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.rundir.paths import RUN_TOML, RunDir

if TYPE_CHECKING:
    from trainer.config import RunConfig


def load_run_config(run: RunDir, missing_ok: bool = False) -> "RunConfig":
    """The run's config on top of the defaults (``ConfigError`` when unreadable or invalid); ``missing_ok``:
    the defaults when the run has no run.toml yet."""
    from trainer import config as config_mod  # the config tree imports nothing of the run directory
    if missing_ok and not run.run_toml.exists():
        return config_mod.RunConfig()
    return config_mod.load_toml(run.run_toml, base=config_mod.RunConfig())


def parse_run_config(text: str, source: str = RUN_TOML) -> "RunConfig":
    """A run.toml's text (read over SSH, say) on top of the defaults; ``ConfigError`` naming ``source``."""
    import tomllib

    from trainer import config as config_mod
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise config_mod.ConfigError(f"{source} is not valid TOML: {exc}") from None
    return config_mod.apply_mapping(config_mod.RunConfig(), data, source=source)


def read_run_config(run: RunDir) -> "RunConfig | None":
    """The run's config, or None when it has none or it does not load."""
    try:
        return load_run_config(run)
    except ValueError:  # ConfigError is one
        return None


def target_step(run: RunDir) -> int | None:
    """The step the run trains to (``train.train_steps``), None when its run.toml is missing or bad."""
    cfg = read_run_config(run)
    return cfg.train.train_steps if cfg is not None else None
