"""Reshape a run to another TP x PP x DP layout through DeepSpeed's universal checkpoint, never in place.

``bigops ckpt reshape RUN --tp T --pp P --dp D``:

1. the newest complete checkpoint (``latest``, re-hashed; or ``--tag``) of a stopped run is the source;
2. its TP-duplicated tensors (layer norms, row-parallel biases: weights, fp32 masters, Adam moments) must be
   bit-identical across TP ranks: a universal checkpoint keeps one copy of a replicated parameter, so a
   desynced source would silently lose the other ranks' values. It is refused, naming
   ``bigops surgery RUN --sync-layernorm``;
3. DeepSpeed's own converter (``python -m deepspeed.checkpoint.ds_to_universal``, an argument list, no shell)
   writes the universal checkpoint into ``checkpoints/.partial-universal-<tag>/``; our state is added
   (manifest: step, consumed samples, skip ranges, lineage; the engine files the converter copies keep the
   run config and the LR schedule); then the model is read back from it as the target's ranks will hold it and
   its loss on a fixed batch must equal the source's (``bigops.checkpoint.loss_check``: a relative 1e-5, or the
   reshape is refused and nothing is published); the manifest is sealed (with those figures), and one rename
   publishes it as
   ``universal-<tag>`` (the source's step stays its trailing number, so step ordering treats it as that step);
4. ``run.toml``'s ``parallel.tp/pp/dp`` become the target (the previous file kept beside it) and ``latest``
   names the new tag: the next ``bigops launch`` resumes on the new layout with DeepSpeed's universal loading
   (``trainer.train``), and its next save is an ordinary checkpoint of that layout.

RNG streams are per rank: when the rank count stays the same the per-rank RNG files are carried (rank r goes
on with rank r's streams); when it changes they are not, and the trainer re-seeds every rank
deterministically from (``train.seed``, step, rank) (``trainer.train.reseed_rng``).

DeepSpeed 0.19 restores a universal checkpoint's optimizer state through ZeRO (stage >= 1) and through bf16's
BF16_Optimizer at stage 0 (BLOOM-176B's setup; ``trainer.engine.load_checkpoint`` hands it the folder, which
the engine does not): an fp32 or fp16 run at ZeRO stage 0 (a plain torch optimizer) is refused.

A crash at any instant leaves the source, ``latest`` and ``run.toml`` as they were (at worst a
``.partial-`` directory remains, which nothing resumes from and the next reshape replaces).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from bigops.checkpoint import tp_duplicates
from bigops.checkpoint.surgery import Source, new_tag_for, open_source, refuse_if_running, running_ranks
from bigops.errors import BigopsError, CheckpointError
from trainer import checkpoint as ckpt
from trainer import config as config_mod
from trainer.rundir import RunDir, append_event, atomic_write_text, fsync_dir, load_run_config

if TYPE_CHECKING:
    from bigops.checkpoint import loss_check

VERB = "universal"
"""New tags are ``universal-<source tag>``."""
LATEST_UNIVERSAL = "latest_universal"
"""The file DeepSpeed's converter writes beside the output folder (what ``load_universal`` reads without a tag)."""
CONVERT_TIMEOUT_S = 24 * 3600.0
STAGING_SUFFIX = ".input"
"""``checkpoints/.partial-universal-<tag>.input/``: the converter's view of the source (see :func:`stage_source`)."""


class OutOfSyncError(CheckpointError):
    """The source's TP-duplicated tensors differ across TP ranks: converting would average or drop them."""


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def as_dict(self) -> dict:
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp}

    def __str__(self) -> str:
        return f"TP{self.tp} x PP{self.pp} x DP{self.dp}"


@dataclass
class Outcome:
    source_tag: str
    new_tag: str | None
    source_layout: Layout
    target: Layout
    rng: str = ""
    """``carried`` (same rank count) or ``reseeded`` (the trainer re-seeds every rank)."""
    seconds: float = 0.0
    bytes_read: int = 0
    bytes_written: int = 0
    run_toml_before: Path | None = None
    loss_check: dict = field(default_factory=dict)
    """``loss_check.LossCheck.as_dict()`` of the new tag, or ``{"skipped": True}``."""
    details: dict = field(default_factory=dict)

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_read / self.seconds if self.seconds > 0 else 0.0


def layout_of(cfg: config_mod.RunConfig) -> Layout:
    p = cfg.parallel
    return Layout(p.tp, p.pp, p.dp)


def target_config(cfg: config_mod.RunConfig, target: Layout) -> config_mod.RunConfig:
    """``cfg`` on the target layout, validated for its world size (a ConfigError names what does not fit:
    heads or vocabulary not divisible by TP, more stages than blocks, a batch DP does not divide)."""
    import copy
    new = copy.deepcopy(cfg)
    new.parallel.tp, new.parallel.pp, new.parallel.dp = target.tp, target.pp, target.dp
    return config_mod.validate(new, world_size=target.world_size)


def refuse_unsupported(source: Source, target: Layout) -> None:
    """One-line refusals before anything is read in bulk: the same layout, or ZeRO stage 0 without bf16."""
    if layout_of(source.config) == target:
        raise BigopsError(f"checkpoint {source.tag} is already {target}: nothing to reshape")
    if source.config.parallel.zero_stage < 1 and source.config.train.precision != "bf16":
        raise BigopsError(f"checkpoint {source.tag} was trained with ZeRO stage 0 in {source.config.train.precision}: "
                          f"DeepSpeed's universal loading restores the optimizer only through ZeRO "
                          f"(parallel.zero_stage >= 1) or bf16's optimizer; reshape is not supported for it")


def refuse_desynced(source: Source, run_dir: Path) -> tp_duplicates.Report:
    """compare-tp's check on the source; OutOfSyncError naming the surgery to run when anything differs."""
    report = tp_duplicates.compare_tp(source.layout)
    bad = report.out_of_sync
    if bad:
        first = bad[0]
        raise OutOfSyncError(
            f"checkpoint {source.tag}: {len(bad)} TP-duplicated tensors differ across TP ranks (e.g. {first.kind} "
            f"{first.name} at {first.where}, max |diff| {first.max_abs_diff:.3g}); a universal checkpoint keeps "
            f"one copy, so run `bigops surgery {run_dir} --sync-layernorm` first")
    return report


@dataclass(frozen=True)
class ConvertProgress:
    """Where DeepSpeed's converter is: its phase (``1. Extracting ZeRO fragments``, ``2. Merging slices``, ...),
    the items done of that phase's total (its tqdm counter, when it has one), and the bytes written so far."""

    phase: str
    done: int | None
    total: int | None
    bytes_written: int
    seconds: float

    @property
    def bytes_per_second(self) -> float:
        return self.bytes_written / self.seconds if self.seconds > 0 else 0.0


PHASE_RE = re.compile(r"^\*\*\* (\d+(?:\.\d+)?\. .*?)[ .]*$")
"""ds_to_universal's phase lines: ``*** 2. Merging slices .....``."""
COUNTER_RE = re.compile(r"(\d+)/(\d+) \[")
"""A tqdm line's counter: `` 78%|###   | 32/41 [00:00<00:00, 313.14it/s]``."""
PROGRESS_EVERY_S = 0.5


def parse_converter_line(line: str) -> tuple[str | None, tuple[int, int] | None]:
    """(phase, None) for a phase line, (None, (done, total)) for a tqdm update, (None, None) otherwise."""
    phase = PHASE_RE.match(line.strip())
    if phase:
        return phase.group(1), None
    counter = COUNTER_RE.search(line)
    if counter and "|" in line:
        return None, (int(counter.group(1)), int(counter.group(2)))
    return None, None


def convert(source_dir: Path, out_dir: Path, say: Callable[[str], None] = lambda s: None,
            on_progress: Callable[[ConvertProgress], None] = lambda p: None) -> None:
    """DeepSpeed's converter as a subprocess (an argument list: no shell). Its messages go to ``say``; its
    phases and tqdm counters, with the bytes written and bytes/s, to ``on_progress`` (at most every
    ``PROGRESS_EVERY_S``, and at each phase's start and end); a failure is one line with its last message."""
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")  # conversion is CPU work; never initialise a GPU for it
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(source_dir),
               "--output_folder", str(out_dir), "--num_extract_workers", "1", "--num_merge_workers", "1"]
    tail: list[str] = []
    started, reported = time.perf_counter(), 0.0
    phase, counter = "starting", (None, None)

    def report(force: bool = False) -> None:
        nonlocal reported
        now = time.perf_counter()
        if force or now - reported >= PROGRESS_EVERY_S:
            reported = now
            written = _dir_bytes(out_dir) if out_dir.exists() else 0
            on_progress(ConvertProgress(phase, *counter, written, now - started))

    # text mode reads tqdm's carriage returns as line ends: each counter update is a line
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            tail = (tail + [line])[-20:]
            new_phase, new_counter = parse_converter_line(line)
            if new_phase:
                phase, counter = new_phase, (None, None)
                report(force=True)
            elif new_counter:
                counter = new_counter
                report(force=new_counter[0] in (0, new_counter[1]))
            elif not line.startswith(("args = ", "<frozen runpy>", "*** Done")):
                say(f"ds_to_universal: {line[:200]}")
        code = proc.wait(timeout=CONVERT_TIMEOUT_S)
    if code != 0:
        last = next((t for t in reversed(tail) if "Error" in t or "error" in t), tail[-1] if tail else "")
        raise CheckpointError(f"ds_to_universal failed on {source_dir.name} (exit {code}): {last[:300]}")


def stage_source(source: Source, staging: Path, keep_rows: int) -> Path:
    """A view of the source for the converter that keeps ``keep_rows`` rows of the word embedding (the source's
    padded vocabulary, or the target's if smaller) instead of only the real vocabulary.

    The padding rows are not inert: they take part in the softmax (Megatron-DeepSpeed's BLOOM, and ours, pad
    the vocabulary to a multiple of TP x ``make_vocab_size_divisible_by`` and train every row), so a converter
    that strips them changes the loss (by 5e-5 relative on the test model). Every file is hard-linked except the
    small engine files, re-saved with ``universal_checkpoint_info``'s original vocabulary size set to
    ``keep_rows``; DeepSpeed's universal loading zero-pads to the target's size if that is larger."""
    from deepspeed.checkpoint import constants as c

    from bigops.checkpoint import dsfiles
    staging.mkdir(parents=True)
    for f in sorted(p for p in source.path.iterdir() if p.is_file() and p.name not in ckpt.NOT_CONTENT):
        if dsfiles.ENGINE_RE.match(f.name):
            sd = dsfiles.load(f, mmap=False)
            info = dict(sd.get(c.UNIVERSAL_CHECKPOINT_INFO) or {})
            info[c.ORIGINAL_VOCAB_SIZE] = keep_rows
            sd[c.UNIVERSAL_CHECKPOINT_INFO] = info
            dsfiles.save(sd, staging / f.name)
        else:
            try:
                os.link(f, staging / f.name)
            except OSError:
                shutil.copy2(f, staging / f.name)
    return staging


def _carry_rng(source: Source, partial: Path, target: Layout) -> str:
    """Hard-link the per-rank RNG files when the rank count is unchanged; else leave them out (re-seed)."""
    if layout_of(source.config).world_size != target.world_size:
        return "reseeded"
    for f in sorted(source.path.glob("rng_state_rank*.pt")):
        try:
            os.link(f, partial / f.name)
        except OSError:
            shutil.copy2(f, partial / f.name)
    return "carried"


def kept_rows(source_cfg: config_mod.RunConfig, target_cfg: config_mod.RunConfig) -> int:
    """Word-embedding rows the conversion keeps: the source's padded vocabulary, or the target's if smaller
    (see :func:`stage_source`)."""
    return min(source_cfg.padded_vocab_size, target_cfg.padded_vocab_size)


def check_loss(source: Source, converted: Path, target: Layout,
               say: Callable[[str], None] = lambda s: None) -> "loss_check.LossCheck":
    """The converted checkpoint's loss on a fixed batch against the source's; CheckpointError when it differs."""
    from bigops.checkpoint import loss_check
    from trainer import megatron

    target_cfg = target_config(source.config, target)
    keep_rows = kept_rows(source.config, target_cfg)
    say("checking the converted model: the loss on a fixed batch against the source's")
    result = loss_check.compare(megatron.full_tensor_reader(source.path, source.config),
                                loss_check.universal_reader(converted, target_cfg.model.num_layers),
                                source.config, target_cfg, keep_rows)
    say(result.summary())
    if not result.ok:
        raise CheckpointError(f"the converted checkpoint does not hold {source.tag}'s model: {result.summary()}; "
                              f"nothing was published, {source.tag} is untouched")
    return result


def _manifest_info(source: Source, target: Layout, rng: str, checked: dict | None = None) -> dict:
    """The new tag's manifest: the source's state (step, consumed samples, skip ranges, lineage, precision)
    on the target topology, and where it came from."""
    info = {k: v for k, v in source.manifest.items() if k not in ("files", "tag", "created", "format")}
    info["topology"] = target.as_dict()
    info["derived_from"] = source.tag
    info[ckpt.UNIVERSAL] = {"source_tag": source.tag, "source_topology": layout_of(source.config).as_dict(),
                            "rng": rng, "time": time.time()}
    if checked is not None:
        info[ckpt.UNIVERSAL]["loss_check"] = checked
    return info


def write_universal(source: Source, target: Layout, say: Callable[[str], None] = lambda s: None,
                    on_progress: Callable[[ConvertProgress], None] = lambda p: None,
                    loss_check: bool = True) -> tuple[str, str]:
    """Convert ``source`` into a new published tag (see the module docstring): (new tag, rng mode).
    ``loss_check=False`` publishes without reading the model back (the operator's choice, for a checkpoint too
    large to read twice; the manifest then says it was not checked)."""
    run = source.run
    new_tag = new_tag_for(run, source.tag, VERB)
    partial = ckpt.partial_dir(run, new_tag)
    staging = ckpt.partial_dir(run, new_tag + STAGING_SUFFIX)
    for leftover in (partial, staging):
        if leftover.exists():
            shutil.rmtree(leftover)  # a crashed reshape's (never a source: tags never start with '.')
    keep_rows = kept_rows(source.config, target_config(source.config, target))
    try:
        convert(stage_source(source, staging, keep_rows), partial, say, on_progress)
        shutil.rmtree(staging)
        (run.checkpoints / LATEST_UNIVERSAL).unlink(missing_ok=True)  # it names the partial dir; rewritten below
        rng = _carry_rng(source, partial, target)
        checked = check_loss(source, partial, target, say).as_dict() if loss_check else {"skipped": True}
        say("sealing the new checkpoint (manifest)")
        ckpt.write_manifest(partial, new_tag, _manifest_info(source, target, rng, checked))
        problems = ckpt.verify(partial, hashes=False)
        if problems or not (partial / "zero").is_dir():
            raise CheckpointError(f"the universal checkpoint failed verification "
                                  f"({problems[0] if problems else 'no zero/ folder'}); {source.tag} is untouched")
        os.replace(partial, run.checkpoint(new_tag))
        fsync_dir(run.checkpoints)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write_text(run.checkpoints / LATEST_UNIVERSAL, new_tag + "\n")
    return new_tag, rng


def update_run_toml(run: RunDir, new_tag: str, target: Layout) -> Path:
    """run.toml on the target layout (the config tree's writer); the previous file is kept beside it."""
    cfg = target_config(load_run_config(run), target)
    before = run.run_toml_before(new_tag)
    shutil.copy2(run.run_toml, before)
    atomic_write_text(run.run_toml, config_mod.dumps_toml(cfg))
    return before


def _dir_bytes(path: Path) -> int:
    """Bytes under ``path``, also while a converter writes and removes files there (a vanished file counts 0)."""
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
            except FileNotFoundError:
                pass
    return total


def prepare(run_dir: Path, target: Layout, tag: str | None = None,
            say: Callable[[str], None] = lambda s: None) -> Source:
    """Every refusal, before anything is written: a running run, a damaged source (re-hashed), the same
    layout, ZeRO-0, a layout the model does not fit, desynced TP duplicates. Returns the source."""
    run = RunDir(Path(run_dir))
    refuse_if_running(running_ranks(run))
    source = open_source(Path(run_dir), tag, verify_hashes=True)
    refuse_unsupported(source, target)
    target_config(load_run_config(run), target)
    say(f"checking TP-duplicated tensors of {source.tag} across {source.layout.tp} TP ranks")
    refuse_desynced(source, Path(run_dir))
    return source


def apply_reshape(source: Source, target: Layout, say: Callable[[str], None] = lambda s: None,
                  on_progress: Callable[[ConvertProgress], None] = lambda p: None,
                  loss_check: bool = True) -> Outcome:
    """Write the universal tag, then point run.toml and ``latest`` at it, and record the action."""
    run = source.run
    outcome = Outcome(source.tag, None, layout_of(source.config), target)
    started = time.perf_counter()
    outcome.bytes_read = _dir_bytes(source.path)
    outcome.new_tag, outcome.rng = write_universal(source, target, say, on_progress, loss_check)
    outcome.loss_check = ckpt.read_manifest(run.checkpoint(outcome.new_tag))[ckpt.UNIVERSAL].get("loss_check", {})
    outcome.bytes_written = _dir_bytes(run.checkpoint(outcome.new_tag))
    outcome.run_toml_before = update_run_toml(run, outcome.new_tag, target)
    atomic_write_text(run.latest, outcome.new_tag + "\n")
    outcome.seconds = time.perf_counter() - started
    append_event(run, {
        "time": time.time(), "type": "action", "id": uuid.uuid4().hex[:12], "action": "reshape",
        "source": source.tag, "new_tag": outcome.new_tag, "from": outcome.source_layout.as_dict(),
        "to": target.as_dict(), "rng": outcome.rng, "loss_check": outcome.loss_check,
        "seconds": round(outcome.seconds, 3),
        "bytes_per_second": round(outcome.bytes_per_second), "severity": "info",
        "outcome": f"wrote {outcome.new_tag} ({outcome.source_layout} -> {target}); run.toml and latest follow it",
    })
    return outcome


def reshape(run_dir: Path, target: Layout, tag: str | None = None,
            say: Callable[[str], None] = lambda s: None,
            on_progress: Callable[[ConvertProgress], None] = lambda p: None, loss_check: bool = True) -> Outcome:
    """The whole reshape of a stopped run (see the module docstring); the source tag is never modified."""
    return apply_reshape(prepare(run_dir, target, tag, say), target, say, on_progress, loss_check)
