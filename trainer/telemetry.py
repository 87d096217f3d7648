"""What a running job tells the outside: per-step metrics (rank 0), per-rank heartbeats, TensorBoard.

- ``telemetry/metrics.jsonl``: one record per optimizer step (and ``val_loss`` / ``ln_desync`` when
  measured), appended by rank 0.
- ``telemetry/heartbeat/rank-NNNNN.json``: replaced atomically whenever the rank changes phase (startup,
  forward, backward, step, checkpoint, eval, exit) and at least once per step, so a hang names its rank
  and what it was doing.
- ``tensorboard/``: the same scalars for people.
"""

from __future__ import annotations

import json
import os
import socket
import time

from trainer.rundir import RunDir, append_jsonl, atomic_write_text

PHASES = ("startup", "forward", "backward", "step", "checkpoint", "eval", "exit")


def flops_per_token(n_params: int, layers: int, hidden: int, seq: int) -> float:
    """Training FLOPs per token: 6N for the matmuls of forward+backward, plus 12 L h T for attention
    (PaLM's accounting). Activation checkpointing recomputes, but is not counted (model FLOPs, as MFU)."""
    return 6.0 * n_params + 12.0 * layers * hidden * seq


class Heartbeat:
    """One small JSON per rank, replaced atomically; writes are throttled to one per ``min_interval_s``
    except on a step boundary or when entering checkpoint/eval/exit."""

    def __init__(self, run: RunDir, rank: int, min_interval_s: float = 0.5):
        self.path = run.telemetry / "heartbeat" / f"rank-{rank:05d}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank, self.host, self.pid = rank, socket.gethostname(), os.getpid()
        self.min_interval_s = min_interval_s
        self.step, self.phase, self._last_write = 0, "startup", 0.0

    def beat(self, phase: str, step: int | None = None, force: bool = False) -> None:
        if step is not None:
            self.step = step
        changed = phase != self.phase
        self.phase = phase
        now = time.time()
        if force or phase in ("checkpoint", "eval", "exit", "startup") and changed \
                or now - self._last_write >= self.min_interval_s:
            atomic_write_text(self.path, json.dumps({"rank": self.rank, "host": self.host, "pid": self.pid,
                                                     "step": self.step, "time": now, "phase": phase}))
            self._last_write = now

    def attach(self, module) -> None:
        """Report forward/backward phases from module hooks (cheap: throttled writes)."""
        module.register_forward_pre_hook(lambda *_: self.beat("forward"))
        module.register_full_backward_pre_hook(lambda *_: self.beat("backward"))


class MetricsSink:
    """Rank 0's writer of metrics.jsonl and TensorBoard scalars."""

    def __init__(self, run: RunDir, tensorboard: bool = True):
        self.path = run.metrics
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(run.tensorboard))

    def write(self, record: dict) -> None:
        append_jsonl(self.path, record)
        if self.writer is not None:
            step = record["step"]
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
