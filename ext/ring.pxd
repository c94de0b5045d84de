# The C API of tickwire.ext.ring: single-producer rings of fixed-size records in POSIX shared
# memory, for ticks (blocking policy) and signals (broadcast policy).
#
# This file is the reviewed contract: the engine and users' Cython `cimport tickwire.ext.ring`
# and push or pop through these functions without Python objects and without the GIL.  Every
# function states its error contract; none raises.  They take a `tw_ring *` handle, which must
# be open (a Ring's `c` while `Ring.closed` is False) and used from one thread at a time.
#
# Memory ordering (docs/rings.md has the full argument):
# - the producer writes records into slots, then publishes them all with ONE release store of
#   `head` (tw_ring_publish); a consumer's acquire load of `head` makes every record below it
#   visible.  The blocking consumer commits with one release store of `tail`, which the
#   producer reads (acquire) before reusing a slot.  Each side keeps a private copy of the
#   other's index and reloads it only when the copy says "full" / "empty".
# - broadcast: the producer may overwrite a slot a slow consumer is copying.  Each slot has a
#   sequence word (seqlock): 2*pos+1 while position `pos` is being written, 2*pos+2 once
#   written.  A reader copies, then (acquire fence) checks the sequence word of the oldest
#   record it copied; slots are overwritten in position order, so an intact oldest record
#   proves the whole copy intact, and otherwise the damaged prefix is counted as missed.
# - sleeping: a waiter sets a "waiting" word, issues a full fence, re-checks, and sleeps on a
#   futex; the other side, after its release store, issues a full fence and makes the futex
#   syscall only when the waiting word is set.  Nobody waiting costs one fence per publish and
#   no syscall.

from libc.stdint cimport int64_t, uint64_t, int32_t, uint32_t
from libc.string cimport memcpy

cdef extern from "tw_ring.h" nogil:
    ctypedef struct tw_ring_hdr:
        uint64_t magic
        uint32_t version
        uint32_t policy
        uint64_t record_size
        uint64_t capacity
        uint64_t data_offset
        uint64_t seq_offset
        uint64_t segment_size
        int64_t created_ns
        int32_t creator_pid
        uint32_t descr_len
        uint32_t header_size
        uint64_t head
        uint32_t cons_waiting
        uint32_t cons_futex
        uint32_t closed
        uint64_t producer_owner
        uint64_t producer_start
        uint64_t tail
        uint32_t prod_waiting
        uint32_t prod_futex
        uint64_t consumer_owner
        uint64_t consumer_start
        char descr[1]

    const uint64_t TW_RING_MAGIC
    const uint32_t TW_RING_VERSION
    const uint32_t TW_RING_HEADER_SIZE
    const uint32_t TW_RING_DESCR_OFFSET
    const uint32_t TW_RING_DESCR_MAX
    enum:
        TW_RING_BLOCKING
        TW_RING_BROADCAST

    uint64_t tw_load_acq64(const uint64_t *p)
    uint64_t tw_load_rlx64(const uint64_t *p)
    void tw_store_rel64(uint64_t *p, uint64_t v)
    void tw_store_rlx64(uint64_t *p, uint64_t v)
    uint32_t tw_load_acq32(const uint32_t *p)
    uint32_t tw_load_rlx32(const uint32_t *p)
    void tw_store_rel32(uint32_t *p, uint32_t v)
    void tw_store_seq32(uint32_t *p, uint32_t v)
    uint32_t tw_xchg32(uint32_t *p, uint32_t v)
    uint32_t tw_fetch_add32(uint32_t *p, uint32_t v)
    bint tw_cas64(uint64_t *p, uint64_t expected, uint64_t desired)
    void tw_fence_acq()
    void tw_fence_rel()
    void tw_fence_seq()
    void tw_cpu_relax()
    int64_t tw_mono_ns()
    int64_t tw_real_ns()
    long tw_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns)
    long tw_futex_wake_all(uint32_t *addr)
    void *tw_shm_create(const char *name, size_t size, int *err)
    void *tw_shm_attach(const char *name, size_t *size, int *err, long *uid, int *mode)
    int tw_shm_mode(const char *name)
    int tw_shm_unmap(void *p, size_t size)
    int tw_shm_unlink(const char *name)

cdef enum:
    TW_ROLE_NONE = 0              # maps the ring, neither produces nor consumes (an owner)
    TW_ROLE_PRODUCER = 1
    TW_ROLE_CONSUMER = 2
    TW_WAIT_EOF = -1              # tw_ring_wait_readable: the producer closed and all is read
    TW_ADVANCE_TOO_MANY = -1      # tw_ring_advance: more than were read
    TW_ADVANCE_NOT_OWNER = -2     # tw_ring_advance: another consumer took the ring over

cdef struct tw_ring:              # one process's handle on a ring (process memory, not shared)
    tw_ring_hdr *hdr              # the mapped segment; NULL once closed
    char *data                    # slot 0
    uint64_t *seq                 # broadcast: sequence word per slot; NULL for blocking
    uint64_t capacity             # records, a power of two
    uint64_t mask                 # capacity - 1
    size_t rsize                  # bytes per record
    size_t map_size
    int policy                    # TW_RING_BLOCKING / TW_RING_BROADCAST
    int role                      # TW_ROLE_*
    uint64_t owner                # this handle's ownership word: pid << 32 | random nonce
    int64_t spin_ns               # how long a waiter spins before it sleeps on the futex
    # producer
    uint64_t wpos                 # next position to write; records below it are written
    uint64_t published            # records published (head as this producer last stored it)
    uint64_t tail_cache           # blocking: the consumer's tail as last loaded
    # consumer
    uint64_t rpos                 # next position to read
    uint64_t committed            # blocking: tail as this consumer last stored it
    uint64_t head_cache           # head as last loaded
    uint64_t missed               # broadcast: records lost to lapping, in total
    uint64_t last_missed          # broadcast: ... in the last read

# -- producer ---------------------------------------------------------------------------------

cdef inline void *tw_ring_claim(tw_ring *r) noexcept nogil:
    """The slot for the next record, to fill in place; NULL when a blocking ring is full.

    Follow with tw_ring_written() once the slot holds the record, then tw_ring_publish()
    (now or after more records).  A broadcast ring never returns NULL.
    """
    cdef uint64_t pos = r.wpos, i = pos & r.mask
    if r.policy == TW_RING_BLOCKING:
        if pos - r.tail_cache >= r.capacity:
            r.tail_cache = tw_load_acq64(&r.hdr.tail)
            if pos - r.tail_cache >= r.capacity:
                return NULL
    else:
        tw_store_rlx64(&r.seq[i], 2 * pos + 1)      # odd: being written
        tw_fence_rel()                               # ... before any byte of the record
    return r.data + i * r.rsize

cdef inline void tw_ring_written(tw_ring *r) noexcept nogil:
    """The slot from tw_ring_claim() is filled: count it (not yet visible: tw_ring_publish)."""
    cdef uint64_t pos = r.wpos
    if r.policy == TW_RING_BROADCAST:
        tw_store_rel64(&r.seq[pos & r.mask], 2 * pos + 2)
    r.wpos = pos + 1

cdef void tw_ring_wake(uint32_t *waiting, uint32_t *futex) noexcept nogil  # slow path of publish/advance

cdef inline void tw_ring_publish(tw_ring *r) noexcept nogil:
    """Make every written record visible to consumers: one release store, plus a wake-up only
    when a consumer sleeps.  Cheap to call when nothing is new."""
    if r.wpos == r.published:
        return
    r.published = r.wpos
    tw_store_rel64(&r.hdr.head, r.wpos)
    tw_fence_seq()                                   # head store before the waiting-word load
    if tw_load_rlx32(&r.hdr.cons_waiting):
        tw_ring_wake(&r.hdr.cons_waiting, &r.hdr.cons_futex)

cdef inline int tw_ring_write(tw_ring *r, const void *rec) noexcept nogil:
    """Copy one record into the ring without publishing: 1, or 0 when a blocking ring is full."""
    cdef void *slot = tw_ring_claim(r)
    if slot == NULL:
        return 0
    memcpy(slot, rec, r.rsize)
    tw_ring_written(r)
    return 1

cdef inline int tw_ring_push(tw_ring *r, const void *rec) noexcept nogil:
    """Write and publish one record: 1, or 0 when a blocking ring is full (nothing written)."""
    if not tw_ring_write(r, rec):
        return 0
    tw_ring_publish(r)
    return 1

cdef Py_ssize_t tw_ring_push_n(tw_ring *r, const void *recs, Py_ssize_t n) noexcept nogil
    # Write up to n records (all of them on a broadcast ring; as many as fit on a blocking
    # ring) and publish them with one release store.  Returns how many were written (>= 0).
cdef Py_ssize_t tw_ring_free(tw_ring *r) noexcept nogil
    # Records a blocking producer can write now without waiting (capacity on broadcast).
cdef int tw_ring_wait_writable(tw_ring *r, Py_ssize_t n, int64_t timeout_ns) noexcept nogil
    # Wait until n records fit (n <= capacity): spin spin_ns, then sleep on the futex.
    # 1: they fit; 0: timeout_ns elapsed (< 0: no limit; 0: just check).  Publishes first.

# -- consumer ---------------------------------------------------------------------------------

cdef Py_ssize_t tw_ring_available(tw_ring *r) noexcept nogil
    # Records this consumer can read now (broadcast: at most capacity, lapping not yet counted).
cdef int tw_ring_wait_readable(tw_ring *r, int64_t timeout_ns) noexcept nogil
    # Wait until a record can be read: 1; 0 on timeout (< 0: no limit; 0: just check);
    # TW_WAIT_EOF (-1) when the producer closed the ring and everything was read.
cdef Py_ssize_t tw_ring_peek(tw_ring *r, void *out, Py_ssize_t n) noexcept nogil
    # Blocking policy: copy up to n records after the read cursor into out and move the
    # cursor, without consuming them: they stay in the ring until tw_ring_advance().
    # Returns the count (0: nothing new); TW_ADVANCE_NOT_OWNER if another consumer took the
    # ring over (nothing copied).  On a broadcast ring this is tw_ring_pop_n.
cdef int tw_ring_advance(tw_ring *r, Py_ssize_t n) noexcept nogil
    # Blocking policy: consume (commit) the n oldest records read by tw_ring_peek: one
    # release store of tail.  0; TW_ADVANCE_TOO_MANY if fewer than n are read and not
    # committed; TW_ADVANCE_NOT_OWNER if another consumer took the ring over (nothing done).
cdef Py_ssize_t tw_ring_pop_n(tw_ring *r, void *out, Py_ssize_t n) noexcept nogil
    # Copy up to n records into out and consume them.  Blocking policy: peek + commit of
    # everything read (a previous peek included); returns -2 (TW_ADVANCE_NOT_OWNER) if the
    # ring was taken over.  Broadcast: records lost to lapping are skipped and counted in
    # r.last_missed (this call) and r.missed (total); the count copied is returned.

cdef inline Py_ssize_t tw_ring_pending(const tw_ring *r) noexcept nogil:
    """Blocking consumer: records read (peeked) and not yet committed."""
    return <Py_ssize_t>(r.rpos - r.committed)


cdef class Ring:
    cdef tw_ring c                # the handle, for other Cython modules (engine workers)
    cdef readonly str name        # the POSIX shm name, with its leading "/"
    cdef readonly object dtype    # numpy dtype of one record
    cdef bytes _bname             # name as bytes, for shm_unlink at close
    cdef bint _owner              # this handle created the segment: it unlinks it on close
    cdef object _ok_descr         # a dtype object last found equal to `dtype` (fast checks)
    cdef char *_scratch           # one record, for pop()
    cdef uint64_t _last_missed    # broadcast: missed during the last pop/pop_many call
    cdef int _inuse               # calls on this handle that may wait or copy without the GIL
    cdef long _pid                # the process that opened it: a forked child's copy only unmaps
    cdef int _check_open(self) except -1
    cdef int _check_role(self, int role, str what) except -1
    cdef int _open(self, tw_ring_hdr *hdr, size_t size, int role) except -1
    cdef void _close_c(self) noexcept
    cdef int _wait_readable(self, int64_t deadline) except -2
    cdef int _wait_writable(self, Py_ssize_t n, int64_t deadline) except -2
    cdef int _check_dtype(self, object dt, str what) except -1
    cdef object _scalar(self, const char *p)
