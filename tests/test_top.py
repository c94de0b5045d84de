"""`tickwire top` in a real terminal: run under tmux against a running daemon fed a known stream,
read the screen (capture-pane) for the instruments, prices and counters the test knows are there;
keys; the daemon going away while top runs; no daemon at all. And `tickwire plot latency` on the
interval log that daemon wrote."""

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_daemon import (alive, published_books, query, remove_rings, start_daemon, start_sim, status, wait_for,
                         writer_pid)
from tickwire.engine.config import to_toml
from tickwire.engine.demo import demo_raw_config

pytestmark = pytest.mark.integration
PY = sys.executable
TMUX = shutil.which("tmux")
needs_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux; ./dev test "
                                                      "installs it when run as root)")
EVENTS = 60_000


class Screen:
    """A detached tmux session running one command, on a private tmux server."""

    def __init__(self, tmp_path, argv, width=80, height=24):
        self.sock = f"tw-top-{os.getpid()}-{time.monotonic_ns()}"
        cmd = " ".join(f"'{a}'" for a in argv) + f" 2>{tmp_path}/top.err; echo EXIT $?; sleep 60"
        subprocess.run([TMUX, "-L", self.sock, "-f", "/dev/null", "new-session", "-d", "-s", "top", "-x", str(width),
                        "-y", str(height), cmd], check=True, cwd=tmp_path)

    def text(self) -> str:
        res = subprocess.run([TMUX, "-L", self.sock, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True)
        return res.stdout

    def keys(self, *keys):
        subprocess.run([TMUX, "-L", self.sock, "send-keys", "-t", "top", *keys], check=True)

    def wait(self, pred, timeout=30.0):
        """Wait until ``pred(screen text)``; the last screen either way."""
        end = time.monotonic() + timeout
        while True:
            text = self.text()
            if pred(text) or time.monotonic() > end:
                return text
            time.sleep(0.2)

    def close(self):
        subprocess.run([TMUX, "-L", self.sock, "kill-server"], capture_output=True)


def row_of(text, symbol):
    for line in text.splitlines():
        cells = line.replace(">", " ").split()
        if cells and cells[0] == symbol:
            return cells
    return None


def latency_row(lines, label):
    """The p50, p99, p99.9, max cells of a stage's latency row."""
    for line in lines:
        t = line.split()
        for k, cell in enumerate(t[:-4]):
            if cell == label and (t[k + 1] == "-" or t[k + 1][0].isdigit()):
                return t[k + 1:k + 5]
    raise AssertionError(f"no latency row {label!r} on the screen:\n" + "\n".join(lines))


def bbo(events, tick_decimals=2):
    """Best bid and ask of a book's snapshot events, as the screen prints them (0.01 ticks)."""
    from tickwire.ext import Kind, Side

    adds = events[events["kind"] == int(Kind.ADD)]
    bids, asks = adds["price"][adds["side"] == int(Side.BID)], adds["price"][adds["side"] == int(Side.ASK)]
    fmt = lambda p: f"{p / 10 ** tick_decimals:.{tick_decimals}f}"            # noqa: E731
    return fmt(int(bids.max())), fmt(int(asks.min()))


def ring_signal_counts(run_dir):
    """Signals per instrument in worker 0's signal ring, read by the test as a reader of its own."""
    from tickwire.engine.worker import ring_names
    from tickwire.ext import SIGNAL_DTYPE
    from tickwire.ext.ring import Ring

    r = Ring.attach(ring_names(run_dir, 0)[1], SIGNAL_DTYPE, start="oldest")
    buf = np.empty(4096, SIGNAL_DTYPE)
    counts = collections.Counter()
    try:
        while k := r.pop_many(buf, timeout=0):
            counts.update(int(i) for i in buf[:k]["instrument"])
    finally:
        r.close()
    return counts


@needs_tmux
def test_top_in_tmux_shows_the_daemon_follows_keys_and_waits_when_it_is_killed_until_it_is_back(tmp_path):
    raw = demo_raw_config(tmp_path / "state", run="top")
    raw["metrics"]["hdr_interval_s"] = 1.0
    raw["feeds"]["stale_after_ms"] = 120_000          # the channels stay live (in sync) after the stream ends
    cfg_path = tmp_path / "top.toml"
    cfg_path.write_text(to_toml(raw))
    run_dir = tmp_path / "state" / "top"
    remove_rings("top")
    daemon, log = start_daemon(cfg_path, tmp_path)
    screen = None
    try:
        assert wait_for(lambda: status(run_dir)["pid"]), "the worker never reported"
        sim = start_sim(raw, EVENTS, 50_000, "--save-books", str(tmp_path / "pub.npz"))
        out, _ = sim.communicate(timeout=120)
        assert sim.returncode == 0, out
        assert wait_for(lambda: status(run_dir)["counts"]["ticks_stored"] >= EVENTS, 60)
        assert wait_for(lambda: all(c["state"] == "live" and c["in_sync"]
                                    for c in status(run_dir)["channels"].values()), 60)
        time.sleep(2.5)                          # the last busy interval reaches the HDR log
        screen = Screen(tmp_path, [PY, "-m", "tickwire", "top", "--config", str(cfg_path), "--refresh", "0.3"])
        st = status(run_dir)
        events = st["feed"]["events"]                   # live events to the books (a snapshot may stand for some)
        assert 0 < events <= EVENTS
        text = screen.wait(lambda t: f"events {events:,} " in t and "tick>sig" in t)
        assert f"events {events:,} " in text, text
        lines = text.splitlines()
        assert len(lines) <= 24 and max(len(x) for x in lines) <= 80
        assert "run top" in text and "workers up 1/1" in text
        # every instrument, with its best bid and ask: the publisher's final books
        pub = published_books(tmp_path / "pub.npz")
        shown = {}
        for i in range(8):
            cells = row_of(text, f"SYN{i}")
            assert cells is not None, (i, text)
            bid, ask = bbo(pub[f"book_{i}"])
            assert cells[1:4] == [bid, ask, f"{float(ask) - float(bid):.2f}"], (i, cells, bid, ask)
            assert cells[4] == f"{(float(bid) + float(ask)) / 2:.3f}"
            shown[i] = cells[5]                                     # last trade: checked against the store below
        # the ladder of the selected book: the publisher's top levels, best first
        ladder = [x.split() for x in lines if "█" in x]
        b0 = pub["book_0"]
        assert ladder and ladder[0][2:4] == list(bbo(b0)), ladder[:2]
        # signals per instrument: what a reader of the ring of our own counts; their sum is the worker's
        want = ring_signal_counts(run_dir)
        got = {i: int(row_of(text, f"SYN{i}")[-1].replace(",", "")) for i in range(8)}
        assert got == {i: want.get(i, 0) for i in range(8)}
        assert sum(got.values()) == st["counts"]["signals"] > 0
        assert "gaps 0" in text and "lost 0" in text and "restarts w0 0, writer 0" in text
        # the latency of the last busy interval: what the whole interval log says for it
        from tickwire.engine import plots
        from tickwire.engine.top import _us

        for stage, label in (("book", "book"), ("tick_to_signal", "tick>sig")):
            rows = plots.load_latency(run_dir / "hdr" / "w0.hlog").rows.get(stage, [])
            cells = latency_row(lines, label)
            assert cells[:2] == [_us(rows[-1][2]), _us(rows[-1][3])], (stage, cells, rows[-1])
        # the keyboard: down twice selects SYN2 (row marker and ladder)
        screen.keys("Down", "j")
        text = screen.wait(lambda t: "book SYN2" in t)
        assert "book SYN2" in text and "> SYN2" in text, text
        screen.keys("Up")
        assert "> SYN1" in screen.wait(lambda t: "> SYN1" in t)
        # the daemon is killed: top says so and waits (the workers stop with the supervisor, and
        # the writer drains what they left)
        worker = status(run_dir)["pid"]
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
        assert wait_for(lambda: not alive(worker) and not writer_pid("top"), 60)
        shutil.copy(run_dir / "hdr" / "w0.hlog", tmp_path / "w0.hlog")   # the next start writes it afresh
        text = screen.wait(lambda t: "went away" in t)
        assert "the daemon for run 'top' went away" in text and "waiting for it" in text, text
        time.sleep(1.0)
        assert "EXIT" not in screen.text()
        # ...and shows it again when it is back
        log.close()
        daemon, log = start_daemon(cfg_path, tmp_path, "daemon2")
        text = screen.wait(lambda t: "workers up 1/1" in t and "went away" not in t and "SYN7" in t, 60)
        assert "workers up 1/1" in text and "went away" not in text, text
        screen.keys("q")
        text = screen.wait(lambda t: "EXIT" in t, 10)
        assert "EXIT 0" in text, text + (tmp_path / "top.err").read_text()
    finally:
        if screen is not None:
            screen.close()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=40)
        log.close()
        remove_rings("top")
    assert not (tmp_path / "top.err").read_text().strip()
    # last trade per instrument: the last TRADE event of its channel in the store
    rows = query(f"chdb://{tmp_path}/state/store", "SELECT instrument, argMax(price, seq) FROM tickwire.ticks "
                                                   "WHERE kind = 4 AND bitAnd(flags, 2) = 0 GROUP BY instrument")
    assert {i: f"{p / 100:.2f}" for i, p in rows} == shown
    # `tickwire plot latency` on the log this daemon wrote: a PNG, every stage
    res = subprocess.run([PY, "-m", "tickwire", "plot", "latency", str(tmp_path / "w0.hlog"), "-o",
                          str(tmp_path / "w0.png")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "w0.png").read_bytes()[:4] == b"\x89PNG"
    assert all(f"  {s}: p50" in res.stdout for s in ("decode", "book", "stats", "rules", "tick_to_signal"))


def test_no_daemon_is_one_clear_line_and_a_non_zero_exit(tmp_path):
    raw = demo_raw_config(tmp_path / "state", run="idle")
    cfg_path = tmp_path / "idle.toml"
    cfg_path.write_text(to_toml(raw))
    res = subprocess.run([PY, "-m", "tickwire", "top", "--config", str(cfg_path)], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.count("\n") == 1
    assert "no daemon is running for run 'idle'" in res.stderr and "tickwire run --config" in res.stderr


def test_rates_are_taken_over_the_status_files_own_times_whatever_the_refresh(tmp_path):
    """Workers write their status every 0.5 s; at --refresh 0.25 the events rate alternated
    between twice the real one and 0 (docs/top.md's own example, 40.4k/s and 0/s at 20k/s)."""
    import json

    from tickwire.engine.config import from_dict
    from tickwire.engine.top import Collector

    cfg = from_dict(demo_raw_config(tmp_path / "state", run="rates"))
    run_dir = tmp_path / "state" / "rates"
    run_dir.mkdir(parents=True)
    col = Collector(cfg, run_dir)

    def write(t, events):
        (run_dir / "worker-0.json").write_text(json.dumps({"time": t, "feed": {"events": events, "messages": 0},
                                                           "counts": {"signals": 0}}))
    t0 = 1_700_000_000.0
    seen = []
    for k in range(8):                                    # two screens per status write
        if k % 2 == 0:
            write(t0 + 0.5 * (k // 2), 10_000 * (k // 2))  # 20,000 events/s
        seen.append(col.refresh().rates.get("events"))
    assert seen[0] is None and seen[1] is None and all(r == pytest.approx(20_000) for r in seen[2:]), seen


def test_rates_of_several_workers_are_each_over_its_own_status_times_then_added(tmp_path):
    """Two workers writing their status at their own phases: every worker's counts were timed by
    the newest file's interval alone, and top said 0 to 40,000 events/s of 20,000 (an adversarial
    pass). Each worker's rate is taken over its own file's times, then added."""
    import json

    from tickwire.engine.config import from_dict
    from tickwire.engine.top import Collector

    raw = demo_raw_config(tmp_path / "state", run="rates", workers=[{"name": "w0", "cpu": 1, "instruments": [0, 1, 4, 5]},
                                                                    {"name": "w1", "cpu": 0, "instruments": [2, 3, 6, 7]}])
    run_dir = tmp_path / "state" / "rates"
    run_dir.mkdir(parents=True)
    col = Collector(from_dict(raw), run_dir)
    t0, phase = 1_700_000_000.0, (0.0, 0.1)
    seen = []
    for k in range(1, 16):                                # screens every 0.3 s; each worker writes every 0.5 s
        for i in (0, 1):
            t = phase[i] + 0.5 * ((0.3 * k - phase[i]) // 0.5)
            (run_dir / f"worker-{i}.json").write_text(json.dumps({"time": t0 + t, "feed": {"events": int(10_000 * t),
                                                                  "messages": 0}, "counts": {"signals": 0}}))
        seen.append(col.refresh().rates.get("events"))
    assert seen[0] is None and all(r == pytest.approx(20_000) for r in seen[1:]), seen


def test_top_shows_the_running_daemon_s_instruments_workers_and_only_its_workers_files(tmp_path):
    """Found by an adversarial pass: top priced and named the instruments as the config file said
    after an edit (tick size 0.1 for the daemon's 0.01: prices ten times off, under a symbol the
    daemon did not run); and right after a start it showed the last run's worker files (counters,
    rates) as the new daemon's. It reads the daemon's config.json, and a worker file counts once
    it is the process supervisor.json names."""
    import json
    from decimal import Decimal

    from tickwire.engine.config import from_dict
    from tickwire.engine.top import Collector

    raw = demo_raw_config(tmp_path / "state", run="edited")
    run_dir = tmp_path / "state" / "edited"
    run_dir.mkdir(parents=True)
    daemon = json.loads(json.dumps(raw))                  # as it started: symbols D<i>, tick 0.01, worker "engine"
    for d in daemon["instruments"]:
        d["symbol"], d["tick_size"] = d["symbol"].replace("SYN", "D"), "0.01"
    daemon["workers"][0]["name"] = "engine"
    (run_dir / "config.json").write_text(json.dumps({"raw": daemon, "base_dir": str(tmp_path)}))
    for d in raw["instruments"]:                          # the file, edited since
        d["tick_size"] = "0.1"
    col = Collector(from_dict(raw), run_dir)
    st = col.state
    assert [i.symbol for i in st.instruments][:2] == ["D0", "D1"] and st.worker_names == ["engine"]
    assert st.instruments[0].tick_size == Decimal("0.01") and st.instruments[0].format_price(10_001) == "100.01"
    assert col.hlogs[0].path == run_dir / "hdr" / "engine.hlog"
    # the supervisor (alive: this process) names its worker's pid; the last run's file does not count
    (run_dir / "supervisor.json").write_text(json.dumps({"pid": os.getpid(), "children": {"engine": {"pid": 4242}}}))
    (run_dir / "worker-0.json").write_text(json.dumps({"pid": 1111, "worker": "engine", "time": time.time(),
                                                       "feed": {"events": 999_999}, "counts": {"signals": 7}}))
    assert col.refresh().workers == [{}]
    (run_dir / "worker-0.json").write_text(json.dumps({"pid": 4242, "worker": "engine", "time": time.time(),
                                                       "feed": {"events": 12}, "counts": {"signals": 0}}))
    assert col.refresh().workers[0]["feed"]["events"] == 12


def test_top_into_a_pipe_or_a_dumb_terminal_says_it_needs_a_terminal(tmp_path):
    """With its output not a terminal, top drew nothing and ran until killed; on a terminal with
    TERM=dumb it drew a blank screen for as long as it ran (an adversarial pass): one line each,
    exit 2."""
    import pty

    raw = demo_raw_config(tmp_path / "state", run="pipe")
    cfg_path = tmp_path / "pipe.toml"
    cfg_path.write_text(to_toml(raw))
    daemon = subprocess.Popen([PY, "-m", "tickwire", "run", "--config", str(cfg_path)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: (tmp_path / "state" / "pipe" / "metrics.url").exists(), 60)
        res = subprocess.run([PY, "-m", "tickwire", "top", "--config", str(cfg_path)], capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
        leader, follower = pty.openpty()
        try:
            dumb = subprocess.run([PY, "-m", "tickwire", "top", "--config", str(cfg_path)], stdout=follower,
                                  stderr=subprocess.PIPE, text=True, timeout=60, stdin=subprocess.DEVNULL,
                                  env=dict(os.environ, TERM="dumb"))
        finally:
            os.close(leader)
            os.close(follower)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    assert res.returncode == 2 and res.stdout == "" and res.stderr.count("\n") == 1, res
    assert "needs a terminal" in res.stderr and "tickwire status --config" in res.stderr
    assert dumb.returncode == 2 and dumb.stderr.count("\n") == 1, dumb
    assert "TERM=dumb cannot move the cursor" in dumb.stderr


@pytest.mark.parametrize("ns, cell", [(None, "-"), (149, "0.1"), (99_940, "99.9"), (9_999_000, "9,999"),
                                      (14_916_800, "14.9m"), (167_903_200, "168m"), (1_234_000_000, "1.2s"),
                                      (123_456_000_000, "123s"), (10**17, ">1e4s")])
def test_a_latency_cell_never_runs_into_the_next(ns, cell):
    """Found by a newcomer: from 10 ms up a cell took 6 or 7 characters of its 6-wide column
    ("1.6167,903200,933248,513")."""
    from tickwire.engine.top import _us

    assert _us(ns) == cell and len(cell) <= 5


def test_render_fits_80x24_and_draws_the_ladder_of_the_selected_book():
    """The screen from a given state (no daemon): every line within the terminal, the selected
    instrument's levels best first with bars as long as their sizes allow."""
    import io

    from rich.console import Console

    from tickwire.engine.instruments import Instrument
    from tickwire.engine.top import SignalTail, TopState, render

    insts = [Instrument(i, f"SYN{i}", tick_size="0.01", lot_size="1") for i in range(12)]
    books = {i: {"instrument": i, "symbol": f"SYN{i}", "bids": [[10_000 - k, 1000 * (k + 1), 1] for k in range(10)],
                 "asks": [[10_002 + k, 500 * (k + 1), 2] for k in range(10)], "last_seq": 77, "last_ts_event": 0,
                 "in_sync": i != 3, "worker": "w0", "signals": 7 * i, "last_trade": [10_001, 5, 1] if i else None}
             for i in range(12)}
    st = TopState("r", None, insts, ["w0"], running=True, books=books, selected=11, now=time.time(),
                  workers=[{"pid": os.getpid(), "feed": {"events": 5, "gaps": 1}}])
    st.latency = {"book": (100, 2000, 3000, 4000, 10, [1000, 2000, None, 3000])}
    for w, h in ((80, 24), (132, 43)):
        con = Console(file=io.StringIO(), width=w, height=h, force_terminal=False)
        con.print(render(st, SignalTail("/nonexistent"), w, h))
        lines = con.file.getvalue().splitlines()
        assert len(lines) <= h and max(map(len, lines)) <= w, (w, h, lines)
        text = "\n".join(lines)
        assert "book SYN11 seq 77" in text and "> SYN11" in text
        assert ("SYN3*" in text) == (h > 24)          # 80x24: a window of 8 around the selected
        assert row_of(text, "SYN11")[-2:] == ["100.01", "77"]     # last trade, the engine's signal count
        ladder = [x for x in lines if "█" in x]
        assert ladder[0].split()[0] == "1000" and "█ 100.00 100.02 █" in ladder[0] and " 500 " in ladder[0]
        assert "2000 " in ladder[1] and "99.99 100.03" in ladder[1]
        assert ladder[1].count("█") > ladder[0].count("█")          # bigger sizes, longer bars
        assert re.search(r"book +0\.1 +2\.0 +3\.0 +4\.0 ▁▅█", text)          # us; p99 trend (None: a gap)
    st.selected = 3
    con = Console(file=io.StringIO(), width=80, height=24, force_terminal=False)
    con.print(render(st, SignalTail("/nonexistent"), 80, 24))
    text = con.file.getvalue()
    # the short note at 80 columns (the long one cut the latency title off: a newcomer's pass)
    assert "SYN3*" in text and "book SYN3 seq 77 (* out of sync)" in text and "latency, last busy interval" in text
    con = Console(file=io.StringIO(), width=132, height=43, force_terminal=False)
    con.print(render(st, SignalTail("/nonexistent"), 132, 43))
    assert "book SYN3 seq 77 (* out of sync: a silent feed, or resyncing)" in con.file.getvalue()
    # a worker whose status is not written (its state disk full) but touched: frozen, not stale
    for touched, said in ((st.now, "figures frozen: w0"), (st.now - 60, "status stale: w0")):
        st.workers = [{"pid": os.getpid(), "worker": "w0", "time": st.now - 60, "_touched": touched,
                       "feed": {"events": 5, "gaps": 1}}]
        con = Console(file=io.StringIO(), width=132, height=43, force_terminal=False)
        con.print(render(st, SignalTail("/nonexistent"), 132, 43))
        assert said in con.file.getvalue(), con.file.getvalue()


def test_a_terminal_smaller_than_80x24_is_said_and_nice_out_of_range_is_refused(tmp_path):
    """Found by an adversarial pass: on a terminal smaller than its 80x24 frame top cropped it
    without a word; `--nice 99999999999999999999` was an OverflowError traceback."""
    import io

    from rich.console import Console

    from tickwire.engine.top import SignalTail, TopState, frame

    st = TopState("r", None, [], ["w0"], running=True, now=time.time())
    for w, h in ((79, 24), (80, 23), (40, 10)):
        con = Console(file=io.StringIO(), width=w, height=h, force_terminal=False)
        con.print(frame(st, SignalTail("/nonexistent"), w, h))
        assert " ".join(con.file.getvalue().split()) == f"terminal too small: need 80x24, have {w}x{h} (q quits)"
    con = Console(file=io.StringIO(), width=80, height=24, force_terminal=False)
    con.print(frame(st, SignalTail("/nonexistent"), 80, 24))
    assert "tickwire top" in con.file.getvalue() and "too small" not in con.file.getvalue()
    cfg_path = tmp_path / "nice.toml"
    cfg_path.write_text(to_toml(demo_raw_config(tmp_path / "state", run="nice")))
    for nice in ("99999999999999999999", "20", "-21"):
        res = subprocess.run([PY, "-m", "tickwire", "top", "--config", str(cfg_path), "--nice", nice],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode == 2 and res.stderr == (f"tickwire top: --nice: expected a niceness from -20 to 19 "
                                                      f"(0: as started), got {nice}\n"), res


def test_signal_times_are_in_the_header_clock_s_time_zone(monkeypatch):
    """Found by an adversarial pass: under TZ=JST-9 the signal list said 08:30:31 beside a header
    clock of 17:30:32 (signals in UTC, the clock in local time)."""
    import io

    import numpy as np
    from rich.console import Console

    from tickwire.engine.instruments import Instrument
    from tickwire.engine.top import SignalTail, TopState, render
    from tickwire.ext import SIGNAL_DTYPE

    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    try:
        now = time.time()
        st = TopState("r", None, [Instrument(0, "SYN0", tick_size="0.01", lot_size="1")], ["w0"], running=True,
                      books={}, selected=0, now=now, workers=[{"pid": os.getpid(), "feed": {"events": 5}}])
        tail = SignalTail("/nonexistent")
        sig = np.zeros(1, SIGNAL_DTYPE)[0]
        sig["ts_signal"], sig["direction"], sig["seq"] = int(now * 1e9), 1, 42
        tail.recent.append(sig)
        con = Console(file=io.StringIO(), width=100, height=30, force_terminal=False)
        con.print(render(st, tail, 100, 30))
        text = con.file.getvalue()
        clock = time.strftime("%H:%M:%S", time.localtime(now))
        assert clock in text.splitlines()[0]
        line = next(x for x in text.splitlines() if "seq 42" in x)
        assert line.split()[0].startswith(clock), (clock, line)
    finally:
        monkeypatch.undo()
        time.tzset()
