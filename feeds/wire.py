"""tickwire's wire format in plain Python: constants, a reference encoder and decoder.

Anyone can publish to tickwire with this module, numpy and pyzmq; nothing here is compiled.
The layout is specified in ``docs/wire-format.md``; the compiled codec
(:mod:`tickwire.ext.codec`) implements the same checks in the same order, and
``tests/test_wire.py`` / ``tests/test_codec_fuzz.py`` hold the two to each other.

A data message is two ZeroMQ frames::

    [topic]    b"tw." + 5 decimal digits of the channel + b"."     e.g. b"tw.00003."
    [payload]  48-byte header + count * 64-byte canonical events (EVENT_DTYPE, little-endian)

Sequence numbers count **events**, per channel and publisher epoch, from 1: a data message
with header ``seq = s`` and ``count = n`` carries events ``s .. s+n-1`` and the channel's next
message starts at ``s+n``.  A heartbeat carries no events and ``seq`` = the next sequence
number the publisher will assign, so a receiver sees a lost last message without waiting
for more data.  Receivers write ``seq = s + i`` (and ``channel``, ``ts_recv``) into the
events they decode; publishers should set the events' ``seq`` to the same values.

Example (a publisher of one channel)::

    import zmq
    from tickwire.feeds import wire
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.bind("tcp://127.0.0.1:5555")
    out = wire.Publisher(pub)                 # epoch: now, in ns; sequences from 1
    out.send(channel=3, events=batch)         # batch: numpy array of EVENT_DTYPE
    out.heartbeat(channel=3)                  # when idle, every few hundred ms
"""

from __future__ import annotations

import bisect
import enum
import operator
import struct
import time
from typing import NamedTuple

import numpy as np

from tickwire.ext.records import EVENT_DTYPE, Flag, Kind

__all__ = [
    "ipc_in_use",
    "ipc_not_a_socket",
    "ipc_bind_refusal",
    "ipc_claim",
    "ipc_release",
    "MAGIC",
    "VERSION",
    "HEADER_SIZE",
    "EVENT_SIZE",
    "MAX_MESSAGE_EVENTS",
    "MAX_REPLY_EVENTS",
    "MAX_FRAME_BYTES",
    "TOPIC_PREFIX",
    "MsgType",
    "WireFlag",
    "Drop",
    "Header",
    "WireError",
    "TYPES_DATA",
    "TYPES_REQUEST",
    "TYPES_REPLY",
    "TYPES_ANY",
    "topic",
    "topic_channel",
    "books_snapshot",
    "encode",
    "encode_data",
    "encode_heartbeat",
    "encode_snapshot_request",
    "encode_snapshot_part",
    "encode_retransmit_request",
    "encode_retransmit_part",
    "Retainer",
    "RecoveryService",
    "decode",
    "decode_frames",
    "Publisher",
    "new_epoch",
]

MAGIC = b"TWIR"
VERSION = 1
HEADER_SIZE = 48
EVENT_SIZE = 64
TOPIC_PREFIX = b"tw."
TOPIC_SIZE = 9
#: The per-message event limit, the one figure shared by receivers and publishers: the
#: daemon's ``feeds.max_message_events`` and :class:`~tickwire.feeds.handler.FeedHandler`'s
#: ``max_events`` default to it, the compiled decoder too, and tickwire's publishers (replay,
#: bridge, the recovery service's parts) send no more in one message by default (the
#: simulator's ``--batch`` is 64 unless told otherwise).  Real exchange
#: messages fit whole (a Binance spot diff: ~1,200 levels; a REST depth snapshot: 2,001).  A
#: larger data message is dropped by the receiver (counted ``OVERSIZED``, its events
#: then asked for again by retransmission); split a larger exchange message over several
#: (docs/wire-format.md, "Limits").
MAX_MESSAGE_EVENTS = 4096
DEFAULT_MAX_EVENTS = MAX_MESSAGE_EVENTS
#: The most events a receiver accepts in one part of a snapshot or retransmission reply
#: (its recovery DEALER); tickwire's recovery service sends parts of MAX_MESSAGE_EVENTS.
MAX_REPLY_EVENTS = 1 << 22
#: The largest frame a receiver takes off any socket (``ZMQ_MAXMSGSIZE``, 256 MiB): a data
#: message above MAX_MESSAGE_EVENTS but within this is counted (``OVERSIZED``) and its events
#: asked for again; a larger frame makes libzmq close the connection, for good (a ZMTP
#: protocol error is not reconnected), so a publisher must never send one.
MAX_FRAME_BYTES = 48 + 64 * MAX_REPLY_EVENTS

#: magic, version, type, flags, channel, event_size, count, seq, send_time, epoch, request_id, part
HEADER = struct.Struct("<4sBBHHHIQqQII")
assert HEADER.size == HEADER_SIZE


class MsgType(enum.IntEnum):
    """Header byte 5."""

    #: ``count`` events with sequence numbers ``seq .. seq+count-1``.
    DATA = 1
    #: No events; ``seq`` is the sequence number of the next event of the channel.
    HEARTBEAT = 2
    #: Client to snapshot service: "send me channel ``channel``" (``request_id`` echoed).
    SNAPSHOT_REQUEST = 3
    #: One part of a snapshot reply; ``seq`` is the last sequence number the snapshot covers.
    SNAPSHOT = 4
    #: Client to recovery service: "send me ``count`` events of ``channel`` from ``seq`` on,
    #: of publisher epoch ``epoch``" (no events follow; ``count`` is the number asked for).
    RETRANSMIT_REQUEST = 5
    #: One part of a retransmission: events ``seq .. seq+count-1`` as first published. The
    #: last part has ``FINAL``, no events, and ``seq`` = the publisher's next sequence number.
    RETRANSMIT = 6


class WireFlag(enum.IntFlag):
    """Header bytes 6-7."""

    #: SNAPSHOT, RETRANSMIT: the last part of the reply.
    FINAL = 1 << 0
    #: SNAPSHOT: the service cannot serve this channel (unknown channel, not ready).
    #: RETRANSMIT: not a channel or epoch the publisher holds messages of.
    UNAVAILABLE = 1 << 1
    #: HEARTBEAT: the publisher's last message of this epoch on this channel (``seq``: one past
    #: its last event): it sends nothing more in the epoch, so a receiver that has every event
    #: before ``seq`` knows it has the whole epoch.
    END = 1 << 2


KNOWN_FLAGS = int(WireFlag.FINAL | WireFlag.UNAVAILABLE | WireFlag.END)
#: the flags each message type may carry; the rest must be 0 (as ext/codec.pyx's _flags_of)
_FLAGS_OF = {int(MsgType.SNAPSHOT): int(WireFlag.FINAL | WireFlag.UNAVAILABLE),
             int(MsgType.RETRANSMIT): int(WireFlag.FINAL | WireFlag.UNAVAILABLE),
             int(MsgType.HEARTBEAT): int(WireFlag.END)}


#: event flags a publisher may set on any event, and those on ``kind = SNAPSHOT`` markers only;
#: any other bit (``RESTART``, the receiver's own; undefined bits), or a non-zero ``reserved``,
#: makes the message ``BAD_EVENT`` (as ext/codec.pyx's _malformed)
PUBLISHER_EVENT_FLAGS = int(Flag.LAST | Flag.SNAPSHOT | Flag.REPLAY)
MARKER_EVENT_FLAGS = int(Flag.SNAPSHOT_BEGIN | Flag.SNAPSHOT_END | Flag.STALE)


def malformed_events(events: np.ndarray) -> np.ndarray:
    """A bool per event: breaks the event rule of docs/wire-format.md (kind 1..6, side 0..2,
    only the flag bits a publisher may set on that kind of event, ``reserved`` 0)."""
    kind, flags = events["kind"], events["flags"].astype(np.int64)
    allowed = np.where(kind == Kind.SNAPSHOT, PUBLISHER_EVENT_FLAGS | MARKER_EVENT_FLAGS, PUBLISHER_EVENT_FLAGS)
    return ((kind < 1) | (kind > 6) | (events["side"] > 2) | ((flags & ~allowed) != 0)
            | (events["reserved"] != 0))


class Drop(enum.IntEnum):
    """Why a message was dropped: the counters' keys (``TW_DROP_*`` in ``ext/tw_wire.h``).

    Malformed messages are counted under the first check that fails, in this order:
    frames, topic syntax, header length, magic, version, header fields, topic/channel
    match, count limit, length, events.
    """

    OK = 0
    BAD_FRAMES = 1          #: not exactly the frames [topic][payload]
    BAD_TOPIC = 2           #: topic not b"tw.NNNNN.", or not the header's channel
    TRUNCATED = 3           #: shorter than the header, or than header + count events
    BAD_MAGIC = 4           #: not a tickwire message
    BAD_VERSION = 5         #: a wire version this build does not speak
    BAD_HEADER = 6          #: unknown type/flags, event size != 64, events in a heartbeat or request, wrong type for the socket
    OVERSIZED = 7           #: more events than the receiver's per-message limit
    BAD_LENGTH = 8          #: bytes after the last event
    BAD_EVENT = 9           #: an event with an unknown kind or side, a flag bit not its own, reserved != 0
    UNKNOWN_CHANNEL = 10    #: a channel this receiver does not serve
    DUPLICATE = 11          #: every event already seen, or a heartbeat behind the stream
    OLD_EPOCH = 12          #: from an older publisher epoch (before a restart)
    OVERFLOW = 13           #: recovery buffer full: the oldest buffered message was dropped
    STALE_REPLY = 14        #: a snapshot part for no outstanding request, or out of order
    UNSYNCED = 15           #: reserved: never counted by this receiver
    IMPLAUSIBLE = 16        #: a sequence or epoch jump the publisher's service did not confirm


#: Masks of accepted message types (bit ``1 << MsgType``) for :func:`decode`.
TYPES_DATA = (1 << MsgType.DATA) | (1 << MsgType.HEARTBEAT)
TYPES_REQUEST = (1 << MsgType.SNAPSHOT_REQUEST) | (1 << MsgType.RETRANSMIT_REQUEST)
TYPES_REPLY = (1 << MsgType.SNAPSHOT) | (1 << MsgType.RETRANSMIT)
TYPES_ANY = TYPES_DATA | TYPES_REQUEST | TYPES_REPLY


class Header(NamedTuple):
    """A decoded header (magic, version and event size are implied by a successful decode)."""

    type: int
    flags: int
    channel: int
    count: int
    seq: int
    send_time: int
    epoch: int
    request_id: int = 0
    part: int = 0


class WireError(ValueError):
    """A message that does not decode; ``reason`` is a :class:`Drop`."""

    def __init__(self, reason: Drop, message: str):
        super().__init__(f"{reason.name}: {message}")
        self.reason = Drop(reason)


def ipc_in_use(endpoint: str) -> bool:
    """Whether ``ipc://PATH`` is a socket another process listens on. libzmq's bind of an ipc
    endpoint removes what is at the path and takes it: a second publisher on the default
    endpoint silently cut the first one's receivers off (tcp refuses: address in use). Publishers
    ask this before they bind."""
    import os
    import socket
    import stat

    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return False
    path = endpoint[len("ipc://"):]
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:                          # a socket file left by a publisher that is gone
            return False
    return True


def ipc_not_a_socket(endpoint: str) -> str | None:
    """What is at ``ipc://PATH`` if it is anything but a socket file (a regular file, a
    directory, a link...), else None. libzmq's bind of an ipc endpoint unlinks whatever is at
    the path: ``--publish ipc:///data/events.npy`` deleted the file (exit 0, an adversarial
    pass). Publishers refuse such a path before they bind."""
    import os
    import stat

    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
        return None
    path = endpoint[len("ipc://"):]
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISSOCK(mode):
        return None
    return ("a directory" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode) else
            "a regular file" if stat.S_ISREG(mode) else "not a socket")


def ipc_bind_refusal(endpoint: str) -> str | None:
    """Why a publisher must not bind ``endpoint`` (libzmq's bind of ``ipc://PATH`` removes what
    is at the path), or None: PATH names a file or directory (:func:`ipc_not_a_socket`), or
    another process listens there (:func:`ipc_in_use`). Every publisher asks this before it binds."""
    what = ipc_not_a_socket(endpoint)
    if what is not None:
        return f"it names {what}, not a socket: binding there would delete it"
    if ipc_in_use(endpoint):
        return "another process listens there: a second publisher would take the path from it silently"
    return None


def ipc_claim(sock) -> tuple | None:
    """Right after ``sock.bind(...)``: the socket file of the ``ipc://`` endpoint it bound (its
    path, device and inode), for :func:`ipc_release`; None for other transports."""
    import os

    import zmq

    ep = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    if not ep.startswith("ipc://") or ep.startswith("ipc://@"):
        return None
    path = ep[len("ipc://"):]
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return path, st.st_dev, st.st_ino


def ipc_release(*claims) -> None:
    """Remove the socket files of :func:`ipc_claim`'s claims. libzmq (4.3) leaves an ipc
    endpoint's file behind when its socket closes, so every publisher run left one or two in
    the endpoints' directory for good. A path bound since by another process (another inode)
    is left alone; call it once the sockets are closed."""
    import os

    for claim in claims:
        if claim is None:
            continue
        path, dev, ino = claim
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == (dev, ino):
                os.unlink(path)
        except OSError:
            pass


def new_epoch(previous: int = 0) -> int:
    """A publisher epoch: the wall clock in ns, strictly above ``previous`` (epochs must grow)."""
    return max(time.time_ns(), previous + 1)


# ---------------------------------------------------------------------------------------
# topics
# ---------------------------------------------------------------------------------------

def topic(channel: int) -> bytes:
    """The topic frame of ``channel``: ``b"tw.00042."`` (fixed width, so no prefix of one
    channel's topic is another's)."""
    if not 0 <= channel <= 0xFFFF:
        raise ValueError(f"channel must be 0..65535, got {channel}")
    return b"tw.%05d." % channel


def await_subscribers(xpub, channels, subscribers: int = 1, timeout: float = 10.0, stop=None) -> bool:
    """Read subscriptions from ``xpub`` (an XPUB socket with ``XPUB_VERBOSE``) until each of
    ``channels`` has ``subscribers`` of them; False when ``timeout`` seconds pass first, or
    ``stop()`` says so (asked every 100 ms: a signal's handler runs, but pyzmq polls on)."""
    import time

    import zmq

    topics = {c: topic(c) for c in channels}
    seen = {c: 0 for c in channels}
    end = time.monotonic() + timeout
    while min(seen.values(), default=subscribers) < subscribers:
        left = end - time.monotonic()
        if left <= 0:
            return False
        # (an hour at most a poll: zmq_poll takes a C int of ms, and --wait-subscribers 1e9 was an
        # OverflowError traceback)
        if stop is not None and stop():
            return False
        if not xpub.poll(int(min(left, 3600.0 if stop is None else 0.1) * 1000) + 1, zmq.POLLIN):
            continue
        msg = xpub.recv()
        if msg[:1] == b"\x01":
            for c, t in topics.items():
                if t.startswith(msg[1:]):
                    seen[c] += 1
    return True


def books_snapshot(books, ids, covered: int) -> np.ndarray:
    """A channel's snapshot at sequence ``covered``: the books ``ids`` (of a ``BookSet``) as
    snapshot events. Each book's carry the exchange time of its last event (a book that has had
    none: the latest of the others'; 0 when none has: no exchange time yet, and the receiver
    stores the snapshot with the time of the channel's first event), so that stored snapshots
    keep their place in the store's time order beside the ticks. A book is served as it stands,
    in the middle of a snapshot sequence too (the rest of it follows in the stream); a publisher
    leaves out of ``ids`` the books it does not know (docs/wire-format.md; the Republisher's
    ``stale``)."""
    stamps = {i: int(books[i].last_ts_event) for i in ids}
    latest = max(stamps.values(), default=0)
    if not ids:
        return np.empty(0, EVENT_DTYPE)
    return np.concatenate([books[i].snapshot_events(seq=covered, ts=stamps[i] or latest) for i in ids])


def topic_channel(frame: bytes) -> int | None:
    """The channel of a topic frame, or None when it is not a tickwire topic."""
    frame = bytes(frame)
    if len(frame) != TOPIC_SIZE or frame[:3] != TOPIC_PREFIX or frame[8:] != b".":
        return None
    digits = frame[3:8]
    if not all(48 <= c <= 57 for c in digits):
        return None
    value = int(digits)
    return value if value <= 0xFFFF else None


# ---------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------

def _event_bytes(events) -> tuple[bytes, int]:
    if events is None:
        return b"", 0
    arr = np.ascontiguousarray(events)
    if arr.dtype != EVENT_DTYPE:
        raise TypeError(f"events must be a numpy array of EVENT_DTYPE, got {arr.dtype}")
    # every event, in C order, counted as such (a 2-D array's len() is its rows: a count the
    # body did not match, and the receiver dropped the message)
    return arr.tobytes(), arr.size


#: the header's integer fields a caller gives, with their ranges (struct's own error names none)
_FIELDS = {"msg_type": (0, 0xFF), "flags": (0, 0xFF), "channel": (0, 0xFFFF), "seq": (0, (1 << 64) - 1),
           "send_time": (-(1 << 63), (1 << 63) - 1), "epoch": (0, (1 << 64) - 1),
           "request_id": (0, 0xFFFFFFFF), "part": (0, 0xFFFFFFFF)}


def _field(name: str, value) -> int:
    """``value`` as the header's integer field ``name``: an integer (a float is refused, not
    truncated) within the field's range."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    lo, hi = _FIELDS[name]
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {v}")
    return v


def encode(msg_type: int, channel: int, seq: int, events=None, *, epoch: int, send_time: int = 0,
           flags: int = 0, request_id: int = 0, part: int = 0) -> bytes:
    """The payload frame: header + events (EVENT_DTYPE array, copied as they are; a 2-D array's
    events in C order)."""
    body, count = _event_bytes(events)
    if count > 0xFFFFFFFF:
        raise ValueError(f"{count} events: a message holds at most 2^32 - 1")
    ix = operator.index
    try:
        return HEADER.pack(MAGIC, VERSION, ix(msg_type), ix(flags), ix(channel), EVENT_SIZE, count, ix(seq),
                           ix(send_time), ix(epoch), ix(request_id), ix(part)) + body
    except (TypeError, struct.error):
        for name, v in zip(_FIELDS, (msg_type, flags, channel, seq, send_time, epoch, request_id, part)):
            _field(name, v)                      # the error naming the field
        raise


def encode_data(channel: int, seq: int, events, *, epoch: int, send_time: int | None = None
                ) -> tuple[bytes, bytes]:
    """``(topic, payload)`` of a data message carrying ``events`` as ``seq .. seq+len-1``.

    The events' ``seq`` and ``channel`` fields should already hold those values (receivers
    overwrite them with exactly these)."""
    return topic(channel), encode(MsgType.DATA, channel, seq, events, epoch=epoch,
                                  send_time=time.time_ns() if send_time is None else send_time)


def encode_heartbeat(channel: int, next_seq: int, *, epoch: int, send_time: int | None = None,
                     end: bool = False) -> tuple[bytes, bytes]:
    """``(topic, payload)`` of a heartbeat: no events, ``seq`` = the next sequence number;
    ``end``: flagged ``END``, the publisher's last message of the epoch on the channel."""
    return topic(channel), encode(MsgType.HEARTBEAT, channel, next_seq, epoch=epoch,
                                  send_time=time.time_ns() if send_time is None else send_time,
                                  flags=int(WireFlag.END) if end else 0)


def encode_snapshot_request(channel: int, request_id: int, *, epoch: int = 0) -> bytes:
    """The single frame a client sends to a snapshot service (``epoch``: the one it follows, 0: none)."""
    return encode(MsgType.SNAPSHOT_REQUEST, channel, 0, epoch=epoch, send_time=time.time_ns(),
                  request_id=request_id)


def encode_snapshot_part(channel: int, covered_seq: int, events, *, epoch: int, request_id: int,
                         part: int, final: bool, unavailable: bool = False,
                         send_time: int | None = None) -> bytes:
    """One frame of a snapshot reply: ``events`` (a slice of the channel's snapshot events),
    ``covered_seq`` = the last sequence number the snapshot reflects."""
    flags = (WireFlag.FINAL if final else 0) | (WireFlag.UNAVAILABLE if unavailable else 0)
    return encode(MsgType.SNAPSHOT, channel, covered_seq, events, epoch=epoch,
                  send_time=time.time_ns() if send_time is None else send_time,
                  flags=int(flags), request_id=request_id, part=part)


def encode_retransmit_request(channel: int, request_id: int, first: int, count: int, *, epoch: int) -> bytes:
    """The single frame a client sends to ask for ``count`` events of ``channel`` from
    sequence number ``first`` on, of publisher epoch ``epoch``."""
    if not 0 < count <= 0xFFFFFFFF:
        raise ValueError(f"count must be 1..2**32-1, got {count}")
    return HEADER.pack(MAGIC, VERSION, int(MsgType.RETRANSMIT_REQUEST), 0, int(channel), EVENT_SIZE,
                       int(count), int(first), time.time_ns(), int(epoch), int(request_id), 0)


def encode_retransmit_part(channel: int, seq: int, events, *, epoch: int, request_id: int, part: int,
                           final: bool = False, unavailable: bool = False,
                           send_time: int | None = None) -> bytes:
    """One frame of a retransmission: ``events`` = sequence numbers ``seq ..`` as first
    published; the final part carries no events and ``seq`` = the publisher's next sequence
    number of the channel."""
    flags = (WireFlag.FINAL if final else 0) | (WireFlag.UNAVAILABLE if unavailable else 0)
    return encode(MsgType.RETRANSMIT, channel, seq, events, epoch=epoch,
                  send_time=time.time_ns() if send_time is None else send_time,
                  flags=int(flags), request_id=request_id, part=part)


# ---------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------

def decode(topic_frame, payload, *, max_events: int = DEFAULT_MAX_EVENTS, types: int = TYPES_DATA,
           ts_recv: int = 0) -> tuple[Header, np.ndarray]:
    """Check and decode one message; raises :class:`WireError` with the :class:`Drop` reason.

    ``topic_frame`` None skips the topic checks (snapshot requests and replies have no
    topic).  The events come back as a new array with ``ts_recv``, ``channel`` and ``seq``
    set the way a receiver sets them (DATA: ``seq + i``; SNAPSHOT: ``seq`` on every event).
    """
    if type(max_events) is not int:                  # (NaN compared False: no limit at all)
        try:
            max_events = operator.index(max_events)
        except TypeError:
            raise TypeError(f"max_events must be an integer, got {max_events!r}") from None
    payload = bytes(payload)
    channel_from_topic = None
    if topic_frame is not None:
        channel_from_topic = topic_channel(topic_frame)
        if channel_from_topic is None:
            raise WireError(Drop.BAD_TOPIC, f"topic {bytes(topic_frame)[:16]!r} is not b'tw.NNNNN.'")
    if len(payload) < HEADER_SIZE:
        raise WireError(Drop.TRUNCATED, f"{len(payload)} bytes, the header alone is {HEADER_SIZE}")
    (magic, version, mtype, flags, channel, event_size, count, seq, send_time, epoch,
     request_id, part) = HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise WireError(Drop.BAD_MAGIC, f"magic {magic!r}")
    if version != VERSION:
        raise WireError(Drop.BAD_VERSION, f"version {version}, this build speaks {VERSION}")
    if not 0 < mtype < 7 or not (types >> mtype) & 1:
        raise WireError(Drop.BAD_HEADER, f"message type {mtype} not accepted here")
    if flags & ~_FLAGS_OF.get(mtype, 0):
        raise WireError(Drop.BAD_HEADER, f"flags {flags:#x} on {MsgType(mtype).name}")
    if event_size != EVENT_SIZE:
        raise WireError(Drop.BAD_HEADER, f"event size {event_size}")
    if mtype in (MsgType.HEARTBEAT, MsgType.SNAPSHOT_REQUEST) and count:
        raise WireError(Drop.BAD_HEADER, f"{MsgType(mtype).name} with {count} events")
    if seq + count > (1 << 64) - 1:
        raise WireError(Drop.BAD_HEADER, f"sequence numbers {seq}.. past 2^64 - 1 ({count} events)")
    if mtype in (MsgType.DATA, MsgType.HEARTBEAT) and (request_id or part):
        raise WireError(Drop.BAD_HEADER, f"{MsgType(mtype).name} with request_id {request_id}, part {part}")
    if channel_from_topic is not None and channel_from_topic != channel:
        raise WireError(Drop.BAD_TOPIC, f"topic says channel {channel_from_topic}, header {channel}")
    asked = 0
    if mtype == MsgType.RETRANSMIT_REQUEST:
        asked, count = count, 0                  # the events asked for; none follow
    elif count > max_events:
        raise WireError(Drop.OVERSIZED, f"{count} events, the limit is {max_events}")
    body = len(payload) - HEADER_SIZE
    if body < count * EVENT_SIZE:
        raise WireError(Drop.TRUNCATED, f"{count} events need {count * EVENT_SIZE} bytes, {body} follow")
    if body > count * EVENT_SIZE:
        raise WireError(Drop.BAD_LENGTH, f"{body - count * EVENT_SIZE} bytes after the last event")
    events = np.frombuffer(payload, dtype=EVENT_DTYPE, count=count, offset=HEADER_SIZE).copy()
    kinds = events["kind"]
    bad = malformed_events(events)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise WireError(Drop.BAD_EVENT, f"event {i}: kind {int(kinds[i])} side {int(events['side'][i])} "
                                        f"flags {int(events['flags'][i]):#x} reserved {int(events['reserved'][i])}")
    events["ts_recv"] = ts_recv
    events["channel"] = channel
    events["order_id"][kinds == Kind.SNAPSHOT] = 0     # a marker's order_id is the receiver's own
    events["seq"] = seq + np.arange(count, dtype=np.uint64) if mtype in (MsgType.DATA, MsgType.RETRANSMIT) else seq
    return Header(mtype, flags, channel, asked or count, seq, send_time, epoch, request_id, part), events


def decode_frames(frames, **kwargs) -> tuple[Header, np.ndarray]:
    """:func:`decode` of a received multipart message ``[topic, payload]``."""
    if len(frames) != 2:
        raise WireError(Drop.BAD_FRAMES, f"{len(frames)} frames, expected [topic, payload]")
    return decode(frames[0], frames[1], **kwargs)


# ---------------------------------------------------------------------------------------
# retransmission and snapshots: what a publisher keeps and serves
# ---------------------------------------------------------------------------------------

class Retainer:
    """The events a publisher has sent, kept by channel and sequence number so that a range
    can be sent again (an exchange's rerequest server).

    Parameters
    ----------
    max_events : int
        Most events kept per channel; the oldest messages go first (0: keep nothing, every
        retransmission request is answered with what was lost).
    """

    def __init__(self, max_events: int = 1 << 20, epoch: int = 0):
        if max_events < 0:
            raise ValueError(f"max_events must be >= 0, got {max_events}")
        self.max_events = int(max_events)
        self.epoch = int(epoch)
        self._kept: dict[int, _Kept] = {}
        self._next: dict[int, int] = {}

    def keep(self, channel: int, seq: int, events) -> None:
        """Record that ``events`` were published on ``channel`` as ``seq ..`` (kept by reference:
        pass an array the caller no longer changes)."""
        n = len(events)
        self._next[channel] = seq + n
        if not n or not self.max_events:
            return
        k = self._kept.get(channel)
        if k is None:
            k = self._kept[channel] = _Kept()
        k.append(seq, events)
        k.trim(self.max_events)

    def announce(self, channel: int, next_seq: int = 1) -> None:
        """Make ``channel`` known before anything is published on it."""
        self._next.setdefault(channel, next_seq)

    def restart(self, epoch: int) -> None:
        """A new publisher epoch: sequences start again and nothing of the old one is served."""
        self.epoch = int(epoch)
        self._kept.clear()
        self._next = dict.fromkeys(self._next, 1)

    def knows(self, channel: int) -> bool:
        return channel in self._next

    def next_seq(self, channel: int) -> int:
        """The sequence number the channel's next event gets."""
        return self._next.get(channel, 1)

    def first_seq(self, channel: int) -> int:
        """The oldest sequence number still held (``next_seq`` when none is)."""
        k = self._kept.get(channel)
        return k.seqs[k.head] if k is not None and k.head < len(k.seqs) else self.next_seq(channel)

    def range(self, channel: int, first: int, count: int) -> list:
        """The held events with sequence numbers in ``first .. first+count-1``: ``(seq,
        events)`` with the first one's sequence number (later than ``first`` when the start
        is no longer held) and the events in order, or ``(next_seq, None)`` when none are held.
        The first message is found by bisection: a walk of every message held, whatever the
        request, took 0.4 s with 2^20 one-event messages, so a receiver of a lossy feed of
        small messages never caught up, and each 48-byte request stalled the publisher (an
        adversarial pass)."""
        out, start, end = [], None, first + count
        k = self._kept.get(channel)
        if k is not None and count > 0:
            seqs, msgs = k.seqs, k.msgs
            i = max(bisect.bisect_right(seqs, first, k.head) - 1, k.head)
            while i < len(seqs) and seqs[i] < end:
                seq, events = seqs[i], msgs[i]
                lo, hi = max(seq, first), min(seq + len(events), end)
                if lo < hi:
                    start = lo if start is None else start
                    out.append(events[lo - seq:hi - seq])
                i += 1
        if not out:
            return self.next_seq(channel), None
        return start, (np.concatenate(out) if len(out) > 1 else np.ascontiguousarray(out[0]))


class _Kept:
    """One channel's retained messages, oldest first: their first sequence numbers (ascending,
    for bisection) and events, from ``head`` on (the ones before it dropped, compacted away
    now and then: amortised O(1) a message)."""

    __slots__ = ("seqs", "msgs", "head", "held")

    def __init__(self):
        self.seqs: list[int] = []
        self.msgs: list = []
        self.head = 0
        self.held = 0

    def append(self, seq: int, events) -> None:
        if self.head < len(self.seqs) and seq < self.seqs[-1]:
            # (sequence numbers went back without a restart: what is held no longer bisects)
            self.seqs, self.msgs, self.head, self.held = [], [], 0, 0
        self.seqs.append(seq)
        self.msgs.append(events)
        self.held += len(events)

    def trim(self, max_events: int) -> None:
        while self.held > max_events and self.head < len(self.seqs):
            self.held -= len(self.msgs[self.head])
            self.msgs[self.head] = None
            self.head += 1
        if self.head > 1024 and self.head * 2 > len(self.seqs):
            del self.seqs[:self.head], self.msgs[:self.head]
            self.head = 0


#: Largest frame a recovery service takes (requests are one header, 48 bytes): a longer frame is
#: refused by libzmq, which drops the connection, before it is buffered (two 300 MB frames took a
#: simulator from 61 to 703 MB: an adversarial pass).
MAX_REQUEST_BYTES = 4096


#: A linger goes on while receivers still ask, for at most this many times its length.
LINGER_MAX_FACTOR = 10


def linger_over(started: float, seconds: float, service) -> bool:
    """Whether a publisher's linger (serving recovery after its last event, so that receivers
    get what the wire lost) begun at ``started`` (``time.monotonic()``) is over: ``seconds`` at
    least, then on until ``seconds`` pass without a request to ``service`` (a
    :class:`RecoveryService`, or None), and never past ``LINGER_MAX_FACTOR`` times ``seconds``.
    A fixed second ended a loaded simulator between a receiver's request and its retry: the
    events asked for were counted lost once the next publisher started."""
    now = time.monotonic()
    end = max(started, getattr(service, "last_request", 0.0)) + seconds
    return now >= min(end, started + LINGER_MAX_FACTOR * seconds)


def service_socket_options(sock) -> None:
    """Options of a recovery service's ROUTER, set before it binds (a listener copies them then):
    ``MAXMSGSIZE`` :data:`MAX_REQUEST_BYTES`."""
    import zmq

    sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)


class RecoveryService:
    """Answers snapshot and retransmission requests on a bound ROUTER socket.

    Parameters
    ----------
    socket : zmq.Socket
        A bound ROUTER socket.
    source : callable, optional
        ``source(channel) -> (epoch, covered_seq, events)`` or None for a channel this
        publisher does not have: the snapshot events of the channel's instruments reflecting
        every event up to ``covered_seq``. Without it, snapshot requests are answered
        UNAVAILABLE.
    retainer : Retainer, optional
        What the publisher has sent; without it, retransmission requests are answered
        UNAVAILABLE (the receiver falls back to a snapshot and counts the loss).
    part_events : int
        Most events in one reply part.
    delay : float
        Seconds between taking a snapshot and sending it (a slow service: the client buffers
        live messages newer than the snapshot meanwhile).
    share : float
        Most of the caller's time the service takes while requests keep coming (0 < share <= 1):
        after a call that answered for T seconds, the next one answers nothing for
        ``T * (1 - share) / share`` (half: as long again). A client flooding the service with
        large retransmission requests (any peer that reaches the port can) then slows recovery,
        not the publisher: 2,000 requests for the whole history froze a simulator's stream for
        good, with every message it was to send after.
    queued : int
        Requests held waiting. They are answered by their rank among their sender's requests
        waiting (a peer's first before anyone's second), then cheapest first (the events asked
        for; a snapshot counts as one part), then in arrival order: a receiver's request for the
        few messages it lost goes before a flood's requests, whether for the whole history
        (answered in turn, the receiver's timed out behind them and the feed never recovered)
        or for one event each (130,000 of them, cheapest first, pushed the receiver's out and
        128 events were lost: an adversarial pass). When full, the last by that order is dropped
        unanswered (``dropped``; its sender asks again).

    Each call reads at most ``queued`` requests from the socket, within the same ``share`` of
    the caller's time as the answers (ROUTER reads its peers fairly in turn, so a flood from one
    does not hide another's request): a stream of junk frames stopped a simulator's feed for as
    long as it lasted. Set :func:`service_socket_options` on the socket before binding it.

    Call :meth:`serve` between two published messages, so that a snapshot is exact.
    """

    #: Seconds a call spends at most reading requests (then answering; both within ``share``).
    INTAKE_S = 0.001

    def __init__(self, socket, source=None, retainer: Retainer | None = None, part_events: int = MAX_MESSAGE_EVENTS,
                 delay: float = 0.0, share: float = 0.5, queued: int = 1024):
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share: expected a fraction in (0, 1], got {share!r}")
        self.socket = socket
        self.source = source
        self.retainer = retainer
        self.part_events = max(int(part_events), 1)
        self.delay = float(delay)
        self._later = []                # (due, replies) of delayed snapshot replies
        self._bad: dict[str, int] = {}
        self.served = 0                 # snapshot replies
        self.events = 0                 # snapshot events sent
        self.unavailable = 0
        self.retransmissions = 0        # retransmission replies
        self.retransmitted = 0          # events sent again
        self.not_held = 0               # events asked for that were no longer held
        self.share = float(share)
        self.busy_s = 0.0               # seconds spent answering
        self.deferred = 0               # calls that answered nothing to keep within `share`
        self.dropped = 0                # requests dropped unanswered, the queue full of cheaper ones
        self._rest_until = 0.0
        self._queue: list = []          # heap of (rank, cost, arrival, key, [header])
        self._queued = max(int(queued), 1)
        self._arrivals = 0
        self._waiting: dict[bytes, int] = {}   # requests queued per peer (its next one's rank)
        self._same: dict[tuple, list] = {}     # (peer, type, channel, epoch, seq, count) -> its [header]
        self.last_request = 0.0         # time.monotonic() of the last well-formed request read

    @property
    def bad_requests(self) -> dict:
        """Malformed requests by reason."""
        return dict(self._bad)

    def serve(self) -> int:
        """Answer the requests waiting (never blocks), within ``share`` of the caller's time;
        returns how many were answered."""
        import zmq

        import heapq

        answered = 0
        sock = self.socket
        start = time.monotonic()
        if start < self._rest_until:
            self.deferred += 1
            return 0
        q = self._queue
        waiting = self._waiting
        same = self._same
        read = 0
        for _ in range(self._queued):          # take in what waits, within this call's budget
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN or time.monotonic() - start >= self.INTAKE_S:
                break
            frames = sock.recv_multipart()
            read += 1
            if len(frames) < 2:
                continue
            try:
                h, _ = decode(None, frames[-1], max_events=0, types=TYPES_REQUEST)
            except WireError as exc:
                self._bad[exc.reason.name] = self._bad.get(exc.reason.name, 0) + 1
                continue
            peer = frames[0]
            self.last_request = time.monotonic()
            key = (peer, h.type, h.channel, h.epoch, h.seq, h.count)
            box = same.get(key)
            if box is not None:
                # the peer asked again (its timer ran out, a new request id): the queued one is
                # answered under the new id, in its place (ranked after it, the retry waited
                # behind every other peer's first, and the old one's answer was stale: a review)
                box[0] = h
                continue
            cost = min(h.count, 1 << 24) if h.type == MsgType.RETRANSMIT_REQUEST else self.part_events
            self._arrivals += 1
            entry = (waiting.get(peer, 0), cost, self._arrivals, key, [h])
            if len(q) >= self._queued:
                self.dropped += 1
                worst = max(range(len(q)), key=lambda i: q[i][:3])
                if entry[:3] > q[worst][:3]:
                    continue                     # the newcomer is the last: dropped
                self._forget(q[worst][3])
                q[worst] = entry
                heapq.heapify(q)
            else:
                heapq.heappush(q, entry)
            same[key] = entry[4]
            waiting[peer] = waiting.get(peer, 0) + 1
        if self._later:
            while self._later and self._later[0][0] <= start:
                for frames in self._later.pop(0)[1]:
                    sock.send_multipart(frames)
        # by rank, then cheapest first, until 2 ms of this call are spent (at least one)
        while q and (not answered or time.monotonic() - start < 0.002):
            _, _, _, key, (h,) = heapq.heappop(q)
            self._forget(key)
            identity = key[0]
            if h.type == MsgType.RETRANSMIT_REQUEST:
                self._retransmit(identity, h)
            else:
                self._snapshot(identity, h)
            answered += 1
        took = time.monotonic() - start
        if not read and not answered:
            return 0                             # (nothing waited: no rest owed)
        self.busy_s += took
        self._rest_until = time.monotonic() + took * (1.0 - self.share) / self.share
        return answered

    def _forget(self, key: tuple) -> None:
        """A queued request (``key``: its peer and what it asks) taken out."""
        self._same.pop(key, None)
        peer = key[0]
        n = self._waiting.get(peer, 0) - 1
        if n > 0:
            self._waiting[peer] = n
        else:
            self._waiting.pop(peer, None)

    def _snapshot(self, identity: bytes, h: Header) -> None:
        found = self.source(h.channel) if self.source is not None else None
        now = time.time_ns()
        if found is None:
            self.unavailable += 1
            self.socket.send_multipart([identity, encode_snapshot_part(
                h.channel, 0, None, epoch=0, request_id=h.request_id, part=0, final=True,
                unavailable=True, send_time=now)])
            return
        epoch, covered, events = found
        step = self.part_events
        nparts = max(1, -(-len(events) // step))
        reply = [[identity, encode_snapshot_part(h.channel, covered, events[k * step:(k + 1) * step],
                                                 epoch=epoch, request_id=h.request_id, part=k,
                                                 final=k == nparts - 1, send_time=now)]
                 for k in range(nparts)]
        if self.delay > 0:
            self._later.append((time.monotonic() + self.delay, reply))
        else:
            for frames in reply:
                self.socket.send_multipart(frames)
        self.served += 1
        self.events += len(events)

    def _retransmit(self, identity: bytes, h: Header) -> None:
        r = self.retainer
        now = time.time_ns()
        part = 0
        if r is None or not r.knows(h.channel) or h.epoch != r.epoch:
            self.unavailable += 1
            self.not_held += h.count
            self.socket.send_multipart([identity, encode_retransmit_part(
                h.channel, 0 if r is None else r.next_seq(h.channel), None, epoch=0 if r is None else r.epoch,
                request_id=h.request_id, part=0, final=True, unavailable=True, send_time=now)])
            return
        end = min(h.seq + h.count, r.next_seq(h.channel))
        first, events = r.range(h.channel, h.seq, max(end - h.seq, 0))
        sent = 0
        if events is not None:
            for k in range(0, len(events), self.part_events):
                chunk = np.ascontiguousarray(events[k:k + self.part_events])
                self.socket.send_multipart([identity, encode_retransmit_part(
                    h.channel, first + k, chunk, epoch=r.epoch, request_id=h.request_id, part=part,
                    send_time=now)])
                part += 1
            sent = len(events)
        self.socket.send_multipart([identity, encode_retransmit_part(
            h.channel, r.next_seq(h.channel), None, epoch=r.epoch, request_id=h.request_id, part=part,
            final=True, send_time=now)])
        self.retransmissions += 1
        self.retransmitted += sent
        self.not_held += max(end - h.seq, 0) - sent


# ---------------------------------------------------------------------------------------
# a minimal publisher
# ---------------------------------------------------------------------------------------

class Publisher:
    """Sequence numbers and framing over a PUB (or PUSH) socket, with the messages kept for
    retransmission: the least a publisher needs.

    Parameters
    ----------
    socket : zmq.Socket
        A bound or connected PUB/PUSH socket.
    epoch : int, optional
        This publisher's epoch (default: :func:`new_epoch`).  A restarted publisher must
        use a larger epoch, and starts its sequences again from 1.
    service : zmq.Socket, optional
        A bound ROUTER socket for the recovery service: receivers that lost messages ask it
        for them again (and for snapshots, when ``snapshot`` is given). Call :meth:`serve`
        between sends (a loop that also sends heartbeats when idle is the usual shape).
    snapshot : callable, optional
        ``snapshot(channel) -> (epoch, covered_seq, events)`` (see :class:`RecoveryService`).
    retain_events : int
        Events kept per channel for retransmission (see :class:`Retainer`).
    """

    def __init__(self, socket, epoch: int | None = None, *, service=None, snapshot=None,
                 retain_events: int = 1 << 20):
        self.socket = socket
        self.epoch = new_epoch() if epoch is None else int(epoch)
        self.retainer = Retainer(retain_events, self.epoch)
        self.service = None if service is None else RecoveryService(service, snapshot, self.retainer)

    def next_seq(self, channel: int) -> int:
        """Sequence number the next event of ``channel`` gets."""
        return self.retainer.next_seq(channel)

    def send(self, channel: int, events, owned: bool = False) -> int:
        """Publish ``events`` (EVENT_DTYPE) on ``channel``; sets their ``seq`` and ``channel``
        fields in place and returns the first sequence number.  Kept for retransmission as a
        copy, or as they are with ``owned`` (the caller never changes them again)."""
        seq = self.next_seq(channel)
        if len(events):
            events["seq"] = seq + np.arange(len(events), dtype=np.uint64)
            events["channel"] = channel
        self.socket.send_multipart(encode_data(channel, seq, events, epoch=self.epoch))
        self.retainer.keep(channel, seq, events if owned else np.array(events, dtype=EVENT_DTYPE, copy=True))
        return seq

    def heartbeat(self, channel: int, end: bool = False) -> None:
        """Tell receivers the channel is alive and where its sequence stands (``end``: and that
        nothing more comes in this epoch: send it once, last, when the publisher stops for good)."""
        self.retainer.announce(channel)
        self.socket.send_multipart(encode_heartbeat(channel, self.next_seq(channel), epoch=self.epoch, end=end))

    def serve(self) -> int:
        """Answer waiting retransmission and snapshot requests (never blocks)."""
        return self.service.serve() if self.service is not None else 0
