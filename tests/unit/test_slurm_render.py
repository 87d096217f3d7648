"""The sbatch script and options are pure functions of the config: golden files, layout checks, quoting.

Regenerate the golden files after a deliberate change with BIGOPS_UPDATE_GOLDEN=1.
"""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from launcher import plan
from launcher.slurm import render
from trainer import config as config_mod

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "sbatch"
PROFILES = Path(__file__).resolve().parents[2] / "launcher" / "slurm" / "profiles"


def bloom_176b_on_jean_zay():
    overrides = [f"slurm.{k}={v}" for k, v in
                 __import__("tomllib").loads((PROFILES / "jean-zay.toml").read_text())["slurm"].items()]
    return plan.fresh_config("bloom-176b", None, [*overrides, "parallel.dp=8"], cuda_available=True)


def tiny_on_one_node():
    return plan.fresh_config("tiny", None, ["data.source=synthetic", "slurm.time_limit_min=1",
                                            "slurm.signal_before_s=20", "slurm.exit_margin_min=0.25",
                                            "slurm.python=/opt/venv/bin/python"])


def rendered(cfg, run_dir, workdir):
    name = cfg.slurm.job_name or render.default_job_name(run_dir)
    script = render.render_script(cfg, run_dir, job_name=name, workdir=workdir)
    argv = render.submit_argv(render.sbatch_options(cfg, run_dir, name), f"{run_dir}/slurm/job.sbatch")
    return script, "\n".join(argv) + "\n"


@pytest.mark.parametrize("case, make, run_dir, workdir", [
    ("bloom-176b-jean-zay", bloom_176b_on_jean_zay, "/gpfsscratch/rech/six/commun/runs/tr11-176B-ml",
     "/gpfswork/rech/six/commun/code/tr11-176B-ml/bigops"),
    ("tiny-one-node", tiny_on_one_node, "/scratch/runs/tiny", "/home/me/bigops"),
])
def test_script_and_options_match_the_golden_files(case, make, run_dir, workdir):
    script, argv = rendered(make(), run_dir, workdir)
    paths = GOLDEN / f"{case}.sbatch", GOLDEN / f"{case}.argv"
    if os.environ.get("BIGOPS_UPDATE_GOLDEN") == "1":
        paths[0].write_text(script)
        paths[1].write_text(argv)
    assert script == paths[0].read_text()
    assert argv == paths[1].read_text()
    assert subprocess.run(["bash", "-n", str(paths[0])]).returncode == 0  # valid shell


def test_bloom_176b_layout_is_48_nodes_of_8_ranks_and_exits_before_the_limit():
    cfg = bloom_176b_on_jean_zay()
    assert (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.dp) == (4, 12, 8)
    assert render.world_size(cfg) == 384 and render.ranks_per_node(cfg) == 8
    script, argv = rendered(cfg, "/runs/a", "/code")
    assert "--nnodes=48 --nproc-per-node=8" in script and "--kill-on-bad-exit=1" in script
    assert "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in script and "export NCCL_ASYNC_ERROR_HANDLING=1" in script
    assert "--rdzv-backend=c10d" in script and '--rdzv-endpoint="$MASTER_ADDR:29500"' in script
    for option in ("--nodes=48", "--gres=gpu:8", "--time=20:00:00", "--signal=B:USR1@600", "--qos=qos_gpu-t3",
                   "--account=six@a100", "--constraint=a100", "--partition=gpu_p5", "--dependency=singleton"):
        assert option in argv.splitlines()
    assert render.exit_duration_min(cfg.slurm) == 1190.0  # tr11: --exit-duration-in-mins 1190 for 20 h
    assert "DS_ACCELERATOR" not in script  # GPU nodes


def test_layout_errors_name_the_option():
    cfg = tiny_on_one_node()
    cfg.slurm.nodes = 3
    with pytest.raises(config_mod.ConfigError, match="slurm.nodes=3 does not divide the world size 4"):
        render.ranks_per_node(cfg)
    cfg = bloom_176b_on_jean_zay()
    cfg.slurm.gpus_per_node = 4
    with pytest.raises(config_mod.ConfigError, match="slurm.gpus_per_node=4"):
        render.ranks_per_node(cfg)


@pytest.mark.parametrize("override, message", [
    ("slurm.chain_mode=ring", "slurm.chain_mode='ring'"),
    ("slurm.nodes=0", "slurm.nodes"),
    ("slurm.signal_before_s=120", "slurm.signal_before_s=120 must be less than slurm.time_limit_min=1"),
    ("slurm.min_queued=0", "slurm.min_queued"),
])
def test_bad_slurm_options_are_one_line_errors(override, message):
    cfg = config_mod.resolve("tiny", None, ["slurm.time_limit_min=1", "slurm.exit_margin_min=0.5",
                                           "slurm.signal_before_s=10", override])
    with pytest.raises(config_mod.ConfigError, match=message.replace("(", r"\(")):
        config_mod.validate(cfg, world_size=4)


def test_no_signal_option_when_signal_before_s_is_0_and_array_mode_argv():
    cfg = tiny_on_one_node()
    cfg.slurm.signal_before_s = 0
    options = render.sbatch_options(cfg, "/r", "n")
    assert not any(o.startswith("--signal") for o in options)
    argv = render.submit_argv(options, "/r/job.sbatch", exclude="n1,n2", array="0-4%1")
    assert argv[-4:] == ["--dependency=singleton", "--exclude=n1,n2", "--array=0-4%1", "/r/job.sbatch"]


def test_hostile_values_stay_data_in_the_script(tmp_path):
    """Run the rendered prologue with stub commands: a hostile run dir / workdir / module is never executed."""
    evil = "x'; touch PWNED; echo '$(touch PWNED2) `touch PWNED3` \" ;"
    cfg = tiny_on_one_node()
    cfg.slurm.modules = f"{evil},ok"
    run_dir = str(tmp_path / f"run {evil}")
    workdir = tmp_path / f"work {evil}"
    workdir.mkdir()
    script = render.render_script(cfg, run_dir, job_name=evil, workdir=str(workdir))
    prologue = script.split("# Record this job's start")[0]
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "module").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    (stubs / "module").chmod(0o755)
    out = tmp_path / "args.txt"
    done = subprocess.run(["bash", "-c", prologue + '\nprintf "%s\\n" "$RUN_DIR" "$PWD" > "$DIRS_OUT"\n'],
                          cwd=tmp_path, env={"PATH": f"{stubs}:/usr/bin:/bin", "ARGS_OUT": str(out),
                                             "DIRS_OUT": str(tmp_path / "dirs.txt")}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("PWNED*"))
    assert out.read_text().splitlines() == ["load", evil, "ok"]
    assert (tmp_path / "dirs.txt").read_text().splitlines() == [run_dir, str(workdir)]
    with pytest.raises(config_mod.ConfigError, match="line break"):
        render.sbatch_options(cfg, "/r", "name\n#!/bin/sh")
    assert shlex.split(shlex.join(render.sbatch_options(cfg, run_dir, evil)))[0] == f"--job-name={evil}"


def test_print_script_renders_the_batch_script_and_its_sbatch_command_and_writes_nothing(tmp_path):
    from trainer.config import ConfigError

    from launcher.slurm.submit import profile_overrides, submit_run
    texts = submit_run(tmp_path / "run", "tiny", None, [], None, None, None, None, print_script=True)
    assert texts[0].startswith("#!") and texts[1].startswith("# submitted as: sbatch --parsable")
    assert not (tmp_path / "run").exists()
    assert any(o.startswith("slurm.") for o in profile_overrides("jean-zay"))
    with pytest.raises(ConfigError, match="--profile nowhere: no such file or profile"):
        profile_overrides("nowhere")


def test_bloom_176b_on_jean_zay_is_tr11s_recipe():
    """The values of bigscience-workshop/bigscience ``train/tr11-176B-ml/tr11-176B-ml.slurm``, its batch-size
    ramp-up included (``--rampup-batch-size 192 16 9_765_625``, GLOBAL_BATCH_SIZE=2048) and its LR schedule in
    samples; TRAIN_SAMPLES in iterations as Megatron's ``update_train_iters`` counts them through the ramp-up."""
    from trainer.data.schedule import consumed_after
    cfg = bloom_176b_on_jean_zay()
    t, p, m = cfg.train, cfg.parallel, cfg.model
    assert (p.tp, p.pp, p.dp, t.micro_batch_size, t.global_batch_size) == (4, 12, 8, 2, 2048)
    assert t.rampup_batch_size == [192, 16, 9_765_625]  # RAMPUP_BATCH_SIZE
    assert (m.hidden_size, m.num_layers, m.num_attention_heads, t.seq_length) == (14336, 70, 112, 2048)
    assert (t.lr, t.min_lr, t.adam_beta1, t.adam_beta2, t.weight_decay, t.clip_grad, t.seed) == \
        (6e-5, 6e-6, 0.9, 0.95, 0.1, 1.0, 42)
    assert (t.lr_warmup_samples, t.lr_decay_samples, t.lr_decay_style) == (183_105, 200_000_000, "cosine")
    assert t.train_steps == 115_311  # the 12,658 steps of the ramp, then 102,653 full batches
    assert consumed_after(0, t.train_steps, 2048, t.rampup_batch_size) <= 220_000_000 < \
        consumed_after(0, t.train_steps + 1, 2048, t.rampup_batch_size)  # TRAIN_SAMPLES, whole batches
    config_mod.validate(cfg)  # 192 and 16 are multiples of micro-batch 2 x DP 8
    assert (t.save_interval, t.eval_interval, t.eval_iters) == (100, 1000, 1)
    assert t.sync_tp_duplicated and p.activation_checkpointing and t.precision == "bf16"
    assert m.init_std == 0.0048 and cfg.padded_vocab_size == 250880
    script, _ = rendered(cfg, "/runs/a", "/code")
    lines = script.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    sbatch = [line for line in lines[:first_command] if line.startswith("#SBATCH ")]
    for option in ("--nodes=48", "--ntasks-per-node=1", "--cpus-per-task=64", "--hint=nomultithread",
                   "--gres=gpu:8", "--time=20:00:00", "--account=six@a100"):
        assert f"#SBATCH {option}" in sbatch  # a bare `sbatch RUN/slurm/job.sbatch` gets the resources
    assert "export CUDA_LAUNCH_BLOCKING=1" in lines and any(line.startswith("export TORCHELASTIC_ERROR_FILE=")
                                                           for line in lines)
    assert any(line.startswith("srun ") and " --wait=60 " in line for line in lines)
    setup, modules = lines.index('source "$six_ALL_CCFRWORK/start-tr11-176B-ml"'), \
        next(i for i, line in enumerate(lines) if line.startswith("module load"))
    assert setup < modules  # the start script may `module purge`


def test_slurm_env_entries_are_name_value_pairs():
    s = config_mod.SlurmConfig(env="CUDA_LAUNCH_BLOCKING=1, NCCL_IB_TIMEOUT=22")
    assert render.profile_env(s) == {"CUDA_LAUNCH_BLOCKING": "1", "NCCL_IB_TIMEOUT": "22"}
    for bad in ("CUDA_LAUNCH_BLOCKING", "1X=2", "A B=1"):
        with pytest.raises(config_mod.ConfigError, match="slurm.env"):
            render.profile_env(config_mod.SlurmConfig(env=bad))


def test_a_value_sbatch_would_split_stays_off_the_directive_lines():
    lines = render.sbatch_directives(["--nodes=2", "--output=/runs/my run/logs/slurm-%j.out",
                                      "--job-name=it's"])
    assert lines[0] == "#SBATCH --nodes=2"
    assert all(not line.startswith("#SBATCH") for line in lines[1:])
    assert lines[1] == "# (--output is given on sbatch's command line: its value has a blank or a quote)"
