"""Shared-memory rings between real processes (multiprocessing, spawn): 10**7 records through
each policy with order and content checked, exact missed counts when lapped, SIGKILLed
consumers, exactly-once hand-over with peek/advance, header checks from another process.

Contents are checked with vectorised numpy comparisons per batch: record ``i`` carries
``seq = i``, ``price = 7 i``, ``qty = i ^ 0x5A5A``, ``instrument = i % 13``.
"""

import multiprocessing as mp
import os
import signal
import time
import uuid

import numpy as np
import pytest

from tickwire.ext import EVENT_DTYPE, empty_events
from tickwire.ext import ring as ring_mod
from tickwire.ext.ring import Ring, RingBusy

CTX = mp.get_context("spawn")
TEN_MILLION = 10_000_000


@pytest.fixture
def name():
    n = f"twp-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    yield n
    ring_mod.remove(n)


def fill(batch, start):
    """Records start .. start+len(batch)-1 into batch, vectorised."""
    seq = np.arange(start, start + len(batch), dtype=np.uint64)
    batch["seq"] = seq
    batch["price"] = seq.astype(np.int64) * 7
    batch["qty"] = (seq ^ np.uint64(0x5A5A)).astype(np.int64)
    batch["instrument"] = (seq % np.uint64(13)).astype(np.uint32)
    return batch


def content_ok(recs):
    """Every record's fields agree with its seq, and the seqs are consecutive."""
    seq = recs["seq"]
    return bool((np.diff(seq.astype(np.int64)) == 1).all()
                and (recs["price"] == seq.astype(np.int64) * 7).all()
                and (recs["qty"] == (seq ^ np.uint64(0x5A5A)).astype(np.int64)).all()
                and (recs["instrument"] == (seq % np.uint64(13)).astype(np.uint32)).all())


# ---------------------------------------------------------------------------------------------
# child processes (module level: spawn imports this module in the child)
# ---------------------------------------------------------------------------------------------

def producer_main(name, n, batch, ready, go=None, done=None):
    ring = Ring.attach(name, EVENT_DTYPE, role="producer")
    for ev in ready:
        if not ev.wait(60):
            raise SystemExit(3)
    if go is not None and not go.wait(60):
        raise SystemExit(4)
    buf = empty_events(batch)
    sent = 0
    while sent < n:
        k = min(batch, n - sent)
        fill(buf[:k], sent)
        if ring.push_many(buf[:k], timeout=120) != k:
            raise SystemExit(5)
        sent += k
    if done is not None:
        done.set()
    ring.close()                                         # end of stream for the consumers


def consumer_main(name, batch, ready, results, start=None, per_record_every=0):
    """Pop until end of stream; report what arrived and whether it was right.

    Broadcast: a jump in seq at the start of a read must equal that read's last_missed."""
    kw = {"start": start} if start else {}
    ring = Ring.attach(name, EVENT_DTYPE, **kw)
    ready.set()
    out = empty_events(batch)
    expect, received, gaps, bad, reads = 0, 0, 0, None, 0
    while True:
        if per_record_every and reads % per_record_every == 0:
            rec = ring.pop(timeout=60)                   # mix in single-record pops
            k = 0 if rec is None else 1
            if k:
                out[0] = rec
        else:
            k = ring.pop_many(out, timeout=60)
        reads += 1
        if k == 0:
            if not ring.eof:
                bad = "timed out"
            break
        recs = out[:k]
        first = int(recs["seq"][0])
        if first - expect != ring.last_missed:
            bad = bad or f"jump {expect}->{first} but last_missed {ring.last_missed}"
        gaps += first - expect
        if not content_ok(recs):
            bad = bad or f"bad content in records {first}..{first + k - 1}"
        expect = int(recs["seq"][-1]) + 1
        received += k
    results.put({"received": received, "missed": ring.missed, "gaps": gaps, "end": expect, "bad": bad})
    ring.close()


def collect(queue, procs, count, timeout=300):
    """``count`` results from ``queue``, failing fast if a child dies without reporting."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < count:
        try:
            out.append(queue.get(timeout=0.5))
        except Exception:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                pytest.fail(f"child {dead[0].name} exited with {dead[0].exitcode}")
            if time.monotonic() > deadline:
                pytest.fail("children did not report in time")
    return out


def join_all(procs, timeout=60):
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
            pytest.fail(f"child {p.name} did not finish")
        assert p.exitcode == 0, f"child {p.name} exited with {p.exitcode}"


# ---------------------------------------------------------------------------------------------
# 10**7 records through each policy
# ---------------------------------------------------------------------------------------------

def test_blocking_ten_million_records_in_order(name):
    with Ring.create(name, EVENT_DTYPE, 1 << 16, "blocking", role="none"):
        ready, results = CTX.Event(), CTX.Queue()
        cons = CTX.Process(target=consumer_main, args=(name, 1 << 13, ready, results),
                           kwargs={"per_record_every": 997}, name="consumer")
        prod = CTX.Process(target=producer_main, args=(name, TEN_MILLION, 1 << 14, [ready]), name="producer")
        cons.start()
        prod.start()
        (res,) = collect(results, [cons, prod], 1)
        join_all([prod, cons])
    assert res == {"received": TEN_MILLION, "missed": 0, "gaps": 0, "end": TEN_MILLION, "bad": None}


def test_broadcast_ten_million_records_two_consumers(name):
    """Nothing is lost silently: every record is either received, in order and intact, or
    counted as missed (exactly: the jumps in seq equal the missed counts)."""
    with Ring.create(name, EVENT_DTYPE, 1 << 18, "broadcast", role="none"):
        readies, results = [CTX.Event(), CTX.Event()], CTX.Queue()
        consumers = [CTX.Process(target=consumer_main, args=(name, 1 << 13, ev, results),
                                 kwargs={"start": "oldest", "per_record_every": 1009 if i else 0},
                                 name=f"consumer{i}")
                     for i, ev in enumerate(readies)]
        prod = CTX.Process(target=producer_main, args=(name, TEN_MILLION, 1 << 14, readies), name="producer")
        for p in consumers + [prod]:
            p.start()
        res = collect(results, consumers + [prod], 2)
        join_all([prod] + consumers)
    for r in res:
        assert r["bad"] is None
        assert r["received"] + r["missed"] == TEN_MILLION
        assert r["gaps"] == r["missed"] and r["end"] == TEN_MILLION
        assert r["received"] > 0


# ---------------------------------------------------------------------------------------------
# lapping, killing, taking over
# ---------------------------------------------------------------------------------------------

def lapped_main(name, ready, go, results):
    ring = Ring.attach(name, EVENT_DTYPE, start="oldest")
    ready.set()
    go.wait(60)
    out = empty_events(4096)
    k = ring.pop_many(out, timeout=10)
    first = (k, ring.last_missed, ring.missed, int(out["seq"][0]), int(out["seq"][k - 1]), content_ok(out[:k]))
    results.put(first)
    k2 = 0                                               # second round: 500 more, none missed
    while k2 < 500:
        n = ring.pop_many(out[k2:], timeout=10)
        if n == 0:
            break
        k2 += n
    results.put((k2, ring.missed, int(out["seq"][0]), int(out["seq"][k2 - 1]) if k2 else -1))
    ring.close()


def test_lapped_broadcast_consumer_gets_an_exact_missed_count(name):
    with Ring.create(name, EVENT_DTYPE, 1024, "broadcast") as prod:
        ready, go, results = CTX.Event(), CTX.Event(), CTX.Queue()
        child = CTX.Process(target=lapped_main, args=(name, ready, go, results), name="lapped")
        child.start()
        assert ready.wait(60)
        prod.push_many(fill(empty_events(10_000), 0))    # the consumer sleeps meanwhile
        go.set()
        (first,) = collect(results, [child], 1)
        assert first == (1024, 10_000 - 1024, 10_000 - 1024, 10_000 - 1024, 9_999, True)
        prod.push_many(fill(empty_events(500), 10_000))
        (second,) = collect(results, [child], 1)
        assert second == (500, 10_000 - 1024, 10_000, 10_499)
        join_all([child])


def waiting_consumer_main(name, ready, policy):
    ring = Ring.attach(name, EVENT_DTYPE, start="next") if policy == "broadcast" else Ring.attach(name, EVENT_DTYPE)
    ready.set()
    out = empty_events(256)
    while True:                                          # busy: reads as fast as it can
        ring.pop_many(out, timeout=None)


def test_sigkilled_broadcast_consumer_does_not_stop_the_producer(name):
    with Ring.create(name, EVENT_DTYPE, 4096, "broadcast", role="none"):
        ready = CTX.Event()
        victim = CTX.Process(target=waiting_consumer_main, args=(name, ready, "broadcast"), name="victim")
        victim.start()
        assert ready.wait(60)
        time.sleep(0.2)                                  # asleep in its futex wait by now
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        assert victim.exitcode == -signal.SIGKILL
        # a producer in another process pushes 2 M records past the dead consumer ...
        done = CTX.Event()
        prod = CTX.Process(target=producer_main, args=(name, 2_000_000, 1024, [], None, done), name="producer")
        # ... while a second consumer is killed in the middle of reading
        ready2 = CTX.Event()
        victim2 = CTX.Process(target=waiting_consumer_main, args=(name, ready2, "broadcast"), name="victim2")
        victim2.start()
        assert ready2.wait(60)
        prod.start()
        time.sleep(0.05)
        os.kill(victim2.pid, signal.SIGKILL)
        assert done.wait(60), "the producer was held up by dead consumers"
        join_all([prod])
        victim2.join(10)
        # a new consumer attaches and gets new records
        with Ring.attach(name, EVENT_DTYPE, start="next") as fresh, \
                Ring.attach(name, EVENT_DTYPE, role="producer") as prod2:
            prod2.push_many(fill(empty_events(100), 5_000_000))
            out = empty_events(200)
            assert fresh.pop_many(out, timeout=5) == 100
            assert out["seq"][0] == 5_000_000 and content_ok(out[:100])


def exactly_once_consumer_main(name, log_path, batch, die_after):
    """A storage-writer-like consumer: peek a batch, 'store' it (append its ring positions to a
    log), then advance.  After die_after records it SIGKILLs itself between store and advance,
    the worst moment."""
    ring = Ring.attach(name, EVENT_DTYPE)
    out = empty_events(batch)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    stored = 0
    while True:
        pos = ring.position
        k = ring.peek_many(out, timeout=30)
        if k == 0:
            break
        os.write(fd, out["seq"][:k].tobytes())           # the "database write" (seqs = positions)
        assert pos == int(out["seq"][0])
        stored += k
        if stored >= die_after:
            os.kill(os.getpid(), signal.SIGKILL)
        ring.advance(k)
    os.close(fd)


def test_blocking_consumer_killed_between_store_and_commit_exactly_once(name, tmp_path):
    """A consumer dies after storing a batch but before advancing; its successor attaches by
    name (the dead pid is detected), sees the committed position, skips what the log already
    holds, and the log ends with every record exactly once while the producer, blocked on the
    full ring meanwhile, carries on."""
    n, log = 300_000, tmp_path / "stored.bin"
    with Ring.create(name, EVENT_DTYPE, 4096, "blocking", role="none") as owner:
        prod = CTX.Process(target=producer_main, args=(name, n, 1000, []), name="producer")
        victim = CTX.Process(target=exactly_once_consumer_main, args=(name, str(log), 700, 100_000),
                             name="victim")
        victim.start()
        while not owner.consumer_pid:
            time.sleep(0.01)
        prod.start()
        victim.join(60)
        assert victim.exitcode == -signal.SIGKILL
        stored = np.fromfile(log, dtype=np.uint64)
        committed = owner.tail
        assert len(stored) > committed                   # the last batch is stored, not committed
        time.sleep(0.2)
        assert len(owner) == 4096                        # the producer is waiting on a full ring
        # the successor: no takeover flag needed, the holder is dead (a zombie until joined)
        with Ring.attach(name, EVENT_DTYPE) as succ:
            assert succ.committed == committed
            skip = int(stored[-1]) + 1 - committed       # already in the store
            out = empty_events(4096)
            while skip:
                k = succ.peek_many(out[:min(skip, 4096)], timeout=10)
                assert k
                succ.advance(k)
                skip -= k
            with open(log, "ab") as f:
                while True:
                    k = succ.pop_many(out, timeout=10)
                    if k == 0:
                        assert succ.eof
                        break
                    f.write(out["seq"][:k].tobytes())
        join_all([prod])
    stored = np.fromfile(log, dtype=np.uint64)
    assert len(stored) == n and (stored == np.arange(n, dtype=np.uint64)).all()


def holder_main(name, ready):
    ring = Ring.attach(name, EVENT_DTYPE)
    ready.set()
    time.sleep(600)


def test_live_consumer_elsewhere_is_busy_a_dead_one_is_replaced(name):
    with Ring.create(name, EVENT_DTYPE, 64):
        ready = CTX.Event()
        holder = CTX.Process(target=holder_main, args=(name, ready), name="holder")
        holder.start()
        assert ready.wait(60)
        with pytest.raises(RingBusy, match=f"pid {holder.pid}"):
            Ring.attach(name, EVENT_DTYPE)
        os.kill(holder.pid, signal.SIGKILL)
        while not os.path.exists(f"/proc/{holder.pid}/stat") or open(
                f"/proc/{holder.pid}/stat").read().split(")")[-1].split()[0] != "Z":
            time.sleep(0.01)                             # a zombie: not reaped yet
        with Ring.attach(name, EVENT_DTYPE) as successor:
            assert successor.consumer_pid == os.getpid()
        holder.join()


def wrong_size_main(name, results):
    try:
        Ring.attach(name, np.dtype("<i4"))
        results.put("attached")
    except ValueError as exc:
        results.put(str(exc))


def test_attach_with_a_wrong_record_size_fails_clearly_in_another_process(name):
    with Ring.create(name, EVENT_DTYPE, 64):
        results = CTX.Queue()
        child = CTX.Process(target=wrong_size_main, args=(name, results), name="wrong-size")
        child.start()
        (msg,) = collect(results, [child], 1)
        join_all([child])
    assert "record size differs" in msg and "64-byte records" in msg and "4 bytes" in msg


def blocked_pop_main(name, results):
    ring = Ring.attach(name, EVENT_DTYPE)
    t0 = time.monotonic()
    rec = ring.pop(timeout=None)                         # sleeps on the futex until a push
    results.put((int(rec["seq"]), time.monotonic() - t0 > 0.2))


def test_sleeping_consumer_is_woken_by_a_push(name):
    with Ring.create(name, EVENT_DTYPE, 64) as prod:
        results = CTX.Queue()
        child = CTX.Process(target=blocked_pop_main, args=(name, results), name="sleeper")
        child.start()
        while not prod.consumer_pid:
            time.sleep(0.01)
        time.sleep(0.5)
        prod.push(fill(empty_events(1), 42)[0])
        (res,) = collect(results, [child], 1, timeout=30)
        join_all([child])
    assert res == (42, True)
