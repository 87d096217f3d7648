"""The per-rank training entry point: ``python -m trainer.train --run-dir RUN`` under torchrun.

Reads ``RUN/run.toml``, prepares the data once (rank 0), builds this rank's slice of BLOOM, resumes from
the newest verified checkpoint, then trains to ``train.train_steps`` while polling ``control/`` and
signals every step, writing telemetry, and checkpointing atomically. It exits with a code from
``trainer.exitcodes`` and records it in ``telemetry/exit.json`` (torchrun and srun do not pass a worker's
exit code on, so the launcher and the watchdog read it there).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from trainer import checkpoint as ckpt
from trainer import config as config_mod
from trainer import exitcodes, layout, peer_heartbeat, resume_check, safe_load, verified
from trainer.control import ControlState, acknowledge_save, decide, start_skip_ranges, take_sync_request
from trainer.data.dataset import DataError
from trainer.data.sampler import batch_positions, rank_micro_batches
from trainer.data.source import prepare_data, sample_source
from trainer.engine import (RankContext, build_engine, checkpoint_client_state, follow_configured_lr, load_checkpoint,
                            setup_rank)
from trainer.faults import NO_FAULTS, FaultHooks, hooks_from_env
from trainer.lifeline import Lifeline
from trainer.parallel.sanity import sync_tp_duplicated, tp_desync
from trainer.rundir import RunDir, append_event, append_jsonl, load_run_config
from trainer.startup import StartupClock
from trainer.startup import summarize as summarize_startup
from trainer.telemetry import Heartbeat, MetricsSink, flops_per_token

class TopologyMismatch(ckpt.CheckpointError):
    pass


def save_checkpoint(engine, ctx: RankContext, run: RunDir, step: int, consumed_samples: int,
                    heartbeat: Heartbeat | None = None, faults: FaultHooks = NO_FAULTS) -> str:
    """All ranks write into a partial directory; rank 0 then publishes it (manifest, rename, latest)."""
    tag = ckpt.tag_for(step)
    started = time.perf_counter()
    if heartbeat:
        heartbeat.beat("checkpoint", step)
    partial = ckpt.partial_dir(run, tag)
    if ctx.is_logging_rank and partial.exists():  # left by a crash during an earlier save of this step
        import shutil
        shutil.rmtree(partial)
    dist.barrier()
    client_state = checkpoint_client_state(engine, ctx.cfg, step, consumed_samples)
    engine.save_checkpoint(str(run.checkpoints), tag=partial.name, client_state=client_state, save_latest=False)
    torch.save(rng_state(), partial / f"rng_state_rank{ctx.coords.rank:05d}.pt")  # DeepSpeed saves no RNG
    faults.in_save(step)
    dist.barrier()
    if ctx.is_logging_rank:
        p = ctx.cfg.parallel
        final = ckpt.publish(run, partial, tag, {**ctx.provenance, "step": step, "consumed_samples": consumed_samples,
                                                 "topology": {"tp": p.tp, "pp": p.pp, "dp": p.dp},
                                                 "precision": ctx.cfg.train.precision})
        log_checkpoint(run, "save", tag, step, time.perf_counter() - started, final)
    dist.barrier()
    return tag


def rng_state() -> dict:
    """Every generator a rank draws from (dropout, shuffles), so that a resume continues its streams."""
    import random

    import numpy as np
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(path: Path) -> None:
    import random

    import numpy as np
    state = safe_load.load_rng_state(path)  # weights only: NumPy's array and dtype are allow-listed
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def reseed_rng(seed: int, step: int, rank: int) -> int:
    """Seed every generator of a rank from (``train.seed``, step, rank), deterministically: a reshaped
    checkpoint on another rank count has no RNG stream for this rank to continue. Returns the seed used."""
    import random

    import numpy as np
    derived = ((seed * 1_000_003 + step) * 4099 + rank) % 2 ** 32
    torch.manual_seed(derived)  # CUDA generators too
    random.seed(derived)
    np.random.seed(derived)
    return derived


def log_checkpoint(run: RunDir, kind: str, tag: str, step: int, seconds: float, path: Path) -> None:
    """``telemetry/checkpoints.jsonl``: every save and load, with its duration and size (rank 0)."""
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    append_jsonl(run.checkpoint_log, {"kind": kind, "tag": tag, "step": step, "time": time.time(),
                                                       "seconds": round(seconds, 3), "bytes": size})


def _rank0_then_share(ctx: RankContext, fn):
    """Run ``fn`` on rank 0 and give every rank its result, or the same exception (as a one-line error)."""
    holder = [None]
    if ctx.is_logging_rank:
        try:
            holder[0] = ("ok", fn())
        except (ckpt.CheckpointError, DataError, config_mod.ConfigError) as exc:
            holder[0] = ("error", type(exc).__name__, str(exc))
    dist.broadcast_object_list(holder, src=0)
    if holder[0][0] == "error":
        kind = {"CheckpointError": ckpt.CheckpointError, "DataError": DataError}.get(holder[0][1],
                                                                                     config_mod.ConfigError)
        raise kind(holder[0][2])
    return holder[0][1]


def _check_topology(manifest: dict, cfg: config_mod.RunConfig, tag: str) -> None:
    saved = manifest.get("topology") or {}
    p = cfg.parallel
    if (saved.get("tp"), saved.get("pp"), saved.get("dp")) != (p.tp, p.pp, p.dp):
        raise TopologyMismatch(f"checkpoint {tag} was written at TP {saved.get('tp')} x PP {saved.get('pp')} x DP "
                               f"{saved.get('dp')}, this run is TP {p.tp} x PP {p.pp} x DP {p.dp}: resume with the "
                               f"checkpoint's layout (parallel.tp/pp/dp)")


def init_from_hf(ctx: RankContext, directory: str):
    """A callback that loads a HF BLOOM checkpoint into this rank's layers (any TP/PP layout)."""
    from trainer.hf import check_compatible, open_hf_tensors, read_hf_config
    from trainer.pipeline import load_global_weights

    check_compatible(ctx.cfg.model, read_hf_config(directory))
    get = open_hf_tensors(directory)
    return lambda pipe: load_global_weights(pipe, ctx.cfg, ctx.tp, get)


def init_from_megatron(ctx: RankContext, directory: str):
    """The same for a Megatron-DeepSpeed BLOOM checkpoint (ours or BigScience's, any TP/PP): its layers are
    read one at a time and merged over its TP ranks (``trainer.megatron``), then sliced for this rank."""
    from trainer import megatron
    from trainer.hf import check_compatible
    from trainer.pipeline import load_global_weights

    path, source = megatron.open_tag(Path(directory))
    check_compatible(ctx.cfg.model, megatron.hf_shape(source), megatron.SOURCE)
    get = megatron.full_tensor_reader(path, source)
    return lambda pipe: load_global_weights(pipe, ctx.cfg, ctx.tp, get)


def initial_weights(ctx: RankContext, init_hf: str | None, init_megatron: str | None):
    """The callback that loads a new run's initial weights (None: random init)."""
    if init_hf:
        return init_from_hf(ctx, init_hf)
    return init_from_megatron(ctx, init_megatron) if init_megatron else None


def _checked(resumable: ckpt.Resumable | None) -> ckpt.Resumable | None:
    """Rank 0: refuse a checkpoint whose files pickle anything outside the allow-list (trainer.safe_load), or
    one in the layout of earlier bigops versions (trainer.layout)."""
    if resumable is not None:
        layout.check_written_layout(resumable.path)
        safe_load.preflight(resumable.path)
    return resumable


def _skip_ranges_at_start(control: ControlState, run: RunDir,
                          resumable: ckpt.Resumable | None) -> tuple[list[tuple[int, int]], dict]:
    """Rank 0: the skip ranges to train with (the file's and the resumed checkpoint's) and what the saves will
    record (lineage, see trainer.checkpoint); an unparsable file is a configuration error (never "none")."""
    inherited = ckpt.skip_ranges_of(resumable.manifest) if resumable is not None else []
    try:
        ranges = start_skip_ranges(control, run.root, inherited, resumable.tag if resumable else "")
    except ValueError as exc:
        raise config_mod.ConfigError(str(exc)) from None
    return ranges, ckpt.provenance_at_start(run, resumable, ranges)


def validation_loss(engine, ctx: RankContext, run: RunDir) -> float:
    """Mean loss over ``train.eval_iters`` fixed global batches of held-out text (same on every rank)."""
    cfg = ctx.cfg
    sample = sample_source(run, cfg, split="valid")
    total = 0.0
    micro_batches = config_mod.gradient_accumulation_steps(cfg)  # the full global batch, even during a ramp-up
    for i in range(cfg.train.eval_iters):
        positions = list(range(i * cfg.train.global_batch_size, (i + 1) * cfg.train.global_batch_size))
        data = rank_micro_batches(positions, ctx.coords.dp_rank, micro_batch=cfg.train.micro_batch_size,
                                  dp=ctx.dims.dp, sample=sample)
        total += float(engine.eval_batch(data_iter=data, num_micro_batches=micro_batches))
    return total / cfg.train.eval_iters


def sync_layernorm(engine, ctx: RankContext, run: RunDir, control: ControlState, step: int,
                   requested: bool) -> float:
    """Live surgery at a step boundary: average TP-duplicated parameters, masters and moments over each TP
    group; on request also measure the desync left (0.0) and record the action in events.jsonl (rank 0)."""
    started = time.perf_counter()
    count = sync_tp_duplicated(engine.module, engine.optimizer, ctx.tp, with_moments=step > 0)
    if not requested:
        return 0.0
    desync = tp_desync(engine.module, ctx.tp) if ctx.tp.size > 1 else 0.0
    if ctx.is_logging_rank:
        request = take_sync_request(control)
        append_event(run, {
            "time": time.time(), "type": "action", "action": "sync-layernorm", "source": "trainer", "step": step,
            "parameters_synced": count, "ln_desync_after": desync, "request": request,
            "seconds": round(time.perf_counter() - started, 4), "severity": "info",
            "outcome": f"TP-duplicated parameters averaged over TP groups at step {step}; ln_desync now {desync:g}",
        })
        print(f"sync-layernorm at step {step}: {count} parameters per rank averaged, ln_desync {desync:g}",
              file=sys.stderr, flush=True)
    return desync


def _n_params(cfg: config_mod.RunConfig) -> int:
    from trainer.model.bloom import BloomForCausalLM
    with torch.device("meta"):
        return sum(p.numel() for p in BloomForCausalLM(cfg.model, cfg.padded_vocab_size).parameters())


def start_lifeline(run: RunDir) -> Lifeline | None:
    """Stop this rank when the launcher that started it is gone (see ``trainer.lifeline``; none under SLURM)."""
    rank = int(os.environ.get("RANK", "0"))
    return Lifeline.from_env(exit_code=exitcodes.FAILED, on_hard_exit=lambda message: exitcodes.record(
        run.exit_record, exitcodes.FAILED, message, rank))


@dataclass
class TrainState:
    """What the loop carries from one step to the next; ``step`` and ``consumed`` are what a save keeps."""

    step: int = 0
    consumed: int = 0
    """Samples of the global stream read so far (skipped ranges included): where the next batch starts."""
    last_saved: int = -1
    """The step of the newest checkpoint this run has (-1: none yet, so even step 0 is saved on a stop)."""
    skipped_in_a_row: int = 0
    save_due: bool = False
    """A periodic save is owed: it waits for a step whose update was applied."""
    measured_desync: float | None = None
    """The layer-norm desync right after a requested sync, for the next step's record."""
    code: int = exitcodes.FINISHED


@dataclass
class Loop:
    """What every step of one rank's loop shares, built once by :func:`setup`."""

    run: RunDir
    ctx: RankContext
    engine: object
    control: ControlState
    heartbeat: Heartbeat
    sample: Callable[[int], torch.Tensor]
    faults: FaultHooks
    sink: MetricsSink | None
    flops_per_token: float
    clock: StartupClock | None = None
    """This launch's start-up budget, until the first step has been recorded (then None)."""
    resumed_from: str | None = None
    peer_beat: Callable[[], None] | None = None
    """A per-step heartbeat to another launcher's monitor (``trainer.peer_heartbeat``; None: not asked for)."""

    @property
    def cfg(self) -> config_mod.RunConfig:
        return self.ctx.cfg

    def save(self, state: TrainState) -> None:
        """Checkpoint the state's step (all ranks) and remember that it is saved."""
        save_checkpoint(self.engine, self.ctx, self.run, state.step, state.consumed, self.heartbeat, self.faults)
        state.last_saved = state.step


def every(interval: int, step: int) -> bool:
    return bool(interval) and step % interval == 0


def should_save(step: int, last_saved: int, *, requested: bool = False, due: bool = False,
                skipped: bool = False) -> bool:
    """The save rule: is step ``step`` to be checkpointed now? Pure, so that its cases are unit-tested.

    ``requested``: a save request, a stop (kill switch, signal, time budget), a broken skip-ranges file or the end
    of the run; these save whatever the step was like. ``due``: a periodic save is owed (``train.save_interval``);
    it waits for a step that was not ``skipped``, since a checkpoint taken in a NaN streak is not one to go back
    to. A step that is saved already is never saved twice.
    """
    if step == last_saved:
        return False
    return requested or (due and not skipped)


def nonfinite_limit_reached(skipped_in_a_row: int, limit: int) -> bool:
    """``train.max_skipped_steps_in_a_row`` non-finite steps in a row (0: no limit): the run exits, unsaved."""
    return bool(limit) and skipped_in_a_row >= limit


def start_rank(run: RunDir) -> tuple[RankContext, Heartbeat, ControlState]:
    """The lifeline, this rank's process groups, its heartbeat and the control files and signals it obeys."""
    lifeline = start_lifeline(run)
    if lifeline is not None:
        lifeline.start()
    ctx = setup_rank(load_run_config(run))
    heartbeat = Heartbeat(run, ctx.coords.rank)
    if lifeline is not None:
        lifeline.progress = lambda: (heartbeat.beats, heartbeat.phase)
    heartbeat.beat("startup", 0, force=True)
    minutes = ctx.cfg.train.exit_duration_in_mins
    control = ControlState(run.control, exit_duration_s=minutes * 60 if minutes else None)
    control.install_signal_handlers()
    return ctx, heartbeat, control


def _candidate(run: RunDir, refused: dict[str, str]) -> ckpt.Resumable | None:
    """Rank 0: the checkpoint to try (``latest``, else the newest older one) by sizes and the verified stamp
    only (``trainer.verified``: no hashing here), preflighted; ``refused``: {tag: why} found damaged already."""
    def problems(path: Path) -> list[str]:
        return [refused[path.name]] if path.name in refused else verified.check(path).problems
    return _checked(ckpt.find_resumable(run, checker=problems))


def choose_checkpoint(ctx: RankContext, run: RunDir, refused: dict[str, str] | None = None) -> ckpt.Resumable | None:
    """The checkpoint to resume from as far as sizes and the stamp tell (rank 0 finds and preflights it, every
    rank gets it), checked against this run's layout (unless it is a universal one, which loads on any). What
    the stamp does not vouch for is hashed by :func:`confirm_checkpoint` once the engine is built."""
    resumable = _rank0_then_share(ctx, lambda: _candidate(run, refused or {}))
    if resumable is not None and not ckpt.is_universal(resumable):  # a universal one loads on any layout (UCP)
        _check_topology(resumable.manifest, ctx.cfg, resumable.tag)
    return resumable


def log_check(run: RunDir, tag: str, outcome: resume_check.Outcome) -> None:
    """``telemetry/checkpoints.jsonl``: the resume's hash check (0 bytes: the stamp vouched for every file)."""
    append_jsonl(run.checkpoint_log, {"kind": "check", "tag": tag, "time": time.time(),
                                      "seconds": round(outcome.seconds, 3), "files_hashed": outcome.files,
                                      "bytes_hashed": outcome.bytes, "problems": outcome.problems[:20]})


def confirm_checkpoint(engine, ctx: RankContext, run: RunDir,
                       resumable: ckpt.Resumable | None) -> ckpt.Resumable | None:
    """Collective, before loading: the ranks hash what the stamp does not vouch for, each the files it loads
    (``trainer.resume_check``). A damaged file anywhere refuses that checkpoint on every rank, and the next
    older one is chosen the same way, as :func:`trainer.checkpoint.find_resumable` falls back."""
    refused: dict[str, str] = {}
    first = resumable
    while resumable is not None:
        outcome = resume_check.check_loaded_files(engine, ctx, resumable)
        if ctx.is_logging_rank:
            log_check(run, resumable.tag, outcome)
        if not outcome.problems:
            break
        refused[resumable.tag] = outcome.problems[0] + (f" (and {len(outcome.problems) - 1} more)"
                                                        if len(outcome.problems) > 1 else "")
        universal = ckpt.is_universal(resumable)
        resumable = choose_checkpoint(ctx, run, refused)
        if resumable is not None and ckpt.is_universal(resumable) != universal:
            raise ckpt.CheckpointError(f"checkpoint {first.tag} is unusable ({refused[first.tag]}) and the one "
                                       f"to fall back to, {resumable.tag}, is {'' if not universal else 'not '}"
                                       f"a universal one: start the run again to resume from it")
    if resumable is not None and resumable.fell_back_from is None and first is not None and first.tag in refused:
        resumable = dataclasses.replace(resumable, fell_back_from=first.tag, reason=refused[first.tag])
    if resumable is not None and resumable.fell_back_from and ctx.is_logging_rank:
        print(f"warning: checkpoint {resumable.fell_back_from} is unusable ({resumable.reason}); resuming from "
              f"{resumable.tag}", file=sys.stderr, flush=True)
    return resumable


def start_from(ctx: RankContext, run: RunDir, control: ControlState, resumable: ckpt.Resumable | None) -> None:
    """The skip ranges to train with and the provenance the saves will record, once the checkpoint is settled."""
    ranges, ctx.provenance = _rank0_then_share(ctx, lambda: _skip_ranges_at_start(control, run, resumable))
    control.skip_ranges = [tuple(r) for r in ranges]


def resume(engine, ctx: RankContext, run: RunDir, resumable: ckpt.Resumable | None) -> TrainState:
    """Load ``resumable`` (weights, optimizer, LR schedule, this rank's RNG streams): the state to go on from."""
    if resumable is None:
        return TrainState()
    started = time.perf_counter()
    with torch.no_grad():  # loading re-broadcasts tied weights (see build_pipeline_module)
        _, client = load_checkpoint(engine, str(run.checkpoints), resumable.tag)
        follow_configured_lr(engine, ctx.cfg)
    saved = (client or {}).get("bigops", {})
    state = TrainState(step=saved.get("step", 0), consumed=saved.get("consumed_samples", 0))
    rng_file = resumable.path / f"rng_state_rank{ctx.coords.rank:05d}.pt"
    if rng_file.is_file():
        restore_rng_state(rng_file)
    elif ckpt.is_universal(resumable):  # reshaped onto another rank count: no stream of this rank to go on with
        reseed_rng(ctx.cfg.train.seed, state.step, ctx.coords.rank)
        if ctx.is_logging_rank:
            print(f"note: {resumable.tag} was reshaped onto another rank count: RNG streams re-seeded from "
                  f"(train.seed, step {state.step}, rank)", file=sys.stderr, flush=True)
    dist.barrier()
    state.last_saved = state.step
    if ctx.is_logging_rank:
        log_checkpoint(run, "load", resumable.tag, state.step, time.perf_counter() - started, resumable.path)
    return state


def setup(run: RunDir, init_hf: str | None, faults: FaultHooks,
          init_megatron: str | None = None, clock: StartupClock | None = None) -> tuple[Loop, TrainState]:
    """Everything before the first step: the rank, the data (prepared once, by rank 0), the engine, the resume;
    ``clock`` times each phase (``trainer.startup``)."""
    mark = clock.mark if clock is not None else (lambda phase: None)
    ctx, heartbeat, control = start_rank(run)
    mark("rendezvous")
    cfg = ctx.cfg
    _rank0_then_share(ctx, lambda: prepare_data(run, cfg))
    sample = faults.samples(sample_source(run, cfg), cfg.model.vocab_size)
    mark("data")
    resumable = choose_checkpoint(ctx, run)
    mark("checkpoint")
    engine = build_engine(ctx, init_weights=initial_weights(ctx, init_hf, init_megatron) if resumable is None
                          else None, load_universal=ckpt.is_universal(resumable))
    mark("engine")
    resumable = confirm_checkpoint(engine, ctx, run, resumable)  # each rank hashes what it loads, if needed
    start_from(ctx, run, control, resumable)
    mark("checkpoint")  # the check's seconds count as the checkpoint's (phases add up)
    state = resume(engine, ctx, run, resumable)
    mark("load")
    heartbeat.attach(engine.module)
    flops = flops_per_token(_n_params(cfg), cfg.model.num_layers, cfg.model.hidden_size, cfg.train.seq_length)
    sink = MetricsSink(run, seq_length=cfg.train.seq_length, batch_size=cfg.train.global_batch_size) \
        if ctx.is_logging_rank else None
    return Loop(run, ctx, engine, control, heartbeat, sample, faults, sink, flops, clock,
                resumable.tag if resumable is not None else None, peer_heartbeat.from_env()), state


def record_startup(loop: Loop, step: int) -> None:
    """After this launch's first step (or its end, if it trained none): gather every rank's start-up budget to
    rank 0 (one collective, once per launch), which appends it to ``telemetry/startup.jsonl``."""
    clock, loop.clock = loop.clock, None
    if clock is None:
        return
    clock.mark("first_step")
    gathered = [None] * loop.ctx.dims.world_size if loop.ctx.is_logging_rank else None
    dist.gather_object(clock.own(), gathered, dst=0)
    if loop.ctx.is_logging_rank:
        from trainer import lifeline
        append_jsonl(loop.run.startup_log, summarize_startup(gathered, launch=lifeline.launch_id(), step=step,
                                                             resumed_from=loop.resumed_from, now=time.time()))


def step_boundary(loop: Loop, state: TrainState) -> bool:
    """Between steps: obey the control files and signals (skip ranges, save, stop, live layer-norm sync).
    True when the loop ends here (a stop, or ``train.train_steps`` reached)."""
    cfg, step = loop.cfg, state.step
    decision = decide(loop.control, loop.ctx.is_logging_rank)
    if decision.skip_ranges_error:  # the file turned unparsable: save, then stop with its error
        if should_save(step, state.last_saved, requested=True):
            loop.save(state)
        raise config_mod.ConfigError(decision.skip_ranges_error)
    if decision.skip_ranges_changed:  # other data from here on: another trajectory
        loop.ctx.provenance = ckpt.provenance_after_skip_change(loop.ctx.provenance, step, loop.control.skip_ranges)
    if should_save(step, state.last_saved, requested=decision.save or decision.stop):
        loop.save(state)
    if decision.save and loop.ctx.is_logging_rank:
        acknowledge_save(loop.control)
    if decision.stop:
        state.code = exitcodes.STOPPED_ON_REQUEST if decision.stop_requested else exitcodes.STOPPED_BY_SIGNAL
        return True
    if step >= cfg.train.train_steps:
        return True
    if decision.sync_layernorm or (cfg.train.sync_tp_duplicated and cfg.parallel.tp > 1):
        desync = sync_layernorm(loop.engine, loop.ctx, loop.run, loop.control, step, requested=decision.sync_layernorm)
        if decision.sync_layernorm:
            state.measured_desync = desync
    return False


def batches(loop: Loop, consumed: int, batch_size: int) -> tuple[Iterator, int]:
    """This rank's micro-batches of the next global batch (``batch_size`` samples from sample ``consumed`` on,
    skip ranges left out), and the stream position after it."""
    cfg = loop.cfg
    positions, next_consumed = batch_positions(consumed, batch_size, loop.control.skip_ranges)
    data = rank_micro_batches(positions, loop.ctx.coords.dp_rank, micro_batch=cfg.train.micro_batch_size,
                              dp=loop.ctx.dims.dp, sample=loop.sample)
    return data, next_consumed


def set_batch_size(engine, batch_size: int) -> None:
    """Give the engine this step's global batch: DeepSpeed's ``set_train_batch_size`` changes the number of
    gradient-accumulation micro-batches (a PipelineEngine's schedule and the loss scaling follow it in 0.19;
    the micro-batch size stays), as Megatron-DeepSpeed does before every step of a ramp-up."""
    if engine.train_batch_size() != batch_size:
        engine.set_train_batch_size(batch_size)


def train_step(loop: Loop, state: TrainState) -> dict:
    """One optimizer step on the next global batch; advances ``state`` and returns the step's metrics record.
    The batch's size is a function of the samples consumed so far (``train.rampup_batch_size``)."""
    cfg, engine = loop.cfg, loop.engine
    loop.faults.before_step(state.step + 1, engine.module)
    batch_size = config_mod.batch_size_at(cfg, state.consumed)
    set_batch_size(engine, batch_size)
    data, next_consumed = batches(loop, state.consumed, batch_size)
    lr = engine.get_lr()[0]  # the rate this step applies (the scheduler advances inside train_batch)
    started = time.perf_counter()
    loss = float(engine.train_batch(data_iter=data))
    elapsed = time.perf_counter() - started
    state.step, state.consumed = state.step + 1, next_consumed
    loop.heartbeat.beat("step", state.step, force=True)
    if loop.peer_beat is not None:
        loop.peer_beat()
    grad_norm = engine.get_global_grad_norm()
    # DeepSpeed's optimizers skip the update when the grad norm is NaN/Inf (a NaN loss makes NaN
    # gradients): the data is consumed, the weights and the LR schedule are left as they were.
    skipped = not engine.was_step_applied() or not math.isfinite(loss)
    state.skipped_in_a_row = state.skipped_in_a_row + 1 if skipped else 0
    tokens_per_second = batch_size * cfg.train.seq_length / elapsed
    return {
        "step": state.step, "time": time.time(), "loss": loss, "batch_size": batch_size,
        "grad_norm": float(grad_norm) if grad_norm is not None else None, "lr": lr,
        "step_seconds": elapsed, "tokens_per_second": tokens_per_second,
        "tflops_per_gpu": tokens_per_second * loop.flops_per_token / loop.ctx.dims.world_size / 1e12,
        "consumed_samples": state.consumed, "skipped": skipped,
    }


def after_step(loop: Loop, state: TrainState, record: dict) -> None:
    """The step's checks and telemetry: the TP layer-norm desync, the validation loss, the metrics line."""
    cfg, engine, step = loop.cfg, loop.engine, state.step
    if state.measured_desync is not None:
        record["ln_desync"], state.measured_desync = state.measured_desync, None  # the value right after a sync
    elif every(cfg.train.ln_desync_interval, step) and cfg.parallel.tp > 1:
        record["ln_desync"] = tp_desync(engine.module, loop.ctx.tp)
    if loop.faults.after_step(step, engine.module, loop.ctx.tp.rank):
        print(f"fault: TP rank 1 layer norms desynced after step {step}", file=sys.stderr, flush=True)
    if every(cfg.train.eval_interval, step):
        loop.heartbeat.beat("eval", step)
        record["val_loss"] = validation_loss(engine, loop.ctx, loop.run)
    if loop.sink is not None:
        loop.sink.write(record)


def train(run: RunDir, init_hf: str | None = None, faults: FaultHooks = NO_FAULTS,
          init_megatron: str | None = None, clock: StartupClock | None = None) -> int:
    """Train this rank to ``train.train_steps`` or until told to stop; returns its ``trainer.exitcodes`` code."""
    loop, state = setup(run, init_hf, faults, init_megatron, clock)
    try:
        while not step_boundary(loop, state):
            record = train_step(loop, state)
            after_step(loop, state, record)
            record_startup(loop, state.step)
            if nonfinite_limit_reached(state.skipped_in_a_row, loop.cfg.train.max_skipped_steps_in_a_row):
                state.code = exitcodes.NONFINITE_LIMIT  # no save: the weights or data are bad, roll back instead
                break
            state.save_due = state.save_due or every(loop.cfg.train.save_interval, state.step)
            if should_save(state.step, state.last_saved, due=state.save_due, skipped=record["skipped"]):
                loop.save(state)
                state.save_due = False
        if state.code == exitcodes.FINISHED and should_save(state.step, state.last_saved, requested=True):
            loop.save(state)
        record_startup(loop, state.step)  # a launch that trained no step (a stop, the target already reached)
        loop.heartbeat.beat("exit", state.step, force=True)
        dist.barrier()
    finally:
        if loop.sink is not None:
            loop.sink.close()
    return state.code


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """One rank. ``started``: when this process became the rank, if not at its own start (a warm spare,
    ``trainer.spare``: its imports were paid before the launch)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--init-hf", default=None, help="initial weights from a HF BLOOM directory")
    parser.add_argument("--init-megatron", default=None,
                        help="initial weights from a Megatron-DeepSpeed BLOOM checkpoint (tag or save directory)")
    args = parser.parse_args(argv)
    clock = StartupClock(imported_at=time.time(), started=started)
    run = RunDir(args.run_dir)
    rank = int(os.environ.get("RANK", "0"))
    try:
        code = train(run, init_hf=args.init_hf, faults=hooks_from_env(), init_megatron=args.init_megatron,
                     clock=clock)
        if rank == 0:
            exitcodes.record(run.exit_record, code, exitcodes.describe(code), rank)
        return code
    except (config_mod.ConfigError, DataError, ckpt.CheckpointError) as exc:
        code = exitcodes.CHECKPOINT_ERROR if isinstance(exc, ckpt.CheckpointError) else exitcodes.CONFIG_ERROR
        exitcodes.record(run.exit_record, code, str(exc), rank)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return code
    except Exception as exc:
        exitcodes.record(run.exit_record, exitcodes.FAILED, f"{type(exc).__name__}: {exc}", rank)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def exit_now(code: int) -> None:
    """End this rank with ``code`` once everything is written, without the interpreter's teardown.

    After ``main`` returns, every record is on disk (atomic, fsynced writes; the metrics sink and TensorBoard
    closed, the process group destroyed), yet finalizing torch and DeepSpeed's modules took 5-6 s per rank on 4
    ranks (a 2-core box, measured from telemetry/exit.json to the process gone): the launcher, the next SLURM
    link or the supervisor's relaunch waits that long on every exit. The exit handlers still run (logging,
    compile-worker pools), then the process ends at once."""
    import atexit
    atexit._run_exitfuncs()  # what a normal exit runs first (CPython's own hook for it)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
