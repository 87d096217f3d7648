"""What a running job tells the outside: per-step metrics (rank 0), per-rank heartbeats, TensorBoard.

- ``telemetry/metrics.jsonl``: one record per optimizer step (and ``val_loss`` / ``ln_desync`` when
  measured), appended by rank 0.
- ``telemetry/heartbeat/rank-NNNNN.json``: replaced atomically whenever the rank changes phase (startup,
  forward, backward, step, checkpoint, eval, exit) and at least once per step, so a hang names its rank
  and what it was doing; ``launch`` names the start of the ranks it belongs to (``BIGOPS_LAUNCH_ID``).
- ``tensorboard/``: the same scalars for people, under Megatron-DeepSpeed's tag names (``trainer.tbtags``:
  ``lm-loss-training/lm loss``, ``... vs samples``, ``... vs tokens``) so BLOOM's published logs overlay them,
  and under ``train/<key>`` as before.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import deque

from trainer import faults, lifeline, tbtags
from trainer.rundir import RunDir, append_jsonl, atomic_write_text

PHASES = ("startup", "forward", "backward", "step", "checkpoint", "eval", "exit")


def flops_per_token(n_params: int, layers: int, hidden: int, seq: int) -> float:
    """Training FLOPs per token: 6N for the matmuls of forward+backward, plus 12 L h T for attention
    (PaLM's accounting). Activation checkpointing recomputes, but is not counted (model FLOPs, as MFU)."""
    return 6.0 * n_params + 12.0 * layers * hidden * seq


class Heartbeat:
    """One small JSON per rank, replaced atomically; writes are throttled to one per ``min_interval_s``
    except on a step boundary or when entering checkpoint/eval/exit.

    Besides where the rank is (step, phase), it carries where it sits (pipeline ``stage``, ``dp_rank``, TP
    size ``tp``; learnt from the DeepSpeed ``PipelineModule`` in :meth:`attach` unless given) and how long
    its module's forward calls took in the last training step (``forward_s``, summed over micro-batches,
    and the last ``RECENT_STEPS`` of them in ``forward_s_recent``): waits for other ranks (pipeline p2p,
    the gradient all-reduce) happen outside the forward, so a slow rank shows a larger ``forward_s`` than
    the ranks of its stage in the other data-parallel replicas (the watchdog's straggler detector)."""

    RECENT_STEPS = 16

    def __init__(self, run: RunDir, rank: int, min_interval_s: float = 0.5, stage: int | None = None,
                 dp_rank: int | None = None, tp: int | None = None, launch: str | None = None):
        self.path = run.heartbeat(rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank, self.host, self.pid = rank, socket.gethostname(), os.getpid()
        self.launch = launch if launch is not None else lifeline.launch_id()
        """This start of the ranks (``BIGOPS_LAUNCH_ID``, set by the launcher; None: not a bigops launch)."""
        self.beats = 0
        """Calls of :meth:`beat` (written or not): the lifeline's measure of progress."""
        self.stage, self.dp_rank, self.tp = stage, dp_rank, tp
        self.min_interval_s = min_interval_s
        self.step, self.phase, self._last_write = 0, "startup", 0.0
        self._forward_started: float | None = None
        self._forward_s, self._forward_calls = 0.0, 0
        self.last_forward: tuple[float, int] | None = None
        self.forward_recent: deque[float] = deque(maxlen=self.RECENT_STEPS)
        self.slow_forward_s = faults.slow_forward_seconds(rank)

    def record(self, phase: str, now: float) -> dict:
        data = {"rank": self.rank, "host": self.host, "pid": self.pid, "step": self.step, "time": now,
                "phase": phase}
        for key in ("launch", "stage", "dp_rank", "tp"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.last_forward is not None:
            data["forward_s"], data["forward_calls"] = round(self.last_forward[0], 6), self.last_forward[1]
            data["forward_s_recent"] = [round(v, 6) for v in self.forward_recent]
        return data

    def beat(self, phase: str, step: int | None = None, force: bool = False) -> None:
        self.beats += 1
        if step is not None:
            self.step = step
        if phase == "step" and self._forward_calls:  # a training step ended: close its forward timing
            self.last_forward = (self._forward_s, self._forward_calls)
            self.forward_recent.append(self._forward_s)
            self._forward_s, self._forward_calls = 0.0, 0
        changed = phase != self.phase
        self.phase = phase
        now = time.time()
        if force or phase in ("checkpoint", "eval", "exit", "startup") and changed \
                or now - self._last_write >= self.min_interval_s:
            atomic_write_text(self.path, json.dumps(self.record(phase, now)))
            self._last_write = now

    def attach(self, module) -> None:
        """Report forward/backward phases from module hooks (cheap: throttled writes), and time the
        module's training forward calls."""
        self._learn_coords(module)
        module.register_forward_pre_hook(self._forward_pre)
        module.register_forward_hook(self._forward_post)
        module.register_full_backward_pre_hook(lambda *_: self.beat("backward"))

    def _learn_coords(self, module) -> None:
        if self.stage is None and isinstance(getattr(module, "stage_id", None), int):
            self.stage = module.stage_id
        topo = getattr(module, "_topo", None)
        if topo is None:
            return
        try:
            rank = getattr(module, "global_rank", self.rank)
            if self.dp_rank is None:
                self.dp_rank = int(topo.get_coord(rank).data)
            if self.tp is None:
                self.tp = int(topo.get_dim("model"))
        except (AttributeError, KeyError, ValueError, TypeError):
            pass

    def _forward_pre(self, module, args) -> None:
        self.beat("forward")
        if module.training:  # eval forwards are not a training step's work
            self._forward_started = time.perf_counter()
            if self.slow_forward_s:
                time.sleep(self.slow_forward_s)

    def _forward_post(self, module, args, output) -> None:
        if self._forward_started is not None:
            self._forward_s += time.perf_counter() - self._forward_started
            self._forward_calls += 1
            self._forward_started = None


class MetricsSink:
    """Rank 0's writer of metrics.jsonl and TensorBoard scalars; ``seq_length`` and ``batch_size`` (the global
    batch) give Megatron's "vs tokens" axis and ``batch-size`` scalar, so TensorBoard needs them."""

    def __init__(self, run: RunDir, tensorboard: bool = True, seq_length: int | None = None,
                 batch_size: int | None = None):
        self.path = run.metrics
        self.seq_length, self.batch_size = seq_length, batch_size
        self.writer = None
        if tensorboard:
            if seq_length is None or batch_size is None:
                raise ValueError("MetricsSink: TensorBoard's Megatron tags need seq_length and batch_size")
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(run.tensorboard))

    def write(self, record: dict) -> None:
        append_jsonl(self.path, record)
        if self.writer is not None:
            step = record["step"]
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"train/{key}", value, step)
            for tag, value, x in tbtags.scalars(record, self.seq_length, self.batch_size):
                self.writer.add_scalar(tag, value, x)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
