"""Heartbeats for NVIDIA's fault-tolerance launcher (nvidia-resiliency-ext's ``ft_launcher``), opt-in.

``ft_launcher`` starts one rank monitor per rank, but a monitor checks its heartbeat timeouts only once the rank
has connected through NVRx's ``RankMonitorClient`` (``init_workload_monitoring``) and sends heartbeats: a rank
that never calls it is never found hung. The recovery benchmark (``python -m benchmarks.recovery``) compares
bigops with that launcher on a hung rank, so there ``BIGOPS_NVRX_HEARTBEATS=1`` makes every rank connect and
send one heartbeat per optimizer step, as NVRx's docs wire it into a training loop. Unset (everywhere else)
nothing of NVRx is imported: it is not a dependency of bigops.
"""

from __future__ import annotations

import os
from typing import Callable

ENV = "BIGOPS_NVRX_HEARTBEATS"


def from_env(environ=None) -> Callable[[], None] | None:
    """The per-step heartbeat to send (connected to this rank's NVRx monitor), or None when not asked for."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV) != "1":
        return None
    from nvidia_resiliency_ext.fault_tolerance import RankMonitorClient  # only under ft_launcher
    client = RankMonitorClient()
    client.init_workload_monitoring()
    return client.send_heartbeat
