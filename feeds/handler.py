"""The feed handler: ZeroMQ sockets in, event batches out, sequencing, retransmission and
snapshot recovery.

:class:`FeedHandler` owns the sockets (SUB or PULL, one per endpoint, tcp or ipc; a DEALER to
the publisher's recovery service), a :class:`tickwire.ext.codec.FeedReceiver` that drains and
decodes them without Python per message, and one state machine per channel::

    INIT ──first snapshot──► LIVE ◄──────── hole filled ───────── FILLING
                              │  └── a sequence hole (lost or reordered) ──►  │
                              │                                               │ range no longer held
                              └── publisher restart (confirmed) ─► RECOVERING ◄┘
    STALE ◄── silent longer than silence_timeout, or the service does not answer

Two streams leave it, each in sequence per channel:

- ``on_batch(events)``: what the **books** need: live events, ``Kind.SNAPSHOT`` markers with
  ``Flag.STALE`` when a channel's book can no longer be trusted, the snapshot's events
  (BEGIN, one ADD per order or level, END), and the events after the snapshot.
- ``on_store(events)``: the **tick history**: every event the publisher sent, exactly once, in
  sequence order. A message a snapshot makes redundant for the book is still stored; a
  hole is filled by retransmission from the publisher's recovery service, never by a
  snapshot. Where the publisher no longer holds a range, the loss is counted exactly
  (``lost_events``, per channel and in total) and logged.
- ``on_snapshot(events)``: snapshot events and the ``Kind.SNAPSHOT`` markers (STALE, and END
  when a silent channel resumes), to keep beside the history: replay rebuilds from them what
  the books saw (docs/replay.md).

In the usual case (in sequence) the same array goes to ``on_batch`` and then ``on_store``.
``docs/feeds.md`` explains the states, the recovery order, the guarantees and the counters.
"""

from __future__ import annotations

import bisect
import enum
import logging
import time

import numpy as np
import zmq

from tickwire.ext.codec import Decoder, FeedReceiver, TYPES_REPLY, now_ns
from tickwire.ext.records import Flag, Kind, Side, empty_events
from tickwire.feeds import wire
from tickwire.feeds.iothread import io_context
from tickwire.feeds.wire import Drop, MsgType, WireFlag

__all__ = ["ChannelState", "FeedHandler"]

log = logging.getLogger("tickwire.feeds")


class ChannelState(enum.Enum):
    """Where a channel stands."""

    #: Nothing received yet (books out of sync until the first snapshot).
    INIT = "init"
    #: In sequence: events flow straight from the socket to ``on_batch`` and ``on_store``.
    LIVE = "live"
    #: A sequence hole: messages after it are held (the book waits, in sync) until the
    #: missing ones arrive late or are sent again by the publisher.
    FILLING = "filling"
    #: A snapshot was requested for the book; live messages are held (and stored) meanwhile.
    RECOVERING = "recovering"
    #: Out of sync without a recovery in progress: silent too long, or a recovery failed.
    STALE = "stale"


class _Range:
    """Held events ``start .. end-1`` of one epoch, received at ``arrival`` (a counter)."""

    __slots__ = ("start", "end", "events", "arrival")

    def __init__(self, start, events, arrival):
        self.start = start
        self.end = start + len(events)
        self.events = events
        self.arrival = arrival

    def __lt__(self, other):
        return self.start < other.start


class _Request:
    """An outstanding request to the recovery service."""

    __slots__ = ("id", "kind", "first", "end", "epoch", "deadline", "attempt", "arrival", "parts",
                 "first_part", "got_first", "got", "malformed")

    def __init__(self, kind):
        self.kind = kind               # "snapshot", "fill" or "probe"
        self.id = 0
        self.first = self.end = self.epoch = 0
        self.deadline = 0.0
        self.attempt = 0
        self.arrival = 0
        self.parts = []
        self.first_part = None
        self.got_first = None
        self.got = 0
        self.malformed = None          # the handler's malformed replies when it was first sent


class _Channel:
    """Per-channel sequencing, retransmission and recovery state (the slow path)."""

    __slots__ = ("id", "instruments", "state", "epoch", "next_seq", "store_next", "book_ok", "in_sync",
                 "silent", "failed", "retry_after", "held", "held_events", "early", "suspects", "hb_seq",
                 "hb_arrival", "hole_since", "snap", "fill", "probe", "snap_wanted", "snap_after",
                 "resume", "live_since", "heard_ns", "heard", "gaps", "recoveries", "restarts", "lost_events", "losses",
                 "retransmitted", "last_ts", "unstamped", "end_seq", "learned", "resume_ts")

    def __init__(self, cid: int, instruments):
        self.id = cid
        self.instruments = None if instruments is None else np.unique(np.asarray(list(instruments), np.uint32))
        self.learned = instruments is None   # the channel's instruments: those its snapshots have named
        self.state = ChannelState.INIT
        self.epoch = None              # the publisher epoch followed (from the first snapshot)
        self.next_seq = 0              # the book's next sequence number (when book_ok)
        self.store_next = None         # the history's next sequence number (None: not known yet)
        self.book_ok = False           # the book follows the stream from next_seq
        self.in_sync = False
        self.silent = False
        self.failed = False
        self.retry_after = 0.0
        self.held = []                 # sorted _Range of the followed epoch, not yet delivered
        self.held_events = 0
        self.early = []                # (header, events, arrival) before the epoch is known
        self.suspects = []             # (header, events, arrival) of an unconfirmed newer epoch
        self.hb_seq = 0                # the highest next-sequence a heartbeat announced
        self.hb_arrival = 0
        self.end_seq = None            # the publisher said its epoch ended here (an END heartbeat)
        self.hole_since = None         # monotonic time a hole was first seen
        self.snap = None               # outstanding _Request of each kind
        self.fill = None
        self.probe = None
        self.snap_wanted = False       # a snapshot is needed (sent when the rate limit allows)
        self.snap_after = 0.0
        self.resume = None             # (epoch, next_seq) of the history to continue from
        self.resume_ts = 0             # the exchange time that history stands at (0: not known)
        self.live_since = 0.0          # monotonic time the channel last went LIVE
        self.heard_ns = 0              # the receiver's last receipt stamp (wall clock) the timers saw,
        self.heard = 0.0               # and the monotonic time they saw it change: silence is timed on this
        self.gaps = 0
        self.recoveries = 0
        self.restarts = 0
        self.lost_events = 0
        self.losses = 0
        self.retransmitted = 0
        self.last_ts = 0               # ts_event of the last event the slow path delivered
        self.unstamped = []            # markers waiting for the channel's first exchange time


_COUNTERS = (
    "batches", "events", "stored_events", "snapshot_events", "markers", "gaps", "reordered",
    "recoveries", "recovery_requests", "recovery_retries", "recovery_failures", "retransmit_requests",
    "retransmit_retries", "retransmitted", "lost_events", "losses", "probes", "restarts", "silences",
    "resumes", "buffered", "covered", "unrecovered", "foreign_events",
    "uncounted_losses",           # ranges lost whose size cannot be known (an epoch gone while away)
)

#: Most held messages from an unconfirmed newer epoch (beyond: dropped as IMPLAUSIBLE).
_MAX_SUSPECTS = 1024
_EARLIER_KEPT = 4096     # earlier attempts' ids of fills remembered (their replies still count)


class FeedHandler:
    """Receives tickwire feeds and keeps every channel in sequence: late messages put back in
    order, holes filled by retransmission, books repaired by snapshot, losses counted.

    Parameters
    ----------
    endpoints : str or sequence of str
        ZeroMQ endpoints (``tcp://host:port``, ``ipc:///path``); one socket each.
    channels : mapping of int to iterable of int, or iterable of int
        The channels to serve (an instrument shard), each with the instrument ids it
        carries (STALE markers go to those; snapshot events of other instruments are
        ignored).  Without instrument lists, the instruments are learnt from snapshots.
    on_batch : callable
        ``on_batch(events)``: events for the books, a numpy EVENT_DTYPE array valid during
        the call (it may be a view of the handler's buffer).  A ``BookSet``'s ``apply`` fits.
    on_store : callable, optional
        ``on_store(events)``: the tick history, every event exactly once in sequence order
        per channel (see the module docstring). Called after ``on_batch`` for live events.
    on_snapshot : callable, optional
        ``on_snapshot(events)``: the events of each snapshot applied, and every STALE or END
        marker the handler makes (each after ``on_batch``).
    snapshot : str, optional
        Endpoint of the publisher's recovery service (ROUTER): snapshots and
        retransmissions.  Without one, holes are counted as lost and marked STALE.
    resume : mapping of int to (epoch, next_seq), optional
        Where the history of each channel stands (a restarted worker: the sequence number
        after the last event that reached its storage): the events from there on are asked
        for again, so a restart loses nothing the publisher still holds.
    resume_ts : mapping of int to int, optional
        The exchange time (``ts_event``, ns) each resumed history stands at (:meth:`history_times`
        of the receiver before): a channel that delivers nothing before :meth:`close` stamps its
        start markers with it (they took the local clock, years from a publisher's own: a paced
        replay of the store waited for years).
    resume_ended : iterable of int, optional
        Channels of ``resume`` whose epoch had ended when the history was noted: the channel
        had fallen silent (STALE, in sync) with every event its publisher announced stored
        (:meth:`ended_channels`). A new epoch found on joining then leaves nothing of the old
        one to count: the restart is logged, not counted in ``uncounted_losses``.
    socket_type : {"SUB", "PULL"}
    bind : bool
        Bind the data sockets instead of connecting them (publishers that connect).
    context : zmq.Context, optional
        Default: a context of the handler's own (terminated by :meth:`close`).
    io_cpus : iterable of int, optional
        Cores for the ZeroMQ I/O thread of the handler's own context (libzmq's
        ``ZMQ_THREAD_AFFINITY_CPU_ADD``).
    io_rt_priority : int
        SCHED_FIFO priority for that I/O thread (0: normal scheduling); see
        :mod:`tickwire.feeds.iothread` (:attr:`io_realtime` says whether it took).
    busy_poll : bool
        Wait for messages by polling without blocking (:attr:`FeedReceiver.spin`).
    max_events : int
        Most events in one data message (larger: dropped as OVERSIZED; the sockets also
        refuse larger frames with ``ZMQ_MAXMSGSIZE``, so they are never buffered whole).
    batch_events : int
        Size of the preallocated receive buffer; one drain delivers at most this many.
    rcvhwm : int, optional
        Receive high-water mark in messages (libzmq's default: 1000; 0: unlimited).  Past
        it ZeroMQ drops silently: the sequence numbers show the loss and retransmission fills it.
    silence_timeout : float
        Seconds without any message (data or heartbeat) after which a LIVE channel is
        flagged STALE (0: never).
    reorder_window : float
        Seconds a sequence hole may stay open before the missing events are asked for again
        (a message that arrives late within it is simply put back in order).
    snapshot_timeout : float
        Seconds to wait for a reply before asking again; each retry waits ``backoff`` times
        longer, up to ``max_backoff``.
    max_retries : int
        Requests after the first before a recovery is declared failed.
    retry_pause : float
        Seconds after a failed recovery before the next is attempted.
    snapshot_interval : float
        Least seconds between two snapshot requests of a channel (a flood of bad sequence
        numbers cannot make the handler flood the service).
    buffer_events : int
        Most events held per channel while a hole is open (more: the newest are dropped and
        asked for again once the hole is filled).
    max_request_events : int
        Most events asked for in one retransmission request.
    curve : tickwire.feeds.curve.CurveClient, optional
        ZeroMQ CURVE for the data sockets and the recovery DEALER (feeds between machines):
        only a publisher holding the server key's secret is heard, and the traffic is encrypted.
    history_from : {"join", "start"}
        Where a channel's tick history begins on a first join (not a resume): ``"join"``, at the
        first message this receiver got (what the publisher sent before is only in the join
        snapshot, not in the history); ``"start"``, at sequence number 1 of the publisher's epoch:
        the events sent before the join are asked for again like a gap (counted lost if the
        publisher no longer holds them), so a receiver that subscribed late stores everything.
    """

    def __init__(self, endpoints, channels, on_batch, *, on_store=None, on_snapshot=None,
                 snapshot: str | None = None, resume=None, resume_ts=None, resume_ended=(),
                 socket_type: str = "SUB",
                 bind: bool = False,
                 context: zmq.Context | None = None, io_cpus=None, io_rt_priority: int = 0,
                 busy_poll: bool = False, max_events: int = wire.MAX_MESSAGE_EVENTS, batch_events: int = 65536,
                 rcvhwm: int | None = None, silence_timeout: float = 2.0, reorder_window: float = 0.005,
                 snapshot_timeout: float = 0.5, backoff: float = 2.0, max_backoff: float = 5.0,
                 max_retries: int = 5, retry_pause: float = 5.0, snapshot_interval: float = 0.05,
                 buffer_events: int = 1 << 20, max_request_events: int = 1 << 20, curve=None,
                 history_from: str = "join"):
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
        for c, pos in dict(resume or {}).items():
            if int(c) in chans and pos is not None:
                epoch, nxt = (int(v) for v in pos)
                chans[int(c)].resume = (epoch, max(nxt, 1))
        self._resume_ended = {int(c) for c in resume_ended or () if int(c) in chans and chans[int(c)].resume}
        for c, ts in dict(resume_ts or {}).items():
            if int(c) in chans and ts:
                chans[int(c)].resume_ts = max(int(ts), 0)
        self._on_batch = on_batch
        self._on_store = on_store
        self._on_snapshot = on_snapshot
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
        self._opened = time.monotonic()      # (a channel unheard long after this is said once)
        self.silence_timeout = float(silence_timeout)
        if history_from not in ("join", "start"):
            raise ValueError(f"history_from must be 'join' or 'start', got {history_from!r}")
        self.history_from = history_from
        self.reorder_window = float(reorder_window)
        self.snapshot_timeout = float(snapshot_timeout)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_retries = int(max_retries)
        self.retry_pause = float(retry_pause)
        self.snapshot_interval = float(snapshot_interval)
        self.buffer_events = int(buffer_events)
        self.max_request_events = max(1, min(int(max_request_events), 0xFFFFFFFF))
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._logged: set = set()
        self._request_seq = 0
        self._requests: dict[int, tuple] = {}       # request id -> (channel, _Request)
        self._earlier: dict[int, tuple] = {}        # an earlier attempt's id -> (channel, its fill _Request)
        self._arrival = 0
        self._malformed_replies = 0          # recovery replies dropped as malformed, and the last reason
        self._malformed_reason = ""
        self._started = False
        self._waiting = False                   # a channel has stored rows waiting for an exchange time
        self._closed = False
        self._tick = max(0.001, min(0.05, (self.silence_timeout or 1.0) / 4, self.snapshot_timeout / 4,
                                    self.reorder_window or 0.05))
        self._next_timer = 0.0
        self._buf = empty_events(batch_events)

        self._sockets = []
        # Not the per-message limit itself: libzmq closes a connection that sends a frame
        # above ZMQ_MAXMSGSIZE and never reconnects it (a ZMTP protocol error), so one message
        # a little too large would make the feed deaf for good. Up to MAX_FRAME_BYTES it is
        # received, counted OVERSIZED, and its events asked for again.
        limit = max(wire.HEADER_SIZE + max_events * wire.EVENT_SIZE, wire.MAX_FRAME_BYTES)
        try:
            for ep in endpoints:
                s = self._ctx.socket(kind)
                self._sockets.append(s)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.MAXMSGSIZE, limit)      # a larger frame is never buffered whole
                if rcvhwm is not None:
                    s.setsockopt(zmq.RCVHWM, int(rcvhwm))
                if curve is not None:
                    curve.apply(s)
                if kind == zmq.SUB:
                    for c in sorted(chans):
                        s.setsockopt(zmq.SUBSCRIBE, wire.topic(c))
                (s.bind if bind else s.connect)(ep)
            self._dealer = None
            if snapshot:
                self._dealer = self._ctx.socket(zmq.DEALER)
                self._dealer.setsockopt(zmq.LINGER, 0)
                self._dealer.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME_BYTES)
                if curve is not None:
                    curve.apply(self._dealer)
                self._dealer.connect(snapshot)
            self._replies = Decoder(max_events=wire.MAX_REPLY_EVENTS, types=TYPES_REPLY)
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
            self._deliver_live(self._buf[:n])
        return n + self.service()

    def poll_fast(self, run, timeout: float = 0.05) -> int:
        """:meth:`poll`, with the live messages taken by ``run(receiver, buf, seconds)``: a loop
        in C that drains them into ``buf``, processes and stores them itself until ``seconds``
        pass or the receiver parks a message for the slow path (the worker's, over
        ``Engine.run_feed``), returning ``(events, batches)``. While stored rows wait for a
        first exchange time (:meth:`_keep`) the live events go through :meth:`poll`."""
        if not self._started:
            self._start()
        if self._waiting:
            return self.poll(timeout)
        n, batches = run(self.receiver, self._buf, max(0.0, min(timeout, self._next_timer - time.monotonic())))
        self._counters["batches"] += batches
        self._counters["events"] += n
        self._counters["stored_events"] += n
        return n + self.service()

    def service(self) -> int:
        """The slow path, without draining: the parked message, replies and timers.

        A Cython worker that drains with ``tw_feed_drain`` itself calls this whenever
        ``receiver.c.pending`` or ``receiver.c.woken`` is set, and now and then for the
        timers.  Returns the events it delivered to the books.
        """
        delivered = 0
        if self.receiver.pending:
            delivered += self._slow(self.receiver.take_pending())
        if self._dealer is not None and (self.receiver.woken or self._requests):
            delivered += self._read_replies()
        now = time.monotonic()
        if now >= self._next_timer:
            delivered += self._timers(now)
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
        if self._started:
            self._stamp_leftovers()
        self._close_sockets()
        if self._own_context:
            self._ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- state -----------------------------------------------------------------------------
    @property
    def context(self) -> zmq.Context:
        """The handler's ZeroMQ context (its I/O thread where ``io_cpus`` put it): other sockets of
        the process share it rather than start an unpinned I/O thread of their own; closed with
        the handler, so close them first."""
        return self._ctx

    def state(self, channel: int) -> ChannelState:
        return self._channels[channel].state

    def all_live(self) -> bool:
        """Whether every channel is LIVE (in sequence and in sync)."""
        return all(c.state is ChannelState.LIVE and c.in_sync for c in self._channels.values())

    def next_seq(self, channel: int) -> int:
        """Sequence number of the next event the channel's book expects."""
        c = self._channels[channel]
        if c.state is ChannelState.LIVE:
            return self.receiver.channel(channel)[3]
        return c.next_seq

    def history(self) -> dict:
        """Per channel ``(epoch, next_seq)`` of the tick history: every event before
        ``next_seq`` was handed to ``on_store`` (or counted lost). None where not known yet.
        What a restarted receiver passes as ``resume``."""
        out = {}
        for cid, c in self._channels.items():
            nxt = self.receiver.channel(cid)[3] if c.state is ChannelState.LIVE else c.store_next
            out[cid] = None if (nxt is None or c.epoch is None) else (c.epoch, nxt)
        return out

    def history_times(self) -> dict:
        """Per channel the exchange time (``ts_event``, ns) the history stands at: its last event's,
        or the resumed history's (``resume_ts``) before any; 0 where none is known. Noted beside
        :meth:`history`, it is what a restarted receiver passes as ``resume_ts``."""
        return {cid: max(c.last_ts, self.receiver.last_ts_event(cid), c.resume_ts)
                for cid, c in self._channels.items()}

    def ended_channels(self) -> list:
        """Channels whose epoch has ended with every event of it in the history: the publisher
        said so (an ``END`` heartbeat, ``seq`` = the history's next) and nothing is held or
        asked for. Noted beside :meth:`history`, so that a restart that finds a new epoch knows
        nothing of the old one is missing (``resume_ended``). A silence is not an end: taken
        for one, a publisher paused past ``stale_after`` that published on while this receiver
        was away, then restarted, lost 500,000 events unsaid ("nothing of it is missing")."""
        hist = self.history()
        return sorted(cid for cid, c in self._channels.items()
                      if c.epoch is not None and not c.held and c.fill is None and c.snap is None
                      and c.end_seq is not None and hist[cid] is not None and hist[cid][1] == c.end_seq)

    def channel_status(self) -> dict:
        """Per channel: state, epoch, next_seq, stored_next, in_sync, gaps, recoveries,
        restarts, lost events, held events (and of them, those not stored yet)."""
        hist = self.history()
        return {cid: {"state": c.state.value, "epoch": c.epoch or 0, "next_seq": self.next_seq(cid),
                      "stored_next": hist[cid][1] if hist[cid] else 0, "in_sync": c.in_sync,
                      "gaps": c.gaps, "recoveries": c.recoveries, "restarts": c.restarts,
                      "lost_events": c.lost_events, "losses": c.losses, "retransmitted": c.retransmitted,
                      "buffered_events": c.held_events, "unstored_events": self._unstored(c)}
                for cid, c in self._channels.items()}

    @staticmethod
    def _unstored(c: _Channel) -> int:
        """Events held that the history has not stored: past ``store_next`` (a channel waiting for a
        snapshot stores its held events as it goes, and keeps them held for the book), or every one
        while it is not known."""
        n = sum(len(ev) for _, ev, _ in c.early if ev is not None)
        for r in c.held:
            lo = r.start if c.store_next is None else max(r.start, c.store_next)
            n += max(0, r.end - lo)
        return n

    def counters(self) -> dict:
        """Every counter: the receive loop's (messages, bytes, heartbeats...), the handler's
        (events delivered, gaps, retransmissions, lost events...) and ``drops`` by reason
        (see docs/feeds.md)."""
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
            # stamped where the history resumes (a restart): replay puts the marker there
            self._mark(c, Flag.SNAPSHOT | Flag.STALE | Flag.RESTART, None if c.resume is None else c.resume[1] - 1)

    def _deliver_live(self, events) -> None:
        """In-sequence events: to the books, then to the history."""
        self._counters["batches"] += 1
        self._counters["events"] += len(events)
        self._on_batch(events)
        if self._waiting:
            self._stamp_live(events)
        if self._on_store is not None:
            self._on_store(events)
        self._counters["stored_events"] += len(events)

    def _to_book(self, events) -> None:
        if len(events):
            self._counters["batches"] += 1
            self._on_batch(events)

    def _to_store(self, c: _Channel, events) -> None:
        if len(events) and c.unstamped:
            self._store_unstamped(c, int(events["ts_event"][0]))
        if len(events):
            if self._on_store is not None:
                self._on_store(events)
            self._counters["stored_events"] += len(events)

    def _mark(self, c: _Channel, flags: int, seq: int | None = None) -> None:
        """SNAPSHOT markers for every instrument of the channel: STALE, or END (back in sync),
        stamped with the sequence number the book stands after (default: ``next_seq - 1``).

        Their ``ts_event`` is exchange time, like every event's: that of the last event the
        channel delivered, so the store's time order puts a marker where it happened (see
        :meth:`_keep` for a channel that has delivered nothing yet); ``ts_recv`` is the local
        time they were made."""
        c.in_sync = not flags & Flag.STALE
        if c.instruments is None or not len(c.instruments):
            return
        ev = empty_events(len(c.instruments))
        ev["kind"] = Kind.SNAPSHOT
        ev["side"] = Side.NONE
        ev["flags"] = int(flags)
        ev["instrument"] = c.instruments
        ev["channel"] = c.id
        ev["seq"] = max(c.next_seq - 1 if seq is None else seq, 0)
        # the publisher epoch the channel follows from here (0: none yet): a restarted worker reads
        # its tick ring past its history note, and an epoch change there is only known by this
        ev["order_id"] = c.epoch or 0
        ev["ts_recv"] = now_ns()
        ev["ts_event"] = max(c.last_ts, self.receiver.last_ts_event(c.id))
        self._counters["markers"] += len(ev)
        self._to_book(ev)
        self._keep(c, ev)

    def _keep(self, c: _Channel, ev) -> None:
        """Markers and snapshot events to the store, beside the history (replay needs them).

        Rows without an exchange time (``ts_event`` 0: a marker before the channel's book has
        seen an event, a snapshot of books that had none) take the time the channel's book
        stands at; when it has none yet they wait (with every later row of the channel behind
        them, so that the rows keep the order the engine met them, which replay follows), and
        are stored just before the channel's first market event reaches the store, with its
        time: a join's markers come first in the store's time order, not after every exchange
        time as the local clock would put them."""
        if self._on_snapshot is None or not len(ev):
            return
        stamped = ev["ts_event"] > 0
        if stamped.all():
            self._note_time(c, ev)
            if not c.unstamped:
                self._on_snapshot(ev)
                return
        ts = max(c.last_ts, self.receiver.last_ts_event(c.id))
        ev = ev.copy()
        if ts > 0 and not c.unstamped:
            ev["ts_event"][~stamped] = ts
            self._on_snapshot(ev)
        else:                                 # behind those waiting: the order the engine met them
            c.unstamped.append(ev)
            self._waiting = True

    @staticmethod
    def _note_time(c: _Channel, events) -> None:
        """The exchange time the channel's book stands at (its markers take it)."""
        if len(events):
            c.last_ts = max(c.last_ts, int(events["ts_event"][-1]))

    def _stamp_live(self, events) -> None:
        """The fast path's batch may hold the first event of a channel whose rows wait."""
        self._waiting = False
        for c in self._channels.values():
            if c.unstamped:
                first = events["ts_event"][events["channel"] == c.id]
                if len(first):
                    self._store_unstamped(c, int(first[0]))
                self._waiting = self._waiting or bool(c.unstamped)

    def _store_unstamped(self, c: _Channel, ts: int) -> None:
        if ts > 0:
            waiting, c.unstamped = c.unstamped, []
            for ev in waiting:
                ev["ts_event"][ev["ts_event"] <= 0] = ts
                self._on_snapshot(ev)

    def _stamp_leftovers(self) -> None:
        """At close: rows of channels that never delivered an event take the exchange time their
        resumed history stands at (``resume_ts``: a restart that met no tick), else the latest
        exchange time of any channel, else local time when there is none at all. (The local
        clock alone stamped a restart's markers 2026 in the simulator's 2023: an adversarial pass.)"""
        known = [max(c.last_ts, self.receiver.last_ts_event(c.id), c.resume_ts) for c in self._channels.values()]
        ts = max(known + [0]) or now_ns()
        for c in self._channels.values():
            self._store_unstamped(c, c.resume_ts or ts)

    def _log_once(self, key: str, level: int, message: str, *args) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, message + " (further ones are counted, not logged)", *args)

    # -- internals: the slow path -------------------------------------------------------------
    def _leave_live(self, c: _Channel) -> None:
        """Everything of the channel goes through Python from now on (the frontiers follow)."""
        if c.state is ChannelState.LIVE:
            c.next_seq = self.receiver.channel(c.id)[3]
            c.store_next = c.next_seq
        self.receiver.serve(c.id, live=False, epoch=c.epoch or 0, next_seq=c.next_seq)

    def _slow(self, item) -> int:
        reason, h, events, ts = item
        if reason != Drop.OK:
            return 0
        c = self._channels[h.channel]
        self._arrival += 1
        if c.epoch is None:                          # before the first snapshot: keep everything
            if self._dealer is None:
                return self._adopt_without_service(c, h, events)
            if c.state is ChannelState.INIT:
                c.state = ChannelState.RECOVERING
                self._want_snapshot(c)
            self._keep_early(c, h, events)
            return 0
        if h.epoch < c.epoch:
            self.receiver.count_drop(Drop.OLD_EPOCH)
            return 0
        if h.epoch > c.epoch:
            return self._newer_epoch(c, h, events)
        if c.silent and c.book_ok and c.state is ChannelState.STALE and not self._news(c, h, events):
            # a copy or a replay while the channel is silent is no sign the publisher is back:
            # it resumed the channel LIVE, in sync and frozen, at each copy a replayer sent (a review)
            self.receiver.count_drop(Drop.DUPLICATE)
            return 0
        if (h.type == MsgType.HEARTBEAT and h.flags & WireFlag.END and c.state is ChannelState.LIVE
                and h.seq <= self.receiver.channel(c.id)[3]):
            c.end_seq = h.seq                        # (the fast path hands an END over, nothing missed)
            return 0
        self._leave_live(c)
        if events is not None and h.seq != c.next_seq:
            self._counters["buffered"] += 1
        self._take(c, h, events, self._arrival)
        return self._settle(c)

    @staticmethod
    def _news(c: _Channel, h, events) -> bool:
        """Whether a message of the followed epoch says anything past what was received."""
        if h.type == MsgType.HEARTBEAT:
            return h.seq >= c.next_seq
        return h.seq + max(0 if events is None else len(events), 1) > c.next_seq    # (none: at or past it)

    def _keep_early(self, c: _Channel, h, events) -> None:
        c.early.append((h, events, self._arrival))
        if events is not None:
            c.held_events += len(events)
            self._counters["buffered"] += 1
        while c.held_events > self.buffer_events and len(c.early) > 1:
            _, ev, _ = c.early.pop(0)
            if ev is not None:
                c.held_events -= len(ev)
                self.receiver.count_drop(Drop.OVERFLOW)

    def _take(self, c: _Channel, h, events, arrival: int) -> None:
        """A message of the followed epoch: note a heartbeat's promise, hold data in order."""
        if h.type == MsgType.HEARTBEAT:
            if h.seq > c.hb_seq:
                c.hb_seq, c.hb_arrival = h.seq, arrival
            if h.flags & WireFlag.END and h.seq >= max(c.hb_seq, c.store_next or 0) and not any(
                    r.end > h.seq for r in c.held):
                # (an END behind what was received is a copy: taken, it moved where the epoch
                # ended back, and the channel was no longer said ended, a review)
                c.end_seq = h.seq
            return
        if events is None or not len(events):
            return
        c.end_seq = None                  # (data after an END: the publisher did not end after all)
        self._hold(c, h.seq, events, arrival)

    def _hold(self, c: _Channel, start: int, events, arrival: int, resent: bool = False) -> None:
        end = start + len(events)
        floor = self._floor(c)
        if floor is not None and end <= floor and (c.book_ok or c.store_next is None
                                                   or (end <= c.store_next and not c.snap and not c.snap_wanted)):
            if not resent:
                self.receiver.count_drop(Drop.DUPLICATE)
            return
        if floor is not None and start < floor:
            events, start = events[floor - start:], floor
        needed = floor is None or start <= floor
        if not needed and not resent and c.held_events + len(events) > self.buffer_events:
            self.receiver.count_drop(Drop.OVERFLOW)      # asked for again once the hole is filled
            return
        r = _Range(start, events, arrival)
        i = bisect.bisect_left(c.held, r)
        if i < len(c.held) and c.held[i].start == start:
            if c.held[i].end >= r.end:
                if not resent:
                    self.receiver.count_drop(Drop.DUPLICATE)
                return
            c.held_events -= len(c.held[i].events)
            c.held[i] = r
        else:
            c.held.insert(i, r)
        c.held_events += len(events)

    def _floor(self, c: _Channel):
        """The lowest sequence number still needed by the book or the history (None: not known)."""
        lows = []
        if c.store_next is not None:
            lows.append(c.store_next)
        if c.book_ok:
            lows.append(c.next_seq)
        return min(lows) if lows else None

    @staticmethod
    def _covering(c: _Channel, seq: int):
        i = bisect.bisect_right(c.held, _Range(seq, (), 0)) - 1
        if i >= 0 and c.held[i].start <= seq < c.held[i].end:
            return c.held[i]
        return None

    def _flush(self, c: _Channel) -> int:
        """Deliver what the held messages make contiguous: to the book from ``next_seq``, to the
        history from ``store_next``; forget what both have passed. Returns events to the book."""
        delivered = 0
        while True:
            moved = False
            if c.book_ok:
                r = self._covering(c, c.next_seq)
                if r is not None:
                    piece = r.events[c.next_seq - r.start:]
                    self._note_time(c, piece)
                    self._to_book(piece)
                    self._counters["events"] += len(piece)
                    delivered += len(piece)
                    c.next_seq = r.end
                    moved = True
            if c.store_next is not None:
                r = self._covering(c, c.store_next)
                if r is not None:
                    self._to_store(c, r.events[c.store_next - r.start:])
                    c.store_next = r.end
                    moved = True
            if not moved:
                break
        floor = self._floor(c)
        if floor is not None:
            # a book waiting for a snapshot may still need what the history has passed (what
            # follows the snapshot's sequence number), unless there is too much of it
            while c.held and c.held[0].end <= floor and (c.book_ok or c.held_events > self.buffer_events):
                c.held_events -= len(c.held.pop(0).events)
        return delivered

    def _hole(self, c: _Channel):
        """``(first, end)`` of the lowest range still missing below something known, or None."""
        floor = self._floor(c)
        if floor is None:
            return None
        known = [r.start for r in c.held if r.start > floor][:1]
        if c.hb_seq > floor:
            known.append(c.hb_seq)
        if not known:
            return None
        return floor, min(known)

    def _settle(self, c: _Channel) -> int:
        """After anything changed: deliver, then go LIVE, or keep a hole open, or wait."""
        delivered = self._flush(c)
        if (c.book_ok and c.store_next == c.next_seq and not c.held and c.hb_seq <= c.next_seq
                and c.probe is None and not c.suspects and c.snap is None):
            if c.hole_since is not None:
                self._counters["reordered"] += 1 if c.fill is None else 0
            c.hole_since = None
            c.fill = None
            if c.state is not ChannelState.LIVE:
                c.state = ChannelState.LIVE
                c.failed = False
                c.live_since = time.monotonic()
                if c.silent:                         # silent, but nothing was lost
                    c.silent = False
                    self._counters["resumes"] += 1
                    self._mark(c, Flag.SNAPSHOT | Flag.SNAPSHOT_END)
                self.receiver.serve(c.id, live=True, epoch=c.epoch, next_seq=c.next_seq)
            return delivered
        if c.state is ChannelState.LIVE:
            c.state = ChannelState.FILLING
        hole = self._hole(c)
        if hole is None:
            if c.hole_since is not None and c.fill is None:
                self._counters["reordered"] += 1
            c.hole_since = None
        elif c.hole_since is None:
            c.hole_since = time.monotonic()
            if self.reorder_window <= 0:
                self._fill(c, hole)
        if c.state is ChannelState.FILLING and not c.book_ok:
            c.state = ChannelState.RECOVERING
        return delivered

    # -- internals: holes, losses, snapshots ---------------------------------------------------
    def _fill(self, c: _Channel, hole) -> None:
        """Ask the publisher to send a missing range again (or, without a service, count it lost)."""
        first, end = hole
        self._counters["gaps"] += 1
        c.gaps += 1
        if self._dealer is None:
            # the whole hole at once: capped at a request's size, a forged sequence number 2^40
            # ahead was counted lost a million at a time, a warning line each, for an hour and a
            # half (an adversarial pass)
            self._log_once("gap", logging.WARNING, "channel %d: sequence gap (expected %d, next known %d)",
                           c.id, first, end)
            self._counters["unrecovered"] += 1
            self._lost(c, first, end, "there is no recovery service")
            self._settle(c)
            return
        end = min(end, first + self.max_request_events)
        self._log_once("gap", logging.WARNING, "channel %d: sequence gap (expected %d, next known %d): "
                       "asking the publisher for it again", c.id, first, end)
        req = c.fill or _Request("fill")
        req.first, req.end, req.epoch = first, end, c.epoch
        c.fill = req
        self._counters["retransmit_requests"] += 1
        self._send(c, req, wire.encode_retransmit_request(c.id, 0, first, end - first, epoch=c.epoch))

    def _lost(self, c: _Channel, first: int, end: int, why: str, book: bool = True) -> None:
        """Events ``first .. end-1`` can no longer be had: count them, move past them; a book
        that needed them is out of sync until a snapshot (without a service: for good)."""
        n = end - first
        if n <= 0:
            return
        c.lost_events += n
        c.losses += 1
        self._counters["lost_events"] += n
        self._counters["losses"] += 1
        log.warning("channel %d: %d events (seq %d..%d, epoch %d) lost: %s", c.id, n, first, end - 1,
                    c.epoch or 0, why)
        if c.store_next is not None and c.store_next < end:
            c.store_next = max(c.store_next, end)
        if book and c.book_ok and c.next_seq < end:
            c.silent = False                         # (out of sync now: a resume needs a snapshot)
            if c.in_sync:
                self._mark(c, Flag.SNAPSHOT | Flag.STALE)
            if self._dealer is None:
                c.next_seq = end
                return
            c.book_ok = False
            self._want_snapshot(c)

    def _want_snapshot(self, c: _Channel) -> None:
        if c.snap is not None:
            return
        if self._dealer is None:
            return
        if time.monotonic() < c.snap_after:
            c.snap_wanted = True
            return
        c.snap_wanted = False
        req = _Request("snapshot")
        c.snap = req
        if c.state is not ChannelState.INIT:
            c.state = ChannelState.RECOVERING
        self._counters["recovery_requests"] += 1
        self._send(c, req, None)

    def _send(self, c: _Channel, req: _Request, frame) -> None:
        """Send (or send again) a request with a new id; arm its timer."""
        if req.id:
            self._requests.pop(req.id, None)
            if req.kind == "fill":              # its reply, late, still fills the hole (_late_part)
                self._earlier[req.id] = (c.id, req)
                if len(self._earlier) > _EARLIER_KEPT:
                    del self._earlier[next(iter(self._earlier))]
        self._request_seq = (self._request_seq % 0xFFFFFFFF) + 1
        req.id = self._request_seq
        req.parts = []
        req.first_part = None
        req.got_first = None
        req.got = 0
        req.arrival = self._arrival
        if req.malformed is None:
            req.malformed = self._malformed_replies
        req.deadline = time.monotonic() + min(self.snapshot_timeout * self.backoff ** req.attempt, self.max_backoff)
        self._requests[req.id] = (c.id, req)
        if req.kind == "snapshot":
            frame = wire.encode_snapshot_request(c.id, req.id, epoch=c.epoch or 0)
            c.snap_after = time.monotonic() + self.snapshot_interval
        elif req.kind == "fill":
            frame = wire.encode_retransmit_request(c.id, req.id, req.first, req.end - req.first, epoch=req.epoch)
        else:
            frame = wire.encode_retransmit_request(c.id, req.id, req.first, 1, epoch=req.epoch)
        try:
            self._dealer.send(frame, zmq.NOBLOCK)
        except zmq.Again:                           # queue full: the timer asks again
            pass

    def _newer_epoch(self, c: _Channel, h, events) -> int:
        """A message of a newer publisher epoch: a restart, or a forgery. Believed only once the
        publisher's service confirms it (without a service: believed)."""
        if self._dealer is None:
            self._restart(c, h.epoch, h.seq)
            self._take(c, h, events, self._arrival)
            return self._settle(c)
        # bounded in events as well as messages: 1,024 forged messages of 4,096 events each held
        # 256 MiB a channel whatever buffer_events said (an adversarial pass)
        held = sum(len(ev) for _, ev, _ in c.suspects if ev is not None) + (0 if events is None else len(events))
        if len(c.suspects) >= _MAX_SUSPECTS or held > self.buffer_events:
            self.receiver.count_drop(Drop.IMPLAUSIBLE)
        else:
            c.suspects.append((h, events, self._arrival))
        if c.probe is None:
            # (asked even for a message not held: one bigger than buffer_events never had its
            # restart probed, a review)
            req = _Request("probe")
            req.first, req.epoch = max(h.seq, 1), h.epoch
            c.probe = req
            self._counters["probes"] += 1
            self._send(c, req, None)
        return 0

    def _restart(self, c: _Channel, epoch: int, first: int = 1, ask: bool = True) -> None:
        """The publisher restarted with ``epoch``: what the old epoch still owed is lost (counted
        where known), the held messages of the old epoch are stored, the history of the new
        one is taken from sequence 1 (asked for again), and the book waits for a snapshot
        (without a service: follows the new stream from ``first``, out of sync)."""
        self._counters["restarts"] += 1
        c.restarts += 1
        self._log_once("restart", logging.WARNING, "channel %d: publisher restarted (new epoch)", c.id)
        if c.state is ChannelState.LIVE:
            self._leave_live(c)
        # the restart's marker names the old epoch's last number stored (replay's merge and store
        # check end the old numbering there): past the book's when the book waited on a hole and
        # the ranges held after it are stored now (stamped with the book's, the marker came before
        # them in the store, and the merge put the new epoch's snapshot, and the store check its
        # losses, in the old numbering: "misses 8,913 events" of a loaded daemon's store); and not
        # the book's at all while it waits for the epoch's snapshot, standing at the epoch before's
        # (a second restart named 110 for an epoch stored up to 30, a review)
        ends = c.next_seq - 1 if c.book_ok or c.store_next is None else 0
        if c.store_next is not None:
            for r in list(c.held):
                if r.end <= c.store_next:
                    continue
                if r.start > c.store_next:
                    if c.book_ok and c.in_sync and r.start > c.next_seq == c.store_next:
                        # the book's hole is lost for good: its own STALE marker (the old epoch's),
                        # at the book's number, before the ranges after it
                        self._mark(c, Flag.SNAPSHOT | Flag.STALE)
                    self._lost(c, c.store_next, r.start, "the publisher restarted before sending them again",
                               book=False)
                self._to_store(c, r.events[max(c.store_next - r.start, 0):])
                c.store_next = r.end
            ends = max(ends, c.store_next - 1)
            if c.hb_seq > c.store_next:
                self._lost(c, c.store_next, c.hb_seq, "the publisher restarted before sending them again",
                           book=False)
            if c.end_seq is None:
                # no END: the old epoch stopped without saying where (a publisher killed with
                # events in its socket's queue lost them unsent, 100 of a SIGKILLed bridge's);
                # what it sent after the last sequence number seen cannot be known, nor counted
                self._counters["uncounted_losses"] += 1
                log.warning("channel %d: the publisher restarted without ending its epoch %s (no END): events "
                            "it sent after seq %d may be lost (not counted)", c.id, c.epoch,
                            max(c.store_next, c.hb_seq) - 1)
        for req in (c.snap, c.fill):
            if req is not None:
                self._requests.pop(req.id, None)
        c.snap = c.fill = None
        c.held = []
        c.held_events = 0
        c.hb_seq = 0
        c.end_seq = None
        c.hole_since = None
        # no longer silent in sync: the new epoch's messages were dropped as copies of the old
        # one's (their sequence numbers behind its next_seq) while a failed snapshot waited (a review)
        c.silent = False
        c.epoch = epoch
        c.store_next = 1
        if self._dealer is None:
            # (without a service too: stamped first - 1, 0 for a new epoch from 1, replay's merge
            # put the marker before every tick of the old epoch, its books out of sync all through
            # it where live's were not, a review)
            self._mark(c, Flag.SNAPSHOT | Flag.STALE, ends)
            c.next_seq = first
            c.state = ChannelState.FILLING
            return
        c.book_ok = False
        # STALE, and in any case the new epoch recorded in the history (the marker's order_id)
        self._mark(c, Flag.SNAPSHOT | Flag.STALE, ends)
        self.receiver.serve(c.id, live=False, epoch=epoch, next_seq=0)
        c.state = ChannelState.RECOVERING
        if ask:
            self._want_snapshot(c)

    def _adopt_without_service(self, c: _Channel, h, events) -> int:
        """No recovery service: follow the stream from the first message seen (in sync when it
        starts the stream, or when it continues the history being resumed)."""
        c.epoch = h.epoch
        start = h.seq
        if c.resume is not None and c.resume[0] == h.epoch and c.resume[1] <= start:
            c.store_next = c.resume[1]
        else:
            c.store_next = start
        c.next_seq = start
        c.book_ok = True
        if start == 1:
            self._mark(c, Flag.SNAPSHOT | Flag.SNAPSHOT_END)
        c.state = ChannelState.FILLING
        self._take(c, h, events, self._arrival)
        return self._settle(c)

    # -- internals: replies ---------------------------------------------------------------------
    def _read_replies(self) -> int:
        delivered = 0
        while self._dealer.poll(0, zmq.POLLIN):
            frames = self._dealer.recv_multipart(copy=True)
            reason, h, events = self._replies.decode_frames(frames, now_ns())
            if reason != Drop.OK:
                self._malformed_replies += 1
                self._malformed_reason = reason.name
                self._log_once(f"reply-{reason.name}", logging.WARNING,
                               "malformed recovery reply dropped: %s", reason.name)
                continue
            found = self._requests.get(h.request_id)
            c = self._channels.get(h.channel)
            if found is None and c is not None and c.fill is not None \
                    and self._earlier.get(h.request_id, (None, None)) == (c.id, c.fill):
                delivered += self._late_part(c, c.fill, h, events)
                continue
            if found is None or c is None or found[0] != h.channel or h.part != len(found[1].parts):
                self.receiver.count_drop(Drop.STALE_REPLY)
                continue
            req = found[1]
            if req.kind == "snapshot":
                if h.type != MsgType.SNAPSHOT or (req.first_part is not None and (h.seq, h.epoch) != req.first_part):
                    self.receiver.count_drop(Drop.STALE_REPLY)   # the next part is still awaited
                    continue
                req.parts.append(None)                           # a part taken: the next index
                if h.flags & WireFlag.UNAVAILABLE:
                    self._log_once("unavailable", logging.WARNING,
                                   "channel %d: snapshot service cannot serve it yet", c.id)
                    self._requests.pop(req.id, None)
                    req.id = 0
                    req.deadline = min(req.deadline, time.monotonic() + self.snapshot_timeout)
                    continue
                req.first_part = (h.seq, h.epoch)
                req.parts[-1] = events
                if h.flags & WireFlag.FINAL:
                    self._requests.pop(req.id, None)
                    delivered += self._complete(c, req, h.seq, h.epoch)
                continue
            if h.type != MsgType.RETRANSMIT:
                self.receiver.count_drop(Drop.STALE_REPLY)
                continue
            req.parts.append(None)
            if not h.flags & WireFlag.FINAL:
                if req.kind == "fill" and h.epoch == c.epoch and len(events):
                    if req.got_first is None:
                        req.got_first = h.seq
                    # (what an earlier attempt's late reply filled is below req.first: counted there)
                    req.got += max(0, h.seq + len(events) - max(h.seq, req.first))
                    self._hold(c, h.seq, events, req.arrival, resent=True)
                continue
            self._requests.pop(req.id, None)
            if req.kind == "probe":
                delivered += self._probed(c, req, h.epoch)
            else:
                delivered += self._filled(c, req, h)
        return delivered

    def _late_part(self, c: _Channel, req: _Request, h, events) -> int:
        """A reply to an earlier attempt of the channel's outstanding fill, come after the timer
        asked again (a slow service): its events fill the hole as the latest attempt's would.
        They were dropped as STALE_REPLY, and where the publisher stopped before answering the
        retry (a simulator's linger over) the hole was counted lost with its events received.
        What it filled is not asked for again, nor counted lost if the service then fails."""
        if (h.type != MsgType.RETRANSMIT or h.flags & WireFlag.FINAL or h.epoch != c.epoch
                or h.epoch != req.epoch or events is None or not len(events)):
            return 0                                     # (its end: the latest attempt's is awaited)
        held = c.held_events
        self._hold(c, h.seq, events, req.arrival, resent=True)
        # (what it added: the retry's own answer may have brought those events first)
        fresh = max(0, c.held_events - held)
        self._counters["retransmitted"] += fresh
        c.retransmitted += fresh
        delivered = self._flush(c)
        floor = self._floor(c)
        if c.fill is req and floor is not None and floor > req.first:
            if floor < req.end:
                req.first = floor                        # the rest is still asked for
            else:                                        # all of it: done (the next hole is asked for)
                self._requests.pop(req.id, None)
                c.fill = None
                c.hole_since = None
        return delivered + self._settle(c)

    def _filled(self, c: _Channel, req: _Request, h) -> int:
        """The last part of a retransmission: what was not sent is lost; what a publisher
        says it never sent (a held message or a heartbeat beyond its head, received before
        we asked) was forged and goes."""
        c.fill = None
        c.hole_since = None
        self._counters["retransmitted"] += req.got
        c.retransmitted += req.got
        if h.epoch != c.epoch or h.flags & WireFlag.UNAVAILABLE:
            if h.epoch > (c.epoch or 0):
                return self._settle(c)           # its data will show the new epoch: probed then
            head = None
        else:
            head = h.seq
        start = req.got_first if req.got_first is not None else (head if head is not None else req.end)
        self._lost(c, req.first, min(max(start, req.first), req.end),
                   "the publisher no longer holds them" if head is not None else "the publisher cannot send them")
        if head is not None:
            forged = [r for r in c.held if r.start >= head and r.arrival <= req.arrival]
            for r in forged:
                c.held.remove(r)
                c.held_events -= len(r.events)
                self.receiver.count_drop(Drop.IMPLAUSIBLE)
            if c.hb_seq > head and c.hb_arrival <= req.arrival:
                c.hb_seq = head
                self.receiver.count_drop(Drop.IMPLAUSIBLE)
            if forged:
                self._log_once("implausible", logging.WARNING,
                               "channel %d: messages beyond the publisher's head (%d) dropped as forged",
                               c.id, head)
        return self._settle(c)

    def _probed(self, c: _Channel, req: _Request, epoch: int) -> int:
        """The publisher's service named its current epoch: a restart is confirmed, or the
        messages that claimed the probed epoch were forged."""
        c.probe = None
        suspects, c.suspects = c.suspects, []
        if epoch == req.epoch and epoch > (c.epoch or 0):
            first = min((s[0].seq for s in suspects if s[0].epoch == epoch), default=1)
            self._restart(c, epoch, first)
            rest = []
            for h, events, arrival in suspects:
                if h.epoch == epoch:
                    self._take(c, h, events, arrival)
                elif h.epoch > epoch:
                    rest.append((h, events))
        else:
            forged = sum(1 for s in suspects if s[0].epoch == req.epoch)
            if forged:                               # (one not held was counted on arrival)
                self.receiver.count_drop(Drop.IMPLAUSIBLE, forged)
            self._log_once("implausible-epoch", logging.WARNING,
                           "channel %d: messages of an epoch the publisher does not have dropped as forged", c.id)
            rest = [(h, ev) for h, ev, _ in suspects if h.epoch != req.epoch and h.epoch > (c.epoch or 0)]
        for h, events in rest:
            self._newer_epoch(c, h, events)
        return self._settle(c)

    def _complete(self, c: _Channel, req: _Request, covered: int, epoch: int) -> int:
        """Apply a complete snapshot to the book, then everything held that follows it."""
        parts = [p for p in req.parts if p is not None]
        c.snap = None
        if c.epoch is not None and epoch < c.epoch:   # older than the stream we follow: ask again
            self.receiver.count_drop(Drop.STALE_REPLY)
            self._want_snapshot(c)
            return 0
        early = []
        if c.epoch is None:                           # the first snapshot decides the epoch
            c.epoch = epoch
            early, c.early = c.early, []
            c.held_events = 0
            if c.resume is not None and c.resume[0] == epoch:
                c.store_next = c.resume[1]
            elif c.resume is not None and c.resume[0] < epoch:
                self._counters["restarts"] += 1
                c.restarts += 1
                if c.id in self._resume_ended:
                    # the old epoch had fallen silent with all it announced stored before this
                    # receiver left: nothing of it is known to be missing (a false critical alert
                    # at every daemon restart across a publisher restart, counted before)
                    log.info("channel %d: the publisher restarted while this receiver was away; its epoch %d "
                             "had ended (its END heartbeat) with every event it announced stored (to seq %d): "
                             "nothing of it is missing", c.id, c.resume[0], c.resume[1] - 1)
                else:
                    self._counters["uncounted_losses"] += 1
                    log.warning("channel %d: the publisher restarted while this receiver was away: events of "
                                "its epoch %d after seq %d cannot be had (not counted)", c.id, c.resume[0],
                                c.resume[1] - 1)
                c.store_next = 1
            else:
                starts = [h.seq for h, ev, _ in early if h.epoch == epoch and h.type == MsgType.DATA]
                starts += [h.seq for h, ev, _ in early if h.epoch == epoch and h.type == MsgType.HEARTBEAT]
                # "start": what the publisher sent before this receiver's first message is asked
                # for again (a hole from seq 1), so that a slow join stores everything
                c.store_next = 1 if self.history_from == "start" else min(starts + [covered + 1])
        elif epoch > c.epoch:                         # the service says the publisher restarted
            self._restart(c, epoch, ask=False)
        snap = np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else empty_events(0))
        if c.learned:
            # (every snapshot's: a publisher leaves out a book it does not know, docs/wire-format.md;
            # learned from the first alone, one left out there was foreign for good)
            named = np.unique(snap["instrument"]).astype(np.uint32)
            c.instruments = named if c.instruments is None else np.union1d(c.instruments, named).astype(np.uint32)
        else:
            keep = np.isin(snap["instrument"], c.instruments)
            if not keep.all():
                self._counters["foreign_events"] += int((~keep).sum())
                self._log_once("foreign", logging.WARNING,
                               "channel %d: snapshot events of instruments outside the channel ignored", c.id)
                snap = snap[keep]
        self._to_book(snap)
        self._keep(c, snap)
        self._counters["snapshot_events"] += len(snap)
        self._counters["recoveries"] += 1
        c.recoveries += 1
        c.in_sync = True
        c.book_ok = True
        c.next_seq = covered + 1
        c.failed = False
        for h, events, arrival in early:
            if h.epoch == epoch:
                self._take(c, h, events, arrival)
            elif h.epoch < epoch:
                self.receiver.count_drop(Drop.OLD_EPOCH)
            else:
                self._newer_epoch(c, h, events)
        self._counters["covered"] += sum(min(r.end, covered + 1) - r.start for r in c.held if r.start <= covered)
        if c.state in (ChannelState.INIT, ChannelState.RECOVERING, ChannelState.STALE):
            c.state = ChannelState.FILLING
        return self._settle(c)

    # -- internals: timers ------------------------------------------------------------------------
    def _timers(self, now: float) -> int:
        delivered = 0
        for c in self._channels.values():
            # silence is timed on the monotonic clock: the receipt stamps are wall-clock time, and
            # a wall clock stepped an hour forward made every live channel silent at once (stepped
            # back, a quiet publisher was never said silent: an adversarial pass)
            heard = self.receiver.last_recv_ns(c.id)
            if heard != c.heard_ns:
                c.heard_ns, c.heard = heard, now
            if c.snap_wanted and c.snap is None and now >= c.snap_after:
                self._want_snapshot(c)
            for req in (c.snap, c.fill, c.probe):
                if req is None or now < req.deadline:
                    continue
                req.attempt += 1
                if req.attempt <= self.max_retries:
                    self._counters["recovery_retries" if req.kind == "snapshot" else "retransmit_retries"] += 1
                    self._send(c, req, None)
                    continue
                self._requests.pop(req.id, None)
                delivered += self._gave_up(c, req, now)
            if c.hole_since is not None and c.fill is None and now - c.hole_since >= self.reorder_window:
                hole = self._hole(c)
                if hole is None:
                    c.hole_since = None
                else:
                    self._fill(c, hole)
            if c.state is ChannelState.INIT and self.silence_timeout > 0 and "unheard" not in self._logged \
                    and not heard and now - self._opened > self.silence_timeout:
                # nothing at all, not even a heartbeat: a publisher that is not there, another
                # endpoint, or a CURVE mismatch (the handshake fails without a word from libzmq)
                self._logged.add("unheard")
                log.warning("channel %d: nothing received from %s in %.0f s (no data, no heartbeat): is the "
                            "publisher running there, and are both sides CURVE or neither (docs/security.md)?",
                            c.id, ", ".join(self.endpoints), now - self._opened)
            if c.state is ChannelState.LIVE and self.silence_timeout > 0:
                last = max(c.heard, c.live_since)
                if now - last > self.silence_timeout:
                    self._counters["silences"] += 1
                    self._log_once(f"silent-{c.id}", logging.WARNING, "channel %d: silent for %.1f s: stale",
                                   c.id, now - last)
                    self._leave_live(c)
                    c.state = ChannelState.STALE
                    c.silent = c.in_sync
                    self._mark(c, Flag.SNAPSHOT | Flag.STALE)
        drops = self.receiver.drops
        for name in drops:
            if name == "STALE_REPLY":                  # (a wire-contract pass: "feed message" misled)
                self._log_once(f"drop-{name}", logging.WARNING, "recovery reply dropped: STALE_REPLY (it answers "
                               "no request outstanding, or not in order: late, or its request_id or part wrong)")
            else:
                self._log_once(f"drop-{name}", logging.WARNING, "feed message dropped: %s", name)
        return delivered

    def _gave_up(self, c: _Channel, req: _Request, now: float) -> int:
        """The service did not answer ``max_retries`` times."""
        if req.kind == "snapshot":
            c.snap = None
            self._counters["recovery_failures"] += 1
            self._log_once(f"failed-{c.id}", logging.ERROR,
                           "channel %d: no snapshot after %d requests%s; stale, retrying in %.1f s",
                           c.id, req.attempt, self._malformed_since(req).replace(" usably", "", 1),
                           self.retry_pause)
            c.state = ChannelState.STALE
            c.failed = True
            c.snap_after = now + self.retry_pause
            c.snap_wanted = True
            return 0
        if req.kind == "probe":
            # cannot be verified: not followed. Believed, one forged message while the service
            # was away (restarting, or a publisher down while someone else sends) made every
            # real message an OLD_EPOCH drop and every real snapshot a STALE_REPLY, for good
            # (an adversarial pass). A real restart is followed once its service answers: the
            # next message of that epoch probes again, a snapshot reply names it, and its
            # history is asked for from sequence 1.
            c.probe = None
            suspects, c.suspects = c.suspects, []
            if suspects:                             # (one not held was counted on arrival)
                self.receiver.count_drop(Drop.IMPLAUSIBLE, len(suspects))
            self._log_once(f"unverified-{c.id}", logging.ERROR,
                           "channel %d: messages of a new publisher epoch could not be verified (the recovery "
                           "service did not answer): dropped; the epoch is followed once the service confirms it",
                           c.id)
            # a channel that waited on the probe alone goes on (it stayed FILLING until its next
            # message, a review); a stale one resumes only on news of its own epoch
            return 0 if c.state is ChannelState.STALE else self._settle(c)
        c.fill = None
        c.hole_since = None
        self._counters["recovery_failures"] += 1
        if not any(r.start > req.first for r in c.held):
            # only a heartbeat says the range exists, and nobody could confirm it: a heartbeat
            # is a claim (one forged while the service was down made an endless count of
            # invented losses, moving the history past events still to come). Not believed: no
            # loss counted, nothing skipped; data beyond it, when it comes, shows a real gap
            c.hb_seq = min(c.hb_seq, req.first)
            self.receiver.count_drop(Drop.IMPLAUSIBLE)
            self._log_once(f"unconfirmed-{c.id}", logging.WARNING,
                           "channel %d: a heartbeat announced events up to seq %d that the recovery service "
                           "did not confirm (%d requests): not believed, nothing counted lost", c.id,
                           req.end - 1, req.attempt)
            return self._settle(c)
        self._lost(c, req.first, req.end, f"the recovery service did not answer {req.attempt} requests"
                   + self._malformed_since(req))
        return self._settle(c)

    def _malformed_since(self, req: _Request) -> str:
        """What the service sent while ``req`` was outstanding, when some of it was malformed (a
        reply's header may be garbage, so it is not matched to its request): said beside "did
        not answer", or a service answering garbage reads as one that is down."""
        n = self._malformed_replies - (req.malformed if req.malformed is not None else self._malformed_replies)
        return (f" usably ({n} malformed repl{'y' if n == 1 else 'ies'} dropped meanwhile, the last "
                f"{self._malformed_reason})") if n else ""

    def _close_sockets(self) -> None:
        for s in getattr(self, "_sockets", []):
            s.close(0)
        if getattr(self, "_dealer", None) is not None:
            self._dealer.close(0)
