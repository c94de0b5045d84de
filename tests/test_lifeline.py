"""Children that die with their parent (tickwire.engine.lifeline), with real processes: the
child binds itself, so the parent forks without a preexec_fn."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tickwire.engine import lifeline
from tickwire.engine.supervisor import _pid_alive

PY = sys.executable

CHILD = ("import os, sys, time\n"
         "from tickwire.engine import lifeline\n"
         "bound = lifeline.bind_to_parent()\n"
         "print(bound, os.environ.get(lifeline.ENV), flush=True)\n"
         "time.sleep(60)\n")


def _gone(pid, timeout=10.0):
    end = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_a_bound_child_gets_sigterm_when_its_parent_is_killed_with_sigkill():
    # the middle process starts the child bound to itself, reports its pid, then waits
    middle_code = ("import subprocess, sys, signal, time\n"
                   "from tickwire.engine import lifeline\n"
                   f"c = subprocess.Popen([sys.executable, '-c', {CHILD!r}], env=lifeline.child_env(signal.SIGTERM),"
                   " stdout=subprocess.PIPE, text=True)\n"
                   "print(c.pid, c.stdout.readline().strip(), flush=True)\n"
                   "time.sleep(60)\n")
    middle = subprocess.Popen([PY, "-c", middle_code], stdout=subprocess.PIPE, text=True)
    try:
        pid, bound, env_left = middle.stdout.readline().split()
        pid = int(pid)
        assert bound == "True" and env_left == "None"          # taken out: its own children are not bound
        middle.kill()
        middle.wait(timeout=10)
        assert _gone(pid), "the child outlived its parent's kill -9"
    finally:
        if middle.poll() is None:
            middle.kill()


def test_a_child_whose_parent_is_already_gone_stops_at_once():
    # TICKWIRE_DIE_WITH names a pid that is not the parent: as if the parent died before the prctl
    env = {**os.environ, lifeline.ENV: f"{os.getpid() + 1_000_000}:{int(signal.SIGTERM)}"}
    res = subprocess.run([PY, "-c", CHILD], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == -signal.SIGTERM and res.stdout == ""


def test_a_child_started_by_hand_is_not_bound():
    env = {k: v for k, v in os.environ.items() if k != lifeline.ENV}
    res = subprocess.run([PY, "-c", CHILD.replace("time.sleep(60)", "")], env=env, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.split() == ["False", "None"]


@pytest.mark.parametrize("value", ["12", "x:15", "1:999"])
def test_a_malformed_value_is_refused_naming_the_variable(value):
    env = {**os.environ, lifeline.ENV: value}
    res = subprocess.run([PY, "-c", CHILD], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and f"{lifeline.ENV}={value!r}" in res.stderr


@pytest.mark.parametrize("module", ["tickwire.engine.worker", "tickwire.engine.writer"])
def test_the_daemons_children_hold_a_stop_signal_from_their_first_lines(module):
    """A SIGTERM or SIGINT that reaches a worker or the writer while it imports (a daemon told to
    stop as it starts) is noted, not fatal: main() stops cleanly once it can."""
    code = (f"import os, runpy, signal\n"
            f"import sys; sys.argv = ['x', '--help']\n"
            f"try:\n"
            f"    runpy.run_module({module!r}, run_name='__main__')\n"
            f"except SystemExit:\n"
            f"    pass\n"
            f"os.kill(os.getpid(), signal.SIGTERM)\n"
            f"os.kill(os.getpid(), signal.SIGINT)\n"
            f"print('alive')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("alive"), out


def test_held_stop_signals_are_noted_in_order():
    code = ("import os, signal\nfrom tickwire.engine import lifeline\nheld = lifeline.hold_stop_signals()\n"
            "os.kill(os.getpid(), signal.SIGINT)\nos.kill(os.getpid(), signal.SIGTERM)\nprint(held)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"[{int(signal.SIGINT)}, {int(signal.SIGTERM)}]", out
