"""The feed handler: ZeroMQ sockets in, event batches out, sequencing and snapshot recovery.

:class:`FeedHandler` owns the sockets (SUB or PULL, one per endpoint, tcp or ipc; a DEALER to
the publisher's snapshot service), a :class:`tickwire.ext.codec.FeedReceiver` that drains
and decodes them without Python per message, and one state machine per channel::

    INIT ──first message──► RECOVERING ──snapshot applied, buffer replayed──► LIVE
                                ▲                                               │
                                └──────── gap / new publisher epoch ────────────┤
    STALE ◄── silent longer than silence_timeout (resumes LIVE if nothing was lost)
          ◄── recovery failed after max_retries (a new one after retry_pause)

Everything the engine needs arrives through ``on_batch(events)``, in order per channel:
live events, ``Kind.SNAPSHOT`` markers with ``Flag.STALE`` for each instrument of a channel
that lost data (books keep their contents, ``in_sync`` False), the snapshot's events
(BEGIN, one ADD per order or level, END), and the buffered live events the snapshot did
not cover.  ``docs/feeds.md`` explains the states, the recovery order and the counters.
"""

from __future__ import annotations

import collections
import enum
import logging
import time

import numpy as np
import zmq

from tickwire.ext.codec import Decoder, FeedReceiver, TYPES_REPLY, now_ns
from tickwire.ext.records import EVENT_DTYPE, Flag, Kind, Side, empty_events
from tickwire.feeds import wire
from tickwire.feeds.iothread import io_context
from tickwire.feeds.wire import Drop, MsgType, WireFlag

__all__ = ["ChannelState", "FeedHandler"]

log = logging.getLogger("tickwire.feeds")


class ChannelState(enum.Enum):
    """Where a channel stands."""

    #: Nothing received yet (books out of sync until the first snapshot).
    INIT = "init"
    #: In sequence: events flow straight from the socket to ``on_batch``.
    LIVE = "live"
    #: A snapshot was requested; live messages are buffered until it is applied.
    RECOVERING = "recovering"
    #: Out of sync without a recovery in progress: silent too long, or a recovery failed.
    STALE = "stale"


class _Channel:
    """Per-channel sequencing and recovery state (Python side of the slow path)."""

    __slots__ = ("id", "instruments", "state", "epoch", "next_seq", "in_sync", "silent", "failed",
                 "retry_after", "buffer", "buffered_events", "heartbeat_seq", "request_id",
                 "attempt", "deadline", "parts", "first_part", "live_since_ns",
                 "gaps", "recoveries", "restarts")

    def __init__(self, cid: int, instruments):
        self.id = cid
        self.instruments = None if instruments is None else np.unique(np.asarray(list(instruments), np.uint32))
        self.state = ChannelState.INIT
        self.epoch = 0
        self.next_seq = 0
        self.in_sync = False
        self.silent = False
        self.failed = False
        self.retry_after = 0.0
        self.buffer = collections.deque()
        self.buffered_events = 0
        self.heartbeat_seq = 0
        self.request_id = 0
        self.attempt = 0
        self.deadline = 0.0
        self.parts = []
        self.first_part = None
        self.live_since_ns = 0
        self.gaps = 0
        self.recoveries = 0
        self.restarts = 0


_COUNTERS = (
    "batches", "events", "snapshot_events", "markers", "gaps", "recoveries", "recovery_requests",
    "recovery_retries", "recovery_failures", "restarts", "silences", "resumes", "buffered",
    "covered", "unrecovered", "foreign_events",
)


class FeedHandler:
    """Receives tickwire feeds and keeps every channel in sequence, recovering by snapshot.

    Parameters
    ----------
    endpoints : str or sequence of str
        ZeroMQ endpoints (``tcp://host:port``, ``ipc:///path``); one socket each.
    channels : mapping of int to iterable of int, or iterable of int
        The channels to serve (an instrument shard), each with the instrument ids it
        carries (STALE markers go to those; snapshot events of other instruments are
        ignored).  Without instrument lists, the instruments are learnt from snapshots.
    on_batch : callable
        ``on_batch(events)``: a numpy EVENT_DTYPE array, valid during the call (it may be a
        view of the handler's buffer).  A ``BookSet``'s ``apply`` fits.
    snapshot : str, optional
        Endpoint of the publisher's snapshot service (ROUTER).  Without one, gaps are
        counted and marked STALE but cannot be repaired (``unrecovered``).
    socket_type : {"SUB", "PULL"}
    bind : bool
        Bind the data sockets instead of connecting them (publishers that connect).
    context : zmq.Context, optional
        Default: a context of the handler's own (terminated by :meth:`close`).
    io_cpus : iterable of int, optional
        Cores for the ZeroMQ I/O thread of the handler's own context (libzmq's
        ``ZMQ_THREAD_AFFINITY_CPU_ADD``). The I/O thread wakes for every message that
        arrives; on the engine's core it preempts the engine mid-batch, so the daemon puts
        it on the housekeeping core (``feeds.io_cpu``). Default: wherever the process may run.
    io_rt_priority : int
        SCHED_FIFO priority for that I/O thread (0: normal scheduling), so that other work on
        its core does not delay the messages; where the process is not permitted, a warning
        and normal scheduling (:attr:`io_realtime` says which). See :mod:`tickwire.feeds.iothread`.
    busy_poll : bool
        Wait for messages by polling without blocking (:attr:`FeedReceiver.spin`): the
        lowest latency on a dedicated core, at the price of keeping that core busy.
    max_events : int
        Most events in one data message (larger: dropped as OVERSIZED).
    batch_events : int
        Size of the preallocated receive buffer; one drain delivers at most this many.
    rcvhwm : int, optional
        Receive high-water mark in messages (libzmq's default: 1000; 0: unlimited).  Past
        it ZeroMQ drops silently: the sequence numbers show the loss and recovery repairs it.
    silence_timeout : float
        Seconds without any message (data or heartbeat) after which a LIVE channel is
        flagged STALE (0: never).
    snapshot_timeout : float
        Seconds to wait for a snapshot reply before asking again; each retry waits
        ``backoff`` times longer, up to ``max_backoff``.
    max_retries : int
        Requests after the first before a recovery is declared failed.
    retry_pause : float
        Seconds after a failed recovery before the next is attempted.
    buffer_events : int
        Most live events buffered per channel during a recovery (the oldest go first).
    """

    def __init__(self, endpoints, channels, on_batch, *, snapshot: str | None = None,
                 socket_type: str = "SUB", bind: bool = False, context: zmq.Context | None = None,
                 io_cpus=None, io_rt_priority: int = 0, busy_poll: bool = False,
                 max_events: int = 8192, batch_events: int = 65536, rcvhwm: int | None = None,
                 silence_timeout: float = 2.0, snapshot_timeout: float = 0.5, backoff: float = 2.0,
                 max_backoff: float = 5.0, max_retries: int = 5, retry_pause: float = 5.0,
                 buffer_events: int = 1 << 20):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        endpoints = list(endpoints)
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        kind = {"SUB": zmq.SUB, "PULL": zmq.PULL}.get(str(socket_type).upper())
        if kind is None:
            raise ValueError(f"socket_type must be 'SUB' or 'PULL', got {socket_type!r}")
        if batch_events < max_events:
            raise ValueError("batch_events must be at least max_events")
        if isinstance(channels, dict):
            chans = {int(c): _Channel(int(c), insts) for c, insts in channels.items()}
        else:
            chans = {int(c): _Channel(int(c), None) for c in channels}
        if not chans:
            raise ValueError("at least one channel is needed")
        for c in chans:
            if not 0 <= c <= 0xFFFF:
                raise ValueError(f"channel ids are 0..65535, got {c}")
        self._on_batch = on_batch
        if context is not None and (io_cpus or io_rt_priority):
            raise ValueError("io_cpus and io_rt_priority apply to the handler's own context; "
                             "set them on yours (see tickwire.feeds.iothread)")
        self._own_context = context is None
        #: True when the handler's I/O thread runs under SCHED_FIFO (io_rt_priority, permitted)
        self.io_realtime = False
        if context is None:
            context, self.io_realtime = io_context(io_cpus or (), io_rt_priority)
        self._ctx = context
        self._channels = chans
        self.endpoints = endpoints
        self.snapshot_endpoint = snapshot
        self.silence_timeout = float(silence_timeout)
        self.snapshot_timeout = float(snapshot_timeout)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_retries = int(max_retries)
        self.retry_pause = float(retry_pause)
        self.buffer_events = int(buffer_events)
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._logged: set = set()
        self._request_seq = 0
        self._recovering_ids: set = set()
        self._started = False
        self._closed = False
        self._tick = max(0.001, min(0.05, (self.silence_timeout or 1.0) / 4, self.snapshot_timeout / 4))
        self._next_timer = 0.0
        self._buf = empty_events(batch_events)

        self._sockets = []
        try:
            for ep in endpoints:
                s = self._ctx.socket(kind)
                self._sockets.append(s)
                s.setsockopt(zmq.LINGER, 0)
                if rcvhwm is not None:
                    s.setsockopt(zmq.RCVHWM, int(rcvhwm))
                if kind == zmq.SUB:
                    for c in sorted(chans):
                        s.setsockopt(zmq.SUBSCRIBE, wire.topic(c))
                (s.bind if bind else s.connect)(ep)
            self._dealer = None
            if snapshot:
                self._dealer = self._ctx.socket(zmq.DEALER)
                self._dealer.setsockopt(zmq.LINGER, 0)
                self._dealer.connect(snapshot)
            self._replies = Decoder(max_events=1 << 22, types=TYPES_REPLY)
            self.receiver = FeedReceiver(self._sockets, wake=[self._dealer] if self._dealer else [],
                                         max_events=max_events)
            self.receiver.spin = bool(busy_poll)
        except BaseException:
            self._close_sockets()
            if self._own_context:
                self._ctx.term()                   # its I/O thread too
            raise
        for c in chans:
            self.receiver.serve(c, live=False)

    # -- running ---------------------------------------------------------------------------
    def poll(self, timeout: float = 0.05) -> int:
        """Receive what is there (waiting up to ``timeout`` seconds for the first message),
        deliver it, and do any recovery work due; returns the live events delivered."""
        if not self._started:
            self._start()
        wait = max(0.0, min(timeout, self._next_timer - time.monotonic()))
        n = self.receiver.drain(self._buf, wait)
        if n:
            self._deliver(self._buf[:n])
            self._counters["events"] += n
        return n + self.service()

    def service(self) -> int:
        """The slow path, without draining: the parked message, snapshot replies and timers.

        A Cython worker that drains with ``tw_feed_drain`` itself calls this whenever
        ``receiver.c.pending`` or ``receiver.c.woken`` is set, and now and then for the
        timers.  Returns the live events it delivered.
        """
        delivered = 0
        if self.receiver.pending:
            delivered += self._slow(self.receiver.take_pending())
        if self._dealer is not None and (self.receiver.woken or self._recovering_ids):
            delivered += self._read_replies()
        now = time.monotonic()
        if now >= self._next_timer:
            self._timers(now)
            self._next_timer = now + self._tick
        return delivered

    def run(self, duration: float | None = None, until=None, stop=None, poll_timeout: float = 0.05) -> None:
        """Poll until ``duration`` seconds passed, ``until()`` is true, or ``stop`` (a
        threading.Event) is set."""
        end = None if duration is None else time.monotonic() + duration
        while True:
            if stop is not None and stop.is_set():
                return
            if until is not None and until():
                return
            if end is not None and time.monotonic() >= end:
                return
            self.poll(poll_timeout)

    def close(self) -> None:
        """Close the sockets (and the context when the handler made it)."""
        if self._closed:
            return
        self._closed = True
        self._close_sockets()
        if self._own_context:
            self._ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- state -----------------------------------------------------------------------------
    def state(self, channel: int) -> ChannelState:
        return self._channels[channel].state

    def all_live(self) -> bool:
        """Whether every channel is LIVE (in sequence and in sync)."""
        return all(c.state is ChannelState.LIVE and c.in_sync for c in self._channels.values())

    def next_seq(self, channel: int) -> int:
        """Sequence number of the next event expected on ``channel``."""
        c = self._channels[channel]
        if c.state is ChannelState.LIVE:
            return self.receiver.channel(channel)[3]
        return c.next_seq

    def channel_status(self) -> dict:
        """Per channel: state, epoch, next_seq, in_sync, gaps, recoveries, restarts, buffered events."""
        return {cid: {"state": c.state.value, "epoch": c.epoch, "next_seq": self.next_seq(cid),
                      "in_sync": c.in_sync, "gaps": c.gaps, "recoveries": c.recoveries,
                      "restarts": c.restarts, "buffered_events": c.buffered_events}
                for cid, c in self._channels.items()}

    def counters(self) -> dict:
        """Every counter: the receive loop's (messages, bytes, heartbeats...), the handler's
        (events delivered, gaps, recoveries...) and ``drops`` by reason (see docs/feeds.md)."""
        rx = self.receiver.counters
        out = {"messages": rx["messages"], "bytes": rx["bytes"], "heartbeats": rx["heartbeats"],
               "slow_path": rx["slow"], "waits": rx["waits"]}
        out.update(self._counters)
        drops = self.receiver.drops
        for name, n in self._replies.drops.items():
            drops[name] = drops.get(name, 0) + n
        out["drops"] = drops
        return out

    # -- internals: delivery ----------------------------------------------------------------
    def _start(self) -> None:
        self._started = True
        for c in self._channels.values():           # nothing is in sync before its first snapshot
            self._mark(c, Flag.SNAPSHOT | Flag.STALE)

    def _deliver(self, events) -> None:
        if len(events):
            self._counters["batches"] += 1
            self._on_batch(events)

    def _mark(self, c: _Channel, flags: int) -> None:
        """SNAPSHOT markers for every instrument of the channel: STALE, or END (back in sync)."""
        c.in_sync = not flags & Flag.STALE
        if c.instruments is None or not len(c.instruments):
            return
        ev = empty_events(len(c.instruments))
        ts = now_ns()
        ev["kind"] = Kind.SNAPSHOT
        ev["side"] = Side.NONE
        ev["flags"] = int(flags)
        ev["instrument"] = c.instruments
        ev["channel"] = c.id
        ev["seq"] = max(c.next_seq - 1, 0)
        ev["ts_event"] = ts
        ev["ts_recv"] = ts
        self._counters["markers"] += len(ev)
        self._deliver(ev)

    def _set_state(self, c: _Channel, state: ChannelState) -> None:
        c.state = state
        if state is ChannelState.RECOVERING:
            self._recovering_ids.add(c.id)
        else:
            self._recovering_ids.discard(c.id)

    def _go_live(self, c: _Channel, next_seq: int) -> None:
        self._set_state(c, ChannelState.LIVE)
        c.next_seq = next_seq
        c.silent = c.failed = False
        c.live_since_ns = now_ns()
        c.buffer.clear()
        c.buffered_events = 0
        self.receiver.serve(c.id, live=True, epoch=c.epoch, next_seq=next_seq)

    def _leave_live(self, c: _Channel) -> None:
        if c.state is ChannelState.LIVE:
            c.next_seq = self.receiver.channel(c.id)[3]
        self.receiver.serve(c.id, live=False, epoch=c.epoch, next_seq=c.next_seq)

    def _log_once(self, key: str, level: int, message: str, *args) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, message + " (further ones are counted, not logged)", *args)

    # -- internals: the slow path -------------------------------------------------------------
    def _slow(self, item) -> int:
        reason, h, events, ts = item
        if reason != Drop.OK:
            return 0
        c = self._channels[h.channel]
        if c.state is ChannelState.LIVE:
            c.next_seq = self.receiver.channel(c.id)[3]
        if c.state is ChannelState.INIT or h.epoch > c.epoch:
            if c.state is not ChannelState.INIT:
                self._counters["restarts"] += 1
                c.restarts += 1
                self._log_once("restart", logging.WARNING, "channel %d: publisher restarted (new epoch)", c.id)
            c.epoch = h.epoch
            c.next_seq = 0
            return self._begin(c, h, events)
        if c.state is ChannelState.RECOVERING:
            self._hold(c, h, events)
            return 0
        if c.state is ChannelState.STALE and c.failed and time.monotonic() < c.retry_after:
            self.receiver.count_drop(Drop.UNSYNCED)
            return 0
        if c.state is ChannelState.STALE and c.silent and h.seq == c.next_seq:
            self._counters["resumes"] += 1          # silent, but nothing was lost
            self._go_live(c, h.seq + h.count)
            self._mark(c, Flag.SNAPSHOT | Flag.SNAPSHOT_END)
            if events is not None:
                self._deliver(events)
                self._counters["events"] += len(events)
            return 0 if events is None else len(events)
        if h.type == MsgType.DATA and h.seq + h.count <= c.next_seq:
            self.receiver.count_drop(Drop.DUPLICATE)
            return 0
        if h.type == MsgType.HEARTBEAT and h.seq <= c.next_seq:
            return 0
        self._counters["gaps"] += 1
        c.gaps += 1
        self._log_once("gap", logging.WARNING, "channel %d: sequence gap (expected %d, got %d)",
                       c.id, c.next_seq, h.seq)
        return self._begin(c, h, events)

    def _begin(self, c: _Channel, h, events) -> int:
        """Start a recovery with ``h`` (a message that cannot be applied in sequence)."""
        if self._dealer is None:
            return self._skip(c, h, events)
        if c.in_sync:
            self._mark(c, Flag.SNAPSHOT | Flag.STALE)
        self._set_state(c, ChannelState.RECOVERING)
        c.silent = c.failed = False
        c.buffer.clear()
        c.buffered_events = 0
        c.heartbeat_seq = 0
        c.attempt = 0
        self._leave_live(c)
        self._hold(c, h, events)
        self._request(c)
        return 0

    def _skip(self, c: _Channel, h, events) -> int:
        """No snapshot service: accept the stream where it stands (books stay out of sync
        after a loss; in sync when the first message seen starts the stream)."""
        if c.state is ChannelState.INIT:
            self._go_live(c, h.seq + h.count)
            if h.seq == 1:
                self._mark(c, Flag.SNAPSHOT | Flag.SNAPSHOT_END)
        else:
            self._counters["unrecovered"] += 1
            if c.in_sync:
                self._mark(c, Flag.SNAPSHOT | Flag.STALE)
            self._go_live(c, h.seq + h.count)
        if events is not None:
            self._deliver(events)
            self._counters["events"] += len(events)
            return len(events)
        return 0

    def _hold(self, c: _Channel, h, events) -> None:
        """Buffer a live message during a recovery."""
        if h.type == MsgType.HEARTBEAT:
            c.heartbeat_seq = max(c.heartbeat_seq, h.seq)
            return
        if events is None:
            return
        c.buffer.append((h.seq, h.count, events))
        c.buffered_events += h.count
        self._counters["buffered"] += 1
        while c.buffered_events > self.buffer_events and len(c.buffer) > 1:
            _, count, _ = c.buffer.popleft()
            c.buffered_events -= count
            self.receiver.count_drop(Drop.OVERFLOW)

    def _request(self, c: _Channel) -> None:
        self._request_seq = (self._request_seq % 0xFFFFFFFF) + 1
        c.request_id = self._request_seq
        c.parts = []
        c.first_part = None
        c.deadline = time.monotonic() + min(self.snapshot_timeout * self.backoff ** c.attempt, self.max_backoff)
        self._counters["recovery_requests"] += 1
        try:
            self._dealer.send(wire.encode_snapshot_request(c.id, c.request_id, epoch=c.epoch), zmq.NOBLOCK)
        except zmq.Again:                           # queue full: the timer asks again
            pass

    def _read_replies(self) -> int:
        delivered = 0
        while self._dealer.poll(0, zmq.POLLIN):
            frames = self._dealer.recv_multipart(copy=True)
            reason, h, events = self._replies.decode_frames(frames, now_ns())
            if reason != Drop.OK:
                self._log_once(f"reply-{reason.name}", logging.WARNING,
                               "malformed snapshot reply dropped: %s", reason.name)
                continue
            c = self._channels.get(h.channel)
            if (c is None or c.state is not ChannelState.RECOVERING or h.request_id != c.request_id
                    or h.part != len(c.parts)
                    or (c.first_part is not None and (h.seq, h.epoch) != c.first_part)):
                self.receiver.count_drop(Drop.STALE_REPLY)
                continue
            if h.flags & WireFlag.UNAVAILABLE:
                self._log_once("unavailable", logging.WARNING,
                               "channel %d: snapshot service cannot serve it yet", c.id)
                c.deadline = min(c.deadline, time.monotonic() + self.snapshot_timeout)
                c.request_id = 0
                continue
            c.first_part = (h.seq, h.epoch)
            c.parts.append(events)
            if h.flags & WireFlag.FINAL:
                delivered += self._complete(c, h.seq, h.epoch)
        return delivered

    def _complete(self, c: _Channel, covered: int, epoch: int) -> int:
        """Apply a complete snapshot, then the buffered messages it does not cover."""
        parts, c.parts = c.parts, []
        if epoch < c.epoch:                         # older than the stream we follow: ask again
            self.receiver.count_drop(Drop.STALE_REPLY)
            self._request(c)
            return 0
        if epoch > c.epoch:                         # the publisher restarted since our buffer
            self.receiver.count_drop(Drop.OLD_EPOCH, len(c.buffer))
            c.buffer.clear()
            c.buffered_events = 0
            c.heartbeat_seq = 0
            c.epoch = epoch
        snap = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if c.instruments is None:
            c.instruments = np.unique(snap["instrument"]).astype(np.uint32)
        else:
            keep = np.isin(snap["instrument"], c.instruments)
            if not keep.all():
                self._counters["foreign_events"] += int((~keep).sum())
                self._log_once("foreign", logging.WARNING,
                               "channel %d: snapshot events of instruments outside the channel ignored", c.id)
                snap = snap[keep]
        self._deliver(snap)
        self._counters["snapshot_events"] += len(snap)
        c.in_sync = True
        nxt = covered + 1
        pieces, delivered, hole = [], 0, False
        rest = sorted(c.buffer, key=lambda m: m[0])
        for i, (seq, count, events) in enumerate(rest):
            end = seq + count
            if end <= nxt:
                self._counters["covered"] += 1
                continue
            if seq > nxt:
                hole = True
                rest = rest[i:]
                break
            pieces.append(events[nxt - seq:] if seq < nxt else events)
            nxt = end
        if pieces:
            batch = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
            self._deliver(batch)
            delivered = len(batch)
            self._counters["events"] += delivered
        self._counters["recoveries"] += 1
        c.recoveries += 1
        c.next_seq = nxt
        if hole or c.heartbeat_seq > nxt:           # lost again while recovering
            self._counters["gaps"] += 1
            c.gaps += 1
            self._mark(c, Flag.SNAPSHOT | Flag.STALE)
            c.buffer = collections.deque(rest if hole else ())
            c.buffered_events = sum(m[1] for m in c.buffer)
            c.heartbeat_seq = 0
            c.attempt = 0
            self.receiver.serve(c.id, live=False, epoch=c.epoch, next_seq=nxt)
            self._request(c)
            return delivered
        self._go_live(c, nxt)
        return delivered

    def _timers(self, now: float) -> None:
        wall = now_ns()
        for c in self._channels.values():
            if c.state is ChannelState.RECOVERING and now >= c.deadline:
                c.attempt += 1
                if c.attempt > self.max_retries:
                    self._counters["recovery_failures"] += 1
                    self._log_once(f"failed-{c.id}", logging.ERROR,
                                   "channel %d: no snapshot after %d requests; stale, retrying in %.1f s",
                                   c.id, c.attempt, self.retry_pause)
                    self._set_state(c, ChannelState.STALE)
                    c.failed = True
                    c.retry_after = now + self.retry_pause
                    self.receiver.count_drop(Drop.UNSYNCED, len(c.buffer))
                    c.buffer.clear()
                    c.buffered_events = 0
                else:
                    self._counters["recovery_retries"] += 1
                    self._request(c)
            elif c.state is ChannelState.LIVE and self.silence_timeout > 0:
                last = max(self.receiver.last_recv_ns(c.id), c.live_since_ns)
                if wall - last > self.silence_timeout * 1e9:
                    self._counters["silences"] += 1
                    self._log_once(f"silent-{c.id}", logging.WARNING, "channel %d: silent for %.1f s: stale",
                                   c.id, (wall - last) / 1e9)
                    self._leave_live(c)
                    self._set_state(c, ChannelState.STALE)
                    c.silent = True
                    self._mark(c, Flag.SNAPSHOT | Flag.STALE)
        drops = self.receiver.drops
        for name in drops:
            self._log_once(f"drop-{name}", logging.WARNING, "feed message dropped: %s", name)

    def _close_sockets(self) -> None:
        for s in getattr(self, "_sockets", []):
            s.close(0)
        if getattr(self, "_dealer", None) is not None:
            self._dealer.close(0)
