"""The wire codec and the ZeroMQ receive loop, in Cython, without Python or the GIL per message.

- :class:`Decoder` / :func:`encode`: check and decode (or build) one message of the wire
  format (``docs/wire-format.md``; the plain-Python reference is :mod:`tickwire.feeds.wire`).
  Malformed input is counted per :class:`~tickwire.feeds.wire.Drop` reason, never raised on
  the hot path.
- :class:`FeedReceiver`: drains ZeroMQ SUB/PULL sockets into the caller's event buffer
  through libzmq itself, with the GIL released around the whole drain and the blocking
  wait; in-sequence data of live channels goes straight into the buffer, and anything
  else (a gap, a new publisher epoch, a channel in recovery) is parked for the Python
  feed handler (:mod:`tickwire.feeds.handler`), which does sequencing and recovery.

libzmq is reached through the very library pyzmq loaded (found in ``/proc/self/maps`` and
opened with ``RTLD_NOLOAD``), its functions resolved with ``dlsym`` into pointers whose
prototypes follow libzmq's documented API: no zmq.h, no link-time dependency, and the same
sockets pyzmq created (``Socket.underlying``).
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t, uintptr_t, UINT64_MAX
from libc.stdlib cimport calloc, realloc, free
from libc.string cimport memcpy, memset

from tickwire.ext.defs cimport (
    tw_event, tw_misaligned, TW_KIND_MAX, TW_KIND_SNAPSHOT, TW_SIDE_NONE, TW_LIKELY, TW_UNLIKELY,
    TW_FLAG_LAST, TW_FLAG_SNAPSHOT, TW_FLAG_SNAPSHOT_BEGIN, TW_FLAG_SNAPSHOT_END, TW_FLAG_REPLAY, TW_FLAG_STALE)

import errno as _errno
import os

import numpy as np

from tickwire.ext.records import EVENT_DTYPE
from tickwire.feeds.wire import MAX_MESSAGE_EVENTS, Drop, Header, MsgType

cdef extern from *:
    """
    #include <dlfcn.h>
    #include <errno.h>
    #include <time.h>
    #ifndef RTLD_NOLOAD
    #define RTLD_NOLOAD 4
    #endif

    /* libzmq's documented ABI (zmq.h of libzmq 4.x), written out so no header is needed. */
    typedef struct tw_zmq_msg { void *p[8]; } tw_zmq_msg;          /* zmq_msg_t: 64 bytes, pointer-aligned */
    typedef struct tw_zmq_pollitem { void *socket; int fd; short events; short revents; } tw_zmq_pollitem;
    #define TW_ZMQ_DONTWAIT 1
    #define TW_ZMQ_SNDMORE 2
    #define TW_ZMQ_POLLIN 1
    #define TW_ZMQ_ETERM (156384712 + 53)
    #define TW_EAGAIN EAGAIN
    #define TW_EINTR EINTR

    static struct {
        int (*msg_init)(tw_zmq_msg *);
        int (*msg_recv)(tw_zmq_msg *, void *, int);
        void *(*msg_data)(tw_zmq_msg *);
        size_t (*msg_size)(const tw_zmq_msg *);
        int (*msg_more)(const tw_zmq_msg *);
        int (*msg_close)(tw_zmq_msg *);
        int (*send)(void *, const void *, size_t, int);
        int (*recv)(void *, void *, size_t, int);
        int (*poll)(tw_zmq_pollitem *, int, long);
        int (*zerrno)(void);
        void *handle;
    } tw_zmq;

    /* Resolve the functions in an already loaded libzmq; NULL, or what went wrong. */
    static const char *tw_zmq_load(const char *path) {
        void *h;
        const char *missing = NULL;
        if (tw_zmq.handle) return NULL;
        h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
        if (!h) { const char *e = dlerror(); return e ? e : "dlopen failed"; }
    #define TW_SYM(field, name) \
        if (!missing && !(*(void **)(&tw_zmq.field) = dlsym(h, name))) missing = name;
        TW_SYM(msg_init, "zmq_msg_init")
        TW_SYM(msg_recv, "zmq_msg_recv")
        TW_SYM(msg_data, "zmq_msg_data")
        TW_SYM(msg_size, "zmq_msg_size")
        TW_SYM(msg_more, "zmq_msg_more")
        TW_SYM(msg_close, "zmq_msg_close")
        TW_SYM(send, "zmq_send")
        TW_SYM(recv, "zmq_recv")
        TW_SYM(poll, "zmq_poll")
        TW_SYM(zerrno, "zmq_errno")
    #undef TW_SYM
        if (missing) { dlclose(h); return missing; }
        tw_zmq.handle = h;
        return NULL;
    }
    static inline int tw_zmq_loaded(void) { return tw_zmq.handle != NULL; }
    static inline int tw_zmq_msg_init(tw_zmq_msg *m) { return tw_zmq.msg_init(m); }
    static inline int tw_zmq_msg_recv(tw_zmq_msg *m, void *s, int flags) { return tw_zmq.msg_recv(m, s, flags); }
    static inline const char *tw_zmq_msg_data(tw_zmq_msg *m) { return (const char *)tw_zmq.msg_data(m); }
    static inline size_t tw_zmq_msg_size(const tw_zmq_msg *m) { return tw_zmq.msg_size(m); }
    static inline int tw_zmq_msg_more(const tw_zmq_msg *m) { return tw_zmq.msg_more(m); }
    static inline int tw_zmq_msg_close(tw_zmq_msg *m) { return tw_zmq.msg_close(m); }
    static inline int tw_zmq_send(void *s, const void *buf, size_t n, int flags) { return tw_zmq.send(s, buf, n, flags); }
    static inline int tw_zmq_recv(void *s, void *buf, size_t n, int flags) { return tw_zmq.recv(s, buf, n, flags); }
    static inline int tw_zmq_poll(tw_zmq_pollitem *items, int n, long timeout_ms) { return tw_zmq.poll(items, n, timeout_ms); }
    static inline int tw_zmq_errno(void) { return tw_zmq.zerrno(); }

    static inline int64_t tw_clock_ns(clockid_t clk) {
        struct timespec ts;
        clock_gettime(clk, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    static inline int64_t tw_realtime_ns(void) { return tw_clock_ns(CLOCK_REALTIME); }
    static inline int64_t tw_monotonic_ns(void) { return tw_clock_ns(CLOCK_MONOTONIC); }
    """
    ctypedef struct tw_zmq_msg:
        void *p[8]
    ctypedef struct tw_zmq_pollitem:
        void *socket
        int fd
        short events
        short revents
    const int TW_ZMQ_DONTWAIT
    const int TW_ZMQ_SNDMORE
    const int TW_ZMQ_POLLIN
    const int TW_ZMQ_ETERM
    const int TW_EAGAIN
    const int TW_EINTR
    const char *tw_zmq_load(const char *path) noexcept
    bint tw_zmq_loaded() noexcept nogil
    int tw_zmq_msg_init(tw_zmq_msg *m) noexcept nogil
    int tw_zmq_msg_recv(tw_zmq_msg *m, void *s, int flags) noexcept nogil
    const char *tw_zmq_msg_data(tw_zmq_msg *m) noexcept nogil
    size_t tw_zmq_msg_size(const tw_zmq_msg *m) noexcept nogil
    int tw_zmq_msg_more(const tw_zmq_msg *m) noexcept nogil
    int tw_zmq_msg_close(tw_zmq_msg *m) noexcept nogil
    int tw_zmq_send(void *s, const void *buf, size_t n, int flags) noexcept nogil
    int tw_zmq_recv(void *s, void *buf, size_t n, int flags) noexcept nogil
    int tw_zmq_poll(tw_zmq_pollitem *items, int n, long timeout_ms) noexcept nogil
    int tw_zmq_errno() noexcept nogil
    int64_t tw_realtime_ns() noexcept nogil
    int64_t tw_monotonic_ns() noexcept nogil


#: Wire constants, as compiled (the reference values are in tickwire.feeds.wire).
MAGIC = TW_WIRE_MAGIC
VERSION = TW_WIRE_VERSION
HEADER_SIZE = TW_WIRE_HEADER_SIZE
EVENT_SIZE = TW_WIRE_EVENT_SIZE
TOPIC_SIZE = TW_WIRE_TOPIC_SIZE
DROP_COUNT = TW_DROP_COUNT
TYPES_DATA = TW_TYPES_DATA
TYPES_REQUEST = TW_TYPES_REQUEST
TYPES_REPLY = TW_TYPES_REPLY
TYPES_ANY = TW_TYPES_ANY
#: Default most events in one data message: tickwire.feeds.wire.MAX_MESSAGE_EVENTS, the one
#: figure shared by receivers, publishers and docs/wire-format.md.
DEFAULT_MAX_EVENTS = MAX_MESSAGE_EVENTS
#: The compiled enumerations, by name (tests hold them to tickwire.feeds.wire).
DROP_CODES = {
    "OK": TW_DROP_OK, "BAD_FRAMES": TW_DROP_BAD_FRAMES, "BAD_TOPIC": TW_DROP_BAD_TOPIC,
    "TRUNCATED": TW_DROP_TRUNCATED, "BAD_MAGIC": TW_DROP_BAD_MAGIC, "BAD_VERSION": TW_DROP_BAD_VERSION,
    "BAD_HEADER": TW_DROP_BAD_HEADER, "OVERSIZED": TW_DROP_OVERSIZED, "BAD_LENGTH": TW_DROP_BAD_LENGTH,
    "BAD_EVENT": TW_DROP_BAD_EVENT, "UNKNOWN_CHANNEL": TW_DROP_UNKNOWN_CHANNEL,
    "DUPLICATE": TW_DROP_DUPLICATE, "OLD_EPOCH": TW_DROP_OLD_EPOCH, "OVERFLOW": TW_DROP_OVERFLOW,
    "STALE_REPLY": TW_DROP_STALE_REPLY, "UNSYNCED": TW_DROP_UNSYNCED, "IMPLAUSIBLE": TW_DROP_IMPLAUSIBLE,
}
MSG_TYPES = {"DATA": TW_MSG_DATA, "HEARTBEAT": TW_MSG_HEARTBEAT,
             "SNAPSHOT_REQUEST": TW_MSG_SNAPSHOT_REQUEST, "SNAPSHOT": TW_MSG_SNAPSHOT,
             "RETRANSMIT_REQUEST": TW_MSG_RETRANSMIT_REQUEST, "RETRANSMIT": TW_MSG_RETRANSMIT}
WIRE_FLAGS = {"FINAL": TW_WFLAG_FINAL, "UNAVAILABLE": TW_WFLAG_UNAVAILABLE, "END": TW_WFLAG_END}

cdef enum:
    _GOT = 0                      # _recv_one: a message was received (and handled)
    _EMPTY = 1                    # _recv_one: nothing to receive
    _FAILED = -1                  # _recv_one: libzmq failed (f.zmq_errno)
    _BURST = 256                  # messages taken from one socket before the next gets a turn


# ---------------------------------------------------------------------------------------
# decoding and encoding
# ---------------------------------------------------------------------------------------

cdef inline int _topic_channel(const char *t, Py_ssize_t n) noexcept nogil:
    """The channel of a topic b"tw.NNNNN.", or -1 when it is not one."""
    cdef int i, v = 0
    if n != TW_WIRE_TOPIC_SIZE or t[0] != c't' or t[1] != c'w' or t[2] != c'.' or t[8] != c'.':
        return -1
    for i in range(3, 8):
        if t[i] < c'0' or t[i] > c'9':
            return -1
        v = v * 10 + (t[i] - c'0')
    return v if v <= 0xFFFF else -1



cdef inline uint16_t _flags_of(uint8_t mtype) noexcept nogil:
    """The header flags a message type may carry (docs/wire-format.md; the rest must be 0): FINAL
    and UNAVAILABLE on replies, END on a heartbeat, none on data and requests (a DATA message
    flagged END or FINAL, or with a request id, was taken; check-publisher failed it)."""
    if mtype == TW_MSG_SNAPSHOT or mtype == TW_MSG_RETRANSMIT:
        return TW_WFLAG_FINAL | TW_WFLAG_UNAVAILABLE
    if mtype == TW_MSG_HEARTBEAT:
        return TW_WFLAG_END
    return 0

cdef int tw_wire_parse(const char *topic, Py_ssize_t topic_len, const char *payload, Py_ssize_t length,
                       Py_ssize_t max_events, int types, tw_wire_header *h) noexcept nogil:
    """Check one message and decode its header (see codec.pxd for the contract)."""
    cdef tw_cursor cur
    cdef int topic_channel = -1, bad = 0
    cdef Py_ssize_t body
    if topic != NULL:
        topic_channel = _topic_channel(topic, topic_len)
        if topic_channel < 0:
            return TW_DROP_BAD_TOPIC
    tw_cursor_init(&cur, payload, length)
    if tw_cursor_left(&cur) < TW_WIRE_HEADER_SIZE:
        return TW_DROP_TRUNCATED
    bad |= tw_cursor_u32(&cur, &h.magic)
    bad |= tw_cursor_u8(&cur, &h.version)
    bad |= tw_cursor_u8(&cur, &h.type)
    bad |= tw_cursor_u16(&cur, &h.flags)
    bad |= tw_cursor_u16(&cur, &h.channel)
    bad |= tw_cursor_u16(&cur, &h.event_size)
    bad |= tw_cursor_u32(&cur, &h.count)
    bad |= tw_cursor_u64(&cur, &h.seq)
    bad |= tw_cursor_u64(&cur, <uint64_t *>&h.send_time)
    bad |= tw_cursor_u64(&cur, &h.epoch)
    bad |= tw_cursor_u32(&cur, &h.request_id)
    bad |= tw_cursor_u32(&cur, &h.part)
    if bad:                                # cannot happen after the length check; the cursor checks anyway
        return TW_DROP_TRUNCATED
    if h.magic != TW_WIRE_MAGIC:
        return TW_DROP_BAD_MAGIC
    if h.version != TW_WIRE_VERSION:
        return TW_DROP_BAD_VERSION
    if (h.type == 0 or h.type >= TW_MSG_TYPE_MAX or not ((types >> h.type) & 1)
            or (h.flags & ~_flags_of(h.type)) or h.event_size != TW_WIRE_EVENT_SIZE
            or ((h.type == TW_MSG_HEARTBEAT or h.type == TW_MSG_SNAPSHOT_REQUEST) and h.count != 0)
            or ((h.type == TW_MSG_DATA or h.type == TW_MSG_HEARTBEAT) and (h.request_id | h.part) != 0)
            # sequence numbers past 2^64 - 1 (the next one must be a number too: a first message
            # at 2^64 - 1 with two events ended the receiver, an adversarial pass)
            or <uint64_t>h.count > UINT64_MAX - h.seq):
        return TW_DROP_BAD_HEADER
    if topic != NULL and topic_channel != h.channel:
        return TW_DROP_BAD_TOPIC
    if h.type == TW_MSG_RETRANSMIT_REQUEST:
        body = 0                           # count is the number of events asked for, none follow
    elif h.count > <uint64_t>max_events:
        return TW_DROP_OVERSIZED
    else:
        body = <Py_ssize_t>h.count * TW_WIRE_EVENT_SIZE
    if tw_cursor_left(&cur) < body:
        return TW_DROP_TRUNCATED
    if tw_cursor_left(&cur) > body:
        return TW_DROP_BAD_LENGTH
    return TW_DROP_OK


cdef inline Py_ssize_t _payload_events(const tw_wire_header *h) noexcept nogil:
    """Events that follow the header (a retransmission request's count is what it asks for)."""
    return 0 if h.type == TW_MSG_RETRANSMIT_REQUEST else <Py_ssize_t>h.count


#: event flags a publisher may set on any event, and those on ``kind = SNAPSHOT`` markers only
#: (``RESTART`` is the receiver's own: docs/events.md)
cdef enum:
    _PUBLISHER_FLAGS = TW_FLAG_LAST | TW_FLAG_SNAPSHOT | TW_FLAG_REPLAY
    _MARKER_FLAGS = TW_FLAG_SNAPSHOT_BEGIN | TW_FLAG_SNAPSHOT_END | TW_FLAG_STALE


cdef inline uint32_t _malformed(const tw_event *e) noexcept nogil:
    """1 when an event breaks the wire format's event rule (``BAD_EVENT``): a kind not 1..6, a
    side not 0..2, a flag bit a publisher may not set on it (marker bits on a market event,
    ``RESTART``, undefined bits) or a non-zero ``reserved``; else 0. No branch."""
    cdef uint32_t allowed = _PUBLISHER_FLAGS | (_MARKER_FLAGS & (<uint32_t>0 - <uint32_t>(e.kind == TW_KIND_SNAPSHOT)))
    return (((<uint32_t>e.kind - 1) >= <uint32_t>(TW_KIND_MAX - 1)) | (e.side > TW_SIDE_NONE)
            | ((e.flags & ~allowed) != 0) | (e.reserved != 0))


cdef int tw_wire_copy_events(const tw_wire_header *h, const char *payload, tw_event *out,
                             int64_t ts_recv) noexcept nogil:
    """Copy a parsed message's events, stamping ts_recv/channel/seq (see codec.pxd)."""
    cdef Py_ssize_t i, n = _payload_events(h)
    cdef uint32_t bad = 0
    cdef uint64_t word = 0, market, seen = 0, on_market = 0
    cdef uint64_t step = 1 if (h.type == TW_MSG_DATA or h.type == TW_MSG_RETRANSMIT) else 0
    memcpy(out, payload + TW_WIRE_HEADER_SIZE, n * sizeof(tw_event))
    for i in range(n):
        out[i].ts_recv = ts_recv
        out[i].channel = h.channel
        out[i].seq = h.seq + step * <uint64_t>i
        # a marker's order_id is the receiver's own (the feed handler's markers carry the epoch a
        # channel follows, which a restarted worker reads back from its tick ring): a publisher's
        # is set to 0, so that no marker sent can pass for an epoch (no branch)
        market = <uint64_t>0 - <uint64_t>(out[i].kind != TW_KIND_SNAPSHOT)
        out[i].order_id &= market
        # the event rule (_malformed), gathered over the message rather than tested per event:
        # every flag bit seen, those of market events, every reserved bit
        seen |= out[i].flags
        on_market |= out[i].flags & market
        word |= out[i].reserved
        bad |= ((<uint32_t>out[i].kind - 1) >= <uint32_t>(TW_KIND_MAX - 1)) | (out[i].side > TW_SIDE_NONE)
    bad |= (((seen & ~<uint64_t>(_PUBLISHER_FLAGS | _MARKER_FLAGS)) | word) != 0) | ((on_market & _MARKER_FLAGS) != 0)
    return TW_DROP_BAD_EVENT if bad else TW_DROP_OK


cdef void tw_wire_put_header(char *out, const tw_wire_header *h) noexcept nogil:
    """Write a 48-byte header, little-endian."""
    tw_st32(out, h.magic)
    out[4] = <char>h.version
    out[5] = <char>h.type
    tw_st16(out + 6, h.flags)
    tw_st16(out + 8, h.channel)
    tw_st16(out + 10, h.event_size)
    tw_st32(out + 12, h.count)
    tw_st64(out + 16, h.seq)
    tw_st64(out + 24, <uint64_t>h.send_time)
    tw_st64(out + 32, h.epoch)
    tw_st32(out + 40, h.request_id)
    tw_st32(out + 44, h.part)


cdef object _header_tuple(const tw_wire_header *h):
    return Header(h.type, h.flags, h.channel, h.count, h.seq, h.send_time, h.epoch, h.request_id, h.part)


cdef object _new_events(Py_ssize_t n, tw_event **ptr):
    """A new EVENT_DTYPE array of ``n`` events and its data pointer."""
    arr = np.empty(n, dtype=EVENT_DTYPE)
    cdef Py_buffer view
    PyObject_GetBuffer(arr, &view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
    ptr[0] = <tw_event *>view.buf
    PyBuffer_Release(&view)               # the array keeps the memory alive
    return arr


cdef int _types_arg(object types) except -1:
    cdef int t = types
    if t <= 0 or t & ~TW_TYPES_ANY:
        raise ValueError(f"types must be a mask of TYPES_DATA, TYPES_REQUEST, TYPES_REPLY, got {types!r}")
    return t


def encode(int msg_type, uint16_t channel, uint64_t seq, events=None, *, uint64_t epoch=0,
           int64_t send_time=0, uint16_t flags=0, uint32_t request_id=0, uint32_t part=0):
    """The payload frame of one message: 48-byte header + ``events`` copied as they are.

    Parameters
    ----------
    msg_type : int
        A :class:`~tickwire.feeds.wire.MsgType`.
    events : numpy.ndarray, optional
        C-contiguous EVENT_DTYPE array (its ``seq``/``channel`` should already be set).

    Returns
    -------
    bytes
        The same bytes as :func:`tickwire.feeds.wire.encode`, built in one allocation.
    """
    cdef Py_buffer view
    cdef Py_ssize_t n = 0
    cdef tw_wire_header h
    cdef char *out
    if not 0 <= msg_type <= 255:                  # (one byte on the wire: 257 was sent as DATA)
        raise ValueError(f"msg_type must be a wire message type (0..255), got {msg_type}")
    if events is not None:
        if getattr(events, "dtype", None) != EVENT_DTYPE:
            raise TypeError("events must be a numpy array of EVENT_DTYPE")
        PyObject_GetBuffer(events, &view, PyBUF_C_CONTIGUOUS)
        n = view.len // sizeof(tw_event)
    try:
        if n > 0xFFFFFFFF:
            raise ValueError("too many events for one message")
        payload = PyBytes_FromStringAndSize(NULL, TW_WIRE_HEADER_SIZE + n * sizeof(tw_event))
        out = PyBytes_AS_STRING(payload)
        h.magic = TW_WIRE_MAGIC
        h.version = TW_WIRE_VERSION
        h.type = <uint8_t>msg_type
        h.flags = flags
        h.channel = channel
        h.event_size = TW_WIRE_EVENT_SIZE
        h.count = <uint32_t>n
        h.seq = seq
        h.send_time = send_time
        h.epoch = epoch
        h.request_id = request_id
        h.part = part
        tw_wire_put_header(out, &h)
        if n:
            memcpy(out + TW_WIRE_HEADER_SIZE, view.buf, n * sizeof(tw_event))
    finally:
        if events is not None:
            PyBuffer_Release(&view)
    return payload


def topic(uint16_t channel):
    """The topic frame of ``channel`` (``b"tw.00042."``)."""
    cdef char buf[9]
    tw_wire_topic(buf, channel)
    return buf[:9]


cdef class Decoder:
    """Checks and decodes single messages, counting each malformed one under its reason.

    The same C checks as the receive loop (:class:`FeedReceiver`); this is the entry point
    for snapshot clients and services, tests and fuzzing.

    Parameters
    ----------
    max_events : int
        Most events accepted in one message (more: ``Drop.OVERSIZED``).
    types : int
        Accepted message types: ``TYPES_DATA`` (data sockets: DATA and HEARTBEAT),
        ``TYPES_REQUEST`` (a snapshot service), ``TYPES_REPLY`` (a snapshot client), or a union.
    """

    cdef Py_ssize_t max_events
    cdef int types
    cdef uint64_t drops[TW_DROP_COUNT]
    cdef readonly uint64_t decoded

    def __init__(self, Py_ssize_t max_events=DEFAULT_MAX_EVENTS, types=TW_TYPES_DATA):
        if max_events < 0:
            raise ValueError("max_events must be >= 0")
        self.max_events = max_events
        self.types = _types_arg(types)
        memset(self.drops, 0, sizeof(self.drops))
        self.decoded = 0

    def decode(self, topic, payload, int64_t ts_recv=0):
        """Decode one message: ``(reason, header, events)``.

        ``topic`` None skips the topic checks.  On success ``reason`` is ``Drop.OK`` and
        ``events`` a new EVENT_DTYPE array with ``ts_recv``, ``channel`` and ``seq`` set; on
        failure ``header`` and ``events`` are None and the reason is counted in :attr:`drops`.
        """
        cdef Py_buffer tv, pv
        cdef bint have_topic = topic is not None
        cdef tw_wire_header h
        cdef tw_event *ev = NULL
        cdef int r
        PyObject_GetBuffer(payload, &pv, PyBUF_SIMPLE)
        try:
            if have_topic:
                PyObject_GetBuffer(topic, &tv, PyBUF_SIMPLE)
            try:
                r = tw_wire_parse(<const char *>tv.buf if have_topic else NULL, tv.len if have_topic else 0,
                                  <const char *>pv.buf, pv.len, self.max_events, self.types, &h)
                events = None
                if r == TW_DROP_OK:
                    events = _new_events(_payload_events(&h), &ev)
                    r = tw_wire_copy_events(&h, <const char *>pv.buf, ev, ts_recv)
            finally:
                if have_topic:
                    PyBuffer_Release(&tv)
        finally:
            PyBuffer_Release(&pv)
        if r != TW_DROP_OK:
            self.drops[r] += 1
            return Drop(r), None, None
        self.decoded += 1
        return Drop.OK, _header_tuple(&h), events

    def decode_frames(self, frames, int64_t ts_recv=0):
        """:meth:`decode` of a received multipart message: ``[topic, payload]`` for data,
        ``[payload]`` when only snapshot types are accepted (no topic)."""
        cdef Py_ssize_t want = 2 if self.types & TW_TYPES_DATA else 1
        if len(frames) != want:
            self.drops[TW_DROP_BAD_FRAMES] += 1
            return Drop.BAD_FRAMES, None, None
        if want == 2:
            return self.decode(frames[0], frames[1], ts_recv)
        return self.decode(None, frames[0], ts_recv)

    @property
    def drops(self):
        """Dropped messages by :class:`~tickwire.feeds.wire.Drop` name (non-zero only)."""
        return {Drop(i).name: self.drops[i] for i in range(1, TW_DROP_COUNT) if self.drops[i]}


# ---------------------------------------------------------------------------------------
# libzmq
# ---------------------------------------------------------------------------------------

_libzmq_path = None


def libzmq_path():
    """The libzmq pyzmq loaded (from /proc/self/maps), or pyzmq's own extension when libzmq
    is linked into it statically; None when neither is found."""
    import zmq                                              # loads libzmq
    candidates = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                path = line.rstrip("\n").partition("/")[2]
                if path and "libzmq" in os.path.basename(path):
                    candidates.append("/" + path)
    except OSError:
        pass
    from zmq.backend.cython import _zmq
    candidates.append(_zmq.__file__)
    return candidates[0] if candidates else None


def load_libzmq():
    """Resolve the libzmq functions the receive loop calls (once); returns the library path.

    Raises
    ------
    RuntimeError
        When pyzmq's libzmq cannot be found or lacks a function.
    """
    global _libzmq_path
    cdef const char *err
    if tw_zmq_loaded():
        return _libzmq_path
    import zmq
    if zmq.DONTWAIT != TW_ZMQ_DONTWAIT or zmq.POLLIN != TW_ZMQ_POLLIN or zmq.ETERM != TW_ZMQ_ETERM \
            or zmq.SNDMORE != TW_ZMQ_SNDMORE:
        raise RuntimeError("this libzmq's constants differ from libzmq 4's documented ABI")
    path = libzmq_path()
    if path is None:
        raise RuntimeError("cannot find the libzmq that pyzmq loaded")
    bpath = os.fsencode(path)
    err = tw_zmq_load(bpath)
    if err != NULL:
        raise RuntimeError(f"cannot use libzmq at {path}: {err.decode(errors='replace')}")
    _libzmq_path = path
    return path


cdef void *_handle(object sock) except NULL:
    cdef uintptr_t h = sock.underlying
    if h == 0:
        raise ValueError("socket is closed")
    return <void *>h


cdef object _zmq_error(int err):
    import zmq
    if err == TW_ZMQ_ETERM:
        return zmq.ContextTerminated()
    return zmq.ZMQError(err)


# ---------------------------------------------------------------------------------------
# the receive loop
# ---------------------------------------------------------------------------------------

cdef int _park(tw_feed *f, const tw_wire_header *h, const char *payload, Py_ssize_t length,
               int64_t ts) noexcept nogil:
    """Keep a copy of a message for the slow path: TW_DROP_OK, or TW_DROP_OVERFLOW without memory."""
    cdef char *buf
    cdef Py_ssize_t cap
    if length > f.pending_cap:
        cap = max(length, 2 * f.pending_cap, <Py_ssize_t>4096)
        buf = <char *>realloc(f.pending_buf, cap)
        if buf == NULL:
            return TW_DROP_OVERFLOW
        f.pending_buf = buf
        f.pending_cap = cap
    memcpy(f.pending_buf, payload, length)
    f.pending_len = length
    f.pending_hdr = h[0]
    f.pending_ts = ts
    f.pending = 1
    f.slow += 1
    return TW_DROP_OK


cdef int _events_checked(const tw_wire_header *h, const char *payload, int r) noexcept nogil:
    """``r``, or TW_DROP_BAD_EVENT when one of the message's events is malformed: the check
    comes before the channel and sequencing (docs/wire-format.md), so a forged message at an old
    sequence number or epoch, or on a channel not served, is counted as what it is (out of line:
    these are rare)."""
    cdef Py_ssize_t i
    cdef tw_event e
    for i in range(_payload_events(h)):
        memcpy(&e, payload + TW_WIRE_HEADER_SIZE + i * sizeof(tw_event), sizeof(tw_event))
        if _malformed(&e):
            return TW_DROP_BAD_EVENT
    return r


cdef inline int _route(tw_feed *f, const tw_wire_header *h, const char *payload, Py_ssize_t length,
                       int64_t ts, tw_event *out, Py_ssize_t *added) noexcept nogil:
    """Sequence a valid message: take it (events to ``out``), drop it (the reason), or park it."""
    cdef tw_feed_chan *ch = &f.chans[h.channel]
    cdef int r
    if not ch.served:
        return _events_checked(h, payload, TW_DROP_UNKNOWN_CHANNEL)
    # last_recv_ns (the channel's sign of life, what silence is timed from) is not moved by
    # what says nothing new: an old epoch's message, a duplicate, a heartbeat behind the stream.
    # A replayer resending captured traffic, or a publisher whose numbering went back to 1, kept
    # a dead channel LIVE and its books in sync and frozen (an adversarial pass)
    if ch.epoch != 0 and h.epoch < ch.epoch:
        return _events_checked(h, payload, TW_DROP_OLD_EPOCH)
    if ch.live and h.epoch == ch.epoch:
        if h.type == TW_MSG_DATA:
            if TW_LIKELY(h.seq == ch.next_seq):
                r = tw_wire_copy_events(h, payload, out, ts)
                if r != TW_DROP_OK:
                    return r                 # lost: the next message shows the gap
                ch.last_recv_ns = ts
                ch.next_seq += h.count
                if h.count:
                    ch.last_ts_event = out[h.count - 1].ts_event
                ch.messages += 1
                ch.events += h.count
                f.events += h.count
                added[0] = h.count
                return TW_DROP_OK
            if h.seq <= ch.next_seq and h.count <= ch.next_seq - h.seq:    # (seq + count may wrap)
                return _events_checked(h, payload, TW_DROP_DUPLICATE)
        elif h.seq < ch.next_seq:            # a heartbeat behind what was received, END too (a real
            return TW_DROP_DUPLICATE         # END is at the stream's end): a copy, or a replay
        elif h.seq == ch.next_seq and not (h.flags & TW_WFLAG_END):   # a heartbeat: nothing missed
            ch.last_recv_ns = ts
            f.heartbeats += 1
            return TW_DROP_OK
        # (an END heartbeat, once an epoch, goes to the slow path: the handler notes the end)
    # parked: news unless behind the frontier the handler last gave (a copy, a replay) or of an
    # epoch not yet confirmed (a restart is news once its service confirms it; a forgery never:
    # taken for news, a message of a new epoch kept a channel whose publisher restarted while its
    # service was silent LIVE with its books frozen, a review)
    if ch.epoch == 0 or (h.epoch == ch.epoch and (
            h.seq >= ch.next_seq or (h.type != TW_MSG_HEARTBEAT and h.count > ch.next_seq - h.seq))):
        ch.last_recv_ns = ts
    return _park(f, h, payload, length, ts)


cdef int _recv_one(tw_feed *f, void *sock, tw_event *out, Py_ssize_t *added) noexcept nogil:
    """Receive one message from ``sock`` and handle it: _GOT, _EMPTY or _FAILED."""
    cdef tw_zmq_msg topic, payload, extra
    cdef int r, err, more
    cdef int64_t ts
    cdef tw_wire_header h
    cdef const char *data
    cdef Py_ssize_t size
    added[0] = 0
    tw_zmq_msg_init(&topic)
    if tw_zmq_msg_recv(&topic, sock, TW_ZMQ_DONTWAIT) < 0:
        err = tw_zmq_errno()
        tw_zmq_msg_close(&topic)
        if err == TW_EAGAIN or err == TW_EINTR:
            return _EMPTY
        f.zmq_errno = err
        return _FAILED
    ts = tw_realtime_ns()                  # the message's one receive timestamp
    f.messages += 1
    if not tw_zmq_msg_more(&topic):
        tw_zmq_msg_close(&topic)
        f.drops[TW_DROP_BAD_FRAMES] += 1
        return _GOT
    tw_zmq_msg_init(&payload)
    if tw_zmq_msg_recv(&payload, sock, TW_ZMQ_DONTWAIT) < 0:   # the parts of a message arrive together
        err = tw_zmq_errno()
        tw_zmq_msg_close(&payload)
        tw_zmq_msg_close(&topic)
        if err == TW_EAGAIN or err == TW_EINTR:
            f.drops[TW_DROP_BAD_FRAMES] += 1
            return _GOT
        f.zmq_errno = err
        return _FAILED
    more = tw_zmq_msg_more(&payload)
    if more:
        while more:                        # read and discard the extra frames
            tw_zmq_msg_init(&extra)
            if tw_zmq_msg_recv(&extra, sock, TW_ZMQ_DONTWAIT) < 0:
                more = 0
            else:
                more = tw_zmq_msg_more(&extra)
            tw_zmq_msg_close(&extra)
        r = TW_DROP_BAD_FRAMES
    else:
        data = tw_zmq_msg_data(&payload)
        size = <Py_ssize_t>tw_zmq_msg_size(&payload)
        f.bytes += size
        r = tw_wire_parse(tw_zmq_msg_data(&topic), <Py_ssize_t>tw_zmq_msg_size(&topic), data, size,
                          f.max_events, TW_TYPES_DATA, &h)
        if r == TW_DROP_OK:
            r = _route(f, &h, data, size, ts, out, added)
    if r != TW_DROP_OK:
        f.drops[r] += 1
    tw_zmq_msg_close(&payload)
    tw_zmq_msg_close(&topic)
    return _GOT


cdef Py_ssize_t tw_feed_drain(tw_feed *f, tw_event *out, Py_ssize_t cap, int timeout_ms) noexcept nogil:
    """Drain the data sockets into ``out`` (see codec.pxd for the contract)."""
    cdef Py_ssize_t n = 0, added
    cdef int k, s, r, full, burst, i, nitems
    cdef int64_t deadline = 0, wait_ms
    cdef tw_zmq_pollitem items[TW_FEED_MAX_SOCKETS + TW_FEED_MAX_WAKE]
    f.woken = 0
    if f.pending or cap < f.max_events or f.nsocks == 0:
        return 0
    if timeout_ms > 0:
        deadline = tw_monotonic_ns() + <int64_t>timeout_ms * 1000000
    while True:
        full = 0                           # sockets left with messages (their burst ran out)
        for k in range(f.nsocks):
            s = (f.next_sock + k) % f.nsocks
            burst = 0
            while True:
                if burst == _BURST:
                    full += 1
                    break
                r = _recv_one(f, f.socks[s], out + n, &added)
                if r == _EMPTY:
                    break
                if r == _FAILED:
                    return -1
                burst += 1
                n += added
                if f.pending or cap - n < f.max_events:
                    f.next_sock = (s + 1) % f.nsocks
                    return n
        f.next_sock = (f.next_sock + 1) % f.nsocks
        if full:
            continue
        # every socket answered EAGAIN in this pass: another pass would only ask again (each
        # empty receive is a libzmq call, often a system call) before the events can be run
        if n > 0 or timeout_ms == 0:
            return n
        if timeout_ms < 0:
            wait_ms = -1
        else:
            wait_ms = (deadline - tw_monotonic_ns() + 999999) // 1000000
            if wait_ms <= 0:
                return n
        nitems = f.nsocks + f.nwake
        for i in range(nitems):
            items[i].socket = f.socks[i] if i < f.nsocks else f.wake[i - f.nsocks]
            items[i].fd = 0
            items[i].events = TW_ZMQ_POLLIN
            items[i].revents = 0
        f.waits += 1
        if f.spin:
            # busy poll: the core never idles, so nothing has to wake it (waking a halted core
            # costs tens of microseconds on a virtual machine) and a message is read as soon
            # as libzmq has it
            while True:
                r = tw_zmq_poll(items, nitems, 0)
                if r != 0 or (timeout_ms > 0 and tw_monotonic_ns() >= deadline):
                    break
        else:
            r = tw_zmq_poll(items, nitems, <long>wait_ms)
        if r < 0:
            err = tw_zmq_errno()
            if err == TW_EINTR:
                return n                   # a signal: let Python look at it
            f.zmq_errno = err
            return -1
        if r == 0:
            return n
        for i in range(f.nwake):
            if items[f.nsocks + i].revents & TW_ZMQ_POLLIN:
                f.woken = 1
        if f.woken:
            return n


cdef class FeedReceiver:
    """Receives and decodes feed messages from ZeroMQ sockets without Python per message.

    The sequencing fast path lives here (per channel: epoch, next sequence number, live or
    not); recovery lives in :class:`tickwire.feeds.handler.FeedHandler`, which drives this
    object.  From Cython, call :c:func:`tw_feed_drain` on ``receiver.c`` directly.

    Parameters
    ----------
    sockets : sequence of zmq.Socket
        Connected SUB or PULL sockets (at most 16) carrying ``[topic][payload]`` messages.
    wake : sequence of zmq.Socket
        Sockets (at most 4) whose readability ends a wait (:attr:`woken`), e.g. the
        snapshot DEALER; never read here.
    max_events : int
        Most events in one data message; larger ones are dropped as ``OVERSIZED``.
    """

    def __cinit__(self, *args, **kwargs):
        memset(&self.c, 0, sizeof(tw_feed))
        self.c.chans = <tw_feed_chan *>calloc(TW_FEED_CHANNELS, sizeof(tw_feed_chan))
        if self.c.chans == NULL:
            raise MemoryError()

    def __init__(self, sockets, wake=(), Py_ssize_t max_events=DEFAULT_MAX_EVENTS):
        load_libzmq()
        sockets, wake = list(sockets), list(wake)
        if not 0 < len(sockets) <= TW_FEED_MAX_SOCKETS:
            raise ValueError(f"1..{TW_FEED_MAX_SOCKETS} data sockets, got {len(sockets)}")
        if len(wake) > TW_FEED_MAX_WAKE:
            raise ValueError(f"at most {TW_FEED_MAX_WAKE} wake sockets, got {len(wake)}")
        if not 0 < max_events <= 1 << 24:
            raise ValueError(f"max_events must be 1..2**24, got {max_events}")
        for i, s in enumerate(sockets):
            self.c.socks[i] = _handle(s)
        for i, s in enumerate(wake):
            self.c.wake[i] = _handle(s)
        self.c.nsocks = len(sockets)
        self.c.nwake = len(wake)
        self.c.max_events = max_events
        self._sockets = sockets
        self._wake_sockets = wake

    def __dealloc__(self):
        free(self.c.chans)
        free(self.c.pending_buf)

    # -- channels --------------------------------------------------------------------------
    def serve(self, uint16_t channel, *, bint live=False, uint64_t epoch=0, uint64_t next_seq=0):
        """Serve ``channel``: live (the fast path takes data from ``next_seq`` on, in
        ``epoch``) or not (every message of the channel goes to the slow path)."""
        cdef tw_feed_chan *ch = &self.c.chans[channel]
        ch.served = 1
        ch.live = live
        ch.epoch = epoch
        ch.next_seq = next_seq

    def channel(self, uint16_t channel):
        """``(served, live, epoch, next_seq, last_recv_ns, messages, events)`` of a channel."""
        cdef tw_feed_chan *ch = &self.c.chans[channel]
        return (bool(ch.served), bool(ch.live), ch.epoch, ch.next_seq, ch.last_recv_ns,
                ch.messages, ch.events)

    def last_recv_ns(self, uint16_t channel):
        """Receive time (ns) of the channel's last news, 0 before any: a message of its epoch at
        or past what was received (not a copy, a replay, a heartbeat behind, an old epoch's, or
        one of an epoch not yet confirmed)."""
        return self.c.chans[channel].last_recv_ns

    def last_ts_event(self, uint16_t channel):
        """``ts_event`` of the last event the fast path took on the channel, 0 before any."""
        return self.c.chans[channel].last_ts_event

    # -- receiving -------------------------------------------------------------------------
    def drain(self, out, double timeout=0.0):
        """Receive into ``out`` (EVENT_DTYPE, at least ``max_events`` long); returns the
        number of events written at its start.

        Waits up to ``timeout`` seconds (negative: no limit) for the first message, and
        returns once the sockets are empty, when :attr:`pending` (a message for the slow
        path) is set, or when a wake socket is readable (:attr:`woken`).  The GIL is
        released for the whole call.
        """
        cdef Py_buffer view
        cdef Py_ssize_t n
        cdef int tm
        if timeout != timeout:                    # NaN: it waited for ever, as a negative timeout does
            raise ValueError("drain: timeout must be a number of seconds (negative: no limit), got nan")
        tm = -1 if timeout < 0 else <int>min(timeout * 1000.0 + 0.999, 2147483647.0)
        if getattr(out, "dtype", None) != EVENT_DTYPE:
            raise TypeError("out must be a numpy array of EVENT_DTYPE")
        PyObject_GetBuffer(out, &view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
        try:
            if view.len // <Py_ssize_t>sizeof(tw_event) < self.c.max_events:
                raise ValueError(f"out must hold at least max_events ({self.c.max_events}) events")
            why = tw_misaligned(view.buf, view.len, "out", True)
            if why is not None:
                raise ValueError(why)
            with nogil:
                n = tw_feed_drain(&self.c, <tw_event *>view.buf, view.len // sizeof(tw_event), tm)
        finally:
            PyBuffer_Release(&view)
        if n < 0:
            raise _zmq_error(self.c.zmq_errno)
        return n

    def error(self):
        """The exception for the libzmq failure that made the last drain return -1."""
        return _zmq_error(self.c.zmq_errno)

    @property
    def pending(self):
        """True when a message waits for the slow path (:meth:`take_pending`)."""
        return bool(self.c.pending)

    @property
    def woken(self):
        """True when the last :meth:`drain` ended because a wake socket is readable."""
        return bool(self.c.woken)

    def take_pending(self):
        """The parked message as ``(reason, header, events, ts_recv)``, and forget it.

        ``events`` is a new EVENT_DTYPE array (None for a heartbeat); ``reason`` is
        ``Drop.BAD_EVENT`` (counted, ``events`` None) when an event is malformed.  None
        when nothing is pending.
        """
        cdef tw_event *ev = NULL
        cdef int r = TW_DROP_OK
        if not self.c.pending:
            return None
        self.c.pending = 0
        events = None
        if self.c.pending_hdr.count:
            events = _new_events(self.c.pending_hdr.count, &ev)
            r = tw_wire_copy_events(&self.c.pending_hdr, self.c.pending_buf, ev, self.c.pending_ts)
            if r != TW_DROP_OK:
                self.c.drops[r] += 1
                events = None
        return Drop(r), _header_tuple(&self.c.pending_hdr), events, self.c.pending_ts

    def count_drop(self, int reason, uint64_t n=1):
        """Count ``n`` messages dropped by the slow path under ``reason`` (a Drop)."""
        if not 0 < reason < TW_DROP_COUNT:
            raise ValueError(f"not a drop reason: {reason}")
        self.c.drops[reason] += n

    @property
    def drops(self):
        """Dropped messages by :class:`~tickwire.feeds.wire.Drop` name (non-zero only)."""
        return {Drop(i).name: self.c.drops[i] for i in range(1, TW_DROP_COUNT) if self.c.drops[i]}

    @property
    def counters(self):
        """Receive-loop counters: messages (every message received), bytes, events and
        heartbeats taken by the fast path, slow (handed to the slow path), waits."""
        return {"messages": self.c.messages, "bytes": self.c.bytes, "events": self.c.events,
                "heartbeats": self.c.heartbeats, "slow": self.c.slow, "waits": self.c.waits}

    @property
    def max_events(self):
        return self.c.max_events

    @property
    def spin(self):
        """True: :meth:`drain` waits by polling the sockets without blocking (a busy poll that
        keeps the core at 100%); False (default): it blocks in ``zmq_poll``."""
        return bool(self.c.spin)

    @spin.setter
    def spin(self, bint on):
        self.c.spin = on


def now_ns():
    """CLOCK_REALTIME in ns, the clock of ``ts_recv``."""
    return tw_realtime_ns()
