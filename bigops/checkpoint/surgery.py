"""Offline checkpoint surgery, never in place: read a source tag, write a new tag beside it, verify the new
one, and only then point ``latest`` at it. The source tag is never modified.

A surgery is a set of edits (``Edit``: which files it rewrites and how); everything else about it — refusing
an incomplete or in-use checkpoint, the partial directory, hard links for untouched files, the manifest,
verification, the rename, ``latest``, the ``events.jsonl`` record — is shared here.

A crash (even SIGKILL) at any instant leaves the source tag and ``latest`` as they were; at worst a
``checkpoints/.partial-<new tag>`` directory remains, which nothing resumes from and the next surgery
replaces.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bigops.checkpoint import dsfiles, tp_duplicates
from bigops.errors import BigopsError, CheckpointError, RunInUseError
from trainer import checkpoint as ckpt
from trainer import config as config_mod
from trainer.rundir import RunDir, append_event, atomic_write_text, load_run_config, pid_alive, read_heartbeats

ACTIVE_HEARTBEAT_S = 120.0
"""A rank whose heartbeat is younger than this (and not at ``exit``) counts as running."""


@dataclass(frozen=True)
class Source:
    run: RunDir
    tag: str
    path: Path
    manifest: dict
    config: config_mod.RunConfig
    layout: dsfiles.Layout


@dataclass
class Edit:
    """One surgery verb: ``rewrite(source, out_dir, report)`` writes the files it changes into ``out_dir``
    (with :func:`dsfiles.save`) and returns their manifest entries by name; ``check(new_source)`` returns
    problems with the result (empty: good)."""

    name: str
    describe: str
    rewrite: Callable[[Source, Path, dict], dict[str, dict]]
    check: Callable[[Source], list[str]] = lambda new: []
    preview: Callable[[Source], object] | None = None
    """What the edit finds before changing anything (shown by the CLI; computed once, reused by ``rewrite``)."""


@dataclass
class Outcome:
    source_tag: str
    new_tag: str | None
    details: dict = field(default_factory=dict)
    latest_moved: bool = False
    seconds: float = 0.0
    bytes_written: int = 0


# ------------------------------------------------------------------------------------------------ refusals

def running_ranks(run: RunDir, now: float | None = None) -> list[dict]:
    """Heartbeats of ranks that look alive: not at ``exit``, and either recent or a live local process."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    alive = []
    for beat in read_heartbeats(run).values():
        if beat.get("phase") == "exit":
            continue
        recent = now - float(beat["time"]) < ACTIVE_HEARTBEAT_S
        local_alive = beat.get("host") == host and isinstance(beat.get("pid"), int) and pid_alive(beat["pid"])
        if local_alive or (recent and beat.get("host") != host):
            alive.append(beat)
    return alive


def open_source(run_dir: Path, tag: str | None, verify_hashes: bool = True) -> Source:
    """The checkpoint to operate on, refused with one line if it is not complete and intact."""
    from bigops.checkpoint.layout import open_checkpoint
    ref = open_checkpoint(run_dir, tag)  # tag checks, presence, sizes, the run config inside
    if verify_hashes:
        from trainer import megatron
        problems = megatron.problems(ref.path, hashes=True)  # a Megatron-DeepSpeed-written one: zip CRCs
        if problems:
            raise CheckpointError(f"checkpoint {ref.tag} is damaged: {problems[0]}")
    p = ref.config.parallel
    return Source(RunDir(Path(run_dir)), ref.tag, ref.path, ref.manifest, ref.config,
                  dsfiles.scan(ref.path, p.tp, p.pp, p.dp))


def new_tag_for(run: RunDir, source_tag: str, verb: str) -> str:
    """``<verb>-<source tag>`` (``<verb>2-...`` if taken): it keeps the source's step as its trailing number,
    so step ordering (resume fallback, rollback, prune) treats it as the same step, newer."""
    for n in range(1, 1000):
        tag = f"{verb}{'' if n == 1 else n}-{source_tag}"
        if len(tag) <= 128 and not run.checkpoint(tag).exists():
            return ckpt.check_tag(tag)
    raise CheckpointError(f"no free tag name for {verb} of {source_tag}")


# ------------------------------------------------------------------------------------------------ the run

def _link_or_copy(src: Path, dst: Path) -> bool:
    """Files a surgery does not change are hard-linked (no copy of a 2 TB checkpoint for a 1 GB edit): no
    bigops tool ever edits a checkpoint file in place, so sharing the inode is safe; copy across devices.
    True when linked (the bytes are the verified source's)."""
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copy2(src, dst)
        return False


def perform(source: Source, edits: list[Edit], *, move_latest: bool | None = None, dry_run: bool = False,
            progress: Callable[[str], None] = lambda s: None, verb: str = "surgery") -> Outcome:
    """Apply ``edits`` to ``source`` into a new tag (see the module docstring). ``move_latest``: None = move it
    only if it named the source."""
    run = source.run
    started = time.perf_counter()
    outcome = Outcome(source.tag, None)
    if dry_run:
        outcome.details = {e.name: e.describe for e in edits}
        return outcome
    new_tag = new_tag_for(run, source.tag, verb)
    partial = ckpt.partial_dir(run, new_tag)
    if partial.exists():
        shutil.rmtree(partial)  # a crashed surgery's leftovers (never a source: tags never start with '.')
    partial.mkdir(parents=True)
    details: dict = {}
    try:
        written = _rewrite(source, edits, partial, details, progress)
        outcome.bytes_written = sum(meta["size"] for meta in written.values())
        _seal(source, edits, partial, new_tag, written, details, progress)
        _verify(source, edits, partial, new_tag, written, progress)
        os.replace(partial, run.checkpoint(new_tag))
        ckpt.fsync_dir(run.checkpoints)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    outcome.new_tag = new_tag
    outcome.details = details
    if move_latest is None:
        move_latest = run.latest_tag() == source.tag
    if move_latest:
        atomic_write_text(run.latest, new_tag + "\n")
        outcome.latest_moved = True
    outcome.seconds = time.perf_counter() - started
    append_event(run, {
        "time": time.time(), "type": "action", "id": uuid.uuid4().hex[:12], "action": "surgery",
        "edits": [e.name for e in edits], "source": source.tag, "new_tag": new_tag, "latest_moved": move_latest,
        "details": details, "seconds": round(outcome.seconds, 3), "severity": "info",
        "outcome": f"wrote {new_tag}" + (" and pointed latest at it" if move_latest else ""),
    })
    return outcome


def _rewrite(source: Source, edits: list[Edit], partial: Path, details: dict,
             progress: Callable[[str], None]) -> dict[str, dict]:
    """Run each edit into ``partial``; returns the manifest entries of the files written (hashed while
    written), by name. Two edits may not rewrite the same file: the second would undo the first."""
    written: dict[str, dict] = {}
    for edit in edits:
        progress(f"{edit.name}: {edit.describe}")
        changed = edit.rewrite(source, partial, details)
        overlap = written.keys() & changed.keys()
        if overlap:
            raise BigopsError(f"two surgery edits rewrite {sorted(overlap)[0]}: run them one at a time")
        written.update(changed)
    return written


def _seal(source: Source, edits: list[Edit], partial: Path, new_tag: str, written: dict[str, dict], details: dict,
          progress: Callable[[str], None]) -> None:
    """Link (or copy) the files no edit changed and write the new tag's manifest: the source's, with the new
    files' entries, ``derived_from`` and what the surgery did. A linked file keeps its verified entry."""
    known = dict(written)
    for f in sorted(p for p in source.path.iterdir() if p.is_file() and p.name not in ckpt.NOT_CONTENT):
        if f.name not in written and _link_or_copy(f, partial / f.name) and f.name in source.manifest["files"]:
            known[f.name] = source.manifest["files"][f.name]  # the same inode as a verified file
    info = {k: v for k, v in source.manifest.items() if k not in ("files", "tag", "created", "format")}
    info["derived_from"] = source.tag
    info["surgery"] = {"edits": [e.name for e in edits], "details": details, "time": time.time()}
    progress("sealing the new checkpoint (manifest)")
    ckpt.write_manifest(partial, new_tag, info, known=known)


def _verify(source: Source, edits: list[Edit], partial: Path, new_tag: str, written: dict[str, dict],
            progress: Callable[[str], None]) -> None:
    """The new tag before it is published: complete, every written file loads, and each edit's own check
    passes; else a CheckpointError (the source and latest are untouched)."""
    problems = ckpt.verify(partial, hashes=False)
    new_source = Source(source.run, new_tag, partial, ckpt.read_manifest(partial), source.config,
                        dsfiles.scan(partial, source.layout.tp, source.layout.pp, source.layout.dp))
    progress("verifying the new checkpoint")
    problems += _loads(partial, set(written))
    for edit in edits:
        problems += edit.check(new_source)
    if problems:
        raise CheckpointError(f"the new checkpoint failed verification ({problems[0]}); "
                              f"{source.tag} and latest are untouched")


def _loads(directory: Path, names: set[str]) -> list[str]:
    """Every file the surgery wrote loads again (weights only); the others are links to verified files."""
    problems = []
    for f in sorted(directory / n for n in names):
        try:
            sd = dsfiles.load(f)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        del sd
    return problems


# ------------------------------------------------------------------------------------------------ verbs

def sync_layernorm_edit(method: str = "mean") -> Edit:
    """Make every TP-duplicated tensor identical across TP ranks: weights, fp32 master, exp_avg, exp_avg_sq."""
    if method not in ("mean", "rank0"):
        raise BigopsError(f"--method {method!r}: use mean or rank0")

    reports: dict[tuple, tp_duplicates.Report] = {}

    def preview(source: Source) -> tp_duplicates.Report:
        """compare-tp of the source, once per source (a tag never changes once its manifest is written)."""
        key = (str(source.path), source.manifest.get("created"))
        if key not in reports:
            reports[key] = tp_duplicates.compare_tp(source.layout)
        return reports[key]

    def rewrite(source: Source, out: Path, details: dict) -> dict[str, dict]:
        if source.layout.tp == 1:
            raise BigopsError(f"{source.tag} was trained with TP 1: there is nothing to sync")
        if not source.layout.optim_files:
            raise CheckpointError(f"{source.tag} has no ZeRO-1 / BF16_Optimizer files: its optimizer state "
                                  f"(parallel.zero_stage=0 in fp32) is not supported by this surgery")
        before = preview(source)
        details["before"] = {"counts": before.counts(), "max_abs_diff": before.max_abs_diff()}
        changed = {"weights": 0, "optimizer": 0}
        written: dict[str, dict] = {}
        for files in source.layout.layer_files.values():
            changed["weights"] += tp_duplicates.sync_layer_files(files, out, method, written)
        for files in source.layout.optim_files.values():
            changed["optimizer"] += tp_duplicates.sync_optimizer_files(files, out, method, written)
        details["method"] = method
        details["tensors_changed"] = changed
        return written

    def check(new: Source) -> list[str]:
        after = tp_duplicates.compare_tp(new.layout)
        return [f"{c.kind} {c.where} {c.name} still differs on TP ranks {list(c.differing_ranks)}"
                for c in after.out_of_sync]

    return Edit("sync-layernorm", f"average TP-duplicated tensors ({method})", rewrite, check, preview)


@dataclass(frozen=True)
class EngineChange:
    """A change to the engine state files (``mp_rank_*_model_states.pt``: LR scheduler, client state)."""

    name: str
    describe: str
    apply: Callable[[dict], None]


def engine_edit(changes: list[EngineChange]) -> Edit:
    """One edit that applies every engine change to every ``mp_rank_*_model_states.pt``."""

    def rewrite(source: Source, out: Path, details: dict) -> dict[str, dict]:
        written = {}
        for f in source.layout.engine_files:
            sd = dsfiles.load(f)
            for change in changes:
                change.apply(sd)
            written[f.name] = dsfiles.save(sd, out / f.name)
        return written

    return Edit("+".join(c.name for c in changes), "; ".join(c.describe for c in changes), rewrite)


def reset_lr_schedule() -> EngineChange:
    """Restart the LR schedule (warm-up included) from its first step, keeping the step counter and data."""

    def apply(sd: dict) -> None:
        sched = sd.get("lr_scheduler")
        if not isinstance(sched, dict) or "last_epoch" not in sched:
            raise CheckpointError("the checkpoint has no LR scheduler state to reset")
        sched["last_epoch"] = 0
        sched["_step_count"] = 1

    return EngineChange("reset-lr-schedule", "LR schedule back to its step 0 (warm-up again)", apply)


def set_consumed_samples(samples: int) -> EngineChange:
    """Move the data position: the next step reads from sample ``samples`` of the training order."""
    if samples < 0:
        raise BigopsError(f"--set-consumed-samples {samples}: must be >= 0")

    def apply(sd: dict) -> None:
        ours = sd.get("bigops")
        if not isinstance(ours, dict):
            raise CheckpointError("the checkpoint has no bigops client state (data position)")
        ours["consumed_samples"] = samples

    return EngineChange("set-consumed-samples", f"data position -> sample {samples}", apply)


def set_lr(lr: float, min_lr: float | None) -> EngineChange:
    """Override the peak LR (and the floor) for the rest of the run; the schedule keeps its position. The run
    config inside the checkpoint and the scheduler's base LR are updated; ``run.toml`` by the caller."""
    if not lr > 0 or (min_lr is not None and not 0 <= min_lr <= lr):
        raise BigopsError(f"--set-lr {lr} / --set-min-lr {min_lr}: need lr > 0 and 0 <= min_lr <= lr")

    def apply(sd: dict) -> None:
        sched, ours = sd.get("lr_scheduler"), sd.get("bigops")
        if not isinstance(sched, dict) or not isinstance(ours, dict) or "config" not in ours:
            raise CheckpointError("the checkpoint has no LR scheduler state or run config to change")
        sched["base_lrs"] = [lr for _ in sched.get("base_lrs", [lr])]
        train = ours["config"].setdefault("train", {})
        train["lr"] = lr
        if min_lr is not None:
            train["min_lr"] = min_lr

    floor = f", min_lr -> {min_lr}" if min_lr is not None else ""
    return EngineChange("set-lr", f"train.lr -> {lr}{floor}", apply)


def reset_optimizer_edit() -> Edit:
    """Zero Adam's moments and step counts (keeps master weights): the cure BLOOM's successors used after a
    divergence whose cause sat in the second moments."""

    def rewrite(source: Source, out: Path, details: dict) -> dict[str, dict]:
        if not source.layout.optim_files:
            raise CheckpointError(f"{source.tag} has no ZeRO-1 / BF16_Optimizer files to reset")
        written = {}
        for files in source.layout.optim_files.values():
            for f in files:
                sd = dsfiles.load(f)
                osd = dsfiles.optimizer_state(sd, f)
                for state in osd["base_optimizer_state"]["state"].values():
                    for key in ("exp_avg", "exp_avg_sq"):
                        with torch.no_grad():
                            state[key].zero_()
                    if "step" in state:
                        state["step"] = torch.zeros_like(state["step"]) if torch.is_tensor(state["step"]) else 0
                written[f.name] = dsfiles.save(sd, out / f.name)
        return written

    def check(new: Source) -> list[str]:
        for files in new.layout.optim_files.values():
            osd = dsfiles.optimizer_state(dsfiles.load(files[0]), files[0])
            if any(s["exp_avg_sq"].abs().max().item() != 0 for s in osd["base_optimizer_state"]["state"].values()):
                return [f"{files[0].name}: moments are not zero"]
        return []

    return Edit("reset-optimizer", "Adam moments and step counts to zero", rewrite, check)


# ------------------------------------------------------------------------------------- a surgery request

@dataclass
class Request:
    """What ``bigops surgery`` was asked to do, one field per flag: the checkpoint edits, and the control-file
    and run.toml changes that go with them. :meth:`edits` validates it and builds the edits."""

    sync_layernorm: bool = False
    method: str = "mean"
    reset_optimizer: bool = False
    reset_lr_schedule: bool = False
    set_consumed_samples: int | None = None
    set_lr: float | None = None
    set_min_lr: float | None = None
    skip_ranges: list[tuple[int, int]] = field(default_factory=list)
    skip_iterations: list[tuple[int, int]] = field(default_factory=list)
    """(first, last) iterations, converted to samples against the source checkpoint (skip_iterations.py)."""

    def edits(self, run: RunDir) -> list[Edit]:
        """The edits, in the order they run (the layer-norm sync first: its preview is shown); refused with
        one line naming the flag when the request is empty or contradicts itself or the run's config."""
        changes = []
        if self.reset_lr_schedule:
            changes.append(reset_lr_schedule())
        if self.set_consumed_samples is not None:
            changes.append(set_consumed_samples(self.set_consumed_samples))
        if self.set_min_lr is not None and self.set_lr is None:
            raise config_mod.ConfigError("--set-min-lr needs --set-lr")
        if self.set_lr is not None:
            changes.append(set_lr(self.set_lr, self.set_min_lr))
        edits = []
        if self.sync_layernorm:
            edits.append(sync_layernorm_edit(self.method))
        if self.reset_optimizer:
            edits.append(reset_optimizer_edit())
        if changes:
            edits.append(engine_edit(changes))
        if not edits and not self.skip_ranges and not self.skip_iterations:
            raise config_mod.ConfigError("nothing to do: pass --sync-layernorm, --reset-optimizer, "
                                         "--reset-lr-schedule, --set-lr, --set-consumed-samples, --skip-range "
                                         "or --skip-iterations")
        if not run.root.is_dir():
            raise config_mod.ConfigError(f"{run.root} is not a run directory")
        if self.set_lr is not None:
            floor = self.set_min_lr if self.set_min_lr is not None else load_run_config(run).train.min_lr
            if floor > self.set_lr:
                raise config_mod.ConfigError(f"--set-lr {self.set_lr} is below train.min_lr={floor}: pass "
                                             f"--set-min-lr too")
        return edits


def parse_skip_range_args(texts: list[str]) -> list[tuple[int, int]]:
    """``--skip-range START-END`` values as sample ranges (``trainer.control``'s syntax); a bad one is a
    ConfigError naming it."""
    from trainer.control import parse_skip_ranges
    ranges = []
    for text in texts:
        try:
            ranges += parse_skip_ranges(text)
        except ValueError as exc:
            raise config_mod.ConfigError(f"--skip-range {text!r}: {exc}") from None
    return ranges


def refuse_if_running(running: list[dict]) -> None:
    """RunInUseError naming one live rank: offline surgery on a training run would race its next save."""
    if running:
        r = running[0]
        raise RunInUseError(
            f"the run is training ({len(running)} rank(s) alive, e.g. rank {r.get('rank')} pid {r.get('pid')} on "
            f"{r.get('host')} at step {r.get('step')}): stop it first, or pass --stop-run")


@contextmanager
def stopped_run(run: RunDir, running: list[dict], timeout_s: float, say: Callable[[str], None] = lambda s: None):
    """The stop-run protocol: with ``running`` ranks, pull the kill switch (unless someone already did),
    wait until every rank has saved and exited, yield, then remove the kill switch we pulled, whatever
    happened inside. Without running ranks, only yields.

    RunInUseError when the ranks have not stopped within ``timeout_s``; the kill switch then stays, so the
    run still stops (and nobody operates on a half-stopped run)."""
    if not running:
        yield
        return
    kill_switch = run.kill_switch
    kill_switch.parent.mkdir(exist_ok=True)
    we_pulled_switch = False
    if not kill_switch.exists():
        atomic_write_text(kill_switch, "surgery\n")
        we_pulled_switch = True
    say(f"kill switch pulled; waiting for {len(running)} rank(s) to save and exit")
    _wait_stopped(run, timeout_s)
    try:
        yield
    finally:
        if we_pulled_switch:
            kill_switch.unlink(missing_ok=True)
            say("kill switch removed: resume the run (bigops launch --run-dir ..., or the next SLURM job)")


def _wait_stopped(run: RunDir, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while running_ranks(run):
        if time.monotonic() > deadline:
            raise RunInUseError(f"the run did not stop within {timeout_s:.0f} s of the kill switch; surgery not "
                                f"started (the kill switch stays in {run.control})")
        time.sleep(1.0)


def update_run_toml_lr(run: RunDir, new_tag: str, lr: float, min_lr: float | None) -> Path:
    """run.toml follows the checkpoint's new LR; the previous file is kept beside it (never the only copy).
    Returns where the previous one is."""
    cfg = load_run_config(run)
    cfg.train.lr = lr
    if min_lr is not None:
        cfg.train.min_lr = min_lr
    before = run.run_toml_before(new_tag)
    shutil.copy2(run.run_toml, before)
    atomic_write_text(run.run_toml, config_mod.dumps_toml(cfg))
    return before


def add_skip_ranges(run: RunDir, ranges: list[tuple[int, int]], note: str = "bigops surgery") -> bool:
    """Add sample ranges to ``control/skip-ranges`` (merged under a lock, its lines and notes kept:
    ``trainer.control``); True when any was new. A file that cannot be merged is a ConfigError."""
    from trainer.control import add_skip_range
    try:
        return any([add_skip_range(run.root, start, end, note) for start, end in ranges])
    except ValueError as exc:
        raise config_mod.ConfigError(f"--skip-range: {exc}") from None


# ------------------------------------------------------------------------------------------ the whole surgery

@dataclass(frozen=True)
class Plan:
    """What a surgery will do, known before it asks: its edits, the ranks it must stop first, and (when the
    run is not training) the verified source checkpoint; a training run's source is chosen after it stopped
    (its stop saves a newer one)."""

    edits: list[Edit]
    running: list[dict]
    source: Source | None


def plan_surgery(run: RunDir, request: Request, tag: str | None, stop_run: bool) -> Plan:
    """Validate ``request`` into its edits and find the source; a training run is refused (RunInUseError)
    unless ``stop_run``."""
    edits = request.edits(run)
    running = running_ranks(run)
    if not stop_run:
        refuse_if_running(running)
    source = open_source(run.root, tag, verify_hashes=True) if edits and not running else None
    return Plan(edits, running, source)


def carry_out(run: RunDir, request: Request, plan: Plan, tag: str | None, *, stop_timeout: float = 1800.0,
              move_latest: bool | None = None, say: Callable[[str], None] = lambda s: None) -> Outcome | None:
    """The surgery itself, inside the stop-run protocol (:func:`stopped_run`): the checkpoint edits
    (:func:`perform`), run.toml's LR with ``set_lr`` (:func:`update_run_toml_lr`) and the skip ranges
    (:func:`add_skip_ranges`), each reported through ``say``. Returns the checkpoint's outcome (``None``: only
    skip ranges)."""
    outcome = None
    with stopped_run(run, plan.running, stop_timeout, say=say):
        if plan.edits:
            source = plan.source or open_source(run.root, tag, verify_hashes=True)
            outcome = perform(source, plan.edits, move_latest=move_latest, progress=lambda s: say(f"  {s}"),
                              verb=plan.edits[0].name.split("+")[0] if len(plan.edits) == 1 else "surgery")
            moved = "; latest -> " + outcome.new_tag if outcome.latest_moved else "; latest unchanged"
            say(f"wrote {outcome.new_tag} from {outcome.source_tag} in {outcome.seconds:.1f} s "
                f"({outcome.bytes_written / 1e6:,.1f} MB rewritten, the rest hard-linked){moved}")
            if request.set_lr is not None:
                before = update_run_toml_lr(run, outcome.new_tag, request.set_lr, request.set_min_lr)
                say(f"run.toml: train.lr = {request.set_lr}"
                    + (f", train.min_lr = {request.set_min_lr}" if request.set_min_lr is not None else "")
                    + f" (previous kept as {before.name})")
        if request.skip_ranges:
            added = add_skip_ranges(run, request.skip_ranges)
            say(f"skip ranges added to {run.skip_ranges}" if added else f"skip ranges already in {run.skip_ranges}")
        # After the stop and the edits: a stopped run's newest checkpoint is where it resumes from.
        for skip in iteration_skips(run, request, outcome.new_tag if outcome and outcome.latest_moved else tag):
            added = add_skip_ranges(run, [(skip.start, skip.end)], note=skip.note)
            say(f"iterations {skip.first}-{skip.last} = samples {skip.start}-{skip.end}: "
                + (f"added to {run.skip_ranges}" if added else f"already in {run.skip_ranges}"))
    return outcome


def iteration_skips(run: RunDir, request: Request, tag: str | None):
    """``request.skip_iterations`` as sample ranges, for a resume from ``tag`` (default latest)."""
    from bigops.checkpoint import skip_iterations
    return skip_iterations.resolve(run, request.skip_iterations, tag, request.set_consumed_samples,
                                   also_skipped=request.skip_ranges)
