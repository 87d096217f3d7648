"""``bigops surgery``: repair a checkpoint into a new tag (``bigops.checkpoint.surgery`` does the work)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from bigops.cli.options import DryRunOpt, RunDirArg, SyncMethod, TagOpt, YesOpt
from trainer.rundir import RELATIVE

console = Console(highlight=False, soft_wrap=True)


def surgery(
    run_dir: RunDirArg,
    tag: TagOpt = None,
    sync_layernorm: Annotated[bool, typer.Option("--sync-layernorm", help="Make TP-duplicated tensors "
                              "(layer norms, row-parallel biases) identical on every TP rank: weights, fp32 "
                              "master weights and Adam moments.")] = False,
    method: Annotated[SyncMethod, typer.Option("--method", case_sensitive=False, help="mean (average over TP "
                                               "ranks) or rank0 (TP rank 0's copy everywhere).")] = SyncMethod.mean,
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
    skip_iterations: Annotated[Optional[list[str]], typer.Option("--skip-iterations", help="Add the samples "
                               "that iterations A-B (both included; or A) will read to "
                               f"{RELATIVE.skip_ranges}, as Megatron's --skip-train-iteration-range: counted from "
                               "the checkpoint the run resumes from, global_batch_size samples a step (a ramp-up's "
                               "batch while it ramps); the step "
                               "count goes on, so step A trains on what step B+1 would have read "
                               "(repeatable).")] = None,
    keep_latest: Annotated[bool, typer.Option("--keep-latest", help="Write the new tag but leave "
                           "checkpoints/latest where it is.")] = False,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    stop_run: Annotated[bool, typer.Option("--stop-run", help="If the run is training: pull the kill switch, "
                        "wait for its save and exit, operate, then remove the kill switch.")] = False,
    stop_timeout: Annotated[float, typer.Option("--stop-timeout", help="Seconds to wait for --stop-run.")] = 1800.0,
) -> None:
    """Repair a checkpoint, never in place: write a new tag beside it, verify it, then point latest at it."""
    from bigops.checkpoint import surgery as lib
    from bigops.checkpoint.skip_iterations import parse_iteration_args
    from trainer.rundir import RunDir

    run = RunDir(Path(run_dir))
    request = lib.Request(sync_layernorm=sync_layernorm, method=method.value, reset_optimizer=reset_optimizer,
                          reset_lr_schedule=reset_lr_schedule, set_consumed_samples=set_consumed_samples,
                          set_lr=set_lr, set_min_lr=set_min_lr,
                          skip_ranges=lib.parse_skip_range_args(skip_range or []),
                          skip_iterations=parse_iteration_args(skip_iterations or []))
    plan = lib.plan_surgery(run, request, tag, stop_run)
    _show_plan(plan.running, plan.source, plan.edits, request)
    if plan.running:
        for first, last in request.skip_iterations:
            console.print(f"will skip iterations {first}-{last} (in samples from the checkpoint the stop saves)")
    else:
        for skip in lib.iteration_skips(run, request, tag):
            console.print(f"will skip iterations {skip.first}-{skip.last}: samples {skip.start}-{skip.end}")
    if dry_run:
        console.print("dry run: nothing written")
        return
    _confirm(yes)
    lib.carry_out(run, request, plan, tag, stop_timeout=stop_timeout, move_latest=False if keep_latest else None,
                  say=console.print)


def _confirm(yes: bool) -> None:
    """Ask before writing, unless ``--yes``; without a terminal to ask on, --yes is required."""
    from bigops.errors import ConfigError
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError("surgery writes a new checkpoint and may move latest: pass --yes to confirm")
    if not typer.confirm("go ahead?"):
        raise typer.Exit(1)


def _show_plan(running: list[dict], source, edits: list, request) -> None:
    """What the surgery will do, before it asks: the stop, the source (with the TP comparison when syncing),
    each edit and each skip range."""
    if running:
        console.print(f"will stop the run first ({len(running)} rank(s) training): kill switch, save, exit")
    if source is not None:
        console.print(f"source: {source.tag} (step {source.manifest.get('step')}, TP {source.layout.tp} x PP "
                      f"{source.layout.pp} x DP {source.layout.dp}, {source.config.train.precision}), verified")
        if request.sync_layernorm:
            before = edits[0].preview(source)  # the sync edit is first; its rewrite reuses this report
            bad = before.out_of_sync
            console.print(f"compare-tp: {len(before.comparisons) - len(bad)} in sync, {len(bad)} out of sync")
            for c in bad[:20]:
                console.print(f"  {c.kind:<10} {c.where:<22} {c.name} max |diff| {c.max_abs_diff:.3g}")
    for e in edits:
        console.print(f"will {e.name}: {e.describe}")
    for start, end in request.skip_ranges:
        console.print(f"will skip samples {start}-{end}")
