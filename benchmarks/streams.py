"""The streams the book and engine benchmarks run on: real captures and synthetic streams that
are not best cases.  Benchmark-only (not part of the tickwire package).

- ``binance``: the real Binance BTCUSDT capture (../shared/data): its REST snapshot, then its
  depth diffs (and trades) replayed ``passes`` times for a measurable run.
- ``kraken``: the real Kraken book-1000 capture: ten pairs, snapshots then updates, replayed.
- ``volatile``: synthetic, tens of instruments with thousands of levels per side, whose working
  set does not fit in L2 cache; the mid of each instrument walks as in a volatile hour (drift,
  steps and jumps of tens to hundreds of ticks, crossed levels removed); trades among the updates
  take out the best level part or whole.
- ``itch``: synthetic L3 order flow shaped like an ITCH feed: about 45% adds, 45% cancels (many
  of recent orders), 5% executions at the front of the best level and 5% modifies that change
  the price; over 10**5 resting orders.

Each stream has a ``prefix`` (the initial book: a snapshot, applied before the clock starts)
and the timed ``events``; :func:`shape` describes both.  Synthetic streams are cached under
``$TMPDIR/tickwire-bench-streams`` (same parameters, same bytes).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tickwire.engine.instruments import Instrument
from tickwire.ext.records import EVENT_DTYPE, Flag, Kind, Side

_T0 = 1_700_000_000_000_000_000


@dataclass
class Stream:
    name: str
    book: str                          # "L2" or "L3"
    instruments: list                  # tickwire Instruments, ids 0..n-1
    prefix: np.ndarray                 # the initial book, applied untimed
    events: np.ndarray                 # the timed events (book events, and trades on L2 streams)
    note: str = ""
    max_depth: dict = field(default_factory=dict)   # instrument id -> subscribed depth (product config)
    tick: dict = field(default_factory=dict)        # instrument id -> tick size (float, for peers)

    @property
    def book_events(self) -> np.ndarray:
        """The timed events that change a book (level updates; L3: adds, cancels, executions, modifies)."""
        if self.book == "L2":
            keep = self.events["kind"] != Kind.TRADE
        else:
            keep = (self.events["kind"] != Kind.TRADE) | (self.events["order_id"] != 0)
        return np.ascontiguousarray(self.events[keep])


class Skipped(Exception):
    """A stream that cannot be built here (the reason is the message)."""


def _cache_path(name: str, params: dict) -> Path:
    key = hashlib.sha256(repr(sorted(params.items())).encode()).hexdigest()[:16]
    root = Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "tickwire-bench-streams"
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{name}-{key}.npz"


def _cached(name, params, build):
    path = _cache_path(name, params)
    if path.exists():
        with np.load(path) as z:
            return z["prefix"], z["events"]
    prefix, events = build(**params)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, prefix=prefix, events=events)
    tmp.replace(path)
    return prefix, events


def _to_events(rows, t0=_T0) -> np.ndarray:
    """Rows (instrument, kind, side, price, qty, order_id) as EVENT_DTYPE with bursty times."""
    ev = np.zeros(len(rows), dtype=EVENT_DTYPE)
    if not rows:
        return ev
    ev["instrument"], ev["kind"], ev["side"], ev["price"], ev["qty"], ev["order_id"] = zip(*rows)
    rng = np.random.default_rng(len(rows))
    gaps = rng.exponential(1_000.0, len(rows)).astype(np.int64) + 1
    ev["ts_event"] = t0 + np.cumsum(gaps)
    ev["ts_recv"] = ev["ts_event"] + 20_000
    ev["seq"] = np.arange(1, len(rows) + 1, dtype=np.uint64)
    ev["flags"][7::8] |= int(Flag.LAST)
    ev["flags"][-1] |= int(Flag.LAST)
    return ev


# ---------------------------------------------------------------------------------------
# real captures
# ---------------------------------------------------------------------------------------

def _capture_stream(name, cap, passes, note):
    ev = cap.events
    ev = ev[ev["kind"] != Kind.SNAPSHOT]           # markers: the books start empty anyway
    # the snapshot (ADD levels of each pair) is the prefix; diffs and trades are timed
    first_update = np.flatnonzero(ev["kind"] != Kind.ADD)
    snap_mask = np.zeros(len(ev), bool)
    snap_mask[: first_update[0] if len(first_update) else len(ev)] = True
    # Kraken interleaves pairs' snapshots with other pairs' updates: a level ADD is a snapshot level
    snap_mask |= ev["kind"] == Kind.ADD
    prefix = np.ascontiguousarray(ev[snap_mask])
    body = ev[~snap_mask]
    events = np.concatenate([body] * passes)
    events["seq"] = np.arange(1, len(events) + 1, dtype=np.uint64)
    step = int(body["ts_event"].max() - body["ts_event"].min()) + 1
    events["ts_event"] += np.repeat(np.arange(passes, dtype=np.int64) * step, len(body))
    events["ts_recv"] += np.repeat(np.arange(passes, dtype=np.int64) * step, len(body))
    ticks = {i.id: float(i.tick_size) for i in cap.instruments}
    depth = {i.id: i.max_depth for i in cap.instruments if getattr(i, "max_depth", 0)}
    return Stream(name, "L2", cap.instruments, prefix, np.ascontiguousarray(events),
                  note=f"{note}; its {len(body):,} updates replayed {passes}x", max_depth=depth, tick=ticks)


def binance(passes: int = 20) -> Stream:
    from tickwire.feeds.captures import BINANCE_FILE, find_shared_data, load_binance

    path = find_shared_data(BINANCE_FILE)
    if path is None:
        raise Skipped(f"the Binance capture {BINANCE_FILE} is not in ../shared/data (or $TICKWIRE_SHARED_DATA)")
    return _capture_stream("binance", load_binance(path), passes,
                           "real Binance BTCUSDT spot, 2024-08-08, depth@100ms diffs and trades")


def kraken(passes: int = 100) -> Stream:
    from tickwire.feeds.captures import KRAKEN_FILE, find_shared_data, load_kraken

    path = find_shared_data(KRAKEN_FILE)
    if path is None:
        raise Skipped(f"the Kraken capture {KRAKEN_FILE} is not in ../shared/data (or $TICKWIRE_SHARED_DATA)")
    return _capture_stream("kraken", load_kraken(path), passes,
                           "real Kraken book-1000, ten pairs, 2021-04-17")


# ---------------------------------------------------------------------------------------
# synthetic: a volatile hour on tens of deep books
# ---------------------------------------------------------------------------------------

def _build_volatile(n, instruments, levels, seed):
    rng = np.random.default_rng(seed)
    mids = [1_000_000 + 137_000 * k for k in range(instruments)]
    books = [({}, {}) for _ in range(instruments)]
    pre = []
    for k in range(instruments):
        for side, sgn in ((Side.BID, -1), (Side.ASK, 1)):
            gaps = rng.integers(1, 3, levels)                  # thousands of levels, 1-2 ticks apart
            prices = mids[k] + sgn * np.cumsum(gaps)
            qtys = rng.lognormal(6.0, 1.2, levels).astype(np.int64) + 1
            for p, q in zip(prices.tolist(), qtys.tolist()):
                books[k][side][p] = q
                pre.append((k, Kind.ADD, side, p, q, 0))
    inst = rng.integers(0, instruments, n)
    u, v, w = rng.random(n), rng.random(n), rng.random(n)
    side_draw = rng.integers(0, 2, n)
    near = rng.geometric(0.08, n)
    far = rng.integers(1, 2 * levels, n)
    qty_draw = rng.lognormal(6.0, 1.2, n).astype(np.int64) + 1
    step = np.rint(rng.standard_t(3, n) * 3).astype(np.int64)              # fat-tailed moves
    jump = rng.integers(20, 300, n) * np.where(rng.random(n) < 0.5, -1, 1)
    rows = []
    for i in range(n):
        k = int(inst[i])
        bids, asks = books[k]
        if u[i] < 0.06:                                    # the mid moves (a volatile hour)
            d = int(jump[i]) if u[i] < 0.0015 else int(step[i])
            old = mids[k]
            mid = old + d
            mids[k] = mid
            # levels the move crossed are gone: asks at or below the new mid, bids at or above it
            if d > 0:
                for p in range(old, mid + 1):
                    if p in asks:
                        del asks[p]
                        rows.append((k, Kind.MODIFY, Side.ASK, p, 0, 0))
            elif d < 0:
                for p in range(mid, old + 1):
                    if p in bids:
                        del bids[p]
                        rows.append((k, Kind.MODIFY, Side.BID, p, 0, 0))
            continue
        mid = mids[k]
        if u[i] < 0.13:                                    # a trade at the best of one side
            side = int(side_draw[i])
            levels_ = bids if side == Side.BID else asks
            if not levels_:
                continue
            best = None                                    # the best is near the mid: look outward
            p = mid - 1 if side == Side.BID else mid + 1
            sgn = -1 if side == Side.BID else 1
            for _ in range(4 * levels):
                if p in levels_:
                    best = p
                    break
                p += sgn
            if best is None:
                continue
            have = levels_[best]
            fill = have if v[i] < 0.4 else max(1, have // 3)
            rows.append((k, Kind.TRADE, 1 - side, best, fill, 0))   # side: the aggressor
            if fill == have:
                del levels_[best]
                rows.append((k, Kind.MODIFY, side, best, 0, 0))
            else:
                levels_[best] = have - fill
                rows.append((k, Kind.MODIFY, side, best, have - fill, 0))
            continue
        side = int(side_draw[i])
        levels_ = bids if side == Side.BID else asks
        dist = int(near[i]) if w[i] < 0.7 else int(far[i])
        p = mid - dist if side == Side.BID else mid + dist
        if p in levels_ and v[i] < 0.35:
            del levels_[p]
            rows.append((k, Kind.MODIFY, side, p, 0, 0))
        else:
            q = int(qty_draw[i])
            levels_[p] = q
            rows.append((k, Kind.MODIFY, side, p, q, 0))
    return _to_events(pre, _T0 - 10**9), _to_events(rows)


def volatile(n: int = 2_000_000, instruments: int = 32, levels: int = 3000, seed: int = 11) -> Stream:
    prefix, events = _cached("volatile", dict(n=n, instruments=instruments, levels=levels, seed=seed),
                             _build_volatile)
    insts = [Instrument(i, f"VOL{i}", tick_size="0.01", lot_size="0.001", book="L2") for i in range(instruments)]
    return Stream("volatile", "L2", insts, prefix, events,
                  note=(f"synthetic, {instruments} instruments x {levels:,} initial levels per side, "
                        f"fat-tailed mid walk with jumps, trades at the best; seed {seed}"),
                  tick={i: 0.01 for i in range(instruments)})


# ---------------------------------------------------------------------------------------
# synthetic: ITCH-like L3
# ---------------------------------------------------------------------------------------

def _build_itch(n, instruments, resting, seed):
    from sortedcontainers import SortedDict

    rng = np.random.default_rng(seed)
    mids = [2_000_000 + 91_000 * k for k in range(instruments)]
    queues = [(SortedDict(), SortedDict()) for _ in range(instruments)]     # price -> [oids]
    orders = {}                                                              # oid -> [k, side, price, qty, pos]
    live = []
    recent = []
    next_id = [1]
    rows_pre, rows = [], []

    def dist(r):
        return int(rng.geometric(0.15)) if r < 0.6 else int(rng.geometric(0.004))

    def add(out, k, side, price, qty):
        oid = next_id[0]
        next_id[0] += 1
        orders[oid] = [k, side, price, qty, len(live)]
        live.append(oid)
        queues[k][side].setdefault(price, []).append(oid)
        out.append((k, Kind.ADD, side, price, qty, oid))
        return oid

    def remove(oid):
        k, side, price, _, pos = orders.pop(oid)
        last = live.pop()
        if last != oid:
            live[pos] = last
            orders[last][4] = pos
        q = queues[k][side][price]
        q.remove(oid)
        if not q:
            del queues[k][side][price]

    for k in range(instruments):
        for _ in range(resting):
            side = int(rng.integers(0, 2))
            d = dist(rng.random())
            add(rows_pre, k, side, mids[k] - d if side == Side.BID else mids[k] + d,
                int(rng.lognormal(4.5, 1.0)) + 1)
    u = rng.random(n)
    v = rng.random(n)
    inst = rng.integers(0, instruments, n)
    for i in range(n):
        k = int(inst[i])
        if v[i] < 0.01:                                   # the mid drifts a tick
            mids[k] += 1 if v[i] < 0.005 else -1
        mid = mids[k]
        r = u[i]
        if r < 0.45 or not live:                          # add
            side = int(v[i] * 1000) & 1
            d = dist(rng.random())
            oid = add(rows, k, side, mid - d if side == Side.BID else mid + d, int(rng.lognormal(4.5, 1.0)) + 1)
            recent.append(oid)
            if len(recent) > 4096:
                recent = recent[-2048:]
        elif r < 0.90:                                    # cancel: often a fleeting recent order
            oid = 0
            if v[i] < 0.6:
                while recent and oid == 0:
                    cand = recent.pop()
                    oid = cand if cand in orders else 0
            if oid == 0:
                oid = live[int(v[i] * len(live))]
            ko, side, price, _, _ = orders[oid]
            rows.append((ko, Kind.DELETE, side, price, 0, oid))
            remove(oid)
        elif r < 0.95:                                    # execution at the front of the best level
            side = int(v[i] * 1000) & 1
            q = queues[k][side]
            if not q:
                continue
            price, oids = q.peekitem(-1) if side == Side.BID else q.peekitem(0)
            oid = oids[0]
            have = orders[oid][3]
            fill = have if v[i] < 0.7 else max(1, have // 2)
            rows.append((k, Kind.TRADE, 1 - side, price, fill, oid))
            if fill == have:
                remove(oid)
            else:
                orders[oid][3] -= fill
        else:                                             # modify: a new price (and size)
            oid = live[int(v[i] * len(live))]
            ko, side, price, qty, _ = orders[oid]
            d = int(rng.geometric(0.3)) * (1 if rng.random() < 0.5 else -1)
            newp = price + d
            newq = max(1, int(qty * rng.uniform(0.5, 1.5)))
            rows.append((ko, Kind.MODIFY, side, newp, newq, oid))
            q = queues[ko][side][price]
            q.remove(oid)
            if not q:
                del queues[ko][side][price]
            queues[ko][side].setdefault(newp, []).append(oid)
            orders[oid][2] = newp
            orders[oid][3] = newq
    return _to_events(rows_pre, _T0 - 10**9), _to_events(rows)


def itch(n: int = 2_000_000, instruments: int = 8, resting: int = 16_000, seed: int = 13) -> Stream:
    prefix, events = _cached("itch", dict(n=n, instruments=instruments, resting=resting, seed=seed), _build_itch)
    insts = [Instrument(i, f"ITCH{i}", tick_size="0.01", lot_size="1", book="L3") for i in range(instruments)]
    return Stream("itch", "L3", insts, prefix, events,
                  note=(f"synthetic ITCH-like L3, {instruments} instruments, {instruments * resting:,} "
                        f"resting orders at the start; seed {seed}"),
                  tick={i: 0.01 for i in range(instruments)})


STREAMS = {"binance": binance, "kraken": kraken, "volatile": volatile, "itch": itch}


def load(names, **kwargs):
    """[(name, Stream or the reason it was skipped)] for ``names``."""
    out = []
    for name in names:
        try:
            out.append((name, STREAMS[name](**kwargs.get(name, {}))))
        except Skipped as exc:
            out.append((name, str(exc)))
    return out


# ---------------------------------------------------------------------------------------
# shape
# ---------------------------------------------------------------------------------------

def shape(s: Stream) -> str:
    """Distinct prices, levels, resting orders and the event mix, measured on the stream itself."""
    from tickwire.ext import BookSet, L2Book, L3Book

    allev = np.concatenate([s.prefix, s.events])
    kinds = np.bincount(s.events["kind"], minlength=7)
    n = len(s.events)
    prices = 0
    for i in np.unique(allev["instrument"]):
        sel = allev[allev["instrument"] == i]
        prices += len(np.unique(sel["price"][sel["kind"] != Kind.SNAPSHOT]))
    make = (lambda i: L2Book(i)) if s.book == "L2" else (lambda i: L3Book(i, max_orders=1 << 22))
    books = BookSet([make(i.id) for i in s.instruments])
    books.apply(s.prefix)
    start = sum(books[i.id].level_count(0) + books[i.id].level_count(1) for i in s.instruments)
    start_orders = sum(books[i.id].order_count for i in s.instruments) if s.book == "L3" else 0
    books.apply(s.events)
    end = sum(books[i.id].level_count(0) + books[i.id].level_count(1) for i in s.instruments)
    touched = len(np.unique(s.events["instrument"].astype(np.int64) << 40 ^ s.events["side"].astype(np.int64) << 39
                            ^ (s.events["price"] - s.events["price"].min())))
    pct = lambda k: f"{100 * kinds[k] / n:.0f}%"
    if s.book == "L2":
        upd = kinds[Kind.ADD] + kinds[Kind.MODIFY] + kinds[Kind.DELETE]
        removes = int(((s.events["qty"] == 0) & (s.events["kind"] != Kind.TRADE)).sum())
        mix = (f"level updates {100 * upd / n:.0f}% (of which {100 * removes / max(upd, 1):.0f}% remove a level), "
               f"trades {pct(Kind.TRADE)}")
    else:
        mix = (f"adds {pct(Kind.ADD)}, cancels {pct(Kind.DELETE)}, executions {pct(Kind.TRADE)}, "
               f"modifies {pct(Kind.MODIFY)}")
    orders = ""
    if s.book == "L3":
        end_orders = sum(books[i.id].order_count for i in s.instruments)
        orders = f"; resting orders {start_orders:,} at the start, {end_orders:,} at the end"
    return (f"{s.note}\n    {len(s.instruments)} instrument(s), {n:,} timed events after a {len(s.prefix):,}-event "
            f"initial book; {prices:,} distinct prices, {touched:,} distinct (instrument, side, price) updated; "
            f"levels {start:,} at the start, {end:,} at the end{orders}\n    mix: {mix}")
