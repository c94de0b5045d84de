"""A publisher of tickwire's wire format written from docs/wire-format.md alone: it imports
nothing from tickwire (struct, gzip, json, decimal and pyzmq only), as an outside engineer's
would. It publishes the Binance spot capture (../shared/data, README there) on one channel:

- instrument 0 (BTCUSDT; tick 0.01, lot 0.00000001, an L2 book);
- the REST depth snapshot as a snapshot sequence in the data stream (a SNAPSHOT_BEGIN marker,
  one ADD per level flagged SNAPSHOT, a SNAPSHOT_END|LAST marker), the depth diffs after it
  (Binance's sync rule) as MODIFY events with LAST on each diff's final one, trades as TRADE
  events with LAST;
- exchange messages larger than --max-events split over several wire messages, LAST on the
  final event only ("Splitting a large exchange message");
- the join sequence ("Joining"): an XPUB waits for the subscriptions, heartbeats go out and the
  recovery service answers until each channel's join snapshot was served, then it publishes;
- a recovery service (ROUTER): snapshots of its own book, retransmissions of what it sent;
- heartbeats on the idle channel every 100 ms.

    python tests/third_party_publisher.py CAPTURE --data EP --snapshot EP [--max-events N]
        [--subscribers K] [--linger S] [--rate MSGS_PER_S] [--result FILE.json]

Writes a JSON summary (events, messages, splits, snapshots served, the tickwire modules
loaded: none) to --result.
"""

import argparse
import gzip
import json
import struct
import sys
import time
from decimal import Decimal

import zmq

# -- docs/wire-format.md, "Header (48 bytes)" and "Events (64 bytes each)" -------------------
HEADER = struct.Struct("<4sBBHHHIQqQII")        # magic version type flags channel event_size count seq send_time epoch request_id part
EVENT = struct.Struct("<qqQQqqIHBBII")          # ts_event ts_recv seq order_id price qty instrument channel kind side flags reserved
DATA, HEARTBEAT, SNAPSHOT_REQUEST, SNAPSHOT, RETRANSMIT_REQUEST, RETRANSMIT = 1, 2, 3, 4, 5, 6
FINAL, UNAVAILABLE = 1, 2
ADD, MODIFY, TRADE, MARKER = 1, 2, 4, 6
BID, ASK, NONE = 0, 1, 2
LAST, SNAP, BEGIN, END = 1, 2, 4, 8
CHANNEL, INSTRUMENT = 0, 0


def topic(channel):
    return b"tw.%05d." % channel


def header(mtype, channel, count, seq, epoch, flags=0, request_id=0, part=0):
    return HEADER.pack(b"TWIR", 1, mtype, flags, channel, 64, count, seq, time.time_ns(), epoch, request_id, part)


def ticks(text, decimals):
    value = Decimal(text) * (10 ** decimals)
    if value != value.to_integral_value():
        raise ValueError(f"{text} is not a multiple of 1e-{decimals}")
    return int(value)


def exchange_messages(path):
    """Each Binance message as a list of (ts_event, order_id, price, qty, kind, side, flags)."""
    snapshot_id, last_u, early = None, None, []

    def diff(d):
        nonlocal last_u
        if d["u"] <= snapshot_id:
            return None
        if last_u is not None and d["U"] != last_u + 1:
            raise ValueError(f"gap in the diffs at U={d['U']}")
        last_u = d["u"]
        ts = d["E"] * 1_000_000
        out = [(ts, 0, ticks(p, 2), ticks(q, 8), MODIFY, side, 0)
               for key, side in (("b", BID), ("a", ASK)) for p, q in d[key]]
        if out:
            out[-1] = out[-1][:6] + (LAST,)
        return out

    with gzip.open(path, "rt") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            ts_text, _, body = line.partition(" ")
            msg = json.loads(body)
            if "lastUpdateId" in msg:
                snapshot_id = msg["lastUpdateId"]
                ts = int(ts_text)
                ev = [(ts, 0, 0, 0, MARKER, NONE, SNAP | BEGIN)]
                ev += [(ts, 0, ticks(p, 2), ticks(q, 8), ADD, side, SNAP)
                       for key, side in (("bids", BID), ("asks", ASK)) for p, q in msg[key]]
                ev.append((ts, 0, 0, 0, MARKER, NONE, SNAP | END | LAST))
                yield ev
                for d in early:
                    out = diff(d)
                    if out:
                        yield out
                continue
            stream, data = msg["stream"], msg["data"]
            if stream.endswith("@depth@100ms"):
                if snapshot_id is None:
                    early.append(data)
                else:
                    out = diff(data)
                    if out:
                        yield out
            elif stream.endswith("@trade") and snapshot_id is not None:
                yield [(data["T"] * 1_000_000, 0, ticks(data["p"], 2), ticks(data["q"], 8), TRADE,
                        ASK if data["m"] else BID, LAST)]


class Book:
    """An L2 book: what the snapshot service serves."""

    def __init__(self):
        self.side = ({}, {})

    def apply(self, kind, side, price, qty, flags):
        if kind == MARKER and flags & BEGIN:
            self.side[0].clear()
            self.side[1].clear()
        elif kind in (ADD, MODIFY):
            if qty:
                self.side[side][price] = qty
            else:
                self.side[side].pop(price, None)

    def snapshot(self, seq, ts):
        """docs/wire-format.md, "Snapshots": BEGIN marker, levels best first (bids, asks), END|LAST."""
        out = [EVENT.pack(ts, ts, seq, 0, 0, 0, INSTRUMENT, CHANNEL, MARKER, NONE, SNAP | BEGIN, 0)]
        for side, levels in ((BID, sorted(self.side[0].items(), reverse=True)), (ASK, sorted(self.side[1].items()))):
            out += [EVENT.pack(ts, ts, seq, 0, p, q, INSTRUMENT, CHANNEL, ADD, side, SNAP, 0) for p, q in levels]
        out.append(EVENT.pack(ts, ts, seq, 0, 0, 0, INSTRUMENT, CHANNEL, MARKER, NONE, SNAP | END | LAST, 0))
        return out


class Publisher:
    def __init__(self, data, snapshot, max_events):
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        self.pub.bind(data)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.bind(snapshot)
        self.epoch = time.time_ns()
        self.next = 1
        self.sent = []                      # event records by sequence number - 1 (retransmissions)
        self.book = Book()
        self.max_events = max_events
        self.last_beat = 0.0
        self.stats = {"market_events": 0, "snapshot_events": 0, "exchange_messages": 0, "messages": 0,
                      "split_messages": 0, "heartbeats": 0, "snapshots_served": 0, "retransmissions": 0,
                      "subscriptions": 0}

    def subscriptions(self):
        while self.pub.poll(0):
            msg = self.pub.recv()
            if msg[:1] == b"\x01" and topic(CHANNEL).startswith(msg[1:]):
                self.stats["subscriptions"] += 1

    def heartbeat(self, force=False):
        now = time.monotonic()
        if force or now - self.last_beat >= 0.1:
            self.pub.send_multipart([topic(CHANNEL), header(HEARTBEAT, CHANNEL, 0, self.next, self.epoch)])
            self.last_beat = now
            self.stats["heartbeats"] += 1

    def serve(self):
        while self.router.poll(0):
            frames = self.router.recv_multipart()
            identity, req = frames[0], frames[-1]
            if len(req) != 48 or req[:4] != b"TWIR" or req[4] != 1:
                continue
            _, _, mtype, _, channel, _, count, seq, _, epoch, rid, _ = HEADER.unpack(req)
            if mtype == SNAPSHOT_REQUEST:
                if channel != CHANNEL:
                    self.router.send_multipart([identity, HEADER.pack(b"TWIR", 1, SNAPSHOT, FINAL | UNAVAILABLE,
                                                                      channel, 64, 0, 0, time.time_ns(), 0, rid, 0)])
                    continue
                events = self.book.snapshot(self.next - 1, time.time_ns())
                parts = [events[k:k + self.max_events] for k in range(0, len(events), self.max_events)]
                for k, part in enumerate(parts):
                    self.router.send_multipart([identity, header(
                        SNAPSHOT, channel, len(part), self.next - 1, self.epoch,
                        flags=FINAL if k == len(parts) - 1 else 0, request_id=rid, part=k) + b"".join(part)])
                self.stats["snapshots_served"] += 1
            elif mtype == RETRANSMIT_REQUEST:
                if channel != CHANNEL or epoch != self.epoch:
                    self.router.send_multipart([identity, header(RETRANSMIT, channel, 0, self.next, self.epoch,
                                                                 flags=FINAL | UNAVAILABLE, request_id=rid)])
                    continue
                first, end = max(seq, 1), min(seq + count, self.next)
                part = 0
                for k in range(first, end, self.max_events):
                    chunk = self.sent[k - 1:min(k + self.max_events, end) - 1]
                    self.router.send_multipart([identity, header(RETRANSMIT, channel, len(chunk), k, self.epoch,
                                                                 request_id=rid, part=part) + b"".join(chunk)])
                    part += 1
                self.router.send_multipart([identity, header(RETRANSMIT, channel, 0, self.next, self.epoch,
                                                             flags=FINAL, request_id=rid, part=part)])
                self.stats["retransmissions"] += 1

    def join(self, subscribers, timeout=60.0):
        """docs/wire-format.md, "Joining": subscriptions, then heartbeats until each join
        snapshot was served, then publish."""
        end = time.monotonic() + timeout
        while self.stats["subscriptions"] < subscribers or self.stats["snapshots_served"] < subscribers:
            if time.monotonic() > end:
                raise SystemExit(f"no receiver joined within {timeout:g} s: {self.stats}")
            self.subscriptions()
            self.heartbeat()
            self.serve()
            self.router.poll(10)

    def publish(self, message):
        """One exchange message: split into wire messages of at most max_events, LAST on its final event only."""
        self.stats["exchange_messages"] += 1
        pieces = range(0, len(message), self.max_events)
        if len(pieces) > 1:
            self.stats["split_messages"] += 1
        for k in pieces:
            piece = message[k:k + self.max_events]
            seq = self.next
            records = []
            for i, (ts, oid, price, qty, kind, side, flags) in enumerate(piece):
                records.append(EVENT.pack(ts, 0, seq + i, oid, price, qty, INSTRUMENT, CHANNEL, kind, side, flags, 0))
                self.book.apply(kind, side, price, qty, flags)
                self.stats["snapshot_events" if flags & SNAP else "market_events"] += 1
            self.pub.send_multipart([topic(CHANNEL), header(DATA, CHANNEL, len(records), seq, self.epoch)
                                     + b"".join(records)])
            self.sent += records
            self.next = seq + len(records)
            self.stats["messages"] += 1
        self.last_beat = time.monotonic()

    def linger(self, seconds):
        end = time.monotonic() + seconds
        self.heartbeat(force=True)
        while time.monotonic() < end:
            self.subscriptions()
            self.heartbeat()
            self.serve()
            self.router.poll(10)

    def close(self):
        self.pub.close(2000)
        self.router.close(0)
        self.ctx.term()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("capture")
    ap.add_argument("--data", required=True)
    ap.add_argument("--snapshot", required=True)
    ap.add_argument("--max-events", type=int, default=4096, help="the receiver's per-message limit [4096]")
    ap.add_argument("--subscribers", type=int, default=1)
    ap.add_argument("--linger", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=0.0, help="exchange messages per second [0: as fast as possible]")
    ap.add_argument("--limit", type=int, default=0, help="publish only the first N exchange messages [all]")
    ap.add_argument("--result")
    args = ap.parse_args(argv)
    pub = Publisher(args.data, args.snapshot, args.max_events)
    try:
        pub.join(args.subscribers)
        t0 = time.monotonic()
        for n, message in enumerate(exchange_messages(args.capture)):
            if args.limit and n >= args.limit:
                break
            if args.rate:
                while time.monotonic() < t0 + n / args.rate:
                    pub.heartbeat()
                    pub.serve()
                    time.sleep(0.001)
            pub.publish(message)
            pub.serve()
            pub.subscriptions()
        pub.linger(args.linger)
    finally:
        pub.close()
    pub.stats["next_seq"] = pub.next
    pub.stats["tickwire_modules"] = sorted(m for m in sys.modules if m == "tickwire" or m.startswith("tickwire."))
    if args.result:
        with open(args.result, "w") as fh:
            json.dump(pub.stats, fh)
    print(json.dumps(pub.stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
