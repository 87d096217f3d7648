"""Fault injection for tests and drills, off unless an environment variable asks for it.

- ``BIGOPS_FAULT_CORRUPT_SAMPLES=START-END``: samples at positions [START, END) are replaced by uniformly
  random tokens (a corrupt shard: the loss spikes while they are read).
- ``BIGOPS_FAULT_CRASH_AT_STEP=N``: every rank raises before training step N (a crash that recurs on
  every restart: a crash loop for the watchdog's restart budget).
- ``BIGOPS_FAULT_CRASH_ONCE=PATH``: with ``BIGOPS_FAULT_CRASH_AT_STEP``, each rank crashes only the first
  time it reaches that step (it leaves ``PATH.rank<N>`` behind): one crash, then a restart that finishes.
- ``BIGOPS_FAULT_SLOW_RANK=RANK:SECONDS[,RANK:SECONDS...]``: that rank sleeps SECONDS in its module's forward,
  every training micro-batch (a straggler; see ``trainer.telemetry.Heartbeat.attach``).
- ``BIGOPS_FAULT_DESYNC_AT_STEP=N``: after step N, TP rank 1 of every TP group adds 0.01 to its layer-norm
  weights and their fp32 masters (BLOOM's TP desync, on demand).
- ``BIGOPS_FAULT_SURGERY_PAUSE=SECONDS``: ``bigops surgery`` sleeps that long after each file it writes (so a
  test can SIGKILL it mid-way).
- ``BIGOPS_FAULT_PAUSE_IN_SAVE=STEP:SECONDS``: while saving the checkpoint of step STEP, every rank sleeps
  SECONDS after writing its files into ``.partial-<tag>`` and before the manifest (so a test can SIGKILL the
  trainer in the middle of a save).
- ``BIGOPS_FAULT_ENOSPC_IN_SAVE=STEP[:RANK]``: saving step STEP, that rank (default 0) raises
  ``OSError(ENOSPC)`` after writing its files (the disk filled up during the save).
- ``BIGOPS_FAULT_NAN_AT_STEP=STEP[:COUNT]``: the model's outputs are NaN for COUNT (default 1) training
  steps from STEP on (a NaN loss and NaN gradients: the optimizer skips those updates).
- ``BIGOPS_FAULT_ONCE_DIR=DIR``: with any of the three above, each rank fires each of them only the first time
  (markers ``DIR/<fault>.rank<N>``): a fault that a restart does not bring back.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

CORRUPT = "BIGOPS_FAULT_CORRUPT_SAMPLES"
CRASH = "BIGOPS_FAULT_CRASH_AT_STEP"
CRASH_ONCE = "BIGOPS_FAULT_CRASH_ONCE"
SLOW_RANK = "BIGOPS_FAULT_SLOW_RANK"
DESYNC = "BIGOPS_FAULT_DESYNC_AT_STEP"
SURGERY_PAUSE = "BIGOPS_FAULT_SURGERY_PAUSE"
PAUSE_IN_SAVE = "BIGOPS_FAULT_PAUSE_IN_SAVE"
ENOSPC_IN_SAVE = "BIGOPS_FAULT_ENOSPC_IN_SAVE"
NAN_AT_STEP = "BIGOPS_FAULT_NAN_AT_STEP"
ONCE_DIR = "BIGOPS_FAULT_ONCE_DIR"


class InjectedCrash(RuntimeError):
    pass


def corrupt_samples(sample: Callable[[int], torch.Tensor], vocab_size: int) -> Callable[[int], torch.Tensor]:
    spec = os.environ.get(CORRUPT)
    if not spec:
        return sample
    start, _, end = spec.partition("-")
    lo, hi = int(start), int(end)

    def faulty(position: int) -> torch.Tensor:
        tokens = sample(position)
        if lo <= position < hi:
            gen = torch.Generator().manual_seed(position)
            return torch.randint(0, vocab_size, tokens.shape, generator=gen)
        return tokens
    return faulty


def maybe_crash(next_step: int) -> None:
    spec = os.environ.get(CRASH)
    if spec and int(spec) == next_step:
        once = os.environ.get(CRASH_ONCE)
        if once:
            marker = f"{once}.rank{os.environ.get('RANK', '0')}"
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return  # this rank crashed here once already
        raise InjectedCrash(f"fault injected by {CRASH}={spec}")


def slow_forward_seconds(rank: int, spec: str | None = None) -> float:
    """Seconds this rank should sleep per forward call, from ``BIGOPS_FAULT_SLOW_RANK`` (0.0: none)."""
    spec = os.environ.get(SLOW_RANK) if spec is None else spec
    for item in (spec or "").split(","):
        who, sep, seconds = item.strip().partition(":")
        if sep and who.strip().isdigit() and int(who) == rank:
            return max(0.0, float(seconds))
    return 0.0


@torch.no_grad()
def maybe_desync(step: int, module: torch.nn.Module, tp_rank: int) -> bool:
    """Knock TP rank 1's layer norms off their TP peers' values (weights and fp32 masters) after step N.

    Collective over the DP group for DeepSpeed-managed masters: every rank with the same TP rank calls it.
    """
    spec = os.environ.get(DESYNC)
    if not spec or int(spec) != step or tp_rank != 1:
        return False
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param
    from torch import nn
    for param in (p for m in module.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()):
        if hasattr(param, "_hp_mapping"):
            master = safe_get_full_fp32_param(param).float() + 0.01
            safe_set_full_fp32_param(param, master)
            param.copy_(master.to(param.dtype))
        else:
            param.add_(0.01)
    return True


def surgery_pause() -> None:
    seconds = os.environ.get(SURGERY_PAUSE)
    if seconds:
        import time
        time.sleep(float(seconds))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _first_time(name: str) -> bool:
    """False when ``BIGOPS_FAULT_ONCE_DIR`` says this rank fired fault ``name`` before (else mark it)."""
    directory = os.environ.get(ONCE_DIR)
    if not directory:
        return True
    os.makedirs(directory, exist_ok=True)
    try:
        os.close(os.open(os.path.join(directory, f"{name}.rank{_rank()}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _step_spec(variable: str) -> tuple[int, str] | None:
    spec = os.environ.get(variable)
    if not spec:
        return None
    step, _, rest = spec.partition(":")
    return int(step), rest


def in_save(step: int) -> None:
    """Called by every rank once its files are in ``.partial-<tag>``, before the checkpoint is published."""
    pause = _step_spec(PAUSE_IN_SAVE)
    if pause and pause[0] == step and _first_time("pause-in-save"):
        import sys
        import time
        print(f"fault: pausing {pause[1]} s in the save of step {step}", file=sys.stderr, flush=True)
        time.sleep(float(pause[1] or 30))
    full = _step_spec(ENOSPC_IN_SAVE)
    if full and full[0] == step and _rank() == int(full[1] or 0) and _first_time("enospc-in-save"):
        import errno
        raise OSError(errno.ENOSPC, f"No space left on device (fault injected by {ENOSPC_IN_SAVE})")


_nan = {"until": -1, "hooked": set()}


def maybe_nan(next_step: int, module: torch.nn.Module) -> None:
    """Before training step ``next_step``: from STEP on, for COUNT steps, make ``module``'s outputs NaN."""
    spec = _step_spec(NAN_AT_STEP)
    if spec is None:
        return
    if spec[0] == next_step and _first_time("nan"):
        _nan["until"] = next_step + max(1, int(spec[1] or 1)) - 1
        if id(module) not in _nan["hooked"]:
            _nan["hooked"].add(id(module))
            module.register_forward_hook(lambda mod, args, out: _poison(out))
    _nan["step"] = next_step


def _poison(out):
    if _nan["until"] < _nan.get("step", 0):
        return None
    if torch.is_tensor(out):
        return out * float("nan") if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_poison(o) if torch.is_tensor(o) else o for o in out)
    return None


class FaultHooks:
    """The points where the training loop lets a drill inject a fault; this base class injects none.

    The loop calls every method unconditionally, so it never asks whether faults are on: ``NO_FAULTS`` (this
    class) is what a production run gets, :class:`EnvFaultHooks` what the ``BIGOPS_FAULT_*`` variables ask for.
    """

    def samples(self, sample: Callable[[int], torch.Tensor], vocab_size: int) -> Callable[[int], torch.Tensor]:
        """The sample reader to train on (a drill may corrupt some positions)."""
        return sample

    def before_step(self, next_step: int, module: torch.nn.Module) -> None:
        """Before training step ``next_step`` runs (a drill may crash here, or poison the outputs)."""

    def after_step(self, step: int, module: torch.nn.Module, tp_rank: int) -> bool:
        """After step ``step``: True when a fault changed the weights (a drill may desync the layer norms)."""
        return False

    def in_save(self, step: int) -> None:
        """Once this rank's files are in ``.partial-<tag>``, before publishing (a drill may pause or fail)."""


NO_FAULTS = FaultHooks()


class EnvFaultHooks(FaultHooks):
    """The trainer's faults as the module docstring's variables ask for them (each reads its own)."""

    def samples(self, sample, vocab_size):
        return corrupt_samples(sample, vocab_size)

    def before_step(self, next_step, module):
        maybe_crash(next_step)
        maybe_nan(next_step, module)

    def after_step(self, step, module, tp_rank):
        return maybe_desync(step, module, tp_rank)

    def in_save(self, step):
        in_save(step)


# The variables that inject a fault through FaultHooks (SLOW_RANK acts in the heartbeat, SURGERY_PAUSE in
# bigops surgery; CRASH_ONCE and ONCE_DIR only modify the others).
TRAINER_FAULTS = (CORRUPT, CRASH, DESYNC, PAUSE_IN_SAVE, ENOSPC_IN_SAVE, NAN_AT_STEP)


def hooks_from_env(environ=None) -> FaultHooks:
    """The hooks this process trains with: ``NO_FAULTS`` unless a ``BIGOPS_FAULT_*`` variable asks for one."""
    environ = os.environ if environ is None else environ
    return EnvFaultHooks() if any(environ.get(name) for name in TRAINER_FAULTS) else NO_FAULTS
