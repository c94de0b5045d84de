"""Replay throughput and pacing accuracy, beside the engine's own rate, in one run.

    python benchmarks/bench_replay.py [--n N] [--instruments K] [--repeats R] [--no-store]

1. In-process replay flat out (``Replay.run()``) of a synthetic multi-instrument L2 stream of
   ``--n`` events (default 10^7) from memory, beside one ``Engine.process`` call on the same
   array (the engine's own rate: the ceiling), with the six built-in rules.
2. The same stream from the embedded store (chDB in a temporary directory): read + merge +
   engine, after a plain ``Store.read_ticks`` pass alone (the read's own rate); this section
   runs unpinned, as ``tickwire replay`` does (the store's threads use every core).
3. The real Binance capture, when present, from memory.
4. Pacing accuracy: lateness of each batch against its schedule at x1 and x10 (HDR p50/p99/max).

Peers (nautilus-trader's BacktestEngine, hftbacktest) are not run here yet (see docs/replay.md).
Pinned to core 1 (but the store section); medians of --repeats runs for the in-memory figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from bench_engine import RULES             # the six built-in rules, as the engine's benchmark runs them
from common import describe_run, median_time, pin

from tickwire.engine.pipeline import StatsConfig
from tickwire.feeds.synthetic import l2_updates, synthetic_instruments
from tickwire.replay import ArraySource, EngineSpec, Replay

SPEC = EngineSpec(tuple(RULES), StatsConfig())


def rate(n, seconds):
    return f"{n / seconds / 1e6:6.2f} M events/s  ({seconds:6.2f} s)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--instruments", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-store", action="store_true", help="skip the embedded-store figures")
    args = ap.parse_args(argv)
    print(describe_run(pin(1)))
    t = time.perf_counter()
    ev = l2_updates(args.n, seed=1, instruments=args.instruments)
    insts = synthetic_instruments(args.instruments)
    print(f"synthetic L2 stream: {len(ev):,} events over {args.instruments} instruments "
          f"(generated in {time.perf_counter() - t:.1f} s)")

    def engine_alone(_):
        SPEC.build(insts).process(ev)

    def replay_memory(_):
        Replay(ArraySource(ev, insts), SPEC).run()

    e = median_time(engine_alone, args.repeats)
    r = median_time(replay_memory, args.repeats)
    print(f"  engine alone, one process() call : {rate(len(ev), e)}")
    print(f"  replay from memory (1 Mi chunks) : {rate(len(ev), r)}   {e / r:.2f}x the engine's rate")

    if not args.no_store:
        from tickwire.engine.store import Store
        from tickwire.replay import StoreSource

        tmp = tempfile.mkdtemp(prefix="tw-bench-replay-")
        pinned = os.sched_getaffinity(0)
        os.sched_setaffinity(0, range(os.cpu_count() or 1))   # as the CLI runs: the store's threads on
        print(f"  (store section unpinned: {os.cpu_count()} cores, as `tickwire replay` runs)")   # every core
        try:
            dsn = f"chdb://{tmp}/store"
            store = Store.open(dsn)
            store.register_instruments(insts)
            t = time.perf_counter()
            for k in range(0, len(ev), 2_000_000):
                store.insert_ticks(ev[k:k + 2_000_000], epoch=1, first_ord=k, token=f"b{k}")
            print(f"  (stored in {time.perf_counter() - t:.1f} s)")
            t = time.perf_counter()
            n = sum(len(c) for c in store.read_ticks())
            read = time.perf_counter() - t
            store.close()
            print(f"  store read alone (read_ticks)    : {rate(n, read)}")
            t = time.perf_counter()
            with StoreSource(dsn) as src:
                res = Replay(src, SPEC).run()
            s = time.perf_counter() - t
            print(f"  replay from the embedded store   : {rate(res.events, s)}   {e / s:.2f}x the engine's rate "
                  f"(signals {res.signal_count:,})")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            os.sched_setaffinity(0, pinned)

    from tickwire.feeds import captures

    path = captures.find_shared_data(captures.BINANCE_FILE)
    if path is not None:
        cap = captures.load_binance(path)
        spec = SPEC
        e = median_time(lambda _: spec.build(cap.instruments).process(cap.events), args.repeats)
        r = median_time(lambda _: Replay(ArraySource(cap.events, cap.instruments), spec).run(), args.repeats)
        print(f"Binance capture ({len(cap.events):,} events): engine {rate(len(cap.events), e)}; "
              f"replay {rate(len(cap.events), r)}")
    else:
        print("Binance capture not found: skipped")

    print("pacing accuracy (lateness of each 1 ms batch against its schedule):")
    small = ev[:400_000].copy()
    small["ts_event"] = small["ts_event"][0] + np.arange(len(small), dtype=np.int64) * 5_000   # 2 s recorded
    for speed in (1.0, 10.0):
        part = small if speed == 1.0 else small
        t = time.perf_counter()
        res = Replay(ArraySource(part, insts), SPEC).run(speed=speed)
        wall = time.perf_counter() - t
        lat = res.lateness
        print(f"  x{speed:<4g} {res.batches:6,} batches in {wall:5.2f} s (schedule {2.0 / speed:.2f} s): "
              f"p50 {lat.value_at_percentile(50) / 1e3:7.1f} us  p99 {lat.value_at_percentile(99) / 1e3:7.1f} us  "
              f"max {lat.max_value / 1e3:7.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
