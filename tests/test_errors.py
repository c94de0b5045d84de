"""Issue 14: every mistake at the command line or at daemon start ends with one line on
stderr naming what was wrong, and exit status 2, with nothing started."""

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tickwire.engine.config import to_toml
from tickwire.engine.demo import demo_raw_config

PY = sys.executable


def tickwire(*argv, timeout=60):
    return subprocess.run([PY, "-m", "tickwire", *map(str, argv)], capture_output=True, text=True, timeout=timeout)


def one_line(res, fragment):
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert res.stderr.strip().count("\n") == 0 and fragment in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_config_path_that_is_a_directory_or_binary(tmp_path):
    one_line(tickwire("run", "--config", tmp_path), "expected a TOML file, got a directory")
    binary = tmp_path / "tw.toml"
    binary.write_bytes(b"\x00\xff\xfe\x89PNG\r\n")
    one_line(tickwire("status", "--config", binary), "expected a UTF-8 TOML text file")
    one_line(tickwire("signals", "--config", tmp_path), "expected a TOML file, got a directory")


@pytest.mark.parametrize("argv, fragment", [
    (["--drop", "2"], "--drop: expected a probability from 0 to 1, got 2.0"),
    (["--rate", "-5"], "--rate: expected a number >= 0 (0: as fast as possible), got -5.0"),
    (["--batch", "0"], "--batch: expected an integer >= 1, got 0"),
    (["--channels", "0"], "--channels: expected an integer >= 1, got 0"),
])
def test_simulate_refuses_bad_arguments(tmp_path, argv, fragment):
    # what the old code did with them: publish (10 events, quickly) and exit 0
    res = tickwire("simulate", "--endpoint", f"ipc://{tmp_path}/f", "--snapshot", "none", "--events", "10",
                   "--linger", "0", "--heartbeat", "0", "--quiet", *argv)
    one_line(res, fragment)


def daemon_config(tmp_path, edit, run="bad"):
    raw = demo_raw_config(tmp_path / "state", run=run)
    edit(raw)
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(raw))
    return path


@pytest.mark.parametrize("edit, fragment", [
    (lambda raw: raw["metrics"].update(host="no-such-host.invalid"), "metrics.host: 'no-such-host.invalid' does not resolve"),
    (lambda raw: raw["daemon"].update(log_file="/nonexistent-dir/tw.log"), "daemon.log_file: cannot write /nonexistent-dir/tw.log"),
    (lambda raw: raw["rings"].update(ticks_capacity=1 << 32), "GiB of shared memory, but /dev/shm has"),
])
def test_daemon_start_failures_are_one_line(tmp_path, edit, fragment):
    one_line(tickwire("run", "--config", daemon_config(tmp_path, edit), "--duration", "2"), fragment)
    assert not (tmp_path / "state" / "bad").exists()            # nothing started
    assert not list(Path("/dev/shm").glob("tickwire-bad-*"))       # no ring made


def test_metrics_port_in_use(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        port = s.getsockname()[1]
        path = daemon_config(tmp_path, lambda raw: raw["metrics"].update(port=port), run="busyport")
        one_line(tickwire("run", "--config", path, "--duration", "2"), f"metrics.port: cannot serve metrics on 127.0.0.1:{port}")
    finally:
        s.close()
    assert not list(Path("/dev/shm").glob("tickwire-busyport-*"))


def test_state_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("")
    path = daemon_config(tmp_path, lambda raw: raw["daemon"].update(state_dir=str(tmp_path / "afile" / "sub")))
    one_line(tickwire("run", "--config", path, "--duration", "2"), "daemon.state_dir: cannot create")
    path = daemon_config(tmp_path, lambda raw: raw["daemon"].update(state_dir=str(tmp_path / "afile")))
    one_line(tickwire("run", "--config", path, "--duration", "2"), "daemon.state_dir: expected a directory")


def test_a_second_demo_refuses_to_start(tmp_path):
    from tickwire.engine.supervisor import _try_lock

    fd = _try_lock("/tmp/tickwire-demo.lock")
    if fd is None:
        pytest.skip("a demo runs on this machine")
    try:
        res = tickwire("demo", "--duration", "1", "--data-dir", tmp_path / "data", timeout=120)
    finally:
        os.close(fd)
    one_line(res, f"another tickwire demo runs (pid {os.getpid()}")
    assert not (tmp_path / "data").exists()


def test_sighup_names_the_keys_it_cannot_apply(tmp_path, caplog):
    from tickwire.engine import config as configmod
    from tickwire.engine.supervisor import Supervisor

    raw = demo_raw_config(tmp_path / "state", run="hup")
    path = tmp_path / "hup.toml"
    path.write_text(to_toml(raw))
    sup = Supervisor(configmod.load(path), path)
    raw["rings"]["ticks_capacity"] = 1 << 21
    raw["rules"][0].update(enter=4.5, exit=2.0)
    path.write_text(to_toml(raw))
    with caplog.at_level(logging.INFO, logger="tickwire.supervisor"):
        sup.reload()
    assert "rings.ticks_capacity changed: needs a restart; not applied" in caplog.text
    assert sup.cfg.rings.ticks_capacity == 1 << 20              # still what the rings were made with
    assert (sup.cfg.rules[0].enter, sup.cfg.rules[0].exit) == (4.5, 2.0)


def test_an_ipc_endpoint_in_a_world_writable_directory_is_warned_about(tmp_path):
    from tickwire.engine.supervisor import shared_endpoint_warnings

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    got = shared_endpoint_warnings([f"ipc://{private}/feed", f"ipc://{shared}/feed", "tcp://127.0.0.1:5555"])
    assert len(got) == 1 and f"ipc://{shared}/feed" in got[0] and "every local user can write" in got[0]


def test_default_endpoints_are_in_a_private_directory_and_a_squatted_one_is_refused(tmp_path, monkeypatch):
    """With no endpoints configured, the daemon and `tickwire simulate` meet in a directory only
    this user can write; one that exists open to others (another user made it first) is refused
    with one line, by the config and by the simulator."""
    from tickwire.engine import config as cfgmod

    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    raw = {"instruments": [{"id": 0, "symbol": "X", "tick_size": "0.01", "lot_size": "0.001"}],
           "daemon": {"state_dir": str(tmp_path / "state")}}
    path = tmp_path / "c.toml"
    path.write_text(cfgmod.to_toml(raw))
    cfg = cfgmod.load(path)
    assert cfg.feeds.endpoints == (f"ipc://{run}/tickwire/feed",)
    assert cfg.feeds.snapshot == f"ipc://{run}/tickwire/snapshot"
    assert (run / "tickwire").stat().st_mode & 0o777 == 0o700
    (run / "tickwire").chmod(0o777)                          # as if another user had made it first
    with pytest.raises(cfgmod.ConfigError, match="not a private directory of yours"):
        cfgmod.load(path)
    res = tickwire("simulate", "--events", "10")
    one_line(res, "is not a private directory of yours")
