"""Feed receive throughput and one-way latency: tickwire's receive loop beside plain pyzmq loops.

    python benchmarks/bench_feed.py [--events N] [--repeats R] [--sizes 1,16,64,256]
                                    [--transports ipc,tcp] [--latency-rounds N] [--no-latency]

Throughput: a publisher process (pinned to core 0) sends batched wire-format messages
(``--sizes`` events per message) over PUB, through libzmq from C so that it outruns the
receivers; the receiver (this process, pinned to core 1, with its ZeroMQ I/O thread) drains
and decodes them.  Two modes: *queued* (the messages are in the receiver's queue before the
clock starts: the receive loop's own cost) and *streaming* (timed from the first message
while the publisher sends: includes the receiver's I/O thread on the same core; the
publisher's rate is printed, it caps what can be seen).  Contestants, same messages, same run:

- tickwire ``FeedReceiver.drain`` (libzmq through dlopen, GIL released, per-channel sequence
  check, events copied into a preallocated buffer with ``ts_recv`` stamped);
- tickwire ``FeedHandler.poll`` (the same plus the handler's per-batch Python, ``on_batch`` no-op);
- the peer: a plain pyzmq Python loop, ``recv_multipart()`` + header ``struct.unpack_from`` +
  sequence check + ``np.frombuffer`` of the events (a view: no copy, no timestamps);
- pyzmq ``recv_into`` into a preallocated buffer (still Python per message).

Every contestant must see exactly the events sent, in sequence (each checks the per-message
sequence numbers; a gap or a short count fails the run).  Rates are medians of ``--repeats``
runs; the ratio is tickwire's drain over the faster of the two pyzmq loops, taken inside each
repeat (the contestants run back to back) and its median quoted, and the target (at least
2 M events/s per core over ipc with batched messages) is checked.

Latency: ping-pong of one 112-byte message (header + one event) between core 1 and an echo
process on core 0, one-way = round trip / 2, percentiles from an HDR histogram: libzmq called
from Cython without the GIL (tickwire's path) against pyzmq from Python, over ipc and tcp.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import tempfile
import time

import numpy as np
import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # (its helpers, under python -P too)
import cbuild
from common import describe_run, pin, table, version

from tickwire.ext import EVENT_DTYPE, Kind, codec, empty_events
from tickwire.feeds import wire
from tickwire.feeds.handler import FeedHandler
from tickwire.feeds.wire import MsgType

TARGET = 2e6
B = cbuild.load("io_bench")              # raw libzmq loops (benchmarks/cext/io_bench.pyx)
EPOCH = 1


def free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# the helper process (core 0): publisher and echo
# ---------------------------------------------------------------------------------------

def helper(conn):
    try:
        os.sched_setaffinity(0, {0})
    except OSError:
        pass
    ctx = zmq.Context()
    pubs = {}
    template = {}
    while True:
        cmd = conn.recv()
        if cmd[0] == "bind":
            s = ctx.socket(zmq.PUB)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.LINGER, 0)
            s.bind(cmd[1])
            pubs[cmd[1]] = s
            conn.send("ok")
        elif cmd[0] == "publish":
            _, ep, channel, k, nmsg, seq = cmd
            if k not in template:
                ev = empty_events(k)
                ev["kind"] = Kind.MODIFY
                ev["price"] = 1000 + np.arange(k)
                ev["qty"] = 5
                template[k] = ev
            payloads = [codec.encode(MsgType.DATA, channel, seq + i * k, template[k], epoch=EPOCH)
                        for i in range(nmsg)]
            t0 = time.perf_counter()
            err = B.raw_publish(pubs[ep], wire.topic(channel), payloads)   # C speed, GIL released
            conn.send(("sent", time.perf_counter() - t0, err))
        elif cmd[0] == "echo":
            _, ep, n, raw = cmd
            s = ctx.socket(zmq.PAIR)
            s.setsockopt(zmq.LINGER, 0)
            s.bind(ep)
            conn.send("ready")
            if raw:
                B.raw_echo(s, n)
            else:
                recv, sendm = s.recv, s.send
                for _ in range(n):
                    sendm(recv(copy=True), copy=True)
            s.close()
            conn.send("done")
        elif cmd[0] == "quit":
            break
    for s in pubs.values():
        s.close(0)
    ctx.term()


# ---------------------------------------------------------------------------------------
# throughput contestants: each drains exactly nmsg messages of k events, returns events seen
# ---------------------------------------------------------------------------------------

def tw_drain(rx, buf, k, nmsg, seq, clock):
    """tickwire's receive loop: one drain call per burst of messages."""
    rx.serve(0, live=True, epoch=EPOCH, next_seq=seq)
    want, got = k * nmsg, 0
    drain = rx.drain
    while got < want:
        n = drain(buf, 1.0)
        if n == 0 and rx.pending:
            raise RuntimeError(f"unexpected slow-path message: {rx.take_pending()[1]}")
        if n and not got:
            clock.first(n)
        got += n
    return got


class _Sink:
    """on_batch of the handler contestant: counts the events, touches nothing."""

    def __init__(self):
        self.n = 0
        self.clock = None

    def __call__(self, ev):
        if not self.n and self.clock is not None:
            self.clock.first(len(ev))
        self.n += len(ev)


def tw_handler(handler, sink, k, nmsg, seq, clock):
    """The full feed handler: drain plus its per-batch Python and the on_batch call."""
    sink.n, sink.clock = 0, clock
    want = k * nmsg
    poll = handler.poll
    while sink.n < want:
        poll(1.0)
    return sink.n


HDR = struct.Struct("<4sBBHHHIQ")       # the header fields the peer looks at


def py_loop(sock, k, nmsg, seq, clock):
    """The peer: a plain pyzmq receive loop (recv_multipart + np.frombuffer)."""
    recv = sock.recv_multipart
    unpack = HDR.unpack_from
    frombuffer = np.frombuffer
    expected, got = seq, 0
    for i in range(nmsg):
        topic, payload = recv()
        magic, version, mtype, flags, channel, esize, count, s = unpack(payload)
        if magic != b"TWIR" or s != expected:
            raise RuntimeError("bad message")
        ev = frombuffer(payload, EVENT_DTYPE, count, 48)
        expected += count
        got += len(ev)
        if not i:
            clock.first(count)
    return got


def py_recv_into(sock, k, nmsg, seq, area, clock):
    """pyzmq recv_into a preallocated buffer: no allocation per message, still Python per message."""
    topic = bytearray(16)
    recv_into = sock.recv_into
    unpack = HDR.unpack_from
    view = memoryview(area)
    expected, got = seq, 0
    for i in range(nmsg):
        recv_into(topic)
        n = recv_into(view)
        magic, version, mtype, flags, channel, esize, count, s = unpack(view)
        if magic != b"TWIR" or s != expected or n != 48 + 64 * count:
            raise RuntimeError("bad message")
        expected += count
        got += count
        if not i:
            clock.first(count)
    return got


class Clock:
    """Times a run from its first receipt (streaming) or from its start (queued)."""

    def __init__(self, streaming):
        self.streaming = streaming
        self.t0 = time.perf_counter()
        self.skip = 0

    def first(self, n):
        if self.streaming:
            self.t0 = time.perf_counter()
            self.skip = n

    def rate(self, total):
        return (total - self.skip) / (time.perf_counter() - self.t0)


def run_throughput(args, conn):
    """Channel 0 goes to one SUB socket (the drain, peer and recv_into contestants take turns
    on it), channel 1 to the FeedHandler's own socket: the publisher filters by topic, so
    each message reaches only the contestant being timed."""
    ctx = zmq.Context()
    tmp = tempfile.mkdtemp(prefix="tw-bench-")
    endpoints = {"ipc": f"ipc://{tmp}/feed", "tcp": f"tcp://127.0.0.1:{free_tcp_port()}"}
    rows = []
    summary = {}
    for transport in args.transports:
        ep = endpoints[transport]
        conn.send(("bind", ep))
        conn.recv()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(ep)
        sub.subscribe(wire.topic(0))
        sink = _Sink()
        handler = FeedHandler(ep, [1], sink, context=ctx, rcvhwm=0, silence_timeout=0)
        rx = codec.FeedReceiver([sub])
        buf = empty_events(1 << 16)
        area = bytearray(48 + 64 * max(args.sizes))
        time.sleep(0.5)                                   # let the subscriptions reach the publisher
        seq = {0: 1, 1: 1}

        def publish(channel, k, nmsg, wait):
            conn.send(("publish", ep, channel, k, nmsg, seq[channel]))
            if wait:                                      # queued: everything sent and transferred
                conn.recv()
                time.sleep(args.settle)
            first = seq[channel]
            seq[channel] += k * nmsg
            return first

        publish(1, 1, 1, True)                            # the handler's channel starts at seq 1: live
        handler.run(until=handler.all_live, duration=5)
        names = ("drain", "handler", "peer", "recv_into")
        for mode in args.modes:
            streaming = mode == "streaming"
            for k in args.sizes:
                nmsg = max(args.events // k, 1) if k > 1 else min(args.events, 300_000)
                rates = {name: [] for name in names}
                sent = []
                for _ in range(args.repeats):
                    for name in names:
                        s0 = publish(1 if name == "handler" else 0, k, nmsg, wait=not streaming)
                        clock = Clock(streaming)
                        if name == "drain":
                            got = tw_drain(rx, buf, k, nmsg, s0, clock)
                        elif name == "handler":
                            got = tw_handler(handler, sink, k, nmsg, s0, clock)
                        elif name == "peer":
                            got = py_loop(sub, k, nmsg, s0, clock)
                        else:
                            got = py_recv_into(sub, k, nmsg, s0, area, clock)
                        rates[name].append(clock.rate(got))
                        assert got == k * nmsg
                        if streaming:
                            sent.append(k * nmsg / conn.recv()[1])
                rate = {name: statistics.median(r) for name, r in rates.items()}
                # the ratio inside each repeat (the contestants ran back to back), then its median
                rate["ratio"] = statistics.median(
                    d / max(p, q) for d, p, q in zip(rates["drain"], rates["peer"], rates["recv_into"]))
                summary[(transport, mode, k)] = rate
                pub = f"{statistics.median(sent) / 1e6:.1f}" if sent else "-"
                rows.append([f"{transport} {mode:9s} {k:>3} ev/msg", f"{rate['drain'] / 1e6:.2f}",
                             f"{rate['handler'] / 1e6:.2f}", f"{rate['peer'] / 1e6:.2f}",
                             f"{rate['recv_into'] / 1e6:.2f}", f"{rate['ratio']:.1f}x",
                             f"{rate['drain'] / k / 1e6:.2f} / {rate['peer'] / k / 1e6:.2f}", pub])
        assert handler.counters()["gaps"] == 0 and not handler.counters()["drops"]
        handler.close()
        sub.close(0)
    ctx.term()
    print(f"\nreceive + decode throughput, M events/s on one core (median of {args.repeats}; {args.events:,} "
          "events per run).\n  queued: the messages are in the receiver's queue before the clock starts "
          "(the receive loop's own cost);\n  streaming: timed from the first message while the publisher "
          "sends (includes the receiver's ZeroMQ I/O thread on the same core; capped by the publisher)")
    table(rows, ["transport, mode, batch", "tickwire drain", "tickwire handler", "peer: pyzmq loop",
                 "pyzmq recv_into", "drain / best peer", "M msgs/s (drain / peer)", "publisher M ev/s"])
    return summary


# ---------------------------------------------------------------------------------------
# latency
# ---------------------------------------------------------------------------------------

def percentiles(ns):
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:                                   # pragma: no cover
        HdrHistogram = None
    q = (50, 90, 99, 99.9)
    if HdrHistogram is None:
        return [np.percentile(ns, p) / 1e3 for p in q] + [ns.max() / 1e3]
    h = HdrHistogram(1, 10_000_000_000, 3)
    for v in ns.tolist():
        h.record_value(max(int(v), 1))
    return [h.get_value_at_percentile(p) / 1e3 for p in q] + [h.get_max_value() / 1e3]


def run_latency(args, conn):
    ctx = zmq.Context()
    tmp = tempfile.mkdtemp(prefix="tw-lat-")
    payload = codec.encode(MsgType.DATA, 0, 1, empty_events(1), epoch=1)
    size = len(payload)
    n = args.latency_rounds
    rows = []
    for transport in args.transports:
        for raw in (True, False):
            ep = f"ipc://{tmp}/pp-{int(raw)}" if transport == "ipc" else f"tcp://127.0.0.1:{free_tcp_port()}"
            warm = 2000
            conn.send(("echo", ep, n + warm, raw))
            conn.recv()
            s = ctx.socket(zmq.PAIR)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(ep)
            out = np.zeros(n + warm, np.int64)
            if raw:
                err = B.raw_pingpong(s, out, size)
                assert err == 0, err
            else:
                send, recv, clock = s.send, s.recv, time.perf_counter_ns
                for i in range(n + warm):
                    t0 = clock()
                    send(payload, copy=True)
                    recv(copy=True)
                    out[i] = clock() - t0
            conn.recv()
            s.close()
            one_way = out[warm:] // 2
            p = percentiles(one_way)
            name = "tickwire path: libzmq from Cython, no GIL" if raw else "peer: pyzmq from Python"
            rows.append([f"{transport}  {name}", *(f"{v:.1f}" for v in p)])
    ctx.term()
    print(f"\none-way latency, {size}-byte message, ping-pong / 2, {n:,} round trips (µs)")
    table(rows, ["transport, path", "p50", "p90", "p99", "p99.9", "max"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="events per timed run [%(default)s]")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per contestant [%(default)s]")
    ap.add_argument("--sizes", default="1,16,64,256", help="events per message [%(default)s]")
    ap.add_argument("--transports", default="ipc,tcp", help="[%(default)s]")
    ap.add_argument("--latency-rounds", type=int, default=20_000, help="[%(default)s]")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--modes", default="queued,streaming", help="[%(default)s]")
    ap.add_argument("--settle", type=float, default=0.3,
                    help="seconds between the publisher's last send and the clock's start [%(default)s]")
    args, _ = ap.parse_known_args()
    args.sizes = [int(x) for x in args.sizes.split(",")]
    args.transports = [t for t in args.transports.split(",") if t]
    args.modes = [m for m in args.modes.split(",") if m]
    pinned = pin(1)
    print(f"feed benchmark: {describe_run(pinned)}; publisher/echo process on core 0; "
          f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()} ({os.path.basename(codec.load_libzmq())})")
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=helper, args=(child,), daemon=True)
    proc.start()
    try:
        summary = run_throughput(args, parent)
        if not args.no_latency:
            run_latency(args, parent)
    finally:
        parent.send(("quit",))
        proc.join(5)
    key = ("ipc", "streaming", 64) if ("ipc", "streaming", 64) in summary else next(
        (key for key in summary if key[0] == "ipc" and key[2] >= 16), None)
    if key is not None:
        got = summary[key]["drain"]
        print(f"\ntarget: >= {TARGET / 1e6:.0f} M events/s per core over ipc with batched messages: "
              f"{'met' if got >= TARGET else 'NOT met'} ({got / 1e6:.1f} M events/s, {key[1]}, {key[2]} events/message; "
              f"{summary[key]['ratio']:.1f}x the faster pyzmq loop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
