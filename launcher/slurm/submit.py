"""Start a run as a SLURM chain (``bigops launch --slurm``): resolve its config (a cluster profile, a stored
run.toml when the run exists), write run.toml and the batch script into the run directory, submit the jobs;
or only render the script (``--print-script``). Here or on a login node over SSH, through one runner.

Errors are one line: a ConfigError for what the user must change, a CommandError when SLURM or the login
node does not answer.
"""

from __future__ import annotations

import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from launcher import plan
from launcher.slurm import chain as chain_mod
from launcher.slurm import render
from trainer import config as config_mod
from trainer.rundir import RunDir, parse_run_config

PROFILES = Path(__file__).resolve().parent / "profiles"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Submitted:
    """A chain just submitted: its record, the config its jobs run, where."""

    chain: chain_mod.Chain
    cfg: config_mod.RunConfig
    run_path: str
    host: str | None


def profile_overrides(profile: str) -> list[str]:
    """``--profile``: a name under ``launcher/slurm/profiles`` or a TOML file, as ``section.key=value``
    overrides (applied before the command line's)."""
    path = Path(profile)
    if not path.suffix and not path.exists():
        path = PROFILES / f"{profile}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        names = ", ".join(sorted(p.stem for p in PROFILES.glob("*.toml")))
        raise config_mod.ConfigError(f"--profile {profile}: no such file or profile (profiles: {names})") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise config_mod.ConfigError(f"--profile {profile}: cannot be read: {exc}") from None
    return [f"{section}.{k}={v}" for section, values in data.items() if isinstance(values, dict)
            for k, v in values.items()]


def open_runner(host: str | None, ssh_key: str | None, known_hosts: str | None):
    """The runner of SLURM's commands: local, or over SSH to ``host`` (a bad ``--host`` is a ConfigError)."""
    from launcher.remote import runner_for
    try:
        return runner_for(host, ssh_key, known_hosts)
    except ValueError as exc:
        raise config_mod.ConfigError(str(exc)) from None


def chain_config(runner, run_path: str, preset: str, config: Path | None, overrides: list[str],
                 read_stored: bool = True) -> config_mod.RunConfig:
    """The config the chain's jobs run: the stored run.toml plus ``overrides`` when the run exists (refused
    while it still has jobs queued), else a fresh one whose dp fills the nodes' GPUs; the layout is checked
    against the nodes, and the job's time budget and interpreter are filled in."""
    stored = runner.read_text(str(RunDir(run_path).run_toml)) if read_stored else None
    if stored is not None:
        existing = chain_mod.Chain.load(runner, run_path)
        if existing is not None and chain_mod.queue(runner, existing):
            raise config_mod.ConfigError(f"{run_path} already has jobs queued: use `bigops chain extend` (or "
                                         f"cancel first)")
        cfg = plan.resumed_config(parse_run_config(stored, source=str(RunDir(run_path).run_toml)), overrides)
    else:
        draft = config_mod.resolve(preset, config, overrides)
        if draft.parallel.dp is None:  # fill dp from the nodes' GPUs
            overrides = [*overrides, f"parallel.dp={config_mod.data_parallel_of(draft, render.slots(draft))}"]
        cfg = plan.fresh_config(preset, config, overrides, cuda_available=draft.slurm.gpus_per_node > 0)
    render.ranks_per_node(cfg)  # a layout error is a one-line ConfigError now, not a failed job later
    if cfg.train.exit_duration_in_mins is None:
        cfg.train.exit_duration_in_mins = render.exit_duration_min(cfg.slurm)
    return cfg


def fill_job_paths(cfg: config_mod.RunConfig, host: str | None) -> None:
    """The interpreter and the bigops checkout the jobs run: this ones by default; over SSH they must be
    given (the cluster's paths are not ours)."""
    if host and not (cfg.slurm.python and cfg.slurm.workdir):
        raise config_mod.ConfigError("--host: set slurm.python and slurm.workdir (the interpreter and the bigops "
                                     "checkout on the cluster), e.g. --set slurm.workdir=/path/to/bigops")
    cfg.slurm.python = cfg.slurm.python or sys.executable
    cfg.slurm.workdir = cfg.slurm.workdir or str(REPO)


def script_preview(cfg: config_mod.RunConfig, run_path: str) -> list[str]:
    """``--print-script``: the batch script, then a comment line with the sbatch command that would submit it."""
    name = cfg.slurm.job_name or render.default_job_name(run_path)
    script = render.render_script(cfg, run_path, job_name=name, workdir=cfg.slurm.workdir)
    argv = render.submit_argv(render.sbatch_options(cfg, run_path, name), str(RunDir(run_path).slurm_script))
    return [script, "# submitted as: " + shlex.join(argv)]


def submit_run(run_dir: Path, preset: str, config: Path | None, overrides: list[str], profile: str | None,
               host: str | None, ssh_key: str | None, known_hosts: str | None,
               print_script: bool = False) -> Submitted | list[str]:
    """Resolve the config, write run.toml and the batch script into the run dir, submit the chain (see the
    module docstring); with ``print_script``, return the script's texts instead and submit nothing."""
    if profile:
        overrides = [*profile_overrides(profile), *overrides]
    run_path = str(run_dir) if host else str(run_dir.resolve())
    runner = open_runner(host, ssh_key, known_hosts)
    try:
        cfg = chain_config(runner, run_path, preset, config, overrides, read_stored=not print_script)
        fill_job_paths(cfg, host)
        if print_script:
            return script_preview(cfg, run_path)
        chain = chain_mod.create(runner, cfg, run_path, cfg.slurm.workdir, config_mod.dumps_toml(cfg), host=host,
                                 key_file=ssh_key, known_hosts=known_hosts)
    finally:
        runner.close()
    return Submitted(chain, cfg, run_path, host)
