"""Numeric config validation: every number finite and in its range, the option named (issue 13)."""

import dataclasses
import typing

import pytest

from trainer import config as C


@pytest.mark.parametrize("override, message", [
    ("train.lr=nan", "train.lr=nan: must be a finite number > 0"),
    ("train.lr=inf", "train.lr=inf: must be a finite number > 0"),
    ("watchdog.restart_window_s=-1", "watchdog.restart_window_s=-1.0: must be a finite number > 0"),
    ("alerts.retries=0", "alerts.retries=0: must be an integer >= 1"),
    ("alerts.remind_every_s=30", "alerts.remind_every_s=30.0: must be 0 (off) or a finite number >= 60"),
    ("alerts.remind_every_s=inf", "alerts.remind_every_s=inf: must be 0 (off) or a finite number >= 60"),
    ("alerts.remind_every_s=-60", "alerts.remind_every_s=-60.0: must be 0 (off) or a finite number >= 60"),
    ("train.clip_grad=-inf", "train.clip_grad=-inf: must be a finite number >= 0"),
    ("watchdog.interval_s=0", "watchdog.interval_s=0.0: must be a finite number > 0"),
    ("alerts.rate_limit_per_minute=0", "alerts.rate_limit_per_minute=0: must be an integer >= 1"),
    ("alerts.smtp_port=70000", "alerts.smtp_port=70000: must be an integer >= 1 and <= 65535"),
    ("slurm.exit_margin_min=nan", "slurm.exit_margin_min=nan: must be a finite number >= 0"),
    ("train.exit_duration_in_mins=nan", "train.exit_duration_in_mins=nan: must be a finite number > 0"),
    ("train.seed=-1", "train.seed=-1: must be an integer >= 0"),
    ("train.min_lr=1", "train.min_lr=1.0: must be in [0, train.lr=0.005]"),
    ("alerts.resolve_after_s=-5", "alerts.resolve_after_s=-5.0: must be a finite number >= 0"),
    ("watchdog.hang_factor=nan", "watchdog.hang_factor=nan: must be a finite number >= 1"),
    ("alerts.timeout_s=0", "alerts.timeout_s=0.0: must be a finite number > 0"),
    ("model.layernorm_epsilon=-inf", "model.layernorm_epsilon=-inf: must be a finite number > 0"),
])
def test_out_of_range_is_one_line_naming_the_option(override, message):
    cfg = C.apply_overrides(C.preset("tiny"), [override])
    with pytest.raises(C.ConfigError) as err:
        C.validate(cfg, world_size=1)
    assert str(err.value) == message


def test_defaults_and_presets_validate():
    for name in C.PRESETS:
        assert C.numeric_errors(C.preset(name)) == []
    cfg = C.preset("tiny")
    assert cfg.alerts.remind_every_s == 14400.0 and cfg.alerts.resolve_after_s == 600.0


def test_every_numeric_option_has_a_range():
    """A new int/float option cannot skip validation: the table lists every one."""
    cfg = C.RunConfig()
    numeric = set()
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        for name, hint in typing.get_type_hints(type(obj)).items():
            args = set(typing.get_args(hint)) or {hint}
            if args & {int, float} and bool not in args:
                numeric.add(f"{section.name}.{name}")
    assert numeric == set(C.NUMERIC_RANGES)


@pytest.mark.parametrize("override", ["alerts.remind_every_s=0", "alerts.remind_every_s=60", "alerts.resolve_after_s=0",
                                      "train.lr=1e30", "watchdog.hang_min_timeout_s=0.5",
                                      "train.exit_duration_in_mins=none"])
def test_edges_that_are_allowed(override):
    C.validate(C.apply_overrides(C.preset("tiny"), [override]), world_size=4)


def test_incident_timing_reaches_the_watchdog():
    """alerts.remind_every_s / resolve_after_s are the incident layer's policy (settings.watch_config)."""
    from bigops.watchdog.settings import watch_config
    cfg = C.apply_overrides(C.preset("tiny"), ["alerts.remind_every_s=0", "alerts.resolve_after_s=120"])
    policy = watch_config(C.validate(cfg, world_size=4)).incidents
    assert (policy.remind_every_s, policy.resolve_after_s) == (0.0, 120.0)
