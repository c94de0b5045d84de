"""The library used wrongly, as a quant's script or an attacker might: refused with an error
naming the problem, never a crash, a hang or a wrong answer (found by an adversarial pass over
the Python API). What could crash the interpreter runs in a child process, so that a regression
shows as a failed test, not a dead test run."""

import subprocess
import sys
import textwrap

import pytest

from tickwire.engine.config import ConfigError, from_dict
from tickwire.ext import BookSet, L2Book, L3Book, Side
from tickwire.ext.book import DEFAULT_MAX_PRICE, LOWEST_PRICE

PY = sys.executable


def child(code: str, timeout: float = 120):
    """Run ``code`` in a fresh interpreter: (exit status, output)."""
    # (-P: not the current directory's tickwire/ first, which in a scratch checkout maps the
    # compiled core to another tree's build)
    p = subprocess.run([PY, "-P", "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


# -- prices: a range and a spread must fit in int64 ---------------------------------------------

def test_the_widest_price_range_works_at_both_ends_and_one_wider_is_refused():
    # -2**62..2**62 spans 2**63: moving the window overflowed int64 and the process died (SIGSEGV)
    rc, out = child(f"""
        from tickwire.ext import L2Book, Side
        b = L2Book(min_price={LOWEST_PRICE}, max_price={DEFAULT_MAX_PRICE})
        b.set(Side.ASK, {DEFAULT_MAX_PRICE}, 54)
        b.set(Side.ASK, {LOWEST_PRICE}, 56)
        b.set(Side.BID, {LOWEST_PRICE}, 7)
        b.delete(Side.ASK, {LOWEST_PRICE})
        print(b.best_ask, b.best_bid, b.spread, b.crossed, b.levels(Side.ASK).tolist())
        """)
    assert rc == 0, out
    assert out.split()[:4] == [str(DEFAULT_MAX_PRICE), str(LOWEST_PRICE), str(2**63 - 1), "False"], out
    for kw in ({"min_price": LOWEST_PRICE - 1}, {"max_price": LOWEST_PRICE - 1}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            L2Book(**kw)
        with pytest.raises(ValueError, match=next(iter(kw))):
            L3Book(**kw)


def test_a_config_price_range_past_int64_is_refused_naming_the_key():
    raw = {"instruments": [{"id": 0, "symbol": "X", "tick_size": "1", "lot_size": "1", "min_price": -2**62}]}
    with pytest.raises(ConfigError, match=r"instruments\[0\]\.min_price"):
        from_dict(raw)


# -- L3 order ids come from the feed: the map's hash is keyed per book --------------------------

def test_order_ids_that_collide_under_a_known_hash_key_do_not_collide_in_a_fresh_book():
    from test_book_l3_map import colliding_ids
    from tickwire.ext._testing import longest_probe, set_hash_key

    ids = colliding_ids(2000, key=0)
    known, fresh = L3Book(0, initial_orders=4096), L3Book(0, initial_orders=4096)
    set_hash_key(known, 0)
    for b in (known, fresh):
        for i, oid in enumerate(ids):
            b.add(oid, Side.BID, 1000 + i % 50, 1)
        assert b.order_count == len(ids)
    assert longest_probe(known) >= len(ids) // 2        # one cluster: every add walked it
    assert longest_probe(fresh) < 64                    # a random key: scattered


# -- re-entrancy and threads ------------------------------------------------------------------

def test_a_python_rule_calling_back_into_its_engine_is_refused():
    rc, out = child("""
        from tickwire.engine.instruments import Instrument
        from tickwire.engine.pipeline import Engine
        from tickwire.feeds import synthetic
        ev = synthetic.l2_updates(20000)
        seen, holder = [], {}
        def rule(ctx):
            for call in (lambda e: e.reset_instrument(0), lambda e: e.process(ev[:3000]),
                         lambda e: e.clear_signals(), lambda e: e.take_signals()):
                try:
                    call(holder["e"])
                except RuntimeError as exc:
                    seen.append(str(exc))
            return 1.0
        e = Engine([Instrument(0, "X", tick_size="0.01", lot_size="1")], [rule], signal_capacity=4)
        holder["e"] = e
        n = e.process(ev)
        print(n, len(seen), e.events_processed, seen[0])
        """)
    assert rc == 0, out
    n, refused, processed = (int(x) for x in out.split()[:3])
    assert n > 0 and refused == 4 * n and processed == 20000, out
    assert "the engine is processing a batch" in out


def test_a_python_rule_reinitialising_its_engine_is_refused():
    # Engine.__init__ from a rule mid-batch freed the signal buffer being written and swapped
    # the rules table being indexed (use-after-free under ASan); now refused like process()
    rc, out = child("""
        from tickwire.engine.instruments import Instrument
        from tickwire.engine.pipeline import Engine
        from tickwire.feeds import synthetic
        ev = synthetic.l2_updates(20000)
        insts = [Instrument(0, "X", tick_size="0.01", lot_size="1")]
        seen, calls, holder = [], [], {}
        def rule(ctx):
            if "e" in holder:
                calls.append(1)
                try:
                    holder["e"].__init__(insts, rules=[], signal_capacity=1)
                except RuntimeError as exc:
                    seen.append(str(exc))
            return 1.0
        rules = [rule] + [(lambda ctx: -1.0) for _ in range(3)]
        ref = Engine(insts, rules, signal_capacity=4, clock="event")
        ref.process(ev)
        want = ref.take_signals()
        e = Engine(insts, rules, signal_capacity=4, clock="event")
        holder["e"] = e
        n = e.process(ev)
        got = e.take_signals()
        print(n, len(seen), len(calls), e.events_processed, len(want), (got == want).all(), seen[0])
        """)
    assert rc == 0, out
    n, refused, called, processed, want = (int(x) for x in out.split()[:5])
    assert n > 0 and refused == called > 0 and processed == 20000 and n == want, out
    assert out.split()[5] == "True", out
    assert "Engine.__init__: the engine is processing a batch" in out


def test_a_book_used_by_a_second_thread_during_a_batch_is_refused_not_corrupted():
    rc, out = child("""
        import threading
        from tickwire.ext import L2Book
        from tickwire.feeds import synthetic
        ev = synthetic.l2_updates(400000, depth=3000)
        b = L2Book(0, window=256)
        refused, done = [0], threading.Event()
        def other():
            while not done.is_set():
                # (a short batch keeps the GIL and marks nothing busy: the main thread's long ones
                # are never starved of the book)
                for call in (lambda: b.__init__(0, window=256), lambda: b.apply(ev[:10]), b.clear,
                             lambda: b.levels(0), lambda: b.best_bid_qty):
                    try:
                        call()
                    except RuntimeError:
                        refused[0] += 1
        t = threading.Thread(target=other, daemon=True)
        t.start()
        applied = 0
        try:
            # (3 batches, and more until the other thread has been refused once: on a loaded
            # machine it may not run at all during the first ones)
            while applied < 3 or (refused[0] == 0 and applied < 200):
                try:
                    b.apply(ev)
                    applied += 1
                except RuntimeError:
                    refused[0] += 1
        finally:
            done.set()
            t.join()
        print(refused[0], b.level_count(0) == len(b.levels(0)), b.level_count(1) == len(b.levels(1)))
        """)
    assert rc == 0, out
    refused, bid_ok, ask_ok = out.split()[:3]
    assert int(refused) > 0 and bid_ok == "True" and ask_ok == "True", out


def test_closing_a_ring_another_thread_waits_in_is_refused():
    rc, out = child("""
        import os, threading, time
        from tickwire.ext import EVENT_DTYPE
        from tickwire.ext.ring import Ring
        name = f"tw-misuse-{os.getpid()}"
        prod = Ring.create(name, EVENT_DTYPE, 16, "blocking")
        cons = Ring.attach(name, EVENT_DTYPE)
        t = threading.Thread(target=lambda: cons.pop(timeout=1.0))
        t.start()
        time.sleep(0.2)
        try:
            cons.close()
            print("closed")
        except RuntimeError as exc:
            print("refused:", exc)
        t.join()
        cons.close(); prod.close()
        print("after:", cons.closed)
        """)
    assert rc == 0 and "refused: Ring.close: another thread" in out and "after: True" in out, out


def test_a_blocking_consumer_never_reads_past_its_ring_whatever_the_segment_says():
    rc, out = child("""
        import mmap, os, struct
        from tickwire.ext import EVENT_DTYPE, empty_events
        from tickwire.ext.ring import Ring
        name = f"tw-badhead-{os.getpid()}"
        prod = Ring.create(name, EVENT_DTYPE, 16, "blocking")
        cons = Ring.attach(name, EVENT_DTYPE)
        prod.push_many(empty_events(3))
        with open("/dev/shm/" + name, "r+b") as f:
            m = mmap.mmap(f.fileno(), 4096)
            m[128:136] = struct.pack("<Q", 1 << 40)      # head, as only the producer should write it
        out = empty_events(1 << 16)
        print(len(cons), cons.pop_many(out, timeout=0), cons.pop_many(out, timeout=0))
        m.close(); cons.close(); prod.close()
        """)
    assert rc == 0, out
    size, first, second = (int(x) for x in out.split()[:3])
    assert size <= 16 and first <= 16 and second <= 16, out


# -- arguments ----------------------------------------------------------------------------------

def test_bookset_lookup_does_not_wrap_the_instrument_id():
    s = BookSet([L2Book(0), L2Book(3)])
    assert s[3].instrument == 3
    for bad in (2**32, 2**32 + 3, -1):
        assert bad not in s
        with pytest.raises(KeyError, match=f"instrument id {bad}"):
            s[bad]


@pytest.mark.parametrize("call, match", [
    (lambda: __import__("tickwire.ext.stats", fromlist=["x"]).RollingWindow(2**61), "2\\*\\*32"),
    (lambda: __import__("tickwire.ext.stats", fromlist=["x"]).SumWindow(2**61), "2\\*\\*32"),
    (lambda: __import__("tickwire.ext.stats", fromlist=["x"]).RollingWindow(2**62 + 1, "time"), "2\\*\\*62"),
    (lambda: __import__("tickwire.ext.stats", fromlist=["x"]).RollingWindow(10, "time", max_capacity=2**63 - 1),
     "max_capacity"),
    (lambda: __import__("tickwire.ext.stats", fromlist=["x"]).SumWindow(10, "time", max_capacity=0), "max_capacity"),
    (lambda: __import__("tickwire.engine.pipeline", fromlist=["x"]).StatsConfig(window_size=2**61), "window_size"),
    (lambda: __import__("tickwire.engine.pipeline", fromlist=["x"]).StatsConfig(max_capacity=2**40), "max_capacity"),
])
def test_statistics_windows_past_what_memory_or_int64_holds_are_refused(call, match):
    # a count window of 2**61 wrapped its allocation's size (a write past the end); 2**62 + 1
    # looped for ever rounding up to a power of two
    with pytest.raises(ValueError, match=match):
        call()


def test_wire_message_types_and_receive_timeouts_out_of_range_are_refused():
    from tickwire.ext import codec

    for bad in (256, 257, -1, -255):
        with pytest.raises(ValueError, match="msg_type"):
            codec.encode(bad, 0, 1, epoch=1)
    rc, out = child("""
        import zmq
        from tickwire.ext import empty_events
        from tickwire.ext.codec import FeedReceiver
        ctx = zmq.Context()
        s = ctx.socket(zmq.SUB)
        s.bind("inproc://x")
        rx = FeedReceiver([s], max_events=64)
        try:
            rx.drain(empty_events(64), timeout=float("nan"))
        except ValueError as exc:
            print("refused:", exc)
        """, timeout=20)
    assert rc == 0 and "refused: drain: timeout" in out, out


def test_counts_past_int64_and_fractional_sequence_numbers_are_refused():
    from tickwire.ext.hdr import Recorder

    r = Recorder()
    r.record(1000, 2**62)
    with pytest.raises(ValueError, match="past 2\\*\\*63 - 1"):        # the total wrapped negative
        r.record(1000, 2**62)
    with pytest.raises(ValueError, match="count must be >= 0"):
        r.record(1000, -5)
    assert r.total == 2**62 and r.value_at_percentile(50) >= 999
    b = L2Book()
    b.set(Side.BID, 100, 1)
    with pytest.raises(TypeError, match="seq"):                         # it was truncated to 1
        b.snapshot_events(seq=1.5)
    assert b.snapshot_events(seq=7, ts=-3)["seq"].tolist() == [7, 7, 7]


# -- the bench harness's C loops: output arrays, start and rings checked before the loop --------

def test_harness_loops_check_their_arrays_start_and_rings():
    # consume wrote all five output arrays up to len(out_seq) (a shorter one past its end), a
    # negative start before them, and cast a non-Ring in rings unchecked; publish and
    # subscribe had the same length pattern
    rc, out = child("""
        import os
        import numpy as np
        from tickwire.ext import SIGNAL_DTYPE, harness
        from tickwire.ext.ring import Ring
        nm = f"twt-harness-{os.getpid()}"
        p = Ring.create(nm, SIGNAL_DTYPE, 64, "blocking")
        c = Ring.attach(nm)
        sig = np.zeros(8, SIGNAL_DTYPE); sig["seq"] = np.arange(1, 9)
        p.push_many(sig)
        until = harness.now_ns() + 200_000_000
        def outs(short=None):
            a = [np.zeros(8, np.uint64), np.zeros(8, np.uint32)] + [np.zeros(8, np.int64) for _ in range(3)]
            if short is not None:
                a[short] = a[short][:1].copy()
            return a
        def attempt(f):
            try:
                f()
            except (ValueError, TypeError) as exc:
                print(type(exc).__name__, exc)
            else:
                print("accepted")
        try:
            for k in range(1, 5):
                attempt(lambda: harness.consume([c], until, *outs(k), idle_ns=0))
            attempt(lambda: harness.consume([c], until, *outs(), start=-3, idle_ns=0))
            attempt(lambda: harness.consume([c, "not a ring"], until, *outs(), idle_ns=0))
            q = [np.zeros(8, np.uint64), np.zeros(8, np.uint16), np.zeros(8, np.int64), np.zeros(2, np.int64)]
            attempt(lambda: harness.subscribe(None, until, *q))
            q[3] = np.zeros(8, np.int64)
            attempt(lambda: harness.subscribe(None, until, *q, start=-1))
            sched = harness.Schedule(np.zeros(64, np.uint8), np.array([0, 64], np.int64),
                                     np.zeros(1, np.uint16), until, 1000.0)
            attempt(lambda: sched.publish(None, until, np.zeros(8, np.uint16), np.zeros(8, np.uint64),
                                          np.zeros(8, np.uint32), np.zeros(8, np.int64), np.zeros(3, np.int64)))
            print("intact", harness.consume([c], until, *outs(), idle_ns=0))
        finally:
            c.close(); p.close()
        """)
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[:4] == [f"ValueError {name} has 1 slots, fewer than the 8 of out_seq: the output arrays are "
                         "written at the same indices"
                         for name in ("out_inst", "out_recv_ts", "out_signal_ts", "out_receipt")], out
    assert lines[4] == "ValueError start must be >= 0, got -3", out
    assert lines[5] == "TypeError rings[1] must be a Ring, got str", out
    assert lines[6].startswith("ValueError out_recv has 2 slots, fewer than the 8 of out_seq"), out
    assert lines[7] == "ValueError start must be >= 0, got -1", out
    assert lines[8].startswith("ValueError out_sent has 3 slots, fewer than the 8 of out_chan"), out
    assert lines[9] == "intact 8", out


# -- event arrays the C code reads as tw_event: 8-byte aligned or refused ------------------------

def test_a_misaligned_event_array_is_refused_naming_the_copy():
    # a C-contiguous EVENT_DTYPE array at an odd address (np.frombuffer at offset 1) was read
    # as tw_event in place (UBSan: misaligned access)
    import numpy as np
    from tickwire.engine.instruments import Instrument
    from tickwire.engine.pipeline import Engine
    from tickwire.ext import EVENT_DTYPE
    from tickwire.ext.merge import seq_in_order

    raw = bytearray(64 * 9 + 1)
    mis = np.frombuffer(raw, np.uint8)[1:1 + 64 * 8].view(EVENT_DTYPE)
    mis["kind"] = 1
    mis["side"] = [0, 1] * 4
    mis["price"] = np.arange(100, 108)
    mis["qty"] = 5
    assert mis.ctypes.data % 8 and mis.flags.c_contiguous
    fixed = np.require(mis, requirements="CA")
    engine = Engine([Instrument(0, "X", tick_size="0.01", lot_size="1")], [])
    for call in (lambda a: L2Book(0).apply(a), lambda a: L3Book(0).apply(a),
                 lambda a: BookSet([L2Book(0)]).apply(a), lambda a: engine.process(a)):
        with pytest.raises(ValueError, match=r"events is not 8-byte aligned \(address % 8 == 1\).*"
                                             r"np.require\(events, requirements='CA'\)"):
            call(mis)
        call(fixed)
    assert L2Book(0).apply(mis[:0]) == 0                  # nothing read: nothing to refuse
    top = np.frombuffer(bytearray(8 * 4 * 8 + 1), np.uint8)[1:].view(np.int64).reshape(8, 4)
    with pytest.raises(ValueError, match=r"top is not 8-byte aligned .*np.require\(top"):
        BookSet([L2Book(0)]).apply_top(fixed, top)
    raw_bytes = np.frombuffer(bytearray(64 * 3 + 1), np.uint8)[1:]
    with pytest.raises(ValueError, match=r"raw is not 8-byte aligned .*np.require\(raw"):
        seq_in_order(raw_bytes, np.ones(1, np.uint64), np.ones(1, np.uint8))
    assert seq_in_order(np.zeros(0, np.uint8), np.ones(1, np.uint64), np.ones(1, np.uint8))


def test_a_misaligned_drain_buffer_is_refused(tmp_path):
    import numpy as np
    from tickwire.ext import EVENT_DTYPE
    from test_feed_handler import Harness

    hs = Harness(tmp_path)
    try:
        rx, buf = hs.h.receiver, hs.h._buf
        mis = np.frombuffer(bytearray(buf.nbytes + 1), np.uint8)[1:].view(EVENT_DTYPE)
        with pytest.raises(ValueError, match=r"out is not 8-byte aligned .*np.require\(out"):
            rx.drain(mis, 0)
        assert rx.drain(buf, 0) == 0
    finally:
        hs.close()


# -- None where a compiled object is expected, and /dev/shm too small --------------------------

@pytest.mark.parametrize("call", [
    "from tickwire.ext.hdr import Recorder; Recorder().add(None)",
    "from tickwire.engine.pipeline import Engine; from tickwire.feeds.synthetic import synthetic_instruments; "
    "Engine(synthetic_instruments(1), []).push_signals(None)",
    "from tickwire.ext import harness; harness.ring_paced(None, 0, 1, 1)",
])
def test_none_for_a_compiled_argument_is_a_type_error_not_a_crash(call):
    # an adversarial pass: typed arguments without `not None` read through a None (a segfault,
    # and ring_paced a hang)
    rc, out = child(f"try:\n    {call}\nexcept TypeError as e:\n    print('refused:', e)\n", timeout=60)
    assert rc == 0 and "refused:" in out and "NoneType" in out, (rc, out[-2000:])


@pytest.mark.skipif(sys.platform != "linux", reason="Linux mount namespaces")
def test_a_ring_larger_than_the_free_shared_memory_is_an_error_not_a_sigbus():
    """An adversarial pass: in a container's 64 MB /dev/shm, `Ring.create(..., 1 << 20)` of
    events (64 MiB) was made, and the first push past the space died of SIGBUS. The pages are now
    reserved at creation: an OSError (no space) there, and the process lives."""
    import shutil

    code = ("from tickwire.ext import EVENT_DTYPE\nfrom tickwire.ext.ring import Ring\n"
            "try:\n    Ring.create('tw-misuse-big', EVENT_DTYPE, 1 << 20)\nexcept OSError as e:\n"
            "    print('refused:', e.errno)\nelse:\n    print('made')\n"
            "r = Ring.create('tw-misuse-small', EVENT_DTYPE, 1 << 10)\nprint('small ok', r.capacity)\n")
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1)")
    p = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=8m tmpfs /dev/shm && exec {PY} -c "
                        f"\"$0\"", code], capture_output=True, text=True, timeout=120)
    if p.returncode != 0 and ("Operation not permitted" in p.stderr or "mount:" in p.stderr):
        pytest.skip(f"cannot mount a private /dev/shm here: {p.stderr.strip()[:200]}")
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr[-2000:])
    assert "refused: 28" in p.stdout and "small ok 1024" in p.stdout, p.stdout


def test_a_strided_events_array_is_named_with_the_way_out():
    # an adversarial pass: numpy's bare "ndarray is not C-contiguous" from Book.apply,
    # BookSet.apply and Engine.process, naming neither the argument nor the fix
    import numpy as np

    from tickwire.engine.pipeline import Engine
    from tickwire.ext import EVENT_DTYPE
    from tickwire.feeds.synthetic import synthetic_instruments

    ev = np.zeros(10, EVENT_DTYPE)
    book = L2Book(0)
    for call in (lambda: book.apply(ev[::2]), lambda: BookSet([L2Book(1)]).apply(ev[::2]),
                 lambda: Engine(synthetic_instruments(1), []).process(ev[::2])):
        with pytest.raises(ValueError, match=r"^events: .*np\.ascontiguousarray\(events\)"):
            call()
    with pytest.raises(ValueError, match="status must be a writable, C-contiguous numpy uint8 array"):
        book.apply(ev[:4], status=np.zeros(8, np.uint8)[::2])


def test_apply_top_names_in_sync_not_status():
    # an adversarial pass: a too short in_sync was reported as "status holds 2 entries"
    import numpy as np

    from tickwire.ext import EVENT_DTYPE

    ev = np.zeros(4, EVENT_DTYPE)
    with pytest.raises(ValueError, match=r"^in_sync holds 2 entries, the batch has 4 events"):
        BookSet([L2Book(0)]).apply_top(ev, np.zeros((4, 4), np.int64), in_sync=np.zeros(2, np.uint8))


# -- threads and a Python rule's engine: an adversarial pass crashed the interpreter each way ----

def test_a_snapshot_read_while_another_thread_applies_is_whole_or_refused():
    # snapshot_events counted the levels, allocated (which lets another thread run: a batch
    # started then, without the GIL) and wrote one event per level it then found, past the
    # array: a segfault or a heap abort within seconds, every run
    rc, out = child("""
        import threading, time
        import numpy as np
        from tickwire.ext import EVENT_DTYPE, L2Book, L3Book
        rng = np.random.default_rng(0)
        def batch(n):
            ev = np.zeros(n, EVENT_DTYPE); ev["kind"] = 1; ev["side"] = rng.integers(0, 2, n)
            ev["price"] = rng.integers(10**6, 10**6 + 200000, n); ev["qty"] = rng.integers(0, 3, n)
            return ev
        book = L2Book(0)
        book.apply(batch(100000))
        pre = [batch(4096) for _ in range(50)]
        got, refused, bad, done = [0], [0], [0], threading.Event()
        def reader():
            while not done.is_set():
                try:
                    snap = book.snapshot_events()
                except RuntimeError:
                    refused[0] += 1
                    continue
                got[0] += 1
                copy = L2Book(0)            # a snapshot another book applies to become equal
                copy.apply(snap)
                adds = int((snap["kind"] == 1).sum())
                bad[0] += copy.level_count(0) + copy.level_count(1) != adds or not copy.in_sync
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        end, k = time.monotonic() + 3, 0
        try:
            while time.monotonic() < end:
                try:
                    book.apply(pre[k % 50])
                except RuntimeError:
                    refused[0] += 1
                k += 1
                if k % 4 == 0:
                    time.sleep(0)           # (the reader gets the GIL between batches too)
        finally:
            done.set(); t.join()
        print(got[0], refused[0], bad[0])
        """)
    assert rc == 0, (rc, out[-2000:])
    got, refused, bad = (int(x) for x in out.split()[:3])
    assert got > 0 and bad == 0, out


def test_an_engine_with_python_rules_lends_its_books_to_other_threads_to_read_not_to_change():
    # with a Python rule the engine kept the GIL but marked its books free: a rule letting other
    # threads run (sleep, I/O, logging) let one apply a batch to them mid-batch (a segfault)
    rc, out = child("""
        import sys, threading, time
        from tickwire.engine.instruments import Instrument
        from tickwire.engine.pipeline import Engine
        from tickwire.feeds import synthetic
        sys.setswitchinterval(1e-5)         # (each sleep(0) hands the GIL over: 5 ms a time by default)
        ev = synthetic.l2_updates(40000, depth=2000)
        insts = [Instrument(0, "X", tick_size="0.01", lot_size="0.00000001")]
        seen = {"read": 0, "change refused": 0, "changed": 0}
        def rule(ctx):
            time.sleep(0)                   # other threads run here
            if ctx.book.best_bid is not None:
                seen["read"] += 1
            try:
                ctx.book.set(0, 1, 1)
                seen["changed"] += 1
            except RuntimeError as exc:
                seen["change refused"] += 1
                seen["why"] = str(exc)
            return None
        eng = Engine(insts, [rule])
        out = {"applied": 0, "refused": 0, "snapshots": 0}
        done = threading.Event()
        def other():
            while not done.is_set():
                try:
                    eng.books.apply(ev[:2000])
                    out["applied"] += 1
                except RuntimeError:
                    out["refused"] += 1
                try:
                    eng.book(0).snapshot_events()
                    out["snapshots"] += 1
                except RuntimeError:
                    pass
        t = threading.Thread(target=other, daemon=True)
        t.start()
        n = 0
        try:
            for k in range(0, len(ev), 4000):
                while True:
                    try:                    # (refused while the other thread's batch applies)
                        n += eng.process(ev[k:k + 4000])
                        break
                    except RuntimeError:
                        time.sleep(0)
        finally:
            done.set(); t.join()
        print(n, out["refused"], out["snapshots"], seen["read"], seen["change refused"], seen["changed"],
              "|", seen.get("why"))
        """, timeout=300)
    assert rc == 0, (rc, out[-2000:])
    n, refused, snapshots, read, change_refused, changed = (int(x) for x in out.split()[:6])
    assert refused > 0 and snapshots > 0 and read > 0 and change_refused > 0 and changed == 0, out
    assert "engine batch with Python rules; a rule may read the book, not change it" in out


def test_set_timing_from_a_rule_and_a_second_init_are_refused_and_an_unbuilt_engine_says_so():
    rc, out = child("""
        from tickwire.engine.instruments import Instrument
        from tickwire.engine.pipeline import Engine, StatsConfig
        from tickwire.feeds import synthetic
        insts = [Instrument(0, "X", tick_size="0.01", lot_size="0.00000001")]
        holder, seen = {}, []
        def rule(ctx):
            try:
                holder["e"].set_timing(0)   # the batch then recorded into freed recorders
            except RuntimeError as exc:
                seen.append(str(exc))
        e = holder["e"] = Engine(insts, [rule], timing_every=1)
        e.process(synthetic.l2_updates(1000))
        print("timing refused", len(seen), seen[0])
        try:   # a second __init__ replaced the books before failing: a segfault at the next batch
            e.__init__([Instrument(5, "Y", tick_size="0.01", lot_size="1")], stats_by_instrument={9: StatsConfig()})
        except RuntimeError as exc:
            print("reinit refused", exc)
        e.process(synthetic.l2_updates(100))
        print("still works", e.events_processed)
        try:
            Engine.__new__(Engine).process(synthetic.l2_updates(100))
        except RuntimeError as exc:
            print("unbuilt refused", exc)
        """)
    assert rc == 0, (rc, out[-2000:])
    assert "timing refused 1000 Engine.set_timing: the engine is processing a batch" in out, out
    assert "reinit refused Engine.__init__: this engine is already built" in out, out
    assert "still works 1100" in out and "unbuilt refused Engine.process: this engine was never built" in out, out


def test_a_short_batch_to_an_engines_books_from_its_python_rule_is_refused_too():
    # (a review: BookSet.apply/apply_top of fewer than 64 events skipped the busy check and
    # changed the engine's books mid-batch)
    import numpy as np

    from tickwire.engine.instruments import Instrument
    from tickwire.engine.pipeline import Engine
    from tickwire.feeds import synthetic

    ev = synthetic.l2_updates(300)
    insts = [Instrument(0, "X", tick_size="0.01", lot_size="0.00000001")]
    seen = {"changed": 0, "refused": 0}
    holder = {}

    def rule(ctx):
        for call in (lambda: holder["e"].books.apply(ev[:10]),
                     lambda: holder["e"].books.apply_top(ev[:10], np.zeros((10, 4), np.int64))):
            try:
                call()
                seen["changed"] += 1
            except RuntimeError:
                seen["refused"] += 1

    e = holder["e"] = Engine(insts, [rule])
    ref = Engine(insts)
    e.process(ev)
    ref.process(ev)
    assert seen["changed"] == 0 and seen["refused"] > 0
    assert e.book(0).state() == ref.book(0).state()
    e.books.apply(ev[:10])                       # between batches: allowed again


def test_a_python_rule_given_to_two_engines_sees_the_running_engines_book():
    from tickwire.engine.instruments import Instrument
    from tickwire.engine.pipeline import Engine
    from tickwire.ext.pipeline import PyRule
    from tickwire.feeds import synthetic

    insts = [Instrument(0, "X", tick_size="0.01", lot_size="0.00000001")]
    seen = []
    rule = PyRule(lambda ctx: seen.append(ctx.book.best_bid))
    e1 = Engine(insts, [rule])
    e2 = Engine(insts, [rule])                  # built last: the rule pointed at its (empty) book
    e1.process(synthetic.l2_updates(500))
    assert seen[-1] is not None and seen[-1] == e1.book(0).best_bid
    # a batch of the other engine nested in one of e1's (from another rule): e1's rule sees e1's
    # book again after it (a review: it kept the other's)
    nested = []
    seen.clear()

    def trigger(ctx):
        if not nested:
            nested.append(e2.process(synthetic.l2_updates(3)))

    e4 = Engine(insts, [trigger, rule])
    e4.process(synthetic.l2_updates(400))
    assert nested and seen[-1] == e4.book(0).best_bid and e4.book(0).best_bid != e2.book(0).best_bid


def test_ring_helpers_on_a_closed_handle_are_refused_not_a_crash():
    rc, out = child("""
        import os
        import numpy as np
        from tickwire.ext.ring import Ring
        name = f"tw-misuse-closed-{os.getpid()}"
        r = Ring.create(name, np.int64, 64)
        c = Ring.attach(name, role="consumer")
        for h in (c, r):
            h.close()
            for call in (lambda: h._taken_over(), lambda: h._start("oldest"), lambda: h._claim(1, False)):
                try:
                    call()
                except ValueError as exc:
                    print("refused:", exc)
        """)
    assert rc == 0, (rc, out[-2000:])
    assert out.count("refused:") == 6 and "is closed" in out, out


def test_wrong_kinds_of_engine_and_recorder_arguments_name_what_was_wrong():
    from tickwire.engine.instruments import Instrument
    from tickwire.engine.pipeline import Engine
    from tickwire.ext.hdr import Recorder

    inst = Instrument(0, "X", tick_size="0.01", lot_size="1")
    with pytest.raises(TypeError, match="stats must be a StatsConfig, got str"):
        Engine([inst], stats="x")
    with pytest.raises(TypeError, match=r"stats_by_instrument\[0\] must be a StatsConfig, got str"):
        Engine([inst], stats_by_instrument={0: "x"})
    with pytest.raises(TypeError, match=r"instruments\[0\] must be an Instrument, got int"):
        Engine([0])
    with pytest.raises(ValueError, match=r"channels names unknown instrument ids \[9\]"):
        Engine([inst], channels={9: 1})             # (ignored: the typo left instrument 0 unchecked)
    rec = Recorder()
    rec.record(5)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="unit_ratio must be a positive finite number"):
            rec.hgrm(bad)
    assert "Percentile" in rec.hgrm(1)
    books = Engine([inst]).books
    assert "a" not in books and 1.5 not in books and 0 in books and 1 not in books
