"""Tick storage into the embedded ClickHouse engine (chDB), beside a plain clickhouse-connect insert.

    python benchmarks/bench_store.py [--n N] [--repeats R]

1. The peers, what a user writing their own inserter gets at best, into the same schema: a plain
   clickhouse-connect ``insert_arrow`` of a prebuilt Arrow table (its chDB backend writes the
   batch to a temporary file and inserts it ``FROM INFILE``), and chDB's own
   ``INSERT ... SELECT * FROM Python(table)`` of the same prebuilt table (no file). "vs peer" is
   against the faster of the two.
2. tickwire ``Store.insert_ticks`` from numpy canonical events (columns cut out, Arrow built,
   deduplication token) into the same schema, by its default write path on an embedded store
   (chDB ``Python()``) and by ``write_path="arrow"`` (clickhouse-connect, what it used before).
3. The whole storage path: events pushed into the blocking tick ring by this process (core 0),
   drained by the writer process (core 1) in --batch-rows batches with a journal per batch, until
   ClickHouse holds every tick; ticks/s from the first push to the writer's exit after its
   last commit. Twice: a burst (the producer pushes as fast as it can: more than the ring holds,
   so the writer must spill to keep it moving), and paced at --rate by the schedule (does the
   writer keep up: no spill, the producer never waits?).

Every figure is confirmed on the store itself, never by the writer's own count: after each
timed insert (untimed) ``SELECT count(), uniqExact(seq), sum(seq)`` must give exactly the
ticks sent (seq runs 1..N), so a lost or duplicated tick fails the run.  For the sustained path
the query runs in a separate process once the writer has exited (the embedded engine allows one
process per data directory), and the writer's self-reported ``rows_written`` is printed beside
it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # (its helpers, under python -P too)
from common import describe_run, pin, table

from tickwire.engine.store import TICK_COLUMNS, Store, _arrow_table
from tickwire.ext import EVENT_DTYPE
from tickwire.ext.ring import Ring
from tickwire.feeds.synthetic import l2_updates


def events(n):
    parts = [l2_updates(min(250_000, n - i), seed=i, instruments=8) for i in range(0, n, 250_000)]
    ev = np.concatenate(parts)
    ev["ts_event"] = 1_700_000_000_000_000_000 + np.arange(len(ev)) * 1000
    ev["seq"] = np.arange(1, len(ev) + 1)
    return ev


CHECK = "SELECT count(), uniqExact(seq), sum(seq) FROM tickwire.ticks"


def expect(n):
    return (n, n, n * (n + 1) // 2)


def check(what, got, n):
    got = tuple(int(x) for x in got)
    if got != expect(n):
        raise SystemExit(f"{what}: the store holds count, distinct seq, sum(seq) = {got}; sent {expect(n)}")
    return got[0]


def query_elsewhere(dsn):
    """The check query from a fresh process (the writer has exited and released the store)."""
    code = ("import sys, json; from tickwire.engine.store import Store; s = Store.open(sys.argv[1]); "
            f"print(json.dumps([int(x) for x in s.client.query({CHECK!r}).result_rows[0]])); s.close()")
    out = subprocess.run([sys.executable, "-c", code, dsn], capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(f"count query on {dsn} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2_000_000, help="ticks per run [%(default)s]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=500_000, help="writer batch size [%(default)s]; the writer caps it at half its spill threshold "
                         "(262,144 on the 2^20 ring used here)")
    ap.add_argument("--rate", type=float, default=1_000_000,
                    help="offered ticks/s of the paced writer run [%(default)s]")
    args = ap.parse_args(argv)
    pinned = pin(1)
    print(f"# tickwire storage benchmark ({describe_run(pinned)})")
    ev = events(args.n)
    work = Path(tempfile.mkdtemp(prefix="tw-bench-store-"))
    rows, detail = [], []
    try:
        store = Store.open(f"chdb://{work}/inproc")
        extra = {"epoch": np.zeros(len(ev), np.uint64), "ord": np.arange(len(ev), dtype=np.uint64)}
        prebuilt = _arrow_table(ev, TICK_COLUMNS, extra)
        import chdb

        direct = chdb.connect(os.path.realpath(f"{work}/inproc"))

        def peer_cc():
            store.client.insert_arrow("tickwire.ticks", prebuilt, settings={"async_insert": 0})

        def peer_chdb():
            direct.query("INSERT INTO tickwire.ticks SELECT * FROM Python(prebuilt) SETTINGS async_insert = 0")

        def ours(path):
            def run():
                store.write_path = path
                store.insert_ticks(ev, epoch=1, token=f"bench-{uuid.uuid4().hex}")
            return run

        contestants = [("clickhouse-connect insert_arrow, prebuilt table (peer)", peer_cc),
                       ("chDB INSERT ... SELECT FROM Python(prebuilt table) (peer)", peer_chdb),
                       ("tickwire Store.insert_ticks from numpy events", ours("python")),
                       ("the same, write_path='arrow' (through clickhouse-connect, as before)", ours("arrow"))]
        peer_cc()                                           # untimed: the process's first insert is
        store.client.command("TRUNCATE TABLE tickwire.ticks")  # ~1.6x slower than the next ones
        times = {name: [] for name, _ in contestants}
        counted = {name: [] for name, _ in contestants}
        for r in range(args.repeats):
            for name, run in contestants:                   # interleaved: the machine's drift hits all
                store.client.command("TRUNCATE TABLE tickwire.ticks")
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
                counted[name].append(check(name, store.client.query(CHECK).result_rows[0], len(ev)))
        direct.close()
        store.close()
        peer = max(len(ev) / np.median(times[name]) for name, _ in contestants[:2])
        for name, _ in contestants:
            rows.append([name, len(ev) / np.median(times[name]), "-", f"{min(counted[name]):,}"])

        # the whole path: ring -> writer process -> chDB; a burst, then paced at --rate
        for label, rate in (("burst: pushed as fast as the producer can", None),
                            (f"paced at {args.rate / 1e6:g} M ticks/s", args.rate)):
            runs = [writer_run(ev, work, f"{r}-{rate}", args.batch_rows, rate) for r in range(args.repeats)]
            sustained = len(ev) / np.median([x["elapsed"] for x in runs])
            rows.append([f"ring -> writer process -> chDB, {label}", sustained,
                         f"{min(x['reported'] for x in runs):,}", f"{min(x['stored'] for x in runs):,}"])
            detail.append((label, rate, runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nInserting {len(ev):,} ticks (13 columns, codecs, daily partitions) into embedded ClickHouse; "
          f"median of {args.repeats}; 'stored': the store's own count() after each run (lowest of the runs;\n"
          f"every run also had uniqExact(seq) = count and sum(seq) = 1 + ... + {len(ev):,}); 'writer says': "
          f"its self-reported rows_written")
    table([[name, f"{rate / 1e6:.2f}", f"{rate / peer:.2f}x", said, got] for name, rate, said, got in rows],
          ["path", "M ticks/s", "vs peer", "writer says", "stored"])
    print("\nThe writer's runs (medians; 'pushed at': the producer's achieved rate, lower than offered when\n"
          "the ring was full and it had to wait; 'drain': from the last push to the writer's exit after its\n"
          "last commit; 'spilled': batches the writer sent to its spill file because the ring passed half full)")
    table([[label, "-" if rate is None else f"{rate / 1e6:g}",
            f"{np.median([len(ev) / x['push'] for x in runs]) / 1e6:.2f}",
            f"{np.median([x['elapsed'] for x in runs]):.2f}", f"{np.median([x['elapsed'] - x['push'] for x in runs]):.2f}",
            "/".join(str(x["spilled"]) for x in runs)] for label, rate, runs in detail],
          ["run", "offered M/s", "pushed at M/s", "total s", "drain s", "spilled (each run)"])
    _, rate, runs = detail[-1]
    kept = all(x["spilled"] == 0 for x in runs) and \
        np.median([len(ev) / x["push"] for x in runs]) >= 0.99 * rate
    burst = rows[-2][1]
    print(f"  target: sustained >= 1 M ticks/s into the embedded engine: a burst of {len(ev):,} ticks stored "
          f"at {burst / 1e6:.2f} M/s ({'met' if burst >= 1e6 else 'NOT met'}); offered {rate / 1e6:g} M/s: "
          f"{'kept up (no spill, the producer never waited)' if kept else 'did NOT keep up'}")
    return 0


def writer_run(ev, work, tag, batch_rows, rate=None, chunk=16_384):
    """One run of the storage writer process on a fresh store: ``ev`` pushed into its tick ring by
    this process on core 0 (as fast as it can, or paced at ``rate`` ticks/s by the schedule),
    the writer on core 1. Returns the timings, the writer's own figures and the stored count
    (a query from a fresh process, after the writer exited)."""
    name = f"tw-bench-{uuid.uuid4().hex[:8]}"
    state, dsn = work / f"state{tag}", f"chdb://{work}/e2e{tag}"
    with Ring.create(name, EVENT_DTYPE, 1 << 20) as ring:
        w = subprocess.Popen([sys.executable, "-m", "tickwire.engine.writer", "--ring", name, "--dsn", dsn,
                              "--state-dir", str(state), "--cpu", "1", "--batch-rows", str(batch_rows)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not ring.consumer_alive:
            time.sleep(0.01)
        os.sched_setaffinity(0, {0})
        t = time.perf_counter()
        for start in range(0, len(ev), chunk):
            if rate:
                wait = t + start / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            part = ev[start:start + chunk]
            while len(part):
                part = part[ring.push_many(part, timeout=1.0):]
        push = time.perf_counter() - t
        ring.close()
        _, err = w.communicate(timeout=600)
        elapsed = time.perf_counter() - t
        assert w.returncode == 0, err.decode()[-2000:]
        os.sched_setaffinity(0, {1})
    status = json.loads((state / name / "status.json").read_text())
    stored = check(f"writer run {tag}", query_elsewhere(dsn), len(ev))
    shutil.rmtree(Path(dsn[len("chdb://"):]), ignore_errors=True)
    return {"elapsed": elapsed, "push": push, "reported": status["rows_written"], "stored": stored,
            "spilled": status["batches_spilled"]}


if __name__ == "__main__":
    sys.exit(main())
