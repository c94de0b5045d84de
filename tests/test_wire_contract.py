"""docs/wire-format.md as a contract: its limits are the code's (one figure everywhere), its hex
examples are the encoders' bytes, and what it says happens does: an over-limit message is
counted and its events asked for again, a split exchange message arrives whole with LAST on its
final event only, and the join sequence decides which events are stored."""

import inspect
import re
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from tickwire.engine.instruments import Instrument, make_books
from tickwire.ext import codec
from tickwire.ext.records import EVENT_DTYPE, Flag, Kind, Side
from tickwire.feeds import wire
from tickwire.feeds.handler import FeedHandler

import wire_examples

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "wire-format.md").read_text()


def test_the_limit_is_one_figure_everywhere():
    from tickwire.engine.config import FeedConfig, from_dict
    from tickwire.engine.demo import demo_raw_config
    from tickwire.replay.publish import Republisher

    n = wire.MAX_MESSAGE_EVENTS
    assert codec.DEFAULT_MAX_EVENTS == wire.DEFAULT_MAX_EVENTS == n
    assert FeedConfig().max_message_events == n and FeedConfig().batch_events >= n
    parsed = from_dict(demo_raw_config(Path("/tmp/tw-contract"))).feeds     # a config that does not set it
    assert parsed.max_message_events == n and parsed.batch_events == FeedConfig().batch_events
    assert inspect.signature(FeedHandler).parameters["max_events"].default == n
    assert inspect.signature(Republisher).parameters["max_message_events"].default == n
    assert inspect.signature(wire.RecoveryService).parameters["part_events"].default == n
    # real exchange messages fit whole: a Binance diff (1,226 levels) and a REST snapshot (2,001)
    assert n >= 2001 + 2
    assert wire.MAX_FRAME_BYTES == wire.HEADER_SIZE + wire.MAX_REPLY_EVENTS * wire.EVENT_SIZE


def test_the_docs_state_the_code_figures():
    limits = DOC[DOC.index("## Limits"):DOC.index("## Splitting")]
    for value in (wire.MAX_MESSAGE_EVENTS, wire.HEADER_SIZE + wire.MAX_MESSAGE_EVENTS * wire.EVENT_SIZE,
                  wire.MAX_REPLY_EVENTS, wire.MAX_FRAME_BYTES):
        assert f"{value:,}" in limits, value
    figures = {int(x.replace(",", "")) for x in re.findall(r"\b\d{1,3}(?:,\d{3})+\b", limits)}
    assert figures <= {wire.MAX_MESSAGE_EVENTS, wire.HEADER_SIZE + wire.MAX_MESSAGE_EVENTS * wire.EVENT_SIZE,
                       wire.MAX_REPLY_EVENTS, wire.MAX_FRAME_BYTES, 1226, 2001, 1000}, figures
    assert "8,192" not in DOC and "8192" not in DOC
    assert f"(default `MAX_MESSAGE_EVENTS`, {wire.MAX_MESSAGE_EVENTS:,} events" in DOC
    config = (ROOT / "docs" / "config.md").read_text()
    assert f"| `max_message_events` | `{wire.MAX_MESSAGE_EVENTS}` |" in config
    assert f"| `batch_events` | `{2 * wire.MAX_MESSAGE_EVENTS}` |" in config
    feeds = (ROOT / "docs" / "feeds.md").read_text()
    assert f"max_events={wire.MAX_MESSAGE_EVENTS}" in feeds


def test_the_docs_hex_examples_are_the_encoders_bytes():
    assert wire_examples.doc_section(DOC) == wire_examples.render(), \
        "docs/wire-format.md's examples differ from the encoders: python tests/wire_examples.py --write"
    section = wire_examples.doc_section(DOC)
    # every message type has an example, and each decodes as the reference decoder reads it
    for t in wire.MsgType:
        assert f"type={t.name}" in section
    for title, _, topic, payload in wire_examples.examples():
        h, ev = wire.decode(topic, payload, types=wire.TYPES_ANY, max_events=wire.MAX_MESSAGE_EVENTS)
        hexed = " ".join(f"{b:02x}" for b in payload[:16])
        assert hexed in section, title
    # the first is the long-standing worked example of tests/test_wire.py
    from test_wire import WORKED_PAYLOAD

    assert wire_examples.examples()[0][3] == WORKED_PAYLOAD


# ---------------------------------------------------------------------------------------
# behaviour the doc describes, over real sockets
# ---------------------------------------------------------------------------------------

INSTS = [Instrument(i, f"I{i}", tick_size="1", lot_size="1", book="L2") for i in range(2)]


class Pair:
    """A wire.Publisher (XPUB + recovery service, snapshots from its own books) and a FeedHandler."""

    def __init__(self, tmp_path, max_events=wire.MAX_MESSAGE_EVENTS, handler=True):
        self.ctx = zmq.Context()
        self.data, self.snap = f"ipc://{tmp_path}/d", f"ipc://{tmp_path}/s"
        self.xpub = self.ctx.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.xpub.bind(self.data)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.bind(self.snap)
        self.books = make_books(INSTS)
        self.snapshots_served = 0
        self.pub = wire.Publisher(self.xpub, service=self.router, snapshot=self.snapshot_of)
        self.stored, self.delivered = [], []
        self.mine = make_books(INSTS)
        self.max_events = max_events
        self.h = None
        if handler:
            self.join()

    def join(self):
        self.h = FeedHandler(self.data, {0: [0, 1]}, self.on_batch, on_store=lambda e: self.stored.append(e.copy()),
                             snapshot=self.snap, context=self.ctx, max_events=self.max_events,
                             batch_events=max(2 * self.max_events, 1 << 16), silence_timeout=0)
        assert wire.await_subscribers(self.xpub, [0], 1, 10)

    def on_batch(self, ev):
        self.delivered.append(ev.copy())
        self.mine.apply(ev)

    def snapshot_of(self, channel):
        self.snapshots_served += 1
        covered = self.pub.next_seq(channel) - 1
        return self.pub.epoch, covered, np.concatenate([self.books[i].snapshot_events(seq=covered, ts=1)
                                                        for i in (0, 1)])

    def send(self, ev):
        self.books.apply(ev)
        return self.pub.send(0, ev)

    def pump(self, seconds, heartbeat=True):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if heartbeat:
                self.pub.heartbeat(0)
            self.pub.serve()
            if self.h is not None:
                self.h.poll(0.005)

    def stored_seqs(self):
        ev = np.concatenate(self.stored) if self.stored else np.zeros(0, EVENT_DTYPE)
        return ev["seq"].tolist()

    def same_books(self):
        return all(np.array_equal(self.books[i].snapshot_events(), self.mine[i].snapshot_events()) for i in (0, 1))

    def close(self):
        if self.h is not None:
            self.h.close()
        self.ctx.destroy(0)


def levels(n, seed, last=True):
    """An L2 exchange message of ``n`` level updates (LAST on its final event only)."""
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["instrument"] = rng.integers(0, 2, n)
    ev["kind"] = Kind.ADD
    ev["side"] = rng.integers(0, 2, n)
    ev["price"] = np.where(ev["side"] == Side.BID, 100_000 - rng.integers(0, 5000, n), 100_001 + rng.integers(0, 5000, n))
    ev["qty"] = rng.integers(0, 100, n)
    ev["ts_event"] = time.time_ns()
    if last:
        ev["flags"][-1] = Flag.LAST
    return ev


@pytest.fixture
def pair(tmp_path):
    made = []

    def make(**kw):
        made.append(Pair(tmp_path, **kw))
        return made[-1]

    yield make
    for p in made:
        p.close()


def test_an_over_limit_message_is_counted_then_retransmitted_and_nothing_is_lost(pair):
    p = pair(max_events=100)
    p.pump(0.3)
    p.send(levels(10, 1))
    p.send(levels(150, 2))            # over the receiver's limit of 100 (and under MAX_FRAME_BYTES)
    for k in range(3):
        p.send(levels(10, 3 + k))
    p.pump(1.0)
    c = p.h.counters()
    assert c["drops"].get("OVERSIZED") == 1 and c["retransmitted"] == 150, c
    assert p.stored_seqs() == list(range(1, 191)) and c.get("lost_events", 0) == 0
    assert p.same_books()


def test_a_large_exchange_message_split_per_the_doc_arrives_whole_with_last_on_its_final_event(pair):
    p = pair()
    p.pump(0.3)
    n = wire.MAX_MESSAGE_EVENTS
    big = levels(2 * n + 777, 7)                       # one exchange message, too large for one wire message
    pieces = [big[k:k + n].copy() for k in range(0, len(big), n)]
    assert len(pieces) == 3 and all(len(x) <= n for x in pieces)
    for piece in pieces:
        p.send(piece)
    small = levels(5, 8)
    p.send(small)
    p.pump(1.0)
    c = p.h.counters()
    assert not c["drops"], c
    got = np.concatenate(p.stored)
    assert len(got) == len(big) + 5 and got["seq"].tolist() == list(range(1, len(big) + 6))
    last = (got["flags"] & Flag.LAST) != 0
    assert np.flatnonzero(last).tolist() == [len(big) - 1, len(big) + 4]     # LAST on the final event only
    cols = ["instrument", "kind", "side", "price", "qty", "flags"]
    assert all(np.array_equal(got[x][:len(big)], big[x]) for x in cols)
    assert p.same_books()


def test_events_published_before_the_join_snapshot_are_in_the_books_but_never_stored(pair):
    p = pair(handler=False)
    for k in range(10):
        p.send(levels(100, 20 + k))                    # 1,000 events before any receiver
    p.join()
    p.pump(0.5)
    p.send(levels(50, 40))
    p.pump(0.5)
    assert p.stored_seqs() == list(range(1001, 1051))  # the 1,000 are in the join snapshot only
    assert p.same_books()


def test_the_documented_join_sequence_stores_every_event(pair):
    p = pair(handler=False)
    p.join()                                           # 1. the subscription arrived (XPUB)
    while p.snapshots_served < 1:                      # 2. heartbeats until the join snapshot was served
        p.pump(0.01)
    for k in range(10):                                # 3. publish
        p.send(levels(100, 20 + k))
    p.pump(0.5)
    assert p.stored_seqs() == list(range(1, 1001))
    assert p.same_books()


def test_a_frame_above_max_frame_bytes_makes_libzmq_close_the_connection_for_good(pair, monkeypatch):
    """Why ZMQ_MAXMSGSIZE is MAX_FRAME_BYTES and not the per-message limit: libzmq drops a
    connection that sends a larger frame and never reconnects it (shown with a small bound)."""
    monkeypatch.setattr(wire, "MAX_FRAME_BYTES", wire.HEADER_SIZE + 100 * wire.EVENT_SIZE)
    p = pair(max_events=100)
    p.pump(0.3)
    p.send(levels(10, 1))
    p.pump(0.3)
    heard = p.h.counters()["messages"]
    p.send(levels(150, 2))                             # a frame over the socket's ZMQ_MAXMSGSIZE
    p.pump(1.5)                                        # heartbeats every poll, far past libzmq's reconnect interval
    c = p.h.counters()
    assert c["messages"] == heard and not c["drops"], c   # deaf: nothing more heard, not even counted
    assert p.stored_seqs() == list(range(1, 11))


def test_the_docs_python_publisher_runs_as_written():
    import socket
    import subprocess
    import sys

    rest = DOC[DOC.index("## Publishing from Python"):]
    code = re.search(r"```python\n(.*?)```", rest, re.S).group(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert "tcp://127.0.0.1:5555" in code
    out = subprocess.run([sys.executable, "-c", code.replace("tcp://127.0.0.1:5555", f"tcp://127.0.0.1:{port}")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
