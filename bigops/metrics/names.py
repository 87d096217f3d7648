"""Every metric bigops exports, declared once: the exporter, the dashboards and the alert rules use these.

Prometheus conventions: one ``bigops_`` prefix, base units in the name (seconds, bytes, celsius, watts,
ratio), ``_total`` on counters, timestamps instead of ages, low-cardinality labels (run, rank, host, gpu).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # gauge | counter
    help: str
    labels: tuple[str, ...] = ("run",)


UP = Metric("bigops_up", "gauge", "1 while the watchdog runs and can read the run directory.")
WATCHDOG_TICK = Metric("bigops_watchdog_last_tick_timestamp_seconds", "gauge", "When the watchdog last scanned the run.")
STEP = Metric("bigops_run_step", "gauge", "Last optimizer step recorded by the trainer.")
TARGET_STEP = Metric("bigops_run_target_step", "gauge", "The step the run trains to.")
LOSS = Metric("bigops_run_loss", "gauge", "Training loss of the last step.")
VAL_LOSS = Metric("bigops_run_validation_loss", "gauge", "Last validation loss on held-out text.")
GRAD_NORM = Metric("bigops_run_grad_norm", "gauge", "Global gradient norm of the last step.")
LR = Metric("bigops_run_learning_rate", "gauge", "Learning rate of the last step.")
TOKENS = Metric("bigops_run_tokens_per_second", "gauge", "Training throughput of the last step.")
TFLOPS = Metric("bigops_run_tflops_per_gpu", "gauge", "Model TFLOP/s per GPU of the last step.")
CONSUMED = Metric("bigops_run_consumed_samples", "gauge", "Samples consumed so far.")
PROGRESS = Metric("bigops_run_last_progress_timestamp_seconds", "gauge", "When the last step was recorded.")
DESYNC = Metric("bigops_run_ln_desync", "gauge", "Max |difference| of TP-duplicated parameters across TP ranks.")
SKIPPED = Metric("bigops_run_step_skipped", "gauge", "1 if the last step was skipped (NaN/Inf), else 0.")
CKPT_STEP = Metric("bigops_checkpoint_last_step", "gauge", "Step of the newest complete checkpoint.")
CKPT_TIME = Metric("bigops_checkpoint_last_timestamp_seconds", "gauge", "When the newest complete checkpoint was written.")
HEARTBEAT = Metric("bigops_rank_heartbeat_timestamp_seconds", "gauge", "Last heartbeat of each rank.", ("run", "rank"))
FORWARD = Metric("bigops_rank_forward_seconds", "gauge", "Seconds in the rank's module forward during its last "
                 "training step (summed over micro-batches; a straggler's is larger).", ("run", "rank"))
PENDING = Metric("bigops_watchdog_pending_approvals", "gauge", "Watchdog actions waiting for `bigops approve`.")
GPU_TEMP = Metric("bigops_gpu_temperature_celsius", "gauge", "GPU temperature.", ("run", "host", "gpu"))
GPU_POWER = Metric("bigops_gpu_power_watts", "gauge", "GPU power draw.", ("run", "host", "gpu"))
GPU_UTIL = Metric("bigops_gpu_utilization_ratio", "gauge", "GPU utilization (0-1).", ("run", "host", "gpu"))
GPU_MEM = Metric("bigops_gpu_memory_used_bytes", "gauge", "GPU memory in use.", ("run", "host", "gpu"))
GPU_DBE = Metric("bigops_gpu_ecc_double_bit_errors", "gauge", "Uncorrected ECC errors since driver load.",
                 ("run", "host", "gpu"))
GPU_SAMPLE = Metric("bigops_gpu_last_sample_timestamp_seconds", "gauge", "Last GPU sample of each node.",
                    ("run", "host"))
CONSUMED_TOKENS = Metric("bigops_run_consumed_tokens", "gauge", "Tokens consumed so far (samples x sequence length).")
TARGET_TOKENS = Metric("bigops_run_target_tokens", "gauge", "Tokens the run trains on in all (the samples of its target "
                       "step's batches, a ramp-up's included, x sequence length).")
DISK_FREE = Metric("bigops_run_disk_free_bytes", "gauge", "Free bytes on the run directory's filesystem.")
DISK_SIZE = Metric("bigops_run_disk_size_bytes", "gauge", "Size of the run directory's filesystem.")
ACTIONS = Metric("bigops_watchdog_actions_total", "counter", "Actions the watchdog or supervisor took (restart, "
                 "rollback, kill, give-up, sync-layernorm), from events.jsonl.", ("run", "action"))
CHAIN_QUEUED = Metric("bigops_chain_queued_jobs", "gauge", "Jobs of the run's SLURM chain pending or running "
                      "(runs launched with --slurm).")
GPU_VISIBLE = Metric("bigops_gpu_visible", "gauge", "1 if the GPU is in the node's last sample, 0 if it was seen "
                     "earlier but is gone now.", ("run", "host", "gpu"))
GPU_XID = Metric("bigops_gpu_xid_events", "gauge", "XID events per code in the node's recent samples (the "
                 "watchdog's window).", ("run", "host", "gpu", "xid"))
GPU_THROTTLED = Metric("bigops_gpu_throttled", "gauge", "1 for each throttle reason active in the last sample.",
                       ("run", "host", "gpu", "reason"))
FINDINGS = Metric("bigops_findings_total", "counter", "Problems the watchdog reported, by kind and severity.",
                  ("run", "kind", "severity"))
OPEN = Metric("bigops_finding_active", "gauge", "1 for each problem kind seen in the last scan.", ("run", "kind", "severity"))
GOODPUT_SECONDS = Metric("bigops_goodput_seconds", "gauge", "Wall seconds of the run by part (productive, slow, lost, "
                         "checkpoint, queue, restart, startup, stopped; bigops goodput): they sum to its wall time.",
                         ("run", "part"))
GOODPUT_RATIO = Metric("bigops_goodput_ratio", "gauge", "Productive training over the run's wall time (0-1).")
CKPT_INTERVAL_OPTIMAL = Metric("bigops_checkpoint_interval_optimal_steps", "gauge", "Daly's optimum train.save_interval "
                               "for the measured failure rate and save cost (absent before the first failure).")
STARTUP_SECONDS = Metric("bigops_startup_seconds", "gauge", "The last launch's start-up by phase (spawn, imports, "
                         "rendezvous, data, checkpoint, engine, load, first_step), max over ranks.", ("run", "phase"))

ALL = [v for v in list(globals().values()) if isinstance(v, Metric)]
