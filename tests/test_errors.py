"""Issue 14: every mistake at the command line or at daemon start ends with one line on
stderr naming what was wrong, and exit status 2, with nothing started."""

import logging
import os
import re
import socket
import subprocess
import sys
import time
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


def test_a_config_with_a_byte_order_mark_reads_as_without(tmp_path):
    """A UTF-8 byte-order mark, as some Windows editors write, read "Invalid statement (at line 1,
    column 1)"; it now reads as the same file without it (here: its first error, past line 1)."""
    bom = tmp_path / "tw.toml"
    bom.write_bytes(b"\xef\xbb\xbf[feeds]\nchannels = 2\n")
    one_line(tickwire("status", "--config", bom), "instruments: expected a non-empty array of tables")


def test_config_path_that_is_a_directory_or_binary(tmp_path):
    one_line(tickwire("run", "--config", tmp_path), "a directory, expected a TOML file")
    binary = tmp_path / "tw.toml"
    binary.write_bytes(b"\x00\xff\xfe\x89PNG\r\n")
    one_line(tickwire("status", "--config", binary), "expected a UTF-8 TOML text file")
    one_line(tickwire("signals", "--config", tmp_path), "a directory, expected a TOML file")


def test_a_named_file_that_is_a_pipe_too_large_or_too_deep_is_one_line(tmp_path):
    """Found by an adversarial pass: a config, a saved bench run or a latency log was read
    whatever it was: /dev/zero until memory ran out (12.9 GB in 8 s), a FIFO waited forever
    (run, status, plot, bench compare), 100,000 nested arrays were a RecursionError traceback.
    (Devices are not tried here: a regression would read /dev/zero without end.)"""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    with open(big, "wb") as fh:                  # sparse: 17 MiB of zeros that take no disk
        fh.truncate(17 << 20)
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    for argv in (["run", "--config"], ["status", "--config"], ["signals", "--config"],
                 ["replay", "--npy", tmp_path / "none.npy", "--config"]):
        one_line(tickwire(*argv, fifo, timeout=30), f"{fifo}: a pipe (FIFO), expected a TOML file")
        one_line(tickwire(*argv, big), f"{big}: 17,825,792 bytes, more than a TOML file holds")
        one_line(tickwire(*argv, deep), "nested too deeply")
    one_line(tickwire("plot", "latency", fifo, timeout=30), "a pipe (FIFO), expected a .hlog or .hgrm file")
    one_line(tickwire("bench", "compare", fifo, fifo, timeout=30), "a pipe (FIFO), expected a bench summary")
    deep.write_text("[" * 100_000 + "]" * 100_000)
    one_line(tickwire("bench", "compare", deep, deep), "not a tickwire bench summary")


@pytest.mark.parametrize("argv, fragment", [
    (["--drop", "2"], "--drop: expected a probability from 0 to 1, got 2.0"),
    (["--future-stamps", "-0.5"], "--future-stamps: expected a probability from 0 to 1, got -0.5"),
    (["--drop", "0.6", "--reorder", "0.6"], "--drop + --duplicate + --reorder: expected at most 1"),   # (a traceback)
    (["--rate", "-5"], "--rate: expected events per second from 0.001 to 1e10 (0: as fast as possible), got -5.0"),
    # tracebacks before (from libzmq, numpy, the instrument table, int() of an infinite time), or,
    # for -1 subscribers and a restart at -1 events, taken as if they meant something
    (["--rate", "1e-300"], "--rate: expected events per second from 0.001 to 1e10"),
    (["--sndhwm", "-1"], "--sndhwm: expected an integer from 0 to 2,147,483,647, got -1"),
    (["--instruments", "100000000"], "--instruments: expected an integer from 1 to 16,777,216, got 100000000"),
    (["--channels", "100000"], "--channels: expected an integer from 1 to 65,536, got 100000"),
    (["--seed", "-1"], "--seed: expected an integer from 0 to"),
    (["--subscribers", "-1"], "--subscribers: expected an integer >= 1, got -1"),
    (["--restart-at", "5", "--restart-at", "-1"], "--restart-at: expected a number of events >= 0, got -1"),
    (["--duration", "1e300"], "--duration: expected a number of seconds > 0 and at most 1e+09, got 1e+300"),
    (["--heartbeat", "1e300"], "--heartbeat: expected a number of seconds >= 0 and at most 1e+09, got 1e+300"),
    (["--batch", "0"], "--batch: expected an integer >= 1, got 0"),
    (["--channels", "0"], "--channels: expected an integer >= 1, got 0"),
    # accepted without a word before: -1 resting orders (taken as 1), 100,000 events a message
    # (every one refused by the receivers), a CPU this process may not use (an OSError traceback)
    (["--resting", "-1"], "--resting: expected an integer >= 1, got -1"),
    (["--batch", "100000"], "--batch: expected an integer from 1 to 4,096 (the receivers' per-message limit"),
    (["--cpu", str(max(os.sched_getaffinity(0)) + 1)], "--cpu: expected one of the CPUs this process may use"),
    (["--cpu", "-1"], "--cpu: expected one of the CPUs this process may use"),
])
def test_simulate_refuses_bad_arguments(tmp_path, argv, fragment):
    # what the old code did with them: publish (10 events, quickly) and exit 0
    res = tickwire("simulate", "--endpoint", f"ipc://{tmp_path}/f", "--snapshot", "none", "--events", "10",
                   "--linger", "0", "--heartbeat", "0", "--quiet", *argv)
    one_line(res, fragment)


def test_simulate_refuses_an_ipc_endpoint_naming_a_file(tmp_path):
    """libzmq's bind of ipc://PATH unlinks whatever is at PATH: `--endpoint ipc://FILE` deleted
    FILE and published (an adversarial pass). Refused, the file kept."""
    victim = tmp_path / "notes.txt"
    victim.write_text("keep me")
    for opt in ("--endpoint", "--snapshot"):
        argv = {"--endpoint": f"ipc://{tmp_path}/f", "--snapshot": f"ipc://{tmp_path}/s", opt: f"ipc://{victim}"}
        res = tickwire("simulate", *[x for kv in argv.items() for x in kv], "--events", "10", "--linger", "0",
                       "--quiet")
        one_line(res, "names a regular file, not a socket: binding there would delete it")
        assert victim.read_text() == "keep me"


def daemon_config(tmp_path, edit, run="bad"):
    raw = demo_raw_config(tmp_path / "state", run=run)
    edit(raw)
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(raw))
    return path


@pytest.mark.parametrize("edit, fragment", [
    (lambda raw: raw["metrics"].update(host="no-such-host.invalid"), "metrics.host: 'no-such-host.invalid' does not resolve"),
    (lambda raw: raw["daemon"].update(log_file="/nonexistent-dir/tw.log"), "daemon.log_file: cannot write /nonexistent-dir/tw.log"),
    (lambda raw: raw["rings"].update(ticks_capacity=1 << 32), "GiB of shared memory, but /dev/shm has "),
])
def test_daemon_start_failures_are_one_line(tmp_path, edit, fragment):
    one_line(tickwire("run", "--config", daemon_config(tmp_path, edit), "--duration", "2"), fragment)
    assert not (tmp_path / "state" / "bad").exists()            # nothing started
    assert not list(Path("/dev/shm").glob("tickwire-bad-*"))       # no ring made


def test_a_metrics_port_in_use_turns_metrics_off_not_the_daemon(tmp_path):
    """Found by an adversarial pass: any local user listening on metrics.port first kept the
    daemon from starting (exit 2), where the threat model says others must not stop it running.
    It starts now, metrics off: an ERROR line naming the port, the reason in supervisor.json,
    no metrics.url (a previous run's is removed: it would name the other process's port). An
    address that is not this machine's is still a start error."""
    import json

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        port = s.getsockname()[1]
        path = daemon_config(tmp_path, lambda raw: raw["metrics"].update(port=port), run="busyport")
        run_dir = tmp_path / "state" / "busyport"
        run_dir.mkdir(parents=True, mode=0o700)
        (run_dir / "metrics.url").write_text(f"http://127.0.0.1:{port}/metrics\n")     # a killed run's
        daemon = subprocess.Popen([PY, "-m", "tickwire", "run", "--config", str(path), "--duration", "30"],
                                  stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not (run_dir / "supervisor.json").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            st = tickwire("status", "--config", path)                # (while it runs)
            assert st.returncode == 1 and "runs with metrics off: metrics.port" in st.stderr, st.stderr
        finally:
            daemon.terminate()
            _, err = daemon.communicate(timeout=60)
        res = subprocess.CompletedProcess(daemon.args, daemon.returncode, "", err)
        assert res.returncode == 0, res.stderr[-3000:]
        errors = [line for line in res.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and f"metrics.port: 127.0.0.1:{port} is in use" in errors[0], res.stderr[-3000:]
        assert "metrics are OFF" in errors[0]
        assert not (run_dir / "metrics.url").exists()
        sup = json.loads((run_dir / "supervisor.json").read_text())
        assert f"127.0.0.1:{port} is in use" in sup["metrics_error"], sup
    finally:
        s.close()
    assert not list(Path("/dev/shm").glob("tickwire-busyport-*"))
    # an address of no interface here (TEST-NET-1): still one line, exit 2
    path = daemon_config(tmp_path, lambda raw: raw["metrics"].update(host="192.0.2.1"), run="noaddr")
    # (the address named, not the port: a newcomer's pass)
    one_line(tickwire("run", "--config", path, "--duration", "2"), "metrics.host: cannot serve metrics on 192.0.2.1")


def test_state_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("")
    path = daemon_config(tmp_path, lambda raw: raw["daemon"].update(state_dir=str(tmp_path / "afile" / "sub")))
    one_line(tickwire("run", "--config", path, "--duration", "2"), "daemon.state_dir: cannot create")
    path = daemon_config(tmp_path, lambda raw: raw["daemon"].update(state_dir=str(tmp_path / "afile")))
    one_line(tickwire("run", "--config", path, "--duration", "2"), "daemon.state_dir: expected a directory")


def test_a_run_directory_others_made_or_can_write_is_refused(tmp_path):
    """Found by an adversarial pass: under a shared state_dir, another user made the run directory
    first (0777, theirs). The daemon started: it followed their symlink planted as daemon.lock
    (writing its pid over the link's target), and a worker restarted later read the config.json
    they wrote and subscribed to their endpoint. Each case is now one line, exit 2, and nothing
    is written."""
    path = daemon_config(tmp_path, lambda raw: None, run="shared")
    state, run_dir = tmp_path / "state", tmp_path / "state" / "shared"
    run_dir.mkdir(parents=True)
    run_dir.chmod(0o777)                                     # anyone could have left files here
    one_line(tickwire("run", "--config", path, "--duration", "2"), f"the run directory {run_dir} is not yours alone")
    run_dir.chmod(0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (run_dir / "daemon.lock").symlink_to(victim)
    one_line(tickwire("run", "--config", path, "--duration", "2"), f"{run_dir / 'daemon.lock'} is a symlink")
    assert victim.read_text() == "keep me\n"
    (run_dir / "daemon.lock").unlink()
    state.chmod(0o777)                                       # anyone may rename the run directory away
    one_line(tickwire("run", "--config", path, "--duration", "2"), f"the directory that holds it {state} can be written by anyone")
    state.chmod(0o1777)                                      # as /tmp: sticky, so only the owner may
    store = state / "store"                                  # (the default store.dsn)
    store.mkdir(parents=True)
    store.chmod(0o777)                                       # the embedded store's directory likewise
    one_line(tickwire("run", "--config", path, "--duration", "2"), f"store.dsn: the store directory {store} is not yours alone")
    store.chmod(0o700)
    if os.geteuid() == 0:                                    # (a run directory of another user's)
        os.chown(run_dir, 65534, 65534)
        one_line(tickwire("run", "--config", path, "--duration", "2"), "owner uid 65534")
        os.chown(run_dir, 0, 0)
    res = tickwire("run", "--config", path, "--duration", "2")
    assert res.returncode == 0, res.stderr[-3000:]


def test_a_state_dir_a_group_or_another_user_can_replace_the_run_directory_in_is_refused(tmp_path):
    """Found by an adversarial pass: only the state directory's others-write bit was checked. A
    state_dir its group can write (0770), or one under such a directory, or another user's, let
    that user rename the run directory away and put one of theirs in its place (their symlinks
    in it: the workers, as root, wrote their status files through them). Each is one line naming
    the directory, its mode or owner, and what to do; exit 2."""
    if os.geteuid() != 0:
        pytest.skip("gives directories to another group (chown): run as root")
    grp = tmp_path / "grp"
    state = grp / "state"
    state.mkdir(parents=True)
    path = daemon_config(tmp_path, lambda raw: raw["daemon"].update(state_dir=str(state)), run="parents")
    os.chown(state, -1, 65534)                            # a group that holds other users (nogroup)
    os.chown(grp, -1, 65534)
    state.chmod(0o770)
    one_line(tickwire("run", "--config", path, "--duration", "2"),
             f"daemon.state_dir: the directory that holds it {state} can be written by its group (mode 0770, no "
             f"sticky bit)")
    state.chmod(0o755)
    grp.chmod(0o775)                                      # two levels up: it can rename state/ away
    one_line(tickwire("run", "--config", path, "--duration", "2"),
             f"daemon.state_dir: the directory above it {grp} can be written by its group (mode 0775")
    grp.chmod(0o755)
    os.chown(state, 65534, 65534)                        # (0755: only its owner can write it)
    one_line(tickwire("run", "--config", path, "--duration", "2"),
             f"the directory that holds it {state} belongs to another user (owner uid 65534")
    os.chown(state, 0, 0)
    os.chown(grp, -1, os.getegid())                      # a umask-002 checkout: group-writable by a
    grp.chmod(0o775)                                      # group of this user alone: accepted
    assert not list(Path("/dev/shm").glob("tickwire-parents-*"))
    res = tickwire("run", "--config", path, "--duration", "2")
    assert res.returncode == 0, res.stderr[-3000:]


def test_dir_problem_names_the_directory_and_accepts_a_private_one(tmp_path):
    from tickwire.engine.files import dir_problem

    d = tmp_path / "a" / "b"
    d.mkdir(parents=True, mode=0o700)
    assert dir_problem(d) is None
    (tmp_path / "link").symlink_to(d)                  # (a symlink of ours: followed, checked where it leads)
    assert dir_problem(tmp_path / "link") is None
    (tmp_path / "a").chmod(0o1777)                     # sticky, as /tmp: only b's owner may rename it
    assert dir_problem(d) is None
    if os.geteuid() == 0:
        os.chown(tmp_path / "a", -1, 65534)            # a group that holds others
        (tmp_path / "a").chmod(0o730)
        assert "can be written by its group" in dir_problem(tmp_path / "link")
        os.chown(tmp_path / "a", -1, 0)                # root's own group, root alone in it: as root's
        assert dir_problem(tmp_path / "link") is None
    (tmp_path / "a").chmod(0o755)
    d.chmod(0o702)
    assert "is not yours alone" in dir_problem(d) and "mode 0702" in dir_problem(d)
    if os.geteuid() == 0:
        d.chmod(0o720)
        assert dir_problem(d) is None                  # its group is root's alone
        os.chown(d, -1, 65534)
        assert "is not yours alone" in dir_problem(d) and "mode 0720" in dir_problem(d)
    with pytest.raises(OSError):
        dir_problem(tmp_path / "missing")


def test_an_hdr_dir_others_can_write_is_refused(tmp_path):
    """Found by an adversarial pass: metrics.hdr_dir had no ownership or permission check, and
    the workers opened their logs with open(path, 'w'): another user's symlink planted there as
    w0.hlog had a root daemon create or truncate its target."""
    hdr = tmp_path / "hdr"
    hdr.mkdir()
    hdr.chmod(0o777)
    path = daemon_config(tmp_path, lambda raw: raw["metrics"].update(hdr_dir=str(hdr)), run="hdrdir")
    one_line(tickwire("run", "--config", path, "--duration", "2"),
             f"metrics.hdr_dir: the HDR log directory {hdr} is not yours alone (owner uid {os.geteuid()}")
    if os.geteuid() == 0:
        hdr.chmod(0o755)
        os.chown(hdr, 65534, 65534)
        one_line(tickwire("run", "--config", path, "--duration", "2"), "is not yours alone (owner uid 65534")
        os.chown(hdr, 0, 0)
    assert not list(Path("/dev/shm").glob("tickwire-hdrdir-*"))
    new = tmp_path / "new" / "hdr"                     # made by the daemon: 0700, accepted
    path = daemon_config(tmp_path, lambda raw: raw["metrics"].update(hdr_dir=str(new)), run="hdrdir")
    res = tickwire("run", "--config", path, "--duration", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert new.stat().st_mode & 0o777 == 0o700 and (new / "w0.hlog").exists()


def test_a_log_file_that_is_a_symlink_or_in_a_directory_others_can_write_is_refused(tmp_path):
    """Found by an adversarial pass: daemon.log_file was opened following symlinks, in any
    directory: a link planted as the log file had the daemon (root) append its log to the link's
    target. Refused now (one line, exit 2, the target untouched), and so is a log directory that
    another user owns or that group or others can write."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    (logs / "tw.log").symlink_to(victim)
    path = daemon_config(tmp_path, lambda raw: raw["daemon"].update(log_file=str(logs / "tw.log"), log_level="info"),
                         run="logf")
    one_line(tickwire("run", "--config", path, "--duration", "2"),
             f"daemon.log_file: {logs / 'tw.log'} is a symlink: refusing to follow it")
    assert victim.read_text() == "keep me\n"
    (logs / "tw.log").unlink()
    logs.chmod(0o1777)
    one_line(tickwire("run", "--config", path, "--duration", "2"),
             f"daemon.log_file: the log directory {logs} is not yours alone")
    logs.chmod(0o700)
    if os.geteuid() == 0:
        os.chown(logs, 65534, 65534)
        one_line(tickwire("run", "--config", path, "--duration", "2"), "is not yours alone (owner uid 65534")
        os.chown(logs, 0, 0)
    assert not (logs / "tw.log").exists()
    res = tickwire("run", "--config", path, "--duration", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "supervisor INFO" in (logs / "tw.log").read_text() and victim.read_text() == "keep me\n"


def test_an_hdr_dir_that_cannot_be_written_is_a_start_error(tmp_path):
    # before: each worker failed with a NotADirectoryError traceback, restarted until the daemon gave up
    (tmp_path / "afile").write_text("")
    path = daemon_config(tmp_path, lambda raw: raw.setdefault("metrics", {}).update(hdr_dir=str(tmp_path / "afile" / "hdr")))
    one_line(tickwire("run", "--config", path, "--duration", "2"), "metrics.hdr_dir: cannot write")
    assert not list(Path("/dev/shm").glob("tickwire-bad-*"))       # no ring made


def test_signals_without_a_daemon_says_how_to_start_one(tmp_path):
    """It printed `[Errno 2] no ring named '...': '/dev/shm/...'`, where books, status and top say
    how to start a daemon."""
    path = daemon_config(tmp_path, lambda raw: None, run="idle")
    res = tickwire("signals", "--config", path)
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "no tickwire daemon is running for run 'idle'" in res.stderr and "tickwire run --config" in res.stderr
    assert "Errno" not in res.stderr and "Traceback" not in res.stderr
    # (an adversarial pass: --count -1 printed one signal of a running daemon and exited 0)
    one_line(tickwire("signals", "--config", path, "--count", "-1"), "--count: expected 0 (no limit) or more, got -1")


def test_a_lock_names_the_process_that_holds_it_not_what_its_file_says(tmp_path):
    """Found by an adversarial pass: two daemons started at once, the loser's line sometimes named
    the previous daemon (long gone) or pid 0: it read the file between the winner's flock and the
    winner's write of its pid. The holder comes from /proc/locks."""
    from tickwire.engine.supervisor import _lock_holder

    path = tmp_path / "daemon.lock"
    holder = subprocess.Popen([PY, "-c", f"from tickwire.engine.supervisor import _try_lock; import time; "
                               f"fd = _try_lock({str(path)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        path.write_text("1836\n")                                   # what the race left: a stale pid
        assert _lock_holder(path) == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert _lock_holder(path) == 1836                               # nobody holds it: the file's word


def test_a_start_is_not_refused_for_a_status_probe_of_its_lock(tmp_path):
    """A review: `tickwire status`, `signals` and `top` ask whether a daemon runs by taking its
    lock shared for a moment; a daemon starting at that instant refused, "another tickwire daemon
    runs" (220 of 2,000 starts beside a probing loop). A lock really held is still refused."""
    import multiprocessing

    from tickwire.engine.cli import _daemon_running
    from tickwire.engine.supervisor import _try_lock

    path = tmp_path / "daemon.lock"
    path.touch(mode=0o600)
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()

    def probe():
        while not stop.is_set():
            _daemon_running(tmp_path)

    prober = ctx.Process(target=probe, daemon=True)
    prober.start()
    try:
        time.sleep(0.2)
        refused = 0
        for _ in range(300):
            fd = _try_lock(path)
            if fd is None:
                refused += 1
            else:
                os.close(fd)
    finally:
        stop.set()
        prober.join(10)
    assert refused == 0
    held = _try_lock(path)
    try:
        assert _try_lock(path) is None
    finally:
        os.close(held)


def test_a_shared_lock_of_another_user_is_taken_read_only_and_a_symlink_never(tmp_path):
    """The demo's machine-wide lock (/tmp/tickwire-demo.lock): another user's file is locked as it
    is (a review: the uid check refused root's demo after any other user's, for good), its pid
    left alone; a symlink there is refused (a daemon followed one planted as daemon.lock)."""
    import fcntl

    from tickwire.engine.supervisor import _try_lock

    path = tmp_path / "demo.lock"
    path.write_text("123\n")
    path.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
        with pytest.raises(PermissionError):
            _try_lock(path)                              # a daemon's lock must be its own
    fd = _try_lock(path, shared=True)
    try:
        assert fd is not None and path.read_text() == "123\n"
        probe = os.open(path, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (flock: per open file, so this tells)
        os.close(probe)
    finally:
        os.close(fd)
    link = tmp_path / "link.lock"
    link.symlink_to(path)
    with pytest.raises(OSError):
        _try_lock(link, shared=True)
    assert path.read_text() == "123\n"


@pytest.mark.alone
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


def test_sighup_refuses_a_rule_changed_beyond_its_thresholds(tmp_path, caplog):
    """Found by an adversarial pass: thresholds reload by position, so two zscore rules for
    instruments [0] and [1] swapped in the file had each instrument run with the other's
    threshold ("needs a restart; not applied" for the instruments, "rule thresholds reloaded")."""
    from tickwire.engine import config as configmod
    from tickwire.engine.supervisor import Supervisor

    raw = demo_raw_config(tmp_path / "state", run="hup2")
    raw["rules"] = [{"kind": "zscore", "enter": 2.5, "exit": 1.0, "instruments": [0]},
                    {"kind": "zscore", "enter": 9.0, "exit": 1.0, "instruments": [1]}]
    path = tmp_path / "hup.toml"
    path.write_text(to_toml(raw))
    sup = Supervisor(configmod.load(path), path)
    raw["rules"].reverse()
    path.write_text(to_toml(raw))
    with caplog.at_level(logging.INFO, logger="tickwire.supervisor"):
        sup.reload()
    assert "SIGHUP: rules[0].instruments, rules[1].instruments changed: " in caplog.text, caplog.text
    assert [(r.enter, r.instruments) for r in sup.cfg.rules] == [(2.5, (0,)), (9.0, (1,))], sup.cfg.rules
    assert sup.reloads == 0


def test_an_ipc_endpoint_in_a_world_writable_directory_is_warned_about(tmp_path):
    from tickwire.engine.supervisor import shared_endpoint_warnings

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    got = shared_endpoint_warnings([f"ipc://{private}/feed", f"ipc://{shared}/feed", "tcp://127.0.0.1:5555"])
    assert len(got) == 1 and f"ipc://{shared}/feed" in got[0] and "every local user can write" in got[0]
    if os.geteuid() == 0:
        # found by an adversarial pass: a directory another user owns (0755), or one a group of
        # others can write (0775), was not warned about, and that user fed the daemon
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o755)
        os.chown(theirs, 65534, 65534)
        group = tmp_path / "group"
        group.mkdir()
        os.chown(group, 0, 65534)
        group.chmod(0o775)
        got = shared_endpoint_warnings([f"ipc://{theirs}/feed", f"ipc://{group}/feed", f"ipc://{private}/feed"])
        assert len(got) == 2 and "user nobody owns" in got[0] and f"{theirs}" in got[0], got
        assert "can write" in got[1] and f"{group}" in got[1], got


def test_an_abstract_ipc_endpoint_is_warned_about():
    """Found by an adversarial pass: an abstract socket (ipc://@name) has no file and no
    permissions; another user bound the name first and fed a root daemon, 9,281 events and 5
    signals, with no warning."""
    from tickwire.engine.supervisor import shared_endpoint_warnings

    got = shared_endpoint_warnings(["ipc://@tickwire-feed", "tcp://127.0.0.1:5555"])
    assert len(got) == 1 and "feed endpoint ipc://@tickwire-feed is an abstract Unix socket" in got[0], got
    assert "every local user can bind it" in got[0]


def test_the_frozen_config_holds_no_store_password(tmp_path):
    """<run dir>/config.json (0600) held store.password, and a DSN's, in plain text; the workers
    that read it never talk to the store (the writer has the credentials from its environment).
    Left out now; the workers' configuration reads back the same otherwise."""
    from tickwire.engine import config as configmod
    from tickwire.engine.supervisor import Supervisor

    raw = demo_raw_config(tmp_path / "state", run="frozen")
    raw["store"].update(dsn="http://tw:dsn-secret-9@127.0.0.1:8123", username="tw", password="pw-secret-7")
    path = tmp_path / "frozen.toml"
    path.write_text(to_toml(raw))
    sup = Supervisor(configmod.load(path), path)
    sup.run_dir.mkdir(parents=True, mode=0o700)
    sup._freeze_config()
    text = (sup.run_dir / "config.json").read_text()
    assert "pw-secret-7" not in text and "dsn-secret-9" not in text, text
    frozen = configmod.load_frozen(sup.run_dir / "config.json")
    assert frozen.store.password == "" and frozen.store.username == "tw"
    assert frozen.workers == sup.cfg.workers and frozen.instruments == sup.cfg.instruments
    assert sup.cfg.store.password == "pw-secret-7"                 # the supervisor's own (the writer's env)


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


def test_simulate_waiting_for_subscribers_that_never_come_publishes_nothing(tmp_path):
    """Found by an adversarial pass: with no subscriber, `simulate --wait-subscribers 1` waited,
    published every event into the void, said "done: 2,000 events" and exited 0 (docs/feeds.md:
    the option is there so that nothing is). Now one line, exit 2, and nothing published."""
    res = tickwire("simulate", "--endpoint", f"ipc://{tmp_path}/f", "--snapshot", f"ipc://{tmp_path}/s",
                   "--events", "2000", "--wait-subscribers", "1")
    one_line(res, "--wait-subscribers: no subscriber on every channel within 1 s: nothing published")
    assert "done" not in res.stdout + res.stderr


@pytest.mark.parametrize("option, endpoint, pregenerate", [
    ("--endpoint", "garbage", False),
    ("--endpoint", "tcp://999.1.1.1:5", True),
    ("--snapshot", "tcp://999.1.1.1:5", True),
])
def test_simulate_endpoint_that_cannot_be_bound(tmp_path, option, endpoint, pregenerate):
    """A ZMQError traceback before; now one line naming the option, and before the events are
    generated (--pregenerate), not after."""
    argv = {"--endpoint": f"ipc://{tmp_path}/f", "--snapshot": f"ipc://{tmp_path}/s", option: endpoint}
    res = tickwire("simulate", "--endpoint", argv["--endpoint"], "--snapshot", argv["--snapshot"], "--events",
                   "300000", "--linger", "0", "--quiet", *(["--pregenerate"] if pregenerate else []))
    one_line(res, f"{option} {endpoint}: cannot bind")
    assert "generating" not in res.stdout


@pytest.mark.parametrize("taken", ["--endpoint", "--snapshot"])
def test_a_second_publisher_on_a_taken_ipc_endpoint_is_refused(tmp_path, taken):
    """libzmq's ipc bind takes the path from whoever listens there: a second `tickwire simulate`
    on the default endpoint cut the first one's receivers off without a word (tcp says 'address
    in use'). Refused now, naming the option; the first publisher is still heard."""
    import zmq

    from tickwire.feeds import wire

    feed, snap = f"ipc://{tmp_path}/feed", f"ipc://{tmp_path}/snap"
    first = subprocess.Popen([PY, "-m", "tickwire", "simulate", "--endpoint", feed, "--snapshot", snap, "--rate", "1000",
                              "--duration", "60", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 30
        while not (wire.ipc_in_use(feed) and wire.ipc_in_use(snap)):
            assert first.poll() is None and time.monotonic() < end
            time.sleep(0.1)
        other = {"--endpoint": f"ipc://{tmp_path}/feed2", "--snapshot": f"ipc://{tmp_path}/snap2"}
        other[taken] = feed if taken == "--endpoint" else snap
        one_line(tickwire("simulate", "--endpoint", other["--endpoint"], "--snapshot", other["--snapshot"],
                          "--events", "10", "--quiet"), f"{taken} {other[taken]}: cannot bind (another process listens")
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(feed)
        assert sub.poll(10_000), "the first publisher is no longer heard"
        sub.close(0)
        ctx.term()
    finally:
        first.terminate()
        first.wait(30)


@pytest.mark.parametrize("where, fragment", [
    ("missing/x.npz", "the directory {dir} does not exist"),
    ("afile/x.npz", "{dir} is not a directory"),
    ("adir.npz", "{path} is a directory"),
    ("books.txt", "expected a file name ending in .npz"),            # (written as books.txt.npz, unsaid)
    ("fifo.npz", "{path} exists and is not a regular file"),
])
def test_simulate_save_books_path_is_checked_before_publishing(tmp_path, where, fragment):
    """A FileNotFoundError traceback before, and only once the whole publish had run."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir.npz").mkdir()
    os.mkfifo(tmp_path / "fifo.npz")
    path = tmp_path / where
    res = tickwire("simulate", "--endpoint", f"ipc://{tmp_path}/f", "--snapshot", "none", "--events", "10",
                   "--linger", "0", "--quiet", "--save-books", path)
    one_line(res, f"--save-books {path}: " + fragment.format(dir=path.parent, path=path))
    assert "publishing on" not in res.stdout


def _demo_lock_free():
    from tickwire.engine.supervisor import _try_lock

    fd = _try_lock("/tmp/tickwire-demo.lock")
    if fd is None:
        pytest.skip("a demo runs on this machine")
    os.close(fd)


@pytest.mark.parametrize("argv, fragment", [
    (["--duration", "1e300"], "--duration: expected a number of seconds > 0 and at most 1e+09, got 1e+300"),
    (["--rate", "0"], "--rate: expected events per second from 0.001 to 1e10, got 0.0"),
    (["--instruments", "99999999"], "--instruments: expected an integer from 1 to 16,777,216, got 99999999"),
    (["--channels", "70000"], "--channels: expected an integer from 1 to 65,536, got 70000"),
    (["--seed", "-2"], "--seed: expected an integer from 0 to"),
])
def test_demo_refuses_bad_arguments_before_starting(tmp_path, argv, fragment):
    one_line(tickwire("demo", "--data-dir", tmp_path / "data", *argv), fragment)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("duration", ["nan", "0", "1e300"])
def test_check_publisher_refuses_a_duration_that_is_not_a_number_of_seconds(duration):
    one_line(tickwire("check-publisher", "ipc:///nonexistent/feed", "--duration", duration),
             f"check-publisher: --duration: expected a number of seconds > 0 and at most 1e+09, got {float(duration)}")


@pytest.mark.parametrize("argv, fragment", [
    # before: a numpy traceback (a negative seed; 72.8 TiB to allocate), or minutes of generating
    (["--seed", "-1"], "--seed: expected an integer from 0 to"),
    (["--events", "10000000000000"], "--events: expected an integer from 1 to 100,000,000, got 10000000000000"),
    (["--instruments", "100000000"], "--instruments: expected an integer from 1 to 65,536, got 100000000"),
])
def test_bookbench_refuses_bad_arguments(argv, fragment):
    one_line(tickwire("bookbench", "--no-captures", *argv), "tickwire bookbench: " + fragment)


def test_bookbench_data_that_is_not_a_capture_is_one_line(tmp_path):
    """Found by an adversarial pass: random bytes in --data's Kraken capture were a
    UnicodeDecodeError traceback."""
    from tickwire.feeds.captures import KRAKEN_FILE

    (tmp_path / KRAKEN_FILE).write_bytes(bytes(range(128, 256)) * 64)
    res = tickwire("bookbench", "--data", tmp_path, "--events", "1000", "--repeats", "1")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"tickwire bookbench: --data: {tmp_path / KRAKEN_FILE}, line 1: malformed capture line (UnicodeDecodeError"), \
        res.stderr


def test_bookbench_data_given_that_is_missing_a_file_or_holds_no_capture_is_one_line(tmp_path):
    """Found by an adversarial pass: `--data DIR` missing, or a file, said "capture not found (it
    lives in ../shared/data ...): skipped" and exited 0, as if --data had not been given."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    for data, says in ((tmp_path / "nothere", f"{tmp_path / 'nothere'}: no such directory"),
                       (tmp_path / "afile", f"{tmp_path / 'afile'}: not a directory"),
                       (tmp_path / "empty", f"{tmp_path / 'empty'} holds neither kraken_book1000")):
        one_line(tickwire("bookbench", "--data", data, "--events", "1000", "--repeats", "1"),
                 "tickwire bookbench: --data: " + says)


def test_demo_wire_seconds_must_not_be_negative(tmp_path):
    one_line(tickwire("demo", "--wire-seconds=-1", "--duration", "1", "--data-dir", tmp_path / "data"),
             "--wire-seconds: expected a number of seconds >= 0 (0: skip) and at most 1e+09, got -1.0")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("duration", ["nan", "inf", "-5", "0", "1e300"])
def test_run_refuses_a_duration_that_is_not_a_positive_number_of_seconds(tmp_path, duration):
    # before: nan was a traceback from the event loop, -5 started the daemon and stopped it at once
    one_line(tickwire("run", "--config", Path(__file__).parents[1] / "engine" / "tickwire.example.toml",
                      f"--duration={duration}"),
             f"tickwire run: --duration: expected a number of seconds > 0 and at most 1e+09, got {float(duration)}")


@pytest.mark.alone
@pytest.mark.parametrize("data_dir", ["/proc/x", "{tmp}/afile", "{tmp}/afile/sub"])
def test_demo_data_dir_that_cannot_be_made(tmp_path, data_dir):
    _demo_lock_free()
    (tmp_path / "afile").write_text("")
    data_dir = data_dir.format(tmp=tmp_path)
    res = tickwire("demo", "--duration", "1", "--data-dir", data_dir, timeout=120)
    one_line(res, f"--data-dir {data_dir}: cannot ")


# -- an interrupted demo -------------------------------------------------------------------------

@pytest.mark.alone
@pytest.mark.integration
def test_a_demo_whose_output_goes_away_still_stops_and_the_next_drops_a_killed_one_s_rings(tmp_path):
    """Found by a newcomer: `tickwire demo | head -2` ran for ever (the progress task died of
    the broken pipe before it stopped the daemon; its signal handlers died of it too, so only
    SIGKILL ended it, holding the demo lock). And a demo killed by SIGKILL left its rings (72 MB)
    in /dev/shm for good: the next demo deleted the run directory that named them."""
    import json
    import signal
    import time

    from tickwire.engine.worker import read_ring_names
    from tickwire.ext import ring as ringmod

    _demo_lock_free()
    data = tmp_path / "data"
    argv = [PY, "-m", "tickwire", "demo", "--duration", "4", "--rate", "20000", "--instruments", "2",
            "--channels", "2", "--wire-seconds", "0", "--data-dir", data]
    demo = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        demo.stdout.readline()
        demo.stdout.close()                                     # `| head -1`
        rc = demo.wait(timeout=90)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
            pytest.fail("the demo did not stop once its output went away")
    assert rc in (0, 1), rc
    # a demo killed mid-run: its rings stay; the next demo removes them
    data = tmp_path / "again"
    argv[-1] = data
    log = open(tmp_path / "killed.log", "w")
    demo = subprocess.Popen(argv[:5] + ["30"] + argv[6:], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        status = data / "demo" / "worker-0.json"
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                if json.loads(status.read_text())["feed"]["events"] > 1000:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        else:
            pytest.fail((tmp_path / "killed.log").read_text()[-3000:])
        old = [n for pair in read_ring_names(data / "demo") for n in pair]
        os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()
        time.sleep(1.0)                                         # its children follow it (lifeline)
        assert old and all(ringmod.exists(n) for n in old)
        res = subprocess.run(argv[:5] + ["1"] + argv[6:], capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert not any(ringmod.exists(n) for n in old), old
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()


@pytest.mark.alone
def test_an_interrupted_demo_drains_what_was_published_and_exits_130(tmp_path):
    """Ctrl-C at the terminal (SIGINT to the demo's whole process group) while it publishes: the
    demo stops the publisher first, lets the daemon take in what was published, stops it, checks
    exactly-once on what was published, says it was interrupted and exits 130 (as `tickwire
    replay` does). Before, the publisher and the daemon stopped together: events in flight were
    never processed and the report said "every published event stored exactly once: NO", exit 1."""
    import json
    import signal
    import time

    _demo_lock_free()
    data = tmp_path / "data"
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        demo = subprocess.Popen([PY, "-m", "tickwire", "demo", "--duration", "30", "--rate", "20000",
                                 "--instruments", "2", "--channels", "2", "--wire-seconds", "1", "--data-dir", data],
                                stdout=out, stderr=err, start_new_session=True)     # a group, as a shell job
        try:
            status = data / "demo" / "worker-0.json"
            end = time.monotonic() + 60
            while time.monotonic() < end and demo.poll() is None:
                try:
                    if json.loads(status.read_text())["feed"]["events"] > 20_000:     # publishing for a second
                        break
                except (OSError, ValueError, KeyError):
                    pass
                time.sleep(0.1)
            else:
                pytest.fail(f"the demo never published: {(tmp_path / 'out').read_text()[-2000:]}"
                            f"{(tmp_path / 'err').read_text()[-2000:]}")
            t_int = time.monotonic()
            os.killpg(demo.pid, signal.SIGINT)
            rc = demo.wait(timeout=60)
            took = time.monotonic() - t_int
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
    text, errors = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    if rc == 2 and "another tickwire demo runs" in errors:
        pytest.skip("a demo runs on this machine")
    assert rc == 130, (rc, text[-3000:], errors[-3000:])
    assert "Traceback" not in errors and "restarting" not in errors, errors[-3000:]
    assert "interrupted by SIGINT" in text, text[-3000:]
    published = int(re.search(r"published by the simulator\s+([\d,]+)", text).group(1).replace(",", ""))
    assert 20_000 < published < 30 * 20_000
    assert "every published event stored exactly once: yes" in text, text[-3000:]
    assert "wire-to-signal: not measured (interrupted)" in text           # no bench after an interrupt
    assert took < 30, took
