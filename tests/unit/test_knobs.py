"""Each option declared once, in the config tree, with its docstring: the watchdog's detectors, its policy,
the notifier and the alert rules take their defaults from it; one world-size rule (issue 14)."""

import ast
import dataclasses
import inspect

import pytest

from trainer import config as C


def _docstrings(cls) -> set[str]:
    """The fields of a dataclass that a string literal follows in its class body."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {node.target.id for node, after in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)}


def test_every_option_has_its_docstring():
    missing = [f"{section.name}.{f.name}" for section in dataclasses.fields(C.RunConfig)
               for f in dataclasses.fields(section.default_factory())
               if f.name not in _docstrings(section.default_factory)]
    assert missing == []


def test_every_section_has_its_checks():
    assert list(C.SECTION_CHECKS) == ["model", "parallel", "train", "watchdog", "alerts", "data", "slurm"]
    assert set(C.SECTION_CHECKS) == {f.name for f in dataclasses.fields(C.RunConfig)}


@pytest.mark.parametrize("option, value, message", [
    ("watchdog.on_crash", "reboot", "watchdog.on_crash='reboot' is not supported: use restart, notify or ask"),
    ("watchdog.on_loss_spike", "x", "watchdog.on_loss_spike='x' is not supported: use rollback, notify or ask"),
    ("train.lr_decay_style", "step", "train.lr_decay_style='step' is not supported: use cosine, linear or constant"),
    ("alerts.min_severity", "page", "alerts.min_severity='page' is not supported: use info, warning or critical"),
    ("slurm.chain_mode", "ring", "slurm.chain_mode='ring' is not supported: use singleton or array"),
    ("watchdog.gpu_temperature_critical_c", "80",
     "watchdog.gpu_temperature_critical_c=80 must be at least watchdog.gpu_temperature_warning_c=85"),
])
def test_choices_come_from_the_annotation_and_errors_name_the_option(option, value, message):
    cfg = C.apply_overrides(C.preset("tiny"), [f"{option}={value}"])
    with pytest.raises(C.ConfigError) as err:
        C.validate(cfg, world_size=4)
    assert str(err.value) == message
    section = option.split(".")[0]
    assert C.section_errors(cfg, section) == [message]
    assert all(C.section_errors(cfg, other) == [] for other in C.SECTION_CHECKS if other != section)


def test_the_watchdog_settings_are_the_options_defaults():
    from bigops.dashboards import alerts
    from bigops.notify.notifier import Notifier
    from bigops.watchdog.decide import Policy
    from bigops.watchdog.scan import WatchConfig
    from bigops.watchdog.settings import watch_config
    assert watch_config(C.RunConfig()) == WatchConfig()
    cfg = C.RunConfig()
    p = cfg.parallel  # the run's own values (not [watchdog] options) beside the options' defaults
    assert Policy.of(cfg) == Policy(global_batch_size=cfg.train.global_batch_size, layout=(p.tp, p.pp, p.dp or 1),
                                    micro_batch_size=cfg.train.micro_batch_size)
    gpu = WatchConfig().gpu
    assert (alerts.GPU_HOT_WARNING_C, alerts.GPU_HOT_CRITICAL_C) == (gpu.temperature_warning_c,
                                                                     gpu.temperature_critical_c) == (85, 90)
    assert alerts.GPU_SILENT_S == gpu.stale_after_s == 120  # GpuSamplerSilent: the finding and the alert agree
    notifier = Notifier([])
    assert (notifier.min_severity, notifier.rate_limit, notifier.retries) == (
        cfg.alerts.min_severity, cfg.alerts.rate_limit_per_minute, cfg.alerts.retries)


def test_watchdog_options_reach_their_detectors_and_are_checked():
    from bigops.watchdog.settings import watch_config
    cfg = C.apply_overrides(C.preset("tiny"), [
        "watchdog.hang_factor=4", "watchdog.hang_checkpoint_timeout_s=99", "watchdog.straggler_min_samples=7",
        "watchdog.spike_patience=3", "watchdog.desync_threshold=0.5", "watchdog.gpu_temperature_warning_c=70",
        "watchdog.gpu_temperature_critical_c=75", "watchdog.on_desync=ask", "watchdog.gpu_sampler_silent_s=300"])
    config = watch_config(cfg)
    assert (config.hang.factor, config.hang.checkpoint_timeout_s, config.straggler.min_samples) == (4.0, 99.0, 7)
    assert (config.loss.spike_patience, config.desync.threshold, config.on_desync) == (3, 0.5, "ask")
    assert (config.gpu.temperature_warning_c, config.gpu.temperature_critical_c) == (70, 75)
    assert config.gpu.stale_after_s == 300
    bad_options = (("on_desync=reboot", "watchdog.on_desync"), ("desync_threshold=-1", "watchdog.desync_threshold"),
                   ("straggler_factor=0.5", "watchdog.straggler_factor"))
    for bad, option in bad_options:
        with pytest.raises(C.ConfigError, match=option):  # a hand-edited run.toml, never validated
            watch_config(C.apply_overrides(C.preset("tiny"), [f"watchdog.{bad}"]))


def test_one_world_size_rule():
    from launcher.slurm import render
    from trainer.parallel.topology import ParallelDims
    assert C.data_parallel_size(384, 4, 12) == 8 and C.data_parallel_size(384, 4, 12, 8) == 8
    with pytest.raises(C.ConfigError, match="parallel.tp=4 x parallel.pp=12 x parallel.dp=4 = 192 != world size 384"):
        C.data_parallel_size(384, 4, 12, 4)
    with pytest.raises(C.ConfigError, match="parallel.tp=4 x parallel.pp=12 x parallel.dp=4 = 192 != world size 384"):
        ParallelDims(4, 12, 4).check(384)
    assert ParallelDims(4, 12, 8).check(384).world_size == 384
    cfg = C.preset("bloom-176b")  # dp unset: 1 replica locally, as many as the allocation holds on SLURM
    assert C.world_size_of(cfg) == 48 and C.data_parallel_of(cfg) == 1
    cfg.slurm.nodes, cfg.slurm.gpus_per_node = 48, 8
    assert render.slots(cfg) == 384 and render.world_size(cfg) == 384 and C.data_parallel_of(cfg, 384) == 8
    cfg.parallel.dp = 2
    assert render.world_size(cfg) == C.world_size_of(cfg) == 96


@pytest.mark.parametrize("option", [f.name for f in dataclasses.fields(C.WatchdogConfig)
                                    if f.name not in ("interval_s", "warm_spares", "warm_spares_after_s")])
def test_every_watchdog_option_reaches_the_detectors_or_the_policy(option):
    """``interval_s`` paces the loop itself, ``warm_spares(_after_s)`` how the supervisor starts ranks
    (tests/unit/test_spare.py); every other option changes what watch_config or Policy.of gives."""
    from bigops.watchdog.decide import Policy
    from bigops.watchdog.settings import watch_config
    default = C.RunConfig()
    cfg = C.RunConfig()
    allowed = C.choices_of(cfg.watchdog, option)
    value = getattr(cfg.watchdog, option)
    setattr(cfg.watchdog, option, next(v for v in allowed if v != value) if allowed else value + 1)
    assert (watch_config(cfg), Policy.of(cfg)) != (watch_config(default), Policy.of(default))


def test_cli_choices_are_the_librarys_tables():
    """The CLI's choices (--severity, --dtype, --method) are the values the library accepts, no more, no less."""
    from bigops.checkpoint.export_hf import DTYPES
    from bigops.cli.options import ExportDtype, Severity, SyncMethod
    from bigops.checkpoint.surgery import sync_layernorm_edit
    from bigops.notify.notifier import SEVERITY_ORDER
    assert [s.value for s in Severity] == list(SEVERITY_ORDER)
    assert [d.value for d in ExportDtype] == ["auto", *DTYPES]
    for method in SyncMethod:
        assert sync_layernorm_edit(method.value).name == "sync-layernorm"
