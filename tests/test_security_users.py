"""The attacks of issue 18 run as a real second, unprivileged user (`nobody`, uid 65534) against
a running daemon: each is refused, and the daemon stores every event.

The venv's python cannot be exec'd by `nobody` (its home is private), so the attacker is a fork
of the test process that drops its groups, gid and uid, then attacks with plain Python (os.open
on /dev/shm, a Unix socket on the ipc path, reads of the daemon's files) and reports each
outcome (an errno name, or what it managed) through a pipe. Needs root (to drop to `nobody`).
"""

import errno
import json
import os
import socket
from pathlib import Path

import pytest

from test_daemon import (market_events, publish, remove_rings, start_daemon, status, stop_daemon, wait_for,
                         write_config)

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="running an attacker as another user (setuid to "
                                                           "nobody) needs root")]

NOBODY = 65534


def as_nobody(fn, *args):
    """Run ``fn(*args)`` in a forked child that has become uid/gid 65534 with no groups; its
    JSON-able result (or ``{"error": ...}``)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # the attacker
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = fn(*args)
        except BaseException as exc:                 # noqa: BLE001 - reported to the test
            out = {"error": repr(exc)}
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def _outcome(call):
    try:
        call()
        return "done"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def _open(path, flags):
    def call():
        os.close(os.open(path, flags))
    return _outcome(call)


def squat(names):
    """Create each /dev/shm/<name> first (open to everyone) and fill it with junk."""
    def make(name):
        fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
        os.fchmod(fd, 0o666)
        os.write(fd, b"\xff" * 8192)
        os.close(fd)
    return {n: _outcome(lambda n=n: make(n)) for n in names}


def attack_segments(names):
    """Read, write, truncate and unlink the daemon's live segments."""
    out = {}
    for n in names:
        p = f"/dev/shm/{n}"
        out[n] = {"read": _open(p, os.O_RDONLY), "write": _open(p, os.O_WRONLY),
                  "truncate": _open(p, os.O_WRONLY | os.O_TRUNC), "unlink": _outcome(lambda p=p: os.unlink(p))}
    return out


def attack_files(paths, dirs):
    """Read the daemon's files; list its directories."""
    return {"read": {p: _open(p, os.O_RDONLY) for p in paths}, "list": {d: _outcome(lambda d=d: os.listdir(d))
                                                                        for d in dirs}}


def attack_ipc(paths):
    """Bind each ipc path first (to feed the daemon), and connect to it."""
    out = {}
    for p in paths:
        def bind(p=p):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.bind(p)

        def connect(p=p):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(p)
        out[p] = {"bind": _outcome(bind), "connect": _outcome(connect),
                  "unlink": _outcome(lambda p=p: os.unlink(p))}
    return out


def shm_names(run):
    return sorted(p.name for p in Path("/dev/shm").glob(f"tickwire-{run}-*"))


@pytest.fixture
def reachable(tmp_path):
    """Let others traverse (not list) tmp_path and its pytest parents up to the temporary
    directory, so that what stops `nobody` is the daemon's own modes, not pytest's private base
    directory (one level deeper under pytest-xdist: popen-gw0/)."""
    import tempfile

    top, dirs = Path(tempfile.gettempdir()).resolve(), []
    d = tmp_path.resolve()
    while d != top and d != d.parent:
        dirs.append(d)
        d = d.parent
    if d != top:                                         # (--basetemp elsewhere: its three levels)
        dirs = dirs[:3]
    modes = [d.stat().st_mode & 0o7777 for d in dirs]
    for d in dirs:
        d.chmod(0o711)
    yield tmp_path
    for d, m in zip(dirs, modes):
        d.chmod(m)


def test_nobody_can_neither_preempt_read_write_nor_feed_the_daemon(reachable):
    """(a) `nobody` squats the old predictable ring names and, after a first daemon run, the names
    that run used (it saw them in /dev/shm): the next start draws new names and starts anyway;
    (b) it cannot open the live segments for reading or writing, truncate or unlink them;
    (c) it cannot read rings.json, the store, the writer's state or the status files; (d) it
    cannot bind, connect to or remove the daemon's ipc feed endpoint. The daemon stores every
    event, and both runs exit 0."""
    tmp_path = reachable
    run = "nobody"
    remove_rings(run)
    cfg_path, raw = write_config(tmp_path, run)
    run_dir = tmp_path / "state" / run
    old_style = [f"tickwire-{run}-ticks-0", f"tickwire-{run}-signals-0"]
    squatted = []
    try:
        got = as_nobody(squat, old_style)
        assert got == {n: "done" for n in old_style}, got          # the squat itself works
        squatted += old_style
        # first run: starts although the predictable names are taken
        daemon, log = start_daemon(cfg_path, tmp_path)
        try:
            assert wait_for(lambda: status(run_dir)["pid"]), (tmp_path / "daemon.log").read_text()[-3000:]
            first = json.loads((run_dir / "rings.json").read_text())["workers"][0]
            assert set(first) == {"ticks", "signals"}
            for kind, name in first.items():
                token = name[len(f"tickwire-{run}-"):].split("-")[0]
                assert len(token) == 16 and int(token, 16) >= 0, name     # 64 random bits, hex
                assert name == f"tickwire-{run}-{token}-{kind}-0"
            live = [first["ticks"], first["signals"]]
            assert wait_for(lambda: (run_dir / "writer" / f"tickwire-{run}-ticks-0" / "status.json").exists())
            # (b) the live segments
            got = as_nobody(attack_segments, live)
            for n in live:
                assert got[n] == {"read": "EACCES", "write": "EACCES", "truncate": "EACCES",
                                  "unlink": "EPERM"}, got
            # (c) every file the daemon wrote so far, and its directories
            files = sorted(str(p) for p in (tmp_path / "state").rglob("*") if p.is_file())
            dirs = sorted(str(p) for p in (tmp_path / "state").rglob("*") if p.is_dir()) + [str(tmp_path / "state")]
            assert str(run_dir / "rings.json") in files and str(run_dir / "worker-0.json") in files
            assert any("/writer/" in f and f.endswith("status.json") for f in files), files
            assert any("/store/" in f for f in files), files
            got = as_nobody(attack_files, files, dirs)
            assert got["read"] == {f: "EACCES" for f in files}, got
            assert got["list"] == {d: "EACCES" for d in dirs}, got
            assert (run_dir / "rings.json").stat().st_mode & 0o777 == 0o600
            # (d) the daemon's ipc endpoints (in the private directory)
            ipc = [e[len("ipc://"):] for e in (raw["feeds"]["endpoints"][0], raw["feeds"]["snapshot"])]
            got = as_nobody(attack_ipc, ipc)
            assert got == {p: {"bind": "EACCES", "connect": "EACCES", "unlink": "EACCES"} for p in ipc}, got
            publish(raw, run_dir, 20_000)
            first_pid = status(run_dir)["pid"]
        finally:
            rc, _ = stop_daemon(daemon, log)
        assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
        assert not any(n in shm_names(run) for n in live)           # unlinked at the clean stop
        # (a) the names of the run that just ended are squatted too: the next start draws new ones
        got = as_nobody(squat, live)
        assert got == {n: "done" for n in live}, got
        squatted += live
        daemon, log = start_daemon(cfg_path, tmp_path, "daemon2")
        try:
            def second_rings():
                w = json.loads((run_dir / "rings.json").read_text())["workers"][0]
                return w if w != first and all(os.path.exists(f"/dev/shm/{n}") for n in w.values()) else None
            assert wait_for(second_rings), (tmp_path / "daemon2.log").read_text()[-3000:]
            second = second_rings()
            assert wait_for(lambda: status(run_dir)["pid"] != first_pid)
            assert not set(second.values()) & set(squatted), second
            for name in second.values():
                assert os.stat(f"/dev/shm/{name}").st_uid == os.geteuid()
        finally:
            rc, _ = stop_daemon(daemon, log)
        text = (tmp_path / "daemon2.log").read_text()
        assert rc == 0, text[-3000:]
        assert "is not this daemon's" in text                      # the squatted old names: left alone
        assert market_events(f"chdb://{tmp_path}/state/store") == (20_000, 20_000)
        for n in squatted:                                          # nobody's files: never touched
            assert os.stat(f"/dev/shm/{n}").st_uid == NOBODY
    finally:
        for n in squatted:
            try:
                os.unlink(f"/dev/shm/{n}")
            except FileNotFoundError:
                pass
        remove_rings(run)
