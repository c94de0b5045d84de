"""The wire format: the pure-Python reference (feeds/wire.py) and the compiled codec agree
byte for byte, the documented worked example holds, and the minimal Publisher works."""

import numpy as np
import pytest
import zmq
from hypothesis import given, settings, strategies as st

from tickwire.ext import EVENT_DTYPE, Flag, Kind, Side, codec, empty_events
from tickwire.feeds import wire
from tickwire.feeds.wire import Drop, Header, MsgType, WireError, WireFlag

# docs/wire-format.md, "A worked example": the same bytes
WORKED_TOPIC = b"tw.00003."
WORKED_PAYLOAD = bytes.fromhex(
    "54574952 01 01 0000 0300 4000 01000000"
    "e903000000000000 15cd853dfe9c9717 00002a36fe9c9717 00000000 00000000"
    "f4012a36fe9c9717 0000000000000000 e903000000000000 2a00000000000000"
    "40420f0000000000 0500000000000000 07000000 0300 01 00 01000000 00000000".replace(" ", ""))


def worked_event():
    ev = empty_events(1)
    ev[0] = (1_700_000_000_000_000_500, 0, 1001, 42, 1_000_000, 5, 7, 3, Kind.ADD, Side.BID, Flag.LAST, 0)
    return ev


def test_constants_match_the_compiled_codec():
    assert (codec.MAGIC.to_bytes(4, "little"), codec.VERSION, codec.HEADER_SIZE, codec.EVENT_SIZE,
            codec.TOPIC_SIZE) == (wire.MAGIC, wire.VERSION, wire.HEADER_SIZE, wire.EVENT_SIZE, wire.TOPIC_SIZE)
    assert codec.DROP_CODES == {d.name: d.value for d in Drop}
    assert codec.DROP_COUNT == len(Drop)
    assert codec.MSG_TYPES == {m.name: m.value for m in MsgType}
    assert codec.WIRE_FLAGS == {f.name: f.value for f in WireFlag}
    assert (codec.TYPES_DATA, codec.TYPES_REQUEST, codec.TYPES_REPLY, codec.TYPES_ANY) == (
        wire.TYPES_DATA, wire.TYPES_REQUEST, wire.TYPES_REPLY, wire.TYPES_ANY)
    assert wire.HEADER.size == 48 and EVENT_DTYPE.itemsize == 64


def test_worked_example_bytes():
    ev = worked_event()
    topic, payload = wire.encode_data(3, 1001, ev, epoch=1_700_000_000_000_000_000,
                                      send_time=1_700_000_000_123_456_789)
    assert topic == WORKED_TOPIC
    assert payload == WORKED_PAYLOAD
    assert codec.encode(MsgType.DATA, 3, 1001, ev, epoch=1_700_000_000_000_000_000,
                        send_time=1_700_000_000_123_456_789) == WORKED_PAYLOAD
    h, got = wire.decode(topic, payload, ts_recv=99)
    assert h == Header(MsgType.DATA, 0, 3, 1, 1001, 1_700_000_000_123_456_789, 1_700_000_000_000_000_000)
    assert got["ts_recv"][0] == 99 and got["order_id"][0] == 42 and got["price"][0] == 1_000_000


def test_topics():
    assert wire.topic(0) == b"tw.00000." and wire.topic(65535) == b"tw.65535."
    assert codec.topic(42) == wire.topic(42) == b"tw.00042."
    assert wire.topic_channel(b"tw.00042.") == 42
    for bad in (b"tw.0042.", b"tw.00042", b"tx.00042.", b"tw.0004a.", b"tw.65536.", b"", b"tw.00042.."):
        assert wire.topic_channel(bad) is None
    with pytest.raises(ValueError):
        wire.topic(65536)
    # fixed width: no channel's topic is a prefix of another's, so SUB filters are exact
    assert not wire.topic(1).startswith(wire.topic(10)[:len(wire.topic(1))]) or wire.topic(1) == wire.topic(10)


# events as arbitrary 64-byte records with a valid kind and side (the codec copies the rest as is)
events_st = st.integers(0, 40).flatmap(lambda n: st.binary(min_size=64 * n, max_size=64 * n))


def to_events(raw):
    ev = np.frombuffer(raw, dtype=EVENT_DTYPE).copy()
    ev["kind"] = ev["kind"] % 6 + 1
    ev["side"] = ev["side"] % 3
    return ev


@settings(max_examples=100, deadline=None)
@given(rows=events_st, channel=st.integers(0, 65535), seq=st.integers(0, 2**64 - 2**20),
       epoch=st.integers(0, 2**64 - 1), send_time=st.integers(-2**63, 2**63 - 1),
       ts_recv=st.integers(-2**63, 2**63 - 1))
def test_data_round_trip_reference_and_compiled(rows, channel, seq, epoch, send_time, ts_recv):
    ev = to_events(rows)
    ref = wire.encode(MsgType.DATA, channel, seq, ev, epoch=epoch, send_time=send_time)
    fast = codec.encode(MsgType.DATA, channel, seq, ev, epoch=epoch, send_time=send_time)
    assert ref == fast
    h_ref, ev_ref = wire.decode(wire.topic(channel), ref, ts_recv=ts_recv)
    reason, h_fast, ev_fast = codec.Decoder().decode(codec.topic(channel), fast, ts_recv)
    assert reason == Drop.OK
    assert h_fast == h_ref == Header(MsgType.DATA, 0, channel, len(ev), seq, send_time, epoch)
    assert ev_fast.tobytes() == ev_ref.tobytes()
    # the receiver stamps exactly three fields; everything else is the publisher's bytes
    expect = ev.copy()
    expect["ts_recv"] = ts_recv
    expect["channel"] = channel
    expect["seq"] = (seq + np.arange(len(ev), dtype=np.uint64)).astype(np.uint64)
    assert ev_fast.tobytes() == expect.tobytes()


@settings(max_examples=60, deadline=None)
@given(rows=events_st, covered=st.integers(0, 2**64 - 1), request_id=st.integers(0, 2**32 - 1),
       part=st.integers(0, 2**32 - 1), final=st.booleans(), unavailable=st.booleans())
def test_snapshot_part_round_trip(rows, covered, request_id, part, final, unavailable):
    ev = to_events(rows)
    payload = wire.encode_snapshot_part(9, covered, ev, epoch=5, request_id=request_id, part=part,
                                        final=final, unavailable=unavailable, send_time=1)
    flags = (WireFlag.FINAL if final else 0) | (WireFlag.UNAVAILABLE if unavailable else 0)
    assert payload == codec.encode(MsgType.SNAPSHOT, 9, covered, ev, epoch=5, send_time=1, flags=int(flags),
                                   request_id=request_id, part=part)
    reason, h, got = codec.Decoder(types=codec.TYPES_REPLY).decode(None, payload)
    assert reason == Drop.OK and h == wire.decode(None, payload, types=wire.TYPES_REPLY)[0]
    assert (h.request_id, h.part, h.flags, h.seq) == (request_id, part, int(flags), covered)
    assert (got["seq"] == covered).all()                  # snapshot events all carry the covered seq
    # a snapshot reply is not data: a data socket refuses it
    assert codec.Decoder().decode(wire.topic(9), payload)[0] == Drop.BAD_HEADER


def test_heartbeat_and_request():
    topic, hb = wire.encode_heartbeat(7, 123, epoch=9, send_time=5)
    assert codec.Decoder().decode(topic, hb)[1] == Header(MsgType.HEARTBEAT, 0, 7, 0, 123, 5, 9)
    req = wire.encode_snapshot_request(7, 77, epoch=9)
    reason, h, ev = codec.Decoder(types=codec.TYPES_REQUEST).decode(None, req)
    assert reason == Drop.OK and (h.type, h.channel, h.request_id, h.epoch, len(ev)) == (
        MsgType.SNAPSHOT_REQUEST, 7, 77, 9, 0)
    # a request is refused where data is expected, and data where requests are
    assert codec.Decoder().decode(b"tw.00007.", req)[0] == Drop.BAD_HEADER
    assert codec.Decoder(types=codec.TYPES_REQUEST).decode(None, hb)[0] == Drop.BAD_HEADER


def test_reference_errors_carry_the_reason():
    with pytest.raises(WireError) as err:
        wire.decode(b"tw.00001.", b"TWIR")
    assert err.value.reason == Drop.TRUNCATED
    with pytest.raises(WireError) as err:
        wire.decode_frames([b"only one frame"])
    assert err.value.reason == Drop.BAD_FRAMES
    with pytest.raises(TypeError):
        wire.encode(MsgType.DATA, 1, 1, np.zeros(3, np.int64), epoch=1)


def test_encode_refuses_other_dtypes():
    with pytest.raises(TypeError):
        codec.encode(MsgType.DATA, 1, 1, np.zeros(3, np.int64))


def test_publisher_sequences_and_framing(tmp_path):
    ctx = zmq.Context()
    try:
        push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        ep = f"ipc://{tmp_path}/pub"
        pull.bind(ep)
        push.connect(ep)
        pub = wire.Publisher(push, epoch=77)
        a, b = empty_events(3), empty_events(2)
        a["kind"] = b["kind"] = Kind.TRADE
        assert pub.send(4, a) == 1
        assert pub.send(4, b) == 4
        assert pub.send(5, b) == 1
        pub.heartbeat(4)
        got = [wire.decode_frames(pull.recv_multipart()) for _ in range(4)]
        assert [(h.type, h.channel, h.seq, h.count, h.epoch) for h, _ in got] == [
            (MsgType.DATA, 4, 1, 3, 77), (MsgType.DATA, 4, 4, 2, 77), (MsgType.DATA, 5, 1, 2, 77),
            (MsgType.HEARTBEAT, 4, 6, 0, 77)]
        assert list(got[1][1]["seq"]) == [4, 5] and list(b["seq"]) == [1, 2]  # set in place too
        push.close(0)
        pull.close(0)
    finally:
        ctx.term()


def test_new_epoch_grows():
    e = wire.new_epoch()
    assert wire.new_epoch(e + 10**12) == e + 10**12 + 1
