"""The conformance kit (`tickwire check-publisher`, tickwire.feeds.conformance): the reference
publishers pass, and a publisher that breaks one rule is reported under that rule (exit 1)."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from tickwire.engine.instruments import Instrument, make_books
from tickwire.ext import empty_events
from tickwire.ext.records import EVENT_DTYPE, Flag, Kind, Side
from tickwire.feeds import conformance, wire
from tickwire.feeds.wire import MsgType

PY = sys.executable
INSTS = [Instrument(i, f"I{i}", tick_size="1", lot_size="1", book="L2") for i in range(4)]
CHANNELS = 2


class Publisher(threading.Thread):
    """A small L2 publisher on a PUB and a ROUTER, built on tickwire.feeds.wire, that breaks
    the rule named ``breaks`` (None: none)."""

    def __init__(self, tmp_path, breaks=None, rate=2000):
        super().__init__(daemon=True)
        self.breaks = breaks
        self.data, self.snap = f"ipc://{tmp_path}/d", f"ipc://{tmp_path}/s"
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.bind(self.data)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.bind(self.snap)
        self.books = make_books(INSTS)
        self.epoch = wire.new_epoch()
        self.retainer = wire.Retainer(1 << 16, self.epoch)
        self.next = {c: 1 for c in range(CHANNELS)}
        self.rate = rate
        self.stop = threading.Event()
        self.snapshots = 0
        self.rng = np.random.default_rng(3)
        self.sent = 0

    def events(self, c, n):
        ev = np.zeros(n, EVENT_DTYPE)
        ev["instrument"] = self.rng.choice([i for i in range(len(INSTS)) if i % CHANNELS == c], n)
        ev["kind"] = Kind.ADD
        ev["side"] = self.rng.integers(0, 2, n)
        ev["price"] = np.where(ev["side"] == Side.BID, 1000 - self.rng.integers(0, 20, n),
                               1001 + self.rng.integers(0, 20, n))
        ev["qty"] = self.rng.integers(0, 5, n)
        ev["ts_event"] = time.time_ns()
        ev["flags"] = Flag.LAST
        if self.breaks == "last":
            ev["flags"] = 0
        if self.breaks == "event" and self.sent % 50 == 3:
            ev["kind"][0] = 9
        if self.breaks == "ts-event":
            ev["ts_event"] = 5
        return ev

    def send(self, c, n):
        if self.breaks == "end" and self.sent % 50 == 10:       # says the epoch ended, then goes on
            self.pub.send_multipart(wire.encode_heartbeat(c, self.next[c], epoch=self.epoch, end=True))
        seq = self.next[c]
        if self.breaks == "sequence" and self.sent % 50 == 5:
            seq += 3
        if self.breaks == "size-limit" and self.sent % 50 == 5:
            n = wire.MAX_MESSAGE_EVENTS + 1
        ev = self.events(c, n)
        ev["seq"] = np.arange(seq, seq + n, dtype=np.uint64)
        ev["channel"] = c
        self.books.apply(ev)
        self.retainer.keep(c, seq, ev.copy())
        self.next[c] = seq + n
        topic, payload = wire.encode_data(c, seq, ev, epoch=self.epoch,
                                          send_time=0 if self.breaks == "send-time" else None)
        payload = bytearray(payload)
        if self.breaks == "magic" and self.sent % 4 == 1:
            payload[:4] = b"TWIX"
        if self.breaks == "version" and self.sent % 4 == 1:
            payload[4] = 2
        if self.breaks == "topic" and self.sent % 4 == 1:
            topic = wire.topic(c + 7)
        if self.breaks == "header" and self.sent % 4 == 1:
            payload[6] = 1                                  # FINAL on a data message
        if self.breaks == "header-wrap" and self.sent % 4 == 1:
            payload[16:24] = ((1 << 64) - 1).to_bytes(8, "little")      # seq + count past 2^64 - 1
        if self.breaks == "length" and self.sent % 4 == 1:
            payload += b"\0" * 8
        if self.breaks == "epoch" and self.sent % 40 == 39:
            self.epoch -= 1                                 # a "restart" to a smaller epoch
            self.next = {k: 1 for k in self.next}
        frames = [topic, bytes(payload)] + ([b""] if self.breaks == "frames" and self.sent % 4 == 1 else [])
        self.pub.send_multipart(frames)
        self.sent += 1

    def snapshot_of(self, c):
        covered = self.next[c] - 1 + (100_000 if self.breaks == "snapshot-future" else 0)
        ev = np.concatenate([self.books[i].snapshot_events(seq=covered, ts=time.time_ns())
                             for i in range(len(INSTS)) if i % CHANNELS == c])
        self.snapshots += 1
        if self.breaks == "snapshot-events":
            ev[-1]["flags"] &= ~np.uint32(Flag.LAST)
        if self.breaks == "snapshot-consistency" and self.snapshots > CHANNELS:
            ev["qty"][ev["kind"] == Kind.ADD] += 1          # later snapshots drift from what was published
        return self.epoch, covered, ev

    def serve(self):
        while self.router.poll(0):
            identity, payload = self.router.recv_multipart()
            h, _ = wire.decode(None, payload, max_events=0, types=wire.TYPES_REQUEST)
            if h.type == MsgType.SNAPSHOT_REQUEST:
                self.requests = getattr(self, "requests", 0) + 1
                ready = self.breaks not in ("never-ready", "ready-later") or (
                    self.breaks == "ready-later" and self.requests > 1)
                found = self.snapshot_of(h.channel) if h.channel < CHANNELS and ready else None
                if found is None:
                    self.router.send_multipart([identity, wire.encode_snapshot_part(
                        h.channel, 0, None, epoch=0, request_id=h.request_id, part=0, final=True,
                        unavailable=self.breaks != "snapshot-unavailable")])
                    continue
                epoch, covered, ev = found
                halves = [ev[:len(ev) // 2], ev[len(ev) // 2:]]
                for k, part in enumerate(halves):
                    self.router.send_multipart([identity, wire.encode_snapshot_part(
                        h.channel, covered, part, epoch=epoch, request_id=h.request_id,
                        part=k + (self.breaks == "snapshot-reply"), final=k == 1)])
                continue
            first, ev = self.retainer.range(h.channel, h.seq, h.count)
            if h.epoch != self.epoch:
                self.router.send_multipart([identity, wire.encode_retransmit_part(
                    h.channel, self.next[h.channel], None, epoch=self.epoch, request_id=h.request_id, part=0,
                    final=True, unavailable=True)])
                continue
            if ev is not None:
                ev = ev.copy()
                if self.breaks == "retransmit":
                    ev["qty"] += 1
                self.router.send_multipart([identity, wire.encode_retransmit_part(
                    h.channel, first, ev, epoch=self.epoch, request_id=h.request_id, part=0)])
            self.router.send_multipart([identity, wire.encode_retransmit_part(
                h.channel, self.next[h.channel], None, epoch=self.epoch, request_id=h.request_id,
                part=int(ev is not None), final=True)])

    def run(self):
        last_beat = 0.0
        k = 0
        while not self.stop.is_set():
            now = time.monotonic()
            if self.breaks != "heartbeat" or self.sent < 20:
                self.send(k % CHANNELS, 3)
                k += 1
            if self.breaks != "heartbeat" and now - last_beat > 0.2:
                for c in range(CHANNELS):
                    self.pub.send_multipart(wire.encode_heartbeat(c, self.next[c], epoch=self.epoch))
                last_beat = now
            self.serve()
            time.sleep(3 / self.rate)

    def close(self):
        self.stop.set()
        self.join(5)
        self.pub.close(0)
        self.router.close(0)
        self.ctx.term()


@pytest.fixture
def publisher(tmp_path):
    made = []

    def make(breaks=None):
        p = Publisher(tmp_path, breaks)
        p.start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_a_conformant_publisher_passes(publisher):
    p = publisher()
    report = conformance.check(p.data, p.snap, duration=1.5)
    assert report.ok and not report.findings, report.text()
    assert report.snapshots >= 2 * CHANNELS and report.retransmissions == CHANNELS and report.events > 0


def test_a_long_check_holds_a_bounded_number_of_events_and_still_checks_retransmission(publisher, monkeypatch):
    """Every data message used to be held for the whole --duration (memory growing ~70 bytes an
    event without end); past MAX_HELD_EVENTS the oldest are let go, the retransmission check
    (the last events) still runs, and the note says why consistency was not checked."""
    monkeypatch.setattr(conformance, "MAX_HELD_EVENTS", 200)
    held = []
    keep = conformance._Channel.keep

    def watched(self, seq, ev):
        keep(self, seq, ev)
        held.append(self.held)
    monkeypatch.setattr(conformance._Channel, "keep", watched)
    p = publisher()
    report = conformance.check(p.data, p.snap, duration=1.5)
    assert report.ok and not report.findings, report.text()
    assert report.events > 4 * 200 and max(held) <= 200 + 3, (report.events, max(held))
    assert report.retransmissions == CHANNELS
    assert any("more than 200 events between the two snapshots" in n for n in report.notes), report.notes


BROKEN = ["frames", "magic", "version", "topic", "header", "length", "epoch", "sequence", "size-limit", "event", "ts-event", "send-time", "heartbeat",
          "last", "end", "snapshot-reply", "snapshot-events", "snapshot-unavailable", "snapshot-consistency", "retransmit"]


@pytest.mark.parametrize("rule", BROKEN)
def test_each_broken_rule_is_named(publisher, rule):
    p = publisher(rule)
    report = conformance.check(p.data, p.snap, duration=1.5)
    assert not report.ok and rule in report.findings, report.text()
    f = report.findings[rule]
    assert f.count >= 1 and f.example and f.line().startswith(f"FAIL {rule}: ")
    # one broken rule is not reported as another (a dropped message may leave a sequence gap; a
    # service behind a publisher that went back to an older epoch cannot serve the newer one)
    also = {"size-limit": {"snapshot-consistency"},
            "epoch": {"snapshot-reply", "snapshot-consistency", "retransmit"}}.get(rule, set())
    assert set(report.findings) - {"sequence"} <= {rule} | also, report.text()


def test_sequence_numbers_past_2_64_are_a_header_finding(publisher):
    """The receivers drop such a message as BAD_HEADER (its next sequence number is no number);
    docs/wire-format.md says check-publisher's header rule is the same (a review: it was not)."""
    p = publisher("header-wrap")
    report = conformance.check(p.data, p.snap, duration=1.5)
    assert "header" in report.findings and "count" in report.findings["header"].example, report.text()


def test_a_wrong_topic_is_named_when_the_channels_are_given(publisher):
    """A wire-contract pass: with --channels (as the docs advise) the checker subscribed to those
    channels' topics only, so a message of a checked channel under another channel's topic was never
    received: a sequence gap, nothing said of the topic. Every topic is taken now, other channels'
    messages skipped."""
    p = publisher("topic")                                # (channel 1's messages go under topic 8)
    report = conformance.check(p.data, p.snap, duration=1.5, channels=[1])
    assert "topic" in report.findings, report.text()
    assert "on a message of channel 1" in report.findings["topic"].example, report.text()
    good = publisher()
    report = conformance.check(good.data, good.snap, duration=1.5, channels=[1])   # channel 0's skipped
    assert report.ok and not report.findings, report.text()


def test_a_snapshot_claiming_a_sequence_number_not_yet_published_is_named(publisher):
    """Found by an adversarial pass: snapshots covering seq head + 100,000 passed as conformant
    (the rule says the seq is within the data stream)."""
    p = publisher("snapshot-future")
    report = conformance.check(p.data, p.snap, duration=1.5)
    assert not report.ok and "snapshot-reply" in report.findings, report.text()
    assert "past the last the data stream published" in report.findings["snapshot-reply"].example

def test_cli_exit_status_and_lines(publisher, tmp_path):
    p = publisher("sequence")
    out = subprocess.run([PY, "-m", "tickwire", "check-publisher", p.data, "--snapshot", p.snap, "--duration", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out
    assert out.stdout.splitlines()[0].startswith("FAIL sequence: ") and "NOT conformant" in out.stdout
    # bad usage: one line, exit 2
    for argv, says in [(["tcp://127.0.0.1:1", "--duration", "1"], "cannot connect"),
                       ([f"ipc://{tmp_path}/nothing"], "nothing listens there"),
                       (["localhost:5555"], "is not a ZeroMQ endpoint"),
                       ([p.data, "--duration", "0"], "--duration"),
                       ([p.data, "--max-events", "-1"], "--max-events: expected an integer from 1 to 1,048,576"),
                       ([p.data, "--max-events", "0"], "--max-events")]:
        out = subprocess.run([PY, "-m", "tickwire", "check-publisher", *argv], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out


def test_the_size_limit_said_is_the_one_checked(publisher):
    """Found by an adversarial pass: `--max-events 1000` was checked but the rule's text said
    "at most 4,096 events"; `--max-events -1` (not refused) failed every data message, the
    publisher blamed."""
    p = publisher()                                       # 3 events a message
    report = conformance.check(p.data, p.snap, duration=1.0, max_events=2)
    assert "size-limit" in report.findings, report.text()
    assert "FAIL size-limit: at most 2 events in one message" in report.text(), report.text()
    for bad in (0, -1, True, 1 << 21):
        with pytest.raises(conformance.ConformanceError, match="max_events: expected an integer from 1"):
            conformance.check(p.data, p.snap, duration=1.0, max_events=bad)


def test_the_simulator_is_conformant(tmp_path):
    data, snap = f"ipc://{tmp_path}/sd", f"ipc://{tmp_path}/ss"
    sim = subprocess.Popen([PY, "-m", "tickwire", "simulate", "--endpoint", data, "--snapshot", snap, "--rate",
                            "3000", "--duration", "20", "--instruments", "4", "--channels", "2", "--quiet",
                            "--cpu", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        from test_daemon import wait_for

        assert wait_for(lambda: (tmp_path / "ss").exists() and (tmp_path / "sd").exists(), 30)
        out = subprocess.run([PY, "-m", "tickwire", "check-publisher", data, "--snapshot", snap, "--duration", "2"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "conformant" in out.stdout and "4 snapshot(s), 2 retransmission(s)" in out.stdout
    finally:
        sim.terminate()
        sim.wait(30)


@pytest.mark.parametrize("garbled", [False, True], ids=["as-generated", "garbled-flags"])
def test_the_replay_publisher_is_conformant(tmp_path, garbled):
    """And stays so on events that carry what no publisher may send (an .npy file's may: flag bits
    not the event's own, RESTART, a reserved word), which it clears."""
    from tickwire.feeds.simulator import Market, synthetic_instruments
    from tickwire.replay.publish import Republisher

    insts = synthetic_instruments(4)
    data, snap = f"ipc://{tmp_path}/rd", f"ipc://{tmp_path}/rs"
    pub = Republisher(data, snap, insts, 2)
    events = Market(4, seed=2, resting=50).generate(40_000)
    if garbled:
        events["flags"] |= np.uint32(Flag.STALE | Flag.RESTART | Flag.SNAPSHOT_END | (1 << 20))
        events["reserved"] = np.arange(len(events), dtype=np.uint32)
    events["ts_event"] += time.time_ns() - int(events["ts_event"][0])   # (the market's clock starts in 2023)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=conformance.check(data, snap, duration=2.5)))
    t.start()
    try:
        end = time.monotonic() + 3.5
        k = 0
        while time.monotonic() < end:
            if k < len(events):
                pub.send(events[k:k + 20])
                k += 20
            pub.serve()
            time.sleep(0.002)
        t.join(30)
    finally:
        pub.close()
    report = result["r"]
    assert report.ok, report.text()
    assert report.events > 0 and report.snapshots >= 4 and report.retransmissions == 2


def test_the_replay_publisher_serves_a_book_mid_snapshot_and_leaves_out_one_it_marked_stale(tmp_path):
    """Its snapshot service serves each book as it stands, in the middle of a snapshot sequence too
    (the rest follows in the stream: a review found one left out there, and a receiver's book then
    completed by the sequence's END alone, in sync with half its levels); a book it has sent a
    STALE marker for since is left out until that book's next snapshot sequence begins."""
    from tickwire.feeds.simulator import synthetic_instruments
    from tickwire.replay.publish import Republisher

    insts = synthetic_instruments(2)
    pub = Republisher(f"ipc://{tmp_path}/d", f"ipc://{tmp_path}/s", insts, 1)
    try:
        books = make_books(insts)                        # L3: two resting orders each
        ev = empty_events(4)
        ev["kind"], ev["side"], ev["instrument"] = Kind.ADD, [Side.BID, Side.ASK] * 2, [0, 0, 1, 1]
        ev["price"], ev["qty"], ev["order_id"] = [100, 200, 101, 201], [5, 7, 5, 7], [1, 2, 3, 4]
        books.apply(ev)
        seq0, seq1 = books[0].snapshot_events(seq=1, ts=1), books[1].snapshot_events(seq=1, ts=1)
        served = lambda: sorted(set(pub._snapshot_of(0)[2]["instrument"].tolist()))
        pub.send(seq0[:2])                              # instrument 0: BEGIN and its bid, not its END
        assert served() == [0, 1] and len(pub._snapshot_of(0)[2]) == 3 + 2
        pub.send(seq0[2:])
        stale = empty_events(1)
        stale["kind"], stale["side"], stale["instrument"] = Kind.SNAPSHOT, Side.NONE, 1
        stale["flags"] = Flag.SNAPSHOT | Flag.STALE | Flag.LAST
        pub.send(stale)
        assert served() == [0]
        pub.send(seq1[:2])                              # its next snapshot begun: served as it stands
        assert served() == [0, 1]
        pub.send(seq1[2:])
        assert served() == [0, 1]
    finally:
        pub.close()


def test_a_service_not_ready_is_asked_again_and_one_never_ready_is_reported(publisher):
    p = publisher("ready-later")                 # the first request answered UNAVAILABLE: allowed
    report = conformance.check(p.data, p.snap, duration=1.5)
    assert report.ok and not report.findings, report.text()
    p = publisher("never-ready")
    report = conformance.check(p.data, p.snap, duration=1.5)
    assert set(report.findings) == {"snapshot-reply"} and "UNAVAILABLE 3 times" in report.findings["snapshot-reply"].example


def test_a_curve_publisher_is_checked_with_its_keys_and_refused_without(tmp_path):
    from tickwire.feeds.curve import keygen

    keys = tmp_path / "keys"
    for name in ("server", "client", "stranger"):
        keygen(keys, name)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "client.key").write_text((keys / "client.key").read_text())
    data, snap = f"ipc://{tmp_path}/cd", f"ipc://{tmp_path}/cs"
    sim = subprocess.Popen([PY, "-m", "tickwire", "simulate", "--endpoint", data, "--snapshot", snap, "--rate", "2000",
                            "--duration", "30", "--instruments", "2", "--channels", "1", "--quiet", "--cpu", "0",
                            "--curve-secret-key", str(keys / "server.key_secret"), "--curve-clients", str(allowed)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        from test_daemon import wait_for

        assert wait_for(lambda: (tmp_path / "cs").exists(), 30)
        check = [PY, "-m", "tickwire", "check-publisher", data, "--snapshot", snap, "--duration", "1.5"]
        out = subprocess.run(check + ["--curve-server-key", str(keys / "server.key"),
                                      "--curve-secret-key", str(keys / "client.key_secret")],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "conformant" in out.stdout, out.stdout + out.stderr
        for extra, says in [([], "handshake failed"),
                            (["--curve-server-key", str(keys / "server.key"), "--curve-secret-key",
                              str(keys / "stranger.key_secret")], "handshake failed (CURVE"),
                            (["--curve-server-key", str(keys / "server.key")], "go together")]:
            out = subprocess.run(check + extra, capture_output=True, text=True, timeout=60)
            assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, \
                (extra, out.stdout, out.stderr)
    finally:
        sim.terminate()
        sim.wait(30)
