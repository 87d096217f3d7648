"""The watchdog's settings from a run's config: the one place that maps ``[watchdog]`` and ``[alerts]``
options onto the detectors and the incident layer that use them (what the rules may do is mapped by
``bigops.watchdog.decide.Policy.of``, the channels by ``bigops.notify.notifier.from_config``).

Every option is declared once, with its meaning, in :mod:`trainer.config` (``WatchdogConfig``,
``AlertsConfig``); the detector configs take their defaults from there, so ``watch_config(RunConfig())`` is
``WatchConfig()``, and every ``[watchdog]`` option reaches this or ``Policy.of`` (tests/unit/test_knobs.py).
Settings that are not options (the loss-spike statistics, the disk margins...) stay the detectors' own.
"""

from __future__ import annotations

from typing import Callable

from bigops.watchdog.detectors.desync import DesyncConfig
from bigops.watchdog.detectors.gpu import GpuConfig
from bigops.watchdog.detectors.hang import HangConfig
from bigops.watchdog.detectors.loss_spike import LossSpikeConfig
from bigops.watchdog.detectors.straggler import StragglerConfig
from bigops.watchdog.incidents import IncidentPolicy
from bigops.watchdog.scan import WatchConfig
from trainer.config import RunConfig, check_section


def watch_config(cfg: RunConfig, alive: Callable[[int], bool] | None = None) -> WatchConfig:
    """The detectors' and the daemon's settings from ``[watchdog]`` and ``[alerts]``; ``[watchdog]`` is
    checked here (ConfigError naming the option: a hand-edited run.toml may not have been validated)."""
    check_section(cfg, "watchdog")
    w, a = cfg.watchdog, cfg.alerts
    return WatchConfig(loss=LossSpikeConfig(spike_patience=w.spike_patience),
                       hang=HangConfig(factor=w.hang_factor, min_timeout_s=w.hang_min_timeout_s,
                                       startup_timeout_s=w.hang_startup_timeout_s,
                                       checkpoint_timeout_s=w.hang_checkpoint_timeout_s),
                       desync=DesyncConfig(threshold=w.desync_threshold),
                       gpu=GpuConfig(temperature_warning_c=w.gpu_temperature_warning_c,
                                     temperature_critical_c=w.gpu_temperature_critical_c,
                                     stale_after_s=w.gpu_sampler_silent_s),
                       straggler=StragglerConfig(factor=w.straggler_factor, min_gap_s=w.straggler_min_gap_s,
                                                 min_samples=w.straggler_min_samples),
                       incidents=IncidentPolicy(resolve_after_s=a.resolve_after_s, remind_every_s=a.remind_every_s),
                       on_desync=w.on_desync, alive=alive)
