"""Tick storage into the embedded ClickHouse engine (chDB), beside a plain clickhouse-connect insert.

    python benchmarks/bench_store.py [--n N] [--repeats R]

1. A plain clickhouse-connect ``insert_arrow`` of a prebuilt Arrow table (the peer: what a user
   writing their own inserter gets at best) into the same schema.
2. tickwire ``Store.insert_ticks`` from numpy canonical events (columns cut out, Arrow built,
   deduplication token) into the same schema.
3. The whole storage path: events pushed into the blocking tick ring by this process (core 0),
   drained by the writer process (core 1) in --batch-rows batches with a journal per batch, until
   ClickHouse holds every tick; sustained ticks/s from the first push to the writer's exit
   after its last commit.

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
    ap.add_argument("--batch-rows", type=int, default=500_000, help="writer batch size [%(default)s]")
    args = ap.parse_args(argv)
    pinned = pin(1)
    print(f"# tickwire storage benchmark ({describe_run(pinned)})")
    ev = events(args.n)
    work = Path(tempfile.mkdtemp(prefix="tw-bench-store-"))
    rows = []
    try:
        store = Store.open(f"chdb://{work}/inproc")
        extra = {"epoch": np.zeros(len(ev), np.uint64), "ord": np.arange(len(ev), dtype=np.uint64)}
        prebuilt = _arrow_table(ev, TICK_COLUMNS, extra)
        plain, ours = [], []
        counted = {"plain": [], "ours": []}
        for r in range(args.repeats):
            store.client.command("TRUNCATE TABLE tickwire.ticks")
            t = time.perf_counter()
            store.client.insert_arrow("tickwire.ticks", prebuilt, settings={"async_insert": 0})
            plain.append(time.perf_counter() - t)
            counted["plain"].append(check("insert_arrow", store.client.query(CHECK).result_rows[0], len(ev)))
            store.client.command("TRUNCATE TABLE tickwire.ticks")
            t = time.perf_counter()
            store.insert_ticks(ev, epoch=r + 1, token=f"bench-{r}")
            ours.append(time.perf_counter() - t)
            counted["ours"].append(check("insert_ticks", store.client.query(CHECK).result_rows[0], len(ev)))
        store.close()
        peer = len(ev) / np.median(plain)
        rows.append(["clickhouse-connect insert_arrow, prebuilt table (peer)", peer,
                     "-", f"{min(counted['plain']):,}"])
        rows.append(["tickwire Store.insert_ticks from numpy events", len(ev) / np.median(ours),
                     "-", f"{min(counted['ours']):,}"])

        # the whole path: ring -> writer process -> chDB
        e2e, reported, stored = [], [], []
        for r in range(args.repeats):
            name = f"tw-bench-{uuid.uuid4().hex[:8]}"
            state, dsn = work / f"state{r}", f"chdb://{work}/e2e{r}"
            with Ring.create(name, EVENT_DTYPE, 1 << 20) as ring:
                w = subprocess.Popen([sys.executable, "-m", "tickwire.engine.writer", "--ring", name, "--dsn", dsn,
                                      "--state-dir", str(state), "--cpu", "1", "--batch-rows", str(args.batch_rows)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                while not ring.consumer_alive:
                    time.sleep(0.01)
                os.sched_setaffinity(0, {0})
                t = time.perf_counter()
                for start in range(0, len(ev), 65536):
                    chunk = ev[start:start + 65536]
                    while len(chunk):
                        chunk = chunk[ring.push_many(chunk, timeout=1.0):]
                ring.close()
                _, err = w.communicate(timeout=600)
                e2e.append(time.perf_counter() - t)
                assert w.returncode == 0, err.decode()[-2000:]
                os.sched_setaffinity(0, {1})
            status = json.loads((state / name / "status.json").read_text())
            reported.append(status["rows_written"])
            stored.append(check(f"writer run {r + 1}", query_elsewhere(dsn), len(ev)))
        rows.append(["ring -> writer process -> chDB, sustained (journal per batch)", len(ev) / np.median(e2e),
                     f"{min(reported):,}", f"{min(stored):,}"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nInserting {len(ev):,} ticks (13 columns, codecs, daily partitions) into embedded ClickHouse; "
          f"median of {args.repeats}; 'stored': the store's own count() after each run (lowest of the runs;\n"
          f"every run also had uniqExact(seq) = count and sum(seq) = 1 + ... + {len(ev):,}); 'writer says': "
          f"its self-reported rows_written")
    table([[name, f"{rate / 1e6:.2f}", f"{rate / peer:.2f}x", said, got] for name, rate, said, got in rows],
          ["path", "M ticks/s", "vs peer", "writer says", "stored"])
    sustained = rows[-1][1]
    print(f"  target: sustained >= 1 M ticks/s into the embedded engine: {sustained / 1e6:.2f} M/s "
          f"({'met' if sustained >= 1e6 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
