"""``bigops ckpt``: checkpoint tools (list, inspect, verify, prune, mark, export-hf, compare-tp, reshape); the
work is in ``bigops.checkpoint``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bigops.cli.options import DryRunOpt, ExportDtype, FormatOpt, OutputFormat, RunDirArg, TagOpt, YesOpt, make_app

app = make_app("Checkpoint tools: list, inspect, verify, prune, mark, export-hf, compare-tp, reshape.")


@app.command("export-hf")
def export_hf_command(
    run_dir: RunDirArg,
    out_dir: Annotated[Path, typer.Argument(help="New directory for the Hugging Face model: config.json, "
                                            "safetensors, the run's tokenizer, generation_config.json (must not "
                                            "exist).", show_default=False)],
    tag: TagOpt = None,
    dtype: Annotated[ExportDtype, typer.Option(case_sensitive=False, help="auto (the training precision), fp32, "
                                               "bf16 or fp16.")] = ExportDtype.auto,
) -> None:
    """Export a checkpoint of any TP/PP/DP layout to a Hugging Face BLOOM directory that AutoTokenizer,
    AutoModelForCausalLM and pipeline("text-generation") load as is."""
    from rich.console import Console

    from bigops.checkpoint.export_hf import export_hf
    from bigops.cli.progress import progress_reporter

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    with progress_reporter(console, "exporting") as report:
        result = export_hf(run_dir, out_dir, tag=tag, dtype=dtype.value, progress=report)
    for warning in result.warnings:
        console.print(f"warning: {warning}", markup=False)
    special = result.special_tokens
    tokens = (f"; tokenizer with {', '.join(f'{role} {token}' for role, token in special.tokens.items())}"
              if special is not None and special.eos is not None else "")
    typer.echo(f"exported {result.tag} (step {result.step}, {result.num_parameters:,} parameters{tokens}) "
               f"to {result.out_dir}")


# ------------------------------------------------------------------------------ list, inspect, verify, prune
def _console():
    from rich.console import Console
    return Console(highlight=False, soft_wrap=True)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _numel(shape: list[int] | None) -> str:
    import math
    return "-" if shape is None else f"{math.prod(shape):,}"


def _when(t: float | None) -> str:
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _inventory(run_dir: Path):
    from bigops.checkpoint.inventory import open_run, require_checkpoints, scan
    return require_checkpoints(scan(open_run(run_dir)))


@app.command("list")
def list_command(run_dir: RunDirArg, output_format: FormatOpt = OutputFormat.text) -> None:
    """Every checkpoint of a run: complete, partial, set aside by a rollback; sizes, steps, which is latest."""
    import json

    from rich.table import Table

    inv = _inventory(run_dir)
    if output_format == OutputFormat.json:
        typer.echo(json.dumps(inv.as_dict()))
        return
    table = Table("tag", "step", "state", "verified", "size", "files", "created", "notes",
                  title=str(inv.run.checkpoints))
    for e in inv.entries:
        notes = [n for n in ("latest" if e.latest else "", f"set aside by rollback {e.aside}" if e.aside else "",
                             "KEEP" if e.marked else "", e.problem if e.problem and not e.complete else "",
                             e.stamp_problem or "") if n]
        style = "bold" if e.latest else "dim" if e.aside else "yellow" if not e.complete else None
        table.add_row(e.tag, str(e.step), e.label, e.verified or "-", _size(e.size), str(e.files), _when(e.created),
                      "; ".join(notes), style=style)
    console = _console()
    console.print(table)
    newest = inv.newest_verified()
    console.print(f"newest verified: {newest.tag} (step {newest.step})" if newest else
                  "newest verified: none (the watchdog stamps each new checkpoint; `bigops ckpt verify` stamps one)",
                  markup=False)
    if inv.latest_problem:
        console.print(f"[red]warning:[/] {inv.latest_problem}", markup=True)


@app.command("inspect")
def inspect_command(run_dir: RunDirArg, tag: TagOpt = None, output_format: FormatOpt = OutputFormat.text,
                    params: Annotated[bool, typer.Option("--params/--no-params",
                                                         help="List every parameter of every layer.")] = True,
                    ) -> None:
    """Topology, files, parameters per pipeline layer and optimizer partitions (one file loaded at a time)."""
    import json

    from bigops.checkpoint.inspect import inspect_checkpoint
    from bigops.checkpoint.inventory import entry_path, resolve

    inv = _inventory(run_dir)
    entry = resolve(inv, tag)
    report = inspect_checkpoint(entry_path(inv.run, entry), entry.tag)
    if output_format == OutputFormat.json:
        typer.echo(json.dumps({**report.as_dict(), "aside": entry.aside}))
        return
    console = _console()
    t = report.topology
    console.print(f"[bold]{entry.tag}[/] step {report.step}  consumed samples {report.consumed_samples}  "
                  f"{report.path}" + (f"  (set aside by rollback {entry.aside})" if entry.aside else ""))
    console.print(f"topology: TP={t['tp']} PP={t['pp']} DP={t['dp']} (world {t['world_size']}), "
                  f"ZeRO stage {t['zero_stage']}, precision {t['precision']}")
    if report.model:
        m = report.model
        console.print(f"model: hidden {m['hidden_size']}, {m['num_layers']} layers, {m['num_attention_heads']} "
                      f"heads, vocab {m['vocab_size']} (padded {m['padded_vocab_size']}); "
                      f"{report.num_parameters:,} parameters")
    if report.engine:
        console.print("engine: " + ", ".join(f"{k} {v}" for k, v in report.engine.items()))
    _print_files(console, report)
    _print_layers(console, report, params)
    if report.optimizer:
        _print_optimizer(console, report)
    for problem in report.problems:
        console.print(f"[red]problem:[/] {problem}")


def _print_files(console, report) -> None:
    """``inspect``: every file with its kind and coordinates, then the totals per kind."""
    from rich.table import Table
    files = Table("file", "kind", "coordinates", "size", title="files")
    files.columns[0].overflow = "fold"
    for f in report.files:
        coords = " ".join(f"{k} {v}" for k, v in (("layer", f.layer), ("pp", f.pp_stage), ("tp", f.tp_rank),
                                                    ("dp", f.dp_rank), ("rank", f.rank)) if v is not None)
        files.add_row(f.name, f.kind, coords, _size(f.size))
    console.print(files)
    by_kind: dict[str, list[int]] = {}
    for f in report.files:
        by_kind.setdefault(f.kind, []).append(f.size)
    console.print("  " + "; ".join(f"{k}: {len(v)} files, {_size(sum(v))}" for k, v in by_kind.items()))


def _print_layers(console, report, params: bool) -> None:
    """``inspect``: the parameters per pipeline layer (each tensor's full shape and TP split with ``params``)."""
    from rich.table import Table

    from bigops.checkpoint.inspect import KIND_LAYER
    layers = Table("layer", "role", "parameter", "shape (full)", "TP split", "dtype", "count",
                   title=f"parameters per pipeline layer ({sum(1 for f in report.files if f.kind == KIND_LAYER)} "
                         f"layer files)")
    for layer in report.layers:
        layers.add_row(f"{layer.index:02d}", layer.role, f"{len(layer.params)} tensors", "", "", "",
                       f"{layer.numel:,}", style="bold")
        if params:
            for p in layer.params:
                split = "duplicated" if p.split_dim is None else f"dim {p.split_dim}"
                layers.add_row("", "", p.name, "x".join(map(str, p.shape)), split, p.dtype, f"{p.numel:,}")
    layers.add_row("", "total", "", "", "", "", f"{report.num_parameters:,}", style="bold")
    console.print(layers)


def _print_optimizer(console, report) -> None:
    """``inspect``: the optimizer's fp32 master partitions and Adam moments per (pp, tp, dp) and group."""
    from rich.table import Table
    opt = Table("pp", "tp", "dp", "group", "fp32 partition", "exp_avg, exp_avg_sq", "params", "lr", "wd",
                title="optimizer state: flattened fp32 master partitions and Adam moments (elements)")
    for o in report.optimizer:
        for g in o.groups:
            moments = [g.get("exp_avg"), g.get("exp_avg_sq")]
            opt.add_row(str(o.pp_stage), str(o.tp_rank), str(o.dp_rank), str(g["group"]),
                        _numel(g.get("fp32_partition")),
                        f"{_numel(moments[0])} each" if moments[0] == moments[1]
                        else ", ".join(_numel(m) for m in moments), str(g.get("params", "-")), f"{g.get('lr'):g}"
                        if isinstance(g.get("lr"), (int, float)) else "-", str(g.get("weight_decay")))
    console.print(opt)
    zero = {o.zero_stage for o in report.optimizer if o.zero_stage is not None}
    console.print(f"  {sum(o.fp32_numel for o in report.optimizer):,} fp32 master elements and "
                  f"{sum(o.moments_numel for o in report.optimizer):,} Adam moment elements over "
                  f"{len(report.optimizer)} files" + (f" (ZeRO stage {', '.join(map(str, zero))})" if zero else ""))


@app.command("verify")
def verify_command(
    run_dir: RunDirArg,
    tag: TagOpt = None,
    all_tags: Annotated[bool, typer.Option("--all", help="Every checkpoint, set-aside ones included.")] = False,
    output_format: FormatOpt = OutputFormat.text,
) -> None:
    """Re-hash every file against the manifest; name each missing, truncated or altered file (exit 3)."""
    import json

    from bigops.checkpoint.inventory import COMPLETE, INCOMPLETE, resolve, verify_entry
    from bigops.errors import CheckpointError, ConfigError

    if all_tags and tag:
        raise ConfigError("--tag and --all: use one")
    inv = _inventory(run_dir)
    entries = [e for e in inv.entries if e.state in (COMPLETE, INCOMPLETE)] if all_tags else [resolve(inv, tag)]
    if not entries:
        raise CheckpointError(f"{inv.run.root} has no checkpoint to verify (only partial saves)")
    results = []
    console = _console()
    for entry in entries:
        result = _verify_with_progress(inv.run, entry)
        results.append(result)
        if output_format == OutputFormat.text:
            where = f" (set aside by rollback {entry.aside})" if entry.aside else ""
            state = "ok" if result.ok else f"{len(result.problems)} problem(s)"
            console.print(f"{entry.tag}{where}: {state}, {_size(result.bytes_hashed)} hashed in "
                          f"{result.seconds:.2f} s ({_size(result.throughput)}/s)", markup=False)
            for problem in result.problems:
                console.print(f"  {entry.path}/{problem}", markup=False)
    failed = [r for r in results if not r.ok]
    if output_format == OutputFormat.json:
        typer.echo(json.dumps({"run": str(inv.run.root), "ok": not failed, "results": [r.as_dict() for r in results],
                               "bytes_hashed": sum(r.bytes_hashed for r in results),
                               "seconds": sum(r.seconds for r in results)}))
    if failed:
        raise CheckpointError(f"{len(failed)} of {len(results)} checkpoint(s) failed verification: "
                              + ", ".join(r.tag for r in failed))


@app.command("prune")
def prune_command(
    run_dir: RunDirArg,
    keep_last: Annotated[int, typer.Option("--keep-last", help="Keep the last K complete checkpoints.",
                                           show_default=False)],
    keep_every: Annotated[Optional[int], typer.Option("--keep-every",
                                                      help="Also keep every checkpoint whose step % N == 0.")] = None,
    keep: Annotated[Optional[list[str]], typer.Option("--keep", help="Also keep this tag (repeatable); "
                                                      "`bigops ckpt mark` keeps one for good.")] = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
) -> None:
    """Remove old checkpoints; never `latest`, marked ones, partial saves nor rollback evidence."""
    import sys

    from bigops.checkpoint.prune import Policy, apply_prune, plan_prune
    from bigops.errors import ConfigError

    from bigops.watchdog.state import open_spike_steps

    inv = _inventory(run_dir)
    spikes = open_spike_steps(inv.run.watchdog_state)
    policy = Policy(keep_last=keep_last, keep_every=keep_every, keep=tuple(keep or ()),
                    protect_before=tuple(sorted((step, f"open incident {iid}") for step, iid in spikes.items())))
    plan = plan_prune(inv, policy)
    console = _console()
    for tag, why in plan.keep.items():
        console.print(f"keep    {tag}: {', '.join(why)}", markup=False)
    for entry, why in plan.untouched:
        console.print(f"leave   {entry.path}: {why}", markup=False)
    for tag in plan.unknown_keep:
        console.print(f"note    --keep {tag}: no such checkpoint directly under checkpoints/", markup=False)
    for entry in plan.leftovers:
        console.print(f"finish  {entry.path}: left by an interrupted prune ({_size(entry.size)})", markup=False)
    for entry in plan.remove:
        console.print(f"remove  {entry.tag} (step {entry.step}, {_size(entry.size)})", markup=False)
    if not plan.remove and not plan.leftovers:
        console.print("nothing to remove")
        return
    if dry_run:
        console.print(f"dry run: would free {_size(plan.freed)}; nothing removed")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("not removing anything without --yes (or see it first with --dry-run)")
        typer.confirm(f"Remove {len(plan.remove)} checkpoint(s), freeing {_size(plan.freed)}?", abort=True)
    outcome = apply_prune(inv.run, plan)
    for tag, why in outcome.skipped:
        console.print(f"skipped {tag}: {why}", markup=False)
    console.print(f"removed {len(outcome.removed)} checkpoint(s)"
                  + (f" and {len(outcome.finished)} leftover(s)" if outcome.finished else "")
                  + "; recorded in events.jsonl")


@app.command("mark")
def mark_command(
    run_dir: RunDirArg,
    tag: Annotated[str, typer.Argument(help="The checkpoint to keep.", show_default=False)],
    note: Annotated[str, typer.Option("--note", help="Why it is kept (written into the marker).")] = "",
    remove: Annotated[bool, typer.Option("--remove", help="Remove the marker instead.")] = False,
) -> None:
    """Mark a checkpoint to keep: writes checkpoints/<tag>/KEEP, which `prune` honours."""
    from bigops.checkpoint.inventory import open_run
    from bigops.checkpoint.prune import mark

    marker = mark(open_run(run_dir), tag, note=note, remove=remove)
    typer.echo(f"{'unmarked' if remove else 'marked'} {tag} ({marker})")


@app.command("compare-tp")
def compare_tp_command(
    run_dir: RunDirArg,
    tag: TagOpt = None,
    output_format: FormatOpt = OutputFormat.text,
    show_all: Annotated[bool, typer.Option("--all", help="List in-sync tensors too.")] = False,
) -> None:
    """Do all TP ranks hold identical layer norms and row-parallel biases (weights, fp32 master, Adam moments)?

    Exit code 0 when everything is in sync, 1 when anything differs (BLOOM's compare_tp_weights report).
    """
    import json

    from rich.table import Table

    from bigops.checkpoint import tp_duplicates
    from bigops.checkpoint.surgery import open_source

    source = open_source(run_dir, tag, verify_hashes=False)
    report = _compare_with_progress(source.layout)
    if output_format == OutputFormat.json:
        typer.echo(json.dumps({"tag": source.tag, **report.to_json()}))
        raise typer.Exit(0 if not report.out_of_sync else 1)
    console = _console()
    table = Table(title=f"{source.tag}: TP-duplicated tensors across {report.tp} TP ranks")
    for column in ("kind", "in sync", "out of sync", "max |diff|"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    counts, worst = report.counts(), report.max_abs_diff()
    for kind in tp_duplicates.KINDS:
        c = counts[kind]
        table.add_row(kind, str(c["in_sync"]), str(c["out_of_sync"]), f"{worst[kind]:.3g}")
    console.print(table)
    for c in report.comparisons if show_all else report.out_of_sync:
        state = "in sync" if c.in_sync else f"differs on TP ranks {list(c.differing_ranks)}"
        console.print(f"  {c.kind:<10} {c.where:<22} {c.name:<45} max |diff| {c.max_abs_diff:.3g}  {state}")
    if not report.comparisons:
        console.print("no TP-duplicated tensors (TP 1?)")
    raise typer.Exit(0 if not report.out_of_sync else 1)


class _FilesRead:
    """Files and bytes done of a total, shown as one phase of a ``bar_reporter``; called from hashing threads."""

    def __init__(self, bar, phase: str, suffix: str = ""):
        import threading
        self.bar, self.phase, self.suffix, self.lock = bar, phase, suffix, threading.Lock()
        self.files = self.bytes = self.total_files = self.total_bytes = 0

    def start(self, files: int, size: int, show: bool = True) -> None:
        self.total_files, self.total_bytes = files, size
        if show:
            self.show()

    def done(self, path: Path) -> None:
        with self.lock:
            self.files += 1
            self.bytes += path.stat().st_size
            self.show()

    def show(self) -> None:
        self.bar(self.phase, self.files, self.total_files,
                 f"{_size(self.bytes)} of {_size(self.total_bytes)}{self.suffix}")


def _stderr_bar(label: str):
    from rich.console import Console

    from bigops.cli.progress import bar_reporter
    return bar_reporter(Console(stderr=True, highlight=False, soft_wrap=True), label)


def _verify_with_progress(run, entry):
    """verify's hashing of one checkpoint, with a bar of files and bytes on stderr (plain lines off a
    terminal); the hashing threads report each file done."""
    from bigops.checkpoint.inventory import verify_entry

    with _stderr_bar(f"verifying {entry.tag}") as bar:
        counter = _FilesRead(bar, "hashing")
        return verify_entry(run, entry, on_start=counter.start, on_done=counter.done)


def _compare_with_progress(layout) -> "tp_duplicates.Report":
    """compare-tp's reading, with a bar of files and bytes on stderr (plain lines off a terminal)."""
    from bigops.checkpoint import tp_duplicates

    files = [f for group in (*layout.layer_files.values(), *layout.optim_files.values()) for f in group]
    with _stderr_bar("comparing") as bar:
        counter = _FilesRead(bar, "TP copies", suffix=" read")
        counter.start(len(files), sum(f.stat().st_size for f in files), show=False)
        return tp_duplicates.compare_tp(layout, counter.done)


@app.command("reshape")
def reshape_command(
    run_dir: RunDirArg,
    tp: Annotated[int, typer.Option("--tp", min=1, help="Target tensor-parallel degree.", show_default=False)],
    pp: Annotated[int, typer.Option("--pp", min=1, help="Target pipeline-parallel degree.", show_default=False)],
    dp: Annotated[int, typer.Option("--dp", min=1, help="Target data-parallel degree.", show_default=False)],
    tag: TagOpt = None,
    skip_loss_check: Annotated[bool, typer.Option(
        "--skip-loss-check", help="Publish without reading the converted model back and comparing its loss on a "
                                  "fixed batch with the source's (for a checkpoint too large to read twice).")] = False,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
) -> None:
    """Move a stopped run to another TP x PP x DP layout through DeepSpeed's universal checkpoint (a new tag,
    never in place); run.toml and latest follow it, so the next launch resumes on the new layout. The converted
    model's loss on a fixed batch must equal the source's (relative 1e-5) before anything is published."""
    import sys

    from bigops.checkpoint.reshape import VERB, Layout, apply_reshape, new_tag_for, prepare
    from bigops.errors import ConfigError

    from rich.console import Console

    from bigops.cli.progress import bar_reporter

    target = Layout(tp, pp, dp)
    progress = Console(stderr=True, highlight=False, soft_wrap=True)  # progress on stderr: stdout keeps the one-line result

    def say(line: str) -> None:
        progress.print(line, markup=False)

    source = prepare(run_dir, target, tag, say)
    new_tag = new_tag_for(source.run, source.tag, VERB)
    plan = (f"{source.tag} ({source.layout.tp} x {source.layout.pp} x {source.layout.dp}) -> {new_tag} "
            f"({target}); run.toml's parallel.tp/pp/dp and latest will follow it")
    if dry_run:
        typer.echo(f"dry run: would write {plan}; nothing written")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("not reshaping without --yes (or see it first with --dry-run)")
        typer.confirm(f"Reshape {plan}?", abort=True)
    with bar_reporter(progress, "converting") as bar:
        outcome = apply_reshape(source, target, say, on_progress=lambda p: bar(
            p.phase, p.done, p.total, f"{_size(p.bytes_written)} written, {_size(p.bytes_per_second)}/s"),
            loss_check=not skip_loss_check)
    rng = ("per-rank RNG streams carried" if outcome.rng == "carried"
           else "rank count changed: the trainer re-seeds every rank from (train.seed, step, rank)")
    checked = outcome.loss_check
    loss = ("loss not checked (--skip-loss-check)" if checked.get("skipped") else
            f"loss on a fixed batch {checked['target_loss']:.6f} vs the source's {checked['fitted_source_loss']:.6f} "
            f"(relative {checked['relative_diff']:.1e})")
    typer.echo(f"reshaped {outcome.source_tag} ({outcome.source_layout}) into {outcome.new_tag} ({target}) in "
               f"{outcome.seconds:.1f} s ({_size(outcome.bytes_per_second)}/s); {loss}; {rng}; run.toml was kept as "
               f"{outcome.run_toml_before.name}")
