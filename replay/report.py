"""The backtest report of a replay: markouts, hit rates and a simple taker PnL per rule and
instrument, as JSON, CSV and PNG plots.

:class:`ReportBuilder` is fed the replay's batches in order (``add(events, signals)``: a batch
of canonical events, then the signals the engine produced from it) and keeps only what the
report needs: its own books (to know the top of book after every event, through
:meth:`tickwire.ext.book.BookSet.apply_top`), one row per directional signal, the signals'
trading actions, and the horizons still waiting for the stream to pass them.  Memory grows
with the number of signals, not of events.  :meth:`ReportBuilder.finish` computes the
figures and writes the files.

Every figure is defined in ``docs/replay-report.md``.  In short, for a signal of instrument
``i`` at event time ``t`` (the triggering event's ``ts_event``):

- the book *at* time ``T`` is ``i``'s book after the last event of ``i`` that precedes, in
  the stream, the first event (of any instrument) stamped after ``T``, and never one from
  before the signal's event: for a stream in time order, the book after the last event of
  ``i`` with ``ts_event <= T``; a time is *resolved* once an event stamped after it has
  passed, and never otherwise (the end of the data leaves later horizons unresolved, reported
  as such);
- ``mid0`` is the mid of the book at ``t`` (after the triggering event and any others stamped
  the same nanosecond, such as the rest of its exchange message);
- the markout at horizon ``h`` is ``direction * (mid(t + h) - mid0)``, in ticks and in basis
  points of ``mid0``;
- the taker PnL trades one unit per (rule, instrument): an ENTER takes the best ask (+1) or
  bid (-1) of the book at ``t + latency_ns``, an EXIT (or an ENTER the other way) closes at
  the opposite side of the book at its own ``t + latency_ns``, each fill paying ``fee_bps``
  of its price; a position still open at the end is marked to the last mid and flagged.
"""

from __future__ import annotations

import array
import csv
import io
import json
import math
from decimal import Decimal
from pathlib import Path

import numpy as np

from tickwire.engine.files import replacing
from tickwire.engine.instruments import Instrument, make_books
from tickwire.engine.plots import MATPLOTLIB_HINT
from tickwire.ext.records import EVENT_DTYPE, SIGNAL_DTYPE, RuleKind, SignalFlag
from tickwire.replay.sources import StampOffset, clock_strays

__all__ = ["ReportBuilder", "DEFAULT_HORIZONS_NS", "horizon_name", "MATPLOTLIB_MISSING"]

#: 100 ms, 1 s, 10 s, 60 s.
DEFAULT_HORIZONS_NS = (100_000_000, 1_000_000_000, 10_000_000_000, 60_000_000_000)

#: The one-line error when the plots are asked for and matplotlib is not installed.
MATPLOTLIB_MISSING = (f"the backtest report's plots need matplotlib, which is not installed: {MATPLOTLIB_HINT}; "
                      "or the report without its PNGs (tickwire replay --no-plots; ReportBuilder(..., plots=False))")

NO_PRICE = np.iinfo(np.int64).min          # TW_NO_PRICE: an empty side
_ENTER, _EXIT = int(SignalFlag.ENTER), int(SignalFlag.EXIT)
_KIND_NAMES = {int(k): k.name.lower() for k in RuleKind}
_MID_SAMPLES = 4000                        # mid points kept per instrument for the plot
_PLOT_KEYS = 12                            # most (rule, instrument) lines in one plot
# the taker's round trips, as columns (array.array type codes while they are made)
_TRADE_FIELDS = {"rule_id": "q", "rule_kind": "q", "instrument": "q", "direction": "q",
                 "entry_signal_ts": "q", "entry_fill_ts": "q", "entry_price": "d",
                 "exit_signal_ts": "q", "exit_fill_ts": "q", "exit_price": "d", "exit_reason": "q",
                 "gross_ticks": "d", "fees_ticks": "d", "net_ticks": "d", "net_bps": "d"}
_TRADE_DTYPES = {"q": np.dtype(np.int64), "d": np.dtype(np.float64)}
_EXIT_SIGNAL, _REVERSE, _OPEN_AT_END = 0, 1, 2            # exit_reason codes
_REASON_NAMES = {_EXIT_SIGNAL: "exit", _REVERSE: "reverse", _OPEN_AT_END: "open_at_end"}
_PLOT_INSTRUMENTS = 4                      # most instruments in the signals-over-mid plot
_PLOT_MARKERS = 2000                       # most signal markers per instrument

# status of one horizon of one markout row
_PENDING, _OK, _NO_MID = 0, 1, 2
_STATUS_NAMES = {_PENDING: "unresolved", _OK: "ok", _NO_MID: "no_mid"}


def _later(ts: np.ndarray, ns) -> np.ndarray:
    """``ts + ns`` (ns >= 0), held at the largest int64 where the sum would pass it (it wrapped
    to a time long past, and a markout years ahead of the data resolved at once, as "ok")."""
    ts = np.asarray(ts, np.int64)
    ns = np.asarray(ns, np.int64)
    return np.where(ts > np.iinfo(np.int64).max - ns, np.iinfo(np.int64).max, ts + ns)


def horizon_name(ns: int) -> str:
    """``100_000_000 -> "100ms"``, ``60_000_000_000 -> "60s"``, ``1500 -> "1500ns"``."""
    for unit, name in ((1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us")):
        if ns % unit == 0 and ns:
            return f"{ns // unit}{name}"
    return f"{ns}ns"


class _Columns:
    """Growable columns of one table (amortised doubling), so rows can be updated in place."""

    def __init__(self, spec: dict[str, tuple]):
        self._spec = spec                                   # name -> (dtype, trailing shape)
        self.n = 0
        self._cap = 0
        self.cols = {name: np.empty((0,) + shape, dtype) for name, (dtype, shape) in spec.items()}

    def append(self, **values) -> slice:
        k = len(next(iter(values.values())))
        if self.n + k > self._cap:
            cap = max(2 * self._cap, self.n + k, 1024)
            for name, (dtype, shape) in self._spec.items():
                grown = np.empty((cap,) + shape, dtype)
                grown[:self.n] = self.cols[name][:self.n]
                self.cols[name] = grown
            self._cap = cap
        sl = slice(self.n, self.n + k)
        for name, v in values.items():
            self.cols[name][sl] = v
        self.n += k
        return sl

    def __getitem__(self, name):
        return self.cols[name][:self.n]


def _key_hash(inst, ts_event, seq, ts_recv):
    """A 64-bit mix of the fields a signal copies from its triggering event (to find it)."""
    h = inst.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    h ^= ts_event.view(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= seq.astype(np.uint64) * np.uint64(0x165667B19E3779F9)
    h ^= ts_recv.view(np.uint64) * np.uint64(0x27D4EB2F165667C5)
    return h


_KEY = ("instrument", "ts_event", "seq", "ts_recv")      # what a signal copies from its event


def _mids(bid, ask, sync, at) -> np.ndarray:
    """The mid at the positions ``at`` of a batch's top of book (NaN: one-sided or out of sync)."""
    b, a = bid[at], ask[at]
    m = np.add(b, a, dtype=np.float64)                      # in floats: no int64 overflow
    m *= 0.5
    m[(b == NO_PRICE) | (a == NO_PRICE) | ~sync[at]] = np.nan
    return m


def _trigger_positions(events: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """Index in ``events`` of the event that produced each signal.

    A signal copies its event's instrument, ``ts_event``, ``seq`` and ``ts_recv``, and the
    engine emits signals in event order, so the trigger of each signal is the first event at
    or after the previous signal's trigger with the same four fields (the same event, for
    signals of several rules on one event).  Raises ValueError when a signal has none.
    """
    if len(sig) == 0:
        return np.empty(0, np.int64)
    e = [events[f] for f in _KEY]
    s = [sig[f] for f in _KEY]
    ts = e[1]
    if np.all(ts[1:] >= ts[:-1]):                          # time order: each key's events are a range
        lo = np.searchsorted(ts, s[1], "left")
        hi = np.searchsorted(ts, s[1], "right")
        pos = np.minimum(lo, len(ts) - 1)
        forced = hi - lo == 1
        if forced.all() and _same_key(e, pos, s) and not np.any(pos[1:] < pos[:-1]):
            return pos

        def candidates(j):
            return range(int(lo[j]), int(hi[j]))
    else:                                                   # otherwise by a hash of the key
        hs = _key_hash(*s)
        he = _key_hash(*e)
        u = np.unique(hs)
        k = np.searchsorted(u, he)
        k[k == len(u)] = 0
        cand = np.flatnonzero(u[k] == he)                   # events that may be triggers
        hc = he[cand]
        o = np.argsort(hc, kind="stable")
        hco = hc[o]
        if len(hco) and not np.any(hco[1:] == hco[:-1]):   # each key once: the match is forced
            i = np.searchsorted(hco, hs)
            i[i == len(hco)] = 0
            pos = cand[o[i]]
            if np.all(hco[i] == hs) and _same_key(e, pos, s) and not np.any(pos[1:] < pos[:-1]):
                return pos
        lists: dict[int, list[int]] = {}
        for c in cand.tolist():
            lists.setdefault(int(he[c]), []).append(c)

        def candidates(j):
            return lists.get(int(hs[j]), ())
    # repeated keys (or bad input): the first match at or after the previous one, in order
    out = np.empty(len(sig), np.int64)
    prev = 0
    for j in range(len(sig)):
        for c in candidates(j):
            if c >= prev and all(e[f][c] == s[f][j] for f in range(4)):
                prev = out[j] = c
                break
        else:
            raise ValueError(
                f"signal {j} of the batch (instrument {int(s[0][j])}, ts_event {int(s[1][j])}, "
                f"seq {int(s[2][j])}) has no triggering event in the batch at or after the "
                "previous signal's: add() takes a batch's events and then the signals those "
                "events produced, in order")
    return out


def _same_key(e, pos, s) -> bool:
    return bool(np.all((e[0][pos] == s[0]) & (e[1][pos] == s[1]) & (e[2][pos] == s[2]) & (e[3][pos] == s[3])))


def _group_ends(events: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The last index of the run of consecutive events that share the instrument, ts_event,
    seq and ts_recv of the event at each of ``pos`` (one exchange message, as decoders stamp
    them): a signal cannot tell which of them fired it, so it belongs to the whole run."""
    e = [events[f] for f in _KEY]
    n = len(events)
    ends = np.asarray(pos, np.int64).copy()
    for _ in range(64):                                     # messages are short: step along them
        idx = np.flatnonzero(ends + 1 < n)
        a = ends[idx]
        same = (e[0][a + 1] == e[0][a]) & (e[1][a + 1] == e[1][a]) & (e[2][a + 1] == e[2][a]) \
            & (e[3][a + 1] == e[3][a])
        if not same.any():
            return ends
        ends[idx[same]] += 1
    same = (e[0][1:] == e[0][:-1]) & (e[1][1:] == e[1][:-1]) & (e[2][1:] == e[2][:-1]) & (e[3][1:] == e[3][:-1])
    breaks = np.append(np.flatnonzero(~same), n - 1)        # long runs: all the run ends at once
    return breaks[np.searchsorted(breaks, ends)]


class ReportBuilder:
    """Build the backtest report of a replay, streaming.

    Parameters
    ----------
    instruments : list of Instrument
        The replayed instruments (their books are rebuilt here from the same events).
    horizons_ns : sequence of int
        Markout horizons in nanoseconds of event time (positive, distinct).
    latency_ns : int
        The taker's delay: each fill uses the book at the signal's time plus this.
    fee_bps : float
        Fee of each fill in basis points of its price (negative: a rebate).
    rule_names : dict, optional
        ``{rule_id: name}`` for the report (default ``"<rule_id>:<kind>"``).
    plots : bool
        Write the PNG plots (needs matplotlib: ``pip install tickwire[report]``; checked here,
        so a long replay does not find out at its end).

    Call :meth:`add` for every batch in replay order, then :meth:`finish` once.
    """

    def __init__(self, instruments, horizons_ns=DEFAULT_HORIZONS_NS, latency_ns: int = 0,
                 fee_bps: float = 0.0, *, rule_names: dict | None = None, plots: bool = True):
        instruments = list(instruments)
        if not instruments:
            raise ValueError("a report needs at least one instrument")
        for inst in instruments:
            if not isinstance(inst, Instrument):
                raise TypeError(f"instruments must be tickwire Instrument objects, got {type(inst).__name__}")
        horizons = [int(h) for h in horizons_ns]
        if not horizons or any(h <= 0 for h in horizons) or len(set(horizons)) != len(horizons):
            raise ValueError(f"horizons_ns must be distinct positive nanoseconds, got {list(horizons_ns)}")
        if int(latency_ns) < 0:
            raise ValueError(f"latency_ns must be >= 0, got {latency_ns}")
        if not math.isfinite(float(fee_bps)):
            raise ValueError(f"fee_bps must be a finite number, got {fee_bps}")
        if plots:
            _require_matplotlib()
        self.instruments = {inst.id: inst for inst in instruments}
        self.horizons = np.array(sorted(horizons), np.int64)
        self.horizon_names = [horizon_name(int(h)) for h in self.horizons]
        self.latency_ns = int(latency_ns)
        self.fee_bps = float(fee_bps)
        self.rule_names = dict(rule_names or {})
        self.plots = bool(plots)
        self._books = make_books(instruments)
        nid = max(self.instruments) + 1
        self._known = np.zeros(nid, bool)
        self._known[list(self.instruments)] = True
        # the top of each book after the last event seen (carried across batches)
        self._bid = np.full(nid, NO_PRICE, np.int64)
        self._ask = np.full(nid, NO_PRICE, np.int64)
        self._sync = np.ones(nid, bool)
        # each instrument's last two-sided top while its book was in sync: what a position open at
        # the end is marked to (a daemon's store ends with its books stale, a silence's markers:
        # every open position was left unmarked, an adversarial pass)
        self._mark_bid = np.full(nid, NO_PRICE, np.int64)
        self._mark_ask = np.full(nid, NO_PRICE, np.int64)
        self._clock = NO_PRICE                              # highest ts_event seen
        self._first_ts = None
        self._stamp_offset = StampOffset()                  # the stream's typical ts_event - ts_recv
        self.events = 0
        self.batches = 0
        self._finished = False
        self._busy = False                                  # inside add(): a Ctrl-C there cuts a batch
        nh = len(self.horizons)
        # the times each markout row asks for: the signal's own (mid0), then the horizons
        self._offsets = np.r_[0, self.horizons].astype(np.int64)
        # one row per directional ENTER signal; mid/status column 0: at t, then per horizon
        self._rows = _Columns({
            "ts": (np.int64, ()), "seq": (np.uint64, ()), "inst": (np.uint32, ()),
            "rule": (np.uint16, ()), "kind": (np.uint8, ()), "dir": (np.int8, ()),
            "value": (np.float64, ()), "strength": (np.float64, ()),
            "mid": (np.float64, (nh + 1,)), "status": (np.uint8, (nh + 1,)),
        })
        # one action per ENTER/EXIT that may trade, with the book at its fill time
        self._acts = _Columns({
            "ts": (np.int64, ()), "inst": (np.uint32, ()), "rule": (np.uint16, ()),
            "kind": (np.uint8, ()), "exit": (np.bool_, ()), "dir": (np.int8, ()),
            "mid_sig": (np.float64, ()), "bid": (np.int64, ()), "ask": (np.int64, ()),
            "resolved": (np.bool_, ()),
        })
        # horizons and fills waiting for the stream to pass their time
        self._pend = {"inst": np.empty(0, np.int64), "T": np.empty(0, np.int64),
                      "ref": np.empty(0, np.int64)}         # >= 0: row*(nh+1) + column; < 0: -(action+1)
        self._pend_minpos = np.empty(0, np.int64)           # first position of the batch each may use
        # signal counts by (rule, kind, instrument): total, enter, exit, without direction
        self._counts: dict[tuple, list[int]] = {}
        self._unknown_signals = 0
        # the mid series for the plot: per instrument, every stride-th event
        self._mid_ts: dict[int, list] = {}
        self._mid_v: dict[int, list] = {}
        self._mid_seen = np.zeros(nid, np.int64)
        self._mid_stride = np.ones(nid, np.int64)
        self._mid_n: dict[int, int] = {}                    # samples held per instrument (a running count)

    # -- streaming -------------------------------------------------------------------------
    def add(self, events: np.ndarray, signals: np.ndarray) -> None:
        """Take one batch of the replay: its events, then the signals they produced.

        ``signals`` must be exactly the signals the engine emitted while processing
        ``events`` (each is matched to its triggering event), in the engine's order.
        """
        if self._finished:
            raise RuntimeError("the report is finished: add() after finish()")
        if getattr(events, "dtype", None) != EVENT_DTYPE:
            raise TypeError(f"events must be a numpy array of EVENT_DTYPE, got {getattr(events, 'dtype', None)!r}")
        if getattr(signals, "dtype", None) != SIGNAL_DTYPE:
            raise TypeError(f"signals must be a numpy array of SIGNAL_DTYPE, got {getattr(signals, 'dtype', None)!r}")
        events = np.ascontiguousarray(events)
        signals = np.ascontiguousarray(signals)
        n = len(events)
        if n == 0:
            if len(signals):
                raise ValueError("signals without events: add() takes a batch's events and its signals")
            return
        at = _trigger_positions(events, signals)                          # each signal's own event
        trig = _group_ends(events, at)                                    # before the books move
        self._busy = True
        top = np.empty((n, 4), np.int64)
        sync = np.empty(n, np.uint8)
        self._books.apply_top(events, top, in_sync=sync)
        bid, ask = top[:, 0], top[:, 1]
        sync = sync.view(np.bool_)                          # 0 or 1
        ts = events["ts_event"]
        bad = clock_strays(events, self._stamp_offset.of(events))
        if bad.any():                                      # a bad stamp (2100, say) moves no clock: it
            ts = np.where(bad, NO_PRICE, ts)               # resolved every horizon after it at once
        clock = np.maximum.accumulate(ts)
        np.maximum(clock, self._clock, out=clock)
        if bad.any():                                      # its own time: the clock it met (before any,
            fill = clock                                   # the first one after it; else its receipt)
            if fill[0] == NO_PRICE:
                known = fill != NO_PRICE
                fill = np.where(known, fill, fill[known][0] if known.any() else events["ts_recv"])
            ts = np.where(bad, fill, events["ts_event"])

        inst = events["instrument"].astype(np.int64)
        single = bool(inst[0] == inst[-1] and np.all(inst == inst[0]))
        if single:
            order = None
            key = None
        else:
            small = inst.astype(np.uint16) if int(inst.max()) < 1 << 16 else inst
            order = np.argsort(small, kind="stable")        # positions grouped by instrument (radix sort)
            key = inst[order] * (n + 1) + order

        def last_before(q_inst, j):
            """Position of the last event of instrument q_inst before position j (-1: none)."""
            if single:
                return np.where((q_inst == inst[0]) & (j > 0), j - 1, -1)
            r = np.searchsorted(key, q_inst * (n + 1) + j, "left") - 1
            cand = order[np.maximum(r, 0)]
            return np.where((r >= 0) & (inst[cand] == q_inst), cand, -1)

        # each signal's time as the clock has it: a signal of a badly stamped event (0, or 2100)
        # had horizons resolved at once (markout 0 at 1 s in data of 0.28 s) or never
        # (unresolved, its trades filled after the end): an adversarial pass
        t_sig = signals["ts_event"]
        if bad.any() and len(signals):
            t_sig = np.where(bad[at], ts[trig], t_sig)
        self._take_signals(signals, trig, _mids(bid, ask, sync, trig), t_sig)

        # resolve what the stream has now passed: the first event stamped after T, or later
        pend = self._pend
        if len(pend["T"]):
            minpos = self._pend_minpos
            j = np.maximum(np.searchsorted(clock, pend["T"], "right"), minpos)
            done = j < n
            if np.any(done):
                qi = pend["inst"][done]
                p = last_before(qi, j[done])
                from_batch = p >= 0
                pp = np.where(from_batch, p, 0)
                q_bid = np.where(from_batch, bid[pp], self._bid[qi])
                q_ask = np.where(from_batch, ask[pp], self._ask[qi])
                q_sync = np.where(from_batch, sync[pp], self._sync[qi])
                self._resolve(pend["ref"][done], q_bid, q_ask, q_sync)
                for name in pend:
                    pend[name] = pend[name][~done]
        self._pend_minpos = np.zeros(len(pend["T"]), np.int64)

        # carry each instrument's last top of book, and sample the mids for the plot
        if single:
            groups = [(int(inst[0]), None, n)]
        else:
            inst_sorted = inst[order]
            ends = np.flatnonzero(np.r_[inst_sorted[1:] != inst_sorted[:-1], True])
            starts = np.r_[0, ends[:-1] + 1]
            groups = [(int(inst_sorted[a]), order[a:b + 1], b + 1 - a) for a, b in zip(starts, ends)]
        for i, pos, count in groups:
            if i >= len(self._known) or not self._known[i]:
                continue
            last = n - 1 if pos is None else int(pos[-1])
            self._bid[i], self._ask[i], self._sync[i] = bid[last], ask[last], sync[last]
            mine = np.arange(n) if pos is None else pos
            good = np.flatnonzero(sync[mine] & (bid[mine] != NO_PRICE) & (ask[mine] != NO_PRICE))
            if len(good):
                k = int(mine[good[-1]])
                self._mark_bid[i], self._mark_ask[i] = bid[k], ask[k]
            # every stride-th event of the instrument (by its own count) for the plot
            seen, stride = int(self._mid_seen[i]), int(self._mid_stride[i])
            first = (-seen) % stride
            at = np.arange(first, count, stride)
            if pos is not None:
                at = pos[at]
            self._sample_mid(i, seen + np.arange(first, count, stride), ts[at], _mids(bid, ask, sync, at))
            self._mid_seen[i] = seen + count

        if self._first_ts is None:
            self._first_ts = int(ts[0])
        self._clock = int(clock[-1])
        self.events += n
        self.batches += 1
        self._busy = False

    def _take_signals(self, signals, trig, mid, t_sig):
        """Count the batch's signals, add markout rows and trading actions, queue their times
        (``trig``: each signal's event, the end of its message; ``mid``: the mid there;
        ``t_sig``: each signal's time on the stream's clock, its ``ts_event`` but for bad stamps)."""
        if not len(signals):
            return
        s_inst = signals["instrument"].astype(np.int64)
        known = s_inst < len(self._known)
        known[known] = self._known[s_inst[known]]
        self._unknown_signals += int(np.count_nonzero(~known))
        sig, trig, mid, s_inst, t_sig = signals[known], trig[known], mid[known], s_inst[known], t_sig[known]
        flags, direction = sig["flags"], sig["direction"].astype(np.int64)
        is_exit = (flags & _EXIT) != 0
        is_enter = ((flags & _ENTER) != 0) & ~is_exit
        directional = is_enter & (direction != 0)
        # counts by (rule, kind, instrument): instrument ids are below 2**24 (Instrument)
        gkey = (sig["rule_id"].astype(np.int64) << 32) | (sig["rule_kind"].astype(np.int64) << 24) | s_inst
        uk, inv = np.unique(gkey, return_inverse=True)
        inv = inv.reshape(-1)
        sums = [np.bincount(inv, minlength=len(uk))] + [
            np.bincount(inv, weights=w.astype(np.float64), minlength=len(uk))
            for w in (is_enter, is_exit, is_enter & (direction == 0))]
        for g, k in enumerate(uk.tolist()):
            c = self._counts.setdefault((k >> 32, (k >> 24) & 0xFF, k & 0xFFFFFF), [0, 0, 0, 0])
            for m in range(4):
                c[m] += int(sums[m][g])

        nc = len(self._offsets)
        new_inst, new_T, new_ref, new_min = [], [], [], []
        d = np.flatnonzero(directional)
        if len(d):
            p = trig[d]
            sl = self._rows.append(
                ts=sig["ts_event"][d], seq=sig["seq"][d], inst=s_inst[d], rule=sig["rule_id"][d],
                kind=sig["rule_kind"][d], dir=sig["direction"][d], value=sig["value"][d],
                strength=sig["strength"][d],
                mid=np.full((len(d), nc), np.nan), status=np.zeros((len(d), nc), np.uint8))
            rows = np.arange(sl.start, sl.stop, dtype=np.int64)
            new_inst.append(np.repeat(s_inst[d], nc))
            new_T.append(_later(t_sig[d][:, None], self._offsets[None, :]).reshape(-1))
            new_ref.append((rows[:, None] * nc + np.arange(nc)[None, :]).reshape(-1))
            new_min.append(np.repeat(p + 1, nc))
        a = np.flatnonzero(directional | is_exit)
        if len(a):
            p = trig[a]
            sl = self._acts.append(
                ts=sig["ts_event"][a], inst=s_inst[a], rule=sig["rule_id"][a], kind=sig["rule_kind"][a],
                exit=is_exit[a], dir=sig["direction"][a], mid_sig=mid[a],
                bid=np.full(len(a), NO_PRICE, np.int64), ask=np.full(len(a), NO_PRICE, np.int64),
                resolved=np.zeros(len(a), bool))
            acts = np.arange(sl.start, sl.stop, dtype=np.int64)
            new_inst.append(s_inst[a])
            new_T.append(_later(t_sig[a], self.latency_ns))
            new_ref.append(-(acts + 1))
            new_min.append(p + 1)
        pend = self._pend
        old = len(pend["T"])
        if new_T:
            pend["inst"] = np.concatenate([pend["inst"]] + new_inst)
            pend["T"] = np.concatenate([pend["T"]] + new_T)
            pend["ref"] = np.concatenate([pend["ref"]] + new_ref)
        self._pend_minpos = np.concatenate([np.zeros(old, np.int64)] + new_min)

    def _resolve(self, ref, bid, ask, sync):
        """Record the book found at the time of each resolved horizon or fill."""
        m = ref >= 0
        if np.any(m):
            r, h = np.divmod(ref[m], len(self._offsets))
            b, a, s = bid[m], ask[m], sync[m]
            have = (b != NO_PRICE) & (a != NO_PRICE) & s
            mid = np.where(have, 0.5 * b.astype(np.float64) + 0.5 * a.astype(np.float64), np.nan)
            self._rows.cols["mid"][r, h] = mid
            self._rows.cols["status"][r, h] = np.where(have, _OK, _NO_MID)
        if np.any(~m):
            k = -ref[~m] - 1
            s = sync[~m]
            self._acts.cols["bid"][k] = np.where(s, bid[~m], NO_PRICE)
            self._acts.cols["ask"][k] = np.where(s, ask[~m], NO_PRICE)
            self._acts.cols["resolved"][k] = True

    def _sample_mid(self, i, counter, ts, mid):
        """Keep (counter, ts, mid) samples of instrument i; past _MID_SAMPLES, double the stride."""
        lst_t, lst_v = self._mid_ts.setdefault(i, []), self._mid_v.setdefault(i, [])
        if not len(counter):
            # (an empty piece per instrument and batch, once the stride had grown, and the held
            # samples summed over every piece at each add: --report made a replay of 200 k events
            # in batches of 16 take 21 s against 0.38 s without it, an adversarial pass)
            return
        lst_t.append(np.stack([counter, ts]))
        lst_v.append(mid)
        total = self._mid_n.get(i, 0) + len(counter)
        self._mid_n[i] = total
        if total > _MID_SAMPLES:                            # keep every other one, from now on too
            stride = int(self._mid_stride[i])
            ct = np.concatenate(lst_t, axis=1)
            v = np.concatenate(lst_v)
            while len(v) > _MID_SAMPLES:
                stride *= 2
                keep = ct[0] % stride == 0
                ct, v = ct[:, keep], v[keep]
            self._mid_ts[i], self._mid_v[i] = [ct], [v]
            self._mid_stride[i] = stride
            self._mid_n[i] = len(v)

    # -- the report ------------------------------------------------------------------------
    def finish(self, out_dir, partial: bool = False, run: dict | None = None) -> dict:
        """Compute the report, write it into ``out_dir`` and return the summary.

        Files: ``summary.json`` (every figure, per rule and instrument), ``summary.csv`` (the
        markout figures, one row per rule, instrument and horizon), ``markouts.csv`` (one row
        per directional signal), ``trades.csv`` (one row per round trip) and, with plots,
        ``pnl.png``, ``markouts.png`` and ``signals.png``.  ``partial``: the replay stopped
        early (Ctrl-C); the report says so (and ``interrupted_batch`` when the stop came
        inside :meth:`add`, whose batch may then be partly counted: stop between batches).
        ``run``: what was replayed and with what (JSON-able; ``tickwire replay`` gives the
        source, range, instrument filter, config and the rules' and statistics' settings), kept
        as ``summary.json``'s ``run``. Each file is written whole or not at all.
        """
        if self._finished:
            raise RuntimeError("finish() was already called")
        self._finished = True
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        trades = self._trades()
        summary = self._summary(trades, partial)
        if run is not None:
            summary = {"report": summary["report"], "run": run, **summary}
        files = ["summary.json", "summary.csv", "rules.csv", "markouts.csv", "trades.csv"]
        self._write_markouts(out / "markouts.csv")
        self._write_trades(out / "trades.csv", trades)
        self._write_summary_csv(out / "summary.csv", summary)
        self._write_rules_csv(out / "rules.csv", summary)
        if self.plots:
            files += _plots(self, out, trades, summary, partial)
        summary["files"] = files
        _atomic_write(out / "summary.json", lambda f: json.dump(summary, f, indent=2, allow_nan=False),
                      newline="\n")
        return summary

    def _rule_label(self, rule: int, kind: int) -> str:
        return self.rule_names.get(rule, f"{rule}:{_KIND_NAMES.get(kind, f'kind{kind}')}")

    def _trades(self) -> dict:
        """Run the one-unit taker over the actions of each (rule, instrument), in order: the
        round trips as columns (:data:`_TRADE_FIELDS`, numpy arrays, sorted by exit fill time),
        about 130 bytes a trade (the actions are turned into Python scalars a block at a time)."""
        fee = self.fee_bps / 1e4
        state: dict[tuple, dict] = {}       # (rule, kind, inst) -> open position and counters
        out = {name: array.array(code) for name, code in _TRADE_FIELDS.items()}
        put = {name: col.append for name, col in out.items()}

        def st(key):
            return state.setdefault(key, {"pos": 0, "entry": None, "ignored_enters": 0, "exits_flat": 0,
                                          "entries_unfilled": 0, "exits_unfilled": 0, "after_end": 0})

        def close(key, s, exit_ts, reason, price):
            e = s["entry"]
            d = s["pos"]
            gross = d * (price - e["price"])
            fees = fee * e["price"] + (fee * price if reason != _OPEN_AT_END else 0.0)
            net = gross - fees
            for name, v in (("rule_id", key[0]), ("rule_kind", key[1]), ("instrument", key[2]), ("direction", d),
                            ("entry_signal_ts", e["ts"]), ("entry_fill_ts", e["ts"] + self.latency_ns),
                            ("entry_price", e["price"]),
                            ("exit_signal_ts", -1 if exit_ts is None else exit_ts),
                            ("exit_fill_ts", self._clock if exit_ts is None else exit_ts + self.latency_ns),
                            ("exit_price", price), ("exit_reason", reason),
                            ("gross_ticks", gross), ("fees_ticks", fees), ("net_ticks", net),
                            ("net_bps", net / e["price"] * 1e4 if e["price"] else math.nan)):
                put[name](v)
            s["pos"], s["entry"] = 0, None

        acts = self._acts
        for base in range(0, acts.n, _CSV_ROWS):
            A = {k: acts[k][base:base + _CSV_ROWS].tolist() for k in acts.cols}   # Python scalars: a fast loop
            for j in range(len(A["ts"])):
                key = (A["rule"][j], A["kind"][j], A["inst"][j])
                s = st(key)
                if not A["resolved"][j]:
                    s["after_end"] += 1                 # its fill time was not reached by the data
                    continue
                bid, ask = A["bid"][j], A["ask"][j]
                if A["exit"][j]:
                    if s["pos"] == 0:
                        s["exits_flat"] += 1
                        continue
                    price = bid if s["pos"] > 0 else ask
                    if price == NO_PRICE:
                        s["exits_unfilled"] += 1
                        continue
                    close(key, s, A["ts"][j], _EXIT_SIGNAL, price)
                    continue
                d = A["dir"][j]
                if s["pos"] == d:
                    s["ignored_enters"] += 1
                    continue
                if s["pos"] == -d:                     # the other way: close, then open
                    price = bid if s["pos"] > 0 else ask
                    if price == NO_PRICE:
                        s["exits_unfilled"] += 1
                        continue
                    close(key, s, A["ts"][j], _REVERSE, price)
                price = ask if d > 0 else bid
                if price == NO_PRICE:
                    s["entries_unfilled"] += 1
                    continue
                s["pos"], s["entry"] = d, {"ts": A["ts"][j], "price": price}
        for key, s in state.items():
            if s["pos"] != 0:
                i = key[2]
                b, a = int(self._mark_bid[i]), int(self._mark_ask[i])
                mark = 0.5 * b + 0.5 * a if (b != NO_PRICE and a != NO_PRICE) else math.nan
                close(key, s, None, _OPEN_AT_END, mark)
        trades = {name: np.frombuffer(col, _TRADE_DTYPES[code]) if len(col) else np.empty(0, _TRADE_DTYPES[code])
                  for (name, code), col in zip(_TRADE_FIELDS.items(), out.values())}
        order = np.lexsort((trades["instrument"], trades["rule_id"], trades["exit_fill_ts"]))   # stable
        self._trade_state = state
        return {name: col[order] for name, col in trades.items()}

    def _summary(self, trades, partial) -> dict:
        R = {k: self._rows[k] for k in self._rows.cols}
        nh = len(self.horizons)
        groups = []
        keys = set(self._counts) | set(getattr(self, "_trade_state", {}))
        # the markout rows of each (rule, kind, instrument), in one sort
        rows_of = _groups(R["rule"], R["kind"], R["inst"])
        # the trades' figures as columns, and each (rule, kind, instrument)'s trade indices
        T = {k: trades[k] for k in ("gross_ticks", "fees_ticks", "net_ticks", "net_bps")}
        T["open"] = trades["exit_reason"] == _OPEN_AT_END
        trades_of = _groups(trades["rule_id"], trades["rule_kind"], trades["instrument"])
        self._trade_columns = T
        for key in sorted(keys):
            rule, kind, i = key
            inst = self.instruments[i]
            c = self._counts.get(key, [0, 0, 0, 0])
            sel = rows_of.get(key, np.empty(0, np.int64))
            mk = {}
            for h in range(nh):
                mk[self.horizon_names[h]] = _markout_stats(R["dir"][sel], R["mid"][sel, 0], R["status"][sel, 0],
                                                           R["mid"][sel, h + 1], R["status"][sel, h + 1])
            tr = trades_of.get(key, np.empty(0, np.int64))
            s = self._trade_state.get(key, {})
            groups.append({
                "rule": self._rule_label(rule, kind), "rule_id": rule,
                "rule_kind": _KIND_NAMES.get(kind, f"kind{kind}"),
                "instrument": i, "symbol": inst.symbol, "tick_size": str(inst.tick_size),
                "signals": c[0], "enter": c[1], "exit": c[2], "enter_without_direction": c[3],
                "markouts": mk,
                "pnl": _pnl_stats(T, tr, s, inst),
            })
        rules = self._rule_totals(keys, rows_of, trades_of, R)
        return {
            "report": "tickwire backtest report (definitions: docs/replay-report.md)",
            "partial": bool(partial),
            "interrupted_batch": bool(self._busy),
            "events": int(self.events), "batches": int(self.batches),
            "first_ts_event": self._first_ts,
            "last_ts_event": None if self._first_ts is None else int(self._clock),
            "horizons_ns": [int(h) for h in self.horizons], "horizons": list(self.horizon_names),
            "latency_ns": self.latency_ns, "fee_bps": self.fee_bps,
            "signals": int(sum(c[0] for c in self._counts.values())),
            "signals_unknown_instrument": int(self._unknown_signals),
            "groups": groups,
            "rules": rules,
        }

    def _rule_totals(self, keys, rows_of, trades_of, R) -> list[dict]:
        """Per rule, across its instruments: counts, and the figures that add up across tick
        sizes (markouts in basis points and hit rates over all the rule's signals; trades, wins
        and net basis points over all its trades). Figures in ticks or quote currency are per
        instrument only (``groups``)."""
        by_rule: dict = {}
        for key in sorted(keys):
            by_rule.setdefault(key[:2], []).append(key)
        out = []
        for (rule, kind), ks in by_rule.items():
            counts = np.sum([self._counts.get(k, [0, 0, 0, 0]) for k in ks], axis=0).tolist()
            sel = np.concatenate([rows_of.get(k, np.empty(0, np.int64)) for k in ks])
            sel.sort()
            mk = {}
            for h, name in enumerate(self.horizon_names):
                m = _markout_stats(R["dir"][sel], R["mid"][sel, 0], R["status"][sel, 0],
                                   R["mid"][sel, h + 1], R["status"][sel, h + 1])
                mk[name] = {k: v for k, v in m.items() if not k.endswith("_ticks")}
            tr = np.sort(np.concatenate([trades_of.get(k, np.empty(0, np.int64)) for k in ks]))
            state: dict = {}
            for k in ks:
                for name, v in self._trade_state.get(k, {}).items():
                    if isinstance(v, int) and name != "pos":
                        state[name] = state.get(name, 0) + v
            pnl = _pnl_stats(self._trade_columns, tr, state, None)
            out.append({
                "rule": self._rule_label(rule, kind), "rule_id": rule, "rule_kind": _KIND_NAMES.get(kind, f"kind{kind}"),
                "instruments": [k[2] for k in ks],
                "signals": counts[0], "enter": counts[1], "exit": counts[2], "enter_without_direction": counts[3],
                "markouts": mk,
                "pnl": {k: v for k, v in pnl.items() if not (k.endswith("_ticks") or k == "net_quote")},
            })
        return out

    # -- files -----------------------------------------------------------------------------
    def _write_markouts(self, path):
        R = {k: self._rows[k] for k in self._rows.cols}
        header = ["ts_event", "seq", "instrument", "symbol", "rule", "rule_id", "rule_kind", "direction",
                  "value", "strength", "mid0_ticks"]
        for name in self.horizon_names:
            header += [f"status_{name}", f"mid_{name}_ticks", f"markout_{name}_ticks", f"markout_{name}_bps"]
        symbols = {i: inst.symbol for i, inst in self.instruments.items()}
        rule_key = R["rule"].astype(np.int64) * 256 + R["kind"]
        labels = {int(k): self._rule_label(int(k) >> 8, int(k) & 255) for k in np.unique(rule_key)}
        kinds = {int(k): _KIND_NAMES.get(int(k), str(int(k))) for k in np.unique(R["kind"])}

        def columns(sl):                                    # the markouts of these rows only: flat memory
            d = R["dir"][sl].astype(np.float64)[:, None]
            mid0 = np.where(R["status"][sl, 0] == _OK, R["mid"][sl, 0], np.nan)
            mid_h, st_h = R["mid"][sl, 1:], R["status"][sl, 1:]
            mt = d * (mid_h - mid0[:, None])
            mb = mt / mid0[:, None] * 1e4
            status = np.where((st_h == _OK) & ~np.isfinite(mid0)[:, None], _NO_MID, st_h)
            ok = status == _OK
            mt[~ok] = np.nan
            mb[~ok] = np.nan
            cols = [_int_strings(R["ts"][sl]), _int_strings(R["seq"][sl]), _int_strings(R["inst"][sl]),
                    _text_strings(R["inst"][sl], symbols), _text_strings(rule_key[sl], labels),
                    _int_strings(R["rule"][sl]), _text_strings(R["kind"][sl], kinds), _int_strings(R["dir"][sl]),
                    _num_strings(R["value"][sl]), _num_strings(R["strength"][sl]), _num_strings(mid0)]
            for h in range(len(self.horizon_names)):
                cols += [_text_strings(status[:, h], _STATUS_NAMES), _num_strings(mid_h[:, h]),
                         _num_strings(mt[:, h]), _num_strings(mb[:, h])]
            return cols
        _write_csv_columns(path, header, len(R["ts"]), columns)

    def _write_trades(self, path, trades):
        header = ["rule", "rule_id", "rule_kind", "instrument", "symbol", "direction", "entry_signal_ts",
                  "entry_fill_ts", "entry_price_ticks", "entry_price", "exit_signal_ts", "exit_fill_ts",
                  "exit_price_ticks", "exit_price", "exit_reason", "gross_ticks", "fees_ticks", "net_ticks",
                  "net_bps", "net_quote"]
        col = trades
        inst = col["instrument"]
        rule_key = col["rule_id"] * 256 + col["rule_kind"]
        labels = {int(k): self._rule_label(int(k) >> 8, int(k) & 255) for k in np.unique(rule_key)}
        kinds = {int(k): _KIND_NAMES.get(int(k), str(int(k))) for k in np.unique(rule_key & 255)}
        symbols = {i: x.symbol for i, x in self.instruments.items()}
        ticks = {i: float(x.tick_size) for i, x in self.instruments.items()}
        net = col["net_ticks"]
        memo: dict = {}

        def prices(values, sl):
            out = []
            for i, p in zip(inst[sl].tolist(), values[sl].tolist()):
                key = (i, p)
                text = memo.get(key)
                if text is None:
                    text = memo[key] = _price(self.instruments[i], p)
                out.append(text)
            return np.array(out, dtype=_STR)

        def columns(sl):
            exit_sig = col["exit_signal_ts"][sl]
            exit_text = _int_strings(exit_sig)
            exit_text[exit_sig < 0] = ""                   # open at the end: no exit signal
            tick = np.array([ticks[i] for i in inst[sl].tolist()], np.float64)
            return [_text_strings(rule_key[sl], labels), _int_strings(col["rule_id"][sl]),
                    _text_strings(rule_key[sl] & 255, kinds), _int_strings(inst[sl]),
                    _text_strings(inst[sl], symbols), _int_strings(col["direction"][sl]),
                    _int_strings(col["entry_signal_ts"][sl]), _int_strings(col["entry_fill_ts"][sl]),
                    _num_strings(col["entry_price"][sl]), prices(col["entry_price"], sl),
                    exit_text, _int_strings(col["exit_fill_ts"][sl]),
                    _num_strings(col["exit_price"][sl]), prices(col["exit_price"], sl),
                    _text_strings(col["exit_reason"][sl], _REASON_NAMES),
                    _num_strings(col["gross_ticks"][sl]), _num_strings(col["fees_ticks"][sl]),
                    _num_strings(net[sl]), _num_strings(col["net_bps"][sl]), _num_strings(net[sl] * tick)]
        _write_csv_columns(path, header, len(inst), columns)

    def _write_rules_csv(self, path, summary):
        header = ["rule", "rule_id", "rule_kind", "instruments", "signals", "enter", "exit", "horizon", "horizon_ns",
                  "resolved", "unresolved", "no_mid", "mean_bps", "median_bps", "hit_rate", "trades", "wins",
                  "win_rate", "net_bps_sum", "mean_net_bps"]

        def rows():
            for r in summary["rules"]:
                p = r["pnl"]
                for name, h in zip(self.horizon_names, self.horizons.tolist()):
                    m = r["markouts"][name]
                    yield [r["rule"], r["rule_id"], r["rule_kind"], len(r["instruments"]), r["signals"], r["enter"],
                           r["exit"], name, h, m["resolved"], m["unresolved"], m["no_mid"],
                           _num(m["mean_bps"]), _num(m["median_bps"]), _num(m["hit_rate"]), p["trades"], p["wins"],
                           _num(p["win_rate"]), _num(p["net_bps_sum"]), _num(p["mean_net_bps"])]
        _write_csv(path, header, rows())

    def _write_summary_csv(self, path, summary):
        header = ["rule", "instrument", "symbol", "signals", "horizon", "horizon_ns", "resolved", "unresolved",
                  "no_mid", "mean_ticks", "median_ticks", "mean_bps", "median_bps", "hit_rate"]

        def rows():
            for g in summary["groups"]:
                for name, h in zip(self.horizon_names, self.horizons.tolist()):
                    m = g["markouts"][name]
                    yield [g["rule"], g["instrument"], g["symbol"], g["signals"], name, h, m["resolved"],
                           m["unresolved"], m["no_mid"]] + [_num(m[k]) for k in
                                                            ("mean_ticks", "median_ticks", "mean_bps", "median_bps",
                                                             "hit_rate")]
        _write_csv(path, header, rows())


# -- figures ---------------------------------------------------------------------------------
def _markout_stats(direction, mid0, status0, mid_h, status) -> dict:
    mid0 = np.where(status0 == _OK, mid0, np.nan)          # the mid at t, where defined
    ok = status == _OK
    ok &= np.isfinite(mid0)
    d = direction[ok].astype(np.float64)
    ticks = d * (mid_h[ok] - mid0[ok])
    bps = ticks / mid0[ok] * 1e4
    n = int(ok.sum())
    return {
        "resolved": n,
        "unresolved": int(np.count_nonzero(status == _PENDING)),
        "no_mid": int(np.count_nonzero((status == _NO_MID) | ((status == _OK) & ~np.isfinite(mid0)))),
        "mean_ticks": _f(ticks.mean()) if n else None,
        "median_ticks": _f(np.median(ticks)) if n else None,
        "mean_bps": _f(bps.mean()) if n else None,
        "median_bps": _f(np.median(bps)) if n else None,
        "stderr_bps": _f(bps.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
        "hit_rate": _f(np.count_nonzero(ticks > 0) / n) if n else None,
        "zero_share": _f(np.count_nonzero(ticks == 0) / n) if n else None,
    }


def _pnl_stats(T, idx, state, inst) -> dict:
    """PnL figures of the trades ``idx`` of the trade columns ``T`` (``inst``: their one
    instrument, for ``net_quote``; None: left out)."""
    net, bps = T["net_ticks"][idx], T["net_bps"][idx]
    gross, fees = T["gross_ticks"][idx], T["fees_ticks"][idx]
    n_open = int(np.count_nonzero(T["open"][idx]))
    fin = np.isfinite(net)
    return {
        "trades": len(idx),
        "closed": len(idx) - n_open,
        "open_at_end": n_open,
        "open_unmarked": int(np.count_nonzero(~fin)),
        "wins": int(np.count_nonzero(net[fin] > 0)),
        "win_rate": _f(np.count_nonzero(net[fin] > 0) / fin.sum()) if fin.any() else None,
        # the trades net counts (an open one left unmarked: none of its figures; its entry fee
        # had gone into fees_ticks, so gross - fees was not net)
        "gross_ticks": _f(sum(gross[fin & np.isfinite(gross)].tolist())),
        "fees_ticks": _f(sum(fees[fin & np.isfinite(fees)].tolist())),
        "net_ticks": _f(net[fin].sum()),
        "net_quote": _f(net[fin].sum() * float(inst.tick_size)) if inst is not None else None,
        "net_bps_sum": _f(bps[fin].sum()),
        "mean_net_bps": _f(bps[fin].mean()) if fin.any() else None,
        "ignored_enters": state.get("ignored_enters", 0),
        "exits_while_flat": state.get("exits_flat", 0),
        "entries_unfilled": state.get("entries_unfilled", 0),
        "exits_unfilled": state.get("exits_unfilled", 0),
        "fills_after_end": state.get("after_end", 0),
    }


def _f(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _num(x):
    """A float for CSV: empty when NaN, integers without a fraction, else repr (round-trips)."""
    if x is None:
        return ""
    x = float(x)
    if not math.isfinite(x):
        return ""
    return int(x) if x.is_integer() and abs(x) < 2**53 else repr(x)


def _price(inst: Instrument, ticks) -> str:
    if ticks is None or not math.isfinite(float(ticks)):
        return ""
    return f"{(Decimal(repr(float(ticks))) * inst.tick_size).normalize():f}" if not float(ticks).is_integer() \
        else inst.format_price(int(ticks))


def _groups(*keys) -> dict:
    """``{key tuple: positions}`` of the rows with each combination of ``keys`` (equal-length
    integer columns), positions ascending."""
    n = len(keys[0])
    if not n:
        return {}
    order = np.lexsort((np.arange(n),) + tuple(reversed(keys)))
    gk = np.stack([np.asarray(k)[order] for k in keys], axis=1).astype(np.int64)
    cut = np.flatnonzero(np.any(gk[1:] != gk[:-1], axis=1)) + 1
    return {tuple(gk[a].tolist()): order[a:b] for a, b in zip(np.r_[0, cut], np.r_[cut, n])}


def _atomic_write(path: Path, write, newline=""):
    with replacing(path) as tmp, open(tmp, "w", newline=newline, encoding="utf-8") as f:
        write(f)


def _write_csv(path, header, rows):
    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    _atomic_write(path, write)


_STR = np.dtypes.StringDType()
_CSV_ROWS = 1 << 13                        # rows formatted at a time (memory stays flat: ~2.5 KB a row)


def _csv_field(text: str) -> str:
    """``text`` as a field the way the csv module writes it (quoted where it must be)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([text, ""])
    return buf.getvalue()[:-2]                           # less the "," and "\n" after it


def _num_strings(x) -> np.ndarray:
    """:func:`_num` of every value, vectorised: empty for NaN and infinities, integers without a
    fraction, else the shortest repr that round-trips (numpy's float formatting is Python's)."""
    x = np.asarray(x, np.float64)
    out = np.zeros(len(x), dtype=_STR)
    fin = np.isfinite(x)
    whole = fin & (np.floor(x) == x) & (np.abs(x) < 2.0 ** 53)
    out[whole] = x[whole].astype(np.int64).astype(_STR)
    frac = fin & ~whole
    out[frac] = x[frac].astype(_STR)
    return out


def _int_strings(x) -> np.ndarray:
    return np.asarray(x).astype(_STR)


def _text_strings(codes, names: dict) -> np.ndarray:
    """``names[code]`` of every code, CSV-quoted where needed (a few distinct names: one lookup)."""
    codes = np.asarray(codes, np.int64)
    uniq, inv = np.unique(codes, return_inverse=True)
    table = np.array([_csv_field(str(names[int(u)])) for u in uniq], dtype=_STR)
    return table[inv.reshape(-1)] if len(uniq) else np.zeros(0, dtype=_STR)


def _write_csv_columns(path, header, n, columns):
    """A CSV file of ``n`` rows whose formatted columns ``columns(slice)`` returns (arrays of
    strings), :data:`_CSV_ROWS` rows at a time: the same bytes as the csv module's writer."""
    def write(f):
        f.write(",".join(_csv_field(h) for h in header) + "\n")
        for a in range(0, n, _CSV_ROWS):
            cols = [c.tolist() for c in columns(slice(a, min(a + _CSV_ROWS, n)))]
            f.write("\n".join(map(",".join, zip(*cols))))
            f.write("\n")
    _atomic_write(path, write)


# -- plots -----------------------------------------------------------------------------------
def _require_matplotlib():
    from tickwire.engine.plots import require_matplotlib

    try:
        require_matplotlib()
    except ImportError:
        raise ImportError(MATPLOTLIB_MISSING) from None


def _plots(rb: ReportBuilder, out: Path, trades, summary, partial) -> list[str]:
    _require_matplotlib()
    from matplotlib.figure import Figure              # no pyplot: no global state, no GUI
    from matplotlib.ticker import NullFormatter

    from tickwire.engine.plots import save_png        # Agg canvas, atomic (shared with tickwire plot)

    tag = " (partial: the replay was stopped)" if partial else ""
    written = []

    def save(fig, name):
        written.append(save_png(fig, out / name).name)

    # cumulative net PnL (bps of each entry, summed over trades) by exit time
    fig = Figure(figsize=(10, 5.5), layout="constrained")
    ax = fig.add_subplot()
    fin = np.flatnonzero(np.isfinite(trades["net_bps"]))
    by_key = {k: fin[v] for k, v in _groups(trades["rule_id"][fin], trades["rule_kind"][fin],
                                             trades["instrument"][fin]).items()}
    top = sorted(by_key, key=lambda k: -len(by_key[k]))[:_PLOT_KEYS]
    for key in sorted(top):
        tr = by_key[key]
        x = trades["exit_fill_ts"][tr].astype("datetime64[ns]")
        y = np.cumsum(trades["net_bps"][tr])
        ax.step(x, y, where="post", label=f"{rb._rule_label(key[0], key[1])} {rb.instruments[key[2]].symbol}")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_title(f"Cumulative taker PnL, net of {rb.fee_bps:g} bps fees, latency {rb.latency_ns} ns{tag}")
    ax.set_xlabel("exit fill time (UTC)")
    ax.set_ylabel("cumulative net PnL (bps of entry, one unit a trade)")
    if top:
        ax.legend(fontsize="small")
        if len(by_key) > len(top):
            ax.text(0.01, 0.01, f"{len(by_key) - len(top)} more (rule, instrument) pairs not drawn",
                    transform=ax.transAxes, fontsize="small")
    else:
        ax.text(0.5, 0.5, "no trades", transform=ax.transAxes, ha="center")
    save(fig, "pnl.png")

    # markout curves: mean signed markout in bps against the horizon, +/- one standard error
    fig = Figure(figsize=(10, 5.5), layout="constrained")
    ax = fig.add_subplot()
    hs = rb.horizons / 1e9
    groups = sorted(summary["groups"], key=lambda g: -g["enter"])[:_PLOT_KEYS]
    drawn = 0
    for g in groups:
        m = [g["markouts"][name] for name in rb.horizon_names]
        y = np.array([np.nan if v["mean_bps"] is None else v["mean_bps"] for v in m])
        e = np.array([np.nan if v["stderr_bps"] is None else v["stderr_bps"] for v in m])
        if np.all(np.isnan(y)):
            continue
        ax.errorbar(hs, y, yerr=e, marker="o", capsize=3, label=f"{g['rule']} {g['symbol']}")
        drawn += 1
    ax.set_xscale("log")
    ax.set_xticks(hs, rb.horizon_names)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("horizon after the signal")
    ax.set_ylabel("mean signed markout (bps of mid at the signal)")
    ax.set_title(f"Markouts by horizon (error bars: one standard error){tag}")
    if drawn:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no resolved markouts", transform=ax.transAxes, ha="center")
    save(fig, "markouts.png")

    # signals over the mid, for the instruments with the most signals
    R = {k: rb._rows[k] for k in rb._rows.cols}
    A = {k: rb._acts[k] for k in rb._acts.cols}
    per_inst: dict = {}
    for g in summary["groups"]:
        per_inst[g["instrument"]] = per_inst.get(g["instrument"], 0) + g["signals"]
    chosen = sorted(per_inst, key=lambda i: (-per_inst[i], i))[:_PLOT_INSTRUMENTS] or \
        sorted(rb.instruments)[:1]
    fig = Figure(figsize=(11, 3.2 * len(chosen) + 0.6), layout="constrained")
    axes = fig.subplots(len(chosen), 1, squeeze=False)[:, 0]
    for ax, i in zip(axes, chosen):
        inst = rb.instruments[i]
        tick = float(inst.tick_size)
        if rb._mid_ts.get(i):
            ct = np.concatenate(rb._mid_ts[i], axis=1)
            v = np.concatenate(rb._mid_v[i])
            ax.plot(ct[1].astype("datetime64[ns]"), v * tick, lw=0.7, color="0.35", label="mid")
        for mask, style, label in (((R["inst"] == i) & (R["dir"] > 0), dict(marker="^", color="tab:green"), "buy"),
                                   ((R["inst"] == i) & (R["dir"] < 0), dict(marker="v", color="tab:red"), "sell")):
            idx = np.flatnonzero(mask & (R["status"][:, 0] == _OK))
            idx = idx[::max(1, len(idx) // _PLOT_MARKERS)]
            if len(idx):
                ax.scatter(R["ts"][idx].astype("datetime64[ns]"), R["mid"][idx, 0] * tick, s=14, lw=0,
                           label=f"ENTER {label}", zorder=3, **style)
        idx = np.flatnonzero((A["inst"] == i) & A["exit"] & np.isfinite(A["mid_sig"]))
        idx = idx[::max(1, len(idx) // _PLOT_MARKERS)]
        if len(idx):
            ax.scatter(A["ts"][idx].astype("datetime64[ns]"), A["mid_sig"][idx] * tick, s=14, marker="x",
                       color="tab:blue", label="EXIT", zorder=3)
        ax.set_title(f"{inst.symbol}: signals over the mid{tag}", fontsize="medium")
        ax.set_ylabel("price")
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.legend(fontsize="small", loc="upper left")
    axes[-1].set_xlabel("event time (UTC)")
    save(fig, "signals.png")
    return written
