"""Shared-memory rings in one process: lifecycle, header checks, both policies against a model,
peek/advance, errors, and the C API from a user's own Cython module.

Cross-process behaviour (10**7 records, SIGKILL, lapping between processes) is in
test_ring_procs.py.
"""

import collections
import os
import textwrap
import uuid

import numpy as np
import pytest

from cython_build import build_module
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tickwire.ext import EVENT_DTYPE, empty_events
from tickwire.ext import ring as ring_mod
from tickwire.ext.ring import Ring, RingBusy, RingError
from budget import examples

SMALL = np.dtype([("seq", "<u8"), ("value", "<i4"), ("tag", "u1"), ("_pad", "V3")])


def unique(prefix="twt"):
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def name():
    n = unique()
    yield n
    ring_mod.remove(n)


def events(start, n):
    ev = empty_events(n)
    seq = np.arange(start, start + n, dtype=np.uint64)
    ev["seq"] = seq
    ev["price"] = (seq * 7).astype(np.int64)
    ev["qty"] = (seq ^ 0x5A5A).astype(np.int64)
    ev["instrument"] = (seq % 13).astype(np.uint32)
    return ev


def small(start, n):
    a = np.zeros(n, SMALL)
    a["seq"] = np.arange(start, start + n, dtype=np.uint64)
    a["value"] = (a["seq"] * 3 % 100000).astype(np.int32)
    a["tag"] = (a["seq"] % 251).astype(np.uint8)
    return a


# ---------------------------------------------------------------------------------------------
# lifecycle
# ---------------------------------------------------------------------------------------------

def test_create_push_pop_roundtrip(name):
    with Ring.create(name, EVENT_DTYPE, 16) as prod, Ring.attach(name, EVENT_DTYPE) as cons:
        ev = events(100, 5)
        assert prod.push(ev[0])
        assert prod.push_many(ev[1:]) == 4
        assert len(cons) == 5 and len(prod) == 5
        rec = cons.pop()
        assert isinstance(rec, np.void) and rec.dtype == EVENT_DTYPE
        assert rec.tobytes() == ev[0].tobytes()
        out = empty_events(10)
        assert cons.pop_many(out) == 4
        assert out[:4].tobytes() == ev[1:].tobytes()
        assert cons.pop(timeout=0) is None
        assert len(cons) == 0
        assert prod.head == 5 and cons.tail == 5


def test_popped_record_is_a_copy(name):
    with Ring.create(name, SMALL, 4) as prod, Ring.attach(name, SMALL) as cons:
        prod.push_many(small(0, 4))
        first = cons.pop()
        prod.push_many(small(100, 1))                 # reuses the slot first came from
        cons.pop_many(np.zeros(4, SMALL))
        assert first["seq"] == 0


def test_segment_is_0600_whatever_the_umask(name):
    old = os.umask(0)
    try:
        with Ring.create(name, EVENT_DTYPE, 8):
            st_mode = os.stat(f"/dev/shm/{name}").st_mode
    finally:
        os.umask(old)
    assert st_mode & 0o777 == 0o600


def test_creator_unlinks_on_close_and_attached_handles_keep_working(name):
    prod = Ring.create(name, SMALL, 8)
    cons = Ring.attach(name, SMALL)
    prod.push_many(small(0, 3))
    prod.close()
    assert not os.path.exists(f"/dev/shm/{name}")
    assert prod.closed
    out = np.zeros(8, SMALL)
    assert cons.pop_many(out) == 3 and out["seq"][:3].tolist() == [0, 1, 2]
    assert cons.eof and cons.producer_closed
    assert cons.pop_many(out, timeout=None) == 0          # end of stream: returns at once
    cons.close()
    with pytest.raises(FileNotFoundError):
        Ring.attach(name, SMALL)


def test_attached_consumer_close_does_not_unlink(name):
    with Ring.create(name, SMALL, 8):
        Ring.attach(name, SMALL).close()
        assert os.path.exists(f"/dev/shm/{name}")


def test_create_refuses_an_existing_name_unless_replace(name):
    with Ring.create(name, SMALL, 8) as first:
        first.push_many(small(0, 2))
        with pytest.raises(FileExistsError, match="already exists"):
            Ring.create(name, SMALL, 8)
        second = Ring.create(name, SMALL, 8, replace=True)
        with Ring.attach(name, SMALL) as cons:
            assert len(cons) == 0                         # the new segment
        second.close()


def test_dtype_rebuilt_from_the_header(name):
    nested = np.dtype([("t", "<i8"), ("xy", "<f4", (3,)), ("name", "S5"), ("flag", "?")])
    for i, dt in enumerate([EVENT_DTYPE, np.dtype("<f8"), nested, SMALL]):
        n = f"{name}-{i}"
        with Ring.create(n, dt, 4) as prod, Ring.attach(n) as cons:
            assert cons.dtype == dt and cons.record_size == dt.itemsize
            rec = np.zeros(1, dt)
            prod.push(rec[0])
            assert cons.pop().tobytes() == rec[0].tobytes()


def test_context_manager_and_closed_errors(name):
    with Ring.create(name, SMALL, 4) as r:
        pass
    assert r.closed
    with pytest.raises(ValueError, match="closed"):
        r.push(small(0, 1)[0])
    with pytest.raises(ValueError, match="closed"):
        len(r)
    r.close()                                             # idempotent


def test_handles_do_not_pickle(name):
    import pickle
    with Ring.create(name, SMALL, 4) as r:
        with pytest.raises(TypeError, match="attach"):
            pickle.dumps(r)


# ---------------------------------------------------------------------------------------------
# header checks and bad input
# ---------------------------------------------------------------------------------------------

def test_attach_with_wrong_record_size_names_the_field(name):
    with Ring.create(name, EVENT_DTYPE, 8):
        with pytest.raises(ValueError, match=r"record size differs: the ring holds 64-byte records, "
                                             r"dtype int32 has 4 bytes"):
            Ring.attach(name, np.int32)


def test_attach_with_wrong_dtype_of_the_same_size(name):
    other = np.dtype([(f"f{i}", "<i8") for i in range(8)])
    with Ring.create(name, EVENT_DTYPE, 8):
        with pytest.raises(ValueError, match="dtype differs"):
            Ring.attach(name, other)


def test_attach_with_wrong_capacity_or_policy(name):
    with Ring.create(name, SMALL, 8, "blocking"):
        with pytest.raises(ValueError, match="capacity differs: the ring holds 8 records, expected 16"):
            Ring.attach(name, SMALL, capacity=16)
        with pytest.raises(ValueError, match="policy differs"):
            Ring.attach(name, SMALL, policy="broadcast")
        Ring.attach(name, SMALL, capacity=8, policy="blocking").close()


def test_attach_to_something_that_is_not_a_ring(name):
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_RDWR, 0o600)
    os.write(fd, b"\x01" * 8192)
    os.close(fd)
    with pytest.raises(ValueError, match="not a tickwire ring"):
        Ring.attach(name, wait=0.01)


def test_attach_to_a_segment_smaller_than_a_header(name):
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_RDWR, 0o600)
    os.write(fd, b"\x00" * 100)
    os.close(fd)
    with pytest.raises(ValueError, match="not a tickwire ring"):
        Ring.attach(name, wait=0.01)


def test_attach_refuses_a_segment_others_could_write(name):
    """A ring with group or other permission bits (someone chmod-ed it, or made it by hand) is
    refused before anything is mapped: another user could have written the records in it."""
    with Ring.create(name, SMALL, 8) as r:
        r.push(np.zeros(1, SMALL)[0])
        os.chmod(f"/dev/shm/{name}", 0o644)
        with pytest.raises(PermissionError, match=r"mode 0644.*refusing to attach"):
            Ring.attach(name, SMALL)
        os.chmod(f"/dev/shm/{name}", 0o600)
        Ring.attach(name, SMALL).close()                     # its own again: attaches


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a segment to another user (chown) needs root")
def test_attach_refuses_another_users_ring(name):
    """A squatter's ring (here: a segment given to `nobody`, as if that user had created it
    first under the daemon's ring name) is refused, whatever records it holds."""
    with Ring.create(name, SMALL, 8) as r:
        r.push(np.zeros(1, SMALL)[0])
        os.chown(f"/dev/shm/{name}", 65534, 65534)
        with pytest.raises(PermissionError, match=r"uid 65534's, not yours"):
            Ring.attach(name, SMALL)


def test_attach_checks_the_layout_version(name):
    with Ring.create(name, SMALL, 8):
        fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
        os.pwrite(fd, (99).to_bytes(4, "little"), 8)
        os.close(fd)
        with pytest.raises(ValueError, match="layout version 99"):
            Ring.attach(name, SMALL)


def test_attach_checks_a_damaged_header(name):
    with Ring.create(name, SMALL, 8):
        fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
        os.pwrite(fd, b"[('a', <garbage", 384)
        os.close(fd)
        with pytest.raises(ValueError, match="damaged header: unreadable dtype description"):
            Ring.attach(name, SMALL)
        fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
        os.pwrite(fd, (1 << 62).to_bytes(8, "little"), 24)          # capacity
        os.close(fd)
        with pytest.raises(ValueError, match="damaged header"):
            Ring.attach(name, SMALL)


def _forge(name, **fields):
    """Overwrite header fields of ring ``name`` in place (offsets of tw_ring_hdr in tw_ring.h);
    ``descr`` rewrites the dtype description and its length."""
    offsets = {"record_size": 16, "capacity": 24, "data_offset": 32, "seq_offset": 40}
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
    try:
        for field, value in fields.items():
            if field == "descr":
                os.pwrite(fd, len(value).to_bytes(4, "little"), 68)
                os.pwrite(fd, value, 384)
            else:
                os.pwrite(fd, (value % (1 << 64)).to_bytes(8, "little"), offsets[field])
    finally:
        os.close(fd)


def test_attach_refuses_a_size_check_that_wraps(name):
    """capacity 2**40 x record_size 2**24 is 0 mod 2**64: an 8 KiB segment must not pass as
    2**40 records of 16 MiB (pop then copied 16 MiB out of a 4 KiB data area)."""
    big = np.dtype(("V", 1 << 24))
    with Ring.create(name, SMALL, 8):
        _forge(name, record_size=1 << 24, capacity=1 << 40,
               descr=repr(np.lib.format.dtype_to_descr(big)).encode())
        with pytest.raises(ValueError, match=r"damaged header \(segment of"):
            Ring.attach(name)
        _forge(name, record_size=1 << 30, capacity=1 << 34,
               descr=repr(np.lib.format.dtype_to_descr(np.dtype(("V", 1 << 30)))).encode())
        with pytest.raises(ValueError, match=r"damaged header \(segment of"):
            Ring.attach(name)


@pytest.mark.parametrize("seq_offset", [-16, -8, 8, 4096 + 8, 8192 - 8])
def test_attach_refuses_a_broadcast_seq_offset_outside_the_segment(name, seq_offset):
    """seq_offset 2**64 - 8 * capacity made seq_offset + capacity * 8 wrap to 0: the sequence
    words pointed before the mapping.  Inside the header or the data area, or running past the
    end, is refused too."""
    with Ring.create(name, np.dtype("<i8"), 2, "broadcast") as prod:
        assert prod.segment_size == 8192
        _forge(name, seq_offset=seq_offset)
        with pytest.raises(ValueError, match=r"damaged header \(segment of"):
            Ring.attach(name)


def test_attach_missing(name):
    with pytest.raises(FileNotFoundError, match="no ring named"):
        Ring.attach(name)


@pytest.mark.parametrize("bad, match", [
    ("x" * 201, "too long"),
    ("a/b", "bad ring name"),
    ("", "bad ring name"),
    ("..", "bad ring name"),
    ("sp ace", "bad ring name"),
])
def test_bad_names(bad, match):
    with pytest.raises(ValueError, match=match):
        Ring.create(bad, SMALL, 8)


def test_bad_create_arguments(name):
    with pytest.raises(ValueError, match="power of two >= 2, got 100 \\(try 128\\)"):
        Ring.create(name, SMALL, 100)
    with pytest.raises(ValueError, match="power of two"):
        Ring.create(name, SMALL, 1)
    with pytest.raises(ValueError, match="policy"):
        Ring.create(name, SMALL, 8, "lossy")
    with pytest.raises(ValueError, match="Python objects"):
        Ring.create(name, np.dtype([("a", "O")]), 8)
    with pytest.raises(ValueError, match="role"):
        Ring.create(name, SMALL, 8, role="consumer")
    assert not ring_mod.exists(name)


def test_wrong_records_are_refused_clearly(name):
    with Ring.create(name, EVENT_DTYPE, 8) as prod, Ring.attach(name, EVENT_DTYPE) as cons:
        with pytest.raises(ValueError, match="does not match the ring's record dtype"):
            prod.push(small(0, 1)[0])
        with pytest.raises(ValueError, match="does not match the ring's record dtype"):
            prod.push_many(small(0, 3))
        with pytest.raises(TypeError, match="numpy array"):
            prod.push_many([1, 2, 3])
        with pytest.raises(ValueError, match="64 bytes, got 3"):
            prod.push(b"abc")
        with pytest.raises(ValueError, match="use push_many"):
            prod.push(events(0, 2))
        assert prod.push(bytes(64)) and prod.push(events(0, 1))
        with pytest.raises(ValueError, match="does not match"):
            cons.pop_many(np.zeros(4, SMALL))
        with pytest.raises(ValueError, match="writable C-contiguous"):
            cons.pop_many(empty_events(8)[::2])
        ro = empty_events(4)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="writable C-contiguous"):
            cons.pop_many(ro)
        with pytest.raises(RingError, match="needs a producer"):
            cons.push(bytes(64))
        with pytest.raises(RingError, match="needs a consumer"):
            prod.pop()
        with pytest.raises(ValueError, match="timeout"):
            cons.pop(timeout=-1)
        assert len(cons) == 2


def test_push_accepts_tuples_and_converts(name):
    with Ring.create(name, SMALL, 8) as prod, Ring.attach(name, SMALL) as cons:
        assert prod.push((7, -3, 9, b"\x00\x00\x00"))
        rec = cons.pop()
        assert (int(rec["seq"]), int(rec["value"]), int(rec["tag"])) == (7, -3, 9)
        with pytest.raises(TypeError, match="cannot make a record"):
            prod.push(object())


def test_equal_but_distinct_dtype_objects_are_accepted(name):
    copy = np.dtype(SMALL.descr)
    assert copy == SMALL and copy is not SMALL
    with Ring.create(name, SMALL, 8) as prod, Ring.attach(name, copy) as cons:
        a = np.zeros(2, copy)
        a["seq"] = [5, 6]
        prod.push(a[0])
        prod.push_many(a[1:])
        out = np.zeros(2, SMALL)
        assert cons.pop_many(out) == 2 and out["seq"].tolist() == [5, 6]


# ---------------------------------------------------------------------------------------------
# blocking policy
# ---------------------------------------------------------------------------------------------

def test_blocking_full_ring_reports_full(name):
    with Ring.create(name, SMALL, 8) as prod, Ring.attach(name, SMALL) as cons:
        assert prod.push_many(small(0, 5)) == 5
        assert prod.free == 3
        assert prod.push_many(small(5, 10), timeout=0) == 3
        assert not prod.push(small(99, 1)[0], timeout=0)
        assert not prod.push(small(99, 1)[0], timeout=0.01)
        assert prod.push_many(small(8, 4), timeout=0.01) == 0
        out = np.zeros(3, SMALL)
        assert cons.pop_many(out) == 3
        assert prod.push_many(small(8, 4), timeout=0) == 3
        got = np.zeros(16, SMALL)
        assert cons.pop_many(got) == 8
        assert got["seq"][:8].tolist() == [3, 4, 5, 6, 7, 8, 9, 10]


def test_peek_advance_rewind(name):
    with Ring.create(name, SMALL, 8) as prod, Ring.attach(name, SMALL) as cons:
        prod.push_many(small(0, 6))
        out = np.zeros(4, SMALL)
        assert cons.peek_many(out) == 4 and out["seq"].tolist() == [0, 1, 2, 3]
        assert cons.pending == 4 and cons.tail == 0 and len(prod) == 6
        assert cons.peek_many(out) == 2 and out["seq"][:2].tolist() == [4, 5]
        assert cons.pending == 6
        with pytest.raises(RingError, match="peeked and not committed"):
            cons.pop()
        with pytest.raises(ValueError, match="only 6 records"):
            cons.advance(7)
        assert cons.advance(2) == 2
        assert cons.tail == 2 and cons.pending == 4 and prod.free == 4
        cons.rewind()
        assert cons.pending == 0 and cons.position == 2
        assert cons.peek_many(out) == 4 and out["seq"].tolist() == [2, 3, 4, 5]
        assert cons.advance() == 4
        assert cons.tail == 6 and len(prod) == 0
        assert cons.peek_many(out, timeout=0) == 0


def test_uncommitted_records_go_to_the_next_consumer(name):
    with Ring.create(name, SMALL, 8) as prod:
        prod.push_many(small(0, 5))
        first = Ring.attach(name, SMALL)
        out = np.zeros(3, SMALL)
        first.pop_many(out[:1])                          # committed: record 0
        first.peek_many(out)                             # 1, 2, 3 read, not committed
        first.close()
        with Ring.attach(name, SMALL) as second:
            got = np.zeros(8, SMALL)
            assert second.pop_many(got) == 4
            assert got["seq"][:4].tolist() == [1, 2, 3, 4]


def test_one_live_consumer_per_blocking_ring_and_takeover(name):
    with Ring.create(name, SMALL, 8) as prod:
        prod.push_many(small(0, 4))
        first = Ring.attach(name, SMALL)
        assert first.consumer_pid == os.getpid() and first.consumer_alive
        with pytest.raises(RingBusy, match=f"live consumer \\(pid {os.getpid()}\\)"):
            Ring.attach(name, SMALL)
        out = np.zeros(2, SMALL)
        first.peek_many(out)
        second = Ring.attach(name, SMALL, takeover=True)
        with pytest.raises(RingError, match="taken over"):
            first.advance()
        got = np.zeros(8, SMALL)
        assert second.pop_many(got) == 4 and got["seq"][:4].tolist() == [0, 1, 2, 3]
        first.close()                                    # does not release the second's claim
        assert second.consumer_pid == os.getpid()
        with pytest.raises(RingBusy):
            Ring.attach(name, SMALL)
        second.close()
        Ring.attach(name, SMALL).close()


def test_a_consumer_taken_over_reads_nothing_more(name):
    """Found by an adversarial pass: a consumer taken over could still peek, and got the slots
    its successor had consumed and the producer had written again (records 16..23 labelled as
    positions 0..7, torn if written during the copy); only its advance failed."""
    with Ring.create(name, SMALL, 8) as prod:
        prod.push_many(small(0, 8))
        first = Ring.attach(name, SMALL)
        second = Ring.attach(name, SMALL, takeover=True)
        got = np.zeros(8, SMALL)
        assert second.pop_many(got) == 8
        prod.push_many(small(16, 8))
        with pytest.raises(RingError, match="taken over"):
            first.peek_many(np.zeros(8, SMALL), timeout=0)
        with pytest.raises(RingError, match="taken over"):
            first.pop_many(np.zeros(8, SMALL), timeout=0)
        assert second.pop_many(got) == 8 and got["seq"].tolist() == list(range(16, 24))
        first.close()
        second.close()


def test_rewind_is_refused_on_a_broadcast_consumer(name):
    """Found by an adversarial pass: rewind() on a broadcast consumer moved its cursor to 0:
    the next pop gave records again and counted the wrong number missed."""
    with Ring.create(name, SMALL, 8, policy="broadcast") as prod:
        c = Ring.attach(name, SMALL, start="oldest")
        prod.push_many(small(0, 5))
        assert c.pop_many(np.zeros(8, SMALL)) == 5
        with pytest.raises(RingError, match="blocking policy"):
            c.rewind()
        assert c.position == 5
        c.close()


def test_a_forked_child_that_exits_leaves_its_parent_s_ring_alone(name):
    """Found by an adversarial pass: a child of os.fork() that closed (or dropped) its copies
    of the handles, as a normal exit does, unlinked its parent's segment, marked the end of
    its stream and gave up both sides' claims."""
    import gc

    with Ring.create(name, SMALL, 8) as prod:
        cons = Ring.attach(name, SMALL)
        prod.push_many(small(0, 3))
        pid = os.fork()
        if pid == 0:                                        # the child: its copies go, then it exits
            try:
                cons.close()
                del prod
                gc.collect()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0
        assert os.path.exists(f"/dev/shm/{name}")
        assert not prod.producer_closed and prod.producer_pid == os.getpid() and cons.consumer_pid == os.getpid()
        prod.push_many(small(3, 2))
        got = np.zeros(8, SMALL)
        assert cons.pop_many(got, timeout=0) == 5 and got["seq"][:5].tolist() == [0, 1, 2, 3, 4]
        cons.close()


def test_one_producer(name):
    with Ring.create(name, SMALL, 8, role="none") as owner:
        with pytest.raises(RingError, match="needs a producer"):
            owner.push(small(0, 1)[0])
        p1 = Ring.attach(name, SMALL, role="producer")
        assert p1.producer_pid == os.getpid()
        with pytest.raises(RingBusy, match="live producer"):
            Ring.attach(name, SMALL, role="producer")
        p1.push_many(small(0, 3))
        p1.close()                                       # end of stream ...
        assert owner.producer_closed
        p2 = Ring.attach(name, SMALL, role="producer")   # ... until a new producer attaches
        assert not owner.producer_closed
        assert p2.position == 3
        p2.push_many(small(3, 2))
        with Ring.attach(name, SMALL) as cons:
            out = np.zeros(8, SMALL)
            assert cons.pop_many(out) == 5 and out["seq"][:5].tolist() == [0, 1, 2, 3, 4]
        p2.close()


# ---------------------------------------------------------------------------------------------
# broadcast policy
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("forged", ["behind", "far_ahead"])
def test_a_head_no_producer_wrote_gives_nothing_again_and_loses_nothing(name, forged):
    """Found by an adversarial pass: a blocking ring's head set back (to 3, with 16 read) gave 5
    records the consumer had already read, ran its position past anything published, and the
    producer then wrote over records no one had read; a head of 2**64 - 1 did the same. A producer's
    head never falls behind what was read nor passes the tail by more than the capacity: a head
    that does is read as no data, and once the real head is back everything arrives once."""
    import mmap
    import struct

    with Ring.create(name, np.int64, 8) as prod, Ring.attach(name, np.int64) as cons:
        out = np.zeros(8, np.int64)
        for start in (0, 8):
            prod.push_many(np.arange(start, start + 8, dtype=np.int64), timeout=0)
            assert cons.pop_many(out, timeout=0) == 8 and out.tolist() == list(range(start, start + 8))
        prod.push_many(np.arange(16, 19, dtype=np.int64), timeout=0)
        fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
        mm = mmap.mmap(fd, 0)
        os.close(fd)
        try:
            real = struct.unpack_from("<Q", mm, 128)[0]
            assert real == 19
            struct.pack_into("<Q", mm, 128, 3 if forged == "behind" else 2**64 - 1)
            assert cons.pop_many(out, timeout=0) == 0 and cons.position == 16 and len(cons) == 0
            assert prod.free == 5                              # (the tail did not move)
            struct.pack_into("<Q", mm, 128, real)
        finally:
            mm.close()
        assert cons.pop_many(out, timeout=0) == 3 and out[:3].tolist() == [16, 17, 18]


def test_a_consumer_taken_over_is_told_even_when_the_producer_ran_far_past_it(name):
    """Found by a review of the test above's fix: a consumer taken over whose successor had
    consumed more than the capacity past its committed position waited for ever in pop (the
    head looked like no producer's) instead of being told it was taken over."""
    with Ring.create(name, np.int64, 8) as prod:
        old = Ring.attach(name, np.int64)
        new = Ring.attach(name, np.int64, takeover=True)
        out = np.zeros(8, np.int64)
        for start in (0, 8):
            prod.push_many(np.arange(start, start + 8, dtype=np.int64), timeout=0)
            assert new.pop_many(out, timeout=0) == 8
        prod.push_many(np.arange(16, 19, dtype=np.int64), timeout=0)
        with pytest.raises(RingError, match="taken over"):
            old.pop(timeout=1.0)
        old.close()
        new.close()


def test_broadcast_lapped_consumer_gets_the_exact_missed_count(name):
    with Ring.create(name, SMALL, 16, "broadcast") as prod:
        cons = Ring.attach(name, SMALL, start="oldest")
        other = Ring.attach(name, SMALL, start="oldest")
        prod.push_many(small(0, 100))                    # never waits
        out = np.zeros(64, SMALL)
        n = cons.pop_many(out)
        assert n == 16 and cons.missed == 84 and cons.last_missed == 84
        assert out["seq"][:16].tolist() == list(range(84, 100))
        assert cons.pop_many(out, timeout=0) == 0 and cons.last_missed == 0
        rec = other.pop()                                # the other consumer has its own cursor
        assert rec["seq"] == 84 and other.missed == 84
        cons.close()
        other.close()


def test_broadcast_start_positions(name):
    with Ring.create(name, SMALL, 8, "broadcast") as prod:
        prod.push_many(small(0, 5))
        newest = Ring.attach(name, SMALL)
        oldest = Ring.attach(name, SMALL, start="oldest")
        nxt = Ring.attach(name, SMALL, start="next")
        prod.push_many(small(5, 1))
        out = np.zeros(8, SMALL)
        assert newest.pop_many(out) == 2 and out["seq"][:2].tolist() == [4, 5]
        assert oldest.pop_many(out) == 6 and out["seq"][:6].tolist() == [0, 1, 2, 3, 4, 5]
        assert nxt.pop_many(out) == 1 and out["seq"][0] == 5
        assert newest.missed == oldest.missed == nxt.missed == 0
        for r in (newest, oldest, nxt):
            r.close()


def test_broadcast_has_no_peek(name):
    with Ring.create(name, SMALL, 8, "broadcast"), Ring.attach(name, SMALL) as cons:
        with pytest.raises(RingError, match="blocking policy"):
            cons.peek_many(np.zeros(2, SMALL))
        with pytest.raises(RingError, match="blocking policy"):
            cons.advance(1)


def test_broadcast_many_consumers_need_no_consumer_state(name):
    with Ring.create(name, SMALL, 8, "broadcast") as prod:
        consumers = [Ring.attach(name, SMALL, start="next") for _ in range(5)]
        assert prod.consumer_pid == 0
        prod.push_many(small(0, 3))
        for c in consumers:
            out = np.zeros(4, SMALL)
            assert c.pop_many(out) == 3
            c.close()


# ---------------------------------------------------------------------------------------------
# Hypothesis: random batch sizes and wraparound against a model
# ---------------------------------------------------------------------------------------------

class BlockingRingMachine(RuleBasedStateMachine):
    """A blocking ring against a deque: random pushes, pops, peeks, advances, rewinds."""

    @initialize(cap_bits=st.integers(1, 6))
    def setup(self, cap_bits):
        self.name = unique("twh")
        self.cap = 1 << cap_bits
        self.prod = Ring.create(self.name, SMALL, self.cap)
        self.cons = Ring.attach(self.name, SMALL)
        self.ring = collections.deque()           # committed-not-consumed, in order
        self.read = 0                             # how many of those were peeked
        self.next_seq = 0

    def teardown(self):
        if hasattr(self, "prod"):
            self.cons.close()
            self.prod.close()

    @rule(n=st.integers(0, 150))
    def push_many(self, n):
        batch = small(self.next_seq, n)
        fits = min(n, self.cap - len(self.ring))
        assert self.prod.push_many(batch, timeout=0) == fits
        self.ring.extend(range(self.next_seq, self.next_seq + fits))
        self.next_seq += fits

    @rule()
    def push_one(self):
        ok = self.prod.push(small(self.next_seq, 1)[0], timeout=0)
        assert ok == (len(self.ring) < self.cap)
        if ok:
            self.ring.append(self.next_seq)
            self.next_seq += 1

    @precondition(lambda self: self.read == 0)
    @rule(n=st.integers(0, 150))
    def pop_many(self, n):
        out = np.zeros(n, SMALL)
        k = self.cons.pop_many(out, timeout=0)
        want = [self.ring.popleft() for _ in range(min(n, len(self.ring)))]
        assert k == len(want)
        assert out["seq"][:k].tolist() == want
        assert (out[:k] == small(want[0], k)).all() if k else True

    @precondition(lambda self: self.read == 0)
    @rule()
    def pop_one(self):
        rec = self.cons.pop(timeout=0)
        if not self.ring:
            assert rec is None
        else:
            assert rec["seq"] == self.ring.popleft()

    @rule(n=st.integers(1, 70))
    def peek_many(self, n):
        out = np.zeros(n, SMALL)
        k = self.cons.peek_many(out, timeout=0)
        avail = list(self.ring)[self.read:]
        assert k == min(n, len(avail))
        assert out["seq"][:k].tolist() == avail[:k]
        self.read += k

    @rule(data=st.data())
    def advance(self, data):
        n = data.draw(st.integers(0, self.read))
        assert self.cons.advance(n) == n
        for _ in range(n):
            self.ring.popleft()
        self.read -= n

    @rule()
    def rewind(self):
        self.cons.rewind()
        self.read = 0

    @invariant()
    def sizes(self):
        if hasattr(self, "prod"):
            assert len(self.prod) == len(self.ring)
            assert self.cons.pending == self.read
            assert self.prod.free == self.cap - len(self.ring)


BlockingRingMachine.TestCase.settings = settings(
    max_examples=examples(60), stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestBlockingRing = BlockingRingMachine.TestCase


class BroadcastRingMachine(RuleBasedStateMachine):
    """A broadcast ring with two consumers against a model of what each must get or miss."""

    @initialize(cap_bits=st.integers(1, 6))
    def setup(self, cap_bits):
        self.name = unique("twh")
        self.cap = 1 << cap_bits
        self.prod = Ring.create(self.name, SMALL, self.cap, "broadcast")
        self.cons = [Ring.attach(self.name, SMALL, start="oldest") for _ in range(2)]
        self.head = 0
        self.pos = [0, 0]
        self.missed = [0, 0]

    def teardown(self):
        if hasattr(self, "prod"):
            for c in self.cons:
                c.close()
            self.prod.close()

    @rule(n=st.integers(0, 200))
    def push_many(self, n):
        assert self.prod.push_many(small(self.head, n)) == n
        self.head += n

    @rule()
    def push_one(self):
        assert self.prod.push(small(self.head, 1)[0])
        self.head += 1

    @rule(which=st.integers(0, 1), n=st.integers(0, 100))
    def pop_many(self, which, n):
        out = np.zeros(n, SMALL)
        k = self.cons[which].pop_many(out, timeout=0)
        lost = 0
        pos = self.pos[which]
        if n and self.head - pos > self.cap:
            lost = self.head - self.cap - pos
            pos = self.head - self.cap
        want = list(range(pos, min(self.head, pos + n))) if n else []
        assert self.cons[which].last_missed == lost
        assert k == len(want)
        assert out["seq"][:k].tolist() == want
        assert (out[:k] == small(pos, k)).all()
        self.pos[which] = pos + k
        self.missed[which] += lost

    @rule(which=st.integers(0, 1))
    def pop_one(self, which):
        rec = self.cons[which].pop(timeout=0)
        pos = self.pos[which]
        if pos == self.head:
            assert rec is None
            return
        lost = max(0, self.head - self.cap - pos)
        pos += lost
        assert rec["seq"] == pos
        self.pos[which] = pos + 1
        self.missed[which] += lost

    @invariant()
    def counts(self):
        if hasattr(self, "prod"):
            for c, m, p in zip(self.cons, self.missed, self.pos):
                assert c.missed == m
                assert c.position == p
                assert len(c) == min(self.head - p, self.cap)


BroadcastRingMachine.TestCase.settings = settings(
    max_examples=examples(60), stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestBroadcastRing = BroadcastRingMachine.TestCase


# ---------------------------------------------------------------------------------------------
# the C API from a user's Cython module
# ---------------------------------------------------------------------------------------------

DOWNSTREAM = textwrap.dedent('''
    # cython: language_level=3
    from libc.stdint cimport uint64_t
    from libc.string cimport memset
    from tickwire.ext.defs cimport tw_event
    from tickwire.ext.ring cimport (Ring, tw_ring, tw_ring_claim, tw_ring_written, tw_ring_publish,
                                    tw_ring_push, tw_ring_push_n, tw_ring_pop_n, tw_ring_write,
                                    tw_ring_wait_readable)

    def engine_batch(Ring ring, long n):
        """What an engine worker does: fill records in place, one release store per batch."""
        cdef tw_ring *r = &ring.c
        cdef tw_event *ev
        cdef tw_event one
        cdef long i, written = 0
        memset(&one, 0, sizeof(one))
        with nogil:
            for i in range(n):
                ev = <tw_event *>tw_ring_claim(r)
                if ev == NULL:
                    break
                memset(ev, 0, sizeof(tw_event))
                ev.seq = i
                ev.price = 1000 + i
                tw_ring_written(r)
                written += 1
            tw_ring_publish(r)
            one.seq = 999
            written += tw_ring_push(r, &one)
        return written

    def drain(Ring ring, long n):
        cdef tw_ring *r = &ring.c
        cdef tw_event buf[16]
        cdef long got = 0, k, j
        cdef uint64_t total = 0
        with nogil:
            while got < n:
                k = tw_ring_pop_n(r, buf, 16)
                if k <= 0:
                    if tw_ring_wait_readable(r, 0) != 1:
                        break
                    continue
                for j in range(k):
                    total += buf[j].seq
                got += k
        return got, total
''')



def test_user_cython_module_pushes_through_the_pxd(tmp_path, name):
    downstream_ring = build_module(tmp_path, "downstream_ring", DOWNSTREAM)
    with Ring.create(name, EVENT_DTYPE, 64) as prod, Ring.attach(name, EVENT_DTYPE) as cons:
        assert downstream_ring.engine_batch(prod, 100) == 64       # 64 fit; the extra push finds it full
        out = empty_events(64)
        assert cons.pop_many(out) == 64
        assert out["seq"].tolist() == list(range(64))
        assert (out["price"] == 1000 + np.arange(64)).all()
        assert downstream_ring.engine_batch(prod, 10) == 11
        assert downstream_ring.drain(cons, 100) == (11, sum(range(10)) + 999)
