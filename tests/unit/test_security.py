"""Security review, as tests: host keys, shells, listening addresses, secrets, torch.load, permissions, and
hostile telemetry / control / checkpoint files."""

import ast
import json
import os
import re
import shlex
import socket
import stat
import time
from pathlib import Path

import pytest

from trainer.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("bigops", "trainer", "launcher", "benchmarks", "scripts")


def sources():
    for folder in CODE_DIRS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def calls(path: Path):
    """(node, dotted name) of every call in a Python file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


# ------------------------------------------------------------------------------------------------ shells
def test_no_shell_anywhere_in_the_code():
    found = []
    for path in sources():
        for node, name in calls(path):
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "os.execl",
                        "commands.getoutput"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} shell=")
        if re.search(r"shell\s*=\s*True", path.read_text()):
            found.append(f"{path.relative_to(ROOT)}: shell=True")
    assert not found, found


HOSTILE = ["a b", "$(reboot)", "`id`", "x; rm -rf /", "a'b", 'a"b', "|cat", "../../etc/passwd", "\nnewline",
           "&& true", "*", "~root", "${HOME}", "-o ProxyCommand=sh"]


@pytest.mark.parametrize("word", HOSTILE)
def test_remote_commands_quote_every_word(word):
    remote = pytest.importorskip("launcher.remote")
    line = remote.remote_command(["sbatch", "--job-name", word, f"/runs/{word}/job.sbatch"],
                                 env={"BIGOPS_RUN": word})
    assert shlex.split(line) == ["env", f"BIGOPS_RUN={word}", "sbatch", "--job-name", word, f"/runs/{word}/job.sbatch"]


# ------------------------------------------------------------------------------------------------ SSH
def test_ssh_host_keys_are_always_checked():
    offenders = [f"{p.relative_to(ROOT)}" for p in sources() if "AutoAddPolicy" in p.read_text()
                 or "WarningPolicy" in p.read_text()]
    assert not offenders, offenders
    remote = ROOT / "launcher" / "remote.py"
    if not remote.exists():
        pytest.skip("no launcher/remote.py")
    policies = [ast.unparse(n.args[0]) for n, name in calls(remote) if name.endswith("set_missing_host_key_policy")]
    assert policies and all(p == "paramiko.RejectPolicy()" for p in policies), policies


def test_ssh_refuses_a_host_whose_key_is_not_known(tmp_path):
    remote = pytest.importorskip("launcher.remote")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    import threading

    import paramiko

    def serve():  # a real SSH server transport with a fresh host key nobody knows
        conn, _ = server.accept()
        transport = paramiko.Transport(conn)
        transport.add_server_key(paramiko.RSAKey.generate(1024))
        try:
            transport.start_server(server=paramiko.ServerInterface())
            time.sleep(2)
        except Exception:  # noqa: BLE001 - the client hangs up: that is the point
            pass
        finally:
            transport.close()
    threading.Thread(target=serve, daemon=True).start()
    known = tmp_path / "known_hosts"
    known.write_text("")
    runner = remote.SSHRunner("127.0.0.1", port=port, known_hosts=str(known), key_file=str(tmp_path / "nokey"),
                              timeout=5)
    with pytest.raises(remote.HostKeyError):
        runner.connect()
    server.close()


# ------------------------------------------------------------------------------------------- listening
def test_http_endpoints_bind_localhost_by_default():
    import inspect

    from bigops.cli import watch
    from bigops.metrics import exporter
    assert inspect.signature(exporter.serve).parameters["address"].default == "127.0.0.1"
    assert inspect.signature(watch.watch).parameters["metrics_address"].default == "127.0.0.1"
    wide = []
    for path in sources():
        text = path.read_text()
        for pattern in (r"['\"]0\.0\.0\.0['\"]", r"['\"]::['\"]", r"bind\(\(\s*['\"]['\"]"):
            if re.search(pattern, text):
                wide.append(f"{path.relative_to(ROOT)}: {pattern}")
        for node, name in calls(path):
            if name.endswith(("start_http_server", "HTTPServer")) and path.name != "exporter.py":
                wide.append(f"{path.relative_to(ROOT)}:{node.lineno} {name} (check its address)") \
                    if "127.0.0.1" not in ast.unparse(node) else None
    assert not wide, wide


def test_metrics_server_listens_on_loopback_only():
    from bigops.metrics.exporter import RunCollector, serve
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve(RunCollector("sec"), port)
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    local = [line.split()[1] for line in listening if line.split()[3] == "0A"]
    assert f"0100007F:{port:04X}" in local and f"00000000:{port:04X}" not in local


# ---------------------------------------------------------------------------------------------- secrets
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_secrets_file_readable_by_others_is_refused(tmp_path, mode):
    from bigops.notify.secrets import SecretError, load_secrets_file
    path = tmp_path / "secrets"
    path.write_text("HOOK=https://hooks.example/T0/SECRET\n")
    path.chmod(mode)
    with pytest.raises(SecretError, match="chmod 600"):
        load_secrets_file(path)
    path.chmod(0o600)
    assert load_secrets_file(path) == {"HOOK": "https://hooks.example/T0/SECRET"}


def test_secrets_never_reach_events_logs_or_run_toml(tmp_path, monkeypatch):
    """A webhook URL (a secret: it authorises posting) and an SMTP password stay out of every file."""
    from bigops.notify.notifier import for_run
    from trainer.rundir import load_run_config
    from trainer import config as config_mod
    secret_hook = "http://127.0.0.1:9/hooks/T0123/SECRET-TOKEN-abc"  # port 9: refused, so errors get logged
    password = "hunter2-smtp-SECRET"
    secrets = tmp_path / "secrets"
    secrets.write_text(f"SMTP_PASS={password}\n")
    secrets.chmod(0o600)
    monkeypatch.setenv("SEC_HOOK", secret_hook)
    cfg = config_mod.resolve("tiny", overrides=["alerts.webhook_env=SEC_HOOK", "alerts.smtp_host=127.0.0.1",
                                                "alerts.smtp_port=9", "alerts.email_to=a@b",
                                                "alerts.smtp_user=u", "alerts.smtp_password_env=SMTP_PASS",
                                                f"alerts.secrets_file={secrets}", "alerts.retries=1"])
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.run_toml.write_text(config_mod.dumps_toml(cfg))
    notifier = for_run(run, load_run_config(run, missing_ok=True).alerts)
    from bigops.watchdog.actions import record_action
    record_action(run, notifier, "restart", f"crash (reason mentions {secret_hook})", "relaunching", "warning")
    notifier.drain(10)
    everything = "".join(p.read_text(errors="replace") for p in run.root.rglob("*") if p.is_file())
    results = [json.loads(line) for line in (run.root / "events.jsonl").read_text().splitlines()
               if '"notification"' in line]
    assert results and all(r["outcome"] == "failed" for r in results)
    assert password not in everything
    assert "SECRET-TOKEN" not in run.run_toml.read_text() and "SEC_HOOK" in run.run_toml.read_text()
    from bigops.notify.secrets import redact
    assert redact(f"POST {secret_hook} failed", [secret_hook]) == "POST <redacted> failed"
    # the notifier's own error texts are redacted (the reason above is the caller's text, kept as given)
    assert all(secret_hook not in (r.get("error") or "") for r in results)


# ------------------------------------------------------------------------------------------- torch.load
def test_torch_load_is_weights_only_or_justified():
    """Every torch.load passes weights_only=True, or weights_only=False with a comment just above that
    starts with ``weights_only=False:`` and says why (the file is ours, verified, and holds non-tensor
    state). DeepSpeed's own loads (its optimizer files pickle DeepSpeed classes) are outside our code."""
    bad = []
    for path in sources():
        lines = path.read_text().splitlines()
        for node, name in calls(path):
            if not name.endswith("torch.load") and name != "load" or name == "load" and "torch" not in path.read_text():
                continue
            if not name.endswith("torch.load"):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            value = kw.get("weights_only")
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if isinstance(value, ast.Constant) and value.value is True:
                continue
            above = "\n".join(lines[max(0, node.lineno - 4):node.lineno - 1])
            if isinstance(value, ast.Constant) and value.value is False and "# weights_only=False:" in above:
                continue
            bad.append(where)
    assert not bad, f"torch.load without weights_only=True or a justification: {bad}"


# ------------------------------------------------------------------------------------------- permissions
def test_run_dirs_are_created_0750_and_others_get_nothing(tmp_path):
    from launcher.local import secure_run_dir
    from trainer.rundir import append_jsonl, atomic_write_text
    old = os.umask(0o002)  # a permissive umask, as on many clusters
    try:
        run = tmp_path / "run"
        secure_run_dir(run)
        for name in ("", "control", "checkpoints", "telemetry", "logs", "watchdog"):
            assert stat.S_IMODE((run / name).stat().st_mode) == 0o750, name
        append_jsonl(run / "events.jsonl", {"a": 1})
        assert stat.S_IMODE((run / "events.jsonl").stat().st_mode) == 0o640
        atomic_write_text(run / "control" / "kill-switch", "x")
        assert stat.S_IMODE((run / "control" / "kill-switch").stat().st_mode) == 0o600
        append_jsonl(run / "telemetry" / "new" / "x.jsonl", {"a": 1})
        assert stat.S_IMODE((run / "telemetry" / "new").stat().st_mode) == 0o750
        loose = tmp_path / "loose"
        loose.mkdir(mode=0o777)
        os.chmod(loose, 0o777)
        secure_run_dir(loose)  # an existing world-writable run folder is tightened
        assert stat.S_IMODE(loose.stat().st_mode) == 0o750
    finally:
        os.umask(old)


def test_atomic_writes_never_loosen_or_tighten_a_shared_parent(tmp_path):
    from trainer.rundir import atomic_write_text
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    atomic_write_text(shared / "file", "x")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


# -------------------------------------------------------------------------------- hostile files: watchdog
def write_run(root: Path) -> RunDir:
    run = RunDir(root)
    (root / "telemetry" / "heartbeat").mkdir(parents=True)
    return run


def test_watchdog_scan_rejects_huge_and_mistyped_records(tmp_path):
    from bigops.watchdog.scan import scan_run
    run = write_run(tmp_path)
    good = [json.dumps({"step": s, "loss": 3.0, "grad_norm": 1.0, "tokens_per_second": 100.0, "step_seconds": 0.1})
            for s in range(1, 30)]
    hostile = ["x" * (2 << 20), json.dumps({"step": "31", "loss": 1}), json.dumps({"step": True}), "[1, 2]",
               json.dumps({"step": 32, "loss": "NaN", "grad_norm": {"a": 1}, "tokens_per_second": [1]}),
               "\x00\xff not json", json.dumps({"step": 33, "loss": 1e308 * 10}), '{"step": 34, "loss": 1e999}']
    run.metrics.write_text("\n".join(good + hostile) + "\n")
    (run.telemetry / "heartbeat" / "rank-00000.json").write_text(json.dumps({"rank": "0", "time": "now"}))
    (run.telemetry / "heartbeat" / "rank-00001.json").write_text("{" * 100_000)
    (run.telemetry / "heartbeat" / "rank-00002.json").write_text(json.dumps({"rank": 2, "time": time.time(),
                                                                             "pid": "1; reboot", "phase": 7}))
    big = run.telemetry / "heartbeat" / "rank-00003.json"
    big.write_text(json.dumps({"rank": 3, "time": time.time(), "pad": "x" * (1 << 20)}))
    (run.root / "checkpoints").mkdir()
    (run.root / "checkpoints" / "latest").write_text("../../etc")
    findings, facts = scan_run(run)
    assert facts["malformed_records"] >= 4 and facts["last_record"]["step"] >= 29
    assert set(facts["heartbeats"]) <= {2}
    assert facts["checkpoint_step"] is None


def test_watchdog_state_and_approvals_survive_garbage(tmp_path):
    from bigops.watchdog.state import WatchState
    path = tmp_path / "watchdog" / "state.json"
    path.parent.mkdir()
    for junk in ("[]", "{", json.dumps({"restarts": "many", "handled": [1], "pending": 3}), "\xff\xfe"):
        path.write_text(junk, errors="surrogateescape") if False else path.write_bytes(junk.encode("latin-1"))
        state = WatchState.load(path)
        assert state.restarts == [] and state.handled == {} and state.pending == {}
        if path.exists():
            state.save()


def test_supervisor_ignores_heartbeats_naming_other_processes(tmp_path):
    """A heartbeat that names a live process that is not this run's rank (pid reuse, or a forged file)
    is never signalled by a restarted supervisor."""
    from bigops.watchdog.supervisor import Supervisor, _is_rank_of
    from trainer.config import RunConfig
    run = write_run(tmp_path)
    for rank, pid in enumerate([os.getpid(), 1, os.getppid()]):
        (run.telemetry / "heartbeat" / f"rank-{rank:05d}.json").write_text(json.dumps(
            {"rank": rank, "host": socket.gethostname(), "pid": pid, "step": 3, "phase": "step", "time": time.time()}))
    assert not _is_rank_of(os.getpid(), run)
    supervisor = Supervisor(run, RunConfig(), spawn=lambda: None, say=lambda line: None)
    assert supervisor.orphans() == {}


# ------------------------------------------------------------------------------ hostile files: control
def test_control_polling_rejects_hostile_skip_ranges(tmp_path, capsys):
    from trainer.control import MAX_CONTROL_FILE_BYTES, ControlState, parse_skip_ranges, poll_local
    for text in ("../../etc-1", "1-2; rm -rf /", '[["a", 1]]', "[[5, 1]]", "[1, 2]", '{"a": 1}', "-5-3",
                 "99999999999999999999999-1"):
        with pytest.raises(ValueError):
            parse_skip_ranges(text)
    control = tmp_path / "control"
    control.mkdir()
    state = ControlState(control)
    (control / "skip-ranges").write_text("0-8\n" + "#" * (MAX_CONTROL_FILE_BYTES + 1))
    assert poll_local(state, True)[3:6:2] == [0, 1] and state.skip_ranges == []  # refused: the run stops
    assert "larger than" in state.skip_error
    (control / "skip-ranges").unlink()
    outside = tmp_path / "elsewhere"
    outside.write_text("\xff\xfe\x00")
    (control / "skip-ranges").symlink_to(outside)
    assert poll_local(state, True)[3:6:2] == [0, 1] and state.skip_ranges == []


# --------------------------------------------------------------------------- hostile files: checkpoints
@pytest.mark.parametrize("tag", ["../../etc", "..", ".partial-global_step5", "/etc", "a/b", "x" * 200, "",
                                 "global_step5\n../x", "-rf"])
def test_checkpoint_tags_cannot_escape_the_checkpoints_folder(tmp_path, tag):
    from trainer import checkpoint as ckpt
    with pytest.raises(ckpt.CheckpointError):
        ckpt.check_tag(tag)
    run = RunDir(tmp_path)
    run.checkpoints.mkdir()
    run.latest.write_text(tag)
    if tag.strip():
        with pytest.raises(ckpt.CheckpointError, match="corrupt"):
            ckpt.find_resumable(run)


def test_checkpoint_tools_refuse_traversal_and_leave_symlink_targets_alone(tmp_path):
    from typer.testing import CliRunner

    from bigops.cli.main import app
    from trainer import checkpoint as ckpt
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.pt").write_bytes(b"keep me")
    (run.checkpoints / "global_step5").symlink_to(victim)  # a symlinked "checkpoint" pointing outside
    runner = CliRunner()
    for args in (["ckpt", "verify", str(run.root), "--tag", "../../etc"],
                 ["ckpt", "inspect", str(run.root), "--tag", "../victim"],
                 ["ckpt", "prune", str(run.root), "--keep-last", "0", "--yes"],
                 ["ckpt", "verify", str(run.root), "--tag", "global_step5"]):
        result = runner.invoke(app, args)
        assert result.exit_code != 0 or "precious" not in result.output, (args, result.output)
        assert not isinstance(result.exception, (AttributeError, TypeError, KeyError)), (args, result.exception)
    assert (victim / "precious.pt").read_bytes() == b"keep me"
    run.latest.write_text("global_step5\n")
    with pytest.raises(ckpt.CheckpointError):  # no manifest: never resumed from
        ckpt.find_resumable(run)
