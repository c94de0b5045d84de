"""The C loops of ``tickwire bench`` (tickwire.engine.bench): a paced publisher, a libzmq
subscriber (the ZeroMQ floor), a paced ring producer (the ring floor) and the signal consumer.

Each loop runs without the GIL over arrays the caller allocated, a chunk at a time (the caller
prints progress between chunks; the schedule is absolute, so chunking adds no drift).

- :func:`publish`: sends pre-encoded wire messages on a PUB socket at a constant offered rate,
  wrk2-style. Message ``g`` is *meant* to leave at ``start_ns + events_before(g) * ns_per_event``;
  that intended time goes into the header's ``send_time`` (and the sequence number into its
  ``seq``), so a late send, a stall of the publisher or of anything after it, counts in full.
- :func:`subscribe`: receives on a SUB socket through libzmq itself and stamps each message:
  receipt minus the header's ``send_time`` is the libzmq hop from the same schedule; as the
  relay floor it also pushes a signal record into a ring for chosen messages (the target's).
- :func:`ring_paced`: pushes one signal record per interval into a ring (the ring-hop floor).
- :func:`consume`: pops signals from rings, stamping each on receipt (CLOCK_REALTIME, the clock
  of ``send_time``, ``ts_recv`` and ``ts_signal``).

libzmq is the library pyzmq loaded (``tickwire.ext.codec.libzmq_path``), its few functions
resolved with ``dlsym``: no zmq.h, no link-time dependency (as in ``tickwire.ext.codec``).
"""

from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t, uintptr_t
from libc.string cimport memcpy, memset

from tickwire.ext.defs cimport tw_event, tw_signal
from tickwire.ext.ring cimport Ring, tw_ring, tw_ring_pop_n, tw_ring_wait_readable, tw_ring_push_n

cdef extern from *:
    """
    #include <dlfcn.h>
    #include <errno.h>
    #include <time.h>
    #include <string.h>
    #include <sys/prctl.h>
    #ifndef RTLD_NOLOAD
    #define RTLD_NOLOAD 4
    #endif
    typedef struct twh_zmq_msg { void *p[8]; } twh_zmq_msg;   /* zmq_msg_t: 64 bytes */
    #define TWH_DONTWAIT 1
    #define TWH_SNDMORE 2
    static struct {
        int (*send)(void *, const void *, size_t, int);
        int (*msg_init)(twh_zmq_msg *);
        int (*msg_recv)(twh_zmq_msg *, void *, int);
        void *(*msg_data)(twh_zmq_msg *);
        size_t (*msg_size)(const twh_zmq_msg *);
        int (*msg_more)(const twh_zmq_msg *);
        int (*msg_close)(twh_zmq_msg *);
        void *handle;
    } twh;
    static const char *twh_load(const char *path) {
        void *h;
        const char *missing = NULL;
        if (twh.handle) return NULL;
        h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
        if (!h) { const char *e = dlerror(); return e ? e : "dlopen failed"; }
    #define TWH_SYM(f, name) if (!missing && !(*(void **)(&twh.f) = dlsym(h, name))) missing = name;
        TWH_SYM(send, "zmq_send") TWH_SYM(msg_init, "zmq_msg_init") TWH_SYM(msg_recv, "zmq_msg_recv")
        TWH_SYM(msg_data, "zmq_msg_data") TWH_SYM(msg_size, "zmq_msg_size")
        TWH_SYM(msg_more, "zmq_msg_more") TWH_SYM(msg_close, "zmq_msg_close")
    #undef TWH_SYM
        if (missing) { dlclose(h); return missing; }
        twh.handle = h;
        return NULL;
    }
    static inline int twh_send(void *s, const void *b, size_t n, int f) { return twh.send(s, b, n, f); }
    static inline int twh_msg_init(twh_zmq_msg *m) { return twh.msg_init(m); }
    static inline int twh_msg_recv(twh_zmq_msg *m, void *s, int f) { return twh.msg_recv(m, s, f); }
    static inline const char *twh_msg_data(twh_zmq_msg *m) { return (const char *)twh.msg_data(m); }
    static inline size_t twh_msg_size(const twh_zmq_msg *m) { return twh.msg_size(m); }
    static inline int twh_msg_more(const twh_zmq_msg *m) { return twh.msg_more(m); }
    static inline int twh_msg_close(twh_zmq_msg *m) { return twh.msg_close(m); }
    static inline int64_t twh_now(void) {
        struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    static inline void twh_sleep_until(int64_t t) {
        struct timespec ts; ts.tv_sec = t / 1000000000; ts.tv_nsec = t % 1000000000;
        while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
    }
    static inline void twh_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #endif
    }
    /* Wait until `t` (CLOCK_REALTIME ns): sleep until spin_ns before it, then spin. */
    static inline void twh_wait_until(int64_t t, int64_t spin_ns) {
        int64_t now = twh_now();
        if (t - now > spin_ns) twh_sleep_until(t - spin_ns);
        while (twh_now() < t) twh_relax();
    }
    /* wake from clock_nanosleep on time, not up to 50 us late (the default timer slack) */
    static inline void twh_tight_timers(void) { prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); }
    static inline void twh_st64(char *p, uint64_t v) { memcpy(p, &v, 8); }
    static inline uint64_t twh_ld64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
    """
    ctypedef struct twh_zmq_msg:
        void *p[8]
    const int TWH_DONTWAIT
    const int TWH_SNDMORE
    const char *twh_load(const char *path) noexcept
    int twh_send(void *s, const void *b, size_t n, int f) noexcept nogil
    int twh_msg_init(twh_zmq_msg *m) noexcept nogil
    int twh_msg_recv(twh_zmq_msg *m, void *s, int f) noexcept nogil
    const char *twh_msg_data(twh_zmq_msg *m) noexcept nogil
    size_t twh_msg_size(const twh_zmq_msg *m) noexcept nogil
    int twh_msg_more(const twh_zmq_msg *m) noexcept nogil
    int twh_msg_close(twh_zmq_msg *m) noexcept nogil
    int64_t twh_now() noexcept nogil
    void twh_sleep_until(int64_t t) noexcept nogil
    void twh_wait_until(int64_t t, int64_t spin_ns) noexcept nogil
    void twh_tight_timers() noexcept nogil
    void twh_st64(char *p, uint64_t v) noexcept nogil
    uint64_t twh_ld64(const char *p) noexcept nogil

cdef enum:
    _HDR_SEQ = 16                 # wire header offsets (docs/wire-format.md)
    _HDR_SEND_TIME = 24
    _HDR_SIZE = 48
    _MAX_RINGS = 16
    _RELAY_MAX = 64               # records the relay floor pushes at once (the engine's piece)
    _POP = 256


def now_ns():
    """CLOCK_REALTIME in ns: the clock of ``send_time``, ``ts_recv``, ``ts_signal`` and receipts."""
    return twh_now()


cdef int _load() except -1:
    from tickwire.ext.codec import libzmq_path
    path = libzmq_path()
    if path is None:
        raise RuntimeError("cannot find the libzmq pyzmq loaded")
    cdef bytes b = path.encode()
    cdef const char *err = twh_load(b)
    if err != NULL:
        raise RuntimeError(f"libzmq at {path}: {err.decode(errors='replace')}")
    twh_tight_timers()
    return 0


cdef class Schedule:
    """Pre-encoded messages and the publisher's position in their constant-rate schedule.

    Parameters
    ----------
    payloads : numpy.ndarray of uint8
        The wire payloads (48-byte header + events) one after another; patched in place
        (``seq``, ``send_time``, event ``ts_event``) as they are sent.
    offsets : numpy.ndarray of int64
        ``len(messages) + 1`` offsets into ``payloads``.
    channels : numpy.ndarray of uint16
        The channel of each message.
    start_ns : int
        CLOCK_REALTIME ns at which message 0 is meant to leave.
    rate : float
        Offered events per second.
    ts_span : int
        Added to every event's ``ts_event`` on each pass over the messages (time keeps
        going forward when the stream repeats).
    """

    cdef readonly object payloads, offsets, channels, topics, ts0
    cdef char *buf
    cdef const int64_t *off
    cdef const uint16_t *chan
    cdef int64_t *orig_ts
    cdef readonly int64_t nmsg, start_ns, total_events, ts_span, sent, late, max_late_ns
    cdef readonly double ns_per_event
    cdef uint64_t next_seq[65536]
    cdef int64_t *cum               # events before message k within one pass
    cdef object _cum
    cdef char *tops[65536]          # topic of each channel (kept alive by self.topics)

    def __init__(self, payloads, offsets, channels, int64_t start_ns, double rate, int64_t ts_span=0):
        import numpy as np
        from tickwire.ext.codec import topic
        if rate <= 0:
            raise ValueError(f"rate must be > 0 events/s, got {rate}")
        self.payloads = payloads
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.channels = np.ascontiguousarray(channels, dtype=np.uint16)
        self.nmsg = len(self.offsets) - 1
        if self.nmsg < 1 or len(self.channels) != self.nmsg:
            raise ValueError("offsets must be one longer than channels, with at least one message")
        counts = (np.diff(self.offsets) - _HDR_SIZE) // 64
        self._cum = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.total_events = int(self._cum[self.nmsg])
        self.topics = {int(c): topic(int(c)) for c in np.unique(self.channels)}
        # the original ts_event of every event (its first 8 bytes), to shift on each pass
        starts = np.repeat(self.offsets[:self.nmsg] + _HDR_SIZE, counts)
        within = np.arange(self.total_events) - np.repeat(self._cum[:self.nmsg], counts)
        ev_off = starts + 64 * within
        self.ts0 = np.ascontiguousarray(payloads[(ev_off[:, None] + np.arange(8)).ravel()].view(np.int64))
        if len(self.ts0) == 0:
            self.ts0 = np.zeros(1, np.int64)
        cdef int64_t[::1] offv = self.offsets
        cdef uint16_t[::1] chv = self.channels
        cdef uint8_t[::1] pv = payloads
        cdef int64_t[::1] tv = self.ts0
        cdef int64_t[::1] cv = self._cum
        self.buf = <char *>&pv[0]
        self.off = &offv[0]
        self.chan = &chv[0]
        self.orig_ts = &tv[0]
        self.cum = &cv[0]
        self.start_ns = start_ns
        self.ns_per_event = 1e9 / rate
        self.ts_span = ts_span
        self.sent = self.late = self.max_late_ns = 0
        for i in range(65536):
            self.next_seq[i] = 1

    def intended_ns(self, int64_t g):
        """When message ``g`` (counting over passes) is meant to leave."""
        return self._intended(g)

    cdef inline int64_t _intended(self, int64_t g) noexcept nogil:
        cdef int64_t p = g // self.nmsg, k = g % self.nmsg
        return self.start_ns + <int64_t>((p * self.total_events + self.cum[k]) * self.ns_per_event)

    def intended(self, int64_t g):
        """The intended send time (ns) of message ``g`` (0: the first of the run)."""
        if g < 0:
            raise ValueError(f"message number must be >= 0, got {g}")
        return self._intended(g)

    def publish(self, sock, int64_t until_ns, out_chan, out_seq, out_count, out_intended, out_sent,
                int64_t spin_ns=20_000, int64_t stall_at=-1, int64_t stall_ns=0):
        """Send messages from :attr:`sent` on, each at its intended time (or at once when late),
        until the next one is meant after ``until_ns`` or the output arrays are full.

        The output arrays (one slot per message sent, from index :attr:`sent`): channel, first
        sequence number, events, intended and actual send time. ``stall_at``: before that message
        the publisher sleeps ``stall_ns`` (tests: a publisher stall must show in the tail).
        Returns the number of messages sent by this call; -1 when libzmq refused a send.
        """
        _check_outputs(("out_chan", "out_seq", "out_count", "out_intended", "out_sent"),
                       (out_chan, out_seq, out_count, out_intended, out_sent), 0)
        _load()
        cdef uintptr_t handle = sock.underlying
        cdef void *s = <void *>handle
        cdef uint16_t[::1] oc = out_chan
        cdef uint64_t[::1] os_ = out_seq
        cdef uint32_t[::1] on = out_count
        cdef int64_t[::1] oi = out_intended
        cdef int64_t[::1] ot = out_sent
        cdef int64_t cap = len(out_chan)
        cdef int64_t g, k, p, t, now, j, n0, n1, ev0, shift
        cdef uint64_t seq, cnt
        cdef uint16_t c
        cdef char *msg
        cdef char *e
        cdef const char *tp
        cdef int rc = 0
        cdef int64_t done = 0
        cdef char **tops = self.tops
        for ch, tb in self.topics.items():
            tops[<int>ch] = <char *>(<bytes>tb)
        with nogil:
            while self.sent < cap:
                g = self.sent
                t = self._intended(g)
                if t > until_ns:
                    break
                p = g // self.nmsg
                k = g % self.nmsg
                n0 = self.off[k]
                n1 = self.off[k + 1]
                msg = self.buf + n0
                c = self.chan[k]
                cnt = <uint64_t>((n1 - n0 - _HDR_SIZE) // 64)
                seq = self.next_seq[c]
                self.next_seq[c] = seq + cnt
                twh_st64(msg + _HDR_SEQ, seq)
                twh_st64(msg + _HDR_SEND_TIME, <uint64_t>t)
                if self.ts_span:
                    shift = p * self.ts_span
                    ev0 = self.cum[k]
                    for j in range(<int64_t>cnt):
                        e = msg + _HDR_SIZE + j * 64
                        twh_st64(e, <uint64_t>(self.orig_ts[ev0 + j] + shift))
                if g == stall_at and stall_ns > 0:
                    twh_sleep_until(twh_now() + stall_ns)
                twh_wait_until(t, spin_ns)
                now = twh_now()
                if now - t > 10_000:          # later than 10 us
                    self.late += 1
                    if now - t > self.max_late_ns:
                        self.max_late_ns = now - t
                if twh_send(s, tops[c], 9, TWH_SNDMORE) < 0 or twh_send(s, msg, n1 - n0, 0) < 0:
                    rc = -1
                    break
                oc[g] = c
                os_[g] = seq
                on[g] = <uint32_t>cnt
                oi[g] = t
                ot[g] = now
                self.sent = g + 1
                done += 1
        return -1 if rc < 0 else done


cdef int _check_outputs(tuple names, tuple arrays, int64_t start) except -1:
    """The output arrays are written at the same indices, up to the first one's length and from
    ``start``: each must be at least that long (the C loop does not check), ``start`` >= 0."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    n = len(arrays[0])
    for name, a in zip(names[1:], arrays[1:]):
        if len(a) < n:
            raise ValueError(f"{name} has {len(a)} slots, fewer than the {n} of {names[0]}: the output "
                             f"arrays are written at the same indices")
    return 0


cdef inline int64_t _lower_bound(const uint64_t *keys, int64_t n, uint64_t key) noexcept nogil:
    """First index of sorted ``keys`` not below ``key``."""
    cdef int64_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


def subscribe(sock, int64_t until_ns, out_seq, out_chan, out_send, out_recv, int64_t start=0, bint spin=False,
              Ring relay=None, relay_keys=None, relay_seq=None, relay_inst=None):
    """Receive ``[topic][payload]`` messages on a SUB socket through libzmq and stamp each on
    receipt, until CLOCK_REALTIME passes ``until_ns`` or the arrays are full (from index
    ``start``): header seq, channel, send_time and receipt. A blocking socket needs a receive
    timeout (``zmq.RCVTIMEO``) for the deadline to be seen; ``spin``: poll without blocking.

    ``relay`` (a ring this process produces into): the relay floor.  A message whose key
    (channel << 48 | its first seq) is in ``relay_keys`` (sorted uint64) is passed on at once:
    one signal record per matching key, ``seq``/``instrument`` from ``relay_seq``/``relay_inst``
    at the key's index, ``ts_recv`` = the receipt, ``ts_signal`` = the moment of the push, the
    message's records in one push (as the engine pushes a piece's signals).  The
    bare transport's path for the messages that carried a target's signals, nothing in between.
    Returns the next free index."""
    _check_outputs(("out_seq", "out_chan", "out_send", "out_recv"), (out_seq, out_chan, out_send, out_recv),
                   start)
    _load()
    cdef uintptr_t handle = sock.underlying
    cdef void *s = <void *>handle
    cdef uint64_t[::1] oq = out_seq
    cdef uint16_t[::1] oc = out_chan
    cdef int64_t[::1] os_ = out_send
    cdef int64_t[::1] orr = out_recv
    cdef int64_t i = start, cap = len(out_seq), now, nkeys = 0, j
    cdef twh_zmq_msg topic_m, msg
    cdef const char *d
    cdef int flags = TWH_DONTWAIT if spin else 0
    cdef uint64_t[::1] rk
    cdef uint64_t[::1] rq
    cdef uint32_t[::1] ri
    cdef const uint64_t *keys = NULL
    cdef uint64_t key
    cdef tw_ring *ring = NULL
    cdef tw_signal recs[_RELAY_MAX]
    cdef int64_t nrec, m, t
    memset(recs, 0, sizeof(recs))
    if relay is not None:
        rk, rq, ri = relay_keys, relay_seq, relay_inst
        nkeys = len(rk)
        if len(rq) != nkeys or len(ri) != nkeys:
            raise ValueError("relay_keys, relay_seq and relay_inst must be the same length")
        if nkeys:
            keys = &rk[0]
        ring = &relay.c
    with nogil:
        twh_msg_init(&topic_m)
        twh_msg_init(&msg)
        while i < cap:
            if twh_msg_recv(&topic_m, s, flags) < 0:
                if twh_now() > until_ns:
                    break
                continue
            if not twh_msg_more(&topic_m) or twh_msg_recv(&msg, s, 0) < 0:
                continue
            now = twh_now()
            if twh_msg_size(&msg) >= _HDR_SIZE:
                d = twh_msg_data(&msg)
                oq[i] = twh_ld64(d + _HDR_SEQ)
                oc[i] = (<uint8_t>d[8]) | ((<uint16_t><uint8_t>d[9]) << 8)
                os_[i] = <int64_t>twh_ld64(d + _HDR_SEND_TIME)
                orr[i] = now
                if nkeys:
                    # the message's records go into the ring together, as the engine pushes the
                    # signals of a piece of events at once (one wake-up of the consumer)
                    key = ((<uint64_t>oc[i]) << 48) | oq[i]
                    j = _lower_bound(keys, nkeys, key)
                    nrec = 0
                    while j < nkeys and keys[j] == key:
                        recs[nrec].ts_recv = now
                        recs[nrec].seq = rq[j]
                        recs[nrec].instrument = ri[j]
                        nrec += 1
                        j += 1
                        if nrec == _RELAY_MAX or not (j < nkeys and keys[j] == key):
                            t = twh_now()
                            for m in range(nrec):
                                recs[m].ts_signal = t
                            tw_ring_push_n(ring, recs, nrec)
                            nrec = 0
                i += 1
            if now > until_ns:
                break
        twh_msg_close(&topic_m)
        twh_msg_close(&msg)
    return i


def ring_paced(Ring ring not None, int64_t start_ns, int64_t interval_ns, int64_t n, int64_t spin_ns=20_000):
    """Push ``n`` signal records into ``ring``, record ``i`` at ``start_ns + i * interval_ns``:
    ``ts_recv`` = that intended time, ``ts_signal`` = the moment of the push, ``seq`` = i + 1.
    The ring hop of a consumer is its receipt minus ``ts_signal``."""
    cdef tw_signal rec
    cdef int64_t i, t
    memset(&rec, 0, sizeof(rec))
    with nogil:
        for i in range(n):
            t = start_ns + i * interval_ns
            twh_wait_until(t, spin_ns)
            rec.ts_recv = t
            rec.seq = <uint64_t>(i + 1)
            rec.ts_signal = twh_now()
            tw_ring_push_n(&ring.c, &rec, 1)
    return n


def consume(rings, int64_t until_ns, out_seq, out_inst, out_recv_ts, out_signal_ts, out_receipt,
            int64_t start=0, int64_t idle_ns=-1):
    """Pop signals from ``rings`` (Ring objects, consumers) and stamp each on receipt, from
    index ``start`` of the output arrays: the triggering event's seq, instrument, ts_recv,
    ts_signal, and the receipt (CLOCK_REALTIME). Waits (spin, then sleep on the ring's futex)
    while nothing is there. Stops when the clock passes ``until_ns``, when every ring is closed
    and drained, when the arrays are full, or (``idle_ns`` >= 0) after that long without a
    signal. Returns the next free index."""
    cdef tw_ring *rs[16]
    cdef int nr = len(rings), j, st, closed
    cdef tw_signal buf[256]
    cdef Py_ssize_t k, m
    cdef int64_t i = start, cap = len(out_seq), now, last
    cdef Py_ssize_t got
    cdef uint64_t[::1] oq = out_seq
    cdef uint32_t[::1] oi = out_inst
    cdef int64_t[::1] orv = out_recv_ts
    cdef int64_t[::1] osg = out_signal_ts
    cdef int64_t[::1] orc = out_receipt
    if not 0 < nr <= _MAX_RINGS:
        raise ValueError(f"1..{_MAX_RINGS} rings, got {nr}")
    _check_outputs(("out_seq", "out_inst", "out_recv_ts", "out_signal_ts", "out_receipt"),
                   (out_seq, out_inst, out_recv_ts, out_signal_ts, out_receipt), start)
    for j in range(nr):
        if not isinstance(rings[j], Ring):
            raise TypeError(f"rings[{j}] must be a Ring, got {type(rings[j]).__name__}")
        rs[j] = &(<Ring>rings[j]).c
    with nogil:
        last = twh_now()
        while i < cap:
            got = 0
            for j in range(nr):
                k = tw_ring_pop_n(rs[j], buf, min(<int64_t>_POP, cap - i))
                if k <= 0:
                    continue
                now = twh_now()
                for m in range(k):
                    oq[i] = buf[m].seq
                    oi[i] = buf[m].instrument
                    orv[i] = buf[m].ts_recv
                    osg[i] = buf[m].ts_signal
                    orc[i] = now
                    i += 1
                got += k
                last = now
            if got:
                continue
            now = twh_now()
            if now > until_ns or (idle_ns >= 0 and now - last > idle_ns):
                break
            closed = 0
            for j in range(nr):
                st = tw_ring_wait_readable(rs[j], 0 if nr > 1 else 1_000_000)
                closed += st < 0
            if closed == nr:
                break
    return i
