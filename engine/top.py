"""``tickwire top``: a live full-screen view of a running daemon, in the terminal.

What it shows, and where each figure comes from (nothing here is in the daemon's hot path):

- per instrument best bid/ask, spread, mid (the worker's books: :func:`fetch_books`, a book
  request the worker's engine thread answers between batches) and the signals ``top`` read
  from the ring, by instrument; a book ladder (top levels, sizes as bars) of the instrument
  selected with the arrow keys (or j/k);
- the latest signals, scrolling: each worker's broadcast signal ring, read as one more
  broadcast consumer with non-blocking pops (``timeout=0``): a consumer that never sleeps on
  the ring's futex never makes the producer issue a wake-up, and a lapped or suspended reader
  costs the producer nothing (its slots are simply overwritten; the reader is told how many
  it missed);
- per-stage latency of the last interval (p50/p99/p99.9/max) and a sparkline of p99 over the
  last intervals: the workers' HDR interval logs (``<run dir>/hdr/<worker>.hlog``), tailed;
- feed rates, gaps, recoveries, drops, lost events, writer lag and spill state, restarts: the
  status files the workers, the writer and the supervisor write in the run directory.

Last trade and signals per instrument come with the book reply (the engine's own last trade
and signal counters, since the worker started); where a reply has none, the last trade is
``n/a`` and the signal count is what ``top`` read from the ring.

Rendering: rich (see docs/top.md for why rich and not textual). The loop wakes on a key or
the refresh period; one refresh is a few status-file reads, a non-blocking ring drain, a tail
of the interval logs and one book request.
"""

from __future__ import annotations

import collections
import json
import os
import select
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

__all__ = ["TopState", "HlogTail", "SignalTail", "Collector", "fetch_books", "render", "frame", "run_top",
           "add_parser", "cmd_top"]

SPARK = "▁▂▃▄▅▆▇█"
#: Signals kept for the scrolling list.
SIGNALS_KEPT = 200
#: Most signals read per ring per refresh (a faster stream laps top, which is told how many it missed).
SIGNALS_PER_REFRESH = 8192
#: Bytes of an interval log read back at start (the recent intervals).
HLOG_BACKLOG = 256 * 1024
#: A status file older than this: the worker is not reporting.
STALE_S = 5.0


# -- sources -------------------------------------------------------------------------------------

def fetch_books(run_dir, instruments, depth: int, timeout: float = 0.5):
    """The workers' books of ``instruments`` (the ones on screen): ``({instrument: reply}, None)``
    or ``(None, why not)``. The one place ``top`` asks the daemon for them
    (``tickwire.engine.live.request_books``: one request per worker, answered between batches)."""
    try:
        from tickwire.engine.live import DaemonNotRunning, request_books
    except ImportError:
        return None, "this tickwire cannot request books (no tickwire.engine.live)"
    try:
        return request_books(run_dir, instruments, depth=depth, timeout=timeout), None
    except DaemonNotRunning as exc:
        return None, f"no worker answers book requests ({exc})"
    except (OSError, TimeoutError, ValueError) as exc:
        return None, f"book request failed: {exc}"


def _alive(pid) -> bool:
    """Whether process ``pid`` runs (not a zombie)."""
    from tickwire.engine.supervisor import _pid_alive

    try:
        return bool(pid) and _pid_alive(int(pid))
    except (TypeError, ValueError):
        return False


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _status(path: Path) -> dict:
    """A worker's status file, with ``_touched`` (its modification time: a worker that cannot
    write it, its state disk full, still touches it), or {}."""
    try:
        with open(path, "rb") as f:
            st = json.loads(f.read())
            st["_touched"] = os.fstat(f.fileno()).st_mtime
            return st
    except (OSError, ValueError):
        return {}


class HlogTail:
    """Follow one HDR interval log: the latest histogram per tag and p99 per interval."""

    def __init__(self, path: Path, keep: int = 120):
        self.path = Path(path)
        self.keep = keep
        self.pos = None
        self.ino = None
        self.base = 0.0
        self.last: dict = {}                              # tag -> (end s, HdrHistogram)
        self.p99: dict = {}                               # tag -> deque of (end s, p99 ns)
        self.errors = 0

    def poll(self) -> int:
        """Read new complete lines; returns how many intervals were added."""
        try:
            st = os.stat(self.path)
        except OSError:
            return 0
        if st.st_ino != self.ino or (self.pos is not None and st.st_size < self.pos):
            self.pos, self.ino = None, st.st_ino          # a new file (the worker restarted)
            self.last, self.p99 = {}, {}
        added = 0
        with open(self.path, "rb") as f:
            if self.pos is None:
                head = f.read(4096)
                for line in head.splitlines():
                    if line.startswith(b"#[BaseTime:"):
                        self.base = float(line.split()[1])
                self.pos = 0
                if st.st_size > HLOG_BACKLOG:
                    f.seek(st.st_size - HLOG_BACKLOG)
                    f.readline()                          # to the next whole line
                    self.pos = f.tell()
            f.seek(self.pos)
            data = f.read(max(st.st_size - self.pos, 0))
        end = data.rfind(b"\n")
        if end < 0:
            return 0
        self.pos += end + 1
        for line in data[:end].splitlines():
            if not line or line.startswith((b"#", b'"')):
                if line.startswith(b"#[BaseTime:"):
                    self.base = float(line.split()[1])
                continue
            added += self._line(line.decode("ascii", "replace"))
        return added

    def _line(self, line: str) -> int:
        from hdrh.histogram import HdrHistogram

        tag = None
        if line.startswith("Tag="):
            tag, _, line = line[4:].partition(",")
        try:
            start, length, _mx, payload = line.split(",", 3)
            hist = HdrHistogram.decode(payload.strip())
            end = self.base + float(start) + float(length)
            iv = Hist.of(hist)
        except Exception:                                 # noqa: BLE001 - a torn or garbled line
            self.errors += 1
            return 0
        if iv.total:                                      # an idle interval keeps the last busy one shown
            self.last[tag] = (end, iv)
        self.p99.setdefault(tag, collections.deque(maxlen=self.keep)).append(
            (end, iv.percentiles((99.0,))[0] if iv.total else None))
        return 1


class Hist:
    """An interval histogram as numpy counts (hdrh's layout): percentiles with one cumulative sum
    instead of hdrh's Python loop (same values: the highest equivalent value of the bucket)."""

    _values = None                                        # bucket index -> highest equivalent value

    def __init__(self, counts, total: int, max_value: int):
        self.counts, self.total, self.max_value = counts, total, max_value

    @classmethod
    def of(cls, hist) -> "Hist":
        n = hist.counts_len
        return cls(np.frombuffer(hist.counts, np.int64, n).copy(), hist.get_total_count(), hist.get_max_value())

    @classmethod
    def empty(cls) -> "Hist":
        return cls(np.zeros(len(cls.values()), np.int64), 0, 0)

    @classmethod
    def values(cls):
        if cls._values is None:
            from tickwire.engine.latency import new_hdrh

            h = new_hdrh()
            cls._values = np.array([h.get_highest_equivalent_value(h.get_value_from_index(i))
                                    for i in range(h.counts_len)], np.int64)
        return cls._values

    def add(self, other: "Hist") -> None:
        self.counts += other.counts
        self.total += other.total
        self.max_value = max(self.max_value, other.max_value)

    def percentiles(self, levels):
        if not self.total:
            return [0 for _ in levels]
        cum = np.cumsum(self.counts)
        targets = [max(int(min(p, 100.0) * self.total / 100 + 0.5), 1) for p in levels]
        idx = np.minimum(np.searchsorted(cum, targets, side="left"), len(cum) - 1)
        return [int(v) for v in self.values()[idx]]


class SignalTail:
    """Each worker's broadcast signal ring, read with non-blocking pops (see the module doc)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.rings = []
        self.names = None
        self.recent = collections.deque(maxlen=SIGNALS_KEPT)
        self.by_instrument: collections.Counter = collections.Counter()
        self.read = 0
        self.missed = 0
        self.error = None
        self._buf = None

    def _attach(self) -> None:
        from tickwire.engine.worker import read_ring_names
        from tickwire.ext import SIGNAL_DTYPE
        from tickwire.ext.ring import Ring

        try:
            names = read_ring_names(self.run_dir)
        except (OSError, ValueError, KeyError) as exc:
            self.error = f"rings.json unreadable: {exc}"
            return
        if names == self.names and self.rings:
            return
        self.close()
        self.names = names
        for _, sig in names or []:
            try:
                self.rings.append(Ring.attach(sig, SIGNAL_DTYPE, start="oldest", wait=0))
                self.error = None
            except FileNotFoundError:
                self.error = "the signal ring is gone (the daemon stopped)"
            except (PermissionError, ValueError) as exc:
                self.error = f"cannot attach to signal ring {sig}: {exc}"
        if self._buf is None:
            self._buf = np.empty(1024, SIGNAL_DTYPE)

    def poll(self) -> int:
        self._attach()
        got = 0
        for r in self.rings:
            n = 0
            while n < SIGNALS_PER_REFRESH:
                k = r.pop_many(self._buf, timeout=0)      # never waits: never asks the producer for a wake-up
                self.missed += r.last_missed
                if not k:
                    break
                n += k
                s = self._buf[:k]
                for iid, cnt in zip(*np.unique(s["instrument"], return_counts=True)):
                    self.by_instrument[int(iid)] += int(cnt)
                self.recent.extend(s[-SIGNALS_KEPT:].copy())
            got += n
        self.read += got
        return got

    def close(self) -> None:
        for r in self.rings:
            r.close()
        self.rings = []


@dataclass
class TopState:
    """Everything one screen shows (``collect`` fills it; ``render`` draws it)."""

    run: str
    run_dir: Path
    instruments: list                                    # tickwire Instrument, config order
    worker_names: list
    running: bool = False
    why_not: str = ""
    since_gone: float | None = None
    workers: list = field(default_factory=list)          # worker-<i>.json (or {})
    writers: list = field(default_factory=list)          # writer/<key>/status.json (or {})
    signals_status: dict = field(default_factory=dict)   # writer/signals.json
    supervisor: dict = field(default_factory=dict)       # supervisor.json
    rates: dict = field(default_factory=dict)            # events/s, messages/s, signals/s
    books: dict | None = None
    books_note: str = ""
    latency: dict = field(default_factory=dict)          # stage -> (p50, p99, p99.9, max, count, [p99...])
    interval_end: float | None = None
    selected: int = 0
    now: float = 0.0


class Collector:
    """Reads the sources; one :meth:`refresh` per screen."""

    def __init__(self, cfg, run_dir: Path | None = None, depth: int = 10):
        self.given = cfg
        self.run_dir = Path(run_dir or Path(cfg.state_dir) / cfg.run)
        self.depth = depth
        self.signals = SignalTail(self.run_dir)
        self._attach()

    def _attach(self) -> None:
        """Instruments, workers, interval logs and writer keys as the daemon runs them (its run
        directory's config.json; the config given when there is none): a config edited since the
        start gave prices ten times off under a symbol the daemon did not run (an adversarial pass)."""
        from tickwire.engine.config import running_config
        from tickwire.engine.worker import ring_keys

        cfg = self.cfg = running_config(self.given, self.run_dir)
        self.sup_pid = (_json(self.run_dir / "supervisor.json") or {}).get("pid")
        self.keys = [ring_keys(cfg, i)[0] for i in range(len(cfg.workers))]
        hdr_dir = Path(cfg.metrics.hdr_dir) if cfg.metrics.hdr_dir else self.run_dir / "hdr"
        self.hlogs = [HlogTail(hdr_dir / f"{w.name}.hlog") for w in cfg.workers]
        self.state = TopState(cfg.run, self.run_dir, list(cfg.instruments), [w.name for w in cfg.workers])
        self._prev = {}                                   # worker index -> (time, pid, events, messages, signals)
        self._worker_rates = {}                           # worker index -> (events/s, messages/s, signals/s)

    def daemon_running(self):
        """(running, why not): the supervisor's pid, else any worker's, is alive."""
        sup = _json(self.run_dir / "supervisor.json") or {}
        if sup.get("pid"):
            if _alive(sup["pid"]):
                return True, ""
            return False, f"the supervisor (pid {sup['pid']}) is not running"
        pids = [(_json(self.run_dir / f"worker-{i}.json") or {}).get("pid") for i in range(len(self.cfg.workers))]
        if any(_alive(p) for p in pids):
            return True, ""
        if not any(pids):
            return False, f"no status files in {self.run_dir}"
        return False, "no worker process is alive"

    def refresh(self, selected: int = 0, rows: int | None = None) -> TopState:
        """One screen's data; ``rows``: instrument rows on screen (books are asked for those)."""
        running, why = self.daemon_running()
        if running and (_json(self.run_dir / "supervisor.json") or {}).get("pid") != self.sup_pid:
            self._attach()                                # another daemon for the run: its config
        st = self.state
        st.now = time.time()
        st.selected = min(selected, max(len(st.instruments) - 1, 0))
        if running:
            st.since_gone = None
        elif st.running or st.since_gone is None:
            st.since_gone = st.now
        st.running, st.why_not = running, why
        st.supervisor = _json(self.run_dir / "supervisor.json") or {}
        st.workers = [_status(self.run_dir / f"worker-{i}.json") for i in range(len(self.cfg.workers))]
        kids = (st.supervisor.get("children") or {}) if running else {}
        if kids:
            # a file that is not the supervisor's current child's: the last run's (or a restarted
            # worker's predecessor's) until the new process writes its own; it was shown as current
            # for up to a second after a start (an adversarial pass)
            st.workers = [s if s.get("pid") == (kids.get(w.name) or {}).get("pid") else {}
                          for s, w in zip(st.workers, self.cfg.workers)]
        st.writers = [_json(self.run_dir / "writer" / k / "status.json") or {} for k in self.keys]
        st.signals_status = _json(self.run_dir / "writer" / "signals.json") or {}
        self._rates(st)
        if running:
            self.signals.poll()
            n = len(st.instruments)
            first, last = window(n, selected, n if rows is None else rows)
            ids = [i.id for i in st.instruments[first:last]]
            st.books, st.books_note = fetch_books(self.run_dir, ids, self.depth)
        else:
            self.signals.close()
            self.signals.names = None
        if sum(t.poll() for t in self.hlogs) or not st.latency:
            self._latency(st)
        return st

    def _rates(self, st: TopState) -> None:
        # each worker's over the time between its own status file's stamps, not the screens': a
        # worker writes its file every 0.5 s, and at --refresh 0.25 the rate alternated between
        # twice the real one and 0 (two screens per write); a screen between two writes keeps its
        # last rates. Then added: every worker's counts over the newest file's interval alone
        # (workers write at their own phases) read 0 to twice the total (an adversarial pass)
        for i, w in enumerate(st.workers):
            t = w.get("time") if w else None
            if not t:                                     # no status (yet): no rate
                self._prev.pop(i, None)
                self._worker_rates.pop(i, None)
                continue
            cur = (t, w.get("pid"), w.get("feed", {}).get("events", 0), w.get("feed", {}).get("messages", 0),
                   w.get("counts", {}).get("signals", 0))
            prev = self._prev.get(i)
            if prev is not None and prev[1] == cur[1] and t <= prev[0]:
                continue                                  # not rewritten since
            if prev is not None and prev[1] == cur[1]:
                dt = t - prev[0]
                self._worker_rates[i] = tuple(max(c - p, 0) / dt for c, p in zip(cur[2:], prev[2:]))
            else:                                         # its first file, or a restarted worker's
                self._worker_rates.pop(i, None)
            self._prev[i] = cur
        if self._worker_rates:
            rates = list(self._worker_rates.values())
            st.rates = {k: sum(r[j] for r in rates) for j, k in enumerate(("events", "messages", "signals"))}

    def _latency(self, st: TopState) -> None:
        from tickwire.ext.hdr import STAGES

        out = {}
        ends = []
        for stage in STAGES:
            h = Hist.empty()
            series = []
            for t in self.hlogs:
                if stage in t.last:
                    end, iv = t.last[stage]
                    ends.append(end)
                    h.add(iv)
                # several workers: the worst p99 of each interval, aligned from the latest
                p = [v for _, v in t.p99.get(stage, ())]
                k = max(len(series), len(p))
                series = [a if b is None else b if a is None else max(a, b)
                          for a, b in zip(_pad(series, k), _pad(p, k))]
            out[stage] = ((*h.percentiles((50.0, 99.0, 99.9)), h.max_value, h.total, series) if h.total else
                          (None, None, None, None, 0, series))
        st.latency = out
        st.interval_end = max(ends) if ends else None


def _pad(xs, n):
    return [None] * (n - len(xs)) + list(xs)


# -- drawing ---------------------------------------------------------------------------------------

def _us(ns) -> str:
    """A latency cell in at most 5 characters: microseconds, then ``m`` (milliseconds) from 10 ms
    and ``s`` (seconds) from 1 s. ("10,000" and "167,903" ran into the next column.)"""
    if ns is None:
        return "-"
    us = ns / 1e3
    if us < 100:
        return f"{us:.1f}"
    if us < 10_000:
        return f"{us:,.0f}"
    if us < 100_000:
        return f"{us / 1e3:.1f}m"
    if us < 1e6:
        return f"{us / 1e3:.0f}m"
    s = us / 1e6
    return f"{s:.1f}s" if s < 100 else (f"{s:.0f}s" if s < 10_000 else ">1e4s")


def sparkline(values, width: int) -> str:
    vals = [v for v in values if v is not None][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1
    return "".join(SPARK[min(int((v - lo) / span * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for v in vals)


def _count(n) -> str:
    n = float(n or 0)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div * 10:
            return f"{n / div:,.1f}{unit}"
    return f"{n:,.0f}"


def _bbo(st: TopState, inst):
    """(bid, ask, bid qty, ask qty) in ticks/lots, or Nones."""
    b = (st.books or {}).get(inst.id)
    if not b:
        return None, None, None, None
    bid = b["bids"][0] if b.get("bids") else (None, None)
    ask = b["asks"][0] if b.get("asks") else (None, None)
    return bid[0], ask[0], bid[1], ask[1]


def instrument_rows(n: int, height: int) -> int:
    """Instrument rows on a screen ``height`` lines tall."""
    return min(n, max(height - 16, 3))


def window(n: int, selected: int, rows: int) -> tuple[int, int]:
    """The ``rows`` instruments shown, around the selected one: (first, end)."""
    first = min(max(selected - rows // 2, 0), max(n - rows, 0))
    return first, min(first + rows, n)


def _line(*parts, width: int):
    """One screen line of (text, style) parts, cropped or padded to ``width``."""
    from rich.text import Text

    t = Text.assemble(*parts, no_wrap=True, overflow="crop")
    t.truncate(width, pad=True)
    return t


def _instrument_lines(st: TopState, sig_counts, rows: int, width: int) -> list:
    """Header and ``rows`` instruments (a window around the selected one). Fixed-width cells:
    rich's Table measures every cell each frame, which costs more than the rest of top."""
    widths = (12, 12, 9, 13, 11, 9)                       # bid ask spread mid last signals
    sym_w = min(max(width - 2 - sum(widths), 8), 24)
    head = ("  " + f"{'instrument':<{sym_w}}" + "".join(f"{h:>{w}}" for h, w in
            zip(("bid", "ask", "spread", "mid", "last trade", "signals"), widths)))
    out = [_line((head, "bold"), width=width)]
    n = len(st.instruments)
    first, last = window(n, st.selected, rows)
    for k in range(first, last):
        inst = st.instruments[k]
        bid, ask, _, _ = _bbo(st, inst)
        b = (st.books or {}).get(inst.id) or {}
        mid = spread = "-"
        if bid is not None and ask is not None:
            spread = inst.format_price(ask - bid)
            mid = f"{(bid + ask) / 2 * float(inst.tick_size):.{_decimals(inst) + 1}f}"
        last = (b.get("last_trade") or [None])[0]
        sigs = b.get("signals", sig_counts.get(inst.id, 0))
        sym = inst.symbol + ("" if not b or b.get("in_sync", True) else "*")      # out of sync (ladder title)
        cells = (inst.format_price(bid) if bid is not None else "-", inst.format_price(ask) if ask is not None else "-",
                 spread, mid, inst.format_price(last) if last is not None else "n/a", f"{sigs:,}")
        text = ("> " if k == st.selected else "  ") + f"{sym:<{sym_w}}"[:sym_w] + "".join(
            f"{c:>{w}}"[-w:] for c, w in zip(cells, widths))
        out.append(_line((text, "reverse" if k == st.selected else ""), width=width))
    return out


def _decimals(inst) -> int:
    return max(-inst.tick_size.as_tuple().exponent, 0)


def _ladder_lines(st: TopState, depth: int, width: int) -> list:
    """Header and up to ``depth`` levels a side: bid size and bar, bid, ask, ask bar and size;
    bars scaled to the largest level shown."""
    inst = st.instruments[st.selected] if st.instruments else None
    b = (st.books or {}).get(inst.id) if inst is not None else None
    if not b:
        return [[("", "")], [(f" {st.books_note or 'no book'}", "dim")]]
    bids, asks = list(b.get("bids", []))[:depth], list(b.get("asks", []))[:depth]
    prices = {lv[0]: inst.format_price(lv[0]) for lv in bids + asks}     # levels: [price, qty, orders]
    qtys = {lv[1]: inst.format_qty(lv[1]) for lv in bids + asks}
    pw = max([len(x) for x in prices.values()] + [3])
    qw = max([len(x) for x in qtys.values()] + [4])
    side_w = max((width - 2 * pw - 3) // 2, qw + 2)
    bar_w = side_w - qw - 1
    top = max(list(qtys) or [1])
    bar = lambda q: "█" * max(min(int(q / top * bar_w + 0.5), bar_w), 1)      # noqa: E731
    out = [[(f"{'size':>{side_w}} {'bid':>{pw}} {'ask':<{pw}} {'size':<{side_w}}", "bold")]]
    for k in range(max(len(bids), len(asks))):
        parts = []
        if k < len(bids):
            p, q = bids[k][:2]
            parts += [(f"{qtys[q]:>{qw}} " + " " * (bar_w - len(bar(q))), ""), (bar(q), "green"),
                      (f" {prices[p]:>{pw}}", "green")]
        else:
            parts.append((" " * (side_w + pw + 1), ""))
        if k < len(asks):
            p, q = asks[k][:2]
            parts += [(f" {prices[p]:<{pw}} ", "red"), (f"{bar(q):<{bar_w}}", "red"), (f" {qtys[q]}", "")]
        out.append(parts)
    return out


def _latency_lines(st: TopState, spark_w: int) -> list:
    out = [[(f"{'stage us':<9}{'p50':>6}{'p99':>6}{'p99.9':>6}{'max':>6} {'trend':<{spark_w}}", "bold")]]
    for stage, (p50, p99, p999, mx, n, series) in st.latency.items():
        name = stage if stage != "tick_to_signal" else "tick>sig"
        out.append([(f"{name:<9}" + "".join(f"{_us(v):>6}" for v in (p50, p99, p999, mx)) + " ", ""),
                    (sparkline(series, spark_w), "cyan")])
    return out


def _signal_lines(st: TopState, sig: SignalTail, rows: int, width: int):
    from rich.text import Text

    from tickwire.ext import RuleKind

    symbols = {i.id: i.symbol for i in st.instruments}
    lines = []
    for s in list(sig.recent)[-rows:][::-1]:
        # local time, as the header clock beside it (UTC here put them 9 h apart in Tokyo)
        ts = datetime.fromtimestamp(int(s["ts_signal"]) / 1e9).strftime("%H:%M:%S.%f")[:-3]
        try:
            rule = RuleKind(int(s["rule_kind"])).name.lower()
        except ValueError:
            rule = str(int(s["rule_kind"]))
        d = int(s["direction"])
        lines.append(Text(f"{ts} {symbols.get(int(s['instrument']), str(int(s['instrument']))):<10} {rule:<10} "
                          f"{'buy ' if d > 0 else 'sell' if d < 0 else 'exit'} value {float(s['value']):10.4f} "
                          f"seq {int(s['seq'])}"[:width], style="green" if d > 0 else "red" if d < 0 else "dim"))
    if not lines:
        lines.append(Text("no signals yet" + (f" ({sig.error})" if sig.error else ""), style="dim"))
    return lines


def _feed_lines(st: TopState, width: int):
    from rich.text import Text

    W = st.workers
    feed = [w.get("feed", {}) for w in W]
    tot = lambda key: sum(f.get(key, 0) for f in feed)           # noqa: E731
    drops = sum(sum(f.get("drops", {}).values()) for f in feed)
    lost = sum(w.get("history", {}).get("lost_events", 0) for w in W)
    events = tot("events")                                        # market events the feed delivered
    r = st.rates
    line1 = (f"events {events:,} {_count(r.get('events', 0))}/s  msgs {_count(r.get('messages', 0))}/s  "
             f"gaps {tot('gaps'):,}  recov {tot('recoveries'):,}  drops {drops:,}  lost {lost:,}")
    wr = st.writers
    lag = sum(w.get("lag", 0) for w in wr)
    spill = sum(w.get("spill_files", 0) for w in wr) + st.signals_status.get("spill_files", 0)
    outage = any(w.get("outage") for w in wr)
    kids = st.supervisor.get("children", {})
    rs = ", ".join(f"{n} {c.get('restarts', 0)}" for n, c in kids.items()) if kids else "n/a"
    line2 = (f"writer lag {lag:,}  unstored {sum(w.get('unstored', 0) for w in wr):,}  spill files {spill}"
             f"{'  OUTAGE' if outage else ''}  restarts {rs}")
    old = [w for w in W if w and st.now - w.get("time", st.now) > STALE_S]
    frozen = [w.get("worker", "?") for w in old if st.now - w.get("_touched", 0.0) <= STALE_S]
    stale = [w.get("worker", "?") for w in old if st.now - w.get("_touched", 0.0) > STALE_S]
    note = "".join((f"  status stale: {', '.join(stale)}" if stale else "",
                    f"  figures frozen: {', '.join(frozen)} (running, its status not writable: state disk full?)"
                    if frozen else ""))
    return [Text(line1[:width]), Text(line2[:width], style="bold red" if outage or spill else None),
            Text(note[:width], style="yellow") if note else None]


def render(st: TopState, sig: SignalTail, width: int, height: int):
    """The whole screen for ``width`` x ``height`` (at least 80 x 24): a rich Group of lines."""
    from rich.console import Group
    from rich.text import Text

    clock = datetime.fromtimestamp(st.now).strftime("%H:%M:%S")
    up = sum(1 for w in st.workers if w and _alive(w.get("pid")))
    title = f" run {st.run}  workers up {up}/{len(st.worker_names)}  {clock}"
    keys = "up/down select  q quit"
    head = _line((" tickwire top ", "bold reverse"), (title, ""),
                 (" " * max(width - 14 - len(title) - len(keys), 1) + keys, "dim"), width=width)
    if not st.running:
        gone = datetime.fromtimestamp(st.since_gone or st.now).strftime("%H:%M:%S")
        msg = Text(f"the daemon for run '{st.run}' went away at {gone} ({st.why_not}): waiting for it to come "
                   f"back (q quits)", style="bold yellow")
        return Group(head, Text(""), msg)
    # rows: head 1, instruments 1+k, book/latency title 1 + max(1+depth, 6), signals 1+s, feed 2 (+1)
    feed = [x for x in _feed_lines(st, width) if x is not None]
    inst_rows = instrument_rows(len(st.instruments), height)
    depth = max(5, min(20, (height - 4 - inst_rows - len(feed)) // 2 - 2))
    lat_w = 9 + 4 * 6 + 1
    spark_w = max(min(5 + (width - 80) // 2, 40), 5)     # wider screens: half to the ladder
    lat_w += spark_w
    left_w = width - lat_w - 1
    ladder = _ladder_lines(st, depth, left_w)
    latency = _latency_lines(st, spark_w)
    mid_rows = max(len(ladder), len(latency))
    sig_rows = max(height - 1 - (inst_rows + 1) - (1 + mid_rows) - 1 - len(feed), 1)
    inst = st.instruments[st.selected] if st.instruments else None
    b = (st.books or {}).get(inst.id) if inst is not None else None
    sub = f" seq {b['last_seq']}" if b and "last_seq" in b else ""
    title = "book " + (inst.symbol if inst else "-") + sub
    if b and not b.get("in_sync", True):
        # (the long note pushed the latency title off an 80-column screen: a newcomer's pass)
        long = title + " (* out of sync: a silent feed, or resyncing)"
        title = long if len(long) <= left_w else title + " (* out of sync)"
    iv = datetime.fromtimestamp(st.interval_end).strftime("%H:%M:%S") if st.interval_end else "none yet"
    lines = [head, *_instrument_lines(st, sig.by_instrument, inst_rows, width)]
    lines.append(_line((f"{title[:left_w]:<{left_w}} ", "bold"),
                       (f"latency, last busy interval ({iv})", "bold"), width=width))
    for k in range(mid_rows):
        left = _line(*(ladder[k] if k < len(ladder) else [("", "")]), width=left_w)
        right = _line(*(latency[k] if k < len(latency) else [("", "")]), width=lat_w)
        lines.append(Text.assemble(left, " ", right, no_wrap=True, overflow="crop"))
    lines.append(_line((f"signals (read {sig.read:,}" + (f", missed {sig.missed:,}" if sig.missed else "") + ")",
                        "bold"), width=width))
    lines += _signal_lines(st, sig, sig_rows, width)
    lines += feed
    return Group(*lines)


def frame(st: TopState, sig: SignalTail, width: int, height: int):
    """What a ``width`` x ``height`` terminal shows: :func:`render`'s screen from 80x24 up, else a
    line saying the terminal is too small (the screen was cropped without a word)."""
    from rich.text import Text

    if width < 80 or height < 24:
        return Text(f"terminal too small: need 80x24, have {width}x{height} (q quits)", style="bold yellow")
    return render(st, sig, width, height)


# -- the terminal loop ------------------------------------------------------------------------------

class _Keys:
    """Single key presses from the terminal (cbreak mode, restored on exit)."""

    def __init__(self, fd: int):
        import termios
        import tty

        self.fd = self.tty = fd
        self.saved = None
        if os.isatty(fd):
            self.saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)

    def wait(self, timeout: float) -> bytes:
        """Keys pressed within ``timeout`` seconds (b"" if none). Standard input at its end (not a
        terminal: /dev/null, a closed pipe) is no longer watched: the wait is a sleep."""
        if self.fd is None:
            time.sleep(max(timeout, 0))
            return b""
        r, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if not r:
            return b""
        try:
            data = os.read(self.fd, 64)
        except OSError:
            data = b""
        if not data:
            self.fd = None
        return data

    def close(self) -> None:
        import termios

        if self.saved is not None:
            termios.tcsetattr(self.tty, termios.TCSADRAIN, self.saved)


def _split_keys(data: bytes) -> list[bytes]:
    """Key presses from what one read returned (several keys can arrive together): arrow keys
    are ESC [ X or ESC O X, anything else one byte."""
    out, k = [], 0
    while k < len(data):
        n = 3 if data[k:k + 1] == b"\x1b" and data[k + 1:k + 2] in (b"[", b"O") else 1
        out.append(data[k:k + n])
        k += n
    return out


def run_top(cfg, refresh: float = 0.5, depth: int = 10, run_dir=None, out=sys.stdout) -> int:
    from rich.console import Console
    from rich.live import Live

    col = Collector(cfg, run_dir, depth)
    running, why = col.daemon_running()
    if not running:
        print(f"tickwire top: no daemon is running for run '{cfg.run}' ({why}): start one with "
              f"`tickwire run --config FILE` (or try `tickwire demo`), then run top again", file=sys.stderr)
        return 1
    if not out.isatty():                           # (it drew nothing, for ever, into a pipe or a file)
        print("tickwire top: draws a full screen and needs a terminal on its standard output; for a "
              "summary to a pipe or a file use `tickwire status --config FILE`", file=sys.stderr)
        return 2
    if os.environ.get("TERM", "") in ("dumb", "unknown"):      # (rich draws nothing there: a blank screen)
        print(f"tickwire top: TERM={os.environ['TERM']} cannot move the cursor, which a full screen needs: "
              "set TERM (xterm-256color, screen, tmux-256color) or use `tickwire status --config FILE`",
              file=sys.stderr)
        return 2
    console = Console(file=out)
    keys = _Keys(sys.stdin.fileno())
    selected = 0
    try:
        with Live(console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                  redirect_stderr=False) as live:
            next_at = 0.0
            while True:
                now = time.monotonic()
                n = max(len(col.state.instruments), 1)     # the daemon's (its config.json)
                if now >= next_at:
                    w, h = console.size
                    st = col.refresh(selected, instrument_rows(n, max(h, 24)))
                    selected = st.selected
                    live.update(frame(st, col.signals, w, h), refresh=True)
                    next_at = now + refresh
                for key in _split_keys(keys.wait(next_at - time.monotonic())):
                    if key in (b"q", b"Q"):
                        return 0
                    if key in (b"\x1b[A", b"\x1bOA", b"k"):
                        selected = (selected - 1) % n
                    elif key in (b"\x1b[B", b"\x1bOB", b"j"):
                        selected = (selected + 1) % n
                    else:
                        continue
                    next_at = 0.0                          # redraw at once for the new selection
    except KeyboardInterrupt:
        return 0
    finally:
        keys.close()
        col.signals.close()


def add_parser(sub) -> None:
    p = sub.add_parser(
        "top",
        help="a live full-screen view of a running daemon (books, signals, latency, feed, writer)",
        description="A live view of a running daemon in the terminal (80x24 and larger, works over SSH): "
                    "per instrument best bid/ask, spread, mid and signals; the book ladder of the selected "
                    "instrument (up/down or j/k); the latest signals; per-stage latency of the last HDR "
                    "interval with a p99 sparkline; feed rates, gaps, recoveries, writer lag, spill state "
                    "and restarts. q quits. It reads what the daemon publishes (status files, the signal "
                    "ring as a non-blocking reader, the HDR interval logs, a book request) and never slows "
                    "the engine (docs/top.md).",
    )
    p.add_argument("--config", "-c", required=True, help="the daemon's TOML configuration file")
    p.add_argument("--refresh", type=float, default=0.5, metavar="S", help="seconds between screens [%(default)s]")
    p.add_argument("--depth", type=int, default=10, metavar="N", help="book levels requested per side [%(default)s]")
    p.add_argument("--nice", type=int, default=10, metavar="N",
                   help="run at this niceness, below the daemon's processes and their ZeroMQ I/O threads on "
                        "shared cores (0: as started) [%(default)s]")
    p.set_defaults(func=cmd_top)


def cmd_top(args) -> int:
    from tickwire.engine.config import load

    if not 0.05 <= args.refresh <= 60:
        print(f"tickwire top: --refresh: expected seconds from 0.05 to 60, got {args.refresh}", file=sys.stderr)
        return 2
    if not 1 <= args.depth <= 100:
        print(f"tickwire top: --depth: expected 1 to 100 levels, got {args.depth}", file=sys.stderr)
        return 2
    try:
        import rich  # noqa: F401
    except ImportError:
        print("tickwire top: needs rich, which is not installed: pip install rich", file=sys.stderr)
        return 2
    if not -20 <= args.nice <= 19:                  # (99999999999999999999: an OverflowError traceback)
        print(f"tickwire top: --nice: expected a niceness from -20 to 19 (0: as started), got {args.nice}",
              file=sys.stderr)
        return 2
    cfg = load(args.config)
    if args.nice:
        try:
            os.nice(args.nice)
        except OSError:
            pass
    return run_top(cfg, args.refresh, args.depth)
