# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Benchmark-only helpers for bench_ring.py, bench_hdr.py and bench_feed.py.

Not part of tickwire: compiled on demand by ``benchmarks/cbuild.py`` into
``build/bench`` (never into the wheel).  Tight nogil loops over tickwire's C APIs
(``cimport tickwire.ext.ring`` / ``tickwire.ext.hdr``), the plain C limits of ``tw_limits.h``,
and raw libzmq send/receive loops for the feed benchmark's publisher and echo process.
"""

from libc.stdint cimport int64_t, uint64_t, uintptr_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset

from tickwire.ext.ring cimport (Ring, tw_ring, tw_ring_hdr, tw_ring_claim, tw_ring_written,
                                tw_ring_publish, tw_ring_push, tw_ring_pop_n, tw_ring_wait_writable,
                                tw_ring_wait_readable, tw_mono_ns, tw_cpu_relax,
                                TW_ROLE_PRODUCER, TW_ROLE_CONSUMER, TW_WAIT_EOF)
from tickwire.ext.hdr cimport Recorder, tw_hdr, tw_hdr_record

cdef extern from "tw_limits.h" nogil:
    void twb_limit_produce(tw_ring_hdr *h, char *data, uint64_t n, const char *tmpl,
                           uint64_t batch, size_t seq_off, int64_t spin_ns)
    uint64_t twb_limit_consume(tw_ring_hdr *h, const char *data, uint64_t n, char *buf,
                               uint64_t batch, size_t seq_off, int64_t spin_ns)
    void twb_limit_produce_paced(tw_ring_hdr *h, char *data, uint64_t n, const char *tmpl,
                                 int64_t start_ns, int64_t interval_ns)
    void twb_limit_consume_latency(tw_ring_hdr *h, const char *data, uint64_t n, char *buf,
                                   int64_t *lat)
    int64_t twb_plain_hdr(const int64_t *values, int64_t n, int64_t *counts)


# ---------------------------------------------------------------------------------------------
# rings: record i carries i at byte offset seq_off (the canonical event's seq field: 16)
# ---------------------------------------------------------------------------------------------

def limit_produce(Ring ring, uint64_t n, uint64_t batch, size_t seq_off):
    """The limit's producer: n records, one release store of head per ``batch``; waits as
    the ring does (spin ``ring.spin_ns``, then the futex)."""
    cdef char *tmpl = <char *>calloc(1, ring.c.rsize)
    with nogil:
        twb_limit_produce(ring.c.hdr, ring.c.data, n, tmpl, batch, seq_off, ring.c.spin_ns)
    free(tmpl)


def limit_consume(Ring ring, uint64_t n, uint64_t batch, size_t seq_off):
    """The limit's consumer: n records, up to ``batch`` per copy and tail store; waits as the
    ring does; returns the sum of their numbers."""
    cdef char *buf = <char *>malloc(ring.c.rsize * batch)
    cdef uint64_t s
    with nogil:
        s = twb_limit_consume(ring.c.hdr, ring.c.data, n, buf, batch, seq_off, ring.c.spin_ns)
    free(buf)
    return s


def push(Ring ring, uint64_t n, Py_ssize_t batch, size_t seq_off):
    """tickwire's C API: n records filled in place (tw_ring_claim / tw_ring_written) and
    published every ``batch`` records (1: one tw_ring_publish per record), waiting when full."""
    cdef tw_ring *r = &ring.c
    cdef uint64_t i
    cdef Py_ssize_t inbatch = 0
    cdef char *slot
    cdef char *tmpl = <char *>calloc(1, r.rsize)
    ring._check_role(TW_ROLE_PRODUCER, "push")
    with nogil:
        for i in range(n):
            slot = <char *>tw_ring_claim(r)
            while slot == NULL:
                tw_ring_wait_writable(r, 1, -1)
                slot = <char *>tw_ring_claim(r)
            memcpy(slot, tmpl, r.rsize)
            memcpy(slot + seq_off, &i, 8)
            tw_ring_written(r)
            inbatch += 1
            if inbatch == batch:
                tw_ring_publish(r)
                inbatch = 0
        tw_ring_publish(r)
    free(tmpl)


def pop(Ring ring, uint64_t n, Py_ssize_t batch, size_t seq_off):
    """tickwire's C API: tw_ring_pop_n up to ``batch`` at a time (waiting with the ring's
    spin-then-futex wait) until n records arrived; returns (sum of numbers, received, missed)."""
    cdef tw_ring *r = &ring.c
    cdef char *buf = <char *>malloc(r.rsize * batch)
    cdef uint64_t got = 0, s = 0, v
    cdef Py_ssize_t k, j
    ring._check_role(TW_ROLE_CONSUMER, "pop")
    with nogil:
        while got + r.missed < n:
            k = tw_ring_pop_n(r, buf, batch)
            if k <= 0:
                if tw_ring_wait_readable(r, -1) == TW_WAIT_EOF:
                    break
                continue
            for j in range(k):
                memcpy(&v, buf + j * r.rsize + seq_off, 8)
                s += v
            got += <uint64_t>k
    free(buf)
    return s, got, r.missed


def limit_latency_produce(Ring ring, uint64_t n, int64_t start_ns, int64_t interval_ns):
    """The limit, paced: record i is due at start_ns + i * interval_ns (CLOCK_MONOTONIC)."""
    cdef char *tmpl = <char *>calloc(1, ring.c.rsize)
    with nogil:
        twb_limit_produce_paced(ring.c.hdr, ring.c.data, n, tmpl, start_ns, interval_ns)
    free(tmpl)


def limit_latency_consume(Ring ring, int64_t[::1] lat):
    """The limit: consume len(lat) records, lat[i] = arrival - intended send time (ns)."""
    cdef char *buf = <char *>calloc(1, ring.c.rsize)
    with nogil:
        twb_limit_consume_latency(ring.c.hdr, ring.c.data, lat.shape[0], buf, &lat[0])
    free(buf)


def latency_produce(Ring ring, uint64_t n, int64_t start_ns, int64_t interval_ns):
    """tickwire's C API, paced like the limit: one tw_ring_push per record."""
    cdef tw_ring *r = &ring.c
    cdef char *rec = <char *>calloc(1, r.rsize)
    cdef uint64_t i
    cdef int64_t due
    ring._check_role(TW_ROLE_PRODUCER, "latency_produce")
    with nogil:
        for i in range(n):
            due = start_ns + <int64_t>i * interval_ns
            while tw_mono_ns() < due:
                tw_cpu_relax()
            memcpy(rec, &i, 8)
            memcpy(rec + 8, &due, 8)
            while not tw_ring_push(r, rec):
                tw_ring_wait_writable(r, 1, -1)
    free(rec)


def latency_consume(Ring ring, int64_t[::1] lat):
    """tickwire's C API: pop len(lat) records one at a time (the ring's spin-then-futex
    wait), lat[i] = arrival - intended send time (ns)."""
    cdef tw_ring *r = &ring.c
    cdef char *buf = <char *>calloc(1, r.rsize)
    cdef Py_ssize_t i = 0, n = lat.shape[0]
    cdef int64_t stamp
    ring._check_role(TW_ROLE_CONSUMER, "latency_consume")
    with nogil:
        while i < n:
            if tw_ring_pop_n(r, buf, 1) != 1:
                tw_ring_wait_readable(r, -1)
                continue
            memcpy(&stamp, buf + 8, 8)
            lat[i] = tw_mono_ns() - stamp
            i += 1
    free(buf)


# ---------------------------------------------------------------------------------------------
# HDR
# ---------------------------------------------------------------------------------------------

def hdr_record(Recorder rec, const int64_t[::1] values):
    """tickwire's C recorder: tw_hdr_record (hdr.pxd, inline) for every value, no GIL."""
    cdef Py_ssize_t i, n = values.shape[0]
    cdef tw_hdr *h = rec.h
    with nogil:
        for i in range(n):
            tw_hdr_record(h, values[i])


def plain_hdr(const int64_t[::1] values, int64_t[::1] counts):
    """The limit: the same bucket arithmetic on a plain counts array (tw_limits.h); returns
    the values out of range.  ``counts`` needs 27,648 slots."""
    cdef int64_t r
    if counts.shape[0] < 27648:
        raise ValueError("counts needs 27,648 slots")
    with nogil:
        r = twb_plain_hdr(&values[0], values.shape[0], &counts[0])
    return r


# ---------------------------------------------------------------------------------------------
# raw libzmq (bench_feed.py): the publisher that outruns the receivers, and the echo /
# ping-pong of the latency test.  libzmq is the one pyzmq loaded (tickwire.ext.codec.load_libzmq
# finds it); the three functions are resolved here with dlsym, as codec.pyx does.
# ---------------------------------------------------------------------------------------------

cdef extern from *:
    """
    #include <dlfcn.h>
    #ifndef RTLD_NOLOAD
    #define RTLD_NOLOAD 4
    #endif
    #define TWB_ZMQ_SNDMORE 2
    static int (*twb_zmq_send_fn)(void *, const void *, size_t, int) = NULL;
    static int (*twb_zmq_recv_fn)(void *, void *, size_t, int) = NULL;
    static int (*twb_zmq_errno_fn)(void) = NULL;
    static int twb_zmq_load(const char *path) {
        void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
        if (!h) return -1;
        *(void **)(&twb_zmq_send_fn) = dlsym(h, "zmq_send");
        *(void **)(&twb_zmq_recv_fn) = dlsym(h, "zmq_recv");
        *(void **)(&twb_zmq_errno_fn) = dlsym(h, "zmq_errno");
        return twb_zmq_send_fn && twb_zmq_recv_fn && twb_zmq_errno_fn ? 0 : -1;
    }
    static inline int twb_zmq_send(void *s, const void *b, size_t n, int f) { return twb_zmq_send_fn(s, b, n, f); }
    static inline int twb_zmq_recv(void *s, void *b, size_t n, int f) { return twb_zmq_recv_fn(s, b, n, f); }
    static inline int twb_zmq_errno(void) { return twb_zmq_errno_fn(); }
    """
    const int TWB_ZMQ_SNDMORE
    int twb_zmq_load(const char *path) noexcept
    int twb_zmq_send(void *s, const void *buf, size_t n, int flags) noexcept nogil
    int twb_zmq_recv(void *s, void *buf, size_t n, int flags) noexcept nogil
    int twb_zmq_errno() noexcept nogil

cdef bint _zmq_ready = False


cdef void *_socket(object sock) except NULL:
    global _zmq_ready
    cdef uintptr_t h
    if not _zmq_ready:
        import os
        from tickwire.ext.codec import load_libzmq
        if twb_zmq_load(os.fsencode(load_libzmq())) != 0:
            raise RuntimeError("cannot resolve zmq_send/zmq_recv/zmq_errno in pyzmq's libzmq")
        _zmq_ready = True
    h = sock.underlying
    if h == 0:
        raise ValueError("socket is closed")
    return <void *>h


def raw_pingpong(sock, int64_t[::1] out_ns, Py_ssize_t size):
    """Send ``size`` bytes and wait for the echo, ``len(out_ns)`` times, through libzmq
    without the GIL; each round trip in ns into ``out_ns``.  Returns 0 or a libzmq errno."""
    cdef void *s = _socket(sock)
    cdef Py_ssize_t i, n = out_ns.shape[0]
    cdef char buf[65536]
    cdef int64_t t0
    cdef int err = 0
    if not 0 < size <= 65536:
        raise ValueError("size must be 1..65536")
    memset(buf, 0, size)
    with nogil:
        for i in range(n):
            t0 = tw_mono_ns()
            if twb_zmq_send(s, buf, size, 0) < 0 or twb_zmq_recv(s, buf, 65536, 0) < 0:
                err = twb_zmq_errno()
                break
            out_ns[i] = tw_mono_ns() - t0
    return err


def raw_echo(sock, Py_ssize_t n):
    """Echo ``n`` messages back through libzmq without the GIL; 0 or a libzmq errno."""
    cdef void *s = _socket(sock)
    cdef Py_ssize_t i
    cdef char buf[65536]
    cdef int got, err = 0
    with nogil:
        for i in range(n):
            got = twb_zmq_recv(s, buf, 65536, 0)
            if got < 0 or twb_zmq_send(s, buf, min(got, 65536), 0) < 0:
                err = twb_zmq_errno()
                break
    return err


def raw_publish(sock, bytes topic, list payloads):
    """Send ``[topic][payload]`` for each payload through libzmq without the GIL (the feed
    benchmark's publisher, so that it outruns the receivers it measures).  0 or an errno."""
    cdef void *s = _socket(sock)
    cdef Py_ssize_t i, n = len(payloads)
    cdef const char **data = <const char **>calloc(max(n, 1), sizeof(char *))
    cdef Py_ssize_t *size = <Py_ssize_t *>calloc(max(n, 1), sizeof(Py_ssize_t))
    cdef const char *t = topic
    cdef Py_ssize_t tlen = len(topic)
    cdef int err = 0
    if data == NULL or size == NULL:
        free(data)
        free(size)
        raise MemoryError()
    try:
        for i in range(n):
            p = payloads[i]
            if not isinstance(p, bytes):
                raise TypeError("payloads must be bytes")
            data[i] = <const char *><bytes>p
            size[i] = len(<bytes>p)
        with nogil:                        # the list keeps the payloads alive
            for i in range(n):
                if (twb_zmq_send(s, t, tlen, TWB_ZMQ_SNDMORE) < 0
                        or twb_zmq_send(s, data[i], size[i], 0) < 0):
                    err = twb_zmq_errno()
                    break
    finally:
        free(data)
        free(size)
    return err
