"""Every argument that reaches a remote shell is quoted: random hostile strings come back as data."""

import random
import subprocess

import pytest

from launcher.remote import parse_host, remote_command
from launcher.slurm import render

PIECES = [" ", "'", '"', ";", "$(touch PWNED)", "`touch PWNED`", "\n", "\\", "&", "|", ">", "*", "$HOME", "#",
          "--x", "é", "\t", "!", "{a,b}", "~"]


def hostile(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES + ["a", "b"]) for _ in range(rng.randint(0, 8)))


@pytest.mark.parametrize("seed", range(5))
def test_remote_command_round_trips_hostile_arguments_through_a_real_shell(seed, tmp_path):
    rng = random.Random(seed)
    args = [hostile(rng) for _ in range(40)]
    env = {"V": hostile(rng)}
    command = remote_command(["printf", "%s\\0", *args], env=env)
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split("\0")[:-1] == args
    assert not list(tmp_path.iterdir())  # nothing was executed


def test_sbatch_argv_over_ssh_is_one_word_per_option(tmp_path):
    from launcher import plan
    evil = "acct; touch PWNED $(touch PWNED) `x` 'q\""
    cfg = plan.fresh_config("tiny", None, ["data.source=synthetic", f"slurm.account={evil}",
                                           f"slurm.partition={evil}"])
    argv = render.submit_argv(render.sbatch_options(cfg, f"/r {evil}", evil), f"/r {evil}/job.sbatch")
    done = subprocess.run(["bash", "-c", remote_command(["printf", "%s\\0", *argv[1:]])], cwd=tmp_path,
                          capture_output=True)
    assert done.stdout.decode().split("\0")[:-1] == argv[1:]
    assert f"--account={evil}" in argv and not list(tmp_path.iterdir())


@pytest.mark.parametrize("spec, expected", [("alice@login:2222", ("alice", "login", 2222)),
                                            ("login", (None, "login", 22)), ("a@b@host", ("a@b", "host", 22))])
def test_parse_host(spec, expected):
    assert parse_host(spec) == expected


def test_parse_host_refuses_a_bad_port():
    with pytest.raises(ValueError, match="port"):
        parse_host("a@host:ssh")
