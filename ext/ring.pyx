"""Single-producer rings of fixed-size records in POSIX shared memory.

Ticks and signals leave the engine through these rings without a syscall per record.  A ring
holds records of one numpy dtype (the canonical event, a signal record, any fixed-size dtype)
in a segment under ``/dev/shm`` that other processes attach to by name.  Two policies:

- ``"blocking"``: one producer, one consumer, nothing lost: a full ring makes the producer wait
  (or report full).  The consumer reads without consuming (:meth:`Ring.peek_many`) and commits
  (:meth:`Ring.advance`), so a consumer killed between the two leaves the records to its
  successor.
- ``"broadcast"``: one producer that never waits, any number of consumers, each with its own
  cursor in its own process; a consumer that falls a whole ring behind is told exactly how many
  records it missed.

``ring.pxd`` is the C API (nogil push/pop for the engine); ``docs/rings.md`` describes the
segment layout, the memory ordering and the lifecycle rules.
"""

from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE,
                             PyBUF_C_CONTIGUOUS)
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.errno cimport ENOENT, EEXIST, EACCES, EPERM
from libc.stdint cimport int64_t, uint64_t, int32_t, uint32_t, INT64_MAX
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memmove, memset, strerror
from posix.unistd cimport getpid

import ast
import os
import re
import time

import numpy as np

__all__ = ["Ring", "RingError", "RingBusy", "remove", "exists", "BLOCKING", "BROADCAST"]

#: Policy names, as accepted by :meth:`Ring.create`.
BLOCKING = "blocking"
BROADCAST = "broadcast"
_POLICIES = {BLOCKING: TW_RING_BLOCKING, BROADCAST: TW_RING_BROADCAST}
_POLICY_NAMES = {TW_RING_BLOCKING: BLOCKING, TW_RING_BROADCAST: BROADCAST}
_ROLES = {"none": TW_ROLE_NONE, "producer": TW_ROLE_PRODUCER, "consumer": TW_ROLE_CONSUMER}
_ROLE_NAMES = {v: k for k, v in _ROLES.items()}

#: Segment layout version this build reads and writes.
VERSION = TW_RING_VERSION
#: Bytes before the first record (the header page).
HEADER_SIZE = TW_RING_HEADER_SIZE
#: Longest dtype description the header holds.
DESCR_MAX = TW_RING_DESCR_MAX
#: Default spin before a waiter sleeps on the futex (ns).
DEFAULT_SPIN_NS = 50_000
#: Longest ring name (POSIX allows 255; this leaves room for prefixes).
NAME_MAX = 200
#: Largest segment (bytes) a ring may have.
MAX_SEGMENT = 1 << 40

cdef enum:
    _MAX_SLEEP_NS = 1000000000      # a sleeper re-checks at least once a second
    _SLICE_NS = 100000000           # Python waits release the GIL in slices, checking signals
    _NOGIL_BYTES = 16384            # copies at least this big release the GIL

_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")


class RingError(RuntimeError):
    """A ring operation that cannot proceed: ownership taken over, records not committed."""


class RingBusy(RingError):
    """The ring already has a live producer (or, for the blocking policy, a live consumer)."""


# ---------------------------------------------------------------------------------------------
# numpy scalars without numpy's headers: setup.py does not put them on the include path, so
# the one C-API function needed (PyArray_Scalar, slot 60 of numpy's frozen API table) is taken
# from numpy's C-API capsule, as numpy's own import_array() does; the data pointer of a void
# scalar is the first field of PyVoidScalarObject (numpy/arrayscalars.h, numpy 1.x and 2.x).
# Both are checked at import against numpy's own answers; on any doubt the slower path is used.
# ---------------------------------------------------------------------------------------------

cdef extern from *:
    """
    typedef PyObject *(*tw_np_scalar_fn)(void *, PyObject *, PyObject *);
    static tw_np_scalar_fn tw_np_scalar = NULL;
    static void tw_np_set_scalar(void *fn) { tw_np_scalar = (tw_np_scalar_fn)fn; }
    static PyObject *tw_np_make_scalar(const char *data, PyObject *descr) {
        return tw_np_scalar((void *)data, descr, NULL);
    }
    typedef struct { PyObject_VAR_HEAD char *obval; PyObject *descr; } tw_np_void;
    static const char *tw_np_void_data(PyObject *o) { return ((tw_np_void *)o)->obval; }
    static PyObject *tw_np_void_descr(PyObject *o) { return ((tw_np_void *)o)->descr; }
    """
    object tw_np_make_scalar(const char *data, object descr)
    void tw_np_set_scalar(void *fn)
    const char *tw_np_void_data(PyObject *o)
    PyObject *tw_np_void_descr(PyObject *o)

cdef bint _fast_scalars = False
_np_void = np.void


def _setup_fast_scalars():
    """Look up PyArray_Scalar and check both shortcuts against numpy; True when usable."""
    global _fast_scalars
    cdef void **api
    cdef bytes raw = bytes(range(1, 25))
    try:
        try:
            from numpy._core import _multiarray_umath as mu
        except ImportError:                                    # numpy 1.x
            from numpy.core import _multiarray_umath as mu
        api = <void **>PyCapsule_GetPointer(mu._ARRAY_API, NULL)
        tw_np_set_scalar(api[60])
        dt = np.dtype([("a", "<i8"), ("b", "<u4"), ("c", "u1"), ("d", "V11")])
        want = np.frombuffer(raw, dt)[0]
        got = tw_np_make_scalar(raw, dt)
        ok = type(got) is np.void and got.dtype == dt and got.tobytes() == raw and got == want
        ok = ok and tw_np_void_descr(<PyObject *>got) == <PyObject *>got.dtype
        ok = ok and tw_np_void_data(<PyObject *>want)[0] == 1 and tw_np_void_data(<PyObject *>want)[23] == 24
        f = tw_np_make_scalar(b"\x00\x00\x00\x00\x00\x00\xf8\x3f", np.dtype("<f8"))
        ok = ok and type(f) is np.float64 and f == 1.5
        _fast_scalars = bool(ok)
    except Exception:                                          # any doubt: the slow path
        _fast_scalars = False
    return _fast_scalars


#: Whether pop() builds numpy scalars through numpy's C API (True) or np.frombuffer (fallback).
FAST_SCALARS = _setup_fast_scalars()


# ---------------------------------------------------------------------------------------------
# The C API (see ring.pxd for the contracts)
# ---------------------------------------------------------------------------------------------

cdef void tw_ring_wake(uint32_t *waiting, uint32_t *futex) noexcept nogil:
    # The waiter's flag is cleared by the waker only, so a flag set by a second waiter is never lost.
    if tw_xchg32(waiting, 0):
        tw_fetch_add32(futex, 1)
        tw_futex_wake_all(futex)


cdef inline void _copy_in(tw_ring *r, uint64_t pos, const char *src, uint64_t k) noexcept nogil:
    # Records pos..pos+k-1 into their slots: at most two memcpy (the wrap).
    cdef uint64_t i = pos & r.mask
    cdef uint64_t first = r.capacity - i
    if first > k:
        first = k
    memcpy(r.data + i * r.rsize, src, first * r.rsize)
    if k > first:
        memcpy(r.data, src + first * r.rsize, (k - first) * r.rsize)


cdef inline void _copy_out(const tw_ring *r, uint64_t pos, char *dst, uint64_t k) noexcept nogil:
    # Slots of records pos..pos+k-1 into dst: at most two memcpy.
    cdef uint64_t i = pos & r.mask
    cdef uint64_t first = r.capacity - i
    if first > k:
        first = k
    memcpy(dst, r.data + i * r.rsize, first * r.rsize)
    if k > first:
        memcpy(dst + first * r.rsize, r.data, (k - first) * r.rsize)


cdef void _bc_write(tw_ring *r, const char *src, uint64_t k) noexcept nogil:
    # Broadcast batch (k <= capacity): mark every slot odd, one fence, one bulk copy, one
    # fence, mark them even: the seqlock per slot at the cost of two plain stores per record.
    cdef uint64_t pos = r.wpos, j
    for j in range(k):
        tw_store_rlx64(&r.seq[(pos + j) & r.mask], 2 * (pos + j) + 1)
    tw_fence_rel()
    _copy_in(r, pos, src, k)
    tw_fence_rel()
    for j in range(k):
        tw_store_rlx64(&r.seq[(pos + j) & r.mask], 2 * (pos + j) + 2)
    r.wpos = pos + k


cdef Py_ssize_t tw_ring_push_n(tw_ring *r, const void *recs, Py_ssize_t n) noexcept nogil:
    cdef const char *src = <const char *>recs
    cdef uint64_t k, room, done = 0
    if n <= 0:
        return 0
    if r.policy == TW_RING_BLOCKING:
        room = r.capacity - (r.wpos - r.tail_cache)
        if room < <uint64_t>n:
            r.tail_cache = tw_load_acq64(&r.hdr.tail)
            room = r.capacity - (r.wpos - r.tail_cache)
        k = room if room < <uint64_t>n else <uint64_t>n
        if k:
            _copy_in(r, r.wpos, src, k)
            r.wpos += k
            tw_ring_publish(r)
        return <Py_ssize_t>k
    while done < <uint64_t>n:
        k = <uint64_t>n - done
        if k > r.capacity:
            k = r.capacity
        _bc_write(r, src + done * r.rsize, k)
        done += k
        tw_ring_publish(r)
    return n


cdef inline bint _has_room(tw_ring *r, uint64_t n) noexcept nogil:
    if r.capacity - (r.wpos - r.tail_cache) >= n:
        return True
    r.tail_cache = tw_load_acq64(&r.hdr.tail)
    return r.capacity - (r.wpos - r.tail_cache) >= n


cdef Py_ssize_t tw_ring_free(tw_ring *r) noexcept nogil:
    if r.policy == TW_RING_BROADCAST:
        return <Py_ssize_t>r.capacity
    r.tail_cache = tw_load_acq64(&r.hdr.tail)
    return <Py_ssize_t>(r.capacity - (r.wpos - r.tail_cache))


cdef inline int64_t _deadline(int64_t now, int64_t timeout_ns) noexcept nogil:
    if timeout_ns < 0 or timeout_ns > INT64_MAX - now:
        return INT64_MAX
    return now + timeout_ns


cdef int tw_ring_wait_writable(tw_ring *r, Py_ssize_t n, int64_t timeout_ns) noexcept nogil:
    cdef int64_t now, deadline, spin_end, left
    cdef uint32_t epoch
    cdef uint64_t need
    cdef int i
    if r.policy == TW_RING_BROADCAST:
        return 1
    need = <uint64_t>n if n > 0 else 1
    if need > r.capacity:
        need = r.capacity
    tw_ring_publish(r)                     # the consumer can only free what it can see
    if _has_room(r, need):
        return 1
    if timeout_ns == 0:
        return 0
    now = tw_mono_ns()
    deadline = _deadline(now, timeout_ns)
    spin_end = _deadline(now, r.spin_ns)
    if spin_end > deadline:
        spin_end = deadline
    while now < spin_end:
        for i in range(64):
            tw_cpu_relax()
            if _has_room(r, need):
                return 1
        now = tw_mono_ns()
    while True:
        epoch = tw_load_acq32(&r.hdr.prod_futex)
        tw_store_seq32(&r.hdr.prod_waiting, 1)
        tw_fence_seq()                     # waiting-word store before the tail load
        if _has_room(r, need):
            return 1
        now = tw_mono_ns()
        if now >= deadline:
            return 0
        left = deadline - now
        if left > _MAX_SLEEP_NS:
            left = _MAX_SLEEP_NS
        tw_futex_wait(&r.hdr.prod_futex, epoch, left)


cdef inline bint _owner(tw_ring *r) noexcept nogil:
    """This handle is still the ring's consumer (not taken over)."""
    return tw_load_acq64(&r.hdr.consumer_owner) == r.owner


cdef inline bint _has_data(tw_ring *r) noexcept nogil:
    if r.rpos < r.head_cache:
        return True
    r.head_cache = tw_load_acq64(&r.hdr.head)
    if r.policy != TW_RING_BROADCAST and r.head_cache - r.committed > r.capacity and _owner(r):
        r.head_cache = r.rpos              # a head no producer wrote (see tw_ring_peek): nothing to read
    return r.rpos < r.head_cache


cdef Py_ssize_t tw_ring_available(tw_ring *r) noexcept nogil:
    cdef uint64_t n
    r.head_cache = tw_load_acq64(&r.hdr.head)
    n = r.head_cache - r.rpos
    if r.policy != TW_RING_BROADCAST and (<int64_t>n < 0 or r.head_cache - r.committed > r.capacity):
        r.head_cache = r.rpos              # (a head behind what was read, or too far ahead: no producer wrote it)
        return 0
    if n > r.capacity:                     # (broadcast: lapped; blocking: a head no producer wrote)
        n = r.capacity
    return <Py_ssize_t>n


cdef inline int _eof_or(tw_ring *r, int otherwise) noexcept nogil:
    # closed is stored after the producer's last publish: re-check data after seeing it
    if tw_load_acq32(&r.hdr.closed):
        return 1 if _has_data(r) else TW_WAIT_EOF
    return otherwise


cdef int tw_ring_wait_readable(tw_ring *r, int64_t timeout_ns) noexcept nogil:
    cdef int64_t now, deadline, spin_end, left
    cdef uint32_t epoch
    cdef int i, st
    if _has_data(r):
        return 1
    st = _eof_or(r, 0)
    if st != 0 or timeout_ns == 0:
        return st
    now = tw_mono_ns()
    deadline = _deadline(now, timeout_ns)
    spin_end = _deadline(now, r.spin_ns)
    if spin_end > deadline:
        spin_end = deadline
    while now < spin_end:
        for i in range(64):
            tw_cpu_relax()
            if _has_data(r):
                return 1
        now = tw_mono_ns()
    while True:
        epoch = tw_load_acq32(&r.hdr.cons_futex)
        tw_store_seq32(&r.hdr.cons_waiting, 1)
        tw_fence_seq()                     # waiting-word store before the head load
        if _has_data(r):
            return 1
        st = _eof_or(r, 0)
        if st != 0:
            return st
        now = tw_mono_ns()
        if now >= deadline:
            return 0
        left = deadline - now
        if left > _MAX_SLEEP_NS:
            left = _MAX_SLEEP_NS
        tw_futex_wait(&r.hdr.cons_futex, epoch, left)


cdef Py_ssize_t _bc_read(tw_ring *r, char *dst, Py_ssize_t n) noexcept nogil:
    # Broadcast read with lap detection: every position passed is either copied out or counted
    # in last_missed, so delivered + missed always equals how far the cursor moved.
    cdef uint64_t h, p, k, j, lost = 0
    cdef Py_ssize_t got = 0
    if n <= 0:
        r.last_missed = 0
        return 0
    while True:
        h = r.head_cache
        if h - r.rpos < <uint64_t>n:             # (also when rpos == h) the cache may be stale
            h = tw_load_acq64(&r.hdr.head)
            r.head_cache = h
            if r.rpos >= h:
                break
        if h - r.rpos > r.capacity:        # lapped: the oldest of these are gone for sure
            lost += h - r.capacity - r.rpos
            r.rpos = h - r.capacity
        p = r.rpos
        k = h - p
        if k > <uint64_t>n:
            k = <uint64_t>n
        _copy_out(r, p, dst, k)
        tw_fence_acq()                     # the copy before the sequence checks
        j = 0
        while j < k and tw_load_rlx64(&r.seq[(p + j) & r.mask]) != 2 * (p + j) + 2:
            j += 1                         # overwritten while (or before) we copied
        r.rpos = p + k
        if j == 0:
            got = <Py_ssize_t>k
            break
        lost += j
        if j < k:
            memmove(dst, dst + j * r.rsize, (k - j) * r.rsize)
            got = <Py_ssize_t>(k - j)
            break
        r.head_cache = tw_load_acq64(&r.hdr.head)   # all of it was overwritten: start over
    r.last_missed = lost
    r.missed += lost
    return got


cdef Py_ssize_t tw_ring_peek(tw_ring *r, void *out, Py_ssize_t n) noexcept nogil:
    cdef uint64_t k
    if r.policy == TW_RING_BROADCAST:
        return _bc_read(r, <char *>out, n)
    if n <= 0:
        return 0
    if not _owner(r):
        # taken over: the successor consumed on and the producer wrote over those slots (they
        # were copied, labelled as this handle's positions, and torn while written: a review)
        return TW_ADVANCE_NOT_OWNER
    k = r.head_cache - r.rpos
    if k < <uint64_t>n:
        r.head_cache = tw_load_acq64(&r.hdr.head)
        k = r.head_cache - r.rpos
        if <int64_t>k < 0:
            # a head behind what was read: written by something other than the producer (its
            # head only grows); read nothing (it gave consumed records again and ran the
            # consumer past anything published, and the producer then wrote over unread ones)
            r.head_cache = r.rpos
            return 0
    if k > <uint64_t>n:
        k = <uint64_t>n
    if r.head_cache - r.committed > r.capacity:
        if _owner(r):
            # more than the ring can hold past the committed position: the segment's head was
            # written by something other than its producer (whose head never passes the tail by
            # more than the capacity); read nothing rather than records read before
            r.head_cache = r.rpos
            return 0
        # taken over (a successor consumed on): never copy past the ring's records; the
        # advance after this read fails and says so
        if k > r.capacity - (r.rpos - r.committed):
            k = r.capacity - (r.rpos - r.committed)
    if k:
        _copy_out(r, r.rpos, <char *>out, k)
        r.rpos += k
    return <Py_ssize_t>k


cdef int tw_ring_advance(tw_ring *r, Py_ssize_t n) noexcept nogil:
    if n < 0 or <uint64_t>n > r.rpos - r.committed:
        return TW_ADVANCE_TOO_MANY
    if n == 0:
        return 0
    if tw_load_acq64(&r.hdr.consumer_owner) != r.owner:
        return TW_ADVANCE_NOT_OWNER
    r.committed += <uint64_t>n
    tw_store_rel64(&r.hdr.tail, r.committed)
    tw_fence_seq()                         # tail store before the waiting-word load
    if tw_load_rlx32(&r.hdr.prod_waiting):
        tw_ring_wake(&r.hdr.prod_waiting, &r.hdr.prod_futex)
    return 0


cdef Py_ssize_t tw_ring_pop_n(tw_ring *r, void *out, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    if r.policy == TW_RING_BROADCAST:
        return _bc_read(r, <char *>out, n)
    k = tw_ring_peek(r, out, n)
    if k < 0:
        return k                           # (taken over: nothing copied)
    if r.rpos != r.committed:
        if tw_ring_advance(r, <Py_ssize_t>(r.rpos - r.committed)) == TW_ADVANCE_NOT_OWNER:
            r.rpos -= <uint64_t>k
            return TW_ADVANCE_NOT_OWNER
    return k


# ---------------------------------------------------------------------------------------------
# Python side: names, dtypes, process identity
# ---------------------------------------------------------------------------------------------

def _shm_name(name):
    """The POSIX shm name ("/x") for a ring name, with a clear error for a bad one."""
    if not isinstance(name, str):
        raise TypeError(f"ring name must be a str, got {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if len(bare) > NAME_MAX:
        raise ValueError(f"ring name too long: {len(bare)} characters, at most {NAME_MAX}")
    if not bare or not _NAME_RE.fullmatch(bare) or bare in (".", ".."):
        raise ValueError(f"bad ring name {name!r}: use 1-{NAME_MAX} letters, digits, '_', '-' or '.'"
                         " (an optional leading '/')")
    return "/" + bare


def _record_dtype(dtype):
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise ValueError(f"dtype {dt} holds Python objects, which cannot live in shared memory")
    if dt.itemsize == 0:
        raise ValueError(f"dtype {dt} has no bytes: a ring needs fixed-size records")
    return dt


def _describe(dt):
    """ASCII description of a dtype that :func:`_from_description` turns back into it."""
    text = repr(np.lib.format.dtype_to_descr(dt))
    if _from_description(text) != dt:
        raise ValueError(f"dtype {dt} cannot be described for shared memory")
    raw = text.encode("ascii")
    if len(raw) > TW_RING_DESCR_MAX:
        raise ValueError(f"dtype description too long for the ring header: {len(raw)} bytes, "
                         f"at most {TW_RING_DESCR_MAX}")
    return raw


def _from_description(text):
    return np.lib.format.descr_to_dtype(ast.literal_eval(text))


def _proc_stat(pid):
    """(state, start time in clock ticks) of process pid, or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    return rest[0].decode(), int(rest[19])


def _new_owner_word():
    """This handle's ownership word: pid << 32 | a random non-zero nonce (unique per handle)."""
    nonce = 0
    while nonce == 0:
        nonce = int.from_bytes(os.urandom(4), "little")
    return (os.getpid() << 32) | nonce


def _start_word(uint64_t owner):
    """The companion of an ownership word: low 32 bits of the process start time << 32 | nonce."""
    st = _proc_stat(owner >> 32)
    return ((st[1] & 0xFFFFFFFF) << 32 if st else 0) | (owner & 0xFFFFFFFF)


def _owner_alive(uint64_t owner, uint64_t start):
    """Whether the handle an ownership word names belongs to a running process: the pid
    exists, is not a zombie, and (once its start word is written) started when it said."""
    pid = owner >> 32
    if pid <= 0:
        return False
    st = _proc_stat(pid)
    if st is None or st[0] in ("Z", "X", "x"):
        return False
    if (start & 0xFFFFFFFF) != (owner & 0xFFFFFFFF):
        return True                    # claimed a moment ago, start word not yet written
    return (st[1] & 0xFFFFFFFF) == (start >> 32)


cdef int64_t _timeout_ns(object timeout) except? -2:
    """-1 for no limit (None), else nanoseconds (>= 0)."""
    cdef double t
    if timeout is None:
        return -1
    t = float(timeout)
    if not t >= 0:
        raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")
    if t >= 9e9:
        return -1
    return <int64_t>(t * 1e9)


cdef int64_t _deadline_of(object timeout) except? -2:
    """Absolute CLOCK_MONOTONIC deadline: -1 none, 0 already (timeout 0)."""
    cdef int64_t t = _timeout_ns(timeout)
    if t < 0:
        return -1
    if t == 0:
        return 0
    return tw_mono_ns() + t


def remove(name):
    """Unlink ring ``name`` from ``/dev/shm``; processes that have it mapped keep it.

    Returns
    -------
    bool
        True if it existed.
    """
    cdef bytes b = _shm_name(name).encode()
    cdef int err = tw_shm_unlink(b)
    if err == 0:
        return True
    if err == ENOENT:
        return False
    raise OSError(err, strerror(err).decode(), "/dev/shm" + b.decode())


def exists(name):
    """Whether a segment named ``name`` exists in ``/dev/shm``."""
    return os.path.exists("/dev/shm" + _shm_name(name))


# ---------------------------------------------------------------------------------------------
# Ring
# ---------------------------------------------------------------------------------------------

cdef class Ring:
    """A single-producer ring of fixed-size records in POSIX shared memory.

    Make one with :meth:`create` (the creator; it unlinks the segment on close) and reach it
    from other processes with :meth:`attach`.  Records are numpy values of the ring's
    :attr:`dtype`: push one record (a numpy scalar of that dtype, a 1-element array, a tuple,
    or ``record_size`` raw bytes) or whole arrays; pop one record (a numpy scalar) or into an
    array of your own.  A ring is a context manager; a handle is used by one thread at a time
    and is not shared across ``fork`` (attach by name in the child).

    The C handle is ``Ring.c`` (``ring.pxd``) for Cython code that pushes without the GIL.
    """

    def __cinit__(self):
        memset(&self.c, 0, sizeof(tw_ring))
        self._scratch = NULL

    def __init__(self, *args, **kwargs):
        raise TypeError("use Ring.create(name, dtype, capacity, ...) or Ring.attach(name, ...)")

    def __dealloc__(self):
        self._close_c()
        free(self._scratch)
        self._scratch = NULL

    # -- construction -------------------------------------------------------------------------

    @staticmethod
    def create(name, dtype, Py_ssize_t capacity, policy="blocking", *, role="producer",
               bint replace=False, int64_t spin_ns=DEFAULT_SPIN_NS):
        """Create ring ``name`` in ``/dev/shm`` (mode 0600) and open it.

        Parameters
        ----------
        name : str
            POSIX shared-memory name: letters, digits, ``_``, ``-``, ``.`` (a leading ``/`` is
            optional), at most 200 characters.  It must not exist yet.
        dtype : numpy.dtype or anything numpy.dtype accepts
            The record type; stored in the header so :meth:`attach` can check or rebuild it.
        capacity : int
            Records the ring holds: a power of two >= 2.
        policy : {"blocking", "broadcast"}
            ``"blocking"``: the producer waits (or reports full) when the one consumer is a
            ring behind; nothing is lost.  ``"broadcast"``: the producer never waits; each of
            any number of consumers counts what it missed when lapped.
        role : {"producer", "none"}
            ``"producer"`` (default): this handle pushes.  ``"none"``: it only owns the
            segment (a supervisor); a producer attaches with ``role="producer"``.
        replace : bool
            Unlink an existing segment of that name first (a stale one left by a killed
            process); processes that still map the old one keep it.
        spin_ns : int
            Nanoseconds a waiting push spins before it sleeps.

        Returns
        -------
        Ring
            Open, owning the segment: :meth:`close` (or the end of a ``with`` block) unlinks it.

        Raises
        ------
        FileExistsError
            The name is taken (and ``replace`` is False).
        ValueError
            A bad name, dtype, capacity, policy or role.
        """
        cdef int err = 0, pol, rl
        cdef void *p
        cdef tw_ring_hdr *hdr
        cdef uint64_t cap, rs, data_bytes, total, seq_off = 0
        cdef bytes bname, descr
        cdef Ring ring
        shm = _shm_name(name)
        dt = _record_dtype(dtype)
        if policy not in _POLICIES:
            raise ValueError(f"policy must be 'blocking' or 'broadcast', got {policy!r}")
        pol = _POLICIES[policy]
        if role not in ("producer", "none"):
            raise ValueError(f"role of a creator must be 'producer' or 'none', got {role!r}")
        rl = _ROLES[role]
        if capacity < 2 or capacity & (capacity - 1):
            hint = 1 << max(1, int(capacity - 1).bit_length()) if capacity > 0 else 2
            raise ValueError(f"capacity must be a power of two >= 2, got {capacity} (try {hint})")
        if spin_ns < 0:
            raise ValueError(f"spin_ns must be >= 0, got {spin_ns}")
        descr = _describe(dt)
        cap = <uint64_t>capacity
        rs = <uint64_t>dt.itemsize
        if cap > <uint64_t>MAX_SEGMENT // rs:
            raise ValueError(f"ring too large: {capacity} records of {rs} bytes exceed {MAX_SEGMENT} bytes")
        data_bytes = cap * rs
        total = TW_RING_HEADER_SIZE + data_bytes
        if pol == TW_RING_BROADCAST:
            seq_off = (total + 63) & ~(<uint64_t>63)
            total = seq_off + cap * 8
        total = (total + 4095) & ~(<uint64_t>4095)
        if total > <uint64_t>MAX_SEGMENT:
            raise ValueError(f"ring too large: {total} bytes (at most {MAX_SEGMENT})")
        bname = shm.encode()
        if replace:
            tw_shm_unlink(bname)
        p = tw_shm_create(bname, total, &err)
        if p == NULL:
            if err == EEXIST:
                raise FileExistsError(err, f"ring {name!r} already exists (/dev/shm{shm}): attach to it, "
                                      "remove it, or create it with replace=True", "/dev/shm" + shm)
            raise OSError(err, strerror(err).decode(), "/dev/shm" + shm)
        hdr = <tw_ring_hdr *>p
        hdr.version = TW_RING_VERSION
        hdr.policy = <uint32_t>pol
        hdr.record_size = rs
        hdr.capacity = cap
        hdr.data_offset = TW_RING_HEADER_SIZE
        hdr.seq_offset = seq_off
        hdr.segment_size = total
        hdr.created_ns = tw_real_ns()
        hdr.creator_pid = <int32_t>os.getpid()
        hdr.descr_len = <uint32_t>len(descr)
        hdr.header_size = TW_RING_HEADER_SIZE
        memcpy(<char *>p + TW_RING_DESCR_OFFSET, <const char *>descr, len(descr))
        tw_store_rel64(&hdr.magic, TW_RING_MAGIC)     # last: attachers wait for it
        ring = Ring.__new__(Ring)
        ring._pid = getpid()
        ring.name = shm
        ring._bname = bname
        ring._owner = True
        ring.dtype = dt
        ring.c.spin_ns = spin_ns
        try:
            ring._open(hdr, total, rl)
        except BaseException:
            ring.close()
            raise
        return ring

    @staticmethod
    def attach(name, dtype=None, *, role="consumer", capacity=None, policy=None, bint takeover=False,
               start=None, int64_t spin_ns=DEFAULT_SPIN_NS, double wait=1.0):
        """Open an existing ring by name, checking its header.

        Parameters
        ----------
        name : str
            The name given to :meth:`create`.
        dtype : numpy.dtype, optional
            Expected record type: a different record size or dtype raises.  Omitted, the
            dtype is rebuilt from the header.
        role : {"consumer", "producer", "none"}
            ``"consumer"`` (default) pops.  A blocking ring has one consumer: attaching
            claims it (see ``takeover``).  ``"producer"`` claims the producer side (one
            producer per ring) and continues from the published position.
        capacity : int, optional
            Expected capacity; a different one raises.
        policy : {"blocking", "broadcast"}, optional
            Expected policy; a different one raises.
        takeover : bool
            Claim the role even if a live process holds it.  Without it, a holder that is
            dead (no such pid, a zombie, or a recycled pid) is replaced and a live one raises
            :class:`RingBusy`.
        start : {"newest", "oldest", "next"}, optional
            Broadcast consumers: begin at the newest published record (default), the oldest
            still in the ring, or the next one to be published.  A blocking consumer always
            continues from the committed position.
        spin_ns : int
            Nanoseconds a waiting pop (or push) spins before it sleeps on the futex.
        wait : float
            Seconds to wait for a segment that is still being created.

        Raises
        ------
        FileNotFoundError
            No ring of that name.
        ValueError
            The segment is not a tickwire ring, or its version, policy, capacity, record size
            or dtype differs from what was asked: the message names the field.
        RingBusy
            The role is held by a live process and ``takeover`` is False.
        """
        cdef int err = 0, rl
        cdef size_t size = 0
        cdef void *p = NULL
        cdef tw_ring_hdr *hdr
        cdef uint64_t magic = 0
        cdef bytes bname
        cdef Ring ring
        cdef long owner = 0
        cdef int mode = 0
        shm = _shm_name(name)
        if role not in _ROLES:
            raise ValueError(f"role must be 'consumer', 'producer' or 'none', got {role!r}")
        rl = _ROLES[role]
        if policy is not None and policy not in _POLICIES:
            raise ValueError(f"policy must be 'blocking' or 'broadcast', got {policy!r}")
        if start is not None and start not in ("newest", "oldest", "next"):
            raise ValueError(f"start must be 'newest', 'oldest' or 'next', got {start!r}")
        if spin_ns < 0:
            raise ValueError(f"spin_ns must be >= 0, got {spin_ns}")
        want_dt = None if dtype is None else _record_dtype(dtype)
        bname = shm.encode()
        give_up = time.monotonic() + wait
        while True:
            p = tw_shm_attach(bname, &size, &err, &owner, &mode)
            if p != NULL:
                magic = tw_load_acq64(&(<tw_ring_hdr *>p).magic)
                if magic != 0 or time.monotonic() >= give_up:
                    break
                tw_shm_unmap(p, size)                    # still being created
            elif err == ENOENT:
                raise FileNotFoundError(err, f"no ring named {name!r}", "/dev/shm" + shm)
            elif err == EPERM:
                whose = "yours" if owner == os.geteuid() else f"uid {owner}'s, not yours (uid {os.geteuid()})"
                raise PermissionError(err, f"ring {name!r} is {whose}, mode {mode:04o}: a tickwire ring is its "
                                           "creator's alone (0600); refusing to attach to one another user "
                                           "could have made or can write", "/dev/shm" + shm)
            elif err != 0:
                raise OSError(err, strerror(err).decode(), "/dev/shm" + shm)
            elif time.monotonic() >= give_up:
                raise ValueError(f"/dev/shm{shm} is not a tickwire ring: "
                                 f"smaller than a {TW_RING_HEADER_SIZE}-byte header")
            time.sleep(0.001)
        hdr = <tw_ring_hdr *>p
        ring = Ring.__new__(Ring)
        ring._pid = getpid()
        ring.name = shm
        ring._bname = bname
        ring.c.hdr = hdr                                 # so that close() unmaps on error
        ring.c.map_size = size
        ring.c.spin_ns = spin_ns
        try:
            if magic != TW_RING_MAGIC:
                raise ValueError(f"/dev/shm{shm} is not a tickwire ring "
                                 f"(magic {magic:#018x}, expected {TW_RING_MAGIC:#018x})")
            if hdr.version != TW_RING_VERSION:
                raise ValueError(f"ring {name!r} has layout version {hdr.version}; this tickwire "
                                 f"reads version {TW_RING_VERSION}")
            if (hdr.header_size != TW_RING_HEADER_SIZE or hdr.segment_size != size
                    or hdr.policy not in _POLICY_NAMES or hdr.capacity < 2
                    or hdr.capacity & (hdr.capacity - 1) or hdr.record_size == 0
                    or hdr.capacity > <uint64_t>MAX_SEGMENT or hdr.record_size > <uint64_t>MAX_SEGMENT
                    or hdr.descr_len > TW_RING_DESCR_MAX or hdr.data_offset != TW_RING_HEADER_SIZE
                    # overflow-safe (a forged capacity * record_size can wrap to 0 mod 2**64):
                    # each term against what is left of the segment before multiplying
                    or hdr.data_offset > size
                    or hdr.capacity > (size - hdr.data_offset) // hdr.record_size
                    or (hdr.policy == TW_RING_BROADCAST
                        and (hdr.seq_offset % 8 or hdr.seq_offset > size
                             or hdr.seq_offset < hdr.data_offset + hdr.capacity * hdr.record_size
                             or hdr.capacity > (size - hdr.seq_offset) // 8))):
                raise ValueError(f"ring {name!r} has a damaged header (segment of {size} bytes, "
                                 f"header says {hdr.segment_size})")
            have_policy = _POLICY_NAMES[hdr.policy]
            if policy is not None and policy != have_policy:
                raise ValueError(f"ring {name!r}: policy differs: the ring is {have_policy!r}, "
                                 f"expected {policy!r}")
            if capacity is not None and capacity != hdr.capacity:
                raise ValueError(f"ring {name!r}: capacity differs: the ring holds {hdr.capacity} "
                                 f"records, expected {capacity}")
            try:
                stored = _from_description(
                    PyBytes_FromStringAndSize(<char *>p + TW_RING_DESCR_OFFSET, hdr.descr_len).decode("ascii"))
            except Exception as exc:
                raise ValueError(f"ring {name!r} has a damaged header: unreadable dtype description "
                                 f"({exc})") from None
            if stored.itemsize != hdr.record_size:
                raise ValueError(f"ring {name!r} has a damaged header: dtype of {stored.itemsize} "
                                 f"bytes, record size {hdr.record_size}")
            if want_dt is not None:
                if want_dt.itemsize != hdr.record_size:
                    raise ValueError(f"ring {name!r}: record size differs: the ring holds "
                                     f"{hdr.record_size}-byte records, dtype {want_dt} has "
                                     f"{want_dt.itemsize} bytes")
                if want_dt != stored:
                    raise ValueError(f"ring {name!r}: dtype differs: the ring holds {stored}, "
                                     f"expected {want_dt}")
            ring.dtype = stored if want_dt is None else want_dt
            if rl == TW_ROLE_CONSUMER and hdr.policy == TW_RING_BLOCKING and start is not None:
                raise ValueError("start= applies to broadcast consumers; a blocking consumer "
                                 "continues from the committed position")
            ring._open(hdr, size, rl)
            if rl == TW_ROLE_CONSUMER and hdr.policy == TW_RING_BROADCAST:
                ring._start(start or "newest")
            if takeover or rl != TW_ROLE_NONE:
                ring._claim(rl, takeover)
        except BaseException:
            ring.close()
            raise
        return ring

    cdef int _open(self, tw_ring_hdr *hdr, size_t size, int role) except -1:
        """Fill the handle from a checked header; positions per role."""
        cdef tw_ring *r = &self.c
        r.hdr = hdr
        r.map_size = size
        r.data = <char *>hdr + hdr.data_offset
        r.seq = <uint64_t *>(<char *>hdr + hdr.seq_offset) if hdr.policy == TW_RING_BROADCAST else NULL
        r.capacity = hdr.capacity
        r.mask = hdr.capacity - 1
        r.rsize = <size_t>hdr.record_size
        r.policy = <int>hdr.policy
        r.role = role
        r.owner = _new_owner_word()
        r.wpos = r.published = tw_load_acq64(&hdr.head)
        r.tail_cache = tw_load_acq64(&hdr.tail)
        r.rpos = r.committed = r.tail_cache
        r.head_cache = r.wpos
        if self._scratch == NULL:
            self._scratch = <char *>calloc(1, r.rsize)
            if self._scratch == NULL:
                raise MemoryError()
        self._ok_descr = self.dtype
        if role == TW_ROLE_PRODUCER and self._owner:
            tw_store_rel64(&hdr.producer_owner, r.owner)
            tw_store_rel64(&hdr.producer_start, _start_word(r.owner))
        return 0

    def _start(self, start):
        self._check_open()            # (these helpers are reachable from Python: a closed handle's
        cdef tw_ring *r = &self.c     # header is NULL)
        cdef uint64_t h = tw_load_acq64(&r.hdr.head)
        if start == "next":
            r.rpos = h
        elif start == "oldest":
            r.rpos = h - r.capacity if h > r.capacity else 0
        else:
            r.rpos = h - 1 if h > 0 else 0
        r.head_cache = h

    def _claim(self, int role, bint takeover):
        """Take the producer (or blocking consumer) side: an ownership word in the header."""
        cdef tw_ring *r = &self.c
        cdef uint64_t *word
        cdef uint64_t *start
        cdef uint64_t cur
        cdef str what
        self._check_open()
        if role == TW_ROLE_PRODUCER:
            word = &r.hdr.producer_owner
            start = &r.hdr.producer_start
            what = "producer"
        elif role == TW_ROLE_CONSUMER and r.policy == TW_RING_BLOCKING:
            word = &r.hdr.consumer_owner
            start = &r.hdr.consumer_start
            what = "consumer"
        else:
            return
        while True:
            cur = tw_load_acq64(word)
            if cur != 0 and not takeover and _owner_alive(cur, tw_load_acq64(start)):
                raise RingBusy(f"ring {self.name[1:]!r} already has a live {what} (pid {cur >> 32}); "
                               f"close it first, or attach with takeover=True")
            if tw_cas64(word, cur, r.owner):
                break
        tw_store_rel64(start, _start_word(r.owner))
        if role == TW_ROLE_PRODUCER:
            # continue after what the previous producer published; its unpublished writes are void
            r.wpos = r.published = tw_load_acq64(&r.hdr.head)
            tw_store_rel32(&r.hdr.closed, 0)
        else:
            r.rpos = r.committed = tw_load_acq64(&r.hdr.tail)
            r.head_cache = tw_load_acq64(&r.hdr.head)

    # -- lifecycle ----------------------------------------------------------------------------

    cdef void _close_c(self) noexcept:
        """Unmap (and, for the creator, unlink); a producer's close marks end of stream."""
        cdef tw_ring *r = &self.c
        cdef tw_ring_hdr *h = r.hdr
        if h == NULL:
            return
        if self._pid != getpid():
            # a forked child's copy of the handle (os.fork, then a normal exit): the parent's
            # ring is not the child's to end, give up or unlink (it did all three: a review)
            tw_shm_unmap(h, r.map_size)
            r.hdr = NULL
            r.data = NULL
            r.seq = NULL
            self._owner = False
            return
        if r.role == TW_ROLE_PRODUCER and tw_load_acq64(&h.producer_owner) == r.owner:
            tw_ring_publish(r)
            tw_store_rel32(&h.closed, 1)
            tw_fence_seq()
            tw_xchg32(&h.cons_waiting, 0)
            tw_fetch_add32(&h.cons_futex, 1)
            tw_futex_wake_all(&h.cons_futex)
            tw_cas64(&h.producer_owner, r.owner, 0)
        elif r.role == TW_ROLE_CONSUMER and r.policy == TW_RING_BLOCKING:
            tw_cas64(&h.consumer_owner, r.owner, 0)
        tw_shm_unmap(h, r.map_size)
        r.hdr = NULL
        r.data = NULL
        r.seq = NULL
        if self._owner and self._bname is not None:
            tw_shm_unlink(self._bname)
            self._owner = False

    def close(self):
        """Close this handle: a producer publishes what it wrote and marks the end of the
        stream; a blocking consumer gives up the consumer side (uncommitted records stay for
        the next one); the creator unlinks the segment.  Idempotent.  Refused (RuntimeError)
        while another thread waits or copies in this handle: its memory would go from under it."""
        self._check_unused("close")
        self._close_c()

    def unlink(self):
        """Remove the ring's name from ``/dev/shm`` now (open handles keep working).

        Returns
        -------
        bool
            True if the name existed.
        """
        self._owner = False
        return remove(self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._check_unused("close")
        self._close_c()
        return False

    def __reduce__(self):
        raise TypeError(f"a Ring handle cannot be pickled: pass the name ({self.name[1:]!r}) and "
                        "Ring.attach() it in the other process")

    # -- checks -------------------------------------------------------------------------------

    def _check_unused(self, str what):
        if self._inuse:
            raise RuntimeError(f"Ring.{what}: another thread is waiting or copying in this handle of ring "
                               f"{self.name[1:] if self.name else ''!r}; use one handle from one thread at a time")

    cdef int _check_open(self) except -1:
        if self.c.hdr == NULL:
            raise ValueError(f"ring {self.name[1:] if self.name else ''!r} is closed")
        return 0

    cdef int _check_role(self, int role, str what) except -1:
        if self.c.hdr == NULL:
            self._check_open()
        if self.c.role != role:
            raise RingError(f"{what} needs a {_ROLE_NAMES[role]} handle; this one is a "
                            f"{_ROLE_NAMES[self.c.role]} of ring {self.name[1:]!r}")
        return 0

    cdef int _check_dtype(self, object dt, str what) except -1:
        if dt is self.dtype or dt is self._ok_descr:
            return 0
        if dt != self.dtype:
            raise ValueError(f"{what}: dtype {dt} does not match the ring's record dtype {self.dtype}")
        self._ok_descr = dt
        return 0

    cdef object _scalar(self, const char *p):
        if _fast_scalars:
            return tw_np_make_scalar(p, self.dtype)
        return np.frombuffer(PyBytes_FromStringAndSize(p, self.c.rsize), self.dtype)[0]

    # -- waiting ------------------------------------------------------------------------------

    cdef int _wait_readable(self, int64_t deadline) except -2:
        """tw_ring_wait_readable in GIL-free slices, checking for signals between them."""
        cdef int st
        cdef int64_t left
        st = tw_ring_wait_readable(&self.c, 0)
        if st != 0 or deadline == 0:
            return st
        while True:
            left = _SLICE_NS
            if deadline > 0:
                left = deadline - tw_mono_ns()
                if left <= 0:
                    return 0
                if left > _SLICE_NS:
                    left = _SLICE_NS
            self._inuse += 1
            try:
                with nogil:
                    st = tw_ring_wait_readable(&self.c, left)
            finally:
                self._inuse -= 1
            if st != 0:
                return st
            PyErr_CheckSignals()

    cdef int _wait_writable(self, Py_ssize_t n, int64_t deadline) except -2:
        cdef int st
        cdef int64_t left
        st = tw_ring_wait_writable(&self.c, n, 0)
        if st != 0 or deadline == 0:
            return st
        while True:
            left = _SLICE_NS
            if deadline > 0:
                left = deadline - tw_mono_ns()
                if left <= 0:
                    return 0
                if left > _SLICE_NS:
                    left = _SLICE_NS
            self._inuse += 1
            try:
                with nogil:
                    st = tw_ring_wait_writable(&self.c, n, left)
            finally:
                self._inuse -= 1
            if st != 0:
                return st
            PyErr_CheckSignals()

    # -- producer -----------------------------------------------------------------------------

    def push(self, record, timeout=None):
        """Push one record.

        Parameters
        ----------
        record : numpy.void, numpy scalar, 1-element array, tuple or bytes
            A value of the ring's dtype (checked), or exactly ``record_size`` raw bytes.
        timeout : float or None
            Blocking policy, ring full: seconds to wait for room (None: as long as it takes;
            0: do not wait).  A broadcast ring never waits.

        Returns
        -------
        bool
            True when pushed (and published); False when the ring stayed full.
        """
        cdef const char *p
        cdef Py_buffer view
        cdef bint have_view = False
        cdef int64_t deadline = -1 if timeout is None else _deadline_of(timeout)
        self._check_role(TW_ROLE_PRODUCER, "push")
        if (_fast_scalars and type(record) is _np_void
                and (tw_np_void_descr(<PyObject *>record) == <PyObject *>self.dtype
                     or tw_np_void_descr(<PyObject *>record) == <PyObject *>self._ok_descr)):
            p = tw_np_void_data(<PyObject *>record)
        else:
            obj = self._coerce(record)
            PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE)
            have_view = True
            if <size_t>view.len != self.c.rsize:
                PyBuffer_Release(&view)
                raise ValueError(f"push: a record of ring {self.name[1:]!r} is {self.c.rsize} bytes, "
                                 f"got {view.len}")
            p = <const char *>view.buf
        try:
            if tw_ring_push(&self.c, p):
                return True
            while self._wait_writable(1, deadline) == 1:
                if tw_ring_push(&self.c, p):
                    return True
            return False
        finally:
            if have_view:
                PyBuffer_Release(&view)

    def _coerce(self, record):
        """An object whose buffer is one record of the ring's dtype (or raw bytes to check)."""
        if isinstance(record, np.generic):
            self._check_dtype(record.dtype, "push")
            return record
        if isinstance(record, np.ndarray):
            self._check_dtype(record.dtype, "push")
            if record.size != 1:
                raise ValueError(f"push takes one record, got an array of {record.size}: use push_many")
            return np.ascontiguousarray(record)
        if isinstance(record, (bytes, bytearray, memoryview)):
            return record
        try:
            return np.array(record, dtype=self.dtype)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"push: cannot make a record of dtype {self.dtype} from "
                            f"{type(record).__name__}: {exc}") from exc

    def push_many(self, array, timeout=None):
        """Push the records of a numpy array, published in as few release stores as possible.

        Parameters
        ----------
        array : numpy.ndarray
            Records of the ring's dtype (any shape; copied in C order).
        timeout : float or None
            Blocking policy: seconds to wait for room, in total (None: until every record is
            pushed; 0: push what fits now).  A broadcast ring never waits and pushes all.

        Returns
        -------
        int
            Records pushed (all of them unless the timeout ran out).
        """
        cdef Py_buffer view
        cdef Py_ssize_t n, done, k, chunk
        cdef const char *p
        cdef int64_t deadline = -1 if timeout is None else _deadline_of(timeout)
        cdef tw_ring *r = &self.c
        self._check_role(TW_ROLE_PRODUCER, "push_many")
        if not isinstance(array, np.ndarray):
            raise TypeError(f"push_many takes a numpy array of dtype {self.dtype}, got {type(array).__name__}")
        self._check_dtype(array.dtype, "push_many")
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        PyObject_GetBuffer(array, &view, PyBUF_SIMPLE)
        self._inuse += 1
        try:
            n = view.len // <Py_ssize_t>r.rsize
            p = <const char *>view.buf
            if n * <Py_ssize_t>r.rsize >= _NOGIL_BYTES:
                with nogil:
                    done = tw_ring_push_n(r, p, n)
            else:
                done = tw_ring_push_n(r, p, n)
            if done == n:
                return n
            chunk = <Py_ssize_t>(r.capacity >> 3) or 1
            while done < n:
                if self._wait_writable(min(n - done, chunk), deadline) != 1:
                    break
                if (n - done) * <Py_ssize_t>r.rsize >= _NOGIL_BYTES:
                    with nogil:
                        k = tw_ring_push_n(r, p + done * r.rsize, n - done)
                else:
                    k = tw_ring_push_n(r, p + done * r.rsize, n - done)
                done += k
            return done
        finally:
            self._inuse -= 1
            PyBuffer_Release(&view)

    # -- consumer -----------------------------------------------------------------------------

    def pop(self, timeout=None):
        """Pop one record.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait for a record (None: as long as it takes; 0: do not wait).

        Returns
        -------
        numpy.void or numpy scalar or None
            The record (a copy), or None on timeout or at the end of the stream
            (:attr:`eof`).  A broadcast consumer that was lapped skips what it lost and
            counts it in :attr:`missed` / :attr:`last_missed`.
        """
        cdef Py_ssize_t k
        cdef int64_t deadline = -1 if timeout is None else _deadline_of(timeout)
        cdef uint64_t missed0 = self.c.missed
        self._check_role(TW_ROLE_CONSUMER, "pop")
        self._no_pending("pop")
        try:
            while True:
                k = tw_ring_pop_n(&self.c, self._scratch, 1)
                if k > 0:
                    return self._scalar(self._scratch)
                if k < 0:
                    self._taken_over()
                if self.c.last_missed:
                    continue
                if self._wait_readable(deadline) != 1:
                    return None
        finally:
            self._last_missed = self.c.missed - missed0

    def pop_many(self, out, timeout=None):
        """Pop up to ``len(out)`` records into ``out``.

        Parameters
        ----------
        out : numpy.ndarray
            Writable, C-contiguous array of the ring's dtype (reuse it: nothing is allocated).
        timeout : float or None
            Seconds to wait until at least one record is there (None: as long as it takes;
            0: do not wait).  It does not wait to fill ``out``.

        Returns
        -------
        int
            Records written to ``out[:n]``; 0 on timeout or at the end of the stream
            (:attr:`eof`).  Broadcast: records lost to lapping are skipped and counted in
            :attr:`missed` / :attr:`last_missed`.
        """
        return self._read_many(out, timeout, False)

    def peek_many(self, out, timeout=None):
        """Blocking policy: read up to ``len(out)`` records without consuming them.

        The records are copied into ``out`` and the read cursor moves past them, but they
        stay in the ring (and count against its capacity) until :meth:`advance` commits them.
        A consumer that dies before advancing leaves them to the next consumer, which starts
        from the committed position; :meth:`rewind` returns to it in this process.

        Parameters
        ----------
        out : numpy.ndarray
            Writable, C-contiguous array of the ring's dtype.
        timeout : float or None
            Seconds to wait for at least one unread record (None: no limit; 0: do not wait).

        Returns
        -------
        int
            Records written to ``out[:n]``; 0 on timeout or at the end of the stream.
        """
        if self.c.hdr != NULL and self.c.policy != TW_RING_BLOCKING:
            raise RingError("peek_many/advance are for the blocking policy; a broadcast consumer pops")
        return self._read_many(out, timeout, True)

    def _read_many(self, out, timeout, bint peek):
        cdef Py_buffer view
        cdef Py_ssize_t n, k
        cdef int64_t deadline = -1 if timeout is None else _deadline_of(timeout)
        cdef tw_ring *r = &self.c
        cdef uint64_t missed0 = r.missed
        what = "peek_many" if peek else "pop_many"
        self._check_role(TW_ROLE_CONSUMER, what)
        if not peek:
            self._no_pending(what)
        if not isinstance(out, np.ndarray):
            raise TypeError(f"{what} takes a numpy array of dtype {self.dtype} to fill, got {type(out).__name__}")
        self._check_dtype(out.dtype, what)
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"{what}: out must be a writable C-contiguous array")
        PyObject_GetBuffer(out, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
        self._inuse += 1
        try:
            n = view.len // <Py_ssize_t>r.rsize
            if n == 0:
                return 0
            while True:
                if n * <Py_ssize_t>r.rsize >= _NOGIL_BYTES:
                    with nogil:
                        k = tw_ring_peek(r, view.buf, n) if peek else tw_ring_pop_n(r, view.buf, n)
                else:
                    k = tw_ring_peek(r, view.buf, n) if peek else tw_ring_pop_n(r, view.buf, n)
                if k > 0:
                    return k
                if k < 0:
                    self._taken_over()
                if r.policy == TW_RING_BROADCAST and r.last_missed:
                    continue
                if self._wait_readable(deadline) != 1:
                    return 0
        finally:
            self._inuse -= 1
            PyBuffer_Release(&view)
            self._last_missed = r.missed - missed0

    def recent(self, start=None):
        """Blocking policy: a copy of the published records from position ``start`` to the head
        that are still in the segment (positions ``head - capacity`` on), consumed or not.

        For a producer that restarts after a crash: the records it (or its predecessor) pushed
        since a position it had noted are read back to learn what reached the ring. Returns
        ``(first_position, records)``; ``start`` None: the whole retained window.
        """
        cdef Py_buffer view
        cdef uint64_t head, lo, first, k
        self._check_open()
        if self.c.policy != TW_RING_BLOCKING:
            raise RingError("recent() is for the blocking policy")
        head = tw_load_acq64(&self.c.hdr.head)
        lo = head - self.c.capacity if head > self.c.capacity else 0
        first = lo if start is None else max(<uint64_t>start, lo)
        if first > head:
            first = head
        k = head - first
        out = np.empty(k, dtype=self.dtype)
        if k:
            PyObject_GetBuffer(out, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                _copy_out(&self.c, first, <char *>view.buf, k)
            finally:
                PyBuffer_Release(&view)
        return first, out

    def advance(self, n=None):
        """Blocking policy: consume (commit) the ``n`` oldest records read by :meth:`peek_many`.

        Parameters
        ----------
        n : int, optional
            How many; default all that were read and not committed (:attr:`pending`).

        Returns
        -------
        int
            Records committed.

        Raises
        ------
        ValueError
            ``n`` is more than :attr:`pending`.
        RingError
            Another consumer took the ring over (nothing is committed).
        """
        cdef Py_ssize_t k
        cdef int st
        self._check_role(TW_ROLE_CONSUMER, "advance")
        if self.c.policy != TW_RING_BLOCKING:
            raise RingError("peek_many/advance are for the blocking policy; a broadcast consumer pops")
        k = tw_ring_pending(&self.c) if n is None else n
        st = tw_ring_advance(&self.c, k)
        if st == TW_ADVANCE_TOO_MANY:
            raise ValueError(f"advance({k}): only {tw_ring_pending(&self.c)} records are read and not committed")
        if st == TW_ADVANCE_NOT_OWNER:
            self._taken_over()
        return k

    def rewind(self):
        """Blocking policy: move the read cursor back to the committed position, so the
        records read but not committed are read again."""
        self._check_role(TW_ROLE_CONSUMER, "rewind")
        if self.c.policy != TW_RING_BLOCKING:     # (it moved a broadcast cursor to 0: a review)
            raise RingError("rewind() is for the blocking policy; a broadcast consumer pops")
        self.c.rpos = self.c.committed

    def _no_pending(self, what):
        if self.c.policy == TW_RING_BLOCKING and self.c.rpos != self.c.committed:
            raise RingError(f"{what}: {tw_ring_pending(&self.c)} records were peeked and not "
                            "committed: advance() or rewind() first")

    def _taken_over(self):
        self._check_open()
        cdef uint64_t w = tw_load_acq64(&self.c.hdr.consumer_owner)
        raise RingError(f"ring {self.name[1:]!r}: the consumer side was taken over by pid {w >> 32}; "
                        "this handle can no longer commit")

    # -- state --------------------------------------------------------------------------------

    def __len__(self):
        """Records this handle could read now (a consumer), or records in the ring (others)."""
        self._check_open()
        if self.c.role == TW_ROLE_CONSUMER:
            return tw_ring_available(&self.c)
        if self.c.policy == TW_RING_BROADCAST:
            return min(tw_load_acq64(&self.c.hdr.head), <uint64_t>self.c.capacity)
        # the tail first: read after the head, a commit in between made h - t negative (a
        # SystemError from len(), which stopped the supervisor's guard of the writer: a review)
        t = tw_load_acq64(&self.c.hdr.tail)
        return min(tw_load_acq64(&self.c.hdr.head) - t, <uint64_t>self.c.capacity)

    @property
    def size(self):
        """``len(ring)``."""
        return len(self)

    @property
    def closed(self):
        """This handle is closed."""
        return self.c.hdr == NULL

    @property
    def eof(self):
        """The producer closed the ring and this consumer has read everything."""
        self._check_open()
        return tw_load_acq32(&self.c.hdr.closed) != 0 and tw_ring_available(&self.c) == 0

    @property
    def producer_closed(self):
        """The producer closed the ring (end of stream; records may remain to be read)."""
        self._check_open()
        return tw_load_acq32(&self.c.hdr.closed) != 0

    @property
    def policy(self):
        """``"blocking"`` or ``"broadcast"``."""
        self._check_open()
        return _POLICY_NAMES[self.c.policy]

    @property
    def role(self):
        """``"producer"``, ``"consumer"`` or ``"none"``."""
        return _ROLE_NAMES[self.c.role]

    @property
    def capacity(self):
        """Records the ring holds."""
        self._check_open()
        return self.c.capacity

    @property
    def record_size(self):
        """Bytes per record."""
        self._check_open()
        return self.c.rsize

    @property
    def owner(self):
        """True for the handle that created the segment (and unlinks it on close)."""
        return self._owner

    @property
    def head(self):
        """Records published since creation (a position)."""
        self._check_open()
        return tw_load_acq64(&self.c.hdr.head)

    @property
    def tail(self):
        """Blocking policy: records committed by the consumer since creation (a position)."""
        self._check_open()
        return tw_load_acq64(&self.c.hdr.tail)

    @property
    def position(self):
        """This handle's cursor: the next position a consumer reads, or a producer writes."""
        self._check_open()
        return self.c.wpos if self.c.role == TW_ROLE_PRODUCER else self.c.rpos

    @property
    def committed(self):
        """Blocking consumer: the committed position (where a successor would start)."""
        self._check_open()
        return self.c.committed

    @property
    def pending(self):
        """Blocking consumer: records read by peek_many and not yet committed."""
        return tw_ring_pending(&self.c)

    @property
    def free(self):
        """Blocking policy: records that fit now without waiting (capacity on broadcast)."""
        self._check_open()
        if self.c.role == TW_ROLE_PRODUCER:
            return tw_ring_free(&self.c)
        if self.c.policy == TW_RING_BROADCAST:
            return self.c.capacity
        t = tw_load_acq64(&self.c.hdr.tail)               # (the tail first, as in len())
        return self.c.capacity - min(tw_load_acq64(&self.c.hdr.head) - t, <uint64_t>self.c.capacity)

    @property
    def missed(self):
        """Broadcast consumer: records lost to lapping since attach."""
        return self.c.missed

    @property
    def last_missed(self):
        """Broadcast consumer: records lost to lapping during the last pop / pop_many."""
        return self._last_missed

    @property
    def spin_ns(self):
        """Nanoseconds a waiter spins before sleeping on the futex (settable)."""
        return self.c.spin_ns

    @spin_ns.setter
    def spin_ns(self, int64_t value):
        if value < 0:
            raise ValueError(f"spin_ns must be >= 0, got {value}")
        self.c.spin_ns = value

    @property
    def created_ns(self):
        """When the segment was created (CLOCK_REALTIME ns): identifies this ring's stream."""
        self._check_open()
        return self.c.hdr.created_ns

    @property
    def producer_pid(self):
        """Pid of the process holding the producer side (0: none)."""
        self._check_open()
        return tw_load_acq64(&self.c.hdr.producer_owner) >> 32

    @property
    def consumer_pid(self):
        """Blocking policy: pid of the process holding the consumer side (0: none)."""
        self._check_open()
        return tw_load_acq64(&self.c.hdr.consumer_owner) >> 32

    @property
    def producer_alive(self):
        """Whether the producer side is held by a running process."""
        self._check_open()
        return _owner_alive(tw_load_acq64(&self.c.hdr.producer_owner),
                            tw_load_acq64(&self.c.hdr.producer_start))

    @property
    def consumer_alive(self):
        """Blocking policy: whether the consumer side is held by a running process."""
        self._check_open()
        return _owner_alive(tw_load_acq64(&self.c.hdr.consumer_owner),
                            tw_load_acq64(&self.c.hdr.consumer_start))

    @property
    def creator_pid(self):
        """Pid of the process that created the segment."""
        self._check_open()
        return self.c.hdr.creator_pid

    @property
    def segment_size(self):
        """Bytes of the shared-memory segment."""
        self._check_open()
        return self.c.map_size

    def __repr__(self):
        if self.c.hdr == NULL:
            return f"<Ring {self.name[1:] if self.name else '?'!r} closed>"
        return (f"<Ring {self.name[1:]!r} {_POLICY_NAMES[self.c.policy]} {_ROLE_NAMES[self.c.role]} "
                f"capacity={self.c.capacity} record={self.c.rsize}B head={self.head}>")
