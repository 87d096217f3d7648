"""The local launcher's command (an argument list, never a shell string) and the CLI's error contract."""

import subprocess
import sys

import pytest

from bigops.cli.main import main
from launcher.local import rank_command, rank_env
from launcher.plan import resumed_config
from trainer import config as c


def test_rank_command_is_an_argument_list_with_hostile_paths_kept_whole():
    hostile = "/tmp/run; rm -rf ~ $(reboot)"
    cmd = rank_command(hostile, 4, 29500, ["--save-interval", "5"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in cmd and "--master-addr=127.0.0.1" in cmd
    assert cmd[cmd.index("--run-dir") + 1] == hostile


def test_rank_env_shares_the_cores():
    env = rank_env(4, base={})
    assert int(env["OMP_NUM_THREADS"]) >= 1
    assert rank_env(4, base={"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"


def test_resume_refuses_a_layout_change_but_allows_more_steps():
    from launcher.plan import fresh_config
    stored = fresh_config("tiny", None, ["train.train_steps=100"])
    resumed = resumed_config(stored, ["train.train_steps=500"])
    assert resumed.train.train_steps == 500 and resumed.train.lr_decay_steps == 100  # same LR schedule
    from launcher.plan import LayoutChange
    with pytest.raises(LayoutChange, match=r"asked for TP 1 x PP 2 x DP 2: reshape its checkpoint first: "
                                           r"bigops ckpt reshape runs/x --tp 1 --pp 2 --dp 2") as change:
        resumed_config(stored, ["parallel.tp=1", "parallel.dp=2"], "runs/x")
    assert change.value.target == (1, 2, 2)
    with pytest.raises(c.ConfigError, match="model.num_layers=3 differs") as mixed:
        resumed_config(stored, ["parallel.tp=1", "model.num_layers=3"])  # not a layout change alone
    assert not isinstance(mixed.value, LayoutChange)
    with pytest.raises(c.ConfigError, match="model.hidden_size=128 differs"):
        resumed_config(stored, ["model.hidden_size=128"])
    with pytest.raises(c.ConfigError, match="data.source=synthetic differs from the run's data.source=stdlib"):
        resumed_config(stored, ["data.source=synthetic"])


def test_init_hf_takes_the_model_shape_from_the_checkpoint(hf_model_dir):
    from launcher.plan import fresh_config
    from trainer.hf import read_hf_config
    hf = read_hf_config(hf_model_dir(num_heads=6, hidden=48, layers=3))
    cfg = fresh_config("tiny", None, ["model.hidden_dropout=0.1"], hf_config=hf)
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_attention_heads) == (48, 3, 6)
    assert cfg.model.hidden_dropout == 0.1 and cfg.train.precision == "fp32"
    with pytest.raises(c.ConfigError, match="model.num_layers=5 but the Hugging Face checkpoint has 3"):
        fresh_config("tiny", None, ["model.num_layers=5"], hf_config=hf)


def test_version_and_help(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("bigops 0.1.0 (torch ")
    assert main(["--help"]) == 0
    assert "launch" in capsys.readouterr().out


@pytest.mark.parametrize("args,code,message", [
    (["launch", "--tp", "3"], 2, "error: parallel.tp=3 does not divide model.num_attention_heads=4"),
    (["launch", "--set", "train.global_batch_size=10"], 2, "train.global_batch_size=10 is not a multiple"),
    (["launch", "--preset", "bloom-3b"], 2, "error: unknown preset 'bloom-3b'"),
    (["launch", "--set", "oops"], 2, "is not of the form section.key=value"),
    (["launch", "--resume"], 2, "has no checkpoint to resume from"),
    (["launch", "--init-hf", "/nonexistent"], 2, "has no config.json"),
    (["ckpt", "export-hf", "/nonexistent/run", "/tmp/x"], 3, "error: /nonexistent/run is not a directory"),
    (["ckpt", "export-hf", "RUN", "/tmp/x"], 3, "has no checkpoint yet"),
    (["ckpt", "export-hf", "RUN", "/tmp/x", "--dtype", "int8"], 2, "'int8' is not one of 'auto', 'fp32'"),
    (["surgery", "RUN", "--sync-layernorm", "--method", "median"], 2, "'median' is not one of 'mean', 'rank0'"),
    (["alerts", "test", "RUN", "--severity", "loud"], 2, "'loud' is not one of 'info', 'warning', 'critical'"),
    (["launch", "--bogus"], 2, "No such option"),
])
def test_bad_input_is_one_line_and_an_exit_code(args, code, message, tmp_path):
    args = [str(tmp_path) if a == "RUN" else a for a in args]
    if args[0] == "launch":
        args += ["--run-dir", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, "-m", "bigops.cli.main", *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_launch_plan_applies_the_resume_rules(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from launcher.plan import fresh_config, launch_plan
    from trainer import checkpoint as ckpt
    from trainer.rundir import RunDir
    run = RunDir(tmp_path / "run")
    fresh = launch_plan(run, "tiny", None, ["train.train_steps=7"])
    assert not fresh.resume and fresh.resumable is None and fresh.cfg.train.train_steps == 7
    with pytest.raises(c.ConfigError, match="has no checkpoint to resume from"):
        launch_plan(run, "tiny", None, [], resume=True)

    run.root.mkdir()
    run.run_toml.write_text(c.dumps_toml(fresh_config("tiny", None, ["train.train_steps=7"])))
    found = SimpleNamespace(tag="global_step7", fell_back_from=None)
    monkeypatch.setattr(ckpt, "find_resumable", lambda r, hashes: found)
    resumed = launch_plan(run, "bloom-560m", None, ["train.train_steps=20"])  # the preset is the stored run's
    assert resumed.resume and resumed.resumable is found
    assert (resumed.cfg.train.train_steps, resumed.cfg.model.hidden_size) == (20, fresh.cfg.model.hidden_size)
    with pytest.raises(c.ConfigError, match="already holds checkpoints"):
        launch_plan(run, "tiny", None, [], resume=False)
    with pytest.raises(c.ConfigError, match="--init-hf only applies to a new run"):
        launch_plan(run, "tiny", None, [], init_hf=tmp_path)
