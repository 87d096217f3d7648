"""One typed config tree for a BLOOM training run: model, parallelism, training.

A config is built once from a preset (``tiny``, ``bloom-560m``, ... ``bloom-176b``), then a TOML file,
then ``--set section.key=value`` overrides, and validated once by :func:`validate`. Every user error is a
:class:`ConfigError` whose message names the option(s) to change, e.g.::

    parallel.tp=3 does not divide model.num_attention_heads=16: choose a parallel.tp among 1, 2, 4, 8, 16

Every option is declared here once, with its docstring: its type (a ``Literal`` lists a choice's values),
its default (the watchdog's detectors, its policy and the alert rules take theirs from here), its range
(:data:`NUMERIC_RANGES`) and its section's rules (:data:`SECTION_CHECKS`). The world size has one rule,
tp x pp x dp (:func:`data_parallel_size`, :func:`world_size_of`).

Nothing here touches torch or torch.distributed: the launcher, the CLI and the trainer all use it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from trainer.data import schedule


class ConfigError(ValueError):
    """A configuration the user must change; the message names the option."""


@dataclass
class ModelConfig:
    """BLOOM architecture. Field names follow Megatron-DeepSpeed / HF ``BloomConfig`` where they exist."""

    hidden_size: int = 64
    """Width of the residual stream (BLOOM-176B: 14336)."""
    num_layers: int = 4
    """Number of transformer blocks (BLOOM-176B: 70)."""
    num_attention_heads: int = 4
    """Attention heads per block; need not be a power of two (BLOOM-176B: 112)."""
    vocab_size: int = 8192
    """Tokenizer vocabulary; the embedding is padded past it (see ``make_vocab_size_divisible_by``)."""
    make_vocab_size_divisible_by: int = 128
    """The padded vocabulary is a multiple of this times ``parallel.tp`` (BLOOM: 250680 -> 250880 at TP 4)."""
    pad_vocab_size_to: int | None = None
    """Pad the embedding to exactly this many rows instead (Megatron-DeepSpeed's ``--pad-vocab-size-to``):
    the BLOOM presets use 250880 so that checkpoints match the released models at every TP degree."""
    layernorm_epsilon: float = 1e-5
    """The epsilon of every LayerNorm (BLOOM: 1e-5)."""
    hidden_dropout: float = 0.0
    """Dropout on the attention and MLP outputs before the residual add (BLOOM-176B trained with 0)."""
    attention_dropout: float = 0.0
    """Dropout on the attention probabilities."""
    init_std: float | None = None
    """Std of the normal init; ``None`` means BLOOM's sqrt(0.3333 / hidden_size) (0.0048 at 14336)."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def resolved_init_std(self) -> float:
        return self.init_std if self.init_std is not None else math.sqrt(0.3333 / self.hidden_size)

    def padded_vocab_size(self, tp: int) -> int:
        """The embedding's row count: ``pad_vocab_size_to`` if set, else ``vocab_size`` rounded up to a
        multiple of divisible_by x TP."""
        if self.pad_vocab_size_to is not None:
            return self.pad_vocab_size_to
        multiple = self.make_vocab_size_divisible_by * tp
        return -(-self.vocab_size // multiple) * multiple


@dataclass
class ParallelConfig:
    """3D parallelism: world size = tp x pp x dp."""

    tp: int = 1
    """Tensor-parallel degree (Megatron-style column/row-parallel layers)."""
    pp: int = 1
    """Pipeline-parallel degree (DeepSpeed PipelineModule stages)."""
    dp: int | None = None
    """Data-parallel degree; ``None`` means world_size / (tp x pp)."""
    zero_stage: int = 1
    """ZeRO stage of the optimizer: 0 or 1 (DeepSpeed refuses 2 and 3 with pipeline parallelism)."""
    partition_method: str = "type:transformer|embedding"
    """How layers are spread over stages; BLOOM's default counts the embeddings as layers."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (saves memory, costs ~30% compute)."""


@dataclass
class TrainConfig:
    """Optimization and batch sizes (Megatron-DeepSpeed names)."""

    seq_length: int = 64
    """Tokens per sample (BLOOM: 2048)."""
    micro_batch_size: int = 4
    """Samples per micro-batch per data-parallel rank."""
    global_batch_size: int = 16
    """Samples per optimizer step over all ranks; a multiple of micro_batch_size x dp."""
    rampup_batch_size: list[int] | None = None
    """Batch-size ramp-up ``[start, increment, ramp samples]``, Megatron's ``--rampup-batch-size`` (BLOOM-176B:
    ``[192, 16, 9765625]``): the global batch starts at ``start`` and grows by ``increment`` every
    ramp samples / ((global_batch_size - start) / increment) consumed samples up to ``global_batch_size``
    (``trainer.data.schedule.batch_size_at``). Start and increment are multiples of micro_batch_size x dp.
    Unset: every step is ``global_batch_size``. The LR schedule counts steps unless ``lr_decay_samples`` is set."""
    train_steps: int = 100
    """Target optimizer step: the ranks stop when their step counter reaches it (``--steps``)."""
    lr_decay_steps: int | None = None
    """Steps over which the LR warms up and decays to ``min_lr`` (then stays there). Fixed when a run is
    created (default: its first ``train_steps``), so raising the target step of a resumed run does not
    change the schedule it has followed so far."""
    lr: float = 5e-3
    """Peak learning rate, reached at the end of the warm-up."""
    min_lr: float = 5e-4
    """The learning rate the decay ends at (at most ``lr``)."""
    warmup_steps: int = 10
    """Steps of linear warm-up from 0 to ``lr``."""
    lr_decay_samples: int | None = None
    """Count the LR schedule in samples, as Megatron's ``--lr-decay-samples`` (BLOOM-176B: 200_000_000): warm-up
    over ``lr_warmup_samples``, then decay to ``min_lr`` at this many trained samples; ``warmup_steps`` and
    ``lr_decay_steps`` are then unused. Under a batch-size ramp-up a step's samples are the ramp's batches, so
    the schedule follows the data seen (Megatron's ``AnnealingLR``; its first step has LR 0). Unset: in steps."""
    lr_warmup_samples: int = 0
    """Samples of linear warm-up when ``lr_decay_samples`` is set (Megatron's ``--lr-warmup-samples``;
    BLOOM-176B: 183_105)."""
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    """``cosine``, ``linear`` or ``constant`` decay after warm-up, down to ``min_lr`` at train_steps."""
    weight_decay: float = 0.1
    """AdamW's decoupled weight decay."""
    adam_beta1: float = 0.9
    """AdamW's first-moment decay."""
    adam_beta2: float = 0.95
    """AdamW's second-moment decay (BLOOM: 0.95)."""
    adam_eps: float = 1e-8
    """AdamW's epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clipping; 0 disables it."""
    seed: int = 42
    """Seed of the initialization and of the data order."""
    save_interval: int = 0
    """Checkpoint every N steps (0: only at the end, on request and before a stop)."""
    exit_duration_in_mins: float | None = None
    """Save and exit (STOPPED_BY_SIGNAL) after this many minutes, before a job's time limit (Megatron's
    ``--exit-duration-in-mins``)."""
    max_skipped_steps_in_a_row: int = 5
    """A step whose loss or grad norm is NaN/Inf is skipped (no optimizer update); after this many in a
    row the run exits with NONFINITE_LIMIT so the watchdog can roll back. 0: never exit for it."""
    eval_interval: int = 50
    """Validation loss on held-out text every N steps (0: never)."""
    eval_iters: int = 2
    """Global batches of held-out text per validation."""
    ln_desync_interval: int = 10
    """Measure TP desync (max |diff| of TP-duplicated parameters across TP ranks) every N steps (0: never)."""
    sync_tp_duplicated: bool = False
    """Average TP-duplicated parameters (with their fp32 masters and Adam moments) over each TP group before
    every step, as BLOOM-176B finally did; off by default (``control/sync-layernorm`` does it once, on request)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``bf16`` (bf16 weights, fp32 master weights and grad accumulation, as BLOOM), ``fp32``, or ``auto``:
    bf16 on a GPU, fp32 on a CPU (resolved by :func:`resolve_precision` where the ranks run)."""


@dataclass
class DataConfig:
    """Where the training text comes from and how it is tokenized (prepared once into ``RUN/data``)."""

    source: str = "stdlib"
    """``stdlib`` (docstrings then sources of Python's standard library: prose plus code, offline
    everywhere), ``synthetic`` (random walks over token ids, for tests), a file or folder of text or ``.jsonl``
    (tokenized once into ``RUN/data``), or Megatron indexed datasets read in place: one ``PREFIX`` (of
    ``PREFIX.bin``/``PREFIX.idx``) or a blend of weight-path pairs as Megatron's ``--data-path``,
    e.g. ``"0.3 /data/a_text_document 0.7 /data/b_text_document"``."""
    tokenizer: str | None = None
    """A ``tokenizer.json``, or a tokenizer folder holding one (BLOOM's Hugging Face folder is one: its
    ``tokenizer_config.json`` names the end-of-document token); unset: train a byte-level BPE of
    ``model.vocab_size`` on the corpus."""
    json_key: str = "text"
    """The field of each ``.jsonl`` line that holds its document (Megatron's ``--json-keys``)."""
    max_corpus_bytes: int = 4_000_000
    """How much of the ``stdlib`` corpus to read (a user's data is always used whole)."""
    valid_every: int = 100
    """Every N-th document is held out for the validation loss (of an indexed dataset: the last 1/N of its
    documents, a contiguous range as Megatron's ``--split``)."""


@dataclass
class AlertsConfig:
    """Where the watchdog sends one line per problem. Secrets are never in this file: options ending in
    ``_env`` name an environment variable (or a key of ``secrets_file``, a 0600 KEY=VALUE file)."""

    min_severity: Literal["info", "warning", "critical"] = "warning"
    """info, warning or critical: what is sent (everything is recorded in events.jsonl anyway)."""
    slack_webhook_env: str | None = None
    """Variable holding a Slack-compatible incoming-webhook URL."""
    webhook_env: str | None = None
    """Variable holding a generic webhook URL (receives the finding as JSON)."""
    alertmanager_url: str | None = None
    """Alertmanager's base URL, e.g. http://127.0.0.1:9093 (alerts are POSTed to /api/v2/alerts)."""
    smtp_host: str | None = None
    """The SMTP server of the e-mail channel (unset: no e-mail)."""
    smtp_port: int = 25
    """The SMTP server's port."""
    smtp_starttls: bool = False
    """Upgrade the SMTP connection with STARTTLS before logging in."""
    smtp_user: str | None = None
    """Log in as this user (unset: send without logging in)."""
    smtp_password_env: str | None = None
    """Variable holding the SMTP password."""
    email_from: str = "bigops@localhost"
    """The e-mails' sender."""
    email_to: str = ""
    """Comma-separated recipients."""
    secrets_file: str | None = None
    """A 0600 KEY=VALUE file the ``_env`` options are also looked up in (after the environment)."""
    rate_limit_per_minute: int = 20
    """Per channel; beyond it, messages are dropped and counted (the events log keeps everything)."""
    retries: int = 3
    """Attempts per notification (at least 1: 0 would never send)."""
    timeout_s: float = 10.0
    """Seconds one delivery attempt may take."""
    remind_every_s: float = 14400.0
    """While an incident stays open, remind on-call at most this often (seconds, default 4 h; 0: never
    remind; else >= 60)."""
    resolve_after_s: float = 600.0
    """An incident whose finding has not been seen for this long is resolved (quiet period, seconds)."""


@dataclass
class WatchdogConfig:
    """What ``bigops watch`` / ``bigops launch --watch`` may do on its own, and its thresholds."""

    interval_s: float = 5.0
    """Seconds between watchdog passes."""
    restart_budget: int = 5
    """Automatic restarts allowed per ``restart_window_s``; beyond, it stops and pages."""
    restart_window_s: float = 3600.0
    """The sliding window (seconds) ``restart_budget`` counts restarts in."""
    no_progress_restarts: int = 3
    """Stop restarting (and page) when this many restarts in a row resumed from the same checkpoint step."""
    hang_factor: float = 10.0
    """A training phase hangs after max(hang_min_timeout_s, factor x p95 step time) without a heartbeat."""
    hang_min_timeout_s: float = 60.0
    """The shortest hang timeout of a training phase (seconds), however fast the steps are."""
    hang_startup_timeout_s: float = 900.0
    """A rank still starting up (or with no step time observed yet) hangs after this many seconds."""
    hang_checkpoint_timeout_s: float = 1800.0
    """A rank saving a checkpoint hangs after this many seconds (BLOOM-176B's 2.3 TB took minutes)."""
    on_loss_spike: Literal["rollback", "notify", "ask"] = "rollback"
    """rollback (to the last checkpoint before the spike, skipping its data), notify, or ask."""
    spike_patience: int = 50
    """Steps a suspected loss spike may take to recover by itself before it is confirmed (critical: rolled
    back, or asked for, per ``on_loss_spike``); one that gets worse first (NaN, the grad norm exploding, the
    loss rising past its first peak) is confirmed at once. 0: confirm as soon as it persists."""
    rollback_skip_batches: int = 200
    """Global batches skipped from the one that fed the spike's first step (PaLM skipped 200-500)."""
    on_crash: Literal["restart", "notify", "ask"] = "restart"
    """restart, notify, or ask (record a pending action; ``bigops approve RUN ID`` carries it out)."""
    on_desync: Literal["sync", "notify", "ask"] = "sync"
    """When TP-duplicated parameters drift apart (``ln_desync`` above ``desync_threshold``): sync (ask the
    trainer for a live layer-norm sync through ``control/sync-layernorm``), notify, or ask."""
    on_node_lost: Literal["notify", "ask", "shrink"] = "notify"
    """When GPUs of the run are lost (critical GpuMissing, GpuXid, GpuEccDoubleBit, GpuRowRemap) and fewer
    devices are left than the layout needs: notify (the incident's page only: wait for a spare), ask, or shrink
    (kill the ranks, reshape the newest checkpoint to fewer data-parallel replicas through DeepSpeed's universal
    checkpoint, restart on the devices left; ZeRO stage >= 1). BLOOM-176B went from DP8 to DP4 this way."""
    desync_threshold: float = 1e-3
    """Max |diff| of TP-duplicated parameters across TP ranks above which the desync detector fires."""
    straggler_factor: float = 1.5
    """A rank is a straggler when its median forward time per step exceeds this many times its peers'."""
    straggler_min_gap_s: float = 0.05
    """... and exceeds it by at least this many seconds."""
    straggler_min_samples: int = 5
    """Steps of forward timing a rank needs before it is compared."""
    gpu_temperature_warning_c: int = 85
    """A GPU at or above this temperature (degrees C; NVML reports whole degrees) is a GpuHot warning. The
    exported Prometheus rules (``bigops dashboards export``, GpuHotWarning) are generated with the default."""
    gpu_temperature_critical_c: int = 90
    """... and at or above this one a critical GpuHot (GpuHotCritical pages), at least the warning's."""
    gpu_sampler_silent_s: int = 120
    """A node whose GPU sampler (``bigops gpu-monitor``) wrote no sample for this many seconds is
    GpuSamplerSilent (the watchdog's finding and the exported Prometheus alert alike)."""
    warm_spares: bool = True
    """``bigops launch --watch`` keeps one warm spare process per rank (``trainer.spare``: torch, DeepSpeed and
    torch's compiler already imported, at the lowest CPU priority) so that a restart skips the imports; off:
    every relaunch starts cold. Costs the spares' memory (a few hundred MB each) while the run trains."""
    warm_spares_after_s: float = 60.0
    """Seconds a launch trains (after its first step) before its spares start warming, one at a time: their
    imports stay out of the launch's own warm-up, and on a machine with few cores out of short runs."""


@dataclass
class SlurmConfig:
    """The cluster profile of ``bigops launch --slurm``: where the jobs go and how each one is cut.

    An empty string leaves its sbatch option out. Every value is quoted where it reaches a shell."""

    partition: str = ""
    """``--partition``."""
    account: str = ""
    """``--account`` (the allocation the hours are charged to)."""
    qos: str = ""
    """``--qos`` (Jean Zay: qos_gpu-t3 for 20 h jobs, qos_gpu-t4 for 100 h)."""
    constraint: str = ""
    """``--constraint`` (e.g. a100, v100-32g)."""
    nodes: int = 1
    """Nodes per job; the world size (tp x pp x dp) is spread evenly over them, one srun task per node."""
    gpus_per_node: int = 0
    """``--gres=gpu:N`` (0: CPU nodes)."""
    cpus_per_task: int = 0
    """``--cpus-per-task`` of the one task per node (0: SLURM's default)."""
    time_limit_min: int = 1200
    """Each job's time limit (Jean Zay: 20 h = 1200 min; 100 h with a special QoS)."""
    signal_before_s: int = 300
    """``--signal=B:USR1@N``: the batch script asks the ranks to save and exit N seconds before the limit (0: no signal)."""
    exit_margin_min: float = 10.0
    """``train.exit_duration_in_mins`` = time_limit_min - exit_margin_min when the run does not set it."""
    job_name: str = ""
    """The chain's job name (default: ``bigops-<run dir name>``); the singleton dependency is per name."""
    chain_mode: Literal["singleton", "array"] = "singleton"
    """singleton (one job per submission, ``--dependency=singleton``) or array (``--array=0-N%1``)."""
    chain_jobs: int = 3
    """Jobs submitted by ``bigops launch --slurm`` (``bigops chain extend`` adds more)."""
    min_queued: int = 2
    """The watchdog keeps at least this many jobs pending or running (BLOOM kept two)."""
    modules: str = ""
    """Comma-separated environment modules loaded before the ranks start (``module load``, after
    ``slurm.setup``: a start script may ``module purge``)."""
    setup: str = ""
    """Shell lines run verbatim before the ranks start (e.g. activate a virtualenv): code, not data."""
    python: str = ""
    """The interpreter on the compute nodes (empty: the launching one; set it when launching over SSH)."""
    workdir: str = ""
    """Where ``trainer`` is importable on the nodes (empty: the launching checkout; set it over SSH)."""
    exclude: str = ""
    """Nodes never to use (``--exclude``); the watchdog adds the nodes it found faulty."""
    master_port: int = 29500
    """The rendezvous port on the first node."""
    hint: str = ""
    """``--hint`` (Jean Zay: ``nomultithread``, physical cores rather than hyper-threads)."""
    env: str = ""
    """Comma-separated ``NAME=VALUE`` exported on every rank (e.g. ``CUDA_LAUNCH_BLOCKING=1``, which BLOOM-176B
    needed against hangs with its PyTorch 1.11 stack)."""


@dataclass
class RunConfig:
    """The whole tree; ``run.toml`` in a run directory is this, resolved."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    @property
    def padded_vocab_size(self) -> int:
        return self.model.padded_vocab_size(self.parallel.tp)


# ----------------------------------------------------------------------------------------------- presets

_BLOOM_VOCAB = 250680  # the BLOOM tokenizer
_BLOOM_PADDED_VOCAB = 250880  # the released models' embedding rows (250680 padded to a multiple of 128 x TP 4)


def _bloom(hidden: int, layers: int, heads: int, lr: float, gbs: int, tp: int = 1, pp: int = 1,
           micro: int = 1) -> RunConfig:
    return RunConfig(
        model=ModelConfig(hidden_size=hidden, num_layers=layers, num_attention_heads=heads,
                          vocab_size=_BLOOM_VOCAB, pad_vocab_size_to=_BLOOM_PADDED_VOCAB),
        parallel=ParallelConfig(tp=tp, pp=pp),
        train=TrainConfig(seq_length=2048, micro_batch_size=micro, global_batch_size=gbs, lr=lr,
                          min_lr=lr / 10, warmup_steps=375, train_steps=100_000, precision="bf16"),
    )


def _bloom_176b() -> RunConfig:
    """BLOOM-176B as bigscience-workshop/bigscience ``train/tr11-176B-ml/tr11-176B-ml.slurm`` ran it, batch-size
    ramp-up included (``--rampup-batch-size 192 16 9_765_625``), its LR schedule in samples as there; the run's
    length, given there in samples, is in steps through the ramp-up as Megatron's ``update_train_iters`` counts
    them (``trainer.data.schedule``)."""
    cfg = _bloom(14336, 70, 112, 6e-5, 2048, tp=4, pp=12, micro=2)
    cfg.model = ModelConfig(hidden_size=14336, num_layers=70, num_attention_heads=112, vocab_size=_BLOOM_VOCAB,
                            pad_vocab_size_to=_BLOOM_PADDED_VOCAB, init_std=0.0048)
    # tr11's ZERO_STAGE=0 ("bf16 must use z0! it implements its own zero stage 1 equivalent"): that optimizer
    # (BF16_Optimizer, fp32 gradient accumulation, sharded masters) is what DeepSpeed 0.19 gives at stage 1;
    # its stage 0 in bf16 would accumulate 128 micro-batches of gradients in bf16 (trainer/ds_config.py)
    cfg.parallel.zero_stage = 1
    cfg.parallel.activation_checkpointing = True  # --checkpoint-activations
    t = cfg.train
    t.rampup_batch_size = [192, 16, 9_765_625]  # --rampup-batch-size 192 16 9_765_625 (GLOBAL_BATCH_SIZE=2048)
    ramp = t.global_batch_size, t.rampup_batch_size
    t.train_steps = schedule.train_iters_for_samples(220_000_000, *ramp)  # TRAIN_SAMPLES=220_000_000 (450B tokens)
    t.lr_decay_samples = 200_000_000  # LR_DECAY_SAMPLES, then --min-lr 6e-6
    t.lr_warmup_samples = 183_105  # LR_WARMUP_SAMPLES=183_105 (375M tokens)
    t.warmup_steps, t.lr_decay_steps = 0, None  # the schedule is in samples
    t.save_interval = 100  # SAVE_INTERVAL=100
    t.eval_interval, t.eval_iters = 1000, 1  # --eval-interval 1000 --eval-iters 1
    t.sync_tp_duplicated = True  # the layer-norm desync fix BLOOM-176B ended with
    return cfg


PRESETS: dict[str, typing.Callable[[], RunConfig]] = {
    # Runs on a laptop CPU in seconds; TP 2 x PP 2 on 4 ranks is the default local job.
    "tiny": lambda: RunConfig(parallel=ParallelConfig(tp=2, pp=2)),
    # Sizes, learning rates and batch sizes from the BLOOM paper (Table 3).
    "bloom-560m": lambda: _bloom(1024, 24, 16, 3e-4, 256),
    "bloom-1b7": lambda: _bloom(2048, 24, 16, 2e-4, 512),
    "bloom-7b1": lambda: _bloom(4096, 30, 32, 1.2e-4, 512),
    # As trained on Jean Zay: 384 A100s as TP 4 x PP 12 x DP 8, micro-batch 2, global batch 2048 (below).
    "bloom-176b": lambda: _bloom_176b(),
}


def preset(name: str) -> RunConfig:
    """A fresh copy of a named preset."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None


# ------------------------------------------------------------------------------ overrides and TOML files

def _field_type(section: Any, key: str) -> Any:
    hints = typing.get_type_hints(type(section))
    return hints[key]


def _coerce(value: Any, annotation: Any, option: str) -> Any:
    """Convert ``value`` (a string from the command line, or a TOML value) to the field's type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return _coerce_list(value, typing.get_args(annotation)[0], option)
    if typing.get_origin(annotation) is Literal:  # a choice: typed here, its value checked by validate
        annotation = type(typing.get_args(annotation)[0])
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            raise ValueError
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    else:
        raise AssertionError(f"unsupported config field type {annotation!r}")
    raise ConfigError(f"{option}={value!r} is not a valid {getattr(annotation, '__name__', annotation)}")


def _coerce_list(value: Any, item: Any, option: str) -> list:
    """A TOML array, or a string of items split by commas or blanks (``192,16,9765625``, ``[192, 16, 9765625]``
    or Megatron's ``"192 16 9_765_625"``), each converted to ``item``."""
    items = value.strip().removeprefix("[").removesuffix("]").replace(",", " ").split() \
        if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{option}={value!r} is not a list")
    try:
        return [_coerce(v, item, option) for v in items]
    except ConfigError:
        raise ConfigError(f"{option}={value!r} is not a list of {getattr(item, '__name__', item)}") from None


def _set(cfg: RunConfig, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or parts[0] not in {f.name for f in dataclasses.fields(RunConfig)}:
        raise ConfigError(f"unknown option {dotted!r}: use section.key with a section among "
                          f"{', '.join(f.name for f in dataclasses.fields(RunConfig))}")
    section = getattr(cfg, parts[0])
    names = {f.name for f in dataclasses.fields(section)}
    if parts[1] not in names:
        raise ConfigError(f"unknown option {dotted!r}: {parts[0]} has {', '.join(sorted(names))}")
    setattr(section, parts[1], _coerce(value, _field_type(section, parts[1]), dotted))


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` strings (the ``--set`` option) to a copy of ``cfg``."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} is not of the form section.key=value")
        _set(cfg, key.strip(), value.strip())
    return cfg


def apply_mapping(cfg: RunConfig, data: dict[str, Any], source: str = "config") -> RunConfig:
    """Apply a nested mapping such as a parsed TOML file (``[model] hidden_size = 96``) to a copy."""
    cfg = copy.deepcopy(cfg)
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section!r} must be a table such as [{section}]")
        for key, value in values.items():
            _set(cfg, f"{section}.{key}", value)
    return cfg


def load_toml(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    """Read a TOML file on top of ``base`` (default: the ``tiny`` preset, or the file's ``preset = ...``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    name = data.pop("preset", None)
    if base is None:
        base = preset(name or "tiny")
    elif name is not None:
        base = preset(name)
    return apply_mapping(base, data, source=str(path))


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The tree as plain nested dicts, ``None`` fields left out (TOML has no null)."""
    return {f.name: {k: v for k, v in dataclasses.asdict(getattr(cfg, f.name)).items() if v is not None}
            for f in dataclasses.fields(RunConfig)}


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Inverse of :func:`to_dict` (missing fields take their defaults)."""
    return apply_mapping(RunConfig(), data)


def dumps_toml(cfg: RunConfig) -> str:
    return tomli_w.dumps(to_dict(cfg))


def resolve(preset_name: str = "tiny", config_file: str | Path | None = None,
            overrides: list[str] | None = None) -> RunConfig:
    """Preset, then file, then ``--set`` overrides; not yet validated."""
    cfg = preset(preset_name)
    if config_file is not None:
        cfg = load_toml(config_file, base=cfg)
    return apply_overrides(cfg, overrides or [])


# ------------------------------------------------------------------------------------------- validation

# The range of every numeric option, checked once by :func:`numeric_errors`: (op, bound) pairs that must
# all hold ("gt" 0 is "> 0"). Floats must also be finite; ``None`` (an unset optional) is not checked.
_GE0, _GT0, _GE1 = (("ge", 0),), (("gt", 0),), (("ge", 1),)
_UNIT = (("ge", 0), ("lt", 1))
NUMERIC_RANGES: dict[str, tuple[tuple[str, float], ...]] = {
    "model.hidden_size": _GE1, "model.num_layers": _GE1, "model.num_attention_heads": _GE1,
    "model.vocab_size": _GE1, "model.make_vocab_size_divisible_by": _GE1, "model.pad_vocab_size_to": _GE1,
    "model.layernorm_epsilon": _GT0, "model.hidden_dropout": _UNIT, "model.attention_dropout": _UNIT,
    "model.init_std": _GT0,
    "parallel.tp": _GE1, "parallel.pp": _GE1, "parallel.dp": _GE1, "parallel.zero_stage": _GE0,
    "train.seq_length": _GE1, "train.micro_batch_size": _GE1, "train.global_batch_size": _GE1,
    "train.train_steps": _GE1, "train.lr_decay_steps": _GE1, "train.lr": _GT0, "train.min_lr": _GE0,
    "train.lr_decay_samples": _GE1, "train.lr_warmup_samples": _GE0,
    "train.warmup_steps": _GE0, "train.weight_decay": _GE0, "train.adam_beta1": _UNIT,
    "train.adam_beta2": _UNIT, "train.adam_eps": _GT0, "train.clip_grad": _GE0, "train.seed": _GE0,
    "train.save_interval": _GE0, "train.exit_duration_in_mins": _GT0,
    "train.max_skipped_steps_in_a_row": _GE0, "train.eval_interval": _GE0, "train.eval_iters": _GE1,
    "train.ln_desync_interval": _GE0,
    "data.max_corpus_bytes": _GE1, "data.valid_every": (("ge", 2),),
    "alerts.smtp_port": (("ge", 1), ("le", 65535)), "alerts.rate_limit_per_minute": _GE1,
    "alerts.retries": _GE1, "alerts.timeout_s": _GT0, "alerts.remind_every_s": (("ge", 60),),
    "alerts.resolve_after_s": _GE0,
    "watchdog.interval_s": _GT0, "watchdog.restart_budget": _GE0, "watchdog.restart_window_s": _GT0,
    "watchdog.no_progress_restarts": _GE1, "watchdog.hang_factor": _GE1, "watchdog.hang_min_timeout_s": _GT0,
    "watchdog.hang_startup_timeout_s": _GT0, "watchdog.hang_checkpoint_timeout_s": _GT0,
    "watchdog.rollback_skip_batches": _GE0, "watchdog.spike_patience": _GE0, "watchdog.desync_threshold": _GE0,
    "watchdog.straggler_factor": _GE1, "watchdog.straggler_min_gap_s": _GE0,
    "watchdog.straggler_min_samples": _GE1, "watchdog.gpu_temperature_warning_c": _GE1,
    "watchdog.gpu_temperature_critical_c": _GE1, "watchdog.gpu_sampler_silent_s": _GE1,
    "watchdog.warm_spares_after_s": _GE0,
    "slurm.nodes": _GE1, "slurm.gpus_per_node": _GE0, "slurm.cpus_per_task": _GE0, "slurm.time_limit_min": _GE1,
    "slurm.signal_before_s": _GE0, "slurm.exit_margin_min": _GE0, "slurm.chain_jobs": _GE1,
    "slurm.min_queued": _GE1, "slurm.master_port": (("ge", 1), ("le", 65535)),
}
NUMERIC_OFF: dict[str, float] = {"alerts.remind_every_s": 0}
"""A value allowed outside its option's range because it switches the option off (0: never remind)."""
_OPS = {"gt": (">", lambda v, b: v > b), "ge": (">=", lambda v, b: v >= b),
        "lt": ("<", lambda v, b: v < b), "le": ("<=", lambda v, b: v <= b)}


def _fmt_bound(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else str(b)


def numeric_errors(cfg: "RunConfig", only: str | None = None) -> list[str]:
    """One line per numeric option out of its range (or not finite), naming the option; [] when all hold
    (``only``: the options of that section).

    Pure: reads ``cfg`` against :data:`NUMERIC_RANGES`. Every int/float field of the tree must be listed
    there (a test checks it), so a new option cannot skip validation."""
    errors = []
    for dotted, rules in NUMERIC_RANGES.items():
        section, key = dotted.split(".")
        if only is not None and section != only:
            continue
        value = getattr(getattr(cfg, section), key)
        if value is None or (dotted in NUMERIC_OFF and value == NUMERIC_OFF[dotted]
                             and not isinstance(value, bool)):
            continue
        is_float = _field_type(getattr(cfg, section), key) in (float, float | None)
        want = " and ".join(f"{_OPS[op][0]} {_fmt_bound(b)}" for op, b in rules)
        kind = "a finite number" if is_float else "an integer"
        if dotted in NUMERIC_OFF:
            kind = f"{_fmt_bound(NUMERIC_OFF[dotted])} (off) or {kind}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not all(_OPS[op][1](value, b) for op, b in rules):
            errors.append(f"{dotted}={value}: must be {kind} {want}")
    return errors


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _one_of(values: typing.Iterable[Any]) -> str:
    """``a, b or c``."""
    names = [str(v) for v in values]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def choices_of(section: Any, key: str) -> tuple[Any, ...] | None:
    """The values a ``Literal[...]`` option allows, as its annotation declares them (None: not a choice)."""
    annotation = _field_type(section, key)
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None


def choice_errors(cfg: RunConfig, section: str) -> list[str]:
    """One line per choice option of ``section`` whose value is not one its annotation allows."""
    obj, errors = getattr(cfg, section), []
    for f in dataclasses.fields(obj):
        allowed, value = choices_of(obj, f.name), getattr(obj, f.name)
        if allowed is not None and value not in allowed:
            errors.append(f"{section}.{f.name}={value!r} is not supported: use {_one_of(allowed)}")
    return errors


# Each section's own rules, beyond its numbers' ranges and its choices; a rule relating two sections sits
# with the option its message names first. Each returns one line per problem.

def model_errors(cfg: RunConfig) -> list[str]:
    """The heads split the width; a fixed vocabulary padding holds the vocabulary and splits over TP."""
    m, tp, errors = cfg.model, cfg.parallel.tp, []
    if m.pad_vocab_size_to is not None and (m.pad_vocab_size_to < m.vocab_size or m.pad_vocab_size_to % tp):
        errors.append(f"model.pad_vocab_size_to={m.pad_vocab_size_to} must be >= model.vocab_size="
                      f"{m.vocab_size} and divisible by parallel.tp={tp}")
    if m.hidden_size % m.num_attention_heads:
        errors.append(f"model.hidden_size={m.hidden_size} is not divisible by "
                      f"model.num_attention_heads={m.num_attention_heads}")
    return errors


def parallel_errors(cfg: RunConfig) -> list[str]:
    """TP splits the heads and the MLP; PP has a layer per stage at least; a ZeRO stage DeepSpeed runs with PP."""
    m, p, errors = cfg.model, cfg.parallel, []
    if m.num_attention_heads % p.tp:
        errors.append(f"parallel.tp={p.tp} does not divide model.num_attention_heads={m.num_attention_heads}: "
                      f"choose parallel.tp among {_divisors(m.num_attention_heads)}")
    if (4 * m.hidden_size) % p.tp:
        errors.append(f"parallel.tp={p.tp} does not divide the MLP width 4 x model.hidden_size")
    if p.pp > m.num_layers + 2:
        errors.append(f"parallel.pp={p.pp} is more than the {m.num_layers + 2} pipeline layers "
                      f"(model.num_layers={m.num_layers} blocks + 2 embeddings): lower parallel.pp")
    if p.zero_stage not in (0, 1):
        errors.append(f"parallel.zero_stage={p.zero_stage} is not supported: use 0 or 1 "
                      f"(DeepSpeed refuses ZeRO-2/3 with pipeline parallelism)")
    return errors


def train_errors(cfg: RunConfig) -> list[str]:
    """The schedule decays down, not up; a ramp-up climbs to the global batch in whole increments."""
    t = cfg.train
    errors = [f"train.min_lr={t.min_lr}: must be in [0, train.lr={t.lr}]"] if t.min_lr > t.lr else []
    if t.lr_warmup_samples and t.lr_decay_samples is None:
        errors.append(f"train.lr_warmup_samples={t.lr_warmup_samples} counts the LR schedule in samples: set "
                      f"train.lr_decay_samples too (or warm up in train.warmup_steps)")
    elif t.lr_decay_samples is not None and t.lr_warmup_samples >= t.lr_decay_samples:
        errors.append(f"train.lr_warmup_samples={t.lr_warmup_samples} must be less than train.lr_decay_samples="
                      f"{t.lr_decay_samples}")
    return errors + rampup_errors(t)


def rampup_errors(t: TrainConfig) -> list[str]:
    """``train.rampup_batch_size`` is [start, increment, ramp samples], each >= 1, start below the global batch
    and the increments reaching it exactly (Megatron's assertions, checked once here instead of at step N). The
    multiples of micro-batch x DP are checked with the layout (:func:`validate`)."""
    r = t.rampup_batch_size
    if r is None:
        return []
    name = f"train.rampup_batch_size={list(r)}"
    if len(r) != 3:
        return [f"{name}: must be [start, increment, ramp samples] (Megatron's --rampup-batch-size)"]
    start, increment, samples = r
    if min(r) < 1:
        return [f"{name}: start, increment and ramp samples must each be >= 1"]
    if start >= t.global_batch_size:
        return [f"{name}: the start batch {start} must be less than train.global_batch_size={t.global_batch_size}"]
    if (t.global_batch_size - start) % increment:
        return [f"{name}: train.global_batch_size={t.global_batch_size} - start {start} = "
                f"{t.global_batch_size - start} is not divisible by the increment {increment}"]
    return []


def data_errors(cfg: RunConfig) -> list[str]:
    """The text and the tokenizer named exist (checked where the run is launched)."""
    from trainer.data.blend import BlendError, parse_blend
    from trainer.data.indexed import is_indexed

    d, errors = cfg.data, []
    if d.source in ("stdlib", "synthetic"):
        blend = []
    else:
        try:
            blend = parse_blend(d.source)
        except BlendError as exc:
            return [str(exc)]
    if len(blend) == 1 and not (Path(d.source).exists() or is_indexed(d.source)):
        errors.append(f"data.source={d.source!r} does not exist: give a file or folder of text, an indexed "
                      f"dataset's prefix, or stdlib / synthetic")
    for _, path in blend if len(blend) > 1 else []:
        if not is_indexed(path):
            errors.append(f"data.source: {path} is not a Megatron indexed dataset (PREFIX.bin + PREFIX.idx): "
                          f"a blend mixes indexed datasets; tokenize text with `bigops data prepare`")
    from trainer.rundir.paths import TOKENIZER  # here: trainer.rundir reads run.toml through this module
    if d.tokenizer is not None and not (Path(d.tokenizer).is_file() or (Path(d.tokenizer) / TOKENIZER).is_file()):
        errors.append(f"data.tokenizer={d.tokenizer!r} does not exist (a tokenizer.json, or a tokenizer folder "
                      f"holding one)")
    return errors


def watchdog_errors(cfg: RunConfig) -> list[str]:
    """The GPU temperature limits are in order."""
    w = cfg.watchdog
    if w.gpu_temperature_critical_c < w.gpu_temperature_warning_c:
        return [f"watchdog.gpu_temperature_critical_c={w.gpu_temperature_critical_c} must be at least "
                f"watchdog.gpu_temperature_warning_c={w.gpu_temperature_warning_c}"]
    return []


def slurm_errors(cfg: RunConfig) -> list[str]:
    """A job saves (exit margin) and is signalled within its time limit."""
    s, errors = cfg.slurm, []
    if s.exit_margin_min >= s.time_limit_min:
        errors.append(f"slurm.exit_margin_min={s.exit_margin_min} must be less than slurm.time_limit_min="
                      f"{s.time_limit_min}")
    if s.signal_before_s >= s.time_limit_min * 60:
        errors.append(f"slurm.signal_before_s={s.signal_before_s} must be less than slurm.time_limit_min="
                      f"{s.time_limit_min} minutes")
    return errors


SECTION_CHECKS: dict[str, typing.Callable[[RunConfig], list[str]]] = {
    "model": model_errors, "parallel": parallel_errors, "train": train_errors, "watchdog": watchdog_errors,
    "alerts": lambda cfg: [],  # its ranges and choices are all its rules
    "data": data_errors, "slurm": slurm_errors,
}
"""Every section's rules, in the order :func:`validate` reports them (a test checks each section is here)."""


def section_errors(cfg: RunConfig, section: str) -> list[str]:
    """One section alone: its numbers' ranges, then its choices, then its own rules (numbers first: the
    rules divide by them)."""
    return numeric_errors(cfg, section) or choice_errors(cfg, section) + SECTION_CHECKS[section](cfg)


def check_section(cfg: RunConfig, section: str) -> None:
    """Raise :class:`ConfigError` for the first problem of one section: for a reader of ``run.toml`` that
    uses only that section (the watchdog reads ``[watchdog]``)."""
    errors = section_errors(cfg, section)
    if errors:
        raise ConfigError(errors[0])


def validate(cfg: RunConfig, world_size: int | None = None) -> RunConfig:
    """Check the tree once: every number in its range, then section by section (:data:`SECTION_CHECKS`),
    then the layout against ``world_size`` (filling ``parallel.dp``) and the batch sizes. Raises
    :class:`ConfigError` with the first problem, one line naming the option(s)."""
    errors = numeric_errors(cfg)
    if errors:
        raise ConfigError(errors[0])
    for section in SECTION_CHECKS:
        check_section(cfg, section)
    p, t = cfg.parallel, cfg.train
    if world_size is not None:
        p.dp = data_parallel_size(world_size, p.tp, p.pp, p.dp)
    dp = data_parallel_of(cfg)
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError(f"train.global_batch_size={t.global_batch_size} is not a multiple of "
                          f"train.micro_batch_size={t.micro_batch_size} x parallel.dp={dp}")
    for what, value in zip(("start", "increment"), t.rampup_batch_size or ()):
        if value % (t.micro_batch_size * dp):  # then every batch of the ramp is a whole number of micro-batches
            raise ConfigError(f"train.rampup_batch_size={list(t.rampup_batch_size)}: the {what} {value} is not a "
                              f"multiple of train.micro_batch_size={t.micro_batch_size} x parallel.dp={dp}")
    return cfg


def resolve_precision(cfg: RunConfig, cuda_available: bool) -> RunConfig:
    """Replace ``train.precision = "auto"`` by what the hardware runs: bf16 on a GPU, fp32 on a CPU."""
    if cfg.train.precision == "auto":
        cfg = copy.deepcopy(cfg)
        cfg.train.precision = "bf16" if cuda_available else "fp32"
    return cfg


# ------------------------------------------------------------------------------ the layout: the world size
# The one rule: world size = tp x pp x dp. Everything that sizes a launch, checks a world or fills an unset
# parallel.dp (validate, the trainer's ParallelDims, the SLURM renderer) goes through these three.

def data_parallel_size(world_size: int, tp: int, pp: int, dp: int | None = None) -> int:
    """dp for ``world_size`` ranks of TP ``tp`` x PP ``pp`` (``dp`` given: it must agree). The error names
    every factor."""
    model_parallel = tp * pp
    if world_size % model_parallel:
        raise ConfigError(f"parallel.tp={tp} x parallel.pp={pp} = {model_parallel} does not divide "
                          f"the world size {world_size}")
    if dp is not None and dp * model_parallel != world_size:
        raise ConfigError(f"parallel.tp={tp} x parallel.pp={pp} x parallel.dp={dp} = "
                          f"{model_parallel * dp} != world size {world_size}")
    return world_size // model_parallel


def data_parallel_of(cfg: RunConfig, slots: int | None = None) -> int:
    """``parallel.dp``; unset, as many model replicas as ``slots`` ranks hold (a SLURM allocation's nodes x
    GPUs per node; rounded down: the renderer then names the GPUs left idle), else 1 (a local launch)."""
    p = cfg.parallel
    if p.dp is not None:
        return p.dp
    return slots // (p.tp * p.pp) if slots else 1


def world_size_of(cfg: RunConfig, slots: int | None = None) -> int:
    """tp x pp x dp, dp as :func:`data_parallel_of` fills it."""
    return cfg.parallel.tp * cfg.parallel.pp * data_parallel_of(cfg, slots)


def gradient_accumulation_steps(cfg: RunConfig) -> int:
    return cfg.train.global_batch_size // (cfg.train.micro_batch_size * data_parallel_of(cfg))


def batch_size_at(cfg: RunConfig, consumed_samples: int) -> int:
    """The global batch of the step that starts at ``consumed_samples``: ``train.global_batch_size``, or less while
    ``train.rampup_batch_size`` ramps up (``trainer.data.schedule.batch_size_at``, Megatron's arithmetic)."""
    return schedule.batch_size_at(consumed_samples, cfg.train.global_batch_size, cfg.train.rampup_batch_size)
