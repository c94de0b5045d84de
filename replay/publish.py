"""Replay onto ZeroMQ: history republished in the wire format, as a live feed would send it.

:class:`Republisher` binds a PUB socket (the data) and a ROUTER (the recovery service: snapshots
and retransmissions, :class:`tickwire.feeds.wire.RecoveryService`), numbers each channel's
events from 1 (:class:`tickwire.feeds.wire.Publisher`), flags every event ``Flag.REPLAY``, keeps
books of what it sent so that a receiver that joins late or loses messages gets an exact snapshot,
and heartbeats idle channels. An unchanged ``tickwire run`` daemon whose ``feeds.endpoints`` and
``feeds.snapshot`` point here consumes the history as if it were live.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import zmq

from tickwire.engine.instruments import make_books
from tickwire.ext.records import EVENT_DTYPE, Flag, Kind
from tickwire.feeds import wire
from tickwire.feeds.curve import serve_curve
from tickwire.feeds.wire import (MAX_MESSAGE_EVENTS, Publisher, await_subscribers, books_snapshot, ipc_claim,
                                 ipc_bind_refusal, ipc_release)

__all__ = ["Republisher"]


class Republisher:
    """A wire-format publisher of replayed events, with a recovery service.

    Parameters
    ----------
    endpoint : str
        Where to bind the data socket (``tcp://127.0.0.1:5555``, ``ipc:///tmp/x``).
    snapshot : str
        Where to bind the recovery service (ROUTER).
    instruments : list of Instrument
        The instruments replayed (books for the snapshots).
    channels : int, optional
        Instrument ``i`` goes on channel ``i % channels`` (as the daemon's ``feeds.channels``);
        None: each event's own ``channel`` field.
    max_message_events : int
        Most events in one message (the daemon refuses larger: ``feeds.max_message_events``).
    retain_events : int
        Events kept per channel for retransmission.
    heartbeat : float
        Seconds between heartbeats of an idle channel.
    flags : int
        Set on every event sent (default ``Flag.REPLAY``; the cryptofeed bridge, a live feed, sends 0).
    xpub : bool
        Bind an XPUB rather than a PUB, so that :meth:`wait_subscribers` can see receivers join.
    curve : tickwire.feeds.curve.CurveServer, optional
        Publish as a ZeroMQ CURVE server (data socket and recovery service).
    channel_of : dict, optional
        Without ``channels`` (events keep their recorded channel): each instrument's recorded
        channel, so that the snapshots served before its first event are of the right channel
        (default: channel 0 until the channel's first event).
    """

    def __init__(self, endpoint: str, snapshot: str, instruments, channels=None, *,
                 max_message_events: int = MAX_MESSAGE_EVENTS, retain_events: int = 1 << 20, heartbeat: float = 0.1,
                 sndhwm: int = 0, flags: int = Flag.REPLAY, xpub: bool = False, curve=None, channel_of=None):
        self.flags = int(flags)
        self.instruments = list(instruments)
        self.channels = channels
        self.max_events = int(max_message_events)
        self.heartbeat_s = float(heartbeat)
        self.ctx = zmq.Context()
        self.xpub = xpub
        self.pub = self.ctx.socket(zmq.XPUB if xpub else zmq.PUB)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.curve = curve
        self._claims = []                   # the ipc socket files bound (removed at close)
        try:
            if curve is not None:
                curve.start(self.ctx)
            serve_curve(curve, self.pub, self.router)
            self.pub.setsockopt(zmq.LINGER, 1000)
            self.pub.setsockopt(zmq.SNDHWM, sndhwm)
            if xpub:
                self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
            self.router.setsockopt(zmq.LINGER, 0)
            wire.service_socket_options(self.router)
            for ep in (endpoint, snapshot):
                why = ipc_bind_refusal(ep)
                if why is not None:
                    raise zmq.ZMQError(msg=f"{ep}: {why}")
            self.pub.bind(endpoint)
            self._claims.append(ipc_claim(self.pub))
            self.router.bind(snapshot)
            self._claims.append(ipc_claim(self.router))
        except zmq.ZMQError as exc:
            self.close(0)
            from tickwire.replay.sources import ReplayError

            raise ReplayError(f"cannot bind {endpoint} / {snapshot}: {exc}") from None
        self.books = make_books(self.instruments)
        #: instruments whose book this publisher does not know (a STALE marker sent for it and no
        #: SNAPSHOT_BEGIN since; the bridge starts with every one): its snapshots leave them out
        self.stale: set[int] = set()
        self.by_channel = {}
        for inst in self.instruments:
            c = inst.id % channels if channels else (channel_of or {}).get(inst.id, 0)
            self.by_channel.setdefault(c, []).append(inst.id)
        self._ended = False
        self.publisher = Publisher(self.pub, service=self.router, snapshot=self._snapshot_of,
                                   retain_events=retain_events)
        self.last_sent = {}
        self._next_serve = 0.0
        self.sent = 0
        self.messages = 0

    def _snapshot_of(self, channel: int):
        ids = self.by_channel.get(channel)
        if ids is None:
            return None
        covered = self.publisher.next_seq(channel) - 1
        # a book it has sent a STALE marker for, and no snapshot sequence since, is not known: left out,
        # and a receiver keeps it out of sync (docs/wire-format.md); served, a book the bridge knew
        # was wrong (crossed, a level left out) or had no snapshot of yet went out as in sync
        known = [i for i in ids if i not in self.stale]
        return self.publisher.epoch, covered, books_snapshot(self.books, known, covered)

    def send(self, events: np.ndarray, copy: bool = True) -> None:
        """Publish a batch: per channel, in order, in messages of at most ``max_message_events``
        (``copy=False``: ``events`` is the publisher's from now on, and changed in place)."""
        ev = np.array(events, dtype=EVENT_DTYPE, copy=copy)
        if self.flags:
            ev["flags"] |= np.uint32(self.flags)
        # a recorded marker's order_id is the epoch of the publisher it was recorded from (the
        # feed handler's note): nothing to this stream's receivers, who ignore it (docs/events.md);
        # its RESTART was the recording worker's own start, not the receiver's (stored as the
        # receiver's, a replay of its store started its engine afresh where the receiver had not)
        # the flags it may send (docs/wire-format.md: a receiver drops a message with any other
        # as BAD_EVENT; an .npy file's events may carry anything), and reserved 0
        markers = ev["kind"] == Kind.SNAPSHOT
        ev["order_id"][markers] = 0
        ev["flags"] &= np.where(markers, wire.PUBLISHER_EVENT_FLAGS | wire.MARKER_EVENT_FLAGS,
                                wire.PUBLISHER_EVENT_FLAGS).astype(np.uint32)
        ev["reserved"] = 0
        if self.channels:
            ev["channel"] = ev["instrument"] % self.channels
        chans = ev["channel"]
        one = len(chans) and (chans == chans[0]).all()      # the common case: no split needed
        for c in ([int(chans[0])] if one else np.unique(chans).tolist()):
            self.send_channel(c, ev if one else ev[chans == c])

    def send_channel(self, channel: int, events: np.ndarray) -> None:
        """Publish events of one ``channel`` (EVENT_DTYPE, C-contiguous, the publisher's from now on:
        their ``seq`` and ``channel`` are set in place) in messages of at most ``max_message_events``."""
        if channel not in self.by_channel:
            self.by_channel[channel] = np.unique(events["instrument"]).tolist()
        n = len(events)
        for m in events[events["kind"] == Kind.SNAPSHOT]:   # (markers: a few)
            if m["flags"] & Flag.STALE:
                self.stale.add(int(m["instrument"]))
            elif m["flags"] & (Flag.SNAPSHOT_BEGIN | Flag.SNAPSHOT_END):
                # from its BEGIN the book is the new snapshot so far: served as it stands, the rest
                # of the sequence follows (left out, a receiver completed it from that rest alone,
                # in sync with part of its levels: a review)
                self.stale.discard(int(m["instrument"]))
        for k in range(0, n, self.max_events):
            msg = events if n <= self.max_events else np.ascontiguousarray(events[k:k + self.max_events])
            self.books.apply(msg)             # the snapshot state before the next serve
            self.publisher.send(channel, msg, owned=True)
            self.messages += 1
        now = time.monotonic()
        self.last_sent[channel] = now
        self.sent += n
        if now >= self._next_serve:           # requests wait at most a millisecond
            self.serve()

    def wait_subscribers(self, timeout: float, subscribers: int = 1) -> bool:
        """With ``xpub``: wait until every channel has ``subscribers`` receivers (False: timed out)."""
        channels = sorted(self.by_channel) or [0]
        return await_subscribers(self.pub, channels, subscribers, timeout)

    def serve(self) -> None:
        """Answer recovery requests and heartbeat channels idle for ``heartbeat`` seconds."""
        if self.xpub:
            while self.pub.poll(0):               # (un)subscriptions: nothing to do with them here
                self.pub.recv()
        self.publisher.serve()
        now = time.monotonic()
        self._next_serve = now + 0.001
        for c in self.by_channel:
            if now - self.last_sent.get(c, 0.0) >= self.heartbeat_s:
                self.publisher.heartbeat(c)
                self.last_sent[c] = now

    def linger(self, seconds: float, until_quiet: bool = False, stop=None) -> None:
        """Keep serving (snapshots, retransmissions, heartbeats) for ``seconds`` (``until_quiet``:
        and on while receivers still ask, :func:`wire.linger_over`), or until ``stop()``."""
        started = time.monotonic()
        while not (wire.linger_over(started, seconds, self.publisher.service) if until_quiet
                   else time.monotonic() >= started + seconds) and not (stop is not None and stop()):
            self.serve()
            time.sleep(0.005)

    def end(self) -> None:
        """Say on every channel published on that this epoch is over (a ``HEARTBEAT`` flagged
        ``END``; :meth:`close` sends it first): a receiver with every event before it knows it
        has the whole epoch."""
        if getattr(self, "_ended", True):
            return
        self._ended = True
        for c in sorted(self.by_channel):
            self.publisher.heartbeat(c, end=True)

    def close(self, linger_ms: int = 1000) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.end()
        for s in (getattr(self, "pub", None), getattr(self, "router", None)):
            if s is not None:
                s.close(linger_ms)
        if self.curve is not None:
            self.curve.stop()
        self.ctx.term()
        ipc_release(*self._claims)
        self._claims = []
