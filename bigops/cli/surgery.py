"""``bigops surgery`` (repair a checkpoint into a new tag) and ``bigops ckpt compare-tp``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from bigops.cli.options import RunDirArg, TagOpt
from trainer.rundir import RELATIVE

console = Console(highlight=False, soft_wrap=True)

FormatOpt = Annotated[str, typer.Option("--format", help="text or json.")]


def _check_format(fmt: str) -> None:
    from bigops.errors import ConfigError
    if fmt not in ("text", "json"):
        raise ConfigError(f"--format {fmt!r}: use text or json")


def compare_tp_command(
    run_dir: RunDirArg,
    tag: TagOpt = None,
    fmt: FormatOpt = "text",
    show_all: Annotated[bool, typer.Option("--all", help="List in-sync tensors too.")] = False,
) -> None:
    """Do all TP ranks hold identical layer norms and row-parallel biases (weights, fp32 master, Adam moments)?

    Exit code 0 when everything is in sync, 1 when anything differs (BLOOM's compare_tp_weights report).
    """
    from bigops.checkpoint import tp_duplicates
    from bigops.checkpoint.surgery import open_source

    _check_format(fmt)
    source = open_source(run_dir, tag, verify_hashes=False)
    report = tp_duplicates.compare_tp(source.layout)
    if fmt == "json":
        typer.echo(json.dumps({"tag": source.tag, **report.to_json()}))
    else:
        table = Table(title=f"{source.tag}: TP-duplicated tensors across {report.tp} TP ranks")
        for column in ("kind", "in sync", "out of sync", "max |diff|"):
            table.add_column(column, justify="left" if column == "kind" else "right")
        counts, worst = report.counts(), report.max_abs_diff()
        for kind in tp_duplicates.KINDS:
            c = counts[kind]
            table.add_row(kind, str(c["in_sync"]), str(c["out_of_sync"]), f"{worst[kind]:.3g}")
        console.print(table)
        rows = report.comparisons if show_all else report.out_of_sync
        for c in rows:
            state = "in sync" if c.in_sync else f"differs on TP ranks {list(c.differing_ranks)}"
            console.print(f"  {c.kind:<10} {c.where:<22} {c.name:<45} max |diff| {c.max_abs_diff:.3g}  {state}")
        if not report.comparisons:
            console.print("no TP-duplicated tensors (TP 1?)")
    raise typer.Exit(0 if not report.out_of_sync else 1)


def _wait_stopped(run, timeout_s: float) -> None:
    from bigops.checkpoint.surgery import RunInUseError, running_ranks
    deadline = time.monotonic() + timeout_s
    while running_ranks(run):
        if time.monotonic() > deadline:
            raise RunInUseError(f"the run did not stop within {timeout_s:.0f} s of the kill switch; surgery not "
                                f"started (the kill switch stays in {run.control})")
        time.sleep(1.0)


def _update_run_toml_lr(run, new_tag: str, lr: float, min_lr: float | None) -> None:
    """run.toml follows the checkpoint's new LR; the previous file is kept beside it (never the only copy)."""
    import shutil

    from trainer import config as config_mod
    from trainer.rundir import atomic_write_text, load_run_config
    cfg = load_run_config(run)
    cfg.train.lr = lr
    if min_lr is not None:
        cfg.train.min_lr = min_lr
    shutil.copy2(run.run_toml, run.run_toml_before(new_tag))
    atomic_write_text(run.run_toml, config_mod.dumps_toml(cfg))
    console.print(f"run.toml: train.lr = {lr}" + (f", train.min_lr = {min_lr}" if min_lr is not None else "")
                  + f" (previous kept as run.toml.before-{new_tag})")


def surgery(
    run_dir: RunDirArg,
    tag: TagOpt = None,
    sync_layernorm: Annotated[bool, typer.Option("--sync-layernorm", help="Make TP-duplicated tensors "
                              "(layer norms, row-parallel biases) identical on every TP rank: weights, fp32 "
                              "master weights and Adam moments.")] = False,
    method: Annotated[str, typer.Option("--method", help="mean (average over TP ranks) or rank0 (TP rank 0's "
                                        "copy everywhere).")] = "mean",
    reset_optimizer: Annotated[bool, typer.Option("--reset-optimizer", help="Zero Adam's moments and step "
                               "counts (master weights kept).")] = False,
    reset_lr_schedule: Annotated[bool, typer.Option("--reset-lr-schedule", help="Restart the LR schedule "
                                 "from its step 0 (warm-up again).")] = False,
    set_consumed_samples: Annotated[Optional[int], typer.Option("--set-consumed-samples", help="Move the data "
                                    "position: the next step reads from this sample.")] = None,
    set_lr: Annotated[Optional[float], typer.Option("--set-lr", help="Override train.lr (the peak LR) from the "
                      "next step on; the schedule keeps its position. Updates run.toml too.")] = None,
    set_min_lr: Annotated[Optional[float], typer.Option("--set-min-lr", help="With --set-lr: the new "
                          "train.min_lr.")] = None,
    skip_range: Annotated[Optional[list[str]], typer.Option("--skip-range", help="Add START-END (samples, end "
                          f"exclusive) to {RELATIVE.skip_ranges} (repeatable).")] = None,
    keep_latest: Annotated[bool, typer.Option("--keep-latest", help="Write the new tag but leave "
                           "checkpoints/latest where it is.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be done; write nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    stop_run: Annotated[bool, typer.Option("--stop-run", help="If the run is training: pull the kill switch, "
                        "wait for its save and exit, operate, then remove the kill switch.")] = False,
    stop_timeout: Annotated[float, typer.Option("--stop-timeout", help="Seconds to wait for --stop-run.")] = 1800.0,
) -> None:
    """Repair a checkpoint, never in place: write a new tag beside it, verify it, then point latest at it."""
    from bigops.checkpoint import surgery as surgery_mod
    from bigops.errors import BigopsError, ConfigError
    from trainer.control import add_skip_range, parse_skip_ranges
    from trainer.rundir import RunDir, atomic_write_text

    run = RunDir(Path(run_dir))
    ranges = []
    for text in skip_range or []:
        try:
            ranges += parse_skip_ranges(text)
        except ValueError as exc:
            raise ConfigError(f"--skip-range {text!r}: {exc}") from None
    engine_changes = []
    if reset_lr_schedule:
        engine_changes.append(surgery_mod.reset_lr_schedule())
    if set_consumed_samples is not None:
        engine_changes.append(surgery_mod.set_consumed_samples(set_consumed_samples))
    if set_min_lr is not None and set_lr is None:
        raise ConfigError("--set-min-lr needs --set-lr")
    if set_lr is not None:
        engine_changes.append(surgery_mod.set_lr(set_lr, set_min_lr))
    edits = []
    if sync_layernorm:
        edits.append(surgery_mod.sync_layernorm_edit(method))
    if reset_optimizer:
        edits.append(surgery_mod.reset_optimizer_edit())
    if engine_changes:
        edits.append(surgery_mod.engine_edit(engine_changes))
    if not edits and not ranges:
        raise ConfigError("nothing to do: pass --sync-layernorm, --reset-optimizer, --reset-lr-schedule, "
                          "--set-lr, --set-consumed-samples or --skip-range")
    if not run.root.is_dir():
        raise ConfigError(f"{run.root} is not a run directory")
    if set_lr is not None:
        from trainer.rundir import load_run_config
        floor = set_min_lr if set_min_lr is not None else load_run_config(run).train.min_lr
        if floor > set_lr:
            raise ConfigError(f"--set-lr {set_lr} is below train.min_lr={floor}: pass --set-min-lr too")

    running = surgery_mod.running_ranks(run)
    kill_switch = run.kill_switch
    we_pulled_switch = False
    if running and not stop_run:
        r = running[0]
        raise surgery_mod.RunInUseError(
            f"the run is training ({len(running)} rank(s) alive, e.g. rank {r.get('rank')} pid {r.get('pid')} on "
            f"{r.get('host')} at step {r.get('step')}): stop it first, or pass --stop-run")

    # A running job's checkpoint is chosen after it stopped (its stop saves a newer one).
    source = surgery_mod.open_source(run.root, tag, verify_hashes=True) if edits and not running else None
    if running:
        console.print(f"will stop the run first ({len(running)} rank(s) training): kill switch, save, exit")
    if source is not None:
        console.print(f"source: {source.tag} (step {source.manifest.get('step')}, TP {source.layout.tp} x PP "
                      f"{source.layout.pp} x DP {source.layout.dp}, {source.config.train.precision}), verified")
        if sync_layernorm:
            before = edits[0].preview(source)  # the sync edit is first; its rewrite reuses this report
            bad = before.out_of_sync
            console.print(f"compare-tp: {len(before.comparisons) - len(bad)} in sync, {len(bad)} out of sync")
            for c in bad[:20]:
                console.print(f"  {c.kind:<10} {c.where:<22} {c.name} max |diff| {c.max_abs_diff:.3g}")
    for e in edits:
        console.print(f"will {e.name}: {e.describe}")
    for start, end in ranges:
        console.print(f"will skip samples {start}-{end}")
    if dry_run:
        console.print("dry run: nothing written")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("surgery writes a new checkpoint and may move latest: pass --yes to confirm")
        if not typer.confirm("go ahead?"):
            raise typer.Exit(1)

    if running:
        kill_switch.parent.mkdir(exist_ok=True)
        if not kill_switch.exists():
            atomic_write_text(kill_switch, "surgery\n")
            we_pulled_switch = True
        console.print(f"kill switch pulled; waiting for {len(running)} rank(s) to save and exit")
        _wait_stopped(run, stop_timeout)
        source = surgery_mod.open_source(run.root, tag, verify_hashes=True) if edits else None

    try:
        if edits:
            outcome = surgery_mod.perform(source, edits, move_latest=False if keep_latest else None,
                                          progress=lambda s: console.print(f"  {s}"),
                                          verb=edits[0].name.split("+")[0] if len(edits) == 1 else "surgery")
            moved = "; latest -> " + outcome.new_tag if outcome.latest_moved else "; latest unchanged"
            console.print(f"wrote {outcome.new_tag} from {outcome.source_tag} in {outcome.seconds:.1f} s "
                          f"({outcome.bytes_written / 1e6:,.1f} MB rewritten, the rest hard-linked){moved}")
            if set_lr is not None:
                _update_run_toml_lr(run, outcome.new_tag, set_lr, set_min_lr)
        if ranges:
            path = run.skip_ranges
            try:  # merged under a lock, the file's lines and notes kept (trainer.control)
                added = [add_skip_range(run.root, s, e, "bigops surgery") for s, e in ranges]
            except ValueError as exc:
                raise ConfigError(f"--skip-range: {exc}") from None
            console.print(f"skip ranges added to {path}" if any(added) else f"skip ranges already in {path}")
    except BigopsError:
        raise
    finally:
        if we_pulled_switch:
            kill_switch.unlink(missing_ok=True)
            console.print("kill switch removed: resume the run (bigops launch --run-dir ..., or the next SLURM job)")
