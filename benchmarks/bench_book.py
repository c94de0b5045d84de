"""Order-book throughput and BBO cost: tickwire beside its peers, in one run, same stream.

    python benchmarks/bench_book.py [--l2 N] [--l3 N] [--repeats R] [--seed S]

Streams (seeded, tickwire.feeds.synthetic): L2 level updates clustered near the top with a
stationary depth; L3 order flow (adds, cancels, executions at the front of the best level,
reductions).  Every contestant gets the same updates; the Python-loop contestants get them
as prebuilt Python lists, so the loop overhead is the same for all.  Rates are the median of
``--repeats`` runs, each on a fresh book; the process is pinned to core 1.

Peers: the PyPI ``order-book`` package (C extension), ``sortedcontainers.SortedDict``, and
nautilus-trader's ``OrderBook`` (Rust core) when installed (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from common import apply_levels, describe_run, median_time, pin, table, version

from tickwire.ext import BookSet, Kind, L2Book, L3Book, Side
from tickwire.ext.book import _bench_bbo, _bench_plain_ladder, _bench_top_churn
from tickwire.feeds.synthetic import l2_updates, l3_orders

try:
    from nautilus_trader.model.book import OrderBook as NtBook
    from nautilus_trader.model.data import BookOrder, OrderBookDelta
    from nautilus_trader.model.enums import BookAction, BookType, OrderSide
    from nautilus_trader.model.identifiers import InstrumentId
    from nautilus_trader.model.objects import Price, Quantity
    HAVE_NAUTILUS = True
except ImportError:                                   # the bench extra is not installed
    HAVE_NAUTILUS = False


# ---------------------------------------------------------------------------------------
# L2
# ---------------------------------------------------------------------------------------

def l2_rows(ev):
    return list(zip(ev["side"].tolist(), ev["price"].tolist(), ev["qty"].tolist()))



def l2_contestants(ev, rows):
    """(name, is_peer, fn(state), setup()) for each L2 contestant."""
    out = []

    def tw_batch_setup():
        return L2Book(0)
    # BookSet.apply runs the per-event update the engine (and so the daemon) runs for every event;
    # L2Book.apply on a single book without max_depth takes a specialised loop nothing else uses
    out.append(("tickwire BookSet.apply (the engine's per-event path)", False, lambda b: b.apply(ev),
                lambda: BookSet([L2Book(0)])))
    out.append(("tickwire L2Book.apply (single-book loop, not the engine's)", False, lambda b: b.apply(ev),
                tw_batch_setup))

    def tw_event(b):
        set_level = b.set
        for side, price, qty in rows:
            set_level(side, price, qty)
    out.append(("tickwire per-event (L2Book.set, Python loop)", False, tw_event, tw_batch_setup))
    lo = int(ev["price"].min())
    span = 1 << max(int(ev["price"].max() - lo).bit_length(), 1)
    out.append(("limit: plain C ladder, qty[side][price] = qty only", None,
                lambda _: _bench_plain_ladder(ev, lo, span), lambda: None))

    from order_book import OrderBook as ObBook

    out.append((f"order-book {version('order-book')} (C ext, Python loop, int prices)", True,
                lambda ob: apply_levels(ob.bids, ob.asks, rows), ObBook))
    float_rows = [(side, price / 100, qty) for side, price, qty in rows]
    out.append((f"order-book {version('order-book')} (same, float prices as in its README)", True,
                lambda ob: apply_levels(ob.bids, ob.asks, float_rows), ObBook))

    from sortedcontainers import SortedDict

    out.append((f"sortedcontainers {version('sortedcontainers')} SortedDict (Python loop)", True,
                lambda books: apply_levels(books[0], books[1], rows),
                lambda: (SortedDict(), SortedDict())))

    if HAVE_NAUTILUS:
        iid = InstrumentId.from_str("SYN0.SIM")
        sides = (OrderSide.BUY, OrderSide.SELL)

        def make_deltas():
            return [OrderBookDelta(iid, BookAction.UPDATE if qty else BookAction.DELETE,
                                   BookOrder(sides[side], Price(price / 100, 2), Quantity(qty, 0), 0),
                                   0, seq, 0, 0)
                    for seq, (side, price, qty) in enumerate(rows)]
        deltas = make_deltas()

        def nt_run(book):
            apply = book.apply_delta
            for d in deltas:
                apply(d)
        nv = version("nautilus_trader")
        out.append((f"nautilus-trader {nv} apply_delta (deltas pre-built)", True, nt_run,
                    lambda: NtBook(iid, BookType.L2_MBP)))

        def nt_build_run(book):
            apply = book.apply_delta
            for seq, (side, price, qty) in enumerate(rows):
                apply(OrderBookDelta(iid, BookAction.UPDATE if qty else BookAction.DELETE,
                                     BookOrder(sides[side], Price(price / 100, 2), Quantity(qty, 0), 0),
                                     0, seq, 0, 0))
        out.append((f"nautilus-trader {nv} incl. delta construction", True, nt_build_run,
                    lambda: NtBook(iid, BookType.L2_MBP)))
    return out


def check_l2_agree(ev, rows):
    """Every contestant ends with the same best levels (the comparison is fair)."""
    from order_book import OrderBook as ObBook

    tw = L2Book(0)
    tw.apply(ev)
    bs = BookSet([L2Book(0)])
    bs.apply(ev)
    assert bs[0].state() == tw.state(), "BookSet and the single-book loop disagree"   # every level
    ob = ObBook()
    apply_levels(ob.bids, ob.asks, rows)
    assert (tw.best_bid, tw.best_bid_qty) == ob.bids.index(0), "order-book disagrees"
    assert (tw.best_ask, tw.best_ask_qty) == ob.asks.index(0), "order-book disagrees"
    assert tw.level_count(0) == len(ob.bids) and tw.level_count(1) == len(ob.asks)


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

    def reduce(self, oid, qty):
        side, price = self.orders[oid]
        self.sides[side][price][oid] = qty

    def execute(self, oid, fill):
        side, price = self.orders[oid]
        level = self.sides[side][price]
        if level[oid] == fill:
            self.delete(oid)
        else:
            level[oid] -= fill


def l3_contestants(ev):
    rows = list(zip(ev["kind"].tolist(), ev["order_id"].tolist(), ev["side"].tolist(),
                    ev["price"].tolist(), ev["qty"].tolist()))
    out = []
    out.append(("tickwire batch (L3Book.apply, one call)", False, lambda b: b.apply(ev), L3Book))

    def tw_event(b):
        add, delete, execute, modify = b.add, b.delete, b.execute, b.modify
        for kind, oid, side, price, qty in rows:
            if kind == 1:
                add(oid, side, price, qty)
            elif kind == 3:
                delete(oid)
            elif kind == 4:
                execute(oid, qty)
            else:
                modify(oid, qty, price)
    out.append(("tickwire per-event (add/delete/execute/modify)", False, tw_event, L3Book))

    def sd_run(b):
        for kind, oid, side, price, qty in rows:
            if kind == 1:
                b.add(oid, side, price, qty)
            elif kind == 3:
                b.delete(oid)
            elif kind == 4:
                b.execute(oid, qty)
            else:
                b.reduce(oid, qty)
    out.append((f"sortedcontainers {version('sortedcontainers')} L3 (Python loop)", True, sd_run, SortedL3))

    if HAVE_NAUTILUS:
        iid = InstrumentId.from_str("SYN0.SIM")
        sides = (OrderSide.BUY, OrderSide.SELL)
        resting = {}
        deltas = []
        for seq, (kind, oid, side, price, qty) in enumerate(rows):
            if kind == 1:
                resting[oid] = [side, price, qty]
                action, s, p, q = BookAction.ADD, side, price, qty
            elif kind == 3:
                s, p, _ = resting.pop(oid)
                action, q = BookAction.DELETE, 0
            elif kind == 4:
                o = resting[oid]
                o[2] -= qty
                s, p, q = o
                action = BookAction.UPDATE if q else BookAction.DELETE
                if not q:
                    del resting[oid]
            else:
                o = resting[oid]
                o[2] = qty
                s, p, q = o
                action = BookAction.UPDATE
            deltas.append(OrderBookDelta(iid, action, BookOrder(sides[s], Price(p / 100, 2), Quantity(q, 0), oid),
                                         0, seq, 0, 0))

        def nt_run(book):
            apply = book.apply_delta
            for d in deltas:
                apply(d)
        out.append((f"nautilus-trader {version('nautilus_trader')} L3_MBO apply_delta (pre-built)", True,
                    nt_run, lambda: NtBook(iid, BookType.L3_MBO)))
    return out


# ---------------------------------------------------------------------------------------
# BBO cost against depth
# ---------------------------------------------------------------------------------------

def deep_book_rows(depth, seed):
    """``depth`` levels per side with random 1..3 tick gaps around 1,000,000."""
    rng = np.random.default_rng(seed)
    bids = 999_999 - np.cumsum(rng.integers(1, 4, depth))
    asks = 1_000_001 + np.cumsum(rng.integers(1, 4, depth))
    qty = rng.integers(1, 1000, depth)
    return [(0, int(p), int(q)) for p, q in zip(bids, qty)] + [(1, int(p), int(q)) for p, q in zip(asks, qty)]


def py_reads(read, n):
    """ns per call of ``read()`` from a Python loop (the same loop for every contestant)."""
    def loop(_):
        for _ in range(n):
            read()
    return median_time(loop, 3) / n * 1e9


def bbo_costs(depths, seed, reads=1_000_000):
    from order_book import OrderBook as ObBook
    from sortedcontainers import SortedDict

    rows = []
    for depth in depths:
        levels = deep_book_rows(depth, seed)
        tw = L2Book(0)
        for s, p, q in levels:
            tw.set(s, p, q)
        assert tw.level_count(0) == depth
        n = 20_000_000
        c_read = median_time(lambda _: _bench_bbo(tw, n), 3) / n * 1e9
        churn = median_time(lambda _: _bench_top_churn(tw, n // 4), 3) / (n // 4) * 1e9
        t_py = py_reads(lambda: tw.bbo(), reads)
        ob = ObBook()
        sd = (SortedDict(), SortedDict())
        for s, p, q in levels:
            (ob.bids, ob.asks)[s][p] = q
            sd[s][p] = q
        ob_py = py_reads(lambda: (ob.bids.index(0), ob.asks.index(0)), reads)
        sd_py = py_reads(lambda: (sd[0].peekitem(-1), sd[1].peekitem(0)), reads)
        nt_py = "-"
        if HAVE_NAUTILUS:
            iid = InstrumentId.from_str("SYN0.SIM")
            nt = NtBook(iid, BookType.L2_MBP)
            for s, p, q in levels:
                nt.apply_delta(OrderBookDelta(iid, BookAction.UPDATE,
                                              BookOrder((OrderSide.BUY, OrderSide.SELL)[s], Price(p / 100, 2),
                                                        Quantity(q, 0), 0), 0, 0, 0, 0))
            nt_py = f"{py_reads(lambda: (nt.best_bid_price(), nt.best_bid_size(), nt.best_ask_price(), nt.best_ask_size()), reads // 4):.0f}"
        rows.append([f"{depth:,}", f"{c_read:.2f}", f"{churn:.1f}", f"{t_py:.0f}", f"{ob_py:.0f}", f"{sd_py:.0f}", nt_py])
    return rows


# ---------------------------------------------------------------------------------------

def race(contestants, n, repeats, unit):
    """Time each contestant; ``is_peer`` True: a peer, False: tickwire, None: a limit."""
    results = []
    for name, is_peer, fn, setup in contestants:
        seconds = median_time(fn, repeats, setup)
        results.append((name, is_peer, n / seconds))
        print(f"    measured {name}: {n / seconds / 1e6:.2f} M {unit}/s", file=sys.stderr, flush=True)
    best_peer = max((r for _, p, r in results if p), default=None)
    rows = []
    for name, is_peer, rate in results:
        ratio = f"{rate / best_peer:.2f}x" if best_peer else "-"
        rows.append([name, f"{rate / 1e6:.2f}", f"{1e9 / rate:.1f}", ratio])
    return results, best_peer, rows


def binance_section(repeats):
    """The real Binance BTCUSDT capture: depth diffs as L2 updates (skipped without the data)."""
    from tickwire.feeds.captures import BINANCE_FILE, find_shared_data, load_binance

    path = find_shared_data(BINANCE_FILE)
    if path is None:
        print("\nBinance capture not found (../shared/data): real-data section skipped")
        return
    cap = load_binance(path, include_trades=False)
    ev = cap.events[cap.events["kind"] == Kind.MODIFY]
    ev = np.ascontiguousarray(ev)
    snap = cap.events[cap.events["kind"] == Kind.ADD]
    rows = l2_rows(ev)
    # replay the diffs 20 times over the snapshot book for a measurable run; each pass is the
    # same real sequence of updates against a real-depth book
    reps = 20
    ev_rep = np.concatenate([ev] * reps)
    rows_rep = rows * reps
    print(f"\nL2 on the real Binance BTCUSDT capture: {len(ev):,} depth-diff level updates x {reps} passes "
          f"over its {len(snap):,}-level snapshot; median of {repeats} runs")

    def tw_setup():
        b = L2Book(0)
        b.apply(snap)
        return b

    from order_book import OrderBook as ObBook

    def ob_setup():
        ob = ObBook()
        for e in snap:
            (ob.bids, ob.asks)[e["side"]][int(e["price"])] = int(e["qty"])
        return ob

    def ob_run(ob):
        apply_levels(ob.bids, ob.asks, rows_rep)

    def tw_event(b):
        set_level = b.set
        for side, price, qty in rows_rep:
            set_level(side, price, qty)

    def bs_setup():
        return BookSet([tw_setup()])

    contestants = [("tickwire BookSet.apply (engine's path)", False, lambda b: b.apply(ev_rep), bs_setup),
                   ("tickwire L2Book.apply (single-book loop)", False, lambda b: b.apply(ev_rep), tw_setup),
                   ("tickwire per-event (L2Book.set)", False, tw_event, tw_setup),
                   (f"order-book {version('order-book')} (Python loop, int prices)", True, ob_run, ob_setup)]
    _, _, rows_out = race(contestants, len(ev_rep), repeats, "updates")
    table(rows_out, ["contestant", "M upd/s", "ns/upd", "vs peer"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--l2", type=int, default=1_000_000, help="L2 updates [%(default)s]")
    ap.add_argument("--l3", type=int, default=500_000, help="L3 events [%(default)s]")
    ap.add_argument("--repeats", type=int, default=5, help="runs per contestant; the median is shown [%(default)s]")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--depths", default="10,1000,20000", help="book depths for the BBO table [%(default)s]")
    args = ap.parse_args(argv)
    pinned = pin(1)
    print(f"# tickwire order-book benchmark ({describe_run(pinned)})")
    if not HAVE_NAUTILUS:
        print("# nautilus-trader not installed: pip install -e .[bench] to include it")

    ev = l2_updates(args.l2, seed=args.seed)
    rows = l2_rows(ev)
    check_l2_agree(ev, rows)
    depth = L2Book(0)
    depth.apply(ev)
    print(f"\nL2: {len(ev):,} level updates, seed {args.seed}, final depth {depth.level_count(0)}/"
          f"{depth.level_count(1)} levels; median of {args.repeats} runs")
    results, best_peer, table_rows = race(l2_contestants(ev, rows), len(ev), args.repeats, "updates")
    table(table_rows, ["contestant", "M upd/s", "ns/upd", "vs best peer"])
    by_name = {name: r for name, _, r in results}
    batch = by_name["tickwire BookSet.apply (the engine's per-event path)"]
    single = by_name["tickwire L2Book.apply (single-book loop, not the engine's)"]
    per_event = by_name["tickwire per-event (L2Book.set, Python loop)"]
    limit = by_name["limit: plain C ladder, qty[side][price] = qty only"]
    peers = [r for _, p, r in results if p]
    print(f"  target: the engine's path (BookSet.apply) >= 15x best peer: {batch / best_peer:.1f}x "
          f"({'met' if batch >= 15 * best_peer else 'NOT met'}); within 2x of the plain C ladder: "
          f"{limit / batch:.1f}x ({'met' if limit <= 2 * batch else 'NOT met'}); the single-book loop: "
          f"{single / best_peer:.1f}x best peer; per-event ahead of every peer: "
          f"{'yes' if per_event > max(peers) else 'NO'} ({per_event / best_peer:.2f}x best peer)")

    binance_section(args.repeats)

    ev3 = l3_orders(args.l3, seed=args.seed)
    kinds = np.bincount(ev3["kind"], minlength=5)
    print(f"\nL3: {len(ev3):,} events (add {kinds[Kind.ADD]:,}, cancel {kinds[Kind.DELETE]:,}, "
          f"execute {kinds[Kind.TRADE]:,}, reduce {kinds[Kind.MODIFY]:,}), seed {args.seed}; "
          f"median of {args.repeats} runs")
    results3, best3, table3 = race(l3_contestants(ev3), len(ev3), args.repeats, "events")
    table(table3, ["contestant", "M ev/s", "ns/ev", "vs best peer"])
    print(f"  target L3 batch >= 5 M events/s: {results3[0][2] / 1e6:.1f} M/s "
          f"({'met' if results3[0][2] >= 5e6 else 'NOT met'})")

    depths = [int(d) for d in args.depths.split(",")]
    print("\nBBO cost against depth (ns; levels per side with 1-3 tick gaps)")
    table(bbo_costs(depths, args.seed),
          ["depth", "tw C read", "tw C del+add best", "tw py bbo()", "order-book py", "SortedDict py",
           "nautilus py"])
    print("  'tw C read': best bid and ask, price and size, from C; 'del+add best': remove the best bid "
          "level and restore it (finds the next best each time); 'py': best bid and ask with sizes from a "
          "Python loop, the same loop and call overhead for every library")
    return 0


if __name__ == "__main__":
    sys.exit(main())
