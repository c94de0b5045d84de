"""A conformance kit for publishers of tickwire's wire format (``tickwire check-publisher``).

Connects to any publisher as a receiver would (a SUB on its data endpoint, a DEALER on its
recovery service), listens for a while, asks for snapshots and retransmissions, and reports
every rule of ``docs/wire-format.md`` the publisher breaks: one :class:`Finding` per rule, with
how many times and one example.  Nothing here trusts the publisher: every message is checked
from its bytes.

    from tickwire.feeds.conformance import check
    report = check("tcp://127.0.0.1:5555", snapshot="tcp://127.0.0.1:5556", duration=5)
    print(report.text()); report.ok

The rules (their names are what the report prints):

- framing: ``frames`` (exactly [topic][payload]), ``topic`` (b"tw.NNNNN." naming the header's
  channel), ``magic``, ``version``, ``header`` (known type and flags, event size 64, no events in
  a heartbeat, ``flags``/``request_id``/``part`` zero on data messages), ``length`` (exactly
  48 + 64 x count bytes), ``size-limit`` (count <= MAX_MESSAGE_EVENTS), ``event`` (kind 1..6,
  side 0..2, marker flags only on markers, no ``RESTART`` or undefined flag bit, reserved 0);
- sequencing: ``sequence`` (per channel and epoch, each message starts where the previous
  ended; a heartbeat's seq is the next sequence number), ``epoch`` (never smaller on a channel;
  a new one starts again at 1), ``event-seq`` (the events' own seq/channel fields as the
  receiver will write them: a should, reported as a warning);
- timing: ``send-time`` (the header's send time within a minute of the local clock),
  ``ts-event`` (market events carry an exchange time after 2000 and not in the future),
  ``heartbeat`` (no channel silent for more than a second; every channel asked for is heard),
  ``last`` (a channel does not fall idle with an exchange message unfinished: its last event
  before a heartbeat carries LAST);
- the recovery service: ``snapshot-reply`` (type, request id echoed, parts 0,1,2.. with FINAL on
  the last only, one seq and epoch for all parts, the current epoch), ``snapshot-events``
  (per instrument BEGIN marker, ADDs flagged SNAPSHOT best first, END marker with LAST; every
  event's seq = the covered seq), ``snapshot-unavailable`` (a channel it does not serve:
  FINAL|UNAVAILABLE, no events), ``snapshot-consistency`` (a first snapshot plus the data after
  it equals a second snapshot), ``retransmit`` (the events as first published, then a FINAL
  part with the head; a wrong epoch answered UNAVAILABLE), ``no-reply`` (a request unanswered).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import zmq

from tickwire.ext.records import EVENT_DTYPE, Flag, Kind
from tickwire.feeds import wire
from tickwire.feeds.wire import HEADER, MsgType, WireFlag

__all__ = ["Finding", "Report", "RULES", "check", "ConformanceError"]

#: rule name -> what it requires (the report's wording)
RULES = {
    "frames": "a data message is exactly two frames [topic][payload]",
    "topic": "the topic is b'tw.' + the header's channel as 5 digits + b'.'",
    "magic": "the payload starts with b'TWIR'",
    "version": "wire version 1",
    "header": "a known type (DATA or HEARTBEAT on the data socket), event_size 64, no events in a heartbeat, "
              "flags (but END on a heartbeat), request_id and part 0 on data messages",
    "end": "nothing more of an epoch on a channel after its END heartbeat",
    "length": "the payload is exactly 48 + 64 x count bytes",
    "size-limit": f"at most {wire.MAX_MESSAGE_EVENTS:,} events in one message (split larger exchange messages)",
    "event": "kind 1..6, side 0..2, no RESTART or undefined flag bits, SNAPSHOT_BEGIN/END/STALE on markers only, reserved 0",
    "sequence": "per channel and epoch, each message starts at the sequence number after the previous one's "
                "last; a heartbeat's seq is the next sequence number",
    "epoch": "a channel's epoch never decreases; a new epoch starts its sequence at 1",
    "event-seq": "(warning) events carry the seq and channel the receiver gives them (header seq + i, the channel)",
    "send-time": "send_time is the (intended) send time in ns since the Unix epoch, within a minute of now",
    "ts-event": "market events carry their exchange time (ts_event after 2000, not in the future)",
    "heartbeat": "every channel heard at least once a second when idle (and every channel asked for heard)",
    "last": "a channel does not fall idle mid-message: the last event before a heartbeat carries LAST",
    "snapshot-reply": "SNAPSHOT parts: request_id echoed, parts 0,1,2.. in order, FINAL on the last only, the same "
                      "seq and epoch on every part, the data stream's epoch, seq within the data stream",
    "snapshot-events": "per instrument: a SNAPSHOT_BEGIN marker, ADDs flagged SNAPSHOT best first (bids, then "
                       "asks), a SNAPSHOT_END|LAST marker; every event's seq is the covered seq",
    "snapshot-unavailable": "a channel the publisher does not serve is answered with one FINAL|UNAVAILABLE part "
                            "without events",
    "snapshot-consistency": "a snapshot plus the data published after it equals a later snapshot",
    "retransmit": "a RETRANSMIT_REQUEST is answered with the events as first published from the asked "
                  "seq, then a FINAL part whose seq is the head; another epoch is answered UNAVAILABLE",
    "no-reply": "the recovery service answers every request within 2 s",
}
WARNINGS = {"event-seq"}
#: Largest per-message limit --max-events takes (feeds.max_message_events' bound).
MAX_EVENTS_LIMIT = 1 << 20

_YEAR_2000 = 946_684_800 * 10 ** 9
_REPLY_TIMEOUT = 2.0


class ConformanceError(Exception):
    """Bad usage: an endpoint that is not one, or a publisher that cannot be reached."""


@dataclasses.dataclass
class Finding:
    rule: str
    count: int = 0
    example: str = ""

    @property
    def warning(self) -> bool:
        return self.rule in WARNINGS

    def line(self, wording: str | None = None) -> str:
        what = "WARN" if self.warning else "FAIL"
        return f"{what} {self.rule}: {wording or RULES[self.rule]}: broken {self.count:,} time(s); e.g. {self.example}"


@dataclasses.dataclass
class Report:
    endpoint: str
    snapshot: str | None
    findings: dict = dataclasses.field(default_factory=dict)
    messages: int = 0
    data_messages: int = 0
    heartbeats: int = 0
    events: int = 0
    channels: dict = dataclasses.field(default_factory=dict)    # channel -> (epoch, next seq)
    snapshots: int = 0
    retransmissions: int = 0
    notes: list = dataclasses.field(default_factory=list)
    max_events: int = wire.MAX_MESSAGE_EVENTS                    # the size-limit checked

    def broke(self, rule: str, example: str, n: int = 1) -> None:
        f = self.findings.setdefault(rule, Finding(rule))
        if not f.count:
            f.example = example
        f.count += n

    @property
    def ok(self) -> bool:
        """No rule broken (warnings aside)."""
        return not any(not f.warning for f in self.findings.values())

    def text(self) -> str:
        # (the size limit as checked: --max-events 1000 said "at most 4,096 events": an adversarial pass)
        limit = f"at most {self.max_events:,} events in one message (split larger exchange messages)"
        lines = [f.line(limit if f.rule == "size-limit" else None)
                 for f in sorted(self.findings.values(), key=lambda f: (f.warning, f.rule))]
        lines += [f"note: {n}" for n in self.notes]
        verdict = "conformant" if self.ok else f"NOT conformant ({sum(not f.warning for f in self.findings.values())} rule(s) broken)"
        chans = ", ".join(f"{c}: next seq {nxt:,}" for c, (_, nxt) in sorted(self.channels.items())[:8])
        lines.append(f"{self.endpoint}: {verdict}: {self.messages:,} messages ({self.data_messages:,} data, "
                     f"{self.heartbeats:,} heartbeats, {self.events:,} events) on {len(self.channels)} channel(s)"
                     f"{' [' + chans + (' ...' if len(self.channels) > 8 else '') + ']' if chans else ''}; "
                     f"{self.snapshots} snapshot(s), {self.retransmissions} retransmission(s) checked")
        return "\n".join(lines)


def _check_endpoint(ep: str, what: str) -> None:
    scheme, _, rest = ep.partition("://")
    if scheme not in ("tcp", "ipc", "inproc") or not rest:
        raise ConformanceError(f"{what} {ep!r} is not a ZeroMQ endpoint (tcp://host:port, ipc:///path)")
    if scheme == "ipc":
        import os
        import stat

        try:
            if not stat.S_ISSOCK(os.stat(rest).st_mode):
                raise ConformanceError(f"{what} {ep!r}: {rest} is not a socket")
        except FileNotFoundError:
            raise ConformanceError(f"{what} {ep!r}: nothing listens there ({rest} does not exist)") from None


_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def _connected(sock, ep: str, what: str, timeout: float, curve=None) -> None:
    """Connect and wait for the ZeroMQ handshake (ZeroMQ connects in the background)."""
    from zmq.utils.monitor import recv_monitor_message

    mon = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | _HANDSHAKE_FAILED)
    try:
        if curve is not None:
            curve.apply(sock)
        sock.connect(ep)
        end = time.monotonic() + timeout
        connected = False
        while (left := end - time.monotonic()) > 0:
            if mon.poll(int(min(left, 3600.0) * 1000) + 1):
                ev = recv_monitor_message(mon)
                if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    return
                connected |= ev["event"] == zmq.EVENT_CONNECTED
                if ev["event"] & _HANDSHAKE_FAILED:
                    raise ConformanceError(
                        f"{what} {ep}: the ZeroMQ handshake failed ("
                        + ("CURVE: wrong server key, or this client's key not let in)" if curve is not None else
                           "not a plain ZeroMQ endpoint: a CURVE publisher needs --curve-server-key and "
                           "--curve-secret-key)"))
        if connected:
            raise ConformanceError(f"{what} {ep}: connected, but no ZeroMQ handshake within {timeout:g} s "
                                   "(not a ZeroMQ publisher, or CURVE refused)")
        raise ConformanceError(f"{what} {ep}: cannot connect within {timeout:g} s (is the publisher running?)")
    finally:
        sock.disable_monitor()
        mon.close(0)


#: Most events held per channel (the data between the first snapshot and the last one is checked
#: against them); past it the oldest half is let go (~70 bytes an event: ~140 MB a channel).
MAX_HELD_EVENTS = 2_000_000


class _Channel:
    def __init__(self):
        self.epoch = None
        self.next = None            # the next sequence number expected
        self.last_heard = time.monotonic()
        self.open_message = False   # the last data event had no LAST
        self.msgs = []              # (seq, events) of the data messages of this epoch, in arrival order
        self.held = 0               # events in msgs (at most MAX_HELD_EVENTS: older ones let go)
        self.let_go = False         # events of this epoch were let go
        self.first = None           # the first seq received in this epoch
        self.ended = False          # an END heartbeat was heard in this epoch

    def keep(self, seq: int, ev) -> None:
        """Hold a data message's events (for the snapshot-consistency and retransmission checks)
        within :data:`MAX_HELD_EVENTS`: a long check of a fast publisher held every event and grew
        by ~70 bytes an event (24 GB for an hour at 100k events/s)."""
        self.msgs.append((seq, ev))
        self.held += len(ev)
        if self.held > MAX_HELD_EVENTS:
            while len(self.msgs) > 1 and self.held - len(self.msgs[0][1]) >= MAX_HELD_EVENTS // 2:
                self.held -= len(self.msgs.pop(0)[1])
            self.let_go = True

    def events(self, first: int, end: int):
        """The events ``first .. end-1`` as received (a copy), or None when some were not."""
        out, want = [], first
        for seq, ev in self.msgs:
            lo, hi = max(seq, want), min(seq + len(ev), end)
            if lo < hi and lo == want:
                out.append(ev[lo - seq:hi - seq])
                want = hi
        if want < end:
            return None
        return np.concatenate(out) if out else np.zeros(0, EVENT_DTYPE)

    def last_seqs(self, n: int):
        """``(first, end)`` of about the last ``n`` events received in sequence, or None."""
        if not self.msgs:
            return None
        seq, ev = self.msgs[-1]
        end = seq + len(ev)
        return (max(end - n, self.first), end) if end > self.first else None


class _Checker:
    def __init__(self, report: Report, channels, max_events: int):
        self.r = report
        self.want = set(channels) if channels else None
        self.max_events = max_events
        self.chans: dict[int, _Channel] = {}

    # -- data messages ---------------------------------------------------------------------
    def message(self, frames) -> None:
        r = self.r
        r.messages += 1
        now = time.time_ns()
        if len(frames) != 2:
            r.broke("frames", f"a message of {len(frames)} frame(s)")
            return
        topic, payload = frames
        tchan = wire.topic_channel(topic)
        if tchan is None:
            r.broke("topic", f"topic {topic[:16]!r}")
            return
        if len(payload) < wire.HEADER_SIZE:
            r.broke("length", f"a {len(payload)}-byte payload on channel {tchan} (the header alone is 48)")
            return
        (magic, version, mtype, flags, channel, event_size, count, seq, send_time, epoch, request_id,
         part) = HEADER.unpack_from(payload)
        if self.want is not None and channel not in self.want and tchan not in self.want:
            r.messages -= 1                              # (another channel's: not checked)
            return
        where = f"channel {channel} seq {seq:,}"
        if magic != wire.MAGIC:
            r.broke("magic", f"magic {magic!r} on topic {topic!r}")
            return
        if version != wire.VERSION:
            r.broke("version", f"version {version} on {where}")
            return
        if mtype not in (MsgType.DATA, MsgType.HEARTBEAT) or event_size != wire.EVENT_SIZE or \
                (mtype == MsgType.HEARTBEAT and count) or request_id or part or seq + count > (1 << 64) - 1 or \
                (flags and not (mtype == MsgType.HEARTBEAT and flags == wire.WireFlag.END)):
            r.broke("header", f"type {mtype} flags {flags:#x} event_size {event_size} count {count} request_id "
                              f"{request_id} part {part} on {where}")
            return
        if tchan != channel:
            r.broke("topic", f"topic {topic!r} on a message of channel {channel}")
            return
        if len(payload) != wire.HEADER_SIZE + count * wire.EVENT_SIZE:
            r.broke("length", f"{len(payload)} bytes for {count} events on {where}")
            return
        if count > self.max_events:
            r.broke("size-limit", f"{count:,} events in one message on {where}")
        if abs(send_time - now) > 60 * 10 ** 9:
            r.broke("send-time", f"send_time {send_time} ({(send_time - now) / 1e9:+.0f} s from now) on {where}")
        if self.want is not None and channel not in self.want:
            return
        c = self.chans.setdefault(channel, _Channel())
        c.last_heard = time.monotonic()
        if c.epoch is not None and epoch != c.epoch:
            if epoch < c.epoch:
                r.broke("epoch", f"epoch {epoch} after {c.epoch} on channel {channel}")
                return
            if seq != 1:
                r.broke("epoch", f"new epoch {epoch} on channel {channel} starts at seq {seq:,}, not 1")
            c.epoch, c.next, c.msgs, c.first, c.held, c.let_go = epoch, None, [], None, 0, False
            c.ended = False
        if c.epoch is None:
            c.epoch = epoch
        if c.next is not None and seq != c.next:
            r.broke("sequence", f"{'heartbeat' if mtype == MsgType.HEARTBEAT else 'data'} with seq {seq:,} on "
                                f"channel {channel} where {c.next:,} was next")
        if c.ended and (mtype == MsgType.DATA or not flags):
            r.broke("end", f"{'data' if mtype == MsgType.DATA else 'a heartbeat'} on channel {channel} after its "
                           f"END heartbeat in epoch {epoch}")
            c.ended = False
        if mtype == MsgType.HEARTBEAT:
            c.ended = c.ended or bool(flags)
            r.heartbeats += 1
            if c.open_message:
                r.broke("last", f"heartbeat on channel {channel} after an event without LAST (seq {seq - 1:,})")
                c.open_message = False
            if c.next is None or seq > c.next:
                c.next = seq
            r.channels[channel] = (c.epoch, c.next)
            return
        r.data_messages += 1
        r.events += count
        ev = np.frombuffer(payload, EVENT_DTYPE, count, wire.HEADER_SIZE)
        self._events(ev, where, channel)
        if count and (not np.array_equal(ev["seq"], seq + np.arange(count, dtype=np.uint64))
                      or (ev["channel"] != channel).any()):
            r.broke("event-seq", f"events of {where} carry seq {int(ev['seq'][0]):,} / channel {int(ev['channel'][0])}")
        if c.first is None:
            c.first = seq
        if count:
            c.keep(seq, ev)
        if count:
            c.open_message = not int(ev["flags"][-1]) & Flag.LAST
        if c.next is None or seq + count > c.next:
            c.next = seq + count
        r.channels[channel] = (c.epoch, c.next)

    def _events(self, ev, where: str, channel: int) -> None:
        r = self.r
        if not len(ev):
            return
        kind, side, flags = ev["kind"], ev["side"], ev["flags"].astype(np.int64)
        bad = wire.malformed_events(ev)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            r.broke("event", f"event {i} of {where}: kind {int(kind[i])} side {int(side[i])} flags "
                             f"{int(flags[i]):#x} reserved {int(ev['reserved'][i])}", int(bad.sum()))
        market = kind != Kind.SNAPSHOT
        ts = ev["ts_event"][market]
        late = (ts < _YEAR_2000) | (ts > time.time_ns() + 60 * 10 ** 9)
        if late.any():
            r.broke("ts-event", f"ts_event {int(ts[late][0])} in {where}", int(late.sum()))

    def silence(self, max_gap: float) -> None:
        now = time.monotonic()
        for ch, c in self.chans.items():
            if now - c.last_heard > max_gap:
                self.r.broke("heartbeat", f"channel {ch} silent for {now - c.last_heard:.1f} s")
                c.last_heard = now


class _Service:
    """The client side of the recovery service."""

    def __init__(self, sock, report: Report, poll_data):
        self.sock = sock
        self.r = report
        self.poll_data = poll_data
        self.request_id = 0

    def ask(self, payload_of, what: str):
        """Send a request, return its reply parts [(header tuple, events)] (None: no reply)."""
        self.request_id += 1
        rid = self.request_id
        self.sock.send(payload_of(rid))
        parts = []
        end = time.monotonic() + _REPLY_TIMEOUT
        while time.monotonic() < end:
            self.poll_data()
            if not self.sock.poll(5):
                continue
            frames = self.sock.recv_multipart()
            try:
                if len(frames) != 1:
                    raise wire.WireError(wire.Drop.BAD_FRAMES, f"{len(frames)} frames")
                h, ev = wire.decode(None, frames[0], max_events=wire.MAX_REPLY_EVENTS, types=wire.TYPES_REPLY)
            except wire.WireError as exc:
                if exc.reason != wire.Drop.BAD_EVENT:
                    self.r.broke("snapshot-reply" if "snapshot" in what else "retransmit", f"{what}: {exc}")
                    return None
                # an invalid event is the `event` rule's (a retransmission resends what was published)
                fields = HEADER.unpack_from(frames[0])
                h = wire.Header(fields[2], fields[3], fields[4], fields[6], fields[7], fields[8], fields[9],
                                fields[10], fields[11])
                ev = np.frombuffer(frames[0], EVENT_DTYPE, h.count, wire.HEADER_SIZE).copy()
            raw = np.frombuffer(frames[0], EVENT_DTYPE, (len(frames[0]) - wire.HEADER_SIZE) // wire.EVENT_SIZE,
                                wire.HEADER_SIZE)
            if 0 < h.request_id < rid:
                continue                    # the rest of a reply this checker stopped reading
            if h.request_id != rid:
                self.r.broke("snapshot-reply" if "snapshot" in what else "retransmit",
                             f"{what}: a part with request_id {h.request_id}, asked with {rid}")
                continue
            parts.append((h, ev, raw))
            if h.flags & WireFlag.FINAL:
                return parts
        self.r.broke("no-reply", f"{what}: {'no' if not parts else 'no FINAL'} reply within {_REPLY_TIMEOUT:g} s")
        return None

    def snapshot(self, channel: int, data_epoch, tries: int = 3):
        """A checked snapshot of ``channel``: (epoch, covered seq, events) or None."""
        for _ in range(tries):
            got = self._snapshot(channel, data_epoch)
            if got != "unavailable":
                return got
            end = time.monotonic() + 0.3
            while time.monotonic() < end:
                self.poll_data(10)
        self.r.broke("snapshot-reply", f"snapshot of channel {channel}: answered UNAVAILABLE {tries} times for a "
                                       "channel it publishes")
        return None

    def _snapshot(self, channel: int, data_epoch):
        what = f"snapshot of channel {channel}"
        parts = self.ask(lambda rid: wire.encode_snapshot_request(channel, rid, epoch=data_epoch or 0), what)
        if parts is None:
            return None
        if parts[0][0].flags & WireFlag.UNAVAILABLE and parts[0][0].type == MsgType.SNAPSHOT:
            return "unavailable"
        self.r.snapshots += 1
        bad = []
        for k, (h, ev, raw) in enumerate(parts):
            if h.type != MsgType.SNAPSHOT:
                bad.append(f"part {k} is of type {h.type}")
            if h.part != k:
                bad.append(f"part {k} numbered {h.part}")
            if h.channel != channel:
                bad.append(f"part {k} of channel {h.channel}")
            if (h.seq, h.epoch) != (parts[0][0].seq, parts[0][0].epoch):
                bad.append(f"part {k}: seq {h.seq} epoch {h.epoch}, part 0: {parts[0][0].seq} {parts[0][0].epoch}")
            if h.flags & WireFlag.UNAVAILABLE:     # "not ready yet": asked again by the caller
                return "unavailable"
        h0 = parts[0][0]
        if data_epoch is not None and h0.epoch != data_epoch:
            bad.append(f"epoch {h0.epoch}, the data stream's is {data_epoch}")
        for msg in bad:
            self.r.broke("snapshot-reply", f"{what}: {msg}")
        raws = [raw for _, _, raw in parts]
        events = np.concatenate([ev for _, ev, _ in parts]) if parts else np.zeros(0, EVENT_DTYPE)
        raw = np.concatenate(raws) if raws else np.zeros(0, EVENT_DTYPE)
        self._snapshot_events(what, raw, h0.seq)
        return h0.epoch, h0.seq, events

    def _snapshot_events(self, what: str, raw, covered: int) -> None:
        r = self.r
        if len(raw) and (raw["seq"] != covered).any():
            r.broke("snapshot-events", f"{what}: an event with seq {int(raw['seq'][raw['seq'] != covered][0])}, "
                                       f"the snapshot covers {covered}")
        i, n = 0, len(raw)
        while i < n:
            e = raw[i]
            inst = int(e["instrument"])
            if e["kind"] != Kind.SNAPSHOT or not e["flags"] & Flag.SNAPSHOT_BEGIN or not e["flags"] & Flag.SNAPSHOT:
                r.broke("snapshot-events", f"{what}: event {i} (instrument {inst}) is not a SNAPSHOT_BEGIN marker")
                return
            j = i + 1
            while j < n and raw[j]["kind"] != Kind.SNAPSHOT:
                j += 1
            body = raw[i + 1:j]
            if j == n or not raw[j]["flags"] & Flag.SNAPSHOT_END or not raw[j]["flags"] & Flag.LAST \
                    or raw[j]["instrument"] != inst:
                r.broke("snapshot-events", f"{what}: instrument {inst}'s events do not end with a SNAPSHOT_END|LAST marker")
                return
            if len(body) and ((body["kind"] != Kind.ADD).any() or (body["instrument"] != inst).any()
                              or not (body["flags"] & Flag.SNAPSHOT).all() or (body["side"] > 1).any()):
                r.broke("snapshot-events", f"{what}: instrument {inst}: levels must be ADDs of the instrument "
                                           "flagged SNAPSHOT, side BID or ASK")
                return
            side = body["side"]
            if (np.diff(side.astype(np.int64)) < 0).any():
                r.broke("snapshot-events", f"{what}: instrument {inst}: asks before bids")
                return
            bids, asks = body["price"][side == 0], body["price"][side == 1]
            if (np.diff(bids) > 0).any() or (np.diff(asks) < 0).any():
                r.broke("snapshot-events", f"{what}: instrument {inst}: levels not best first")
                return
            i = j + 1

    def unavailable(self, channel: int) -> None:
        what = f"snapshot of channel {channel} (not published)"
        parts = self.ask(lambda rid: wire.encode_snapshot_request(channel, rid), what)
        if parts is None:
            return
        h = parts[0][0]
        if len(parts) != 1 or h.count or h.flags != int(WireFlag.FINAL | WireFlag.UNAVAILABLE) or h.type != MsgType.SNAPSHOT:
            self.r.broke("snapshot-unavailable", f"{what}: {len(parts)} part(s), flags {h.flags:#x}, {h.count} events")

    def retransmit(self, channel: int, c: _Channel) -> None:
        span = c.last_seqs(50)
        sent = None if span is None else c.events(*span)
        if sent is None:
            return
        first, n = span[0], span[1] - span[0]
        what = f"retransmission of channel {channel} seq {first:,}..{first + n - 1:,}"
        parts = self.ask(lambda rid: wire.encode_retransmit_request(channel, rid, first, n, epoch=c.epoch), what)
        if parts is None:
            return
        self.r.retransmissions += 1
        expect = first
        for k, (h, ev, raw) in enumerate(parts):
            final = bool(h.flags & WireFlag.FINAL)
            if h.type != MsgType.RETRANSMIT or h.part != k or h.epoch != c.epoch or h.channel != channel \
                    or h.flags & WireFlag.UNAVAILABLE or (final != (k == len(parts) - 1)):
                self.r.broke("retransmit", f"{what}: part {k}: type {h.type} part {h.part} epoch {h.epoch} flags "
                                           f"{h.flags:#x}")
                return
            if final:
                if h.count or h.seq < first + n:
                    self.r.broke("retransmit", f"{what}: FINAL part with {h.count} events and head {h.seq:,}")
                elif expect != first + n:
                    self.r.broke("retransmit", f"{what}: events {expect:,}.. missing (the publisher still holds them)")
                return
            if h.seq != expect:
                self.r.broke("retransmit", f"{what}: part {k} starts at {h.seq:,}, {expect:,} was next")
                return
            lo, hi = max(h.seq, first), min(h.seq + h.count, first + n)
            if lo < hi and raw[lo - h.seq:hi - h.seq].tobytes() != sent[lo - first:hi - first].tobytes():
                self.r.broke("retransmit", f"{what}: events {lo:,}..{hi - 1:,} differ from those first published")
                return
            expect = h.seq + h.count
        what = f"retransmission of channel {channel} in epoch {c.epoch - 1}"
        parts = self.ask(lambda rid: wire.encode_retransmit_request(channel, rid, 1, 1, epoch=c.epoch - 1), what)
        if parts is not None and not parts[-1][0].flags & WireFlag.UNAVAILABLE:
            self.r.broke("retransmit", f"{what}: not answered UNAVAILABLE")


def _book_state(events):
    """{instrument: (bids, asks)} as (price, qty) level lists, of snapshot events (L2 or L3)."""
    out = {}
    for inst in np.unique(events["instrument"]).tolist():
        ev = events[(events["instrument"] == inst) & (events["kind"] == Kind.ADD)]
        sides = []
        for s in (0, 1):
            e = ev[ev["side"] == s]
            prices, inv = np.unique(e["price"], return_inverse=True)
            qty = np.bincount(inv, weights=e["qty"].astype(np.float64), minlength=len(prices)) if len(e) else []
            sides.append([(int(p), int(q)) for p, q in zip(prices, qty) if q])
        out[inst] = tuple(sides)
    return out


def _covered_published(report: Report, channel: int, c: _Channel, snap, poll_data) -> None:
    """A snapshot covers a sequence number the data stream has published (its data in flight is
    waited for, up to a second): one that claimed 100,000 past the head passed as conformant."""
    if snap is None or snap[0] != c.epoch:
        return                                  # (another epoch: the epoch check says so)
    covered = snap[1]
    end = time.monotonic() + 1.0
    while (c.next is None or c.next - 1 < covered) and time.monotonic() < end:
        poll_data(20)
    if c.next is None or c.next - 1 < covered:
        head = "none" if c.next is None else f"{c.next - 1:,}"
        report.broke("snapshot-reply", f"snapshot of channel {channel}: covers seq {covered:,}, past the last the "
                                       f"data stream published ({head})")


def _consistency(report: Report, channel: int, first, c: _Channel, second) -> None:
    """Apply the data after the first snapshot to it and compare with the second."""
    from tickwire.engine.instruments import Instrument, make_books

    (_, s1, ev1), (e2, s2, ev2) = first, second
    data = c.events(s1 + 1, s2 + 1) if e2 == first[0] and s2 >= s1 else None
    if data is None:
        why = (f"more than {MAX_HELD_EVENTS:,} events between the two snapshots, more than are held: a shorter "
               "--duration checks it") if c.let_go else "a new epoch or data not all received between the two snapshots"
        report.notes.append(f"channel {channel}: snapshot consistency not checked ({why})")
        return
    insts = sorted(set(np.unique(ev1["instrument"]).tolist()) | set(np.unique(ev2["instrument"]).tolist()))
    l3 = bool((ev1["order_id"] != 0).any() or (ev2["order_id"] != 0).any())
    books = make_books([Instrument(i, f"I{i}", tick_size="1", lot_size="1", book="L3" if l3 else "L2",
                                   max_depth=0) for i in insts])
    books.apply(ev1)
    data = data[np.isin(data["instrument"], insts)]
    books.apply(data)
    mine = np.concatenate([books[i].snapshot_events() for i in insts]) if insts else np.zeros(0, EVENT_DTYPE)
    if _book_state(mine) != _book_state(ev2):
        diff = [i for i in insts if _book_state(mine).get(i) != _book_state(ev2).get(i)]
        report.broke("snapshot-consistency", f"channel {channel}: the snapshot at seq {s1:,} plus events "
                                             f"{s1 + 1:,}..{s2:,} differs from the snapshot at {s2:,} "
                                             f"(instrument {diff[0]})")


def check(endpoint: str, snapshot: str | None = None, channels=None, duration: float = 5.0, *,
          max_events: int = wire.MAX_MESSAGE_EVENTS, max_silence: float = 1.0, connect_timeout: float = 5.0,
          curve=None, context: zmq.Context | None = None) -> Report:
    """Listen to the publisher at ``endpoint`` for ``duration`` seconds (and exercise its
    recovery service at ``snapshot``) and report every rule it breaks.

    ``channels``: the channels to check (default: every channel heard); each must be heard.
    ``curve``: a :class:`~tickwire.feeds.curve.CurveClient` for a CURVE publisher.
    Raises :class:`ConformanceError` for an endpoint that is not one or cannot be reached.
    """
    _check_endpoint(endpoint, "endpoint")
    if snapshot:
        _check_endpoint(snapshot, "--snapshot")
    if isinstance(max_events, bool) or not isinstance(max_events, int) or not 1 <= max_events <= MAX_EVENTS_LIMIT:
        raise ConformanceError(f"max_events: expected an integer from 1 to {MAX_EVENTS_LIMIT:,} (feeds.max_message_events' "
                               f"range), got {max_events!r}")
    ctx = context or zmq.Context.instance()
    report = Report(endpoint, snapshot, max_events=max_events)
    sub = ctx.socket(zmq.SUB)
    dealer = None
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 0)                   # our own losses would read as the publisher's gaps
        # every topic, messages with a bad one too, with --channels as well: a message of a checked
        # channel under another channel's topic was not received at all, a gap and nothing said of
        # the topic (a wire-contract pass); other channels' messages are skipped (_Checker.message)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        _connected(sub, endpoint, "endpoint", connect_timeout, curve)
        if snapshot:
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            _connected(dealer, snapshot, "--snapshot", connect_timeout, curve)
        checker = _Checker(report, channels, max_events)

        def poll_data(timeout_ms: int = 0) -> None:
            while sub.poll(timeout_ms):
                checker.message(sub.recv_multipart())
                timeout_ms = 0

        svc = _Service(dealer, report, poll_data) if dealer is not None else None
        first_snaps = {}
        start = time.monotonic()
        end = start + duration
        next_silence = start + max_silence
        while (now := time.monotonic()) < end:
            poll_data(20)
            if svc is not None:
                for ch, c in list(checker.chans.items()):
                    if ch not in first_snaps and c.epoch is not None:
                        first_snaps[ch] = svc.snapshot(ch, c.epoch)
            if now >= next_silence:
                checker.silence(max_silence)
                next_silence = now + 0.1
        poll_data(50)
        for ch in sorted(set(channels or ())):
            if ch not in checker.chans:
                report.broke("heartbeat", f"channel {ch} never heard in {duration:g} s")
        if not report.messages:
            report.broke("heartbeat", f"nothing heard in {duration:g} s (no data, no heartbeat)")
        if svc is not None:
            for ch, c in sorted(checker.chans.items()):
                svc.retransmit(ch, c)
                second = svc.snapshot(ch, c.epoch)
                poll_data(100)
                for snap in (first_snaps.get(ch), second):
                    _covered_published(report, ch, c, snap, poll_data)
                if first_snaps.get(ch) is not None and second is not None:
                    _consistency(report, ch, first_snaps[ch], c, second)
            spare = next(x for x in range(0xFFFF, -1, -1) if x not in checker.chans and (not channels or x not in channels))
            svc.unavailable(spare)
        else:
            report.notes.append("no --snapshot given: the recovery service was not checked")
    finally:
        sub.close(0)
        if dealer is not None:
            dealer.close(0)
    return report


def add_parser(sub) -> None:
    """Register ``check-publisher`` on the ``tickwire`` command's subparsers."""
    import argparse

    p = sub.add_parser(
        "check-publisher",
        help="check that a publisher speaks the wire format (docs/wire-format.md): every rule it breaks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Connect to a publisher as a receiver would (SUB on ENDPOINT, DEALER on its recovery service "
                    "with --snapshot), listen for --duration seconds, ask for snapshots and retransmissions, and "
                    "print one line per rule it breaks (with a count and an example), then a summary line.\n\n"
                    "Exit status: 0 conformant, 1 a rule broken, 2 bad usage or an unreachable endpoint.\n\n"
                    "Rules (docs/wire-format.md):\n" + "".join(f"  {k}: {v}\n" for k, v in RULES.items()) + "\n"
                    "Example:\n"
                    "  tickwire simulate --endpoint tcp://127.0.0.1:5555 --snapshot tcp://127.0.0.1:5556 "
                    "--rate 10000 --duration 60 &\n"
                    "  tickwire check-publisher tcp://127.0.0.1:5555 --snapshot tcp://127.0.0.1:5556",
    )
    p.add_argument("endpoint", metavar="ENDPOINT", help="the publisher's data endpoint (tcp://host:port, ipc:///path)")
    p.add_argument("--snapshot", metavar="EP", help="its recovery service (snapshots, retransmissions) [not checked]")
    p.add_argument("--channels", metavar="C", type=int, nargs="+",
                   help="the channels to check; each must be heard [every channel heard]")
    p.add_argument("--duration", type=float, default=5.0, metavar="S", help="seconds to listen [%(default)s]")
    p.add_argument("--max-events", type=int, default=wire.MAX_MESSAGE_EVENTS, metavar="N",
                   help="the receivers' per-message limit [%(default)s: the default of feeds.max_message_events]")
    p.add_argument("--curve-server-key", metavar="KEY",
                   help="a CURVE publisher's public key (Z85 text or its NAME.key file)")
    p.add_argument("--curve-secret-key", metavar="FILE",
                   help="this client's certificate (NAME.key_secret from `tickwire keygen`, 0600)")
    p.set_defaults(func=cmd_check_publisher)


def cmd_check_publisher(args) -> int:
    import sys

    from tickwire.engine.config import seconds_problem

    why = seconds_problem(args.duration)
    if why:
        print(f"tickwire check-publisher: --duration: {why}", file=sys.stderr)
        return 2
    if any(not 0 <= c <= 0xFFFF for c in args.channels or ()):
        print("tickwire check-publisher: --channels: channel ids are 0..65535", file=sys.stderr)
        return 2
    if not 1 <= args.max_events <= MAX_EVENTS_LIMIT:     # (-1 failed every data message: the publisher blamed)
        print(f"tickwire check-publisher: --max-events: expected an integer from 1 to {MAX_EVENTS_LIMIT:,} "
              f"(feeds.max_message_events' range), got {args.max_events}", file=sys.stderr)
        return 2
    curve = None
    if bool(args.curve_server_key) != bool(args.curve_secret_key):
        print("tickwire check-publisher: --curve-server-key and --curve-secret-key go together", file=sys.stderr)
        return 2
    if args.curve_server_key:
        from tickwire.feeds.curve import CurveClient

        try:
            curve = CurveClient.load(args.curve_server_key, args.curve_secret_key)
        except ValueError as exc:
            print(f"tickwire check-publisher: {exc}", file=sys.stderr)
            return 2
    try:
        report = check(args.endpoint, args.snapshot, args.channels, args.duration, max_events=args.max_events,
                       curve=curve)
    except ConformanceError as exc:
        print(f"tickwire check-publisher: {exc}", file=sys.stderr)
        return 2
    print(report.text(), flush=True)
    return 0 if report.ok else 1
