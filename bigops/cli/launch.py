"""``bigops launch``: train BLOOM locally (default: the tiny preset, TP 2 x PP 2 on this machine's CPUs), or
submit it to SLURM. The launcher decides and starts (``launcher.plan``, ``launcher.local``,
``launcher.slurm.submit``); this module shows the progress."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bigops.cli.options import ConfigOpt, HostOpt, KnownHostsOpt, PresetOpt, SetOpt, SSHKeyOpt
from bigops.errors import TrainingEnded
from launcher import local, plan
from trainer import exitcodes
from trainer import config as config_mod
from trainer.rundir import RunDir, read_jsonl

console = Console(highlight=False, soft_wrap=True)


def _flag_overrides(tp, pp, dp, steps, seed, precision, save_interval, exit_duration) -> list[str]:
    pairs = {"parallel.tp": tp, "parallel.pp": pp, "parallel.dp": dp, "train.train_steps": steps,
             "train.seed": seed, "train.precision": precision, "train.save_interval": save_interval,
             "train.exit_duration_in_mins": exit_duration}
    return [f"{k}={v}" for k, v in pairs.items() if v is not None]


DEFAULT_RUN = Path("runs/tiny")


def run_dir_of(run: Path | None, run_dir: Path | None) -> Path:
    """The run directory of ``launch``: RUN, as every other command takes it, or ``--run-dir`` (kept for the
    scripts and docs that use it); both only if they agree (a ConfigError otherwise), neither: runs/tiny."""
    from bigops.errors import ConfigError
    if run is not None and run_dir is not None and Path(run).resolve() != Path(run_dir).resolve():
        raise ConfigError(f"RUN {run} and --run-dir {run_dir} name different run directories: give one")
    return Path(run if run is not None else run_dir if run_dir is not None else DEFAULT_RUN)


def launch(
    run: Annotated[Optional[Path], typer.Argument(help="Run directory (created; resumed if it has a checkpoint). "
                                                  f"Default: {DEFAULT_RUN}.", show_default=False)] = None,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="The same as RUN (the older spelling).",
                                                    show_default=False)] = None,
    preset: PresetOpt = "tiny",
    tp: Annotated[Optional[int], typer.Option("--tp", help="Tensor-parallel degree (parallel.tp).")] = None,
    pp: Annotated[Optional[int], typer.Option("--pp", help="Pipeline-parallel degree (parallel.pp).")] = None,
    dp: Annotated[Optional[int], typer.Option("--dp", help="Data-parallel degree (parallel.dp).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Target step (train.train_steps); a resumed "
                                                                 "run trains until its counter reaches it.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="train.seed")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help="auto (bf16 on GPU, fp32 on CPU), fp32 or bf16 (train.precision).")] = None,
    save_interval: Annotated[Optional[int], typer.Option("--save-interval", help="Checkpoint every N steps "
                                                     "(train.save_interval; 0: at the end and on request).")] = None,
    exit_duration: Annotated[Optional[float], typer.Option("--exit-duration-in-mins", help="Save and exit after "
                                                           "this many minutes (train.exit_duration_in_mins).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    init_hf: Annotated[Optional[Path], typer.Option("--init-hf", help="Initial weights (and the model's shape) "
                                                                      "from a Hugging Face BLOOM directory.")] = None,
    init_megatron: Annotated[Optional[Path], typer.Option("--init-megatron", help="Initial weights (and the "
                             "model's shape) from a Megatron-DeepSpeed BLOOM checkpoint, any TP/PP: a tag directory "
                             "or a save directory with `latest`.")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume/--no-resume", help="Continue from "
                                                   "checkpoints/latest (default: when there is one).")] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Run the watchdog over the ranks: restart "
                                        "after a crash or hang, roll back past a loss spike, notify.")] = False,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="With --watch: serve the run's Prometheus "
                                              "metrics on this port from the watchdog's passes (0: off).")] = 0,
    metrics_address: Annotated[str, typer.Option("--metrics-address", help="With --metrics-port: the address to "
                                                 "serve on.")] = "127.0.0.1",
    slurm: Annotated[bool, typer.Option("--slurm", help="Submit a chain of SLURM jobs instead (see `bigops chain`); "
                                        "the run dir must be on a filesystem the nodes see.")] = False,
    profile: Annotated[Optional[str], typer.Option("--profile", help="Cluster profile: a name under "
                       "launcher/slurm/profiles (e.g. jean-zay) or a TOML file with a \\[slurm] table.")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", help="Jobs to queue in the chain (slurm.chain_jobs).")] = None,
    print_script: Annotated[bool, typer.Option("--print-script", help="With --slurm: print the batch script and "
                                               "the sbatch command, submit nothing.")] = False,
    host: HostOpt = None,
    ssh_key: SSHKeyOpt = None,
    known_hosts: KnownHostsOpt = None,
) -> None:
    """Train BLOOM on this machine's ranks (gloo on CPU; warm spares with --watch) and show live progress; or, with --slurm,
    submit it to SLURM as a chain of jobs (here or over SSH with --host)."""
    run_dir = run_dir_of(run, run_dir)
    overrides = [*(set_ or []), *_flag_overrides(tp, pp, dp, steps, seed, precision, save_interval,
                                                           exit_duration)]
    plan.check_launch_options(slurm=slurm, watch=watch, metrics_port=metrics_port, init_hf=init_hf, host=host,
                              profile=profile, print_script=print_script, init_megatron=init_megatron)
    if slurm:
        if jobs is not None:
            overrides.append(f"slurm.chain_jobs={jobs}")
        _launch_slurm(run_dir, preset, config, overrides, profile, host, ssh_key, known_hosts, print_script)
        return
    _launch_local(RunDir(run_dir), preset, config, overrides, init_hf, resume, watch, metrics_port, metrics_address,
                  init_megatron)


def _launch_local(run: RunDir, preset: str, config: Path | None, overrides: list[str], init_hf: Path | None,
                  resume: bool | None, watch: bool, metrics_port: int, metrics_address: str,
                  init_megatron: Path | None = None) -> None:
    """``bigops launch`` on this machine: prepare (``launcher.local.prepare_launch``), run the ranks (under the
    watchdog with ``watch``) while showing progress, then the summary and the exit code."""
    exporter = None
    if metrics_port:
        from bigops.metrics.exporter import serve_run
        exporter = serve_run(run, metrics_port, metrics_address)
        console.print(f"metrics: http://{metrics_address}:{metrics_port}/metrics")
    try:
        prepared = local.prepare_launch(run, preset, config, overrides, init_hf=init_hf, resume=resume,
                                        init_megatron=init_megatron)
    except plan.LayoutChange as change:
        _reshape_after_asking(run, change)
        prepared = local.prepare_launch(run, preset, config, overrides, init_hf=init_hf, resume=resume,
                                        init_megatron=init_megatron)
    _print_start(run, prepared)
    cfg = prepared.plan.cfg
    spawned = time.time()
    if watch:
        from bigops.watchdog.supervisor import supervise_local
        code, message = supervise_local(run, cfg, prepared.world, prepared.trainer_args,
                                        say=lambda line: console.print(line, markup=False),
                                        on_tick=_progress(cfg, exporter))
    else:
        code, message = local.run_ranks(run, prepared, lambda proc: _follow(run, cfg, proc, prepared.done_before))
    _summary(run, prepared.done_before, spawned)
    if code != exitcodes.FINISHED:
        if code in (exitcodes.STOPPED_ON_REQUEST, exitcodes.STOPPED_BY_SIGNAL):
            console.print(f"[bold yellow]{exitcodes.describe(code)}[/]: checkpoint {run.latest_tag()}")
            raise typer.Exit(code)
        raise TrainingEnded(f"{message}; see {run.ranks_log}", code)


def _reshape_after_asking(run: RunDir, change: "plan.LayoutChange") -> None:
    """A resume on another layout: on a terminal, offer ``bigops ckpt reshape`` (a new tag through DeepSpeed's
    universal checkpoint; run.toml and latest follow it); elsewhere (a script, CI) refuse with its command."""
    import sys

    if not sys.stdin.isatty():
        raise change
    from bigops.checkpoint.reshape import Layout, reshape

    target = Layout(*change.target)
    typer.confirm(f"{change}\nReshape it now (a new tag; the current one is kept)?", abort=True)
    from bigops.cli.progress import bar_reporter
    from bigops.cli.ckpt import _size

    with bar_reporter(console, "converting") as bar:
        outcome = reshape(run.root, target, say=lambda line: console.print(f"  {line}", markup=False),
                          on_progress=lambda p: bar(p.phase, p.done, p.total, f"{_size(p.bytes_written)} written, "
                                                                              f"{_size(p.bytes_per_second)}/s"))
    console.print(f"reshaped {outcome.source_tag} into {outcome.new_tag} ({target})", markup=False)


def _print_start(run: RunDir, prepared: local.Prepared) -> None:
    """What is about to train: the data prepared now, the model and layout, and the checkpoint it resumes."""
    meta, cfg, resumable = prepared.data, prepared.plan.cfg, prepared.plan.resumable
    if meta is not None:
        console.print(f"data: {meta['source']}, {meta['documents']:,} documents, {meta['train_tokens']:,} train + "
                      f"{meta['valid_tokens']:,} validation tokens, vocab {meta['vocab_size']:,} "
                      f"({prepared.data_s:.1f} s)")
    console.print(f"[bold]bigops launch[/] {run.root}: BLOOM {cfg.model.num_layers}x{cfg.model.hidden_size} "
                  f"({cfg.model.num_attention_heads} heads), TP {cfg.parallel.tp} x PP {cfg.parallel.pp} x DP "
                  f"{cfg.parallel.dp} = {prepared.world} ranks, {cfg.train.precision}, target step "
                  f"{cfg.train.train_steps}" + (f", resuming from {resumable.tag}" if prepared.plan.resume else ""))
    if resumable is not None and resumable.fell_back_from:
        console.print(f"[yellow]warning[/]: checkpoint {resumable.fell_back_from} is unusable ({resumable.reason})")


def _launch_slurm(run_dir: Path, preset: str, config: Path | None, overrides: list[str], profile: str | None,
                  host: str | None, ssh_key: str | None, known_hosts: str | None, print_script: bool) -> None:
    """``bigops launch --slurm``: submit the chain (``launcher.slurm.submit``) and say what was queued; with
    ``print_script``, print the batch script and the sbatch command instead."""
    from launcher.slurm import render
    from launcher.slurm.submit import submit_run

    done = submit_run(run_dir, preset, config, overrides, profile, host, ssh_key, known_hosts, print_script)
    if print_script:
        for text in done:
            console.print(text, markup=False)
        return
    chain, cfg = done.chain, done.cfg
    console.print(f"[bold]bigops launch --slurm[/] {done.run_path}: chain {chain.name!r} ({chain.mode}) of "
              f"{len(chain.submitted)} job(s) {', '.join(chain.submitted)}; TP {cfg.parallel.tp} x PP {cfg.parallel.pp} "
              f"x DP {cfg.parallel.dp} = {render.world_size(cfg)} ranks on {cfg.slurm.nodes} node(s), "
              f"{cfg.slurm.time_limit_min} min per job, exit after {cfg.train.exit_duration_in_mins} min"
              + (f" (via {host})" if host else ""))


def opened_findings(facts: dict) -> list:
    """The findings that opened or escalated an incident in this pass (``tick``'s first result), from the
    pass's facts alone: the supervisor hands ``on_tick`` only those."""
    ids = {incident for kind, incident in facts.get("notices", []) if kind in ("open", "escalate")}
    incident_of = facts.get("incident_of") or {}
    return [f for f in facts.get("findings", []) if incident_of.get(f.key) in ids]


def _progress(cfg: config_mod.RunConfig, exporter=None):
    """The supervisor's ``on_tick``: serve each pass's facts to Prometheus (with an ``exporter``, a
    ``RunCollector``) and print the latest step at most every 5 s."""
    shown = {"step": -1, "time": 0.0}

    def progress(facts: dict) -> None:
        if exporter is not None:
            try:
                exporter.update(facts, facts.get("findings", []), opened_findings(facts), time.time())
            except Exception as exc:  # noqa: BLE001 - the exporter never stops the supervision
                console.print(f"warning: metrics not updated: {type(exc).__name__}: {exc}", markup=False)
        last = facts.get("last_record")
        if last and last["step"] != shown["step"] and time.time() - shown["time"] >= 5:
            shown.update(step=last["step"], time=time.time())
            console.print(f"step {last['step']}/{cfg.train.train_steps} loss {last['loss']:.4f} "
                          f"{last['tokens_per_second']:,.0f} tok/s", highlight=False)
    return progress


def _follow(run: RunDir, cfg: config_mod.RunConfig, proc, done_before: int, poll_s: float = 0.5) -> None:
    """Live progress from ``telemetry/metrics.jsonl`` until the ranks exit: a bar on a terminal; in a pipe or
    a CI log, a plain line at most every ``bigops.cli.progress.PLAIN_EVERY_S`` and the last one."""
    from bigops.cli.progress import progress_reporter

    if not console.is_terminal:
        with progress_reporter(console, "train") as report:
            while proc.poll() is None:
                time.sleep(poll_s)
                records = read_jsonl(run.metrics)[done_before:]
                if records:
                    report(step_line(records, cfg.train.train_steps))
            records = read_jsonl(run.metrics)[done_before:]  # the steps of the last poll interval
            if records:
                report(step_line(records, cfg.train.train_steps))
        return
    columns = [TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
               TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=cfg.train.train_steps, loss="-", tps="-")
        while proc.poll() is None:
            time.sleep(poll_s)
            records = read_jsonl(run.metrics)[done_before:]
            if records:
                last = records[-1]
                progress.update(task, completed=last["step"], loss=f"{last['loss']:.4f}",
                                tps=f"{last['tokens_per_second']:,.0f}")


def step_line(records: list[dict], target_step: int) -> str:
    """``step 40/100 loss 6.1234 3,021 tok/s ETA 1m05s``: the newest record, the ETA from the median step
    time of this launch's steps."""
    last = records[-1]
    times = sorted(r.get("step_seconds", 0.0) for r in records)
    eta = max(0, target_step - last["step"]) * times[len(times) // 2]
    minutes, seconds = divmod(int(round(eta)), 60)
    return (f"step {last['step']}/{target_step} loss {last['loss']:.4f} {last['tokens_per_second']:,.0f} tok/s "
            f"ETA {f'{minutes}m' if minutes else ''}{seconds:02d}s")


def _summary(run: RunDir, done_before: int, spawned: float) -> None:
    records = read_jsonl(run.metrics)[done_before:]
    if not records:
        console.print(f"no step trained; checkpoint {run.latest_tag()}")
        return
    speeds = sorted(r["tokens_per_second"] for r in records)
    first_step_began = records[0]["time"] - records[0].get("step_seconds", 0.0)
    startup = first_step_began - spawned
    training = time.time() - first_step_began
    console.print(f"[bold green]trained[/] steps {records[0]['step']}..{records[-1]['step']}: loss "
                  f"{records[0]['loss']:.4f} -> {records[-1]['loss']:.4f}, median {speeds[len(speeds) // 2]:,.0f} "
                  f"tokens/s; start-up {startup:.1f} s, training {training:.1f} s; "
                  f"checkpoint {run.checkpoint(run.latest_tag() or '?')}")
