"""Real exchanges in through cryptofeed: ``tickwire bridge``.

cryptofeed (PyPI ``cryptofeed``, the optional ``cryptofeed`` extra) keeps websocket connections to
about forty exchanges and hands out normalised book snapshots, book deltas and trades.  The bridge
turns those into canonical events with exact integer ticks and lots and publishes them in
tickwire's wire format (per-channel sequence numbers, a snapshot and retransmission service,
heartbeats: :class:`tickwire.replay.publish.Republisher`), so an unchanged ``tickwire run``
daemon consumes a real exchange.

Two inputs:

- **cryptofeed itself** (:meth:`Bridge.run`): the bridge runs cryptofeed's FeedHandler.  Each
  cryptofeed book snapshot becomes a snapshot sequence (``SNAPSHOT_BEGIN``, the levels,
  ``SNAPSHOT_END``); a second snapshot of the same book means the exchange resynced (a dropped
  websocket, a checksum cryptofeed refused), and goes out as a ``STALE`` marker followed by the
  fresh snapshot, so the daemon's book is out of sync in between and exact after.
- **cryptofeed's ZeroMQ backends** (:meth:`Bridge.run_zmq_input`, ``bridge.zmq_input``): for users
  who already run cryptofeed with ``BookZMQ``/``TradeZMQ``.  That format (topic-prefixed JSON) has no
  sequence numbers, so a message lost between cryptofeed and the bridge cannot be seen.  What can be
  seen is counted: a delta for a book with no snapshot yet (dropped, waiting for one) and a book
  that crosses after a delta (marked STALE until the next snapshot).

Prices and quantities: cryptofeed hands out :class:`decimal.Decimal` (strings or floats from the
ZeroMQ backends, read by their shortest representation).  A price that is not a multiple of the
instrument's tick, or a quantity not a multiple of its lot, is never rounded: the level is left out,
counted per instrument (``Converter.rejected``) and logged once. So is a price outside the
instrument's range (``min_price``..``max_price`` ticks: 0 or below by default), a negative quantity,
and a zero one where it cannot be (a trade, a snapshot's level; a delta's 0 deletes its level).

Timestamps: the exchange's event time (cryptofeed's ``timestamp``) goes into ``ts_event`` where the
exchange gives one, the local receive time into ``ts_recv``; where cryptofeed has no event time
(Kraken's book messages) ``ts_event`` is the receive time.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Iterable

import numpy as np

from tickwire import source_checkout
from tickwire.engine.instruments import decimal_to_int
from tickwire.ext.records import EVENT_DTYPE, Flag, Kind, Side

__all__ = ["BridgeError", "Converter", "Bridge", "require_cryptofeed", "to_ns", "playback", "add_parser", "cmd_bridge"]

log = logging.getLogger("tickwire.bridge")

_LAST, _SNAPSHOT = int(Flag.LAST), int(Flag.SNAPSHOT)
_BID, _ASK = int(Side.BID), int(Side.ASK)
_TAKER = {"buy": _BID, "sell": _ASK}              # a trade's taker side; any other: Side.NONE
_ADD, _MODIFY, _TRADE = int(Kind.ADD), int(Kind.MODIFY), int(Kind.TRADE)

#: How to install the cryptofeed extra: from the checkout this tickwire runs from, or the installed package's.
EXTRA = "pip install -e '.[cryptofeed]' in the checkout" if source_checkout() else "pip install 'tickwire[cryptofeed]'"


class BridgeError(ValueError):
    """The bridge cannot start: one line naming what is wrong."""


def require_cryptofeed():
    """The ``cryptofeed`` module, or BridgeError saying which extra installs it."""
    try:
        import cryptofeed
    except ImportError:
        raise BridgeError(f"cryptofeed is not installed: install the cryptofeed extra ({EXTRA})") from None
    return cryptofeed


def _decimal(value) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))          # the shortest text that reads back as this float
    return Decimal(str(value))


def to_ns(seconds) -> int:
    """Nanoseconds of a time in seconds given as a float (read by its shortest text), a Decimal
    or a decimal string; exact to the nanosecond, past it rounded half to even."""
    text = repr(seconds) if type(seconds) is float else seconds
    if type(text) is str:                        # the usual "1618678134.213106": by the digits
        try:
            return decimal_to_int(text, 9)
        except ValueError:                       # an exponent, or past the nanosecond: rounded below
            pass
    return int(_decimal(seconds).scaleb(9).to_integral_value())


def event_ns(ts, default: int) -> int:
    """Nanoseconds of a message's time in seconds ``ts`` (``default`` when it has none);
    ValueError or ArithmeticError for one that is no time (past 2^63 ns: milliseconds taken for
    seconds, say; NaN, a negative one)."""
    if not ts:
        return default
    ns = to_ns(ts)
    if not 0 < ns < 1 << 63:
        raise ValueError(f"timestamp {ts!r} is not a time in seconds")
    return ns


class _Implausible(ValueError):
    """An exact value no book can hold: a price outside the instrument's range, a quantity below zero."""


class _OutOfRange(_Implausible):
    """A price outside the instrument's range: a level the book does not hold by its config (the
    book stays exact inside the range; any other level left out makes it wrong)."""


class Converter:
    """cryptofeed's books and trades as canonical events, exact or not at all.

    One converter per bridge; ``instruments``: the configured instruments, whose ``symbol`` is
    cryptofeed's normalised symbol (``BTC-USD``).  Each method returns the events of one exchange
    message (``Flag.LAST`` on the final one), or None when there is nothing to publish.
    """

    def __init__(self, instruments: Iterable, *, stale_on_resync: bool = True):
        self.by_symbol = {inst.symbol: inst for inst in instruments}
        self.synced: set[str] = set()
        self.stale_on_resync = stale_on_resync
        self.counts = Counter()
        self.rejected = Counter()                  # per symbol: levels or trades left out (inexact)
        self._logged: set[str] = set()

    def instrument(self, symbol: str):
        inst = self.by_symbol.get(symbol)
        if inst is None:
            self.counts["unknown_symbol"] += 1
            # one line for all of them, the first named as a repr: a peer on bridge.zmq_input made each new
            # symbol a line, and a symbol with a newline a forged log line (an adversarial pass)
            self._once("u", "cryptofeed sent %.200r, which is no configured instrument: ignored (as is any other "
                       "symbol not configured)", symbol)
        return inst

    def _once(self, key: str, message: str, *args) -> None:
        """Log ``message % args`` the first time ``key`` is seen; a line break or other control
        character in it (text of a peer's: a symbol, a price) is escaped, so that no one line
        can read as two."""
        if key not in self._logged:
            self._logged.add(key)
            text = (message + " (further ones are counted, not logged)") % args
            if not text.isprintable():
                text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
            log.warning("%s", text)

    def _units(self, inst, price, qty):
        """(ticks, lots), exactly, or None (counted, logged once): Decimals, decimal strings, ints,
        or floats read by their shortest text."""
        try:
            return inst.level_units(price, qty)
        except ValueError as exc:
            self._reject(inst, exc)
            return None

    def _reject(self, inst, exc) -> None:
        self.rejected[inst.symbol] += 1
        self.counts["rejected"] += 1
        if isinstance(exc, _Implausible):
            self._once(f"v:{inst.symbol}", "%s: %s: left out (check the instrument's min_price and max_price)",
                       inst.symbol, exc)
        else:
            self._once(f"r:{inst.symbol}", "%s: %s: left out, never rounded (check the instrument's tick_size and "
                       "lot_size)", inst.symbol, exc)

    @staticmethod
    def _check(inst, price, qty, p: int, q: int, zero_ok: bool) -> None:
        """ValueError for a price outside the instrument's range or a quantity below zero (zero
        too where it cannot be: a trade, a snapshot's level). They were published and a trade at
        -100.0 or of size 0 was stored as a real one, nothing counted."""
        if not inst.min_price <= p <= inst.max_price:
            raise _OutOfRange(f"price {price} is outside the instrument's range ({inst.min_price} to "
                             f"{inst.max_price} ticks)")
        if q < 0 or (q == 0 and not zero_ok):
            raise _Implausible(f"quantity {qty} is {'negative' if q < 0 else 'zero'}")

    def _levels(self, rows, inst, levels, side, kind, flags, ts_event, ts_recv) -> int:
        """Append the levels' rows; return how many were left out that leave the book wrong (all
        but prices outside the instrument's range)."""
        iid = inst.id
        wrong = 0
        units_of = inst.level_units
        zero_ok = kind == _MODIFY                  # (a delta's 0 deletes the level)
        lo, hi = inst.min_price, inst.max_price
        for price, qty in levels:
            try:
                p, q = units_of(price, qty)
                if not (lo <= p <= hi and (q > 0 or (q == 0 and zero_ok))):
                    self._check(inst, price, qty, p, q, zero_ok)
            except ValueError as exc:
                self._reject(inst, exc)
                wrong += not isinstance(exc, _OutOfRange)
                continue
            rows.append((ts_event, ts_recv, 0, 0, p, q, iid, 0, kind, side, flags, 0))
        return wrong

    def _wrong(self, rows, inst, ts_event: int, ts_recv: int) -> None:
        """A level of the message left out at a price the book holds (a price off the tick, a
        quantity off the lot or below zero): the book published is not the exchange's, so it is
        marked STALE until the next snapshot (it stayed in sync, wrong for good: an adversarial
        pass)."""
        rows.append(_marker(inst.id, ts_event, ts_recv, Flag.SNAPSHOT | Flag.STALE))
        self.synced.discard(inst.symbol)
        self.counts["stale_rejected"] += 1
        self._once(f"w:{inst.symbol}", "%s: a level it could not take exactly leaves the book unlike the "
                   "exchange's: marked STALE until its next snapshot", inst.symbol)

    @staticmethod
    def _out(rows, array: bool):
        """The message's rows, ``Flag.LAST`` on the final one: an EVENT_DTYPE array, or the rows
        themselves (``array=False``: the bridge gathers rows and makes one array of many)."""
        last = rows[-1]
        rows[-1] = last[:10] + (last[10] | _LAST,) + last[11:]
        return np.array(rows, dtype=EVENT_DTYPE) if array else rows

    def snapshot(self, symbol: str, bids, asks, ts_event: int, ts_recv: int, *, array: bool = True):
        """A full book: ``bids``/``asks`` iterables of (price, size)."""
        inst = self.instrument(symbol)
        if inst is None:
            return None
        rows = []
        if symbol in self.synced:
            self.counts["resyncs"] += 1
            if self.stale_on_resync:
                rows.append(_marker(inst.id, ts_event, ts_recv, Flag.SNAPSHOT | Flag.STALE))
        self.synced.add(symbol)
        self.counts["snapshots"] += 1
        rows.append(_marker(inst.id, ts_event, ts_recv, Flag.SNAPSHOT | Flag.SNAPSHOT_BEGIN))
        wrong = self._levels(rows, inst, bids, _BID, _ADD, _SNAPSHOT, ts_event, ts_recv)
        wrong += self._levels(rows, inst, asks, _ASK, _ADD, _SNAPSHOT, ts_event, ts_recv)
        rows.append(_marker(inst.id, ts_event, ts_recv, Flag.SNAPSHOT | Flag.SNAPSHOT_END))
        if wrong:
            self._wrong(rows, inst, ts_event, ts_recv)
        return self._out(rows, array)

    def delta(self, symbol: str, bids, asks, ts_event: int, ts_recv: int, *, array: bool = True):
        """Changed levels, (price, size) each, size 0 deleting; None before the book's snapshot."""
        inst = self.instrument(symbol)
        if inst is None:
            return None
        if symbol not in self.synced:
            self.counts["no_snapshot"] += 1
            self._once(f"n:{symbol}", "%s: a book delta before any snapshot: dropped until one arrives", symbol)
            return None
        self.counts["deltas"] += 1
        rows = []
        wrong = 0
        if bids:
            wrong += self._levels(rows, inst, bids, _BID, _MODIFY, 0, ts_event, ts_recv)
        if asks:
            wrong += self._levels(rows, inst, asks, _ASK, _MODIFY, 0, ts_event, ts_recv)
        if wrong:
            self._wrong(rows, inst, ts_event, ts_recv)
        return self._out(rows, array) if rows else None

    def trade(self, symbol: str, side: str, price, amount, ts_event: int, ts_recv: int, *, array: bool = True):
        """One trade; ``side`` is the taker's (cryptofeed's ``buy``/``sell``; anything else is
        published as ``Side.NONE``, not guessed)."""
        inst = self.instrument(symbol)
        if inst is None:
            return None
        units = self._units(inst, price, amount)
        if units is None:
            return None
        try:
            self._check(inst, price, amount, units[0], units[1], False)
        except ValueError as exc:
            self._reject(inst, exc)
            return None
        self.counts["trades"] += 1
        return self._out([(ts_event, ts_recv, 0, 0, units[0], units[1], inst.id, 0, _TRADE,
                           _TAKER.get(side, int(Side.NONE)), 0, 0)], array)

    def stale(self, symbol: str, ts: int, *, array: bool = True):
        """A STALE marker for ``symbol``: its book can no longer be trusted until a snapshot."""
        inst = self.by_symbol[symbol]
        self.synced.discard(symbol)
        return self._out([_marker(inst.id, ts, ts, Flag.SNAPSHOT | Flag.STALE)], array)


def _marker(iid: int, ts_event: int, ts_recv: int, flags) -> tuple:
    """A snapshot-marker event's row (EVENT_DTYPE field order)."""
    return (ts_event, ts_recv, 0, 0, 0, 0, iid, 0, int(Kind.SNAPSHOT), int(Side.NONE), int(flags), 0)


class Bridge:
    """cryptofeed in, tickwire's wire format out (``tickwire bridge``).

    ``cfg``: a validated daemon configuration with a ``[bridge]`` table; the bridge binds
    ``bridge.endpoint`` and ``bridge.snapshot`` (by default the daemon's ``feeds.endpoints[0]`` and
    ``feeds.snapshot``), and puts instrument ``i`` on channel ``i % feeds.channels``.
    """

    HOLD_NS = 250_000          # publish: the longest an update is held for coalescing (ns) ...
    HOLD_EVENTS = 512          # ... and the most events held

    def __init__(self, cfg, *, sndhwm: int = 0):
        from tickwire.replay.publish import Republisher
        from tickwire.replay.sources import ReplayError

        if cfg.bridge is None:
            raise BridgeError("config error: bridge: expected a [bridge] table (docs/feeds.md, 'Live exchanges')")
        self.cfg = cfg
        self.bc = cfg.bridge
        by_symbol = {inst.symbol: inst for inst in cfg.instruments}
        self.instruments = [by_symbol[s] for s in self.bc.symbols]
        self.converter = Converter(self.instruments, stale_on_resync=not self.bc.zmq_input)
        try:
            self.publisher = Republisher(self.bc.endpoint, self.bc.snapshot, self.instruments, cfg.feeds.channels,
                                         max_message_events=cfg.feeds.max_message_events,
                                         heartbeat=self.bc.heartbeat_ms / 1000, sndhwm=sndhwm, flags=0,
                                         xpub=True, curve=self.bc.curve())
        except ReplayError as exc:
            raise BridgeError(str(exc)) from None
        # no book is known before cryptofeed's first snapshot of it: the snapshot service leaves
        # it out (a daemon recovering meanwhile was served an empty book as in sync, and kept it
        # until the next snapshot)
        self.publisher.stale.update(i.id for i in self.instruments)
        self.channels = cfg.feeds.channels or 1
        self.crossed = Counter()
        self._stop = False
        self._held: dict[int, list] = {}          # channel -> event rows waiting for the turn's end
        self._held_n = 0
        self._held_since = 0
        self._touched: set = set()                # symbols whose deltas went out since the last check
        self._crossed_said: set = set()           # crossed, its STALE marker sent (until a snapshot)
        self._cf_books: dict = {}                 # symbol -> cryptofeed's own book of it (its L2_BOOK callback)
        self._flush_due = False                   # a call_soon of _turn_ended is pending

    # -- what cryptofeed hands out -----------------------------------------------------------
    def publish(self, rows) -> None:
        """One exchange message's events (one instrument: one channel), as the converter's rows
        (``array=False``).

        Inside cryptofeed's event loop they are held and sent when the loop's turn ends (a
        ``call_soon``), coalesced per channel: a burst handed out in one turn (a busy capture's
        playback, the backlog after a stall) costs one wire message per channel, not one per
        exchange message.  Held at most ``HOLD_NS`` or ``HOLD_EVENTS`` events, whichever comes
        first, so no update waits behind a long burst.  Outside a running loop (the ZeroMQ input,
        direct calls) they go at once."""
        if not rows:
            return
        channel = rows[0][6] % self.channels
        if not self._held_n:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.publisher.send_channel(channel, np.array(rows, dtype=EVENT_DTYPE))
                return
            if not self._flush_due:
                # one at a time: cryptofeed's playback never yields, and a call_soon per hold (one
                # each 250 us, flushed by the bounds below) piled up unrun for the whole recording
                self._flush_due = True
                loop.call_soon(self._turn_ended)
            self._held_since = time.monotonic_ns()
        held = self._held.get(channel)
        if held is None:
            self._held[channel] = rows
        else:
            held.extend(rows)
        self._held_n += len(rows)
        if self._held_n >= self.HOLD_EVENTS or time.monotonic_ns() - self._held_since >= self.HOLD_NS:
            self.flush()

    @property
    def held(self) -> int:
        """Events ``publish`` holds, not sent yet (they go at the end of the loop's turn)."""
        return self._held_n

    def _turn_ended(self) -> None:
        self._flush_due = False
        self.flush()

    def flush(self) -> None:
        """Send what ``publish`` holds, a wire message per channel (more past max_message_events)."""
        if not self._held_n:
            return
        held, self._held, self._held_n = self._held, {}, 0
        for channel, rows in held.items():
            self.publisher.send_channel(channel, np.array(rows, dtype=EVENT_DTYPE))
        self._check_crossed()

    def _check_crossed(self) -> None:
        """A book that went out crossed (best bid above best ask: a delta lost or reordered upstream,
        or a bad one) is counted, and resynced from cryptofeed's own book where that is sound, else
        marked STALE, once until its next snapshot.
        (Only the ZeroMQ input was checked: a crossed Kraken book from cryptofeed was stored and
        shown in sync: an adversarial pass.)"""
        touched, self._touched = self._touched, set()
        conv = self.converter
        for symbol in touched:
            if symbol in self._crossed_said or not self.publisher.books[conv.by_symbol[symbol].id].crossed:
                continue
            self.crossed[symbol] += 1
            conv.counts["crossed"] += 1
            now = time.time_ns()
            cf = self._cf_books.get(symbol)
            if cf is not None and not _cf_crossed(cf):
                # cryptofeed's own book is sound (a level it cut past its depth, never deleted on the
                # wire, say): resync from it at once, a STALE marker then the fresh book. Marked
                # STALE alone, a live symbol stayed dark until cryptofeed happened to reconnect (a review)
                conv._once(f"crossed-resync:{symbol}", "%s: the published book went crossed while cryptofeed's "
                           "is not: resynced from cryptofeed's book", symbol)
                self.publish(conv.snapshot(symbol, dict(cf.bids.to_list()).items(), dict(cf.asks.to_list()).items(),
                                           now, now, array=False))
                continue
            self._crossed_said.add(symbol)
            log.warning("%s: the book went crossed (an update lost or bad upstream): marked STALE until its "
                        "next snapshot", symbol)
            self.publish(conv.stale(symbol, now, array=False))

    def on_book_update(self, symbol: str, book, delta, ts_event: int, ts_recv: int) -> None:
        """A snapshot (``delta`` None: ``book`` has ``bid``/``ask`` mappings price -> size) or a delta
        (``delta`` has ``bid``/``ask`` lists of (price, size))."""
        conv = self.converter
        if delta is None:
            self._crossed_said.discard(symbol)
            self.publish(conv.snapshot(symbol, book["bid"].items(), book["ask"].items(), ts_event, ts_recv,
                                       array=False))
            return
        events = conv.delta(symbol, delta.get("bid", ()), delta.get("ask", ()), ts_event, ts_recv, array=False)
        self.publish(events)
        if events is not None and not self.bc.zmq_input:
            self._touched.add(symbol)
            if not self._held_n:                                # (sent at once: outside a running loop)
                self._check_crossed()
        if events is not None and self.bc.zmq_input:
            self.flush()                                        # (the publisher's book, up to date)
            inst = conv.by_symbol[symbol]
            if self.publisher.books[inst.id].crossed:         # a delta was lost upstream
                self.crossed[symbol] += 1
                conv.counts["crossed"] += 1
                self.publish(conv.stale(symbol, ts_recv, array=False))

    def _times(self, msg, receipt_timestamp, book: bool):
        """(event, receipt) ns of a cryptofeed object ``msg``, or None when they are no times
        (counted, said, and for a ``book`` update its book STALE: :meth:`_unreadable`)."""
        ts_recv = time.time_ns()
        try:
            ts_recv = event_ns(receipt_timestamp, ts_recv)
            return event_ns(msg.timestamp, ts_recv), ts_recv
        except (ValueError, ArithmeticError) as exc:
            self._unreadable(msg.symbol, exc, book, ts_recv)
            return None

    async def book(self, book, receipt_timestamp) -> None:
        """cryptofeed's ``L2_BOOK`` callback."""
        self._cf_books[book.symbol] = book.book
        times = self._times(book, receipt_timestamp, True)
        if times is None:
            return
        if book.delta is None:
            levels = {"bid": dict(book.book.bids.to_list()), "ask": dict(book.book.asks.to_list())}
            self.on_book_update(book.symbol, levels, None, *times)
        else:
            self.on_book_update(book.symbol, None, book.delta, *times)

    async def trade(self, trade, receipt_timestamp) -> None:
        """cryptofeed's ``TRADES`` callback."""
        times = self._times(trade, receipt_timestamp, False)
        if times is not None:
            self.publish(self.converter.trade(trade.symbol, trade.side, trade.price, trade.amount, *times,
                                              array=False))

    def callbacks(self) -> dict:
        from cryptofeed.defines import L2_BOOK, TRADES

        cbs = {L2_BOOK: self.book}
        if self.bc.trades:
            cbs[TRADES] = self.trade
        return cbs

    def make_feed(self, **kwargs):
        """cryptofeed's feed for ``bridge.exchange`` and ``bridge.symbols``; BridgeError for an unknown
        exchange or symbol."""
        require_cryptofeed()
        from cryptofeed.exchanges import EXCHANGE_MAP

        ex = EXCHANGE_MAP.get(self.bc.exchange)
        if ex is None:
            raise BridgeError(f"config error: bridge.exchange: {self.bc.exchange!r} is not an exchange cryptofeed knows "
                              f"({', '.join(sorted(EXCHANGE_MAP))})")
        quiet = logging.getLogger("feedhandler")   # cryptofeed logs a traceback of its own on failure
        was = quiet.disabled
        quiet.disabled = True
        try:
            known = ex.symbols()
        except Exception as exc:                  # cryptofeed reads the symbol list from the exchange
            raise BridgeError(f"cannot read {self.bc.exchange}'s symbols from the exchange (is it reachable?): "
                              f"{type(exc).__name__}: {exc}") from None
        finally:
            quiet.disabled = was
        missing = [s for s in self.bc.symbols if s not in known]
        if missing:
            raise BridgeError(f"config error: bridge.symbols: {missing[0]!r} is not a {self.bc.exchange} symbol "
                              f"cryptofeed knows (it uses normalised names such as 'BTC-USD')")
        self._check_ticks(ex)
        opts = dict(symbols=list(self.bc.symbols), channels=list(self.callbacks()), callbacks=self.callbacks())
        if self.bc.depth:
            opts["max_depth"] = self.bc.depth
        # where the exchange sends checksums (Kraken, OKX, ...), cryptofeed checks its book against
        # each and resyncs on a mismatch (its default is off: a book gone wrong went on unseen)
        opts["checksum_validation"] = self.bc.checksum_validation
        opts.update(kwargs)
        return ex(**opts)

    def _check_ticks(self, ex) -> None:
        """Where cryptofeed knows the exchange's tick sizes, the configured ones must divide them."""
        try:
            ticks = ex.info().get("tick_size", {})
        except Exception:                                # not every exchange has the metadata
            return
        for inst in self.instruments:
            tick = ticks.get(inst.symbol)
            if tick is None:
                continue
            if _decimal(tick) % inst.tick_size:
                raise BridgeError(f"config error: instruments: {inst.symbol} has tick_size {inst.tick_size}, but "
                                  f"{self.bc.exchange} quotes it in steps of {tick}")

    # -- serving ---------------------------------------------------------------------------
    async def serve(self, every: float = 0.005) -> None:
        """Answer snapshot and retransmission requests and heartbeat idle channels until stopped."""
        while not self._stop:
            self.publisher.serve()
            await asyncio.sleep(every)

    def stop(self) -> None:
        self._stop = True

    def run(self, progress=None) -> int:
        """Run cryptofeed's FeedHandler on this bridge's feed until SIGINT/SIGTERM."""
        require_cryptofeed()
        from cryptofeed import FeedHandler

        feed = self.make_feed()
        fh = FeedHandler(config={"log": {"disabled": True}})
        fh.add_feed(feed)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        fh.run(start_loop=False, install_signal_handlers=False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop_loop, loop)
        loop.create_task(self.serve())
        if progress is not None:
            loop.create_task(self._report(progress))
        try:
            loop.run_forever()
        finally:
            fh.stop(loop=loop)
            self.close()
        return 0

    def _stop_loop(self, loop) -> None:
        self.stop()
        loop.stop()

    async def _report(self, progress, every: float = 1.0) -> None:
        while not self._stop:
            await asyncio.sleep(every)
            progress(self.stats())

    def run_zmq_input(self, duration: float | None = None, progress=None) -> int:
        """Read cryptofeed's ZeroMQ backend output (bind ``bridge.zmq_input``; cryptofeed's BookZMQ and
        TradeZMQ connect to it) and publish it, until SIGINT/SIGTERM or ``duration`` seconds."""
        import json

        import zmq

        sub = self.publisher.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        # (any peer that reaches it may send: three 150 MB frames took the bridge from 49 to 817 MB;
        # cryptofeed's largest, a deep book's snapshot, is a few MB)
        sub.setsockopt(zmq.MAXMSGSIZE, ZMQ_INPUT_MAX_BYTES)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        from tickwire.feeds.wire import ipc_bind_refusal

        why = ipc_bind_refusal(self.bc.zmq_input)
        if why is not None:
            sub.close(0)
            raise BridgeError(f"bridge.zmq_input: cannot bind {self.bc.zmq_input}: {why}")
        try:
            sub.bind(self.bc.zmq_input)
        except zmq.ZMQError as exc:
            sub.close(0)
            raise BridgeError(f"bridge.zmq_input: cannot bind {self.bc.zmq_input}: {exc}") from None
        from tickwire.feeds.wire import ipc_claim, ipc_release

        claim = ipc_claim(sub)
        import threading

        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, lambda *_: self.stop()) for s in (signal.SIGINT, signal.SIGTERM)}
        end = None if duration is None else time.monotonic() + duration
        last_report = time.monotonic()
        try:
            while not self._stop and (end is None or time.monotonic() < end):
                if sub.poll(5):
                    while True:
                        try:
                            frame = sub.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.on_zmq_message(frame, json.loads)
                self.publisher.serve()
                if progress is not None and time.monotonic() - last_report >= 1.0:
                    last_report = time.monotonic()
                    progress(self.stats())
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            sub.close(0)
            ipc_release(claim)
        return 0

    def on_zmq_message(self, frame: bytes, loads) -> None:
        """One message of cryptofeed's ZeroMQ backends: ``<key> <json>``."""
        ts_recv = time.time_ns()
        _, _, body = frame.partition(b" ")
        try:
            msg = loads(body)
            symbol = msg["symbol"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            # (RecursionError: a body nested 100,000 deep, b"k " + b"[" * 100000, ended the bridge
            # with a traceback: an adversarial pass)
            self.converter.counts["bad_message"] += 1
            self.converter._once("unreadable", "a message on bridge.zmq_input that is not cryptofeed's (%s: %s, "
                                 "%d bytes): skipped", type(exc).__name__,
                                 str(exc)[:100], len(frame))
            return
        try:
            ts_event = event_ns(msg.get("timestamp"), ts_recv)
            if "delta" in msg:
                self.on_book_update(symbol, None, msg["delta"], ts_event, ts_recv)
            elif "book" in msg:
                self.on_book_update(symbol, msg["book"], None, ts_event, ts_recv)
            elif "side" in msg and "amount" in msg:
                self.publish(self.converter.trade(symbol, msg["side"], msg["price"], msg["amount"], ts_event,
                                                  ts_recv, array=False))
            else:
                self.converter.counts["bad_message"] += 1
        except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as exc:
            # one malformed message is counted and skipped, never the end of the bridge (an
            # OverflowError or decimal.InvalidOperation used to be)
            self._unreadable(symbol, exc, "delta" in msg or "book" in msg, ts_recv)

    def _unreadable(self, symbol, exc: Exception, book: bool, ts_recv: int) -> None:
        """A message that could not be read (``exc``): counted and skipped, said once per symbol;
        a book update (``book``) of a configured symbol leaves its book unknown: STALE until its
        next snapshot. (A cryptofeed message stamped 1e20 s raised in the end-of-turn flush and
        lost every channel's held events, the books left in sync and wrong: an adversarial pass.)"""
        conv = self.converter
        conv.counts["bad_message"] += 1
        # (keyed by a configured symbol only: each new symbol of a peer's was a line)
        known = isinstance(symbol, str) and symbol in conv.by_symbol
        conv._once(f"bad:{symbol}" if known else "bad", "%.200s: a message that cannot be read (%s: %.200s): "
                   "skipped", symbol if known else f"a symbol not configured ({symbol!r:.200})",
                   type(exc).__name__, exc)
        if book and known and symbol in conv.synced:
            self.publish(conv.stale(symbol, ts_recv, array=False))

    def stats(self) -> dict:
        c = self.converter.counts
        return {"published": self.publisher.sent, "messages": self.publisher.messages,
                "snapshots": c["snapshots"], "resyncs": c["resyncs"], "deltas": c["deltas"], "trades": c["trades"],
                "rejected": dict(self.converter.rejected), "no_snapshot": c["no_snapshot"], "crossed": c["crossed"],
                "bad_message": c["bad_message"], "unknown_symbol": c["unknown_symbol"]}

    def close(self, linger_ms: int = 1000) -> None:
        self.flush()
        self.publisher.close(linger_ms)


# -- ``tickwire bridge`` ------------------------------------------------------------------------

def add_parser(sub) -> None:
    """Register ``bridge`` on the ``tickwire`` command's subparsers."""
    import argparse

    from tickwire.engine.config import EXAMPLE_COPY, example_ref

    p = sub.add_parser(
        "bridge",
        help="publish a real exchange (through cryptofeed) as a tickwire feed for `tickwire run`",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run cryptofeed for the exchange and symbols of the config's [bridge] table and publish "
                    "its books and trades in tickwire's wire format, where the daemon of the same config "
                    "subscribes (feeds.endpoints[0], feeds.snapshot), with a snapshot service. Prices and "
                    "quantities become exact ticks and lots of each instrument's tick_size and lot_size; a "
                    "value that is not a multiple is left out and counted, never rounded.\n\n"
                    "With bridge.zmq_input set, read cryptofeed's own ZeroMQ backend output (BookZMQ, "
                    "TradeZMQ) instead of running cryptofeed here. With --playback, replay files recorded "
                    "by cryptofeed's raw data collection (offline; no exchange needed).\n\n"
                    f"Needs the cryptofeed extra ({EXTRA}). A progress line goes "
                    "to stderr every second; SIGINT/SIGTERM stop it; bad input is one line and exit 2.\n\n"
                    "Example (docs/feeds.md, 'Live exchanges'):\n"
                    f"  tickwire bridge --config {example_ref('kraken.example.toml')}      # in one terminal\n"
                    f"  tickwire run --config {example_ref('kraken.example.toml')}"
                    + ("" if source_checkout() else f"\n\n{EXAMPLE_COPY}"),
    )
    p.add_argument("--config", "-c", required=True, help="the daemon's TOML configuration, with a [bridge] table")
    p.add_argument("--playback", nargs="+", metavar="FILE",
                   help="cryptofeed raw-data files to replay instead of connecting (EXCHANGE.N with the symbol "
                        "data and EXCHANGE.ws.N with the websocket messages)")
    p.add_argument("--linger", type=float, default=5.0,
                   help="after --playback (or a SIGINT/SIGTERM that stopped it: a second one ends this), keep "
                        "serving snapshots and heartbeats this many seconds, and on while the daemon still asks "
                        "for what it lost (until S seconds pass without a request; at most 10 S) [5]")
    p.add_argument("--wait-subscribers", type=float, default=None, metavar="S",
                   help="before publishing, wait up to S seconds for a subscriber (the daemon) on every channel, "
                        "so nothing is published into the void [10 with --playback, else 0]")
    p.add_argument("--duration", type=float, default=None,
                   help="with bridge.zmq_input: stop after this many seconds [until SIGINT/SIGTERM]")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_bridge)


def _progress_line(st: dict) -> str:
    rejected = sum(st["rejected"].values())
    return (f"bridge: {st['published']:,} events in {st['messages']:,} messages; {st['snapshots']} snapshots, "
            f"{st['resyncs']} resyncs, {st['trades']:,} trades, {rejected} rejected, {st['no_snapshot']} deltas "
            f"before a snapshot, {st['crossed']} crossed, {st['unknown_symbol']:,} of unknown symbols, "
            f"{st['bad_message']:,} unreadable")


def cmd_bridge(args) -> int:
    import sys

    from tickwire.engine.config import load
    from tickwire.feeds.wire import linger_over

    def say(st):
        if not args.quiet:
            print(_progress_line(st), file=sys.stderr, flush=True)

    for name in ("linger", "duration", "wait_subscribers"):
        v = getattr(args, name)
        if v is not None and not 0 <= v < float("inf"):
            print(f"tickwire bridge: --{name.replace('_', '-')}: expected a number of seconds >= 0, got {v}",
                  file=sys.stderr)
            return 2
    cfg = load(args.config)
    bridge = None
    try:
        if cfg.bridge is None:
            raise BridgeError(f"config error: {args.config}: expected a [bridge] table (exchange, symbols; "
                              "docs/config.md)")
        if not cfg.bridge.zmq_input:
            require_cryptofeed()
        if args.playback:
            check_playback_files(args.playback)
        bridge = Bridge(cfg)
        wait = args.wait_subscribers if args.wait_subscribers is not None else (10.0 if args.playback else 0.0)
        if wait and not bridge.publisher.wait_subscribers(wait):
            print(f"tickwire bridge: no subscriber on every channel after {wait:g} s: publishing anyway",
                  file=sys.stderr)
        if args.playback:
            # SIGINT/SIGTERM: the playback stops at its next message, then lingers (serving what the
            # daemon lost) and says END; a second signal ends the linger. (cryptofeed's playback
            # never yields: SIGINT went unheard to the end, SIGTERM killed it with no END, exit 143)
            signals = []

            def stop(*_):
                signals.append(1)
                bridge.stop()

            old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
            failed = None
            try:
                try:
                    counts = playback(bridge, args.playback)
                except BridgeError as exc:
                    if not bridge.publisher.sent:
                        raise
                    # (a recording cut mid-line: what went out before it still lingers, so that a
                    # daemon gets what it lost of it; it exited at once: an adversarial pass)
                    failed, counts = exc, {"messages_processed": 1}
                if counts.get("stopped"):
                    print("tickwire bridge: stopped: the playback ended early", file=sys.stderr, flush=True)
                elif not counts.get("messages_processed"):
                    raise BridgeError(f"--playback: {', '.join(args.playback)}: no message replayed (an empty "
                                      f"recording?): nothing published")
                say(bridge.stats())
                started = time.monotonic()
                while not linger_over(started, args.linger, bridge.publisher.publisher.service) and len(signals) < 2:
                    bridge.publisher.serve()
                    time.sleep(0.005)
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
            if failed is not None:
                raise failed
        elif cfg.bridge.zmq_input:
            bridge.run_zmq_input(args.duration, progress=say)
        else:
            bridge.run(progress=say)
        say(bridge.stats())
        return 0
    except BridgeError as exc:
        print(f"tickwire bridge: {exc}", file=sys.stderr)
        return 2
    finally:
        if bridge is not None:
            bridge.close()


def _cf_crossed(ob) -> bool:
    """Whether cryptofeed's order book (``order_book.OrderBook``) has its best bid above its best ask."""
    try:
        return len(ob.bids) > 0 and len(ob.asks) > 0 and ob.bids.index(0)[0] > ob.asks.index(0)[0]
    except (AttributeError, IndexError, TypeError):
        return False


#: Largest message the ZeroMQ input takes: libzmq drops the connection of a peer that sends more.
ZMQ_INPUT_MAX_BYTES = 64 << 20


class _CallbackFailed(BaseException):
    """An exception of the bridge's own callbacks during a playback, carried past cryptofeed's
    ``except Exception`` (which took it for the recording's fault) to be raised as it was."""


class _PlaybackStopped(BaseException):
    """Raised from the bridge's callbacks to end cryptofeed's playback at :meth:`Bridge.stop` (its
    loop never yields, so asyncio's cancellation never came; and it catches Exception, printing
    the message it was on, where this is not one)."""


def _no_tracebacks(record: logging.LogRecord) -> bool:
    """A logging filter that drops records carrying a traceback."""
    return not record.exc_info


def check_playback_files(files) -> None:
    """BridgeError (one line) unless ``files`` are one recording of cryptofeed's raw data
    collection: existing files, EXCHANGE.ws.N with its EXCHANGE.N, no name twice. (Checked
    before the bridge waits for its subscribers: the error came after that 10 s wait.)"""
    for f in files:
        if not Path(f).is_file():
            raise BridgeError(f"--playback: {f}: no such file")
    names = [Path(f).name for f in files]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BridgeError(f"--playback: {twice[0]} is given twice (from two directories): cryptofeed reads "
                          f"files by name; replay one recording at a time")
    if not any(".ws." in n for n in names):
        raise BridgeError(f"--playback: no websocket file among {', '.join(names)}: cryptofeed replays only "
                          f"files named EXCHANGE.ws.N (its raw data collection's names), beside EXCHANGE.N")
    if all(".ws." in n for n in names):
        raise BridgeError("--playback: no symbol file (EXCHANGE.N, written beside EXCHANGE.ws.N by cryptofeed's "
                          "raw data collection)")


def _plain_temp_dir():
    """A new private directory whose path holds neither "ws" nor "http" (cryptofeed's playback
    tells its files apart by those), in the temporary directory or, where its path holds one,
    /tmp, /var/tmp or /dev/shm; BridgeError when there is none. (A loop drew names until one
    held neither: with TMPDIR=/home/wsmith/tmp it never ended, deaf to SIGTERM: an adversarial pass.)"""
    import os
    import shutil
    import tempfile

    for base in dict.fromkeys((tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm")):
        if "ws" in base or "http" in base or not os.path.isdir(base):
            continue
        for _ in range(20):                           # (a name drawn may hold "ws" itself)
            try:
                d = Path(tempfile.mkdtemp(prefix="tickwire-", dir=base))
            except OSError:
                break
            if "ws" not in d.name and "http" not in d.name:
                return d
            shutil.rmtree(d, ignore_errors=True)
    raise BridgeError(f"--playback: no writable temporary directory whose path holds neither 'ws' nor 'http' "
                      f"(cryptofeed tells its files apart by those; the temporary directory is "
                      f"{tempfile.gettempdir()}): set TMPDIR to one")


def playback(bridge: Bridge, files) -> dict:
    """Feed ``bridge`` from cryptofeed's own playback of raw-data files; cryptofeed's counts
    (``{"stopped": True}`` when :meth:`Bridge.stop` ended it first)."""
    require_cryptofeed()
    import shutil
    from pathlib import Path

    from cryptofeed.connection import HTTPAsyncConn, HTTPSync
    from cryptofeed.raw_data_collection import playback as cf_playback

    # (cryptofeed's playback patches these and restores them only when it ends well: a later
    # make_feed read its symbols through the leftover patch, an IndexError: a review)
    patched = (HTTPAsyncConn.read, HTTPSync.read)
    # cryptofeed tells a websocket file from the others by 'ws' (or 'http') anywhere in its path:
    # files in a directory named like /home/wsmith were misread (a symbol file taken for websocket
    # data: IndexError). They are read through links in a directory whose name holds neither.
    check_playback_files(files)
    links = _plain_temp_dir()
    try:
        named = []
        for f in files:
            link = links / Path(f).name
            link.symlink_to(Path(f).resolve())
            named.append(str(link))

        def stoppable(cb):
            async def call(*args, **kwargs):
                if bridge._stop:
                    raise _PlaybackStopped
                try:
                    await cb(*args, **kwargs)
                except Exception as exc:          # noqa: BLE001 - the bridge's own fault: said as one
                    raise _CallbackFailed(exc) from exc
            return call

        # cryptofeed logs a recording it cannot read with its traceback and then raises: said
        # below in one line instead (an empty symbol file printed a traceback first: an adversarial pass)
        cf_log = logging.getLogger("feedhandler")
        cf_log.addFilter(_no_tracebacks)
        try:
            return cf_playback(bridge.bc.exchange, named,
                               callbacks={k: stoppable(cb) for k, cb in bridge.callbacks().items()})
        finally:
            cf_log.removeFilter(_no_tracebacks)
    except _PlaybackStopped:
        return {"stopped": True}
    except _CallbackFailed as exc:            # a bug of ours, not the recording: its own traceback
        raise exc.args[0]
    except BridgeError:
        raise
    except Exception as exc:                  # noqa: BLE001 - a recording cryptofeed cannot read: one line
        # (a price that is no number, a pair missing from the symbol file, no configuration line:
        # each was a traceback of cryptofeed's; what went out before it stays published)
        raise BridgeError(f"--playback: cryptofeed could not replay {', '.join(map(str, files))} for "
                          f"{bridge.bc.exchange}: {type(exc).__name__}: {exc}") from None
    finally:
        HTTPAsyncConn.read, HTTPSync.read = patched
        shutil.rmtree(links, ignore_errors=True)
        bridge.flush()                        # what the playback's last turn handed out
