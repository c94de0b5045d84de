# The C API of tickwire.ext.codec: the wire decoder/encoder and the ZeroMQ receive loop.
#
# This file is the reviewed contract: the engine's worker loop (and users' Cython)
# `cimport tickwire.ext.codec` to receive and decode feed messages into their own event
# buffer without Python objects and without the GIL.  Every function states its error
# contract.  The byte layout is in docs/wire-format.md and ext/tw_wire.h.
#
# Decoding goes through a bounds-checked cursor (tw_cursor): every read checks the bytes
# left first, so no input, however short or wrong, reads outside the message.

from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t
from tickwire.ext.defs cimport tw_event

cdef extern from "tw_wire.h" nogil:
    const uint32_t TW_WIRE_MAGIC
    const int TW_WIRE_VERSION
    const int TW_WIRE_HEADER_SIZE
    const int TW_WIRE_EVENT_SIZE
    const int TW_WIRE_TOPIC_SIZE

    enum:
        TW_MSG_DATA
        TW_MSG_HEARTBEAT
        TW_MSG_SNAPSHOT_REQUEST
        TW_MSG_SNAPSHOT
        TW_MSG_RETRANSMIT_REQUEST
        TW_MSG_RETRANSMIT
        TW_MSG_TYPE_MAX

    enum:
        TW_WFLAG_FINAL
        TW_WFLAG_UNAVAILABLE
        TW_WFLAG_END
        TW_WFLAG_KNOWN

    enum:
        TW_DROP_OK
        TW_DROP_BAD_FRAMES
        TW_DROP_BAD_TOPIC
        TW_DROP_TRUNCATED
        TW_DROP_BAD_MAGIC
        TW_DROP_BAD_VERSION
        TW_DROP_BAD_HEADER
        TW_DROP_OVERSIZED
        TW_DROP_BAD_LENGTH
        TW_DROP_BAD_EVENT
        TW_DROP_UNKNOWN_CHANNEL
        TW_DROP_DUPLICATE
        TW_DROP_OLD_EPOCH
        TW_DROP_OVERFLOW
        TW_DROP_STALE_REPLY
        TW_DROP_UNSYNCED
        TW_DROP_IMPLAUSIBLE
        TW_DROP_COUNT

    ctypedef struct tw_wire_header:
        uint32_t magic
        uint8_t version
        uint8_t type
        uint16_t flags
        uint16_t channel
        uint16_t event_size
        uint32_t count
        uint64_t seq
        int64_t send_time
        uint64_t epoch
        uint32_t request_id
        uint32_t part

    uint16_t tw_ld16(const char *p)
    uint32_t tw_ld32(const char *p)
    uint64_t tw_ld64(const char *p)
    void tw_st16(char *p, uint16_t v)
    void tw_st32(char *p, uint32_t v)
    void tw_st64(char *p, uint64_t v)
    void tw_wire_topic(char *out, uint16_t channel)


# -- the bounds-checked cursor ------------------------------------------------------------

cdef struct tw_cursor:
    const char *buf
    Py_ssize_t len
    Py_ssize_t pos

cdef inline void tw_cursor_init(tw_cursor *c, const char *buf, Py_ssize_t length) noexcept nogil:
    """Start reading ``length`` bytes at ``buf``."""
    c.buf = buf
    c.len = length if length > 0 else 0
    c.pos = 0

cdef inline Py_ssize_t tw_cursor_left(const tw_cursor *c) noexcept nogil:
    """Bytes not read yet."""
    return c.len - c.pos

cdef inline const char *tw_cursor_take(tw_cursor *c, Py_ssize_t n) noexcept nogil:
    """The next ``n`` bytes (the cursor moves past them), or NULL and no move when fewer remain."""
    cdef const char *p
    if n < 0 or n > c.len - c.pos:
        return NULL
    p = c.buf + c.pos
    c.pos += n
    return p

cdef inline int tw_cursor_u8(tw_cursor *c, uint8_t *out) noexcept nogil:
    """Read one byte: 0, or -1 (nothing read) at the end."""
    cdef const char *p = tw_cursor_take(c, 1)
    if p == NULL:
        return -1
    out[0] = <uint8_t>p[0]
    return 0

cdef inline int tw_cursor_u16(tw_cursor *c, uint16_t *out) noexcept nogil:
    """Read a little-endian uint16: 0, or -1 (nothing read) when fewer than 2 bytes remain."""
    cdef const char *p = tw_cursor_take(c, 2)
    if p == NULL:
        return -1
    out[0] = tw_ld16(p)
    return 0

cdef inline int tw_cursor_u32(tw_cursor *c, uint32_t *out) noexcept nogil:
    """Read a little-endian uint32: 0, or -1 (nothing read) when fewer than 4 bytes remain."""
    cdef const char *p = tw_cursor_take(c, 4)
    if p == NULL:
        return -1
    out[0] = tw_ld32(p)
    return 0

cdef inline int tw_cursor_u64(tw_cursor *c, uint64_t *out) noexcept nogil:
    """Read a little-endian uint64: 0, or -1 (nothing read) when fewer than 8 bytes remain."""
    cdef const char *p = tw_cursor_take(c, 8)
    if p == NULL:
        return -1
    out[0] = tw_ld64(p)
    return 0


# -- messages -----------------------------------------------------------------------------

cdef enum:
    TW_TYPES_DATA = (1 << TW_MSG_DATA) | (1 << TW_MSG_HEARTBEAT)   # what a data socket accepts
    TW_TYPES_REQUEST = (1 << TW_MSG_SNAPSHOT_REQUEST) | (1 << TW_MSG_RETRANSMIT_REQUEST)   # a recovery service
    TW_TYPES_REPLY = (1 << TW_MSG_SNAPSHOT) | (1 << TW_MSG_RETRANSMIT)   # what a recovery client accepts
    TW_TYPES_ANY = TW_TYPES_DATA | TW_TYPES_REQUEST | TW_TYPES_REPLY

# Check one message and decode its header into ``h``: TW_DROP_OK (0), or the TW_DROP_* reason
# of the first check that fails.  ``topic`` NULL skips the topic checks (a snapshot service
# and its clients speak without topics); ``types`` is a mask of accepted message types
# (bit TW_MSG_x); ``max_events`` the most events accepted in one message.  Events are not
# looked at: tw_wire_copy_events checks them as it copies.
cdef int tw_wire_parse(const char *topic, Py_ssize_t topic_len, const char *payload, Py_ssize_t length,
                       Py_ssize_t max_events, int types, tw_wire_header *h) noexcept nogil

# Copy the h.count events of a parsed payload into ``out`` (room for h.count events), setting
# ts_recv, channel and seq (DATA: h.seq + i; SNAPSHOT: h.seq on every event).  TW_DROP_OK,
# or TW_DROP_BAD_EVENT when an event has an unknown kind or side (``out`` then holds
# garbage: do not count those events).
cdef int tw_wire_copy_events(const tw_wire_header *h, const char *payload, tw_event *out,
                             int64_t ts_recv) noexcept nogil

# Write the 48-byte header ``h`` (magic and version as given) at ``out``.
cdef void tw_wire_put_header(char *out, const tw_wire_header *h) noexcept nogil


# -- the receive loop ---------------------------------------------------------------------

cdef enum:
    TW_FEED_MAX_SOCKETS = 16      # data sockets of one receiver
    TW_FEED_MAX_WAKE = 4          # extra sockets that end a wait (e.g. the snapshot DEALER)
    TW_FEED_CHANNELS = 65536

cdef struct tw_feed_chan:         # per channel, indexed by channel id
    uint64_t epoch                # publisher epoch the channel follows (0: none yet)
    uint64_t next_seq             # sequence number of the next event expected
    int64_t last_recv_ns          # receive time of the channel's last news (Receiver.last_recv_ns)
    int64_t last_ts_event         # ts_event of the last event the fast path took (0: none yet)
    uint64_t messages             # data messages accepted by the fast path
    uint64_t events               # events accepted by the fast path
    uint8_t served                # 1: this receiver serves the channel
    uint8_t live                  # 1: the fast path takes in-sequence data; 0: everything of
                                  # this channel goes to the slow path (recovery in Python)

cdef struct tw_feed:
    void *socks[16]               # libzmq socket handles (pyzmq Socket.underlying)
    int nsocks
    int next_sock                 # round-robin start of the next pass
    void *wake[4]
    int nwake
    int woken                     # set by tw_feed_drain when a wake socket became readable
    int spin                      # 1: wait by polling without blocking (busy poll), 0: block in zmq_poll
    tw_feed_chan *chans           # TW_FEED_CHANNELS entries
    Py_ssize_t max_events         # most events in one data message (more: TW_DROP_OVERSIZED)
    # counters
    uint64_t messages             # messages received (every kind, malformed included)
    uint64_t bytes                # payload bytes received
    uint64_t events               # events written by the fast path
    uint64_t heartbeats           # in-sequence heartbeats taken by the fast path
    uint64_t slow                 # messages handed to the slow path
    uint64_t waits                # blocking waits (zmq_poll)
    uint64_t drops[32]            # TW_DROP_COUNT reasons (17 today)
    int zmq_errno                 # errno of the libzmq call that made tw_feed_drain fail
    # the message parked for the slow path (pending != 0), a private copy
    int pending
    tw_wire_header pending_hdr
    int64_t pending_ts
    char *pending_buf
    Py_ssize_t pending_len
    Py_ssize_t pending_cap

# Receive and decode into ``out`` (room for ``cap`` events, cap >= f.max_events): drains the
# data sockets round-robin, one receive timestamp per message; in-sequence data of live
# channels is copied to ``out``, duplicates, old epochs and malformed messages are counted
# and dropped, anything else (a gap, a new epoch, a channel in recovery, a heartbeat that
# shows a gap) is parked as f.pending and ends the call.  Waits up to ``timeout_ms`` for the
# first message (-1: no limit, 0: never), and returns as soon as the sockets are empty once
# it holds events, when fewer than f.max_events slots are left, or when a wake socket is
# readable (f.woken).  Returns the events written (>= 0), or -1 when libzmq fails
# (f.zmq_errno: ETERM when the context is terminated); an interrupted wait (EINTR) returns
# what it has.  Call it without the GIL; one thread per tw_feed.
cdef Py_ssize_t tw_feed_drain(tw_feed *f, tw_event *out, Py_ssize_t cap, int timeout_ms) noexcept nogil


cdef class FeedReceiver:
    cdef tw_feed c
    cdef list _sockets            # keeps the pyzmq sockets (and their handles) alive
    cdef list _wake_sockets
