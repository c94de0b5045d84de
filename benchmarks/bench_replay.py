"""Replay throughput, peers and pacing accuracy, beside the engine's own rate, in one run.

    python benchmarks/bench_replay.py [--n N] [--instruments K] [--repeats R] [--no-store]
                                      [--codecs fast,compact] [--rss-scale S [--rss-only]] [--peer-n M]
                                      [--no-peers] [--report-signals N]

1. In-process replay flat out (``Replay.run()``) of a synthetic multi-instrument L2 stream of
   ``--n`` events (default 10^7) from memory, beside one ``Engine.process`` call on the same
   array (the engine's own rate: the ceiling), with the six built-in rules.
2. The same stream from the embedded store (chDB in a temporary directory), per codec set
   (``--codecs``): ``Store.read_ticks`` alone (wall and CPU time: the read's own cost), then
   the replay (read + merge + engine: ``tickwire replay --max``). Target: 5 M events/s.
   The reader thread and the store's threads run on core 0, the engine on core 1.
3. Memory: the peak resident set (``VmHWM``) of a replay from the store in a fresh process,
   without and with the backtest report, at 1x and at ``--rss-scale`` x the stream (the stream
   repeated later in time): flat when equal. ``--rss-only``: just these.
4. Peers on the first ``--peer-n`` events of the same stream (default 10^6; nautilus builds a
   Python object per delta): hftbacktest's backtest (Rust; its ROI-vector depth, one
   ``elapse`` over the whole data with no strategy: its fastest loop) and nautilus-trader's
   ``BacktestEngine`` (an L2_MBP venue fed the same deltas, no strategy; the deltas are built
   before the clock starts). Every contestant's count is checked (ours: events replayed;
   hftbacktest: the final top of every book equals ours; nautilus: ``engine.iteration``).
5. The real Binance capture, when present, from memory.
6. Pacing accuracy: lateness of each batch against its schedule at x1 and x10 (HDR p50/p99/max).
7. The backtest report's ``finish()`` at ``--report-signals`` signals (default 10^6).

Figures are medians of ``--repeats`` runs; the engine is pinned to core 1.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # (its helpers, under python -P too)
from bench_engine import RULES             # the six built-in rules, as the engine's benchmark runs them
from common import describe_run, median_time, pin, version

from tickwire.engine.pipeline import StatsConfig
from tickwire.feeds.synthetic import l2_updates, synthetic_instruments
from tickwire.replay import ArraySource, EngineSpec, Replay

SPEC = EngineSpec(tuple(RULES), StatsConfig())
NO_RULES = EngineSpec((), StatsConfig())
ENGINE_CORE, READER_CORE = 1, 0
TARGET_STORE = 5e6


def rate(n, seconds):
    return f"{n / seconds / 1e6:6.2f} M events/s  ({seconds:6.2f} s)"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def stream(n: int, k: int) -> np.ndarray:
    """The synthetic stream, cached in the temporary directory (its generator is a Python loop)."""
    path = os.path.join(tempfile.gettempdir(), f"tw-bench-replay-l2-{n}-{k}-seed1.npy")
    if os.path.exists(path):
        return np.load(path)
    ev = l2_updates(n, seed=1, instruments=k)
    np.save(path + ".tmp.npy", ev)
    os.replace(path + ".tmp.npy", path)
    return ev


def build_store(dsn, ev, insts, codecs, repeat=1):
    """A store of ``ev`` (``repeat`` times, each copy later in time than the one before)."""
    from tickwire.engine.store import Store

    store = Store.open(dsn, codecs=codecs)
    store.register_instruments(insts)
    span = int(ev["ts_event"][-1] - ev["ts_event"][0]) + 1
    for r in range(repeat):
        part = ev if r == 0 else ev.copy()
        if r:
            part["ts_event"] += r * span
            part["ts_recv"] += r * span
        for k in range(0, len(ev), 2_000_000):
            store.insert_ticks(part[k:k + 2_000_000], epoch=1, first_ord=r * len(ev) + k, token=f"b{r}:{k}")
    store.close()


def read_breakdown(store):
    """Read everything once, timing (process CPU: nothing else runs meanwhile) the store's query
    and the merge + gather."""
    import tickwire.ext.merge as merge

    spent = {"query": 0.0, "merge": 0.0}
    fetch = store._fetch_native

    def timed(name, fn):
        def call(*a, **k):
            t = cpu_seconds()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += cpu_seconds() - t
        return call

    saved = merge.merge_events
    store._fetch_native = timed("query", fetch)
    merge.merge_events = timed("merge", saved)
    try:
        t = cpu_seconds()
        n = sum(len(x) for x in store.read_ticks())
        total = cpu_seconds() - t
    finally:
        merge.merge_events = saved
        store._fetch_native = fetch
    return n, total, spent


def store_section(args, ev, insts, e_rate):
    from tickwire.engine.store import Store
    from tickwire.replay import StoreSource

    results = {}
    for codecs in args.codecs.split(","):
        tmp = tempfile.mkdtemp(prefix="tw-bench-replay-")
        try:
            dsn = f"chdb://{tmp}/store"
            os.sched_setaffinity(0, {READER_CORE})          # the store's threads are made here: core 0
            t = time.perf_counter()
            build_store(dsn, ev, insts, codecs)
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs)
            print(f"  store ({codecs} codecs): {len(ev):,} ticks stored in {time.perf_counter() - t:.1f} s, "
                  f"{size / 2**20:,.0f} MiB on disk")
            reads, cpus, replays, n = [], [], [], 0
            for _ in range(args.repeats):
                os.sched_setaffinity(0, {READER_CORE})
                store = Store.open(dsn, create=False)
                t, c = time.perf_counter(), cpu_seconds()
                n = sum(len(x) for x in store.read_ticks())
                reads.append(time.perf_counter() - t)
                cpus.append(cpu_seconds() - c)
                store.close()
                src = StoreSource(dsn, reader_cpus={READER_CORE})
                os.sched_setaffinity(0, {ENGINE_CORE})
                t = time.perf_counter()
                res = Replay(src, SPEC).run()
                replays.append(time.perf_counter() - t)
                src.close()
                assert res.events == n == len(ev), (res.events, n, len(ev))
            os.sched_setaffinity(0, {READER_CORE})
            store = Store.open(dsn, create=False)
            n2, total, spent = read_breakdown(store)
            store.close()
            os.sched_setaffinity(0, {ENGINE_CORE})
            read, cpu, rep = (float(np.median(x)) for x in (reads, cpus, replays))
            print(f"    read_ticks alone (core 0)            : {rate(n, read)}   CPU {n / cpu / 1e6:5.2f} M rows per CPU-s")
            print(f"    where the reading thread's CPU goes: the store's query (decode, in-order read, Native) "
                  f"{spent['query'] / total:.0%}, merge + gather {spent['merge'] / total:.0%}, the rest "
                  f"{1 - (spent['query'] + spent['merge']) / total:.0%} ({n2 / total / 1e6:.2f} M rows per CPU-s)")
            print(f"    replay from the store (read || engine): {rate(n, rep)}   {n / rep / e_rate:.2f}x the engine's "
                  f"rate; target 5 M/s: {'HIT' if n / rep >= TARGET_STORE else 'MISS'}  (signals {res.signal_count:,})")
            results[codecs] = n / rep
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            os.sched_setaffinity(0, {ENGINE_CORE})
    return results


RSS_CHILD = """
import os, sys, tempfile
sys.path.insert(0, {bench!r})
from bench_replay import SPEC, peak_rss_kib
from tickwire.replay import Replay, StoreSource
from tickwire.replay.report import ReportBuilder
os.sched_setaffinity(0, {{{reader}}})
src = StoreSource({dsn!r}, reader_cpus={{{reader}}})
os.sched_setaffinity(0, {{{engine}}})
rb = ReportBuilder(src.instruments, plots=False) if {report} else None
res = Replay(src, SPEC, keep_signals=False, on_batch=rb.add if rb else None).run()
if rb:
    rb.finish(tempfile.mkdtemp(prefix="tw-bench-rss-report-"))
src.close()
print(res.events, res.signal_count, peak_rss_kib())
"""


def peak_rss_kib() -> int:
    """This process's own peak resident set (``VmHWM``), in KiB. Not ``getrusage``'s
    ``ru_maxrss``: a child started by ``subprocess`` inherits its parent's peak there (Linux
    keeps the larger of the two across ``execve``), so a fresh process started from a large
    one reports the large one's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_section(args, ev, insts):
    print(f"memory: peak RSS (VmHWM) of a replay from the store in a fresh process, without and with the report "
          f"(stream x1 and x{args.rss_scale}):")
    for scale in sorted({1, args.rss_scale}):
        tmp = tempfile.mkdtemp(prefix="tw-bench-rss-")
        try:
            dsn = f"chdb://{tmp}/store"
            os.sched_setaffinity(0, {READER_CORE})
            build_store(dsn, ev, insts, "fast", repeat=scale)
            os.sched_setaffinity(0, {ENGINE_CORE})
            for report in (False, True):
                code = RSS_CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), dsn=dsn,
                                        reader=READER_CORE, engine=ENGINE_CORE, report=report)
                t = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
                wall = time.perf_counter() - t
                events, signals, kib = map(int, out.split())
                print(f"  x{scale:<3} {events:>13,} events {'with the report' if report else 'no report      '}: "
                      f"peak RSS {kib / 1024:7,.0f} MiB  ({events * 64 / 2**20:,.0f} MiB of events, {signals:,} signals; "
                      f"{events / wall / 1e6:.2f} M events/s with start-up)")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# -- peers ---------------------------------------------------------------------------------------

def our_tops(ev, insts):
    from tickwire.ext import L2Book

    tops = []
    for i in insts:
        b = L2Book(i.id)
        b.apply(np.ascontiguousarray(ev[ev["instrument"] == i.id]))
        tops.append((b.best_bid, b.best_ask))
    return tops


def hftbacktest_run(ev, insts):
    """(seconds, events fed, final tops in ticks): one elapse over all the data, no strategy."""
    from hftbacktest import (BUY_EVENT, DEPTH_EVENT, EXCH_EVENT, LOCAL_EVENT, SELL_EVENT, BacktestAsset,
                             ROIVectorMarketDepthBacktest, event_dtype)

    datas, assets = [], []
    lo, hi = int(ev["price"].min()) - 1000, int(ev["price"].max()) + 1000
    for i in insts:
        e = ev[ev["instrument"] == i.id]
        tick = float(i.tick_size)
        a = np.zeros(len(e), event_dtype)
        a["ev"] = np.uint64(DEPTH_EVENT | EXCH_EVENT | LOCAL_EVENT) | \
            np.where(e["side"] == 0, np.uint64(BUY_EVENT), np.uint64(SELL_EVENT))
        a["exch_ts"] = a["local_ts"] = e["ts_event"]
        a["px"] = e["price"] * tick
        a["qty"] = e["qty"] * float(i.lot_size)
        datas.append(a)
        assets.append(BacktestAsset().data(a).linear_asset(1.0).constant_order_latency(0, 0)
                      .power_prob_queue_model(2.0).no_partial_fill_exchange().trading_value_fee_model(0.0, 0.0)
                      .tick_size(tick).lot_size(float(i.lot_size)).last_trades_capacity(0)
                      .roi_lb(lo * tick).roi_ub(hi * tick))
    hbt = ROIVectorMarketDepthBacktest(assets)
    t = time.perf_counter()
    rc = hbt.elapse(int(ev["ts_event"][-1] - ev["ts_event"][0]) + 1_000_000_000)
    seconds = time.perf_counter() - t
    assert rc == 1, f"hftbacktest elapse returned {rc}, expected 1 (end of data)"
    tops = [(round(hbt.depth(k).best_bid / float(i.tick_size)), round(hbt.depth(k).best_ask / float(i.tick_size)))
            for k, i in enumerate(insts)]
    hbt.close()
    return seconds, sum(len(d) for d in datas), tops


def nautilus_run(ev, insts):
    """(seconds of BacktestEngine.run, its iteration count): an L2_MBP venue, the deltas built first."""
    from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
    from nautilus_trader.config import LoggingConfig
    from nautilus_trader.model.currencies import USD
    from nautilus_trader.model.data import BookOrder, OrderBookDelta
    from nautilus_trader.model.enums import AccountType, BookAction, BookType, OmsType, OrderSide
    from nautilus_trader.model.identifiers import Venue
    from nautilus_trader.model.objects import Money, Price, Quantity
    from nautilus_trader.test_kit.providers import TestInstrumentProvider

    engine = BacktestEngine(config=BacktestEngineConfig(logging=LoggingConfig(bypass_logging=True)))
    engine.add_venue(venue=Venue("SIM"), oms_type=OmsType.NETTING, account_type=AccountType.MARGIN,
                     base_currency=USD, starting_balances=[Money(1_000_000, USD)], book_type=BookType.L2_MBP)
    ids = {}
    for i in insts:
        inst = TestInstrumentProvider.equity(symbol=f"SYN{i.id}", venue="SIM")   # price increment 0.01
        engine.add_instrument(inst)
        ids[i.id] = inst.id
    sides = (OrderSide.BUY, OrderSide.SELL)
    iid = [ids.get(k) for k in range(max(ids) + 1)]
    deltas = [OrderBookDelta(iid[k], BookAction.UPDATE if q else BookAction.DELETE,
                             BookOrder(sides[s], Price(p / 100, 2), Quantity(q, 0), 0), 0, sq, ts, ts)
              for sq, (k, s, p, q, ts) in enumerate(zip(ev["instrument"].tolist(), ev["side"].tolist(),
                                                         ev["price"].tolist(), ev["qty"].tolist(),
                                                         ev["ts_event"].tolist()))]
    engine.add_data(deltas)
    t = time.perf_counter()
    engine.run()
    seconds = time.perf_counter() - t
    count = engine.iteration
    engine.dispose()
    return seconds, count


def peers_section(args, ev, insts):
    part = np.ascontiguousarray(ev[:args.peer_n])
    print(f"peers on the same {len(part):,} events (the first of the stream), L2 deltas over "
          f"{len(insts)} instruments, pinned to core {ENGINE_CORE}:")
    ours = median_time(lambda _: Replay(ArraySource(part, insts), SPEC).run(), args.repeats)
    bare = median_time(lambda _: Replay(ArraySource(part, insts), NO_RULES).run(), args.repeats)
    res = Replay(ArraySource(part, insts), SPEC).run()
    assert res.events == len(part)
    print(f"  tickwire replay, six rules (books + statistics + rules) : {rate(len(part), ours)}")
    print(f"  tickwire replay, no rules (books + statistics)          : {rate(len(part), bare)}")
    want = our_tops(part, insts)
    try:
        runs = [hftbacktest_run(part, insts) for _ in range(args.repeats)]
        h = float(np.median([r[0] for r in runs]))
        n, tops = runs[0][1], runs[0][2]
        assert n == len(part), (n, len(part))
        assert tops == want, f"hftbacktest's final books differ from ours: {tops} != {want}"
        print(f"  hftbacktest {version('hftbacktest')} ROIVector backtest, elapse   : {rate(n, h)}   "
              f"ours (six rules) {h / ours:.2f}x, no rules {h / bare:.2f}x   (count and final books checked)")
    except ImportError:
        print("  hftbacktest: not installed (pip install tickwire[bench])")
    try:
        runs = [nautilus_run(part, insts) for _ in range(max(1, min(args.repeats, 3)))]
        s = float(np.median([r[0] for r in runs]))
        assert all(r[1] == len(part) for r in runs), [r[1] for r in runs]
        print(f"  nautilus_trader {version('nautilus_trader')} BacktestEngine.run     : {rate(len(part), s)}   "
              f"ours (six rules) {s / ours:.2f}x, no rules {s / bare:.2f}x   (iteration count checked)")
    except ImportError:
        print("  nautilus_trader: not installed (pip install tickwire[bench])")


def report_section(args, ev, insts):
    """finish() of a report holding --report-signals signals (on events of the stream)."""
    from tickwire.ext import SIGNAL_DTYPE, SignalFlag
    from tickwire.replay.report import ReportBuilder

    n = min(args.report_signals, len(ev))
    rng = np.random.default_rng(5)
    pick = np.sort(rng.choice(len(ev), n, replace=False))
    s = np.zeros(n, SIGNAL_DTYPE)
    for f in ("ts_event", "ts_recv", "seq", "instrument"):
        s[f] = ev[f][pick]
    s["ts_signal"] = s["ts_recv"]
    s["rule_id"] = rng.integers(0, 6, n)
    s["rule_kind"] = 3
    exits = rng.random(n) < 0.3
    s["direction"] = np.where(exits, 0, rng.choice([-1, 1], n))
    s["flags"] = np.where(exits, int(SignalFlag.EXIT), int(SignalFlag.ENTER))
    for plots in (False, True):
        rb = ReportBuilder(insts, plots=plots)
        upto = int(pick[-1]) + 1
        t = time.perf_counter()
        for k in range(0, upto, 1 << 20):
            m = (pick >= k) & (pick < k + (1 << 20))
            rb.add(ev[k:min(k + (1 << 20), upto)], s[m])
        added = time.perf_counter() - t
        out = tempfile.mkdtemp(prefix="tw-bench-report-")
        try:
            t = time.perf_counter()
            summary = rb.finish(out)
            fin = time.perf_counter() - t
        finally:
            shutil.rmtree(out, ignore_errors=True)
        print(f"  report of {summary['signals']:,} signals over {upto:,} events: add {added:5.2f} s, "
              f"finish() {fin:5.2f} s ({'with' if plots else 'without'} the plots)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000, help="events in the synthetic stream")
    ap.add_argument("--instruments", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-store", action="store_true", help="skip the embedded-store figures")
    ap.add_argument("--codecs", default="fast,compact", help="codec sets of the store section (fast, compact)")
    ap.add_argument("--rss-scale", type=int, default=0, help="also measure peak RSS at 1x and this many x the stream")
    ap.add_argument("--rss-only", action="store_true", help="only the peak RSS figures (with --rss-scale)")
    ap.add_argument("--peer-n", type=int, default=1_000_000, help="events the peers get (the first of the stream)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--report-signals", type=int, default=1_000_000, help="0: skip the report section")
    args = ap.parse_args(argv)
    if args.rss_only and not args.rss_scale:
        ap.error("--rss-only needs --rss-scale S")
    print(describe_run(pin(ENGINE_CORE)))
    t = time.perf_counter()
    ev = stream(args.n, args.instruments)
    insts = synthetic_instruments(args.instruments)
    print(f"synthetic L2 stream: {len(ev):,} events over {args.instruments} instruments "
          f"(ready in {time.perf_counter() - t:.1f} s)")

    if args.rss_only:
        rss_section(args, ev, insts)
        return 0
    e = median_time(lambda _: SPEC.build(insts).process(ev), args.repeats)
    r = median_time(lambda _: Replay(ArraySource(ev, insts), SPEC).run(), args.repeats)
    print(f"  engine alone, one process() call : {rate(len(ev), e)}")
    print(f"  replay from memory (1 Mi chunks) : {rate(len(ev), r)}   {e / r:.2f}x the engine's rate")
    if not args.no_store:
        store_section(args, ev, insts, len(ev) / e)
    if args.rss_scale:
        rss_section(args, ev, insts)
    if not args.no_peers:
        peers_section(args, ev, insts)

    from tickwire.feeds import captures

    path = captures.find_shared_data(captures.BINANCE_FILE)
    if path is not None:
        cap = captures.load_binance(path)
        # a few milliseconds each: many repetitions, the two alternating, so that a moment of
        # noise on the shared machine falls on both alike
        es, rs = [], []
        for _ in range(max(args.repeats, 3) * 7):
            es.append(median_time(lambda _: SPEC.build(cap.instruments).process(cap.events), 1))
            rs.append(median_time(lambda _: Replay(ArraySource(cap.events, cap.instruments), SPEC).run(), 1))
        e, r = float(np.median(es)), float(np.median(rs))
        print(f"Binance capture ({len(cap.events):,} events, {len(es)} alternating runs, both building "
              f"their engine): engine {rate(len(cap.events), e)}; replay {rate(len(cap.events), r)}   "
              f"{e / r:.2f}x the engine's rate")
    else:
        print("Binance capture not found: skipped")

    print("pacing accuracy (lateness of each 1 ms batch against its schedule):")
    small = ev[:400_000].copy()
    small["ts_event"] = small["ts_event"][0] + np.arange(len(small), dtype=np.int64) * 5_000   # 5 us apart
    recorded = (len(small) - 1) * 5_000 / 1e9 if len(small) else 0.0       # (2 s for 400,000; less with a small --n)
    for speed in (1.0, 10.0):
        t = time.perf_counter()
        res = Replay(ArraySource(small, insts), SPEC).run(speed=speed)
        wall = time.perf_counter() - t
        lat = res.lateness
        print(f"  x{speed:<4g} {res.batches:6,} batches in {wall:5.2f} s (schedule {recorded / speed:.2f} s): "
              f"p50 {lat.value_at_percentile(50) / 1e3:7.1f} us  p99 {lat.value_at_percentile(99) / 1e3:7.1f} us  "
              f"max {lat.max_value / 1e3:7.1f} us")
    if args.report_signals:
        print("backtest report:")
        report_section(args, ev, insts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
