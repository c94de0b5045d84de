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

import enum
import struct
import time
from typing import NamedTuple

import numpy as np

from tickwire.ext.records import EVENT_DTYPE

__all__ = [
    "MAGIC",
    "VERSION",
    "HEADER_SIZE",
    "EVENT_SIZE",
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
    "encode",
    "encode_data",
    "encode_heartbeat",
    "encode_snapshot_request",
    "encode_snapshot_part",
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
DEFAULT_MAX_EVENTS = 8192

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


class WireFlag(enum.IntFlag):
    """Header bytes 6-7."""

    #: SNAPSHOT: the last part of the reply.
    FINAL = 1 << 0
    #: SNAPSHOT: the service cannot serve this channel (unknown channel, not ready).
    UNAVAILABLE = 1 << 1


KNOWN_FLAGS = int(WireFlag.FINAL | WireFlag.UNAVAILABLE)


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
    BAD_EVENT = 9           #: an event with an unknown kind or side
    UNKNOWN_CHANNEL = 10    #: a channel this receiver does not serve
    DUPLICATE = 11          #: every event already seen
    OLD_EPOCH = 12          #: from an older publisher epoch (before a restart)
    OVERFLOW = 13           #: recovery buffer full: the oldest buffered message was dropped
    STALE_REPLY = 14        #: a snapshot part for no outstanding request, or out of order
    UNSYNCED = 15           #: data for a channel waiting to retry a failed recovery


#: Masks of accepted message types (bit ``1 << MsgType``) for :func:`decode`.
TYPES_DATA = (1 << MsgType.DATA) | (1 << MsgType.HEARTBEAT)
TYPES_REQUEST = 1 << MsgType.SNAPSHOT_REQUEST
TYPES_REPLY = 1 << MsgType.SNAPSHOT
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
    return arr.tobytes(), len(arr)


def encode(msg_type: int, channel: int, seq: int, events=None, *, epoch: int, send_time: int = 0,
           flags: int = 0, request_id: int = 0, part: int = 0) -> bytes:
    """The payload frame: header + events (EVENT_DTYPE array, copied as they are)."""
    body, count = _event_bytes(events)
    return HEADER.pack(MAGIC, VERSION, int(msg_type), int(flags), int(channel), EVENT_SIZE, count,
                       int(seq), int(send_time), int(epoch), int(request_id), int(part)) + body


def encode_data(channel: int, seq: int, events, *, epoch: int, send_time: int | None = None
                ) -> tuple[bytes, bytes]:
    """``(topic, payload)`` of a data message carrying ``events`` as ``seq .. seq+len-1``.

    The events' ``seq`` and ``channel`` fields should already hold those values (receivers
    overwrite them with exactly these)."""
    return topic(channel), encode(MsgType.DATA, channel, seq, events, epoch=epoch,
                                  send_time=time.time_ns() if send_time is None else send_time)


def encode_heartbeat(channel: int, next_seq: int, *, epoch: int, send_time: int | None = None
                     ) -> tuple[bytes, bytes]:
    """``(topic, payload)`` of a heartbeat: no events, ``seq`` = the next sequence number."""
    return topic(channel), encode(MsgType.HEARTBEAT, channel, next_seq, epoch=epoch,
                                  send_time=time.time_ns() if send_time is None else send_time)


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
    if not 0 < mtype < 5 or not (types >> mtype) & 1:
        raise WireError(Drop.BAD_HEADER, f"message type {mtype} not accepted here")
    if flags & ~KNOWN_FLAGS:
        raise WireError(Drop.BAD_HEADER, f"unknown flags {flags:#x}")
    if event_size != EVENT_SIZE:
        raise WireError(Drop.BAD_HEADER, f"event size {event_size}")
    if mtype in (MsgType.HEARTBEAT, MsgType.SNAPSHOT_REQUEST) and count:
        raise WireError(Drop.BAD_HEADER, f"{MsgType(mtype).name} with {count} events")
    if channel_from_topic is not None and channel_from_topic != channel:
        raise WireError(Drop.BAD_TOPIC, f"topic says channel {channel_from_topic}, header {channel}")
    if count > max_events:
        raise WireError(Drop.OVERSIZED, f"{count} events, the limit is {max_events}")
    body = len(payload) - HEADER_SIZE
    if body < count * EVENT_SIZE:
        raise WireError(Drop.TRUNCATED, f"{count} events need {count * EVENT_SIZE} bytes, {body} follow")
    if body > count * EVENT_SIZE:
        raise WireError(Drop.BAD_LENGTH, f"{body - count * EVENT_SIZE} bytes after the last event")
    events = np.frombuffer(payload, dtype=EVENT_DTYPE, count=count, offset=HEADER_SIZE).copy()
    kinds = events["kind"]
    if count and (int(kinds.min()) < 1 or int(kinds.max()) > 6 or int(events["side"].max()) > 2):
        raise WireError(Drop.BAD_EVENT, "an event with an unknown kind or side")
    events["ts_recv"] = ts_recv
    events["channel"] = channel
    events["seq"] = seq + np.arange(count, dtype=np.uint64) if mtype == MsgType.DATA else seq
    return Header(mtype, flags, channel, count, seq, send_time, epoch, request_id, part), events


def decode_frames(frames, **kwargs) -> tuple[Header, np.ndarray]:
    """:func:`decode` of a received multipart message ``[topic, payload]``."""
    if len(frames) != 2:
        raise WireError(Drop.BAD_FRAMES, f"{len(frames)} frames, expected [topic, payload]")
    return decode(frames[0], frames[1], **kwargs)


# ---------------------------------------------------------------------------------------
# a minimal publisher
# ---------------------------------------------------------------------------------------

class Publisher:
    """Sequence numbers and framing over a PUB (or PUSH) socket: the least a publisher needs.

    Parameters
    ----------
    socket : zmq.Socket
        A bound or connected PUB/PUSH socket.
    epoch : int, optional
        This publisher's epoch (default: :func:`new_epoch`).  A restarted publisher must
        use a larger epoch, and starts its sequences again from 1.
    """

    def __init__(self, socket, epoch: int | None = None):
        self.socket = socket
        self.epoch = new_epoch() if epoch is None else int(epoch)
        self._next: dict[int, int] = {}

    def next_seq(self, channel: int) -> int:
        """Sequence number the next event of ``channel`` gets."""
        return self._next.get(channel, 1)

    def send(self, channel: int, events) -> int:
        """Publish ``events`` (EVENT_DTYPE) on ``channel``; sets their ``seq`` and ``channel``
        fields in place and returns the first sequence number."""
        seq = self.next_seq(channel)
        if len(events):
            events["seq"] = seq + np.arange(len(events), dtype=np.uint64)
            events["channel"] = channel
        self.socket.send_multipart(encode_data(channel, seq, events, epoch=self.epoch))
        self._next[channel] = seq + len(events)
        return seq

    def heartbeat(self, channel: int) -> None:
        """Tell receivers the channel is alive and where its sequence stands."""
        self.socket.send_multipart(encode_heartbeat(channel, self.next_seq(channel), epoch=self.epoch))
