"""The suite fails a test that leaves a process of ours running (tests/conftest.py, tests/procguard.py)."""

import os
import subprocess
import sys
import time

from tests import procguard

pytest_plugins = ["pytester"]

LEAKY = '''
import subprocess, sys
def test_leaks():
    # a "rank" in its own session, as torchrun starts them, never waited for
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", "trainer.train"],
                     start_new_session=True)

def test_cleans_up():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "trainer.train"])
    p.kill()
    p.wait()

def test_other_commands_are_not_ours():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
'''


def test_a_test_that_leaks_a_rank_fails_naming_it_and_the_rank_is_killed(pytester):
    pytester.makeconftest(f"import sys; sys.path.insert(0, {str(procguard.__file__.rsplit('/tests/', 1)[0])!r})\n"
                          "from tests.conftest import no_process_left_behind  # noqa: F401\n")
    pytester.makepyfile(test_leaky=LEAKY)
    started = procguard.now_ticks()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaks*", "*left running (killed): pid *trainer.train*"])
    time.sleep(0.2)
    assert procguard.left_running(started, procguard.session_marker()) == {}  # it was killed, not just named


def test_owned_and_other_sessions_processes_are_skipped():
    since = procguard.now_ticks()
    cmd = [sys.executable, "-c", "import time; time.sleep(60)", "trainer.train"]
    owned = subprocess.Popen(cmd)
    foreign = subprocess.Popen(cmd, env={**os.environ, procguard.MARKER: "someone-else"})
    try:
        time.sleep(0.2)
        marker = procguard.session_marker()
        assert set(procguard.left_running(since, marker)) == {owned.pid}
        procguard.own(owned.pid)
        assert procguard.left_running(since, marker) == {}
        assert procguard.left_running(procguard.now_ticks() + 100, marker) == {}  # started before: not the test's
    finally:
        procguard.OWNED.discard(owned.pid)
        for proc in (owned, foreign):
            proc.kill()
            proc.wait()
