"""README.md as a newcomer reads it: the Python snippet runs as written, and the daemon's
commands (`tickwire run` on the example config, `simulate`, `status`, `signals --follow`, SIGTERM)
work as written, from the repository root, with the relative config path the README uses."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block(after: str, lang: str) -> str:
    """The first fenced ``lang`` block after the heading ``after``."""
    rest = README[README.index(after):]
    m = re.search(rf"```{lang}\n(.*?)```", rest, re.S)
    assert m, f"no {lang} block after {after!r}"
    return m.group(1)


def test_readme_python_snippet_runs_as_written(tmp_path):
    code = _block("## The pieces, from Python", "python")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_dev_help_and_unknown_command():
    out = subprocess.run([str(ROOT / "dev")], capture_output=True, text=True)
    assert out.returncode == 0 and "TICKWIRE_VENV" in out.stdout           # the whole help, to its last line
    out = subprocess.run([str(ROOT / "dev"), "frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown command 'frobnicate'" in out.stderr


@pytest.mark.integration
def test_readme_daemon_commands_work_as_written(tmp_path):
    """The four lines of "The daemon", run from the repository root as written (`...` filled
    with the same config); the example config's state goes to the checkout's tickwire-data/."""
    lines = [ln.split("#")[0].strip() for ln in _block("## The daemon", "sh").splitlines() if ln.strip()]
    run, sig, status, sim = lines
    config = "engine/tickwire.example.toml"
    assert run == f"tickwire run --config {config}"
    sig, status = sig.replace("...", config), status.replace("...", config)
    state = ROOT / "tickwire-data"
    for sub in ("example", "store"):
        if (state / sub).exists() and not os.environ.get("CI"):
            pytest.skip(f"{state / sub} exists: a daemon of the example config may be running here")
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen(run.split(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    follower = None
    try:
        end = time.monotonic() + 60
        while not (state / "example" / "metrics.url").exists():
            assert daemon.poll() is None and time.monotonic() < end, (tmp_path / "daemon.log").read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(1)
        follower = subprocess.Popen(sig.split(), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        out = subprocess.run(sim.split() + ["--events", "200000", "--wait-subscribers", "10", "--linger", "2",
                                            "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and "done: 200,000 events" in out.stdout, out.stdout + out.stderr
        st = subprocess.run(status.split(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert st.returncode == 0 and "history:" in st.stdout and "Traceback" not in st.stderr, st.stderr
        # `tickwire status | head -2`: a closed pipe is no error
        piped = subprocess.run(f"{status} | head -2", shell=True, cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=30)
        assert "Traceback" not in piped.stderr and len(piped.stdout.splitlines()) == 2
    finally:
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=90)
        log.close()
    assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    # the follower ends by itself once the daemon has stopped
    got, err = follower.communicate(timeout=30)
    assert follower.returncode == 0 and "stopped" in err
    assert len([ln for ln in got.splitlines() if ln.startswith("{")]) > 0
    code = ("from tickwire.engine.store import Store\n"
            f"s = Store.open('chdb://{state / 'store'}')\n"
            "print(s.client.query('SELECT count(), uniqExact(channel, seq) FROM tickwire.ticks').result_rows[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(200000, 200000)"
    assert not (ROOT / "engine" / "tickwire-data").exists()        # no state inside the sources
    shutil.rmtree(state / "example", ignore_errors=True)
    shutil.rmtree(state / "store", ignore_errors=True)
