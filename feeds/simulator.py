"""The feed simulator: a seeded synthetic market (or a real capture) published in tickwire's
wire format, with a snapshot service and fault injection (``tickwire simulate``).

- :class:`Market`: resumable, seeded L3 order flow for many instruments: adds clustered
  near the top (geometric distance from the mid), cancels of random resting orders,
  executions at the front of the best level (trades, with the aggressor side), size
  reductions, the mid wandering a tick at a time and sweeping the level it moves onto; the
  resting order count is stationary, activity is skewed across instruments (Zipf-like) and
  event times are bursty (calm and burst regimes alternating).
- :class:`SnapshotService`: answers snapshot requests (ROUTER) with a channel's books as
  ``Book.snapshot_events`` and the sequence number they cover.
- :class:`Simulator`: the publisher.  It keeps a tickwire book per instrument, updated with
  exactly what it publishes, cuts the stream into per-channel messages of up to ``batch``
  events, paces them at a constant rate (sleeping until just before each send and spinning
  only the last few tens of microseconds, so the publisher leaves its core free between
  messages; the intended send time in the header), sends heartbeats, serves snapshots
  between messages (so a snapshot is exact at a sequence number), and injects faults:
  dropped, duplicated and reordered messages, and publisher restarts (new epoch, sequences
  from 1, sockets re-bound).

Everything but wall-clock times is a function of the seed: the same seed gives the same
events, the same messages and the same faults.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import numpy as np
import zmq

from tickwire.engine.instruments import Instrument, make_books
from tickwire.ext.codec import encode as encode_payload
from tickwire.ext.records import EVENT_DTYPE, Flag, Kind
from tickwire.feeds import wire
from tickwire.feeds.curve import serve_curve
from tickwire.feeds.wire import MsgType, RecoveryService, Retainer, WireFlag, books_snapshot

__all__ = ["Market", "Faults", "SnapshotService", "Simulator", "BindError", "check_endpoints", "channel_map",
           "synthetic_instruments"]

_T0 = 1_700_000_000_000_000_000        # a fixed origin for event times: same seed, same bytes
_BLOCK = 8192                          # random draws are made in blocks of this many events


def synthetic_instruments(n: int) -> list[Instrument]:
    """``n`` L3 instruments SIM0.. (0.01 tick, 0.001 lot), ids 0..n-1."""
    return [Instrument(i, f"SIM{i}", tick_size="0.01", lot_size="0.001", book="L3") for i in range(n)]


def channel_map(instruments, channels: int) -> dict[int, list[int]]:
    """Instrument shards: channel ``k`` carries the instruments whose id is ``k`` modulo ``channels``."""
    out: dict[int, list[int]] = {c: [] for c in range(channels)}
    for inst in instruments:
        iid = inst.id if isinstance(inst, Instrument) else int(inst)
        out[iid % channels].append(iid)
    return {c: ids for c, ids in out.items() if ids}


# ---------------------------------------------------------------------------------------
# the synthetic market
# ---------------------------------------------------------------------------------------

class _Inst:
    __slots__ = ("mid", "orders", "live", "bids", "asks")

    def __init__(self, mid):
        self.mid = mid
        self.orders = {}          # order id -> [side, price, qty, index in live]
        self.live = []            # resting order ids (random choice of a cancel)
        self.bids = {}            # price -> FIFO list of order ids
        self.asks = {}


class Market:
    """Seeded L3 order flow for ``instruments`` instruments, generated on demand.

    Parameters
    ----------
    instruments : int
        Instrument ids ``0 .. instruments-1``.
    seed : int
    resting : int
        Resting orders per instrument the flow settles around (the snapshot size).
    p_top : float
        Parameter of the geometric distance of new orders from the mid (larger: nearer).
    skew : float
        Zipf exponent of activity across instruments (0: uniform).
    """

    def __init__(self, instruments: int = 8, seed: int = 1, resting: int = 500, p_top: float = 0.1,
                 skew: float = 0.8, start_price: int = 1_000_000):
        if instruments < 1:
            raise ValueError("instruments must be at least 1")
        self.n = instruments
        self.resting = max(int(resting), 1)
        self.p_top = p_top
        flow, times = np.random.SeedSequence(seed).spawn(2)
        self._rng = np.random.default_rng(flow)        # order flow, drawn in fixed blocks
        self._trng = np.random.default_rng(times)      # event times, drawn run by run
        w = 1.0 / np.arange(1, instruments + 1) ** skew
        self._cdf = np.cumsum(w / w.sum())
        self._insts = [_Inst(start_price + 1000 * k) for k in range(instruments)]
        self._next_id = 1
        self._t = _T0
        self._burst = False
        self._gaps = np.empty(0, np.int64)             # rest of the current time regime
        self._carry = ([], [], [], [], [], [])         # events a sweep produced past the last n
        self._draws = None
        self._pos = _BLOCK
        self.generated = 0

    def _refill(self) -> None:
        rng, b = self._rng, _BLOCK
        self._draws = (
            np.searchsorted(self._cdf, rng.random(b)).tolist(),
            rng.random(b).tolist(),
            rng.random(b).tolist(),
            rng.integers(0, 2, b).tolist(),
            rng.geometric(self.p_top, b).tolist(),
            (rng.lognormal(4.0, 1.0, b).astype(np.int64) + 1).tolist(),
        )
        self._pos = 0

    def _times(self, n: int) -> np.ndarray:
        """Bursty event times: calm (mean 2 us gaps) and burst (mean 50 ns) regimes alternating
        with geometric run lengths (mean 40 and 25 events)."""
        parts, have = [], 0
        while have < n:
            if not len(self._gaps):
                run = int(self._trng.geometric(1 / 25 if self._burst else 1 / 40))
                scale = 50.0 if self._burst else 2_000.0
                self._gaps = self._trng.exponential(scale, run).astype(np.int64) + 1
                self._burst = not self._burst
            take = self._gaps[:n - have]
            self._gaps = self._gaps[len(take):]
            parts.append(take)
            have += len(take)
        t = self._t + np.cumsum(np.concatenate(parts))
        self._t = int(t[-1])
        return t

    def generate(self, n: int) -> np.ndarray:
        """The next ``n`` events (EVENT_DTYPE): ``instrument, kind, side, price, qty, order_id,
        ts_event`` set, and ``Flag.LAST`` on every event (each leaves the book consistent).

        The stream does not depend on how it is cut: ``generate(a)`` then ``generate(b)``
        gives the same events as ``generate(a + b)``.
        """
        rows_i, rows_k, rows_s, rows_p, rows_q, rows_o = self._carry
        emit_i, emit_k, emit_s = rows_i.append, rows_k.append, rows_s.append
        emit_p, emit_q, emit_o = rows_p.append, rows_q.append, rows_o.append
        resting = self.resting
        insts = self._insts
        ADD, DELETE, MODIFY, TRADE = int(Kind.ADD), int(Kind.DELETE), int(Kind.MODIFY), int(Kind.TRADE)
        while len(rows_i) < n:
            if self._pos >= _BLOCK:
                self._refill()
            inst_draw, u, v, side_draw, dist_draw, qty_draw = self._draws
            j = self._pos
            while j < _BLOCK and len(rows_i) < n:
                k = inst_draw[j]
                st = insts[k]
                orders, live = st.orders, st.live
                vj = v[j]
                uj = u[j]
                j += 1
                if vj < 0.01 and live:                 # the mid moves a tick; the level it
                    step = 1 if vj < 0.005 else -1     # moves onto trades away (a sweep)
                    st.mid += step
                    book = st.asks if step > 0 else st.bids
                    aggressor = 0 if step > 0 else 1
                    for oid in book.pop(st.mid, ()):
                        o = orders.pop(oid)
                        _unlive(orders, live, o[3])
                        emit_i(k); emit_k(TRADE); emit_s(aggressor); emit_p(st.mid); emit_q(o[2]); emit_o(oid)
                mid = st.mid
                nlive = len(live)
                p_add = 0.5 + 0.4 * (1.0 - min(nlive / resting, 2.0))
                if not nlive or uj < p_add:
                    side = side_draw[j - 1]
                    price = mid - dist_draw[j - 1] if side == 0 else mid + dist_draw[j - 1]
                    qty = qty_draw[j - 1]
                    oid = self._next_id
                    self._next_id = oid + 1
                    orders[oid] = [side, price, qty, nlive]
                    live.append(oid)
                    (st.bids if side == 0 else st.asks).setdefault(price, []).append(oid)
                    emit_i(k); emit_k(ADD); emit_s(side); emit_p(price); emit_q(qty); emit_o(oid)
                    continue
                r = (uj - p_add) / (1.0 - p_add)
                if r < 0.15:                           # execution at the front of the best level
                    side = side_draw[j - 1]
                    book = st.bids if side == 0 else st.asks
                    if book:
                        best = max(book) if side == 0 else min(book)
                        q = book[best]
                        oid = q[0]
                        o = orders[oid]
                        fill = o[2] if vj < 0.6 else max(1, o[2] // 2)
                        emit_i(k); emit_k(TRADE); emit_s(1 - side); emit_p(best); emit_q(fill); emit_o(oid)
                        if fill == o[2]:
                            del orders[oid]
                            q.pop(0)
                            if not q:
                                del book[best]
                            _unlive(orders, live, o[3])
                        else:
                            o[2] -= fill
                        continue
                oid = live[int(vj * nlive)]
                o = orders[oid]
                if r < 0.25 and o[2] > 1:              # reduce in place (keeps queue position)
                    o[2] -= max(1, o[2] // 3)
                    emit_i(k); emit_k(MODIFY); emit_s(o[0]); emit_p(o[1]); emit_q(o[2]); emit_o(oid)
                    continue
                del orders[oid]                        # cancel
                book = st.bids if o[0] == 0 else st.asks
                q = book[o[1]]
                q.remove(oid)
                if not q:
                    del book[o[1]]
                _unlive(orders, live, o[3])
                emit_i(k); emit_k(DELETE); emit_s(o[0]); emit_p(o[1]); emit_q(0); emit_o(oid)
            self._pos = j
        ev = np.zeros(n, dtype=EVENT_DTYPE)
        ev["instrument"] = rows_i[:n]
        ev["kind"] = rows_k[:n]
        ev["side"] = rows_s[:n]
        ev["price"] = rows_p[:n]
        ev["qty"] = rows_q[:n]
        ev["order_id"] = rows_o[:n]
        ev["ts_event"] = self._times(n)
        ev["flags"] = int(Flag.LAST)
        self._carry = tuple(rows[n:] for rows in (rows_i, rows_k, rows_s, rows_p, rows_q, rows_o))
        self.generated += n
        return ev


def _unlive(orders, live, pos):
    """Remove live[pos] by moving the last live order into its place."""
    last = live.pop()
    if pos < len(live):
        live[pos] = last
        orders[last][3] = pos


#: The publisher's recovery service (snapshots and retransmissions): :class:`tickwire.feeds.wire.RecoveryService`.
SnapshotService = RecoveryService


# ---------------------------------------------------------------------------------------
# the publisher
# ---------------------------------------------------------------------------------------

class BindError(ValueError):
    """An endpoint the publisher cannot bind: ``endpoint``, its ``role`` (``"data"`` or
    ``"snapshot"``) and libzmq's ``reason``."""

    def __init__(self, endpoint: str, role: str, reason: str):
        super().__init__(f"cannot bind {endpoint} ({reason})")
        self.endpoint, self.role, self.reason = endpoint, role, reason


def _bind(sock: zmq.Socket, endpoint: str, role: str):
    """Bind ``sock`` (:class:`BindError` if it cannot be); its :func:`~tickwire.feeds.wire.ipc_claim`."""
    why = wire.ipc_bind_refusal(endpoint)
    if why is not None:
        raise BindError(endpoint, role, why)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise BindError(endpoint, role, zmq.strerror(exc.errno)) from None
    return wire.ipc_claim(sock)


def check_endpoints(endpoints, snapshot: str | None = None) -> None:
    """Bind each endpoint once on a scratch socket, closed at once (:class:`BindError` for the
    first that cannot be bound): before long work that comes ahead of the real binds
    (generating the events, loading a capture)."""
    ctx = zmq.Context()
    socks, claims = [], []
    try:
        for ep, role, kind in [(ep, "data", zmq.PUB) for ep in endpoints] + (
                [(snapshot, "snapshot", zmq.ROUTER)] if snapshot else []):
            s = ctx.socket(kind)
            s.setsockopt(zmq.LINGER, 0)
            socks.append(s)
            claims.append(_bind(s, ep, role))
    finally:
        for s in socks:
            s.close(0)
        ctx.term()                      # the listeners are closed (ports and paths free) when it returns
        wire.ipc_release(*claims)


_YEAR_2030_NS = 1_893_456_000 * 10**9


@dataclasses.dataclass
class Faults:
    """Fault injection, per published data message (heartbeats and snapshots are spared).

    Attributes
    ----------
    drop, duplicate, reorder : float
        Probabilities that a message is not sent, sent twice (the copy after the channel's
        next message), or held back and sent after the channel's next message.
    future_stamps : float
        Probability that an event (not a message) is stamped at a random time from 2030 to the
        end of int64 nanoseconds (2262) instead of its own: a publisher's bad clock.
    restart_at : tuple of int
        Published-event counts after which the publisher restarts: sockets closed and
        re-bound, a new epoch, every channel's sequence back to 1 (the books are kept, as
        in a gateway restart).
    seed : int, optional
        Seed of the fault draws (default: derived from the simulator's seed).
    """

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    future_stamps: float = 0.0
    restart_at: tuple = ()
    seed: int | None = None

    def __post_init__(self):
        for name in ("drop", "duplicate", "reorder", "future_stamps"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"fault probability {name} must be within 0..1, got {p}")
        if self.drop + self.duplicate + self.reorder > 1.0:
            raise ValueError("drop + duplicate + reorder must not exceed 1")
        self.restart_at = tuple(sorted(int(x) for x in self.restart_at))


class _ArraySource:
    """Publishes a prepared array of events (a capture, a file, a pregenerated market)."""

    def __init__(self, events):
        self.events = events
        self.pos = 0

    def take(self, n):
        chunk = self.events[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk.copy()


class _MarketSource:
    def __init__(self, market):
        self.market = market

    def take(self, n):
        return self.market.generate(n)


class Simulator:
    """A publisher of tickwire feeds: a synthetic market or prepared events, with faults.

    Parameters
    ----------
    endpoints : str or sequence of str
        Where the data socket binds (``tcp://127.0.0.1:5555``, ``ipc:///tmp/tw-feed``...).
    snapshot : str, optional
        Where the snapshot service (ROUTER) binds.
    instruments : int or list of Instrument
        Synthetic market size, or the instruments of ``events``.
    events : numpy.ndarray, optional
        EVENT_DTYPE events to publish in order (a capture); default: a :class:`Market`.
    channels : int
        Channels (instrument shards, :func:`channel_map`): instrument ``i`` on ``i % channels``.
    seed : int
        Seed of the market and of the faults.
    rate : float
        Events per second, paced at a constant rate (0: as fast as possible).
    batch : int
        Most events in one message (a message carries one channel's events).
    faults : Faults, optional
    resting : int
        Synthetic market: resting orders per instrument.
    socket_type : {"PUB", "PUSH"}
    sndhwm : int, optional
        Send high-water mark in messages (libzmq's default: 1000; 0: unlimited).
    heartbeat : float
        Seconds between heartbeats of an idle channel (0: none).
    wait_subscribers : float
        PUB only: wait up to this many seconds, after each bind, until ``subscribers``
        subscriptions cover every channel (an XPUB sees them), so nothing is published
        into the void (0: do not wait); :attr:`subscribed` says whether they came.
    subscribers : int
    restart_pause : float
        Seconds the publisher stays down when it restarts.
    snapshot_delay : float
        Seconds the snapshot service holds each reply (see :class:`SnapshotService`).
    retain_events : int
        Events kept per channel for retransmission requests (the recovery service on
        ``snapshot`` answers both): a receiver that lost messages gets them again while
        they are held, and counts exactly what it could not get.
    curve : tickwire.feeds.curve.CurveServer, optional
        Publish as a ZeroMQ CURVE server (data socket and recovery service); with its
        clients directory, only those client keys are let in.
    stop_asked : callable, optional
        ``stop_asked() -> bool``: ends the ``wait_subscribers`` wait (a signal that came while
        this is made: pyzmq polls on after its handler ran, and two SIGTERMs went unheard).
    """

    def __init__(self, endpoints, *, snapshot: str | None = None, instruments=8, events=None,
                 channels: int = 4, seed: int = 1, rate: float = 0.0, batch: int = 64,
                 faults: Faults | None = None, resting: int = 500, socket_type: str = "PUB",
                 sndhwm: int | None = None, heartbeat: float = 0.1, wait_subscribers: float = 0.0,
                 subscribers: int = 1, restart_pause: float = 0.2, snapshot_delay: float = 0.0,
                 retain_events: int = 1 << 20, context: zmq.Context | None = None, curve=None,
                 stop_asked=None):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        self.endpoints = list(endpoints)
        if not self.endpoints:
            raise ValueError("at least one endpoint is needed")
        self.snapshot_endpoint = snapshot
        self._stop_asked = stop_asked   # () -> bool: a stop asked before this exists (the CLI's signals)
        if isinstance(instruments, int):
            instruments = synthetic_instruments(instruments)
        self.instruments = list(instruments)
        if not self.instruments:
            raise ValueError("at least one instrument is needed")
        if not 1 <= channels <= 0x10000:
            raise ValueError(f"channels must be 1..65536, got {channels}")
        if not 1 <= batch <= 1 << 20:
            raise ValueError(f"batch must be 1..2**20, got {batch}")
        self.channels = channel_map(self.instruments, channels)
        self.batch = int(batch)
        self.rate = float(rate)
        self.faults = faults or Faults()
        self.seed = seed
        self.socket_type = str(socket_type).upper()
        if self.socket_type not in ("PUB", "PUSH"):
            raise ValueError(f"socket_type must be 'PUB' or 'PUSH', got {socket_type!r}")
        self.sndhwm = sndhwm
        self.heartbeat = float(heartbeat)
        self.wait_subscribers = float(wait_subscribers)
        self.subscribers = int(subscribers)
        self.subscribed = True
        self.restart_pause = float(restart_pause)
        self.snapshot_delay = float(snapshot_delay)
        self.books = make_books(self.instruments)
        max_id = max(inst.id for inst in self.instruments)
        self._chan_of = np.zeros(max_id + 1, np.int64)
        for c, ids in self.channels.items():
            self._chan_of[ids] = c
        self._source = _ArraySource(events) if events is not None else _MarketSource(
            Market(len(self.instruments), seed=seed, resting=resting))
        if events is None and [i.id for i in self.instruments] != list(range(len(self.instruments))):
            raise ValueError("a synthetic market needs instrument ids 0..n-1")
        fseed = self.faults.seed if self.faults.seed is not None else seed + 0x5EED
        self._frng = np.random.default_rng(fseed)
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        self.epoch = wire.new_epoch()
        self.next_seq = {c: 1 for c in self.channels}
        self.retainer = Retainer(retain_events, self.epoch)
        for c in self.channels:
            self.retainer.announce(c)
        self._held = {}                 # channel -> a reordered message waiting for the next one
        self._dups = {}                 # channel -> a copy to send after the channel's next message
        self._restarts = list(self.faults.restart_at)
        self.stats = dict.fromkeys(("events", "messages", "sent", "dropped", "duplicated", "reordered", "future_stamps",
                                    "restarts", "heartbeats", "snapshots", "snapshot_events",
                                    "retransmissions", "retransmitted", "not_held"), 0)
        self._pub = None
        self._router = None
        self._claims = []               # the ipc socket files bound (removed at close)
        self._service = None
        self._served_before = (0, 0)
        self._last_beat = {c: 0 for c in self.channels}
        self._stopping = False          # publish no more (request_stop)
        self._abort = False             # nor linger (request_stop(now=True))
        self._lingering = False
        self._curve = curve
        try:
            if curve is not None:
                curve.start(self._ctx)
            self._open()                # BindError: an endpoint that cannot be bound
        except BaseException:
            self.close(0)
            raise

    # -- sockets ---------------------------------------------------------------------------
    def _open(self) -> None:
        waiting = self.socket_type == "PUB" and self.wait_subscribers > 0
        kind = zmq.PUSH if self.socket_type == "PUSH" else (zmq.XPUB if waiting else zmq.PUB)
        self._pub = self._ctx.socket(kind)
        self._pub.setsockopt(zmq.LINGER, 0)
        serve_curve(self._curve, self._pub)
        if self.sndhwm is not None:
            self._pub.setsockopt(zmq.SNDHWM, int(self.sndhwm))
        if waiting:
            self._pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        for ep in self.endpoints:
            self._claims.append(_bind(self._pub, ep, "data"))
        if self.snapshot_endpoint:
            self._router = self._ctx.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            # replies queue up to 1,000 messages a peer, or the parts of the largest replies a
            # receiver is owed at once (a retransmission of the whole retained range on every
            # channel: one receiver asks for all its channels on one connection), then are dropped:
            # the peer asks again. Unbounded (0), a peer that asks and never reads grew this
            # process by 1.5 GB in 25 s (an adversarial pass)
            per_reply = self.retainer.max_events // wire.MAX_MESSAGE_EVENTS + 16
            self._router.setsockopt(zmq.SNDHWM, max(1000, len(self.channels) * per_reply))
            wire.service_socket_options(self._router)
            serve_curve(self._curve, self._router)
            self._claims.append(_bind(self._router, self.snapshot_endpoint, "snapshot"))
            self._service = RecoveryService(self._router, self._snapshot_of, self.retainer,
                                            delay=self.snapshot_delay)
        if waiting:
            #: False when the wait ended without a subscriber on every channel (the command then
            #: publishes nothing: exit 2; it published into the void and said "done", exit 0)
            self.subscribed = self._await_subscribers()

    def _close_sockets(self, linger_ms: int = 0) -> None:
        if self._service is not None:
            for k, v in self._service_stats().items():
                self.stats[k] += v
            self._service = None
        for s in (self._pub, self._router):
            if s is not None:
                s.close(linger_ms)
        self._pub = self._router = None
        wire.ipc_release(*self._claims)
        self._claims = []

    def _await_subscribers(self) -> bool:
        """Read XPUB subscriptions until each channel has ``subscribers`` of them (or time out)."""
        return wire.await_subscribers(self._pub, self.channels, self.subscribers, self.wait_subscribers,
                                      stop=self._stop_asked)

    def close(self, linger: float = 1.0) -> None:
        """Close the sockets, giving queued messages up to ``linger`` seconds to leave."""
        self._close_sockets(int(linger * 1000))
        if self._curve is not None:
            self._curve.stop()
        if self._own_context:
            self._ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- snapshots -------------------------------------------------------------------------
    def _snapshot_of(self, channel: int):
        ids = self.channels.get(channel)
        if ids is None:
            return None
        covered = self.next_seq[channel] - 1
        return self.epoch, covered, books_snapshot(self.books, ids, covered)

    def snapshot_events(self) -> dict[int, np.ndarray]:
        """Every instrument's book as snapshot events (seq 0, ts 0): the publisher's full state."""
        return {inst.id: self.books[inst.id].snapshot_events() for inst in self.instruments}

    def save_books(self, path) -> None:
        """Write :meth:`snapshot_events` (``book_<id>``), the channels' sequence state
        (``channels``, ``next_seq``, ``epoch``) and the counters (``stats``, JSON) to ``path`` (.npz)."""
        arrays = {f"book_{iid}": ev for iid, ev in self.snapshot_events().items()}
        arrays["channels"] = np.array(sorted(self.next_seq), np.int64)
        arrays["next_seq"] = np.array([self.next_seq[c] for c in sorted(self.next_seq)], np.uint64)
        arrays["epoch"] = np.array([self.epoch], np.uint64)
        arrays["stats"] = np.array(json.dumps(self._report(time.perf_counter_ns())))
        np.savez(path, **arrays)

    # -- publishing ------------------------------------------------------------------------
    def _send(self, channel: int, payload: bytes) -> None:
        self._pub.send_multipart([wire.topic(channel), payload], copy=True)
        self.stats["sent"] += 1

    def _emit(self, channel: int, payload: bytes) -> None:
        """Send one data message through the fault injector."""
        held = self._held.pop(channel, None)
        dup = self._dups.pop(channel, None)
        f = self.faults
        r = self._frng.random() if (f.drop or f.duplicate or f.reorder) else 1.0
        if r < f.drop:
            self.stats["dropped"] += 1
        elif r < f.drop + f.reorder:
            self._held[channel] = payload
            self.stats["reordered"] += 1
        else:
            self._send(channel, payload)
            if r < f.drop + f.reorder + f.duplicate:
                self._dups[channel] = payload
                self.stats["duplicated"] += 1
        if held is not None:
            self._send(channel, held)
        if dup is not None:
            self._send(channel, dup)

    def _flush_faults(self) -> None:
        for c, payload in list(self._held.items()) + list(self._dups.items()):
            self._send(c, payload)
        self._held.clear()
        self._dups.clear()

    def _beat(self, now_wall: int, force: bool = False) -> None:
        period = int(self.heartbeat * 1e9)
        for c in self.channels:
            if force or now_wall - self._last_beat[c] >= period:
                self._send(c, encode_payload(MsgType.HEARTBEAT, c, self.next_seq[c], None,
                                             epoch=self.epoch, send_time=now_wall))
                self._last_beat[c] = now_wall
                self.stats["heartbeats"] += 1

    def restart(self) -> None:
        """Restart now: messages in flight are lost, sockets closed and re-bound after
        ``restart_pause``, a new epoch, sequences from 1; the books are kept."""
        self._held.clear()
        self._dups.clear()
        self._close_sockets()
        time.sleep(self.restart_pause)
        self.epoch = wire.new_epoch(self.epoch)
        self.next_seq = {c: 1 for c in self.channels}
        self.retainer.restart(self.epoch)
        self.stats["restarts"] += 1
        self._open()

    def serve(self) -> int:
        """Answer waiting snapshot requests (between messages); read the subscriptions an
        XPUB keeps receiving (receivers reconnecting) so they do not pile up."""
        if self._pub is not None and self._pub.type == zmq.XPUB:
            while self._pub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                self._pub.recv()
        return self._service.serve() if self._service is not None else 0

    def run(self, events: int | None = None, duration: float | None = None, progress=None,
            linger: float = 0.0, progress_every: float = 1.0) -> dict:
        """Publish ``events`` events (or for ``duration`` seconds, or until a prepared source
        runs out), then keep heartbeats and the snapshot service up for ``linger`` seconds.

        ``progress(stats)`` is called about every ``progress_every`` seconds.  Returns
        :attr:`stats` (events published, messages, sent, the faults injected, snapshots
        served, elapsed seconds, rate).
        """
        st = self.stats
        chunk = max(self.batch * len(self.channels), 1024)
        t0 = time.perf_counter_ns()
        wall0 = time.time_ns()
        end = None if duration is None else t0 + int(duration * 1e9)
        ns_per_event = 1e9 / self.rate if self.rate > 0 else 0.0
        if ns_per_event:
            _tight_timers()
        next_progress = t0 + int(progress_every * 1e9)
        next_serve = t0
        published = 0
        batch = self.batch
        apply = self.books.apply
        chan_of = self._chan_of
        while events is None or published < events:
            if self._stopping or (end is not None and time.perf_counter_ns() >= end):
                break
            want = chunk if events is None else min(chunk, events - published)
            ev = self._source.take(want)
            if not len(ev):
                break
            if self.faults.future_stamps:
                bad = self._frng.random(len(ev)) < self.faults.future_stamps
                if bad.any():
                    ev = ev.copy()                  # (a prepared array's events stay as they were)
                    ev["ts_event"][bad] = self._frng.integers(_YEAR_2030_NS, (1 << 63) - 1, int(bad.sum()),
                                                              endpoint=True)
                    st["future_stamps"] += int(bad.sum())
            chans = chan_of[ev["instrument"]]
            order = np.argsort(chans, kind="stable")
            ev = ev[order]
            chans = chans[order]
            bounds = np.flatnonzero(np.diff(chans)) + 1
            starts = np.concatenate(([0], bounds))
            stops = np.concatenate((bounds, [len(ev)]))
            for a, b in zip(starts.tolist(), stops.tolist()):
                c = int(chans[a])
                for m in range(a, b, batch):
                    msg = ev[m:min(m + batch, b)]
                    n = len(msg)
                    seq = self.next_seq[c]
                    msg["seq"] = np.arange(seq, seq + n, dtype=np.uint64)
                    msg["channel"] = c
                    apply(msg)
                    self.retainer.keep(c, seq, msg)
                    self.next_seq[c] = seq + n
                    if ns_per_event:
                        intended = t0 + int(published * ns_per_event)
                        pace_until(intended)
                    else:
                        intended = time.perf_counter_ns()
                    self._emit(c, encode_payload(MsgType.DATA, c, seq, msg, epoch=self.epoch,
                                                 send_time=wall0 + (intended - t0)))
                    self._last_beat[c] = wall0 + (intended - t0)
                    published += n
                    st["events"] += n
                    st["messages"] += 1
                    now = time.perf_counter_ns()
                    if now >= next_serve:
                        self.serve()
                        if self.heartbeat:
                            self._beat(wall0 + (now - t0))
                        next_serve = now + 200_000
                    if self._restarts and published >= self._restarts[0]:
                        while self._restarts and published >= self._restarts[0]:
                            self._restarts.pop(0)
                        self.restart()
                    if progress is not None and now >= next_progress:
                        next_progress = now + int(progress_every * 1e9)
                        progress(self._report(t0))
        self._flush_faults()
        if self.heartbeat:
            self._beat(time.time_ns(), force=True)
        elapsed_publish = (time.perf_counter_ns() - t0) / 1e9
        self._lingering = True          # (a stop asked while publishing still lingers)
        try:
            self.idle(linger, until_quiet=True)
        finally:
            self._lingering = False
        self.end()
        report = self._report(t0)
        report["publish_seconds"] = elapsed_publish
        report["rate"] = st["events"] / elapsed_publish if elapsed_publish > 0 else 0.0
        return report

    def end(self) -> None:
        """Say on every channel that this epoch is over (a ``HEARTBEAT`` flagged ``END``, after
        the last event and the linger): a receiver with every event before it then knows it has
        the whole epoch, and a daemon restarted across this publisher's next start counts no
        loss. :meth:`run` sends it when it returns; a publisher that dies sends none, nor one
        without heartbeats (``heartbeat=0``) or on a PUSH socket (one receiver would get it)."""
        if self._pub is None or not self.heartbeat or self.socket_type != "PUB":
            return
        now = time.time_ns()
        for c in self.channels:
            self._pub.send_multipart([wire.topic(c), encode_payload(MsgType.HEARTBEAT, c, self.next_seq[c], None,
                                                                  epoch=self.epoch, send_time=now,
                                                                  flags=int(WireFlag.END))])

    def request_stop(self, now: bool = False) -> None:
        """Publish nothing more after the current message; :meth:`run` still lingers (its
        ``linger`` seconds of snapshots, retransmissions and heartbeats, so that receivers recover
        what the wire lost) and says ``END``, then returns its report. ``now``, or asked while it
        lingers already (its events all out: a test stopped a 120 s linger so, and waited it out):
        no linger either. Safe from a signal handler."""
        self._stopping = True
        if now or self._lingering:
            self._abort = True

    def idle(self, seconds: float, until_quiet: bool = False) -> None:
        """Publish nothing for ``seconds``, but keep serving snapshots and heartbeats (before the
        first event, receivers can then sync on an empty market; after the last, recover).
        ``until_quiet``: and on while receivers still ask (:func:`wire.linger_over`)."""
        started = time.monotonic()
        stop = started + seconds
        while not self._abort and not (self._stopping and not self._lingering):
            if (wire.linger_over(started, seconds, self._service) if until_quiet else time.monotonic() >= stop):
                break
            self.serve()
            if self.heartbeat:
                self._beat(time.time_ns())
            if self._router is not None:
                self._router.poll(10, zmq.POLLIN)
            else:
                time.sleep(0.01)

    def _service_stats(self) -> dict:
        svc = self._service
        return {"snapshots": svc.served, "snapshot_events": svc.events, "retransmissions": svc.retransmissions,
                "retransmitted": svc.retransmitted, "not_held": svc.not_held}

    def _report(self, t0: int) -> dict:
        out = dict(self.stats)
        if self._service is not None:
            for k, v in self._service_stats().items():
                out[k] += v
        out["elapsed"] = (time.perf_counter_ns() - t0) / 1e9
        out["epoch"] = self.epoch
        return out


# Sleep overshoots its deadline by the kernel's timer slack (50 us by default, 1 us once
# _tight_timers() has run) plus the wake-up; the last stretch before a deadline is spun.
_SPIN_NS = 40_000


def _tight_timers() -> bool:
    """Ask for 1 us timer slack (prctl PR_SET_TIMERSLACK), so that sleeps end close to their
    deadlines; best effort, Linux only.  True when it took."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(29, ctypes.c_ulong(1000), 0, 0, 0) == 0     # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        return False


def pace_until(deadline_ns: int) -> None:
    """Wait until ``deadline_ns`` (perf_counter): sleep until _SPIN_NS before it, then spin.

    Between messages the publisher sleeps rather than spins: on a machine where it shares a
    core with other work (the storage writer, on two cores), a spinning publisher is
    preempted for whole scheduler slices and then sends in bursts."""
    left = deadline_ns - time.perf_counter_ns()
    if left > _SPIN_NS:
        time.sleep((left - _SPIN_NS) / 1e9)
    while time.perf_counter_ns() < deadline_ns:
        pass


# ---------------------------------------------------------------------------------------
# `tickwire simulate`
# ---------------------------------------------------------------------------------------

def _load_capture(name: str, data_dir):
    from pathlib import Path

    from tickwire.feeds import captures

    loaders = {"kraken": (captures.KRAKEN_FILE, captures.load_kraken),
               "binance": (captures.BINANCE_FILE, captures.load_binance)}
    filename, loader = loaders[name]
    path = Path(data_dir) / filename if data_dir else captures.find_shared_data(filename)
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"the {name} capture ({filename}) was not found: it lives in ../shared/data beside the "
            "source tree in the development checkout; point --data (or TICKWIRE_SHARED_DATA) at "
            "the directory that holds it")
    return loader(path)


def _cpu_list(cpus) -> str:
    """``{0, 1, 2, 5}`` as ``0-2, 5``."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(c)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def _save_path_problem(path) -> str | None:
    """Why the books could not be written to ``path`` (np.savez's file: ``.npz`` appended when
    missing), or None."""
    import os
    from pathlib import Path

    p = Path(path)
    if str(path).endswith(os.sep) or p.is_dir():     # (np.savez wrote DIR/.npz, a hidden file)
        return f"{path} is a directory: expected a file name (.npz)"
    if p.suffix != ".npz":                           # (np.savez wrote x.txt.npz, /dev/full.npz, unsaid)
        return "expected a file name ending in .npz (what is written is an .npz archive)"
    target = p
    parent = target.parent
    if (target.exists() or target.is_symlink()) and not target.is_file():
        return f"{target} exists and is not a regular file: nothing written over it"
    if not parent.exists():
        return f"the directory {parent} does not exist"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        return f"cannot write {target}: no permission"
    return None


def argument_problem(args) -> str | None:
    """The first argument of ``tickwire simulate`` that cannot work, as ``--option: what was
    expected, got what``; None when they can all work. Checked before anything starts: a CPU
    this process may not use, fewer than one resting order, more events a message than
    receivers take (:data:`~tickwire.feeds.wire.MAX_MESSAGE_EVENTS`), books to be saved where
    they cannot be written (found out, before, only once the whole publish had run)."""
    import os

    if args.cpu is not None:
        cpus = os.sched_getaffinity(0)
        if args.cpu not in cpus:
            return f"--cpu: expected one of the CPUs this process may use ({_cpu_list(cpus)}), got {args.cpu}"
    if args.resting < 1:
        return f"--resting: expected an integer >= 1, got {args.resting}"
    if not 1 <= args.batch <= wire.MAX_MESSAGE_EVENTS:
        return (f"--batch: expected an integer from 1 to {wire.MAX_MESSAGE_EVENTS:,} (the receivers' per-message "
                f"limit, feeds.max_message_events by default: a larger message is refused whole), got {args.batch}")
    if args.save_books:
        why = _save_path_problem(args.save_books)
        if why:
            return f"--save-books {args.save_books}: {why}"
    return None


def _bind_problem(exc: BindError) -> str:
    option = "--snapshot" if exc.role == "snapshot" else "--endpoint"
    return (f"{option} {exc.endpoint}: cannot bind ({exc.reason}): expected an endpoint of this machine, "
            "tcp://HOST:PORT or ipc:///PATH")


def run_cli(args, say=print) -> int:
    """``tickwire simulate``: build a :class:`Simulator` from parsed arguments and run it.
    Arguments that cannot work are one line on stderr and exit status 2, before anything starts."""
    import os

    def refuse(problem: str) -> int:
        print(f"tickwire simulate: {problem}", file=sys.stderr, flush=True)
        return 2

    problem = argument_problem(args)
    if problem:
        return refuse(problem)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if getattr(args, "rt_priority", 0):
        from tickwire.feeds.iothread import check_priority

        try:
            prio = check_priority(args.rt_priority)
        except ValueError as exc:
            say(f"tickwire simulate: --rt-priority: {exc}")
            return 2
        try:         # before any socket: ZeroMQ's I/O thread inherits the policy
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
            say(f"publishing under SCHED_FIFO priority {os.sched_getparam(0).sched_priority}")
        except OSError as exc:
            say(f"tickwire simulate: --rt-priority {prio}: SCHED_FIFO not permitted here ({exc.strerror}); "
                "publishing on normal scheduling")
    if getattr(args, "retain", 0) < 0:
        say(f"tickwire simulate: --retain: events kept per channel must be >= 0, got {args.retain}")
        return 2
    faults = Faults(drop=args.drop, duplicate=args.duplicate, reorder=args.reorder,
                    future_stamps=args.future_stamps, restart_at=tuple(args.restart_at or ()))
    from tickwire.engine.config import default_feed_endpoint, default_snapshot_endpoint

    try:
        endpoints = args.endpoint or [default_feed_endpoint()]
        snapshot = None if args.snapshot in ("", "none") else (args.snapshot or default_snapshot_endpoint())
    except ValueError as exc:
        return refuse(str(exc))
    from tickwire.feeds.curve import server_from_arguments

    try:
        curve = server_from_arguments(args)
    except ValueError as exc:
        return refuse(str(exc))
    if args.capture or (args.pregenerate and args.duration is None):     # long work before the binds
        try:
            check_endpoints(endpoints, snapshot)
        except BindError as exc:
            return refuse(_bind_problem(exc))
    events = None
    instruments = args.instruments
    if args.capture:
        try:
            cap = _load_capture(args.capture, args.data)
        except FileNotFoundError as exc:
            say(f"tickwire simulate: {exc}")
            return 2
        events, instruments = cap.events, cap.instruments
        say(f"capture {cap.name}: {len(cap.instruments)} instruments, {len(events):,} events")
    elif args.pregenerate and args.duration is None:
        t0 = time.perf_counter()
        market = Market(args.instruments, seed=args.seed, resting=args.resting)
        parts, left = [], args.publish_events
        while left > 0:
            parts.append(market.generate(min(left, 1 << 18)))
            left -= len(parts[-1])
            say(f"  generating: {args.publish_events - left:,}/{args.publish_events:,} events")
        events = np.concatenate(parts)
        instruments = synthetic_instruments(args.instruments)
        say(f"generated {len(events):,} events in {time.perf_counter() - t0:.1f} s")
    import signal

    sim = None
    stop_asked = []

    def stop(*_):                   # stop cleanly: linger, END, report, saved books; a second: at once
        stop_asked.append(True)
        if sim is not None:
            sim.request_stop(now=len(stop_asked) > 1)

    for sig in (signal.SIGTERM, signal.SIGINT):         # (already while the sockets bind)
        signal.signal(sig, stop)
    try:
        sim = Simulator(endpoints, snapshot=snapshot,
                        instruments=instruments, events=events, channels=args.channels, seed=args.seed,
                        rate=args.rate, batch=args.batch, faults=faults, resting=args.resting,
                        socket_type=args.socket, sndhwm=args.sndhwm, heartbeat=args.heartbeat,
                        wait_subscribers=args.wait_subscribers, subscribers=args.subscribers,
                        snapshot_delay=args.snapshot_delay, retain_events=args.retain, curve=curve,
                        stop_asked=lambda: bool(stop_asked))
    except BindError as exc:
        return refuse(_bind_problem(exc))
    if stop_asked:
        sim.request_stop(now=len(stop_asked) > 1)
    if not sim.subscribed and stop_asked:
        sim.close(0)
        say("stopped while waiting for subscribers: nothing published")
        return 0
    if not sim.subscribed:
        sim.close(0)
        return refuse(f"--wait-subscribers: no {'subscriber' if args.subscribers == 1 else f'{args.subscribers} subscribers'} "
                      f"on every channel within {args.wait_subscribers:g} s: nothing published (is the daemon "
                      f"running, with feeds.endpoints = {', '.join(sim.endpoints)}?)")
    try:
        if curve is not None:
            say(f"CURVE server, public key {curve.public.decode()}; clients: "
                f"{curve.clients_dir or 'any that know the server key'}")
        beats = (f"heartbeats every {sim.heartbeat:g} s" if sim.heartbeat else
                 "no heartbeats (--heartbeat 0: receivers flag a channel idle past their silence timeout STALE)")
        say(f"publishing on {', '.join(sim.endpoints)} ({sim.socket_type}), snapshots on "
            f"{snapshot or 'none'}: {len(sim.instruments)} instruments over {len(sim.channels)} channels, "
            f"batch {sim.batch}, rate {'max' if not sim.rate else f'{sim.rate:,.0f} events/s'}, {beats}, "
            f"seed {sim.seed}")

        def progress(st):
            say(f"  {st['events']:>12,} events  {st['events'] / max(st['elapsed'], 1e-9) / 1e6:6.2f} M/s  "
                f"{st['messages']:,} msgs  dropped {st['dropped']}  dup {st['duplicated']}  "
                f"reordered {st['reordered']}  restarts {st['restarts']}  snapshots {st['snapshots']}")

        count = None if args.duration is not None else args.publish_events
        if getattr(args, "start_delay", 0):
            sim.idle(args.start_delay)
        report = sim.run(events=count, duration=args.duration, progress=None if args.quiet else progress,
                         linger=args.linger)
        if args.save_books:
            try:
                sim.save_books(args.save_books)
            except OSError as exc:              # (checked at start: a disk that filled up since)
                print(f"tickwire simulate: --save-books {args.save_books}: cannot write "
                      f"({exc.strerror or exc})", file=sys.stderr, flush=True)
                return 1
        say(f"done: {report['events']:,} events in {report['messages']:,} messages "
            f"({report['publish_seconds']:.2f} s, {report['rate'] / 1e6:.2f} M events/s); sent "
            f"{report['sent']:,} (heartbeats {report['heartbeats']:,}); dropped {report['dropped']}, "
            f"duplicated {report['duplicated']}, reordered {report['reordered']}, "
            f"{report['future_stamps']:,} events stamped in the future, restarts "
            f"{report['restarts']}; snapshots served {report['snapshots']}; retransmissions served "
            f"{report['retransmissions']} ({report['retransmitted']:,} events, {report['not_held']:,} no longer held)")
        if sim.rate and report["rate"] < 0.95 * sim.rate and report["events"] > sim.rate:
            say(f"note: asked for {sim.rate:,.0f} events/s, reached {report['rate']:,.0f}: the publisher (one "
                f"Python process) was the bound; a larger --batch carries more events per message")
    finally:
        sim.close()
    return 0
