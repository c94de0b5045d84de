"""Fuzzing the decoder: no input crashes it, every malformed message is counted under its
reason, and the compiled decoder agrees with the plain-Python reference on every input
(reason and decoded bytes).  Then the same malformed kinds through real sockets."""

import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings, strategies as st

from tickwire.engine.instruments import make_books
from tickwire.ext import EVENT_DTYPE, Flag, Kind, Side, codec, empty_events
from tickwire.feeds import wire
from tickwire.feeds.handler import FeedHandler
from tickwire.feeds.simulator import synthetic_instruments
from tickwire.feeds.wire import Drop, MsgType, WireError
from budget import examples

FUZZ = settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(topic, payload, max_events, types):
    """(reason, header, events bytes) from the pure-Python decoder."""
    try:
        h, ev = wire.decode(topic, payload, max_events=max_events, types=types, ts_recv=7)
    except WireError as exc:
        return exc.reason, None, None
    return Drop.OK, h, ev.tobytes()


def compiled(topic, payload, max_events, types):
    dec = codec.Decoder(max_events=max_events, types=types)
    reason, h, ev = dec.decode(topic, payload, 7)
    # every refusal is counted once, under its reason
    assert dec.drops == ({} if reason == Drop.OK else {reason.name: 1})
    assert dec.decoded == (reason == Drop.OK)
    return reason, h, None if ev is None else ev.tobytes()


def agree(topic, payload, max_events=64, types=wire.TYPES_DATA):
    got = compiled(topic, payload, max_events, types)
    assert got == reference(topic, payload, max_events, types)
    return got[0]


# -- arbitrary bytes -----------------------------------------------------------------------

@FUZZ
@given(topic=st.one_of(st.none(), st.binary(max_size=12)), payload=st.binary(max_size=300),
       max_events=st.integers(0, 8), types=st.sampled_from(
           [wire.TYPES_DATA, wire.TYPES_REPLY, wire.TYPES_REQUEST, wire.TYPES_ANY]))
def test_arbitrary_bytes(topic, payload, max_events, types):
    agree(topic, payload, max_events, types)


# -- well-formed headers with arbitrary fields ---------------------------------------------

header_st = st.fixed_dictionaries({
    "magic": st.sampled_from([wire.MAGIC] * 6 + [b"TWIS", b"\x00\x00\x00\x00", b"RIWT"]),
    "version": st.sampled_from([1] * 6 + [0, 2, 255]),
    "type": st.integers(0, 6),
    "flags": st.sampled_from([0, 0, 0, 1, 2, 3, 4, 0x8000]),
    "channel": st.sampled_from([0, 3, 3, 3, 65535]),
    "event_size": st.sampled_from([64] * 8 + [0, 48, 128]),
    "count": st.sampled_from([0, 1, 2, 3, 5, 9, 2**31, 2**32 - 1]),
    "seq": st.integers(0, 2**64 - 1),
    "send_time": st.integers(-2**63, 2**63 - 1),
    "epoch": st.integers(0, 2**64 - 1),
    "request_id": st.integers(0, 2**32 - 1),
    "part": st.integers(0, 2**32 - 1),
})


@FUZZ
@given(h=header_st, body_events=st.integers(0, 6), extra=st.integers(-70, 70),
       topic=st.sampled_from([b"tw.00003.", b"tw.00003.", b"tw.00004.", b"tw.3.", None]),
       kinds=st.lists(st.integers(0, 8), min_size=6, max_size=6),
       sides=st.lists(st.sampled_from([0, 1, 2, 2, 3, 255]), min_size=6, max_size=6),
       flags=st.lists(st.sampled_from([0, 0, 1, 2, 3, 4, 8, 16, 32, 64, 128, 2**31]), min_size=6, max_size=6),
       reserved=st.lists(st.sampled_from([0, 0, 0, 0, 1, 2**32 - 1]), min_size=6, max_size=6),
       max_events=st.integers(0, 8), types=st.sampled_from([wire.TYPES_DATA, wire.TYPES_ANY]))
def test_structured_headers(h, body_events, extra, topic, kinds, sides, flags, reserved, max_events, types):
    ev = empty_events(body_events)
    ev["kind"] = kinds[:body_events]
    ev["side"] = sides[:body_events]
    ev["flags"] = flags[:body_events]
    ev["reserved"] = reserved[:body_events]
    ev["price"] = np.arange(body_events)
    payload = wire.HEADER.pack(h["magic"], h["version"], h["type"], h["flags"], h["channel"], h["event_size"],
                               h["count"], h["seq"], h["send_time"], h["epoch"], h["request_id"], h["part"])
    payload += ev.tobytes()
    payload = payload[:max(0, len(payload) + extra)] if extra < 0 else payload + bytes(range(extra))
    agree(topic, payload, max_events, types)


# -- mutations of valid messages ----------------------------------------------------------

def valid_message(n=5, channel=3):
    ev = empty_events(n)
    ev["kind"] = Kind.ADD
    ev["side"] = np.arange(n) % 2
    ev["price"] = 1000 + np.arange(n)
    ev["qty"] = 1
    ev["order_id"] = 1 + np.arange(n)
    return wire.encode_data(channel, 100, ev, epoch=9, send_time=11)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 48 + 5 * 64 - 1), st.integers(0, 255)), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 48 + 5 * 64)), tail=st.binary(max_size=80),
       topic_flip=st.one_of(st.none(), st.tuples(st.integers(0, 8), st.integers(0, 255))))
def test_mutated_messages(flips, cut, tail, topic_flip):
    topic, payload = valid_message()
    payload = bytearray(payload)
    for pos, value in flips:
        payload[pos] = value
    if cut is not None:
        payload = payload[:cut]
    payload = bytes(payload) + tail
    if topic_flip is not None:
        t = bytearray(topic)
        t[topic_flip[0]] = topic_flip[1]
        topic = bytes(t)
    agree(topic, payload, 8)


# -- each malformed kind, counted under its reason ----------------------------------------

def with_header(**fields):
    topic, payload = valid_message()
    values = list(wire.HEADER.unpack_from(payload))
    names = ["magic", "version", "type", "flags", "channel", "event_size", "count", "seq", "send_time",
             "epoch", "request_id", "part"]
    for k, v in fields.items():
        values[names.index(k)] = v
    return topic, wire.HEADER.pack(*values) + payload[48:]


def bad_event(field="kind", value=9, kind=None):
    """A valid message whose third event has ``field`` set to ``value`` (and ``kind``)."""
    topic, payload = valid_message()
    ev = np.frombuffer(payload, EVENT_DTYPE, offset=48).copy()
    ev[field][2] = value
    if kind is not None:
        ev["kind"][2] = kind
    return topic, payload[:48] + ev.tobytes()


# the flag bits a publisher may not send on an event: a marker's on a market event, RESTART (the
# receiver's own), an undefined bit; and a non-zero reserved word
BAD_EVENTS = [bad_event(), bad_event("side", 3), bad_event("flags", Flag.STALE),
              bad_event("flags", Flag.SNAPSHOT | Flag.SNAPSHOT_END),
              bad_event("flags", Flag.SNAPSHOT | Flag.STALE | Flag.RESTART, kind=Kind.SNAPSHOT),
              bad_event("flags", 1 << 7), bad_event("flags", 1 << 31, kind=Kind.SNAPSHOT),
              bad_event("reserved", 1)]


MALFORMED = {
    Drop.BAD_TOPIC: [(b"tw.3.", valid_message()[1]), (b"tw.00004.", valid_message()[1]),
                     (b"xx.00003.", valid_message()[1]), (b"", valid_message()[1]),
                     (b"tw.00003.x", valid_message()[1]), (b"tw.00003.", valid_message(channel=4)[1])],
    Drop.TRUNCATED: [(b"tw.00003.", b""), (b"tw.00003.", valid_message()[1][:47]),
                     (b"tw.00003.", valid_message()[1][:-1]), (b"tw.00003.", valid_message()[1][:48 + 64])],
    Drop.BAD_MAGIC: [with_header(magic=b"TWIX"), (b"tw.00003.", b"GET / HTTP/1.1\r\n" * 4)],
    Drop.BAD_VERSION: [with_header(version=2), with_header(version=0)],
    Drop.BAD_HEADER: [with_header(type=0), with_header(type=9), with_header(type=MsgType.SNAPSHOT),
                      with_header(type=MsgType.SNAPSHOT_REQUEST), with_header(flags=0x40),
                      with_header(event_size=32), with_header(type=MsgType.HEARTBEAT)],
    Drop.OVERSIZED: [with_header(count=9), with_header(count=2**32 - 1)],
    Drop.BAD_LENGTH: [(b"tw.00003.", valid_message()[1] + b"\x00"), with_header(count=4)],
    Drop.BAD_EVENT: BAD_EVENTS,
}


@pytest.mark.parametrize("reason", list(MALFORMED), ids=lambda r: r.name)
def test_each_malformed_kind_is_counted_under_its_reason(reason):
    dec = codec.Decoder(max_events=8)
    for topic, payload in MALFORMED[reason]:
        assert dec.decode(topic, payload)[0] == reason
        assert reference(topic, payload, 8, wire.TYPES_DATA)[0] == reason
    assert dec.drops == {reason.name: len(MALFORMED[reason])}
    assert dec.decode(*valid_message())[0] == Drop.OK         # and it still decodes what is good


def test_every_flag_a_publisher_may_send_is_taken():
    """The counterpart of BAD_EVENTS: LAST, SNAPSHOT and REPLAY on any event, the marker bits on
    markers, decode in both decoders with the flags as sent."""
    for flags, kind in [(Flag.LAST | Flag.SNAPSHOT | Flag.REPLAY, Kind.TRADE),
                        (Flag.SNAPSHOT | Flag.SNAPSHOT_BEGIN, Kind.SNAPSHOT),
                        (Flag.LAST | Flag.SNAPSHOT | Flag.SNAPSHOT_END | Flag.REPLAY, Kind.SNAPSHOT),
                        (Flag.SNAPSHOT | Flag.STALE, Kind.SNAPSHOT)]:
        topic, payload = bad_event("flags", flags, kind=kind)
        reason, _, ev = codec.Decoder(max_events=8).decode(topic, payload)
        assert reason == Drop.OK and int(ev["flags"][2]) == flags
        assert reference(topic, payload, 8, wire.TYPES_DATA)[0] == Drop.OK


def test_frames():
    dec = codec.Decoder()
    topic, payload = valid_message()
    assert dec.decode_frames([payload])[0] == Drop.BAD_FRAMES
    assert dec.decode_frames([topic, payload, b""])[0] == Drop.BAD_FRAMES
    assert dec.decode_frames([topic, payload])[0] == Drop.OK
    assert dec.drops == {"BAD_FRAMES": 2}


# -- through real sockets ------------------------------------------------------------------

def test_malformed_messages_through_the_receive_loop(tmp_path):
    """Every malformed kind sent over a PUB socket is counted exactly, books stay correct,
    and the stream goes on (a malformed data message is lost data: a gap, then recovery)."""
    insts = synthetic_instruments(2)
    books = make_books(insts)
    ctx = zmq.Context()
    ep = f"ipc://{tmp_path}/data"
    pub = ctx.socket(zmq.XPUB)
    pub.bind(ep)
    h = FeedHandler(ep, {3: [0, 1]}, books.apply, context=ctx, max_events=8, silence_timeout=0)
    try:
        assert pub.poll(5000) and pub.recv() == b"\x01" + wire.topic(3)
        pub_ = wire.Publisher(pub, epoch=9)
        ev = empty_events(2)
        ev["kind"] = Kind.ADD
        ev["side"] = Side.BID
        ev["price"] = [100, 101]
        ev["qty"] = 1
        ev["instrument"] = [0, 1]
        ev["order_id"] = [1, 2]
        pub_.send(3, ev)                                   # seq 1: the first message, no snapshot service
        sent = {}
        for reason, cases in MALFORMED.items():
            for topic, payload in cases:
                if not topic.startswith(wire.topic(3)):
                    continue                               # the SUB filter never lets these in
                pub.send_multipart([topic, payload])
                sent[reason.name] = sent.get(reason.name, 0) + 1
        pub.send_multipart([wire.topic(3)])                # one frame
        pub.send_multipart([wire.topic(3), valid_message()[1], b"x"])
        sent["BAD_FRAMES"] = 2
        pub.send_multipart(list(wire.encode_heartbeat(3, 3, epoch=9)))   # in sequence: fine
        deadline = time.monotonic() + 10
        while h.counters()["messages"] < 1 + sum(sent.values()) + 1 and time.monotonic() < deadline:
            h.poll(0.05)
        c = h.counters()
        assert c["drops"] == sent
        assert c["messages"] == 2 + sum(sent.values())
        assert c["events"] == 2 and c["gaps"] == 0
        assert books[0].order_count == 1 and books[1].order_count == 1 and books[0].in_sync
        assert books.rejects == {}
    finally:
        h.close()
        pub.close(0)
        ctx.term()


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=200)), min_size=1, max_size=8))
def test_garbage_over_a_socket_never_reaches_the_books(garbage, tmp_path_factory):
    """Random frames on a PULL socket (no SUB filter): every message is counted as received
    and dropped under a reason; no event reaches the books."""
    tmp = tmp_path_factory.mktemp("garbage")
    got = []
    ctx = zmq.Context()
    ep = f"ipc://{tmp}/g"
    push = ctx.socket(zmq.PUSH)
    h = FeedHandler(ep, {3: [0]}, got.append, socket_type="PULL", bind=True, context=ctx, max_events=4,
                    silence_timeout=0)
    try:
        push.connect(ep)
        h.poll(0)                                          # the start-up STALE marker
        got.clear()
        for topic, payload in garbage:
            push.send_multipart([topic, payload])
        deadline = time.monotonic() + 5
        while h.counters()["messages"] < len(garbage) and time.monotonic() < deadline:
            h.poll(0.05)
        c = h.counters()
        assert c["messages"] == len(garbage)
        dropped = sum(c["drops"].values())
        # garbage that happens to be a valid message of channel 3 would start a recovery
        # (there is no snapshot service: unrecovered); anything else is dropped
        assert dropped + c["slow_path"] == len(garbage)
        for batch in got:
            assert batch.dtype == EVENT_DTYPE
    finally:
        h.close()
        push.close(0)
        ctx.term()
