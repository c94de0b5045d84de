"""Shared-memory ring throughput and one-way latency between two pinned processes, beside its
peers and the plain C limit, in one run.

    python benchmarks/bench_ring.py [--repeats R] [--scale S] [--batch B] [--latency-rate HZ]
                                    [--skip-latency]

Every contestant moves 64-byte canonical events from a producer process pinned to core 0 to a
consumer process pinned to core 1 (two fresh processes per run; the parent sleeps).  Record i
carries i in its ``seq`` field; every consumer sums what it received, and a run counts only if
the count and the sum equal what was sent.  Throughput: records / (consumer's last arrival -
producer's start), CLOCK_MONOTONIC, median of ``--repeats`` runs.

Throughput contestants, all ``--batch`` records (default 1024) per hand-off, none pickling:
- limit: a plain C SPSC loop over the same segment (``benchmarks/cext/tw_limits.h``): records
  written in place, one release store of head per batch; the consumer copies out what is
  there (at most a batch) and stores tail once per copy, as tickwire's ``tw_ring_pop_n`` does.
  It waits as the ring does (spin 50 us, then a futex): a pure spin is no limit on a shared
  machine, where a spinning side holds its core while the other side is descheduled.
- tickwire C API (``cimport tickwire.ext.ring``): tw_ring_claim/written, tw_ring_publish per
  batch; tw_ring_pop_n of a batch.  Also published per record (tw_ring_push), for the record.
- tickwire Python ``push_many``/``pop_many`` of batch-record numpy arrays.
- numpy over ``multiprocessing.shared_memory``: the same records and a head/tail pair (each on
  its own cache line), the SPSC loop a user writes in Python, copying batches as rows of bytes
  (numpy copies a structured dtype field by field, 25x slower).
- pyzmq PUSH/PULL over ipc, one frame per batch (``send(array)``, ``recv_into`` a numpy array).
- faster-fifo with identity ``dumps``/``loads`` (no pickling), one message per batch
  (``tobytes()``: its API takes bytes), ``get_many``.

Each side's own cost: in one process on one core, the limit's and tickwire's producer fill a
ring lap, then their consumer empties it, alternately (no other core, no waiting): ns per record
per side, the stand-in for the cycles per record that ``perf stat`` cannot count on this VM.

Latency: the producer sends at a constant rate (``--latency-rate``, records due at fixed times
and stamped with that intended time, so a late record counts its queueing), one record per
hand-off; the consumer records arrival - intended time in a tickwire HDR recorder.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # (its helpers, under python -P too)
import cbuild
from common import describe_run, require, table, version

from tickwire.ext import EVENT_DTYPE
from tickwire.ext import ring as R
from tickwire.ext.hdr import Recorder

class _Lazy:
    """The compiled contestants (cbuild), compiled at their first use: `--help` answers at once."""

    def __getattr__(self, name):
        mod = cbuild.load("io_bench")
        self.__dict__.update((k, getattr(mod, k)) for k in dir(mod) if not k.startswith("__"))
        return getattr(mod, name)


B = _Lazy()
CTX = mp.get_context("spawn")
REC = EVENT_DTYPE.itemsize
SEQ = EVENT_DTYPE.fields["seq"][1]                      # byte offset of the record number
CAPACITY = 1 << 16                                     # records in every ring / shm segment
PRODUCER_CORE, CONSUMER_CORE = 0, 1
RINGS = ("limit", "cy", "cy1", "py", "py_one")           # contestants on a tickwire ring segment


def pin(core):
    try:
        if core in os.sched_getaffinity(0) or core < os.cpu_count():
            os.sched_setaffinity(0, {core})
    except OSError:
        pass


def payload(i, stamp=0):
    return i.to_bytes(8, "little") + stamp.to_bytes(8, "little", signed=True) + bytes(REC - 16)


# ---------------------------------------------------------------------------------------------
# throughput: producer and consumer bodies, by contestant
# ---------------------------------------------------------------------------------------------

def tp_producer(kind, ref, n, ready, out, batch):
    pin(PRODUCER_CORE)
    ctx = setup_producer(kind, ref)
    if not ready.wait(60):
        raise SystemExit("consumer not ready")
    time.sleep(0.05)                                       # let the consumer settle in its wait
    t0 = time.monotonic_ns()
    produce(kind, ctx, n, batch)
    out.put(("t0", t0))
    teardown(ctx)


def tp_consumer(kind, ref, n, ready, out, batch):
    pin(CONSUMER_CORE)
    ctx = setup_consumer(kind, ref)
    ready.set()
    got, total = consume(kind, ctx, n, batch)
    t1 = time.monotonic_ns()
    out.put(("t1", t1, got, total))
    teardown(ctx)


class ShmRing:
    """The peer a user writes: records in a ``multiprocessing.shared_memory`` block, and
    head / tail counters 128 bytes apart before them (x86 stores are ordered, so publishing a
    batch is writing the records, then head)."""

    def __init__(self, name, create=False):
        from multiprocessing import shared_memory
        # (attaching registers the block with the resource tracker too, CPython gh-82300; the
        # spawned children share the parent's tracker, which unlinks nothing before the parent's
        # own unlink)
        self.shm = shared_memory.SharedMemory(name, create=create, size=256 + CAPACITY * REC)
        idx = np.ndarray(32, np.int64, self.shm.buf)
        self.head, self.tail = idx[0:1], idx[16:17]
        # the records as rows of bytes: numpy copies a structured dtype field by field (65 us per
        # 1024 events here) but rows of bytes with one memcpy (2.5 us): the peer at its best
        self.rows = np.ndarray((CAPACITY, REC), np.uint8, self.shm.buf, offset=256)

    def close(self):
        del self.head, self.tail, self.rows
        self.shm.close()


def setup_producer(kind, ref):
    if kind in RINGS:
        return {"ring": R.Ring.attach(ref, EVENT_DTYPE, role="producer")}
    if kind == "shm":
        return {"shm": ShmRing(ref)}
    if kind.startswith("ff") or kind == "mpq":
        return {"q": ref}
    if kind.startswith("zmq"):
        import zmq
        s = zmq.Context.instance().socket(zmq.PUSH)
        s.bind(ref)
        s.send(b"warm-up")                                 # queued until the consumer connects
        return {"s": s}
    raise ValueError(kind)


def setup_consumer(kind, ref):
    if kind in RINGS:
        return {"ring": R.Ring.attach(ref, EVENT_DTYPE)}
    if kind == "shm":
        return {"shm": ShmRing(ref)}
    if kind.startswith("ff") or kind == "mpq":
        return {"q": ref}
    if kind.startswith("zmq"):
        import zmq
        s = zmq.Context.instance().socket(zmq.PULL)
        s.connect(ref)
        s.recv()                                           # connected before the clock starts
        return {"s": s}
    raise ValueError(kind)


def teardown(ctx):
    if "ring" in ctx:
        ctx["ring"].close()
    if "shm" in ctx:
        ctx["shm"].close()
    if "s" in ctx:
        import zmq
        ctx["s"].close(linger=-1)
        zmq.Context.instance().term()                      # returns once everything queued is delivered


def batches(n, batch):
    """The Python producers' batches: one array, its record numbers rewritten for each send."""
    arr = np.zeros(batch, EVENT_DTYPE)
    seq, step = arr["seq"], np.arange(batch, dtype=np.uint64)
    for start in range(0, n, batch):
        np.add(step, start, out=seq)
        yield arr


def produce(kind, ctx, n, batch):
    if kind == "limit":
        B.limit_produce(ctx["ring"], n, batch, SEQ)
    elif kind == "cy":
        B.push(ctx["ring"], n, batch, SEQ)
    elif kind == "cy1":
        B.push(ctx["ring"], n, 1, SEQ)
    elif kind == "py":
        push_many = ctx["ring"].push_many
        for arr in batches(n, batch):
            push_many(arr)
    elif kind == "shm":
        sh = ctx["shm"]
        head_w, tail_r, rows = sh.head, sh.tail, sh.rows
        head = 0
        for arr in batches(n, batch):
            while head - tail_r[0] > CAPACITY - batch:     # wait for room (spinning)
                pass
            at = head % CAPACITY                           # CAPACITY is a multiple of batch
            rows[at:at + batch] = arr.view(np.uint8).reshape(batch, REC)
            head += batch
            head_w[0] = head
    elif kind == "zmq":
        send = ctx["s"].send
        for arr in batches(n, batch):
            send(arr, copy=True)
    elif kind == "ff":
        put = ctx["q"].put
        for arr in batches(n, batch):
            put(arr.tobytes(), timeout=60)
    else:
        raise ValueError(kind)


def consume(kind, ctx, n, batch):
    """(records received, sum of their numbers)."""
    if kind == "limit":
        return n, B.limit_consume(ctx["ring"], n, batch, SEQ)
    if kind in ("cy", "cy1"):
        s, got, missed = B.pop(ctx["ring"], n, batch, SEQ)
        return (got if missed == 0 else -1), s
    got = total = 0
    if kind == "py":
        out = np.zeros(batch, EVENT_DTYPE)
        pop_many, seq = ctx["ring"].pop_many, out["seq"]
        while got < n:
            k = pop_many(out)
            total += int(seq[:k].sum())
            got += k
    elif kind == "shm":
        sh = ctx["shm"]
        head_r, tail_w, rows = sh.head, sh.tail, sh.rows
        out = np.zeros(batch, EVENT_DTYPE)
        seq, out_rows = out["seq"], out.view(np.uint8).reshape(batch, REC)
        while got < n:
            while head_r[0] == got:                        # wait for a batch (spinning)
                pass
            at = got % CAPACITY
            out_rows[:] = rows[at:at + batch]
            got += batch
            tail_w[0] = got
            total += int(seq.sum())
    elif kind == "zmq":
        out = np.zeros(batch, EVENT_DTYPE)
        recv_into, seq = ctx["s"].recv_into, out["seq"]
        while got < n:
            k = recv_into(out) // REC
            total += int(seq[:k].sum())
            got += k
    elif kind == "ff":
        get_many, frombuffer = ctx["q"].get_many, np.frombuffer
        while got < n:
            for msg in get_many(timeout=60):               # views of faster-fifo's buffer
                seq = frombuffer(msg, EVENT_DTYPE)["seq"]
                total += int(seq.sum())
                got += len(seq)
    else:
        raise ValueError(kind)
    return got, total


def _same(x):
    """faster-fifo's dumps and loads: bytes in, a view of its buffer out (no pickling)."""
    return x


def make_ref(kind):
    """The channel for one run: a ring or shm block (name) owned by the parent, a queue, or an
    ipc address; and its cleanup."""
    name = f"twbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if kind in RINGS:
        owner = R.Ring.create(name, EVENT_DTYPE, CAPACITY, role="none")
        return name, owner.close
    if kind == "shm":
        owner = ShmRing(name, create=True)
        return name, lambda: (owner.close(), owner.shm.unlink())
    if kind.startswith("ff"):
        import faster_fifo
        return faster_fifo.Queue(max_size_bytes=64 << 20, loads=_same, dumps=_same), lambda: None
    if kind == "mpq":
        return CTX.Queue(), lambda: None
    if kind.startswith("zmq"):
        path = f"/tmp/{name}.ipc"
        return f"ipc://{path}", lambda: os.path.exists(path) and os.unlink(path)
    raise ValueError(kind)


def run_pair(prod_fn, cons_fn, kind, n, extra=()):
    ref, cleanup = make_ref(kind)
    ready, out = CTX.Event(), CTX.Queue()
    cons = CTX.Process(target=cons_fn, args=(kind, ref, n, ready, out, *extra))
    prod = CTX.Process(target=prod_fn, args=(kind, ref, n, ready, out, *extra))
    cons.start()
    prod.start()
    results = {}
    try:
        for _ in range(2):
            msg = out.get(timeout=600)
            results[msg[0]] = msg[1:]
    finally:
        prod.join(60)
        cons.join(60)
        for p in (prod, cons):
            if p.is_alive():
                p.kill()
        cleanup()
    return results


THROUGHPUT = [
    # (kind, label, records per run at scale 1, is a peer)
    ("limit", "limit: plain C SPSC loop, same segment", 20_000_000, False),
    ("cy", "tickwire C API, claim/written, publish per batch; pop_n", 20_000_000, False),
    ("py", "tickwire Python push_many/pop_many", 20_000_000, False),
    ("shm", "peer: numpy over multiprocessing.shared_memory", 20_000_000, True),
    ("zmq", f"peer: pyzmq {version('pyzmq')} PUSH/PULL ipc, 1 frame/batch", 8_000_000, True),
    ("ff", f"peer: faster-fifo {version('faster-fifo')}, 1 message/batch, no pickle", 8_000_000, True),
    ("cy1", "(tickwire C API, one publish per record; pop_n)", 20_000_000, False),
]


def throughput(repeats, scale, batch):
    """Rounds of every contestant in turn (so a noisy stretch of the shared machine hits them all
    alike); per contestant the median rate, and per round its ratio to the limit's run."""
    runs = {kind: [] for kind, *_ in THROUGHPUT}
    sizes = {kind: max(CAPACITY, int(n * scale) // CAPACITY * CAPACITY) for kind, _, n, _ in THROUGHPUT}
    for r in range(repeats):
        for kind, label, _, _ in THROUGHPUT:
            n = sizes[kind]                                # whole batches, whole laps of the ring
            want = n * (n - 1) // 2
            res = run_pair(tp_producer, tp_consumer, kind, n, (batch,))
            t0, (t1, got, total) = res["t0"][0], res["t1"]
            if got != n or total != want:
                raise SystemExit(f"{label}: received {got:,} records summing to {total:,}; "
                                 f"sent {n:,} summing to {want:,}")
            runs[kind].append(n / ((t1 - t0) / 1e9))
        print(f"  .. round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1] / 1e6:.1f}" for k, v in runs.items())
              + " M/s", file=sys.stderr, flush=True)
    return {kind: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": sizes[kind],
                   "vs_limit": statistics.median(x / lim for x, lim in zip(v, runs["limit"])),
                   "best_vs_limit": max(v) / max(runs["limit"])}
            for kind, v in runs.items()}


# ---------------------------------------------------------------------------------------------
# latency: paced producer (intended send times), consumer records arrival - intended
# ---------------------------------------------------------------------------------------------

def lat_producer(kind, ref, n, ready, out, interval, spin):
    pin(PRODUCER_CORE)
    ctx = setup_producer(kind, ref)
    if not ready.wait(60):
        raise SystemExit("consumer not ready")
    time.sleep(0.05)
    start = time.monotonic_ns() + 1_000_000
    if kind == "limit":
        B.limit_latency_produce(ctx["ring"], n, start, interval)
    elif kind == "cy1":
        B.latency_produce(ctx["ring"], n, start, interval)
    else:
        now, yield_gil = time.monotonic_ns, os.sched_yield   # releases the GIL: a feeder thread may run
        if kind == "py_one":
            rec = np.zeros(1, EVENT_DTYPE)[0]
            push = ctx["ring"].push
            for i in range(n):
                due = start + i * interval
                while now() < due:
                    yield_gil()
                rec["ts_event"] = due
                push(rec)
        else:
            send = ctx["q"].put if kind in ("ff1", "mpq") else ctx["s"].send
            for i in range(n):
                due = start + i * interval
                while now() < due:
                    yield_gil()
                send(payload(i, due))
    out.put(("t0", start))
    teardown(ctx)


def lat_consumer(kind, ref, n, ready, out, interval, spin):
    pin(CONSUMER_CORE)
    ctx = setup_consumer(kind, ref)
    if "ring" in ctx:
        ctx["ring"].spin_ns = spin
    lat = np.zeros(n, dtype=np.int64)
    ready.set()
    if kind == "limit":
        B.limit_latency_consume(ctx["ring"], lat)
    elif kind == "cy1":
        B.latency_consume(ctx["ring"], lat)
    else:
        now = time.monotonic_ns
        if kind == "py_one":
            pop = ctx["ring"].pop
            for i in range(n):
                rec = pop()
                lat[i] = now() - rec["ts_event"]
        else:
            get = (lambda: ctx["q"].get(timeout=60)) if kind in ("ff1", "mpq") else ctx["s"].recv
            for i in range(n):
                msg = get()
                lat[i] = now() - int.from_bytes(msg[8:16], "little", signed=True)
    out.put(("t1", lat))
    teardown(ctx)


LATENCY = [
    ("limit", "limit: plain C SPSC loop (spinning)", 1_000_000),
    ("cy1", "tickwire C API, consumer spins", 1_000_000),
    ("cy1", "tickwire C API, default wait (spin 50 us, then futex)", 50_000),
    ("py_one", "tickwire Python push/pop, consumer spins", 1_000_000),
    ("ff1", "faster-fifo put/get (no pickling)", 0),
    ("mpq", "multiprocessing.Queue put/get (pickles)", 0),
    ("zmq1", "pyzmq PUSH/PULL ipc", 0),
]


def latency(repeats, rate, samples):
    interval = int(1e9 / rate)
    out = {}
    for kind, label, spin in LATENCY:
        rec = Recorder(label)
        for _ in range(repeats):
            res = run_pair(lat_producer, lat_consumer, kind, samples, (interval, spin))
            rec.record_many(res["t1"][0][100:])              # drop the warm-up
        out[label] = rec.percentiles()
        print(f"  .. {label}: p50 {out[label]['p50'] / 1000:.2f} us", file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------------------------------------

def code_cost(batch, laps=100, repeats=5):
    """Each side's own cost per record, without the other core: in one process pinned to core 1,
    the producer fills a whole ring lap, then the consumer empties it, alternately (no waiting,
    no cache line crossing cores).  The stand-in for the cycles per record perf cannot count on
    this VM.  Returns {kind: (producer ns/record, consumer ns/record)} medians over repeats."""
    pin(CONSUMER_CORE)
    out = {}
    for kind in ("limit", "cy"):
        name = f"twbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        prod = R.Ring.create(name, EVENT_DTYPE, CAPACITY, role="producer")
        cons = R.Ring.attach(name, EVENT_DTYPE, role="consumer")
        produce_fn = B.limit_produce if kind == "limit" else B.push
        consume_fn = B.limit_consume if kind == "limit" else B.pop
        per = []
        try:
            for _ in range(repeats):
                tp = tc = 0
                for _ in range(laps):
                    t0 = time.perf_counter_ns()
                    produce_fn(prod, CAPACITY, batch, SEQ)
                    t1 = time.perf_counter_ns()
                    consume_fn(cons, CAPACITY, batch, SEQ)
                    tc += time.perf_counter_ns() - t1
                    tp += t1 - t0
                per.append((tp / (laps * CAPACITY), tc / (laps * CAPACITY)))
        finally:
            cons.close()
            prod.close()
        out[kind] = (statistics.median(p for p, _ in per), statistics.median(c for _, c in per))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="rounds of every contestant in turn")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the record counts")
    ap.add_argument("--batch", type=int, default=1024, help="records per hand-off (a power of two <= 65536)")
    ap.add_argument("--latency-rate", type=float, default=10_000, help="records/s offered (default 10k)")
    ap.add_argument("--latency-samples", type=int, default=20_000, help="records per latency run")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args, _ = ap.parse_known_args()                 # run_all.py passes every script the same arguments
    if args.batch < 1 or args.batch > CAPACITY or CAPACITY % args.batch:
        ap.error(f"--batch must be a power of two from 1 to {CAPACITY}")
    if not args.skip_throughput:
        require("faster_fifo")

    print(f"Ring benchmark: {describe_run(f'producer on core {PRODUCER_CORE}, consumer on core {CONSUMER_CORE}')}")
    print(f"{REC}-byte records, {args.batch} per hand-off, ring of {CAPACITY:,}; each run in two fresh processes; "
          f"median of {args.repeats} runs; every run's count and sum of record numbers checked\n")
    if not args.skip_throughput:
        report_throughput(args)
        cost = code_cost(args.batch)
        print(f"\nEach side's own cost, one core, a ring lap at a time (no other core, no waiting), ns/record:")
        table([[label, f"{cost[k][0]:.2f}", f"{cost[k][1]:.2f}", f"{sum(cost[k]) / sum(cost['limit']):.2f}x"]
               for k, label in (("limit", "limit: plain C loop"), ("cy", "tickwire C API"))],
              ["contestant", "producer", "consumer", "time vs limit"])
    if args.skip_latency:
        return 0
    print(f"\nOne-way latency at {args.latency_rate:,.0f} records/s offered (constant rate, intended-time "
          f"stamps), {args.latency_samples:,} records x {args.repeats} runs, microseconds")
    lat = latency(args.repeats, args.latency_rate, args.latency_samples)
    base = lat[LATENCY[0][1]]["p50"]
    rows = []
    for label, s in lat.items():
        rows.append([label] + [f"{s[k] / 1000:.2f}" for k in ("p50", "p90", "p99", "p99.9", "p99.99", "max")]
                    + [f"{s['p50'] / base:.1f}x"])
    table(rows, ["contestant", "p50", "p90", "p99", "p99.9", "p99.99", "max", "p50 vs limit"])
    return 0


def report_throughput(args):
    rates = throughput(args.repeats, args.scale, args.batch)
    limit = rates["limit"]["median"]
    peers = [k for k, _, _, peer in THROUGHPUT if peer]
    best = max(peers, key=lambda k: rates[k]["median"])
    labels = {k: label for k, label, _, _ in THROUGHPUT}
    rows = []
    for kind, label, _, _ in THROUGHPUT:
        r = rates[kind]
        rows.append([label, f"{r['n']:,}", f"{r['median'] / 1e6:.2f}", f"{r['min'] / 1e6:.1f}-{r['max'] / 1e6:.1f}",
                     f"{1e9 / r['median']:.2f}", f"{r['vs_limit']:.2f}", f"{r['best_vs_limit']:.2f}",
                     f"{r['median'] / rates[best]['median']:.1f}x"])
    print("Throughput, M records/s: median and range over rounds.  'vs limit': median over rounds of the ratio\n"
          "to the limit's run in the same round; 'best/best': fastest run over the limit's fastest run (the\n"
          "least disturbed runs on a shared machine)")
    table(rows, ["contestant", "records", "M rec/s", "range", "ns/rec", "vs limit", "best/best", "vs best peer"])

    cy, py = rates["cy"], rates["py"]
    print("\nTargets")
    checks = [
        ("tickwire C API within 2x of the C limit (same batching)", cy["vs_limit"] >= 0.5,
         f"{cy['vs_limit']:.2f}x the limit, median of same-round ratios (best runs: {cy['best_vs_limit']:.2f}x; "
         f"medians {cy['median'] / 1e6:.1f} vs {limit / 1e6:.1f} M/s)"),
        ("tickwire Python push_many/pop_many ahead of every peer", py["median"] > rates[best]["median"],
         f"{py['median'] / 1e6:.1f} M/s, {py['median'] / rates[best]['median']:.1f}x the best peer "
         f"({labels[best]}, {rates[best]['median'] / 1e6:.1f} M/s)"),
        ("tickwire Python push_many/pop_many >= 5 M records/s", py["median"] >= 5e6, f"{py['median'] / 1e6:.1f} M/s"),
    ]
    for what, ok, fig in checks:
        print(f"  [{'met' if ok else 'NOT MET'}] {what}: {fig}")


if __name__ == "__main__":
    sys.exit(main())
