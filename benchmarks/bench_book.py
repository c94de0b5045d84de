"""Order books: tickwire's engine path beside its peers at their best, same streams, same run.

    python benchmarks/bench_book.py [--streams binance,kraken,volatile,itch] [--repeats R]
                                    [--peer-events N] [--n N] [--bbo]

Streams (benchmarks/streams.py; each prints its shape): the real Binance and Kraken captures,
a synthetic volatile hour on 32 deep books (working set well past L2 cache), and an ITCH-like
L3 stream with over 10**5 resting orders.  Every contestant starts from the stream's initial
book (applied before the clock starts) and gets the same book events; trades are left out of
this race (they do not change an L2 book; the engine benchmark keeps them).

Contestants, each through its fastest interface:

- tickwire ``BookSet.apply`` (``tw_bookset_apply``): the per-event update the engine runs; on
  L3 books it also prefetches the order-map slots and records of the events ahead.  On L3 two
  more tickwire rows: ``tw_book_apply`` once per event, as ``Engine.process_c`` calls it (nothing
  looked ahead), and the same with ``tw_book_prefetch`` (what the engine's loop can add).
- limit: the plain C ladder (benchmarks/_bookbench.pyx): ``qty[inst][side][price] = qty``.
- numba: a dense ladder over the same numpy columns that keeps the best bid and ask (a scan
  down when the best empties): what a quant writes in twenty lines.
- hftbacktest: its market depth fed by its Rust backtest loop (``elapse``) over its own event
  array (local events only): ROIVectorMarketDepth where the price range fits a dense vector,
  HashMapMarketDepth otherwise.
- nautilus-trader: ``OrderBook.apply_deltas`` on pre-built ``OrderBookDeltas``, one batch per
  instrument.
- order-book and sortedcontainers (and tickwire's ``set``): a Python loop, one mapping call per
  event; these and nautilus run on the first ``--peer-events`` events.

After each contestant's last run, its full book (every level of every instrument) is compared
with tickwire's on the same events; any difference stops the benchmark.  Rates are the median of
``--repeats`` rounds on core 1 (each round runs every contestant once, so that load changes on the
shared machine hit all of them).  ``perf stat`` counters are not available on this VM (see
docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # (its helpers, under python -P too)
from common import describe_run, median_time, pin, require, table, version

import cbuild
import peers
import streams as S
from tickwire.ext import BookSet, Kind, L2Book, L3Book
from tickwire.ext.book import DEFAULT_MAX_WINDOW, DEFAULT_WINDOW

DENSE_BUDGET = 1 << 26        # slots (8 bytes each) a dense ladder may use: 512 MB


class Disagree(SystemExit):
    pass


# ---------------------------------------------------------------------------------------
# full books, as {instrument: ([(price, qty)] bids best first, [(price, qty)] asks best first)}
# ---------------------------------------------------------------------------------------

def tw_full(books: BookSet, insts):
    out = {}
    for i in insts:
        b = books[i]
        out[i] = tuple([(int(p), int(q)) for p, q, _ in b.levels(side)] for side in (0, 1))
    return out


def compare(name, got, want):
    for i, (wb, wa) in want.items():
        gb, ga = got.get(i, ([], []))
        for side, g, w in (("bid", gb, wb), ("ask", ga, wa)):
            if g != w:
                diff = next((k for k in range(min(len(g), len(w))) if g[k] != w[k]), min(len(g), len(w)))
                raise Disagree(f"FULL-BOOK MISMATCH: {name}, instrument {i} {side} side: {len(g)} levels against "
                               f"tickwire's {len(w)}; first difference at level {diff}: "
                               f"{g[diff] if diff < len(g) else None} vs {w[diff] if diff < len(w) else None}")


def warm(books, stream, ev):
    """The initial book on memory the stream has touched once (a running daemon's steady state,
    as the dense contestants' pre-faulted arrays): apply everything, clear (allocations stay),
    apply the initial book."""
    books.apply(stream.prefix)
    books.apply(ev)
    for b in books:
        b.clear()
    books.apply(stream.prefix)
    return books


def ranges(stream):
    """Per instrument (lowest, highest) price over the initial book and the timed events."""
    ev = np.concatenate([stream.prefix, stream.events])
    ev = ev[ev["kind"] != Kind.SNAPSHOT]
    lo = {}
    for i in np.unique(ev["instrument"]):
        p = ev["price"][ev["instrument"] == i]
        lo[int(i)] = (int(p.min()), int(p.max()))
    return lo


# ---------------------------------------------------------------------------------------
# numba: the twenty-line ladder
# ---------------------------------------------------------------------------------------

def columns(ev):
    return tuple(np.ascontiguousarray(ev[c]).astype(np.int64) for c in ("instrument", "side", "price", "qty"))


# ---------------------------------------------------------------------------------------
# contestants: (name, kind, setup() -> state, run(state), full(state) -> books or None)
#   kind: "tw", "tw-event" (tickwire's per-event call, L3), "peer" or "limit"
# ---------------------------------------------------------------------------------------

def l2_contestants(stream, ev, sub, notes):
    insts = [i.id for i in stream.instruments]
    out = []

    def bs_setup():
        return warm(BookSet([L2Book(i) for i in insts]), stream, ev)
    out.append(("tickwire BookSet.apply (engine's path)", "tw", bs_setup, lambda b: b.apply(ev),
                lambda b: tw_full(b, insts)))
    grown = sorted({hi - lo + 1 for b in bs_setup() for lo, hi, _, _ in (b._layout(0), b._layout(1))})
    why = (f"grown from the default 2^{DEFAULT_WINDOW.bit_length() - 1} while many updates fell outside it, "
           f"up to max_window 2^{DEFAULT_MAX_WINDOW.bit_length() - 1}" if grown[-1] > DEFAULT_WINDOW
           else "the default: none grew")
    notes.append(f"tickwire: windows of {'/'.join(f'2^{w.bit_length() - 1}' for w in grown)} slots per side "
                 f"after the warm-up pass ({why})")

    rng = ranges(stream)
    span = 1 << max(max(hi - lo for lo, hi in rng.values()).bit_length(), 1)
    dense = 2 * len(insts) * span <= DENSE_BUDGET
    base = np.array([rng[i][0] for i in insts], dtype=np.int64)
    if dense:
        bb = cbuild.load("_bookbench")

        def lim_setup():
            lad = bb.PlainLadder(base, span)
            lad.apply(stream.prefix)
            return lad
        out.append(("limit: plain C ladder (qty store only)", "limit", lim_setup, lambda lad: lad.apply(ev),
                    lambda lad: {i: (lad.levels(i, 0), lad.levels(i, 1)) for i in insts}))

        apply = peers.ladder()
        cols, pcols = columns(ev), columns(stream.prefix)

        def nb_setup():
            st = (base, np.empty((len(insts), span), np.int64), np.empty((len(insts), span), np.int64),
                  np.full(len(insts), -1, np.int64), np.full(len(insts), span, np.int64))
            st[1].fill(0)                            # zeroed and pre-faulted (no page faults on the clock)
            st[2].fill(0)
            apply(*pcols, *st)
            return st

        def nb_full(st):
            _, bids, asks, _, _ = st
            res = {}
            for i in insts:
                nzb, nza = np.flatnonzero(bids[i])[::-1], np.flatnonzero(asks[i])
                res[i] = ([(int(base[i] + s), int(bids[i, s])) for s in nzb],
                          [(int(base[i] + s), int(asks[i, s])) for s in nza])
            return res
        nb_setup()                                   # compile outside the clock
        out.append((f"numba {version('numba')} dense ladder keeping the BBO", "peer", nb_setup,
                    lambda st: apply(*cols, *st), nb_full))
    else:
        notes.append(f"plain C ladder and numba dense ladder: n/a, the price range ({span:,} ticks per side) "
                     f"needs {2 * len(insts) * span * 8 / 2**30:.1f} GB of dense arrays")
    out += hftbacktest_l2(stream, ev, insts, rng, notes)
    out += nautilus(stream, sub, insts, notes)
    out += python_loops(stream, sub, insts)
    return out


def hftbacktest_l2(stream, ev, insts, rng, notes):
    try:
        from hftbacktest import BacktestAsset, HashMapMarketDepthBacktest, ROIVectorMarketDepthBacktest
        from hftbacktest.types import (BUY_EVENT, DEPTH_EVENT, LOCAL_EVENT, SELL_EVENT, event_dtype)
    except ImportError:
        notes.append("hftbacktest not installed (pip install -e .[bench])")
        return []
    import warnings

    roi = max(hi - lo for lo, hi in rng.values()) * 2 * len(insts) <= DENSE_BUDGET

    # one clock for all: the initial book at 1..P, the timed events after it, in stream order
    pre_ts = np.arange(1, len(stream.prefix) + 1, dtype=np.int64)
    body_ts = len(stream.prefix) + 1 + np.arange(len(ev), dtype=np.int64)

    def convert(e, ts, tick):
        d = np.zeros(len(e), event_dtype)
        d["ev"] = (DEPTH_EVENT | LOCAL_EVENT) | np.where(e["side"] == 0, BUY_EVENT, SELL_EVENT).astype(np.uint64)
        d["exch_ts"] = ts
        d["local_ts"] = ts
        d["px"] = e["price"] * tick
        d["qty"] = e["qty"]
        return d
    per_inst = {}
    for i in insts:
        tick = stream.tick.get(i, 0.01)
        mp, mb = stream.prefix["instrument"] == i, ev["instrument"] == i
        per_inst[i] = (tick, np.concatenate([convert(stream.prefix[mp], pre_ts[mp], tick),
                                             convert(ev[mb], body_ts[mb], tick)]))

    def setup():
        assets = []
        for i in insts:
            tick, data = per_inst[i]
            a = (BacktestAsset().add_data(data).linear_asset(1.0).constant_order_latency(0, 0)
                 .risk_adverse_queue_model().no_partial_fill_exchange().tick_size(tick).lot_size(1.0)
                 .last_trades_capacity(0))
            if roi:
                lo, hi = rng[i]
                a = a.roi_lb((lo - 1) * tick).roi_ub((hi + 1) * tick)
            assets.append(a)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hbt = (ROIVectorMarketDepthBacktest if roi else HashMapMarketDepthBacktest)(assets)
        hbt.elapse(len(stream.prefix))                # the initial book, outside the clock
        return hbt

    def run(hbt):
        hbt.elapse(1 << 60)

    def full(hbt):
        res = {}
        for n, i in enumerate(insts):
            tick = per_inst[i][0]
            d = hbt.depth(n)
            if roi:
                lb = d.roi_lb_tick
                bd, ad = np.asarray(d.bid_depth), np.asarray(d.ask_depth)
                nzb, nza = np.flatnonzero(bd)[::-1], np.flatnonzero(ad)
                res[i] = ([(int(lb + s), int(round(bd[s]))) for s in nzb], [(int(lb + s), int(round(ad[s]))) for s in nza])
            else:
                snap = d.snapshot()
                bids = sorted(((int(round(x["px"] / tick)), int(round(x["qty"]))) for x in snap
                               if x["ev"] & BUY_EVENT), reverse=True)
                asks = sorted((int(round(x["px"] / tick)), int(round(x["qty"]))) for x in snap if x["ev"] & SELL_EVENT)
                d.snapshot_free(snap)
                res[i] = (bids, asks)
        return res
    if len(insts) > 1:
        notes.append("hftbacktest: one asset per instrument, all on one clock (the event index)")
    kind = "ROIVectorMarketDepth" if roi else "HashMapMarketDepth"
    return [(f"hftbacktest {version('hftbacktest')} {kind} (Rust elapse)", "peer", setup, run, full)]


def nautilus(stream, sub, insts, notes):
    try:
        from nautilus_trader.model.book import OrderBook
        from nautilus_trader.model.data import BookOrder, OrderBookDelta, OrderBookDeltas
        from nautilus_trader.model.enums import BookAction, BookType, OrderSide
        from nautilus_trader.model.identifiers import InstrumentId
        from nautilus_trader.model.objects import Price, Quantity
    except ImportError:
        notes.append("nautilus-trader not installed (pip install -e .[bench])")
        return []
    l3 = stream.book == "L3"
    ids = {i: InstrumentId.from_str(f"I{i}.SIM") for i in insts}
    sides = (OrderSide.BUY, OrderSide.SELL)
    prec = {i: max(0, -int(np.floor(np.log10(stream.tick.get(i, 0.01)) + 1e-9))) for i in insts}

    def price(i, p):
        return Price(p * stream.tick.get(i, 0.01), prec[i])

    def deltas_of(ev, resting):
        per = {i: [] for i in insts}
        for seq, (inst, kind, side, p, q, oid) in enumerate(zip(
                ev["instrument"].tolist(), ev["kind"].tolist(), ev["side"].tolist(), ev["price"].tolist(),
                ev["qty"].tolist(), ev["order_id"].tolist())):
            if not l3:
                action = BookAction.UPDATE if q else BookAction.DELETE
                per[inst].append(OrderBookDelta(ids[inst], action, BookOrder(sides[side], price(inst, p), Quantity(q, 0), 0),
                                                0, seq, 0, 0))
                continue
            if kind == Kind.ADD:
                resting[oid] = [side, p, q]
                action = BookAction.ADD
            elif kind == Kind.DELETE:
                side, p, q = resting.pop(oid)
                action = BookAction.DELETE
            elif kind == Kind.TRADE:
                o = resting[oid]
                o[2] -= q
                side, p, q = o
                action = BookAction.UPDATE
                if q == 0:
                    del resting[oid]
                    action = BookAction.DELETE
            else:
                # a new price: nautilus's UPDATE with another price moves the order (to the back)
                o = resting[oid]
                o[1], o[2] = p, q
                action = BookAction.UPDATE
            per[inst].append(OrderBookDelta(ids[inst], action, BookOrder(sides[side], price(inst, p), Quantity(q, 0), oid),
                                            0, seq, 0, 0))
        return {i: OrderBookDeltas(ids[i], d) for i, d in per.items() if d}
    try:
        resting = {}
        pre = deltas_of(stream.prefix, resting)
        body_resting = dict((k, list(v)) for k, v in resting.items())
        body = deltas_of(sub, body_resting)
    except Exception as exc:                          # e.g. a quantity past nautilus's limits
        notes.append(f"nautilus-trader: n/a on this stream ({type(exc).__name__}: {exc})")
        return []
    btype = BookType.L3_MBO if l3 else BookType.L2_MBP

    def setup():
        books = {i: OrderBook(ids[i], btype) for i in insts}
        for i, d in pre.items():
            books[i].apply_deltas(d)
        return books

    def run(books):
        for i, d in body.items():
            books[i].apply_deltas(d)

    def full(books):
        res = {}
        for i, b in books.items():
            tick = stream.tick.get(i, 0.01)
            res[i] = tuple([(int(round(lv.price.as_double() / tick)), int(round(lv.size()))) for lv in levels]
                           for levels in (b.bids(), b.asks()))
        return res
    return [(f"nautilus-trader {version('nautilus_trader')} apply_deltas (pre-built, per instrument)", "peer",
             setup, run, full, "sub")]


def python_loops(stream, sub, insts):
    from order_book import OrderBook as ObBook
    from sortedcontainers import SortedDict

    rows = list(zip(sub["instrument"].tolist(), sub["side"].tolist(), sub["price"].tolist(), sub["qty"].tolist()))
    pre = list(zip(stream.prefix["instrument"].tolist(), stream.prefix["side"].tolist(),
                   stream.prefix["price"].tolist(), stream.prefix["qty"].tolist()))

    # the same loop shape for everyone: the instrument's book by index, then one call per event
    # (the dict-like peers: a branch, and a containment test before a delete)
    def tw_setup():
        books = BookSet([L2Book(i) for i in insts])
        books.apply(stream.prefix)
        return [books[i].set if i in books else None for i in range(max(insts) + 1)], books

    def tw_run(state):
        sets = state[0]
        for i, side, p, q in rows:
            sets[i](side, p, q)

    def dict_setup(make):
        def setup():
            books = [make() for _ in range(max(insts) + 1)]
            for i, side, p, q in pre:
                books[i][side][p] = q
            return books
        return setup

    def dict_run(books):
        for i, side, p, q in rows:
            levels = books[i][side]
            if q:
                levels[p] = q
            elif p in levels:                           # (order-book's SortedDict has no pop)
                del levels[p]

    def ob_make():
        ob = ObBook()
        return (ob.bids, ob.asks)

    def dict_full(books):
        res = {}
        for i in insts:
            b, a = (dict(x.to_dict()) if hasattr(x, "to_dict") else dict(x) for x in books[i])
            res[i] = (sorted(((int(p), int(q)) for p, q in b.items()), reverse=True),
                      sorted((int(p), int(q)) for p, q in a.items()))
        return res
    return [("tickwire L2Book.set (Python loop)", "tw", tw_setup, tw_run, lambda st: tw_full(st[1], insts), "sub"),
            (f"order-book {version('order-book')} (Python loop)", "peer", dict_setup(ob_make), dict_run, dict_full, "sub"),
            (f"sortedcontainers {version('sortedcontainers')} SortedDict (Python loop)", "peer",
             dict_setup(lambda: (SortedDict(), SortedDict())), dict_run, dict_full, "sub")]


# ---------------------------------------------------------------------------------------
# L3
# ---------------------------------------------------------------------------------------

class SortedL3:
    """The usual pure-Python L3 book: SortedDict of price -> {order_id: qty} (FIFO by insertion)."""

    def __init__(self):
        from sortedcontainers import SortedDict

        self.sides = (SortedDict(), SortedDict())
        self.orders = {}

    def add(self, oid, side, price, qty):
        self.orders[oid] = (side, price)
        self.sides[side].setdefault(price, {})[oid] = qty

    def delete(self, oid):
        side, price = self.orders.pop(oid)
        level = self.sides[side][price]
        del level[oid]
        if not level:
            del self.sides[side][price]

    def execute(self, oid, fill):
        side, price = self.orders[oid]
        level = self.sides[side][price]
        if level[oid] == fill:
            self.delete(oid)
        else:
            level[oid] -= fill

    def modify(self, oid, price, qty):
        side, old = self.orders[oid]
        if price == old and qty <= self.sides[side][old][oid]:
            self.sides[side][old][oid] = qty
            return
        self.delete(oid)
        self.add(oid, side, price, qty)

    def full(self):
        return tuple([(int(p), int(sum(lv.values()))) for p, lv in items]
                     for items in (reversed(self.sides[0].items()), self.sides[1].items()))


def l3_contestants(stream, ev, sub, notes):
    insts = [i.id for i in stream.instruments]

    def bs_setup():
        return warm(BookSet([L3Book(i, max_orders=1 << 22, initial_orders=1 << 18) for i in insts]), stream, ev)
    out = [("tickwire BookSet.apply (tw_bookset_apply)", "tw", bs_setup, lambda b: b.apply(ev),
            lambda b: tw_full(b, insts))]
    bb = cbuild.load("_bookbench")
    # the engine's call pattern: tw_book_apply per event, nothing looked ahead (BookSet.apply
    # prefetches the order-map slots and records of the events ahead; Engine.process_c does not)
    out.append(("tickwire tw_book_apply per event (the engine's call)", "tw-event", bs_setup,
                lambda b: bb.per_event(b, ev), lambda b: tw_full(b, insts)))
    out.append(("tickwire tw_book_apply per event + tw_book_prefetch", "tw-event", bs_setup,
                lambda b: bb.per_event(b, ev, True), lambda b: tw_full(b, insts)))
    rows = list(zip(sub["instrument"].tolist(), sub["kind"].tolist(), sub["order_id"].tolist(), sub["side"].tolist(),
                    sub["price"].tolist(), sub["qty"].tolist()))

    def sd_setup():
        books = [SortedL3() for _ in range(max(insts) + 1)]
        for i, oid, side, p, q in zip(stream.prefix["instrument"].tolist(), stream.prefix["order_id"].tolist(),
                                      stream.prefix["side"].tolist(), stream.prefix["price"].tolist(),
                                      stream.prefix["qty"].tolist()):
            books[i].add(oid, side, p, q)
        return books

    def sd_run(books):
        for i, kind, oid, side, p, q in rows:
            b = books[i]
            if kind == 1:
                b.add(oid, side, p, q)
            elif kind == 3:
                b.delete(oid)
            elif kind == 4:
                b.execute(oid, q)
            else:
                b.modify(oid, p, q)
    out.append((f"sortedcontainers {version('sortedcontainers')} L3 (Python loop)", "peer", sd_setup, sd_run,
                lambda books: {i: books[i].full() for i in insts}, "sub"))
    out += nautilus(stream, sub, insts, notes)
    notes.append("hftbacktest and numba: no L3 contestant (hftbacktest's L3 depth is driven by its exchange "
                 "simulation, and an L3 book is not a twenty-line numba loop)")
    return out


# ---------------------------------------------------------------------------------------

def race(stream, repeats, peer_events):
    ev = stream.book_events
    sub = ev[:peer_events] if peer_events and peer_events < len(ev) else ev
    notes = []
    make = l2_contestants if stream.book == "L2" else l3_contestants
    contestants = make(stream, ev, sub, notes)
    want_full, want_sub = None, None
    times = [[] for _ in contestants]
    # rounds: every contestant once per round, so that a load change on the shared machine hits
    # them all alike; the full book is checked after each contestant's last run
    for rnd in range(repeats):
        for k, c in enumerate(contestants):
            name, kind, setup, run, full = c[:5]
            on_sub = len(c) > 5
            state = setup()
            t0 = time.perf_counter()
            run(state)
            times[k].append(time.perf_counter() - t0)
            if rnd < repeats - 1:
                del state
                continue
            got = full(state)
            del state
            if on_sub:
                if want_sub is None:
                    b = contestants[0][2]()
                    b.apply(sub)
                    want_sub = tw_full(b, [i.id for i in stream.instruments])
                compare(name, got, want_sub)
            else:
                if want_full is None:
                    want_full = got                     # tickwire's own, first in the list
                compare(name, got, want_full)
    results = []
    for c, ts in zip(contestants, times):
        n = len(sub) if len(c) > 5 else len(ev)
        rate = n / statistics.median(ts)
        results.append((c[0], c[1], n, rate))
        print(f"    {stream.name}: {c[0]}: {rate / 1e6:.2f} M/s (full book checked)", file=sys.stderr, flush=True)
    return results, notes, len(ev), len(sub)


def verdicts(stream, results):
    by = {name: rate for name, _, _, rate in results}
    tw = results[0][3]
    out = []
    limit = next((r for n, k, _, r in results if k == "limit"), None)
    if limit:
        out.append(f"within 2x of the plain C ladder: {limit / tw:.2f}x ({'HIT' if limit <= 2 * tw else 'MISS'})")
    for key in ("hftbacktest", "numba"):
        r = next((rate for name, rate in by.items() if name.startswith(key)), None)
        if r:
            out.append(f"ahead of {key}: {tw / r:.2f}x ({'HIT' if tw > r else 'MISS'})")
    if stream.book == "L3":
        peers = [(n, r) for n, k, _, r in results if k == "peer"]
        best = max(peers, key=lambda x: x[1]) if peers else None
        out.append(f">= 10 M events/s: {tw / 1e6:.1f} M/s ({'HIT' if tw >= 10e6 else 'MISS'})")
        for name, kind, _, rate in results:
            if kind == "tw-event":
                out.append(f">= 10 M events/s, {name.split('tickwire ')[1]}: {rate / 1e6:.1f} M/s "
                           f"({'HIT' if rate >= 10e6 else 'MISS'})")
        if best:
            out.append(f"ahead of every peer (best: {best[0].split(' (')[0]}): {tw / best[1]:.1f}x "
                       f"({'HIT' if tw > best[1] else 'MISS'})")
    return out


def bbo_costs(depths, seed, reads=1_000_000):
    """BBO read cost and best-level churn against depth, with sparse books (random gaps of 1-200 ticks)."""
    from order_book import OrderBook as ObBook
    from sortedcontainers import SortedDict

    bb = cbuild.load("_bookbench")
    rows = []
    rng = np.random.default_rng(seed)
    for depth in depths:
        bids = 99_999_999 - np.cumsum(rng.integers(1, 200, depth))
        asks = 100_000_001 + np.cumsum(rng.integers(1, 200, depth))
        qty = rng.integers(1, 1000, depth)
        tw = L2Book(0)
        for p, q in zip(bids.tolist(), qty.tolist()):
            tw.set(0, p, q)
        for p, q in zip(asks.tolist(), qty.tolist()):
            tw.set(1, p, q)
        n = 20_000_000
        c_read = median_time(lambda _: bb.bbo_reads(tw, n), 3) / n * 1e9
        churn = median_time(lambda _: bb.top_churn(tw, n // 4), 3) / (n // 4) * 1e9
        layout = tw._layout(0)

        def py(read):
            def loop(_):
                for _ in range(reads):
                    read()
            return median_time(loop, 3) / reads * 1e9
        ob = ObBook()
        sd = (SortedDict(), SortedDict())
        for s, ps in ((0, bids), (1, asks)):
            for p, q in zip(ps.tolist(), qty.tolist()):
                (ob.bids, ob.asks)[s][p] = q
                sd[s][p] = q
        rows.append([f"{depth:,}", f"{layout[2]:,}/{layout[3]:,}", f"{c_read:.2f}", f"{churn:.1f}",
                     f"{py(tw.bbo):.0f}", f"{py(lambda: (ob.bids.index(0), ob.asks.index(0))):.0f}",
                     f"{py(lambda: (sd[0].peekitem(-1), sd[1].peekitem(0))):.0f}"])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", default="binance,kraken,volatile,itch", help="[%(default)s]")
    ap.add_argument("--repeats", type=int, default=5, help="runs per contestant; the median is shown [%(default)s]")
    ap.add_argument("--peer-events", type=int, default=300_000,
                    help="events for the Python-loop contestants and nautilus [%(default)s]")
    ap.add_argument("--n", type=int, default=2_000_000, help="events of the synthetic streams [%(default)s]")
    ap.add_argument("--bbo", action="store_true", help="also the BBO cost against depth table")
    args = ap.parse_args(argv)
    require("numba", "hftbacktest", "nautilus_trader", "order_book", "sortedcontainers")
    pinned = pin(1)
    print(f"# tickwire order-book benchmark ({describe_run(pinned)})")
    print("# every contestant's full book (every level) is checked against tickwire's after its runs")
    summary = []
    kw = {"volatile": {"n": args.n}, "itch": {"n": args.n}}
    for name, stream in S.load([x for x in args.streams.split(",") if x], **kw):
        if isinstance(stream, str):
            print(f"\n{name}: SKIPPED: {stream}")
            continue
        print(f"\n{stream.name} ({stream.book}): {S.shape(stream)}")
        results, notes, n, nsub = race(stream, args.repeats, args.peer_events)
        tw = results[0][3]
        rows = [[name, f"{n:,}", f"{rate / 1e6:.2f}", f"{1e9 / rate:.1f}", f"{tw / rate:.2f}x"]
                for name, _, n, rate in results]
        print(f"  book events: {n:,} (Python loops and nautilus: the first {nsub:,}); median of {args.repeats}")
        table(rows, ["contestant", "events", "M ev/s", "ns/ev", "tickwire is"])
        for note in notes:
            print(f"  note: {note}")
        for v in verdicts(stream, results):
            print(f"  target: {v}")
            summary.append(f"{stream.name}: {v}")
    if args.bbo:
        print("\nBBO cost against depth, sparse books (gaps of 1-200 ticks: the next level is rarely in the "
              "same bitmap word, deep books spill into the overflow array), ns")
        table(bbo_costs([10, 1000, 20000, 200000], 42),
              ["depth", "window/overflow", "tw C read", "tw C del+add best", "tw py bbo()", "order-book py",
               "SortedDict py"])
    print("\nTargets")
    for line in summary:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
