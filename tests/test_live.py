"""Reading a running daemon's books (tickwire.engine.live): the worker's request service, the
client, and `tickwire books` without a daemon. The daemon end to end (books read while it runs
equal a reference at every level) is in tests/test_replay_daemon.py."""

import json
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from tickwire.engine.instruments import make_books
from tickwire.engine.live import (BookService, DaemonNotRunning, books_endpoint, request_books,
                                  worker_answer)
from tickwire.engine.pipeline import Engine
from tickwire.ext.records import Kind, Side
from tickwire.feeds.simulator import Market, synthetic_instruments

PY = sys.executable


class EngineThread:
    """An engine fed a stream, with a loop answering book requests between batches as the
    worker's does."""

    def __init__(self, run_dir, events, insts):
        self.engine = Engine(insts, ())
        self.insts = insts
        self.events = events
        self.fed = 0
        self.turns = 0                                   # loop turns: the engine's thread going on
        self.service = BookService(books_endpoint(run_dir, 0),
                                   lambda ids, depth: worker_answer(self.engine, insts, "w0", ids, depth))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.is_set():
            if self.fed < len(self.events):
                self.engine.process(self.events[self.fed:self.fed + 500])
                self.fed += 500
            if self.service.pending is not None:
                self.service.answer_pending()
            self.turns += 1
            self.stop.wait(0.001)

    def __enter__(self):
        self.service.start()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.service.close()


@pytest.fixture
def stream():
    insts = synthetic_instruments(3)
    return insts, Market(3, seed=2, resting=60).generate(20_000)


def test_books_answered_between_batches_equal_the_engines(tmp_path, stream):
    insts, ev = stream
    with EngineThread(tmp_path, ev, insts) as et:
        while et.fed < len(ev):
            got = request_books(tmp_path, depth=5)       # while it runs: a consistent picture
            assert sorted(got) == [0, 1, 2]
            assert all(len(b["bids"]) <= 5 and b["symbol"] == f"SIM{i}" for i, b in got.items())
        got = request_books(tmp_path, instruments=[1], depth=10_000)
    ref = make_books(insts)
    ref.apply(ev)
    assert list(got) == [1]
    b = got[1]
    assert b["bids"] == ref[1].levels(Side.BID).tolist() and b["asks"] == ref[1].levels(Side.ASK).tolist()
    assert b["levels"] == [ref[1].level_count(Side.BID), ref[1].level_count(Side.ASK)]
    assert b["last_seq"] == ref[1].last_seq and b["last_ts_event"] == ref[1].last_ts_event
    trades = ev[(ev["instrument"] == 1) & (ev["kind"] == Kind.TRADE)]
    assert b["last_trade"] == [int(trades["price"][-1]), int(trades["qty"][-1]), int(trades["ts_event"][-1])]
    assert b["tick_size"] == "0.01" and b["worker"] == "w0"


@pytest.mark.parametrize("raw, word", [(b"not json", "JSON"), (b"[1]", "object"), (b'{"depth": -1}', "depth"),
                                       (b'{"depth": 10, "bogus": 1}', "bogus"),
                                       (b'{"instruments": ["x"]}', "instruments"),
                                       ((b'{"depth": 1}', b"more"), "one frame")])
def test_a_malformed_request_is_answered_with_what_is_wrong(tmp_path, stream, raw, word):
    insts, ev = stream
    with EngineThread(tmp_path, ev[:0], insts):
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(books_endpoint(tmp_path, 0))
        if isinstance(raw, tuple):
            s.send_multipart(list(raw))
        else:
            s.send(raw)
        assert s.poll(5000)
        reply = json.loads(s.recv())
        s.close()
        assert word in reply["error"]
        # and the service goes on answering (a two-frame request used to end it for good)
        again = ctx.socket(zmq.REQ)
        again.setsockopt(zmq.LINGER, 0)
        again.connect(books_endpoint(tmp_path, 0))
        again.send(b'{"depth": 1}')
        assert again.poll(5000), "the book service stopped answering"
        assert "error" not in json.loads(again.recv())
        again.close()


def test_no_daemon_says_so_and_how_to_start_one(tmp_path):
    with pytest.raises(DaemonNotRunning, match="tickwire run"):
        request_books(tmp_path)
    (tmp_path / "books-0.sock").touch()                # left by a daemon killed -9: nobody answers
    with pytest.raises(DaemonNotRunning, match="silent"):
        request_books(tmp_path, timeout=0.2)
    cfg = tmp_path / "c.toml"
    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config

    cfg.write_text(to_toml(demo_raw_config(tmp_path / "state", run="none")))
    out = subprocess.run([PY, "-m", "tickwire", "books", "--config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 1 and "no tickwire daemon is running" in out.stderr and "tickwire run" in out.stderr
    out = subprocess.run([PY, "-m", "tickwire", "books", "--config", str(cfg), "-i", "NOPE"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "'NOPE' is not an instrument" in out.stderr
    for timeout in ("nan", "0", "-1"):
        out = subprocess.run([PY, "-m", "tickwire", "books", "--config", str(cfg), f"--timeout={timeout}"],
                             capture_output=True, text=True)
        assert out.returncode == 2 and "--timeout: expected seconds > 0 and at most 3600" in out.stderr, out.stderr


def test_an_instrument_no_worker_serves_is_said_not_left_blank(tmp_path, stream):
    """Found by an adversarial pass: `books -i SYM` of an instrument in the config given but served
    by no worker of the running daemon (a config edited since) printed nothing, exit 0."""
    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config

    insts, ev = stream                                  # the daemon serves instruments 0..2
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(demo_raw_config(tmp_path / "state", run="more")))    # SYN0..SYN7
    run_dir = tmp_path / "state" / "more"
    run_dir.mkdir(parents=True)
    with EngineThread(run_dir, ev, insts):
        def books(*extra):
            return subprocess.run([PY, "-m", "tickwire", "books", "--config", str(cfg), "--timeout", "3", *extra],
                                  capture_output=True, text=True, timeout=60)
        ok = books("-i", "SYN1")
        assert ok.returncode == 0 and "(id 1," in ok.stdout and ok.stderr == "", ok
        for extra in ([], ["--json"]):
            out = books("-i", "SYN1", "-i", "SYN5", *extra)
            assert out.returncode == 1 and "the running daemon serves no instrument SYN5" in out.stderr, out
            assert ('"1"' if extra else "(id 1,") in out.stdout and "(id 5" not in out.stdout


def test_a_worker_that_does_not_answer_is_named_and_the_exit_status_says_so(tmp_path, stream):
    """Found by an adversarial pass: with one of two workers SIGSTOPped, `tickwire books` printed
    the other's instruments only, without a word, exit 0 (`-i` an instrument of the stopped one
    printed nothing at all, exit 0)."""
    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config

    insts, ev = stream
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(demo_raw_config(tmp_path / "state", run="part")))
    run_dir = tmp_path / "state" / "part"
    run_dir.mkdir(parents=True)
    (run_dir / "books-1.sock").touch()                 # a worker that does not answer (stopped)
    with EngineThread(run_dir, ev, insts):
        got = request_books(run_dir, depth=2, timeout=0.5)
        assert sorted(got) == [0, 1, 2] and got.silent == ["w1"]
        for extra in ([], ["--json"]):
            out = subprocess.run([PY, "-m", "tickwire", "books", "--config", str(cfg), "--timeout", "0.5", *extra],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 1, out.stderr
            assert "worker w1 did not answer within 0.5 s" in out.stderr and "SIM2" in out.stdout, out.stderr
    # the names are the daemon's (config.json); a socket past its workers (left by a killed daemon
    # that had more) is not asked
    (run_dir / "config.json").write_text(json.dumps({"raw": {"workers": [{"name": "fast"}, {"name": "slow"}]},
                                                     "base_dir": str(tmp_path)}))
    (run_dir / "books-2.sock").touch()
    with EngineThread(run_dir, ev, insts):
        assert request_books(run_dir, depth=2, timeout=0.5).silent == ["slow"]
    (run_dir / "books-1.sock").unlink()
    with EngineThread(run_dir, ev, insts):
        assert request_books(run_dir, depth=2).silent == []


def _hold_lock(run_dir):
    """The run's daemon lock, held as a running supervisor holds it (close the fd to let go)."""
    import fcntl
    import os

    lock = os.open(run_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lock


def test_books_takes_the_running_daemon_s_symbols_not_the_edited_config_s(tmp_path, stream):
    """Found by an adversarial pass: `books -i SYMBOL` matched the config file as edited since the
    start, and refused the running daemon's own symbol; `-i ²` was a traceback, `-i ٣` id 3."""
    import os

    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config

    insts, ev = stream                                  # the daemon runs SIM0..SIM2
    raw = demo_raw_config(tmp_path / "state", run="edited")
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(raw))                        # the file now says SYN0..SYN7
    for d in raw["instruments"]:
        d["symbol"] = d["symbol"].replace("SYN", "SIM")
    # (a newcomer's pass: books printed prices with the tick's decimals, not price_decimals)
    raw["instruments"][1].update(price_decimals=4, qty_decimals=9)
    run_dir = tmp_path / "state" / "edited"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"raw": raw, "base_dir": str(tmp_path)}))
    lock = _hold_lock(run_dir)

    def books(*extra):
        return subprocess.run([PY, "-m", "tickwire", "books", "--config", str(cfg), "--timeout", "3", *extra],
                              capture_output=True, text=True, timeout=60)
    try:
        with EngineThread(run_dir, ev, insts):
            ok = books("-i", "SIM1")
            assert ok.returncode == 0 and "SIM1 (id 1," in ok.stdout and ok.stderr == "", ok
            prices = re.findall(r"\s(\d+\.\d+) \| (\d+\.\d+)\s", ok.stdout)
            assert prices and all(len(p.split(".")[1]) == 4 for row in prices for p in row), ok.stdout
            qtys = re.findall(r"^\s+(\d+\.\d+) ", ok.stdout, re.M)
            assert qtys and all(len(q.split(".")[1]) == 9 for q in qtys), ok.stdout
            out = books("-i", "SYN1")
            assert out.returncode == 2 and "'SYN1' is not an instrument of the daemon running for run 'edited'" \
                in out.stderr and "SIM0, SIM1" in out.stderr, out
            for name in ("²", "٣"):
                out = books("-i", name)
                assert out.returncode == 2 and "Traceback" not in out.stderr, out
                assert f"{name!r} is not an instrument" in out.stderr and out.stdout == "", out
    finally:
        os.close(lock)


def test_a_daemon_whose_only_worker_is_silent_names_it_not_start_one(tmp_path):
    """Found by an adversarial pass: the only worker SIGSTOPped (or --timeout too short), `tickwire
    books` said "no tickwire daemon answers ... start one" of a running daemon. Its lock held: the
    worker is named (and top's ladder says the same)."""
    import os

    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config
    from tickwire.engine.top import fetch_books

    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(demo_raw_config(tmp_path / "state", run="stopped")))
    run_dir = tmp_path / "state" / "stopped"
    run_dir.mkdir(parents=True)
    (run_dir / "books-0.sock").touch()                 # its worker does not answer (stopped)
    lock = _hold_lock(run_dir)
    try:
        out = subprocess.run([PY, "-m", "tickwire", "books", "--config", str(cfg), "--timeout", "0.3"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out
        assert "runs, but its worker w0 did not answer within 0.3 s" in out.stderr and "start one" not in out.stderr
        _, note = fetch_books(run_dir, [0], 2, timeout=0.3)
        assert "its worker w0 did not answer" in note, note
    finally:
        os.close(lock)
    with pytest.raises(DaemonNotRunning, match="start one"):      # no lock held: no daemon
        request_books(run_dir, timeout=0.3)


class BusyWorker:
    """A worker's book socket that answers every request "busy" (its engine far behind)."""

    def __init__(self, run_dir, index):
        self.sock = zmq.Context.instance().socket(zmq.REP)
        self.sock.bind(books_endpoint(run_dir, index))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.is_set():
            if self.sock.poll(50):
                self.sock.recv()
                self.sock.send(b'{"error": "busy"}')

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.sock.close(linger=0)


def test_a_busy_worker_is_named_and_only_the_workers_asked_for_are_asked(tmp_path, stream):
    """Found by an adversarial pass, two workers: one answering "busy" (its tick ring full) had its
    instruments left out without a word, exit 0 (every worker busy: "the daemon refused the
    request", exit 2); and `-i` an instrument of w0 waited for a stopped w1, then failed (exit 1)."""
    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config

    insts, ev = stream
    raw = demo_raw_config(tmp_path / "state", run="two", instruments=3, channels=2,
                          workers=[{"name": "w0", "cpu": 0, "instruments": [0, 2]},
                                   {"name": "w1", "cpu": 1, "instruments": [1]}])
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(raw))
    run_dir = tmp_path / "state" / "two"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"raw": raw, "base_dir": str(tmp_path)}))

    def books(*extra):
        return subprocess.run([PY, "-m", "tickwire", "books", "--config", str(cfg), "--timeout", "3", *extra],
                              capture_output=True, text=True, timeout=60)

    with EngineThread(run_dir, ev, insts), BusyWorker(run_dir, 1):
        got = request_books(run_dir, depth=2)
        assert got.silent == ["w1"] and 0 in got and 2 in got
        out = books()
        assert out.returncode == 1 and "worker w1 did not answer" in out.stderr and "SIM0" in out.stdout, out.stderr
    with BusyWorker(run_dir, 0), BusyWorker(run_dir, 1):
        with pytest.raises(DaemonNotRunning, match="w0, w1 answered busy"):
            request_books(run_dir)
        out = books()
        assert out.returncode == 1 and "answered busy" in out.stderr, out.stderr
    (run_dir / "books-1.sock").touch()                 # w1 stopped: asked for w0's SIM0 only, not waited for
    with EngineThread(run_dir, ev, insts):
        got = request_books(run_dir, instruments=[0], depth=2, timeout=3)
        assert list(got) == [0] and got.silent == []
        out = books("-i", "SYN0")
        assert out.returncode == 0 and "(id 0, worker w0)" in out.stdout, out.stderr
    # no daemon (its sockets left behind), an instrument its config.json gives no worker: not an
    # empty answer with exit 0 (a review of the filter above)
    with pytest.raises(DaemonNotRunning):
        request_books(run_dir, instruments=[7], timeout=0.2)


def test_a_client_that_never_reads_costs_the_engine_nothing(tmp_path, stream):
    """Requests sent and never read (a suspended `tickwire top`): the engine's loop goes on."""
    insts, ev = stream
    with EngineThread(tmp_path, np.concatenate([ev] * 5), insts) as et:
        ctx = zmq.Context.instance()
        socks = []
        for _ in range(20):
            s = ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(books_endpoint(tmp_path, 0))
            s.send(b'{"depth": 100}')
            socks.append(s)
        got = request_books(tmp_path, depth=1, timeout=5)   # still answered after them
        assert sorted(got) == [0, 1, 2]
        before = et.turns
        et.stop.wait(0.3)
        assert et.turns > before + 10                   # not held by the unread answers
        for s in socks:
            s.close()


# -- tickwire signals ------------------------------------------------------------------------

def _signals_config(tmp_path, workers):
    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config

    raw = demo_raw_config(tmp_path / "state", run="sig", instruments=2)
    if workers > 1:                                  # one instrument each
        raw["workers"] = [dict(raw["workers"][0], name=f"w{i}", cpu=i, instruments=[i]) for i in range(workers)]
    cfg = tmp_path / f"sig{workers}.toml"
    cfg.write_text(to_toml(raw))
    return cfg


def _signals_run(tmp_path, workers=1):
    """A run directory as a running daemon leaves it, without the daemon: its lock held, its
    signal ring (broadcast, with signals of instrument 1 pushed), rings.json and the daemon's
    instruments.json (symbols D0, D1: not the config's SYN0, SYN1)."""
    import fcntl
    import os
    import uuid

    from tickwire.engine.worker import write_ring_names
    from tickwire.ext import SIGNAL_DTYPE
    from tickwire.ext.ring import Ring

    cfg = _signals_config(tmp_path, workers)
    run_dir = tmp_path / "state" / "sig"
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(run_dir / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    ring = Ring.create(f"tw-test-sig-{uuid.uuid4().hex[:12]}", SIGNAL_DTYPE, 64, policy="broadcast")
    write_ring_names(run_dir, [(f"tw-test-ticks-{uuid.uuid4().hex[:8]}", ring.name.lstrip("/"))])
    (run_dir / "instruments.json").write_text(json.dumps(
        [{"id": i, "symbol": f"D{i}", "tick_size": "0.01", "lot_size": "1"} for i in (0, 1)]))
    return cfg, lock, ring


def _signal(seq):
    from tickwire.ext import SIGNAL_DTYPE

    s = np.zeros(1, SIGNAL_DTYPE)
    s["instrument"], s["seq"], s["direction"], s["rule_kind"] = 1, seq, 1, 1
    return s


def test_signals_without_follow_ends_while_signals_keep_coming(tmp_path, capsys):
    """Found by an adversarial pass: without --follow, `tickwire signals` read on until a read
    found nothing for 100 ms, so beside a daemon signalling every 20 ms it never ended (2,734
    lines before a timeout). It now reads up to where the ring's head was when it started."""
    import os

    from tickwire.engine.cli import main as cli_main

    cfg, lock, ring = _signals_run(tmp_path)
    stop = threading.Event()

    def publish():
        seq = 10
        while not stop.wait(0.02):
            seq += 1
            ring.push_many(_signal(seq))

    try:
        for seq in (1, 2, 3):
            ring.push_many(_signal(seq))
        capsys.readouterr()
        threading.Thread(target=publish, daemon=True).start()
        for args in (["signals", "-c", str(cfg), "--format", "json"],
                     ["signals", "-c", str(cfg), "--from-start", "--format", "json"]):
            got = {}
            t = threading.Thread(target=lambda: got.update(rc=cli_main(args)))
            t.start()
            t.join(5)
            assert not t.is_alive() and got["rc"] == 0, args
            seqs = [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), (args, seqs)
            if "--from-start" in args:
                assert seqs[:3] == [1, 2, 3], seqs
            else:
                assert len(seqs) == 1, seqs                      # the newest at its start, nothing since
    finally:
        stop.set()
        os.close(lock)
        time.sleep(0.1)
        ring.close()


def test_signals_are_the_running_daemon_s_named_as_it_names_them_and_follow_starts_at_the_next(tmp_path, capsys):
    """Found by an adversarial pass: `tickwire signals` named symbols from the config given (one
    edited since printed other names), counted workers from it (one worker more: "no daemon is
    running" beside a running one), began a follow with the newest signal already published (a
    restarted follower printed its last one again), and read the rings a killed daemon left as a
    live one's, exit 0."""
    import os

    from tickwire.engine.cli import main as cli_main

    cfg, lock, ring = _signals_run(tmp_path)
    try:
        for seq in (1, 2, 3):
            ring.push_many(_signal(seq))
        capsys.readouterr()
        # one-shot: the newest of the ring, named as the daemon names instrument 1
        assert cli_main(["signals", "-c", str(cfg), "--format", "json"]) == 0
        rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert [(r["symbol"], r["seq"]) for r in rows] == [("D1", 3)]
        # a config of the same run naming two workers: the daemon's one ring, every signal
        assert cli_main(["signals", "-c", str(_signals_config(tmp_path, 2)), "--from-start", "--format", "json"]) == 0
        assert [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()] == [1, 2, 3]
        # --follow: from the next signal, not the newest already there
        got = {}
        t = threading.Thread(target=lambda: got.update(rc=cli_main(
            ["signals", "-c", str(cfg), "-f", "--count", "1", "--format", "json"])))
        t.start()
        time.sleep(1.0)
        ring.push_many(_signal(4))
        t.join(10)
        assert not t.is_alive() and got["rc"] == 0
        assert [json.loads(x)["seq"] for x in capsys.readouterr().out.splitlines()] == [4]
    finally:
        os.close(lock)                                   # the daemon gone: its lock free, its ring left
    try:
        assert cli_main(["signals", "-c", str(cfg), "--from-start"]) == 1
        err = capsys.readouterr().err
        assert "no tickwire daemon is running for run 'sig'" in err, err
    finally:
        ring.close()
