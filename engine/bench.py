"""``tickwire bench``: wire-to-signal latency at a constant offered rate, with its floors.

Open loop, wrk2-style. The stream (the real Binance capture, or a seeded synthetic market) is
encoded into wire messages before the clock starts; a C loop (:mod:`tickwire.ext.harness`) sends
message ``k`` at its *intended* time ``start + events_before(k) / rate`` and writes that time into
the header's ``send_time``. A consumer process attached to the signal ring stamps every signal on
receipt. For each signal, from the triggering event's channel and sequence number::

    wire_to_signal = receipt by the consumer - intended send time of the tick that caused it
    wire_queue     = ts_recv (the engine took the message out of libzmq) - intended send time
    engine         = ts_signal (the rule fired) - ts_recv
    ring_hop       = receipt - ts_signal   (rest of the batch, the ring push, the consumer's wake-up)

so a stall anywhere (publisher, socket queues, the engine's housekeeping) counts in full: no
coordinated omission. In the same run, on the same transport and cores:

- ``floor`` (the relay floor, what the targets are measured against): the same publisher and
  schedule to a bare C libzmq subscriber on the engine's core that passes each message which
  carried one of the target's signals straight into a signal ring, read by the same consumer
  loop, measured like the target (``floor_zmq_hop`` and ``floor_ring_hop`` its two hops).  The
  same messages, the same load on the other core, nothing in between.  (Signals come from the
  stream's large messages far more than from its average one, so a floor over every message
  is not the same population.);
- ``zmq_hop``: libzmq one-way from that subscriber over every message (receipt - send_time);
- ``ring_hop_floor``: records pushed into a broadcast ring from the engine's core at the target's
  signal rate, popped by the same consumer loop (receipt - push time), with the publisher idle;
  ``hops_sum``: zmq_hop + ring_hop_floor percentile by percentile (the floor as first defined);
- ``pyzmq_baseline``: what a quant writes today: a pyzmq receive loop, a Python dict book and a
  ``multiprocessing.Queue`` to a consumer process (a signal whenever the mid moves).

Targets: ``pipeline`` (default): one engine worker process (the daemon's ``Worker``, its loop and
housekeeping as the daemon runs them) without supervisor, writer or store; ``daemon``: the real
daemon (``tickwire run``) from ``--config``, with only the feed endpoint, the snapshot service
(off: the stream starts at sequence 1), the state directory and the run name replaced.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tickwire
from tickwire.engine.files import replace_file, replacing

__all__ = ["add_parser", "latency_arrays", "relay_plan", "run_bench", "compare", "parse_rate", "main"]

SCHEMA = 1
STAGES = ("wire_to_signal", "wire_queue", "engine", "ring_hop")
FLOORS = ("zmq_hop", "ring_hop_floor")
LEVELS = ("p50", "p90", "p99", "p99.9", "p99.99", "max")
HDR_LEVELS = (50.0, 90.0, 99.0, 99.9, 99.99)
WIRE_HEADER = struct.Struct("<IBBHHHIQqQII")
ENGINE_CORE, OTHER_CORE = 1, 0
SATURATED_P50_NS = 10_000_000      # --until-saturation: a wire-to-signal median past 10 ms is a queue


# -- small helpers -----------------------------------------------------------------------------

def parse_rate(text: str) -> float:
    """``"100k"``, ``"1M"``, ``"2.5e5"`` -> events/s."""
    t = str(text).strip().lower().replace("_", "").replace(",", "")
    mult = 1.0
    if t.endswith("k"):
        mult, t = 1e3, t[:-1]
    elif t.endswith("m"):
        mult, t = 1e6, t[:-1]
    try:
        v = float(t) * mult
    except ValueError:
        raise ValueError(f"not a rate: {text!r} (events/s, e.g. 100000, 100k, 1M)") from None
    if not 1 <= v <= MAX_RATE:
        # (inf was an OverflowError in the consumer, 1e9 arrays of tens of GB; 0.5 sent one message)
        raise ValueError(f"a rate must be at least 1 and at most {MAX_RATE:,.0f} events/s, got {text!r}")
    return v


#: The highest offered rate (events/s): twenty times what one core's engine takes.
MAX_RATE = 100e6


def _fmt_rate(r: float) -> str:
    return f"{r / 1e6:g}M" if r >= 1e6 else (f"{r / 1e3:g}k" if r >= 1e3 else f"{r:g}")


def _cores():
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        return cores[min(ENGINE_CORE, len(cores) - 1)], cores[0]
    return cores[0], cores[0]


def _pin(cpu) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass


def _say(text: str = "", end: str = "\n") -> None:
    print(text, end=end, flush=True)


# -- the stream ----------------------------------------------------------------------------------

class Stream:
    """Events, their messages (``bounds``: start indices plus the end) and each message's channel."""

    def __init__(self, name, instruments, events, bounds, channels_of_msg, nchannels):
        self.name = name
        self.instruments = instruments
        self.events = events
        self.bounds = bounds
        self.channels = channels_of_msg
        self.nchannels = nchannels

    def encode(self, epoch: int):
        """Payload bytes (one uint8 array), offsets and channels, for :class:`harness.Schedule`."""
        from tickwire.ext.codec import encode
        from tickwire.feeds.wire import MsgType

        parts, off = [], [0]
        ev = self.events
        for k in range(len(self.bounds) - 1):
            a, b = int(self.bounds[k]), int(self.bounds[k + 1])
            p = encode(int(MsgType.DATA), int(self.channels[k]), 0, ev[a:b], epoch=epoch)
            parts.append(p)
            off.append(off[-1] + len(p))
        buf = np.frombuffer(b"".join(parts), dtype=np.uint8).copy()
        return buf, np.asarray(off, np.int64), np.asarray(self.channels, np.uint16)


def _messages(events, chan_of_inst, batch: int):
    """Split into messages: one channel each, at most ``batch`` events (0: the exchange's own
    messages, by ``Flag.LAST``, capped at 1024). With ``batch``, each channel's events go in
    messages of ``batch`` (its last one fewer), in the order of their first events: an event
    stream that alternates channels (instrument i on i % channels) was cut at every change,
    1.55 events a message for ``--batch 16``. Returns ``(events, bounds, channel of each message)``
    (the events regrouped so, each channel's in its own order)."""
    from tickwire.ext.records import Flag

    n = len(events)
    ch = chan_of_inst[events["instrument"]]
    if batch and n:
        by_ch = np.argsort(ch, kind="stable")              # each channel's events, in their order
        first = np.flatnonzero(np.r_[True, ch[by_ch][1:] != ch[by_ch][:-1]])
        start = np.repeat(first, np.diff(np.r_[first, n]))  # where each event's channel begins in by_ch
        head = by_ch[start + ((np.arange(n) - start) // batch) * batch]   # its message's first event
        regroup = by_ch[np.lexsort((np.arange(n), head))]
        events, ch, head = events[regroup], ch[regroup], head[np.argsort(by_ch)][regroup]
        starts = np.flatnonzero(np.r_[True, head[1:] != head[:-1]])
        return events, np.append(starts, n).astype(np.int64), ch[starts]
    cap = batch or 1024
    cut = np.zeros(n + 1, bool)
    cut[0] = cut[n] = True
    cut[1:n] |= ch[1:] != ch[:-1]
    if not batch:
        cut[1:n] |= (events["flags"][:-1] & int(Flag.LAST)) != 0
    starts = np.flatnonzero(cut[:n])
    bounds = []
    for a, b in zip(starts, list(starts[1:]) + [n]):
        bounds.extend(range(int(a), int(b), cap))
    bounds.append(n)
    bounds = np.asarray(bounds, np.int64)
    return events, bounds, ch[bounds[:-1]]


def binance_stream(channels: int = 1, batch: int = 0, data_dir=None) -> Stream | None:
    """The Binance BTCUSDT depth capture (../shared/data), or None when it is not there."""
    from tickwire.feeds import captures

    path = captures.find_shared_data(captures.BINANCE_FILE) if data_dir is None \
        else Path(data_dir) / captures.BINANCE_FILE
    if path is None or not Path(path).exists():
        return None
    cap = captures.load_binance(path)
    chan_of = np.array([i.id % channels for i in cap.instruments], np.int64)
    ev, bounds, ch = _messages(cap.events, chan_of, batch)
    return Stream(f"binance {captures.BINANCE_FILE}", cap.instruments, ev, bounds, ch, channels)


def synthetic_stream(instruments, channels: int, events: int = 200_000, batch: int = 16, seed: int = 1) -> Stream:
    """A seeded synthetic market over ``instruments`` (L2: level updates, L3: order flow)."""
    from tickwire.feeds import synthetic

    parts = []
    for kind, gen in (("L2", synthetic.l2_updates), ("L3", synthetic.l3_orders)):
        ids = [i.id for i in instruments if i.book == kind]
        if not ids:
            continue
        ev = gen(max(1, events * len(ids) // len(instruments)), seed=seed, instruments=len(ids))
        ev["instrument"] = np.asarray(ids, np.uint32)[ev["instrument"]]
        parts.append(ev)
    ev = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if len(parts) > 1:
        ev = ev[np.argsort(ev["ts_event"], kind="stable")]
    chan_of = np.zeros(max(i.id for i in instruments) + 1, np.int64)
    for i in instruments:
        chan_of[i.id] = i.id % channels
    ev, bounds, ch = _messages(ev, chan_of, batch)
    return Stream(f"synthetic (seed {seed})", list(instruments), ev, bounds, ch, channels)


# -- the latency arithmetic ----------------------------------------------------------------------

def latency_arrays(pub: dict, sig: dict, chan_of_inst, t_from: int = 0) -> dict:
    """Per-signal latencies (ns) from the publisher's record and the consumer's.

    ``pub``: per message sent, ``chan``, ``seq`` (first), ``count``, ``intended`` (send time).
    ``sig``: per signal received, ``seq``, ``inst``, ``ts_recv``, ``ts_signal``, ``receipt``.
    Signals whose tick was meant to leave before ``t_from`` (the warm-up) are left out, and
    so are signals whose tick is not in ``pub`` (counted in ``unmatched``).

    Returns ``{"wire_to_signal", "wire_queue", "engine", "ring_hop": int64 arrays,
    "intended": the ticks' intended send times, "unmatched": int}``.
    """
    msg = signal_messages(pub, sig, chan_of_inst)
    intended = np.where(msg >= 0, pub["intended"][np.maximum(msg, 0)] if len(pub["intended"]) else -1, -1)
    matched = msg >= 0
    keep = matched & (intended >= t_from)
    rec, ts_recv, ts_sig = sig["receipt"][keep], sig["ts_recv"][keep], sig["ts_signal"][keep]
    it = intended[keep]
    return {"wire_to_signal": rec - it, "wire_queue": ts_recv - it, "engine": ts_sig - ts_recv,
            "ring_hop": rec - ts_sig, "intended": it, "unmatched": int((~matched).sum())}


def signal_messages(pub: dict, sig: dict, chan_of_inst) -> np.ndarray:
    """For each signal, the index in ``pub`` of the message that carried its tick (-1: none):
    the message of the tick's channel whose seq range (first .. first + count) holds it."""
    chan_of_inst = np.asarray(chan_of_inst)
    n = len(sig["seq"])
    out = np.full(n, -1, np.int64)
    s_chan = chan_of_inst[np.asarray(sig["inst"], np.int64)] if n else np.zeros(0, np.int64)
    for c in np.unique(s_chan):
        idx = np.flatnonzero(pub["chan"] == c)
        first = pub["seq"][idx].astype(np.int64)
        cnt = pub["count"][idx].astype(np.int64)
        order = np.argsort(first, kind="stable")
        idx, first, cnt = idx[order], first[order], cnt[order]
        sel = np.flatnonzero(s_chan == c)
        q = sig["seq"][sel].astype(np.int64)
        k = np.searchsorted(first, q, side="right") - 1
        ok = (k >= 0) & (q < first[np.maximum(k, 0)] + cnt[np.maximum(k, 0)])
        out[sel[ok]] = idx[k[ok]]
    return out


def relay_plan(pub: dict, sig: dict, chan_of_inst) -> dict:
    """What the relay floor passes on: for each signal of the target, the key of its message
    (channel << 48 | first seq; the publisher's schedule sends the same messages with the same
    seqs in every run) and the signal's own seq and instrument, sorted by key."""
    msg = signal_messages(pub, sig, chan_of_inst)
    ok = msg >= 0
    keys = (pub["chan"][msg[ok]].astype(np.uint64) << np.uint64(48)) | pub["seq"][msg[ok]].astype(np.uint64)
    order = np.argsort(keys, kind="stable")
    return {"keys": np.ascontiguousarray(keys[order]),
            "seq": np.ascontiguousarray(np.asarray(sig["seq"])[ok][order], dtype=np.uint64),
            "inst": np.ascontiguousarray(np.asarray(sig["inst"])[ok][order], dtype=np.uint32)}


#: the largest latency a histogram holds (2**36 - 1 ns, 68.7 s): a longer one is recorded as it
#: and counted (``beyond_range``; dropped, a 75 s stall's samples left every percentile unsaid)
TOP_NS = (1 << 36) - 1


def _clamped(values) -> np.ndarray:
    """``values`` (ns) as recorded: below 0 as 0 (a wall clock stepped back), past ``TOP_NS`` as it."""
    return np.clip(np.ascontiguousarray(values, dtype=np.int64), 0, TOP_NS)


def _recorder(values):
    from tickwire.ext.hdr import Recorder

    r = Recorder()
    if len(values):
        r.record_many(_clamped(values))
    return r


def _summary(rec) -> dict:
    from tickwire.engine.latency import percentiles

    p = percentiles(rec, HDR_LEVELS)
    return {"count": p["count"], "min": p["min"], **{k: p[k] for k in LEVELS}, "mean": p["mean"]}


# -- processes ---------------------------------------------------------------------------------------

def _until(until_ns) -> int:
    """A bench child's deadline: an int, or a shared value (``mp.Value("q")``) the parent sets
    once every part is ready, waited for here. The schedule starts after that: a deadline fixed
    before the children started was charged to the target as wire latency (199 ms at p50), or
    cut the end off a floor whose subscriber was slow to start (77 of 100 samples, exit 0)."""
    if isinstance(until_ns, int):
        return until_ns
    while not until_ns.value:
        time.sleep(0.001)
    return int(until_ns.value)


def _shared_deadline():
    """A deadline for :func:`_until`, set later (``.value = ns``)."""
    return mp.get_context("spawn").Value("q", 0, lock=False)


def _consumer_proc(names, cpu, until_ns, out_path, expected, start_delay, ready):
    """Attach the signal rings and stamp every signal until ``until_ns``; save them.
    ``expected``: signals the run should bring, so its arrays need not grow while it runs (a
    copy of the arrays mid-run would stall the consumer and show in the ring hop's tail)."""
    from tickwire.ext import SIGNAL_DTYPE
    from tickwire.ext import harness
    from tickwire.ext.ring import Ring

    _pin(cpu)
    time.sleep(start_delay)
    rings = [Ring.attach(n, SIGNAL_DTYPE, start="next", wait=10.0) for n in names]
    cap = max(1 << 16, int(expected))
    cols = {"seq": np.empty(cap, np.uint64), "inst": np.empty(cap, np.uint32), "ts_recv": np.empty(cap, np.int64),
            "ts_signal": np.empty(cap, np.int64), "receipt": np.empty(cap, np.int64)}
    for v in cols.values():
        v.fill(0)                                 # (the pages touched now, not during the run)
    ready.set()
    until_ns = _until(until_ns)
    i = 0
    while True:
        if i == cap:
            cap *= 2
            for k, v in cols.items():
                cols[k] = np.resize(v, cap)
        i = harness.consume(rings, until_ns, cols["seq"], cols["inst"], cols["ts_recv"], cols["ts_signal"],
                            cols["receipt"], start=i)
        if i < cap and harness.now_ns() > until_ns or all(r.eof for r in rings):
            break
    missed = int(sum(r.missed for r in rings))
    np.savez(out_path, missed=missed, **{k: v[:i] for k, v in cols.items()})


def _worker_proc(cfg_path, run_dir, ready):
    """The pipeline target: the daemon's engine Worker in one process, no supervisor or writer.
    SIGTERM stops it (its status file, written at the stop, has its counts). (A multiprocessing
    Event to stop it hung the bench for ever when the worker had died: setting it waits for its
    dead waiter.)"""
    from tickwire.engine import config as configmod
    from tickwire.engine.worker import Worker, pin

    cfg = configmod.load(cfg_path)
    pin(cfg.workers[0].cpu)
    w = Worker(cfg, 0, Path(run_dir))
    signal.signal(signal.SIGTERM, lambda *_: setattr(w, "stop", True))
    ready.set()
    w.run()


def _zmq_sub_proc(endpoint, channels, cpu, io_cpu, spin, until_ns, out_path, relay, expected, io, ready):
    """The ZeroMQ floor: a C receive loop on the engine's core, its I/O thread where the engine's is.
    ``relay`` (ring name, relay_plan()): also the relay floor, passing the target's messages on
    into that ring."""
    import zmq

    from tickwire.ext import SIGNAL_DTYPE, harness
    from tickwire.ext.ring import Ring
    from tickwire.feeds import wire
    from tickwire.feeds.iothread import io_context

    _pin(cpu)
    ring = plan = None
    if relay is not None:
        ring = Ring.attach(relay[0], SIGNAL_DTYPE, role="producer")
        plan = relay[1]
    # ``io``: the target's feeds.io_rt_priority and feeds.hwm, so that the floor's I/O thread and
    # queue are the target's (a config's SCHED_FIFO I/O thread against the floor's normal one
    # compared two setups: an adversarial pass)
    rt_priority, hwm = io
    ctx, _ = io_context([io_cpu], rt_priority)
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.RCVTIMEO, 50)
    for c in channels:
        s.setsockopt(zmq.SUBSCRIBE, wire.topic(c))
    s.connect(endpoint)
    cap = max(1 << 16, int(expected))            # (room for the whole run: no growing while it runs)
    cols = [np.empty(cap, np.uint64), np.empty(cap, np.uint16), np.empty(cap, np.int64), np.empty(cap, np.int64)]
    for v in cols:
        v.fill(0)                                 # (the pages touched now, not during the run)
    ready.set()
    until_ns = _until(until_ns)
    i = 0
    while harness.now_ns() <= until_ns:
        if i == cap:
            cap *= 2
            cols = [np.resize(v, cap) for v in cols]
        if ring is None:
            i = harness.subscribe(s, until_ns, *cols, start=i, spin=spin)
        else:
            i = harness.subscribe(s, until_ns, *cols, start=i, spin=spin, relay=ring, relay_keys=plan["keys"],
                                  relay_seq=plan["seq"], relay_inst=plan["inst"])
    s.close(0)
    ctx.term()
    if ring is not None:
        ring.close()
    np.savez(out_path, seq=cols[0][:i], chan=cols[1][:i], send=cols[2][:i], recv=cols[3][:i],
             cpus=np.array(sorted(os.sched_getaffinity(0))))


def _ring_producer_proc(name, cpu, start_ns, interval_ns, n, ready):
    from tickwire.ext import SIGNAL_DTYPE
    from tickwire.ext import harness
    from tickwire.ext.ring import Ring

    _pin(cpu)
    ring = Ring.attach(name, SIGNAL_DTYPE, role="producer")
    ready.set()
    harness.ring_paced(ring, _until(start_ns), interval_ns, n)
    ring.close()


def _baseline_proc(endpoint, channels, cpu, io_cpu, until_ns, queue, counts, ready):
    """What a quant writes today: pyzmq recv loop, a dict book in Python (best prices kept as it
    goes), a multiprocessing queue; one signal per exchange message that moved the best prices.
    Its libzmq I/O thread on ``io_cpu``, as the target's and the floor's (it inherited the loop's
    core, and shared it). ``counts`` (a shared array of 2): set at its end to the messages it
    received and the signals it put in the queue (what it did not get to by its deadline was
    left out unsaid)."""
    import zmq

    from tickwire.ext.records import EVENT_DTYPE
    from tickwire.feeds.iothread import io_context

    _pin(cpu)
    ctx, _ = io_context([io_cpu], 0)
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 100_000)
    for c in channels:
        s.setsockopt(zmq.SUBSCRIBE, b"tw.%05d." % c)
    s.connect(endpoint)
    books = {}
    ready.set()
    until_ns = _until(until_ns)
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    received = put = 0
    while time.time_ns() <= until_ns:
        if not poller.poll(50):
            continue
        while True:
            try:
                _topic, payload = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            recv = time.time_ns()
            received += 1
            h = WIRE_HEADER.unpack_from(payload)
            send_time, seq = h[8], h[7]
            evs = np.frombuffer(payload, EVENT_DTYPE, offset=48)
            moved = set()
            for inst, kind, side, price, qty, flags in zip(
                    evs["instrument"].tolist(), evs["kind"].tolist(), evs["side"].tolist(),
                    evs["price"].tolist(), evs["qty"].tolist(), evs["flags"].tolist()):
                book = books.get(inst)
                if book is None:                   # [bids, asks, best bid, best ask, last (bid, ask)]
                    book = books[inst] = [{}, {}, None, None, None]
                if kind <= 3 and side <= 1:
                    levels = book[side]
                    if kind == 3 or qty == 0:
                        if levels.pop(price, None) is not None and price == book[2 + side]:
                            book[2 + side] = (max(levels) if side == 0 else min(levels)) if levels else None
                    else:
                        levels[price] = qty
                        best = book[2 + side]
                        if best is None or (price > best if side == 0 else price < best):
                            book[2 + side] = price
                elif kind == 5 or (kind == 6 and flags & 4):   # CLEAR, SNAPSHOT_BEGIN
                    book[0].clear(), book[1].clear()
                    book[2] = book[3] = None
                if flags & 1 and (book[2], book[3]) != book[4]:   # end of an exchange message
                    book[4] = (book[2], book[3])
                    moved.add(inst)
            for inst in moved:
                queue.put((send_time, seq, recv))
                put += 1
    counts[0], counts[1] = received, put
    queue.put(None)
    s.close(0)
    ctx.term()


def _baseline_consumer_proc(queue, cpu, until_ns, out_path, ready):
    _pin(cpu)
    ready.set()
    until_ns = _until(until_ns)
    send, recv, rec = [], [], []
    while True:
        try:
            item = queue.get(timeout=0.1)
        except Exception:
            if time.time_ns() > until_ns:
                break
            continue
        if item is None:
            break
        t = time.time_ns()
        if t > until_ns:                             # a baseline that fell behind: stop reading
            break
        send.append(item[0])
        recv.append(item[2])
        rec.append(t)
    np.savez(out_path, send=np.asarray(send, np.int64), recv=np.asarray(recv, np.int64),
             receipt=np.asarray(rec, np.int64))


# -- one measurement -----------------------------------------------------------------------------------

class Publisher:
    """The paced publisher: pre-encoded frames, a PUB socket, the C send loop (this process)."""

    def __init__(self, stream: Stream, endpoint: str):
        import zmq

        from tickwire.feeds import wire

        self.stream = stream
        self.endpoint = endpoint
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.sock.bind(endpoint)
        self._claim = wire.ipc_claim(self.sock)
        self.epoch = wire.new_epoch()
        self.frames = stream.encode(self.epoch)
        ts = stream.events["ts_event"]
        self.ts_span = int(ts.max() - ts.min()) + 1 if len(ts) else 0

    def wait_subscribers(self, n: int, timeout: float = 60.0) -> None:
        """Until ``n`` subscribers cover every channel (an XPUB sees their subscriptions)."""
        import zmq

        want = {b"tw.%05d." % c for c in set(int(c) for c in self.stream.channels)}
        seen: dict = {}
        end = time.monotonic() + timeout
        while not want or min(seen.get(t, 0) for t in want) < n:
            left = end - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no subscriber on {self.endpoint} after {timeout:.0f} s (the target did not "
                                   "connect: see its log)")
            if self.sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                msg = self.sock.recv()
                if msg[:1] == b"\x01" and msg[1:] in want:
                    seen[msg[1:]] = seen.get(msg[1:], 0) + 1

    def run(self, rate: float, start_ns: int, seconds: float, label: str, progress: bool = True,
            stall_at: int = -1, stall_ns: int = 0) -> dict:
        from tickwire.ext import harness

        buf, off, ch = self.frames
        sched = harness.Schedule(buf, off, ch, start_ns, rate, self.ts_span)
        per_msg = max(1.0, self.stream.bounds[-1] / (len(self.stream.bounds) - 1))
        cap = int(seconds * rate / per_msg * 1.05) + len(off) + 16
        out = {"chan": np.empty(cap, np.uint16), "seq": np.empty(cap, np.uint64), "count": np.empty(cap, np.uint32),
               "intended": np.empty(cap, np.int64), "sent": np.empty(cap, np.int64)}
        end_ns = start_ns + int(seconds * 1e9)
        t_wall = time.monotonic()
        next_line = t_wall + 5.0
        give_up_ns, gave_up = int((2.0 + 0.5 * seconds) * 1e9), None
        while True:
            # at most a quarter second of the schedule a call (one far behind it would send until
            # caught up, and the check below would come too late)
            due = sched.intended(sched.sent)           # the next message's (a low rate: far ahead)
            # (bounded by the schedule, not the clock: now + 250 ms, when far behind, is the whole
            # backlog, and the give-up check came after it: 60M offered, 4 s run, 29 s of sending)
            until = min(end_ns, due + 250_000_000)
            r = sched.publish(self.sock, until, out["chan"], out["seq"], out["count"], out["intended"], out["sent"],
                              stall_at=stall_at, stall_ns=stall_ns)
            if r < 0:
                raise RuntimeError("libzmq refused a send")
            n = sched.sent
            tty = sys.stdout.isatty()
            if progress and n and (tty or time.monotonic() >= next_line):
                next_line = time.monotonic() + 5.0       # not a terminal: a line every 5 s
                el = max((harness.now_ns() - start_ns) / 1e9, 1e-9)
                ev = int(out["count"][:n].sum())
                _say(f"{chr(13) if tty else ''}  {label}: {min(el, seconds):5.1f}/{seconds:.0f} s  offered "
                     f"{_fmt_rate(rate)} ev/s  achieved {ev / el / 1e3:8.1f}k ev/s  late msgs {sched.late:,}  ",
                     end="" if tty else "\n")
            if until >= end_ns or n >= cap:
                break
            behind = harness.now_ns() - sched.intended(n)    # the next message's lateness
            if n and behind > give_up_ns:
                # far behind its schedule: the rest would take minutes to send (30 M offered, 5 M
                # reached: 35 s for a 5 s run) and measure the publisher's queue, nothing more
                gave_up = f"the publisher fell {behind / 1e9:.1f} s behind its schedule and stopped"
                break
            if time.monotonic() - t_wall > seconds + 60:
                # (stopped unsaid, the rest of the schedule left out of the figures, exit 0: a review)
                gave_up = (f"the publisher was still sending {time.monotonic() - t_wall - seconds:.0f} s after its "
                           f"{seconds:g} s schedule and stopped")
                break
        if progress and sys.stdout.isatty():
            _say()
        n = sched.sent
        res = {k: v[:n] for k, v in out.items()}
        sent_ev = int(res["count"].sum())
        span = (res["sent"][-1] - res["intended"][0]) / 1e9 if n > 1 else seconds
        res["stats"] = {"messages": n, "events": sent_ev, "offered_rate": rate,
                        "achieved_rate": sent_ev / max(span, 1e-9),
                        "late_messages": int(sched.late), "max_late_ns": int(sched.max_late_ns),
                        "late_p99_ns": int(np.percentile(res["sent"] - res["intended"], 99)) if n else 0}
        if gave_up:
            res["stats"]["gave_up"] = gave_up
        return res

    def close(self):
        from tickwire.feeds import wire

        self.sock.close(0)
        self.ctx.term()
        wire.ipc_release(self._claim)


def _child(target, *args):
    """A bench child: Ctrl-C at the terminal reaches the whole process group, and the parent
    stops each child itself (it printed a KeyboardInterrupt traceback per child). It dies with
    the bench, kill -9 included (:mod:`tickwire.engine.lifeline`): an engine worker left by a
    killed bench ran on for good, spinning on the engine's core, its rings in /dev/shm."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from tickwire.engine import lifeline

    lifeline.bind_to_parent()
    target(*args)


def _spawn(target, *args):
    from tickwire.engine import lifeline

    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_child, args=(target, *args, ready), daemon=True)
    # (the spawned interpreter inherits this environment at start(); _child reads and removes it)
    os.environ[lifeline.ENV] = lifeline.child_env(signal.SIGTERM, {})[lifeline.ENV]
    try:
        p.start()
    finally:
        os.environ.pop(lifeline.ENV, None)
    return p, ready


def _wait_ready(proc, ready, what, timeout=60.0):
    end = time.monotonic() + timeout
    while not ready.wait(0.1):
        if not proc.is_alive():
            raise RuntimeError(f"{what} exited with status {proc.exitcode} before it was ready")
        if time.monotonic() > end:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


class Run:
    """Settings of one bench invocation."""

    def __init__(self, args, stream: Stream, work: Path, cores: tuple[int, int]):
        self.args = args
        self.stream = stream
        self.work = work
        # (from the caller, which asks before it pins itself to the other core: asked here, the
        # affinity would already be that one core, and every process would share it)
        self.engine_core, self.other_core = cores
        from tickwire.engine.config import private_ipc_dir

        self.ipc = private_ipc_dir() / f"bench-{os.getpid()}"
        self.chan_of_inst = np.zeros(max(i.id for i in stream.instruments) + 1, np.int64)
        for i in stream.instruments:
            self.chan_of_inst[i.id] = i.id % stream.nchannels
        self.channels = sorted(set(int(c) for c in stream.channels))
        self.signals_per_event = 0.01            # the target's, learnt from its last run
        self.floor_io = (0, 100_000)             # the target's feeds.io_rt_priority and hwm, once it ran

    def endpoint(self, tag):
        return f"ipc://{self.ipc}-{tag}"

    # the target: the engine worker, or the daemon
    def target_config(self, tag: str):
        from tickwire.engine import config as configmod
        from tickwire.engine.demo import demo_raw_config

        a = self.args
        run_dir = self.work / tag
        if a.config:
            raw, base = configmod.read_raw(a.config)
        else:
            raw = demo_raw_config(run_dir, instruments=1, channels=self.stream.nchannels, run=tag)
            raw["instruments"] = [{"id": i.id, "symbol": i.symbol, "tick_size": format(i.tick_size, "f"),
                                   "lot_size": format(i.lot_size, "f"), "book": i.book}
                                  for i in self.stream.instruments]
            raw["workers"] = [{"name": "w0", "cpu": self.engine_core, "instruments": "all"}]
            # rules that fire often on the capture (~0.2% of its events sampled per message, ~0.7%
            # per event), so the tail has samples
            raw["rules"] = [{"kind": "microprice", "enter": 0.3, "exit": 0.25},
                            {"kind": "imbalance", "enter": 0.5, "exit": 0.45},
                            {"kind": "zscore", "enter": 2.0, "exit": 0.5, "min_count": 100}]
            raw["stats"]["imbalance_depth"] = 1
            raw["store"] = {"enabled": False}
            ex = configmod.load(Path(configmod.__file__).with_name("tickwire.example.toml"))
            raw["stats"]["sample"] = ex.stats.sample
            raw["feeds"]["busy_poll"] = ex.feeds.busy_poll if a.busy_poll is None else a.busy_poll
            raw["feeds"]["io_rt_priority"] = ex.feeds.io_rt_priority
            raw["feeds"]["io_cpu"] = self.other_core
            raw["engine"]["timing_every"] = ex.timing_every
            raw["metrics"]["port"] = 0
            base = None
        raw.setdefault("daemon", {})
        raw["daemon"]["state_dir"] = str(run_dir)
        raw["daemon"]["run"] = f"bench{os.getpid()}-{tag}"   # unique: it names the rings
        # nothing of the bench reaches what the config's own daemon writes: its log file, its HDR
        # folder (a starting worker moved the running daemon's w0.hlog aside) and its store (the
        # synthetic stream's ticks and signals were inserted into the configured store.dsn): the
        # scratch directory's embedded store instead (an adversarial pass)
        raw["daemon"].pop("log_file", None)
        raw.setdefault("metrics", {}).pop("hdr_dir", None)
        for key in ("dsn", "cluster", "username", "password"):
            raw.setdefault("store", {}).pop(key, None)
        raw.setdefault("feeds", {})
        raw["feeds"]["endpoints"] = [self.endpoint(tag)]
        raw["feeds"]["snapshot"] = ""
        raw["feeds"]["channels"] = self.stream.nchannels
        raw.setdefault("metrics", {})["port"] = 0
        if a.python_loop:
            raw["feeds"]["fast_loop"] = False
        if a.busy_poll is not None:
            # (with --config, --busy-poll / --no-busy-poll were taken and ignored: the target, the
            # zmq floor and summary.json all ran with the config's feeds.busy_poll, nothing said)
            raw["feeds"]["busy_poll"] = a.busy_poll
        if a.target == "pipeline":
            raw.setdefault("store", {})["enabled"] = False      # no writer in this target
        run_dir.mkdir(parents=True, exist_ok=True)
        path = self.work / f"{tag}.toml"
        path.write_text(configmod.to_toml(raw))
        cfg = configmod.from_dict(raw, base_dir=base)
        return path, cfg

    def measure_target(self, rate: float, tag: str, pub: Publisher) -> dict:
        from tickwire.engine.worker import fresh_ring_names, new_ring_token, ring_names, write_ring_names
        from tickwire.ext import SIGNAL_DTYPE
        from tickwire.ext.ring import Ring

        a = self.args
        path, cfg = self.target_config(tag)
        self.busy_poll = bool(cfg.feeds.busy_poll)        # what the target runs with (the floor's, the summary's)
        self.floor_io = (cfg.feeds.io_rt_priority, cfg.feeds.hwm)    # (the floor's I/O thread and queue too)
        self.event_clock = cfg.clock == "event"           # (the engine stage is then 0 by construction)
        procs, rings, daemon, worker, daemon_rc = [], [], None, None, None
        try:
            if a.target == "daemon":
                from tickwire.engine import lifeline

                log = open(self.work / f"{tag}.log", "w")
                # (SIGTERM at the bench's death, kill -9 included: the daemon stops and removes its
                # rings; it ran on for good, its worker on the engine's core)
                daemon = subprocess.Popen([sys.executable, "-P", "-m", "tickwire", "run", "--config", str(path)],
                                          stdout=log, stderr=subprocess.STDOUT, env=lifeline.child_env(signal.SIGTERM))
            else:
                run_dir = self.work / tag                  # the worker finds its rings in its rings.json
                run_dir.mkdir(parents=True, exist_ok=True)
                token = new_ring_token()
                pairs = [fresh_ring_names(cfg, i, token) for i in range(len(cfg.workers))]
                write_ring_names(run_dir, pairs)
                rings = [Ring.create(n, SIGNAL_DTYPE, cfg.rings.signals_capacity, "broadcast", role="none")
                         for _, n in pairs]
                from tickwire.ext import EVENT_DTYPE

                rings.append(Ring.create(pairs[0][0], EVENT_DTYPE, 1 << 12, "blocking", role="none"))
                worker, ready = _spawn(_worker_proc, str(path), str(self.work / tag))
                p = worker
                procs.append(p)
                _wait_ready(p, ready, "the engine worker")
            # each channel is one worker's (whole channels per worker): one subscriber each (the
            # number of workers here waited for ever with two)
            pub.wait_subscribers(1, timeout=120 if daemon else 60)
            # the daemon records its rings' names (random per run) in its run directory's rings.json
            names = [ring_names(cfg.state_dir / cfg.run if daemon else self.work / tag, i)[1]
                     for i in range(len(cfg.workers))]
            out = self.work / f"{tag}-signals.npz"
            # room for the signals the last target run's share of its events would bring here
            expected = 1.5 * self.signals_per_event * rate * (a.warmup + a.duration + a.drain)
            shared_until = _shared_deadline()
            c, ready = _spawn(_consumer_proc, names, self.other_core, shared_until, str(out), expected,
                              a.consumer_start_delay)
            procs.append(c)
            _wait_ready(c, ready, "the signal consumer")
            # the schedule starts once every part of the target is ready, as the floors' do
            start = time.time_ns() + 300_000_000
            until = start + int((a.warmup + a.duration + a.drain) * 1e9)
            shared_until.value = until
            pr = pub.run(rate, start, a.warmup + a.duration, f"{a.target:8s} {_fmt_rate(rate):>5s}",
                         progress=not a.quiet, stall_at=a.stall_at, stall_ns=int(a.stall_ms * 1e6))
            c.join(timeout=a.drain + 30)
            if c.exitcode != 0 or not out.exists():
                raise BenchError(f"the signal consumer {_ended(c.exitcode)} before it saved what it received: "
                                 f"nothing to measure at {_fmt_rate(rate)} ev/s")
            sig = dict(np.load(out))
        except RuntimeError as exc:                   # a part that did not start, or did not finish
            tail = _log_tail(self.work / f"{tag}.log") if daemon is not None else ""
            raise BenchError(f"the target at {_fmt_rate(rate)} ev/s: {exc}"
                             + (f"\n  the daemon's log ended:\n{tail}" if tail else "")) from None
        finally:
            if worker is not None and worker.is_alive():
                worker.terminate()                     # (SIGTERM: it stops and writes its counts)
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon_rc = daemon.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    daemon.kill()
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
            for r in rings:
                if r is not None:
                    r.close()
        if pr["stats"]["events"]:
            self.signals_per_event = max(1e-4, len(sig["seq"]) / pr["stats"]["events"])
        if a.keep:                                   # the publisher's record beside the signals
            np.savez(self.work / f"{tag}-pub.npz", **{k: pr[k] for k in ("chan", "seq", "count", "intended", "sent")})
        lat = latency_arrays(pr, sig, self.chan_of_inst, t_from=start + int(a.warmup * 1e9))
        # where the engine ran and what it did, as its worker saw it (its status file, written
        # again at exit)
        run_dir = cfg.state_dir / cfg.run if daemon else self.work / tag
        st = _workers_status(run_dir, len(cfg.workers))
        loss = target_losses(pr["stats"]["events"], int(len(sig["seq"])) + int(sig["missed"]), st,
                             worker.exitcode if worker is not None else None, daemon_rc, run_dir,
                             missed=int(sig["missed"]))
        if pr["stats"].get("gave_up"):
            loss.insert(0, _gave_up_line(pr, rate, start, a.warmup, a.duration))
        return {"publisher": pr["stats"], "signals": int(len(sig["seq"])), "missed": int(sig["missed"]),
                "unmatched": lat["unmatched"], "lat": lat, "relay": relay_plan(pr, sig, self.chan_of_inst),
                "cpus": st.get("affinity"), "cpus_configured": [w.cpu for w in cfg.workers], "loss": loss}

    def measure_zmq_floor(self, rate: float, pub: Publisher, tag: str, busy: bool, plan: dict | None = None) -> dict:
        """The libzmq hop of every message; with ``plan`` (relay_plan() of the target's run) also
        the relay floor: the same subscriber passes the messages that carried the target's
        signals into a signal ring, read by the target's consumer loop on the same core, all
        while the publisher sends the whole stream (latency_arrays() of it under "relay")."""
        from tickwire.ext import SIGNAL_DTYPE
        from tickwire.ext.ring import Ring

        a = self.args
        out = self.work / f"{tag}-zmq.npz"
        until = _shared_deadline()                     # set once every part is ready
        ring = c = None
        relay = None
        sig_out = self.work / f"{tag}-relay.npz"
        procs = []
        try:
            if plan is not None and len(plan["keys"]):
                name = f"tw-bench-{os.getpid()}-{tag}-relay"
                ring = Ring.create(name, SIGNAL_DTYPE, 1 << 16, "broadcast", role="none", replace=True)
                c, cready = _spawn(_consumer_proc, [name], self.other_core, until, str(sig_out),
                                   len(plan["keys"]) + 1024, 0.0)
                procs.append(c)
                _wait_ready(c, cready, "the relay's consumer")
                relay = (name, plan)
            per_msg = max(1.0, self.stream.bounds[-1] / (len(self.stream.bounds) - 1))
            expected = (a.warmup + a.duration + a.drain) * rate / per_msg * 1.2
            p, ready = _spawn(_zmq_sub_proc, pub.endpoint, self.channels, self.engine_core, self.other_core, busy,
                              until, str(out), relay, expected, self.floor_io)
            procs.append(p)
            _wait_ready(p, ready, "the libzmq subscriber")
            pub.wait_subscribers(1)
            start = time.time_ns() + 200_000_000
            until.value = start + int((a.warmup + a.duration + a.drain) * 1e9)
            pr = pub.run(rate, start, a.warmup + a.duration, f"{'zmq hop':8s} {_fmt_rate(rate):>5s}",
                         progress=not a.quiet)
            p.join(timeout=a.drain + 30)
            if c is not None:
                c.join(timeout=a.drain + 30)
        finally:
            for x in procs:
                if x.is_alive():
                    x.kill()
            if ring is not None:
                ring.close()
        if not out.exists():
            raise RuntimeError("the libzmq subscriber did not finish")
        z = np.load(out)
        keep = z["send"] >= start + int(a.warmup * 1e9)
        res = {"lat": z["recv"][keep] - z["send"][keep], "messages": int(keep.sum()),
               "cpus": z["cpus"].tolist() if "cpus" in z.files else None, "publisher": pr["stats"], "loss": []}
        # nothing left out unsaid, as for the target: a subscriber or relay consumer that fell
        # behind past the drain lost its slowest samples, and the floor read lower (exit 0)
        if pr["stats"].get("gave_up"):
            res["loss"].append(_gave_up_line(pr, rate, start, a.warmup, a.duration))
        sig = None
        if relay is not None:
            if not sig_out.exists():
                res["loss"].append("the relay's consumer saved nothing (it did not finish): no relay floor")
            else:
                sig = dict(np.load(sig_out))
                res["relay"] = latency_arrays(pr, sig, self.chan_of_inst, t_from=start + int(a.warmup * 1e9))
        res["loss"] += floor_losses(int(pr["stats"]["messages"]), z, plan if sig is not None else None, sig)
        return res

    def measure_ring_floor(self, records_per_s: float, tag: str) -> dict:
        """The ring hop alone: records pushed from the engine's core at ``records_per_s`` (the
        target's signal rate), popped by the consumer loop on the other core."""
        from tickwire.ext import SIGNAL_DTYPE
        from tickwire.ext.ring import Ring

        a = self.args
        name = f"tw-bench-{os.getpid()}-{tag}"
        interval = max(1000, int(1e9 / max(records_per_s, 10.0)))
        n = int((a.warmup + a.duration) * 1e9 / interval)
        ring = Ring.create(name, SIGNAL_DTYPE, 1 << 16, "broadcast", role="none", replace=True)
        procs = []
        try:
            # both set once both are ready (fixed before they started, a slow start cut the run short)
            shared_start, until = _shared_deadline(), _shared_deadline()
            out = self.work / f"{tag}-ring.npz"
            c, cready = _spawn(_consumer_proc, [name], self.other_core, until, str(out), n + 1024, 0.0)
            procs.append(c)
            _wait_ready(c, cready, "the ring consumer")
            p, pready = _spawn(_ring_producer_proc, name, self.engine_core, shared_start, interval, n)
            procs.append(p)
            _wait_ready(p, pready, "the ring producer")
            start = time.time_ns() + 200_000_000
            until.value = start + int((a.warmup + a.duration + a.drain) * 1e9)
            shared_start.value = start
            if not a.quiet:
                _say(f"  {'ring hop':8s}: {n:,} records, one every {interval / 1e3:.1f} us (the target's signal rate"
                     f"{', raised to 10 a second' if records_per_s < 10 else ''}) ...")
            p.join(timeout=a.warmup + a.duration + 60)
            c.join(timeout=a.drain + 30)
        finally:
            for x in procs:
                if x.is_alive():
                    x.kill()
            ring.close()
        if not out.exists():
            raise RuntimeError("the ring consumer did not finish")
        s = np.load(out)
        keep = s["ts_recv"] >= start + int(a.warmup * 1e9)
        return {"lat": s["receipt"][keep] - s["ts_signal"][keep], "records": int(keep.sum()),
                "loss": ring_floor_losses(n, s)}

    def measure_baseline(self, rate: float, pub: Publisher, tag: str) -> dict:
        a = self.args
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        out = self.work / f"{tag}-baseline.npz"
        until, until_read = _shared_deadline(), _shared_deadline()     # set once both are ready
        counts = ctx.Array("q", 2, lock=False)
        counts[0] = counts[1] = -1
        c, cready = _spawn(_baseline_consumer_proc, q, self.other_core, until_read, str(out))
        p, pready = _spawn(_baseline_proc, pub.endpoint, self.channels, self.engine_core, self.other_core, until, q,
                           counts)
        try:
            _wait_ready(c, cready, "the baseline consumer")
            _wait_ready(p, pready, "the pyzmq baseline")
            pub.wait_subscribers(1)
            start = time.time_ns() + 200_000_000
            until.value = start + int((a.warmup + a.duration + a.drain) * 1e9)
            until_read.value = until.value + 2_000_000_000
            pr = pub.run(rate, start, a.warmup + a.duration, f"{'pyzmq':8s} {_fmt_rate(rate):>5s}",
                         progress=not a.quiet)
            p.join(timeout=a.drain + 30)
            c.join(timeout=a.drain + 30)
        finally:
            for x in (p, c):
                if x.is_alive():
                    x.kill()
        if not out.exists():
            raise RuntimeError("the baseline consumer did not finish")
        b = np.load(out)
        keep = b["send"] >= start + int(a.warmup * 1e9)
        loss = baseline_losses(int(pr["stats"]["messages"]), int(counts[0]), int(counts[1]), len(b["send"]))
        return {"lat": b["receipt"][keep] - b["send"][keep], "signals": int(keep.sum()), "loss": loss}


def floor_losses(sent: int, z: dict, plan: dict | None, sig: dict | None) -> list[str]:
    """What the zmq floor did not receive, each a line (empty: everything): ``sent`` messages
    published, ``z`` the subscriber's stamps (``seq``, ``chan``), ``plan`` (relay_plan()) and
    ``sig`` the relay consumer's record (None: no relay). A subscriber or relay consumer that
    fell behind past its deadline lost its slowest samples unsaid: the floor read lower, and
    the target's verdicts were given against it (exit 0)."""
    out = []
    got = len(z["seq"])
    if got < sent:
        out.append(f"the floor's libzmq subscriber received {got:,} of the {sent:,} messages sent by its deadline "
                   f"(the rest, the slowest, are missing from zmq_hop and the floor)")
    if plan is not None and sig is not None:
        keys = (np.asarray(z["chan"]).astype(np.uint64) << np.uint64(48)) | np.asarray(z["seq"]).astype(np.uint64)
        pushed = int(np.isin(np.asarray(plan["keys"], np.uint64), keys).sum())
        missed = int(sig["missed"])
        if missed or len(sig["seq"]) < pushed:
            out.append(f"the relay's consumer received {len(sig['seq']):,} of the {pushed:,} signals relayed by its "
                       f"deadline ({missed:,} lapped by the ring): the rest, the slowest, are missing from the floor")
    return out


def ring_floor_losses(n: int, s: dict) -> list[str]:
    """What the ring floor's consumer did not receive of the ``n`` records meant (``s``: its record)."""
    if len(s["seq"]) < n or int(s["missed"]):
        return [f"the ring floor's consumer received {len(s['seq']):,} of the {n:,} records meant by its deadline "
                f"({int(s['missed']):,} lapped by the ring): the rest, the slowest, are missing from ring_hop_floor"]
    return []


def baseline_losses(sent: int, received: int, put: int, read: int) -> list[str]:
    """What the pyzmq baseline left out: messages it never received of the ``sent``, signals its
    consumer never read of the ``put`` (it stopped at its deadline; received -1: no count)."""
    if received < 0:
        return ["the pyzmq baseline did not say what it received (it did not finish)"]
    out = []
    if received < sent:
        out.append(f"the pyzmq baseline received {received:,} of the {sent:,} messages sent by its deadline (the "
                   f"rest, the slowest, are missing from its figures)")
    if read < put:
        out.append(f"its consumer read {read:,} of the {put:,} signals put in its queue by its deadline (the rest, "
                   f"the slowest, are missing from its figures)")
    return out


def _workers_status(run_dir: Path, workers: int) -> dict:
    """The target's workers' status files at their stop, as one: the feed's counts and the
    signals emitted summed, their cores together ({} when one is missing or unreadable). Only
    worker 0's was read: with two workers half the events read as never processed."""
    each = []
    for i in range(workers):
        try:
            each.append(json.loads((run_dir / f"worker-{i}.json").read_text()))
        except (OSError, ValueError):
            return {}
    if len(each) == 1:
        return each[0]
    feeds = [st.get("feed", {}) for st in each]
    cpus = [c for st in each for c in (st.get("affinity") or [])]
    return {"feed": {k: sum(int(f.get(k, 0)) for f in feeds) for k in ("events", "lost_events", "uncounted_losses")},
            "signal_ring_head": sum(int(st.get("signal_ring_head", 0)) for st in each),
            "affinity": cpus if all(st.get("affinity") is not None for st in each) else None}


def target_losses(published: int, received: int, status: dict, worker_rc, daemon_rc, run_dir: Path,
                  missed: int = 0) -> list[str]:
    """What a target run did not deliver, each a line (empty: everything): the latency figures
    leave out the events it never processed and the signals its consumer never saw, so a run
    with a stall past its drain window, a backlog, or a worker that died looked better than a
    clean one. From the worker's status file at its stop, the exit statuses, and the
    supervisor's restart counts."""
    out = []
    if not status:
        return ["the engine worker wrote no status (it did not start, or died before its first)"]
    try:
        kids = json.loads((run_dir / "supervisor.json").read_text()).get("children", {})
    except (OSError, ValueError):
        kids = {}
    feed = status.get("feed", {})
    processed = int(feed.get("events", 0))             # (market events, the feed's markers aside)
    # a restarted worker's status counts from its own start: its earlier processes' events, as
    # the supervisor noted them at their deaths, are added (the count was the last one's alone)
    earlier = sum(int(k.get("earlier_events", 0)) for k in kids.values() if isinstance(k, dict))
    processed += earlier
    if processed != published:
        out.append(f"the engine processed {processed:,} of the {published:,} events published "
                   f"({published - processed:,} not processed by the end of the drain"
                   + (f"; {earlier:,} of those processed by worker processes since restarted, as of their last status"
                      if earlier else "") + ")")
    if feed.get("lost_events") or feed.get("uncounted_losses"):
        out.append(f"the worker's feed lost {feed.get('lost_events', 0):,} events (and "
                   f"{feed.get('uncounted_losses', 0)} ranges of unknown size): see its log")
    emitted = int(status.get("signal_ring_head", 0))
    if emitted > received:
        out.append(f"the worker emitted {emitted:,} signals, the consumer received {received:,} within the run and "
                   f"its drain (the rest are missing from the figures; a longer --drain, or a stall or backlog)")
    if missed:
        # (counted in ``received`` above, as the ring's cursor moved past them; but they were never
        # stamped: the slowest signals of a consumer stall, left out of the figures, exit 0)
        out.append(f"the consumer missed {missed:,} signals (the signal ring lapped it): the slowest of a "
                   f"consumer stall, missing from the figures")
    if worker_rc not in (None, 0):
        out.append(f"the engine worker exited with status {worker_rc}")
    if daemon_rc not in (None, 0):
        out.append(f"the daemon exited with status {daemon_rc} at its stop (3: ticks not stored; its log is in "
                   f"the work directory with --keep)")
    for name, k in kids.items():
        if k.get("restarts"):
            out.append(f"the daemon's {name} was restarted {k['restarts']} time(s) during the run")
    return out


#: the words of a loss line that says something failed (a process died or was restarted, the feed
#: lost events), not that the rate was too high (a backlog, a ring lapping its reader, a stall)
_FAILED = ("exited with status", "was restarted", "wrote no status", "feed lost")


def failures(loss) -> list[str]:
    """The lines of ``loss`` that say the target failed rather than fell behind."""
    return [line for line in loss if any(w in line for w in _FAILED)]


def _gave_up_line(pr: dict, rate: float, start: int, warmup: float, duration: float) -> str:
    """The shortfall of a publisher that fell behind its schedule and stopped: the figures cover
    only the part of the measured seconds it sent (the rest, the slowest to go out, never went:
    coordinated omission, exit 0 until an adversarial pass)."""
    t_from = start + int(warmup * 1e9)
    meant = rate * duration
    got = int(pr["count"][pr["intended"] >= t_from].sum()) if len(pr["count"]) else 0
    upto = (int(pr["intended"][-1]) - t_from) / 1e9 if len(pr["intended"]) else 0.0
    share = got / meant if meant else 0.0
    pr["stats"]["measured_share"] = round(share, 4)
    return (f"{pr['stats']['gave_up']}: the figures cover {share:.0%} of the intended schedule's measured events "
            f"({got:,} of {meant:,.0f}, those meant for its first {max(upto, 0.0):.1f} s of {duration:g}); the rest "
            f"were never sent, and their latency is not in the figures")


def _log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a target's log, indented ("" when there is none): the log is
    in the scratch directory, removed at the end without --keep (a daemon that never connected
    failed saying "see its log", and the log was gone)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join("    " + ln for ln in text.splitlines()[-lines:])


def _ratio(a, b):
    return float(f"{a / b:.4g}") if b else None      # (four significant digits: 1/6,000 was 0.0)


class NoSignals(Exception):
    """A rate's run brought no signal to measure: its latency figures would be empty, not zero."""


class BenchError(Exception):
    """A part of the target's run failed (a process that died or did not start): the run stops
    with this one line, not a traceback."""


class TooLong(BenchError):
    """The run asked for would not fit in memory: refused before it starts (exit status 2)."""


def _ended(code) -> str:
    if code is None:
        return "did not finish"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class CoreError(Exception):
    """A measured process ran on other cores than it was set to (not a RuntimeError: a part
    that fails with one is reported as not measured and the run goes on; this stops it)."""


def _check_cores(what: str, seen, meant) -> None:
    """A process that ran on other cores than it was meant to measured something else: stop."""
    if seen is not None and sorted(seen) != sorted(meant):
        raise CoreError(f"{what} ran on core(s) {sorted(seen)}, not on core(s) {sorted(meant)} as set: "
                        "its figures would not be the ones asked for")


def _merge_publisher(stats: list[dict]) -> dict:
    """The publisher's record over repeats: counts summed, the lowest achieved rate, the worst lateness."""
    if len(stats) == 1:
        return stats[0]
    out = dict(stats[0])
    for k in ("messages", "events", "late_messages"):
        out[k] = sum(s[k] for s in stats)
    out["achieved_rate"] = min(s["achieved_rate"] for s in stats)
    out["max_late_ns"] = max(s["max_late_ns"] for s in stats)
    out["late_p99_ns"] = max(s["late_p99_ns"] for s in stats)
    out["repeats"] = len(stats)
    return out


def _pool(parts: list[dict]) -> dict:
    """latency_arrays() of several runs as one: each array concatenated, ``unmatched`` summed."""
    if len(parts) == 1:
        return parts[0]
    return {k: (sum(p[k] for p in parts) if k == "unmatched" else np.concatenate([p[k] for p in parts]))
            for k in parts[0]}


def measure_rate(run: Run, rate: float, index: int, outdir: Path) -> dict:
    """Floors, the target and the baseline at one offered rate; histograms and logs written.

    With ``--repeat N`` the target and its relay floor run N times, alternated (target, floor,
    target, floor, ...), and their latencies are pooled: a slow spell of a shared machine then
    falls on both, not on one of them. Each pair's own ratio is kept (``pairs``)."""
    a = run.args
    tag = f"r{index}"
    pub = None
    reps = a.repeat
    tgts, zmq_lat, relays, pairs, floor_pubs = [], [], [], [], []
    floor_loss, ring_loss, base_loss = [], [], []
    floors = {}
    try:
        for rep in range(reps):
            rt = tag if reps == 1 else f"{tag}-{rep}"
            pub = Publisher(run.stream, run.endpoint(f"{rt}-tgt"))      # the target connects to its own
            tgt = run.measure_target(rate, f"{rt}-tgt", pub)
            busy = run.busy_poll                        # the floor polls as the target did
            _check_cores("the target's engine worker", tgt["cpus"], tgt["cpus_configured"])
            tgts.append(tgt)
            pub.close()
            pub = None
            if a.no_floors:
                continue
            pub = Publisher(run.stream, run.endpoint(f"{rt}-zmq"))
            try:
                zf = run.measure_zmq_floor(rate, pub, rt, busy, tgt["relay"])
                _check_cores("the floor's libzmq subscriber", zf["cpus"], [run.engine_core])
                zmq_lat.append(zf["lat"])
                floor_pubs.append(zf["publisher"])
                floor_loss.extend(zf.get("loss", ()))
                if "relay" in zf:
                    relays.append(zf["relay"])
                    w, f = tgt["lat"]["wire_to_signal"], zf["relay"]["wire_to_signal"]
                    if len(w) and len(f):
                        pairs.append({lv: _ratio(float(np.percentile(w, q)), float(np.percentile(f, q)))
                                      for lv, q in (("p50", 50), ("p99", 99))})
            except RuntimeError as exc:
                _say(f"  zmq floor at {_fmt_rate(rate)} ev/s not measured: {exc}")
            pub.close()
            pub = None
            if reps > 1 and not a.quiet and pairs:
                _say(f"  repeat {rep + 1}/{reps}: wire-to-signal / relay floor p50 {pairs[-1]['p50']}x, "
                     f"p99 {pairs[-1]['p99']}x")
        tgt = {"publisher": _merge_publisher([t["publisher"] for t in tgts]), "cpus": tgts[0]["cpus"],
               "signals": sum(t["signals"] for t in tgts), "missed": sum(t["missed"] for t in tgts),
               "unmatched": sum(t["unmatched"] for t in tgts), "lat": _pool([t["lat"] for t in tgts]),
               "loss": [x for t in tgts for x in t["loss"]]}
        if not a.no_floors:
            if zmq_lat:
                floors["zmq_hop"] = np.concatenate(zmq_lat)
            if relays:
                relay = _pool(relays)
                floors["floor"] = relay["wire_to_signal"]
                floors["floor_zmq_hop"] = relay["wire_queue"]
                floors["floor_ring_hop"] = relay["ring_hop"]
            # the ring hop at the rate the target emitted signals (a busy consumer and one that
            # sleeps between signals are different hops)
            sig_rate = tgt["signals"] / reps / (a.warmup + a.duration)
            rf = run.measure_ring_floor(sig_rate, tag)
            floors["ring_hop_floor"] = rf["lat"]
            ring_loss.extend(rf.get("loss", ()))
        base = None
        if a.baseline:
            pub = Publisher(run.stream, run.endpoint(f"{tag}-base"))
            try:
                bl = run.measure_baseline(rate, pub, tag)
                base = bl["lat"]
                base_loss.extend(bl.get("loss", ()))
            except RuntimeError as exc:
                _say(f"  pyzmq baseline at {_fmt_rate(rate)} ev/s not measured: {exc}")
    finally:
        if pub is not None:
            pub.close()
    # engine.clock = "event": each signal's ts_signal is its tick's ts_recv, so the engine stage
    # is 0 by construction (it printed 0.0 us at every percentile) and ring_hop holds it
    event_clock = getattr(run, "event_clock", False)
    stages = tuple(k for k in STAGES if not (event_clock and k == "engine"))
    recs = {k: _recorder(tgt["lat"][k]) for k in stages}
    for k, v in floors.items():
        recs[k] = _recorder(v)
    baseline_note = None
    if base is not None and len(base):
        recs["pyzmq_baseline"] = _recorder(base)
    elif base is not None:
        baseline_note = "fell behind: no signal reached its consumer within the run and the drain"
        _say(f"  pyzmq baseline at {_fmt_rate(rate)} ev/s {baseline_note}")
        base = None
    summ = {k: _summary(r) for k, r in recs.items()}
    # a latency below 0 is a wall clock stepped back between two stamps: recorded as 0, and counted
    # (they were clamped unsaid)
    values = {**{k: tgt["lat"][k] for k in stages}, **floors, **({"pyzmq_baseline": base} if base is not None else {})}
    for k, v in values.items():
        n = int(np.count_nonzero(np.asarray(v) < 0)) if len(v) else 0
        if n and k in summ:
            summ[k]["negative"] = n
        n = int(np.count_nonzero(np.asarray(v) > TOP_NS)) if len(v) else 0
        if n and k in summ:
            summ[k]["beyond_range"] = n
            if k in stages:                   # the target's: its figures are a floor, the run incomplete
                tgt["loss"] = list(tgt["loss"]) + [
                    f"{n:,} {k} latencies of {TOP_NS / 1e9:.1f} s or more, recorded as {TOP_NS / 1e9:.1f} s (the "
                    f"histograms' top): a stall that long; its percentiles are lower bounds"]
    if "floor" in summ:
        summ["floor"]["note"] = ("the relay floor: the messages that carried the target's signals, received by a "
                                 "bare C libzmq subscriber on the engine's core and pushed into a signal ring read "
                                 "by the same consumer, during the same stream")
    if "zmq_hop" in summ and "ring_hop_floor" in summ:
        summ["hops_sum"] = {k: summ["zmq_hop"][k] + summ["ring_hop_floor"][k] for k in LEVELS}
        summ["hops_sum"]["note"] = ("zmq_hop (every message) + ring_hop_floor (paced records, publisher idle), "
                                    "percentile by percentile")
    res = {"offered_rate": rate, "engine_cpus_seen": tgt["cpus"], "publisher": tgt["publisher"],
           "signals": tgt["signals"],
           "signals_missed": tgt["missed"], "signals_unmatched": tgt["unmatched"], "latency_ns": summ,
           "loss": tgt["loss"]}
    if event_clock:
        res["engine_note"] = ("not measured: engine.clock = \"event\" stamps each signal with its tick's ts_recv, "
                              "so the engine stage is 0 by construction; ring_hop holds the engine's time too")
    if floor_loss or ring_loss:
        res["floor_loss"] = floor_loss + ring_loss
    if base_loss:
        res["baseline_loss"] = base_loss
    w = summ["wire_to_signal"]
    if "floor" in summ:
        f = summ["floor"]
        res["vs_floor"] = {"p50": _ratio(w["p50"], f["p50"]), "p99": _ratio(w["p99"], f["p99"]),
                           "targets": {"p50 <= 1.25x floor": bool(w["p50"] <= 1.25 * f["p50"]),
                                       "p99 <= 2x floor p99": bool(w["p99"] <= 2 * f["p99"]),
                                       "p99.99 < 1 ms": bool(w["p99.99"] < 1_000_000)}}
        why = floor_saturated(_merge_publisher(floor_pubs)["achieved_rate"] if floor_pubs else rate, f["p50"], rate)
        if floor_loss:                            # (its slowest samples missing: it read lower than it was)
            why = "the floor did not receive everything: " + "; ".join(floor_loss)
        above = [lv for lv in ("p50", "p99") if f[lv] > FLOOR_ABOVE * max(w[lv], 1)]
        if not why and above:
            # a floor is what the target's path cannot beat: one well above the target was itself
            # disturbed (a stall, the machine busy), and "hit" against it said nothing (an
            # adversarial pass: floor p99 389 ms, the target's 12 ms, "p99 0.03x: hit")
            said = ", ".join(f"{lv} {f[lv] / 1e3:,.1f} us against {w[lv] / 1e3:,.1f} us" for lv in above)
            why = f"the floor measured above the target ({said}): it was disturbed, not a floor"
        if why:                                   # two queues compared: the ratios say nothing of tickwire
            res["vs_floor"]["no_verdict"] = why
            for k in ("p50 <= 1.25x floor", "p99 <= 2x floor p99"):
                res["vs_floor"]["targets"][k] = None
    if "hops_sum" in summ:
        res["vs_hops_sum"] = {"p50": _ratio(w["p50"], summ["hops_sum"]["p50"]),
                              "p99": _ratio(w["p99"], summ["hops_sum"]["p99"])}
        if floor_loss or ring_loss:
            res["vs_hops_sum"]["no_verdict"] = "its floors did not receive everything: " + "; ".join(
                floor_loss + ring_loss)
    if reps > 1:
        res["repeats"] = reps
        res["pairs"] = pairs                      # each target run against the floor run after it
    if baseline_note:
        res["baseline_note"] = baseline_note
    if base is not None:
        res["vs_baseline"] = {k: _ratio(w[k], summ["pyzmq_baseline"][k]) for k in ("p50", "p99", "p99.99")}
        note = baseline_saturated(summ["pyzmq_baseline"]["p50"])
        if base_loss:
            note = "incomplete: " + "; ".join(base_loss) + (f"; and {note}" if note else "")
        if note:
            res["baseline_note"] = note
    if not recs["wire_to_signal"].total:
        # no measured signal: run_bench stops on this rate saying "none is written for this rate";
        # nothing is (an earlier run's files of this rate in --out were removed, and its interval
        # log truncated, while that run's summary.json still listed them)
        res["files"] = []
        return res
    # outputs: .hgrm per series, one interval log over the run
    from tickwire.engine.latency import hgrm

    rate_tag = _fmt_rate(rate)
    written = []
    for k in (*STAGES, "floor", "floor_zmq_hop", "floor_ring_hop", *FLOORS, "pyzmq_baseline"):
        f = outdir / f"{k}-{rate_tag}.hgrm"
        r = recs.get(k)
        if r is not None and r.total:
            replace_file(f, hgrm(r))
            written.append(f.name)
        elif f.is_file() or f.is_symlink():
            # (an earlier run's, into the same --out: listed in "files" and drawn in this run's
            # spectrum, a floor this run never measured)
            f.unlink()
    write_interval_log(outdir / f"intervals-{rate_tag}.hlog", tgt["lat"], rate, stages=stages)
    res["files"] = sorted([*written, f"intervals-{rate_tag}.hlog"])
    return res


def write_interval_log(path: Path, lat: dict, rate: float, interval_s: float = 1.0, stages=STAGES) -> int:
    """The stages' latencies in 1 s intervals of intended send time (HdrHistogram log 1.3),
    written to a new file renamed over ``path`` (a link there is replaced, not written through)."""
    it = lat["intended"]
    if not len(it):
        replace_file(path, "")
        return 0
    with replacing(path) as tmp:
        return _write_interval_log(tmp, lat, rate, interval_s, stages)


def _write_interval_log(path: Path, lat: dict, rate: float, interval_s: float, stages) -> int:
    from tickwire.engine.latency import IntervalLogWriter
    from tickwire.ext.hdr import Recorder

    it = lat["intended"]
    recs = {k: Recorder() for k in stages}
    t0 = int(it.min())
    with IntervalLogWriter(path, recs, interval=interval_s, start_time=t0 / 1e9,
                           comment=f"tickwire bench at {rate:,.0f} events/s offered; intervals by intended "
                                   "send time") as log:
        span = int(interval_s * 1e9)
        last = int((int(it.max()) - t0) // span)
        for k in range(last + 1):
            m = (it >= t0 + k * span) & (it < t0 + (k + 1) * span)
            for s in stages:
                v = lat[s][m]
                if len(v):
                    recs[s].record_many(_clamped(v))
            log.write_interval((t0 + (k + 1) * span) / 1e9)
        return last + 1


# -- reports --------------------------------------------------------------------------------------------

def _us(ns) -> str:
    return "-" if ns is None else f"{ns / 1e3:,.1f}"


def print_run(res: dict, sweeping: bool = False) -> None:
    pub = res["publisher"]
    off, ach = res["offered_rate"], pub["achieved_rate"]
    note = "" if ach >= 0.98 * off else "   << the publisher did NOT reach the offered rate"
    if pub.get("gave_up"):
        note += f" ({pub['gave_up']})"
    _say(f"\n  offered {off:,.0f} ev/s, achieved {ach:,.0f} ev/s{note}; late messages (>10 us) {pub['late_messages']:,} "
         f"(p99 late {pub['late_p99_ns'] / 1e3:.1f} us, max {pub['max_late_ns'] / 1e3:.1f} us); "
         f"signals {res['signals']:,} (missed {res['signals_missed']}, unmatched {res['signals_unmatched']})")
    neg = {k: s["negative"] for k, s in res["latency_ns"].items() if isinstance(s, dict) and s.get("negative")}
    if neg:
        _say("  warning: latencies below 0, recorded as 0 (the wall clock stepped back during the run): "
             + ", ".join(f"{k} {n:,}" for k, n in neg.items()))
    rows = [k for k in ("wire_to_signal", "wire_queue", "engine", "ring_hop", "floor", "floor_zmq_hop",
                        "floor_ring_hop", "zmq_hop", "ring_hop_floor", "hops_sum", "pyzmq_baseline")
            if k in res["latency_ns"]]
    # (a space before every column: a stalled baseline's seconds are wider than the column)
    _say(f"  {'us':22s}" + "".join(f" {k:>10s}" for k in LEVELS) + f" {'count':>10s}")
    for k in rows:
        s = res["latency_ns"][k]
        _say(f"  {k:22s}" + "".join(f" {_us(s.get(lv)):>10s}" for lv in LEVELS) + f" {s.get('count', ''):>10}")
    if res.get("engine_note"):
        _say(f"  engine stage {res['engine_note']}")
    for line in res.get("floor_loss") or ():
        _say(f"  floor INCOMPLETE: {line}")
    p50 = res["latency_ns"].get("wire_to_signal", {}).get("p50") or 0
    if p50 > SATURATED_P50_NS and not sweeping:
        # (5M offered: p50 605 ms, exit 0, and nothing said unless --until-saturation: an adversarial
        # pass; under it the sweep's own line says where it stopped, and the note told the user to
        # pass the flag they had passed: a newcomer's pass)
        _say(f"  note: the target fell behind at this rate (its wire-to-signal p50 is {p50 / 1e6:,.1f} ms, past "
             f"{SATURATED_P50_NS / 1e6:g} ms: a queue, not a latency); --until-saturation finds where it keeps up")
    if "vs_floor" in res:
        v = res["vs_floor"]
        hits = ", ".join(f"{k}: {'hit' if ok else 'no verdict' if ok is None else 'MISS'}"
                         for k, ok in v["targets"].items())
        pooled = f" (pooled over {res['repeats']} alternated runs of each)" if res.get("repeats") else ""
        _say(f"  wire-to-signal / floor (relay){pooled}: p50 {v['p50']}x, p99 {v['p99']}x  ({hits})")
        if v.get("no_verdict"):
            _say(f"  no verdict against the floor: {v['no_verdict']}")
    if res.get("pairs"):
        p50s = [p["p50"] for p in res["pairs"] if p["p50"] is not None]
        _say(f"  each pair (a target run / the floor run after it), p50: {', '.join(f'{x}x' for x in p50s)}"
             f"{f'  (median {float(np.median(p50s)):.3f}x)' if p50s else ''}")
    if "vs_hops_sum" in res:
        v = res["vs_hops_sum"]
        _say(f"  wire-to-signal / hops_sum (zmq_hop + ring_hop_floor, measured apart): p50 {v['p50']}x, "
             f"p99 {v['p99']}x" + (f"  (no verdict: {v['no_verdict']})" if v.get("no_verdict") else ""))
    if "vs_baseline" in res:
        v = res["vs_baseline"]
        _say(f"  wire-to-signal / pyzmq baseline: p50 {v['p50']}x, p99 {v['p99']}x, p99.99 {v['p99.99']}x"
             + (f"\n    (the baseline is {res['baseline_note']})" if res.get("baseline_note") else ""))


def plot(summary: dict, outdir: Path) -> list[str]:
    """Percentile spectrum (log nines axis, floors drawn in) per rate, and latency vs offered rate
    (drawn with tickwire.engine.plots, as `tickwire plot latency` draws them)."""
    from tickwire.engine import plots

    try:
        plots.require_matplotlib("the bench plots")
    except ImportError as exc:
        _say(f"  plots skipped: {exc}")
        return []
    made = []
    for res in summary["runs"]:
        rt = _fmt_rate(res["offered_rate"])
        fig, (ax,) = plots.figure(8, 5)
        series = []
        for k in ("wire_to_signal", "floor", "zmq_hop", "ring_hop_floor", "pyzmq_baseline"):
            f = outdir / f"{k}-{rt}.hgrm"
            if f.name in res.get("files", ()) and f.exists():       # (this run's, not an earlier one's)
                series.append((k, plots.read_hgrm(f)))
        plots.draw_spectra(ax, series, f"tickwire bench: wire-to-signal at {rt} events/s offered ({summary['target']})")
        made.append(plots.save_png(fig, outdir / f"spectrum-{rt}.png", dpi=100).name)
    if len(summary["runs"]) > 1:
        fig, (ax,) = plots.figure(8, 5)
        runs = sorted(summary["runs"], key=lambda r: r["offered_rate"])     # (--rate 1M,500k: a line, not a zigzag)
        rates = [r["offered_rate"] for r in runs]
        for k, lv, style in (("wire_to_signal", "p50", "-o"), ("wire_to_signal", "p99", "-s"),
                             ("wire_to_signal", "p99.99", "-^"), ("floor", "p50", "--"), ("floor", "p99", "--"),
                             ("pyzmq_baseline", "p99", "-."),):
            ys = [r["latency_ns"].get(k, {}).get(lv) for r in runs]
            if all(v is not None for v in ys):
                ax.plot(rates, [v / 1e3 for v in ys], style, label=f"{k} {lv}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (events/s)")
        ax.set_ylabel("latency (us)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        ax.set_title("tickwire bench: latency against offered rate")
        made.append(plots.save_png(fig, outdir / "sweep.png", dpi=100).name)
    return made


# -- compare -------------------------------------------------------------------------------------------

def compare(path_a, path_b, out=print) -> int:
    """Print two saved runs (summary.json) side by side with ratios B/A."""
    from tickwire.engine.files import NotReadable, read_regular

    runs = []
    for p in (path_a, path_b):
        p = Path(p)
        if p.is_dir():
            p = p / "summary.json"
        try:
            d = json.loads(read_regular(p, 256 << 20, "bench summary (summary.json)"))
        except NotReadable as exc:
            raise ValueError(str(exc)) from None
        except (ValueError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise ValueError(f"{p}: not a tickwire bench summary ({why})") from None
        if not isinstance(d, dict) or d.get("tickwire_bench") != SCHEMA:
            raise ValueError(f"{p}: not a tickwire bench summary (no 'tickwire_bench': {SCHEMA})")
        try:                                           # (checked before a line is printed, naming the file)
            _compare(d, d, p, p, out=lambda *_: None)
            for r in d["runs"]:                        # (a null p50 against a whole run: a TypeError traceback;
                for k, lv in r["latency_ns"].items():  # NaN printed as nan and 0.00x)
                    for q in ("p50", "p99", "p99.99"):
                        v = lv[q] if isinstance(lv, dict) and q in lv else 0
                        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                            raise ValueError(f"runs[].latency_ns.{k}.{q} is {v!r}, not a number of nanoseconds")
                v = r["publisher"]["achieved_rate"]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                    raise ValueError(f"runs[].publisher.achieved_rate is {v!r}, not a rate")
        except (KeyError, TypeError, AttributeError, ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"{p}: lacks what a bench run writes ({type(exc).__name__}: {exc}): not a whole "
                             f"tickwire bench summary") from None
        runs.append(d)
    return _compare(*runs, path_a, path_b, out)


def _compare(a, b, path_a, path_b, out) -> int:
    out(f"A: {path_a}  ({a['target']}, {a['started']})")
    out(f"B: {path_b}  ({b['target']}, {b['started']})")
    # what makes two runs unlike: a ratio between them is then not tickwire's change
    unlike = [f"{label} {a.get(k)!r} against {b.get(k)!r}" for k, label in (
        ("target", "target"), ("source", "stream"), ("events_per_message", "events per message"),
        ("config", "config"), ("duration_s", "measured seconds"), ("warmup_s", "warm-up seconds"),
        ("cores", "cores"), ("busy_poll", "busy_poll"), ("build", "build"))
        if a.get(k) != b.get(k) and not (k == "busy_poll" and None in (a.get(k), b.get(k)))]
    # (busy_poll None: a summary from before it recorded the target's own setting, not a difference)
    if unlike:
        out("WARNING: the two runs are unlike (" + "; ".join(unlike) + "): their ratios measure that "
            "difference too, not only tickwire's")
    by_rate = {r["offered_rate"]: r for r in b["runs"]}
    # a run that did not deliver everything, or whose publisher fell short of the rate, is no
    # like-for-like figure either (compare printed a clean table over a run missing 13% of its
    # events, exit 0)
    for name, d in (("A", a), ("B", b)):
        for r in d["runs"]:
            rate = _fmt_rate(r["offered_rate"])
            for line in r.get("loss") or []:
                out(f"WARNING: {name} at {rate} ev/s was INCOMPLETE ({line}): its figures leave that out")
            if r["publisher"]["achieved_rate"] < 0.98 * r["offered_rate"]:
                out(f"WARNING: {name} at {rate} ev/s: the publisher reached "
                    f"{r['publisher']['achieved_rate']:,.0f} ev/s, not the rate offered")
        if d.get("stopped"):
            out(f"note: {name}'s --until-saturation stopped {d['stopped']}")
    out(f"{'rate':>7s} {'series':16s} {'pct':>7s} {'A us':>10s} {'B us':>10s} {'B/A':>7s}")
    for rate in sorted(set(by_rate) - {r["offered_rate"] for r in a["runs"]}):
        out(f"{_fmt_rate(rate):>7s} (not in A)")
    for ra in a["runs"]:
        rb = by_rate.get(ra["offered_rate"])
        if rb is None:
            out(f"{_fmt_rate(ra['offered_rate']):>7s} (not in B)")
            continue
        for k in ("wire_to_signal", "wire_queue", "engine", "ring_hop", "floor", "hops_sum", "pyzmq_baseline"):
            if k not in ra["latency_ns"] or k not in rb["latency_ns"]:
                continue
            for lv in ("p50", "p99", "p99.99"):
                va, vb = ra["latency_ns"][k][lv], rb["latency_ns"][k][lv]
                r = f"{vb / va:.2f}x" if va else "-"
                out(f"{_fmt_rate(ra['offered_rate']):>7s} {k:16s} {lv:>7s} {_us(va):>10s} {_us(vb):>10s} {r:>7s}")
        pa, pb = ra["publisher"]["achieved_rate"], rb["publisher"]["achieved_rate"]
        out(f"{_fmt_rate(ra['offered_rate']):>7s} {'achieved ev/s':16s} {'':>7s} {pa:>10,.0f} {pb:>10,.0f} "
            f"{f'{pb / pa:.2f}x' if pa else '-':>7s}")
    return 0


# -- what a killed bench left ---------------------------------------------------------------------------

#: The bench's own names, each with the pid of the bench that made them: the target's rings
#: (``<prefix>-bench<pid>-r<i>[-<rep>]-tgt-<token>-ticks|signals-<w>``), the floors' rings
#: (``tw-bench-<pid>-r<i>[-<rep>][-relay]``), the publishers' ipc endpoints
#: (``bench-<pid>-r<i>[-<rep>]-tgt|zmq|base``) and the scratch directory (``tw-bench-<pid>-*``).
_LEFT_RING = re.compile(r"^(?:[A-Za-z0-9_.-]+-bench(\d+)-r\d+(?:-\d+)?-tgt-[0-9a-f]{16}-(?:ticks|signals)-\d+"
                         r"|tw-bench-(\d+)-r\d+(?:-\d+)?(?:-relay)?)$")
_LEFT_IPC = re.compile(r"^bench-(\d+)-r\d+(?:-\d+)?-(?:tgt|zmq|base)$")
_LEFT_WORK = re.compile(r"^tw-bench-(\d+)-[A-Za-z0-9_]+$")
#: In a scratch directory kept with --keep: a later run leaves it alone.
KEEP_MARK = ".kept"


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:                       # (another user's process: alive)
        return False
    return False


def _mapped_shm() -> dict[str, int]:
    """``{/dev/shm name: pid}`` of the segments some process of this user has mapped."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/maps", "rb") as f:
                for line in f:
                    i = line.find(b"/dev/shm/")
                    if i >= 0:
                        out.setdefault(line[i + 9:].split()[0].decode(errors="replace"), int(d))
        except OSError:
            pass
    return out


def clean_leftovers(shm_dir="/dev/shm", ipc_dir=None, tmp_dir=None) -> tuple[list[str], list[str]]:
    """Remove what benches killed before they could clean up left behind (kill -9, an OOM kill):
    files of this user named by the bench's own scheme whose bench process is gone, rings no
    running process has mapped, scratch directories not kept with --keep. Returns ``(removed,
    left)``: the paths removed, and lines about leftovers still in use (a process of a killed
    bench that still runs: its pid)."""
    uid = os.geteuid()
    removed, left = [], []
    cands = []
    for where, pat in ((shm_dir, _LEFT_RING), (ipc_dir, _LEFT_IPC), (tmp_dir, _LEFT_WORK)):
        if where is None:
            continue
        try:
            names = os.listdir(where)
        except OSError:
            continue
        for name in names:
            m = pat.match(name)
            if not m:
                continue
            pid = int(next(g for g in m.groups() if g))
            path = Path(where) / name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_uid == uid and pid != os.getpid() and _pid_gone(pid):
                cands.append((where, path, pid))
    mapped = _mapped_shm() if any(w == shm_dir for w, _, _ in cands) else {}
    for where, path, pid in cands:
        try:
            if where == shm_dir and path.name in mapped:
                left.append(f"{path} (of the killed bench {pid}) is still mapped by process {mapped[path.name]}: "
                            f"left alone")
                continue
            if where == tmp_dir:
                if (path / KEEP_MARK).exists() or not path.is_dir() or path.is_symlink():
                    continue
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(str(path))
        except OSError:
            pass
    return removed, left


def _clean_leftovers_said() -> None:
    """clean_leftovers() where the bench puts its files, said in a line."""
    try:
        from tickwire.engine.config import private_ipc_dir

        ipc = private_ipc_dir()
    except ValueError:
        ipc = None
    removed, left = clean_leftovers(ipc_dir=ipc, tmp_dir=tempfile.gettempdir())
    if removed:
        _say(f"tickwire bench: removed {len(removed)} leftover(s) of bench runs killed before they cleaned up "
             f"(rings, endpoints, scratch directories): {', '.join(removed[:4])}{' ...' if len(removed) > 4 else ''}")
    for line in left:
        _say(f"tickwire bench: {line}")


# -- the command -------------------------------------------------------------------------------------------

def run_bench(args) -> dict:
    rates = [parse_rate(r) for r in args.rate.split(",")] if isinstance(args.rate, str) else list(args.rate)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    engine_core, other_core = _cores()
    cfg = None
    if args.config:
        from tickwire.engine import config as configmod

        cfg = configmod.load(args.config)
        # the config's cores: its first worker's for the floor, its supervisor's for the rest
        # (a caller already pinned to one core, as the demo is, would otherwise see only that one)
        engine_core = cfg.workers[0].cpu
        if cfg.supervisor_cpu != engine_core:
            other_core = cfg.supervisor_cpu
    if cfg is not None:
        stream = synthetic_stream(cfg.instruments, cfg.feeds.channels, events=args.events, batch=args.batch or 16,
                                  seed=args.seed)
    else:
        stream = None if args.source == "synthetic" else binance_stream(args.channels, args.batch)
        if stream is None:
            if args.source == "binance":
                raise SystemExit("tickwire bench: the Binance capture is not in ../shared/data (use --source synthetic)")
            from tickwire.feeds.synthetic import synthetic_instruments

            stream = synthetic_stream(synthetic_instruments(4, "L2"), args.channels, events=args.events,
                                      batch=args.batch or 16, seed=args.seed)
    _check_memory(args, rates, stream.bounds[-1] / max(1, len(stream.bounds) - 1))
    _pin(other_core)            # only once the run is sure to go ahead: a refused one leaves its caller as it was
    from tickwire.ext import BUILD

    if BUILD != "release":
        _say(f"warning: tickwire is a {BUILD} build: its latency figures mean nothing (rebuild in release mode)")
    _say(f"tickwire bench: target {args.target}{' (' + args.config + ')' if args.config else ''}, stream {stream.name}: "
         f"{len(stream.events):,} events in {len(stream.bounds) - 1:,} messages (repeated), "
         f"rates {', '.join(_fmt_rate(r) for r in rates)} ev/s, {args.warmup:g} s warm-up + {args.duration:g} s each; "
         f"engine on core {engine_core}, publisher/consumer/I/O threads on core {other_core}")
    _clean_leftovers_said()
    work = Path(tempfile.mkdtemp(prefix=f"tw-bench-{os.getpid()}-"))   # (its pid: a later run knows it)
    if args.keep:
        (work / KEEP_MARK).touch()
    run = Run(args, stream, work, (engine_core, other_core))
    summary = {"tickwire_bench": SCHEMA, "version": tickwire.__version__, "build": BUILD,
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "target": args.target,
               "config": args.config, "source": stream.name, "events_per_message": round(
                   stream.bounds[-1] / (len(stream.bounds) - 1), 2),
               "warmup_s": args.warmup, "duration_s": args.duration, "cores": os.cpu_count(),
               "engine_core": engine_core, "other_core": other_core,
               "busy_poll": args.busy_poll, "command": " ".join(sys.argv), "runs": []}
    try:
        i = 0
        queue = list(rates)
        while queue:
            rate = queue.pop(0)
            res = measure_rate(run, rate, i, outdir)
            ach = res["publisher"]["achieved_rate"]
            short = f"the publisher reached {ach / 1e3:,.0f}k ev/s of the {_fmt_rate(rate)} offered" \
                if ach < 0.95 * rate else None
            if not res["latency_ns"]["wire_to_signal"]["count"] and short:
                # the rate is beyond the publisher: its measured messages never went out in time
                # (this said "check that the rules can fire", exit 1, even under --until-saturation)
                why = (f"{short}{' (' + res['publisher']['gave_up'] + ')' if res['publisher'].get('gave_up') else ''}"
                       f", and no signal of the measured seconds arrived")
                if args.until_saturation:
                    # the saturation the sweep looks for (the first rate already: no figure below it)
                    first = "" if summary["runs"] else " (the first rate offered: start lower for a figure)"
                    summary["stopped"] = f"at {_fmt_rate(rate)} ev/s: {why}{first}"
                    _say(f"\n  --until-saturation stopped at {_fmt_rate(rate)} ev/s: {why}{first}; its figures "
                         f"are not kept")
                    replace_file(outdir / "summary.json", json.dumps(summary, indent=1))
                    break
                raise NoSignals(f"at {_fmt_rate(rate)} ev/s {why}: no latency to report, and none is written for "
                                f"this rate. Offer a rate the publisher reaches (--until-saturation finds the "
                                f"highest)")
            if not res["latency_ns"]["wire_to_signal"]["count"]:       # (the measured ones: past the warm-up)
                where = ("the daemon's rejects and log (--keep keeps it)" if args.target == "daemon" else
                         "the worker's status (--keep keeps it: r<N>-tgt/worker-0.json, its book_rejects)")
                raise NoSignals(f"at {_fmt_rate(rate)} ev/s the target emitted no signal in the {args.duration:g} s "
                                f"measured ({res['publisher']['events']:,} events published, {res['signals']:,} "
                                f"signals in all): no latency to report, and none is written for this rate. "
                                f"Check {where} and that the rules can fire on this stream")
            summary["busy_poll"] = getattr(run, "busy_poll", None)   # the target's (None said "unlike" of two alike)
            summary["runs"].append(res)
            print_run(res, sweeping=args.until_saturation)
            for line in res["loss"]:
                _say(f"  INCOMPLETE at {_fmt_rate(rate)} ev/s: {line}")
            replace_file(outdir / "summary.json", json.dumps(summary, indent=1))   # kept if a later rate fails
            i += 1
            failed = failures(res["loss"])
            why = (f"it failed ({'; '.join(failed)})" if failed else _saturated(res, rate)
                   or (f"it did not deliver everything ({res['loss'][0]})" if res["loss"] else None))
            if args.until_saturation and not queue:
                if why is None and i < MAX_SATURATION_RATES:
                    # twice the highest measured (twice the last measured a rate again: --rate 1M,500k ran
                    # 1M twice, the second's files over the first's)
                    queue.append(2 * max(r["offered_rate"] for r in summary["runs"]))
                else:
                    why = why or f"{MAX_SATURATION_RATES} rates measured, the most --until-saturation runs"
                    summary["stopped"] = f"at {_fmt_rate(rate)} ev/s: {why}"
                    _say(f"\n  --until-saturation stopped at {_fmt_rate(rate)} ev/s: {why}")
    except BaseException:
        if args.keep:                                # (a failed or interrupted run kept it unsaid)
            print(f"tickwire bench: --keep: the run's configs, logs, stamps and rings' directory are in {work}",
                  file=sys.stderr)
        raise
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.keep:
        summary["kept"] = str(work)
        _say(f"\n  --keep: the run's configs, logs, stamps and rings' directory are in {work}")
    if args.p99_threshold:
        lim = args.p99_threshold * 1e3
        # a rate that did not deliver everything is no answer: the signals a stall held back never
        # arrived, so its p99 left them out (INCOMPLETE at 100k, yet "p99 <= 10 ms at 100k")
        ok = [r["offered_rate"] for r in summary["runs"]
              if r["latency_ns"]["wire_to_signal"]["p99"] <= lim and r["publisher"]["achieved_rate"] >= 0.95 * r[
                  "offered_rate"] and not r["loss"]]
        summary["p99_threshold_us"] = args.p99_threshold
        summary["max_rate_under_threshold"] = max(ok) if ok else None
        _say(f"\n  highest offered rate with wire-to-signal p99 <= {args.p99_threshold:g} us: "
             f"{_fmt_rate(max(ok)) + ' ev/s' if ok else 'none of the rates measured'}")
    if len(summary["runs"]) > 1:
        _say("\n  sweep (us):  rate   achieved   w2s p50   w2s p99  w2s p99.99  floor p50  floor p99  pyzmq p99")
        for r in summary["runs"]:
            L = r["latency_ns"]
            _say(f"  {_fmt_rate(r['offered_rate']):>16s} {r['publisher']['achieved_rate'] / 1e3:9.0f}k "
                 f"{_us(L['wire_to_signal']['p50']):>9s} {_us(L['wire_to_signal']['p99']):>9s} "
                 f"{_us(L['wire_to_signal']['p99.99']):>11s} {_us(L.get('floor', {}).get('p50')):>10s} "
                 f"{_us(L.get('floor', {}).get('p99')):>10s} {_us(L.get('pyzmq_baseline', {}).get('p99')):>10s}")
    summary["plots"] = [] if args.no_plots else plot(summary, outdir)
    replace_file(outdir / "summary.json", json.dumps(summary, indent=1))
    _say(f"\n  written to {outdir}/: summary.json, *.hgrm (HdrHistogram plotter), intervals-*.hlog"
         f"{', ' + ', '.join(summary['plots']) if summary['plots'] else ''}")
    _say("  (figures from a shared or virtual machine drift between runs: compare against the floors of the same run)")
    return summary


#: --until-saturation doubles the rate at most this many times in all.
MAX_SATURATION_RATES = 12


def baseline_saturated(p50: float) -> str | None:
    """Why the pyzmq baseline's figures are a queue's, or None (its p50 past SATURATED_P50_NS):
    at 1M ev/s its p50 was 528 ms, and "p50 0.0003x" compared tickwire against a queue unsaid."""
    if p50 > SATURATED_P50_NS:
        return (f"saturated: its own p50 is {p50 / 1e6:,.1f} ms (past {SATURATED_P50_NS / 1e6:g} ms), a queue, not a "
                f"latency: the ratio says only that tickwire keeps up at this rate where the baseline does not")
    return None


#: a floor this many times the target's p50 or p99 is no floor (no verdict against it)
FLOOR_ABOVE = 2.0


def floor_saturated(achieved: float, p50: float, rate: float) -> str | None:
    """Why the floor at ``rate`` is itself saturated, or None. A floor that is a queue (its
    publisher short of the rate, or its median past SATURATED_P50_NS) makes "within 1.25x of the
    floor" a comparison of two queues: it says nothing of tickwire, so no verdict is given."""
    if achieved < 0.95 * rate:
        return (f"the floor's publisher reached {achieved / 1e3:,.0f}k ev/s of the {_fmt_rate(rate)} offered: the "
                f"machine, not tickwire, is the limit at this rate")
    if p50 > SATURATED_P50_NS:
        return (f"the floor's own p50 is {p50 / 1e6:,.1f} ms (past {SATURATED_P50_NS / 1e6:g} ms): the bare "
                f"libzmq subscriber fell behind, a queue, not a latency")
    return None


def _check_memory(args, rates, per_msg: float) -> None:
    """Refuse a run whose stamps would not fit: every message's and signal's stamps are kept for
    the whole run, allocated up front (--duration 1e9 at 1k ev/s was a 112 GiB allocation and a
    child's traceback)."""
    seconds = args.warmup + args.duration + args.drain
    rate = max(rates)
    need = seconds * rate / per_msg * (1.05 * 30 + 1.2 * 26) + seconds * rate * 0.015 * 36
    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return
    if need > 0.5 * avail:
        raise TooLong(f"--duration/--warmup/--drain: {seconds:g} s at {_fmt_rate(rate)} ev/s keeps about "
                         f"{need / 2**30:,.1f} GiB of stamps, more than half the memory available here "
                         f"({avail / 2**30:,.1f} GiB): measure fewer seconds")


def _saturated(res: dict, rate: float) -> str | None:
    """Why the run at ``rate`` shows saturation, or None: the publisher could not reach the rate,
    the consumer lost signals to the ring lapping it, or the target fell behind (wire-to-signal
    p50 past SATURATED_P50_NS: a queue, not a latency)."""
    achieved, p50 = res["publisher"]["achieved_rate"], res["latency_ns"]["wire_to_signal"]["p50"]
    if achieved < 0.95 * rate:
        return f"the publisher reached {achieved / 1e3:,.0f}k ev/s of the {_fmt_rate(rate)} offered"
    if res["signals_missed"] > 0:
        return f"the consumer missed {res['signals_missed']:,} signals (the ring lapped it)"
    if p50 > SATURATED_P50_NS:
        return (f"wire-to-signal p50 {p50 / 1e6:,.1f} ms is past {SATURATED_P50_NS / 1e6:g} ms: the target fell "
                f"behind (a queue, not a latency)")
    return None


HELP = """\
Wire-to-signal latency at a constant offered rate (open loop, wrk2-style), with its floor and a
pyzmq baseline measured in the same run.

The publisher sends pre-encoded messages from a C loop, each at its intended time (written into
the header's send_time); a consumer process stamps each signal as it reads it from the signal
ring. wire_to_signal = that receipt - the intended send time of the tick that caused the signal,
so every stall (publisher, socket queue, engine) counts. Beside it: wire_queue (intended send ->
the engine takes the message out of libzmq), engine (-> rule fired), ring_hop (-> the consumer
has it). The floor (the targets are measured against it): the same schedule to a bare C libzmq
subscriber on the engine's core that passes the messages which carried the target's signals
straight into a signal ring read by the same consumer (floor_zmq_hop, floor_ring_hop); also
zmq_hop (every message) + ring_hop_floor (measured apart) = hops_sum; pyzmq_baseline (pyzmq
receive loop + dict book + multiprocessing.Queue to a consumer). The engine runs on the second
core the process may use, everything else on the first (with --config: its first worker's core
and its supervisor's); a worker or floor found on another core stops the run.

examples:
  tickwire bench                                  # 100k ev/s, 10 s, Binance capture, engine worker
  tickwire bench --rate 10k,100k,1M --repeat 3 --p99-threshold 500 --out sweep/
  tickwire bench --target daemon --config tickwire.toml --rate 100k
  tickwire bench compare before/summary.json after/summary.json
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="latency benchmark harness: wire-to-signal at an offered rate",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", default="100k",
                   help="offered events/s; a comma list sweeps them (10k,100k,1M) [%(default)s]")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per rate [%(default)s]")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds sent first and left out of the figures [%(default)s]")
    p.add_argument("--drain", type=float, default=1.0,
                   help="seconds the consumer keeps reading after the last send [%(default)s]")
    p.add_argument("--target", choices=("pipeline", "daemon"), default="pipeline",
                   help="pipeline: one engine worker process, no store (quick); daemon: `tickwire run "
                        "--config` (needs --config) [%(default)s]")
    p.add_argument("--config", help="daemon config (TOML): its instruments, rules, workers and settings; "
                                    "the feed endpoint, snapshot service, channels, state_dir, run name and metrics "
                                    "port are replaced, and its log file, HDR folder and store are the scratch "
                                    "directory's (docs/bench.md)")
    p.add_argument("--source", choices=("auto", "binance", "synthetic"), default="auto",
                   help="the stream without --config: the Binance BTCUSDT depth capture (../shared/data), or "
                        "a seeded synthetic L2 market; auto: the capture when present [%(default)s]")
    p.add_argument("--batch", type=int, default=0,
                   help="events per wire message (0: the exchange's own messages, capped at 1024) [%(default)s]")
    p.add_argument("--channels", type=int, default=1, help="feed channels of the stream [%(default)s; with --config: its feeds.channels]")
    p.add_argument("--events", type=int, default=200_000, help="synthetic stream: events generated [%(default)s]")
    p.add_argument("--seed", type=int, default=1, help="synthetic stream: seed of the market [%(default)s]")
    p.add_argument("--busy-poll", dest="busy_poll", action="store_true", default=None,
                   help="the target and the zmq floor: poll without blocking (default: --config's feeds.busy_poll, "
                        "else the example config's)")
    p.add_argument("--no-busy-poll", dest="busy_poll", action="store_false",
                   help="the target and the zmq floor: sleep in zmq_poll between messages")
    p.add_argument("--python-loop", action="store_true",
                   help="the worker's live loop per batch from Python (feeds.fast_loop = false), for a "
                        "before/after of the loop in C")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the pyzmq baseline")
    p.add_argument("--no-floors", action="store_true", help="skip the libzmq and ring floors")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run the target and its relay floor N times per rate, alternated, and pool their "
                        "latencies (a shared machine's slow spells then fall on both); each pair's ratio "
                        "is printed and kept [%(default)s]")
    p.add_argument("--until-saturation", action="store_true",
                   help="after the last rate, keep doubling it until the publisher cannot reach it, "
                        "signals are lost or the target falls behind (wire-to-signal p50 over 10 ms)")
    p.add_argument("--p99-threshold", type=float, metavar="US",
                   help="report the highest rate whose wire-to-signal p99 stays under this many us")
    p.add_argument("--out", default="tickwire-bench", help="output directory [%(default)s]")
    p.add_argument("--no-plots", action="store_true", help="no PNGs (they need matplotlib: "
                   "in a checkout, .venv/bin/pip install 'matplotlib>=3.7')")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (target logs, raw stamps)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--stall-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--stall-at", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--consumer-start-delay", type=float, default=0.0, help=argparse.SUPPRESS)   # (a slow spawn, for tests)
    p.set_defaults(func=cmd_bench)
    sub_b = p.add_subparsers(dest="bench_command", metavar="[compare A B]")
    cmp = sub_b.add_parser("compare", help="print two saved runs side by side with ratios (B/A)",
                           description="Print two saved bench runs (summary.json, or its directory) side by "
                                       "side: per rate and series, p50/p99/p99.99 of A and B and B/A.")
    cmp.add_argument("a", help="summary.json (or its directory) of run A")
    cmp.add_argument("b", help="summary.json (or its directory) of run B")
    return p


def default_args(**over) -> argparse.Namespace:
    """The command's defaults as a Namespace, with ``over`` applied (for programs: the demo)."""
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers())
    args = ap.parse_args(["bench"])
    for k, v in over.items():
        if not hasattr(args, k):
            raise TypeError(f"no bench option {k!r}")
        setattr(args, k, v)
    return args


def cmd_bench(args) -> int:
    if getattr(args, "bench_command", None) == "compare":
        try:
            return compare(args.a, args.b)
        except ValueError as exc:
            print(f"tickwire bench compare: {exc}", file=sys.stderr)
            return 2
    if args.target == "daemon" and not args.config:
        print("tickwire bench: --target daemon needs --config FILE", file=sys.stderr)
        return 2
    from tickwire.engine.config import seconds_problem

    for k in ("duration", "warmup", "drain"):
        why = seconds_problem(getattr(args, k), zero_ok=k != "duration")
        if why:
            print(f"tickwire bench: --{k}: {why}", file=sys.stderr)
            return 2
    if args.p99_threshold is not None and not 0 < args.p99_threshold < math.inf:
        print(f"tickwire bench: --p99-threshold must be > 0 us, got {args.p99_threshold}", file=sys.stderr)
        return 2
    if not 1 <= args.repeat <= 100:
        print(f"tickwire bench: --repeat must be 1..100 runs, got {args.repeat}", file=sys.stderr)
        return 2
    try:
        rates = [parse_rate(r) for r in args.rate.split(",")]
    except ValueError as exc:
        # (the whole value: "--rate 1,000" said only "got '000'"; a comma separates rates)
        print(f"tickwire bench: --rate {args.rate!r}: {exc}"
              + ("; a comma separates rates (one thousand: 1000 or 1k)" if "," in args.rate else ""), file=sys.stderr)
        return 2
    twice = sorted({r for r in rates if rates.count(r) > 1})
    if twice:
        # (each rate's files are named by it: the second run's replaced the first's, and compare
        # paired the wrong runs)
        print(f"tickwire bench: --rate: {', '.join(_fmt_rate(r) for r in twice)} given more than once: each rate "
              f"once (--repeat N measures a rate N times, pooled)", file=sys.stderr)
        return 2
    if args.seed < 0:
        print(f"tickwire bench: --seed must be 0 or more, got {args.seed}", file=sys.stderr)
        return 2
    if args.channels > 0xFFFF:
        # (70000: refused only after the header line, as a config error without this prefix)
        print(f"tickwire bench: --channels: expected an integer from 1 to 65,535 (the wire's channels), got "
              f"{args.channels}", file=sys.stderr)
        return 2
    if not str(args.out).strip():
        print("tickwire bench: --out: an empty path (name the directory for the results)", file=sys.stderr)
        return 2
    from tickwire.feeds.wire import MAX_MESSAGE_EVENTS

    limit, whose = MAX_MESSAGE_EVENTS, "the receivers' limit"
    if args.config:
        from tickwire.engine.config import ConfigError, load

        try:
            loaded = load(args.config)
        except ConfigError as exc:
            print(f"tickwire bench: {exc}", file=sys.stderr)
            return 2
        limit, whose = loaded.feeds.max_message_events, "the config's feeds.max_message_events"
        if loaded.feeds.socket != "sub":
            # (the daemon's PULL socket never subscribes: the bench waited 120 s for it, then failed)
            print(f"tickwire bench: --config {args.config}: feeds.socket = {loaded.feeds.socket!r}: the bench's "
                  f"publisher is a PUB socket, which a PULL socket cannot read: bench a copy of the config with "
                  f"feeds.socket = \"sub\"", file=sys.stderr)
            return 2
        if args.target == "pipeline" and len(loaded.workers) > 1:
            # (the pipeline target runs worker 0 alone: the other workers' channels went unsubscribed,
            # and the bench waited 60 s to say "the target did not connect: see its log", a log that
            # was not there: an adversarial pass)
            print(f"tickwire bench: --config {args.config}: {len(loaded.workers)} workers, and the pipeline target "
                  f"runs one engine worker (worker 0's channels only): give --target daemon, which runs them all, "
                  f"or a config of one worker", file=sys.stderr)
            return 2
    if not 0 <= args.batch <= limit:
        print(f"tickwire bench: --batch must be 0 (the exchange's own messages) .. {limit:,} events a message "
              f"({whose}; a larger message is refused whole), got {args.batch}", file=sys.stderr)
        return 2
    os.umask(0o077)
    try:                                      # before minutes of measuring, not after
        Path(args.out).mkdir(parents=True, exist_ok=True)
        probe = Path(args.out) / f".tickwire-bench-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        print(f"tickwire bench: --out {args.out}: cannot write there ({exc.strerror or exc})", file=sys.stderr)
        return 2
    taken = sorted(str(q) for pat in ("summary.json", "sweep.png", "intervals-*.hlog", "spectrum-*.png", "*.hgrm")
                   for q in Path(args.out).glob(pat) if q.is_dir())
    if taken:                                  # (an IsADirectoryError traceback after the whole run)
        print(f"tickwire bench: --out {args.out}: {taken[0]} is a directory where a result file goes",
              file=sys.stderr)
        return 2
    got = []

    def terminated(*_):                        # SIGTERM: stopped as Ctrl-C is, children and rings cleaned up
        got.append("SIGTERM")                  # (they were left running, and their shared memory)
        raise KeyboardInterrupt

    def _stamp(path):
        try:
            st = os.stat(path, follow_symlinks=False)
            return st.st_ino, st.st_mtime_ns, st.st_size
        except OSError:
            return None

    # summary.json as it was before this run: one there already is an earlier invocation's, not
    # this one's rates (the interrupt said "the rates finished before it are in" of it)
    before = _stamp(Path(args.out) / "summary.json")

    def finished(path) -> str:
        now = _stamp(path)
        if now is not None and now != before:
            return f"the rates finished before it are in {path}"
        return "no rate had finished" + (f" ({path} is an earlier run's)" if now is not None else "")

    old_term = signal.signal(signal.SIGTERM, terminated)
    try:
        summary = run_bench(args)
    except (CoreError, NoSignals, BenchError) as exc:
        print(f"tickwire bench: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, TooLong) else 1
    except OSError as exc:
        # (--out removed or its disk full after minutes of measuring: a FileNotFoundError traceback)
        done = Path(args.out) / "summary.json"
        what = f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}"
        if exc.filename and Path(os.path.abspath(exc.filename)).is_relative_to(Path(args.out).absolute()):
            fin = finished(done)
            what += (f": the results of this rate could not be written; {fin}" if fin.startswith("the rates") else
                     ": the results could not be written; no rate was written"
                     + (f" ({done} is an earlier run's)" if "earlier" in fin else ""))
        print(f"tickwire bench: {what}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        done = Path(args.out) / "summary.json"
        print(f"\ntickwire bench: interrupted{' by SIGTERM' if got else ''}; {finished(done)}", file=sys.stderr)
        return 143 if got else 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
    runs = summary["runs"]
    # (--until-saturation: the last rate's shortfall is the saturation it looked for, said in
    # "stopped"; not a failure: a worker killed at the last rate was reported as saturation, exit 0)
    lossy = [r for r in runs if r.get("loss") and not (
        args.until_saturation and r is runs[-1] and not failures(r["loss"]))]
    if lossy:
        print(f"tickwire bench: {len(lossy)} of {len(runs)} rate(s) did not deliver everything (the "
              f"INCOMPLETE lines above, and \"loss\" in summary.json): their latency figures leave those events and "
              f"signals out", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """``tickwire bench ...`` without the other subcommands (benchmarks/bench_wire.py)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="tickwire")
    add_parser(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["bench", *argv])
    return args.func(args)
