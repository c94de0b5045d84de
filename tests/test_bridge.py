"""The cryptofeed bridge: exact conversion, resyncs, cryptofeed's own playback of the Kraken capture
through real ZeroMQ sockets (every Kraken checksum), a daemon fed by it, and cryptofeed's ZeroMQ
backends as an input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import logging
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from ports import free_tcp_port
from budget import examples
from tickwire.engine.config import ConfigError, from_dict, to_toml
from tickwire.engine.instruments import Instrument, make_books
from tickwire.ext.records import Flag, Kind, Side
from tickwire.feeds.captures import find_shared_data, kraken_checksum, load_kraken
from tickwire.feeds.cryptofeed import Bridge, BridgeError, Converter, to_ns
from tickwire.feeds.wire import MsgType, decode

PY = sys.executable
KRAKEN = find_shared_data("kraken_book1000_2021-04-17.ws")
needs_kraken = pytest.mark.skipif(KRAKEN is None, reason="the Kraken capture (../shared/data) is not here")
cryptofeed = pytest.importorskip("cryptofeed", reason="cryptofeed is not installed (the cryptofeed extra)")


def inst(symbol="BTC-USD", tick="0.01", lot="0.00000001", iid=0, **kw):
    return Instrument(id=iid, symbol=symbol, tick_size=Decimal(tick), lot_size=Decimal(lot), **kw)


def book_dict(book, side, n=100_000):
    return {int(p): int(q) for p, q, _ in book.levels(side, n)}


# -- conversion -----------------------------------------------------------------------------

def test_prices_and_quantities_convert_exactly_with_trailing_zeros_and_tiny_lots():
    conv = Converter([inst(), inst("SHIB-USD", tick="0.00000001", lot="1", iid=1)])
    ev = conv.snapshot("BTC-USD", [(Decimal("61737.63000000"), Decimal("0.00000001"))],
                       [("61737.6400", "12.34567891")], 5, 6)
    levels = ev[ev["kind"] == Kind.ADD]
    assert levels["price"].tolist() == [6173763, 6173764]
    assert levels["qty"].tolist() == [1, 1234567891]
    assert levels["side"].tolist() == [Side.BID, Side.ASK]
    assert (ev["flags"] & Flag.SNAPSHOT).all() and ev["flags"][-1] & Flag.LAST
    assert ev["ts_event"].tolist() == [5] * 4 and ev["ts_recv"].tolist() == [6] * 4
    ev = conv.delta("SHIB-USD", [], [], 1, 1)
    assert ev is None and conv.counts["no_snapshot"] == 1          # no book yet: dropped, counted
    conv.snapshot("SHIB-USD", [(Decimal("0.00002481"), Decimal("1250000"))], [], 1, 1)
    ev = conv.delta("SHIB-USD", [(0.00002481, 0.0)], [], 1, 1)      # floats read by their shortest text
    assert ev["price"].tolist() == [2481] and ev["qty"].tolist() == [0] and ev["kind"].tolist() == [Kind.MODIFY]


def test_a_price_off_the_tick_is_left_out_and_counted_never_rounded():
    conv = Converter([inst()])
    ev = conv.snapshot("BTC-USD", [("100.00", "1"), ("100.005", "1"), ("99.99", "0.000000001")], [], 1, 1)
    assert ev[ev["kind"] == Kind.ADD]["price"].tolist() == [10000]
    assert conv.rejected["BTC-USD"] == 2 and conv.counts["rejected"] == 2
    assert conv.trade("BTC-USD", "buy", 0.1 + 0.2, "1", 1, 1) is None   # 0.30000000000000004 is not 0.30
    assert conv.rejected["BTC-USD"] == 3
    t = conv.trade("BTC-USD", "sell", "101.10", "0.5", 7, 8)
    assert (t["kind"][0], t["side"][0], t["price"][0], t["qty"][0]) == (Kind.TRADE, Side.ASK, 10110, 50_000_000)


def test_garbage_numbers_from_the_exchange_are_left_out_and_counted_never_a_crash():
    """An exchange message with a huge, infinite or NaN price or size (cryptofeed hands them
    out as Decimals or floats) is left out and counted; the bridge's callback does not raise."""
    conv = Converter([inst()])
    bad = [Decimal("1E+30"), Decimal("Infinity"), Decimal("NaN"), Decimal("1E+999999"), 1e300, float("nan"), "abc",
           Decimal("100." + "0" * 30 + "1")]
    stale = int(Flag.SNAPSHOT | Flag.STALE | Flag.LAST)
    for price in bad:
        for level in ((price, "1"), ("100.00", price)):
            conv.snapshot("BTC-USD", [("100.00", "1")], [("100.01", "1")], 1, 1)
            # the book can no longer be the exchange's: a STALE marker alone, until a snapshot
            ev = conv.delta("BTC-USD", [level], [], 1, 1)
            assert ev["kind"].tolist() == [Kind.SNAPSHOT] and ev["flags"].tolist() == [stale], level
            assert conv.delta("BTC-USD", [("99.99", "2")], [], 1, 1) is None     # dropped until then
        assert conv.trade("BTC-USD", "buy", price, "1", 1, 1) is None
    assert conv.rejected["BTC-USD"] == 3 * len(bad) and conv.counts["stale_rejected"] == 2 * len(bad)
    conv.snapshot("BTC-USD", [("100.00", "1")], [("100.01", "1")], 1, 1)
    ev = conv.delta("BTC-USD", [("99.99", "2")], [], 1, 1)            # and it goes on
    assert ev["price"].tolist() == [9999] and ev["qty"].tolist() == [200_000_000]


def test_negative_and_zero_values_are_left_out_and_counted_not_stored_as_trades(caplog):
    """Found by an adversarial pass: trades at -100.0 and 0, of size -0.5 and 0, and levels of
    negative size were published (`rejected` {}) and the trades stored as real ones. A price
    outside the instrument's range and a negative size are left out and counted; so is a zero
    size where it means nothing (a trade, a snapshot's level), not a delta's 0 (a deletion)."""
    conv = Converter([inst(max_price=10**9)])
    with caplog.at_level(logging.WARNING, logger="tickwire.bridge"):
        ev = conv.snapshot("BTC-USD", [("100.00", "1"), ("99.00", "-2"), ("98.00", "0"), ("-1.00", "1")],
                           [("100.01", "1"), ("10000000.01", "1")], 1, 1)
        assert ev[ev["kind"] == Kind.ADD]["price"].tolist() == [10000, 10001]
        assert conv.rejected["BTC-USD"] == 4
        # levels left out at prices the book holds (-2 and 0 lots): the book ends STALE
        assert ev["flags"][-1] == Flag.SNAPSHOT | Flag.STALE | Flag.LAST and "BTC-USD" not in conv.synced
        for price, size in (("-100.0", "1"), ("0", "1"), ("100.00", "-0.5"), ("100.00", "0")):
            assert conv.trade("BTC-USD", "buy", price, size, 1, 1) is None, (price, size)
        assert conv.rejected["BTC-USD"] == 8 and conv.counts["trades"] == 0
        # outside the range only: the book holds its range exactly and stays in sync
        ev = conv.snapshot("BTC-USD", [("100.00", "1"), ("-1.00", "1")], [("100.01", "1")], 1, 1)
        assert ev["flags"][-1] == Flag.SNAPSHOT | Flag.SNAPSHOT_END | Flag.LAST and "BTC-USD" in conv.synced
        ev = conv.delta("BTC-USD", [("100.00", "0"), ("99.50", "-1")], [], 1, 1)
        assert ev["price"].tolist() == [10000, 0] and ev["qty"].tolist() == [0, 0]   # the deletion, then STALE
        assert ev["kind"].tolist() == [Kind.MODIFY, Kind.SNAPSHOT] and conv.rejected["BTC-USD"] == 10
    assert "check the instrument's min_price and max_price" in caplog.text
    assert "marked STALE until its next snapshot" in caplog.text


def test_unknown_symbols_are_ignored_and_counted():
    conv = Converter([inst()])
    assert conv.snapshot("ETH-USD", [], [], 1, 1) is None and conv.counts["unknown_symbol"] == 1


def test_unknown_symbols_are_logged_once_in_all_escaped_and_counted(caplog):
    """Found by an adversarial pass: each new unknown symbol was a log line ("further ones are
    counted" notwithstanding), so a peer sending distinct symbols grew the log without bound,
    and a symbol holding a line break forged log lines of its own. One line now, for all of
    them, its symbol escaped; every one counted."""
    conv = Converter([inst()])
    with caplog.at_level(logging.WARNING, logger="tickwire"):
        conv.snapshot("X\n2026-01-01 supervisor ERROR forged", [], [], 1, 1)
        for i in range(50):
            conv.snapshot(f"SYM-{i}", [], [], 1, 1)
            conv.trade(f"T-{i}", "buy", "1", "1", 1, 1)
    assert conv.counts["unknown_symbol"] == 101
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "no configured instrument" in lines[0], lines
    assert "\n" not in lines[0] and "X\\n2026" in lines[0], lines


def test_a_deeply_nested_or_forging_message_on_the_zmq_input_is_counted_not_a_crash(tmp_path, caplog):
    """Found by an adversarial pass: b"k " + b"[" * 100000 on bridge.zmq_input ended the bridge
    with a RecursionError traceback; a message of an unknown symbol that could not be read was
    logged under that symbol, line breaks and all, a line for each new one."""
    feed, snap, d = free_endpoints(tmp_path)
    bridge = Bridge(from_dict(bridge_raw(tmp_path / "state", [inst()], feed, snap,
                                         zmq_input=f"tcp://127.0.0.1:{free_tcp_port()}"), tmp_path))
    try:
        with caplog.at_level(logging.WARNING, logger="tickwire"):
            bridge.on_zmq_message(b"k " + b"[" * 100_000, json.loads)
            bridge.on_zmq_message(b"k " + b"{\"a\": " * 100_000, json.loads)
            assert bridge.converter.counts["bad_message"] == 2
            for i in range(20):
                bad = {"symbol": f"Z{i}\nforged ERROR line", "timestamp": "n/a", "side": "buy", "price": "1",
                       "amount": "1"}
                bridge.on_zmq_message(b"k " + json.dumps(bad).encode(), json.loads)
        assert bridge.converter.counts["bad_message"] == 22
        lines = [r.getMessage() for r in caplog.records]
        assert sum("RecursionError" in x for x in lines) == 1, lines
        assert sum("cannot be read" in x for x in lines) == 1, lines
        assert not any("\n" in x for x in lines), lines
    finally:
        bridge.close(0)
        shutil.rmtree(d, ignore_errors=True)


def test_time_conversion_is_exact():
    assert to_ns("1618678132.927716") == 1618678132927716000
    assert to_ns(Decimal("1.000000001")) == 1_000_000_001
    assert to_ns(1.5) == 1_500_000_000


@given(st.one_of(st.floats(0, 4e9), st.decimals(0, 4e9, places=12).map(str), st.decimals(-10, 4e9, places=9),
                 st.sampled_from(["1.5e3", "12.", "²3.5", "1.0000000005", "1.0000000015", "-2.5", " 7 "])))
def test_time_conversion_matches_decimal_arithmetic(seconds):
    """The digit route for floats and plain strings gives what exact Decimal arithmetic gives."""
    text = repr(seconds) if isinstance(seconds, float) else str(seconds)
    try:
        want = int(Decimal(text).scaleb(9).to_integral_value())
    except ArithmeticError:
        with pytest.raises(ArithmeticError):
            to_ns(seconds)
        return
    assert to_ns(seconds) == want


book_ops = st.lists(st.one_of(
    st.tuples(st.just("snap"), st.dictionaries(st.integers(9000, 9999), st.integers(1, 10**6), max_size=12),
              st.dictionaries(st.integers(10_000, 11_000), st.integers(1, 10**6), max_size=12)),
    st.tuples(st.just("delta"), st.lists(st.tuples(st.integers(9000, 9999), st.integers(0, 10**6)), max_size=6),
              st.lists(st.tuples(st.integers(10_000, 11_000), st.integers(0, 10**6)), max_size=6)),
), min_size=1, max_size=30)


@settings(max_examples=examples(200), deadline=None)
@given(book_ops)
def test_resyncs_mid_stream_leave_the_book_exact_and_flag_it_stale_in_between(ops):
    """Against a dict book: snapshots (a second one is a resync: STALE, then the fresh book) and
    deltas, applied through the converter's events, give the same book at every step."""
    i = inst(tick="0.01", lot="1")
    conv = Converter([i])
    books = make_books([i])
    ref = None
    resyncs = 0
    for kind, bids, asks in ops:
        px = lambda levels: [(Decimal(p).scaleb(-2), Decimal(q)) for p, q in levels]   # noqa: E731
        if kind == "snap":
            if ref is not None:
                resyncs += 1
            ref = {Side.BID: dict(bids), Side.ASK: dict(asks)}
            ev = conv.snapshot(i.symbol, px(bids.items()), px(asks.items()), 1, 1)
            assert bool(ev["flags"][0] & Flag.STALE) == (resyncs > 0 and ev is not None and len(ev) > 0
                                                          and conv.counts["resyncs"] == resyncs)
            books.apply(ev[:1])
            if resyncs:
                assert not books[0].in_sync                   # stale until the fresh snapshot ends
            books.apply(ev[1:])
        else:
            ev = conv.delta(i.symbol, px(bids), px(asks), 1, 1)
            if ref is None:
                assert ev is None
                continue
            for side, levels in ((Side.BID, bids), (Side.ASK, asks)):
                for p, q in levels:
                    if q:
                        ref[side][p] = q
                    else:
                        ref[side].pop(p, None)
            if ev is not None:
                books.apply(ev)
        if ref is not None:
            assert books[0].in_sync
            assert book_dict(books[0], Side.BID) == ref[Side.BID]
            assert book_dict(books[0], Side.ASK) == ref[Side.ASK]
    assert conv.counts["resyncs"] == resyncs


# -- configuration --------------------------------------------------------------------------

def bridge_raw(state_dir, instruments, endpoint, snapshot, **bridge):
    from tickwire.engine.demo import demo_raw_config

    raw = demo_raw_config(state_dir, run="bridge")
    raw["instruments"] = [{"id": x.id, "symbol": x.symbol, "tick_size": str(x.tick_size), "lot_size": str(x.lot_size),
                           "book": "L2", "max_depth": x.max_depth, "price_decimals": x.price_decimals,
                           "qty_decimals": x.qty_decimals} for x in instruments]
    raw["feeds"].update(endpoints=[endpoint], snapshot=snapshot, channels=1)
    raw["rules"] = []
    raw["bridge"] = {"exchange": "KRAKEN", **bridge}
    return raw


@pytest.mark.parametrize("edit, fragment", [
    ({"exchange": "kraken"}, "bridge.exchange: expected a cryptofeed exchange id"),
    ({"symbols": ["DOGE-USD"]}, "bridge.symbols: expected symbols of configured [[instruments]]"),
    ({"symbols": []}, "bridge.symbols: expected a non-empty array"),
    ({"depht": 10}, "bridge.depht: unknown key (did you mean bridge.depth?); expected one of the known keys"),
    ({"zmq_input": "udp://x"}, "bridge.zmq_input: expected a ZeroMQ endpoint"),
    # (both bound on one path: the second bind took it, and every event went nowhere: an adversarial pass)
    ({"zmq_input": "", "snapshot_": "ipc:///tmp/x"}, "bridge.snapshot: expected an endpoint other"),
])
def test_bridge_config_errors_name_the_key(tmp_path, edit, fragment):
    edit = {k.rstrip("_"): v for k, v in edit.items()}      # ("snapshot_": a key bridge_raw takes itself)
    raw = bridge_raw(tmp_path, [inst()], "ipc:///tmp/x", "ipc:///tmp/y")
    raw["bridge"].update(edit)
    with pytest.raises(ConfigError, match=None) as exc:
        from_dict(raw, tmp_path)
    assert fragment in str(exc.value)


def free_endpoints(tmp_path):
    d = Path(tempfile.mkdtemp(prefix="twbr", dir="/tmp"))
    return f"ipc://{d}/feed", f"ipc://{d}/snap", d


def test_updates_of_one_loop_turn_go_out_together_and_none_is_held_past_its_bounds(tmp_path):
    """Inside cryptofeed's event loop the bridge holds what one turn hands out and sends it, per
    channel, when the turn ends; HOLD_EVENTS and HOLD_NS bound the wait within a long turn."""
    import asyncio

    feed, snap, d = free_endpoints(tmp_path)
    bridge = Bridge(from_dict(bridge_raw(tmp_path / "state", [inst()], feed, snap), tmp_path))
    pub = bridge.publisher

    def delta(k):
        bridge.on_book_update("BTC-USD", None, {"bid": [(Decimal(9000 + k) / 100, Decimal(1))]}, 1, 1)

    async def main():
        loop = asyncio.get_running_loop()
        scheduled, call_soon = [], loop.call_soon
        loop.call_soon = lambda *a, **kw: (scheduled.append(a[0]), call_soon(*a, **kw))[1]
        bridge.HOLD_NS = 10**10                             # (a slow machine: the count bound first)
        bridge.on_book_update("BTC-USD", {"bid": {Decimal("100"): Decimal("1")}, "ask": {"100.01": "2"}}, None, 1, 1)
        for k in range(50):
            delta(k)
        assert (pub.sent, bridge.held) == (0, 54)           # the snapshot's 4 events, 50 deltas: held
        await asyncio.sleep(0)                              # the turn ends
        assert (pub.sent, pub.messages, bridge.held) == (54, 1, 0)
        bridge.HOLD_EVENTS = 10
        for k in range(25):
            delta(k)
        assert (pub.sent, pub.messages, bridge.held) == (54 + 20, 3, 5)
        # one end-of-turn flush a turn, not one a hold: cryptofeed's playback never yields, and
        # one a hold piled up unrun for the whole recording (a review)
        assert sum(getattr(f, "__self__", None) is bridge for f in scheduled) == 2, scheduled
        await asyncio.sleep(0)
        assert (pub.sent, pub.messages, bridge.held) == (54 + 25, 4, 0)
        bridge.HOLD_EVENTS, bridge.HOLD_NS = 512, 2_000_000
        delta(1)
        time.sleep(0.003)                                   # a turn longer than HOLD_NS
        assert bridge.held == 1
        delta(2)                                            # the first has waited too long: both go
        assert (pub.sent, bridge.held) == (54 + 27, 0)

    try:
        asyncio.run(main())
        delta(3)                                            # no running loop: at once
        assert (pub.sent, bridge.held) == (54 + 28, 0)
        bids = book_dict(pub.books[0], Side.BID)
        assert bids == {10000: 100_000_000, **{9000 + k: 100_000_000 for k in range(50)}}
    finally:
        bridge.close(0)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("stamp", [1e20, float("nan"), float("inf"), -5.0])
def test_a_message_from_cryptofeed_stamped_with_no_time_is_skipped_and_loses_nothing_else(tmp_path, stamp):
    """Found by an adversarial pass: a cryptofeed trade stamped 1e20 s (microseconds read as
    milliseconds) raised in the end-of-turn flush, and every channel's held events went with
    it: an ETH delta of the same turn never went out, the books stayed in sync and wrong. A
    message whose time is no time is now counted and skipped as it arrives, a book update
    leaves its book STALE until its snapshot, and the rest of the turn goes out."""
    import asyncio

    from cryptofeed.types import OrderBook, Trade

    feed, snap, d = free_endpoints(tmp_path)
    raw = bridge_raw(tmp_path / "state", [inst(), inst("ETH-USD", iid=1)], feed, snap)
    bridge = Bridge(from_dict(raw, tmp_path))
    pub, D = bridge.publisher, Decimal

    def ob(sym, bid, ask):
        o = OrderBook("KRAKEN", sym)
        o.book.bids[D(bid)] = D(1)
        o.book.asks[D(ask)] = D(1)
        return o

    async def main():
        btc, eth = ob("BTC-USD", "100.00", "101.00"), ob("ETH-USD", "10.00", "11.00")
        await bridge.book(btc, 1765000000.0)
        await bridge.book(eth, 1765000000.0)
        await asyncio.sleep(0)
        eth.book.bids[D("10.50")] = D(2)
        eth.delta = {"bid": [(D("10.50"), D(2))], "ask": []}
        await bridge.book(eth, 1765000001.0)                    # fine, held for the turn's end
        await bridge.trade(Trade("KRAKEN", "BTC-USD", "buy", D("1"), D("100.50"), stamp), 1765000001.0)
        btc.book.bids[D("100.50")] = D(3)
        btc.delta, btc.timestamp = {"bid": [(D("100.50"), D(3))], "ask": []}, stamp
        await bridge.book(btc, 1765000001.0)                    # a delta with no time: BTC unknown
        await asyncio.sleep(0)                                  # the turn ends: flush
        await asyncio.sleep(0)

    try:
        asyncio.run(main())
        assert bridge.held == 0 and bridge.converter.counts["bad_message"] == 2, bridge.stats()
        assert book_dict(pub.books[1], Side.BID) == {1050: 2 * 10**8, 1000: 10**8} and pub.books[1].in_sync
        assert book_dict(pub.books[0], Side.BID) == {10000: 10**8} and not pub.books[0].in_sync
        assert bridge.converter.counts["trades"] == 0
    finally:
        bridge.close(0)
        shutil.rmtree(d, ignore_errors=True)


def test_playback_finds_a_temporary_directory_without_ws_in_its_path(tmp_path, monkeypatch):
    """Found by an adversarial pass: with TMPDIR=/home/wsmith/tmp (any path holding "ws" or
    "http", which cryptofeed's playback reads as a file's kind) the bridge drew temporary names
    forever, deaf to SIGTERM. It now uses /tmp, /var/tmp or /dev/shm there."""
    import tempfile

    from tickwire.feeds.cryptofeed import _plain_temp_dir

    newsroom = tmp_path / "newsroom"
    newsroom.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(newsroom))
    d = _plain_temp_dir()
    try:
        assert d.is_dir() and "ws" not in str(d) and "http" not in str(d) and not list(newsroom.iterdir())
    finally:
        d.rmdir()


@pytest.mark.parametrize("in_loop", [False, True], ids=["direct", "in cryptofeed's loop"])
def test_a_book_from_cryptofeed_gone_crossed_is_marked_stale_once_until_its_snapshot(tmp_path, in_loop):
    """Found by an adversarial pass: a bid inserted above the best ask in a Kraken recording went
    out, was stored, and the book was shown in sync (only the ZeroMQ input was checked). A book
    that goes crossed now gets one STALE marker and is counted, until its next snapshot."""
    import asyncio

    feed, snap, d = free_endpoints(tmp_path)
    bridge = Bridge(from_dict(bridge_raw(tmp_path / "state", [inst()], feed, snap), tmp_path))
    book = bridge.publisher.books[0]
    D = Decimal

    def steps():
        snapshot = {"bid": {D("90.00"): D(1)}, "ask": {D("91.00"): D(1)}}
        yield lambda: bridge.on_book_update("BTC-USD", snapshot, None, 1, 1)
        yield lambda: bridge.on_book_update("BTC-USD", None, {"bid": [(D("90.50"), D(1))]}, 2, 2)    # fine
        yield lambda: bridge.on_book_update("BTC-USD", None, {"bid": [(D("92.00"), D(1))]}, 3, 3)    # crossed
        yield lambda: bridge.on_book_update("BTC-USD", None, {"bid": [(D("92.50"), D(1))]}, 4, 4)    # still
        yield lambda: bridge.on_book_update("BTC-USD", snapshot, None, 5, 5)                          # resync
        yield lambda: bridge.on_book_update("BTC-USD", None, {"ask": [(D("89.00"), D(1))]}, 6, 6)    # again

    seen = []

    async def run():
        for step in steps():
            step()
            await asyncio.sleep(0)                          # the turn ends: what it held goes out
            await asyncio.sleep(0)
            seen.append((bridge.crossed["BTC-USD"], book.in_sync))

    try:
        if in_loop:
            asyncio.run(run())
        else:
            for step in steps():
                step()
                seen.append((bridge.crossed["BTC-USD"], book.in_sync))
        assert seen == [(0, True), (0, True), (1, False), (1, False), (1, True), (2, False)], seen
        assert bridge.converter.counts["crossed"] == 2
    finally:
        bridge.close(0)
        shutil.rmtree(d, ignore_errors=True)


def test_the_snapshot_service_serves_only_the_books_the_bridge_knows(tmp_path):
    """Found by an adversarial pass: the bridge's snapshot service served a book it had marked
    STALE (crossed, or a level it could not take exactly) and one it had never had a snapshot of
    (empty) as in sync: a daemon recovering then showed them in sync, a crossed book among them.
    It leaves them out now, and a receiver keeps what a snapshot leaves out out of sync."""
    from tickwire.engine.instruments import make_books
    from tickwire.feeds.handler import FeedHandler

    insts = [inst(), inst("ETH-USD", iid=1)]
    feed, snap, d = free_endpoints(tmp_path)
    bridge = Bridge(from_dict(bridge_raw(tmp_path / "state", insts, feed, snap), tmp_path))
    D = Decimal

    def served():
        """The instruments in the service's snapshot of channel 0, and a fresh receiver's books."""
        events = bridge.publisher._snapshot_of(0)[2]
        books = make_books(insts)
        h = FeedHandler(feed, {0: [0, 1]}, books.apply, snapshot=snap, silence_timeout=0)    # as a worker
        try:
            end = time.monotonic() + 10
            while not h.all_live():
                assert time.monotonic() < end, h.counters()
                bridge.publisher.serve()
                h.poll(0.005)
        finally:
            h.close()
        return sorted(set(events["instrument"].tolist())), [books[i].in_sync for i in (0, 1)]

    def snapshot(symbol):
        bridge.on_book_update(symbol, {"bid": {D("90.00"): D(1)}, "ask": {D("91.00"): D(1)}}, None, 1, 1)

    try:
        assert served() == ([], [False, False])                  # no snapshot from the exchange yet
        snapshot("BTC-USD")
        snapshot("ETH-USD")
        assert served() == ([0, 1], [True, True])
        bridge.on_book_update("BTC-USD", None, {"bid": [(D("92.00"), D(1))]}, 2, 2)          # crossed
        bridge.on_book_update("ETH-USD", None, {"bid": [(D("90.00"), D("0.000000001"))]}, 2, 2)  # off the lot
        assert not bridge.publisher.books[0].in_sync and not bridge.publisher.books[1].in_sync
        assert served() == ([], [False, False])
        snapshot("ETH-USD")
        assert served() == ([1], [False, True])
    finally:
        bridge.close(0)
        shutil.rmtree(d, ignore_errors=True)


def test_a_published_book_gone_crossed_where_cryptofeeds_is_sound_is_resynced_from_it(tmp_path):
    """A review: a crossed book marked STALE alone stayed dark on a live feed until cryptofeed
    happened to reconnect (a level cryptofeed cut past its depth, never deleted on the wire, goes
    crossed once the market moves through it). Where cryptofeed's own book is sound the bridge
    resyncs from it at once: a STALE marker, then that book; counted as crossed and as a resync."""
    import asyncio
    import types

    from order_book import OrderBook

    feed, snap, d = free_endpoints(tmp_path)
    bridge = Bridge(from_dict(bridge_raw(tmp_path / "state", [inst()], feed, snap), tmp_path))
    D = Decimal
    cf = OrderBook()
    cf.bids[D("90.00")] = D(1)
    cf.asks[D("91.00")] = D(1)

    def update(delta):
        return types.SimpleNamespace(symbol="BTC-USD", book=cf, delta=delta, timestamp=None)

    async def run():
        await bridge.book(update(None), 1.0)                     # the snapshot: 90 / 91
        del cf.asks[D("91.00")]                                  # cryptofeed dropped 91 past its depth,
        cf.asks[D("93.00")] = D(1)                               # unsaid on the wire; the market moves up
        cf.bids[D("92.00")] = D(1)
        await bridge.book(update({"bid": [(D("92.00"), D(1))]}), 2.0)
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    try:
        asyncio.run(run())
        book = bridge.publisher.books[0]
        assert bridge.crossed["BTC-USD"] == 1 and bridge.converter.counts["resyncs"] == 1
        assert book.in_sync and not book.crossed
        lot = 10**8                                              # (lots of 1e-8)
        assert book_dict(book, Side.BID) == {9200: lot, 9000: lot} and book_dict(book, Side.ASK) == {9300: lot}
    finally:
        bridge.close(0)
        shutil.rmtree(d, ignore_errors=True)


def test_unknown_exchange_and_missing_files_are_one_line_exit_2(tmp_path):
    feed, snap, d = free_endpoints(tmp_path)
    raw = bridge_raw(tmp_path / "state", [inst()], feed, snap, exchange="NOSUCHEXCHANGE")
    cfg = tmp_path / "b.toml"
    cfg.write_text(to_toml(raw))
    out = subprocess.run([PY, "-m", "tickwire", "bridge", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "'NOSUCHEXCHANGE' is not an exchange cryptofeed knows" in out.stderr
    raw["bridge"]["exchange"] = "KRAKEN"
    cfg.write_text(to_toml(raw))
    out = subprocess.run([PY, "-m", "tickwire", "bridge", "--config", str(cfg), "--playback", str(d / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no such file" in out.stderr and out.stderr.strip().count("\n") == 0
    # files that are no recording: said at once, not after the 10 s wait for subscribers
    (d / "KRAKEN.0").write_text("")
    started = time.monotonic()
    out = subprocess.run([PY, "-m", "tickwire", "bridge", "--config", str(cfg), "--playback", str(d / "KRAKEN.0")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no websocket file among KRAKEN.0" in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0 and time.monotonic() - started < 9
    # an empty recording: cryptofeed's traceback is not printed before the one line
    (d / "KRAKEN.ws.0").write_text("x")
    out = subprocess.run([PY, "-m", "tickwire", "bridge", "--config", str(cfg), "--playback", str(d / "KRAKEN.0"),
                          str(d / "KRAKEN.ws.0"), "--wait-subscribers", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cryptofeed could not replay" in out.stderr, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr, out.stderr
    del raw["bridge"]
    cfg.write_text(to_toml(raw))
    out = subprocess.run([PY, "-m", "tickwire", "bridge", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "expected a [bridge] table" in out.stderr
    shutil.rmtree(d, ignore_errors=True)


def test_a_missing_cryptofeed_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['cryptofeed'] = None\n"
            "from tickwire.feeds.cryptofeed import require_cryptofeed, BridgeError\n"
            "try:\n    require_cryptofeed()\nexcept BridgeError as e:\n    print(e)\n")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert "install the cryptofeed extra (pip install -e '.[cryptofeed]'" in out.stdout


# -- cryptofeed's own playback of the Kraken capture ------------------------------------------

def normalised(pair: str) -> str:
    return pair.replace("XBT", "BTC").replace("/", "-")


def kraken_playback_files(capture, prefix="twcf") -> tuple[Path, list[str]]:
    """cryptofeed's raw-data layout for the capture: KRAKEN.0 (the symbol data Kraken's REST API would
    return, and the subscription) beside KRAKEN.ws.0 (the websocket messages, the capture itself)."""
    # cryptofeed tells the files apart by 'ws' (or 'http') anywhere in the path: mkdtemp's random
    # suffix held 'ws' now and then ('twcffhxrows4'), the symbol file was read as websocket data and
    # the playback failed; hex digits never spell either
    import uuid

    d = Path("/tmp") / f"{prefix}{uuid.uuid4().hex[:12]}"
    d.mkdir(mode=0o700)
    (d / "KRAKEN.ws.0").symlink_to(KRAKEN)
    pairs = [i.symbol for i in capture.instruments]
    assets = {"error": [], "result": {p.replace("/", ""): {"wsname": p} for p in pairs}}
    sub = {"l2_book": [normalised(p) for p in pairs]}
    (d / "KRAKEN.0").write_text(f"1618678132.0: {json.dumps(assets)}\nconfiguration: {json.dumps(sub)}\n")
    return d, [str(d / "KRAKEN.0"), str(d / "KRAKEN.ws.0")]


def kraken_instruments(capture):
    return [Instrument(id=i.id, symbol=normalised(i.symbol), tick_size=i.tick_size, lot_size=i.lot_size,
                       book="L2", max_depth=i.max_depth, price_decimals=i.price_decimals,
                       qty_decimals=i.qty_decimals) for i in capture.instruments]


class Receiver(threading.Thread):
    """A plain SUB on the bridge's data socket, keeping every DATA message's events in order."""

    def __init__(self, ctx, endpoint):
        super().__init__(daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.parts, self.heartbeats, self.stop = [], 0, False

    def run(self):
        while not self.stop:
            if self.sock.poll(20):
                header, events = decode(*self.sock.recv_multipart())
                if header.type == MsgType.DATA:
                    self.parts.append(events)
                else:
                    self.heartbeats += 1
        self.sock.close(0)


@needs_kraken
def test_cryptofeed_playback_of_kraken_through_the_bridge_reproduces_every_checksum(tmp_path):
    capture = load_kraken(KRAKEN)
    insts = kraken_instruments(capture)
    feed, snap, d = free_endpoints(tmp_path)
    cfg = from_dict(bridge_raw(tmp_path / "state", insts, feed, snap), tmp_path)
    bridge = Bridge(cfg)
    expected = []                       # (events published so far, instrument, Kraken's checksum)
    book_cb = bridge.book

    async def recording(book, receipt):
        await book_cb(book, receipt)
        # Kraken's checksum, from the raw message: cryptofeed's own book.checksum misses it when the
        # message has an ask part and a bid part (it looks only in the first)
        crc = [int(p["c"]) for p in (book.raw if book.delta is not None else ()) if "c" in p]
        if crc:
            # (events taken in so far: sent, or held for the end of the loop's turn)
            expected.append((bridge.publisher.sent + bridge.held, bridge.converter.by_symbol[book.symbol], crc[0]))

    bridge.book = recording
    rx = Receiver(bridge.publisher.ctx, feed)
    rx.start()
    try:
        while rx.heartbeats == 0:                       # the SUB has joined
            bridge.publisher.serve()
            time.sleep(0.01)
        from tickwire.feeds.cryptofeed import playback

        # (a directory whose path holds 'ws', as /home/wsmith does: tickwire's playback must not care)
        counts = playback(bridge, *[kraken_playback_files(capture, prefix="twcf-ws-")[1]])
        assert wait(lambda: sum(map(len, rx.parts)) == bridge.publisher.sent)
    finally:
        rx.stop = True
        rx.join(5)
        bridge.close(0)
    events = np.concatenate(rx.parts)
    assert counts["callbacks"]["l2_book"] == 4279 and bridge.converter.counts["snapshots"] == 10
    assert np.array_equal(events["seq"], np.arange(1, len(events) + 1))      # one channel, nothing lost
    assert not (events["flags"] & Flag.REPLAY).any() and bridge.stats()["rejected"] == {}
    # coalesced into fewer wire messages, every exchange message still ends with its own LAST
    assert bridge.publisher.messages < 4279 and np.count_nonzero(events["flags"] & Flag.LAST) == 4279
    books = make_books(insts)
    done = 0
    matched = 0
    for upto, instrument, crc in expected:
        books.apply(events[done:upto])
        done = upto
        assert kraken_checksum(books[instrument.id], instrument) == crc
        matched += 1
    assert matched == len(capture.checks) == 4269
    shutil.rmtree(d, ignore_errors=True)


def wait(pred, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def reference_books(capture, insts):
    """Every Kraken book after the whole capture, as the daemon's saved books hold them."""
    books = make_books(insts)
    books.apply(capture.events)
    return {f"book_{x.id}": books[x.id].snapshot_events(seq=0, ts=0) for x in insts}


def same_levels(a, b) -> bool:
    cols = ["kind", "side", "price", "qty", "instrument"]
    return all(np.array_equal(a[c], b[c]) for c in cols)


@needs_kraken
@pytest.mark.integration
def test_a_daemon_fed_by_the_bridge_ends_with_krakens_books_and_stores_every_event_once(tmp_path):
    from test_daemon import published_books, query, start_daemon, status, stop_daemon, wait_for

    capture = load_kraken(KRAKEN)
    insts = kraken_instruments(capture)
    feed, snap, d = free_endpoints(tmp_path)
    raw = bridge_raw(tmp_path / "state", insts, feed, snap)
    cfg = tmp_path / "kraken.toml"
    cfg.write_text(to_toml(raw))
    run_dir = tmp_path / "state" / "bridge"
    daemon, log = start_daemon(cfg, tmp_path)
    pb_dir, files = kraken_playback_files(capture)
    try:
        assert wait_for(lambda: status(run_dir)["pid"]), "the worker never reported"
        out = subprocess.run([PY, "-m", "tickwire", "bridge", "--config", str(cfg), "--playback", *files,
                              "--linger", "3"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        import re

        published = int(re.findall(r"bridge: ([0-9,]+) events", out.stderr)[-1].replace(",", ""))
        assert "10 snapshots, 0 resyncs" in out.stderr and " 0 rejected" in out.stderr
        assert wait_for(lambda: status(run_dir)["feed"]["stored_events"] >= published, 60), (published, status(run_dir)["feed"])
    finally:
        rc, _ = stop_daemon(daemon, log)
    assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    mine = published_books(run_dir / "books-0.npz")
    ref = reference_books(capture, insts)
    assert mine.keys() == ref.keys() and all(same_levels(mine[k], ref[k]) for k in ref)
    # every event the bridge published is in the store (its snapshots' events in `snapshots`), the
    # market events once each
    dsn = f"chdb://{tmp_path}/state/store"
    (n, distinct), = query(dsn, "SELECT count(), uniqExact(seq) FROM tickwire.ticks")
    (seqs, last), = query(dsn, "SELECT uniqExact(seq), max(seq) FROM (SELECT seq FROM tickwire.ticks UNION ALL "
                               "SELECT seq FROM tickwire.snapshots WHERE seq >= 1)")
    assert n == distinct == len(capture.events) - (capture.events["flags"] & Flag.SNAPSHOT != 0).sum()
    assert seqs == last == published
    # the daemon registered its instruments: the decimal view names every row and prices it (an
    # unregistered instrument shows symbol '' and price 0)
    (rows, unnamed, wrong), = query(dsn, "SELECT count(), countIf(symbol = ''), countIf(price = 0 AND price_ticks "
                                         "!= 0) FROM tickwire.ticks_decimal")
    assert rows == n and unnamed == 0 and wrong == 0
    shutil.rmtree(pb_dir, ignore_errors=True)
    shutil.rmtree(d, ignore_errors=True)


@needs_kraken
def test_a_signal_stops_a_playback_which_lingers_says_end_and_a_second_ends_it(tmp_path):
    """Found by an adversarial pass: cryptofeed's playback never yields, so SIGINT went unheard
    until the whole recording was published, and SIGTERM killed the bridge (exit 143, no END,
    its link directory left behind). A signal now stops the playback at its next message; it
    lingers, and a second signal ends that: exit 0, the last line said."""
    import signal

    capture = load_kraken(KRAKEN)
    insts = kraken_instruments(capture)
    feed, snap, d = free_endpoints(tmp_path)
    cfg = tmp_path / "kraken.toml"
    cfg.write_text(to_toml(bridge_raw(tmp_path / "state", insts, feed, snap)))
    pb_dir, files = kraken_playback_files(capture)
    long = pb_dir / "KRAKEN.ws.0"
    text = Path(KRAKEN).read_text()
    long.unlink()
    long.write_text(text * 60)                          # (a long recording: 60 times the capture, ~5 s)
    try:
        proc = subprocess.Popen([PY, "-m", "tickwire", "bridge", "--config", str(cfg), "--playback", *files,
                                 "--linger", "60", "--wait-subscribers", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            from tickwire.feeds import wire

            end = time.monotonic() + 60
            while not wire.ipc_in_use(feed):                # bound: the playback starts now
                assert proc.poll() is None and time.monotonic() < end, proc.communicate()
                time.sleep(0.05)
            time.sleep(1.0)
            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            time.sleep(2.0)
            assert proc.poll() is None, "no linger"
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - t
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0 and "stopped: the playback ended early" in err, (proc.returncode, err[-3000:])
        assert took < 15, took
        import re

        published = int(re.findall(r"bridge: ([0-9,]+) events", err)[-1].replace(",", ""))
        assert 0 < published < 60 * len(capture.events), published
    finally:
        shutil.rmtree(pb_dir, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)


@needs_kraken
def test_playback_input_cryptofeed_cannot_use_is_one_line_exit_2(tmp_path):
    """Found by an adversarial pass: a recording under its own name (no .ws.: cryptofeed skips it)
    or an empty one published nothing, exit 0; two files of one name from two directories, a
    price that is no number and a pair missing from the symbol file were tracebacks."""
    capture = load_kraken(KRAKEN)
    feed, snap, d = free_endpoints(tmp_path)
    cfg = tmp_path / "kraken.toml"
    cfg.write_text(to_toml(bridge_raw(tmp_path / "state", kraken_instruments(capture), feed, snap)))
    pb_dir, (sym, ws) = kraken_playback_files(capture)

    def bridge(*files):
        return subprocess.run([PY, "-m", "tickwire", "bridge", "--config", str(cfg), "--playback", *map(str, files),
                               "--linger", "0", "--wait-subscribers", "0"], capture_output=True, text=True, timeout=120)

    def one_line(out, fragment):
        assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
        assert "Traceback" not in out.stderr and fragment in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]

    try:
        one_line(bridge(sym, KRAKEN), "no websocket file")                     # the capture under its own name
        one_line(bridge(ws), "no symbol file")
        empty = pb_dir / "e" / "KRAKEN.ws.0"
        empty.parent.mkdir()
        empty.write_text("")
        one_line(bridge(sym, empty), "no message replayed")
        one_line(bridge(sym, ws, empty), "KRAKEN.ws.0 is given twice")
        lines = Path(KRAKEN).read_text().splitlines(keepends=True)
        bad = pb_dir / "b" / "KRAKEN.ws.0"
        bad.parent.mkdir()
        k = next(i for i, line in enumerate(lines[5:], 5) if '"a":[["' in line)
        bad.write_text("".join(lines[:k]) + re.sub(r'"a":\[\["[0-9.]+"', '"a":[["nan?"', lines[k], count=1)
                       + "".join(lines[k + 1:]))
        one_line(bridge(sym, bad), "cryptofeed could not replay")
        nosym = pb_dir / "n" / "KRAKEN.0"
        nosym.parent.mkdir()
        text = Path(sym).read_text()
        first = normalised(capture.instruments[0].symbol).replace("-", "/").replace("BTC", "XBT")
        nosym.write_text(re.sub(r'"[A-Z]+": \{"wsname": "' + re.escape(first) + r'"\}, ', "", text, count=1))
        one_line(bridge(nosym, ws), "cryptofeed could not replay")
        # cut mid-line: what went out before the cut lingers (a daemon gets what it lost of it)
        cut = pb_dir / "c" / "KRAKEN.ws.0"
        cut.parent.mkdir()
        cut.write_bytes(Path(KRAKEN).read_bytes()[:400_000])
        t = time.monotonic()
        out = subprocess.run([PY, "-m", "tickwire", "bridge", "--config", str(cfg), "--playback", sym, str(cut),
                              "--linger", "2", "--wait-subscribers", "0"], capture_output=True, text=True, timeout=120)
        one_line(out, "cryptofeed could not replay")
        published = int(re.findall(r"bridge: ([0-9,]+) events", out.stderr)[-1].replace(",", ""))
        assert published > 0 and time.monotonic() - t >= 2.0, out.stderr[-2000:]
    finally:
        shutil.rmtree(pb_dir, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)


@needs_kraken
def test_a_playback_that_fails_or_stops_leaves_cryptofeed_unpatched_and_a_bug_of_ours_is_ours(tmp_path):
    """A review: cryptofeed's playback patches its HTTP reads and restores them only when it ends
    well (a later make_feed then read symbols through the leftover patch); and an exception of
    the bridge's own callbacks was reported as the recording's fault."""
    from cryptofeed.connection import HTTPAsyncConn, HTTPSync

    from tickwire.feeds.cryptofeed import playback

    capture = load_kraken(KRAKEN)
    feed, snap, d = free_endpoints(tmp_path)
    bridge = Bridge(from_dict(bridge_raw(tmp_path / "state", kraken_instruments(capture), feed, snap), tmp_path))
    pb_dir, files = kraken_playback_files(capture)
    before = (HTTPAsyncConn.read, HTTPSync.read)
    try:
        bridge.stop()                                         # stopped at its first message
        assert playback(bridge, files) == {"stopped": True}
        assert (HTTPAsyncConn.read, HTTPSync.read) == before
        bridge._stop = False

        async def broken(book, receipt):
            raise ZeroDivisionError("ours")
        bridge.book = broken
        with pytest.raises(ZeroDivisionError, match="ours"):
            playback(bridge, files)
        assert (HTTPAsyncConn.read, HTTPSync.read) == before
    finally:
        bridge.close(0)
        shutil.rmtree(pb_dir, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)


@needs_kraken
def test_cryptofeeds_zmq_backend_as_input_counts_what_it_cannot_see(tmp_path):
    """cryptofeed's own BookZMQ backend, fed by cryptofeed's playback, into the bridge's zmq_input: every
    book the bridge saw from a snapshot on ends exact; what it could not use is counted, not hidden."""
    from cryptofeed.backends.zmq import BookZMQ
    from cryptofeed.defines import L2_BOOK
    from cryptofeed.raw_data_collection import playback as cf_playback

    capture = load_kraken(KRAKEN)
    insts = kraken_instruments(capture)
    feed, snap, d = free_endpoints(tmp_path)
    port = free_tcp_port()
    cfg = from_dict(bridge_raw(tmp_path / "state", insts, feed, snap, zmq_input=f"tcp://127.0.0.1:{port}"), tmp_path)
    bridge = Bridge(cfg)
    pb_dir, files = kraken_playback_files(capture)
    runner = threading.Thread(target=bridge.run_zmq_input, kwargs={"duration": 120}, daemon=True)
    runner.start()
    backend = BookZMQ(port=port, numeric_type=str, snapshot_interval=10**9)
    started, sent = [], []

    async def to_zmq(book, receipt):        # cryptofeed's playback does not start backends itself
        import asyncio

        if not started:
            backend.start(asyncio.get_running_loop(), multiprocess=True)
            started.append(1)
            # PUB/SUB drops what is sent before the connection is up (the slow joiner this input cannot
            # see): probe until one reaches the bridge, which counts it as a message it cannot use
            end = time.monotonic() + 30
            while not bridge.converter.counts["bad_message"] and time.monotonic() < end:
                await backend.write({"exchange": "KRAKEN", "symbol": "PROBE"})
                time.sleep(0.05)
        await backend(book, receipt)
        # the backend's PUB drops past its send queue (1,000 messages) when its process is starved of
        # CPU (a loaded machine: CI lost 17 of 4,279): a third loss this input cannot see, not the
        # bridge's. Keep at most 200 on their way so this test checks the bridge, not the scheduler
        sent.append(1)
        end = time.monotonic() + 30
        while len(sent) - seen() > 200 and time.monotonic() < end:
            await asyncio.sleep(0.002)

    def seen():
        c = bridge.converter.counts
        return c["deltas"] + c["no_snapshot"] + c["snapshots"]

    async def stop():
        # the backend's process exits at stop, dropping what its PUB has not yet sent: another
        # loss this input cannot see; let it drain first
        wait(lambda: seen() >= 4279, 60)
        await backend.stop()

    to_zmq.stop = stop
    try:
        cf_playback("KRAKEN", files, callbacks={L2_BOOK: to_zmq})
        assert wait(lambda: seen() >= 4279, 5), bridge.stats()
    finally:
        bridge.stop()
        runner.join(10)
        bridge.close(0)
    c = bridge.converter.counts
    assert c["snapshots"] == 10 and c["deltas"] + c["no_snapshot"] == 4269
    assert c["crossed"] == 0 and c["bad_message"] >= 1 and bridge.stats()["rejected"] == {}
    ref = reference_books(capture, insts)
    for x in insts:
        mine = bridge.publisher.books[x.id].snapshot_events(seq=0, ts=0)
        assert same_levels(mine, ref[f"book_{x.id}"]), x.symbol
    shutil.rmtree(pb_dir, ignore_errors=True)
    shutil.rmtree(d, ignore_errors=True)


def test_a_zmq_input_naming_a_file_is_refused_and_the_file_kept(tmp_path):
    """libzmq's bind of ipc://PATH unlinks whatever is at PATH (an adversarial pass: `replay
    --publish ipc://FILE` deleted FILE): the bridge's zmq_input refuses a path that is not a socket."""
    feed, snap, d = free_endpoints(tmp_path)
    victim = tmp_path / "notes.txt"
    victim.write_text("keep me")
    bridge = Bridge(from_dict(bridge_raw(tmp_path / "state", [inst()], feed, snap, zmq_input=f"ipc://{victim}"),
                              tmp_path))
    try:
        with pytest.raises(BridgeError, match="names a regular file, not a socket: binding there would delete it"):
            bridge.run_zmq_input(1)
    finally:
        bridge.close()
    assert victim.read_text() == "keep me"


def test_malformed_messages_on_the_zmq_input_are_counted_and_the_bridge_goes_on(tmp_path):
    """Messages of cryptofeed's ZeroMQ format that cannot be read (a time in milliseconds, which
    overflowed int64 nanoseconds; a time that is not a number; a body that is not an object) are
    counted as bad messages and skipped: they used to end the bridge with a traceback. A book
    update that could not be read leaves its book STALE until a snapshot; a trade whose taker
    side is not buy or sell goes out as Side.NONE, not as a sell."""
    feed, snap, d = free_endpoints(tmp_path)
    port = free_tcp_port()
    bridge = Bridge(from_dict(bridge_raw(tmp_path / "state", [inst()], feed, snap,
                                         zmq_input=f"tcp://127.0.0.1:{port}"), tmp_path))
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(feed)
    runner = threading.Thread(target=bridge.run_zmq_input, kwargs={"duration": 60}, daemon=True)
    runner.start()
    pub = ctx.socket(zmq.PUB)
    pub.connect(f"tcp://127.0.0.1:{port}")

    def send(msg):
        pub.send(b"book-KRAKEN-BTC-USD " + (msg if isinstance(msg, bytes) else json.dumps(msg).encode()))

    try:
        assert wait(lambda: (send({"symbol": "PROBE"}), bridge.converter.counts["bad_message"])[1], 30)
        time.sleep(0.5)                                     # (probes still on their way)
        probes = bridge.converter.counts["bad_message"]
        t = 1618678134.5
        send({"symbol": "BTC-USD", "timestamp": t, "book": {"bid": {"100.00": "1"}, "ask": {"100.02": "2"}}})
        send({"symbol": "BTC-USD", "timestamp": t * 1000, "side": "buy", "price": "100.01", "amount": "1"})
        send({"symbol": "BTC-USD", "timestamp": "n/a", "side": "buy", "price": "100.01", "amount": "1"})
        send({"symbol": "BTC-USD", "timestamp": [1], "delta": {"bid": [["100.01", "3"]]}})
        send({"symbol": "BTC-USD", "timestamp": t, "side": "BUY", "price": "100.01", "amount": "0.5"})
        send(b'"just a string"')
        assert wait(lambda: bridge.converter.counts["trades"] == 1, 30), bridge.stats()
        assert runner.is_alive()
        assert bridge.converter.counts["bad_message"] - probes == 4, bridge.stats()
        assert "BTC-USD" not in bridge.converter.synced                 # the unreadable delta: STALE
        events = []
        while sub.poll(2000):
            header, got = decode(*sub.recv_multipart())
            if header.type == MsgType.DATA:
                events.extend(got.tolist())
            if any(e[8] == int(Kind.TRADE) for e in events):
                break
        stale = [e for e in events if e[8] == int(Kind.SNAPSHOT) and e[10] & int(Flag.STALE)]
        trades = [e for e in events if e[8] == int(Kind.TRADE)]
        assert len(stale) == 1 and len(trades) == 1 and trades[0][9] == int(Side.NONE), events
        # a frame past ZMQ_INPUT_MAX_BYTES is refused by libzmq, never buffered nor read (three of
        # 150 MB took the bridge from 49 to 817 MB: an adversarial pass)
        from tickwire.feeds.cryptofeed import ZMQ_INPUT_MAX_BYTES

        before = bridge.converter.counts["bad_message"]
        pub.send(b"x " + bytes(ZMQ_INPUT_MAX_BYTES + 1))
        time.sleep(1.5)
        assert bridge.converter.counts["bad_message"] == before and runner.is_alive()
    finally:
        bridge.stop()
        runner.join(10)
        bridge.close(0)
        pub.close(0)
        sub.close(0)
        shutil.rmtree(d, ignore_errors=True)


def test_unknown_symbol_and_a_tick_the_exchange_contradicts_are_refused_at_start(tmp_path, monkeypatch):
    """What cryptofeed knows of the exchange (its symbol list; tick sizes where it has them) is
    checked before anything is published (cryptofeed reads it from the exchange: stubbed here)."""
    from cryptofeed.exchanges import EXCHANGE_MAP

    from cryptofeed.symbols import Symbols

    # what cryptofeed would have read from Binance's exchangeInfo, in its own cache
    monkeypatch.setattr(Symbols, "data", {})
    Symbols.set("BINANCE", {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT"},
                {"tick_size": {"BTC-USDT": "0.01000000", "ETH-USDT": "0.01000000"},
                 "instrument_type": {"BTC-USDT": "spot", "ETH-USDT": "spot"}})
    assert "BINANCE" in EXCHANGE_MAP
    feed, snap, d = free_endpoints(tmp_path)
    for symbols, tick, fragment in ((["DOGE-USDT"], "0.01", "'DOGE-USDT' is not a BINANCE symbol"),
                                    (["BTC-USDT"], "0.1", "BTC-USDT has tick_size 0.1, but BINANCE quotes it "
                                                          "in steps of 0.01000000")):
        raw = bridge_raw(tmp_path / "state", [inst(symbols[0], tick=tick)], feed, snap, exchange="BINANCE")
        bridge = Bridge(from_dict(raw, tmp_path))
        try:
            with pytest.raises(BridgeError, match=fragment.replace("(", r"\(")):
                bridge.make_feed()
        finally:
            bridge.close(0)
    # a finer tick than the exchange's (or its own) is fine: every exchange price is a multiple of it
    raw = bridge_raw(tmp_path / "state", [inst("BTC-USDT", tick="0.001")], feed, snap, exchange="BINANCE")
    bridge = Bridge(from_dict(raw, tmp_path))
    try:
        feed_obj = bridge.make_feed()              # a tick the exchange agrees with: cryptofeed's feed
        assert feed_obj.id == "BINANCE"
        assert feed_obj.checksum_validation          # (off by default: a book gone wrong went on unseen)
        bridge.close(0)
        raw["bridge"]["checksum_validation"] = False           # (an exchange whose checksums are unreliable)
        bridge = Bridge(from_dict(raw, tmp_path))
        assert not bridge.make_feed().checksum_validation
    finally:
        bridge.close(0)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.alone
def test_the_shipped_kraken_config_pairs_bridge_and_daemon_and_an_unreachable_exchange_is_one_line(
        monkeypatch, caplog, capsys):
    """engine/kraken.example.toml (README, docs/feeds.md): the bridge binds where the daemon of the same
    file subscribes; with the exchange out of reach (cryptofeed reads its symbols over HTTPS) the
    bridge says so in one line, and cryptofeed's own traceback is not printed."""
    import logging

    from cryptofeed.exchanges import EXCHANGE_MAP

    from tickwire.engine.config import load

    cfg = load(Path(__file__).resolve().parent.parent / "engine" / "kraken.example.toml")
    assert cfg.bridge.exchange == "KRAKEN" and cfg.bridge.symbols == ("BTC-USD", "ETH-USD")
    assert (cfg.bridge.endpoint, cfg.bridge.snapshot) == (cfg.feeds.endpoints[0], cfg.feeds.snapshot)

    def unreachable(cls, refresh=False):
        logging.getLogger("feedhandler").error("cryptofeed's own traceback would go here", exc_info=True)
        raise ConnectionError("Failed to resolve 'api.kraken.com'")

    monkeypatch.setattr(EXCHANGE_MAP["KRAKEN"], "symbols", classmethod(unreachable))
    bridge = Bridge(cfg)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(BridgeError) as exc:
            bridge.make_feed()
    finally:
        bridge.close(0)
    assert str(exc.value).startswith("cannot read KRAKEN's symbols from the exchange (is it reachable?)")
    assert not [r for r in caplog.records if r.name == "feedhandler"]
    assert not logging.getLogger("feedhandler").disabled                 # restored afterwards
