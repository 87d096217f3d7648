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


def launch(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory (created; resumed if it has a "
                                                            "checkpoint).")] = Path("runs/tiny"),
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
                       "launcher/slurm/profiles (e.g. jean-zay) or a TOML file with a [slurm] table.")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", help="Jobs to queue in the chain (slurm.chain_jobs).")] = None,
    print_script: Annotated[bool, typer.Option("--print-script", help="With --slurm: print the batch script and "
                                               "the sbatch command, submit nothing.")] = False,
    host: HostOpt = None,
    ssh_key: SSHKeyOpt = None,
    known_hosts: KnownHostsOpt = None,
) -> None:
    """Train BLOOM on this machine's ranks (torchrun, gloo on CPU) and show live progress; or, with --slurm,
    submit it to SLURM as a chain of jobs (here or over SSH with --host)."""
    run = RunDir(run_dir)
    overrides = [*(set_ or []), *_flag_overrides(tp, pp, dp, steps, seed, precision, save_interval,
                                                           exit_duration)]
    if metrics_port and not watch:
        raise config_mod.ConfigError("--metrics-port goes with --watch (or run `bigops watch RUN --metrics-port P` "
                                     "beside the launch)")
    if slurm or host or profile or print_script:
        if not slurm:
            raise config_mod.ConfigError("--host, --profile and --print-script go with --slurm")
        if watch or init_hf is not None or init_megatron is not None:
            raise config_mod.ConfigError("--watch, --init-hf and --init-megatron are local options: with --slurm, "
                                         "run `bigops watch RUN` beside the chain (it keeps the queue full)")
        if jobs is not None:
            overrides.append(f"slurm.chain_jobs={jobs}")
        _launch_slurm(run_dir, preset, config, overrides, profile, host, ssh_key, known_hosts, print_script)
        return
    exporter = None
    if metrics_port:
        from bigops.metrics.exporter import serve_run
        exporter = serve_run(run, metrics_port, metrics_address)
        console.print(f"metrics: http://{metrics_address}:{metrics_port}/metrics")
    launch_plan = plan.launch_plan(run, preset, config, overrides, init_hf=init_hf, resume=resume,
                                   init_megatron=init_megatron)
    cfg, resume, resumable = launch_plan.cfg, launch_plan.resume, launch_plan.resumable
    world = config_mod.world_size_of(cfg)
    started = time.perf_counter()
    meta = local.prepare(run, cfg)
    if meta is not None:
        console.print(f"data: {meta['source']}, {meta['documents']:,} documents, {meta['train_tokens']:,} train + "
                      f"{meta['valid_tokens']:,} validation tokens, vocab {meta['vocab_size']:,} "
                      f"({time.perf_counter() - started:.1f} s)")
    trainer_args: list[str] = []
    if init_hf is not None:
        trainer_args += ["--init-hf", str(init_hf)]
    if init_megatron is not None:
        trainer_args += ["--init-megatron", str(init_megatron.resolve())]

    done_before = len(read_jsonl(run.metrics))
    run.exit_record.unlink(missing_ok=True)
    console.print(f"[bold]bigops launch[/] {run.root}: BLOOM {cfg.model.num_layers}x{cfg.model.hidden_size} "
                  f"({cfg.model.num_attention_heads} heads), TP {cfg.parallel.tp} x PP {cfg.parallel.pp} x DP "
                  f"{cfg.parallel.dp} = {world} ranks, {cfg.train.precision}, target step {cfg.train.train_steps}"
                  + (f", resuming from {resumable.tag}" if resume else ""))
    if resumable is not None and resumable.fell_back_from:
        console.print(f"[yellow]warning[/]: checkpoint {resumable.fell_back_from} is unusable ({resumable.reason})")
    spawned = time.time()
    if watch:
        code, message = _supervised(run, cfg, world, trainer_args, exporter)
    else:
        proc = local.spawn(run.root, world, trainer_args, log_path=run.ranks_log)
        try:
            _follow(run, cfg, proc, done_before)
        except KeyboardInterrupt:
            local.stop(proc)
            raise
        code, message = exitcodes.read(run.exit_record, proc.returncode)
    _summary(run, done_before, spawned)
    if code != exitcodes.FINISHED:
        if code in (exitcodes.STOPPED_ON_REQUEST, exitcodes.STOPPED_BY_SIGNAL):
            console.print(f"[bold yellow]{exitcodes.describe(code)}[/]: checkpoint {run.latest_tag()}")
            raise typer.Exit(code)
        raise TrainingEnded(f"{message}; see {run.ranks_log}", code)


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


def _supervised(run: RunDir, cfg: config_mod.RunConfig, world: int, trainer_args: list[str],
                exporter=None) -> tuple[int, str]:
    """Run the ranks under the watchdog (bigops.watchdog.supervisor) until it is done or gives up; with an
    ``exporter`` (a ``RunCollector``), each pass's facts are served to Prometheus."""
    from bigops.notify.notifier import for_run
    from bigops.watchdog.supervisor import SUPERVISOR_GAVE_UP, Supervisor

    current: list = []

    def spawn():  # the supervisor's launch id: its hang and crash incidents and the heartbeats agree
        current[:] = [local.spawn(run.root, world, trainer_args, log_path=run.ranks_log,
                                  launch_id=supervisor.launch_id)]
        return current[0]

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

    notifier = for_run(run, cfg.alerts)
    supervisor = Supervisor(run, cfg, spawn, notifier=notifier, say=lambda line: console.print(line, markup=False),
                            on_tick=progress)
    try:
        code = supervisor.run_until_done()
    except KeyboardInterrupt:
        if current:
            local.stop(current[0])
        raise
    finally:
        notifier.drain(timeout=10)
    if code == SUPERVISOR_GAVE_UP:
        return code, f"the watchdog stopped restarting (see {run.events})"
    return code, exitcodes.describe(code)


def _follow(run: RunDir, cfg: config_mod.RunConfig, proc, done_before: int) -> None:
    """Live progress from ``telemetry/metrics.jsonl`` until the ranks exit."""
    columns = [TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
               TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("train", total=cfg.train.train_steps, loss="-", tps="-")
        while proc.poll() is None:
            time.sleep(0.5)
            records = read_jsonl(run.metrics)[done_before:]
            if records:
                last = records[-1]
                progress.update(task, completed=last["step"], loss=f"{last['loss']:.4f}",
                                tps=f"{last['tokens_per_second']:,.0f}")


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
